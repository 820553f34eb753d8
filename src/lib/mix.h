/*
 * mix.h: splitmix64's finalizer and a keyed hash built on it. The load generators (`tally
 * benchmark`, bench/scale_client) build workloads that are pure functions of (seed, index), so
 * a client can regenerate any object it wrote to check it, and two clients agree; the ledger's
 * working set and the grooves' object caches hash ids with it.
 */
#ifndef TALLY_LIB_MIX_H
#define TALLY_LIB_MIX_H

#include <stdint.h>

/* A bijection on 64 bits with mix64(0) == 0: distinct inputs give distinct outputs. */
static inline uint64_t mix64(uint64_t x)
{
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ull;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebull;
        x ^= x >> 31;
        return x;
}

/* Element `i` of stream `stream` under `seed`. */
static inline uint64_t mix_hash(uint64_t seed, uint64_t stream, uint64_t i)
{
        return mix64(seed ^ mix64(stream * 0x9e3779b97f4a7c15ull + i));
}

#endif
