/*
 * call.h: the call engine (call.c). It decides the whole sequence of a
 * call (attempts, retries and their waits, the deadline, reconcile's wait,
 * lookups and settling, every log line and error text) and does no I/O:
 * a driver asks call_next what to do, does it (sends the request, or waits)
 * and reports what it saw. Drivers: client.c (one call at a time), batch.c
 * (many on a curl multi handle), acquire.ngx (cosockets, through the Lua
 * face, acquire.engine). The engine never sees libcurl or a socket.
 *
 *          contactId, opts
 *                │
 *   call_next ◀──┴── observation (bytes left? stage, status, body, …)
 *       │
 *       └──▶ SEND (method, url, body) · WAIT (seconds) · DONE (res | nil, err)
 */
#ifndef ACQUIRE_CALL_H
#define ACQUIRE_CALL_H

#include "core.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define ACQ_MT_ENGINE        "acquire.Engine"
#define ACQ_MT_CALL          "acquire.Call"
#define ACQ_DEBUG_BODY_CAP   16384   /* debug = "body" logs this much of each body */

/* What a client's calls share: the options that steer them, the secrets
   every text is redacted of, the claims set and the in-flight count. */
typedef struct acq_engine_t {
    int      max_retries, strict, debug;       /* debug: 0, 1, 2 ("body") */
    long     reconcile_ms;                     /* -1: off */
    double   timeout;                          /* seconds */
    int      whole_call;                       /* timeout bounds the whole call, retries included */
    int      wait_in_flight;                   /* twins still to come can end while it waits */
    int      proxy_mode;                       /* 0, ACQ_PROXY_MODE_PLAIN, ACQ_PROXY_MODE_TUNNEL */
    long     max_response_bytes;
    uint64_t rng;                              /* backoff jitter */
    char    *base;      size_t base_len;       /* base_url, owned */
    char    *proxy_display;                    /* owned; NULL: no proxy */
    char    *keys;      size_t keys_len;       /* the secrets' bytes, owned, wiped */
    acq_secret_t secrets[ACQ_MAX_SECRETS];     /* into keys: the API key first */
    int      claims, inflight;                 /* registry refs: case ids taken; live calls by content */
    acq_buf_t req;                             /* a request body being encoded, reused */
} acq_engine_t;

/* From a checked config; 0 on ENOMEM (then engine_free is still safe). */
int   engine_init(lua_State *L, acq_engine_t *e, const acq_config_t *cfg);
void  engine_free(lua_State *L, acq_engine_t *e);
/* This res (at idx) is a request's: its case settles no other call. */
void  engine_claim(lua_State *L, acq_engine_t *e, int res);

/* Where a transfer failed, as its driver saw it. */
enum {
    ACQ_STAGE_NONE = 0,
    ACQ_STAGE_CONNECT,          /* DNS, connect: nothing sent */
    ACQ_STAGE_TLS,              /* the TLS handshake with Acquire */
    ACQ_STAGE_SEND,             /* writing the request */
    ACQ_STAGE_RECV,             /* waiting for or reading the answer */
    ACQ_STAGE_PROXY_CONNECT,    /* could not reach the proxy */
    ACQ_STAGE_PROXY_ANSWER,     /* the proxy answered (proxy_status): refused */
    ACQ_STAGE_PROXY_TUNNEL,     /* the tunnel closed before TLS to Acquire was up */
    ACQ_STAGE_PROXY             /* another failure of the proxy's leg (detail) */
};

/* What the driver saw of one attempt, or of a wait (then only the clocks). */
typedef struct acq_obs_t {
    double      now;            /* the driver's monotonic clock, seconds */
    double      wall;           /* the wall clock, seconds since the epoch */
    double      elapsed;        /* the attempt's seconds */
    long        status;         /* an HTTP status seen, or 0 */
    int         answered;       /* a whole answer came: status, body, retry_after */
    const char *body;   size_t body_len;
    const char *retry_after;    /* the header's value, or NULL */
    int         stage;          /* not answered: where it failed (ACQ_STAGE_*) */
    int         sent;           /* request bytes may have left */
    int         timed_out;
    int         too_large;      /* the answer exceeded max_response_bytes */
    const char *detail;         /* the driver's own words for the failure */
    long        code;           /* libcurl's CURLcode, or 0 */
    int         sys_errno;      /* why a socket could not be opened, or 0 */
    long        proxy_status;   /* the proxy's answer (CONNECT's, or a 407), or 0 */
} acq_obs_t;

enum { ACQ_SEND = 1, ACQ_WAIT, ACQ_DONE };

/* A call's values, in the table its driver anchors (V_ANCHOR: the driver's
   own, e.g. what keeps the engine alive), and its phases. */
enum { V_BODY = 1, V_OPTS, V_KEY, V_ERR, V_FOUND, V_FILTER, V_LINES, V_ANCHOR };
enum { P_START = 0, P_ATTEMPT, P_RETRY, P_RECONCILE, P_TWINS, P_DONE };

typedef struct acq_step_t {
    int         action;         /* ACQ_SEND, ACQ_WAIT, ACQ_DONE */
    const char *method, *url, *body;   /* SEND: body NULL for a GET */
    size_t      len;
    double      deadline;       /* SEND: the attempt ends by then (driver's clock), 0: none */
    double      wait;           /* WAIT: seconds */
    int         reconcile;      /* WAIT: the wait before reconcile's lookup */
    double      pause;          /* the server asked every request to hold this long, or -1 */
    int         nret;           /* DONE: res (1) or nil, err (2) pushed */
    int         lines;          /* log lines waiting in the call's values (call_drain) */
} acq_step_t;

/* One call's state. Its Lua values (the body, opts, err, the cases found,
   log lines) are in a table the driver anchors: vals below. */
typedef struct acq_call_t {
    acq_engine_t *e;
    int       find;             /* a lookup only (find_cases) */
    int       phase;
    long long id;
    int       attempt, page;
    int       counted;          /* counted in the engine's in-flight set */
    double    started;          /* wall clock of the first attempt */
    double    deadline, until;  /* driver's clock: the call's end (0: none); the in-flight wait's */
    char      pfx[32];          /* "" or "item K: ", before every log line */
    char      url[ACQ_LIST_URL_MAX];
} acq_call_t;

/* A create call for id: pushes its values table. The body is encoded
   from opts (raises on misuse), or taken from body (an index, or 0). */
void  call_create(lua_State *L, acq_call_t *call, acq_engine_t *e, long long id,
                  int opts, int body);
/* A lookup of id's cases matching the filter (table index, or 0): pushes
   its values table. */
void  call_find(lua_State *L, acq_call_t *call, acq_engine_t *e, long long id, int filter);
/* The next step, given what the last one came to (NULL: the first). */
void  call_next(lua_State *L, acq_call_t *call, int vals, const acq_obs_t *obs, acq_step_t *s);
/* Pushes the log lines waiting (level, text pairs) into the table at
   out... : calls fn(level, text) for each, in order, then forgets them. */
void  call_drain(lua_State *L, int vals, void (*fn)(lua_State *L, void *ud, const char *level),
                 void *ud);
/* Pushes the err a call waiting for reconcile's lookup will settle. */
void  call_push_err(lua_State *L, int vals);
/* A call left unfinished (its driver stopped): out of the in-flight set. */
void  call_abandon(lua_State *L, acq_call_t *call, int vals);
/* Who ended a call unfinished: its user, its collection, its client's close. */
enum { ACQ_CANCEL_ASKED, ACQ_CANCEL_COLLECTED, ACQ_CANCEL_CLOSED };
/* A call its driver ends unfinished (sent: the transfer on its way may have
   let request bytes leave): abandoned; pushes err { kind = "cancelled",
   maybe_created }, and queues a warn line in vals (s->lines) when it may
   have created a case and nobody asked. */
void  call_cancel(lua_State *L, acq_call_t *call, int vals, int sent, int why, acq_step_t *s);
/* engine.c: the Lua face (acquire.engine, call:next) */
void  engine_open(lua_State *L);
int   engine_l_new(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
