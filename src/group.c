/*
 * group.c: client:group(), many pending calls driven together. A group has
 * one libcurl multi handle and one epoll descriptor for the sockets of all
 * its calls, as create_cases has one multi handle for its batch: a loop
 * waits on one descriptor and one timer for any number of calls, and one
 * g:step() reads every answer that came, lets the call engine decide each,
 * and sends every request that is due, together. Its calls are pending
 * calls (pending.c) whose step() drives the whole group; g:step() returns
 * the calls that finished since the last one, each once. acquire.cqueues
 * drives its calls this way: a pending call of its own each took a third
 * more CPU a call than a batch (make bench, "Event loops").
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "pending.h"

/* A socket in the group's epoll set. libcurl takes a connection's socket out
   when its transfer ends and puts it back when the next reuses it: two
   epoll_ctl a call. A connection of the client's stays in the set, idle,
   until libcurl closes it (the client's sockets say so first: forget) or it
   wakes the set while idle (the peer closed it: out then). */
typedef struct g_sock_t {
    curl_socket_t fd;
    uint32_t      events;         /* registered */
    int           wanted;         /* libcurl's now; 0: idle */
} g_sock_t;

typedef struct acq_group_t {
    acq_client_t *c;
    CURLM        *multi;          /* NULL once its client is closed */
    int           epfd;           /* the sockets of its calls, and wake */
    int           wake;           /* an eventfd: a call finished outside g:step() */
    int           woken;          /* wake is readable */
    g_sock_t      socks[2 * ACQ_MAX_SOCKETS];   /* in the epoll set, besides wake */
    int           nreg;
    int           nwanted;        /* libcurl's now (none: no epoll_wait needed) */
    int           nloose;         /* of them, in the set but off the books (books full) */
    int           stepping;       /* inside g:step(): what finishes is returned, no wake */
    int           asked;          /* timeout() was asked since the last step: a loop may sleep */
    int           closed;         /* g:close() was called */
    double        timer_at;       /* libcurl's timer: monotonic, or -1 */
    int           ref;            /* registry: { {client} (weak), finished {call...} } */
    int           nfinished;
    pending_t    *calls;          /* unfinished, by gnext (each held by its R_SELF) */
    int           ncalls;
    long          pid;
    pthread_t     thread;
    struct acq_group_t *next;     /* in c->groups */
} acq_group_t;

enum { G_CLIENT = 1, G_DONE };

static int find_sock(const acq_group_t *g, curl_socket_t s) {
    int i;
    for (i = 0; i < g->nreg; i++)
        if (g->socks[i].fd == s) return i;
    return -1;
}

/* Out of the set, and off the books. */
static void unwatch(acq_group_t *g, int i) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, g->socks[i].fd, &ev);
    if (g->socks[i].wanted) g->nwanted--;
    g->socks[i] = g->socks[--g->nreg];
}

/* A connection of the client's: libcurl closes it through the client's
   socket set, which tells every group first (forget). Anything else (a
   resolver's pipe) is closed without a word, and leaves the set at once. */
static int connection(const acq_group_t *g, curl_socket_t s) {
    int i;
    if (g->c == NULL) return 0;
    for (i = 0; i < g->c->sockets.n; i++)
        if (g->c->sockets.fd[i] == s) return 1;
    return 0;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *ud, void *sockp) {
    acq_group_t *g = (acq_group_t *)ud;
    struct epoll_event ev;
    int i = find_sock(g, s);
    (void)easy;
    (void)sockp;
    memset(&ev, 0, sizeof ev);
    if (what == CURL_POLL_REMOVE) {
        if (i < 0) {                              /* (in the set, off the books: books full) */
            if (epoll_ctl(g->epfd, EPOLL_CTL_DEL, s, &ev) == 0 && g->nloose > 0) {
                g->nloose--;
                g->nwanted--;
            }
        } else if (!connection(g, s)) {
            unwatch(g, i);
        } else if (g->socks[i].wanted) {          /* idle: stays in the set */
            g->socks[i].wanted = 0;
            g->nwanted--;
        }
        return 0;
    }
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    ev.data.fd = s;
    if (i >= 0) {                                 /* in the set: no syscall unless it changed */
        if (g->socks[i].events != ev.events) {
            if (epoll_ctl(g->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
                epoll_ctl(g->epfd, EPOLL_CTL_ADD, s, &ev);
            g->socks[i].events = ev.events;
        }
        if (!g->socks[i].wanted) {
            g->socks[i].wanted = 1;
            g->nwanted++;
        }
        return 0;
    }
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, s, &ev) != 0 &&
        (errno != EEXIST || epoll_ctl(g->epfd, EPOLL_CTL_MOD, s, &ev) != 0))
        return 0;
    if (g->nreg == (int)(sizeof g->socks / sizeof *g->socks))
        for (i = 0; i < g->nreg; i++)             /* room: an idle one goes */
            if (!g->socks[i].wanted) {
                unwatch(g, i);
                break;
            }
    if (g->nreg < (int)(sizeof g->socks / sizeof *g->socks)) {
        g->socks[g->nreg].fd = s;
        g->socks[g->nreg].events = ev.events;
        g->socks[g->nreg].wanted = 1;
        g->nreg++;
    }
    else
        g->nloose++;                               /* (off the books: counted, still watched) */
    g->nwanted++;
    return 0;
}

/* The client's socket set, before libcurl closes fd: out of every group's set
   (a descriptor closed in it would leave it by itself, unless another
   process holds it too: a forked child's copy keeps it there, and the number
   goes to the next socket). Not in a child, whose sets are the parent's. */
static void forget(void *owner, curl_socket_t fd) {
    acq_group_t *g;
    for (g = (acq_group_t *)((acq_client_t *)owner)->groups; g != NULL; g = g->next) {
        int i = g->pid == client_pid() ? find_sock(g, fd) : -1;
        if (i >= 0) unwatch(g, i);
    }
}

static int on_timer(CURLM *multi, long ms, void *ud) {
    acq_group_t *g = (acq_group_t *)ud;
    (void)multi;
    g->timer_at = ms < 0 ? -1 : client_monotonic() + (double)ms / 1000.0;
    return 0;
}

CURLM *group_multi(acq_group_t *g) { return g->multi; }

/* Outside g:step(): a loop asleep on the group wakes (a call joined, and is
   to be sent; or one finished and is to be reported). A loop sleeps only
   after it asked timeout() (how long), so none is asleep before. */
static void wake(acq_group_t *g) {
    uint64_t one = 1;
    if (g->stepping || g->woken || !g->asked) return;   /* (no loop asleep on it) */
    if (write(g->wake, &one, sizeof one) == (ssize_t)sizeof one) g->woken = 1;
}
int group_fd(acq_group_t *g) { return g->epfd; }

static void push_slot(lua_State *L, acq_group_t *g, int slot) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->ref);
    lua_rawgeti(L, -1, slot);
    lua_remove(L, -2);
}

void group_add(lua_State *L, acq_group_t *g, pending_t *p, int idx) {
    idx = acq_absindex(L, idx);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);   /* held until it finishes */
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, R_SELF);
    lua_pop(L, 1);
    p->gprev = NULL;
    p->gnext = g->calls;
    if (g->calls) g->calls->gprev = p;
    g->calls = p;
    g->ncalls++;
    wake(g);
}

/* Off the group: it is finished, and no longer refers to the group (which
   may be collected before it). */
static void unlink_call(acq_group_t *g, pending_t *p) {
    if (p->gprev) p->gprev->gnext = p->gnext;
    else g->calls = p->gnext;
    if (p->gnext) p->gnext->gprev = p->gprev;
    p->gnext = p->gprev = NULL;
    p->group = NULL;
    p->multi = NULL;
    g->ncalls--;
}

void group_finished(lua_State *L, pending_t *p, int report) {
    acq_group_t *g = p->group;
    if (g == NULL) return;                     /* (once) */
    unlink_call(g, p);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    lua_rawgeti(L, -1, R_SELF);
    lua_pushnil(L);
    lua_rawseti(L, -3, R_SELF);
    if (report) {
        push_slot(L, g, G_DONE);
        lua_insert(L, -2);
        lua_rawseti(L, -2, ++g->nfinished);
        wake(g);
    }
    lua_pop(L, 2);
}

/* The answers that came, each to its call's engine; 64 at a time, read
   before any is decided (deciding removes a transfer, and its message). */
static void collect(lua_State *L, acq_group_t *g) {
    for (;;) {
        pending_t *ended[64];
        CURLcode codes[64];
        int i, n = 0, queued;
        CURLMsg *msg;
        while (n < 64 && (msg = curl_multi_info_read(g->multi, &queued)) != NULL) {
            pending_t *p = NULL;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&p);
            if (p == NULL) continue;
            ended[n] = p;
            codes[n++] = msg->data.result;
        }
        if (n == 0) return;
        for (i = 0; i < n; i++) pending_ended(L, ended[i], codes[i]);
    }
}

/* Events of idle sockets (the peer closed an idle connection): those leave
   the set, and are no transfer's; the rest stay in ev. */
static int reap(acq_group_t *g, struct epoll_event *ev, int n) {
    int i, k = 0;
    for (i = 0; i < n; i++) {
        int j = ev[i].data.fd == g->wake ? -1 : find_sock(g, ev[i].data.fd);
        if (j >= 0 && !g->socks[j].wanted) unwatch(g, j);
        else ev[k++] = ev[i];
    }
    return k;
}

void group_drive(lua_State *L, acq_group_t *g) {
    struct epoll_event ev[64];
    int i, n, waited;
    pending_t *p, *next;
    double now;
    if (g->multi == NULL) luaL_error(L, "acquire: client is closed");
    g->asked = 0;
    waited = g->nwanted > 0 || g->woken;
    n = waited ? epoll_wait(g->epfd, ev, 64, 0) : 0;
    for (i = 0; i < n; i++)
        if (ev[i].data.fd == g->wake) {
            uint64_t v;
            if (read(g->wake, &v, sizeof v) < 0) { /* (nothing to read: already clear) */ }
            g->woken = 0;
        }
    if (n > 0 && g->nreg > g->nwanted) n = reap(g, ev, n);   /* (none left: as if nothing was ready) */
    pending_act(g->multi, ev, n, g->wake, &g->timer_at);
    /* Nothing waited on, and idle sockets in the set (a retry's wait, a step
       that only sent): what woke the loop may be one of them, the peer
       closing it; one wait, without which the set would stay readable. */
    if (!waited && g->nreg > g->nwanted && (n = epoll_wait(g->epfd, ev, 64, 0)) > 0 &&
        (n = reap(g, ev, n)) > 0)
        pending_act(g->multi, ev, n, g->wake, &g->timer_at);
    collect(L, g);
    now = client_monotonic();                  /* the engine's waits that are over */
    for (p = g->calls; p != NULL; p = next) {
        next = p->gnext;
        pending_wait_over(L, p, now);
    }
}

double group_timeout(acq_group_t *g, double now) {
    double at = g->timer_at;
    long ms = -1;
    pending_t *p;
    g->asked = 1;
    if (g->multi == NULL || g->nfinished > 0) return 0;
    if (curl_multi_timeout(g->multi, &ms) == CURLM_OK && ms >= 0) {
        double t = now + (double)ms / 1000.0;
        if (at < 0 || t < at) at = t;
    }
    for (p = g->calls; p != NULL; p = p->gnext)
        if (p->state == S_WAIT && (at < 0 || p->wake_at < at)) at = p->wake_at;
    if (at < 0) return -1;
    return at > now ? at - now : 0;
}

/* ---- the Lua face ------------------------------------------------------ */

static acq_group_t *check_group(lua_State *L, int idx) {
    return (acq_group_t *)luaL_checkudata(L, idx, ACQ_MT_GROUP);
}

static void unlink_client(acq_group_t *g) {
    acq_group_t **q;
    if (g->c == NULL) return;
    for (q = (acq_group_t **)&g->c->groups; *q != NULL; q = &(*q)->next)
        if (*q == g) {
            *q = g->next;
            break;
        }
    g->c = NULL;
}

/* Its multi handle gone (its calls were cancelled first), off its client. */
static void drop_multi(acq_group_t *g) {
    if (g->multi) curl_multi_cleanup(g->multi);
    g->multi = NULL;
    if (g->pid == client_pid())                 /* (a child's set is the parent's) */
        while (g->nreg > 0) unwatch(g, g->nreg - 1);
    g->nreg = g->nwanted = g->nloose = 0;
    unlink_client(g);
}

/* Its calls cancelled (by; unless its client's close did it already), its
   multi handle gone; its descriptors stay until it is collected (a loop may
   have them registered). */
static void let_go(lua_State *L, acq_group_t *g, int by) {
    while (g->c != NULL && g->c->open && g->calls != NULL) {
        pending_t *p = g->calls;
        pending_cancel(L, p, by);
        if (g->calls == p) unlink_call(g, p);      /* (cancel unlinks it: never twice) */
    }
    drop_multi(g);
}

void group_release_all(acq_client_t *c) {
    while (c->groups != NULL) drop_multi((acq_group_t *)c->groups);
}

/* client:group() -> g */
int group_l_new(lua_State *L) {
    acq_client_t *c = client_check_open(L, 1);
    acq_group_t *g;
    client_check_reentry(L, c);
    client_check_fork(L, c);
    g = (acq_group_t *)acq_newuserdata(L, sizeof *g);
    memset(g, 0, sizeof *g);
    g->epfd = g->wake = -1;
    g->ref = LUA_NOREF;
    g->timer_at = -1;
    g->pid = client_pid();                       /* (its __gc closes what it opened, even on failure) */
    g->thread = pthread_self();
    acq_setmetatable(L, ACQ_MT_GROUP);
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    g->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g->multi = g->epfd >= 0 && g->wake >= 0 ? transport_multi_new() : NULL;
    if (g->multi == NULL)
        luaL_error(L, "acquire: cannot set up a group of pending calls (%s)",
                   g->epfd < 0 || g->wake < 0 ? strerror(errno) : "curl_multi_init failed");
    {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.fd = g->wake;
        epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->wake, &ev);
    }
    curl_multi_setopt(g->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(g->multi, CURLMOPT_SOCKETDATA, g);
    curl_multi_setopt(g->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(g->multi, CURLMOPT_TIMERDATA, g);
    lua_createtable(L, 2, 0);
    lua_createtable(L, 1, 0);                    /* the client, weakly: a group keeps no client */
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawseti(L, -2, G_CLIENT);
    lua_newtable(L);
    lua_rawseti(L, -2, G_DONE);
    g->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    g->c = c;
    g->next = (acq_group_t *)c->groups;
    c->groups = g;
    c->sockets.closing = forget;                    /* idle connections stay in its set */
    c->sockets.owner = c;
    c->release_pending = pending_release_all;       /* close lets go of it */
    return 1;
}

/* The group's client, checked open and not in its logger; at index top. */
static acq_client_t *checked_client(lua_State *L, acq_group_t *g) {
    acq_client_t *c;
    pending_check_owner(L, g->pid, g->thread, "a group of pending calls");
    if (g->closed) luaL_error(L, "acquire: the group is closed");
    if (g->c == NULL || g->multi == NULL) luaL_error(L, "acquire: client is closed");
    push_slot(L, g, G_CLIENT);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    c = client_check_open(L, -1);
    client_check_reentry(L, c);
    return c;
}

static int start_l(lua_State *L, int find) {
    acq_group_t *g = check_group(L, 1);
    acq_client_t *c;
    long long id;
    lua_settop(L, 3);
    c = checked_client(L, g);                      /* index 4 */
    id = request_check_contact_id(L, 2);
    client_check_fork(L, c);
    pending_start(L, c, 4, find, id, 3, g);
    return 1;
}

/* g:start_case(contactId, opts) -> p */
static int l_start_case(lua_State *L) { return start_l(L, 0); }

/* g:start_find(contactId [, filter]) -> p */
static int l_start_find(lua_State *L) { return start_l(L, 1); }

/* g:step() -> the calls finished since the last step (an array, maybe empty) */
static int l_step(lua_State *L) {
    acq_group_t *g = check_group(L, 1);
    lua_settop(L, 1);
    checked_client(L, g);
    g->stepping = 1;
    group_drive(L, g);
    g->stepping = 0;
    if (g->nfinished == 0) {                       /* (its list stays, empty) */
        lua_createtable(L, 0, 0);
        return 1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->ref);
    lua_rawgeti(L, -1, G_DONE);
    lua_createtable(L, 0, 0);
    lua_rawseti(L, -3, G_DONE);
    g->nfinished = 0;
    return 1;
}

static int l_pollfd(lua_State *L) {
    lua_pushinteger(L, check_group(L, 1)->epfd);
    return 1;
}

static int l_events(lua_State *L) {
    (void)check_group(L, 1);
    lua_pushliteral(L, "r");
    return 1;
}

/* Seconds until g:step() has something to do without the descriptor being
   ready; 0: at once; nil: only the descriptor can wake it. */
static int l_timeout(lua_State *L) {
    acq_group_t *g = check_group(L, 1);
    double t = group_timeout(g, client_monotonic());
    if (t < 0) lua_pushnil(L);
    else lua_pushnumber(L, t);
    return 1;
}

/* g:count() -> its unfinished calls */
static int l_count(lua_State *L) {
    lua_pushinteger(L, check_group(L, 1)->ncalls);
    return 1;
}

/* g:close(): its unfinished calls cancelled (reported by no step). Not from
   the client's logger, which runs inside a step of the group. */
static int l_close(lua_State *L) {
    acq_group_t *g = check_group(L, 1);
    if (g->ref == LUA_NOREF || g->pid != client_pid()) return 0;
    pending_check_owner(L, g->pid, g->thread, "a group of pending calls");
    if (g->c != NULL && g->c->open) client_check_reentry(L, g->c);
    g->closed = 1;
    let_go(L, g, ACQ_CANCEL_ASKED);
    return 0;
}

static int l_gc(lua_State *L) {
    acq_group_t *g = check_group(L, 1);
    if (g->pid == client_pid()) {               /* (a child's copy: nothing of it is ours) */
        if (g->ref != LUA_NOREF) let_go(L, g, ACQ_CANCEL_COLLECTED);
        if (g->epfd >= 0) close(g->epfd);
        if (g->wake >= 0) close(g->wake);
    }
    g->epfd = g->wake = -1;
    if (g->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, g->ref);
    g->ref = LUA_NOREF;
    return 0;
}

void group_open(lua_State *L) {
    static const luaL_Reg methods[] = {
        { "start_case", l_start_case }, { "start_find", l_start_find }, { "step", l_step },
        { "pollfd", l_pollfd }, { "events", l_events }, { "timeout", l_timeout },
        { "count", l_count }, { "close", l_close }, { NULL, NULL }
    };
    luaL_newmetatable(L, ACQ_MT_GROUP);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
#endif
    lua_newtable(L);
    acq_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, ACQ_MT_GROUP);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
