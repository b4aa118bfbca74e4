/*
 * jrecord.c: the journal's records and digests (src/journal.h).
 *
 *   j:put(i, digest, contact, state [, a, b, c]) -> true | nil, msg, errno   a record,
 *                    formatted here and kept in memory until the next write or sync (or
 *                    64 KiB of them): "sent" has no more keys; "created" a = id,
 *                    b = case_status, c = reconciled; "failed"/"maybe_created" a = error
 *   j:digest(contactId, opts [, fold]) -> digest, contact   an item's: FNV-1a 64 of its
 *                    contact's digits, LF, and its body as acquire.build_request encodes it
 *                    (strict = false); raises on a bad item. fold: also into the input's
 *   j:input()        -> the input's digest: FNV-1a 64 of the folded digests, LF between
 *   j:fnv(s [, prev]) -> 16 hex digits: FNV-1a 64 of s, going on from the digest prev
 *
 * The record's format is written (j:put) and read (jrecord_parse, for
 * j:scan) here, side by side.
 */
#include <stdio.h>
#include <string.h>
#include "journal.h"

const char *const jrecord_states[JRECORD_NSTATES] = { NULL, "sent", "created", "failed", "maybe_created" };

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

#define FNV_BASIS 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t fnv(uint64_t h, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    for (; p < e; p++) h = (h ^ *p) * FNV_PRIME;
    return h;
}

/* ---- records: formatted here, written a wave at a time ---------------- */

#define PEND_MAX ((size_t)64 << 10)               /* written when the records put reach it */

/* n bytes of s at o (no terminator: a record is bytes) -> past them */
static char *put_bytes(char *o, const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) o[i] = s[i];
    return o + n;
}

/* s as the inside of a JSON string (escaped as lua-cjson does); at most 6n bytes */
static char *put_escaped(char *o, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':  *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '/':  *o++ = '\\'; *o++ = '/'; break;
        case '\b': *o++ = '\\'; *o++ = 'b'; break;
        case '\f': *o++ = '\\'; *o++ = 'f'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                o = put_bytes(o, "\\u00", 4);
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            } else {
                *o++ = (char)c;
            }
        }
    }
    return o;
}

/* A number in all its digits (lua-cjson would round past 14): an integer as
   one, a whole float as %.0f, another as %.17g, NaN and infinities null. */
static size_t number_text(lua_State *L, int idx, char out[40]) {
    lua_Number v;
#if ACQ_HAS_INTEGERS
    if (lua_isinteger(L, idx)) return (size_t)snprintf(out, 40, "%lld", (long long)lua_tointeger(L, idx));
#endif
    v = lua_tonumber(L, idx);
    if (v != v || v - v != 0) { put_bytes(out, "null", 4); return 4; }
    if (v > -9223372036854775808.0 && v < 9223372036854775808.0 && (lua_Number)(long long)v == v)
        return (size_t)snprintf(out, 40, "%.0f", (double)v);
    return (size_t)snprintf(out, 40, "%.17g", (double)v);
}

/* The most bytes ,"key":value takes for the value at idx (0: left out, as
   the value is nil or of no JSON type) */
static size_t value_room(lua_State *L, int idx) {
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: return 40;
    case LUA_TBOOLEAN: return 5;
    case LUA_TSTRING: { size_t n; lua_tolstring(L, idx, &n); return 2 + 6 * n; }
    default: return 0;
    }
}

static char *put_value(lua_State *L, char *o, const char *key, int idx) {
    size_t kn = strlen(key);
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: case LUA_TBOOLEAN: case LUA_TSTRING: break;
    default: return o;
    }
    *o++ = ',', *o++ = '"';
    o = put_bytes(o, key, kn);
    *o++ = '"', *o++ = ':';
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: o += number_text(L, idx, o); break;
    case LUA_TBOOLEAN:
        o = lua_toboolean(L, idx) ? put_bytes(o, "true", 4) : put_bytes(o, "false", 5);
        break;
    default: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        *o++ = '"';
        o = put_escaped(o, s, n);
        *o++ = '"';
    }
    }
    return o;
}

/* j:put(i, digest, contact, state [, a, b, c]): the record as parse_record
   reads it (item, digest, state first; then contactId and the state's keys) */
int jrecord_l_put(lua_State *L) {
    static const char *const KEYS[JRECORD_NSTATES][3] = {
        { NULL, NULL, NULL }, { NULL, NULL, NULL }, { "id", "case_status", "reconciled" },
        { "error", NULL, NULL }, { "error", NULL, NULL } };
    acq_journal_t *j = journal_check_open(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    size_t dn, cn, room, k;
    const char *d = luaL_checklstring(L, 3, &dn);
    const char *c = luaL_checklstring(L, 4, &cn);
    const char *st = luaL_checkstring(L, 5);
    char *o;
    int s;
    for (s = 1; s < JRECORD_NSTATES; s++) if (strcmp(st, jrecord_states[s]) == 0) break;
    if (s >= JRECORD_NSTATES) return luaL_argerror(L, 5, "a record's state expected");
    luaL_argcheck(L, i >= 1, 2, "an item number expected");
    for (k = 0; k < dn && hexval((unsigned char)d[k]) >= 0; k++) {}
    luaL_argcheck(L, dn == 16 && k == 16, 3, "a digest of 16 hex digits expected");
    if (j->failed) return journal_push_failed(L, j);
    room = 96 + dn + 6 * cn;
    for (k = 0; k < 3; k++) if (KEYS[s][k]) room += 16 + value_room(L, 6 + (int)k);
    if (!buf_reserve(&j->pend, room)) return luaL_error(L, "not enough memory");
    o = j->pend.p + j->pend.len;
    o += snprintf(o, 40, "{\"item\":%lld,\"digest\":\"", (long long)i);
    memcpy(o, d, 16), o += 16;
    o += snprintf(o, 40, "\",\"state\":\"%s\",\"contactId\":\"", jrecord_states[s]);
    o = put_escaped(o, c, cn);
    *o++ = '"';
    for (k = 0; k < 3; k++) if (KEYS[s][k]) o = put_value(L, o, KEYS[s][k], 6 + (int)k);
    *o++ = '}', *o++ = '\n';
    j->pend.len = (size_t)(o - j->pend.p);
    if (j->pend.len >= PEND_MAX && journal_write_pending(j) != 0) return journal_push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- records read back (j:scan) ------------------------------------------ */

/* A record line (without its LF) as journal.lua writes one: the keys item,
   digest and state first, in that order, then others, and a closing brace.
   -> 1 with item, digest, state (and a created one's id, or 0) */
int jrecord_parse(const char *p, size_t n, uint64_t *item, uint64_t *dg, int *state, int64_t *id) {
    static const char K_ITEM[] = "{\"item\":", K_DIGEST[] = ",\"digest\":\"", K_STATE[] = "\",\"state\":\"";
    size_t i = 0, k;
    uint64_t v = 0;
    int s;
    if (n < 2 || p[n - 1] != '}') return 0;
    if (n < sizeof K_ITEM - 1 || memcmp(p, K_ITEM, sizeof K_ITEM - 1) != 0) return 0;
    i = sizeof K_ITEM - 1;
    for (k = 0; i < n && p[i] >= '0' && p[i] <= '9' && k < 12; i++, k++) v = v * 10 + (uint64_t)(p[i] - '0');
    if (k == 0 || k >= 12 || v == 0 || p[sizeof K_ITEM - 1] == '0') return 0;
    *item = v;
    if (n - i < sizeof K_DIGEST - 1 + 16 || memcmp(p + i, K_DIGEST, sizeof K_DIGEST - 1) != 0) return 0;
    i += sizeof K_DIGEST - 1;
    for (v = 0, k = 0; k < 16; k++, i++) {
        int h = hexval((unsigned char)p[i]);
        if (h < 0) return 0;
        v = v << 4 | (uint64_t)h;
    }
    *dg = v;
    if (n - i < sizeof K_STATE - 1 || memcmp(p + i, K_STATE, sizeof K_STATE - 1) != 0) return 0;
    i += sizeof K_STATE - 1;
    for (s = 1; s < JRECORD_NSTATES; s++) {
        size_t len = strlen(jrecord_states[s]);
        if (n - i > len && memcmp(p + i, jrecord_states[s], len) == 0 && p[i + len] == '"') break;
    }
    if (s == JRECORD_NSTATES) return 0;
    *state = s;
    i += strlen(jrecord_states[s]) + 1;
    if (p[i] != '}' && p[i] != ',') return 0;
    *id = 0;
    if (s == 2) {                     /* "created": its "id", the first after the state */
        static const char K_ID[] = ",\"id\":";
        for (; i + sizeof K_ID - 1 < n; i++) {
            if (p[i] == '"' && i > 0 && p[i - 1] == ',' && memcmp(p + i - 1, K_ID, sizeof K_ID - 1) == 0) {
                int64_t x = 0;
                size_t d = i - 1 + sizeof K_ID - 1;
                for (k = 0; d < n && p[d] >= '0' && p[d] <= '9' && k < 19; d++, k++) x = x * 10 + (p[d] - '0');
                if (k > 0 && k < 19) *id = x;
                break;
            }
        }
    }
    return 1;
}

/* ---- digests ------------------------------------------------------------- */

void jrecord_push_digest(lua_State *L, uint64_t v) {
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)v);
    lua_pushlstring(L, hex, 16);
}

/* FNV-1a 64: an item's digest and the input's (going on from prev, so the
   input's is computed as the items are drawn: the same digits as over their
   concatenation). */
int jrecord_l_fnv(lua_State *L) {
    size_t n, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 2, &n);
    uint64_t h = FNV_BASIS;
    if (!lua_isnoneornil(L, 3)) {
        size_t pn;
        const char *p = luaL_checklstring(L, 3, &pn);
        luaL_argcheck(L, pn == 16, 3, "a digest of 16 hex digits expected");
        for (h = 0, i = 0; i < 16; i++) {
            int v = hexval((unsigned char)p[i]);
            luaL_argcheck(L, v >= 0, 3, "a digest of 16 hex digits expected");
            h = h << 4 | (uint64_t)v;
        }
    }
    jrecord_push_digest(L, fnv(h, (const char *)s, n));
    return 1;
}

/* j:digest(contactId, opts [, fold]) -> digest, contact: the item's request
   (its contact's digits, LF, the body acquire.build_request encodes with
   strict = false), without building the rest of it; fold: the digest also
   goes into the input's (j:input) */
int jrecord_l_digest(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    long long id;
    char num[24];
    size_t nn;
    uint64_t h;
    int fold = lua_toboolean(L, 4);
    if (!request_parse_contact_id(L, 2, &id)) {
        const char *got = lua_type(L, 2) == LUA_TSTRING ? lua_pushfstring(L, "'%s'", lua_tostring(L, 2))
            : lua_type(L, 2) == LUA_TNUMBER ? error_pushnumber(L, 2)
            : acq_typename(L, 2);
        return luaL_error(L, "contactId must be a positive integer, got %s", got);
    }
    if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
        return luaL_error(L, "opts must be a table, got %s", acq_typename(L, 3));
    request_encode_body(L, 3, 0, &j->scratch);
    nn = (size_t)snprintf(num, sizeof num, "%lld", id);
    num[nn] = '\n';
    h = fnv(fnv(FNV_BASIS, num, nn + 1), j->scratch.p, j->scratch.len);
    if (fold) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
        j->input = j->ninput++ == 0 ? fnv(FNV_BASIS, hex, 16) : fnv(fnv(j->input, "\n", 1), hex, 16);
    }
    jrecord_push_digest(L, h);
    lua_pushlstring(L, num, nn);
    return 2;
}

/* j:input() -> the input's digest: FNV-1a 64 over the folded digests, LF
   between them (of nothing: of the empty string) */
int jrecord_l_input(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    jrecord_push_digest(L, j->ninput ? j->input : FNV_BASIS);
    return 1;
}

