/*
 * client.c: the acquire.Client userdata, and the one way through:
 * request -> transport -> response, with policy deciding on retries.
 *
 * The userdata gets its metatable while still empty, so __gc can always
 * run; resources are attached after, and one idempotent close serves
 * close(), __gc and __close.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "transport.h"


static const char default_key = 'c';  /* registry: the default client */

acq_client_t *client_check_open(lua_State *L, int idx) {
    acq_client_t *c = (acq_client_t *)luaL_checkudata(L, idx, ACQ_MT_CLIENT);
    if (!c->open) luaL_error(L, "acquire: client is closed");
    return c;
}

/* A client used after fork() in the child: its kept-alive connections are
   the parent's too (the child would read the parent's answers, and a TLS
   close would write into the parent's session). The child points those
   sockets at /dev/null, lets libcurl close them there, and goes on with
   fresh handles. */
void client_check_fork(lua_State *L, acq_client_t *c) {
    long pid = (long)getpid();
    if (c->pid == pid) return;
    transport_disown(&c->sockets);
    batch_release(c);
    if (c->t.tmpl && transport_renew(&c->t) != 0)
        luaL_error(L, "acquire: cannot set up libcurl after fork()");
    c->pid = pid;
}

static void release(acq_client_t *c) {
    c->open = 0;
    if (c->pid != (long)getpid()) transport_disown(&c->sockets);   /* a child closing */
    batch_release(c);                 /* its handles use c->t's header list */
    transport_close(&c->t);
    buf_free(&c->req);
    free(c->url);
    c->url = NULL;
    if (c->key) acq_wipe(c->key, c->secrets_len);
    free(c->key);
    c->key = NULL;
    free(c->proxy_display);
    c->proxy_display = NULL;
}

/* Copies cfg's secrets (the key, then the proxy's credentials) into one
   block the client owns and wipes on close. 0 on ENOMEM. */
static int keep_secrets(acq_client_t *c, const acq_config_t *cfg) {
    const acq_secret_t *k;
    size_t total = 0, at = 0;
    int i = 0;
    for (k = cfg->secrets; k; k = k->next) total += k->len + 1;
    c->key = (char *)malloc(total);
    if (c->key == NULL) return 0;
    c->secrets_len = total;
    for (k = cfg->secrets; k && i < ACQ_MAX_SECRETS; k = k->next, i++) {
        memcpy(c->key + at, k->p, k->len);
        c->key[at + k->len] = '\0';
        c->secrets[i].p = c->key + at;
        c->secrets[i].len = k->len;
        c->secrets[i].next = NULL;
        if (i > 0) c->secrets[i - 1].next = &c->secrets[i];
        at += k->len + 1;
    }
    c->key_len = cfg->key_len;
    return 1;
}

/* Builds a client from the config table at idx; pushes it. */
static acq_client_t *make(lua_State *L, int idx) {
    acq_config_t cfg;
    acq_header_t h[ACQ_NHEADERS];
    const char *lines[ACQ_NHEADERS + 1], *what;
    char ua[ACQ_UA_MAX];
    acq_client_t *c;
    int i, n;
    idx = acq_absindex(L, idx);
    config_check(L, idx, &cfg);                       /* pushes one table */
    c = (acq_client_t *)acq_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    acq_setmetatable(L, ACQ_MT_CLIENT);
    c->strict = cfg.strict;
    c->max_retries = cfg.max_retries;
    c->reconcile_ms = cfg.reconcile_ms;
    c->timeout_ms = cfg.timeout_ms;
    c->rng = policy_seed(c);
    c->pid = (long)getpid();
    c->logger = LUA_NOREF;
    c->claims = LUA_NOREF;
    c->debug = cfg.debug;
    c->url = (char *)malloc(ACQ_URL_MAX);
    if (cfg.proxy) c->proxy_display = strdup(cfg.proxy_display);
    if (c->url == NULL || !keep_secrets(c, &cfg) || (cfg.proxy && c->proxy_display == NULL)) {
        release(c);
        luaL_error(L, "not enough memory");
        return NULL;
    }
    c->prefix_len = request_url(&cfg, 0, c->url) - 1;
    c->t.sockets = &c->sockets;
    c->t.proxy_display = c->proxy_display;
    n = request_headers(&cfg, transport_user_agent(&cfg, ua), h);
    for (i = 0; i < n; i++)
        lines[i] = lua_pushfstring(L, "%s: %s%s", h[i].name, h[i].prefix, h[i].value);
    lines[n] = NULL;
    if (transport_init(&c->t, &cfg, lines, &what) != 0) {
        release(c);
        luaL_error(L, "acquire: cannot set up libcurl (%s)", what);
    }
    lua_pop(L, n);
    if (cfg.logger) {
        lua_pushliteral(L, "logger");
        lua_rawget(L, idx);
        c->logger = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    reconcile_push_claims(L);
    c->claims = luaL_ref(L, LUA_REGISTRYINDEX);
    c->open = 1;
    lua_remove(L, -2);                                /* config_check's */
    return c;
}

/* acquire.new(config) -> client */
int client_l_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    make(L, 1);
    return 1;
}

int client_outcome(lua_State *L, acq_client_t *c, acq_transport_t *t,
                   const acq_result_t *r) {
    if (r->code == CURLE_OK && !r->proxy_failed)
        return response_decode(L, r->status, t->body.p, t->body.len,
                               t->retry_after, c->secrets);
    return transport_push_error(L, t, r, c->secrets);
}

/* ---- the log ---------------------------------------------------------- */

void client_check_reentry(lua_State *L, acq_client_t *c) {
    if (c->logging) luaL_error(L, "acquire: a client cannot be used from its own logger");
}

/* One line (on top, popped) at level: to the logger, under pcall, or to
   stderr. A logger that raises loses nothing: that line and its error go
   to stderr, and the call goes on. */
static void log_line(lua_State *L, acq_client_t *c, const char *level) {
    int line = lua_gettop(L);
    luaL_checkstack(L, 8, "acquire: the log");
    if (c->logger != LUA_NOREF) {
        int status;
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->logger);
        lua_pushstring(L, level);
        lua_pushvalue(L, line);
        c->logging = 1;
        status = lua_pcall(L, 2, 0, 0);
        c->logging = 0;
        if (status == 0) {
            lua_settop(L, line - 1);
            return;
        }
        {
            size_t n;
            const char *m = lua_tolstring(L, -1, &n);
            if (m == NULL) m = "(a non-string error)", n = strlen(m);
            redact_push(L, m, n, c->secrets);
            fprintf(stderr, "acquire: logger raised: %s\n", lua_tostring(L, -1));
        }
    }
    fprintf(stderr, "acquire: %s: %s\n", level, lua_tostring(L, line));
    lua_settop(L, line - 1);
}

/* A body as one line: redacted, then CR and LF written \r and \n, at most
   ACQ_DEBUG_BODY_CAP bytes of it. Pushed. */
static void push_body_line(lua_State *L, acq_client_t *c, const char *s, size_t n) {
    luaL_Buffer b;
    size_t i, m;
    const char *r;
    redact_push(L, s, n, c->secrets);
    r = lua_tolstring(L, -1, &m);
    luaL_buffinit(L, &b);
    for (i = 0; i < m && i < ACQ_DEBUG_BODY_CAP; i++) {
        if (r[i] == '\n') luaL_addstring(&b, "\\n");
        else if (r[i] == '\r') luaL_addstring(&b, "\\r");
        else luaL_addchar(&b, r[i]);
    }
    if (m > ACQ_DEBUG_BODY_CAP) {
        char more[64];
        snprintf(more, sizeof more, " (%lu more bytes not logged)",
                 (unsigned long)(m - ACQ_DEBUG_BODY_CAP));
        luaL_addstring(&b, more);
    }
    luaL_pushresult(&b);
    lua_remove(L, -2);
}

void client_log_attempt(lua_State *L, acq_client_t *c, const acq_transport_t *t,
                        const acq_result_t *r, const char *pfx, int attempt,
                        const char *url, const char *body, size_t len) {
    if (!c->debug) return;
    luaL_checkstack(L, 8, "acquire: the log");     /* run()'s loop holds many */
    lua_pushfstring(L, "%sattempt %d: %s %s%s%s", pfx, attempt, body ? "POST" : "GET", url,
                    c->proxy_display ? " via proxy " : "",
                    c->proxy_display ? c->proxy_display : "");
    log_line(L, c, "debug");
    if (c->debug == 2 && body) {
        lua_pushfstring(L, "%sattempt %d: > ", pfx, attempt);
        push_body_line(L, c, body, len);
        lua_concat(L, 2);
        log_line(L, c, "debug");
    }
    if (r->status > 0 && !r->proxy_failed) {
        double secs = 0;
        char ms[32];
        curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &secs);
        snprintf(ms, sizeof ms, "%.1f", secs * 1000.0);
        lua_pushfstring(L, "%sattempt %d: %d in %s ms, %d bytes", pfx, attempt,
                        (int)r->status, ms, (int)t->body.len);
        log_line(L, c, "debug");
        if (c->debug == 2) {
            lua_pushfstring(L, "%sattempt %d: < ", pfx, attempt);
            push_body_line(L, c, t->body.p ? t->body.p : "", t->body.len);
            lua_concat(L, 2);
            log_line(L, c, "debug");
        }
    }
}

void client_log_failure(lua_State *L, acq_client_t *c, const char *pfx, int attempt,
                        int err, double wait) {
    char secs[32];
    if (!c->debug) return;
    luaL_checkstack(L, 8, "acquire: the log");
    snprintf(secs, sizeof secs, "%.2f", wait);
    lua_pushfstring(L, "%sattempt %d failed: ", pfx, attempt);
    error_pushstring(L, err);
    if (wait >= 0) lua_pushfstring(L, "; retrying in %s s", secs);
    else lua_pushliteral(L, "; giving up");
    lua_concat(L, 3);
    log_line(L, c, wait >= 0 ? "warn" : "error");
}

double client_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The loop every call takes. contactId at arg, opts at arg + 1. */
static int create_case(lua_State *L, acq_client_t *c, int arg) {
    acq_result_t r;
    long long id = request_check_contact_id(L, arg);
    int attempt, n, base;
    double started;
    request_encode_body(L, arg + 1, c->strict, &c->req);
    client_check_fork(L, c);
    snprintf(c->url + c->prefix_len, ACQ_URL_MAX - c->prefix_len, "%lld", id);
    base = lua_gettop(L);
    started = client_clock();
    for (attempt = 1;; attempt++) {
        double wait;
        if (transport_perform(&c->t, c->url, c->req.p, c->req.len, &r) != 0)
            luaL_error(L, "not enough memory");
        client_log_attempt(L, c, &c->t, &r, "", attempt, c->url, c->req.p, c->req.len);
        n = client_outcome(L, c, &c->t, &r);
        if (n == 1) {
            client_claim(L, c, -1);
            return 1;
        }
        wait = policy_next(L, -1, attempt, c->max_retries, &c->rng);
        client_log_failure(L, c, "", attempt, lua_gettop(L), wait);
        if (wait < 0) {
            if (c->reconcile_ms < 0) return 2;
            policy_sleep((double)c->reconcile_ms / 1000.0);
            return client_reconcile(L, c, id, arg + 1, started, lua_gettop(L));
        }
        lua_settop(L, base);
        policy_sleep(wait);
    }
}

/* ---- reading cases back --------------------------------------------- */

/* One page of the list, retried as the policy allows: a read creates
   nothing, so whatever happened on the wire, maybe_created is false.
   Pushes res (1) or nil, err (2). */
static int list_page(lua_State *L, acq_client_t *c, long long id, int page) {
    char url[ACQ_LIST_URL_MAX];
    acq_config_t base;
    acq_result_t r;
    int attempt, top = lua_gettop(L);
    memset(&base, 0, sizeof base);
    base.base_url = c->url;
    base.base_len = c->prefix_len - (sizeof(ACQ_URL_PREFIX) - 1);
    reconcile_list_url(&base, id, page, url);
    for (attempt = 1;; attempt++) {
        double wait;
        if (transport_perform(&c->t, url, NULL, 0, &r) != 0)
            luaL_error(L, "not enough memory");
        client_log_attempt(L, c, &c->t, &r, "", attempt, url, NULL, 0);
        if (client_outcome(L, c, &c->t, &r) == 1) return 1;
        error_setbool(L, lua_gettop(L), "maybe_created", 0);
        wait = policy_next(L, -1, attempt, c->max_retries, &c->rng);
        client_log_failure(L, c, "", attempt, lua_gettop(L), wait);
        if (wait < 0) return 2;
        lua_settop(L, top);
        policy_sleep(wait);
    }
}

int client_find(lua_State *L, acq_client_t *c, long long id, const acq_filter_t *f) {
    int page, more = 1, out;
    lua_newtable(L);
    out = lua_gettop(L);
    for (page = 0; more && page < ACQ_LIST_MAX_PAGES; page++) {
        if (list_page(L, c, id, page) == 2) {
            lua_remove(L, out);
            return 2;
        }
        more = reconcile_collect(L, -1, page, f, out);
        lua_settop(L, out);
    }
    return 1;
}

int client_reconcile(lua_State *L, acq_client_t *c, long long id, int sent,
                     double started, int err) {
    acq_filter_t f;
    int filter, maybe;
    sent = acq_absindex(L, sent);
    err = acq_absindex(L, err);
    lua_getfield(L, err, "maybe_created");
    maybe = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!maybe) return 2;
    if (batch_live(c, id) > 0) {
        /* inside a hook of create_cases on this client: items for this
           contact are still on their way, their cases not yet claimed, so
           a case found could be theirs. No lookup: ambiguous. */
        lua_pushliteral(L, "ambiguous");
        lua_setfield(L, err, "reconcile");
        error_setint(L, err, "in_flight", batch_live(c, id));
        lua_pushnil(L);
        lua_pushvalue(L, err);
        return 2;
    }
    reconcile_push_filter(L, id, sent, started, client_clock());
    filter = lua_gettop(L);
    reconcile_check_filter(L, filter, &f);
    if (client_find(L, c, id, &f) == 1) lua_pushnil(L);       /* cases, nil | nil, lookup err */
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->claims);             /* filter + 3 */
    return reconcile_settle(L, err, filter + 1, filter + 2, filter + 3);
}

void client_claim(lua_State *L, acq_client_t *c, int res) {
    res = acq_absindex(L, res);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->claims);
    reconcile_claim(L, -1, res);
    lua_pop(L, 1);
}

/* client:find_cases(contactId [, filter]) -> { case, … } | nil, err */
int client_l_find_cases(lua_State *L) {
    acq_client_t *c = client_check_open(L, 1);
    acq_filter_t f;
    long long id;
    client_check_reentry(L, c);
    id = request_check_contact_id(L, 2);
    reconcile_check_filter(L, 3, &f);
    f.contact = id;
    lua_settop(L, 3);
    client_check_fork(L, c);
    return client_find(L, c, id, &f);
}

/* acquire.find_cases(contactId [, filter]) through the default client */
int client_l_default_find_cases(lua_State *L) {
    acq_client_t *c;
    acq_filter_t f;
    long long id;
    lua_settop(L, 2);
    c = client_default(L);                                    /* 3 */
    client_check_reentry(L, c);
    id = request_check_contact_id(L, 1);
    reconcile_check_filter(L, 2, &f);
    f.contact = id;
    client_check_fork(L, c);
    return client_find(L, c, id, &f);
}

/* client:create_case(contactId, opts) -> res | nil, err */
int client_l_create_case(lua_State *L) {
    acq_client_t *c = client_check_open(L, 1);
    client_check_reentry(L, c);
    return create_case(L, c, 2);
}

/* close(), __gc and __close. Inside create_cases' hooks it raises:
   the batch's transfers run on this client's handles. */
int client_l_close(lua_State *L) {
    acq_client_t *c = (acq_client_t *)luaL_checkudata(L, 1, ACQ_MT_CLIENT);
    client_check_reentry(L, c);
    if (c->busy)
        luaL_error(L, "acquire: cannot close a client while its create_cases runs "
                      "(called from on_send, on_result or on_progress?)");
    release(c);
    if (c->logger != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->logger);
    c->logger = LUA_NOREF;
    if (c->claims != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->claims);
    c->claims = LUA_NOREF;
    return 0;
}

int client_l_tostring(lua_State *L) {
    acq_client_t *c = (acq_client_t *)luaL_checkudata(L, 1, ACQ_MT_CLIENT);
    if (!c->open)
        lua_pushfstring(L, "acquire.Client (closed): %p", (void *)c);
    else {
        lua_pushlstring(L, c->url, c->prefix_len - (sizeof(ACQ_URL_PREFIX) - 1));
        lua_pushfstring(L, "acquire.Client (%s%s%s): %p", lua_tostring(L, -1),
                        c->proxy_display ? " via proxy " : "",
                        c->proxy_display ? c->proxy_display : "", (void *)c);
    }
    return 1;
}

/* acquire.configure(config) -> client; the client acquire.create_case uses */
int client_l_configure(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    make(L, 1);
    lua_pushvalue(L, -1);
    acq_rawsetp(L, LUA_REGISTRYINDEX, &default_key);
    return 1;
}

static void from_env(lua_State *L, const char *field, const char *var) {
    const char *v = getenv(var);
    if (v != NULL && v[0] != '\0') {
        lua_pushstring(L, v);
        lua_setfield(L, -2, field);
    }
}

/* The client acquire.create_case(s) use: the configured one, or one made
   once from ACQUIRE_API_KEY and ACQUIRE_BASE_URL, or ACQUIRE_ACCOUNT_ID when
   ACQUIRE_BASE_URL is not set (as the CLI reads them). Pushed. */
acq_client_t *client_default(lua_State *L) {
    acq_client_t *c;
    acq_rawgetp(L, LUA_REGISTRYINDEX, &default_key);
    if (lua_isnil(L, -1)) {
        if (getenv("ACQUIRE_API_KEY") == NULL)
            luaL_error(L, "acquire: no api_key: call acquire.configure{ api_key = ..., "
                          "account_id = ... } or set ACQUIRE_API_KEY and "
                          "ACQUIRE_ACCOUNT_ID (or ACQUIRE_BASE_URL)");
        lua_pop(L, 1);
        lua_newtable(L);
        from_env(L, "api_key", "ACQUIRE_API_KEY");
        {
            const char *base = getenv("ACQUIRE_BASE_URL");
            if (base != NULL && base[0] != '\0')
                from_env(L, "base_url", "ACQUIRE_BASE_URL");   /* then ACQUIRE_ACCOUNT_ID is unused */
            else
                from_env(L, "account_id", "ACQUIRE_ACCOUNT_ID");
        }
        make(L, lua_gettop(L));
        lua_remove(L, -2);
        lua_pushvalue(L, -1);
        acq_rawsetp(L, LUA_REGISTRYINDEX, &default_key);
    }
    c = (acq_client_t *)luaL_checkudata(L, -1, ACQ_MT_CLIENT);
    if (!c->open) luaL_error(L, "acquire: the configured client is closed");
    return c;
}

/* acquire.create_case(contactId, opts) through the default client */
int client_l_default_create_case(lua_State *L) {
    acq_client_t *c;
    lua_settop(L, 2);
    c = client_default(L);                                    /* 3 */
    client_check_reentry(L, c);
    return create_case(L, c, 1);
}
