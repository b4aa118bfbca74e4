/*
 * transport.h: what moves bytes (libcurl), on top of the core: the easy
 * handle of one call (transport.c), the Client (client.c) and the batch
 * on a multi handle (batch.c). Only these and lua_acquire.c see libcurl.
 */
#ifndef ACQUIRE_TRANSPORT_H
#define ACQUIRE_TRANSPORT_H

#include <curl/curl.h>
#include "batch.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

/* ---- transport.c: libcurl easy handle ------------------------------- */
#define ACQ_PROXY_PLAIN      ACQ_PROXY_MODE_PLAIN
#define ACQ_PROXY_TUNNEL     ACQ_PROXY_MODE_TUNNEL

/* The sockets libcurl opened for one client, open now: after fork() they
   are the parent's too, and the child points them at /dev/null before its
   libcurl closes them (a TLS close would write into the parent's session). */
#define ACQ_MAX_SOCKETS      128
typedef struct acq_sockets_t {
    int n;
    curl_socket_t fd[ACQ_MAX_SOCKETS];
    /* told of each socket before libcurl closes it (group.c: its epoll sets
       keep a client's idle connections registered), or NULL */
    void (*closing)(void *owner, curl_socket_t fd);
    void *owner;
} acq_sockets_t;

typedef struct acq_transport_t {
    CURL              *easy;               /* this transfer's: a fresh one each time */
    CURL              *tmpl;               /* the options every transfer starts from */
    CURLSH            *share;              /* connections, DNS, TLS sessions; owner only */
    CURLSH           **sharep;             /* the owner's share (renewed after fork()): every transfer's */
    CURLM             *idle[8];            /* owner: multi handles pending calls gave back */
    int                idle_fd[8];         /* each one's descriptor (a pending call's epoll), or -1 */
    int                nidle;
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
    char               detail[192];        /* a failure's words, when not libcurl's */
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
/* A new multi handle, as every multi handle of the module is set. */
CURLM *transport_multi_new(void);
/* A multi handle for a pending call: one the owner kept, or a new one
   (MAXCONNECTS set); NULL on ENOMEM. Given back with no transfer on it, it
   is kept for the next (its callbacks cleared), or cleaned up. */
/* A multi handle kept between pending calls, with the descriptor that went
   with it (*fd: -1 when none; the owner closes it with the handle). give:
   1 when kept, 0 when the owner has enough (both stay the caller's). */
CURLM *transport_multi_take(acq_transport_t *owner, int *fd);
int   transport_multi_give(acq_transport_t *owner, CURLM *m, int fd);
/* What the transfer saw, as the call engine reads it (o's strings are t's). */
void  transport_observe(acq_transport_t *t, const acq_result_t *r, double now, double wall,
                        acq_obs_t *o);

/* ---- client.c: the acquire.Client userdata -------------------------- */
typedef struct acq_slot_t acq_slot_t;           /* batch.c */
typedef struct acq_batch_t acq_batch_t;         /* batch.c: the multi handle and its slots */

typedef struct acq_client_t {
    int       open;
    acq_engine_t e;                   /* what its calls share: options, secrets, claims */
    int       logger;                 /* registry ref of the logger, or LUA_NOREF */
    int       logging;                /* the logger runs: the client is not to be used */
    acq_transport_t t;
    acq_batch_t *batch;               /* create_cases: made on first use */
    void    (*release_batch)(struct acq_client_t *c);   /* batch.c's, set with batch: client.c
                                         lets it go without depending on batch.c */
    void     *pending;                /* its unfinished pending calls (pending.c's list) */
    void     *cores;                  /* what finished pending calls gave back (pending.c's) */
    int       ncores;
    void     *groups;                 /* its groups of pending calls (group.c's list) */
    void    (*release_pending)(lua_State *L, struct acq_client_t *c);   /* pending.c's: close
                                         ends them, as release_batch ends a batch */
    int       busy;                   /* create_cases is running (on_progress) */
    void     *run;                    /* its state (batch.c), while it runs */
    int       run_ref;                /* that state, kept alive in the registry */
    long      timeout_ms;             /* a transfer's; create_cases keeps it itself */
    long      pid;                    /* the process whose connections these are */
    acq_sockets_t sockets;            /* every socket its handles hold */
} acq_client_t;

acq_client_t *client_check_open(lua_State *L, int idx);
/* After fork(): the connections belong to the parent; start afresh. */
void  client_check_fork(lua_State *L, acq_client_t *c);
long  client_pid(void);                      /* getpid(), cached until a fork() */
/* Pushes the default client (configured, or from the environment). */
acq_client_t *client_default(lua_State *L);
/* The blocking driver of a call (call.c): pushes res (1) or nil, err (2).
   resume: NULL at the call's start, or what a wait came to. */
int   client_drive(lua_State *L, acq_client_t *c, acq_call_t *call, int vals,
                   const acq_obs_t *resume);
/* The engine's log lines waiting in vals, to the logger or stderr. */
void  client_write_lines(lua_State *L, acq_client_t *c, int vals);
void  client_observe_wait(acq_obs_t *o);          /* the clocks, after a wait */
double client_clock(void);                         /* the wall clock */
double client_monotonic(void);
/* Raises when c's own logger is running (it must not use its client). */
void  client_check_reentry(lua_State *L, acq_client_t *c);
int   client_l_find_cases(lua_State *L);
int   client_l_default_find_cases(lua_State *L);
int   batch_l_create_cases(lua_State *L);
int   batch_l_default_create_cases(lua_State *L);
int   client_l_new(lua_State *L);
int   client_l_env(lua_State *L);
/* ---- pending.c: the non-blocking driver (pollfd, events, timeout, step) */
#define ACQ_MT_PENDING "acquire.Pending"
int   pending_l_start_case(lua_State *L);
int   pending_l_start_find(lua_State *L);
void  pending_open(lua_State *L);
int   client_l_create_case(lua_State *L);
int   client_l_close(lua_State *L);
int   client_l_tostring(lua_State *L);
int   client_l_configure(lua_State *L);
int   client_l_default_create_case(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
