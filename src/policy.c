/*
 * policy.c: after a failure on attempt N, wait how long, or give up?
 *
 * Acquire has no idempotency keys, so a request that may have reached it
 * is never sent again. Retried: failures where the case cannot exist
 * (nothing was sent: DNS, refused, connect timeout, reset before the first
 * request byte) with exponential backoff and full jitter, and 429/503 that
 * carry Retry-After (honoured; above ACQ_RETRY_AFTER_CAP, given up).
 * Knows nothing of libcurl or nginx: every transport asks the same thing.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include "core.h"

#define BACKOFF_BASE 0.5
#define BACKOFF_CAP  8.0

static double uniform(uint64_t *s) {          /* xorshift64*, in [0, 1) */
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

uint64_t policy_seed(const void *salt) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
           (uint64_t)(uintptr_t)salt ^ 0x9E3779B97F4A7C15ull;
}

/* The Retry-After the policy honours, or -1 (none, too long, or an answer
   that may have created the case). */
static double honoured(const acq_failure_t *f) {
    if (!f->retryable || f->retry_after < 0 || f->retry_after > ACQ_RETRY_AFTER_CAP) return -1;
    return f->retry_after;
}

/* Seconds to wait before attempt+1, or -1 to give up. rng: xorshift state. */
static double policy_delay(const acq_failure_t *f, int attempt, int max_retries,
                           uint64_t *rng) {
    double ceiling;
    if (attempt > max_retries || !f->retryable) return -1;
    if (f->retry_after >= 0) return honoured(f);
    ceiling = BACKOFF_BASE * ldexp(1.0, attempt - 1);
    if (ceiling > BACKOFF_CAP) ceiling = BACKOFF_CAP;
    return uniform(rng) * ceiling;             /* full jitter */
}

/* Reads the failure out of the err table at idx. */
static void policy_failure_from_err(lua_State *L, int idx, acq_failure_t *f) {
    const char *kind;
    long status = 0;
    int maybe_created;
    idx = acq_absindex(L, idx);
    lua_getfield(L, idx, "kind");
    kind = lua_tostring(L, -1);
    lua_getfield(L, idx, "status");
    if (lua_isnumber(L, -1)) {                 /* a user's table may hold anything */
        lua_Number d = lua_tonumber(L, -1);
        if (d >= 0 && d < 1000) status = (long)d;
    }
    lua_getfield(L, idx, "maybe_created");
    maybe_created = lua_toboolean(L, -1);
    lua_getfield(L, idx, "retry_after");
    f->retry_after = lua_isnumber(L, -1) ? (double)lua_tonumber(L, -1) : -1;
    f->retryable = 0;
    if (kind && !maybe_created) {
        if (strcmp(kind, "network") == 0 || strcmp(kind, "timeout") == 0) {
            f->retryable = 1;
            f->retry_after = -1;
        } else if (strcmp(kind, "proxy") == 0) {      /* nothing reached Acquire */
            lua_getfield(L, idx, "proxy_status");
            f->retryable = !(lua_tonumber(L, -1) >= 400 && lua_tonumber(L, -1) < 500);
            f->retry_after = -1;                      /* a 407 will not heal */
            lua_pop(L, 1);
        } else if (strcmp(kind, "http") == 0 && (status == 429 || status == 503)) {
            f->retryable = f->retry_after >= 0;
        }
    }
    lua_pop(L, 4);
}

double policy_next(lua_State *L, int err, int attempt, int max_retries, uint64_t *rng) {
    acq_failure_t f;
    double wait;
    policy_failure_from_err(L, err, &f);
    wait = policy_delay(&f, attempt, max_retries, rng);
    if (wait < 0) error_setint(L, acq_absindex(L, err), "attempts", attempt);
    return wait;
}

double policy_pause(lua_State *L, int err) {
    acq_failure_t f;
    policy_failure_from_err(L, err, &f);
    return honoured(&f);
}

/* Whose answer is a status? Decided by the stage it came at, never by the
   number alone: through a CONNECT tunnel, the CONNECT's answer is the
   proxy's (connect_status) and everything after the tunnel is up is
   Acquire's, a 407 included; through a plain proxy (absolute-form requests)
   a 407 is the proxy's (Acquire never asks for proxy credentials; either
   way nothing was created, and it is not retried: a 407 will not heal). */
int policy_from_proxy(int proxy_mode, long connect_status, long status) {
    if (proxy_mode == ACQ_PROXY_MODE_TUNNEL)
        return connect_status > 0 && connect_status / 100 != 2;
    if (proxy_mode == ACQ_PROXY_MODE_PLAIN) return status == 407;
    return 0;
}

/* acquire.proxy_answered(mode, connect_status, status) -> boolean: the
   rule above, for acquire.ngx (mode: "plain", "tunnel" or nil) */
int policy_l_proxy_answered(lua_State *L) {
    static const char *const modes[] = { "none", "plain", "tunnel", NULL };
    int mode = lua_isnoneornil(L, 1) ? 0 : luaL_checkoption(L, 1, NULL, modes);
    lua_Number a = luaL_optnumber(L, 2, 0), b = luaL_optnumber(L, 3, 0);
    long cs = a >= 0 && a < 1000 ? (long)a : 0, st = b >= 0 && b < 1000 ? (long)b : 0;
    lua_pushboolean(L, policy_from_proxy(mode, cs, st));
    return 1;
}

void policy_sleep(double seconds) {
    struct timespec ts;
    if (!(seconds > 0)) return;
    if (seconds > ACQ_MAX_WAIT) seconds = ACQ_MAX_WAIT;   /* and no overflowing cast */
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* An integer argument as an int, clamped at INT_MAX: whatever Lua holds
   (an integer, or on 5.1/5.2 a double of any size), no overflowing cast. */
static int check_count(lua_State *L, int arg, lua_Integer def, int optional) {
    if (optional && lua_isnoneornil(L, arg)) return (int)def;
#if ACQ_HAS_INTEGERS
    {
        lua_Integer v = luaL_checkinteger(L, arg);
        if (v < 0) return -1;
        return v > INT_MAX ? INT_MAX : (int)v;
    }
#else
    {
        lua_Number v = luaL_checknumber(L, arg);
        luaL_argcheck(L, v == floor(v), arg, "number has no integer representation");
        if (v < 0) return -1;
        return v > INT_MAX ? INT_MAX : (int)v;
    }
#endif
}

/* acquire.retry_after(err, attempt [, max_retries = 2]) -> seconds | nil */
int policy_l_retry_after(lua_State *L) {
    acq_failure_t f;
    uint64_t rng = policy_seed(L);
    int attempt, max_retries;
    double delay;
    luaL_checktype(L, 1, LUA_TTABLE);
    attempt = check_count(L, 2, 0, 0);
    max_retries = check_count(L, 3, ACQ_MAX_RETRIES_DEFAULT, 1);
    luaL_argcheck(L, attempt >= 1, 2, "attempt must be 1 or more");
    luaL_argcheck(L, max_retries >= 0 && max_retries <= ACQ_MAX_RETRIES_MAX, 3,
                  lua_pushfstring(L, "max_retries must be from 0 to %d", ACQ_MAX_RETRIES_MAX));
    policy_failure_from_err(L, 1, &f);
    delay = policy_delay(&f, attempt, max_retries, &rng);
    if (delay < 0) lua_pushnil(L);
    else lua_pushnumber(L, delay);
    return 1;
}
