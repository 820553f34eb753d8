/*
 * forest.c: checkpoints of a forest of trees: manifest, free set and root blocks (forest.h).
 */
#include "lsm/forest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct manifest_record {
        uint8_t tree;
        uint8_t level;
        uint8_t reserved[14];
        struct lsm_table_info table;
};
_Static_assert(sizeof(struct manifest_record) == 128, "manifest record size");
#define MANIFEST_RECORDS_PER_BLOCK (LSM_BLOCK_PAYLOAD_MAX / sizeof(struct manifest_record))

#define ROOT_MAGIC 0x746f6f72796c6174ull /* "tallyroot" */

struct root {
        uint64_t magic;
        uint64_t checkpoint; /* how many checkpoints this forest has made */
        uint32_t manifest_count;
        uint32_t free_set_count;
        uint64_t block_count_max; /* of the grid that wrote it */
        uint32_t user_size;
        uint32_t reserved;
        uint8_t user[LSM_FOREST_USER_SIZE_MAX];
        /* then manifest_count + free_set_count refs */
};
_Static_assert(sizeof(struct root) + LSM_FOREST_ROOT_REFS_MAX * sizeof(struct lsm_block_ref) <=
                       LSM_BLOCK_PAYLOAD_MAX,
               "a root names every block it needs");

int lsm_forest_init(struct lsm_forest *forest, struct lsm_grid *grid)
{
        memset(forest, 0, sizeof(*forest));
        forest->grid = grid;
        uint32_t chunks = lsm_grid_free_set_chunks(grid);
        tally_assert(chunks < LSM_FOREST_ROOT_REFS_MAX / 2);
        forest->manifest = calloc(LSM_FOREST_ROOT_REFS_MAX, sizeof(struct lsm_block_ref));
        forest->free_set = calloc(LSM_FOREST_ROOT_REFS_MAX, sizeof(struct lsm_block_ref));
        forest->free_set_bits = calloc((size_t)chunks * LSM_FREE_SET_CHUNK_WORDS,
                                       sizeof(uint64_t));
        forest->block = aligned_alloc(4096, LSM_BLOCK_SIZE);
        forest->free_set_plan = calloc(LSM_FOREST_ROOT_REFS_MAX, sizeof(uint64_t));
        forest->free_set_words = calloc(LSM_FREE_SET_CHUNK_WORDS, sizeof(uint64_t));
        if (forest->manifest == NULL || forest->free_set == NULL ||
            forest->free_set_bits == NULL || forest->block == NULL ||
            forest->free_set_plan == NULL || forest->free_set_words == NULL) {
                lsm_forest_deinit(forest);
                return -ENOMEM;
        }
        return 0;
}

void lsm_forest_deinit(struct lsm_forest *forest)
{
        free(forest->manifest);
        free(forest->free_set);
        free(forest->free_set_bits);
        free(forest->block);
        free(forest->free_set_plan);
        free(forest->free_set_words);
        memset(forest, 0, sizeof(*forest));
}

void lsm_forest_add(struct lsm_forest *forest, struct lsm_tree *tree)
{
        uint8_t id = tree->layout.tree;
        tally_assert(id < LSM_FOREST_TREES_MAX && forest->trees[id] == NULL);
        tally_assert(tree->grid == forest->grid);
        forest->trees[id] = tree;
}

static uint8_t *payload(struct lsm_forest *forest)
{
        return forest->block + LSM_BLOCK_HEADER_SIZE;
}

/* Writes the `count` records in the block buffer as the next manifest block. */
static bool manifest_flush(struct lsm_forest *forest, uint32_t count)
{
        if (forest->manifest_count == LSM_FOREST_ROOT_REFS_MAX / 2) {
                snprintf(forest->grid->error, sizeof(forest->grid->error),
                         "manifest larger than a root can name");
                return false;
        }
        uint32_t size = LSM_BLOCK_HEADER_SIZE + count * (uint32_t)sizeof(struct manifest_record);
        struct lsm_block_ref ref = lsm_grid_write(forest->grid, forest->block, LSM_BLOCK_MANIFEST,
                                                  0, sizeof(struct manifest_record), count, size);
        if (ref.address == 0)
                return false;
        forest->manifest[forest->manifest_count++] = ref;
        return true;
}

/* Writes every table of every tree, tree by tree and level by level, into manifest blocks. */
static bool manifest_write(struct lsm_forest *forest)
{
        struct manifest_record *records = (struct manifest_record *)payload(forest);
        uint32_t count = 0;
        forest->manifest_count = 0;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest->trees[id];
                for (uint32_t level = 0; tree != NULL && level < LSM_LEVELS; level++) {
                        for (uint32_t t = 0; t < tree->levels[level].count; t++) {
                                memset(&records[count], 0, sizeof(records[count]));
                                records[count].tree = (uint8_t)id;
                                records[count].level = (uint8_t)level;
                                records[count].table = tree->levels[level].tables[t];
                                if (++count == MANIFEST_RECORDS_PER_BLOCK) {
                                        if (!manifest_flush(forest, count))
                                                return false;
                                        count = 0;
                                }
                        }
                }
        }
        return count == 0 || manifest_flush(forest, count);
}

/*
 * Decides which free set chunks change, releasing their old blocks and acquiring new ones, until
 * no further chunk changes (acquiring and releasing flip bits too). Returns false if full.
 */
static bool free_set_plan(struct lsm_forest *forest, uint64_t *addresses, uint64_t *words)
{
        struct lsm_grid *grid = forest->grid;
        uint32_t chunks = lsm_grid_free_set_chunks(grid);
        bool changed = true;
        for (uint32_t round = 0; changed; round++) {
                tally_assert(round <= chunks + 1);
                changed = false;
                for (uint32_t i = 0; i < chunks; i++) {
                        if (addresses[i] != 0)
                                continue; /* already to be rewritten */
                        lsm_grid_free_set_encode(grid, i, words);
                        const uint64_t *before =
                                forest->free_set_bits + (size_t)i * LSM_FREE_SET_CHUNK_WORDS;
                        if (forest->free_set[i].address != 0 &&
                            memcmp(words, before, LSM_FREE_SET_CHUNK_WORDS * 8) == 0)
                                continue;
                        if (forest->free_set[i].address != 0)
                                lsm_grid_release(grid, forest->free_set[i].address);
                        addresses[i] = lsm_grid_acquire(grid);
                        if (addresses[i] == 0) {
                                snprintf(grid->error, sizeof(grid->error),
                                         "grid full while writing the free set");
                                return false;
                        }
                        changed = true;
                }
        }
        return true;
}

bool lsm_forest_checkpoint(struct lsm_forest *forest, const void *user, uint32_t user_size,
                           struct lsm_block_ref *root_ref)
{
        struct lsm_grid *grid = forest->grid;
        tally_assert(user_size <= LSM_FOREST_USER_SIZE_MAX);
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++)
                tally_assert(forest->trees[id] == NULL || forest->trees[id]->memtable_count == 0);
        uint64_t written_before = grid->stats.writes;
        /* The previous checkpoint's manifest and root: this one names none of them. */
        for (uint32_t i = 0; i < forest->manifest_count; i++)
                lsm_grid_release(grid, forest->manifest[i].address);
        if (forest->root.address != 0)
                lsm_grid_release(grid, forest->root.address);
        if (!manifest_write(forest))
                return false;
        uint64_t root_address = lsm_grid_acquire(grid);
        if (root_address == 0) {
                snprintf(grid->error, sizeof(grid->error), "grid full while writing a root");
                return false;
        }
        /* Nothing allocated here: an embedder may unwind out of a block write (the simulator
         * crashes a replica in the middle of one), and only the forest's own memory survives. */
        uint32_t chunks = lsm_grid_free_set_chunks(grid);
        uint64_t *addresses = forest->free_set_plan;
        memset(addresses, 0, chunks * sizeof(uint64_t));
        bool ok = free_set_plan(forest, addresses, forest->free_set_words);
        for (uint32_t i = 0; ok && i < chunks; i++) {
                if (addresses[i] == 0)
                        continue;
                uint64_t *bits = (uint64_t *)payload(forest);
                lsm_grid_free_set_encode(grid, i, bits);
                memcpy(forest->free_set_bits + (size_t)i * LSM_FREE_SET_CHUNK_WORDS, bits,
                       LSM_FREE_SET_CHUNK_WORDS * 8);
                forest->free_set[i] = lsm_grid_write_at(grid, forest->block, addresses[i],
                                                        LSM_BLOCK_FREE_SET, 0, 8, i,
                                                        LSM_BLOCK_SIZE);
                ok = forest->free_set[i].address != 0;
        }
        if (!ok)
                return false;
        forest->free_set_count = chunks;
        struct root *root = (struct root *)payload(forest);
        memset(root, 0, sizeof(*root));
        root->magic = ROOT_MAGIC;
        root->checkpoint = ++forest->checkpoints;
        root->manifest_count = forest->manifest_count;
        root->free_set_count = chunks;
        root->block_count_max = grid->block_count_max;
        root->user_size = user_size;
        memcpy(root->user, user, user_size);
        struct lsm_block_ref *refs = (struct lsm_block_ref *)(root + 1);
        memcpy(refs, forest->manifest, forest->manifest_count * sizeof(*refs));
        memcpy(refs + forest->manifest_count, forest->free_set, chunks * sizeof(*refs));
        uint32_t size = LSM_BLOCK_HEADER_SIZE + (uint32_t)sizeof(*root) +
                        (forest->manifest_count + chunks) * (uint32_t)sizeof(*refs);
        forest->root = lsm_grid_write_at(grid, forest->block, root_address, LSM_BLOCK_ROOT, 0, 0,
                                         forest->manifest_count + chunks, size);
        if (forest->root.address == 0)
                return false;
        forest->blocks_written_last = grid->stats.writes - written_before;
        *root_ref = forest->root;
        /* What was released so far is not in this checkpoint; what is released from now on is. */
        lsm_grid_checkpoint_written(grid);
        return true;
}

void lsm_forest_checkpoint_durable(struct lsm_forest *forest)
{
        lsm_grid_checkpoint(forest->grid);
}

static bool open_fail(struct lsm_forest *forest, const char *what)
{
        char reason[sizeof(forest->grid->error) + 32];
        snprintf(reason, sizeof(reason), "checkpoint %s: %s", what, forest->grid->error);
        memcpy(forest->grid->error, reason, sizeof(forest->grid->error) - 1);
        forest->grid->error[sizeof(forest->grid->error) - 1] = '\0';
        return false;
}

bool lsm_forest_open(struct lsm_forest *forest, struct lsm_block_ref root_ref, void *user,
                     uint32_t *user_size)
{
        struct lsm_grid *grid = forest->grid;
        const uint8_t *block = lsm_grid_read(grid, root_ref, LSM_BLOCK_ROOT);
        if (block == NULL)
                return open_fail(forest, "root");
        memcpy(forest->block, block, LSM_BLOCK_SIZE);
        const struct root *root = (const struct root *)payload(forest);
        if (root->magic != ROOT_MAGIC || root->user_size > LSM_FOREST_USER_SIZE_MAX ||
            root->manifest_count > LSM_FOREST_ROOT_REFS_MAX / 2 ||
            root->free_set_count != lsm_grid_free_set_chunks(grid) ||
            root->block_count_max != grid->block_count_max) {
                snprintf(grid->error, sizeof(grid->error),
                         "root names %u free set chunks of a grid of %llu blocks (this grid: %u, "
                         "%llu)",
                         root->free_set_count, (unsigned long long)root->block_count_max,
                         lsm_grid_free_set_chunks(grid),
                         (unsigned long long)grid->block_count_max);
                return open_fail(forest, "root");
        }
        forest->checkpoints = root->checkpoint;
        forest->manifest_count = root->manifest_count;
        forest->free_set_count = root->free_set_count;
        const struct lsm_block_ref *refs = (const struct lsm_block_ref *)(root + 1);
        memcpy(forest->manifest, refs, root->manifest_count * sizeof(*refs));
        memcpy(forest->free_set, refs + root->manifest_count,
               root->free_set_count * sizeof(*refs));
        memcpy(user, root->user, root->user_size);
        *user_size = root->user_size;
        forest->root = root_ref;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest->trees[id];
                if (tree == NULL)
                        continue;
                tally_assert(tree->memtable_count == 0);
                for (uint32_t level = 0; level < LSM_LEVELS; level++) {
                        tree->levels[level].count = 0;
                        tree->levels[level].value_count = 0;
                }
        }
        for (uint32_t m = 0; m < forest->manifest_count; m++) {
                const uint8_t *manifest = lsm_grid_read(grid, forest->manifest[m],
                                                        LSM_BLOCK_MANIFEST);
                if (manifest == NULL)
                        return open_fail(forest, "manifest");
                const struct lsm_block_header *h = (const struct lsm_block_header *)manifest;
                const struct manifest_record *records =
                        (const struct manifest_record *)(manifest + LSM_BLOCK_HEADER_SIZE);
                for (uint32_t r = 0; r < h->count; r++) {
                        const struct manifest_record *record = &records[r];
                        struct lsm_tree *tree = record->tree < LSM_FOREST_TREES_MAX
                                                        ? forest->trees[record->tree]
                                                        : NULL;
                        if (tree == NULL || record->level >= LSM_LEVELS) {
                                snprintf(grid->error, sizeof(grid->error),
                                         "manifest names tree %u level %u, which this forest "
                                         "does not have",
                                         record->tree, record->level);
                                return open_fail(forest, "manifest");
                        }
                        lsm_tree_table_append(tree, record->level, &record->table);
                }
        }
        lsm_grid_free_set_clear(grid);
        for (uint32_t i = 0; i < forest->free_set_count; i++) {
                const uint8_t *chunk = lsm_grid_read(grid, forest->free_set[i],
                                                     LSM_BLOCK_FREE_SET);
                if (chunk == NULL)
                        return open_fail(forest, "free set");
                const uint64_t *words = (const uint64_t *)(chunk + LSM_BLOCK_HEADER_SIZE);
                memcpy(forest->free_set_bits + (size_t)i * LSM_FREE_SET_CHUNK_WORDS, words,
                       LSM_FREE_SET_CHUNK_WORDS * 8);
                lsm_grid_free_set_decode(grid, i, words);
        }
        return true;
}

int lsm_forest_blocks(struct lsm_forest *forest, struct lsm_block_ref root_ref,
                      int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                      void *context)
{
        return lsm_forest_blocks_known(forest, root_ref, visit, NULL, context);
}

int lsm_forest_blocks_known(struct lsm_forest *forest, struct lsm_block_ref root_ref,
                            int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                            int (*table_known)(void *context, struct lsm_block_ref index),
                            void *context)
{
        struct lsm_grid *grid = forest->grid;
        const uint8_t *block = lsm_grid_read(grid, root_ref, LSM_BLOCK_ROOT);
        if (block == NULL)
                return -2;
        int rc = visit(context, root_ref, LSM_BLOCK_ROOT);
        if (rc != 0)
                return rc;
        /* The root's refs, copied: reads below may evict the root from the cache. */
        const struct root *root = (const struct root *)(block + LSM_BLOCK_HEADER_SIZE);
        uint32_t manifest_count = MIN(root->manifest_count, LSM_FOREST_ROOT_REFS_MAX);
        uint32_t free_set_count = MIN(root->free_set_count, LSM_FOREST_ROOT_REFS_MAX -
                                                                    manifest_count);
        uint32_t count = manifest_count + free_set_count;
        struct lsm_block_ref *refs = malloc((count + 1) * sizeof(*refs));
        struct lsm_index_entry *entries = malloc(LSM_BLOCK_PAYLOAD_MAX);
        struct lsm_block_ref *ahead = malloc(LSM_GRID_PREFETCH_MAX * sizeof(*ahead));
        if (refs == NULL || entries == NULL || ahead == NULL) {
                free(refs);
                free(entries);
                free(ahead);
                snprintf(grid->error, sizeof(grid->error), "out of memory listing blocks");
                return -2;
        }
        memcpy(refs, root + 1, count * sizeof(*refs));
        for (uint32_t i = 0; rc == 0 && i < count; i++) {
                uint8_t kind = i < manifest_count ? LSM_BLOCK_MANIFEST : LSM_BLOCK_FREE_SET;
                if (refs[i].address != 0)
                        rc = visit(context, refs[i], kind);
        }
        for (uint32_t m = 0; rc == 0 && m < manifest_count; m++) {
                const uint8_t *manifest = lsm_grid_read(grid, refs[m], LSM_BLOCK_MANIFEST);
                if (manifest == NULL) {
                        rc = -2;
                        break;
                }
                uint32_t records = ((const struct lsm_block_header *)manifest)->count;
                struct manifest_record *copy = malloc((size_t)records * sizeof(*copy) + 1);
                if (copy == NULL) {
                        rc = -2;
                        break;
                }
                memcpy(copy, manifest + LSM_BLOCK_HEADER_SIZE, (size_t)records * sizeof(*copy));
                for (uint32_t r = 0; rc == 0 && r < records; r++) {
                        /*
                         * Without a caller that knows most tables, every index block is read:
                         * at once, a window at a time (one at a time, 300 of them took 220 ms
                         * from a cold cache, on the loop of a primary a peer copied from).
                         */
                        if (table_known == NULL && r % LSM_GRID_PREFETCH_MAX == 0) {
                                uint32_t n = MIN(records - r, LSM_GRID_PREFETCH_MAX);
                                for (uint32_t k = 0; k < n; k++)
                                        ahead[k] = copy[r + k].table.index;
                                lsm_grid_prefetch(grid, ahead, n, LSM_BLOCK_TABLE_INDEX);
                        }
                        struct lsm_block_ref index_ref = copy[r].table.index;
                        int known = table_known != NULL ? table_known(context, index_ref) : 0;
                        if (known != 0) {
                                rc = known > 0 ? 0 : known;
                                continue;
                        }
                        const uint8_t *index = lsm_grid_read(grid, index_ref,
                                                             LSM_BLOCK_TABLE_INDEX);
                        if (index == NULL) {
                                rc = -2;
                                break;
                        }
                        uint32_t n = ((const struct lsm_block_header *)index)->count;
                        n = MIN(n, (uint32_t)(LSM_BLOCK_PAYLOAD_MAX / sizeof(*entries)));
                        memcpy(entries, index + LSM_BLOCK_HEADER_SIZE, n * sizeof(*entries));
                        rc = visit(context, index_ref, LSM_BLOCK_TABLE_INDEX);
                        for (uint32_t d = 0; rc == 0 && d < n; d++)
                                rc = visit(context, entries[d].data, LSM_BLOCK_TABLE_DATA);
                }
                free(copy);
        }
        lsm_grid_prefetch_settle(grid); /* no slot stays pinned */
        free(refs);
        free(entries);
        free(ahead);
        return rc;
}

bool lsm_forest_root_user(const uint8_t *block, void *user, uint32_t *user_size)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        const struct root *root = (const struct root *)(block + LSM_BLOCK_HEADER_SIZE);
        if (h->kind != LSM_BLOCK_ROOT || root->magic != ROOT_MAGIC ||
            root->user_size > LSM_FOREST_USER_SIZE_MAX)
                return false;
        memcpy(user, root->user, root->user_size);
        *user_size = root->user_size;
        return true;
}
