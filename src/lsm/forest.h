/*
 * forest.h: the trees of one grid, made durable together by a checkpoint (docs/storage.md).
 *
 * Why: a replica's state on disk is every tree's tables plus the free set, and it must be
 * restorable after a crash from one reference in the superblock, reading only the bookkeeping
 * (never the data), so that start-up does not depend on how much is stored.
 *
 * lsm_forest_checkpoint() (at a bar boundary: every memtable flushed) writes
 *   - manifest log blocks: the tables added and removed since the previous checkpoint (tree,
 *     level, key range, index block, counts), and the oldest blocks' live records again as
 *     they are compacted (lsm/manifest.h), so it writes what changed, not what is stored;
 *   - free set blocks: the grid's bitmap of blocks in use, in chunks of one block each; a chunk
 *     whose bits did not change since the previous checkpoint keeps its block;
 *   - a root block naming the manifest and free set blocks and carrying the caller's bytes
 *     (the ledger's counters), and returns the root's reference for the superblock.
 * Blocks that the previous checkpoint used and this one does not (compacted manifest blocks,
 * changed free set chunks, the old root, tables compacted away) are released: free once this checkpoint is
 * durable (lsm_forest_checkpoint_durable). Until then a crash restores the previous checkpoint,
 * whose blocks nothing has overwritten.
 *
 * lsm_forest_open() reads a root, its manifest and free set back: the trees' levels and the
 * grid's free set are as they were at that checkpoint; blocks written after it are free.
 */
#ifndef TALLY_LSM_FOREST_H
#define TALLY_LSM_FOREST_H

#include "lsm/manifest.h"
#include "lsm/tree.h"

#define LSM_FOREST_TREES_MAX 32u
/* The caller's bytes in the root block (the ledger's counters and last timestamps). */
#define LSM_FOREST_USER_SIZE_MAX 8192u
/* Blocks a root can name: the free set's chunks (at 1 TiB of grid, 33), the manifest log's
 * newest block, and in a root written before the log, every manifest block. */
#define LSM_FOREST_ROOT_REFS_MAX 1500u

struct lsm_forest {
        struct lsm_grid *grid;
        struct lsm_tree *trees[LSM_FOREST_TREES_MAX]; /* indexed by layout.tree */
        /* The latest checkpoint written (durable or not yet). */
        struct lsm_block_ref root;
        uint32_t manifest_count;  /* the log's blocks */
        struct lsm_manifest log; /* as of that checkpoint */
        uint32_t free_set_count;
        struct lsm_block_ref *free_set; /* LSM_FOREST_ROOT_REFS_MAX; chunk i, address 0: none */
        uint64_t *free_set_bits;        /* the bits each chunk held at that checkpoint */
        uint8_t *block;                 /* one block to build in */
        /* A checkpoint's plan of the free set chunks it rewrites (address per chunk) and the
         * chunk it compares: reserved here, so a checkpoint allocates nothing. */
        uint64_t *free_set_plan; /* LSM_FOREST_ROOT_REFS_MAX */
        uint64_t *free_set_words; /* LSM_FREE_SET_CHUNK_WORDS */
        uint64_t checkpoints;
        uint64_t blocks_written_last; /* by the last checkpoint: manifest, free set, root */
};

int lsm_forest_init(struct lsm_forest *forest, struct lsm_grid *grid);
void lsm_forest_deinit(struct lsm_forest *forest);
/* Adds a tree (its layout.tree is its id in the manifest, unique, < LSM_FOREST_TREES_MAX). */
void lsm_forest_add(struct lsm_forest *forest, struct lsm_tree *tree);

/*
 * Writes a checkpoint of every tree (memtables must be empty) and `user` bytes; *root gets the
 * root block's reference. False on a write fault or a full grid (grid->error).
 */
bool lsm_forest_checkpoint(struct lsm_forest *forest, const void *user, uint32_t user_size,
                           struct lsm_block_ref *root);
/* That checkpoint is durable (its superblock written and synced): released blocks are free. */
void lsm_forest_checkpoint_durable(struct lsm_forest *forest);

/*
 * Restores every added tree (empty, as after init) and the grid's free set from the checkpoint
 * `root` names, and copies its user bytes to `user` (*user_size set). False, with the reason in
 * grid->error, if a block is unreadable or names a tree that was not added.
 */
bool lsm_forest_open(struct lsm_forest *forest, struct lsm_block_ref root, void *user,
                     uint32_t *user_size);

/* The user bytes of a root block (already checked); false if it is not a root. */
bool lsm_forest_root_user(const uint8_t *root_block, void *user, uint32_t *user_size);

/*
 * Every block of the checkpoint `root` names, each once: the root, its manifest log's blocks
 * (oldest first) and free set blocks, then per live table its index block and data blocks. `visit` returns 0 to go on; -1 stops.
 * Returns 0, the first non-zero `visit` result, or -2 if a block is unreadable (grid->error).
 * What state sync and backups copy.
 */
int lsm_forest_blocks(struct lsm_forest *forest, struct lsm_block_ref root,
                      int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                      void *context);

/*
 * lsm_forest_blocks, for a caller that keeps the blocks of tables it listed before (state
 * sync's source lists each newer checkpoint while a peer copies): `table_known` is asked per
 * table first; 1 means it listed that table's index and data blocks itself (in that order),
 * so its index block is not read; 0 means list it as usual; negative stops with that result.
 */
int lsm_forest_blocks_known(struct lsm_forest *forest, struct lsm_block_ref root,
                            int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                            int (*table_known)(void *context, struct lsm_block_ref index),
                            void *context);

#endif
