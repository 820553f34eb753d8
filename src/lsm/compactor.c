/*
 * compactor.c: the compaction worker's thread and its queue (compactor.h says why). The merge
 * itself is the tree's (lsm_tree_job_merge): this file only hands jobs over and back.
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

static void *worker_main(void *context)
{
        struct lsm_compactor *c = context;
        pthread_mutex_lock(&c->mutex);
        for (;;) {
                while (!c->stop && c->queue_count == 0)
                        pthread_cond_wait(&c->queued, &c->mutex);
                if (c->queue_count == 0)
                        break; /* stop, nothing left */
                struct lsm_tree *tree = c->queue[c->queue_head];
                c->queue_head = (c->queue_head + 1) % LSM_COMPACTOR_QUEUE;
                c->queue_count--;
                pthread_mutex_unlock(&c->mutex);
                uint64_t start = now_ns();
                lsm_tree_job_merge(tree, &c->grid);
                uint64_t took = now_ns() - start;
                pthread_mutex_lock(&c->mutex);
                c->busy_ns += took;
                c->jobs++;
                tree->job.worker_done = true;
                pthread_cond_broadcast(&c->done);
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
        c->queue[(c->queue_head + c->queue_count) % LSM_COMPACTOR_QUEUE] = tree;
        c->queue_count++;
        pthread_cond_signal(&c->queued);
        pthread_mutex_unlock(&c->mutex);
}

void lsm_compactor_wait(struct lsm_compactor *c, struct lsm_tree *tree)
{
        pthread_mutex_lock(&c->mutex);
        if (!tree->job.worker_done) {
                uint64_t start = now_ns();
                while (!tree->job.worker_done)
                        pthread_cond_wait(&c->done, &c->mutex);
                uint64_t waited = now_ns() - start;
                c->waits++;
                c->wait_ns += waited;
                if (waited > 100000000u)
                        log_info("compaction worker: the loop waited tree=%s ms=%llu "
                                 "(waits=%llu total_ms=%llu; jobs=%llu busy_ms=%llu)",
                                 tree->name, (unsigned long long)(waited / 1000000u),
                                 (unsigned long long)c->waits,
                                 (unsigned long long)(c->wait_ns / 1000000u),
                                 (unsigned long long)c->jobs,
                                 (unsigned long long)(c->busy_ns / 1000000u));
        }
        pthread_mutex_unlock(&c->mutex);
}
