/*
 * batch.c: client:create_cases(items, opts) on one curl multi handle.
 *
 * Every item is encoded first, so a bad one raises before anything is
 * sent. Then up to `concurrency` transfers run at once, each on an easy
 * handle duplicated from the client's (same options, its own buffers),
 * sharing the multi handle's connections (and HTTP/2 multiplexing when the
 * server offers it). Each item follows the same retry policy as
 * create_case; a retry waits without holding the others back. What the
 * batch as a whole may start is gated by one time (open_at): `rate` moves
 * it on by 1/rate at every start (a token bucket with a burst of 1), and a
 * 429 or 503 whose Retry-After the policy honours moves it to then, for
 * fresh items and retries alike; transfers in flight go on.
 *
 * The hooks (on_send before an attempt is handed to libcurl, on_result when
 * an item's outcome is final, on_progress once a loop turn after them) run
 * in this loop, never inside a libcurl callback; if one raises, the
 * transfers are removed and the error propagates.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "transport.h"
#include "batch.h"


/* A client's batch state, made by its first create_cases. */
struct acq_batch_t {
    CURLM      *multi;
    acq_slot_t *slots[ACQ_MAX_CONCURRENCY];    /* one easy handle each */
};

struct acq_slot_t {
    acq_transport_t t;
    long item;                        /* 0-based item index; -1: free */
    double start, paused0;            /* when it started; the batch's paused time then */
};


static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Takes every transfer off the multi handle: after a batch, or after an
   error left one behind. */
static void detach_all(acq_client_t *c) {
    int i;
    if (c->batch == NULL) return;
    for (i = 0; i < ACQ_MAX_CONCURRENCY; i++) {
        if (c->batch->slots[i] && c->batch->slots[i]->item >= 0) {
            curl_multi_remove_handle(c->batch->multi, c->batch->slots[i]->t.easy);
            c->batch->slots[i]->item = -1;
        }
    }
}

static void batch_release(acq_client_t *c) {
    int i;
    if (c->batch == NULL) return;
    detach_all(c);
    for (i = 0; i < ACQ_MAX_CONCURRENCY; i++) {
        if (c->batch->slots[i] == NULL) continue;
        transport_close(&c->batch->slots[i]->t);
        free(c->batch->slots[i]);
        c->batch->slots[i] = NULL;
    }
    if (c->batch->multi) curl_multi_cleanup(c->batch->multi);
    free(c->batch);
    c->batch = NULL;
}

static void setup(lua_State *L, acq_client_t *c, int concurrency) {
    int i;
    if (c->batch == NULL) {
        c->batch = (acq_batch_t *)calloc(1, sizeof *c->batch);
        if (c->batch == NULL) {
            luaL_error(L, "not enough memory");
            return;
        }
        c->release_batch = batch_release;     /* the client lets it go (close, fork) */
    }
    if (c->batch->multi == NULL) {
        /* (libcurl's default keeps 4 idle connections per handle still on
           the multi handle: as a batch's last transfers finished, it would
           close the connections the next batch reuses) */
        c->batch->multi = transport_multi_new();
        if (c->batch->multi == NULL) luaL_error(L, "acquire: curl_multi_init failed");
    }
    detach_all(c);
    for (i = 0; i < concurrency; i++) {
        if (c->batch->slots[i]) continue;
        c->batch->slots[i] = (acq_slot_t *)calloc(1, sizeof(acq_slot_t));
        if (c->batch->slots[i] == NULL) {
            luaL_error(L, "not enough memory");
            return;
        }
        transport_dup(&c->batch->slots[i]->t, &c->t, c->batch->slots[i]);
        c->batch->slots[i]->item = -1;
    }
}

/* Waits for the transfers' sockets, or until `until` (monotonic seconds; -1:
   a second at most). Less than poll's millisecond is slept instead: a rate
   of thousands a second needs it. */
static void wait_for(acq_client_t *c, double until) {
    int timeout = 1000;
    if (until >= 0) {
        double left = until - now();
        if (left < 0.001) {
            policy_sleep(left);
            return;
        }
        if (left < 1.0) timeout = (int)(left * 1000.0) + 1;
    }
    curl_multi_poll(c->batch->multi, NULL, 0, timeout, NULL);
}
/* Calls the hook pushed below its nargs arguments. If it raises, what is in
   flight is aborted and the error propagates. */
static void call_hook(lua_State *L, acq_client_t *c, int nargs) {
    if (lua_pcall(L, nargs, 0, 0) != 0) {
        detach_all(c);
        lua_error(L);
    }
}

/* Is the value at idx an err that says the case may exist? */
static int maybe_created(lua_State *L, int idx) {
    int maybe;
    if (!lua_istable(L, idx)) return 0;
    lua_getfield(L, idx, "maybe_created");
    maybe = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return maybe;
}


/* Item k's outcome is final (res or err on top, popped): kept (table input),
   counted, and handed to on_result. */
static void settled(lua_State *L, acq_client_t *c, batch_run_t *b, long k, int ok) {
    int v = lua_gettop(L);
    b->counts[ok ? 0 : maybe_created(L, v) ? 2 : 1]++;
    if (b->results) {
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, v);
        lua_setfield(L, -2, ok ? "res" : "err");
        lua_rawseti(L, b->results, (int)k + 1);
    }
    if (b->o.on_result) {
        lua_pushvalue(L, b->o.on_result);
        acq_pushint64(L, k + 1);
        if (ok) { lua_pushvalue(L, v); lua_pushnil(L); }
        else { lua_pushnil(L); lua_pushvalue(L, v); }
        call_hook(L, c, 3);
    }
    lua_settop(L, v - 1);
}

/* reconcile: after the batch, one wait, then every item held back (it may
   have been created: its engine said to wait before looking) goes on, one
   after another (lookups are few and short), on the client's own handles. */
static void reconcile_all(lua_State *L, acq_client_t *c, batch_run_t *b) {
    int i, nheld = (int)acq_rawlen(L, b->held);
    for (i = 1; i <= nheld; i++) {
        int top = lua_gettop(L), n;
        acq_obs_t o;
        long k;
        if (i == 1) policy_sleep((double)c->e.reconcile_ms / 1000.0);
        lua_rawgeti(L, b->held, i);
        lua_rawgeti(L, top + 1, 1); k = (long)lua_tonumber(L, -1);
        lua_rawgeti(L, top + 1, 2);                          /* the call: top + 3 */
        lua_rawgeti(L, top + 1, 3);                          /* its values: top + 4 */
        client_observe_wait(&o);
        n = client_drive(L, c, (acq_call_t *)lua_touserdata(L, top + 3), top + 4, &o);
        if (n == 2) lua_remove(L, -2);
        settled(L, c, b, k, n == 1);
        lua_settop(L, top);
    }
}

/* The next item from the input into pool entry p: 1, or 0 at its end.
   Table input: checked and encoded before the run; an iterator's item is
   checked here, before it can be sent (a bad one raises, naming it). */
static int draw(lua_State *L, acq_client_t *c, batch_run_t *b, int p) {
    item_t *it = &b->pool[p];
    long k = b->drawn;
    if (b->ended) return 0;
    memset(it, 0, sizeof *it);
    if (!b->stream) {
        if (k >= b->n) { b->ended = 1; return 0; }
        lua_rawgeti(L, b->items, (int)k + 1);
        lua_rawgeti(L, -1, 2);                                /* its opts */
        lua_rawgeti(L, b->bodies, (int)k + 1);
        it->id = b->ids[k];
        /* the last one: the batch ends when it is answered, not after
           another 1 / rate (no start is due to find the end) */
        if (k + 1 >= b->n) b->ended = 1;
    } else {
        lua_pushvalue(L, b->items);
        lua_call(L, 0, 1);
        if (lua_isnil(L, -1)) { b->ended = 1; lua_pop(L, 1); return 0; }
        lua_pushcfunction(L, batch_l_encode_item);
        lua_pushlightuserdata(L, &it->id);
        lua_pushboolean(L, c->e.strict);
        lua_pushvalue(L, -4);
        if (lua_pcall(L, 3, 1, 0) != 0) {
            detach_all(c);
            luaL_error(L, "bad item #%d: %s", (int)k + 1, lua_tostring(L, -1));
        }
        lua_rawgeti(L, -2, 2);                                /* its opts */
        lua_insert(L, -2);
        b->n = k + 1;
    }
    call_create(L, &it->call, &c->e, it->id, -2, -1);       /* item, opts, body: values */
    snprintf(it->call.pfx, sizeof it->call.pfx, "item %ld: ", k + 1);
    lua_rawseti(L, b->live, p + 1);
    lua_pop(L, 3);
    it->k = k;
    it->used = 1;
    b->drawn++;
    return 1;
}

/* Transfer slot ended with code: the engine told what the item does next:
   done (its outcome delivered: returns 1), or wait to retry, or wait for
   reconcile after the batch (returns 0, 1). */
static int complete(lua_State *L, acq_client_t *c, batch_run_t *b, acq_slot_t *slot, CURLcode code) {
    acq_result_t r;
    acq_obs_t o;
    acq_step_t st;
    int p = (int)slot->item, vals;
    item_t *it = &b->pool[p];
    transport_finish(&slot->t, code, &r);
    transport_observe(&slot->t, &r, now(), client_clock(), &o);
    curl_multi_remove_handle(c->batch->multi, slot->t.easy);  /* a msg of it is gone now */
    slot->item = -1;
    it->attempts++;
    lua_rawgeti(L, b->live, p + 1);
    vals = lua_gettop(L);
    call_next(L, &it->call, vals, &o, &st);
    if (st.lines) client_write_lines(L, c, vals);
    if (st.pause >= 0 && now() + st.pause > b->open_at) b->open_at = now() + st.pause;
    if (st.action == ACQ_DONE) {
        if (st.nret == 2) lua_remove(L, -2);
        it->used = 0;
        settled(L, c, b, it->k, st.nret == 1);
        lua_settop(L, vals - 1);
        return 1;
    }
    if (st.action == ACQ_WAIT && st.reconcile) {  /* looked up after the batch */
        acq_call_t *held;
        lua_createtable(L, 3, 0);
        acq_pushint64(L, it->k);
        lua_rawseti(L, -2, 1);
        held = (acq_call_t *)acq_newuserdata(L, sizeof *held);
        memcpy(held, &it->call, sizeof *held);
        lua_rawseti(L, -2, 2);
        lua_pushvalue(L, vals);
        lua_rawseti(L, -2, 3);
        lua_rawseti(L, b->held, (int)acq_rawlen(L, b->held) + 1);
        if (b->results) {                               /* until then, results[k] says so */
            lua_createtable(L, 0, 1);
            call_push_err(L, vals);
            lua_setfield(L, -2, "err");
            lua_rawseti(L, b->results, (int)it->k + 1);
        }
        it->used = 0;
        lua_settop(L, vals - 1);
        return 1;
    }
    it->ready_at = now() + (st.action == ACQ_WAIT ? st.wait : 0);
    b->waiting[b->nwait++] = p;
    lua_settop(L, vals - 1);
    return 0;
}

/* Starts pool entry p on slot s (its on_send first). */
static void start(lua_State *L, acq_client_t *c, batch_run_t *b, int s, int p) {
    acq_slot_t *slot = c->batch->slots[s];
    item_t *it = &b->pool[p];
    acq_step_t st;
    acq_obs_t o;
    int vals;
    if (b->o.on_send) {                        /* before the attempt is libcurl's */
        lua_pushvalue(L, b->o.on_send);
        acq_pushint64(L, it->k + 1);
        acq_pushint64(L, it->attempts + 1);
        call_hook(L, c, 2);
    }
    lua_rawgeti(L, b->live, p + 1);
    vals = lua_gettop(L);
    client_observe_wait(&o);
    call_next(L, &it->call, vals, it->attempts ? &o : NULL, &st);   /* SEND: after a wait, always */
    if (st.lines) client_write_lines(L, c, vals);
    if (transport_prepare(&slot->t, st.url, st.body, st.len) != 0) {   /* body anchored in vals */
        detach_all(c);
        luaL_error(L, "not enough memory");
    }
    lua_pop(L, 1);
    curl_easy_setopt(slot->t.easy, CURLOPT_TIMEOUT_MS, 0L);   /* kept by run() */
    slot->item = p;
    slot->start = now();
    slot->paused0 = b->paused;
    if (curl_multi_add_handle(c->batch->multi, slot->t.easy) != CURLM_OK) {
        slot->item = -1;
        detach_all(c);
        luaL_error(L, "acquire: curl_multi_add_handle failed");
    }
    if (b->o.interval > 0) b->open_at = now() + b->o.interval;
}

/* The pool entry to start next: a retry that is due, or a new item drawn
   into a free entry; -1: none now. */
static int pick(lua_State *L, acq_client_t *c, batch_run_t *b, double t) {
    int i, p;
    for (i = 0; i < b->nwait; i++) {
        if (b->pool[b->waiting[i]].ready_at <= t) {
            p = b->waiting[i];
            b->waiting[i] = b->waiting[--b->nwait];
            return p;
        }
    }
    for (p = 0; p < POOL && b->pool[p].used; p++) {}
    if (p == POOL || !draw(L, c, b, p)) return -1;
    return p;
}

/* The batch keeps each transfer's timeout itself: libcurl's would count
   the time hooks ran, and turn an answer that arrived while one ran into a
   timeout. Checked after a perform, with that time left out: what arrived
   is read as arrived. Returns how many items it ended. */
static int expire(lua_State *L, acq_client_t *c, batch_run_t *b, int *active) {
    int s, ended = 0;
    for (s = 0; s < b->o.concurrency && b->timeout > 0; s++) {
        acq_slot_t *slot = c->batch->slots[s];
        double lua_at;
        if (slot == NULL || slot->item < 0) continue;
        if (now() - slot->start - (b->paused - slot->paused0) < b->timeout) continue;
        lua_at = now();
        snprintf(slot->t.errbuf, sizeof slot->t.errbuf,
                 "Operation timed out after %ld milliseconds", c->timeout_ms);
        (*active)--;
        ended += complete(L, c, b, slot, CURLE_OPERATION_TIMEDOUT);
        b->paused += now() - lua_at;
    }
    return ended;
}

/* When the loop has something to do next (monotonic; -1: nothing but the
   transfers): a free slot may start an item, a retry is due, a transfer's
   deadline comes. */
static double wake_at(acq_client_t *c, batch_run_t *b, int active, int alone, double t) {
    double wake = -1;
    int i, s;
    if (active < b->o.concurrency) {
        if (!b->ended && !(alone && active > 0)) wake = t;   /* not while the lead resolves */
        for (i = 0; i < b->nwait; i++)
            if (wake < 0 || b->pool[b->waiting[i]].ready_at < wake) wake = b->pool[b->waiting[i]].ready_at;
        if (wake >= 0 && wake < b->open_at) wake = b->open_at;
    }
    for (s = 0; s < b->o.concurrency && b->timeout > 0; s++) {
        acq_slot_t *slot = c->batch->slots[s];
        double due;
        if (slot == NULL || slot->item < 0) continue;
        due = slot->start + b->timeout + (b->paused - slot->paused0);
        if (wake < 0 || due < wake) wake = due;
    }
    return wake;
}

/* What run returns: results by item (a table's), or the counts (an iterator's). */
static int finish(lua_State *L, batch_run_t *b) {
    if (b->results) {
        lua_pushvalue(L, b->results);
        return 1;
    }
    lua_createtable(L, 0, 4);
    acq_pushint64(L, b->n);
    lua_setfield(L, -2, "total");
    acq_pushint64(L, b->counts[0]);
    lua_setfield(L, -2, "created");
    acq_pushint64(L, b->counts[1]);
    lua_setfield(L, -2, "failed");
    acq_pushint64(L, b->counts[2]);
    lua_setfield(L, -2, "uncertain");
    return 1;
}

static int run(lua_State *L, acq_client_t *c, int items, int opts) {
    batch_run_t *b;
    int active = 0;
    long done = 0;
    acq_slot_t *lead = NULL;                   /* the batch's first transfer */
    int alone = 1;                             /* it runs alone (below) */

    luaL_checkstack(L, LUA_MINSTACK + 16, "create_cases");   /* the loop holds many values */
    b = (batch_run_t *)acq_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    b->live_ref = LUA_NOREF;
    lua_pushvalue(L, -1);
    c->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->run = b;                                 /* both let go by guarded() */
    batch_begin(L, &c->e, c->timeout_ms, b, items, opts);
    if (!b->stream && b->n == 0) return finish(L, b);
    setup(L, c, b->o.concurrency);
    while (!(b->ended && active == 0 && b->nwait == 0)) {
        double t = now(), wake = -1, lua_at;
        int s, queued, added = 0, progressed = 0, running = 0, ended;
        CURLMsg *msg;
        /* The first transfer goes alone until its host is resolved (or it
           ended): started together, each transfer of a cold batch would ask
           the resolver itself (64 lookups, 64 threads); after the first, they
           find the address in the DNS cache. A failed lookup is not cached:
           then each asks, as before. */
        if (alone && lead != NULL) {
            double dns = 0;
            curl_easy_getinfo(lead->t.easy, CURLINFO_NAMELOOKUP_TIME, &dns);
            if (dns > 0 || lead->item < 0) alone = 0;
        }
        /* start what may start: retries that are due first, then new items */
        for (s = 0; s < b->o.concurrency && t >= b->open_at && !(alone && active > 0); s++) {
            int p;
            if (c->batch->slots[s] == NULL || c->batch->slots[s]->item >= 0) continue;  /* setup made 0..concurrency-1 */
            if ((p = pick(L, c, b, t)) < 0) break;
            start(L, c, b, s, p);
            if (alone) lead = c->batch->slots[s];
            active++;
            added++;
        }
        /* an iterator, the rate's gate closed and nothing waiting: draw the next
           item now, to start when the gate opens; so the end of the input is
           seen at once, not 1 / rate later (a table's end is known) */
        if (b->stream && !b->ended && t < b->open_at && b->nwait == 0) {
            int p;
            for (p = 0; p < POOL && b->pool[p].used; p++) {}
            if (p < POOL && draw(L, c, b, p)) b->waiting[b->nwait++] = p;   /* ready_at 0 */
        }
        /* on_wave(n): the attempts this turn started (their on_send done) are
           libcurl's, but none has put a byte on the wire: that happens in
           curl_multi_perform. A journal flushes their records once, here. If
           it raises, call_hook removes them all, unsent. */
        if (added > 0 && b->o.on_wave) {
            lua_pushvalue(L, b->o.on_wave);
            lua_pushinteger(L, added);
            call_hook(L, c, 1);
        }
        b->paused += now() - t;                /* on_send's time is not the network's */
        if (active > 0) curl_multi_perform(c->batch->multi, &running);
        lua_at = now();
        while (active > 0 && (msg = curl_multi_info_read(c->batch->multi, &queued)) != NULL) {
            acq_slot_t *slot = NULL;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&slot);
            active--;
            if (complete(L, c, b, slot, msg->data.result)) done++, progressed = 1;
        }
        b->paused += now() - lua_at;           /* nor on_result's, nor the log's */
        if ((ended = expire(L, c, b, &active)) > 0) done += ended, progressed = 1;
        if (progressed && b->o.on_progress) {  /* after this turn's on_result */
            lua_at = now();
            lua_pushvalue(L, b->o.on_progress);
            acq_pushint64(L, done);
            if (b->stream) lua_pushnil(L); else acq_pushint64(L, b->n);
            call_hook(L, c, 2);
            b->paused += now() - lua_at;
        }
        if (b->ended && active == 0 && b->nwait == 0) break;
        wake = wake_at(c, b, active, alone, t);
        if (active == 0) policy_sleep(wake - now());   /* nothing in flight: only a wait */
        else if (!added) wait_for(c, wake);
    }
    detach_all(c);
    if (b->reconcile) reconcile_all(L, c, b);
    return finish(L, b);
}

/* After a run, or what it raised: the items it left unfinished leave the
   engine's in-flight set, and its state is let go. */
static void let_go(lua_State *L, acq_client_t *c) {
    batch_run_t *b = (batch_run_t *)c->run;
    int p;
    if (b != NULL && b->live_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, b->live_ref);
        for (p = 0; p < POOL; p++) {
            if (!b->pool[p].used) continue;
            lua_rawgeti(L, -1, p + 1);
            if (lua_istable(L, -1)) call_abandon(L, &b->pool[p].call, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        luaL_unref(L, LUA_REGISTRYINDEX, b->live_ref);
        b->live_ref = LUA_NOREF;
    }
    if (c->run_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->run_ref);
    c->run_ref = LUA_NOREF;
    c->run = NULL;
}

static int batch_l_run(lua_State *L) {      /* client (light), items, opts */
    return run(L, (acq_client_t *)lua_touserdata(L, 1), 2, 3);
}

/* run, with the client marked busy, and whatever run raises (a hook, out of
   memory, an interrupt) leaving no transfer attached and the client usable.
   Inside a hook, create_cases on the same client raises; create_case works
   (its handle is not the batch's). */
static int guarded(lua_State *L, acq_client_t *c, int items, int opts) {
    int status;
    client_check_reentry(L, c);
    if (c->busy)
        luaL_error(L, "acquire: create_cases is already running on this client "
                      "(called from on_send, on_result or on_progress?)");
    client_check_fork(L, c);
    lua_pushcfunction(L, batch_l_run);
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, items);
    lua_pushvalue(L, opts);
    c->busy = 1;
    c->run_ref = LUA_NOREF;
    status = lua_pcall(L, 3, 1, 0);
    c->busy = 0;
    detach_all(c);
    let_go(L, c);
    if (status != 0) return lua_error(L);
    return 1;
}


/* client:create_cases(items, opts) -> { { res = … } | { err = … }, … };
   items a function (an iterator): -> { total, created, failed, uncertain } */

int batch_l_create_cases(lua_State *L) {
    acq_client_t *c = client_check_open(L, 1);
    batch_check_items(L, 2);
    lua_settop(L, 3);
    if (batch_journaled(L, 1, 2, 3)) return 1;
    return guarded(L, c, 2, 3);
}

/* acquire.create_cases(items, opts) through the default client */
int batch_l_default_create_cases(lua_State *L) {
    acq_client_t *c;
    batch_check_items(L, 1);
    lua_settop(L, 2);
    c = client_default(L);                                    /* 3 */
    if (batch_journaled(L, 3, 1, 2)) return 1;
    return guarded(L, c, 1, 2);
}
