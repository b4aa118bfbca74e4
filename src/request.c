/*
 * request.c: contactId and opts into the bytes of the request.
 *
 * The module owns the schema of the body, so it writes the JSON itself:
 * it knows which fields are arrays (an empty mentionUsers is `[]`, which
 * lua-cjson 2.1.0 cannot say), writes integers exactly (cjson's %.14g
 * turns long ids into exponents), and checks every type on the way, so a
 * misuse raises before a byte is sent. Nothing here touches the network.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

#define MAX_DEPTH 32

/* The body's fields in the order of the API's documented request. */
enum { K_TITLE, K_SOURCE, K_MENTION, K_MESSAGE, K_CHANNEL, K_ROUTE, K_AGENT,
       K_COBROWSE, K_FIELDS, K_THREAD, K_SESSION, K_COUNT };
enum { T_STRING, T_USERS, T_MESSAGE, T_ID, T_BOOL, T_FIELDS };

static const struct { const char *name; int type; } known[K_COUNT] = {
    { "title", T_STRING },       { "source", T_STRING },
    { "mentionUsers", T_USERS }, { "message", T_MESSAGE },
    { "channel", T_STRING },     { "routeAgentId", T_ID },
    { "agentId", T_ID },         { "isFromCobrowse", T_BOOL },
    { "fields", T_FIELDS },      { "threadId", T_ID },
    { "sessionId", T_ID },
};
#define KNOWN_LIST "title, source, mentionUsers, message, channel, " \
    "routeAgentId, agentId, isFromCobrowse, fields, threadId, sessionId"

/* Where a value sits, for messages: "agentId", "mentionUsers[2]",
   "fields.plan", "message.message". */
typedef struct path_t {
    const char *parent, *key;
    long index;                  /* > 0: parent[index] */
} path_t;

ACQ_NORETURN static void bad_field(lua_State *L, const path_t *p,
                                   const char *expected, int idx) {
    const char *got = acq_typename(L, idx);
    if (p->index > 0)
        luaL_error(L, "bad field '%s[%d]' (%s expected, got %s)",
                   p->parent, (int)p->index, expected, got);
    else if (p->parent)
        luaL_error(L, "bad field '%s.%s' (%s expected, got %s)",
                   p->parent, p->key, expected, got);
    else
        luaL_error(L, "bad field '%s' (%s expected, got %s)", p->key,
                   expected, got);
    ACQ_UNREACHABLE();
}

/* ---- writing ------------------------------------------------------- */

static void put(lua_State *L, acq_buf_t *b, const char *s, size_t n) {
    buf_lreserve(L, b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}
#define PUTLIT(L, b, s) put(L, b, s, sizeof(s) - 1)

static void putc_(lua_State *L, acq_buf_t *b, char c) {
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

static void put_string(lua_State *L, acq_buf_t *b, const char *str, size_t n,
                       const path_t *p) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str, *end = s + n, *run;
    putc_(L, b, '"');
    while (s < end) {
        run = s;
        while (s < end && *s >= 0x20 && *s < 0x80 && *s != '"' && *s != '\\')
            s++;
        if (s > run) put(L, b, (const char *)run, (size_t)(s - run));
        if (s == end) break;
        if (*s >= 0x80) {
            size_t len = utf8_len(s, (size_t)(end - s));
            if (len == 0) {
                if (p->index > 0)
                    luaL_error(L, "bad field '%s[%d]' (invalid UTF-8 at byte %d)",
                               p->parent, (int)p->index, (int)(s - (const unsigned char *)str) + 1);
                else if (p->parent)
                    luaL_error(L, "bad field '%s.%s' (invalid UTF-8 at byte %d)",
                               p->parent, p->key, (int)(s - (const unsigned char *)str) + 1);
                luaL_error(L, "bad field '%s' (invalid UTF-8 at byte %d)", p->key,
                           (int)(s - (const unsigned char *)str) + 1);
            }
            put(L, b, (const char *)s, len);
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
    putc_(L, b, '"');
}

static void put_int(lua_State *L, acq_buf_t *b, long long v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    put(L, b, tmp, (size_t)n);
}

/* An integer-valued number (a Lua integer, or a float with an exact
   integral value inside the 64-bit range). Strings never count. */
static int to_int(lua_State *L, int idx, long long *out) {
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

/* An id: an integer, exactly. A float past 2^53 may already be a rounded
   neighbour (9007199254740993 reads as ...992, another contact): refused,
   never sent as a different id. Integers (5.3+) and, for contactId, digit
   strings carry the whole 64-bit range. */
static int to_id(lua_State *L, int idx, long long *out) {
    if (!to_int(L, idx, out)) return 0;
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) return 1;
#endif
    return *out <= 9007199254740992LL && *out >= -9007199254740992LL;
}

/* Numbers: integers exactly; other floats in the shortest form that reads
   back to the same double; NaN and infinities have no JSON form. */
static void put_number(lua_State *L, acq_buf_t *b, int idx, const path_t *p) {
    char tmp[40];
    long long i;
    double d;
    int prec, n = 0;
    if (to_int(L, idx, &i) && fabs((double)i) < 9007199254740992.0) {
        put_int(L, b, i);
        return;
    }
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) {
        put_int(L, b, (long long)lua_tointeger(L, idx));
        return;
    }
#endif
    d = (double)lua_tonumber(L, idx);
    if (isnan(d) || isinf(d)) bad_field(L, p, "finite number", idx);
    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d) break;
    }
    for (i = 0; i < n; i++)       /* a locale's decimal comma is not JSON */
        if (tmp[i] == ',') tmp[i] = '.';
    put(L, b, tmp, (size_t)n);
}

static int is_null(lua_State *L, int idx) {
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
}

/* ---- sorted keys, so the same opts always give the same bytes ------ */

typedef struct acq_key_t { const char *s; size_t n; } acq_key_t;

static int key_cmp(const void *a, const void *b) {
    const acq_key_t *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* Collects the string keys of the table at idx, sorted, into a userdata
   left on the stack (so an error cannot leak it). Raises on other keys. */
static acq_key_t *sorted_keys(lua_State *L, int idx, size_t *count,
                          const path_t *p) {
    size_t n = 0, i = 0;
    acq_key_t *keys;
    lua_pushnil(L);
    while (lua_next(L, idx)) { n++; lua_pop(L, 1); }
    keys = (acq_key_t *)acq_newuserdata(L, (n ? n : 1) * sizeof *keys);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            bad_field(L, p, "table with string keys", -1);
        keys[i].s = lua_tolstring(L, -1, &keys[i].n);
        i++;
    }
    qsort(keys, n, sizeof *keys, key_cmp);
    *count = n;
    return keys;
}

/* Number of elements if the table at idx is a proper sequence 1..n with
   no other keys, else -1. */
static long sequence_len(lua_State *L, int idx) {
    long n = (long)acq_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        long long k;
        lua_pop(L, 1);
        if (!to_int(L, -1, &k) || k < 1 || k > n) { lua_pop(L, 1); return -1; }
        count++;
    }
    return count == n ? n : -1;
}

/* Generic values, for strict = false pass-through. */
static void put_value(lua_State *L, acq_buf_t *b, int idx, const path_t *p,
                      int depth) {
    idx = acq_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_string(L, b, s, n, p);
        return;
    }
    case LUA_TNUMBER:  put_number(L, b, idx, p); return;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx)) PUTLIT(L, b, "true"); else PUTLIT(L, b, "false");
        return;
    case LUA_TTABLE: {
        long n, i;
        if (depth >= MAX_DEPTH)
            luaL_error(L, "bad field '%s' (nested deeper than %d, or cyclic)",
                       p->parent ? p->parent : p->key, MAX_DEPTH);
        luaL_checkstack(L, 6, "nested too deep");
        n = sequence_len(L, idx);
        if (n > 0) {
            putc_(L, b, '[');
            for (i = 1; i <= n; i++) {
                if (i > 1) putc_(L, b, ',');
                lua_rawgeti(L, idx, (int)i);
                put_value(L, b, -1, p, depth + 1);
                lua_pop(L, 1);
            }
            putc_(L, b, ']');
        } else {
            size_t count, k;
            acq_key_t *keys = sorted_keys(L, idx, &count, p);
            putc_(L, b, '{');
            for (k = 0; k < count; k++) {
                if (k) putc_(L, b, ',');
                put_string(L, b, keys[k].s, keys[k].n, p);
                putc_(L, b, ':');
                lua_pushlstring(L, keys[k].s, keys[k].n);
                lua_rawget(L, idx);
                put_value(L, b, -1, p, depth + 1);
                lua_pop(L, 1);
            }
            putc_(L, b, '}');
            lua_pop(L, 1);                     /* keys */
        }
        return;
    }
    default:
        if (is_null(L, idx)) { PUTLIT(L, b, "null"); return; }
        bad_field(L, p, "string, number, boolean, table or acquire.null", idx);
    }
}

/* ---- the known fields ---------------------------------------------- */

static void put_id(lua_State *L, acq_buf_t *b, int idx, const path_t *p) {
    long long v;
    if (!to_id(L, idx, &v)) bad_field(L, p, "integer", idx);
    if (v < 0)
        luaL_error(L, "bad field '%s' (non-negative integer expected, got %s)",
                   p->key, acq_tolstring(L, idx, NULL));
    put_int(L, b, v);
}

static void put_users(lua_State *L, acq_buf_t *b, int idx, const path_t *p) {
    long n, i;
    if (!lua_istable(L, idx)) bad_field(L, p, "array of user ids", idx);
    n = sequence_len(L, idx);
    if (n < 0)
        luaL_error(L, "bad field '%s' (array of user ids expected, got a table "
                      "that is not a sequence)", p->key);
    putc_(L, b, '[');
    for (i = 1; i <= n; i++) {
        path_t e = { p->key, NULL, i };
        long long v;
        if (i > 1) putc_(L, b, ',');
        lua_rawgeti(L, idx, (int)i);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            put_string(L, b, s, len, &e);
        } else if (to_id(L, -1, &v)) {        /* ids are sent as strings */
            char tmp[24];
            int len = snprintf(tmp, sizeof tmp, "%lld", v);
            putc_(L, b, '"');
            put(L, b, tmp, (size_t)len);
            putc_(L, b, '"');
        } else {
            bad_field(L, &e, "string or integer", -1);
        }
        lua_pop(L, 1);
    }
    putc_(L, b, ']');
}

static void put_message(lua_State *L, acq_buf_t *b, int idx, const path_t *p) {
    static const char *const keys[] = { "type", "message", "translateLangKey" };
    static const char *const defaults[] = { "message", NULL, "" };
    int i;
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        PUTLIT(L, b, "{\"type\":\"message\",\"message\":");
        put_string(L, b, s, n, p);
        PUTLIT(L, b, ",\"translateLangKey\":\"\"}");
        return;
    }
    if (!lua_istable(L, idx)) bad_field(L, p, "string or table", idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!acq_equals(L, -1, "type") && !acq_equals(L, -1, "message") &&
            !acq_equals(L, -1, "translateLangKey"))
            luaL_error(L, "unknown field 'message.%s' (expected one of: type, "
                          "message, translateLangKey)", error_pushname(L, -1));
    }
    putc_(L, b, '{');
    for (i = 0; i < 3; i++) {
        path_t e = { p->key, keys[i], 0 };
        if (i) putc_(L, b, ',');
        putc_(L, b, '"');
        put(L, b, keys[i], strlen(keys[i]));
        PUTLIT(L, b, "\":");
        lua_pushstring(L, keys[i]);
        lua_rawget(L, idx);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            put_string(L, b, s, n, &e);
        } else if (lua_isnil(L, -1) && defaults[i] != NULL) {
            put_string(L, b, defaults[i], strlen(defaults[i]), &e);
        } else {
            bad_field(L, &e, "string", -1);
        }
        lua_pop(L, 1);
    }
    putc_(L, b, '}');
}

static void put_fields(lua_State *L, acq_buf_t *b, int idx, const path_t *p) {
    size_t count, k;
    acq_key_t *keys;
    if (!lua_istable(L, idx)) bad_field(L, p, "table", idx);
    keys = sorted_keys(L, idx, &count, p);
    putc_(L, b, '{');
    for (k = 0; k < count; k++) {
        path_t e = { p->key, keys[k].s, 0 };
        if (k) putc_(L, b, ',');
        put_string(L, b, keys[k].s, keys[k].n, &e);
        putc_(L, b, ':');
        lua_pushlstring(L, keys[k].s, keys[k].n);
        lua_rawget(L, idx);
        switch (lua_type(L, -1)) {
        case LUA_TSTRING: case LUA_TNUMBER: case LUA_TBOOLEAN:
            put_value(L, b, -1, &e, MAX_DEPTH);
            break;
        default:
            if (is_null(L, -1)) PUTLIT(L, b, "null");
            else bad_field(L, &e, "string, number, boolean or acquire.null", -1);
        }
        lua_pop(L, 1);
    }
    putc_(L, b, '}');
    lua_pop(L, 1);                             /* keys */
}

/* ---- entry points -------------------------------------------------- */

int request_parse_contact_id(lua_State *L, int idx, long long *out) {
    long long v = 0;
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n, i;
        const char *s = lua_tolstring(L, idx, &n);
        for (i = 0; i < n; i++) {
            if (s[i] < '0' || s[i] > '9') return 0;
            if (v > (9223372036854775807LL - (s[i] - '0')) / 10) return 0;
            v = v * 10 + (s[i] - '0');
        }
    } else if (!to_id(L, idx, &v)) {
        return 0;
    }
    *out = v;
    return v > 0;
}

long long request_check_contact_id(lua_State *L, int arg) {
    long long v;
    if (!request_parse_contact_id(L, arg, &v)) {
        const char *got = lua_type(L, arg) == LUA_TSTRING
            ? lua_pushfstring(L, "'%s'", lua_tostring(L, arg))
            : lua_type(L, arg) == LUA_TNUMBER ? acq_tolstring(L, arg, NULL)
            : acq_typename(L, arg);
        return luaL_argerror(L, arg, lua_pushfstring(L,
            "contactId must be a positive integer, got %s", got));
    }
    return v;
}

void request_encode_body(lua_State *L, int arg, int strict, acq_buf_t *b) {
    int base, i, first = 1;
    size_t extra = 0;
    b->len = 0;
    if (lua_isnoneornil(L, arg)) {
        put(L, b, "{}", 2);
        return;
    }
    if (!lua_istable(L, arg))
        luaL_argerror(L, arg, lua_pushfstring(L, "opts must be a table, got %s",
                                              acq_typename(L, arg)));
    arg = acq_absindex(L, arg);
    /* One pass over opts: each known value into its slot, in schema order. */
    luaL_checkstack(L, K_COUNT + 8, "opts");
    base = lua_gettop(L);
    for (i = 0; i < K_COUNT; i++) lua_pushnil(L);
    lua_pushnil(L);
    while (lua_next(L, arg)) {
        size_t kn = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        for (i = 0; k && i < K_COUNT; i++)
            if (acq_lstreq(k, kn, known[i].name)) break;
        if (k && i < K_COUNT) {
            lua_replace(L, base + 1 + i);
        } else {
            if (strict || k == NULL)
                luaL_error(L, "unknown field '%s' in opts (expected one of: "
                              KNOWN_LIST ")", error_pushname(L, -2));
            extra++;
            lua_pop(L, 1);
        }
    }
    putc_(L, b, '{');
    for (i = 0; i < K_COUNT; i++) {
        int v = base + 1 + i;
        path_t p = { NULL, known[i].name, 0 };
        if (lua_isnil(L, v)) continue;
        if (!first) putc_(L, b, ',');
        first = 0;
        putc_(L, b, '"');
        put(L, b, known[i].name, strlen(known[i].name));
        PUTLIT(L, b, "\":");
        switch (known[i].type) {
        case T_STRING:
            if (lua_type(L, v) != LUA_TSTRING) bad_field(L, &p, "string", v);
            put_value(L, b, v, &p, 0);
            break;
        case T_BOOL:
            if (!lua_isboolean(L, v)) bad_field(L, &p, "boolean", v);
            put_value(L, b, v, &p, 0);
            break;
        case T_ID:      put_id(L, b, v, &p); break;
        case T_USERS:   put_users(L, b, v, &p); break;
        case T_MESSAGE: put_message(L, b, v, &p); break;
        case T_FIELDS:  put_fields(L, b, v, &p); break;
        }
    }
    if (extra) {                               /* strict = false */
        size_t count, k;
        path_t p = { NULL, "opts", 0 };
        acq_key_t *keys = sorted_keys(L, arg, &count, &p);
        for (k = 0; k < count; k++) {
            path_t e = { NULL, keys[k].s, 0 };
            for (i = 0; i < K_COUNT; i++)
                if (acq_lstreq(keys[k].s, keys[k].n, known[i].name)) break;
            if (i < K_COUNT) continue;
            if (!first) putc_(L, b, ',');
            first = 0;
            put_string(L, b, keys[k].s, keys[k].n, &e);
            putc_(L, b, ':');
            lua_pushlstring(L, keys[k].s, keys[k].n);
            lua_rawget(L, arg);
            put_value(L, b, -1, &e, 0);
            lua_pop(L, 1);
        }
    }
    putc_(L, b, '}');
    lua_settop(L, base);
}

int request_headers(const acq_config_t *cfg, const char *ua,
                    acq_header_t h[ACQ_NHEADERS]) {
    h[0].name = "Content-Type";  h[0].prefix = ""; h[0].value = "application/json";
    h[1].name = "Accept";        h[1].prefix = ""; h[1].value = "application/json";
    h[2].name = "Authorization"; h[2].prefix = "Bearer "; h[2].value = cfg->api_key;
    if (ua == NULL) return 3;
    h[3].name = "User-Agent";    h[3].prefix = ""; h[3].value = ua;
    return 4;
}

/* Writes base_url + path + "?contactId=" + id; out holds ACQ_URL_MAX. */
size_t request_url(const acq_config_t *cfg, long long id, char *out) {
    size_t n = cfg->base_len;
    memcpy(out, cfg->base_url, n);
    memcpy(out + n, ACQ_URL_PREFIX, sizeof(ACQ_URL_PREFIX) - 1);
    n += sizeof(ACQ_URL_PREFIX) - 1;
    return n + (size_t)snprintf(out + n, 24, "%lld", id);
}

/* acquire.build_request(contactId, opts, config)
   -> { method = "POST", url = ..., headers = { name = value }, body = ... } */
int request_l_build(lua_State *L) {
    acq_config_t cfg;
    acq_header_t h[ACQ_NHEADERS];
    long long id;
    acq_buf_t *b;
    char *url;
    int i, n;
    lua_settop(L, 3);
    config_check(L, 3, &cfg);                               /* 4: base_url */
    id = request_check_contact_id(L, 1);
    b = buf_push(L);                                        /* 5 */
    request_encode_body(L, 2, cfg.strict, b);
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "POST");
    lua_setfield(L, -2, "method");
    url = (char *)acq_newuserdata(L, ACQ_URL_MAX);
    lua_pushlstring(L, url, request_url(&cfg, id, url));
    lua_setfield(L, -3, "url");
    lua_pop(L, 1);
    n = request_headers(&cfg, cfg.user_agent, h);   /* a default User-Agent is the transport's */
    lua_createtable(L, 0, ACQ_NHEADERS);
    for (i = 0; i < n; i++) {
        lua_pushstring(L, h[i].prefix);
        lua_pushstring(L, h[i].value);
        lua_concat(L, 2);
        lua_setfield(L, -2, h[i].name);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, b->p, b->len);
    lua_setfield(L, -2, "body");
    return 1;
}
