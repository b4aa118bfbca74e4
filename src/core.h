/*
 * core.h: the seams between the areas of the core, which never sees a
 * network library (make check-layers fails the build if one includes
 * <curl/curl.h>; transports get transport.h).
 *
 *   config    acquire.new's table     -> acq_config_t      (raises on misuse)
 *   request   contactId + opts        -> url, headers, body bytes (json.c writes)
 *   response  status, headers, body  -> res | nil, err    (error.c, redact.c)
 *   policy    err, attempt            -> wait and retry, or give up
 *
 * Everything here is hidden (-fvisibility=hidden); only luaopen_acquire
 * is exported.
 */
#ifndef ACQUIRE_CORE_H
#define ACQUIRE_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "compat.h"

/* Everything declared from here on stays inside acquire.so, whatever the
   build's flags (LuaRocks' builtin backend passes none of ours). */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define ACQ_VERSION          "0.1.0"
#define ACQ_MT_CLIENT        "acquire.Client"
#define ACQ_MT_ERROR         "acquire.Error"
#define ACQ_MT_BUFFER        "acquire.Buffer"
#define ACQ_API_PATH         "/api/v1/crm/messenger/chat/create"
#define ACQ_BODY_CAP         4096          /* err.body is cut here */
#define ACQ_MAX_RESPONSE     (8u << 20)    /* default max_response_bytes */
#define ACQ_RETRY_AFTER_CAP  30.0          /* longer Retry-After: give up */
#define ACQ_MAX_WAIT         120.0         /* no sleep of the module's is longer */
#define ACQ_PROXY_MODE_PLAIN  1            /* http target through a proxy: absolute-form */
#define ACQ_PROXY_MODE_TUNNEL 2            /* https target: a CONNECT tunnel */

/* ---- buffer.c: a growable byte buffer owned by C -------------------- */
typedef struct acq_buf_t {
    char  *p;
    size_t len, cap;
} acq_buf_t;

int   buf_reserve(acq_buf_t *b, size_t extra);      /* 0 on ENOMEM */
void  buf_free(acq_buf_t *b);
/* A buffer inside a userdata with __gc, so a Lua error raised halfway
   through encoding cannot leak it. */
acq_buf_t *buf_push(lua_State *L);
void  buf_lreserve(lua_State *L, acq_buf_t *b, size_t extra); /* raises */
void  buf_open(lua_State *L);

/* luaL_error never returns, but is not declared so: say it where the code
   after a raise would otherwise look reachable (to compilers and analyzers). */
#if defined(__GNUC__)
#define ACQ_NORETURN        __attribute__((noreturn))
#define ACQ_UNREACHABLE()   __builtin_unreachable()
#else
#define ACQ_NORETURN
#define ACQ_UNREACHABLE()   ((void)0)
#endif

/* Zeroes memory that held the key; volatile, so it is not optimised away. */
static inline void acq_wipe(void *p, size_t n) {
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--) *v++ = 0;
}

/* Lua strings may hold NUL: keys and names are compared by length and
   bytes, never with strcmp ("title\0x" is not "title"). */
static inline int acq_lstreq(const char *s, size_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* 1 when the value at idx is a string equal to lit. */
static inline int acq_equals(lua_State *L, int idx, const char *lit) {
    size_t n;
    const char *s;
    if (lua_type(L, idx) != LUA_TSTRING) return 0;
    s = lua_tolstring(L, idx, &n);
    return acq_lstreq(s, n, lit);
}

/* A hex digit's value, or -1. */
static inline int acq_hexdigit(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The strings redacted from every string: the key, then proxy credentials,
   chained. */
#define ACQ_MAX_SECRETS      6
typedef struct acq_secret_t {
    const char *p;  size_t len;
    const struct acq_secret_t *next;
} acq_secret_t;

/* ---- url.c: the one URL and host:port parser ------------------------- */
#define ACQ_BASE_URL_MAX     1024          /* longest base_url (and proxy host:port) accepted */
typedef struct acq_url_t {
    int    tls;                                /* https (url_parse_base) */
    const char *host;      size_t host_len;    /* into the string; IPv6 in [ ] */
    int    port;                               /* explicit; 0: none (url_parse_base: the scheme's) */
    size_t len;                                /* url_parse_base: without the trailing '/' */
} acq_url_t;
typedef struct acq_proxy_parts_t {
    const char *userinfo;  size_t userinfo_len;  /* NULL: none */
    const char *hostport;  size_t hostport_len;
} acq_proxy_parts_t;
/* A DNS label: letters, digits and inner hyphens, 1 to 63. */
int   url_is_label(const char *s, size_t n);
/* host[:port], all n bytes: host a DNS name of labels, a dotted quad or an
   IPv6 literal in [ ]; 1 if so. *why (when not NULL) says what was wrong
   with the host, if that was it. */
int   url_parse_hostport(const char *s, size_t n, acq_url_t *u, const char **why);
/* http(s)://host[:port] with an optional single trailing '/'. */
int   url_parse_base(const char *s, size_t n, acq_url_t *u, const char **why);
/* A proxy URL: http:// (any case; none at all when bare and s has a ':'
   and no "://"), userinfo up to the last '@', host:port, one trailing '/'.
   Splits it (host:port unchecked: url_parse_hostport); 0 on another scheme. */
int   url_split_proxy(const char *s, size_t n, int bare, acq_proxy_parts_t *out);

/* ---- config.c: the options of acquire.new, normalised ---------------- */
#define ACQ_MAX_RETRIES_DEFAULT 2
#define ACQ_MAX_RETRIES_MAX  10             /* max_retries: 0 to this */
#define ACQ_URL_PREFIX       ACQ_API_PATH "?contactId="
/* base_url + path + "?contactId=" + 19 digits + NUL */
#define ACQ_URL_MAX          (ACQ_BASE_URL_MAX + sizeof(ACQ_URL_PREFIX) + 20)

typedef struct acq_config_t {
    const char *base_url;  size_t base_len;    /* no trailing '/' */
    const char *api_key;   size_t key_len;
    const char *account_id;                    /* NULL when base_url was given */
    const char *user_agent;                    /* NULL: the transport's own */
    const char *ca_file;                       /* NULL: system store */
    long   timeout_ms, connect_timeout_ms;
    long   max_response_bytes;
    int    max_retries;
    int    insecure, strict;
    int    debug;                              /* 0, 1 (true: a line per step), 2 ("body") */
    int    logger;                             /* a logger function was given */
    long   reconcile_ms;                       /* wait before looking; -1: off */
    /* the proxy for this target, after the environment and NO_PROXY (proxy.c) */
    int    proxy;                              /* 1: through proxy_url */
    int    proxy_mode;                         /* 0, ACQ_PROXY_MODE_PLAIN or ACQ_PROXY_MODE_TUNNEL */
    const char *proxy_url;                     /* "http://host:port", no credentials */
    const char *proxy_display;                 /* as shown: credentials [REDACTED] */
    const char *proxy_from;                    /* "option" or the variable's name */
    const char *proxy_host; size_t proxy_host_len;   /* into proxy_url; IPv6 in [ ] */
    int    proxy_port;
    const char *proxy_user, *proxy_pass;       /* percent-decoded; NULL: none */
    size_t proxy_user_len, proxy_pass_len;
    const char *proxy_auth;                    /* "Basic ...", NULL without credentials */
    /* the key, then the proxy's credentials as written, decoded and encoded */
    acq_secret_t secrets[ACQ_MAX_SECRETS];
    /* derived from base_url */
    int    tls;                                /* https */
    const char *host;      size_t host_len;    /* into base_url; IPv6 in [ ] */
    int    port;                               /* explicit or the scheme's */
} acq_config_t;

/* Validates the table at idx (raising on misuse). Strings point into Lua
   strings: the table's, or those derived (base_url, the proxy's parts),
   kept in one table pushed on the stack, so exactly one value is pushed. */
void  config_check(lua_State *L, int idx, acq_config_t *cfg);
int   config_l_config(lua_State *L);

/* ---- proxy.c: the proxy of a configuration --------------------------- */
/* The proxy option's value at idx (nil: the environment as curl 7.88 reads
   it, NO_PROXY included; a string: the URL) into cfg, after base_url's
   tls and host; derived strings appended to the table at derived. Raises
   on a bad URL. */
void  proxy_check(lua_State *L, int idx, acq_config_t *cfg, int derived);
/* Sets proxy (false, or { url, host, port, authorization, display, from })
   and proxy_mode (false, "plain" or "tunnel") in the table on top. */
void  proxy_push(lua_State *L, const acq_config_t *cfg);

/* ---- json.c: the one JSON writer ------------------------------------ */
#define ACQ_JSON_MAX_DEPTH   32
/* Where a value sits, for messages: "agentId", "mentionUsers[2]",
   "fields.plan", "message.message". */
typedef struct acq_path_t {
    const char *parent, *key;
    long index;                  /* > 0: parent[index] */
} acq_path_t;
typedef struct acq_key_t { const char *s; size_t n; } acq_key_t;

/* Raises "bad field 'PATH' (EXPECTED expected, got TYPE)". */
ACQ_NORETURN void json_bad(lua_State *L, const acq_path_t *p, const char *expected, int idx);
void  json_raw(lua_State *L, acq_buf_t *b, const char *s, size_t n);
#define JSON_LIT(L, b, s) json_raw(L, b, s, sizeof(s) - 1)
void  json_char(lua_State *L, acq_buf_t *b, char c);
void  json_string(lua_State *L, acq_buf_t *b, const char *s, size_t n, const acq_path_t *p);
void  json_int(lua_State *L, acq_buf_t *b, long long v);
/* Any Lua value, tables as arrays or sorted objects, at most
   ACQ_JSON_MAX_DEPTH deep; acquire.null is null. Raises on what has no JSON. */
void  json_value(lua_State *L, acq_buf_t *b, int idx, const acq_path_t *p, int depth);
/* An integer-valued number: a Lua integer, or a float with an exact
   integral value inside the 64-bit range. 0 if not. */
int   json_to_int(lua_State *L, int idx, long long *out);
/* The string keys of the table at idx, sorted, in a userdata left on the
   stack (raises on other keys). */
acq_key_t *json_sorted_keys(lua_State *L, int idx, size_t *count, const acq_path_t *p);
/* n if the table at idx is exactly the sequence 1..n, else -1. */
long  json_sequence_len(lua_State *L, int idx);
/* acquire.encode(value [, { order = { key, ... } }]) -> JSON text. */
int   json_l_encode(lua_State *L);

/* ---- request.c: contactId and opts into bytes ----------------------- */
/* The request's headers, the same for every transport. */
#define ACQ_NHEADERS 4
typedef struct acq_header_t {
    const char *name, *prefix, *value;       /* name: prefix value */
} acq_header_t;
/* Fills h; a User-Agent only when ua is not NULL. Returns how many. */
int   request_headers(const acq_config_t *cfg, const char *ua,
                      acq_header_t h[ACQ_NHEADERS]);
/* base_url + path + "?contactId=" + id into out (ACQ_URL_MAX bytes). */
size_t request_url(const acq_config_t *cfg, long long id, char *out);
int   request_l_build(lua_State *L);
int   request_l_fields(lua_State *L);      /* acquire.request_fields() */
long long request_check_contact_id(lua_State *L, int arg);
int   request_parse_contact_id(lua_State *L, int idx, long long *out);  /* 0: bad */
/* "contactId must be a positive integer, got ..." for the value at idx, pushed:
   the one wording of that misuse. */
const char *request_push_contact_id_error(lua_State *L, int idx);
/* Encodes opts (index, may be none/nil) into b; raises on misuse. */
void  request_encode_body(lua_State *L, int arg, int strict, acq_buf_t *b);

/* ---- error.c: the err table ----------------------------------------- */

/* ---- redact.c: credentials out of every string (the rule: redact.c) --- */
#define ACQ_REDACTED         "[REDACTED]"
#define ACQ_REDACT_MIN       6     /* a secret searched for wherever it appears from this length */
#define ACQ_REDACT_TAIL_MIN  4     /* a secret cut short at the very end: redacted from this length */
/* The first span to redact in s (credentials where they stand; k's secrets,
   raw or in any JSON escaping, overlapping ones merged): 1, with its offset
   and length; 0 when none (*at is n). Linear in n per secret. */
int   redact_next(const char *s, size_t n, const acq_secret_t *k, size_t *at, size_t *len);
/* s with every span replaced by ACQ_REDACTED, pushed. */
void  redact_push(lua_State *L, const char *s, size_t n, const acq_secret_t *k);
int   redact_l_redact(lua_State *L);

/* err is the absolute index error_new returned. */
int   error_new(lua_State *L, const char *kind);   /* pushes err */
void  error_setstring(lua_State *L, int err, const char *field, const char *s,
                      size_t len, const acq_secret_t *secret, size_t cap);
void  error_setint(lua_State *L, int err, const char *field, long long v);
void  error_setbool(lua_State *L, int err, const char *field, int v);
void  error_setnumber(lua_State *L, int err, const char *field, double v);
const char *error_pushname(lua_State *L, int idx);  /* pushes it too */
/* "a, b, c" of n names, each stride bytes after the one before (an array of
   strings, or a field of an array of structs), pushed: a message's list. */
const char *error_pushlist(lua_State *L, const char *const *name, size_t stride, size_t n);
void  error_pushstring(lua_State *L, int idx);       /* tostring(err) */
const char *error_pushnumber(lua_State *L, int idx); /* "nan", "inf", digits; pushed */
void  error_open(lua_State *L);

/* ---- reconcile.c: reading cases back ---------------------------------- */
#define ACQ_LIST_PATH        "/api/v1/crm/objects/case"
#define ACQ_LIST_LIMIT       100
#define ACQ_LIST_MAX_PAGES   10            /* a lookup reads at most this many pages */
#define ACQ_LIST_URL_MAX     (ACQ_BASE_URL_MAX + sizeof(ACQ_LIST_PATH) + 80)
#define ACQ_RECONCILE_WAIT_MS 1000         /* reconcile = true: wait this long, then look */
#define ACQ_RECONCILE_SKEW   300.0         /* seconds of clock difference allowed */
#define ACQ_CLAIMS_GEN       32768         /* claims remembered: this many at least */
typedef struct acq_filter_t {
    int    table;                          /* the filter table's index, or 0 */
    int    has_since, has_until, has_title, has_desc;
    double since, until;                   /* seconds since the epoch */
    long long contact;                     /* > 0: the case must be this contact's */
} acq_filter_t;
size_t reconcile_list_url(const acq_config_t *cfg, long long contact, int page, char *out);
void  reconcile_check_filter(lua_State *L, int idx, acq_filter_t *f);
/* Appends the cases of one page of the list (res at idx) that match f to
   the table at out; returns whether another page may follow. */
int   reconcile_collect(lua_State *L, int res, int page, const acq_filter_t *f, int out);
/* Pushes the filter of what a call sent (opts at idx), created between
   started and until (seconds since the epoch). */
void  reconcile_push_filter(lua_State *L, long long id, int opts, double started, double until);
/* The decision, given err, the cases found (a table, or nil), the lookup's
   err and the claims set (index, or 0: none): pushes res (returns 1) or
   nil, err (returns 2). */
int   reconcile_settle(lua_State *L, int err, int found, int lookup_err, int claims);
/* Claims: which case ids requests of one client already have. */
void  reconcile_push_claims(lua_State *L);
void  reconcile_claim(lua_State *L, int claims, int res_case_or_id);
int   reconcile_l_claims(lua_State *L);
int   reconcile_l_claim(lua_State *L);
int   reconcile_l_match(lua_State *L);
int   reconcile_l_build(lua_State *L);
int   reconcile_l_filter(lua_State *L);
int   reconcile_l_settle(lua_State *L);

/* ---- response.c: status, headers, body into res | nil, err ---------- */
/* Pushes res (returns 1) or nil, err (returns 2). retry_after may be NULL. */
int   response_decode(lua_State *L, long status, const char *body, size_t len,
                      const char *retry_after, const acq_secret_t *secret);
void  response_open(lua_State *L);          /* loads lua-cjson; [-0,+0] */
int   response_l_decode(lua_State *L);
int   response_l_fields(lua_State *L);
void  response_push_null(lua_State *L);
long  response_days_from_civil(long y, long m, long d);   /* days since 1970-01-01 */
double response_parse_retry_after(const char *v, double now);  /* -1: none */

/* ---- policy.c: retry or give up ------------------------------------- */
typedef struct acq_failure_t {
    int    retryable;       /* the case cannot exist: safe to send again */
    double retry_after;     /* seconds the server asked for, -1 if none */
} acq_failure_t;

void  policy_sleep(double seconds);                 /* at most ACQ_MAX_WAIT */
/* Was the answer (CONNECT's, or the request's) the proxy's? By stage. */
int   policy_from_proxy(int proxy_mode, long connect_status, long status);
int   policy_l_proxy_answered(lua_State *L);
uint64_t policy_seed(const void *salt);
/* The one retry step, for every loop: after attempt failed with the err
   table at idx, the seconds to wait before trying again, or -1 to give up,
   having set err.attempts. */
double policy_next(lua_State *L, int idx, int attempt, int max_retries, uint64_t *rng);
/* After the failure (err table at idx) of a request of a batch: how long no
   request of that batch should start, whatever the item's attempts left (the
   Retry-After of a 429 or 503 the policy honours), or -1. */
double policy_pause(lua_State *L, int idx);
int   policy_l_retry_after(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
