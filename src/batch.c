/*
 * batch.c: client:create_cases(items, opts) on one curl multi handle.
 *
 * Every item is encoded first, so a bad one raises before anything is
 * sent. Then up to `concurrency` transfers run at once, each on an easy
 * handle duplicated from the client's (same options, its own buffers),
 * sharing the multi handle's connections (and HTTP/2 multiplexing when the
 * server offers it). Each item follows the same retry policy as
 * create_case; a retry waits without holding the others back. on_progress
 * runs in this loop, never inside a libcurl callback; if it raises, the
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
        c->batch->slots[i]->t.headers = NULL;          /* c->t owns the list */
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
        if (transport_dup(&c->batch->slots[i]->t, &c->t, c->batch->slots[i]) != 0) {
            transport_close(&c->batch->slots[i]->t);
            free(c->batch->slots[i]);
            c->batch->slots[i] = NULL;
            luaL_error(L, "acquire: cannot set up a libcurl handle");
            return;
        }
        c->batch->slots[i]->item = -1;
    }
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

static void parse_opts(lua_State *L, int idx, int *concurrency, int *progress) {
    *concurrency = 8;
    *progress = 0;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (acq_equals(L, -2, "concurrency")) {
            lua_Number v = lua_tonumber(L, -1);
            if (lua_type(L, -1) != LUA_TNUMBER || !(v >= 1 && v <= ACQ_MAX_CONCURRENCY) ||
                v != floor(v))
                luaL_error(L, "bad option 'concurrency' (integer from 1 to %d expected)",
                           ACQ_MAX_CONCURRENCY);
            *concurrency = (int)v;
        } else if (acq_equals(L, -2, "on_progress")) {
            if (!lua_isfunction(L, -1))
                luaL_error(L, "bad option 'on_progress' (function expected, got %s)",
                           luaL_typename(L, -1));
            *progress = 1;
        } else {
            luaL_error(L, "bad option '%s' (expected one of: concurrency, on_progress)",
                       error_pushname(L, -2));
        }
        lua_pop(L, 1);
    }
}

/* results[i] = { res = v } or { err = v }, v on top (popped). */
static void store(lua_State *L, int results, long i, const char *field) {
    lua_createtable(L, 0, 1);
    lua_insert(L, -2);
    lua_setfield(L, -2, field);
    lua_rawseti(L, results, (int)i + 1);
}

/* reconcile: after the batch, one wait, then every item that may have been
   created is looked up (one after another: lookups are few and short). */
static void reconcile_all(lua_State *L, acq_client_t *c, int items, int results,
                          const item_t *it, long n) {
    long i;
    int waited = 0;
    for (i = 0; i < n; i++) {
        int top = lua_gettop(L), maybe;
        lua_rawgeti(L, results, (int)i + 1);
        lua_getfield(L, -1, "err");
        if (!lua_istable(L, -1)) { lua_settop(L, top); continue; }
        lua_getfield(L, -1, "maybe_created");
        maybe = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (!maybe) { lua_settop(L, top); continue; }
        if (!waited) {
            policy_sleep((double)c->reconcile_ms / 1000.0);
            waited = 1;
        }
        lua_rawgeti(L, items, (int)i + 1);
        lua_rawgeti(L, -1, 2);                             /* the item's opts */
        if (client_reconcile(L, c, it[i].id, -1, it[i].started, top + 2) == 1)
            store(L, results, i, "res");
        lua_settop(L, top);
    }
}

static int run(lua_State *L, acq_client_t *c, int items, int opts) {
    int concurrency, progress, bodies, results, fn = 0, active = 0;
    long n = (long)acq_rawlen(L, items), i, fresh = 0, done = 0, nwait = 0;
    item_t *it;
    long *waiting;                             /* items waiting to retry */
    char url[ACQ_URL_MAX];
    acq_slot_t *lead = NULL;                   /* the batch's first transfer */
    int alone = 1;                             /* it runs alone (below) */

    parse_opts(L, opts, &concurrency, &progress);
    if (progress) {
        lua_getfield(L, opts, "on_progress");
        fn = lua_gettop(L);
    }
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

    setup(L, c, concurrency);
    memcpy(url, c->url, c->prefix_len);
    while (done < n) {
        double t = now(), next_ready = -1;
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
        for (s = 0; s < concurrency && !(alone && active > 0); s++) {
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
            lua_rawgeti(L, bodies, (int)pick + 1);
            body = lua_tolstring(L, -1, &len);      /* anchored in bodies */
            lua_pop(L, 1);
            snprintf(url + c->prefix_len, 24, "%lld", it[pick].id);
            transport_prepare(&c->batch->slots[s]->t, url, body, len);
            c->batch->slots[s]->item = pick;
            if (alone) lead = c->batch->slots[s];
            if (it[pick].started == 0) it[pick].started = client_clock();
            if (curl_multi_add_handle(c->batch->multi, c->batch->slots[s]->t.easy) != CURLM_OK) {
                c->batch->slots[s]->item = -1;
                detach_all(c);
                luaL_error(L, "acquire: curl_multi_add_handle failed");
            }
            active++;
            added++;
        }
        for (i = 0; i < nwait; i++)
            if (next_ready < 0 || it[waiting[i]].ready_at < next_ready)
                next_ready = it[waiting[i]].ready_at;
        if (active == 0) {                         /* only retries, all waiting */
            policy_sleep(next_ready - now());
            continue;
        }
        curl_multi_perform(c->batch->multi, &running);
        while ((msg = curl_multi_info_read(c->batch->multi, &queued)) != NULL) {
            acq_slot_t *slot = NULL;
            acq_result_t r;
            double wait;
            long k;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&slot);
            k = slot->item;
            transport_finish(&slot->t, msg->data.result, &r);
            curl_multi_remove_handle(c->batch->multi, slot->t.easy);  /* msg is gone now */
            slot->item = -1;
            active--;
            it[k].attempts++;
            if (client_outcome(L, c, &slot->t, &r) == 1) {
                store(L, results, k, "res");
            } else {
                wait = policy_next(L, -1, it[k].attempts, c->max_retries, &c->rng);
                if (wait >= 0) {
                    lua_pop(L, 2);
                    it[k].ready_at = now() + wait;
                    waiting[nwait++] = k;
                    continue;
                }
                lua_remove(L, -2);
                store(L, results, k, "err");
            }
            done++;
            progressed = 1;
        }
        if (progressed && fn) {
            lua_pushvalue(L, fn);
            acq_pushint64(L, done);
            acq_pushint64(L, n);
            if (lua_pcall(L, 2, 0, 0) != 0) {
                detach_all(c);                     /* abort what is in flight */
                return lua_error(L);
            }
        }
        if (done < n && !added && active > 0) {
            int timeout = 1000;
            if (next_ready > 0) {
                double ms = (next_ready - now()) * 1000.0;
                timeout = ms < 0 ? 0 : ms < 1000 ? (int)ms + 1 : 1000;
            }
            curl_multi_poll(c->batch->multi, NULL, 0, timeout, NULL);
        }
    }
    detach_all(c);
    if (c->reconcile_ms >= 0) reconcile_all(L, c, items, results, it, n);
    lua_settop(L, results);
    return 1;
}

static int batch_l_run(lua_State *L) {      /* client (light), items, opts */
    return run(L, (acq_client_t *)lua_touserdata(L, 1), 2, 3);
}

/* run, with the client marked busy, and whatever run raises (on_progress,
   out of memory, an interrupt) leaving no transfer attached and the client
   usable. Inside on_progress, create_cases on the same client raises;
   create_case works (its handle is not the batch's). */
static int guarded(lua_State *L, acq_client_t *c, int items, int opts) {
    int status;
    if (c->busy)
        luaL_error(L, "acquire: create_cases is already running on this client "
                      "(called from on_progress?)");
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
