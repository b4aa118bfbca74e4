/*
 * transport.c: moves bytes with libcurl. Knows nothing of the API's body.
 * The callbacks only copy bytes into C buffers: no Lua API call happens
 * inside libcurl, so no Lua error can unwind through it.
 *
 * A client keeps a template easy handle (every option set once, never
 * performed) and a share handle (the connection cache, the DNS cache and
 * TLS sessions). Every transfer runs on a fresh duplicate of the template,
 * cleaned up when the next one starts: keep-alive and DNS come from the
 * share, never from a reused easy handle. The reason is a bug in libcurl
 * before 8.1.0 (curl issue 11101, Debian 12's 7.88.1 has it): a reused
 * handle keeps a pointer to the previous transfer's last header after
 * freeing it, and an answer whose first header line begins with a blank
 * (an obsolete folded line) is unfolded into that freed block. A fresh
 * handle starts with the pointer NULL, on every libcurl.
 */
#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "transport.h"

#define ACQ_CURL_AT_LEAST(x, y, z) (LIBCURL_VERSION_NUM >= (((x) << 16) | ((y) << 8) | (z)))

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
    acq_transport_t *t = (acq_transport_t *)ud;
    size_t n = size * nmemb;
    if (n > t->max_bytes - t->body.len) {      /* len <= max_bytes holds */
        t->too_large = 1;
        return 0;                              /* aborts: CURLE_WRITE_ERROR */
    }
    if (!buf_reserve(&t->body, n)) return 0;
    memcpy(t->body.p + t->body.len, ptr, n);
    t->body.len += n;
    return n;
}

/* libcurl resends a request by itself when a reused connection dies before
   any answer came back: the request may have reached Acquire, which has no
   idempotency keys, so that resend could create the case twice. It never
   happens here. With libcurl 7.80+, the prereq callback runs before every
   request a transfer sends, that resend included, and aborts the second;
   older libcurl gets the body through a read callback that cannot rewind,
   which makes the resend fail instead. Either way: nil, err, maybe_created. */
#if ACQ_CURL_AT_LEAST(7, 80, 0)
#define ACQ_PREREQ 1
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port) {
    acq_transport_t *t = (acq_transport_t *)ud;
    (void)conn_primary_ip; (void)conn_local_ip;
    (void)conn_primary_port; (void)conn_local_port;
    return t->sends++ == 0 ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT;
}
#else
#define ACQ_PREREQ 0
static size_t on_read(char *dest, size_t size, size_t nmemb, void *ud) {
    acq_transport_t *t = (acq_transport_t *)ud;
    size_t n = size * nmemb, left = t->out_len - t->out_pos;
    t->sends = 1;                              /* the request is on its way */
    if (n > left) n = left;
    memcpy(dest, t->out + t->out_pos, n);
    t->out_pos += n;
    return n;
}

static int on_seek(void *ud, curl_off_t offset, int origin) {
    (void)ud; (void)offset; (void)origin;
    return CURL_SEEKFUNC_CANTSEEK;
}
#endif

static size_t on_header(char *ptr, size_t size, size_t nitems, void *ud) {
    acq_transport_t *t = (acq_transport_t *)ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        t->retry_after[0] = '\0';              /* a new response begins */
        t->head = ptr[n > 9 ? 9 : 0] == '1' ? 1 : 2;   /* 1xx: another head follows */
        t->head_done = 0;
    } else if ((n == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (n == 1 && ptr[0] == '\n')) {
        if (t->head == 2) t->head_done = 1;    /* the final answer's head is whole */
    } else if (n > 12 && strncasecmp(ptr, "retry-after:", 12) == 0) {
        size_t i = 12, j = 0;
        while (i < n && (ptr[i] == ' ' || ptr[i] == '\t')) i++;
        while (i < n && ptr[i] != '\r' && ptr[i] != '\n' &&
               j < sizeof t->retry_after - 1)
            t->retry_after[j++] = ptr[i++];
        t->retry_after[j] = '\0';
    }
    return n;
}

/* libcurl's own socket(), to learn why one could not be opened (EMFILE
   reads as "could not connect" otherwise); close-on-exec, so a child that
   execs does not keep the connection. */
static curl_socket_t on_opensocket(void *ud, curlsocktype purpose,
                                   struct curl_sockaddr *a) {
    acq_transport_t *t = (acq_transport_t *)ud;
    curl_socket_t fd;
    (void)purpose;
#ifdef SOCK_CLOEXEC
    fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
    fd = socket(a->family, a->socktype, a->protocol);
#endif
    if (fd == CURL_SOCKET_BAD) {
        t->sock_errno = errno;
    } else if (t->sockets->n == ACQ_MAX_SOCKETS) {   /* never untracked */
        close(fd);
        t->sock_errno = EMFILE;
        fd = CURL_SOCKET_BAD;
    } else {
        t->sockets->fd[t->sockets->n++] = fd;
    }
    return fd;
}

/* Its data is the client's socket set, not a transport: a pooled
   connection outlives the batch handle that opened it. */
static int on_closesocket(void *ud, curl_socket_t fd) {
    acq_sockets_t *s = (acq_sockets_t *)ud;
    int i;
    if (s->closing != NULL) s->closing(s->owner, fd);
    for (i = 0; i < s->n; i++) {
        if (s->fd[i] == fd) {
            s->fd[i] = s->fd[--s->n];
            break;
        }
    }
    return close(fd);
}

void transport_disown(acq_sockets_t *s) {
    int i, keep = 0, null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0 && s->n > 0) {          /* out of descriptors: make room with one of ours */
        close(s->fd[0]);
        null = open("/dev/null", O_RDWR | O_CLOEXEC);
    }
    if (null < 0) return;                /* s->n == 0: nothing to disown */
    for (i = 0; i < s->n; i++) {
        if (s->fd[i] == null) keep = 1;
        else dup2(null, s->fd[i]);       /* never shutdown(): that would reach the parent */
    }
    if (!keep) close(null);
}

const char *transport_user_agent(const acq_config_t *cfg, char buf[ACQ_UA_MAX]) {
    curl_version_info_data *v;
    if (cfg->user_agent) return cfg->user_agent;
    v = curl_version_info(CURLVERSION_NOW);
    snprintf(buf, ACQ_UA_MAX, "lua-acquire/%s libcurl/%s", ACQ_VERSION,
             v && v->version ? v->version : "unknown");
    return buf;
}

/* The options that point at one transfer's state: set on each fresh handle. */
static int point_at(CURL *e, acq_transport_t *t) {
    return
#if ACQ_PREREQ
        curl_easy_setopt(e, CURLOPT_PREREQDATA, (void *)t) != CURLE_OK ||
#else
        curl_easy_setopt(e, CURLOPT_READDATA, (void *)t) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SEEKDATA, (void *)t) != CURLE_OK ||
#endif
        curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)t) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERDATA, (void *)t) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)t) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PRIVATE, t->priv) != CURLE_OK ? -1 : 0;
}

static CURLSH *new_share(void) {
    CURLSH *sh = curl_share_init();
    if (sh == NULL) return NULL;
    if (curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT) != CURLSHE_OK ||
        curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK ||
        curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
        curl_share_cleanup(sh);
        return NULL;
    }
    return sh;
}

#define SET(opt, val) \
    do { if (curl_easy_setopt(t->tmpl, opt, val) != CURLE_OK) { *what = #opt; return -1; } } while (0)

int transport_init(acq_transport_t *t, const acq_config_t *cfg,
                   const char *const *header_lines, const char **what) {
    const char *const *h;
    t->owner = 1;
    *what = "curl_share_init";
    t->share = new_share();
    if (t->share == NULL) return -1;
    t->sharep = &t->share;
    *what = "curl_easy_init";
    t->tmpl = curl_easy_init();
    if (t->tmpl == NULL) return -1;
    *what = "curl_multi_init";
    t->multi = transport_multi_new();     /* a single call prunes no batch's connections */
    if (t->multi == NULL) return -1;
    SET(CURLOPT_SHARE, t->share);
    for (h = header_lines; *h; h++) {
        struct curl_slist *l = curl_slist_append(t->headers, *h);
        if (l == NULL) { *what = "curl_slist_append"; return -1; }
        t->headers = l;
    }
    /* no "Expect: 100-continue" round trip */
    {
        struct curl_slist *l = curl_slist_append(t->headers, "Expect:");
        if (l == NULL) { *what = "curl_slist_append"; return -1; }
        t->headers = l;
    }
    t->max_bytes = (size_t)cfg->max_response_bytes;
    SET(CURLOPT_NOSIGNAL, 1L);                 /* threads, nginx, signals */
    SET(CURLOPT_HTTPHEADER, t->headers);
    SET(CURLOPT_POST, 1L);
#if ACQ_PREREQ
    SET(CURLOPT_PREREQFUNCTION, on_prereq);
#else
    SET(CURLOPT_READFUNCTION, on_read);
    SET(CURLOPT_SEEKFUNCTION, on_seek);
#endif
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_TIMEOUT_MS, cfg->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_timeout_ms);
    SET(CURLOPT_FOLLOWLOCATION, 0L);           /* a redirect is an answer */
    /* HTTP/1.1 only. Over HTTP/2 a server rotating its connection (GOAWAY)
       refuses streams it never processed and libcurl resends them, a resend
       on_prereq cannot tell from a dangerous one. README: Reliability. */
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_closesocket);
    SET(CURLOPT_CLOSESOCKETDATA, (void *)t->sockets);
#if ACQ_CURL_AT_LEAST(7, 85, 0)
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_ACCEPT_ENCODING, "gzip");      /* gzip: what an API answers with */
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_SSL_VERIFYPEER, cfg->insecure ? 0L : 1L);
    SET(CURLOPT_SSL_VERIFYHOST, cfg->insecure ? 0L : 2L);
    if (cfg->ca_file) SET(CURLOPT_CAINFO, cfg->ca_file);
    /* The proxy was decided by config.c (the option, or the environment
       read the way curl reads it, NO_PROXY included): libcurl is told
       exactly that and reads no variable itself. */
    if (cfg->proxy) {
        SET(CURLOPT_PROXY, cfg->proxy_url);
        SET(CURLOPT_PROXYTYPE, (long)CURLPROXY_HTTP);
        SET(CURLOPT_NOPROXY, "");
        if (cfg->proxy_user) {
            SET(CURLOPT_PROXYUSERNAME, cfg->proxy_user);
            SET(CURLOPT_PROXYPASSWORD, cfg->proxy_pass);
            SET(CURLOPT_PROXYAUTH, (long)CURLAUTH_BASIC);
        }
        t->proxy = cfg->proxy_mode;              /* decided by proxy.c */
        /* A plain proxy often closes after each request it forwards without
           saying so (tinyproxy does): a request written into a connection it
           is closing may or may not have gone on, a false maybe_created.
           Through a plain proxy, every request has its own connection. */
        if (t->proxy == ACQ_PROXY_PLAIN) SET(CURLOPT_FORBID_REUSE, 1L);
    } else {
        SET(CURLOPT_PROXY, "");
    }
    return 0;
}

int transport_prepare(acq_transport_t *t, const char *url, const char *body,
                      size_t len) {
    CURL *fresh = curl_easy_duphandle(t->tmpl);
    if (fresh == NULL) return -1;
    /* curl_easy_duphandle (libcurl 7.88) does not carry CURLOPT_SHARE over:
       without this, each transfer would use only its multi handle's cache
       (no TLS session resumed, and a pending call's connection its own) */
    if (t->sharep && *t->sharep && curl_easy_setopt(fresh, CURLOPT_SHARE, *t->sharep) != CURLE_OK) {
        curl_easy_cleanup(fresh);
        return -1;
    }
    if (t->easy) curl_easy_cleanup(t->easy);         /* its connection stays in the share */
    t->easy = fresh;
    if (point_at(t->easy, t) != 0) return -1;
    t->body.len = 0;
    t->too_large = 0;
    t->retry_after[0] = '\0';
    t->errbuf[0] = '\0';
    t->out = body;
    t->out_len = len;
    t->out_pos = 0;
    t->sends = 0;
    t->sock_errno = 0;
    t->head = t->head_done = 0;
    curl_easy_setopt(t->easy, CURLOPT_URL, url);          /* libcurl copies it */
    if (body == NULL) {                                   /* a read: GET */
        curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
        return 0;
    }
    curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
#if ACQ_PREREQ
    curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, body);  /* one write with the headers */
#endif
    return 0;
}

/* Whether the request may have reached the server is read off the
   transfer, never off the error code (CURLE_UNSUPPORTED_PROTOCOL, for one,
   also comes back after the whole POST left, when the answer's status line
   is not HTTP/1.x): on_prereq ran (the connection was up and the request
   was about to be written), request bytes were counted, or a status came
   back. Anything else failed before the request existed on the wire. */
void transport_finish(acq_transport_t *t, CURLcode code, acq_result_t *r) {
    long sent = 0;
    r->code = code;
    r->status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent);
    r->connect_status = 0;
    if (t->proxy == ACQ_PROXY_TUNNEL)
        curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &r->connect_status);
    /* Through a tunnel, libcurl counts the CONNECT's bytes as request bytes:
       there, with the prereq callback, only that callback says the request
       began (it runs once the tunnel and TLS are up). */
    if (t->proxy == ACQ_PROXY_TUNNEL && ACQ_PREREQ) sent = 0;
    r->maybe_sent = t->sends > 0 || sent > 0 || r->status > 0;
    /* the proxy leg failed: the request never left for Acquire. A tunnel
       the proxy refused (CONNECT answered other than 2xx; libcurl counts
       the CONNECT's bytes and status too), or nothing came back through a
       proxy that the request never reached. */
    r->proxy_failed =
        (t->proxy == ACQ_PROXY_TUNNEL && code != CURLE_OK && t->sends == 0 &&
         (r->connect_status == 0 || r->connect_status / 100 != 2 ||
          code == CURLE_SSL_CONNECT_ERROR || code == CURLE_RECV_ERROR ||
          code == CURLE_GOT_NOTHING)) ||
        (t->proxy == ACQ_PROXY_PLAIN && !r->maybe_sent && code != CURLE_OK) ||
        /* a CONNECT refused after the request was written is libcurl's own
           reconnect once a reused tunnel died under it: the request may
           have reached Acquire, so it is no failure of the proxy's leg */
        (policy_from_proxy(t->proxy, r->connect_status, r->status) &&
         !(t->proxy == ACQ_PROXY_TUNNEL && t->sends > 0));
    if (r->proxy_failed) r->maybe_sent = 0;
    /* libcurl 7.88 returns CURLE_OK for an answer cut inside its header
       block (the status line and some headers, then FIN): that is no
       answer to act on (a "429 Retry-After: 0" cut short would be resent) */
    if (code == CURLE_OK && !t->head_done) {
        r->code = CURLE_PARTIAL_FILE;
        snprintf(t->errbuf, sizeof t->errbuf,
                 "the connection closed inside the answer's header block");
    }
}

/* One transfer to its end, on the client's multi handle (curl_easy_perform
   would make a multi handle per easy handle, and with it lose the
   connection when the handle goes). */
int transport_perform(acq_transport_t *t, const char *url, const char *body,
                      size_t len, acq_result_t *r) {
    CURLcode code = CURLE_OK;
    CURLMsg *msg;
    int running = 1, queued;
    if (transport_prepare(t, url, body, len) != 0) return -1;
    if (curl_multi_add_handle(t->multi, t->easy) != CURLM_OK) return -1;
    for (;;) {
        if (curl_multi_perform(t->multi, &running) != CURLM_OK) {
            code = CURLE_OUT_OF_MEMORY;
            break;
        }
        if (running == 0) break;
        if (curl_multi_poll(t->multi, NULL, 0, 1000, NULL) != CURLM_OK) {
            code = CURLE_OUT_OF_MEMORY;
            break;
        }
    }
    while ((msg = curl_multi_info_read(t->multi, &queued)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == t->easy) code = msg->data.result;
    curl_multi_remove_handle(t->multi, t->easy);
    transport_finish(t, code, r);
    return 0;
}

void transport_dup(acq_transport_t *dst, const acq_transport_t *src, void *priv) {
    memset(dst, 0, sizeof *dst);
    dst->tmpl = src->tmpl;
    dst->sharep = src->sharep;
    dst->priv = priv;
    dst->max_bytes = src->max_bytes;
    dst->proxy = src->proxy;
    dst->proxy_display = src->proxy_display;
    dst->sockets = src->sockets;
}

/* After fork(): the transfer's handle and the share hold the parent's
   connections (their sockets already point at /dev/null): both go, and the
   template moves to a new share. */
static void drop_idle(acq_transport_t *t) {
    while (t->nidle > 0) {
        t->nidle--;
        curl_multi_cleanup(t->idle[t->nidle]);
        if (t->idle_fd[t->nidle] >= 0) close(t->idle_fd[t->nidle]);
    }
}

/* A multi handle whose transfers may return up to a batch's connections to
   the share: with libcurl's default (4 a transfer on it), a handle with one
   transfer would close all but 4 of the client's idle connections. */
CURLM *transport_multi_new(void) {
    CURLM *m = curl_multi_init();
    if (m != NULL) curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)ACQ_MAX_CONCURRENCY);
    return m;
}

CURLM *transport_multi_take(acq_transport_t *owner, int *fd) {
    if (owner->nidle > 0) {
        owner->nidle--;
        *fd = owner->idle_fd[owner->nidle];
        return owner->idle[owner->nidle];
    }
    *fd = -1;
    return transport_multi_new();
}

int transport_multi_give(acq_transport_t *owner, CURLM *m, int fd) {
    if (m == NULL || owner->nidle == (int)(sizeof owner->idle / sizeof *owner->idle))
        return 0;
    owner->idle_fd[owner->nidle] = fd;
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(m, CURLMOPT_SOCKETDATA, NULL);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, NULL);
    curl_multi_setopt(m, CURLMOPT_TIMERDATA, NULL);
    owner->idle[owner->nidle++] = m;
    return 1;
}

int transport_renew(acq_transport_t *t) {
    CURLSH *fresh = new_share();
    if (fresh == NULL) return -1;
    drop_idle(t);                                     /* made in the parent */
    if (t->easy) curl_easy_cleanup(t->easy);
    t->easy = NULL;
    if (t->multi) curl_multi_cleanup(t->multi);     /* its DNS and connections */
    t->multi = transport_multi_new();
    if (t->multi == NULL) {
        curl_share_cleanup(fresh);
        return -1;
    }
    curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, (long)ACQ_MAX_CONCURRENCY);
    if (curl_easy_setopt(t->tmpl, CURLOPT_SHARE, fresh) != CURLE_OK) {
        curl_share_cleanup(fresh);
        return -1;
    }
    curl_share_cleanup(t->share);
    t->share = fresh;
    return 0;
}

static int tls_failure(CURLcode code) {
    switch (code) {
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_NOTFOUND: case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE: case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_USE_SSL_FAILED:
        return 1;
    default:
        return 0;
    }
}

/* What the transfer saw, for the call engine: the answer, or where and
   how it failed (libcurl's own words in detail). */
void transport_observe(acq_transport_t *t, const acq_result_t *r, double now, double wall,
                       acq_obs_t *o) {
    double secs = 0;
    memset(o, 0, sizeof *o);
    o->now = now;
    o->wall = wall;
    if (t->easy) curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &secs);
    o->elapsed = secs;
    o->status = r->proxy_failed && r->status != 407 ? 0 : r->status;
    o->answered = r->code == CURLE_OK && !r->proxy_failed;
    o->body = t->body.p ? t->body.p : "";
    o->body_len = t->body.len;
    o->retry_after = t->retry_after[0] ? t->retry_after : NULL;
    o->sent = r->maybe_sent;
    o->too_large = t->too_large;
    if (o->answered) return;
    o->code = (long)r->code;
    o->timed_out = r->code == CURLE_OPERATION_TIMEDOUT;
    o->detail = t->errbuf[0] ? t->errbuf : curl_easy_strerror(r->code);
    if (r->code == CURLE_BAD_FUNCTION_ARGUMENT && r->status > 0)
        o->detail = "malformed answer: its header block has a continuation line "
                    "with no header before it";
    else if (r->code == CURLE_SEND_FAIL_REWIND || r->code == CURLE_ABORTED_BY_CALLBACK)
        o->detail = "the connection closed after the request was sent; "
                    "not sent again, the case may exist";
    else if (t->sock_errno && !r->maybe_sent) {
        snprintf(t->detail, sizeof t->detail, "cannot open a socket: %s%s", strerror(t->sock_errno),
                 t->sock_errno == EMFILE ? " (EMFILE: this process is out of file descriptors)"
                 : t->sock_errno == ENFILE ? " (ENFILE: the system is out of file descriptors)"
                 : "");
        o->detail = t->detail;
        o->sys_errno = t->sock_errno;
    }
    o->stage = tls_failure(r->code) ? ACQ_STAGE_TLS : r->maybe_sent ? ACQ_STAGE_RECV
             : ACQ_STAGE_CONNECT;
    if (!r->proxy_failed) return;
    if (r->connect_status > 0 && r->connect_status / 100 != 2) {
        o->stage = ACQ_STAGE_PROXY_ANSWER;
        o->proxy_status = r->connect_status;
    } else if (r->status == 407) {
        o->stage = ACQ_STAGE_PROXY_ANSWER;
        o->proxy_status = 407;
    } else if (r->connect_status / 100 == 2) {
        o->stage = ACQ_STAGE_PROXY_TUNNEL;
    } else if (r->code == CURLE_COULDNT_CONNECT) {
        o->stage = ACQ_STAGE_PROXY_CONNECT;
    } else {
        o->stage = ACQ_STAGE_PROXY;
    }
}

/* Frees what t owns; the owner's template, share and header list last
   (every transfer made from them is closed first: the client's release_batch). */
void transport_close(acq_transport_t *t) {
    struct curl_slist *l;
    if (t->easy) curl_easy_cleanup(t->easy);
    t->easy = NULL;
    buf_free(&t->body);
    if (!t->owner) return;
    drop_idle(t);
    if (t->multi) curl_multi_cleanup(t->multi);
    t->multi = NULL;
    if (t->tmpl) curl_easy_cleanup(t->tmpl);
    t->tmpl = NULL;
    if (t->share) curl_share_cleanup(t->share);   /* closes the idle connections */
    t->share = NULL;
    for (l = t->headers; l; l = l->next)  /* the Authorization line */
        acq_wipe(l->data, strlen(l->data));
    curl_slist_free_all(t->headers);
    t->headers = NULL;
}
