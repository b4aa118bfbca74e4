/*
 * call.c: the call engine (see call.h). One state machine for every call,
 * whoever moves its bytes: create (attempts, retries, then reconcile's
 * wait, lookups and settling) and find (the case list, page by page). It
 * owns the policy's decisions, the deadline, the claims and the in-flight
 * set, and the wording of every log line and every transport error. It
 * never touches the network and never sleeps: it answers SEND or WAIT,
 * and the driver comes back with what it saw.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "call.h"

/* ---- the engine: what a client's calls share --------------------------- */

/* Copies cfg's secrets (the key, then the proxy's credentials) into one
   block the engine owns and wipes. 0 on ENOMEM. */
static int keep_secrets(acq_engine_t *e, const acq_config_t *cfg) {
    const acq_secret_t *k;
    size_t total = 0, at = 0;
    int i = 0;
    for (k = cfg->secrets; k; k = k->next) total += k->len + 1;
    e->keys = (char *)malloc(total ? total : 1);
    if (e->keys == NULL) return 0;
    e->keys_len = total;
    for (k = cfg->secrets; k && i < ACQ_MAX_SECRETS; k = k->next, i++) {
        memcpy(e->keys + at, k->p, k->len);
        e->keys[at + k->len] = '\0';
        e->secrets[i].p = e->keys + at;
        e->secrets[i].len = k->len;
        e->secrets[i].next = NULL;
        if (i > 0) e->secrets[i - 1].next = &e->secrets[i];
        at += k->len + 1;
    }
    return 1;
}

int engine_init(lua_State *L, acq_engine_t *e, const acq_config_t *cfg) {
    memset(e, 0, sizeof *e);
    e->claims = e->inflight = LUA_NOREF;
    e->max_retries = cfg->max_retries;
    e->strict = cfg->strict;
    e->debug = cfg->debug;
    e->reconcile_ms = cfg->reconcile_ms;
    e->timeout = (double)cfg->timeout_ms / 1000.0;
    e->max_response_bytes = cfg->max_response_bytes;
    e->proxy_mode = cfg->proxy_mode;
    e->rng = policy_seed(e);
    e->base = (char *)malloc(cfg->base_len + 1);
    if (e->base == NULL) return 0;
    memcpy(e->base, cfg->base_url, cfg->base_len);
    e->base[cfg->base_len] = '\0';
    e->base_len = cfg->base_len;
    if (cfg->proxy && (e->proxy_display = strdup(cfg->proxy_display)) == NULL) return 0;
    if (!keep_secrets(e, cfg)) return 0;
    reconcile_push_claims(L);
    e->claims = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    e->inflight = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

void engine_free(lua_State *L, acq_engine_t *e) {
    buf_free(&e->req);
    free(e->base);
    e->base = NULL;
    free(e->proxy_display);
    e->proxy_display = NULL;
    if (e->keys) acq_wipe(e->keys, e->keys_len);
    free(e->keys);
    e->keys = NULL;
    e->secrets[0].p = NULL;
    e->secrets[0].len = 0;
    e->secrets[0].next = NULL;
    if (e->claims != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, e->claims);
    if (e->inflight != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, e->inflight);
    e->claims = e->inflight = LUA_NOREF;
}

void engine_claim(lua_State *L, acq_engine_t *e, int res) {
    res = acq_absindex(L, res);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->claims);
    reconcile_claim(L, -1, res);
    lua_pop(L, 1);
}

/* ---- the in-flight set: calls whose create attempts are not over ------ */
/* By what they send (contact, title, description): a case one of them
   created, its answer not in yet, is not claimed yet, and a lookup must
   not take it for another call's. */

static int inflight_count(lua_State *L, acq_call_t *call, int vals) {
    int n;
    if (call->e->inflight == LUA_NOREF) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, call->e->inflight);
    lua_rawgeti(L, vals, V_KEY);
    lua_rawget(L, -2);
    n = (int)lua_tonumber(L, -1);
    lua_pop(L, 2);
    return n;
}

static void inflight_add(lua_State *L, acq_call_t *call, int vals, int d) {
    int n = inflight_count(L, call, vals) + d;
    lua_rawgeti(L, LUA_REGISTRYINDEX, call->e->inflight);
    lua_rawgeti(L, vals, V_KEY);
    if (n > 0) lua_pushinteger(L, n); else lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    call->counted = d > 0;
}

/* The key of what the filter at idx (reconcile_push_filter's) looks for. */
static void push_key(lua_State *L, int filter) {
    static const char *const f[] = { "contactId", "title", "description" };
    luaL_Buffer b;
    int i;
    filter = acq_absindex(L, filter);
    luaL_buffinit(L, &b);
    for (i = 0; i < 3; i++) {
        size_t n;
        const char *s;
        lua_getfield(L, filter, f[i]);
        s = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
            ? lua_tolstring(L, -1, &n) : (n = 0, "");
        luaL_addlstring(&b, s, n);               /* (then pops the value) */
        lua_pop(L, 1);
        luaL_addchar(&b, '\0');
    }
    luaL_pushresult(&b);
}

/* ---- the log: every line's wording ----------------------------------- */

/* The line on top (popped), redacted, queued at level. */
static void queue_line(lua_State *L, int vals, const char *level, acq_step_t *s,
                       const acq_engine_t *e) {
    size_t n;
    const char *t = lua_tolstring(L, -1, &n);
    int k;
    redact_push(L, t, n, e->secrets);
    lua_remove(L, -2);
    lua_rawgeti(L, vals, V_LINES);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawseti(L, vals, V_LINES);
    }
    k = (int)acq_rawlen(L, -1);
    lua_pushstring(L, level);
    lua_rawseti(L, -2, k + 1);
    lua_insert(L, -2);
    lua_rawseti(L, -2, k + 2);
    lua_pop(L, 1);
    s->lines++;
}

/* A body as one line: redacted, CR and LF written \r and \n, at most
   ACQ_DEBUG_BODY_CAP bytes of it. Pushed. */
static void push_body(lua_State *L, const acq_engine_t *e, const char *s, size_t n) {
    luaL_Buffer b;
    size_t i, m;
    const char *r;
    redact_push(L, s, n, e->secrets);
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

void call_drain(lua_State *L, int vals, void (*fn)(lua_State *L, void *ud, const char *level),
                void *ud) {
    int i, n;
    vals = acq_absindex(L, vals);
    lua_rawgeti(L, vals, V_LINES);
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
    lua_pushnil(L);
    lua_rawseti(L, vals, V_LINES);            /* taken: a raising sink loses no others' */
    n = (int)acq_rawlen(L, -1);
    for (i = 1; i + 1 <= n; i += 2) {
        const char *level;
        lua_rawgeti(L, -1, i);
        level = lua_tostring(L, -1);
        lua_rawgeti(L, -2, i + 1);
        fn(L, ud, level);                     /* pops the text */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* ---- one attempt's outcome -------------------------------------------- */

static const char *const kinds[] = { "network", "timeout", "tls", "proxy", "http" };

/* Pushes nil, err for a transfer that brought no whole answer of Acquire's. */
static void push_failure(lua_State *L, const acq_engine_t *e, const acq_obs_t *o, int proxy) {
    const char *kind, *detail = o->detail ? o->detail : "transfer failed";
    char msg[96];
    int err;
    kind = o->too_large ? kinds[4] : proxy ? kinds[3] : o->timed_out ? kinds[1]
         : o->stage == ACQ_STAGE_TLS ? kinds[2] : kinds[0];
    lua_pushnil(L);
    if (o->too_large) {
        snprintf(msg, sizeof msg, "response body exceeds max_response_bytes (%ld)",
                 e->max_response_bytes);
        lua_pushstring(L, msg);
    } else if (proxy) {
        lua_pushfstring(L, "proxy %s: ", e->proxy_display ? e->proxy_display : "?");
        if (o->stage == ACQ_STAGE_PROXY_ANSWER || (o->stage < ACQ_STAGE_PROXY_CONNECT && o->status == 407)) {
            if (e->proxy_mode == ACQ_PROXY_MODE_TUNNEL)
                lua_pushfstring(L, "answered CONNECT with %d", (int)o->proxy_status);
            else
                lua_pushliteral(L, "answered 407 (Proxy Authentication Required)");
        } else if (o->stage == ACQ_STAGE_PROXY_CONNECT)
            lua_pushfstring(L, "could not connect (%s)", detail);
        else if (o->stage == ACQ_STAGE_PROXY_TUNNEL)
            lua_pushfstring(L, "the tunnel closed before TLS to Acquire was up (%s)", detail);
        else
            lua_pushstring(L, detail);
        lua_concat(L, 2);
    } else {
        lua_pushstring(L, detail);
    }
    err = error_new(L, kind);
    {
        size_t n;
        const char *m = lua_tolstring(L, err - 1, &n);
        error_setstring(L, err, "message", m, n, e->secrets, ACQ_BODY_CAP);
    }
    lua_remove(L, err - 1);
    err--;
    if (o->code && !o->too_large) error_setint(L, err, "code", o->code);
    if (o->sys_errno && !o->sent) error_setint(L, err, "errno", o->sys_errno);
    if (proxy) {
        long ps = o->proxy_status ? o->proxy_status : o->status == 407 ? 407 : 0;
        if (ps > 0) error_setint(L, err, "proxy_status", ps);
    } else if (o->status > 0) {
        error_setint(L, err, "status", o->status);
    }
    error_setbool(L, err, "maybe_created", !proxy && o->sent);
}

/* What the attempt came to: res (1) or nil, err (2), pushed; and its
   answer's log lines. */
static int outcome(lua_State *L, acq_call_t *call, int vals, const acq_obs_t *o, acq_step_t *s) {
    acq_engine_t *e = call->e;
    int proxy = o->stage >= ACQ_STAGE_PROXY_CONNECT ||
                (o->status > 0 && policy_from_proxy(e->proxy_mode, 0, o->status));
    if (o->answered && !proxy) {
        if (e->debug) {
            char ms[32];
            snprintf(ms, sizeof ms, "%.1f", o->elapsed * 1000.0);
            lua_pushfstring(L, "%sattempt %d: %d in %s ms, %d bytes", call->pfx, call->attempt,
                            (int)o->status, ms, (int)o->body_len);
            queue_line(L, vals, "debug", s, e);
            if (e->debug == 2) {
                lua_pushfstring(L, "%sattempt %d: < ", call->pfx, call->attempt);
                push_body(L, e, o->body ? o->body : "", o->body_len);
                lua_concat(L, 2);
                queue_line(L, vals, "debug", s, e);
            }
        }
        return response_decode(L, o->status, o->body ? o->body : "", o->body_len,
                               o->retry_after, e->secrets);
    }
    push_failure(L, e, o, proxy);
    return 2;
}

/* ---- the steps --------------------------------------------------------- */

static void step_send(lua_State *L, acq_call_t *call, int vals, acq_step_t *s) {
    acq_engine_t *e = call->e;
    size_t len = 0;
    s->action = ACQ_SEND;
    s->deadline = call->deadline;
    if (call->page >= 0) {                          /* a page of the case list */
        acq_config_t base;
        memset(&base, 0, sizeof base);
        base.base_url = e->base;
        base.base_len = e->base_len;
        reconcile_list_url(&base, call->id, call->page, call->url);
        s->method = "GET";
        s->body = NULL;
    } else {
        snprintf(call->url, sizeof call->url, "%s" ACQ_URL_PREFIX "%lld", e->base, call->id);
        s->method = "POST";
        lua_rawgeti(L, vals, V_BODY);
        s->body = lua_tolstring(L, -1, &len);       /* anchored in vals */
        lua_pop(L, 1);
    }
    s->url = call->url;
    s->len = len;
    call->phase = P_ATTEMPT;
    if (!e->debug) return;
    lua_pushfstring(L, "%sattempt %d: %s %s%s%s", call->pfx, call->attempt, s->method, s->url,
                    e->proxy_display ? " via proxy " : "",
                    e->proxy_display ? e->proxy_display : "");
    queue_line(L, vals, "debug", s, e);
    if (e->debug == 2 && s->body) {
        lua_pushfstring(L, "%sattempt %d: > ", call->pfx, call->attempt);
        push_body(L, e, s->body, len);
        lua_concat(L, 2);
        queue_line(L, vals, "debug", s, e);
    }
}

static void step_wait(acq_call_t *call, int phase, double seconds, acq_step_t *s) {
    call->phase = phase;
    s->action = ACQ_WAIT;
    s->wait = seconds > 0 ? seconds : 0;
    s->reconcile = phase == P_RECONCILE;
}

/* DONE with what is on top: res (n = 1) or nil, err (n = 2). */
static void done(acq_call_t *call, int n, acq_step_t *s) {
    call->phase = P_DONE;
    s->action = ACQ_DONE;
    s->nret = n;
}

/* The lookup begins: the filter of what was sent, page 0. */
static void look(lua_State *L, acq_call_t *call, int vals, const acq_obs_t *o, acq_step_t *s) {
    lua_rawgeti(L, vals, V_OPTS);
    reconcile_push_filter(L, call->id, -1, call->started, o->wall);
    lua_rawseti(L, vals, V_FILTER);
    lua_pop(L, 1);
    lua_newtable(L);
    lua_rawseti(L, vals, V_FOUND);
    call->page = 0;
    call->attempt = 1;
    call->deadline = call->e->whole_call ? o->now + call->e->timeout : 0;
    step_send(L, call, vals, s);
}

/* The lookup is over: the cases found are in V_FOUND, or (failed) its err
   is on top. Replaces that err by the call's results. */
static void looked(lua_State *L, acq_call_t *call, int vals, int failed, acq_step_t *s) {
    int lerr, n, i, top, twins;
    if (!failed) lua_pushnil(L);
    lerr = lua_gettop(L);                               /* the lookup's err, or nil */
    if (call->find) {
        if (failed) { lua_pushnil(L); lua_insert(L, lerr); done(call, 2, s); }
        else { lua_pop(L, 1); lua_rawgeti(L, vals, V_FOUND); done(call, 1, s); }
        return;
    }
    lua_rawgeti(L, vals, V_ERR);                        /* lerr + 1 */
    if (failed) lua_pushnil(L); else lua_rawgeti(L, vals, V_FOUND);   /* lerr + 2 */
    twins = failed ? 0 : inflight_count(L, call, vals);
    if (twins > 0 && acq_rawlen(L, lerr + 2) > 0) {
        /* a twin still on its way: a case found may be its own, its answer
           not in yet */
        int err = lerr + 1, m = (int)acq_rawlen(L, lerr + 2);
        lua_pushliteral(L, "ambiguous");
        lua_setfield(L, err, "reconcile");
        error_setint(L, err, "in_flight", twins);
        lua_createtable(L, m, 0);
        for (i = 1; i <= m; i++) {
            lua_rawgeti(L, lerr + 2, i);
            lua_getfield(L, -1, "id");
            lua_rawseti(L, -3, i);
            lua_pop(L, 1);
        }
        lua_setfield(L, err, "candidates");
        lua_pushnil(L);
        lua_pushvalue(L, err);
        n = 2;
    } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, call->e->claims);   /* lerr + 3 */
        n = reconcile_settle(L, lerr + 1, lerr + 2, lerr, lerr + 3);
    }
    top = lua_gettop(L);
    for (i = 0; i < n; i++) {                           /* the results down to lerr */
        lua_pushvalue(L, top - n + 1 + i);
        lua_replace(L, lerr + i);
    }
    lua_settop(L, lerr + n - 1);
    done(call, n, s);
}

/* After a failed attempt (err on top, nil below it): retry, reconcile or done. */
static void failed(lua_State *L, acq_call_t *call, int vals, const acq_obs_t *o, acq_step_t *s) {
    acq_engine_t *e = call->e;
    int err = lua_gettop(L), looking = call->page >= 0;
    double wait_s;
    char secs[32];
    if (looking) error_setbool(L, err, "maybe_created", 0);   /* a read creates nothing */
    s->pause = policy_pause(L, err);
    wait_s = policy_next(L, err, call->attempt, e->max_retries, &e->rng);
    if (wait_s >= 0 && call->deadline > 0 && o->now + wait_s >= call->deadline) {
        wait_s = -1;                                   /* it would end past the deadline */
        error_setint(L, err, "attempts", call->attempt);
    }
    if (e->debug) {
        snprintf(secs, sizeof secs, "%.2f", wait_s);
        lua_pushfstring(L, "%sattempt %d failed: ", call->pfx, call->attempt);
        error_pushstring(L, err);
        if (wait_s >= 0) lua_pushfstring(L, "; retrying in %s s", secs);
        else lua_pushliteral(L, "; giving up");
        lua_concat(L, 3);
        queue_line(L, vals, wait_s >= 0 ? "warn" : "error", s, e);
    }
    if (wait_s >= 0) {
        lua_pop(L, 2);
        step_wait(call, P_RETRY, wait_s, s);
        return;
    }
    if (looking) {
        lua_remove(L, -2);
        looked(L, call, vals, 1, s);
        return;
    }
    if (call->counted) inflight_add(L, call, vals, -1);
    lua_getfield(L, err, "maybe_created");
    if (e->reconcile_ms >= 0 && lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        lua_rawseti(L, vals, V_ERR);
        lua_pop(L, 1);
        step_wait(call, P_RECONCILE, (double)e->reconcile_ms / 1000.0, s);
        return;
    }
    lua_pop(L, 1);
    done(call, 2, s);
}

void call_next(lua_State *L, acq_call_t *call, int vals, const acq_obs_t *o, acq_step_t *s) {
    acq_engine_t *e = call->e;
    vals = acq_absindex(L, vals);
    memset(s, 0, sizeof *s);
    s->pause = -1;
    luaL_checkstack(L, 12, "acquire: a call");
    switch (call->phase) {
    case P_START:
        call->attempt = 1;
        call->deadline = e->whole_call && o ? o->now + e->timeout : 0;
        if (o) call->started = o->wall;
        step_send(L, call, vals, s);
        return;
    case P_ATTEMPT:
        if (call->started == 0) call->started = o->wall - o->elapsed;
        if (outcome(L, call, vals, o, s) == 2) {
            failed(L, call, vals, o, s);
            return;
        }
        if (call->page < 0) {                           /* created */
            engine_claim(L, e, -1);
            if (call->counted) inflight_add(L, call, vals, -1);
            done(call, 1, s);
            return;
        }
        {
            acq_filter_t f;
            int more;
            lua_rawgeti(L, vals, V_FILTER);
            reconcile_check_filter(L, -1, &f);
            f.contact = call->id;
            lua_rawgeti(L, vals, V_FOUND);
            more = reconcile_collect(L, -3, call->page, &f, -1);
            lua_pop(L, 3);
            if (more && call->page + 1 < ACQ_LIST_MAX_PAGES) {
                call->page++;
                call->attempt = 1;
                step_send(L, call, vals, s);
            } else {
                looked(L, call, vals, 0, s);
            }
        }
        return;
    case P_RETRY:
        call->attempt++;
        step_send(L, call, vals, s);
        return;
    case P_RECONCILE:
        call->until = o->now + e->timeout;
        /* fall through */
    case P_TWINS:
        if (e->wait_in_flight && o->now < call->until && inflight_count(L, call, vals) > 0)
            step_wait(call, P_TWINS, 0.01, s);
        else
            look(L, call, vals, o, s);
        return;
    default:
        luaL_error(L, "acquire: the call is over");
    }
}

static void init(acq_call_t *call, acq_engine_t *e, long long id) {
    memset(call, 0, sizeof *call);
    call->e = e;
    call->id = id;
    call->page = -1;
}

void call_create(lua_State *L, acq_call_t *call, acq_engine_t *e, long long id,
                 int opts, int body) {
    opts = acq_absindex(L, opts);
    if (body) body = acq_absindex(L, body);
    init(call, e, id);
    lua_createtable(L, V_ANCHOR, 0);
    if (body) {
        lua_pushvalue(L, body);
    } else {                                  /* the engine's buffer: no allocation a call */
        request_encode_body(L, opts, e->strict, &e->req);
        lua_pushlstring(L, e->req.p, e->req.len);
    }
    lua_rawseti(L, -2, V_BODY);
    lua_pushvalue(L, opts);
    lua_rawseti(L, -2, V_OPTS);
    if (e->reconcile_ms >= 0) {                /* counted while its attempts go on */
        reconcile_push_filter(L, id, opts, 0, 0);
        push_key(L, -1);
        lua_rawseti(L, -3, V_KEY);
        lua_pop(L, 1);
        inflight_add(L, call, lua_gettop(L), 1);
    }
}

void call_find(lua_State *L, acq_call_t *call, acq_engine_t *e, long long id, int filter) {
    acq_filter_t f;
    if (filter) filter = acq_absindex(L, filter);
    if (filter) reconcile_check_filter(L, filter, &f);      /* raises on misuse */
    init(call, e, id);
    call->find = 1;
    call->page = 0;
    lua_createtable(L, V_ANCHOR, 0);
    if (filter) lua_pushvalue(L, filter); else lua_newtable(L);
    lua_rawseti(L, -2, V_FILTER);
    lua_newtable(L);
    lua_rawseti(L, -2, V_FOUND);
}

void call_push_err(lua_State *L, int vals) {
    lua_rawgeti(L, vals, V_ERR);
}

void call_abandon(lua_State *L, acq_call_t *call, int vals) {
    if (call->counted) inflight_add(L, call, acq_absindex(L, vals), -1);
    call->phase = P_DONE;
}

void call_cancel(lua_State *L, acq_call_t *call, int vals, int sent, int why, acq_step_t *s) {
    int err, maybe = sent && call->page < 0;  /* its POST on its way (a lookup's GET creates nothing) */
    vals = acq_absindex(L, vals);
    memset(s, 0, sizeof *s);
    lua_rawgeti(L, vals, V_ERR);               /* reconcile's: an earlier attempt may have created it */
    if (!call->find && lua_istable(L, -1)) {
        lua_getfield(L, -1, "maybe_created");
        maybe = maybe || lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    call_abandon(L, call, vals);
    if (why != ACQ_CANCEL_ASKED && maybe) {    /* lua_pushfstring knows no %lld */
        char line[200];
        snprintf(line, sizeof line, "a pending call for contact %lld was %s after its request "
                 "was sent: its case may exist", call->id,
                 why == ACQ_CANCEL_COLLECTED ? "collected unfinished" : "cancelled by client:close()");
        lua_pushstring(L, line);
        queue_line(L, vals, "warn", s, call->e);
    }
    err = error_new(L, "cancelled");
    lua_pushliteral(L, "the call was cancelled before it finished");
    lua_setfield(L, err, "message");
    error_setbool(L, err, "maybe_created", maybe);
}

