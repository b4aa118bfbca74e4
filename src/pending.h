/*
 * pending.h: what pending.c (a pending call) and group.c (many pending
 * calls on one multi handle and one descriptor) share.
 */
#ifndef ACQ_PENDING_H
#define ACQ_PENDING_H
#include <pthread.h>
#include "transport.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)        /* (as every header: only luaopen_acquire is exported) */
#endif

enum { S_SEND = 1, S_WAIT, S_DONE };
/* A pending call's registry table: its values, client, results, and (in a
   group, until it finishes) itself. */
enum { R_VALS = 1, R_CLIENT, R_RES, R_ERR, R_SELF };

struct acq_group_t;

/* What a call needs until it is over: its engine call and its transfers.
   Not in the userdata: it goes back to its client when the call ends, with
   its response buffer, for the next call (memory Lua's collector never sees,
   as create_case's is). */
typedef struct pending_core {
    acq_call_t           call;
    acq_transport_t      t;
    acq_buf_t            kept;       /* in the client's spares: the last call's response buffer */
    struct pending_core *next;       /* in the client's spares */
} pending_core;

typedef struct pending_t {
    acq_call_t     *call;            /* &core->call; NULL once over */
    acq_client_t   *c;               /* alive while client_ref holds it */
    acq_transport_t *t;              /* &core->t: this call's transfers, from c's template */
    pending_core   *core;
    CURLM          *multi;           /* its own, or its group's */
    int             epfd;            /* its own: -1 once given back with multi, or in a group */
    int             shown;           /* the descriptor pollfd() names: epfd, the last, or the group's */
    curl_socket_t   socks[4];        /* in the epoll set now */
    int             nsocks;
    int             dirty;           /* more than socks could say: the set is not handed on */
    int             wake;            /* an eventfd in the set, readable: cancel()'s, or -1 */
    int             state;           /* S_SEND (a transfer on multi), S_WAIT, S_DONE */
    int             attached;        /* t.easy is on multi */
    double          wake_at;         /* S_WAIT: monotonic */
    double          timer_at;        /* libcurl's timer: monotonic, or -1 */
    int             ref;             /* registry: { vals, client, results... } */
    int             nret;            /* S_DONE: 1 (res) or 2 (nil, err) */
    long            pid;
    pthread_t       thread;
    struct pending_t *next, *prev;   /* in c->pending while its transfer is open */
    int             linked;
    struct acq_group_t *group;       /* the group it runs in, or NULL */
    struct pending_t *gnext, *gprev; /* in its group's unfinished calls */
} pending_t;

/* pending.c */
/* Pushes a new pending call of client c (at index client) started with the
   arguments at arg; in group g (its multi handle), or its own when NULL. */
pending_t *pending_start(lua_State *L, acq_client_t *c, int client, int find, long long id,
                         int arg, struct acq_group_t *g);
/* libcurl's socket callback, into epoll set epfd: 1 when s was added, -1
   removed, 0 changed or nothing (owner: curl_multi_assign's, once added). */
int pending_watch(CURLM *multi, int epfd, curl_socket_t s, int what, void *sockp, void *owner);
/* What epoll_wait said of multi's sockets (n of ev; skip: not a socket of
   it), to libcurl, and its timer when due or when nothing was ready. */
struct epoll_event;
void pending_act(CURLM *multi, const struct epoll_event *ev, int n, int skip, double *timer_at);
/* Its transfer ended with code: the engine's next step taken. */
void pending_ended(lua_State *L, pending_t *p, CURLcode code);
/* In S_WAIT and due: the engine's next step taken (0 when not due). */
int  pending_wait_over(lua_State *L, pending_t *p, double now);
void pending_check_owner(lua_State *L, long pid, pthread_t thread, const char *what);
/* client:close(): its pending calls cancelled, its groups let go (client.c calls it) */
void pending_release_all(lua_State *L, acq_client_t *c);
/* Ends it unfinished (by: ACQ_CANCEL_ASKED, COLLECTED or CLOSED): nil, err { kind = "cancelled" }. */
void pending_cancel(lua_State *L, pending_t *p, int by);

/* group.c */
/* Drives every call of g: what is ready, without blocking. */
void group_drive(lua_State *L, struct acq_group_t *g);
/* p (of g) is finished: off the unfinished list, onto the list step() reports. */
void group_finished(lua_State *L, pending_t *p, int report);
/* A new call p (its userdata at idx) joins g, before its first step. */
void group_add(lua_State *L, struct acq_group_t *g, pending_t *p, int idx);
double group_timeout(struct acq_group_t *g, double now);   /* seconds, or -1 */
int  group_fd(struct acq_group_t *g);
CURLM *group_multi(struct acq_group_t *g);
/* client:close(): every group of c lets go of its multi handle. */
void group_release_all(acq_client_t *c);
int  group_l_new(lua_State *L);
void group_open(lua_State *L);
#define ACQ_MT_GROUP "acquire.Group"

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif
#endif
