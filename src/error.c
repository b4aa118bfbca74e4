/*
 * error.c: the err table of `nil, err`.
 *
 * Fields: kind ("network", "timeout", "tls", "proxy", "http", "decode"), status,
 * proxy_status, type, message, body (capped), code (libcurl's), errno,
 * attempts, maybe_created, retry_after, and reconcile's. Every string that could carry bytes from the outside world
 * passes through error_setstring, which redacts the API key from it, so no
 * server echo or library message can leak the key.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "core.h"


/* Pushes a new err table; returns its absolute index. */
int error_new(lua_State *L, const char *kind) {
    lua_createtable(L, 0, 8);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    acq_setmetatable(L, ACQ_MT_ERROR);
    return lua_gettop(L);
}

/* Sets err[field] (err at the absolute index err) to s with the secret redacted, then cut to
   cap bytes (redacting first, so a cut can't leave half a key behind). */
void error_setstring(lua_State *L, int err, const char *field, const char *s,
                     size_t len, const acq_secret_t *secret, size_t cap) {
    size_t at, n;
    if (!redact_next(s, len, secret, &at, &n)) {
        lua_pushlstring(L, s, len < cap ? len : cap);
        lua_setfield(L, err, field);
        return;
    }
    redact_push(L, s, len, secret);
    if (acq_rawlen(L, -1) > cap) {
        lua_pushlstring(L, lua_tostring(L, -1), cap);
        lua_remove(L, -2);
    }
    lua_setfield(L, err, field);
}

void error_setint(lua_State *L, int err, const char *field, long long v) {
    acq_pushint64(L, v);
    lua_setfield(L, err, field);
}

void error_setbool(lua_State *L, int err, const char *field, int v) {
    lua_pushboolean(L, v);
    lua_setfield(L, err, field);
}

void error_setnumber(lua_State *L, int err, const char *field, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, err, field);
}

static const char *getstr(lua_State *L, const char *field) {
    lua_getfield(L, 1, field);
    return lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
}

/* Adds s with every control character made a space: whatever the server
   sent as type or message, the string is one line. */
static void add_oneline(luaL_Buffer *b, const char *s) {
    for (; *s; s++)
        luaL_addchar(b, ((unsigned char)*s < 0x20 || *s == 0x7f) ? ' ' : *s);
}

/* Adds " N" for the number at idx: a Lua 5.3+ integer exactly, an integral
   float as digits, any other number (a table the caller filled in) with %g,
   NaN and infinities not at all; never a conversion that could overflow. */
static void add_number_at(luaL_Buffer *b, lua_State *L, int idx) {
    char num[64];
    lua_Number d = lua_tonumber(L, idx);
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
        snprintf(num, sizeof num, " " LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
        luaL_addstring(b, num);
        return;
    }
#endif
    if (!(d - d == 0)) return;                /* NaN, infinities */
    if (d == floor(d) && d > -1e15 && d < 1e15) snprintf(num, sizeof num, " %.0f", (double)d);
    else snprintf(num, sizeof num, " %g", (double)d);
    luaL_addstring(b, num);
}

/* acquire: http 401 ERROR_UNAUTHORIZED: Invalid API key
   acquire: network: Failed to connect to 127.0.0.1 port 9: ... (curl 7) */
static int error_l_tostring(lua_State *L) {
    luaL_Buffer b;
    const char *kind, *type, *msg;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    kind = getstr(L, "kind");
    type = getstr(L, "type");
    msg = getstr(L, "message");
    lua_getfield(L, 1, "status");            /* 5 */
    lua_getfield(L, 1, "code");              /* 6: absolute, the buffer may push */
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "acquire: ");
    luaL_addstring(&b, kind ? kind : "error");
    if (kind && strcmp(kind, "http") == 0 && lua_isnumber(L, 5))
        add_number_at(&b, L, 5);
    if (type) {
        luaL_addchar(&b, ' ');
        add_oneline(&b, type);
    }
    if (msg) {
        luaL_addstring(&b, ": ");
        add_oneline(&b, msg);
    }
    if (lua_isnumber(L, 6)) {
        luaL_addstring(&b, " (curl");
        add_number_at(&b, L, 6);
        luaL_addchar(&b, ')');
    }
    luaL_pushresult(&b);
    return 1;
}

void error_pushstring(lua_State *L, int idx) {
    idx = acq_absindex(L, idx);
    lua_pushcfunction(L, error_l_tostring);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
}

/* "failed: " .. err, err .. "\n": an err on either side reads as its tostring, so the
   usual Lua idioms for string errors work on it. Anything else but strings and numbers
   raises as the concatenation itself would. */
static int error_l_concat(lua_State *L) {
    int i;
    lua_settop(L, 2);
    for (i = 1; i <= 2; i++) {
        if (lua_type(L, i) == LUA_TTABLE && lua_getmetatable(L, i)) {
            int ours;
            luaL_getmetatable(L, ACQ_MT_ERROR);
            ours = lua_rawequal(L, -1, -2);
            lua_pop(L, 2);
            if (ours) {
                lua_pushcfunction(L, error_l_tostring);
                lua_pushvalue(L, i);
                lua_call(L, 1, 1);
                lua_replace(L, i);
                continue;
            }
        }
        if (lua_type(L, i) != LUA_TSTRING && lua_type(L, i) != LUA_TNUMBER)
            return luaL_error(L, "attempt to concatenate a %s value", acq_typename(L, i));
    }
    lua_concat(L, 2);
    return 1;
}

/* Pushes the number at idx as "got %s" names it: "nan" for any NaN (printf's "-nan" is
   only the sign bit 0/0 happens to have), "inf" and "-inf", an integer as its digits,
   any other number with %.14g, on every Lua. */
const char *error_pushnumber(lua_State *L, int idx) {
    char num[64];
    lua_Number d = lua_tonumber(L, idx);
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx))
        snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    else
#endif
    if (d != d) snprintf(num, sizeof num, "nan");
    else if (d - d != 0) snprintf(num, sizeof num, "%s", d > 0 ? "inf" : "-inf");
    else snprintf(num, sizeof num, "%.14g", (double)d);
    lua_pushstring(L, num);                    /* void before 5.2 */
    return lua_tostring(L, -1);
}

/* Pushes the value at idx as an error message names it (a key, an id):
   its tostring, control bytes written \ddd as Lua writes them, at most 80
   bytes. "title\0x" reads title\0x, not title. */
const char *error_pushname(lua_State *L, int idx) {
    luaL_Buffer b;
    size_t n, i;
    const char *s;
    idx = acq_absindex(L, idx);
    s = acq_tolstring(L, idx, &n);           /* pushed: keeps s alive */
    luaL_buffinit(L, &b);
    for (i = 0; i < n && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\%u", (unsigned)c);
            luaL_addstring(&b, esc);
        } else {
            luaL_addchar(&b, (char)c);
        }
    }
    if (n > 80) luaL_addstring(&b, "...");
    luaL_pushresult(&b);
    lua_remove(L, -2);
    return lua_tostring(L, -1);
}

const char *error_pushlist(lua_State *L, const char *const *name, size_t stride, size_t n) {
    luaL_Buffer b;
    size_t i;
    luaL_buffinit(L, &b);
    for (i = 0; i < n; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, *(const char *const *)(const void *)((const char *)name + i * stride));
    }
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

void error_open(lua_State *L) {
    if (luaL_newmetatable(L, ACQ_MT_ERROR)) {
        lua_pushcfunction(L, error_l_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, error_l_concat);
        lua_setfield(L, -2, "__concat");
        lua_pushstring(L, ACQ_MT_ERROR);     /* __name before 5.3 too */
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}
