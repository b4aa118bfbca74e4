/*
 * proxy.c: the proxy a configuration goes through, decided once.
 *
 * The option, or the environment read the way Debian 12's curl 7.88 reads
 * it (NO_PROXY included); its credentials percent-decoded, as a Basic
 * authorization and among the secrets redacted; and the mode the
 * transports obey (a plain proxy for an http target, a CONNECT tunnel for
 * an https one), so no transport decides any of it again. config.c calls
 * proxy_check with base_url's parts already known; the URL is parsed by
 * url.c, as base_url is.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include "core.h"

/* Percent-decodes s (n bytes of userinfo) and pushes it; 0 (nothing pushed)
   on a bad escape or a byte userinfo cannot hold. */
static int push_decoded(lua_State *L, const char *s, size_t n) {
    luaL_Buffer b;
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || strchr("@/?#[]", c) != NULL) return 0;
        if (c == '%' && (i + 2 >= n || acq_hexdigit((unsigned char)s[i + 1]) < 0 ||
                         acq_hexdigit((unsigned char)s[i + 2]) < 0 ||
                         (s[i + 1] == '0' && s[i + 2] == '0')))   /* %00: no C string holds it */
            return 0;
    }
    luaL_buffinit(L, &b);
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            luaL_addchar(&b, (char)(acq_hexdigit((unsigned char)s[i + 1]) * 16 +
                                    acq_hexdigit((unsigned char)s[i + 2])));
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

/* The credentials (userinfo ui, uilen bytes, as written) into cfg: user and
   password decoded, the Basic authorization, and the secrets redacted
   wherever the key is (the password as written and decoded, the whole
   userinfo as written, the Basic token). Derived strings are appended to
   the table at derived from *k on. Raises msg on a bad escape. */
/* luaL_error, said not to return (for the compilers and analyzers) */
static ACQ_NORETURN void raise_msg(lua_State *L, const char *msg) {
    luaL_error(L, "%s", msg);
    ACQ_UNREACHABLE();
}

static void set_credentials(lua_State *L, acq_config_t *cfg, int derived, int *k,
                            const char *ui, size_t uilen, const char *msg) {
    const char *sep = memchr(ui, ':', uilen);
    size_t ulen = sep ? (size_t)(sep - ui) : uilen, pn;
    const char *pair;
    int ns;
    if (ulen == 0 || !push_decoded(L, ui, ulen)) raise_msg(L, msg);
    cfg->proxy_user = lua_tolstring(L, -1, &cfg->proxy_user_len);
    lua_rawseti(L, derived, ++*k);
    if (sep) {
        if (!push_decoded(L, sep + 1, uilen - ulen - 1)) raise_msg(L, msg);
        cfg->proxy_pass = lua_tolstring(L, -1, &cfg->proxy_pass_len);
        lua_rawseti(L, derived, ++*k);
    } else {
        cfg->proxy_pass = "";
        cfg->proxy_pass_len = 0;
    }
    lua_pushlstring(L, cfg->proxy_user, cfg->proxy_user_len);
    lua_pushliteral(L, ":");
    lua_pushlstring(L, cfg->proxy_pass, cfg->proxy_pass_len);
    lua_concat(L, 3);
    pair = lua_tolstring(L, -1, &pn);
    lua_pushliteral(L, "Basic ");
    push_base64(L, pair, pn);
    lua_concat(L, 2);
    lua_remove(L, -2);
    cfg->proxy_auth = lua_tostring(L, -1);
    lua_rawseti(L, derived, ++*k);
    lua_pushlstring(L, ui, uilen);
    lua_rawseti(L, derived, ++*k);
    lua_rawgeti(L, derived, *k);
    cfg->secrets[1].p = lua_tolstring(L, -1, &cfg->secrets[1].len);
    lua_pop(L, 1);
    ns = 2;
    cfg->secrets[ns].p = cfg->proxy_auth + 6;
    cfg->secrets[ns].len = strlen(cfg->proxy_auth + 6);
    ns++;
    if (sep && cfg->proxy_pass_len > 0) {
        cfg->secrets[ns].p = cfg->proxy_pass;
        cfg->secrets[ns].len = cfg->proxy_pass_len;
        ns++;
        if (uilen - ulen - 1 != cfg->proxy_pass_len ||
            memcmp(sep + 1, cfg->proxy_pass, cfg->proxy_pass_len) != 0) {
            lua_pushlstring(L, sep + 1, uilen - ulen - 1);
            cfg->secrets[ns].p = lua_tolstring(L, -1, &cfg->secrets[ns].len);
            lua_rawseti(L, derived, ++*k);
            ns++;
        }
    }
    for (; ns > 1; ns--) cfg->secrets[ns - 2].next = &cfg->secrets[ns - 1];
}

/* The proxy URL (the option, or name's value: a missing scheme is http://)
   into cfg, its derived strings appended to the table at derived. Raises
   naming what when it is not http://[user[:pass]@]host:port[/]. */
static void set_proxy(lua_State *L, acq_config_t *cfg, int derived, const char *what,
                      int from_env, const char *s, size_t n) {
    acq_proxy_parts_t parts;
    acq_url_t hp;
    char msg[200];
    int k = (int)acq_rawlen(L, derived);
    size_t un;
    const char *u;
    snprintf(msg, sizeof msg, "%s '%s' (http://[user:password@]host:port expected%s)",
             from_env ? "bad proxy in environment variable" : "bad option", what,
             from_env ? "; set the option 'proxy' (false: none) to override it" : "");
    if (!url_split_proxy(s, n, from_env, &parts)) raise_msg(L, msg);
    /* host:port, checked as base_url's host and port are; a port required */
    lua_pushliteral(L, "http://");
    lua_pushlstring(L, parts.hostport, parts.hostport_len);
    lua_concat(L, 2);
    u = lua_tolstring(L, -1, &un);
    if (parts.hostport_len > ACQ_BASE_URL_MAX ||
        !url_parse_hostport(u + 7, un - 7, &hp, NULL) || hp.port == 0)
        raise_msg(L, msg);
    cfg->proxy_url = u;
    cfg->proxy_host = hp.host;
    cfg->proxy_host_len = hp.host_len;
    cfg->proxy_port = hp.port;
    lua_rawseti(L, derived, ++k);                /* the table anchors it */
    cfg->proxy = 1;
    cfg->proxy_mode = cfg->tls ? ACQ_PROXY_MODE_TUNNEL : ACQ_PROXY_MODE_PLAIN;
    cfg->proxy_from = from_env ? what : "option";
    cfg->proxy_user = cfg->proxy_pass = cfg->proxy_auth = NULL;
    cfg->proxy_user_len = cfg->proxy_pass_len = 0;
    if (parts.userinfo != NULL) {
        lua_pushfstring(L, "http://" ACQ_REDACTED "@%s", cfg->proxy_url + 7);
        set_credentials(L, cfg, derived, &k, parts.userinfo, parts.userinfo_len, msg);
    } else {
        lua_pushstring(L, cfg->proxy_url);
    }
    cfg->proxy_display = lua_tostring(L, -1);
    lua_rawseti(L, derived, ++k);
}

void proxy_check(lua_State *L, int idx, acq_config_t *cfg, int derived) {
    static const char *const tls_vars[] = { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", NULL };
    static const char *const plain_vars[] = { "http_proxy", "all_proxy", "ALL_PROXY", NULL };
    const char *const *vars = cfg->tls ? tls_vars : plain_vars;
    size_t n;
    cfg->proxy = cfg->proxy_mode = 0;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, idx, &n);
        set_proxy(L, cfg, derived, "proxy", 0, s, n);
        return;
    }
    if (!lua_isnil(L, idx)) return;                      /* false: none */
    for (; *vars; vars++) {
        const char *v = getenv(*vars);
        if (v == NULL || v[0] == '\0') continue;
        if (no_proxy(cfg)) return;
        set_proxy(L, cfg, derived, *vars, 1, v, strlen(v));
        return;
    }
}

void proxy_push(lua_State *L, const acq_config_t *cfg) {
    if (!cfg->proxy) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "proxy");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "proxy_mode");
        return;
    }
    lua_createtable(L, 0, 6);
    lua_pushstring(L, cfg->proxy_url);
    lua_setfield(L, -2, "url");
    lua_pushlstring(L, cfg->proxy_host, cfg->proxy_host_len);
    lua_setfield(L, -2, "host");
    acq_pushint64(L, cfg->proxy_port);
    lua_setfield(L, -2, "port");
    if (cfg->proxy_auth) {
        lua_pushstring(L, cfg->proxy_auth);
        lua_setfield(L, -2, "authorization");
    }
    lua_pushstring(L, cfg->proxy_display);
    lua_setfield(L, -2, "display");
    lua_pushstring(L, cfg->proxy_from);
    lua_setfield(L, -2, "from");
    lua_setfield(L, -2, "proxy");
    lua_pushstring(L, cfg->proxy_mode == ACQ_PROXY_MODE_TUNNEL ? "tunnel" : "plain");
    lua_setfield(L, -2, "proxy_mode");
}
