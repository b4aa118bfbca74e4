/*
 * url.c: the one URL and host:port parser, for base_url and the proxy's
 * URL (whose host NO_PROXY is then matched against).
 *
 * Strict on purpose: base_url decides which host receives the API key, so
 * nothing that could smuggle in another host, a path, a query or userinfo
 * gets through, and a host is accepted only in the form libcurl will use.
 */
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include "core.h"

int url_is_label(const char *s, size_t n) {
    size_t i;
    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-') return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return 1;
}

/* curl's URL parser reads a host of 1 to 4 dot-separated numbers (decimal,
   0-octal, 0x-hex: "127.1", "0x7f000001") as an IPv4 address and rewrites
   it as a dotted quad, which is then what it connects to and what NO_PROXY
   is matched against. Such a host is accepted only already in that form,
   so the host the module sees is the one libcurl uses. 1 if h is fine. */
static int numeric_host_ok(const char *h, size_t n) {
    const char *p = h, *end = h + n;
    int parts = 0;
    char quad[16];
    struct in_addr a;
    while (p < end) {
        if (*p < '0' || *p > '9') return 1;             /* a name */
        if (p + 2 < end && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && acq_hexdigit(p[2]) >= 0) {
            for (p += 2; p < end && acq_hexdigit(*p) >= 0; p++) {}
        } else if (*p == '0') {
            for (p++; p < end && *p >= '0' && *p <= '7'; p++) {}
        } else {
            for (; p < end && *p >= '0' && *p <= '9'; p++) {}
        }
        if (++parts > 4) return 1;
        if (p == end) break;
        if (*p != '.') return 1;
        if (++p == end) return 1;                      /* "1.2.3.4." is a name */
    }
    if (n >= sizeof quad) return 0;
    memcpy(quad, h, n);
    quad[n] = '\0';
    return inet_pton(AF_INET, quad, &a) == 1;
}

/* An IPv6 literal "[addr]" at p (before end): the byte after ']', or NULL. */
static const char *ipv6_literal(const char *p, const char *end, const char **why) {
    const char *q = p + 1;
    char a[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    while (q < end && *q != '\0' && strchr("0123456789abcdefABCDEF:.", *q) != NULL) q++;
    if (q == p + 1 || q >= end || *q != ']' || (size_t)(q - p - 1) >= sizeof a) return NULL;
    memcpy(a, p + 1, (size_t)(q - p - 1));
    a[q - p - 1] = '\0';
    if (inet_pton(AF_INET6, a, bin) != 1) {         /* an address, no zone id */
        if (why) *why = "; an IPv6 literal must be an address, without a zone id";
        return NULL;
    }
    return q + 1;
}

int url_parse_hostport(const char *s, size_t n, acq_url_t *u, const char **why) {
    const char *p = s, *end = s + n;
    long port = 0;
    if (n == 0) return 0;
    if (*p == '[') {
        if ((p = ipv6_literal(p, end, why)) == NULL) return 0;
    } else {                                         /* labels */
        const char *label = p;
        for (;; p++) {
            if (p == end || *p == '.' || *p == ':') {
                if (!url_is_label(label, (size_t)(p - label))) return 0;
                if (p == end || *p == ':') break;
                label = p + 1;
            }
        }
        if (!numeric_host_ok(s, (size_t)(p - s))) {
            if (why) *why = "; a host of numbers must be an IPv4 address in dotted-decimal "
                            "form, as curl would rewrite it";
            return 0;
        }
    }
    u->host = s;
    u->host_len = (size_t)(p - s);
    if (p < end) {                                   /* :port */
        if (*p++ != ':' || p == end) return 0;
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') return 0;
            port = port * 10 + (*p - '0');
            if (port > 65535) return 0;
        }
        if (port == 0) return 0;
    }
    u->port = (int)port;
    return 1;
}

int url_parse_base(const char *s, size_t n, acq_url_t *u, const char **why) {
    const char *p, *end = s + n;
    if (n > 0 && s[n - 1] == '/') end--;
    if (n >= 7 && memcmp(s, "http://", 7) == 0) p = s + 7;
    else if (n >= 8 && memcmp(s, "https://", 8) == 0) p = s + 8;
    else return 0;
    if (p >= end) return 0;            /* no host ("https://", whose '/' was cut) */
    if (!url_parse_hostport(p, (size_t)(end - p), u, why)) return 0;
    u->tls = p == s + 8;
    if (u->port == 0) u->port = u->tls ? 443 : 80;
    u->len = (size_t)(end - s);
    return 1;
}

int url_split_proxy(const char *s, size_t n, int bare, acq_proxy_parts_t *out) {
    const char *rest;
    size_t i, restn;
    if (n >= 7 && strncasecmp(s, "http://", 7) == 0) rest = s + 7;
    else if (bare && memchr(s, ':', n) != NULL && strstr(s, "://") == NULL) rest = s;
    else return 0;
    restn = n - (size_t)(rest - s);
    if (restn > 0 && rest[restn - 1] == '/') restn--;
    out->userinfo = NULL;
    out->userinfo_len = 0;
    out->hostport = rest;
    for (i = 0; i < restn; i++)                      /* userinfo: up to the last '@' */
        if (rest[i] == '@') {
            out->userinfo = rest;
            out->userinfo_len = i;
            out->hostport = rest + i + 1;
        }
    out->hostport_len = restn - (size_t)(out->hostport - rest);
    return 1;
}
