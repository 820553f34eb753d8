/*
 * lsm_bench.c: the LSM core (src/lsm/) loaded like the transfers of a payment ledger, on a
 * real file, to check the storage design's figures before the ledger moves onto it
 * (docs/storage.md): insert throughput with flushes and compactions, bytes of disk per stored
 * transfer with every index TigerBeetle's queries filter on, cold and warm lookups by id, and
 * the latency of a filtered query of 10 results.
 *
 *   build/release/bench/lsm_bench [transfers] [file] [--sequential]
 *
 * Transfers are 128-byte objects with random ids (or sequential with --sequential), 10,000
 * accounts (Pareto-hot), user_data fields set on a third of them, 4 ledgers and 200 codes;
 * inserted in bars of 32 batches of 8,189 (262,048 transfers), each bar flushed and compacted.
 * "Cold" lookups first drop the block cache and the file's pages (posix_fadvise DONTNEED). The
 * file is removed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lsm/groove.h"
#include "wire/types.h"

#define BAR_TRANSFERS (32u * 8189u)
#define ACCOUNTS 10000u
#define GRID_BLOCKS (1u << 22) /* 256 GiB of address space; the file is sparse */

static int fd = -1;

static int file_read(void *context, uint64_t address, uint8_t *block)
{
        (void)context;
        ssize_t n = pread(fd, block, LSM_BLOCK_SIZE, (off_t)(address - 1) * LSM_BLOCK_SIZE);
        if (n < 0)
                return -errno;
        if (n < (ssize_t)LSM_BLOCK_SIZE)
                memset(block + n, 0, LSM_BLOCK_SIZE - (size_t)n);
        return 0;
}

static int file_write(void *context, uint64_t address, const uint8_t *block)
{
        (void)context;
        ssize_t n = pwrite(fd, block, LSM_BLOCK_SIZE, (off_t)(address - 1) * LSM_BLOCK_SIZE);
        return n == (ssize_t)LSM_BLOCK_SIZE ? 0 : -EIO;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
        uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

static uint32_t pick_account(void)
{
        uint32_t lo = 0, hi = ACCOUNTS;
        while (hi - lo > 1 && rng() % 10 < 8)
                hi = lo + (hi - lo + 4) / 5;
        return lo + (uint32_t)(rng() % (hi - lo));
}

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int compare_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static const struct lsm_groove_config transfers_config = {
        .name = "transfers",
        .tree_base = 0,
        .object_size = sizeof(struct wire_transfer),
        .id_offset = offsetof(struct wire_transfer, id),
        .timestamp_offset = offsetof(struct wire_transfer, timestamp),
        .index_count = 7,
        .indexes = {{"debit_account_id", offsetof(struct wire_transfer, debit_account_id), 16},
                    {"credit_account_id", offsetof(struct wire_transfer, credit_account_id), 16},
                    {"user_data_128", offsetof(struct wire_transfer, user_data_128), 16},
                    {"user_data_64", offsetof(struct wire_transfer, user_data_64), 8},
                    {"user_data_32", offsetof(struct wire_transfer, user_data_32), 4},
                    {"ledger", offsetof(struct wire_transfer, ledger), 4},
                    {"code", offsetof(struct wire_transfer, code), 2}},
        .memtable_max = BAR_TRANSFERS,
};

static void lookups(struct lsm_groove *g, struct lsm_grid *grid, const u128 *ids, uint64_t n,
                    bool cold, const char *label)
{
        enum { LOOKUPS = 2000 };
        static double latency[LOOKUPS];
        if (cold) {
                lsm_grid_cache_clear(grid);
                posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        }
        uint64_t reads_before = grid->stats.reads;
        for (uint32_t i = 0; i < LOOKUPS; i++) {
                u128 id = ids[rng() % n];
                struct wire_transfer t;
                double start = now_s();
                int rc = lsm_groove_get_by_id(g, id, &t);
                latency[i] = now_s() - start;
                if (rc != 1 || t.id != id) {
                        fprintf(stderr, "lookup failed: rc=%d %s\n", rc, grid->error);
                        exit(1);
                }
        }
        qsort(latency, LOOKUPS, sizeof(double), compare_double);
        printf("%s lookups by id: p50 %.1f us, p99 %.1f us, %.2f device reads each\n", label,
               latency[LOOKUPS / 2] * 1e6, latency[LOOKUPS * 99 / 100] * 1e6,
               (double)(grid->stats.reads - reads_before) / LOOKUPS);
}

int main(int argc, char **argv)
{
        uint64_t total = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
        const char *path = argc > 2 ? argv[2] : "/tmp/tally-lsm-bench.grid";
        bool sequential = argc > 3 && strcmp(argv[3], "--sequential") == 0;
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) {
                perror(path);
                return 1;
        }
        struct lsm_device device = {.read = file_read, .write = file_write};
        static struct lsm_grid grid;
        /* A 64 MiB block cache: far smaller than the data. */
        if (lsm_grid_init(&grid, &device, GRID_BLOCKS, 1024) != 0)
                return 1;
        static struct lsm_groove groove;
        if (lsm_groove_init(&groove, &transfers_config, &grid) != 0)
                return 1;
        u128 *ids = malloc(total * sizeof(u128));
        if (ids == NULL)
                return 1;
        printf("lsm_bench: %llu transfers, %s ids, bars of %u, file %s\n",
               (unsigned long long)total, sequential ? "sequential" : "random", BAR_TRANSFERS,
               path);
        double start = now_s(), bar_worst = 0, compact_seconds = 0;
        uint64_t timestamp = 1;
        for (uint64_t n = 0; n < total; n++) {
                struct wire_transfer t;
                memset(&t, 0, sizeof(t));
                t.id = sequential ? (u128)(n + 1) : ((u128)rng() << 64) | rng();
                ids[n] = t.id;
                uint32_t dr = pick_account(), cr = pick_account();
                if (cr == dr)
                        cr = (dr + 1) % ACCOUNTS;
                t.debit_account_id = dr + 1;
                t.credit_account_id = cr + 1;
                t.amount = 1 + rng() % 1000;
                if (n % 3 == 0) {
                        t.user_data_128 = rng();
                        t.user_data_64 = rng() % 100000;
                        t.user_data_32 = (uint32_t)(rng() % 1000);
                }
                t.ledger = 1 + (uint32_t)(rng() % 4);
                t.code = (uint16_t)(1 + rng() % 200);
                t.timestamp = timestamp++;
                if (!lsm_groove_has_room(&groove, 1)) {
                        double bar_start = now_s();
                        bool flushed = lsm_groove_flush(&groove);
                        double compact_start = now_s();
                        if (!flushed || !lsm_groove_compact(&groove)) {
                                fprintf(stderr, "flush/compact failed: %s\n", grid.error);
                                return 1;
                        }
                        compact_seconds += now_s() - compact_start;
                        lsm_grid_checkpoint_written(&grid);
                        lsm_grid_checkpoint(&grid);
                        bar_worst = MAX(bar_worst, now_s() - bar_start);
                }
                lsm_groove_insert(&groove, &t);
        }
        if (!lsm_groove_flush(&groove) || !lsm_groove_compact(&groove))
                return 1;
        lsm_grid_checkpoint_written(&grid);
        lsm_grid_checkpoint(&grid);
        fdatasync(fd);
        double elapsed = now_s() - start;
        uint64_t bytes = grid.used_count * (uint64_t)LSM_BLOCK_SIZE;
        printf("insert: %.0f transfers/s (flushes and compactions included, synchronous); "
               "slowest bar's flush+compaction %.2f s\n",
               (double)total / elapsed, bar_worst);
        uint64_t merged = groove.objects.stats.values_compacted + groove.ids.stats.values_compacted;
        for (uint32_t i = 0; i < 7; i++)
                merged += groove.indexes[i].stats.values_compacted;
        printf("compaction (merges of the bars, the last excluded): %llu values merged in %.2f s "
               "= %.2f M values/s\n",
               (unsigned long long)merged, compact_seconds, (double)merged / compact_seconds / 1e6);
        printf("disk: %llu blocks, %.1f bytes per transfer (objects, id map and 7 indexes)\n",
               (unsigned long long)grid.used_count, (double)bytes / (double)total);
        printf("trees (tables per level 0..4):");
        struct lsm_tree *trees[9] = {&groove.objects, &groove.ids};
        for (uint32_t i = 0; i < 7; i++)
                trees[2 + i] = &groove.indexes[i];
        for (uint32_t t = 0; t < 9; t++)
                printf(" %s=%u/%u/%u/%u/%u", trees[t]->name, trees[t]->levels[0].count,
                       trees[t]->levels[1].count, trees[t]->levels[2].count,
                       trees[t]->levels[3].count, trees[t]->levels[4].count);
        printf("\n");
        lookups(&groove, &grid, ids, total, true, "cold");
        lookups(&groove, &grid, ids, total, false, "warm");
        /* A filtered query of 10 results, cold. */
        struct lsm_groove_filter filter;
        memset(&filter, 0, sizeof(filter));
        filter.present[6] = true; /* code */
        filter.value[6] = 77;
        filter.present[5] = true; /* ledger */
        filter.value[5] = 3;
        filter.reversed = true;
        filter.limit = 10;
        static struct wire_transfer out[10];
        lsm_grid_cache_clear(&grid);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        struct lsm_groove_query_stats stats;
        double q = now_s();
        int64_t got = lsm_groove_query(&groove, &filter, out, &stats);
        q = now_s() - q;
        printf("query ledger=3 code=77 newest 10, cold: %lld results in %.2f ms (%llu steps, "
               "%llu seeks)\n",
               (long long)got, q * 1e3, (unsigned long long)stats.steps,
               (unsigned long long)stats.seeks);
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        printf("peak RSS: %.0f MiB (ids array of the bench: %.0f MiB)\n",
               (double)usage.ru_maxrss / 1024, (double)total * 16 / 1048576);
        lsm_groove_deinit(&groove);
        lsm_grid_deinit(&grid);
        free(ids);
        close(fd);
        unlink(path);
        return 0;
}
