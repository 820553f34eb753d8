/*
 * manifest.h: the forest's list of tables, kept in the grid as a log of changes (docs/storage.md,
 * "Manifest log").
 *
 * Why a log: a checkpoint must cost what changed since the last one (issue 10). Rewriting every
 * table's record at each checkpoint costs what is stored: 26 blocks (1.7 MB) per checkpoint at
 * 100 M transfers, and the root could name only 750 such blocks (about 3 billion transfers).
 * A checkpoint now appends records of the tables added and removed since the last one, in
 * blocks chained newest to oldest (each names the one before it); the root names the newest
 * and how many to read. Dead records (of tables since removed) are dropped by compacting the
 * oldest blocks a few at a time: their live records are appended again and the blocks freed,
 * so the log stays within about twice the live records and each checkpoint writes a bounded
 * number of blocks beyond its own changes.
 *
 * Replaying the log oldest first gives the live tables: an add record puts a table (tree,
 * level, index block's address and checksum: its identity) in the list, a later add of the
 * same identity moves it to the end, a remove record takes it out (a remove whose add was
 * compacted away is ignored). Levels 1 and deeper are sorted by key; level 0's order, newest
 * last, is the order of the tables' last adds: compaction appends a tree's whole level 0 again,
 * in order, whenever it would move one of its tables.
 *
 * Memory: the log's records (128 bytes each, at most about twice the tables) and a map of the
 * live tables; both follow the number of tables (about 13,000 at 100 M transfers), as the trees'
 * levels do.
 */
#ifndef TALLY_LSM_MANIFEST_H
#define TALLY_LSM_MANIFEST_H

#include "lsm/tree.h"

enum lsm_manifest_kind {
        LSM_MANIFEST_ADD = 0, /* also every record of a root written before the log (legacy) */
        LSM_MANIFEST_REMOVE = 1,
};

struct lsm_manifest_record {
        uint8_t tree;
        uint8_t level;
        uint8_t kind; /* enum lsm_manifest_kind */
        uint8_t reserved[13];
        struct lsm_table_info table;
};
_Static_assert(sizeof(struct lsm_manifest_record) == 128, "manifest record size");

/* A log block's payload: the previous (older) block's reference, then its records. */
#define LSM_MANIFEST_LINK_SIZE 128u
#define LSM_MANIFEST_RECORDS_PER_BLOCK                                                            \
        ((LSM_BLOCK_PAYLOAD_MAX - LSM_MANIFEST_LINK_SIZE) / sizeof(struct lsm_manifest_record))
/* A root written before the log: every table once, in level order, blocks named by the root. */
#define LSM_MANIFEST_LEGACY_RECORDS_PER_BLOCK                                                     \
        (LSM_BLOCK_PAYLOAD_MAX / sizeof(struct lsm_manifest_record))
/*
 * Oldest blocks compacted per checkpoint at most: 2 per block of the checkpoint's own records,
 * plus this. The log stays near twice the live records (half of a compacted block is dead on
 * average), and a checkpoint's manifest writes stay a few blocks whatever is stored.
 */
#define LSM_MANIFEST_COMPACT_BLOCKS_MIN 2u

struct lsm_manifest_block {
        struct lsm_block_ref ref;
        uint32_t count; /* records */
};

struct lsm_manifest_entry; /* manifest.c: a live table's identity and its last add */

struct lsm_manifest {
        /* The log as the latest checkpoint written has it: blocks oldest first, their records
         * in log order; records[0] is number `seq_base` of every record ever appended. */
        struct lsm_manifest_block *blocks;
        uint32_t block_count, block_capacity;
        struct lsm_manifest_record *records;
        uint64_t record_count, record_capacity;
        uint64_t seq_base;
        bool legacy; /* opened from a root written before the log: rewritten whole next time */
        /* The live tables, by identity (open addressing, capacity a power of two). */
        struct lsm_manifest_entry *map;
        uint64_t map_count, map_capacity;
        uint32_t epoch; /* of the checkpoint being planned: entries seen in it carry it */
        /* A checkpoint's plan, kept for the next (a checkpoint allocates only to grow these). */
        struct lsm_manifest_record *pending;
        uint64_t pending_count, pending_capacity;
        struct lsm_manifest_block *written;
        uint32_t written_count, written_capacity;
        uint64_t *scratch; /* where the adds are, then the removes' seqs */
        uint64_t scratch_count, scratch_capacity;
        /* What the last checkpoint did, for tests and the log line. */
        uint32_t blocks_written_last, blocks_compacted_last;
};

void lsm_manifest_init(struct lsm_manifest *manifest);
void lsm_manifest_deinit(struct lsm_manifest *manifest);

/*
 * Replaces the manifest with the log a root names: `newest` and the `count` blocks back from it
 * (`legacy`: the `count` blocks of `refs`, oldest first, records from the payload's start).
 * False, with grid->error, if a block is unreadable or the records do not make sense.
 */
bool lsm_manifest_load(struct lsm_manifest *manifest, struct lsm_grid *grid,
                       const struct lsm_block_ref *refs, uint32_t count, bool legacy);

/*
 * The live tables, ordered by tree, level and last add (level 0's order; deeper levels are to
 * be sorted by key). Returns how many; *live points into the manifest's scratch, valid until
 * the next call on it.
 */
uint64_t lsm_manifest_live(struct lsm_manifest *manifest, const struct lsm_manifest_record **live);

/*
 * Appends to the log what changed in `trees` (indexed by tree id, NULL for none) since the last
 * checkpoint, compacting the oldest blocks as needed; new blocks go through `block` (one
 * block's buffer). Blocks compacted away are released. False, with grid->error, on a full grid
 * or a write fault: the manifest is then as before (blocks written meanwhile are released).
 */
bool lsm_manifest_checkpoint(struct lsm_manifest *manifest, struct lsm_grid *grid,
                             struct lsm_tree *const *trees, uint32_t tree_count, uint8_t *block);

/* The newest block (zero if the log is empty), which a root names with the block count. */
struct lsm_block_ref lsm_manifest_newest(const struct lsm_manifest *manifest);

#endif
