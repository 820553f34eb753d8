/*
 * prefetch.h: resolving many lookups at once before a batch executes (docs/storage.md,
 * "Execution stays synchronous: prefetch").
 *
 * Why: the ledger's rules run synchronously, in one tight loop over a batch, on every replica
 * alike; they must never wait for the disk in the middle of a batch. So before a batch runs, every
 * key it will look up (transfer ids, their accounts, pending transfers) is resolved here: each
 * lookup walks its tree (memtable, level 0 newest first, then one table per level) using only
 * cached blocks, and when it needs a block that is not cached it waits for it. All the blocks the
 * lookups need are read at once (up to LSM_GRID_READS_MAX in flight); a lookup resumes the
 * moment its block arrives, before anything else can evict it, so a cache smaller than the
 * batch's working set slows a prefetch down but never stops it. Reads of the same block by
 * several lookups are shared.
 *
 * A lookup's answer is copied into its own `out` buffer, so execution later reads results, not
 * the cache. If its tree changes while it waits (a put, a flush, a compaction), the lookup starts
 * over; the replica does not change trees during a prefetch, so that is a safety net only.
 */
#ifndef TALLY_LSM_PREFETCH_H
#define TALLY_LSM_PREFETCH_H

#include "lsm/tree.h"

enum lsm_lookup_state {
        LSM_LOOKUP_PENDING = 0,
        LSM_LOOKUP_FOUND,
        LSM_LOOKUP_ABSENT,
        LSM_LOOKUP_FAULT, /* a block could not be read: grid->error names it */
};

struct lsm_lookup {
        /* Set by the caller: */
        struct lsm_tree *tree;
        uint8_t key[LSM_KEY_SIZE_MAX];
        void *out; /* tree->layout.value_size bytes */
        /* Result: */
        enum lsm_lookup_state state;
        /* Position in the tree: */
        uint64_t tree_version;
        uint8_t level;  /* 0..LSM_LEVELS: where to look next */
        uint32_t table; /* level 0: tables left to look at (newest first) */
        bool in_table;  /* `current` contains the key: its index, then data block */
        struct lsm_table_info current;
        struct lsm_block_ref data; /* the data block, once the index named it (else 0) */
        struct lsm_block_ref need; /* the block it waits for */
        int32_t next_waiter;       /* chain of lookups waiting for the same read, or -1 */
};

/* Starts a lookup of `key` in `tree`; the answer goes to `out`. */
void lsm_lookup_init(struct lsm_lookup *lookup, struct lsm_tree *tree, const void *key,
                     void *out);
/*
 * Advances a lookup with cached blocks only: FOUND, ABSENT, or PENDING with `need` set to the
 * block that must be cached before it can go on.
 */
enum lsm_lookup_state lsm_lookup_step(struct lsm_lookup *lookup);

struct lsm_prefetch_read {
        struct lsm_prefetch *prefetch;
        struct lsm_block_ref ref;
        uint8_t kind;
        bool active;
        int32_t waiters; /* first waiting lookup */
};

struct lsm_prefetch_stats {
        uint64_t reads;        /* device reads started */
        uint64_t reads_shared; /* lookups that joined a read already in flight */
        uint32_t in_flight_max;
};

struct lsm_prefetch {
        struct lsm_grid *grid;
        struct lsm_lookup *lookups;
        uint32_t count;
        uint32_t pending; /* lookups not yet resolved */
        uint32_t next;    /* lookups [next, count) not started yet */
        int32_t blocked;  /* chain of lookups waiting for a free read */
        struct lsm_prefetch_read reads[LSM_GRID_READS_MAX];
        uint32_t reads_active;
        bool running; /* inside run(): completions only queue work */
        void (*done)(void *context);
        void *context;
        struct lsm_prefetch_stats stats;
};

/*
 * Resolves `count` initialised lookups; `done(context)` runs once every one is FOUND, ABSENT or
 * FAULT (inline, before this returns, when no read was needed or the device is synchronous).
 */
void lsm_prefetch_start(struct lsm_prefetch *prefetch, struct lsm_grid *grid,
                        struct lsm_lookup *lookups, uint32_t count,
                        void (*done)(void *context), void *context);
bool lsm_prefetch_busy(const struct lsm_prefetch *prefetch);

#endif
