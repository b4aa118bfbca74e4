/*
 * compat.h: every Lua version difference lives here, as prefixed static
 * shims (acq_*), so nothing collides with the symbols LuaJIT 2.1 already
 * exports (luaL_setfuncs, luaL_testudata...).
 */
#ifndef ACQUIRE_COMPAT_H
#define ACQUIRE_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if !defined(LUA_VERSION_NUM)
#error "unknown Lua version"
#elif LUA_VERSION_NUM < 501 || LUA_VERSION_NUM > 504
#error "lua-acquire supports Lua 5.1 to 5.4 and LuaJIT"
#endif

/* 5.3+ has a real integer subtype; before that every number is a double. */
#if LUA_VERSION_NUM >= 503
#define ACQ_HAS_INTEGERS 1
#else
#define ACQ_HAS_INTEGERS 0
#endif

#if LUA_VERSION_NUM == 501
static inline size_t acq_rawlen(lua_State *L, int i) { return lua_objlen(L, i); }
static inline int acq_absindex(lua_State *L, int i) {
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
static inline void acq_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
static inline void acq_rawgetp(lua_State *L, int t, const void *p) {
    t = acq_absindex(L, t);
    lua_pushlightuserdata(L, (void *)p);
    lua_rawget(L, t);
}
static inline void acq_rawsetp(lua_State *L, int t, const void *p) {
    t = acq_absindex(L, t);
    lua_pushlightuserdata(L, (void *)p);
    lua_insert(L, -2);
    lua_rawset(L, t);
}
#else
#define acq_rawlen(L, i)          lua_rawlen(L, (i))
#define acq_absindex(L, i)        lua_absindex(L, (i))
#define acq_setfuncs(L, l, n)     luaL_setfuncs(L, (l), (n))
#define acq_rawgetp(L, t, p)      ((void)lua_rawgetp(L, (t), (p)))
#define acq_rawsetp(L, t, p)      lua_rawsetp(L, (t), (p))
#endif

#if LUA_VERSION_NUM == 501
static inline const char *acq_tolstring(lua_State *L, int i, size_t *len) {
    switch (lua_type(L, i)) {
    case LUA_TNUMBER: case LUA_TSTRING: lua_pushvalue(L, i); break;
    case LUA_TBOOLEAN: lua_pushstring(L, lua_toboolean(L, i) ? "true" : "false"); break;
    case LUA_TNIL: lua_pushliteral(L, "nil"); break;
    default: lua_pushfstring(L, "%s: %p", luaL_typename(L, i), lua_topointer(L, i));
    }
    return lua_tolstring(L, -1, len);
}
#else
#define acq_tolstring(L, i, len)  luaL_tolstring(L, (i), (len))
#endif

#if LUA_VERSION_NUM >= 504
#define acq_newuserdata(L, sz)    lua_newuserdatauv(L, (sz), 0)
#else
#define acq_newuserdata(L, sz)    lua_newuserdata(L, (sz))
#endif

static inline void acq_setmetatable(lua_State *L, const char *tname) {
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}

/* acquire.null (lua-cjson's null: a NULL light userdata)? */
static inline int acq_isnull(lua_State *L, int i) {
    return lua_type(L, i) == LUA_TLIGHTUSERDATA && lua_touserdata(L, i) == NULL;
}

/* "got X" in messages: acquire.null reads better than "userdata", and a NaN or an
   infinity better than "number" (a finite number that is not wanted is its type). */
static inline const char *acq_typename(lua_State *L, int i) {
    if (lua_type(L, i) == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(L, i);
        if (v != v) return "nan";
        if (v - v != 0) return v > 0 ? "inf" : "-inf";
    }
    return acq_isnull(L, i) ? "null" : luaL_typename(L, i);
}

/* Pushes an integer so that it reads back exactly: a Lua integer on 5.3+,
   a double (exact up to 2^53) before. */
static inline void acq_pushint64(lua_State *L, long long v) {
#if ACQ_HAS_INTEGERS
    lua_pushinteger(L, (lua_Integer)v);
#else
    lua_pushnumber(L, (lua_Number)v);
#endif
}

#endif
