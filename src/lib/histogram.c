/*
 * histogram.c: see histogram.h.
 */
#include "lib/histogram.h"

#include <stdlib.h>

static const uint64_t bounds_ns[HISTOGRAM_BUCKETS] = {
        100000ull,    250000ull,    500000ull,     1000000ull,    2500000ull,    5000000ull,
        10000000ull,  25000000ull,  50000000ull,   100000000ull,  250000000ull,  500000000ull,
        1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull,
};

uint64_t histogram_bound_ns(uint32_t i)
{
        tally_assert(i < HISTOGRAM_BUCKETS);
        return bounds_ns[i];
}

void histogram_observe(struct histogram *histogram, uint64_t value_ns)
{
        uint32_t i = 0;
        while (i < HISTOGRAM_BUCKETS && value_ns > bounds_ns[i])
                i++;
        histogram->buckets[i]++;
        histogram->count++;
        histogram->sum_ns += value_ns;
        tally_assert(histogram->count >= histogram->buckets[i]);
}

static int compare_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

void latency_sort(uint64_t *latencies_ns, uint64_t count)
{
        qsort(latencies_ns, count, sizeof(uint64_t), compare_u64);
}

double latency_percentile_ms(const uint64_t *sorted_ns, uint64_t count, uint32_t percent)
{
        if (count == 0)
                return 0;
        uint64_t rank = (count * percent + 99) / 100;
        return (double)sorted_ns[rank == 0 ? 0 : rank - 1] / 1e6;
}
