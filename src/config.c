/*
 * config.c: the options of acquire.new / acquire.configure.
 *
 * Misconfiguration is a programming error, so it raises at once, before
 * any handle exists. account_id and base_url decide which host receives
 * the API key, so both are parsed strictly: nothing that could smuggle in
 * another host, a path, a query or userinfo gets through.
 */
#include <math.h>
#include <stdlib.h>
#include <strings.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <arpa/inet.h>
#include "core.h"

/* c is in set (a C string): strchr alone also finds the terminating NUL. */
static int in_set(const char *set, int c) {
    return c != '\0' && strchr(set, c) != NULL;
}

static const char *const options[] = {
    "account_id", "api_key", "base_url", "timeout", "connect_timeout",
    "max_retries", "user_agent", "ca_file", "insecure", "strict",
    "max_response_bytes", "debug", "reconcile", "proxy", "logger", NULL
};
#define ACQ_CA_FILE_MAX (16L << 20)     /* a ca_file larger than this is refused */
#define OPTION_LIST "account_id, api_key, base_url, timeout, connect_timeout, " \
    "max_retries, user_agent, ca_file, insecure, strict, max_response_bytes, debug, " \
    "reconcile, proxy, logger"

/* Does the file hold a PEM certificate: a "-----BEGIN ...CERTIFICATE-----"
   block of base64 that decodes to a DER SEQUENCE? NULL if so, else why
   not. A garbage or empty ca_file would otherwise only fail at the first
   call, as a TLS error that looks like the server's fault. Only a regular
   file of at most ACQ_CA_FILE_MAX bytes: a FIFO or /dev/zero would hold
   the check (and libcurl after it) forever. */
static const char *check_ca_file(const char *path, char why[160]) {
    static const char begin[] = "-----BEGIN ", tail[] = "CERTIFICATE-----";
    struct stat st;
    FILE *f;
    char line[512];
    int in = 0, first = 0, found = 0, fd;
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer */
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, 160, "cannot read it: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return why;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return S_ISDIR(st.st_mode) ? "a directory, not a file of PEM certificates"
             : S_ISFIFO(st.st_mode) ? "a FIFO, not a regular file of PEM certificates"
             : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)
               ? "a device, not a regular file of PEM certificates"
               : "not a regular file of PEM certificates";
    }
    if (st.st_size > (off_t)ACQ_CA_FILE_MAX) {
        close(fd);
        snprintf(why, 160, "%lld bytes, more than the %d MiB a bundle of certificates needs",
                 (long long)st.st_size, (int)(ACQ_CA_FILE_MAX >> 20));
        return why;
    }
    if ((f = fdopen(fd, "r")) == NULL) {
        snprintf(why, 160, "cannot read it: %s", strerror(errno));
        close(fd);
        return why;
    }
    /* bounded even if the file grows while it is read */
    while (!found && ftell(f) <= (long)ACQ_CA_FILE_MAX && fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (!in) {
            in = strncmp(line, begin, sizeof begin - 1) == 0 && n >= sizeof tail - 1 &&
                 strcmp(line + n - (sizeof tail - 1), tail) == 0;
            first = 1;
        } else if (strncmp(line, "-----END ", 9) == 0) {
            in = 0;
        } else if (first && n >= 4) {
            /* "MI..." is base64 for 0x30 0x8x: a DER SEQUENCE with a long length */
            found = line[0] == 'M' && (line[1] == 'I' || line[1] == 'J') &&
                    strspn(line, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789+/=") == n;
            first = 0;
        }
    }
    fclose(f);
    return found ? NULL : "no PEM certificate in it";
}

/* Raw reads: no metamethod of the caller's table runs while we hold
   pointers into its strings. */
static void rawfield(lua_State *L, int idx, const char *k) {
    lua_pushstring(L, k);
    lua_rawget(L, idx);
}

static int bad(lua_State *L, const char *opt, const char *expected, int idx) {
    return luaL_error(L, "bad option '%s' (%s expected, got %s)", opt,
                      expected, acq_typename(L, idx));
}

static int is_label(const char *s, size_t n) {
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

static int hexdigit(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Header-safe: no CR, LF, NUL or other control byte. */
static int is_header_value(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
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
        if (p + 2 < end && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && hexdigit(p[2]) >= 0) {
            for (p += 2; p < end && hexdigit(*p) >= 0; p++) {}
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

/* http(s)://host[:port] with an optional single trailing '/'. host is a
   DNS name of labels or an IPv4/IPv6 literal ([...]); nothing else.
   *why (when not NULL) says what was wrong with the host, if that was it. */
static int is_base_url(const char *s, size_t n, size_t *keep, const char **why) {
    const char *p, *end = s + n;
    if (n > 0 && s[n - 1] == '/') end--;
    if (n >= 7 && memcmp(s, "http://", 7) == 0) p = s + 7;
    else if (n >= 8 && memcmp(s, "https://", 8) == 0) p = s + 8;
    else return 0;
    if (p >= end) return 0;                          /* no host ("https://") */
    if (*p == '[') {                      /* IPv6 literal: an address, no zone id */
        const char *q = p + 1;
        char a[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        while (q < end && in_set("0123456789abcdefABCDEF:.", *q)) q++;
        if (q == p + 1 || q >= end || *q != ']' || (size_t)(q - p - 1) >= sizeof a) return 0;
        memcpy(a, p + 1, (size_t)(q - p - 1));
        a[q - p - 1] = '\0';
        if (inet_pton(AF_INET6, a, bin) != 1) {
            if (why) *why = "; an IPv6 literal must be an address, without a zone id";
            return 0;
        }
        p = q + 1;
    } else {                                         /* labels */
        const char *label = p, *host = p;
        for (;; p++) {
            if (p == end || *p == '.' || *p == ':') {
                if (!is_label(label, (size_t)(p - label))) return 0;
                if (p == end || *p == ':') break;
                label = p + 1;
            }
        }
        if (!numeric_host_ok(host, (size_t)(p - host))) {
            if (why) *why = "; a host of numbers must be an IPv4 address in dotted-decimal "
                            "form, as curl would rewrite it";
            return 0;
        }
    }
    if (p < end) {                                   /* :port */
        long port = 0;
        if (*p++ != ':' || p == end) return 0;
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') return 0;
            port = port * 10 + (*p - '0');
            if (port > 65535) return 0;
        }
        if (port == 0) return 0;
    }
    *keep = (size_t)(end - s);
    return 1;
}


/* ---- the proxy ---------------------------------------------------------- */

/* Percent-decodes s (n bytes of userinfo) and pushes it; 0 (nothing pushed)
   on a bad escape or a byte userinfo cannot hold. */
static int push_decoded(lua_State *L, const char *s, size_t n) {
    luaL_Buffer b;
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || in_set("@/?#[]", c)) return 0;
        if (c == '%' && (i + 2 >= n || hexdigit((unsigned char)s[i + 1]) < 0 ||
                         hexdigit((unsigned char)s[i + 2]) < 0 ||
                         (s[i + 1] == '0' && s[i + 2] == '0')))   /* %00: no C string holds it */
            return 0;
    }
    luaL_buffinit(L, &b);
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            luaL_addchar(&b, (char)(hexdigit((unsigned char)s[i + 1]) * 16 +
                                    hexdigit((unsigned char)s[i + 2])));
            i += 2;
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static void push_base64(lua_State *L, const char *s, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    luaL_Buffer b;
    size_t i;
    luaL_buffinit(L, &b);
    for (i = 0; i < n; i += 3) {
        unsigned long v = (unsigned long)(unsigned char)s[i] << 16;
        if (i + 1 < n) v |= (unsigned long)(unsigned char)s[i + 1] << 8;
        if (i + 2 < n) v |= (unsigned long)(unsigned char)s[i + 2];
        luaL_addchar(&b, tab[(v >> 18) & 63]);
        luaL_addchar(&b, tab[(v >> 12) & 63]);
        luaL_addchar(&b, i + 1 < n ? tab[(v >> 6) & 63] : '=');
        luaL_addchar(&b, i + 2 < n ? tab[v & 63] : '=');
    }
    luaL_pushresult(&b);
}

/* ---- NO_PROXY, as Debian 12's curl 7.88 reads it ----------------------
   The rules of its lib/noproxy.c and of the URL parser before it (checked
   against curl itself by spec/24-noproxy_spec.lua):
   - the value exactly "*" exempts every host; a "*" among others is a name;
   - entries are separated by commas, spaces and tabs, any mix;
   - an IPv4 host (a dotted quad) is compared as an address: an entry is an
     address, optionally /bits (what atoi reads after the first '/'); bits
     0 or 32 is the address alone, above 32 matches nothing, a name never;
   - any other host, an IPv6 literal included (curl strips its brackets
     first, and rewrites it as inet_ntop would when that is shorter), is
     compared as a name: one trailing dot of host and entry and one leading
     dot of the entry ignored, any case, the host itself or one ending in
     '.' + entry; so no CIDR and no brackets for IPv6 ("::1" matches [::1],
     "[::1]" and "::1/128" do not), no partial labels. */
#define NP_BLANK(c) ((c) == ' ' || (c) == '\t')

/* What atoi (a strtol cut to int) reads, as curl's unsigned bits. */
static unsigned int np_bits(const char *s) {
    long v = strtol(s, NULL, 10);
    return (unsigned int)((unsigned long)v & 0xffffffffUL);
}

/* Is the IPv4 address a within entry e (n bytes, NUL-free)? */
static int np_cidr4(const struct in_addr *a, const char *e, size_t n) {
    char net[128], *slash;
    unsigned int bits = 0;
    struct in_addr b;
    uint32_t x, y;
    if (n >= sizeof net) return 0;
    memcpy(net, e, n);
    net[n] = '\0';
    if ((slash = strchr(net, '/')) != NULL) {
        bits = np_bits(slash + 1);
        *slash = '\0';
    }
    if (bits > 32 || inet_pton(AF_INET, net, &b) != 1) return 0;
    x = ntohl(a->s_addr);
    y = ntohl(b.s_addr);
    if (bits == 0 || bits == 32) return x == y;
    return ((x ^ y) & (0xffffffffU << (32 - bits))) == 0;
}

/* Does the list (a NO_PROXY value) exempt host (h, hn bytes: a name, a
   dotted quad, or an IPv6 literal without brackets, ipv6 set)? */
static int no_proxy_match(const char *list, const char *h, size_t hn, int ipv6) {
    char name[ACQ_BASE_URL_MAX + 1];
    struct in_addr a4;
    int v4 = 0;
    const char *p = list;
    if (strcmp(list, "*") == 0) return 1;
    if (hn == 0 || hn >= sizeof name) return 0;
    memcpy(name, h, hn);
    name[hn] = '\0';
    if (ipv6) {
        unsigned char bin[16];
        char shorter[INET6_ADDRSTRLEN];
        if (inet_pton(AF_INET6, name, bin) == 1 &&
            inet_ntop(AF_INET6, bin, shorter, sizeof shorter) != NULL && strlen(shorter) < hn) {
            hn = strlen(shorter);
            memcpy(name, shorter, hn + 1);
        }
    } else if (inet_pton(AF_INET, name, &a4) == 1) {
        v4 = 1;
    }
    if (!v4 && name[hn - 1] == '.') hn--;
    while (*p) {
        const char *e;
        size_t n;
        while (NP_BLANK(*p) || *p == ',') p++;
        for (e = p; *p && !NP_BLANK(*p) && *p != ','; p++) {}
        n = (size_t)(p - e);
        if (n == 0) continue;
        if (v4) {
            if (np_cidr4(&a4, e, n)) return 1;
            continue;
        }
        if (e[n - 1] == '.') n--;
        if (n > 0 && e[0] == '.') { e++; n--; }
        if (n == hn ? strncasecmp(e, name, n) == 0
                    : n < hn && name[hn - n - 1] == '.' &&
                      strncasecmp(e, name + hn - n, n) == 0)
            return 1;
    }
    return 0;
}

/* Does the environment's NO_PROXY exempt the host of base_url? curl reads
   no_proxy, then (when that is unset or empty) NO_PROXY. */
static int no_proxy(const acq_config_t *cfg) {
    const char *v = getenv("no_proxy");
    const char *h = cfg->host;
    size_t hn = cfg->host_len;
    int ipv6 = hn > 1 && h[0] == '[';
    if (v == NULL || v[0] == '\0') v = getenv("NO_PROXY");
    if (v == NULL || v[0] == '\0') return 0;
    if (ipv6) { h++; hn -= 2; }
    return no_proxy_match(v, h, hn, ipv6);
}

/* The proxy URL (the option, or name's value: a missing scheme is http://)
   into cfg, its derived strings appended to the table at derived. Raises
   naming what when it is not http://[user[:pass]@]host:port[/]. */
static void set_proxy(lua_State *L, acq_config_t *cfg, int derived, const char *what,
                      int from_env, const char *s, size_t n) {
    const char *rest = NULL, *at, *hostport;
    size_t restn, hpn;
    char msg[200];
    int k = (int)acq_rawlen(L, derived), ok;
    size_t keep = 0;
    snprintf(msg, sizeof msg, "%s '%s' (http://[user:password@]host:port expected%s)",
             from_env ? "bad proxy in environment variable" : "bad option", what,
             from_env ? "; set the option 'proxy' (false: none) to override it" : "");
    if (n >= 7 && strncasecmp(s, "http://", 7) == 0) rest = s + 7;
    else if (from_env && memchr(s, ':', n) != NULL && strstr(s, "://") == NULL) rest = s;
    else {
        luaL_error(L, "%s", msg);
        return;
    }
    restn = n - (size_t)(rest - s);
    if (restn > 0 && rest[restn - 1] == '/') restn--;
    at = NULL;
    {
        size_t i;
        for (i = 0; i < restn; i++) if (rest[i] == '@') at = rest + i;
    }
    hostport = at ? at + 1 : rest;
    hpn = restn - (size_t)(hostport - rest);
    /* host:port, checked as base_url's host and port are */
    lua_pushfstring(L, "http://%s", "");
    lua_pushlstring(L, hostport, hpn);
    lua_concat(L, 2);
    {
        size_t un;
        const char *u = lua_tolstring(L, -1, &un);
        const char *h = u + 7, *end = u + un, *c;
        ok = hpn <= ACQ_BASE_URL_MAX && is_base_url(u, un, &keep, NULL) && keep == un;
        if (*h == '[') { c = memchr(h, ']', (size_t)(end - h)); c = c ? c + 1 : end; }
        else c = memchr(h, ':', (size_t)(end - h));
        if (!ok || c == NULL || c >= end || *c != ':') {
            luaL_error(L, "%s", msg);
            return;
        }
        cfg->proxy_host = h;
        cfg->proxy_host_len = (size_t)(c - h);
        cfg->proxy_port = 0;
        for (c++; c < end; c++) cfg->proxy_port = cfg->proxy_port * 10 + (*c - '0');  /* checked */
    }
    cfg->proxy_url = lua_tostring(L, -1);
    lua_rawseti(L, derived, ++k);                /* the table anchors it */
    cfg->proxy = 1;
    cfg->proxy_from = from_env ? what : "option";
    cfg->proxy_user = cfg->proxy_pass = cfg->proxy_auth = NULL;
    cfg->proxy_user_len = cfg->proxy_pass_len = 0;
    lua_pushstring(L, cfg->proxy_url);
    if (at != NULL) {                                    /* user[:pass] */
        const char *ui = rest;
        size_t uilen = (size_t)(at - rest);
        const char *sep = memchr(ui, ':', uilen);
        size_t ulen = sep ? (size_t)(sep - ui) : uilen;
        int ns = 0;
        lua_pushfstring(L, "http://" ACQ_REDACTED "@%s", cfg->proxy_url + 7);
        lua_replace(L, -2);
        if (ulen == 0 || !push_decoded(L, ui, ulen)) luaL_error(L, "%s", msg);
        cfg->proxy_user = lua_tolstring(L, -1, &cfg->proxy_user_len);
        lua_rawseti(L, derived, ++k);
        if (sep) {
            if (!push_decoded(L, sep + 1, uilen - ulen - 1)) luaL_error(L, "%s", msg);
            cfg->proxy_pass = lua_tolstring(L, -1, &cfg->proxy_pass_len);
            lua_rawseti(L, derived, ++k);
        } else {
            cfg->proxy_pass = "";
        }
        lua_pushlstring(L, cfg->proxy_user, cfg->proxy_user_len);
        lua_pushliteral(L, ":");
        lua_pushlstring(L, cfg->proxy_pass, cfg->proxy_pass_len);
        lua_concat(L, 3);
        {
            size_t pn;
            const char *pair = lua_tolstring(L, -1, &pn);
            lua_pushliteral(L, "Basic ");
            push_base64(L, pair, pn);
            lua_concat(L, 2);
            lua_remove(L, -2);
        }
        cfg->proxy_auth = lua_tostring(L, -1);
        lua_rawseti(L, derived, ++k);
        /* redacted wherever the key is: the password as written and
           decoded, the whole userinfo as written, the Basic token */
        lua_pushlstring(L, ui, uilen);
        lua_rawseti(L, derived, ++k);
        lua_rawgeti(L, derived, k);
        cfg->secrets[1].p = lua_tolstring(L, -1, &cfg->secrets[1].len);
        lua_pop(L, 1);
        ns = 2;
        cfg->secrets[ns].p = cfg->proxy_auth + 6;
        cfg->secrets[ns].len = strlen(cfg->proxy_auth + 6);
        ns++;
        if (cfg->proxy_pass_len > 0) {
            cfg->secrets[ns].p = cfg->proxy_pass;
            cfg->secrets[ns].len = cfg->proxy_pass_len;
            ns++;
            if (uilen - ulen - 1 != cfg->proxy_pass_len ||
                memcmp(sep + 1, cfg->proxy_pass, cfg->proxy_pass_len) != 0) {
                lua_pushlstring(L, sep + 1, uilen - ulen - 1);
                cfg->secrets[ns].p = lua_tolstring(L, -1, &cfg->secrets[ns].len);
                lua_rawseti(L, derived, ++k);
                ns++;
            }
        }
        for (; ns > 1; ns--) cfg->secrets[ns - 2].next = &cfg->secrets[ns - 1];
    }
    cfg->proxy_display = lua_tostring(L, -1);
    lua_rawseti(L, derived, ++k);
}

/* proxy = nil: the environment, as curl reads it; false: none; a URL. */
static void check_proxy(lua_State *L, int idx, acq_config_t *cfg, int derived) {
    static const char *const tls_vars[] = { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", NULL };
    static const char *const plain_vars[] = { "http_proxy", "all_proxy", "ALL_PROXY", NULL };
    const char *const *vars = cfg->tls ? tls_vars : plain_vars;
    size_t n;
    rawfield(L, idx, "proxy");
    if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        set_proxy(L, cfg, derived, "proxy", 0, s, n);
        lua_pop(L, 1);
        return;
    }
    if (!lua_isnil(L, -1)) bad(L, "proxy", "false or an http:// URL", -1);
    lua_pop(L, 1);
    for (; *vars; vars++) {
        const char *v = getenv(*vars);
        if (v == NULL || v[0] == '\0') continue;
        if (no_proxy(cfg)) return;
        set_proxy(L, cfg, derived, *vars, 1, v, strlen(v));
        return;
    }
}

/* ---- the numbers ---------------------------------------------------------
   Every option that becomes a C integer, a sleep or a deadline, with its
   range: the check, its message and the defaults come from here (README's
   options table says the same). A value is range-checked as a double
   before any conversion (NaN fails every comparison), so no conversion is
   ever out of range. Seconds are kept as whole milliseconds, rounded up. */
enum { NUM_TIMEOUT, NUM_CONNECT_TIMEOUT, NUM_MAX_RETRIES, NUM_MAX_RESPONSE_BYTES, NUM_RECONCILE };
static const struct {
    const char *name;
    int seconds;                    /* 1: seconds (to ms); 0: an integer */
    double lo, hi;
} numbers[] = {
    { "timeout", 1, 0.001, 86400 },
    { "connect_timeout", 1, 0.001, 86400 },
    { "max_retries", 0, 0, 10 },
    { "max_response_bytes", 0, 1, 1073741824.0 },
    { "reconcile", 1, 0, 60 },      /* or a boolean */
};

/* The number at idx, checked against numbers[which]: milliseconds for
   seconds, else the integer. Raises naming the option and its range. */
static long check_number(lua_State *L, int idx, int which, const char *also) {
    char range[96];
    double v = 0;
    int ok = lua_type(L, idx) == LUA_TNUMBER;
    snprintf(range, sizeof range, "%s%s from %.14g to %.14g", also,
             numbers[which].seconds ? "seconds" : "integer", numbers[which].lo, numbers[which].hi);
    if (ok) {
        v = (double)lua_tonumber(L, idx);
        ok = v >= numbers[which].lo && v <= numbers[which].hi &&     /* false for NaN */
             (numbers[which].seconds || v == floor(v));
    }
    if (!ok)
        luaL_error(L, "bad option '%s' (%s expected, got %s)", numbers[which].name, range,
                   lua_type(L, idx) == LUA_TNUMBER ? error_pushnumber(L, idx) : acq_typename(L, idx));
    return numbers[which].seconds ? (long)ceil(v * 1000.0) : (long)v;
}

static const char *check_str(lua_State *L, const char *opt, int idx, size_t *len) {
    if (lua_type(L, idx) != LUA_TSTRING) bad(L, opt, "string", idx);
    return lua_tolstring(L, idx, len);
}

static int check_bool(lua_State *L, const char *opt, int idx) {
    if (!lua_isboolean(L, idx)) bad(L, opt, "boolean", idx);
    return lua_toboolean(L, idx);
}

/* The parts of base_url (already checked by is_base_url). */
static void split_url(acq_config_t *cfg) {
    const char *s = cfg->base_url, *end = s + cfg->base_len, *h, *colon = NULL;
    cfg->tls = cfg->base_len >= 8 && memcmp(s, "https://", 8) == 0;
    h = s + (cfg->tls ? 8 : 7);
    if (*h == '[') {
        const char *close = memchr(h, ']', (size_t)(end - h));
        if (close && close + 1 < end) colon = close + 1;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
    }
    cfg->host = h;
    cfg->host_len = (size_t)((colon ? colon : end) - h);
    cfg->port = cfg->tls ? 443 : 80;
    if (colon) {
        const char *p;
        cfg->port = 0;
        for (p = colon + 1; p < end; p++) cfg->port = cfg->port * 10 + (*p - '0');
    }
}

void config_check(lua_State *L, int idx, acq_config_t *cfg) {
    const char *account = NULL;
    size_t alen = 0, len;
    int top;
    idx = acq_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = 30000;
    cfg->connect_timeout_ms = 10000;
    cfg->max_retries = 2;
    cfg->strict = 1;
    cfg->max_response_bytes = (long)ACQ_MAX_RESPONSE;

    /* unknown keys first: a typo must not silently become a default */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int i;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option (string keys expected, got %s key)",
                       luaL_typename(L, -1));
        for (i = 0; options[i]; i++)
            if (acq_equals(L, -1, options[i])) break;
        if (options[i] == NULL)
            luaL_error(L, "bad option '%s' (expected one of: " OPTION_LIST ")",
                       error_pushname(L, -1));
    }

    top = lua_gettop(L);
    rawfield(L, idx, "api_key");                              /* top+1 */
    if (lua_isnil(L, -1))
        luaL_error(L, "option 'api_key' is required");
    cfg->api_key = check_str(L, "api_key", -1, &cfg->key_len);
    if (cfg->key_len == 0 || !is_header_value(cfg->api_key, cfg->key_len))
        luaL_error(L, "bad option 'api_key' (must be non-empty, without "
                      "control characters)");

    rawfield(L, idx, "account_id");                           /* top+2 */
    if (!lua_isnil(L, -1)) {
        account = check_str(L, "account_id", -1, &alen);
        if (!is_label(account, alen))
            luaL_error(L, "bad option 'account_id' (a DNS label expected: "
                          "letters, digits and inner hyphens, at most 63)");
    }

    rawfield(L, idx, "user_agent");                           /* top+3 */
    if (!lua_isnil(L, -1)) {
        cfg->user_agent = check_str(L, "user_agent", -1, &len);
        if (len == 0 || len > 512 || !is_header_value(cfg->user_agent, len))
            luaL_error(L, "bad option 'user_agent' (1 to 512 bytes without "
                          "control characters expected)");
    }

    rawfield(L, idx, "ca_file");                              /* top+4 */
    if (!lua_isnil(L, -1)) {
        cfg->ca_file = check_str(L, "ca_file", -1, &len);
        if (len == 0 || strlen(cfg->ca_file) != len)
            luaL_error(L, "bad option 'ca_file' (a file path expected)");
        {
            char buf[160];
            const char *why = check_ca_file(cfg->ca_file, buf);
            if (why) luaL_error(L, "bad option 'ca_file' ('%s': %s)", cfg->ca_file, why);
        }
    }

    rawfield(L, idx, "timeout");
    if (!lua_isnil(L, -1)) cfg->timeout_ms = check_number(L, -1, NUM_TIMEOUT, "");
    rawfield(L, idx, "connect_timeout");
    if (!lua_isnil(L, -1))
        cfg->connect_timeout_ms = check_number(L, -1, NUM_CONNECT_TIMEOUT, "");
    rawfield(L, idx, "max_retries");
    if (!lua_isnil(L, -1))
        cfg->max_retries = (int)check_number(L, -1, NUM_MAX_RETRIES, "");
    rawfield(L, idx, "max_response_bytes");
    if (!lua_isnil(L, -1))
        cfg->max_response_bytes = check_number(L, -1, NUM_MAX_RESPONSE_BYTES, "");
    rawfield(L, idx, "insecure");
    if (!lua_isnil(L, -1)) cfg->insecure = check_bool(L, "insecure", -1);
    rawfield(L, idx, "strict");
    if (!lua_isnil(L, -1)) cfg->strict = check_bool(L, "strict", -1);
    rawfield(L, idx, "debug");
    if (acq_equals(L, -1, "body")) cfg->debug = 2;
    else if (lua_isboolean(L, -1)) cfg->debug = lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1)) bad(L, "debug", "boolean or \"body\"", -1);
    rawfield(L, idx, "logger");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1)) bad(L, "logger", "function", -1);
    cfg->logger = lua_isfunction(L, -1);
    rawfield(L, idx, "reconcile");
    cfg->reconcile_ms = -1;
    if (lua_isboolean(L, -1)) {
        cfg->reconcile_ms = lua_toboolean(L, -1) ? ACQ_RECONCILE_WAIT_MS : -1;
    } else if (!lua_isnil(L, -1)) {
        cfg->reconcile_ms = check_number(L, -1, NUM_RECONCILE, "boolean, or ");
    }
    lua_pop(L, 1);
    lua_settop(L, top + 4);           /* keep the strings pointed into */

    rawfield(L, idx, "base_url");
    if (!lua_isnil(L, -1) && account != NULL)
        luaL_error(L, "bad option 'base_url' (not with account_id: both name the host, "
                      "give one)");
    if (!lua_isnil(L, -1)) {
        size_t keep = 0;
        const char *why = "";
        const char *u = check_str(L, "base_url", -1, &len);
        if (len > ACQ_BASE_URL_MAX || !is_base_url(u, len, &keep, &why))
            luaL_error(L, "bad option 'base_url' (http(s)://host[:port] "
                          "expected, without path, query or userinfo%s)", why);
        lua_pushlstring(L, u, keep);
        lua_remove(L, -2);
    } else if (account != NULL) {
        lua_pop(L, 1);
        lua_pushfstring(L, "https://%s.acquire.io", account);
    } else {
        luaL_error(L, "option 'account_id' (or 'base_url') is required");
    }
    cfg->base_url = lua_tolstring(L, -1, &cfg->base_len);
    cfg->account_id = account;
    split_url(cfg);
    /* The strings stay referenced by the table at idx; the derived ones
       (base_url, the proxy's parts) by one table, the one value left. */
    lua_createtable(L, 8, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    cfg->secrets[0].p = cfg->api_key;
    cfg->secrets[0].len = cfg->key_len;
    check_proxy(L, idx, cfg, top + 1);
}

/* Whole seconds as an integer (30, not 30.0), others as they are. */
static void push_seconds(lua_State *L, long ms) {
    if (ms % 1000 == 0) acq_pushint64(L, ms / 1000);
    else lua_pushnumber(L, (lua_Number)ms / 1000.0);
}

/* acquire.config(t) -> the normalised configuration every transport reads:
   t's options checked as acquire.new checks them (raising the same way),
   every default filled in, and what they imply: base_url, scheme, host,
   port, host_header and the request target before the contact id. */
int config_l_config(lua_State *L) {
    acq_config_t cfg;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    config_check(L, 1, &cfg);                                 /* 2: derived */
    lua_createtable(L, 0, 20);
#define SETSTR(k, v)  do { lua_pushstring(L, (v)); lua_setfield(L, -2, k); } while (0)
#define SETINT(k, v)  do { acq_pushint64(L, (v)); lua_setfield(L, -2, k); } while (0)
#define SETBOOL(k, v) do { lua_pushboolean(L, (v)); lua_setfield(L, -2, k); } while (0)
    lua_pushlstring(L, cfg.api_key, cfg.key_len);
    lua_setfield(L, -2, "api_key");
    if (cfg.account_id) SETSTR("account_id", cfg.account_id);
    lua_pushlstring(L, cfg.base_url, cfg.base_len);
    lua_setfield(L, -2, "base_url");
    SETSTR("scheme", cfg.tls ? "https" : "http");
    lua_pushlstring(L, cfg.host, cfg.host_len);
    lua_setfield(L, -2, "host");
    SETINT("port", cfg.port);
    lua_pushlstring(L, cfg.host, cfg.host_len);
    if (cfg.port != (cfg.tls ? 443 : 80)) {               /* Host: names a port only then */
        lua_pushfstring(L, "%s:%d", lua_tostring(L, -1), cfg.port);
        lua_remove(L, -2);
    }
    lua_setfield(L, -2, "host_header");
    SETSTR("target", ACQ_URL_PREFIX);
    push_seconds(L, cfg.timeout_ms);
    lua_setfield(L, -2, "timeout");
    push_seconds(L, cfg.connect_timeout_ms);
    lua_setfield(L, -2, "connect_timeout");
    SETINT("max_retries", cfg.max_retries);
    SETINT("max_response_bytes", cfg.max_response_bytes);
    if (cfg.user_agent) SETSTR("user_agent", cfg.user_agent);
    if (cfg.ca_file) SETSTR("ca_file", cfg.ca_file);
    SETBOOL("insecure", cfg.insecure);
    SETBOOL("strict", cfg.strict);
    if (cfg.debug == 2) SETSTR("debug", "body");
    else SETBOOL("debug", cfg.debug);
    if (cfg.logger) {
        rawfield(L, 1, "logger");
        lua_setfield(L, -2, "logger");
    }
    if (!cfg.proxy) {
        SETBOOL("proxy", 0);
    } else {
        lua_createtable(L, 0, 6);
        SETSTR("url", cfg.proxy_url);
        lua_pushlstring(L, cfg.proxy_host, cfg.proxy_host_len);
        lua_setfield(L, -2, "host");
        SETINT("port", cfg.proxy_port);
        if (cfg.proxy_auth) SETSTR("authorization", cfg.proxy_auth);
        SETSTR("display", cfg.proxy_display);
        SETSTR("from", cfg.proxy_from);
        lua_setfield(L, -2, "proxy");
    }
    {
        const acq_secret_t *k;
        int i = 0;
        lua_newtable(L);
        for (k = cfg.secrets; k; k = k->next) {
            lua_pushlstring(L, k->p, k->len);
            lua_rawseti(L, -2, ++i);
        }
        lua_setfield(L, -2, "secrets");
    }
    if (cfg.reconcile_ms < 0) SETBOOL("reconcile", 0);
    else { push_seconds(L, cfg.reconcile_ms); lua_setfield(L, -2, "reconcile"); }
#undef SETSTR
#undef SETINT
#undef SETBOOL
    return 1;
}
