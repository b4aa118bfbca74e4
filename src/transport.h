/*
 * transport.h: what moves bytes (libcurl), on top of the core: the easy
 * handle of one call (transport.c), the Client (client.c) and the batch
 * on a multi handle (batch.c). Only these and lua_acquire.c see libcurl.
 */
#ifndef ACQUIRE_TRANSPORT_H
#define ACQUIRE_TRANSPORT_H

#include <curl/curl.h>
#include "core.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

/* ---- transport.c: libcurl easy handle ------------------------------- */
#define ACQ_DEBUG_BODY_CAP   16384   /* debug = "body" logs this much of each body */
#define ACQ_PROXY_PLAIN      ACQ_PROXY_MODE_PLAIN
#define ACQ_PROXY_TUNNEL     ACQ_PROXY_MODE_TUNNEL

/* The sockets libcurl opened for one client, open now: after fork() they
   are the parent's too, and the child points them at /dev/null before its
   libcurl closes them (a TLS close would write into the parent's session). */
#define ACQ_MAX_SOCKETS      128
typedef struct acq_sockets_t {
    int n;
    curl_socket_t fd[ACQ_MAX_SOCKETS];
} acq_sockets_t;

typedef struct acq_transport_t {
    CURL              *easy;               /* this transfer's: a fresh one each time */
    CURL              *tmpl;               /* the options every transfer starts from */
    CURLSH            *share;              /* connections, DNS, TLS sessions; owner only */
    CURLM             *multi;              /* transport_perform's; owner only */
    void              *priv;               /* CURLOPT_PRIVATE of each transfer */
    int                owner;              /* tmpl, share and headers are this one's */
    struct curl_slist *headers;
    acq_buf_t          body;               /* response body */
    const char        *out;                /* request body being sent */
    int                proxy;              /* 0, ACQ_PROXY_PLAIN or ACQ_PROXY_TUNNEL */
    const char        *proxy_display;      /* the client's: errors name the proxy */
    size_t             out_len, out_pos;
    int                sends;              /* requests begun by this transfer */
    int                sock_errno;         /* why socket() failed, or 0 */
    int                head, head_done;    /* answer: 2 final, 1 1xx; its blank line came */
    acq_sockets_t     *sockets;            /* the client's, shared by its handles */
    size_t             max_bytes;
    int                too_large;
    char               retry_after[64];    /* of the final response */
    char               errbuf[CURL_ERROR_SIZE];
} acq_transport_t;

typedef struct acq_result_t {
    CURLcode code;
    long     status;
    int      maybe_sent;                   /* some request bytes may have left */
    long     connect_status;               /* the proxy's answer to CONNECT, or 0 */
    int      proxy_failed;                 /* on the proxy leg: nothing reached Acquire */
} acq_result_t;

#define ACQ_UA_MAX 160
/* cfg->user_agent, or "lua-acquire/V libcurl/V" written into buf: the
   User-Agent belongs to the transport that sends it. */
const char *transport_user_agent(const acq_config_t *cfg, char buf[ACQ_UA_MAX]);
/* 0 on success; on failure *what says what could not be set up. */
/* header_lines: NULL-terminated "Name: value" lines. */
int   transport_init(acq_transport_t *t, const acq_config_t *cfg,
                     const char *const *header_lines, const char **what);
/* -1 as transport_prepare */
int   transport_perform(acq_transport_t *t, const char *url,
                        const char *body, size_t len, acq_result_t *r);
/* perform in two halves, for a multi handle; body NULL: a GET. Every
   transfer gets an easy handle of its own, made from the template (see
   transport.c: libcurl before 8.1.0 reads freed memory when a handle is
   reused). -1 when libcurl cannot make one (out of memory). */
int   transport_prepare(acq_transport_t *t, const char *url,
                        const char *body, size_t len);
void  transport_finish(acq_transport_t *t, CURLcode code, acq_result_t *r);
/* dst makes its transfers from src's template (and shares its
   connections); dst must not outlive src. */
void  transport_dup(acq_transport_t *dst, const acq_transport_t *src, void *priv);
/* After fork(): every socket of the set made /dev/null, so that closing
   them (libcurl's cleanup) touches nothing of the parent's. */
void  transport_disown(acq_sockets_t *s);
/* After fork(): the share (the parent's connections) dropped, a new one
   made. 0 on success. */
int   transport_renew(acq_transport_t *t);
void  transport_close(acq_transport_t *t);
/* Pushes nil, err for a failed transfer; returns 2. */
int   transport_push_error(lua_State *L, const acq_transport_t *t,
                           const acq_result_t *r, const acq_secret_t *secret);

/* ---- client.c: the acquire.Client userdata -------------------------- */
#define ACQ_MAX_CONCURRENCY 64                  /* create_cases' transfers at once */
#define ACQ_MAX_RATE        10000               /* create_cases' requests per second, at most */
#define ACQ_MIN_RATE        0.01                /* and at least (1 / rate stays under ACQ_MAX_WAIT) */
typedef struct acq_slot_t acq_slot_t;           /* batch.c */
typedef struct acq_batch_t acq_batch_t;         /* batch.c: the multi handle and its slots */

typedef struct acq_client_t {
    int       open;
    int       strict, max_retries;
    uint64_t  rng;                    /* backoff jitter */
    char     *url;                    /* base + path + "?contactId=", then the id */
    size_t    prefix_len;
    char     *key;                    /* the secrets, kept only to redact them */
    size_t    key_len, secrets_len;
    acq_secret_t secrets[ACQ_MAX_SECRETS];   /* into key: the key first */
    char     *proxy_display;          /* NULL: no proxy */
    int       debug;                  /* 0, 1, 2: as the option */
    int       logger;                 /* registry ref of the logger, or LUA_NOREF */
    int       claims;                 /* registry ref: the case ids its calls have (reconcile.c) */
    int       logging;                /* the logger runs: the client is not to be used */
    acq_buf_t req;                    /* request body, reused */
    acq_transport_t t;
    acq_batch_t *batch;               /* create_cases: made on first use */
    int       busy;                   /* create_cases is running (on_progress) */
    void     *run;                    /* its state (batch.c), while it runs */
    long      reconcile_ms;           /* -1: off */
    long      timeout_ms;             /* a transfer's; create_cases keeps it itself */
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
/* Looks cases up (the list, page by page, retried as the policy allows:
   a read creates nothing). Pushes the matching cases (1) or nil, err (2). */
int   client_find(lua_State *L, acq_client_t *c, long long id, const acq_filter_t *f);
/* After a call failed with maybe_created (err at idx): when the client
   reconciles, looks for the case and replaces nil, err by res (returns 1)
   or notes in err what it found (returns 2). sent: the opts at that index;
   started: when the first attempt began (seconds since the epoch). */
int   client_reconcile(lua_State *L, acq_client_t *c, long long id, int sent,
                       double started, int err);
/* This res (at idx) is a request's of c's: its case can settle no other. */
void  client_claim(lua_State *L, acq_client_t *c, int res);
double client_clock(void);
/* The log (debug = true | "body"): after a transfer, never inside one.
   pfx: "" or "item K: ". err: the err of a failed attempt (absolute index),
   wait: the delay before the next, or -1 (giving up). */
void  client_log_attempt(lua_State *L, acq_client_t *c, const acq_transport_t *t,
                         const acq_result_t *r, const char *pfx, int attempt,
                         const char *url, const char *body, size_t len);
void  client_log_failure(lua_State *L, acq_client_t *c, const char *pfx, int attempt,
                         int err, double wait);
/* Raises when c's own logger is running (it must not use its client). */
void  client_check_reentry(lua_State *L, acq_client_t *c);
int   client_l_find_cases(lua_State *L);
int   client_l_default_find_cases(lua_State *L);
int   batch_l_create_cases(lua_State *L);
int   batch_l_default_create_cases(lua_State *L);
void  batch_release(acq_client_t *c);
/* Items of the running create_cases, for contact id, whose outcome is still
   to come (in flight or waiting to retry): their cases may exist unclaimed. */
int   batch_live(acq_client_t *c, long long id);
int   client_l_new(lua_State *L);
int   client_l_create_case(lua_State *L);
int   client_l_close(lua_State *L);
int   client_l_tostring(lua_State *L);
int   client_l_configure(lua_State *L);
int   client_l_default_create_case(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
