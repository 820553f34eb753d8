/*
 * compactor.h: the compaction worker, a thread that merges the trees' compaction jobs on the
 * second core while the loop executes operations.
 *
 * Why: merging is a third to a half of a loaded replica's loop (docs/storage.md, "Compaction
 * on a second core"), and the machine has a core the loop does not use. Replicas must still
 * write the same blocks at the same ops, so the worker decides nothing: a job starts at an op
 * the loop fixes (lsm_tree_compact_step), with its inputs and the addresses of its output
 * reserved then (lsm_grid_reserve); the worker merges it with its own grid (its own small
 * cache, the device's thread-safe functions, the job's reserved addresses); and the job
 * installs at the op whose beat grants its last values, the loop waiting for the worker if it
 * is not done. Where the merge ran changes no byte and no op.
 *
 * The worker touches only its job: the inputs (copied when the job started), the tree's
 * `builder` and `built` (the loop does not use them while a job is on the worker) and the
 * job's own fields. The loop reads the result after lsm_compactor_wait.
 */
#ifndef TALLY_LSM_COMPACTOR_H
#define TALLY_LSM_COMPACTOR_H

#include "lsm/forest.h"
#include "lsm/grid.h"

#include <pthread.h>
#include <stdbool.h>

struct lsm_tree;

#define LSM_COMPACTOR_QUEUE LSM_FOREST_TREES_MAX /* jobs at once: at most one per tree */
#define LSM_COMPACTOR_CACHE_BLOCKS 64u /* the worker's cache: its inputs' index blocks */

struct lsm_compactor {
        pthread_t thread;
        pthread_mutex_t mutex;
        pthread_cond_t queued; /* a job was queued, or stop */
        pthread_cond_t done;   /* a job finished */
        /* Jobs not done yet, merged a chunk at a time, the one due soonest first (job_next). */
        struct lsm_tree *queue[LSM_COMPACTOR_QUEUE];
        uint32_t queue_count;
        bool stop;
        bool running; /* the thread exists */
        bool keeping_up; /* the loop waits in lsm_compactor_keep_up: tell it of each chunk */
        struct lsm_grid grid; /* the worker's: no free set of its own (lsm_reserve) */
        /* Measured: the loop's waits for a merge, and the worker's time merging. */
        uint64_t waits;
        uint64_t wait_ns;
        uint64_t jobs;
        uint64_t busy_ns;
        /* Chunks of merging begun and ended: the worker was merging during an interval iff one
         * was in progress at its start or one began before its end (lsm_compactor_activity). */
        uint64_t chunks_started;
        uint64_t chunks_ended;
};

struct lsm_compactor_activity {
        uint64_t busy_ns;
        uint64_t chunks_started;
        uint64_t chunks_ended;
};

/*
 * Starts the worker over `device` (whose read and write the worker's thread may call while the
 * loop calls the loop's device). 0, or a negative errno (no thread: jobs merge in the loop).
 */
int lsm_compactor_start(struct lsm_compactor *compactor, const struct lsm_device *device);
/* Waits for the job in progress (queued ones are dropped by their trees first) and ends it. */
void lsm_compactor_stop(struct lsm_compactor *compactor);
/* Queues `tree`'s job (started with its inputs and reserve). */
void lsm_compactor_submit(struct lsm_compactor *compactor, struct lsm_tree *tree);
/* The loop granted a job more values: the worker may go on with it (job_next in compactor.c). */
void lsm_compactor_granted(struct lsm_compactor *compactor);
/* Returns once `tree`'s job is merged (or failed, or was cancelled). */
void lsm_compactor_wait(struct lsm_compactor *compactor, struct lsm_tree *tree);
/*
 * Returns once the worker has merged all but `lag` of the values the loop has granted `tree`'s
 * job (or the job is done): the loop waits a little at each grant the worker falls behind
 * instead of all at once at the install (lsm/tree.c, job_grant).
 */
void lsm_compactor_keep_up(struct lsm_compactor *compactor, struct lsm_tree *tree,
                           uint64_t lag);
/* The worker's counters, read under its lock (zero when it is not running). */
void lsm_compactor_activity(const struct lsm_compactor *compactor,
                            struct lsm_compactor_activity *activity);

#endif
