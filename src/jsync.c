/*
 * jsync.c: the journal's syncs (src/journal.h).
 *
 *   j:sync()         -> true | nil, msg, errno   the records put, written, then fdatasync of
 *                    all unsynced (and of the background syncs asked for: their failure is its)
 *   j:sync_async()   -> ticket | nil, msg, errno   those written, and an fdatasync of all
 *                    written asked of the journal's thread (started on first use); the
 *                    calling thread goes on
 *   j:wait(ticket)   -> true | nil, msg, errno   once that fdatasync is done (at once if it
 *                    is); a failed one fails the journal for good
 *   j:synced()       -> the last ticket whose fdatasync has ended (never waits)
 *   j:flushes()      -> the fdatasyncs this handle made (its thread's too), the j:wait
 *                    calls that found theirs running, the seconds they waited
 *
 * The thread only fdatasyncs: it never touches the Lua state, and the
 * journal's fields it shares (req, done, serr, bflushes, quit) are under mu.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include "journal.h"

static void *syncer(void *arg) {
    acq_journal_t *j = (acq_journal_t *)arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        long target;
        int rc, e;
        while (!j->quit && j->done >= j->req) pthread_cond_wait(&j->cv, &j->mu);
        if (j->done >= j->req) break;             /* asked to quit, nothing left to do */
        target = j->req;
        pthread_mutex_unlock(&j->mu);
        rc = fdatasync(j->fd);
        e = errno;
        pthread_mutex_lock(&j->mu);
        j->bflushes++;
        if (rc != 0 && j->serr == 0) j->serr = e;
        j->done = target;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* The thread, with every signal blocked in it (a Ctrl-C is the main
   thread's). 0, or an errno. */
static int syncer_start(acq_journal_t *j) {
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&j->thread, NULL, syncer, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) j->started = 1;
    return rc;
}

/* Waits until generation t is done: 0, or the errno of a background
   fdatasync that failed (the journal then takes no more). */
static int syncer_wait(acq_journal_t *j, long t) {
    int e;
    if (!j->started) return 0;
    pthread_mutex_lock(&j->mu);
    if (j->done < t) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        while (j->done < t) pthread_cond_wait(&j->cv, &j->mu);
        clock_gettime(CLOCK_MONOTONIC, &b);
        j->waits++;
        j->waited += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    }
    e = j->serr;
    pthread_mutex_unlock(&j->mu);
    if (e && !j->failed) j->failed = e, j->undone = 0;
    return e;
}

void jsync_init(acq_journal_t *j) {
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->inited = 1;
}

void jsync_stop(acq_journal_t *j) {
    if (j->started) {
        pthread_mutex_lock(&j->mu);
        j->quit = 1;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->thread, NULL);
        j->started = 0;
    }
    if (j->inited) {
        pthread_cond_destroy(&j->cv);
        pthread_mutex_destroy(&j->mu);
        j->inited = 0;
    }
}

/* ---- the Lua face ------------------------------------------------------ */

/* The records put, written; then fdatasync of all written unsynced. A failed
   fdatasync is for good: the kernel may have dropped those pages, so nothing
   after them is trusted. */
int jsync_l_sync(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    if (j->failed) return journal_push_failed(L, j);
    if (journal_write_pending(j) != 0) return journal_push_failed(L, j);
    if (j->dirty && journal_datasync(j) != 0) {
        j->failed = errno;
        j->undone = 0;
        return journal_push_failed(L, j);
    }
    if (syncer_wait(j, j->req) != 0) return journal_push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

/* The records put, written; an fdatasync of everything written asked of
   the thread. -> its ticket (for j:wait). Without a thread (it could not
   start), the fdatasync is made here. */
int jsync_l_sync_async(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    long t;
    if (j->failed || journal_write_pending(j) != 0) return journal_push_failed(L, j);
    if (j->dirty && !j->started && syncer_start(j) != 0) {
        if (journal_datasync(j) != 0) {
            j->failed = errno;
            j->undone = 0;
            return journal_push_failed(L, j);
        }
    }
    if (j->dirty) {
        pthread_mutex_lock(&j->mu);
        t = ++j->req;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&j->mu);
        j->dirty = 0;
    } else {
        t = j->req;                               /* asked for already, or done here */
    }
    lua_pushinteger(L, (lua_Integer)t);
    return 1;
}

/* j:synced() -> the last ticket whose fdatasync has ended (never waits) */
int jsync_l_synced(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    long d = j->req;
    if (j->started) {
        pthread_mutex_lock(&j->mu);
        d = j->done;
        pthread_mutex_unlock(&j->mu);
    }
    lua_pushinteger(L, (lua_Integer)d);
    return 1;
}

int jsync_l_wait(lua_State *L) {
    acq_journal_t *j = journal_check_open(L);
    lua_Integer t = luaL_checkinteger(L, 2);
    if (j->failed) return journal_push_failed(L, j);
    if (t > 0 && syncer_wait(j, (long)t) != 0) return journal_push_failed(L, j);
    lua_pushboolean(L, 1);
    return 1;
}

/* j:flushes() -> fdatasyncs made (here and on the thread), waits, seconds waited */
int jsync_l_flushes(lua_State *L) {
    acq_journal_t *j = journal_check(L);
    long b = 0;
    if (j->inited) {
        pthread_mutex_lock(&j->mu);
        b = j->bflushes;
        pthread_mutex_unlock(&j->mu);
    }
    lua_pushinteger(L, (lua_Integer)j->flushes + (lua_Integer)b);
    lua_pushinteger(L, (lua_Integer)j->waits);
    lua_pushnumber(L, (lua_Number)j->waited);
    return 3;
}
