/*
 * journal.h: the file primitives of acquire.journal (lua/acquire/journal.lua),
 * what plain Lua cannot do: create exclusively, refuse a symbolic link, hold
 * a POSIX record lock for the whole run, append a record whole and
 * fdatasync'd or fail for good, read the file back.
 *
 * One handle, acq_journal_t, in three files:
 *   src/journal.c   the file: open, lock, whole appends, the one-pass index
 *                   (j:scan), close; and the Lua face's table of methods
 *   src/jrecord.c   records: formatted (j:put) and parsed (for j:scan), in one
 *                   place; FNV-1a 64 and an item's digest (j:digest, j:input, j:fnv)
 *   src/jsync.c     the syncs: j:sync, and the flushing thread (j:sync_async,
 *                   j:wait, j:synced, j:flushes)
 */
#ifndef ACQUIRE_JOURNAL_H
#define ACQUIRE_JOURNAL_H

#include <pthread.h>
#include <sys/types.h>
#include "core.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define ACQ_MT_JOURNAL       "acquire.Journal"

typedef struct acq_journal_t {
    int    fd;                   /* -1: closed */
    off_t  good;                 /* the length of what was written whole */
    int    failed;               /* errno of the append that failed; 0: none */
    int    undone;               /* that append's bytes were taken back */
    char  *path;
    char   id[64];               /* "dev:ino", in this state's table of open journals */
    int    dirty;                /* appended since the last fdatasync */
    long   flushes;              /* fdatasyncs made */
    /* the index (scan): item i's last record, i = 1..last */
    unsigned char *state;        /* 0: none; else a jrecord_states entry */
    uint64_t *digest;
    uint64_t *off;               /* where its record starts */
    size_t   cap, last;
    int64_t *ids;                /* the ids of "created" records */
    size_t   nids, capids;
    acq_buf_t pend;              /* records put, not written yet (j:put) */
    acq_buf_t scratch;           /* an item's body (j:digest) */
    uint64_t input;              /* the input's digest so far (j:digest's fold) */
    long     ninput;             /* digests folded into it */
    /* the syncer: a thread that fdatasyncs what was written when asked
       (j:sync_async); req, done, serr, bflushes and quit under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int      inited, started, quit;
    long     req, done;          /* generations of fdatasync asked for, done */
    int      serr;               /* errno of a background fdatasync that failed */
    long     bflushes;           /* fdatasyncs the thread made */
    long     waits;              /* j:wait calls that found their fdatasync running */
    double   waited;             /* seconds they waited */
} acq_journal_t;

/* ---- journal.c: the file ---------------------------------------------- */

/* acquire._journal_open(path) -> j, created | nil, msg, errno[, pid] */
int   journal_l_open(lua_State *L);
void  journal_open(lua_State *L);       /* the metatable; [-0,+0] */
acq_journal_t *journal_check(lua_State *L);        /* j at 1 (raises if not one) */
acq_journal_t *journal_check_open(lua_State *L);   /* and not closed (raises if it is) */
/* nil, the message of the append that failed (for it and every later one), errno -> 3 */
int   journal_push_failed(lua_State *L, acq_journal_t *j);
/* the records put, in one write(2): 0, or -1 with j->failed set */
int   journal_write_pending(acq_journal_t *j);
int   journal_datasync(acq_journal_t *j);          /* fdatasync, counted: 0 or -1 (errno) */

/* ---- jrecord.c: records and digests ------------------------------------ */

#define JRECORD_NSTATES 5
/* a record's states: [0] NULL (no record), then "sent", "created", "failed", "maybe_created" */
extern const char *const jrecord_states[JRECORD_NSTATES];
/* a record line (without its LF) -> 1 with item, digest, state (and a created one's id, or 0) */
int   jrecord_parse(const char *p, size_t n, uint64_t *item, uint64_t *dg, int *state, int64_t *id);
void  jrecord_push_digest(lua_State *L, uint64_t v);   /* 16 hex digits */
int   jrecord_l_put(lua_State *L);
int   jrecord_l_digest(lua_State *L);
int   jrecord_l_input(lua_State *L);
int   jrecord_l_fnv(lua_State *L);

/* ---- jsync.c: the syncs and the flushing thread ------------------------ */

void  jsync_init(acq_journal_t *j);     /* the thread's mutex and condition (not the thread) */
void  jsync_stop(acq_journal_t *j);     /* the thread joined, if started; those destroyed */
int   jsync_l_sync(lua_State *L);
int   jsync_l_sync_async(lua_State *L);
int   jsync_l_wait(lua_State *L);
int   jsync_l_synced(lua_State *L);
int   jsync_l_flushes(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
