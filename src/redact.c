/*
 * redact.c: credentials out of every string the module hands back or logs.
 *
 * The rule (README, "acquire.redact"). A credential is redacted
 *  1. where it stands, whatever its length, in the text as a JSON reader
 *     reads it from its start (URLs also as written; without a backslash
 *     the two are one): the userinfo of a URL (scheme://USER:PASS@host ->
 *     scheme://[REDACTED]@host; up to the last '@' before the authority
 *     ends); the value of an Authorization or Proxy-Authorization header
 *     (its scheme word kept: "Authorization: Bearer [REDACTED]"); the token
 *     after "Bearer ", and a "Basic " token that decodes to user:password;
 *  2. wherever it appears, for each secret of ACQ_REDACT_MIN bytes or more
 *     (a shorter one cannot be told from text: a password "p" is in every
 *     word with a p): raw, and as a JSON encoder may write it ("\/",
 *     "\uXXXX" in either case, surrogate pairs, "\"", "\\", "\b" ...) read
 *     from any byte of the text (a stray backslash before it hides nothing);
 *     and a secret the end of the text cuts short, from ACQ_REDACT_TAIL_MIN
 *     of its bytes on.
 * Both apply when at least one secret is given: with none, nothing is touched.
 * Overlapping and adjacent spans, of one secret or several, are one span and
 * one [REDACTED]: no tail of a secret survives. A span that touches an escape
 * takes the whole escape, so the text reads as before around [REDACTED].
 *
 * Linear, whatever the secrets' bytes: O(n) per secret, plus O(length *
 * distinct bytes) for its automaton, built only when the text holds a
 * backslash. From offset p, the JSON reading is one token (an escape, or a
 * byte), then the reading from its end: the readings form a tree rooted at
 * the text's end, so "the reading from p begins with the secret" is one
 * backward pass of the reversed secret's automaton (13 states kept), and a
 * forward pass marks each match's bytes. The text as written is a KMP
 * search. Nothing recurses.
 */
#include <stdlib.h>
#include <string.h>
#include "core.h"

/* Four hex digits at s (n bytes available): 0..0xFFFF, -1 not hex, -2 cut. */
static long hex4(const char *s, size_t n) {
    long v = 0;
    size_t i;
    for (i = 0; i < 4; i++) {
        int h;
        if (i >= n) return -2;
        h = acq_hexdigit((unsigned char)s[i]);
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

/* The token at p of the JSON reading: an escape (its bytes into out, their
   count into *olen) or one raw byte. Returns its length in s. */
static size_t token(const char *s, size_t n, size_t p, unsigned char out[4], size_t *olen) {
    if (s[p] == '\\') {
        long e = escape(s + p, n - p, out, olen);
        if (e > 0) return (size_t)e;
    }
    out[0] = (unsigned char)s[p];
    *olen = 1;
    return 1;
}

/* One bit per byte of the text: redacted or not. */
typedef unsigned char mask_t;
#define MASK_BYTES(n)   (((n) + 7) / 8)
#define SET(m, i)       ((m)[(i) >> 3] = (mask_t)((m)[(i) >> 3] | (1u << ((i) & 7))))
#define ISSET(m, i)     (((m)[(i) >> 3] >> ((i) & 7)) & 1u)

static void mark(mask_t *m, size_t a, size_t b) {
    for (; a < b; a++) SET(m, a);
}

/* ---- 1. where credentials stand ------------------------------------- */

static int is_alnum(int c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* c is one of set's bytes (strchr alone also finds the terminator: NUL). */
static int one_of(int c, const char *set) { return c != 0 && strchr(set, c) != NULL; }

/* Ends a URL's authority: a delimiter, or a byte no URL holds. */
static int url_end(int c) {
    return c <= 0x20 || c == 0x7F || one_of(c, "/?#\"<>\\^`{|}");
}

static int b64val(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

#define WIN 16                                  /* a ring: "authorization" and the byte before */
#define BACK(st, k) ((st)->win[((st)->seen - 1 - (k)) & (WIN - 1)])   /* k bytes before the last */
static const char AUTHZ[] = "authorization";

/* The machines that find credentials where they stand, fed one byte at a
   time with the source span [a, b) it was read from. */
typedef struct stand_t {
    mask_t *m;
    int headers;                 /* the header and Bearer/Basic rules too */
    unsigned char win[WIN];      /* the last bytes read */
    size_t seen;                 /* bytes read so far */
    /* a URL: 0 none, 1 "x:", 2 "x:/", 3 in the authority */
    int u;  size_t u_start, u_at;  int u_has_at;
    /* a header: 0 none, 1 after the name, 2 after ':', 3 in the value */
    int h;  int h_qctx, h_quoted, h_seen_q;
    int h_vs;  size_t h_vstart, h_cred;          /* value: 0 start, 1 word, 2 spaces, 3 credential */
    /* a token after "Bearer " (1) or "Basic " (2) */
    int t;  size_t t_start, t_len;  unsigned long t_acc;  int t_bits, t_colon, t_ok, t_pad;
} stand_t;

static int win_ends(const stand_t *st, const char *w, size_t wl, int fold) {
    size_t i;
    if (st->seen < wl) return 0;
    for (i = 0; i < wl; i++) {
        int c = BACK(st, wl - 1 - i);
        if ((fold ? lower(c) : c) != (unsigned char)w[i]) return 0;
    }
    return st->seen == wl || !is_alnum(BACK(st, wl));
}

static void url_done(stand_t *st) {
    if (st->u == 3 && st->u_has_at && st->u_at > st->u_start) mark(st->m, st->u_start, st->u_at);
    st->u = 0;
}

static void header_done(stand_t *st, size_t end) {
    if (st->h == 3) {
        if (st->h_vs == 1) mark(st->m, st->h_vstart, end);       /* one word: all of it */
        else if (st->h_vs == 3) mark(st->m, st->h_cred, end);
    }
    st->h = 0;
}

static void token_done(stand_t *st, size_t end) {
    if (st->t == 1 && st->t_len > 0) mark(st->m, st->t_start, end);
    if (st->t == 2 && st->t_ok && st->t_colon && st->t_len % 4 == 0) mark(st->m, st->t_start, end);
    st->t = 0;
}

static void feed(stand_t *st, int c, size_t a, size_t b) {
    st->win[st->seen++ & (WIN - 1)] = (unsigned char)c;
    if (!(st->u | st->h | st->t) && c != ':' && c != ' ' && lower(c) != 'n') return;   /* idle */

    switch (st->u) {                                  /* scheme://userinfo@ */
    case 3:
        if (c == '@') { st->u_at = a; st->u_has_at = 1; break; }
        if (!url_end(c)) break;
        url_done(st);
        /* fallthrough */
    case 0: u0:
        if (c == ':' && st->seen > 1 && (is_alnum(BACK(st, 1)) || one_of(BACK(st, 1), "+-.")))
            st->u = 1;
        break;
    case 1:
        if (c == '/') st->u = 2;
        else { st->u = 0; goto u0; }
        break;
    case 2:
        if (c == '/') { st->u = 3; st->u_start = b; st->u_has_at = 0; }
        else { st->u = 0; goto u0; }
        break;
    }
    if (!st->headers) return;

    switch (st->h) {                                  /* (Proxy-)Authorization: value */
    case 1:
        if (c == '"' && !st->h_seen_q) { st->h_seen_q = 1; break; }
        if (c == ' ' || c == '\t') break;
        st->h = c == ':' ? 2 : 0;
        break;
    case 2:
        if (c == ' ' || c == '\t') break;
        st->h = 3;
        st->h_vs = 0;
        if (c == '"') { st->h_quoted = 1; break; }
        /* fallthrough */
    case 3:
        if (c == '\r' || c == '\n' || c == '\0' || (c == '"' && (st->h_quoted || st->h_qctx))) {
            header_done(st, a);
            break;
        }
        switch (st->h_vs) {
        case 0:
            st->h_vstart = a;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) st->h_vs = 1;
            else { st->h_vs = 3; st->h_cred = a; }
            break;
        case 1:
            if (c == ' ') st->h_vs = 2;
            else if (!is_alnum(c) && c != '-') { st->h_vs = 3; st->h_cred = st->h_vstart; }
            break;
        case 2:
            if (c != ' ') { st->h_vs = 3; st->h_cred = a; }
            break;
        }
        break;
    }
    if (st->h == 0 && lower(c) == 'n' && st->seen >= sizeof AUTHZ - 1 && lower(BACK(st, 1)) == 'o'
        && win_ends(st, AUTHZ, sizeof AUTHZ - 1, 1)) {
        st->h = 1;
        st->h_seen_q = 0;
        st->h_quoted = 0;
        st->h_qctx = st->seen > sizeof AUTHZ - 1 && BACK(st, sizeof AUTHZ - 1) == '"';
    }

    if (st->t) {                                      /* Bearer TOKEN, Basic TOKEN */
        int v = b64val(c);
        if (v >= 0 || c == '=' || one_of(c, "-._~")) {
            if (st->t_len++ == 0) st->t_start = a;
            if (c == '=') st->t_pad = 1;
            else if (v < 0 || st->t_pad) st->t_ok = 0;
            else {
                st->t_acc = (st->t_acc << 6 | (unsigned long)v) & 0xFFFFUL;
                st->t_bits += 6;
                if (st->t_bits >= 8) {
                    st->t_bits -= 8;
                    if (((st->t_acc >> st->t_bits) & 0xFF) == ':') st->t_colon = 1;
                }
            }
            return;
        }
        token_done(st, a);
    }
    if (c == ' ' && st->seen > 6 && ((BACK(st, 1) == 'r' && win_ends(st, "Bearer ", 7, 0))
                                     || (BACK(st, 1) == 'c' && win_ends(st, "Basic ", 6, 0)))) {
        st->t = BACK(st, 1) == 'r' ? 1 : 2;
        st->t_len = 0;
        st->t_acc = 0;
        st->t_bits = 0;
        st->t_colon = 0;
        st->t_ok = 1;
        st->t_pad = 0;
    }
}

/* The rule's first part over one reading of s (decode: the JSON one). */
static void stand(const char *s, size_t n, int decode, int headers, mask_t *m) {
    stand_t st;
    size_t p = 0;
    memset(&st, 0, sizeof st);
    st.m = m;
    st.headers = headers;
    while (p < n) {
        unsigned char out[4];
        size_t olen, i, e;
        if (!decode || s[p] != '\\') {
            int c = (unsigned char)s[p];
            if (!(st.u | st.h | st.t) && c != ':' && c != ' ' && lower(c) != 'n')
                st.win[st.seen++ & (WIN - 1)] = (unsigned char)c;     /* idle: feed's first step */
            else
                feed(&st, c, p, p + 1);
            p++;
            continue;
        }
        e = token(s, n, p, out, &olen);
        for (i = 0; i < olen; i++) feed(&st, out[i], p, p + e);
        p += e;
    }
    url_done(&st);
    header_done(&st, n);
    token_done(&st, n);
}

/* ---- 2. each secret long enough, wherever it appears ------------------ */

/* KMP: f[i], the longest proper border of k[0..i]. */
static void kmp_failure(const unsigned char *k, size_t kn, size_t *f) {
    size_t i, j = 0;
    f[0] = 0;
    for (i = 1; i < kn; i++) {
        while (j > 0 && k[i] != k[j]) j = f[j - 1];
        if (k[i] == k[j]) j++;
        f[i] = j;
    }
}

static size_t kmp_step(const unsigned char *k, size_t kn, const size_t *f, size_t j, unsigned char c) {
    if (j == kn) j = f[kn - 1];
    while (j > 0 && c != k[j]) j = f[j - 1];
    if (c == k[j]) j++;
    return j;
}

/* The text as written: each occurrence, and a secret cut short at the end. */
static void search_raw(const unsigned char *s, size_t n, const unsigned char *k, size_t kn,
                       const size_t *f, mask_t *m) {
    size_t p, j = 0, done = 0;
    for (p = 0; p < n; p++) {
        if (j == 0) {                             /* to the next byte that can begin it */
            const unsigned char *q = memchr(s + p, k[0], n - p);
            if (q == NULL) return;
            p = (size_t)(q - s);
        }
        j = kmp_step(k, kn, f, j, s[p]);
        if (j == kn) {                            /* starts only grow: mark each byte once */
            size_t a = p + 1 - kn;
            mark(m, a > done ? a : done, p + 1);
            done = p + 1;
        }
    }
    if (j >= ACQ_REDACT_TAIL_MIN && j < kn) mark(m, n - j, n);
}

/* A secret cut short at the end of the JSON reading from the text's start (an
   escape the end cuts counts as the secret's next bytes). ring: kn offsets. */
static void search_tail(const char *s, size_t n, const unsigned char *k, size_t kn,
                        const size_t *f, size_t *ring, mask_t *m) {
    size_t p = 0, j = 0, d = 0, run = 0;
    if (n > 12 * kn + 12) {                       /* only the last kn tokens matter: start at a */
        p = n - 12 * kn - 12;                     /* boundary of every reading, 12 bytes with no */
        while (p > 0 && run < 12) {               /* backslash before it (a token is 12 at most) */
            p--;
            run = s[p] == '\\' ? 0 : run + 1;
        }
        if (run == 12) p += 12;
    }
    while (p < n) {
        unsigned char out[4];
        size_t olen, i, e;
        if (s[p] != '\\') {
            j = kmp_step(k, kn, f, j, (unsigned char)s[p]);
            ring[d++ % kn] = p++;
            continue;
        }
        if (escape(s + p, n - p, out, &olen) == CUT) break;
        e = token(s, n, p, out, &olen);
        for (i = 0; i < olen; i++, d++) {
            j = kmp_step(k, kn, f, j, out[i]);
            ring[d % kn] = p;
        }
        p += e;
    }
    if (j >= ACQ_REDACT_TAIL_MIN && j < kn) mark(m, ring[(d - j) % kn], n);
}

/* The JSON reading from every offset: see the header. rk: the reversed
   secret; dfa: its automaton, (kn + 1) rows of one entry per class of byte
   (at most 257)
   (each byte of rk its own class, every other byte class 0, which leads to
   state 0 from any state); hit: scratch, MASK_BYTES(n). */
static void search_json(const char *s, size_t n, const unsigned char *rk, size_t kn,
                        unsigned *dfa, mask_t *hit, mask_t *m) {
    unsigned short cls[256];
    unsigned st[16];
    size_t need[16];
    size_t p, j, x = 0, nc = 1, active = 0;
    memset(cls, 0, sizeof cls);
    for (j = 0; j < kn; j++)
        if (cls[rk[j]] == 0) cls[rk[j]] = (unsigned short)nc++;
    memset(dfa, 0, nc * sizeof *dfa);
    dfa[cls[rk[0]]] = 1;
    for (j = 1; j <= kn; j++) {                   /* the KMP automaton */
        memcpy(dfa + j * nc, dfa + x * nc, nc * sizeof *dfa);
        if (j < kn) {
            dfa[j * nc + cls[rk[j]]] = (unsigned)(j + 1);
            x = dfa[x * nc + cls[rk[j]]];
        }
    }
    memset(hit, 0, MASK_BYTES(n));
    st[n & 15] = 0;
    for (p = n; p-- > 0;) {                       /* back: does the reading from p begin with it? */
        unsigned q;
        if (s[p] != '\\') {
            q = dfa[(size_t)st[(p + 1) & 15] * nc + cls[(unsigned char)s[p]]];
        } else {
            unsigned char out[4];
            size_t olen, i, e = token(s, n, p, out, &olen);
            q = st[(p + e) & 15];
            for (i = olen; i-- > 0;) q = dfa[(size_t)q * nc + cls[out[i]]];
        }
        st[p & 15] = q;
        if (q == kn) SET(hit, p);
    }
    memset(need, 0, sizeof need);
    for (p = 0; p < n; p++) {                     /* forth: mark the tokens each match reads */
        size_t v;
        if (active == 0) {                        /* to the next match */
            while (p < n && hit[p >> 3] == 0) p = (p | 7) + 1;
            while (p < n && !ISSET(hit, p)) p++;
            if (p >= n) return;
        }
        v = need[p & 15];
        if (v > 0) { need[p & 15] = 0; active--; }
        if (ISSET(hit, p)) v = kn;
        if (v > 0) {
            unsigned char out[4];
            size_t olen, e = token(s, n, p, out, &olen), *t = &need[(p + e) & 15];
            mark(m, p, p + e);
            if (v > olen && *t < v - olen) {
                if (*t == 0) active++;
                *t = v - olen;
            }
        }
    }
}

static int search_secret(const char *s, size_t n, const unsigned char *k, size_t kn, int json,
                         mask_t *hit, mask_t *m) {
    size_t *f = NULL, *ring = NULL, i;
    unsigned *dfa = NULL;
    unsigned char *rk = NULL;
    int ok = 0;
    if (kn > ((size_t)-1 / sizeof(unsigned) / 257) - 1 || kn >= (unsigned)-1) return -1;
    f = malloc(kn * sizeof *f);
    if (f == NULL) goto out;
    kmp_failure(k, kn, f);
    search_raw((const unsigned char *)s, n, k, kn, f, m);
    if (json) {
        ring = malloc(kn * sizeof *ring);
        rk = malloc(kn);
        dfa = malloc((kn + 1) * 257 * sizeof *dfa);
        if (ring == NULL || rk == NULL || dfa == NULL) goto out;
        search_tail(s, n, k, kn, f, ring, m);
        for (i = 0; i < kn; i++) rk[i] = k[kn - 1 - i];
        search_json(s, n, rk, kn, dfa, hit, m);
    }
    ok = 1;
out:
    free(f);
    free(ring);
    free(rk);
    free(dfa);
    return ok ? 0 : -1;
}

/* Does s hold "://"? */
static int has_scheme_sep(const char *s, size_t n) {
    const char *p = s, *end = s + n;
    while ((p = memchr(p, ':', (size_t)(end - p))) != NULL) {
        if (end - p >= 3 && p[1] == '/' && p[2] == '/') return 1;
        p++;
    }
    return 0;
}

/* m (MASK_BYTES(n), zeroed): the bytes of s to redact. 0, or -1 when out of memory. */
static int redact_mask(const char *s, size_t n, const acq_secret_t *k, mask_t *m) {
    int json = memchr(s, '\\', n) != NULL;       /* without one, both readings are the text */
    mask_t *hit = NULL;
    size_t p;
    if (k == NULL) return 0;                     /* none given, none redacted (decode_response) */
    stand(s, n, json, 1, m);
    if (json && has_scheme_sep(s, n)) stand(s, n, 0, 0, m);   /* URLs as written */
    for (; k != NULL; k = k->next) {
        if (k->len < ACQ_REDACT_MIN) continue;
        if (json && hit == NULL && (hit = malloc(MASK_BYTES(n))) == NULL) return -1;
        if (search_secret(s, n, (const unsigned char *)k->p, k->len, json, hit, m) != 0) {
            free(hit);
            return -1;
        }
    }
    free(hit);
    for (p = 0; json && p < MASK_BYTES(n) && m[p] == 0; p++) {}
    if (json && p == MASK_BYTES(n)) return 0;   /* nothing to redact */
    for (p = 0; json && p < n;) {                /* a span takes each escape it touches whole */
        unsigned char out[4];
        size_t olen, i, e = token(s, n, p, out, &olen);
        for (i = 0; e > 1 && i < e; i++)
            if (ISSET(m, p + i)) { mark(m, p, p + e); break; }
        p += e;
    }
    return 0;
}

/* The first run of set bits at or after p: 1 with [*at, *at + *len), or 0. */
static int next_run(const mask_t *m, size_t n, size_t p, size_t *at, size_t *len) {
    size_t q;
    while (p < n && m[p >> 3] == 0) p = (p | 7) + 1;
    while (p < n && !ISSET(m, p)) p++;
    if (p >= n) return 0;
    for (q = p; q < n && ISSET(m, q); q++) {}
    *at = p;
    *len = q - p;
    return 1;
}

int redact_next(const char *s, size_t n, const acq_secret_t *k, size_t *at, size_t *len) {
    mask_t *m;
    int r;
    *at = n;
    *len = 0;
    if (n == 0) return 0;
    m = calloc(MASK_BYTES(n), 1);
    if (m == NULL || redact_mask(s, n, k, m) != 0) {     /* out of memory: all of it */
        free(m);
        *at = 0;
        *len = n;
        return 1;
    }
    r = next_run(m, n, 0, at, len);
    free(m);
    return r;
}

void redact_push(lua_State *L, const char *s, size_t n, const acq_secret_t *k) {
    luaL_Buffer b;
    size_t p = 0, at, len;
    mask_t *m;
    if (n == 0) {
        lua_pushlstring(L, s, n);
        return;
    }
    m = acq_newuserdata(L, MASK_BYTES(n));       /* collected if a push below raises */
    memset(m, 0, MASK_BYTES(n));
    if (redact_mask(s, n, k, m) != 0) luaL_error(L, "not enough memory");
    if (!next_run(m, n, 0, &at, &len)) {
        lua_pop(L, 1);
        lua_pushlstring(L, s, n);
        return;
    }
    luaL_buffinit(L, &b);
    do {
        luaL_addlstring(&b, s + p, at - p);
        luaL_addstring(&b, ACQ_REDACTED);
        p = at + len;
    } while (next_run(m, n, p, &at, &len));
    luaL_addlstring(&b, s + p, n - p);
    luaL_pushresult(&b);
    lua_remove(L, -2);
}

/* acquire.redact(s, secret, ...) -> s with the credentials in it, and every
   form of each secret long enough, replaced (the rule: the file's header) */
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
