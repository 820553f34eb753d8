/*
 * grid.h: the grid, the part of the data file that holds the ledger's trees, as an array of
 * checksummed blocks of LSM_BLOCK_SIZE bytes (docs/storage.md).
 *
 * Why: the ledger must outgrow memory. Everything the trees store goes into immutable blocks
 * that are written once, named by (address, checksum) and read back through a cache of fixed
 * size, so memory stays fixed whatever the data, and any copy of a block (a peer's, a backup's)
 * can be checked against its reference.
 *
 * A block starts with a 64-byte header: the checksum of bytes 16..size (the wire protocol's
 * AEGIS-128L checksum), the block's own address (a misdirected write is caught), the bytes
 * used, its kind and tree, and the size and count of the values it holds. lsm_block_check()
 * says exactly what is wrong with a block that is not the one a reference names.
 *
 * Addresses start at 1 (0 means none). The free set hands out the lowest free address, so
 * replicas that write the same blocks in the same order put them at the same addresses; a
 * released block becomes free again only at the next checkpoint (lsm_grid_checkpoint), because
 * the durable checkpoint may still reference it after a crash.
 *
 * The device is an interface (read and write whole blocks by address): the server will put it
 * on the data file, the simulator on a simulated disk; tests use memory and bench/lsm_bench a
 * file. Writes are synchronous for now; reads may be asynchronous (read_async), which is how
 * a prefetch (prefetch.h) keeps many in flight while each pins its cache slot.
 */
#ifndef TALLY_LSM_GRID_H
#define TALLY_LSM_GRID_H

#include "lib/common.h"

#define LSM_BLOCK_SIZE (64u * 1024u)
#define LSM_BLOCK_HEADER_SIZE 64u
#define LSM_BLOCK_PAYLOAD_MAX (LSM_BLOCK_SIZE - LSM_BLOCK_HEADER_SIZE)

enum lsm_block_kind {
        LSM_BLOCK_NONE = 0,
        LSM_BLOCK_TABLE_INDEX = 1, /* a table's key ranges and data block references */
        LSM_BLOCK_TABLE_DATA = 2,  /* a table's sorted values */
        LSM_BLOCK_MANIFEST = 3,    /* every table of every tree at a checkpoint (forest.h) */
        LSM_BLOCK_FREE_SET = 4,    /* a chunk of the free set's bitmap at a checkpoint */
        LSM_BLOCK_ROOT = 5,        /* a checkpoint's root: names the manifest and free set */
        LSM_BLOCK_KIND_COUNT = 6,
};

struct lsm_block_header {
        u128 checksum;     /* of bytes 16..size */
        uint64_t address;  /* where it belongs */
        uint32_t size;     /* bytes used, header included */
        uint8_t kind;      /* enum lsm_block_kind */
        uint8_t tree;      /* the tree it belongs to */
        uint16_t value_size;
        uint32_t count;    /* values (data block) or entries (index block) */
        /*
         * A table index block with a key filter: where the filter starts (table.h). 0 in every
         * other block, and in index blocks written before 2026-12-03, whose filter starts
         * where 7 bits per key put it (lsm_table_filter_offset_legacy).
         */
        uint32_t filter_offset;
        uint64_t snapshot; /* (later steps) the bar that wrote it */
        uint8_t reserved[16];
};
_Static_assert(sizeof(struct lsm_block_header) == LSM_BLOCK_HEADER_SIZE, "block header size");

/* A block is always named by both: its address and the checksum it must have. */
struct lsm_block_ref {
        uint64_t address;
        uint64_t reserved;
        u128 checksum;
};
_Static_assert(sizeof(struct lsm_block_ref) == 32, "block ref size");

/*
 * Fills the header of `block` (payload already in place) and returns its reference. The
 * header's filter_offset is the caller's for a table index block, zeroed for any other kind.
 */
struct lsm_block_ref lsm_block_seal(uint8_t *block, uint64_t address, enum lsm_block_kind kind,
                                    uint8_t tree, uint16_t value_size, uint32_t count,
                                    uint32_t size);
/*
 * NULL if `block` is the block `ref` names, of kind `kind`; otherwise why not ("checksum
 * mismatch", "address 12 found at 13", ...), in a static buffer.
 */
const char *lsm_block_check(const uint8_t *block, struct lsm_block_ref ref,
                            enum lsm_block_kind kind);

struct lsm_device {
        void *context;
        /* Whole blocks at a 1-based address; 0 or a negative errno. */
        int (*read)(void *context, uint64_t address, uint8_t *block);
        int (*write)(void *context, uint64_t address, const uint8_t *block);
        /*
         * Optional: starts a read and calls `callback(token, result)` later (never from inside
         * this call), result 0 or a negative errno. Without it, reads block (read above).
         */
        void (*read_async)(void *context, uint64_t address, uint8_t *block,
                           void (*callback)(void *token, int result), void *token);
        /*
         * Optional: a read that looks for a block which may well not be there (state sync
         * checks which of a peer's blocks it already holds), so a test device injects no fault
         * and reports nothing. Without it, `read`.
         */
        int (*probe)(void *context, uint64_t address, uint8_t *block);
        /*
         * Optional, for a device whose writes return before they land: waits for every write
         * issued so far, 0 or the first write's error (after which every write fails). A
         * checkpoint calls it before naming the blocks (lsm_grid_flush_writes). Without it,
         * writes land before `write` returns.
         */
        int (*flush)(void *context);
        /*
         * Optional: starts writing the blocks `write` holds back to join with the next ones at
         * following addresses (a flush's tables end there: waiting for more only delays them).
         */
        void (*issue)(void *context);
        /*
         * Optional, for a device that grows as it is written: makes room for every address up
         * to `address` now (0, or a negative errno: -ENOSPC). A job that another thread writes
         * (compactor.h) grows the device from the loop before it starts.
         */
        int (*grow)(void *context, uint64_t address);
        /*
         * Optional: a hint that the `count` blocks at `addresses` will be read soon (the device
         * may start reading them into a cache of its own, blocks at consecutive addresses in
         * one request): the compaction worker names the blocks of a job it wrote, and a merge
         * the next blocks of its inputs.
         */
        void (*prefetch)(void *context, const uint64_t *addresses, uint32_t count);
        /*
         * Optional, together: read_many_start starts reading up to `count` blocks, each into its
         * buffer, all at once where the device can, and returns how many it started (the
         * first ones); read_many_wait(i) waits for the i-th of them, 0 or a negative errno.
         * Every one is waited for before the next start. Without them, `read` one at a time.
         */
        uint32_t (*read_many_start)(void *context, const uint64_t *addresses,
                                    uint8_t *const *blocks, uint32_t count);
        int (*read_many_wait)(void *context, uint32_t index);
        /*
         * Optional: `length` bytes at `offset` of the block at `address` (a filter page,
         * table.h), 0 or a negative errno; the caller checks them. Without it, `read` of the
         * whole block.
         */
        int (*read_range)(void *context, uint64_t address, uint32_t offset, uint32_t length,
                          uint8_t *out);
};

/* Asynchronous reads in flight at once (each pins one cache slot until it completes). */
#define LSM_GRID_READS_MAX 64u
/* Blocks lsm_grid_prefetch reads at once (each pins one cache slot until it is settled). */
#define LSM_GRID_PREFETCH_MAX 256u

struct lsm_grid;
struct lsm_grid_read {
        struct lsm_grid *grid;
        bool active;
        uint32_t slot;
        uint8_t kind;
        struct lsm_block_ref ref;
        void (*done)(void *context, bool ok);
        void *context;
};

/*
 * The block cache: `slot_count` blocks in sets of LSM_CACHE_WAYS, each set replaced in CLOCK
 * order. Only blocks that passed lsm_block_check are cached, keyed by address and checksum.
 */
#define LSM_CACHE_WAYS 8u

struct lsm_grid_stats {
        uint64_t reads;         /* blocks read from the device */
        uint64_t writes;        /* blocks written */
        uint64_t cache_hits;
        uint64_t read_faults;   /* reads that failed or returned a wrong block */
        uint64_t prefetched;    /* blocks lsm_grid_prefetch read into the cache */
        uint64_t pages_read;    /* filter pages read past the cache (lsm_grid_read_range) */
        uint64_t acquired;
        uint64_t released;
};

/*
 * The blocks a compaction job reserved for its output tables (lsm_grid_reserve), not yet
 * installed: in use, but named by no checkpoint. A checkpoint written while the job runs records them free,
 * so a restart from it, which starts the job over, does not leak them.
 */
struct lsm_stage {
        uint64_t *addresses;
        uint32_t count;
        uint32_t capacity;
};

/*
 * The addresses a compaction job reserved when it started (grid.c: lsm_grid_reserve), handed
 * out in order while it is the grid's `reserve_active`: a job writes the same blocks at the
 * same addresses whether it merges in the loop or on the compaction worker, whose own grid
 * acquires nothing (compactor.h).
 */
struct lsm_reserve {
        const uint64_t *addresses;
        uint32_t count;
        uint32_t next;
};

/*
 * Cursor buffers kept for the next scan (each 64 KiB; a fresh one costs its page faults).
 * 192 (12 MiB at most): get_account_transfers scans both indexes by account, each a cursor
 * per level-0 table (up to 64 at their stall point, tree.h: level0_budget) and per level.
 * With 64 kept, a 10-result query's p99 at 30 M transfers was 19.8-21.9 ms in four runs of
 * bench/scale.sh; with 192, 8.5 and 10.9 ms in two and 21.7 in a third (the p99 of 100
 * queries is their slowest one or two: weak evidence). Kept for the cost it removes: about
 * 70 fresh buffers of 16 page faults each (~4.6 us per fault on this VM), ~5 ms per scan.
 */
#define LSM_GRID_BUFFERS_KEPT 192u

struct lsm_grid {
        struct lsm_device device;
        /* Free set: bit set = in use. `released` blocks are in use until the checkpoint. */
        uint64_t block_count_max; /* addresses 1..block_count_max */
        uint64_t *used;
        uint64_t *released;
        /*
         * Released before the checkpoint being written: free once it is durable. Blocks
         * released after it was written are still its own (it names them): they wait in
         * `released` for the next one.
         */
        uint64_t *pending;
        uint64_t *staged;                /* acquired while a stage was active (lsm_stage) */
        struct lsm_stage *stage_active; /* lsm_grid_reserve's stage while it acquires, or NULL */
        struct lsm_reserve *reserve_active; /* set: acquisitions take its addresses instead */
        /* Called with each block written hot (index blocks): a worker's grid hands them to the
         * job, and the loop caches them when it installs the job (compactor.h). */
        void (*on_write_hot)(void *context, const uint8_t *block, struct lsm_block_ref ref);
        void *on_write_hot_context;
        /* False: blocks written cold (table data blocks) are not cached at all. The worker's
         * grid (compactor.h): its cache is for its inputs' index blocks, and a copy of each
         * data block its merges write cost it a 64 KiB memcpy for nothing. */
        bool cache_cold_writes;
        /*
         * While a checkpoint is held (a backup copies it): blocks freed by later checkpoints stay
         * in use here until the hold ends, so the held checkpoint stays readable. NULL: none.
         */
        uint64_t *held;
        uint32_t holds; /* lsm_grid_hold calls not yet undone: the hold ends with the last */
        uint64_t acquire_hint; /* no free address below it */
        uint64_t acquire_floor; /* addresses up to it are not handed out (lsm_grid_reserve_below) */
        uint64_t used_count;
        uint64_t address_max; /* the highest address ever acquired (the file's extent) */
        /* Cache. */
        uint32_t slot_count; /* a multiple of LSM_CACHE_WAYS */
        uint32_t set_count;  /* slot_count / LSM_CACHE_WAYS */
        uint8_t *slots;      /* slot_count frames of LSM_BLOCK_SIZE */
        uint32_t *slot_frame; /* the slot's frame in `slots`, UINT32_MAX until first used */
        uint32_t frames_used; /* frames handed out, in order */
        uint64_t *slot_address;
        u128 *slot_checksum;
        uint8_t *slot_referenced; /* CLOCK bits */
        uint8_t *slot_reading;    /* an asynchronous read fills it: never a victim */
        struct lsm_grid_read reads[LSM_GRID_READS_MAX];
        uint32_t reads_active;
        /* lsm_grid_prefetch's reads, each settled when a read asks for its block or the next
         * prefetch starts: the slot it fills (pinned meanwhile) and the block it wants. */
        struct lsm_block_ref prefetch_refs[LSM_GRID_PREFETCH_MAX];
        uint32_t prefetch_slots[LSM_GRID_PREFETCH_MAX];
        uint8_t prefetch_kinds[LSM_GRID_PREFETCH_MAX];
        bool prefetch_settled[LSM_GRID_PREFETCH_MAX];
        uint32_t prefetch_count;
        uint32_t *set_hand;
        uint8_t *scratch; /* one block for writes */
        /*
         * Block buffers handed back by cursors (lsm_grid_buffer_put), for the next ones: a
         * query opens a cursor per level and per level-0 table, each with a 64 KiB buffer,
         * and fresh buffers cost a page fault per 4 KiB (a third of a query's time).
         */
        uint8_t *buffers[LSM_GRID_BUFFERS_KEPT];
        uint32_t buffer_count;
        char error[192];  /* the last read fault, named */
        bool fault_damaged; /* the last fault was a read (a damaged block), not a write */
        struct lsm_block_ref fault_ref; /* the block of the last read fault */
        struct lsm_grid_stats stats;
};

/*
 * Reads `length` bytes at `offset` of the block at `address` into `out` (4 KiB aligned), past
 * the cache and unchecked: the caller checks them (a filter page, table.h). 0 or a negative
 * errno; a failure is not a fault (the ordinary read of the block will name it).
 */
int lsm_grid_read_range(struct lsm_grid *grid, uint64_t address, uint32_t offset,
                        uint32_t length, uint8_t *out);

/* A block buffer (LSM_BLOCK_SIZE, 4 KiB aligned): a kept one if any, else new. NULL: no memory. */
uint8_t *lsm_grid_buffer_get(struct lsm_grid *grid);
/* Hands a buffer from lsm_grid_buffer_get back: kept for the next (up to a bound) or freed. */
void lsm_grid_buffer_put(struct lsm_grid *grid, uint8_t *buffer);

/* Reserves memory for the free set and `cache_blocks` (rounded up to a whole set). -ENOMEM. */
int lsm_grid_init(struct lsm_grid *grid, const struct lsm_device *device,
                  uint64_t block_count_max, uint32_t cache_blocks);
void lsm_grid_deinit(struct lsm_grid *grid);

/* The lowest free address, now in use; 0 if the grid is full. */
uint64_t lsm_grid_acquire(struct lsm_grid *grid);
/*
 * Addresses 1..`count` are not handed out until the next checkpoint is durable (they hold
 * something else meanwhile: a data file being converted from format 1 keeps its old
 * checkpoint there until the new one replaces it). Survives lsm_grid_free_set_clear.
 */
void lsm_grid_reserve_below(struct lsm_grid *grid, uint64_t count);
/* The staged blocks are part of the trees now (a job installed): no longer staged. */
void lsm_grid_stage_commit(struct lsm_grid *grid, struct lsm_stage *stage);
/* The staged blocks will never be named (a job dropped): released. */
void lsm_grid_stage_abandon(struct lsm_grid *grid, struct lsm_stage *stage);
void lsm_stage_free(struct lsm_stage *stage);
/*
 * Acquires `count` addresses into `stage` (a job's) and points `reserve` at them. False, with
 * grid->error, if the grid has fewer free (nothing is kept then: they are released).
 */
bool lsm_grid_reserve(struct lsm_grid *grid, struct lsm_stage *stage, struct lsm_reserve *reserve,
                      uint32_t count);
/* The reserved addresses a job did not use are free again (never written, never named). */
void lsm_grid_reserve_return(struct lsm_grid *grid, struct lsm_reserve *reserve);
/* The block will be free after the next checkpoint. */
void lsm_grid_release(struct lsm_grid *grid, uint64_t address);
/* A checkpoint was written: the blocks released so far are not in it (see `pending`). */
void lsm_grid_checkpoint_written(struct lsm_grid *grid);
/* The last checkpoint written is durable: its pending blocks become free (or held). */
void lsm_grid_checkpoint(struct lsm_grid *grid);
/*
 * Keeps every block in use now from being reused until lsm_grid_unhold, through any number of
 * checkpoints: a backup or a state sync reads a checkpoint at its own pace. Holds nest: blocks
 * are kept until the last one ends. The held blocks are free in checkpoints written meanwhile
 * (a restart ends every hold). -ENOMEM.
 */
int lsm_grid_hold(struct lsm_grid *grid);
void lsm_grid_unhold(struct lsm_grid *grid);
uint64_t lsm_grid_free_count(const struct lsm_grid *grid);

/*
 * The free set as a checkpoint stores it: chunks of LSM_FREE_SET_CHUNK_BITS addresses (bit 0 of
 * chunk 0 is address 0, always set), a bit set for each block in use once the checkpoint being
 * written is durable (in use and not released).
 */
#define LSM_FREE_SET_CHUNK_WORDS (LSM_BLOCK_PAYLOAD_MAX / 8u)
#define LSM_FREE_SET_CHUNK_BITS (LSM_FREE_SET_CHUNK_WORDS * 64u)
uint32_t lsm_grid_free_set_chunks(const struct lsm_grid *grid);
/* Chunk `chunk` into `words` (LSM_FREE_SET_CHUNK_WORDS). */
void lsm_grid_free_set_encode(const struct lsm_grid *grid, uint32_t chunk, uint64_t *words);
/* Replaces the whole free set: every block free, nothing released, then chunks loaded. */
void lsm_grid_free_set_clear(struct lsm_grid *grid);
void lsm_grid_free_set_decode(struct lsm_grid *grid, uint32_t chunk, const uint64_t *words);

/*
 * Writes `block` (payload in place, header filled here) at a newly acquired address and caches
 * it. Returns its reference; address 0 if the grid is full or the device failed (grid->error).
 */
struct lsm_block_ref lsm_grid_write(struct lsm_grid *grid, uint8_t *block,
                                    enum lsm_block_kind kind, uint8_t tree, uint16_t value_size,
                                    uint32_t count, uint32_t size);

/*
 * lsm_grid_write that caches the block cold: the first of its cache set to be evicted unless a
 * read touches it first. For table data blocks: queries and lookups of what was just written
 * find it without a read, yet a compaction writing many tables does not push out the index
 * blocks (and their filters) that every lookup reads.
 */
struct lsm_block_ref lsm_grid_write_cold(struct lsm_grid *grid, uint8_t *block,
                                         enum lsm_block_kind kind, uint8_t tree,
                                         uint16_t value_size, uint32_t count, uint32_t size);
/*
 * Copies the block `ref` names into `out` (LSM_BLOCK_SIZE): from the cache if it is there,
 * else read from the device straight into `out` and checked, without caching it (a
 * compaction's inputs are read once). False if unreadable (grid->error names it).
 */
bool lsm_grid_read_copy(struct lsm_grid *grid, struct lsm_block_ref ref,
                        enum lsm_block_kind kind, uint8_t *out);

/* Caches a checked block as if just read (a job's index blocks, written by the worker). */
void lsm_grid_cache_insert(struct lsm_grid *grid, const uint8_t *block, struct lsm_block_ref ref);
/* Forgets every cached block (the next reads go to the device). */
void lsm_grid_cache_clear(struct lsm_grid *grid);
/* Waits until every block written so far has landed (lsm_device.flush); false, with
 * grid->error, if one of them failed. */
bool lsm_grid_flush_writes(struct lsm_grid *grid);
/* Starts the writes the device holds back (lsm_device.issue), waiting for none. */
void lsm_grid_issue_writes(struct lsm_grid *grid);
/* lsm_grid_write at an address already acquired. */
struct lsm_block_ref lsm_grid_write_at(struct lsm_grid *grid, uint8_t *block, uint64_t address,
                                       enum lsm_block_kind kind, uint8_t tree,
                                       uint16_t value_size, uint32_t count, uint32_t size);
/* The cached block `ref` names, or NULL if it is not in the cache (no I/O). */
const uint8_t *lsm_grid_cached(struct lsm_grid *grid, struct lsm_block_ref ref);
/*
 * Starts reading the blocks of `refs` that are not cached into the cache, all at once (the
 * device's read_many_start; the first LSM_GRID_PREFETCH_MAX of them), and returns: a read of
 * one of them (lsm_grid_read) waits for that one alone, so a batch's rules run while the
 * blocks of its later events arrive, rather than each waiting for the disk in turn. `refs` is
 * reordered. A block that cannot be read or fails its check is left out, with no fault: the
 * read that needs it reads it again and reports that. The reads of the previous call are
 * settled first (lsm_grid_prefetch_settle).
 */
void lsm_grid_prefetch(struct lsm_grid *grid, struct lsm_block_ref *refs, uint32_t count,
                       enum lsm_block_kind kind);
/* Waits for every read lsm_grid_prefetch started and caches the blocks that read well. */
void lsm_grid_prefetch_settle(struct lsm_grid *grid);

/* The cache set that holds `address` if any slot does. */
static inline uint32_t lsm_grid_set_of(const struct lsm_grid *grid, uint64_t address)
{
        uint64_t h = address * 0x9E3779B97F4A7C15ull;
        return (uint32_t)(((h >> 32) * grid->set_count) >> 32);
}

/*
 * Starts loading the cache's bookkeeping for `ref` ahead of an lsm_grid_cached of it, so that
 * a lookup's dozen of them (one per table it may probe) miss in parallel, not one by one.
 */
static inline void lsm_grid_cached_prefetch(const struct lsm_grid *grid, struct lsm_block_ref ref)
{
        uint32_t base = lsm_grid_set_of(grid, ref.address) * LSM_CACHE_WAYS;
        __builtin_prefetch(&grid->slot_address[base]);
        __builtin_prefetch(&grid->slot_checksum[base]);
        __builtin_prefetch(&grid->slot_checksum[base + LSM_CACHE_WAYS / 2]);
}
enum lsm_read_start {
        LSM_READ_CACHED,  /* the block is in the cache now (a synchronous device read it) */
        LSM_READ_STARTED, /* `done` runs when the block is in the cache (ok) or is not */
        LSM_READ_BUSY,    /* every read or every way of its cache set is busy: try later */
        LSM_READ_FAULT,   /* a synchronous read failed: grid->error names the block */
};
/*
 * Makes the block `ref` names cached without blocking when the device can read asynchronously.
 * A caller must not start a second read of the same block before the first completes.
 */
enum lsm_read_start lsm_grid_read_start(struct lsm_grid *grid, struct lsm_block_ref ref,
                                        enum lsm_block_kind kind,
                                        void (*done)(void *context, bool ok), void *context);

/*
 * The block `ref` names, from the cache or read from the device and checked. NULL if the
 * device failed or holds another block there: grid->error names the address and the problem.
 */
const uint8_t *lsm_grid_read(struct lsm_grid *grid, struct lsm_block_ref ref,
                             enum lsm_block_kind kind);

#endif
