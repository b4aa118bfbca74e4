/*
 * batch.h: create_cases' arguments (batchopts.c), for its run (batch.c).
 */
#ifndef ACQUIRE_BATCH_H
#define ACQUIRE_BATCH_H

#include "call.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

typedef struct batch_opts_t {
    int concurrency;
    double interval;                          /* 1 / rate; 0: no rate */
    int on_send, on_wave, on_result, on_progress;   /* the hooks' stack indices; 0: none */
} batch_opts_t;

#define ACQ_BATCH_CONCURRENCY 8               /* create_cases' default */
#define ACQ_MAX_CONCURRENCY 64                  /* create_cases' transfers at once */
#define ACQ_MAX_RATE        10000               /* create_cases' requests per second, at most */
#define ACQ_MIN_RATE        0.01                /* and at least (1 / rate stays under ACQ_MAX_WAIT) */

typedef struct item_t {
    acq_call_t call;                  /* the engine's state of it */
    long long id;
    long k;                           /* 0-based item index */
    int attempts, used;               /* used: the pool entry holds a live item */
    double ready_at;                  /* monotonic seconds, while waiting to retry */
} item_t;

/* What one create_cases keeps while it runs. Items live in a pool while in
   flight or waiting to retry, and are forgotten when done: with an iterator
   as input, memory stays the same whatever the number of items. */
#define POOL (2 * ACQ_MAX_CONCURRENCY)
typedef struct batch_run_t {
    batch_opts_t o;
    int items;                                 /* the input: a table or a function */
    int stream;                                /* it is a function */
    int bodies;                                /* table input: every body, encoded first */
    int results;                               /* table input: results[k]; else 0 */
    int live;                                  /* live[p]: pool entry p's call values (call.c) */
    int live_ref;                              /* the same, in the registry (abort) */
    int held;                                  /* { { k, call, vals }, … }: to reconcile */
    int reconcile;
    long n;                                    /* items known so far (table: all) */
    long drawn;                                /* items taken from the input */
    int ended;                                 /* the input has no more */
    long long *ids;                            /* table input: each item's contactId */
    item_t pool[POOL];
    int nwait, waiting[POOL];                  /* pool entries waiting to retry */
    long counts[3];                            /* created, failed, uncertain */
    double open_at;                            /* no request starts before (monotonic) */
    double timeout;                            /* a transfer's, in seconds; 0: none */
    double paused;                             /* seconds spent in hooks and the log so far */
} batch_run_t;


int   batch_l_encode_item(lua_State *L);
/* Checks the options at idx (raising on misuse) and pushes the hooks. */
void  batch_parse_opts(lua_State *L, int idx, batch_opts_t *o);
/* Returns 1 with the journal's results pushed, or 0 when opts has no journal. */
int   batch_journaled(lua_State *L, int client, int items, int opts);
void  batch_check_items(lua_State *L, int idx);
/* The run's state from its arguments (items at items, opts at opts): options
   checked, claims taken, and for a table every item checked and encoded
   before anything is sent. */
void  batch_begin(lua_State *L, acq_engine_t *e, long timeout_ms, batch_run_t *b, int items, int opts);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
