/*
 * batchopts.c: what create_cases is given, checked before anything is sent:
 * the items (each encoded under pcall, so a misuse names it), the options
 * and hooks, and opts.journal, which hands the run to acquire.journal;
 * and the run's state made from them (batch_begin).
 */
#include <math.h>
#include "batch.h"

/* (id out: a light userdata, strict, item) -> the item's body; its
   contactId into *id. Under pcall, so that a misuse names the item. */
int batch_l_encode_item(lua_State *L) {
    long long *id = (long long *)lua_touserdata(L, 1);
    int strict = lua_toboolean(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_rawgeti(L, 3, 1);                                      /* 4 */
    lua_rawgeti(L, 3, 2);                                      /* 5 */
    if (!request_parse_contact_id(L, 4, id))
        luaL_error(L, "%s", request_push_contact_id_error(L, 4));
    lua_settop(L, 5);
    {
        acq_buf_t *b = buf_push(L);
        request_encode_body(L, 5, strict, b);
        lua_pushlstring(L, b->p, b->len);
    }
    return 1;
}


static int is_hook(lua_State *L, int key) {
    static const char *const names[] = { "on_send", "on_wave", "on_result", "on_progress" };
    size_t i;
    for (i = 0; i < sizeof names / sizeof *names; i++) {
        if (!acq_equals(L, key, names[i])) continue;
        if (!lua_isfunction(L, key + 1))
            luaL_error(L, "bad option '%s' (function expected, got %s)", names[i],
                       luaL_typename(L, key + 1));
        return 1;
    }
    return 0;
}

/* The hook opts[name] pushed: its index, or 0 (nothing pushed). */
static int push_hook(lua_State *L, int opts, const char *name) {
    if (lua_isnoneornil(L, opts)) return 0;
    lua_pushstring(L, name);
    lua_rawget(L, opts);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return lua_gettop(L);
}

/* opts.claimed: the case ids other requests already have (an earlier run's,
   from its journal): a list of positive integers. Checked here; claimed
   into the client by run(). */
static void check_claimed(lua_State *L, int idx) {
    int i;
    long long v;
    if (!lua_istable(L, idx))
        luaL_error(L, "bad option 'claimed' (a list of case ids expected, got %s)",
                   luaL_typename(L, idx));
    for (i = 1; lua_rawgeti(L, idx, i), !lua_isnil(L, -1); i++) {
        if (!request_parse_contact_id(L, -1, &v))
            luaL_error(L, "bad option 'claimed' (item #%d is not a case id)", i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Checks the options at idx (raising on misuse) and pushes the hooks. */
void batch_parse_opts(lua_State *L, int idx, batch_opts_t *o) {
    o->concurrency = ACQ_BATCH_CONCURRENCY;
    o->interval = 0;
    if (!lua_isnoneornil(L, idx)) {
        luaL_checktype(L, idx, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (acq_equals(L, -2, "concurrency")) {
                lua_Number v = lua_tonumber(L, -1);
                if (lua_type(L, -1) != LUA_TNUMBER || !(v >= 1 && v <= ACQ_MAX_CONCURRENCY) ||
                    v != floor(v))
                    luaL_error(L, "bad option 'concurrency' (integer from 1 to %d expected)",
                               ACQ_MAX_CONCURRENCY);
                o->concurrency = (int)v;
            } else if (acq_equals(L, -2, "rate")) {
                lua_Number v = lua_tonumber(L, -1);
                if (lua_type(L, -1) != LUA_TNUMBER || !(v >= ACQ_MIN_RATE && v <= ACQ_MAX_RATE))
                    luaL_error(L, "bad option 'rate' (requests per second expected: a number "
                                  "from 0.01 to %d)", ACQ_MAX_RATE);
                o->interval = 1.0 / (double)v;
            } else if (acq_equals(L, -2, "claimed")) {
                check_claimed(L, lua_gettop(L));
            } else if (!is_hook(L, lua_gettop(L) - 1)) {
                luaL_error(L, "bad option '%s' (expected one of: claimed, concurrency, journal, "
                              "on_progress, on_result, on_send, on_wave, rate, resend_uncertain)",
                           error_pushname(L, -2));
            }
            lua_pop(L, 1);
        }
    }
    o->on_send = push_hook(L, idx, "on_send");
    o->on_wave = push_hook(L, idx, "on_wave");
    o->on_result = push_hook(L, idx, "on_result");
    o->on_progress = push_hook(L, idx, "on_progress");
}

/* opts.journal = path: the run goes through acquire.journal (a Lua
   library over this function), which takes the journal's options and calls
   create_cases again without them. Returns 1 with its results pushed, or 0
   when opts has no journal. */
int batch_journaled(lua_State *L, int client, int items, int opts) {
    if (!lua_istable(L, opts)) return 0;
    lua_getfield(L, opts, "journal");
    if (lua_isnil(L, -1)) {
        lua_getfield(L, opts, "resend_uncertain");
        if (!lua_isnil(L, -1))
            luaL_error(L, "bad option 'resend_uncertain' (only with 'journal')");
        lua_pop(L, 2);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "bad option 'journal' (a file name expected, got %s)", luaL_typename(L, -1));
    lua_getglobal(L, "require");
    lua_pushliteral(L, "acquire.journal");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "create_cases");
    lua_pushvalue(L, client);
    lua_pushvalue(L, items);
    lua_newtable(L);                            /* opts, journal renamed path */
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        if (acq_equals(L, -2, "journal")) {
            lua_pushliteral(L, "path");
            lua_insert(L, -2);
            lua_rawset(L, -4);
            lua_pushliteral(L, "journal");     /* lua_next goes on from this key */
        } else {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
    }
    lua_call(L, 3, 1);
    return 1;
}

/* items: a table of { contactId, opts } or an iterator function */
void batch_check_items(lua_State *L, int idx) {
    if (!lua_istable(L, idx) && !lua_isfunction(L, idx))
        luaL_argerror(L, idx, lua_pushfstring(L, "table or function expected, got %s",
                                              luaL_typename(L, idx)));
}

/* The run's state: options checked, claims taken, and for a table every
   item checked and encoded before anything is sent. */
void batch_begin(lua_State *L, acq_engine_t *e, long timeout_ms, batch_run_t *b, int items, int opts) {
    long i;
    b->items = items;
    b->stream = lua_isfunction(L, items);
    b->reconcile = e->reconcile_ms >= 0;
    b->timeout = (double)timeout_ms / 1000.0;
    batch_parse_opts(L, opts, &b->o);
    if (lua_istable(L, opts)) {                 /* opts.claimed: checked by parse_opts */
        lua_getfield(L, opts, "claimed");
        if (lua_istable(L, -1)) {
            for (i = 1; lua_rawgeti(L, -1, (int)i), !lua_isnil(L, -1); i++) {
                engine_claim(L, e, -1);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_newtable(L);
    b->live = lua_gettop(L);
    lua_pushvalue(L, b->live);
    b->live_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    b->held = lua_gettop(L);
    if (!b->stream) {                           /* all of them, before any is sent */
        b->n = (long)acq_rawlen(L, items);
        b->ids = (long long *)acq_newuserdata(L, (size_t)(b->n ? b->n : 1) * sizeof *b->ids);
        lua_createtable(L, (int)b->n, 0);
        b->bodies = lua_gettop(L);
        for (i = 0; i < b->n; i++) {
            lua_pushcfunction(L, batch_l_encode_item);
            lua_pushlightuserdata(L, &b->ids[i]);
            lua_pushboolean(L, e->strict);
            lua_rawgeti(L, items, (int)i + 1);
            if (lua_pcall(L, 3, 1, 0) != 0)
                luaL_error(L, "bad item #%d: %s", (int)i + 1, lua_tostring(L, -1));
            lua_rawseti(L, b->bodies, (int)i + 1);
        }
        lua_createtable(L, (int)b->n, 0);
        b->results = lua_gettop(L);
    }

}

