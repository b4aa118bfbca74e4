/*
 * redact.c: the API key (and proxy credentials) out of every string the
 * module hands back or logs.
 *
 * A server may echo the key raw, or as a JSON encoder writes it: "/" as
 * "\/" (PHP's json_encode), any character as "\uXXXX" (either hex case,
 * UTF-16 surrogate pairs for 4-byte UTF-8), '"' and '\' escaped, control
 * characters as \b \f \n \r \t. The matcher reads every one of those forms,
 * byte by byte, so no encoder's choice can hide the key. A key that the end
 * of the text cuts short is redacted too, from ACQ_REDACT_TAIL_MIN bytes on
 * (err.body is cut at 4096 bytes, maybe inside an echoed key).
 */
#include <string.h>
#include "core.h"

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s (n bytes available): 0..0xFFFF, -1 not hex, -2 cut. */
static long hex4(const char *s, size_t n) {
    long v = 0;
    size_t i;
    for (i = 0; i < 4; i++) {
        int h;
        if (i >= n) return -2;
        h = hexval((unsigned char)s[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/* UTF-8 of code point cp into out; returns its length. */
static size_t utf8(unsigned long cp, unsigned char out[4]) {
    if (cp < 0x80) { out[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

#define CUT (-1L)

/* One JSON escape at s (s[0] == '\\'): the bytes it stands for into out,
   their count into *olen; returns the escape's length, 0 when it is not
   an escape, CUT when s ends inside it. */
static long escape(const char *s, size_t n, unsigned char out[4], size_t *olen) {
    long hi, lo;
    if (n < 2) return CUT;
    *olen = 1;
    switch (s[1]) {
    case '/': case '"': case '\\': out[0] = (unsigned char)s[1]; return 2;
    case 'b': out[0] = '\b'; return 2;
    case 'f': out[0] = '\f'; return 2;
    case 'n': out[0] = '\n'; return 2;
    case 'r': out[0] = '\r'; return 2;
    case 't': out[0] = '\t'; return 2;
    case 'u': break;
    default: return 0;
    }
    hi = hex4(s + 2, n - 2);
    if (hi == -2) return CUT;
    if (hi < 0) return 0;
    if (hi < 0xD800 || hi > 0xDFFF) {
        *olen = utf8((unsigned long)hi, out);
        return 6;
    }
    if (hi > 0xDBFF) return 0;                 /* a lone low surrogate */
    if (n < 8) return CUT;
    if (s[6] != '\\' || s[7] != 'u') return 0;
    lo = hex4(s + 8, n - 8);
    if (lo == -2) return CUT;
    if (lo < 0xDC00 || lo > 0xDFFF) return 0;
    *olen = utf8(0x10000 + (((unsigned long)hi - 0xD800) << 10) + ((unsigned long)lo - 0xDC00), out);
    return 12;
}

/* Does s spell k from its first byte? The length spelled, 0, or CUT when
   s ends first (*got: how many of k's bytes were spelled by then, the most
   of any reading). A backslash where the key holds one could be the key's
   own byte or the start of an escape: both readings are tried (a key with
   many of them stops branching at depth 8 and is read raw). */
static long match(const char *s, size_t n, const char *k, size_t kn, int depth, size_t *got) {
    size_t i = 0, p = 0;
    int cut = 0;
    while (i < kn) {
        if (p >= n) { if (i > *got) *got = i; return CUT; }
        if (s[p] == '\\') {
            unsigned char out[4];
            size_t olen = 0;
            long e = escape(s + p, n - p, out, &olen);
            int fits = e > 0 && olen <= kn - i && memcmp(out, k + i, olen) == 0;
            if (e == CUT) { cut = 1; if (i > *got) *got = i; }
            if (fits && i + olen == kn) return (long)p + e;
            if (fits && k[i] != '\\') {           /* the only reading */
                p += (size_t)e;
                i += olen;
                continue;
            }
            if (fits && depth < 8) {
                size_t sub = 0;
                long rest = match(s + p + e, n - p - (size_t)e, k + i + olen,
                                  kn - i - olen, depth + 1, &sub);
                if (rest > 0) return (long)p + e + rest;
                if (rest == CUT) {
                    cut = 1;
                    if (i + olen + sub > *got) *got = i + olen + sub;
                }
            }
        }
        if (s[p] != k[i]) return cut ? CUT : 0;
        p++;
        i++;
    }
    return (long)p;
}

/* The length of the key spelled at s, 0, or CUT with *got key bytes. */
static long match_at(const char *s, size_t n, const char *k, size_t kn, size_t *got) {
    *got = 0;
    if (kn == 0 || n == 0) return 0;
    if (s[0] != k[0] && s[0] != '\\') return 0;
    return match(s, n, k, kn, 0, got);
}

int redact_next(const char *s, size_t n, const acq_secret_t *k, size_t *at, size_t *len) {
    size_t p, got;
    const acq_secret_t *e;
    *at = n;
    *len = 0;
    for (p = 0; p < n; p++) {
        for (e = k; e != NULL; e = e->next) {            /* the earliest of any secret */
            long m;
            if (e->len == 0 || (s[p] != e->p[0] && s[p] != '\\')) continue;
            m = match_at(s + p, n - p, e->p, e->len, &got);
            if (m > 0) { *at = p; *len = (size_t)m; return 1; }
            if (m == CUT && got >= ACQ_REDACT_TAIL_MIN) {   /* a secret cut short */
                *at = p; *len = n - p; return 1;
            }
        }
    }
    return 0;
}

void redact_push(lua_State *L, const char *s, size_t n, const acq_secret_t *k) {
    luaL_Buffer b;
    size_t at, len;
    if (!redact_next(s, n, k, &at, &len)) {
        lua_pushlstring(L, s, n);
        return;
    }
    luaL_buffinit(L, &b);
    do {
        luaL_addlstring(&b, s, at);
        luaL_addstring(&b, ACQ_REDACTED);
        s += at + len;
        n -= at + len;
    } while (redact_next(s, n, k, &at, &len));
    luaL_addlstring(&b, s, n);
    luaL_pushresult(&b);
}

/* acquire.redact(s, secret, ...) -> s with every form of each secret replaced */
int redact_l_redact(lua_State *L) {
    acq_secret_t k[ACQ_MAX_SECRETS];
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int i, top = lua_gettop(L);
    if (top < 2) return luaL_argerror(L, 2, "string expected, got no value");
    if (top - 1 > ACQ_MAX_SECRETS) return luaL_argerror(L, ACQ_MAX_SECRETS + 2, "too many secrets");
    for (i = 2; i <= top; i++) {
        k[i - 2].p = luaL_checklstring(L, i, &k[i - 2].len);
        k[i - 2].next = i < top ? &k[i - 1] : NULL;
    }
    redact_push(L, s, n, k);
    return 1;
}
