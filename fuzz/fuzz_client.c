/*
 * fuzz_client: the whole client (acquire.new, create_case, find_cases, the
 * reconcile lookup, libcurl reading the answer, the log) against a loopback
 * server whose answer is the input.
 *
 * A thread of the harness listens on 127.0.0.1 (an ephemeral port). For
 * each input H.serve(input) arms it: the next request it reads gets a
 * normal 200 answer (kept alive), the one after it gets the input's bytes
 * as the raw HTTP answer, after which the server closes that connection;
 * any further request (the reconcile lookup after a maybe-created failure)
 * gets the normal answer again. One client is kept across all inputs: the
 * reuse of its handle and connections is the point (issue 22, finding 1:
 * Debian's libcurl 7.88.1 reads freed memory when an answer whose first
 * header line begins with a blank follows another answer on the same easy
 * handle, curl issue 11101; fuzz/seeds/client/seed-finding1-folded-400 is
 * that answer: until transport.c stops reusing the handle, ASan stops on it).
 *
 * The second call is create_case, or (input length divisible by 4)
 * find_cases, the list's path. Checked: the first call (the normal answer)
 * succeeds; the second returns res (a table) or nil, err with err well
 * typed (kind a string, status an integer, maybe_created a boolean,
 * tostring one line); the API key is in no log line and in no string of
 * err (nested tables too), raw or JSON-escaped. timeout = 2 s: a server
 * that says nothing more costs little (it always closes after the answer).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "harness.h"

#define SRV_MAX_CONN  16
#define SRV_MAX_REQ   (64 * 1024)

static const char normal_answer[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 62\r\n"
    "\r\n"
    "{\"data\":{\"id\":597752,\"title\":\"fuzz\",\"contact\":{\"id\":1}},\"x\":1}";

static pthread_mutex_t srv_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  srv_closed = PTHREAD_COND_INITIALIZER;
static int    srv_closing;           /* the fuzzed answer's connection is not closed yet */
static char  *srv_answer;            /* the input's bytes, owned here */
static size_t srv_answer_len;
static int    srv_requests;          /* since the last serve() */
static int    srv_port;

typedef struct conn_t {
    int    fd;
    char  *in;
    size_t len;
} conn_t;

static void conn_close(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    free(c->in);
    c->fd = -1;
    c->in = NULL;
    c->len = 0;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The length of the first complete request in c->in, or 0. */
static size_t request_len(const conn_t *c) {
    const char *end = NULL, *p;
    size_t head, body = 0, i;
    for (i = 0; i + 3 < c->len; i++)
        if (memcmp(c->in + i, "\r\n\r\n", 4) == 0) { end = c->in + i; break; }
    if (end == NULL) return 0;
    head = (size_t)(end - c->in) + 4;
    for (p = c->in; p < end; p++) {
        if ((p == c->in || p[-1] == '\n') && (size_t)(end - p) > 15 &&
            strncasecmp(p, "Content-Length:", 15) == 0) {
            body = (size_t)strtoul(p + 15, NULL, 10);
            break;
        }
    }
    return c->len >= head + body ? head + body : 0;
}

/* Answers the complete requests read on c; 0 when c is to be closed. */
static int serve_requests(conn_t *c) {
    size_t n;
    while ((n = request_len(c)) > 0) {
        int fuzzed;
        char *copy = NULL;
        size_t copy_len = 0;
        memmove(c->in, c->in + n, c->len - n);
        c->len -= n;
        pthread_mutex_lock(&srv_mu);
        fuzzed = ++srv_requests == 2;
        if (fuzzed) srv_closing = 1;
        if (fuzzed && srv_answer_len > 0) {
            copy = malloc(srv_answer_len);
            if (copy) memcpy(copy, srv_answer, srv_answer_len);
            copy_len = srv_answer_len;
        }
        pthread_mutex_unlock(&srv_mu);
        if (!fuzzed) {
            if (write_all(c->fd, normal_answer, sizeof normal_answer - 1) != 0) return 0;
            continue;
        }
        if (copy) write_all(c->fd, copy, copy_len);
        free(copy);
        shutdown(c->fd, SHUT_WR);
        return 0;
    }
    return 1;
}

static void *server_main(void *arg) {
    int lfd = *(int *)arg;
    conn_t conns[SRV_MAX_CONN];
    int i;
    for (i = 0; i < SRV_MAX_CONN; i++) conns[i].fd = -1, conns[i].in = NULL, conns[i].len = 0;
    for (;;) {
        struct pollfd p[SRV_MAX_CONN + 1];
        int map[SRV_MAX_CONN + 1], np = 0;
        p[np].fd = lfd; p[np].events = POLLIN; map[np++] = -1;
        for (i = 0; i < SRV_MAX_CONN; i++)
            if (conns[i].fd >= 0) { p[np].fd = conns[i].fd; p[np].events = POLLIN; map[np++] = i; }
        if (poll(p, (nfds_t)np, -1) < 0) continue;
        for (i = 1; i < np; i++) {
            conn_t *c = &conns[map[i]];
            char buf[16384];
            ssize_t r;
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            r = recv(c->fd, buf, sizeof buf, 0);
            if (r <= 0 || c->len + (size_t)r > SRV_MAX_REQ) { conn_close(c); continue; }
            {
                char *grown = realloc(c->in, c->len + (size_t)r);
                if (grown == NULL) { conn_close(c); continue; }
                c->in = grown;
            }
            memcpy(c->in + c->len, buf, (size_t)r);
            c->len += (size_t)r;
            if (!serve_requests(c)) {
                conn_close(c);
                pthread_mutex_lock(&srv_mu);
                srv_closing = 0;
                pthread_cond_broadcast(&srv_closed);
                pthread_mutex_unlock(&srv_mu);
            }
        }
        if (p[0].revents & POLLIN) {
            int fd = accept(lfd, NULL, NULL);
            if (fd >= 0) {
                for (i = 0; i < SRV_MAX_CONN && conns[i].fd >= 0; i++) {}
                if (i == SRV_MAX_CONN) {          /* the oldest goes */
                    conn_close(&conns[0]);
                    i = 0;
                }
                conns[i].fd = fd;
            }
        }
    }
    return NULL;
}

static void server_start(void) {
    static int lfd;
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    pthread_t th;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) != 0) {
        perror("fuzz_client: the loopback server");
        abort();
    }
    srv_port = ntohs(a.sin_port);
    if (pthread_create(&th, NULL, server_main, &lfd) != 0) abort();
    pthread_detach(th);
}

/* H.port() -> the server's port (started on first use) */
static int fuzz_port(lua_State *L) {
    if (srv_port == 0) server_start();
    lua_pushinteger(L, srv_port);
    return 1;
}

/* H.serve(bytes): the next request gets the normal answer, the one after it
   these bytes (then the connection closes), later ones the normal answer.
   It first waits (5 s at most) until the server has closed the connection
   of the last fuzzed answer: the client may have read a whole answer
   before the server closed, and a connection it reuses must already be
   seen closed (the module never sends a request again on another one). */
static int fuzz_serve(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char *copy = malloc(n ? n : 1);
    struct timespec until;
    if (copy == NULL) return luaL_error(L, "out of memory");
    memcpy(copy, s, n);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    pthread_mutex_lock(&srv_mu);
    while (srv_closing && pthread_cond_timedwait(&srv_closed, &srv_mu, &until) == 0) {}
    free(srv_answer);
    srv_answer = copy;
    srv_answer_len = n;
    srv_requests = 0;
    pthread_mutex_unlock(&srv_mu);
    return 0;
}

/* H.requests() -> how many requests the server read since serve() */
static int fuzz_requests(lua_State *L) {
    int n;
    pthread_mutex_lock(&srv_mu);
    n = srv_requests;
    pthread_mutex_unlock(&srv_mu);
    lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg extra[] = {
    { "port", fuzz_port },
    { "serve", fuzz_serve },
    { "requests", fuzz_requests },
    { NULL, NULL }
};

static const char checker[] =
    "local acquire, H = ...\n"
    "local KEY = 'fuzz-secret-key-7Qm2Xv9Lp4'\n"
    "local lines = {}\n"
    "local client = acquire.new {\n"
    "  base_url = 'http://127.0.0.1:' .. H.port(), api_key = KEY, proxy = false,\n"
    "  timeout = 2, connect_timeout = 2, max_retries = 0, reconcile = 0, debug = 'body',\n"
    "  logger = function(level, line) lines[#lines + 1] = level .. ': ' .. line end,\n"
    "}\n"
    "local SHORT = { ['/'] = '/', ['\"'] = '\"', ['\\\\'] = '\\\\', b = '\\b', f = '\\f', n = '\\n', r = '\\r', t = '\\t' }\n"
    "local function unescape(s)\n"
    "  local out, i, n = {}, 1, #s\n"
    "  while i <= n do\n"
    "    local c = s:sub(i, i)\n"
    "    local e = c == '\\\\' and s:sub(i + 1, i + 1) or nil\n"
    "    local hex = e == 'u' and s:match('^u(%x%x%x%x)', i + 1) or nil\n"
    "    if e and SHORT[e] then\n"
    "      out[#out + 1] = SHORT[e]; i = i + 2\n"
    "    elseif hex then\n"
    "      local cp = tonumber(hex, 16)\n"
    "      local lo = cp >= 0xD800 and cp <= 0xDBFF and s:match('^\\\\u([dD][c-fC-F]%x%x)', i + 6)\n"
    "      if lo then\n"
    "        cp = 0x10000 + (cp - 0xD800) * 1024 + (tonumber(lo, 16) - 0xDC00); i = i + 12\n"
    "      else\n"
    "        i = i + 6\n"
    "      end\n"
    "      out[#out + 1] = (cp >= 0xD800 and cp <= 0xDFFF) and '?' or utf8.char(cp)\n"
    "    else\n"
    "      out[#out + 1] = c; i = i + 1\n"
    "    end\n"
    "  end\n"
    "  return table.concat(out)\n"
    "end\n"
    "local function q(s) return string.format('%q', tostring(s):sub(1, 200)) end\n"
    "local function no_key(s, where)\n"
    "  assert(not s:find(KEY, 1, true) and not unescape(s):find(KEY, 1, true),\n"
    "         'the key is in ' .. where .. ': ' .. q(s))\n"
    "end\n"
    "local function check_err(err, where, depth)\n"
    "  assert(type(err) == 'table', where .. ': err is not a table: ' .. q(err))\n"
    "  if depth == 0 then\n"
    "    assert(type(err.kind) == 'string', where .. ': err.kind')\n"
    "    assert(err.status == nil or math.type(err.status) == 'integer', where .. ': err.status ' .. q(err.status))\n"
    "    assert(type(err.maybe_created) == 'boolean', where .. ': err.maybe_created')\n"
    "    assert(err.message == nil or type(err.message) == 'string', where .. ': err.message')\n"
    "    assert(err.body == nil or (type(err.body) == 'string' and #err.body <= 4096), where .. ': err.body')\n"
    "    assert(err.retry_after == nil or (type(err.retry_after) == 'number' and err.retry_after >= 0),\n"
    "           where .. ': err.retry_after')\n"
    "    local line = tostring(err)\n"
    "    assert(type(line) == 'string' and not line:find('[\\r\\n]'), where .. ': tostring(err) ' .. q(line))\n"
    "    no_key(line, where .. ': tostring(err)')\n"
    "  end\n"
    "  for k, v in next, err do\n"
    "    if type(v) == 'string' then no_key(v, where .. ': err.' .. tostring(k))\n"
    "    elseif type(v) == 'table' and depth < 4 then check_err(v, where .. ': err.' .. tostring(k), depth + 1) end\n"
    "  end\n"
    "end\n"
    "\n"
    "return function(s)\n"
    "  lines = {}\n"
    "  H.serve(s)\n"
    "  local res, err = client:create_case(1, { title = 'fuzz' })\n"
    "  assert(type(res) == 'table' and res.data and res.data.id == 597752,\n"
    "         'the normal answer before the fuzzed one failed: ' .. tostring(err))\n"
    "  local r2, e2\n"
    "  if #s % 4 == 0 then r2, e2 = client:find_cases(1, { since = 0 })\n"
    "  else r2, e2 = client:create_case(2, { title = 'fuzz', message = 'fuzzed answer' }) end\n"
    "  if r2 ~= nil then\n"
    "    assert(type(r2) == 'table' and e2 == nil, 'res is not a table')\n"
    "  else\n"
    "    check_err(e2, 'the fuzzed answer', 0)\n"
    "  end\n"
    "  for _, line in ipairs(lines) do no_key(line, 'a log line') end\n"
    "end\n";

FUZZ_HARNESS("fuzz_client", checker, extra)
