/*
 * compactor.c: the compaction worker's thread and its queue (compactor.h says why). The merge
 * itself is the tree's (lsm_tree_job_merge_step): this file hands jobs over, picks which one
 * the worker merges next, and hands them back.
 */
#include "lsm/compactor.h"

#include "lsm/tree.h"

#include "lib/log.h"

#include <errno.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * The job whose install is nearest for the merging it has left goes next, a chunk at a time:
 * the values it has left to merge over the values the loop has left to grant before it
 * installs it (and waits). One job at a time, in order, had the loop wait 1.18 s for the
 * accounts' small job behind a merge of millions of ids (30 M stored); the job with the fewest
 * values left first had it wait for the big jobs instead (4.4 s over a 30 M load).
 *
 * A job the loop waits for goes first.
 *
 * A job runs at most a quarter of itself (and at least 4 chunks) ahead of the loop's grants,
 * unless the loop waits for it: the worker's reads and writes follow the writes that pace the
 * jobs, and an idle ledger's reads (the lookups after a restart) do not queue behind a merge
 * running flat out. UINT32_MAX: no job may go on now.
 */
#define WORKER_LEAD_MIN (4u * 65536u)

static uint32_t job_next(const struct lsm_compactor *c)
{
        uint32_t best = UINT32_MAX;
        double best_urgency = -1.0;
        for (uint32_t i = 0; i < c->queue_count; i++) {
                const struct lsm_compaction *job = &c->queue[i]->job;
                uint64_t granted = __atomic_load_n(&job->worker_granted, __ATOMIC_RELAXED);
                uint64_t lead = MAX(job->values_total / 4, (uint64_t)WORKER_LEAD_MIN);
                bool may = c->stop || job->worker_urgent ||
                           __atomic_load_n(&job->cancel, __ATOMIC_RELAXED) ||
                           job->worker_merged < granted + lead;
                if (!may)
                        continue;
                uint64_t left = job->values_total - MIN(job->values_total, job->worker_merged);
                uint64_t until = job->values_total - MIN(job->values_total, granted);
                double urgency = job->worker_urgent ? (double)UINT64_MAX
                                                    : (double)left / (double)(until + 1);
                if (urgency > best_urgency) {
                        best = i;
                        best_urgency = urgency;
                }
        }
        return best;
}

static void *worker_main(void *context)
{
        struct lsm_compactor *c = context;
        pthread_mutex_lock(&c->mutex);
        for (;;) {
                uint32_t at = UINT32_MAX;
                while (!c->stop && (c->queue_count == 0 || (at = job_next(c)) == UINT32_MAX))
                        pthread_cond_wait(&c->queued, &c->mutex);
                if (c->queue_count == 0)
                        break; /* stop, nothing left */
                if (at == UINT32_MAX)
                        at = job_next(c); /* stopping: every job may go on */
                struct lsm_tree *tree = c->queue[at];
                c->chunks_started++;
                pthread_mutex_unlock(&c->mutex);
                uint64_t start = now_ns();
                bool done = lsm_tree_job_merge_step(tree, &c->grid);
                uint64_t took = now_ns() - start;
                pthread_mutex_lock(&c->mutex);
                c->busy_ns += took;
                c->chunks_ended++;
                tree->job.worker_progress = tree->job.worker_merged;
                if (c->keeping_up)
                        pthread_cond_broadcast(&c->done);
                if (done) {
                        c->jobs++;
                        c->queue[at] = c->queue[--c->queue_count];
                        tree->job.worker_done = true;
                        pthread_cond_broadcast(&c->done);
                }
        }
        pthread_mutex_unlock(&c->mutex);
        return NULL;
}

int lsm_compactor_start(struct lsm_compactor *c, const struct lsm_device *device)
{
        memset(c, 0, sizeof(*c));
        /* block_count_max 1: the worker's grid keeps no free set; it writes reserved addresses. */
        if (lsm_grid_init(&c->grid, device, 1, LSM_COMPACTOR_CACHE_BLOCKS) != 0)
                return -ENOMEM;
        c->grid.cache_cold_writes = false;
        pthread_mutex_init(&c->mutex, NULL);
        pthread_cond_init(&c->queued, NULL);
        pthread_cond_init(&c->done, NULL);
        int rc = pthread_create(&c->thread, NULL, worker_main, c);
        if (rc != 0) {
                pthread_cond_destroy(&c->done);
                pthread_cond_destroy(&c->queued);
                pthread_mutex_destroy(&c->mutex);
                lsm_grid_deinit(&c->grid);
                return -rc;
        }
        c->running = true;
        return 0;
}

void lsm_compactor_stop(struct lsm_compactor *c)
{
        if (!c->running)
                return;
        pthread_mutex_lock(&c->mutex);
        c->stop = true;
        pthread_cond_broadcast(&c->queued);
        pthread_mutex_unlock(&c->mutex);
        pthread_join(c->thread, NULL);
        pthread_cond_destroy(&c->done);
        pthread_cond_destroy(&c->queued);
        pthread_mutex_destroy(&c->mutex);
        lsm_grid_deinit(&c->grid);
        c->running = false;
}

void lsm_compactor_submit(struct lsm_compactor *c, struct lsm_tree *tree)
{
        pthread_mutex_lock(&c->mutex);
        tally_assert(c->queue_count < LSM_COMPACTOR_QUEUE);
        tree->job.worker_done = false;
        tree->job.worker_urgent = false;
        tree->job.worker_merged = 0;
        tree->job.worker_progress = 0;
        c->queue[c->queue_count++] = tree;
        pthread_cond_signal(&c->queued);
        pthread_mutex_unlock(&c->mutex);
}

void lsm_compactor_granted(struct lsm_compactor *c)
{
        pthread_mutex_lock(&c->mutex);
        pthread_cond_signal(&c->queued);
        pthread_mutex_unlock(&c->mutex);
}

void lsm_compactor_wait(struct lsm_compactor *c, struct lsm_tree *tree)
{
        pthread_mutex_lock(&c->mutex);
        if (!tree->job.worker_done) {
                tree->job.worker_urgent = true; /* whatever its grants say */
                pthread_cond_signal(&c->queued);
                uint64_t merged = tree->job.worker_progress; /* for the log */
                uint64_t start = now_ns();
                while (!tree->job.worker_done)
                        pthread_cond_wait(&c->done, &c->mutex);
                uint64_t waited = now_ns() - start;
                c->waits++;
                c->wait_ns += waited;
                if (waited > 100000000u)
                        log_info("compaction worker: the loop waited tree=%s ms=%llu "
                                 "level=%u tables=%u+%u values=%llu merged_before=%llu "
                                 "(waits=%llu total_ms=%llu; jobs=%llu busy_ms=%llu)",
                                 tree->name, (unsigned long long)(waited / 1000000u),
                                 tree->job.from, tree->job.upper_count, tree->job.overlap_count,
                                 (unsigned long long)tree->job.values_total,
                                 (unsigned long long)merged,
                                 (unsigned long long)c->waits,
                                 (unsigned long long)(c->wait_ns / 1000000u),
                                 (unsigned long long)c->jobs,
                                 (unsigned long long)(c->busy_ns / 1000000u));
        }
        pthread_mutex_unlock(&c->mutex);
}

void lsm_compactor_keep_up(struct lsm_compactor *c, struct lsm_tree *tree, uint64_t lag)
{
        uint64_t granted = tree->job.values_done; /* the loop's own */
        if (granted <= lag)
                return;
        uint64_t target = granted - lag;
        pthread_mutex_lock(&c->mutex);
        if (!tree->job.worker_done && tree->job.worker_progress < target) {
                tree->job.worker_urgent = true;
                c->keeping_up = true;
                pthread_cond_signal(&c->queued);
                uint64_t start = now_ns();
                while (!tree->job.worker_done && tree->job.worker_progress < target)
                        pthread_cond_wait(&c->done, &c->mutex);
                c->waits++;
                c->wait_ns += now_ns() - start;
                c->keeping_up = false;
                tree->job.worker_urgent = false;
        }
        pthread_mutex_unlock(&c->mutex);
}

void lsm_compactor_activity(const struct lsm_compactor *c,
                            struct lsm_compactor_activity *activity)
{
        memset(activity, 0, sizeof(*activity));
        if (!c->running)
                return;
        /* The counters are the worker's: the lock is taken even through a const pointer. */
        pthread_mutex_t *mutex = (pthread_mutex_t *)&c->mutex;
        pthread_mutex_lock(mutex);
        activity->busy_ns = c->busy_ns;
        activity->chunks_started = c->chunks_started;
        activity->chunks_ended = c->chunks_ended;
        pthread_mutex_unlock(mutex);
}
