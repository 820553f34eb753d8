/*
 * forest.c: checkpoints of a forest of trees: manifest, free set and root blocks (forest.h).
 */
#include "lsm/forest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Roots written before the manifest became a log (2026-12-06) name every manifest block, each
 * with every table once in level order; such a log is read as all adds (lsm_manifest_load's
 * legacy) and rewritten whole at the next checkpoint. Roots since name the log's newest block.
 */
#define ROOT_MAGIC_LEGACY 0x746f6f72796c6174ull /* "tallyroot" */
#define ROOT_MAGIC 0x676f6c796c6c6174ull        /* "tallylog" */

struct root {
        uint64_t magic;
        uint64_t checkpoint; /* how many checkpoints this forest has made */
        uint32_t manifest_count; /* log blocks (legacy: manifest blocks) */
        uint32_t free_set_count;
        uint64_t block_count_max; /* of the grid that wrote it */
        uint32_t user_size;
        uint32_t reserved;
        uint8_t user[LSM_FOREST_USER_SIZE_MAX];
        /* then the log's newest block if manifest_count > 0 (legacy: manifest_count refs), and
         * free_set_count refs */
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
        lsm_manifest_init(&forest->log);
        forest->free_set = calloc(LSM_FOREST_ROOT_REFS_MAX, sizeof(struct lsm_block_ref));
        forest->free_set_bits = calloc((size_t)chunks * LSM_FREE_SET_CHUNK_WORDS,
                                       sizeof(uint64_t));
        forest->block = aligned_alloc(4096, LSM_BLOCK_SIZE);
        forest->free_set_plan = calloc(LSM_FOREST_ROOT_REFS_MAX, sizeof(uint64_t));
        forest->free_set_words = calloc(LSM_FREE_SET_CHUNK_WORDS, sizeof(uint64_t));
        if (forest->free_set == NULL ||
            forest->free_set_bits == NULL || forest->block == NULL ||
            forest->free_set_plan == NULL || forest->free_set_words == NULL) {
                lsm_forest_deinit(forest);
                return -ENOMEM;
        }
        return 0;
}

void lsm_forest_deinit(struct lsm_forest *forest)
{
        lsm_manifest_deinit(&forest->log);
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
        /* The log keeps its blocks but the oldest it compacts; the previous root goes. */
        if (!lsm_manifest_checkpoint(&forest->log, grid, forest->trees, LSM_FOREST_TREES_MAX,
                                     forest->block))
                return false;
        forest->manifest_count = forest->log.block_count;
        if (forest->root.address != 0)
                lsm_grid_release(grid, forest->root.address);
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
        uint32_t newest = forest->manifest_count > 0 ? 1 : 0;
        struct lsm_block_ref newest_ref = lsm_manifest_newest(&forest->log);
        memcpy(refs, &newest_ref, sizeof(newest_ref)); /* refs are not 16-byte aligned */
        memcpy(refs + newest, forest->free_set, chunks * sizeof(*refs));
        uint32_t size = LSM_BLOCK_HEADER_SIZE + (uint32_t)sizeof(*root) +
                        (newest + chunks) * (uint32_t)sizeof(*refs);
        forest->root = lsm_grid_write_at(grid, forest->block, root_address, LSM_BLOCK_ROOT, 0, 0,
                                         newest + chunks, size);
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

/* A root's fields, checked against the grid; its refs copied (reads may evict the root). */
struct root_view {
        const struct root *root;
        bool legacy;
        uint32_t manifest_refs; /* refs naming the manifest: legacy, every block; else the newest */
        struct lsm_block_ref refs[LSM_FOREST_ROOT_REFS_MAX];
};

static bool root_read(struct lsm_grid *grid, struct lsm_block_ref root_ref, uint8_t *copy,
                      struct root_view *view)
{
        const uint8_t *block = lsm_grid_read(grid, root_ref, LSM_BLOCK_ROOT);
        if (block == NULL)
                return false;
        memcpy(copy, block, LSM_BLOCK_SIZE);
        const struct root *root = (const struct root *)(copy + LSM_BLOCK_HEADER_SIZE);
        view->root = root;
        view->legacy = root->magic == ROOT_MAGIC_LEGACY;
        view->manifest_refs = view->legacy ? root->manifest_count : root->manifest_count > 0;
        if ((root->magic != ROOT_MAGIC && !view->legacy) ||
            root->user_size > LSM_FOREST_USER_SIZE_MAX ||
            (view->legacy && root->manifest_count > LSM_FOREST_ROOT_REFS_MAX / 2) ||
            root->free_set_count != lsm_grid_free_set_chunks(grid) ||
            root->block_count_max != grid->block_count_max ||
            view->manifest_refs + root->free_set_count > LSM_FOREST_ROOT_REFS_MAX) {
                snprintf(grid->error, sizeof(grid->error),
                         "root names %u free set chunks of a grid of %llu blocks (this grid: %u, "
                         "%llu)",
                         root->free_set_count, (unsigned long long)root->block_count_max,
                         lsm_grid_free_set_chunks(grid),
                         (unsigned long long)grid->block_count_max);
                return false;
        }
        memcpy(view->refs, root + 1,
               (view->manifest_refs + root->free_set_count) * sizeof(*view->refs));
        return true;
}

static bool manifest_load(struct lsm_manifest *manifest, struct lsm_grid *grid,
                          const struct root_view *view)
{
        return lsm_manifest_load(manifest, grid, view->refs, view->root->manifest_count,
                                 view->legacy);
}

/* qsort_r's order of one deeper level's tables: by key (they do not overlap). */
static int table_compare(const void *a, const void *b, void *layout)
{
        const struct lsm_manifest_record *x = a, *y = b;
        return lsm_key_compare(layout, x->table.key_min, y->table.key_min);
}

/* The trees' levels from the log's live tables (ordered by tree, level, last add). */
static bool trees_load(struct lsm_forest *forest)
{
        struct lsm_grid *grid = forest->grid;
        const struct lsm_manifest_record *live;
        uint64_t count = lsm_manifest_live(&forest->log, &live);
        for (uint64_t first = 0, end; first < count; first = end) {
                const struct lsm_manifest_record *r = &live[first];
                for (end = first + 1; end < count && live[end].tree == r->tree &&
                                      live[end].level == r->level;
                     end++)
                        ;
                struct lsm_tree *tree = r->tree < LSM_FOREST_TREES_MAX ? forest->trees[r->tree]
                                                                        : NULL;
                if (tree == NULL) {
                        snprintf(grid->error, sizeof(grid->error),
                                 "manifest names tree %u level %u, which this forest does not "
                                 "have",
                                 r->tree, r->level);
                        return false;
                }
                struct lsm_manifest_record *group = (struct lsm_manifest_record *)&live[first];
                if (r->level > 0)
                        qsort_r(group, end - first, sizeof(*group), table_compare,
                                (void *)&tree->layout);
                for (uint64_t i = first; i < end; i++)
                        lsm_tree_table_append(tree, live[i].level, &live[i].table);
        }
        return true;
}

bool lsm_forest_open(struct lsm_forest *forest, struct lsm_block_ref root_ref, void *user,
                     uint32_t *user_size)
{
        struct lsm_grid *grid = forest->grid;
        static struct root_view view;
        if (!root_read(grid, root_ref, forest->block, &view))
                return open_fail(forest, "root");
        const struct root *root = view.root;
        forest->checkpoints = root->checkpoint;
        forest->free_set_count = root->free_set_count;
        memcpy(forest->free_set, view.refs + view.manifest_refs,
               root->free_set_count * sizeof(*forest->free_set));
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
        if (!manifest_load(&forest->log, grid, &view))
                return open_fail(forest, "manifest");
        forest->manifest_count = forest->log.block_count;
        if (!trees_load(forest))
                return open_fail(forest, "manifest");
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

/* Every table's index and data blocks (the live records of a log), a window read at once. */
static int tables_visit(struct lsm_grid *grid, const struct lsm_manifest_record *live,
                        uint64_t count,
                        int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                        int (*table_known)(void *context, struct lsm_block_ref index),
                        void *context, struct lsm_index_entry *entries,
                        struct lsm_block_ref *ahead)
{
        int rc = 0;
        for (uint64_t r = 0; rc == 0 && r < count; r++) {
                /*
                 * Without a caller that knows most tables, every index block is read: at once,
                 * a window at a time (one at a time, 300 of them took 220 ms from a cold cache,
                 * on the loop of a primary a peer copied from).
                 */
                if (table_known == NULL && r % LSM_GRID_PREFETCH_MAX == 0) {
                        uint32_t n = (uint32_t)MIN(count - r, LSM_GRID_PREFETCH_MAX);
                        for (uint32_t k = 0; k < n; k++)
                                ahead[k] = live[r + k].table.index;
                        lsm_grid_prefetch(grid, ahead, n, LSM_BLOCK_TABLE_INDEX);
                }
                struct lsm_block_ref index_ref = live[r].table.index;
                int known = table_known != NULL ? table_known(context, index_ref) : 0;
                if (known != 0) {
                        rc = known > 0 ? 0 : known;
                        continue;
                }
                const uint8_t *index = lsm_grid_read(grid, index_ref, LSM_BLOCK_TABLE_INDEX);
                if (index == NULL)
                        return -2;
                uint32_t n = ((const struct lsm_block_header *)index)->count;
                n = MIN(n, (uint32_t)(LSM_BLOCK_PAYLOAD_MAX / sizeof(*entries)));
                memcpy(entries, index + LSM_BLOCK_HEADER_SIZE, n * sizeof(*entries));
                rc = visit(context, index_ref, LSM_BLOCK_TABLE_INDEX);
                for (uint32_t d = 0; rc == 0 && d < n; d++)
                        rc = visit(context, entries[d].data, LSM_BLOCK_TABLE_DATA);
        }
        return rc;
}

int lsm_forest_blocks_known(struct lsm_forest *forest, struct lsm_block_ref root_ref,
                            int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                            int (*table_known)(void *context, struct lsm_block_ref index),
                            void *context)
{
        struct lsm_grid *grid = forest->grid;
        struct root_view *view = malloc(sizeof(*view));
        uint8_t *copy = aligned_alloc(4096, LSM_BLOCK_SIZE);
        struct lsm_index_entry *entries = malloc(LSM_BLOCK_PAYLOAD_MAX);
        struct lsm_block_ref *ahead = malloc(LSM_GRID_PREFETCH_MAX * sizeof(*ahead));
        /* That checkpoint's log, read apart from the forest's own (it may be an older one). */
        struct lsm_manifest log;
        lsm_manifest_init(&log);
        int rc = -2;
        if (view == NULL || copy == NULL || entries == NULL || ahead == NULL) {
                snprintf(grid->error, sizeof(grid->error), "out of memory listing blocks");
                goto done;
        }
        if (!root_read(grid, root_ref, copy, view) || !manifest_load(&log, grid, view))
                goto done;
        rc = visit(context, root_ref, LSM_BLOCK_ROOT);
        for (uint32_t i = 0; rc == 0 && i < log.block_count; i++)
                rc = visit(context, log.blocks[i].ref, LSM_BLOCK_MANIFEST);
        for (uint32_t i = 0; rc == 0 && i < view->root->free_set_count; i++) {
                struct lsm_block_ref ref = view->refs[view->manifest_refs + i];
                if (ref.address != 0)
                        rc = visit(context, ref, LSM_BLOCK_FREE_SET);
        }
        if (rc == 0) {
                const struct lsm_manifest_record *live;
                uint64_t count = lsm_manifest_live(&log, &live);
                rc = tables_visit(grid, live, count, visit, table_known, context, entries, ahead);
        }
done:
        lsm_grid_prefetch_settle(grid); /* no slot stays pinned */
        lsm_manifest_deinit(&log);
        free(view);
        free(copy);
        free(entries);
        free(ahead);
        return rc;
}

bool lsm_forest_root_user(const uint8_t *block, void *user, uint32_t *user_size)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        const struct root *root = (const struct root *)(block + LSM_BLOCK_HEADER_SIZE);
        if (h->kind != LSM_BLOCK_ROOT ||
            (root->magic != ROOT_MAGIC && root->magic != ROOT_MAGIC_LEGACY) ||
            root->user_size > LSM_FOREST_USER_SIZE_MAX)
                return false;
        memcpy(user, root->user, root->user_size);
        *user_size = root->user_size;
        return true;
}
