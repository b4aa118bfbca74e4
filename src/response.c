/*
 * response.c: status, headers and body into res, or nil and err.
 *
 * JSON goes through lua-cjson, one private instance (cjson.new()), so a
 * script reconfiguring the global cjson cannot change how responses decode.
 * Debian's lua-cjson 2.1.0 hands back every number as a float on 5.3+;
 * OpenResty's fork (2.1.0.14+) decodes integers natively. Which one is
 * loaded is found out once, at load time, and the tree is repaired only
 * when needed. Nothing here touches the network.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "core.h"

static const char decode_key = 'd';     /* registry: the decode function */
#if ACQ_HAS_INTEGERS
static const char repair_key = 'r';     /* registry: true when repairing */
#endif

void response_push_null(lua_State *L) {
    lua_pushlightuserdata(L, NULL);      /* what cjson.null is */
}

#if ACQ_HAS_INTEGERS
/* Integral floats become integers, in place, through the whole tree. */
static void repair(lua_State *L, int idx) {
    luaL_checkstack(L, 4, "response nested too deep");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int t = lua_type(L, -1);
        if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number d = lua_tonumber(L, -1);
            if (d == floor(d) && d >= -9223372036854775808.0 &&
                d < 9223372036854775808.0) {
                lua_pop(L, 1);
                lua_pushvalue(L, -1);
                lua_pushinteger(L, (lua_Integer)d);
                lua_rawset(L, idx);       /* changing an existing field is allowed during lua_next */
                continue;
            }
        } else if (t == LUA_TTABLE) {
            repair(L, lua_gettop(L));
        }
        lua_pop(L, 1);
    }
}
#endif

/* Is this lua-cjson's own word that the text is not JSON? Its parse errors
   say "... at character N", or that it does not read UTF-16/32. */
static int is_parse_error(lua_State *L, int idx) {
    const char *m;
    if (lua_type(L, idx) != LUA_TSTRING) return 0;
    m = lua_tostring(L, idx);
    return strstr(m, " at character ") != NULL ||
           strncmp(m, "JSON parser does not support", 28) == 0;
}

/* Decodes body; pushes the value and returns 1, or pushes cjson's message
   and returns 0. Anything else that goes wrong inside (out of memory, an
   interrupt from the interpreter's hook: Ctrl-C in lua.c) is not the
   body's fault and propagates. */
static int decode(lua_State *L, const char *body, size_t len) {
    int status;
    acq_rawgetp(L, LUA_REGISTRYINDEX, &decode_key);
    lua_pushlstring(L, body, len);
    status = lua_pcall(L, 1, 1, 0);
    if (status == 0) return 1;
    if (status != LUA_ERRRUN || !is_parse_error(L, -1)) lua_error(L);
    return 0;
}

/* The first string among t[a], t[b] and t.error[a|b], or NULL. */
static const char *pick(lua_State *L, int t, const char *a, const char *b) {
    const char *names[2];
    int i;
    names[0] = a;
    names[1] = b;
    for (i = 0; i < 2; i++) {
        if (names[i] == NULL) continue;
        lua_getfield(L, t, names[i]);
        if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    lua_getfield(L, t, "error");
    if (lua_istable(L, -1)) {
        int e = lua_gettop(L);
        for (i = 0; i < 2; i++) {
            if (names[i] == NULL) continue;
            lua_getfield(L, e, names[i]);
            if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return NULL;
}

static long days_from_civil(long y, long m, long d) {
    long era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Retry-After: delay-seconds, or an IMF-fixdate ("Sun, 06 Nov 1994
   08:49:37 GMT") relative to now. -1 when absent, unreadable or not a
   real date: ignored, as if absent. */
double response_parse_retry_after(const char *v, double now) {
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static const char days[] = "MonTueWedThuFriSatSun";
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    char mon[4], zone[4], wday[4];
    int d, y, hh, mm, ss, used = 0;
    const char *m, *w;
    if (v == NULL) return -1;
    while (*v == ' ' || *v == '\t') v++;
    if (*v >= '0' && *v <= '9') {
        double s = 0;
        for (; *v >= '0' && *v <= '9'; v++) s = s * 10 + (*v - '0');
        while (*v == ' ' || *v == '\t') v++;
        return *v == '\0' && s < 1e9 ? s : -1;
    }
    if (sscanf(v, "%3s, %2d %3s %4d %2d:%2d:%2d %3s%n", wday, &d, mon, &y, &hh,
               &mm, &ss, zone, &used) != 8 || strcmp(zone, "GMT") != 0)
        return -1;
    m = strstr(months, mon);
    w = strstr(days, wday);
    if (m == NULL || strlen(mon) != 3 || (m - months) % 3 != 0 ||
        w == NULL || strlen(wday) != 3 || (w - days) % 3 != 0)
        return -1;
    /* a date that is no date ("99 Nov 1994 99:99:99") is no Retry-After */
    if (y < 1900 || d < 1 || d > mdays[(m - months) / 3] +
            ((m - months) / 3 == 1 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ||
        hh > 23 || mm > 59 || ss > 60)
        return -1;
    while (v[used] == ' ' || v[used] == '\t') used++;
    if (v[used] != '\0') return -1;
    {
        double at = (double)days_from_civil(y, (m - months) / 3 + 1, d) * 86400.0
                  + hh * 3600.0 + mm * 60.0 + ss;
        return at > now ? at - now : 0;
    }
}

int response_decode(lua_State *L, long status, const char *body, size_t len,
                    const char *retry_after, const acq_secret_t *secret) {
    int ok, err, base = lua_gettop(L);
    const char *msg = NULL, *type = NULL;
    ok = decode(L, body, len);                               /* base+1 */
    if (status >= 200 && status <= 299) {
        if (ok && lua_istable(L, -1)) {
#if ACQ_HAS_INTEGERS
            acq_rawgetp(L, LUA_REGISTRYINDEX, &repair_key);
            ok = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (ok) repair(L, base + 1);
#endif
            return 1;
        }
        msg = ok ? lua_pushfstring(L, "%d response is not a JSON object or array", (int)status)
                 : lua_pushfstring(L, "%d response is not JSON (%s)", (int)status,
                                   lua_tostring(L, base + 1));
        err = error_new(L, "decode");
        error_setint(L, err, "status", status);
        error_setstring(L, err, "message", msg, strlen(msg), secret, ACQ_BODY_CAP);
        error_setstring(L, err, "body", body, len, secret, ACQ_BODY_CAP);
        error_setbool(L, err, "maybe_created", 1);  /* a 2xx: it was created */
    } else {
        if (ok && lua_istable(L, -1)) {
            /* The API does not document its error body: read it tolerantly. */
            msg = pick(L, base + 1, "message", NULL);
            if (msg == NULL) {                        /* {"error": "text"} */
                lua_getfield(L, base + 1, "error");
                msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            }
            type = pick(L, base + 1, "type", "code");
        }
        err = error_new(L, "http");
        error_setint(L, err, "status", status);
        if (type) error_setstring(L, err, "type", type, strlen(type), secret, 256);
        if (msg) error_setstring(L, err, "message", msg, strlen(msg), secret, ACQ_BODY_CAP);
        error_setstring(L, err, "body", body, len, secret, ACQ_BODY_CAP);
        {
            double ra = response_parse_retry_after(retry_after, (double)time(NULL));
            if (ra >= 0) error_setnumber(L, err, "retry_after", ra);
        }
        /* A 4xx or 3xx is an answer that nothing was created; 429 and 503
           come from throttling or maintenance before the API ran. Any
           other 5xx may have come after the case was written. */
        error_setbool(L, err, "maybe_created",
                      status >= 500 && status != 503 && status != 429);
    }
    /* leave exactly nil, err (err sits above base + 2) */
    lua_pushnil(L);
    lua_replace(L, base + 1);
    lua_pushvalue(L, err);
    lua_replace(L, base + 2);
    lua_settop(L, base + 2);
    return 2;
}

/* acquire.decode_response(status, headers, body [, secret]) -> res | nil, err;
   secret (the key, or a list of strings: acquire.config's secrets), when
   given, is redacted from err as create_case redacts it. */
int response_l_decode(lua_State *L) {
    long status = (long)luaL_checkinteger(L, 1);
    acq_secret_t secret[ACQ_MAX_SECRETS];
    size_t len;
    const char *body, *retry_after = NULL;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING &&
                strcasecmp(lua_tostring(L, -2), "retry-after") == 0) {
                retry_after = lua_tostring(L, -1);   /* anchored in headers */
                lua_pop(L, 2);
                break;
            }
            lua_pop(L, 1);
        }
    }
    body = luaL_optlstring(L, 3, "", &len);
    lua_settop(L, 4);
    if (lua_istable(L, 4)) {                      /* every secret: acquire.config's */
        int i, n = 0;
        for (i = 1; i <= ACQ_MAX_SECRETS; i++) {
            lua_rawgeti(L, 4, i);                 /* anchored in the table */
            if (lua_type(L, -1) != LUA_TSTRING) { lua_pop(L, 1); break; }
            secret[n].p = lua_tolstring(L, -1, &secret[n].len);
            secret[n].next = NULL;
            if (n > 0) secret[n - 1].next = &secret[n];
            n++;
            lua_pop(L, 1);
        }
        return response_decode(L, status, body, len, retry_after, n ? secret : NULL);
    }
    secret[0].p = luaL_optlstring(L, 4, NULL, &secret[0].len);  /* anchored at 4 */
    secret[0].next = NULL;
    return response_decode(L, status, body, len, retry_after,
                           secret[0].p && secret[0].len ? secret : NULL);
}

/* acquire.fields(contact) -> { [field.key] = value }, nulls left out */
int response_l_fields(lua_State *L) {
    int i, n;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_newtable(L);                                          /* 2 */
    lua_getfield(L, 1, "fields");                             /* 3 */
    if (!lua_istable(L, 3)) {
        lua_settop(L, 2);
        return 1;
    }
    n = (int)acq_rawlen(L, 3);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);                                 /* 4 entry */
        if (lua_istable(L, 4)) {
            lua_getfield(L, 4, "field");                      /* 5 */
            lua_getfield(L, 4, "value");                      /* 6 */
            if (lua_istable(L, 5) && !lua_isnil(L, 6) &&
                !acq_isnull(L, 6)) {
                lua_getfield(L, 5, "key");                    /* 7 */
                if (lua_type(L, 7) == LUA_TSTRING) {
                    lua_pushvalue(L, 6);
                    lua_rawset(L, 2);
                }
            }
        }
        lua_settop(L, 3);
    }
    lua_settop(L, 2);
    return 1;
}

/* Loads lua-cjson and keeps a private decoder in the registry. */
void response_open(lua_State *L) {
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "new");
    if (lua_isfunction(L, -1)) {
        lua_call(L, 0, 1);
        lua_remove(L, -2);
    } else {
        lua_pop(L, 1);
    }
    /* NaN, Infinity and hex are not JSON */
    lua_getfield(L, -1, "decode_invalid_numbers");
    if (lua_isfunction(L, -1)) {
        lua_pushboolean(L, 0);
        lua_call(L, 1, 0);
    } else {
        lua_pop(L, 1);
    }
    lua_getfield(L, -1, "decode");
    if (!lua_isfunction(L, -1))
        luaL_error(L, "acquire: lua-cjson has no decode function");
    lua_pushvalue(L, -1);
    acq_rawsetp(L, LUA_REGISTRYINDEX, &decode_key);
#if ACQ_HAS_INTEGERS
    /* OpenResty's lua-cjson gives integers already: repair only if not */
    lua_pushliteral(L, "[1]");
    lua_call(L, 1, 1);
    lua_rawgeti(L, -1, 1);
    lua_pushboolean(L, !lua_isinteger(L, -1));
    acq_rawsetp(L, LUA_REGISTRYINDEX, &repair_key);
#endif
    lua_settop(L, top);
}
