/*
 * histogram.c: see histogram.h.
 */
#include "lib/histogram.h"

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
