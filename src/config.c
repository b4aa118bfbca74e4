/*
 * config.c: the options of acquire.new / acquire.configure.
 *
 * Misconfiguration is a programming error, so it raises at once, before
 * any handle exists. account_id and base_url decide which host receives
 * the API key, so both are parsed strictly (url.c): nothing that could
 * smuggle in another host, a path, a query or userinfo gets through.
 * Every option is one row of options[] below; the proxy is proxy.c's.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include "core.h"

#define ACQ_CA_FILE_MAX (16L << 20)     /* a ca_file larger than this is refused */

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

/* Header-safe: no CR, LF, NUL or other control byte. */
static int is_header_value(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
    }
    return 1;
}

/* ---- the string options' own checks ------------------------------------
   Each: NULL if s (n bytes) is fine, else what was expected (a message
   pushed when it names the value). The option's type is checked before. */
static const char *check_api_key(lua_State *L, const acq_config_t *cfg, const char *s, size_t n) {
    (void)L; (void)cfg;
    return n > 0 && is_header_value(s, n) ? NULL
         : "must be non-empty, without control characters";
}

static const char *check_account_id(lua_State *L, const acq_config_t *cfg, const char *s, size_t n) {
    (void)L; (void)cfg;
    return url_is_label(s, n) ? NULL
         : "a DNS label expected: letters, digits and inner hyphens, at most 63";
}

static const char *check_base_url(lua_State *L, const acq_config_t *cfg, const char *s, size_t n) {
    acq_url_t u;
    const char *why = "";
    if (cfg->account_id != NULL) return "not with account_id: both name the host, give one";
    if (n <= ACQ_BASE_URL_MAX && url_parse_base(s, n, &u, &why)) return NULL;
    return lua_pushfstring(L, "http(s)://host[:port] expected, without path, query or "
                              "userinfo%s", why);
}

static const char *check_user_agent(lua_State *L, const acq_config_t *cfg, const char *s, size_t n) {
    (void)L; (void)cfg;
    return n > 0 && n <= 512 && is_header_value(s, n) ? NULL
         : "1 to 512 bytes without control characters expected";
}

static const char *check_ca(lua_State *L, const acq_config_t *cfg, const char *s, size_t n) {
    char buf[160];
    const char *why;
    (void)cfg;
    if (n == 0 || strlen(s) != n) return "a file path expected";
    why = check_ca_file(s, buf);
    return why ? lua_pushfstring(L, "'%s': %s", s, why) : NULL;
}

/* ---- the options: one table ----------------------------------------------
   Each option once, in the order it is checked: its name, its type, its
   range, its default and its field in acq_config_t. The name check, the type
   check, the ranges and their messages, the defaults and acquire.config()'s
   output all read it (doc/api.md's options table says the same). A number
   is range-checked as a double before any conversion (NaN fails every
   comparison), so no conversion is ever out of range. Seconds are kept as
   whole milliseconds, rounded up. */
typedef enum {
    OPT_STRING,      /* const char * (and its length at len_at), checked by check */
    OPT_BOOL,        /* int */
    OPT_DEBUG,       /* int: a boolean, or "body" (2) */
    OPT_SECONDS,     /* long: whole milliseconds */
    OPT_COUNT,       /* int: an integer */
    OPT_SIZE,        /* long: an integer */
    OPT_RECONCILE,   /* long: a boolean (true: ACQ_RECONCILE_WAIT_MS; false: -1), or seconds */
    OPT_FUNCTION,    /* int: given */
    OPT_PROXY        /* int: false, or a URL; proxy.c reads it */
} opt_type_t;

static const char *const expected[] = {
    "string", "boolean", "boolean or \"body\"", "", "", "", "boolean, or ", "function",
    "false or an http:// URL"
};

typedef const char *(*opt_check_t)(lua_State *L, const acq_config_t *cfg, const char *s, size_t n);

typedef struct option_t {
    const char *name;
    opt_type_t  type;
    int         required;
    double      lo, hi;           /* numbers: the range, in seconds for seconds */
    long        def;              /* the default: milliseconds for seconds */
    size_t      at, len_at;       /* the field (and its length's: 0, none) in acq_config_t */
    opt_check_t check;            /* OPT_STRING */
} option_t;

#define AT(f) offsetof(acq_config_t, f)
static const option_t options[] = {
    { .name = "api_key", .type = OPT_STRING, .required = 1, .at = AT(api_key),
      .len_at = AT(key_len), .check = check_api_key },
    { .name = "account_id", .type = OPT_STRING, .at = AT(account_id), .check = check_account_id },
    { .name = "base_url", .type = OPT_STRING, .at = AT(base_url), .len_at = AT(base_len),
      .check = check_base_url },
    { .name = "timeout", .type = OPT_SECONDS, .lo = 0.001, .hi = 86400, .def = 30000,
      .at = AT(timeout_ms) },
    { .name = "connect_timeout", .type = OPT_SECONDS, .lo = 0.001, .hi = 86400, .def = 10000,
      .at = AT(connect_timeout_ms) },
    { .name = "max_retries", .type = OPT_COUNT, .lo = 0, .hi = ACQ_MAX_RETRIES_MAX,
      .def = ACQ_MAX_RETRIES_DEFAULT, .at = AT(max_retries) },
    { .name = "user_agent", .type = OPT_STRING, .at = AT(user_agent), .check = check_user_agent },
    { .name = "ca_file", .type = OPT_STRING, .at = AT(ca_file), .check = check_ca },
    { .name = "insecure", .type = OPT_BOOL, .def = 0, .at = AT(insecure) },
    { .name = "strict", .type = OPT_BOOL, .def = 1, .at = AT(strict) },
    { .name = "max_response_bytes", .type = OPT_SIZE, .lo = 1, .hi = 1073741824.0,
      .def = (long)ACQ_MAX_RESPONSE, .at = AT(max_response_bytes) },
    { .name = "debug", .type = OPT_DEBUG, .def = 0, .at = AT(debug) },
    { .name = "reconcile", .type = OPT_RECONCILE, .lo = 0, .hi = 60, .def = -1,
      .at = AT(reconcile_ms) },
    { .name = "proxy", .type = OPT_PROXY, .at = AT(proxy) },
    { .name = "logger", .type = OPT_FUNCTION, .at = AT(logger) },
};
#undef AT
#define NOPTIONS (sizeof options / sizeof options[0])
#define FIELD(cfg, o, T) (*(T *)(void *)((char *)(cfg) + (o)->at))

static ACQ_NORETURN void bad_type(lua_State *L, const option_t *o, int idx) {
    luaL_error(L, "bad option '%s' (%s expected, got %s)", o->name, expected[o->type],
               acq_typename(L, idx));
    ACQ_UNREACHABLE();
}

/* The number at idx, checked against o's range: milliseconds for seconds,
   else the integer. Raises naming the option and its range. */
static long check_number(lua_State *L, int idx, const option_t *o) {
    char range[96];
    double v = 0;
    int seconds = o->type == OPT_SECONDS || o->type == OPT_RECONCILE;
    int ok = lua_type(L, idx) == LUA_TNUMBER;
    if (ok) {
        v = (double)lua_tonumber(L, idx);
        ok = v >= o->lo && v <= o->hi && (seconds || v == floor(v));   /* false for NaN */
    }
    if (!ok) {
        snprintf(range, sizeof range, "%s%s from %.14g to %.14g", expected[o->type],
                 seconds ? "seconds" : "integer", o->lo, o->hi);
        luaL_error(L, "bad option '%s' (%s expected, got %s)", o->name, range,
                   lua_type(L, idx) == LUA_TNUMBER ? error_pushnumber(L, idx) : acq_typename(L, idx));
    }
    return seconds ? (long)ceil(v * 1000.0) : (long)v;
}

static void set_default(acq_config_t *cfg, const option_t *o) {
    switch (o->type) {
    case OPT_STRING: FIELD(cfg, o, const char *) = NULL; break;
    case OPT_SECONDS: case OPT_SIZE: case OPT_RECONCILE: FIELD(cfg, o, long) = o->def; break;
    default: FIELD(cfg, o, int) = (int)o->def; break;
    }
}

/* The value at v (not nil) of option o into cfg; raises on misuse. */
static void check_option(lua_State *L, acq_config_t *cfg, const option_t *o, int v) {
    const char *s, *why;
    size_t n;
    switch (o->type) {
    case OPT_STRING:
        if (lua_type(L, v) != LUA_TSTRING) bad_type(L, o, v);
        s = lua_tolstring(L, v, &n);
        if ((why = o->check(L, cfg, s, n)) != NULL)
            luaL_error(L, "bad option '%s' (%s)", o->name, why);
        FIELD(cfg, o, const char *) = s;
        if (o->len_at) *(size_t *)(void *)((char *)cfg + o->len_at) = n;
        break;
    case OPT_DEBUG:
        if (acq_equals(L, v, "body")) { FIELD(cfg, o, int) = 2; break; }
        /* fall through */
    case OPT_BOOL:
        if (!lua_isboolean(L, v)) bad_type(L, o, v);
        FIELD(cfg, o, int) = lua_toboolean(L, v);
        break;
    case OPT_RECONCILE:
        if (lua_isboolean(L, v)) {
            FIELD(cfg, o, long) = lua_toboolean(L, v) ? ACQ_RECONCILE_WAIT_MS : -1;
            break;
        }
        /* fall through */
    case OPT_SECONDS: case OPT_SIZE:
        FIELD(cfg, o, long) = check_number(L, v, o);
        break;
    case OPT_COUNT:
        FIELD(cfg, o, int) = (int)check_number(L, v, o);
        break;
    case OPT_FUNCTION:
        if (!lua_isfunction(L, v)) bad_type(L, o, v);
        FIELD(cfg, o, int) = 1;
        break;
    case OPT_PROXY:                                   /* proxy_check reads it */
        if (lua_type(L, v) != LUA_TSTRING && !(lua_isboolean(L, v) && !lua_toboolean(L, v)))
            bad_type(L, o, v);
        break;
    }
}

/* Unknown keys first: a typo must not silently become a default. */
static void check_names(lua_State *L, int idx) {
    size_t i;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option (string keys expected, got %s key)", luaL_typename(L, -1));
        for (i = 0; i < NOPTIONS && !acq_equals(L, -1, options[i].name); i++) {}
        if (i == NOPTIONS) {
            const char *name = error_pushname(L, -1);      /* first: both push */
            luaL_error(L, "bad option '%s' (expected one of: %s)", name,
                       error_pushlist(L, &options[0].name, sizeof options[0], NOPTIONS));
        }
    }
}

/* base_url as given (checked) or from account_id, without a trailing '/',
   into the table at derived, and its parts into cfg. */
static void derive_base_url(lua_State *L, acq_config_t *cfg, int derived) {
    acq_url_t u;
    if (cfg->base_url != NULL && url_parse_base(cfg->base_url, cfg->base_len, &u, NULL))
        lua_pushlstring(L, cfg->base_url, u.len);
    else if (cfg->account_id != NULL)
        lua_pushfstring(L, "https://%s.acquire.io", cfg->account_id);
    else
        luaL_error(L, "option 'account_id' (or 'base_url') is required");
    cfg->base_url = lua_tolstring(L, -1, &cfg->base_len);
    lua_rawseti(L, derived, 1);
    url_parse_base(cfg->base_url, cfg->base_len, &u, NULL);
    cfg->tls = u.tls;
    cfg->host = u.host;
    cfg->host_len = u.host_len;
    cfg->port = u.port;
}

void config_check(lua_State *L, int idx, acq_config_t *cfg) {
    size_t i;
    int derived, proxy = 0;
    idx = acq_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    memset(cfg, 0, sizeof *cfg);
    for (i = 0; i < NOPTIONS; i++) set_default(cfg, &options[i]);
    check_names(L, idx);
    /* The strings stay referenced by the table at idx; the derived ones
       (base_url, the proxy's parts) by one table, the one value left. */
    lua_createtable(L, 8, 0);
    derived = lua_gettop(L);
    luaL_checkstack(L, NOPTIONS + 8, "options");
    for (i = 0; i < NOPTIONS; i++) {
        const option_t *o = &options[i];
        lua_pushstring(L, o->name);        /* raw: no metamethod of the caller's */
        lua_rawget(L, idx);                /* table runs while we point into it */
        if (o->type == OPT_PROXY) proxy = lua_gettop(L);
        if (!lua_isnil(L, -1)) check_option(L, cfg, o, lua_gettop(L));
        else if (o->required) luaL_error(L, "option '%s' is required", o->name);
    }
    derive_base_url(L, cfg, derived);
    cfg->secrets[0].p = cfg->api_key;
    cfg->secrets[0].len = cfg->key_len;
    proxy_check(L, proxy, cfg, derived);
    lua_settop(L, derived);
}

/* Whole seconds as an integer (30, not 30.0), others as they are. */
static void push_seconds(lua_State *L, long ms) {
    if (ms % 1000 == 0) acq_pushint64(L, ms / 1000);
    else lua_pushnumber(L, (lua_Number)ms / 1000.0);
}

/* Option o of cfg into the table on top, as acquire.config gives it
   (input: the table it was read from). */
static void push_option(lua_State *L, const acq_config_t *cfg, const option_t *o, int input) {
    switch (o->type) {
    case OPT_STRING:
        if (FIELD(cfg, o, const char *) == NULL) return;
        if (o->len_at) lua_pushlstring(L, FIELD(cfg, o, const char *),
                                       *(const size_t *)(const void *)((const char *)cfg + o->len_at));
        else lua_pushstring(L, FIELD(cfg, o, const char *));
        break;
    case OPT_BOOL: lua_pushboolean(L, FIELD(cfg, o, int)); break;
    case OPT_DEBUG:
        if (FIELD(cfg, o, int) == 2) lua_pushliteral(L, "body");
        else lua_pushboolean(L, FIELD(cfg, o, int));
        break;
    case OPT_RECONCILE:
        if (FIELD(cfg, o, long) < 0) { lua_pushboolean(L, 0); break; }
        /* fall through */
    case OPT_SECONDS: push_seconds(L, FIELD(cfg, o, long)); break;
    case OPT_SIZE: acq_pushint64(L, FIELD(cfg, o, long)); break;
    case OPT_COUNT: acq_pushint64(L, FIELD(cfg, o, int)); break;
    case OPT_FUNCTION:
        if (!FIELD(cfg, o, int)) return;
        lua_pushstring(L, o->name);
        lua_rawget(L, input);
        break;
    case OPT_PROXY: proxy_push(L, cfg); return;       /* proxy and proxy_mode */
    }
    lua_setfield(L, -2, o->name);
}

/* acquire.config(t) -> the normalised configuration every transport reads:
   t's options checked as acquire.new checks them (raising the same way),
   every default filled in, and what they imply: base_url, scheme, host,
   port, host_header, proxy_mode and secrets. */
int config_l_config(lua_State *L) {
    acq_config_t cfg;
    const acq_secret_t *k;
    size_t i;
    int n = 0;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    config_check(L, 1, &cfg);                                 /* 2: derived */
    lua_createtable(L, 0, 24);
    for (i = 0; i < NOPTIONS; i++) push_option(L, &cfg, &options[i], 1);
    lua_pushstring(L, cfg.tls ? "https" : "http");
    lua_setfield(L, -2, "scheme");
    lua_pushlstring(L, cfg.host, cfg.host_len);
    lua_setfield(L, -2, "host");
    acq_pushint64(L, cfg.port);
    lua_setfield(L, -2, "port");
    lua_pushlstring(L, cfg.host, cfg.host_len);
    if (cfg.port != (cfg.tls ? 443 : 80)) {               /* Host: names a port only then */
        lua_pushfstring(L, "%s:%d", lua_tostring(L, -1), cfg.port);
        lua_remove(L, -2);
    }
    lua_setfield(L, -2, "host_header");
    lua_newtable(L);
    for (k = cfg.secrets; k; k = k->next) {
        lua_pushlstring(L, k->p, k->len);
        lua_rawseti(L, -2, ++n);
    }
    lua_setfield(L, -2, "secrets");
    return 1;
}
