/*
 * client.c: the acquire.Client userdata, and the blocking driver of the
 * call engine (call.c): it moves a call's bytes with libcurl (transport.c),
 * waits when the engine says so, and writes the engine's log lines.
 *
 * The userdata gets its metatable while still empty, so __gc can always
 * run; resources are attached after, and one idempotent close serves
 * close(), __gc and __close.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
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
/* This process's id, read once and again only after a fork(): a pending
   call's step() asks for it every time (getpid is a system call). */
static long pid_now;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_forget(void) { __atomic_store_n(&pid_now, 0, __ATOMIC_RELAXED); }
/* (glibc unregisters a module's handlers when it is unloaded) */
static void pid_watch(void) { pthread_atfork(NULL, NULL, pid_forget); }

long client_pid(void) {
    long pid;
    pthread_once(&pid_once, pid_watch);
    pid = __atomic_load_n(&pid_now, __ATOMIC_RELAXED);
    if (pid == 0) {
        pid = (long)getpid();
        __atomic_store_n(&pid_now, pid, __ATOMIC_RELAXED);
    }
    return pid;
}

void client_check_fork(lua_State *L, acq_client_t *c) {
    long pid = client_pid();
    if (c->pid == pid) return;
    transport_disown(&c->sockets);
    if (c->release_batch) c->release_batch(c);
    if (c->t.tmpl && transport_renew(&c->t) != 0)
        luaL_error(L, "acquire: cannot set up libcurl after fork()");
    c->pid = pid;
}

static void release(lua_State *L, acq_client_t *c) {
    c->open = 0;
    if (c->pid != client_pid()) transport_disown(&c->sockets);   /* a child closing */
    if (c->release_pending) c->release_pending(L, c);   /* cancelled: their transfers use the share */
    if (c->release_batch) c->release_batch(c);   /* its handles use c->t's header list */
    transport_close(&c->t);
    engine_free(L, &c->e);
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
    c->e.claims = c->e.inflight = LUA_NOREF;
    acq_setmetatable(L, ACQ_MT_CLIENT);
    c->timeout_ms = cfg.timeout_ms;
    c->pid = client_pid();
    c->logger = LUA_NOREF;
    if (!engine_init(L, &c->e, &cfg)) {
        release(L, c);
        luaL_error(L, "not enough memory");
        return NULL;
    }
    c->t.sockets = &c->sockets;
    c->t.proxy_display = c->e.proxy_display;
    n = request_headers(&cfg, transport_user_agent(&cfg, ua), h);
    for (i = 0; i < n; i++)
        lines[i] = lua_pushfstring(L, "%s: %s%s", h[i].name, h[i].prefix, h[i].value);
    lines[n] = NULL;
    if (transport_init(&c->t, &cfg, lines, &what) != 0) {
        release(L, c);
        luaL_error(L, "acquire: cannot set up libcurl (%s)", what);
    }
    lua_pop(L, n);
    if (cfg.logger) {
        lua_pushliteral(L, "logger");
        lua_rawget(L, idx);
        c->logger = luaL_ref(L, LUA_REGISTRYINDEX);
    }
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

/* ---- the log ---------------------------------------------------------- */

void client_check_reentry(lua_State *L, acq_client_t *c) {
    if (c->logging) luaL_error(L, "acquire: a client cannot be used from its own logger");
}

/* One line (on top, popped) at level: to the logger, under pcall, or to
   stderr. A logger that raises loses nothing: that line and its error go
   to stderr, and the call goes on. */
static void client_log_line(lua_State *L, acq_client_t *c, const char *level) {
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
            redact_push(L, m, n, c->e.secrets);
            fprintf(stderr, "acquire: logger raised: %s\n", lua_tostring(L, -1));
        }
    }
    fprintf(stderr, "acquire: %s: %s\n", level, lua_tostring(L, line));
    lua_settop(L, line - 1);
}

static void write_line(lua_State *L, void *ud, const char *level) {
    client_log_line(L, (acq_client_t *)ud, level);
}

double client_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double client_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void client_observe_wait(acq_obs_t *o) {
    memset(o, 0, sizeof *o);
    o->now = client_monotonic();
    o->wall = client_clock();
}

void client_write_lines(lua_State *L, acq_client_t *c, int vals) {
    call_drain(L, vals, write_line, c);
}

/* The blocking driver: the call's steps, one after another, on the
   client's own handles, from the first (resume NULL) or from after a
   wait. Pushes res (returns 1) or nil, err (2). */
int client_drive(lua_State *L, acq_client_t *c, acq_call_t *call, int vals,
                 const acq_obs_t *resume) {
    acq_step_t s;
    acq_obs_t o;
    acq_result_t r;
    vals = acq_absindex(L, vals);
    call_next(L, call, vals, resume, &s);
    for (;;) {
        if (s.lines) call_drain(L, vals, write_line, c);
        if (s.action == ACQ_DONE) return s.nret;
        if (s.action == ACQ_WAIT) {
            policy_sleep(s.wait);
            client_observe_wait(&o);
        } else {
            if (transport_perform(&c->t, s.url, s.body, s.len, &r) != 0) {
                call_abandon(L, call, vals);
                luaL_error(L, "not enough memory");
            }
            transport_observe(&c->t, &r, client_monotonic(), client_clock(), &o);
        }
        call_next(L, call, vals, &o, &s);
    }
}

/* contactId at arg, opts at arg + 1 */
static int create_case(lua_State *L, acq_client_t *c, int arg) {
    acq_call_t call;
    long long id = request_check_contact_id(L, arg);
    call_create(L, &call, &c->e, id, arg + 1, 0);     /* raises on misuse: nothing sent */
    client_check_fork(L, c);
    return client_drive(L, c, &call, -1, NULL);
}

/* ---- reading cases back --------------------------------------------- */

static int find_cases(lua_State *L, acq_client_t *c, long long id, int filter) {
    acq_call_t call;
    call_find(L, &call, &c->e, id, lua_isnoneornil(L, filter) ? 0 : filter);
    client_check_fork(L, c);
    return client_drive(L, c, &call, -1, NULL);
}

/* client:find_cases(contactId [, filter]) -> { case, … } | nil, err */
int client_l_find_cases(lua_State *L) {
    acq_client_t *c = client_check_open(L, 1);
    client_check_reentry(L, c);
    lua_settop(L, 3);
    return find_cases(L, c, request_check_contact_id(L, 2), 3);
}

/* acquire.find_cases(contactId [, filter]) through the default client */
int client_l_default_find_cases(lua_State *L) {
    acq_client_t *c;
    lua_settop(L, 2);
    c = client_default(L);                                    /* 3 */
    client_check_reentry(L, c);
    return find_cases(L, c, request_check_contact_id(L, 1), 2);
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
    release(L, c);
    if (c->logger != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->logger);
    c->logger = LUA_NOREF;
    return 0;
}

int client_l_tostring(lua_State *L) {
    acq_client_t *c = (acq_client_t *)luaL_checkudata(L, 1, ACQ_MT_CLIENT);
    if (!c->open)
        lua_pushfstring(L, "acquire.Client (closed): %p", (void *)c);
    else {
        lua_pushfstring(L, "acquire.Client (%s%s%s): %p", c->e.base,
                        c->e.proxy_display ? " via proxy " : "",
                        c->e.proxy_display ? c->e.proxy_display : "", (void *)c);
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

/* The configuration the environment gives: api_key from ACQUIRE_API_KEY,
   base_url from ACQUIRE_BASE_URL, or account_id from ACQUIRE_ACCOUNT_ID when
   ACQUIRE_BASE_URL is not set (empty counts as not set). Pushed. */
static void push_env(lua_State *L) {
    const char *base = getenv("ACQUIRE_BASE_URL");
    lua_newtable(L);
    from_env(L, "api_key", "ACQUIRE_API_KEY");
    if (base != NULL && base[0] != '\0') from_env(L, "base_url", "ACQUIRE_BASE_URL");
    else from_env(L, "account_id", "ACQUIRE_ACCOUNT_ID");
}

/* acquire.env() -> { api_key, base_url | account_id }: what the environment
   configures (the default client's, and acquire-case's defaults) */
int client_l_env(lua_State *L) {
    push_env(L);
    return 1;
}

/* The client acquire.create_case(s) use: the configured one, or one made
   once from the environment (push_env). Pushed. */
acq_client_t *client_default(lua_State *L) {
    acq_client_t *c;
    acq_rawgetp(L, LUA_REGISTRYINDEX, &default_key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        push_env(L);
        lua_getfield(L, -1, "api_key");
        if (lua_isnil(L, -1))
            luaL_error(L, "acquire: no api_key: call acquire.configure{ api_key = ..., "
                          "account_id = ... } or set ACQUIRE_API_KEY and "
                          "ACQUIRE_ACCOUNT_ID (or ACQUIRE_BASE_URL)");
        lua_pop(L, 1);
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
