/*
 * ledger_bench.c: create_transfers throughput of the ledger alone, on one core.
 *
 *   build/release/bench/ledger_bench [batches_per_run] [runs]
 *
 * 10,000 accounts; batches of 8189 single-phase transfers (the largest create_transfers
 * request), each between two accounts drawn from a self-similar 80/20 distribution (Knuth's
 * Pareto-like law: 80% of the picks go to 20% of the accounts, recursively), so a few accounts
 * are very hot. Ids are random-looking 128-bit values. Each run starts from a fresh ledger and
 * times only ledger_execute(); the request bodies are built beforehand. Prints the median
 * transfers/s over the runs and the resident memory added per transfer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ledger/ledger.h"
#include "wire/multi_batch.h"
#include "wire/types.h"

#define ACCOUNTS 10000u
#define BATCH 8189u

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
        /* splitmix64 */
        uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

/* 80% of the picks fall in the first 20% of [lo, hi), recursively. */
static uint32_t pick_account(void)
{
        uint32_t lo = 0, hi = ACCOUNTS;
        while (hi - lo > 5) {
                uint32_t fifth = (hi - lo) / 5;
                if (rng() % 10 < 8) hi = lo + fifth;
                else lo = lo + fifth;
        }
        return lo + (uint32_t)(rng() % (hi - lo));
}

static u128 account_id(uint32_t index)
{
        return ((u128)0xACC0000000000000ull << 64) | (u128)(index + 1) * 0x9E3779B97F4A7C15ull;
}

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU time of this process: less disturbed than wall time when others share the cores. */
static uint64_t cpu_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rss_bytes(void)
{
        FILE *f = fopen("/proc/self/statm", "r");
        if (f == NULL) return 0;
        unsigned long size = 0, resident = 0;
        if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
        fclose(f);
        return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int compare_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
        uint32_t batches = argc > 1 ? (uint32_t)atoi(argv[1]) : 100;
        uint32_t runs = argc > 2 ? (uint32_t)atoi(argv[2]) : 5;
        if (batches == 0 || runs == 0 || runs > 64) {
                fprintf(stderr, "usage: ledger_bench [batches_per_run] [runs (1..64)]\n");
                return 2;
        }
        size_t body_size = multi_batch_trailer_size(128, 1) + (size_t)BATCH * 128;
        uint8_t *bodies = malloc(body_size * batches);
        uint8_t *reply = malloc(LEDGER_BODY_SIZE_MAX);
        if (bodies == NULL || reply == NULL) return 1;

        double rates[64];
        double bytes_per_transfer = 0;
        for (uint32_t run = 0; run < runs; run++) {
                /* Request bodies for this run (fresh ids every run). */
                for (uint32_t b = 0; b < batches; b++) {
                        struct multi_batch_encoder e;
                        multi_batch_encoder_init(&e, bodies + b * body_size, (uint32_t)body_size,
                                                 128);
                        uint32_t room;
                        uint8_t *out = multi_batch_encoder_writable(&e, &room);
                        for (uint32_t i = 0; i < BATCH; i++) {
                                struct wire_transfer t;
                                memset(&t, 0, sizeof(t));
                                t.id = ((u128)rng() << 64) | rng();
                                uint32_t dr = pick_account(), cr = pick_account();
                                while (cr == dr) cr = pick_account();
                                t.debit_account_id = account_id(dr);
                                t.credit_account_id = account_id(cr);
                                t.amount = 1 + rng() % 1000;
                                t.ledger = 1;
                                t.code = 1;
                                memcpy(out + (size_t)i * 128, &t, 128);
                        }
                        multi_batch_encoder_add(&e, BATCH);
                        multi_batch_encoder_finish(&e);
                }

                struct ledger_config config = {
                        .accounts_max = ACCOUNTS,
                        .transfers_max = (uint64_t)batches * BATCH,
                        .request_body_size_max = LEDGER_BODY_SIZE_MAX,
                };
                struct ledger *ledger = ledger_create(&config);
                if (ledger == NULL) return 1;
                uint64_t timestamp = 1700000000000000000ull;

                /* The accounts, in batches of 8189. */
                static uint8_t accounts_body[LEDGER_BODY_SIZE_MAX + 128];
                for (uint32_t first = 0; first < ACCOUNTS; first += BATCH) {
                        uint32_t n = MIN(BATCH, ACCOUNTS - first);
                        struct multi_batch_encoder e;
                        multi_batch_encoder_init(&e, accounts_body, sizeof(accounts_body), 128);
                        uint32_t room;
                        uint8_t *out = multi_batch_encoder_writable(&e, &room);
                        for (uint32_t i = 0; i < n; i++) {
                                struct wire_account a;
                                memset(&a, 0, sizeof(a));
                                a.id = account_id(first + i);
                                a.ledger = 1;
                                a.code = 1;
                                memcpy(out + (size_t)i * 128, &a, 128);
                        }
                        multi_batch_encoder_add(&e, n);
                        uint32_t size = multi_batch_encoder_finish(&e);
                        timestamp += 1000 + n;
                        uint32_t r = ledger_execute(ledger, OPERATION_CREATE_ACCOUNTS, timestamp,
                                                    accounts_body, size, reply);
                        if (r != 8) {
                                fprintf(stderr, "account creation failed\n");
                                return 1;
                        }
                }

                uint64_t rss_before = rss_bytes();
                struct ledger_stats stats_before;
                ledger_get_stats(ledger, &stats_before);
                uint64_t start = now_ns();
                uint64_t cpu_start = cpu_ns();
                uint64_t failures = 0;
                for (uint32_t b = 0; b < batches; b++) {
                        timestamp += 1000 + BATCH;
                        uint32_t r = ledger_execute(ledger, OPERATION_CREATE_TRANSFERS, timestamp,
                                                    bodies + b * body_size,
                                                    (uint32_t)body_size, reply);
                        failures += (r - 8) / 8;
                }
                uint64_t elapsed = now_ns() - start;
                uint64_t cpu_elapsed = cpu_ns() - cpu_start;
                uint64_t rss_after = rss_bytes();
                struct ledger_stats stats_after;
                ledger_get_stats(ledger, &stats_after);
                if (failures != 0) {
                        fprintf(stderr, "unexpected failures=%llu\n", (unsigned long long)failures);
                        return 1;
                }
                double transfers = (double)batches * BATCH;
                rates[run] = transfers / ((double)elapsed / 1e9);
                bytes_per_transfer = (double)(rss_after - rss_before) / transfers;
                /* Grid bytes written per transfer: flushes plus compaction (write amplification). */
                double written_per_transfer =
                        (double)(stats_after.grid_blocks_written - stats_before.grid_blocks_written) *
                        65536.0 / transfers;
                printf("run %u: %.0f transfers/s (%.0f per CPU second), %.1f bytes resident and "
                       "%.0f bytes written to the grid per transfer\n",
                       run + 1, rates[run], transfers / ((double)cpu_elapsed / 1e9),
                       bytes_per_transfer, written_per_transfer);
                ledger_destroy(ledger);
        }
        qsort(rates, runs, sizeof(rates[0]), compare_double);
        printf("median: %.0f transfers/s (%u runs of %u batches of %u), %.1f bytes per transfer\n",
               rates[runs / 2], runs, batches, BATCH, bytes_per_transfer);
        free(bodies);
        free(reply);
        return 0;
}
