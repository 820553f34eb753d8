/*
 * checksum_bench.c: throughput of each checksum implementation.
 *
 * For each implementation the CPU supports: GB/s over a 1 MiB message (the largest the server
 * checksums), and nanoseconds per 240-byte header checksum (the one every message needs). Each
 * figure is the best of several timed runs, to keep scheduler noise out.
 *
 *   make build/release/bench/checksum_bench && build/release/bench/checksum_bench
 */
#include "wire/checksum.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MESSAGE_SIZE (1024 * 1024)
#define MESSAGE_ITERATIONS 200
#define HEADER_SIZE 240
#define HEADER_ITERATIONS 200000
#define RUNS 5

static double now_seconds(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best time of RUNS runs of `iterations` checksums over data[0..size). */
static double time_best(const uint8_t *data, size_t size, int iterations, u128 *sink)
{
        double best = 1e30;
        for (int run = 0; run < RUNS; run++) {
                double start = now_seconds();
                for (int i = 0; i < iterations; i++)
                        *sink += checksum(data, size);
                double elapsed = now_seconds() - start;
                if (elapsed < best)
                        best = elapsed;
        }
        return best;
}

int main(void)
{
        uint8_t *data = malloc(MESSAGE_SIZE);
        if (data == NULL)
                return 1;
        for (size_t i = 0; i < MESSAGE_SIZE; i++)
                data[i] = (uint8_t)(i * 2654435761u >> 24);

        const enum checksum_impl impls[] = {CHECKSUM_IMPL_PORTABLE, CHECKSUM_IMPL_AESNI};
        const char *names[] = {"portable", "aesni"};
        u128 sink = 0;
        for (size_t k = 0; k < ARRAY_LEN(impls); k++) {
                if (!checksum_select(impls[k])) {
                        printf("impl=%s skipped=not_supported_by_cpu\n", names[k]);
                        continue;
                }
                /* The portable path is ~20x slower; fewer iterations keep the run short. */
                int iterations = impls[k] == CHECKSUM_IMPL_AESNI ? MESSAGE_ITERATIONS : 20;
                double message_s = time_best(data, MESSAGE_SIZE, iterations, &sink);
                double header_s = time_best(data, HEADER_SIZE, HEADER_ITERATIONS, &sink);
                printf("impl=%s message_size=%d gb_per_s=%.2f header_size=%d ns_per_header=%.1f\n",
                       names[k], MESSAGE_SIZE, (double)MESSAGE_SIZE * iterations / message_s / 1e9,
                       HEADER_SIZE, header_s / HEADER_ITERATIONS * 1e9);
        }
        /* Printing the sink keeps the compiler from dropping the timed calls. */
        printf("sink=%016llx\n", (unsigned long long)sink);
        free(data);
        return 0;
}
