/*
 * json.c: the one JSON writer. Lua values into JSON bytes, checked on
 * the way (invalid UTF-8, NaN, infinities, cyclic or sparse tables, keys
 * that are not strings raise, naming the field), integers exact, keys
 * sorted so the same value always gives the same bytes. request.c knows
 * the API's schema and calls these; lua-cjson only decodes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

static const char *json_pushpath(lua_State *L, const acq_path_t *p) {
    if (p->index > 0) return lua_pushfstring(L, "%s[%d]", p->parent, (int)p->index);
    if (p->parent) return lua_pushfstring(L, "%s.%s", p->parent, p->key);
    lua_pushstring(L, p->key);                 /* void before 5.2 */
    return lua_tostring(L, -1);
}

void json_bad(lua_State *L, const acq_path_t *p, const char *expected, int idx) {
    const char *got;
    idx = acq_absindex(L, idx);
    got = acq_typename(L, idx);
    luaL_error(L, "bad field '%s' (%s expected, got %s)", json_pushpath(L, p), expected, got);
    ACQ_UNREACHABLE();
}

void json_raw(lua_State *L, acq_buf_t *b, const char *s, size_t n) {
    buf_lreserve(L, b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void json_char(lua_State *L, acq_buf_t *b, char c) {
    buf_lreserve(L, b, 1);
    b->p[b->len++] = c;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t len, i;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;          /* overlong */
        if (c == 0xED) hi = 0x9F;          /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;          /* overlong */
        if (c == 0xF4) hi = 0x8F;          /* above U+10FFFF */
    } else return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

void json_string(lua_State *L, acq_buf_t *b, const char *str, size_t n,
                       const acq_path_t *p) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str, *end = s + n, *run;
    json_char(L, b, '"');
    while (s < end) {
        run = s;
        while (s < end && *s >= 0x20 && *s < 0x80 && *s != '"' && *s != '\\')
            s++;
        if (s > run) json_raw(L, b, (const char *)run, (size_t)(s - run));
        if (s == end) break;
        if (*s >= 0x80) {
            size_t len = utf8_len(s, (size_t)(end - s));
            if (len == 0)
                luaL_error(L, "bad field '%s' (invalid UTF-8 at byte %d)", json_pushpath(L, p),
                           (int)(s - (const unsigned char *)str) + 1);
            json_raw(L, b, (const char *)s, len);
            s += len;
            continue;
        }
        buf_lreserve(L, b, 6);
        b->p[b->len++] = '\\';
        switch (*s) {
        case '"':  b->p[b->len++] = '"'; break;
        case '\\': b->p[b->len++] = '\\'; break;
        case '\b': b->p[b->len++] = 'b'; break;
        case '\f': b->p[b->len++] = 'f'; break;
        case '\n': b->p[b->len++] = 'n'; break;
        case '\r': b->p[b->len++] = 'r'; break;
        case '\t': b->p[b->len++] = 't'; break;
        default:
            memcpy(b->p + b->len, "u00", 3);
            b->p[b->len + 3] = hex[*s >> 4];
            b->p[b->len + 4] = hex[*s & 15];
            b->len += 5;
        }
        s++;
    }
    json_char(L, b, '"');
}

void json_int(lua_State *L, acq_buf_t *b, long long v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    json_raw(L, b, tmp, (size_t)n);
}

/* An integer-valued number (a Lua integer, or a float with an exact
   integral value inside the 64-bit range). Strings never count. */
int json_to_int(lua_State *L, int idx, long long *out) {
    double d;
    if (lua_type(L, idx) != LUA_TNUMBER) return 0;
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) {
        *out = (long long)lua_tointeger(L, idx);
        return 1;
    }
#endif
    d = (double)lua_tonumber(L, idx);
    if (d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
        return 0;
    *out = (long long)d;
    return 1;
}

/* Numbers: integers exactly; other floats in the shortest form that reads
   back to the same double; NaN and infinities have no JSON form. */
static void json_number(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p) {
    char tmp[40];
    long long i;
    double d;
    int prec, n = 0;
    if (json_to_int(L, idx, &i) && fabs((double)i) < 9007199254740992.0) {
        json_int(L, b, i);
        return;
    }
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) {
        json_int(L, b, (long long)lua_tointeger(L, idx));
        return;
    }
#endif
    d = (double)lua_tonumber(L, idx);
    if (isnan(d) || isinf(d)) json_bad(L, p, "finite number", idx);
    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d) break;
    }
    for (i = 0; i < n; i++)       /* a locale's decimal comma is not JSON */
        if (tmp[i] == ',') tmp[i] = '.';
    json_raw(L, b, tmp, (size_t)n);
}

/* ---- sorted keys, so the same opts always give the same bytes ------ */

static int key_cmp(const void *a, const void *b) {
    const acq_key_t *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* Collects the string keys of the table at idx, sorted, into a userdata
   left on the stack (so an error cannot leak it). Raises on other keys. */
acq_key_t *json_sorted_keys(lua_State *L, int idx, size_t *count,
                          const acq_path_t *p) {
    size_t n = 0, i = 0;
    acq_key_t *keys;
    lua_pushnil(L);
    while (lua_next(L, idx)) { n++; lua_pop(L, 1); }
    keys = (acq_key_t *)acq_newuserdata(L, (n ? n : 1) * sizeof *keys);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            json_bad(L, p, "table with string keys", -1);
        keys[i].s = lua_tolstring(L, -1, &keys[i].n);
        i++;
    }
    qsort(keys, n, sizeof *keys, key_cmp);
    *count = n;
    return keys;
}

/* Number of elements if the table at idx is a proper sequence 1..n with
   no other keys, else -1. */
long json_sequence_len(lua_State *L, int idx) {
    long n = (long)acq_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        long long k;
        lua_pop(L, 1);
        if (!json_to_int(L, -1, &k) || k < 1 || k > n) { lua_pop(L, 1); return -1; }
        count++;
    }
    return count == n ? n : -1;
}

/* Generic values, for strict = false pass-through. */
void json_value(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p,
                      int depth) {
    idx = acq_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        json_string(L, b, s, n, p);
        return;
    }
    case LUA_TNUMBER:  json_number(L, b, idx, p); return;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx)) JSON_LIT(L, b, "true"); else JSON_LIT(L, b, "false");
        return;
    case LUA_TTABLE: {
        long n, i;
        if (depth >= ACQ_JSON_MAX_DEPTH)
            luaL_error(L, "bad field '%s' (nested deeper than %d, or cyclic)",
                       p->parent ? p->parent : p->key, ACQ_JSON_MAX_DEPTH);
        luaL_checkstack(L, 6, "nested too deep");
        n = json_sequence_len(L, idx);
        if (n > 0) {
            json_char(L, b, '[');
            for (i = 1; i <= n; i++) {
                if (i > 1) json_char(L, b, ',');
                lua_rawgeti(L, idx, (int)i);
                json_value(L, b, -1, p, depth + 1);
                lua_pop(L, 1);
            }
            json_char(L, b, ']');
        } else {
            size_t count, k;
            acq_key_t *keys = json_sorted_keys(L, idx, &count, p);
            json_char(L, b, '{');
            for (k = 0; k < count; k++) {
                if (k) json_char(L, b, ',');
                json_string(L, b, keys[k].s, keys[k].n, p);
                json_char(L, b, ':');
                lua_pushlstring(L, keys[k].s, keys[k].n);
                lua_rawget(L, idx);
                json_value(L, b, -1, p, depth + 1);
                lua_pop(L, 1);
            }
            json_char(L, b, '}');
            lua_pop(L, 1);                     /* keys */
        }
        return;
    }
    default:
        if (acq_isnull(L, idx)) { JSON_LIT(L, b, "null"); return; }
        json_bad(L, p, "string, number, boolean, table or acquire.null", idx);
    }
}


/* ---- acquire.encode: the writer, for Lua ---------------------------- */

/* The members of the object at idx: first those named in the sequence at
   order, in that order, those nil left out; then the rest, sorted (named:
   the set of order's keys). All three are absolute indexes. */
static void json_ordered(lua_State *L, acq_buf_t *b, int idx, int order, int named) {
    size_t count, k;
    long n = (long)acq_rawlen(L, order), i;
    int first = 1;
    acq_key_t *keys;
    acq_path_t p = { NULL, "value", 0 };
    json_char(L, b, '{');
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *s;
        lua_rawgeti(L, order, (int)i);
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "bad option 'order' (strings expected)");
        s = lua_tolstring(L, -1, &len);
        lua_rawget(L, idx);
        if (!lua_isnil(L, -1)) {
            acq_path_t e = { NULL, s, 0 };
            if (!first) json_char(L, b, ',');
            first = 0;
            json_string(L, b, s, len, &e);
            json_char(L, b, ':');
            json_value(L, b, -1, &e, 1);
        }
        lua_pop(L, 1);
    }
    keys = json_sorted_keys(L, idx, &count, &p);
    for (k = 0; k < count; k++) {
        acq_path_t e = { NULL, keys[k].s, 0 };
        lua_pushlstring(L, keys[k].s, keys[k].n);
        lua_rawget(L, named);
        if (lua_isnil(L, -1)) {
            lua_pushlstring(L, keys[k].s, keys[k].n);
            lua_rawget(L, idx);
            if (!first) json_char(L, b, ',');
            first = 0;
            json_string(L, b, keys[k].s, keys[k].n, &e);
            json_char(L, b, ':');
            json_value(L, b, -1, &e, 1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);                             /* keys */
    json_char(L, b, '}');
}

/* acquire.encode(value [, opts]) -> value's JSON text as the module writes it
   (json_value: keys sorted, acquire.null as null, integers exact, "/" as is);
   opts.order, a sequence of keys, puts those first in a top-level object.
   Raises on what has no JSON. */
int json_l_encode(lua_State *L) {
    acq_path_t p = { NULL, "value", 0 };
    acq_buf_t *b;
    luaL_checkany(L, 1);
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    b = buf_push(L);                                        /* 3 */
    if (!lua_isnil(L, 2)) lua_getfield(L, 2, "order"); else lua_pushnil(L);   /* 4 */
    if (lua_isnil(L, 4) || !lua_istable(L, 1) || json_sequence_len(L, 1) > 0) {
        if (!lua_isnil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
        json_value(L, b, 1, &p, 0);
    } else {
        long n, i;
        luaL_checktype(L, 4, LUA_TTABLE);
        n = (long)acq_rawlen(L, 4);
        lua_createtable(L, 0, (int)n);                      /* 5: the keys named in order */
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, 4, (int)i);
            lua_pushboolean(L, 1);
            lua_rawset(L, 5);
        }
        json_ordered(L, b, 1, 4, 5);
    }
    lua_pushlstring(L, b->p ? b->p : "", b->len);
    buf_free(b);
    return 1;
}
