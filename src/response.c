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

long response_days_from_civil(long y, long m, long d) {
    long era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* n digits at s exactly (a blank first where blank allows it): the value, or -1 */
static int num(const char *s, int n, int blank) {
    int v = 0, i;
    for (i = 0; i < n; i++) {
        if (blank && i == 0 && n > 1 && s[i] == ' ') continue;
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* The index (0-11) of the three letters at s in list (3 letters each), or -1 */
static int which(const char *list, const char *s) {
    size_t i;
    for (i = 0; list[3 * i]; i++)
        if (strncmp(list + 3 * i, s, 3) == 0) return (int)i;
    return -1;
}

/* "08:49:37" at s -> seconds into the day, or -1 */
static long clock_of(const char *s) {
    int h = num(s, 2, 0), m = num(s + 3, 2, 0), sec = num(s + 6, 2, 0);
    if (s[2] != ':' || s[5] != ':' || h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 || sec > 60)
        return -1;
    return h * 3600L + m * 60L + sec;
}

/* An HTTP-date (RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and
   asctime forms a recipient must accept), exactly, in seconds since the
   epoch (before 1970: negative); NAN if v is not one. */
static double http_date(const char *v, size_t n, double now) {
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static const char days[] = "MonTueWedThuFriSatSun";
    static const char *const long_days[7] = { "Monday", "Tuesday", "Wednesday", "Thursday",
                                              "Friday", "Saturday", "Sunday" };
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int d, mo, y, w;
    long secs;
    const char *c = strchr(v, ',');
    if (n == 29 && c == v + 3) {                           /* Sun, 06 Nov 1994 08:49:37 GMT */
        if (v[4] != ' ' || v[7] != ' ' || v[11] != ' ' || v[16] != ' ' ||
            strcmp(v + 25, " GMT") != 0)
            return NAN;
        w = which(days, v); d = num(v + 5, 2, 0); mo = which(months, v + 8);
        y = num(v + 12, 4, 0); secs = clock_of(v + 17);
    } else if (n == 24 && c == NULL) {                     /* Sun Nov  6 08:49:37 1994 */
        if (v[3] != ' ' || v[7] != ' ' || v[10] != ' ' || v[19] != ' ') return NAN;
        w = which(days, v); mo = which(months, v + 4); d = num(v + 8, 2, 1);
        secs = clock_of(v + 11); y = num(v + 20, 4, 0);
    } else if (c != NULL && n == (size_t)(c - v) + 24) {   /* Sunday, 06-Nov-94 08:49:37 GMT */
        for (w = 0; w < 7; w++)
            if ((size_t)(c - v) == strlen(long_days[w]) && strncmp(v, long_days[w], (size_t)(c - v)) == 0)
                break;
        if (w == 7 || c[1] != ' ' || c[4] != '-' || c[8] != '-' || c[11] != ' ' ||
            strcmp(c + 20, " GMT") != 0)
            return NAN;
        d = num(c + 2, 2, 0); mo = which(months, c + 5); y = num(c + 9, 2, 0);
        secs = clock_of(c + 12);
        if (y >= 0) {           /* more than 50 years ahead: the century before */
            y += 2000;
            if ((double)response_days_from_civil(y, 1, 1) * 86400.0 > now + 50 * 365.2425 * 86400.0)
                y -= 100;
        }
    } else {
        return NAN;
    }
    if (w < 0 || mo < 0 || y < 1900 || d < 1 || secs < 0 ||
        d > mdays[mo] + (mo == 1 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        return NAN;
    return (double)response_days_from_civil(y, mo + 1, d) * 86400.0 + (double)secs;
}

/* Retry-After (RFC 9110 10.2.3): delay-seconds (digits only) or an
   HTTP-date, relative to now; blanks (SP, HTAB) around it allowed. -1 when
   absent, unreadable or not a real date: ignored, as if absent. */
double response_parse_retry_after(const char *v, double now) {
    char buf[64];
    size_t n;
    if (v == NULL) return -1;
    while (*v == ' ' || *v == '\t') v++;
    n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    if (n == 0) return -1;
    if (v[0] >= '0' && v[0] <= '9') {             /* delay-seconds, leading zeros and all */
        double s = 0;
        size_t i;
        for (i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9') return -1;
            if (s < 1e9) s = s * 10 + (v[i] - '0');
        }
        return s < 1e9 ? s : -1;
    }
    if (n >= sizeof buf) return -1;               /* no date is that long */
    memcpy(buf, v, n);
    buf[n] = '\0';
    {
        double at = http_date(buf, n, now);
        if (isnan(at)) return -1;
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
    int i;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_newtable(L);                                          /* 2 */
    lua_getfield(L, 1, "fields");                             /* 3 */
    if (!lua_istable(L, 3)) {
        lua_settop(L, 2);
        return 1;
    }
    for (i = 1; lua_rawgeti(L, 3, i), !lua_isnil(L, -1); i++) {   /* 4 entry; ipairs' end */
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
