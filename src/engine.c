/*
 * engine.c: the call engine's Lua face, for drivers written in Lua
 * (acquire.ngx): acquire.engine(options [, log]) -> engine, whose
 * create_case and find_cases return calls; call:next(obs) answers
 * "send", "wait" or "done" (call.c decides; this file only translates
 * tables to and from its C structs). Its engine has whole_call (timeout
 * bounds the call, retries included) and wait_in_flight.
 */
#include <string.h>
#include "call.h"

typedef struct lengine_t {
    acq_engine_t e;
    int          log;                 /* registry ref: log(level, text), or LUA_NOREF */
    int          open;
} lengine_t;

typedef struct lcall_t {
    acq_call_t call;
    int        vals;                  /* registry ref of its values; LUA_NOREF once collected */
} lcall_t;

static int engine_gc(lua_State *L) {
    lengine_t *g = (lengine_t *)luaL_checkudata(L, 1, ACQ_MT_ENGINE);
    if (!g->open) return 0;
    g->open = 0;
    engine_free(L, &g->e);
    if (g->log != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, g->log);
    g->log = LUA_NOREF;
    return 0;
}

/* acquire.engine(options [, log]) -> engine; options as acquire.new's */
int engine_l_new(lua_State *L) {
    acq_config_t cfg;
    lengine_t *g;
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    config_check(L, 1, &cfg);                            /* 3 */
    g = (lengine_t *)acq_newuserdata(L, sizeof *g);
    memset(g, 0, sizeof *g);
    g->log = LUA_NOREF;
    g->e.claims = g->e.inflight = LUA_NOREF;
    acq_setmetatable(L, ACQ_MT_ENGINE);
    g->open = 1;
    if (!engine_init(L, &g->e, &cfg)) luaL_error(L, "not enough memory");
    g->e.whole_call = 1;
    g->e.wait_in_flight = 1;
    if (!lua_isnil(L, 2)) {
        lua_pushvalue(L, 2);
        g->log = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 1;
}

static lcall_t *new_call(lua_State *L, int engine) {
    lcall_t *c = (lcall_t *)acq_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->vals = LUA_NOREF;
    acq_setmetatable(L, ACQ_MT_CALL);
    (void)engine;
    return c;
}

/* the values table on top: kept by the call (with its engine, so the
   engine outlives its calls) */
static void keep_vals(lua_State *L, lcall_t *c, int engine) {
    lua_pushvalue(L, engine);
    lua_rawseti(L, -2, V_ANCHOR);
    c->vals = luaL_ref(L, LUA_REGISTRYINDEX);
}

static lengine_t *check_engine(lua_State *L) {
    lengine_t *g = (lengine_t *)luaL_checkudata(L, 1, ACQ_MT_ENGINE);
    if (!g->open) luaL_error(L, "acquire: the engine is closed");
    return g;
}

/* engine:create_case(contactId, opts) -> call (raises on misuse: nothing sent) */
static int engine_l_create_case(lua_State *L) {
    lengine_t *g = check_engine(L);
    long long id = request_check_contact_id(L, 2);
    lcall_t *c;
    lua_settop(L, 3);
    c = new_call(L, 1);                                  /* 4 */
    call_create(L, &c->call, &g->e, id, 3, 0);
    keep_vals(L, c, 1);
    return 1;
}

/* engine:find_cases(contactId [, filter]) -> call */
static int engine_l_find_cases(lua_State *L) {
    lengine_t *g = check_engine(L);
    long long id = request_check_contact_id(L, 2);
    lcall_t *c;
    lua_settop(L, 3);
    c = new_call(L, 1);
    call_find(L, &c->call, &g->e, id, lua_isnil(L, 3) ? 0 : 3);
    keep_vals(L, c, 1);
    return 1;
}

static const char *const stages[] = { "", "connect", "tls", "send", "recv", "proxy_connect",
                                      "proxy_answer", "proxy_tunnel", "proxy", NULL };

static double num_field(lua_State *L, int t, const char *k, double def) {
    double v;
    lua_getfield(L, t, k);
    v = lua_isnumber(L, -1) ? (double)lua_tonumber(L, -1) : def;
    lua_pop(L, 1);
    return v;
}

static int bool_field(lua_State *L, int t, const char *k) {
    int v;
    lua_getfield(L, t, k);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* obs (a table at 2) into o; its strings stay in the table */
static void read_obs(lua_State *L, acq_obs_t *o) {
    memset(o, 0, sizeof *o);
    o->now = num_field(L, 2, "now", 0);
    o->wall = num_field(L, 2, "wall", o->now);
    o->elapsed = num_field(L, 2, "elapsed", 0);
    o->status = (long)num_field(L, 2, "status", 0);
    o->proxy_status = (long)num_field(L, 2, "proxy_status", 0);
    o->sent = bool_field(L, 2, "sent");
    o->timed_out = bool_field(L, 2, "timeout");
    o->too_large = bool_field(L, 2, "too_large");
    lua_getfield(L, 2, "body");
    if (lua_type(L, -1) == LUA_TSTRING) {
        o->body = lua_tolstring(L, -1, &o->body_len);
        o->answered = o->status > 0;
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "detail");
    o->detail = lua_tostring(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 2, "stage");
    o->stage = lua_isnil(L, -1) ? 0 : luaL_checkoption(L, -1, NULL, stages);
    lua_pop(L, 1);
    lua_getfield(L, 2, "headers");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "retry-after");
        o->retry_after = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void lua_sink(lua_State *L, void *ud, const char *level) {
    lengine_t *g = (lengine_t *)ud;
    if (g->log == LUA_NOREF) { lua_pop(L, 1); return; }
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->log);
    lua_pushstring(L, level);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
}

/* call:next([obs]) -> "send", { method, url, body, deadline } | "wait", seconds
   | "done", res | "done", nil, err */
static int call_l_next(lua_State *L) {
    lcall_t *c = (lcall_t *)luaL_checkudata(L, 1, ACQ_MT_CALL);
    acq_obs_t o;
    acq_step_t s;
    int vals, n;
    lengine_t *g;
    if (c->vals == LUA_NOREF || c->call.phase == P_DONE) luaL_error(L, "acquire: the call is over");
    if (c->call.phase != P_START) luaL_checktype(L, 2, LUA_TTABLE);
    else if (!lua_istable(L, 2)) { lua_settop(L, 1); lua_newtable(L); }
    lua_settop(L, 2);
    read_obs(L, &o);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->vals);          /* 3 */
    vals = 3;
    lua_rawgeti(L, vals, V_ANCHOR);
    g = (lengine_t *)lua_touserdata(L, -1);
    lua_pop(L, 1);
    call_next(L, &c->call, vals, &o, &s);
    n = lua_gettop(L);
    if (s.lines) call_drain(L, vals, lua_sink, g);
    if (s.action == ACQ_DONE) {
        luaL_unref(L, LUA_REGISTRYINDEX, c->vals);
        c->vals = LUA_NOREF;
        lua_pushliteral(L, "done");
        lua_insert(L, n - s.nret + 1);
        return s.nret + 1;
    }
    if (s.action == ACQ_WAIT) {
        lua_pushliteral(L, "wait");
        lua_pushnumber(L, s.wait);
        return 2;
    }
    lua_pushliteral(L, "send");
    lua_createtable(L, 0, 4);
    lua_pushstring(L, s.method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, s.url);
    lua_setfield(L, -2, "url");
    if (s.body) {
        lua_pushlstring(L, s.body, s.len);
        lua_setfield(L, -2, "body");
    }
    if (s.deadline > 0) {
        lua_pushnumber(L, s.deadline);
        lua_setfield(L, -2, "deadline");
    }
    return 2;
}

/* __gc: a call dropped before its end leaves the in-flight set */
static int call_l_gc(lua_State *L) {
    lcall_t *c = (lcall_t *)luaL_checkudata(L, 1, ACQ_MT_CALL);
    if (c->vals == LUA_NOREF) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->vals);
    lua_rawgeti(L, -1, V_ANCHOR);
    if (c->call.counted && ((lengine_t *)lua_touserdata(L, -1))->open)
        call_abandon(L, &c->call, -2);
    lua_pop(L, 2);
    luaL_unref(L, LUA_REGISTRYINDEX, c->vals);
    c->vals = LUA_NOREF;
    return 0;
}

void engine_open(lua_State *L) {
    static const luaL_Reg engine_methods[] = {
        { "create_case", engine_l_create_case },
        { "find_cases", engine_l_find_cases },
        { NULL, NULL }
    };
    luaL_newmetatable(L, ACQ_MT_ENGINE);
    lua_pushcfunction(L, engine_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    acq_setfuncs(L, engine_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, ACQ_MT_ENGINE);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    luaL_newmetatable(L, ACQ_MT_CALL);
    lua_pushcfunction(L, call_l_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, call_l_next);
    lua_setfield(L, -2, "next");
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, ACQ_MT_CALL);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
