/*
 * config.c: the options of acquire.new / acquire.configure.
 *
 * Misconfiguration is a programming error, so it raises at once, before
 * any handle exists. account_id and base_url decide which host receives
 * the API key, so both are parsed strictly: nothing that could smuggle in
 * another host, a path, a query or userinfo gets through.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <errno.h>
#include "core.h"

static const char *const options[] = {
    "account_id", "api_key", "base_url", "timeout", "connect_timeout",
    "max_retries", "user_agent", "ca_file", "insecure", "strict",
    "max_response_bytes", "debug", "reconcile", NULL
};
#define OPTION_LIST "account_id, api_key, base_url, timeout, connect_timeout, " \
    "max_retries, user_agent, ca_file, insecure, strict, max_response_bytes, debug, reconcile"

/* Does the file hold a PEM certificate: a "-----BEGIN ...CERTIFICATE-----"
   block of base64 that decodes to a DER SEQUENCE? NULL if so, else why
   not. A garbage or empty ca_file would otherwise only fail at the first
   call, as a TLS error that looks like the server's fault. */
static const char *check_ca_file(const char *path, char why[160]) {
    static const char begin[] = "-----BEGIN ", tail[] = "CERTIFICATE-----";
    struct stat st;
    FILE *f;
    char line[512];
    int in = 0, first = 0, found = 0;
    if (stat(path, &st) != 0 || (f = fopen(path, "r")) == NULL) {
        snprintf(why, 160, "cannot read it: %s", strerror(errno));
        return why;
    }
    if (S_ISDIR(st.st_mode)) {
        fclose(f);
        return "a directory, not a file of PEM certificates";
    }
    while (!found && fgets(line, sizeof line, f)) {
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
            found = line[0] == 'M' && strchr("IJ", line[1]) != NULL &&
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

/* Header-safe: no CR, LF, NUL or other control byte. */
static int is_header_value(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
    }
    return 1;
}

/* http(s)://host[:port] with an optional single trailing '/'. host is a
   DNS name of labels or an IPv4/IPv6 literal ([...]); nothing else. */
static int is_base_url(const char *s, size_t n, size_t *keep) {
    const char *p, *end = s + n;
    if (n > 0 && s[n - 1] == '/') end--;
    if (n >= 7 && memcmp(s, "http://", 7) == 0) p = s + 7;
    else if (n >= 8 && memcmp(s, "https://", 8) == 0) p = s + 8;
    else return 0;
    if (p >= end) return 0;                          /* no host ("https://") */
    if (*p == '[') {                      /* IPv6 literal */
        const char *q = p + 1;
        while (q < end && (strchr("0123456789abcdefABCDEF:.", *q) != NULL)) q++;
        if (q == p + 1 || q >= end || *q != ']') return 0;
        p = q + 1;
    } else {                                         /* labels */
        const char *label = p;
        for (;; p++) {
            if (p == end || *p == '.' || *p == ':') {
                if (!is_label(label, (size_t)(p - label))) return 0;
                if (p == end || *p == ':') break;
                label = p + 1;
            }
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

static long check_ms(lua_State *L, const char *opt, int idx) {
    double v;
    if (lua_type(L, idx) != LUA_TNUMBER) bad(L, opt, "positive number", idx);
    v = lua_tonumber(L, idx);
    if (!(v > 0) || v > 86400 * 30.0)     /* also NaN */
        luaL_error(L, "bad option '%s' (positive number of seconds expected, got %s)",
                   opt, error_pushnumber(L, idx));
    v = ceil(v * 1000.0);
    return (long)v;
}

static long check_int(lua_State *L, const char *opt, int idx, long lo, long hi) {
    double v;
    if (lua_type(L, idx) != LUA_TNUMBER) bad(L, opt, "integer", idx);
    v = lua_tonumber(L, idx);
    if (v != floor(v) || v < (double)lo || v > (double)hi)     /* also NaN */
        luaL_error(L, "bad option '%s' (integer from %d to %d expected, got %s)", opt,
                   (int)lo, (int)hi, error_pushnumber(L, idx));
    return (long)v;
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
    if (!lua_isnil(L, -1)) cfg->timeout_ms = check_ms(L, "timeout", -1);
    rawfield(L, idx, "connect_timeout");
    if (!lua_isnil(L, -1))
        cfg->connect_timeout_ms = check_ms(L, "connect_timeout", -1);
    rawfield(L, idx, "max_retries");
    if (!lua_isnil(L, -1))
        cfg->max_retries = (int)check_int(L, "max_retries", -1, 0, 10);
    rawfield(L, idx, "max_response_bytes");
    if (!lua_isnil(L, -1))
        cfg->max_response_bytes =
            check_int(L, "max_response_bytes", -1, 1, 1L << 30);
    rawfield(L, idx, "insecure");
    if (!lua_isnil(L, -1)) cfg->insecure = check_bool(L, "insecure", -1);
    rawfield(L, idx, "strict");
    if (!lua_isnil(L, -1)) cfg->strict = check_bool(L, "strict", -1);
    rawfield(L, idx, "debug");
    if (!lua_isnil(L, -1)) cfg->debug = check_bool(L, "debug", -1);
    rawfield(L, idx, "reconcile");
    cfg->reconcile_ms = -1;
    if (lua_isboolean(L, -1)) {
        cfg->reconcile_ms = lua_toboolean(L, -1) ? ACQ_RECONCILE_WAIT_MS : -1;
    } else if (!lua_isnil(L, -1)) {
        lua_Number v = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(v >= 0 && v <= 60))
            luaL_error(L, "bad option 'reconcile' (boolean, or seconds from 0 to 60 expected, "
                          "got %s)", lua_type(L, -1) == LUA_TNUMBER
                                     ? error_pushnumber(L, -1) : acq_typename(L, -1));
        cfg->reconcile_ms = (long)ceil(v * 1000.0);
    }
    lua_pop(L, 1);
    lua_settop(L, top + 4);           /* keep the strings pointed into */

    rawfield(L, idx, "base_url");
    if (!lua_isnil(L, -1) && account != NULL)
        luaL_error(L, "bad option 'base_url' (not with account_id: both name the host, "
                      "give one)");
    if (!lua_isnil(L, -1)) {
        size_t keep = 0;
        const char *u = check_str(L, "base_url", -1, &len);
        if (len > ACQ_BASE_URL_MAX || !is_base_url(u, len, &keep))
            luaL_error(L, "bad option 'base_url' (http(s)://host[:port] "
                          "expected, without path, query or userinfo)");
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
    /* The strings stay referenced by the table at idx; only the derived
       base_url needs the stack, so drop the rest and keep exactly one. */
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
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
    config_check(L, 1, &cfg);                                 /* 2: base_url */
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
    SETBOOL("debug", cfg.debug);
    if (cfg.reconcile_ms < 0) SETBOOL("reconcile", 0);
    else { push_seconds(L, cfg.reconcile_ms); lua_setfield(L, -2, "reconcile"); }
#undef SETSTR
#undef SETINT
#undef SETBOOL
    return 1;
}
