/*
 * pending.c: client:start_case and client:start_find, the non-blocking
 * driver of the call engine (call.c). A pending call is pollable in
 * cqueues' way (pollfd, events, timeout): its descriptor is an epoll
 * descriptor holding the sockets of its one transfer (libcurl tells which,
 * CURLMOPT_SOCKETFUNCTION), so any loop that waits on descriptors and
 * timers can drive it; step() does what is ready and never blocks, and the
 * engine's WAITs (retries, Retry-After, reconcile's wait) become the
 * timeout the loop sleeps. Each pending call has its own multi handle
 * (so one call's progress never hides another's), and its transfers come
 * from the client's template: they share its connections, DNS and TLS
 * sessions. Linux only (epoll), as the module's supported systems are.
 * A call started in a group (group.c) uses the group's multi handle and
 * descriptor instead: its step() drives the whole group.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "pending.h"



/* ---- libcurl's sockets and timer, into the epoll set ------------------ */

int pending_watch(CURLM *multi, int epfd, curl_socket_t s, int what, void *sockp, void *owner) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data.fd = s;
    if (what == CURL_POLL_REMOVE) return epoll_ctl(epfd, EPOLL_CTL_DEL, s, &ev) == 0 ? -1 : 0;
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (sockp != NULL) {                       /* in the set already (curl_multi_assign) */
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev) == 0 || errno != ENOENT) return 0;
    }
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev) != 0) return 0;
    curl_multi_assign(multi, s, owner);        /* one syscall an update, not a failing MOD first */
    return 1;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *ud, void *sockp) {
    pending_t *p = (pending_t *)ud;
    int i, r = pending_watch(p->multi, p->epfd, s, what, sockp, p);
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        for (i = 0; i < p->nsocks; i++)
            if (p->socks[i] == s) p->socks[i] = p->socks[--p->nsocks];
    } else if (r > 0) {
        if (p->nsocks < (int)(sizeof p->socks / sizeof *p->socks)) p->socks[p->nsocks++] = s;
        else p->dirty = 1;
    }
    return 0;
}

static int on_timer(CURLM *multi, long ms, void *ud) {
    pending_t *p = (pending_t *)ud;
    (void)multi;
    p->timer_at = ms < 0 ? -1 : client_monotonic() + (double)ms / 1000.0;
    return 0;
}

/* ---- the engine's steps ----------------------------------------------- */

static void push_ref(lua_State *L, pending_t *p, int slot) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    lua_rawgeti(L, -1, slot);
    lua_remove(L, -2);
}

/* A core for a new call: one a finished call gave back, or a new one. */
static pending_core *core_take(acq_client_t *c) {
    pending_core *k = (pending_core *)c->cores;
    if (k != NULL) {
        c->cores = k->next;
        c->ncores--;
        return k;
    }
    k = (pending_core *)malloc(sizeof *k);
    if (k != NULL) memset(&k->kept, 0, sizeof k->kept);
    return k;
}

static void core_free(pending_core *k) {
    if (k == NULL) return;
    buf_free(&k->kept);
    free(k);
}

/* Back to c with the call's response buffer (b), for the next call: as a
   batch's slots keep theirs. A buffer a large answer grew stays out. */
#define ACQ_KEPT_MAX ((size_t)64 * 1024)
static void core_give(acq_client_t *c, pending_core *k, acq_buf_t *b) {
    if (b->cap > 0 && b->cap <= ACQ_KEPT_MAX && k->kept.cap == 0) {
        k->kept = *b;
        k->kept.len = 0;
        memset(b, 0, sizeof *b);
    }
    if (c->open && c->ncores < ACQ_MAX_CONCURRENCY) {
        k->next = (pending_core *)c->cores;
        c->cores = k;
        c->ncores++;
    } else {
        core_free(k);
    }
}

static void detach(pending_t *p) {
    if (p->attached && p->t != NULL) curl_multi_remove_handle(p->multi, p->t->easy);
    p->attached = 0;
}

/* A finished call's transfer goes at once, not when the call is collected:
   the connection stays in the share for the client's next call, not pinned
   by the handle. */
static void drop_transfer(pending_t *p) {
    detach(p);
    if (p->core != NULL) {
        acq_buf_t body = p->core->t.body;
        memset(&p->core->t.body, 0, sizeof body);
        transport_close(&p->core->t);
        core_give(p->c, p->core, &body);
        buf_free(&body);                          /* (when not kept) */
        p->core = NULL;
        p->call = NULL;
        p->t = NULL;
    }
    if (p->linked) {                            /* off the client's list */
        if (p->prev) p->prev->next = p->next;
        else p->c->pending = p->next;
        if (p->next) p->next->prev = p->prev;
        p->next = p->prev = NULL;
        p->linked = 0;
    }
}

/* Once the loop has been told the call is over (step() returned true, or
   cancel()), and it no longer watches the descriptor: the multi handle and
   epoll descriptor go back to the client for its next pending call (the
   set emptied: a socket left in it would wake that call for another's
   bytes). Not before: a call can end inside start_case, before the loop
   has seen its descriptor, and a loop that then watched a descriptor the
   next call was given would watch it twice (libuv refuses: EEXIST). When
   the client has enough, the handle goes and the descriptor stays until the
   call is collected: a loop (cqueues) may still hold it registered, and a
   descriptor closed under it fails the loop's next update (EBADF). A
   descriptor handed on is never closed before the client is. */
static void hand_back(pending_t *p) {
    struct epoll_event ev;
    drop_transfer(p);
    memset(&ev, 0, sizeof ev);
    if (p->wake >= 0) {
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->wake, &ev);
        close(p->wake);
        p->wake = -1;
    }
    if (p->multi == NULL) return;
    if (p->group != NULL) {                        /* the group's: it stays */
        p->multi = NULL;
        return;
    }
    while (p->nsocks > 0) epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->socks[--p->nsocks], &ev);
    if (p->c->open && !p->dirty && transport_multi_give(&p->c->t, p->multi, p->epfd))
        p->epfd = -1;                              /* (the owner's process) */
    else
        curl_multi_cleanup(p->multi);
    p->multi = NULL;
}

/* The step the engine answered (its results, for DONE, on top: popped). */
static void follow(lua_State *L, pending_t *p, int vals, const acq_step_t *s) {
    if (s->lines) client_write_lines(L, p->c, vals);
    if (s->action == ACQ_DONE) {
        int i, top = lua_gettop(L);                /* the results: top - nret + 1 .. top */
        p->state = S_DONE;
        p->nret = s->nret;
        drop_transfer(p);
        lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
        for (i = 0; i < s->nret; i++) {
            lua_pushvalue(L, top - s->nret + 1 + i);
            lua_rawseti(L, -2, R_RES + i);
        }
        lua_settop(L, top - s->nret);
        if (p->group != NULL) group_finished(L, p, 1);
        return;
    }
    if (s->action == ACQ_WAIT) {
        p->state = S_WAIT;
        p->wake_at = client_monotonic() + s->wait;
        return;
    }
    /* (transport_prepare puts the transfer in the client's share: its
       connections, not a new one a call) */
    if (transport_prepare(p->t, s->url, s->body, s->len) != 0 ||
        curl_multi_add_handle(p->multi, p->t->easy) != CURLM_OK)
        luaL_error(L, "not enough memory");
    p->attached = 1;
    p->state = S_SEND;
}

/* The engine's next step, given what the last came to (NULL: the first). */
static void advance(lua_State *L, pending_t *p, const acq_obs_t *o) {
    acq_step_t s;
    int vals;
    push_ref(L, p, R_VALS);
    vals = lua_gettop(L);
    call_next(L, p->call, vals, o, &s);
    follow(L, p, vals, &s);
    lua_settop(L, vals - 1);
}

void pending_act(CURLM *multi, const struct epoll_event *ev, int n, int skip, double *timer_at) {
    int i, running = 0;
    for (i = 0; i < n; i++)
        if (ev[i].data.fd != skip)
            curl_multi_socket_action(multi, ev[i].data.fd,
                                     (ev[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                                     (ev[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                                     (ev[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0),
                                     &running);
    if (n <= 0 || (*timer_at >= 0 && client_monotonic() >= *timer_at)) {
        *timer_at = -1;
        curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
}

void pending_ended(lua_State *L, pending_t *p, CURLcode code) {
    acq_result_t r;
    acq_obs_t o;
    transport_finish(p->t, code, &r);
    transport_observe(p->t, &r, client_monotonic(), client_clock(), &o);
    detach(p);
    advance(L, p, &o);
}

int pending_wait_over(lua_State *L, pending_t *p, double now) {
    acq_obs_t o;
    if (p->state != S_WAIT || now < p->wake_at) return 0;
    client_observe_wait(&o);
    advance(L, p, &o);
    return 1;
}

/* Whatever is ready, without blocking: 1 once the call is over. */
static int step(lua_State *L, pending_t *p) {
    if (p->group != NULL) {                     /* unfinished, in its group */
        group_drive(L, p->group);
        return p->state == S_DONE;
    }
    for (;;) {
        if (p->state == S_DONE) return 1;
        if (p->state == S_WAIT) {
            if (!pending_wait_over(L, p, client_monotonic())) return 0;
            continue;
        }
        {
            struct epoll_event ev[8];
            int n, queued;
            CURLMsg *msg;
            CURLcode code = CURLE_OK;
            int ended = 0;
            n = p->nsocks > 0 || p->dirty ? epoll_wait(p->epfd, ev, 8, 0) : 0;
            pending_act(p->multi, ev, n, -1, &p->timer_at);
            while ((msg = curl_multi_info_read(p->multi, &queued)) != NULL) {
                if (msg->msg == CURLMSG_DONE && msg->easy_handle == p->t->easy) {
                    code = msg->data.result;
                    ended = 1;
                }
            }
            if (!ended) return 0;
            pending_ended(L, p, code);
        }
    }
}

/* ---- the Lua face ------------------------------------------------------ */

static pending_t *check_pending(lua_State *L, int idx) {
    pending_t *p = (pending_t *)luaL_checkudata(L, idx, ACQ_MT_PENDING);
    if (p->ref == LUA_NOREF) luaL_error(L, "acquire: the pending call was cancelled");
    return p;
}

/* Raises when this process or thread did not start it: its handles, and the
   connections they share, are not this one's to use. */
void pending_check_owner(lua_State *L, long pid, pthread_t thread, const char *what) {
    if (pid != client_pid())
        luaL_error(L, "acquire: %s cannot be driven in a child process (started in %d)", what,
                   (int)pid);
    if (!pthread_equal(thread, pthread_self()))
        luaL_error(L, "acquire: %s can only be driven by the thread that started it", what);
}

static void check_owner(lua_State *L, pending_t *p) {
    pending_check_owner(L, p->pid, p->thread, "a pending call");
}

/* cancel() from elsewhere (another coroutine, a callback) while a loop
   waits on the call's descriptor: made readable, so that the loop wakes and
   its step() returns true at once, not at the call's next timer. */
static void wake(lua_State *L, pending_t *p) {
    struct epoll_event ev;
    drop_transfer(p);
    if (p->group != NULL) {                     /* the group reports it, and wakes */
        group_finished(L, p, 1);
        return;
    }
    if (p->epfd < 0 || p->wake >= 0) return;
    p->wake = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake < 0) return;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = p->wake;
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->wake, &ev) != 0) {
        close(p->wake);
        p->wake = -1;
    }
}

static void release(lua_State *L, pending_t *p) {
    hand_back(p);
    if (p->epfd >= 0) close(p->epfd);
    p->epfd = -1;
    if (p->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, p->ref);
    p->ref = LUA_NOREF;
}

static void link_client(acq_client_t *c, pending_t *p) {
    p->next = (pending_t *)c->pending;                    /* the client's to end on close */
    if (p->next) p->next->prev = p;
    c->pending = p;
    p->linked = 1;
    c->release_pending = pending_release_all;
}

/* Pushes a pending call of client c (at idx), its engine call made by make
   (which pushes the call's values); started at once. */
pending_t *pending_start(lua_State *L, acq_client_t *c, int client, int find, long long id,
                         int arg, struct acq_group_t *g) {
    pending_t *p = (pending_t *)acq_newuserdata(L, sizeof *p);
    int ud = lua_gettop(L);
    memset(p, 0, sizeof *p);
    p->epfd = p->wake = -1;
    p->ref = LUA_NOREF;
    p->timer_at = -1;
    acq_setmetatable(L, ACQ_MT_PENDING);
    p->c = c;
    p->core = core_take(c);                               /* (its __gc gives it back) */
    if (p->core == NULL) {
        luaL_error(L, "not enough memory");
        return NULL;
    }
    p->call = &p->core->call;
    p->t = &p->core->t;
    memset(p->t, 0, sizeof *p->t);
    if (find) call_find(L, p->call, &c->e, id, lua_isnoneornil(L, arg) ? 0 : arg);
    else call_create(L, p->call, &c->e, id, arg, 0);     /* raises on misuse: nothing sent */
    lua_createtable(L, 5, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, R_VALS);
    lua_pushvalue(L, client);
    lua_rawseti(L, -2, R_CLIENT);
    p->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    p->pid = client_pid();
    p->thread = pthread_self();
    transport_dup(p->t, &c->t, p);
    p->t->body = p->core->kept;                           /* the last call's buffer, if any */
    memset(&p->core->kept, 0, sizeof p->core->kept);
    if (g != NULL) {                                      /* the group's multi and descriptor */
        p->group = g;
        p->multi = group_multi(g);
        p->shown = group_fd(g);
        link_client(c, p);
        group_add(L, g, p, ud);
        advance(L, p, NULL);                              /* SEND: added, sent by a step */
        lua_settop(L, ud);
        return p;
    }
    p->multi = transport_multi_take(&c->t, &p->epfd);   /* the client's, kept between calls */
    if (p->multi != NULL && p->epfd < 0) p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->shown = p->epfd;
    if (p->epfd < 0 || p->multi == NULL) {
        call_abandon(L, p->call, (push_ref(L, p, R_VALS), -1));
        release(L, p);
        luaL_error(L, "acquire: cannot set up a pending call (%s)",
                   p->multi == NULL ? "curl_multi_init failed" : strerror(errno));
    }
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    link_client(c, p);
    /* SEND: the transfer added, its timer due at once. Nothing moves until
       the loop's first step(): a loop that starts many calls sends their
       requests together, and its peer wakes once for them, not once a call
       (in make bench, sends interleaved with other calls' answers cost the
       client a third more CPU a call than a batch's). */
    advance(L, p, NULL);
    lua_settop(L, ud);
    return p;
}

/* client:start_case / start_find: the client's checks, then a pending call. */
static int start_l(lua_State *L, int find) {
    acq_client_t *c = client_check_open(L, 1);
    long long id;
    client_check_reentry(L, c);
    lua_settop(L, 3);
    id = request_check_contact_id(L, 2);
    client_check_fork(L, c);
    pending_start(L, c, 1, find, id, 3, NULL);
    return 1;
}

/* client:start_case(contactId, opts) -> pending */
int pending_l_start_case(lua_State *L) { return start_l(L, 0); }

/* client:start_find(contactId [, filter]) -> pending */
int pending_l_start_find(lua_State *L) { return start_l(L, 1); }

static int l_pollfd(lua_State *L) {
    pending_t *p = check_pending(L, 1);
    lua_pushinteger(L, p->shown);
    return 1;
}

static int l_events(lua_State *L) {
    (void)check_pending(L, 1);
    lua_pushliteral(L, "r");
    return 1;
}

/* Seconds until step() has something to do without a descriptor being
   ready; 0 when finished; nil: only a descriptor can wake it. */
static int l_timeout(lua_State *L) {
    pending_t *p = check_pending(L, 1);
    double now = client_monotonic(), at = -1;
    long ms = -1;
    if (p->group != NULL && p->state != S_DONE) {
        double t = group_timeout(p->group, now);
        if (t < 0) lua_pushnil(L);
        else lua_pushnumber(L, t);
        return 1;
    }
    if (p->state == S_DONE) at = now;
    else if (p->state == S_WAIT) at = p->wake_at;
    else {
        at = p->timer_at;
        if (curl_multi_timeout(p->multi, &ms) == CURLM_OK && ms >= 0) {
            double t = now + (double)ms / 1000.0;
            if (at < 0 || t < at) at = t;
        }
    }
    if (at < 0) lua_pushnil(L);
    else lua_pushnumber(L, at > now ? at - now : 0);
    return 1;
}

/* step() and cancel() from the client's own logger (which runs inside a
   step) raise: the call is in the middle of that step. */
static int l_step(lua_State *L) {
    pending_t *p = check_pending(L, 1);
    check_owner(L, p);
    client_check_reentry(L, client_check_open(L, (push_ref(L, p, R_CLIENT), -1)));
    lua_pop(L, 1);
    if (step(L, p)) {
        hand_back(p);
        lua_pushboolean(L, 1);
    } else {
        lua_pushboolean(L, 0);
    }
    return 1;
}

static int l_done(lua_State *L) {
    pending_t *p = check_pending(L, 1);
    lua_pushboolean(L, p->state == S_DONE);
    return 1;
}

/* p:result() -> res | nil, err, once finished */
static int l_result(lua_State *L) {
    pending_t *p = check_pending(L, 1);
    int i;
    if (p->state != S_DONE)
        luaL_error(L, "acquire: result() before the call is finished (step() until it returns true)");
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    for (i = 0; i < p->nret; i++) lua_rawgeti(L, -1 - i, R_RES + i);
    return p->nret;
}

/* Ends it unfinished: nil, err { kind = "cancelled" } and the log line
   the engine words (call_cancel). */
void pending_cancel(lua_State *L, pending_t *p, int by) {
    int vals, sent = 0;
    acq_step_t s;
    if (p->state == S_DONE) {                   /* (the loop is done with it too) */
        hand_back(p);
        return;
    }
    if (p->state == S_SEND && p->t != NULL && p->t->easy) {      /* a transfer on its way */
        acq_result_t r;
        transport_finish(p->t, CURLE_ABORTED_BY_CALLBACK, &r);
        sent = r.maybe_sent;
    }
    detach(p);
    push_ref(L, p, R_VALS);
    vals = lua_gettop(L);
    call_cancel(L, p->call, vals, sent, by, &s);  /* pushes err */
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
    lua_pushnil(L);
    lua_rawseti(L, -2, R_RES);
    lua_insert(L, -2);
    lua_rawseti(L, -2, R_ERR);
    lua_pop(L, 1);
    p->state = S_DONE;
    p->nret = 2;
    if (by == ACQ_CANCEL_COLLECTED) {
        if (p->group != NULL) group_finished(L, p, 0);
        hand_back(p);
    } else {
        wake(L, p);
    }
    if (s.lines) client_write_lines(L, p->c, vals);
    lua_settop(L, vals - 1);
}

/* client:close() (or its collection) under unfinished pending calls: each is
   cancelled, its transfer closed before the client's share, which frees
   nothing while a transfer still uses it. A loop waiting on one wakes; its
   step() then raises "client is closed", its result() is the cancel's. */
void pending_release_all(lua_State *L, acq_client_t *c) {
    while (c->pending != NULL) {
        pending_t *p = (pending_t *)c->pending;
        pending_cancel(L, p, ACQ_CANCEL_CLOSED);
        if (c->pending == p) drop_transfer(p);   /* (not linked again: never twice) */
    }
    group_release_all(c);
    while (c->cores != NULL) {                   /* (closed: none is given back now) */
        pending_core *k = (pending_core *)c->cores;
        c->cores = k->next;
        core_free(k);
    }
    c->ncores = 0;
}

static int l_cancel(lua_State *L) {
    pending_t *p = check_pending(L, 1);
    check_owner(L, p);
    client_check_reentry(L, p->c);
    pending_cancel(L, p, ACQ_CANCEL_ASKED);
    return 0;
}

static int l_gc(lua_State *L) {
    pending_t *p = (pending_t *)luaL_checkudata(L, 1, ACQ_MT_PENDING);
    if (p->ref == LUA_NOREF) {                /* (its start raised: nothing but the core) */
        core_free(p->core);
        p->core = NULL;
        return 0;
    }
    if (p->pid == client_pid()) {
        push_ref(L, p, R_CLIENT);
        if (((acq_client_t *)lua_touserdata(L, -1))->open) pending_cancel(L, p, ACQ_CANCEL_COLLECTED);
        lua_pop(L, 1);
        release(L, p);
    } else {                                  /* a child's copy: nothing of it is ours */
        luaL_unref(L, LUA_REGISTRYINDEX, p->ref);
        p->ref = LUA_NOREF;
        core_free(p->core);                   /* (the memory only: its handles are the parent's) */
        p->core = NULL;
    }
    return 0;
}

void pending_open(lua_State *L) {
    static const luaL_Reg methods[] = {
        { "pollfd", l_pollfd }, { "events", l_events }, { "timeout", l_timeout },
        { "step", l_step }, { "done", l_done }, { "result", l_result }, { "cancel", l_cancel },
        { NULL, NULL }
    };
    luaL_newmetatable(L, ACQ_MT_PENDING);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    acq_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, ACQ_MT_PENDING);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}
