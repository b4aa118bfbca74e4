/*
 * acquire.h: the seams between the areas of the module.
 *
 *   request   contactId + opts        -> url, body bytes   (raises on misuse)
 *   transport url, headers, body      -> status, body      (libcurl, no schema)
 *   response  status, headers, body  -> res | nil, err
 *   policy    err, attempt            -> wait and retry, or give up
 *
 * Everything here is hidden (-fvisibility=hidden); only luaopen_acquire
 * is exported.
 */
#ifndef ACQUIRE_H
#define ACQUIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <curl/curl.h>
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

/* ---- config.c: the options of acquire.new --------------------------- */
typedef struct acq_config_t {
    const char *base_url;  size_t base_len;    /* no trailing '/' */
    const char *api_key;   size_t key_len;
    const char *user_agent;                    /* NULL: the default */
    const char *ca_file;                       /* NULL: system store */
    long   timeout_ms, connect_timeout_ms;
    long   max_response_bytes;
    int    max_retries;
    int    insecure, strict, debug;
} acq_config_t;

/* Validates the table at idx (raising on misuse). Strings point into Lua
   strings; a derived base_url is pushed, so exactly one value is pushed. */
void  config_check(lua_State *L, int idx, acq_config_t *cfg);
#define ACQ_UA_MAX 128
/* cfg->user_agent, or "lua-acquire/V libcurl/V" written into buf. */
const char *config_user_agent(const acq_config_t *cfg, char buf[ACQ_UA_MAX]);

/* ---- request.c: contactId and opts into bytes ----------------------- */
/* The request's headers, the same for every transport. */
#define ACQ_NHEADERS 4
typedef struct acq_header_t {
    const char *name, *prefix, *value;       /* name: prefix value */
} acq_header_t;
void  request_headers(const acq_config_t *cfg, const char *ua,
                      acq_header_t h[ACQ_NHEADERS]);
/* base_url + path + "?contactId=" + id into out (base_len + 80 bytes). */
size_t request_url(const acq_config_t *cfg, long long id, char *out);
int   request_l_build(lua_State *L);
long long request_check_contact_id(lua_State *L, int arg);
int   request_parse_contact_id(lua_State *L, int idx, long long *out);  /* 0: bad */
/* Encodes opts (index, may be none/nil) into b; raises on misuse. */
void  request_encode_body(lua_State *L, int arg, int strict, acq_buf_t *b);

/* ---- error.c: the err table ----------------------------------------- */
typedef struct acq_secret_t {
    const char *p;  size_t len;                /* redacted from every string */
} acq_secret_t;

/* ---- redact.c: the key out of every string, raw or JSON-escaped ------ */
#define ACQ_REDACTED         "[REDACTED]"
#define ACQ_REDACT_TAIL_MIN  4     /* a key cut short at the very end: redacted from this length */
/* The first key in s, raw or in any JSON escaping: 1, with its offset
   and length (final: a key cut short by the end of s counts from
   ACQ_REDACT_TAIL_MIN of its bytes). 0 when none: *at is n, or (not final)
   where a key the end of s may cut begins. */
int   redact_next(const char *s, size_t n, const acq_secret_t *k, int final,
                  size_t *at, size_t *len);
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
void  error_open(lua_State *L);

/* ---- response.c: status, headers, body into res | nil, err ---------- */
/* Pushes res (returns 1) or nil, err (returns 2). retry_after may be NULL. */
int   response_decode(lua_State *L, long status, const char *body, size_t len,
                      const char *retry_after, const acq_secret_t *secret);
void  response_open(lua_State *L);          /* loads lua-cjson; [-0,+0] */
int   response_l_decode(lua_State *L);
int   response_l_fields(lua_State *L);
void  response_push_null(lua_State *L);
double response_parse_retry_after(const char *v, double now);  /* -1: none */

/* ---- policy.c: retry or give up ------------------------------------- */
typedef struct acq_failure_t {
    int    retryable;       /* the case cannot exist: safe to send again */
    double retry_after;     /* seconds the server asked for, -1 if none */
} acq_failure_t;

/* Seconds to wait before attempt+1, or -1 to give up. rng: xorshift state. */
double policy_delay(const acq_failure_t *f, int attempt, int max_retries,
                    uint64_t *rng);
void  policy_sleep(double seconds);
uint64_t policy_seed(const void *salt);
/* Reads the failure out of the err table at idx. */
void  policy_failure_from_err(lua_State *L, int idx, acq_failure_t *f);
int   policy_l_retry_after(lua_State *L);

/* ---- transport.c: libcurl easy handle ------------------------------- */
#define ACQ_DEBUG_BODY_CAP   16384   /* debug = true logs this much of each body */
typedef struct acq_dstream_t {       /* a body in the debug log */
    acq_buf_t pend;                  /* held back: may begin a key */
    size_t    shown, dropped;
    int       mid;                   /* inside a line */
} acq_dstream_t;

/* The sockets libcurl opened for one client, open now: after fork() they
   are the parent's too, and the child points them at /dev/null before its
   libcurl closes them (a TLS close would write into the parent's session). */
#define ACQ_MAX_SOCKETS      128
typedef struct acq_sockets_t {
    int n;
    curl_socket_t fd[ACQ_MAX_SOCKETS];
} acq_sockets_t;

typedef struct acq_transport_t {
    CURL              *easy;
    struct curl_slist *headers;
    acq_buf_t          body;               /* response body */
    const char        *out;                /* request body being sent */
    const char        *key;                /* to redact in debug output */
    size_t             key_len;
    size_t             out_len, out_pos;
    int                sends;              /* requests begun by this transfer */
    int                sock_errno;         /* why socket() failed, or 0 */
    int                head, head_done;    /* answer: 2 final, 1 1xx; its blank line came */
    acq_sockets_t     *sockets;            /* the client's, shared by its handles */
    int                dbg_on;
    acq_dstream_t      dbg[2];             /* debug log: body out, body in */
    size_t             max_bytes;
    int                too_large;
    char               retry_after[64];    /* of the final response */
    char               errbuf[CURL_ERROR_SIZE];
} acq_transport_t;

typedef struct acq_result_t {
    CURLcode code;
    long     status;
    int      maybe_sent;                   /* some request bytes may have left */
} acq_result_t;

/* 0 on success; on failure *what says what could not be set up. */
/* header_lines: NULL-terminated "Name: value" lines. */
int   transport_init(acq_transport_t *t, const acq_config_t *cfg,
                     const char *const *header_lines, const char **what);
void  transport_perform(acq_transport_t *t, const char *url,
                        const char *body, size_t len, acq_result_t *r);
/* perform in two halves, for a multi handle */
void  transport_prepare(acq_transport_t *t, const char *url,
                        const char *body, size_t len);
void  transport_finish(acq_transport_t *t, CURLcode code, acq_result_t *r);
int   transport_dup(acq_transport_t *dst, const acq_transport_t *src, void *priv);
/* After fork(): every socket of the set made /dev/null, so that closing
   them (libcurl's cleanup) touches nothing of the parent's. */
void  transport_disown(acq_sockets_t *s);
/* A fresh handle with t's options, the old one cleaned up. 0 on success. */
int   transport_renew(acq_transport_t *t);
void  transport_close(acq_transport_t *t);
/* Pushes nil, err for a failed transfer; returns 2. */
int   transport_push_error(lua_State *L, const acq_transport_t *t,
                           const acq_result_t *r, const acq_secret_t *secret);

/* ---- client.c: the acquire.Client userdata -------------------------- */
typedef struct acq_slot_t acq_slot_t;           /* batch.c */

typedef struct acq_client_t {
    int       open;
    int       strict, max_retries;
    uint64_t  rng;                    /* backoff jitter */
    char     *url;                    /* base + path + "?contactId=", then the id */
    size_t    prefix_len;
    char     *key;                    /* kept only to redact it from errors */
    size_t    key_len;
    acq_buf_t req;                    /* request body, reused */
    acq_transport_t t;
    CURLM    *multi;                  /* create_cases: made on first use */
    acq_slot_t *slots[64];            /* its transfers, one easy handle each */
    int       busy;                   /* create_cases is running (on_progress) */
    long      pid;                    /* the process whose connections these are */
    acq_sockets_t sockets;            /* every socket its handles hold */
} acq_client_t;

acq_client_t *client_check_open(lua_State *L, int idx);
/* After fork(): the connections belong to the parent; start afresh. */
void  client_check_fork(lua_State *L, acq_client_t *c);
/* Pushes the default client (configured, or from the environment). */
acq_client_t *client_default(lua_State *L);
/* The outcome of one transfer: pushes res (1) or nil, err (2). */
int   client_outcome(lua_State *L, acq_client_t *c, acq_transport_t *t,
                     const acq_result_t *r);
int   batch_create_cases(lua_State *L);
int   batch_default_create_cases(lua_State *L);
void  batch_release(acq_client_t *c);
int   client_new(lua_State *L);
int   client_create_case(lua_State *L);
int   client_close(lua_State *L);
int   client_tostring(lua_State *L);
int   client_configure(lua_State *L);
int   client_default_create_case(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
