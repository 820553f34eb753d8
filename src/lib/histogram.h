/*
 * histogram.h: a fixed-bucket latency histogram, cheap enough for the hot path.
 *
 * Observing is a short linear scan over HISTOGRAM_BUCKETS upper bounds and three additions; no
 * allocation, no clock (the caller measures). The bounds are Prometheus' usual latency
 * buckets, from 100 us to 10 s, so a scrape can expose the counts as a `_seconds` histogram
 * directly (cumulative `le` buckets, `_sum`, `_count`).
 *
 * Load generators that keep every sample use the exact percentiles below instead.
 */
#ifndef TALLY_LIB_HISTOGRAM_H
#define TALLY_LIB_HISTOGRAM_H

#include "lib/common.h"

#define HISTOGRAM_BUCKETS 16u

struct histogram {
        uint64_t buckets[HISTOGRAM_BUCKETS + 1]; /* not cumulative; the last is +Inf */
        uint64_t count;
        uint64_t sum_ns;
};

/* The upper bound of bucket `i` (< HISTOGRAM_BUCKETS), in nanoseconds. */
uint64_t histogram_bound_ns(uint32_t i);
void histogram_observe(struct histogram *histogram, uint64_t value_ns);

/* Sorts `count` latencies in place, for latency_percentile_ms. */
void latency_sort(uint64_t *latencies_ns, uint64_t count);
/* The nearest-rank `percent` percentile of sorted latencies, in milliseconds (0 if none). */
double latency_percentile_ms(const uint64_t *sorted_ns, uint64_t count, uint32_t percent);

#endif
