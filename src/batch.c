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


/* A client's batch state, made by its first create_cases. */
struct acq_batch_t {
    CURLM      *multi;
    acq_slot_t *slots[ACQ_MAX_CONCURRENCY];    /* one easy handle each */
};

struct acq_slot_t {
    acq_transport_t t;
    long item;                        /* 0-based item index; -1: free */
};

typedef struct item_t {
    long long id;
    int attempts;
    double ready_at;                  /* monotonic seconds, while waiting to retry */
    double started;                   /* wall clock, when first sent (reconcile) */
} item_t;

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

void batch_release(acq_client_t *c) {
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
    }
    if (c->batch->multi == NULL) {
        c->batch->multi = curl_multi_init();
        if (c->batch->multi == NULL) luaL_error(L, "acquire: curl_multi_init failed");
        /* libcurl's default keeps 4 idle connections per handle still on the
           multi handle: as a batch's last transfers finish, it closes the
           connections the next batch would reuse. */
        curl_multi_setopt(c->batch->multi, CURLMOPT_MAXCONNECTS, (long)ACQ_MAX_CONCURRENCY);
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

/* Encodes item i (the table at idx) under pcall, so a misuse names it. */
static int batch_l_encode_item(lua_State *L) {
    acq_client_t *c = (acq_client_t *)lua_touserdata(L, 1);
    item_t *it = (item_t *)lua_touserdata(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_rawgeti(L, 3, 1);                                      /* 4 */
    lua_rawgeti(L, 3, 2);                                      /* 5 */
    if (!request_parse_contact_id(L, 4, &it->id))
        luaL_error(L, "contactId must be a positive integer, got %s",
                   lua_type(L, 4) == LUA_TSTRING ? acq_tolstring(L, 4, NULL)
                   : lua_type(L, 4) == LUA_TNUMBER ? error_pushnumber(L, 4)
                   : acq_typename(L, 4));
    lua_settop(L, 5);
    request_encode_body(L, 5, c->strict, &c->req);
    lua_pushlstring(L, c->req.p, c->req.len);
    return 1;
}

typedef struct opts_t {
    int concurrency;
    double interval;                          /* 1 / rate; 0: no rate */
    int on_send, on_result, on_progress;      /* the hooks' stack indices; 0: none */
} opts_t;

static int is_hook(lua_State *L, int key) {
    static const char *const names[] = { "on_send", "on_result", "on_progress" };
    size_t i;
    for (i = 0; i < sizeof names / sizeof *names; i++) {
        if (!acq_equals(L, key, names[i])) continue;
        if (!lua_isfunction(L, key + 1))
            luaL_error(L, "bad option '%s' (function expected, got %s)", names[i],
                       luaL_typename(L, key + 1));
        return 1;
    }
    return 0;
}

/* The hook opts[name] pushed: its index, or 0 (nothing pushed). */
static int push_hook(lua_State *L, int opts, const char *name) {
    if (lua_isnoneornil(L, opts)) return 0;
    lua_pushstring(L, name);
    lua_rawget(L, opts);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return lua_gettop(L);
}

/* Checks the options at idx (raising on misuse) and pushes the hooks. */
static void parse_opts(lua_State *L, int idx, opts_t *o) {
    o->concurrency = 8;
    o->interval = 0;
    if (!lua_isnoneornil(L, idx)) {
        luaL_checktype(L, idx, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (acq_equals(L, -2, "concurrency")) {
                lua_Number v = lua_tonumber(L, -1);
                if (lua_type(L, -1) != LUA_TNUMBER || !(v >= 1 && v <= ACQ_MAX_CONCURRENCY) ||
                    v != floor(v))
                    luaL_error(L, "bad option 'concurrency' (integer from 1 to %d expected)",
                               ACQ_MAX_CONCURRENCY);
                o->concurrency = (int)v;
            } else if (acq_equals(L, -2, "rate")) {
                lua_Number v = lua_tonumber(L, -1);
                if (lua_type(L, -1) != LUA_TNUMBER || !(v > 0 && v <= ACQ_MAX_RATE))
                    luaL_error(L, "bad option 'rate' (requests per second expected: a number "
                                  "above 0, at most %d)", ACQ_MAX_RATE);
                o->interval = 1.0 / (double)v;
            } else if (!is_hook(L, lua_gettop(L) - 1)) {
                luaL_error(L, "bad option '%s' (expected one of: concurrency, on_progress, "
                              "on_result, on_send, rate)", error_pushname(L, -2));
            }
            lua_pop(L, 1);
        }
    }
    o->on_send = push_hook(L, idx, "on_send");
    o->on_result = push_hook(L, idx, "on_result");
    o->on_progress = push_hook(L, idx, "on_progress");
}

/* Calls the hook pushed below its nargs arguments. If it raises, what is in
   flight is aborted and the error propagates. */
static void call_hook(lua_State *L, acq_client_t *c, int nargs) {
    if (lua_pcall(L, nargs, 0, 0) != 0) {
        detach_all(c);
        lua_error(L);
    }
}

/* on_result(i, res, err) for item k, with what results[k] holds. */
static void deliver(lua_State *L, acq_client_t *c, int fn, int results, long k) {
    if (fn == 0) return;
    lua_pushvalue(L, fn);
    acq_pushint64(L, k + 1);
    lua_rawgeti(L, results, (int)k + 1);
    lua_getfield(L, -1, "res");
    lua_getfield(L, -2, "err");
    lua_remove(L, -3);
    call_hook(L, c, 3);
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

/* results[i] = { res = v } or { err = v }, v on top (popped). */
static void store(lua_State *L, int results, long i, const char *field) {
    lua_createtable(L, 0, 1);
    lua_insert(L, -2);
    lua_setfield(L, -2, field);
    lua_rawseti(L, results, (int)i + 1);
}

/* reconcile: after the batch, one wait, then every item that may have been
   created is looked up (one after another: lookups are few and short), and
   delivered to on_result (fn) with what the lookup settled. */
static void reconcile_all(lua_State *L, acq_client_t *c, int items, int results,
                          const item_t *it, long n, int fn) {
    long i;
    int waited = 0;
    for (i = 0; i < n; i++) {
        int top = lua_gettop(L);
        lua_rawgeti(L, results, (int)i + 1);
        lua_getfield(L, -1, "err");
        if (!maybe_created(L, -1)) { lua_settop(L, top); continue; }
        if (!waited) {
            policy_sleep((double)c->reconcile_ms / 1000.0);
            waited = 1;
        }
        lua_rawgeti(L, items, (int)i + 1);
        lua_rawgeti(L, -1, 2);                             /* the item's opts */
        if (client_reconcile(L, c, it[i].id, -1, it[i].started, top + 2) == 1)
            store(L, results, i, "res");
        lua_settop(L, top);
        deliver(L, c, fn, results, i);
    }
}

static int run(lua_State *L, acq_client_t *c, int items, int opts) {
    opts_t o;
    int bodies, results, active = 0;
    int reconcile = c->reconcile_ms >= 0;
    long n = (long)acq_rawlen(L, items), i, fresh = 0, done = 0, nwait = 0;
    double open_at = 0;                        /* no request starts before (monotonic) */
    item_t *it;
    long *waiting;                             /* items waiting to retry */
    char url[ACQ_URL_MAX], pfx[32];
    acq_slot_t *lead = NULL;                   /* the batch's first transfer */
    int alone = 1;                             /* it runs alone (below) */

    luaL_checkstack(L, LUA_MINSTACK + 16, "create_cases");   /* the loop holds many values */
    parse_opts(L, opts, &o);
    it = (item_t *)acq_newuserdata(L, (size_t)(n ? n : 1) * sizeof *it);
    memset(it, 0, (size_t)(n ? n : 1) * sizeof *it);
    waiting = (long *)acq_newuserdata(L, (size_t)(n ? n : 1) * sizeof *waiting);
    lua_createtable(L, (int)n, 0);
    bodies = lua_gettop(L);
    for (i = 0; i < n; i++) {                  /* all of them, before any is sent */
        lua_pushcfunction(L, batch_l_encode_item);
        lua_pushlightuserdata(L, c);
        lua_pushlightuserdata(L, &it[i]);
        lua_rawgeti(L, items, (int)i + 1);
        if (lua_pcall(L, 3, 1, 0) != 0)
            luaL_error(L, "bad item #%d: %s", (int)i + 1, lua_tostring(L, -1));
        lua_rawseti(L, bodies, (int)i + 1);
    }
    lua_createtable(L, (int)n, 0);
    results = lua_gettop(L);
    if (n == 0) return 1;

    setup(L, c, o.concurrency);
    memcpy(url, c->url, c->prefix_len);
    while (done < n) {
        double t = now(), wake = -1;
        int s, queued, added = 0, progressed = 0, running = 0;
        CURLMsg *msg;
        /* The first transfer goes alone until its host is resolved (or it
           ended): started together, each transfer of a cold batch would ask
           the resolver itself (64 lookups, 64 threads); after the first, they
           find the address in the multi handle's DNS cache. A failed lookup
           is not cached: then each asks, as before. */
        if (alone && lead != NULL) {
            double dns = 0;
            curl_easy_getinfo(lead->t.easy, CURLINFO_NAMELOOKUP_TIME, &dns);
            if (dns > 0 || lead->item < 0) alone = 0;
        }
        /* start what may start: retries that are due first, then new items */
        for (s = 0; s < o.concurrency && t >= open_at && !(alone && active > 0); s++) {
            long pick = -1;
            size_t len;
            const char *body;
            if (c->batch->slots[s] == NULL || c->batch->slots[s]->item >= 0) continue;  /* setup made 0..concurrency-1 */
            for (i = 0; i < nwait; i++) {
                if (it[waiting[i]].ready_at <= t) {
                    pick = waiting[i];
                    waiting[i] = waiting[--nwait];
                    break;
                }
            }
            if (pick < 0 && fresh < n) pick = fresh++;
            if (pick < 0) break;
            if (o.on_send) {                       /* before the attempt is libcurl's */
                lua_pushvalue(L, o.on_send);
                acq_pushint64(L, pick + 1);
                acq_pushint64(L, it[pick].attempts + 1);
                call_hook(L, c, 2);
            }
            lua_rawgeti(L, bodies, (int)pick + 1);
            body = lua_tolstring(L, -1, &len);      /* anchored in bodies */
            lua_pop(L, 1);
            snprintf(url + c->prefix_len, 24, "%lld", it[pick].id);
            if (transport_prepare(&c->batch->slots[s]->t, url, body, len) != 0) {
                detach_all(c);
                luaL_error(L, "not enough memory");
            }
            c->batch->slots[s]->item = pick;
            if (alone) lead = c->batch->slots[s];
            if (it[pick].started == 0) it[pick].started = client_clock();
            if (curl_multi_add_handle(c->batch->multi, c->batch->slots[s]->t.easy) != CURLM_OK) {
                c->batch->slots[s]->item = -1;
                detach_all(c);
                luaL_error(L, "acquire: curl_multi_add_handle failed");
            }
            if (o.interval > 0) open_at = now() + o.interval;
            active++;
            added++;
        }
        if (active > 0) curl_multi_perform(c->batch->multi, &running);
        while (active > 0 && (msg = curl_multi_info_read(c->batch->multi, &queued)) != NULL) {
            acq_slot_t *slot = NULL;
            acq_result_t r;
            double wait;
            long k;
            int held;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&slot);
            k = slot->item;
            transport_finish(&slot->t, msg->data.result, &r);
            curl_multi_remove_handle(c->batch->multi, slot->t.easy);  /* msg is gone now */
            slot->item = -1;
            active--;
            it[k].attempts++;
            snprintf(pfx, sizeof pfx, "item %ld: ", k + 1);      /* its log lines' */
            if (c->debug) {
                size_t blen;
                const char *body;
                snprintf(url + c->prefix_len, 24, "%lld", it[k].id);
                lua_rawgeti(L, bodies, (int)k + 1);
                body = lua_tolstring(L, -1, &blen);
                client_log_attempt(L, c, &slot->t, &r, pfx, it[k].attempts, url, body, blen);
                lua_pop(L, 1);
            }
            if (client_outcome(L, c, &slot->t, &r) == 1) {
                store(L, results, k, "res");
                deliver(L, c, o.on_result, results, k);
            } else {
                double pause = policy_pause(L, -1);   /* the server asked the whole batch */
                if (pause >= 0 && now() + pause > open_at) open_at = now() + pause;
                wait = policy_next(L, -1, it[k].attempts, c->max_retries, &c->rng);
                client_log_failure(L, c, pfx, it[k].attempts, lua_gettop(L), wait);
                if (wait >= 0) {
                    lua_pop(L, 2);
                    it[k].ready_at = now() + wait;
                    waiting[nwait++] = k;
                    continue;
                }
                lua_remove(L, -2);
                held = reconcile && maybe_created(L, -1);   /* delivered once settled */
                store(L, results, k, "err");
                if (!held) deliver(L, c, o.on_result, results, k);
            }
            done++;
            progressed = 1;
        }
        if (progressed && o.on_progress) {         /* after this turn's on_result */
            lua_pushvalue(L, o.on_progress);
            acq_pushint64(L, done);
            acq_pushint64(L, n);
            call_hook(L, c, 2);
        }
        if (done == n) break;
        if (active < o.concurrency) {              /* when a free slot may start one */
            if (fresh < n && !(alone && active > 0)) wake = t;   /* not while the lead resolves */
            for (i = 0; i < nwait; i++)
                if (wake < 0 || it[waiting[i]].ready_at < wake) wake = it[waiting[i]].ready_at;
            if (wake >= 0 && wake < open_at) wake = open_at;
        }
        if (active == 0) policy_sleep(wake - now());   /* nothing in flight: only a wait */
        else if (!added) wait_for(c, wake);
    }
    detach_all(c);
    if (reconcile) reconcile_all(L, c, items, results, it, n, o.on_result);
    lua_settop(L, results);
    return 1;
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
    status = lua_pcall(L, 3, 1, 0);
    c->busy = 0;
    detach_all(c);
    if (status != 0) return lua_error(L);
    return 1;
}

/* client:create_cases(items, opts) -> { { res = … } | { err = … }, … } */
int batch_l_create_cases(lua_State *L) {
    acq_client_t *c = client_check_open(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 3);
    return guarded(L, c, 2, 3);
}

/* acquire.create_cases(items, opts) through the default client */
int batch_l_default_create_cases(lua_State *L) {
    acq_client_t *c;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    c = client_default(L);
    return guarded(L, c, 1, 2);
}
