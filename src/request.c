/*
 * request.c: contactId and opts into the bytes of the request.
 *
 * The module owns the schema of the body, so it writes the JSON itself
 * (through json.c): it knows which fields are arrays (an empty
 * mentionUsers is `[]`, which lua-cjson 2.1.0 cannot say), writes integers
 * exactly (cjson's %.14g turns long ids into exponents), and checks every
 * type on the way, so a misuse raises before a byte is sent. Nothing here
 * touches the network.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

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

/* An id: an integer, exactly. A float past 2^53 may already be a rounded
   neighbour (9007199254740993 reads as ...992, another contact): refused,
   never sent as a different id. Integers (5.3+) and, for contactId, digit
   strings carry the whole 64-bit range. */
static int to_id(lua_State *L, int idx, long long *out) {
    if (!json_to_int(L, idx, out)) return 0;
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) return 1;
#endif
    return *out <= 9007199254740992LL && *out >= -9007199254740992LL;
}

/* ---- the known fields ---------------------------------------------- */

static void put_id(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p) {
    long long v;
    if (!to_id(L, idx, &v)) json_bad(L, p, "integer", idx);
    if (v < 0)
        luaL_error(L, "bad field '%s' (non-negative integer expected, got %s)",
                   p->key, acq_tolstring(L, idx, NULL));
    json_int(L, b, v);
}

static void put_users(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p) {
    long n, i;
    if (!lua_istable(L, idx)) json_bad(L, p, "array of user ids", idx);
    n = json_sequence_len(L, idx);
    if (n < 0)
        luaL_error(L, "bad field '%s' (array of user ids expected, got a table "
                      "that is not a sequence)", p->key);
    json_char(L, b, '[');
    for (i = 1; i <= n; i++) {
        acq_path_t e = { p->key, NULL, i };
        long long v;
        if (i > 1) json_char(L, b, ',');
        lua_rawgeti(L, idx, (int)i);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            json_string(L, b, s, len, &e);
        } else if (to_id(L, -1, &v)) {        /* ids are sent as strings */
            char tmp[24];
            int len = snprintf(tmp, sizeof tmp, "%lld", v);
            json_char(L, b, '"');
            json_raw(L, b, tmp, (size_t)len);
            json_char(L, b, '"');
        } else {
            json_bad(L, &e, "string or integer", -1);
        }
        lua_pop(L, 1);
    }
    json_char(L, b, ']');
}

static void put_message(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p) {
    static const char *const keys[] = { "type", "message", "translateLangKey" };
    static const char *const defaults[] = { "message", NULL, "" };
    int i;
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        JSON_LIT(L, b, "{\"type\":\"message\",\"message\":");
        json_string(L, b, s, n, p);
        JSON_LIT(L, b, ",\"translateLangKey\":\"\"}");
        return;
    }
    if (!lua_istable(L, idx)) json_bad(L, p, "string or table", idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        for (i = 0; i < 3 && !acq_equals(L, -1, keys[i]); i++) {}
        if (i == 3) {
            const char *name = error_pushname(L, -1);      /* first: both push */
            luaL_error(L, "unknown field 'message.%s' (expected one of: %s)", name,
                       error_pushlist(L, keys, sizeof keys[0], 3));
        }
    }
    json_char(L, b, '{');
    for (i = 0; i < 3; i++) {
        acq_path_t e = { p->key, keys[i], 0 };
        if (i) json_char(L, b, ',');
        json_char(L, b, '"');
        json_raw(L, b, keys[i], strlen(keys[i]));
        JSON_LIT(L, b, "\":");
        lua_pushstring(L, keys[i]);
        lua_rawget(L, idx);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            json_string(L, b, s, n, &e);
        } else if (lua_isnil(L, -1) && defaults[i] != NULL) {
            json_string(L, b, defaults[i], strlen(defaults[i]), &e);
        } else {
            json_bad(L, &e, "string", -1);
        }
        lua_pop(L, 1);
    }
    json_char(L, b, '}');
}

static void put_fields(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p) {
    size_t count, k;
    acq_key_t *keys;
    if (!lua_istable(L, idx)) json_bad(L, p, "table", idx);
    keys = json_sorted_keys(L, idx, &count, p);
    json_char(L, b, '{');
    for (k = 0; k < count; k++) {
        acq_path_t e = { p->key, keys[k].s, 0 };
        if (k) json_char(L, b, ',');
        json_string(L, b, keys[k].s, keys[k].n, &e);
        json_char(L, b, ':');
        lua_pushlstring(L, keys[k].s, keys[k].n);
        lua_rawget(L, idx);
        switch (lua_type(L, -1)) {
        case LUA_TSTRING: case LUA_TNUMBER: case LUA_TBOOLEAN:
            json_value(L, b, -1, &e, ACQ_JSON_MAX_DEPTH);
            break;
        default:
            if (acq_isnull(L, -1)) JSON_LIT(L, b, "null");
            else json_bad(L, &e, "string, number, boolean or acquire.null", -1);
        }
        lua_pop(L, 1);
    }
    json_char(L, b, '}');
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

const char *request_push_contact_id_error(lua_State *L, int idx) {
    const char *got = lua_type(L, idx) == LUA_TSTRING
        ? lua_pushfstring(L, "'%s'", lua_tostring(L, idx))
        : lua_type(L, idx) == LUA_TNUMBER ? error_pushnumber(L, idx)
        : acq_typename(L, idx);
    return lua_pushfstring(L, "contactId must be a positive integer, got %s", got);
}

long long request_check_contact_id(lua_State *L, int arg) {
    long long v;
    if (!request_parse_contact_id(L, arg, &v))
        return luaL_argerror(L, arg, request_push_contact_id_error(L, arg));
    return v;
}

void request_encode_body(lua_State *L, int arg, int strict, acq_buf_t *b) {
    int base, i, first = 1;
    size_t extra = 0;
    b->len = 0;
    if (lua_isnoneornil(L, arg)) {
        json_raw(L, b, "{}", 2);
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
            if (strict || k == NULL) {
                const char *name = error_pushname(L, -2);  /* first: both push */
                luaL_error(L, "unknown field '%s' in opts (expected one of: %s)", name,
                           error_pushlist(L, &known[0].name, sizeof known[0], K_COUNT));
            }
            extra++;
            lua_pop(L, 1);
        }
    }
    json_char(L, b, '{');
    for (i = 0; i < K_COUNT; i++) {
        int v = base + 1 + i;
        acq_path_t p = { NULL, known[i].name, 0 };
        if (lua_isnil(L, v)) continue;
        if (!first) json_char(L, b, ',');
        first = 0;
        json_char(L, b, '"');
        json_raw(L, b, known[i].name, strlen(known[i].name));
        JSON_LIT(L, b, "\":");
        switch (known[i].type) {
        case T_STRING:
            if (lua_type(L, v) != LUA_TSTRING) json_bad(L, &p, "string", v);
            json_value(L, b, v, &p, 0);
            break;
        case T_BOOL:
            if (!lua_isboolean(L, v)) json_bad(L, &p, "boolean", v);
            json_value(L, b, v, &p, 0);
            break;
        case T_ID:      put_id(L, b, v, &p); break;
        case T_USERS:   put_users(L, b, v, &p); break;
        case T_MESSAGE: put_message(L, b, v, &p); break;
        case T_FIELDS:  put_fields(L, b, v, &p); break;
        }
    }
    if (extra) {                               /* strict = false */
        size_t count, k;
        acq_path_t p = { NULL, "opts", 0 };
        acq_key_t *keys = json_sorted_keys(L, arg, &count, &p);
        for (k = 0; k < count; k++) {
            acq_path_t e = { NULL, keys[k].s, 0 };
            for (i = 0; i < K_COUNT; i++)
                if (acq_lstreq(keys[k].s, keys[k].n, known[i].name)) break;
            if (i < K_COUNT) continue;
            if (!first) json_char(L, b, ',');
            first = 0;
            json_string(L, b, keys[k].s, keys[k].n, &e);
            json_char(L, b, ':');
            lua_pushlstring(L, keys[k].s, keys[k].n);
            lua_rawget(L, arg);
            json_value(L, b, -1, &e, 0);
            lua_pop(L, 1);
        }
    }
    json_char(L, b, '}');
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

/* acquire.request_fields() -> { [name] = type }: the body's known fields, data for
   tools (acquire-case's --csv columns). Types: "string", "users", "message", "id",
   "boolean", "fields", in the enum's order. */
int request_l_fields(lua_State *L) {
    static const char *const types[] = { "string", "users", "message", "id", "boolean", "fields" };
    int i;
    lua_createtable(L, 0, K_COUNT);
    for (i = 0; i < K_COUNT; i++) {
        lua_pushstring(L, types[known[i].type]);
        lua_setfield(L, -2, known[i].name);
    }
    return 1;
}
