/*
 * device_memory.h: a grid device (lsm/grid.h) that keeps its blocks in memory.
 *
 * Why: the ledger's rules are tested, benchmarked and simulated without a data file, and tools
 * that load a checkpoint stream into a ledger need a grid that is not a replica's. Blocks are
 * allocated when first written; a block never written reads as zeros (so it fails its check,
 * as an unwritten block of a file would).
 *
 * Blocks are carved from slabs (2 MiB, doubling up to 64 MiB) aligned for transparent huge
 * pages: writing a fresh 64 KiB block into its own malloc() cost 16 page faults, a fifth of the
 * ledger benchmark's time; a huge page costs one fault per 32 blocks.
 *
 * Reads and writes may come from two threads (the loop and the compaction worker,
 * lsm/compactor.h): a mutex guards the block table, which a write may grow.
 */
#ifndef TALLY_LSM_DEVICE_MEMORY_H
#define TALLY_LSM_DEVICE_MEMORY_H

#include "lsm/grid.h"

#include <pthread.h>

struct lsm_device_memory {
        uint8_t **blocks; /* blocks[address], NULL until written */
        uint64_t capacity;
        uint64_t block_count_max;
        uint64_t bytes; /* allocated for blocks */
        uint8_t **slabs;
        uint32_t slab_count;
        uint32_t slab_capacity;
        uint32_t slab_blocks;      /* blocks in the newest slab */
        uint32_t slab_blocks_used; /* of which handed out */
        pthread_mutex_t mutex;
};

/* Up to `block_count_max` addresses; memory grows with the blocks written. */
void lsm_device_memory_init(struct lsm_device_memory *memory, uint64_t block_count_max);
void lsm_device_memory_deinit(struct lsm_device_memory *memory);
/* The device interface over it. */
struct lsm_device lsm_device_memory(struct lsm_device_memory *memory);

#endif
