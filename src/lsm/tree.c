/*
 * tree.c: memtable, levels, lookups, merged scans and compaction of one LSM tree (see tree.h).
 *
 * Scans and compactions both merge sorted sources: the memtable's sorted view, each level-0
 * table, and each deeper level as one run of non-overlapping tables. Every source has a rank
 * (the memtable highest, then level-0 tables newest first, then levels 1, 2, ...); among equal
 * keys the highest rank is the newest version and the only one kept.
 */
#include "lsm/tree.h"

#include "lib/huge_pages.h"
#include "lsm/compactor.h"
#include "lib/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define WORKER_CHUNK_VALUES 65536u /* the worker merges this many between looks at `cancel` */
#define WORKER_KEEP_UP_LAG (2u * WORKER_CHUNK_VALUES) /* job_grant says why */

static void job_free(struct lsm_tree *tree);
static void job_kept_free(struct lsm_compaction *job);
static bool job_merge_open(struct lsm_tree *tree, struct lsm_grid *grid, struct lsm_merge *m);

/* ---- memtable --------------------------------------------------------------------------- */

static uint8_t *memtable_value(const struct lsm_tree *tree, uint32_t position)
{
        return tree->memtable + (size_t)position * tree->layout.value_size;
}

/* The hash slot holding `key` (whose lsm_key_hash is `h`), or the empty slot where it would go. */
static uint32_t memtable_slot_hashed(const struct lsm_tree *tree, const void *key, uint64_t h)
{
        const struct lsm_layout *layout = &tree->layout;
        uint32_t bits = tree->hash_position_bits;
        uint32_t tag = bits == 32 ? 0 : (uint32_t)(h >> 32) >> bits << bits;
        uint32_t mask = bits == 32 ? UINT32_MAX : (1u << bits) - 1;
        uint32_t slot = (uint32_t)h & tree->hash_mask;
        for (uint32_t probe = 0; probe <= tree->hash_mask; probe++) {
                uint32_t entry = tree->hash[slot];
                if (entry == 0 ||
                    ((entry & ~mask) == tag &&
                     lsm_key_compare(layout, lsm_key_of(layout, memtable_value(tree, (entry & mask) - 1)),
                                     key) == 0))
                        return slot;
                slot = (slot + 1) & tree->hash_mask;
        }
        tally_assert(false); /* the table is at most half full */
        return 0;
}

static uint32_t memtable_slot(const struct lsm_tree *tree, const void *key)
{
        return memtable_slot_hashed(tree, key, lsm_key_hash(&tree->layout, key));
}

static uint32_t hash_entry(const struct lsm_tree *tree, const void *key, uint32_t position)
{
        uint32_t bits = tree->hash_position_bits;
        uint32_t tag = bits == 32 ? 0 : (uint32_t)(lsm_key_hash(&tree->layout, key) >> 32) >> bits << bits;
        return tag | (position + 1);
}

static uint32_t hash_position(const struct lsm_tree *tree, uint32_t entry)
{
        uint32_t bits = tree->hash_position_bits;
        return (bits == 32 ? entry : entry & ((1u << bits) - 1)) - 1;
}

/*
 * Memtable memory: a few MB per tree, reserved at start-up but first touched as the values of
 * the first bars arrive, at one page fault per 4 KiB (15% of the ledger benchmark). Regions of
 * 2 MiB or more are aligned and advised for transparent huge pages (a hint only). free() frees.
 */
static void *memtable_alloc(size_t bytes, bool zeroed)
{
        const size_t huge = 2u << 20;
        void *p = NULL;
        if (bytes < huge)
                return zeroed ? calloc(1, bytes) : malloc(bytes);
        if (posix_memalign(&p, huge, bytes) != 0)
                return NULL;
        (void)madvise(p, bytes, MADV_HUGEPAGE);
        if (zeroed)
                memset(p, 0, bytes);
        huge_pages_note(p, bytes);
        return p;
}

int lsm_tree_init(struct lsm_tree *tree, const char *name, const struct lsm_layout *layout,
                  struct lsm_grid *grid, uint32_t memtable_max)
{
        tally_assert(memtable_max > 0 && memtable_max < (1u << 30));
        memset(tree, 0, sizeof(*tree));
        snprintf(tree->name, sizeof(tree->name), "%s", name);
        tree->layout = *layout;
        tree->grid = grid;
        tree->memtable_max = memtable_max;
        tree->room_max = memtable_max - (memtable_max / 18) * (layout->tree % 9u);
        tree->in_order = true;
        uint64_t table_values = (uint64_t)lsm_table_data_blocks_max(layout) *
                                lsm_values_per_block(layout);
        tree->level0_flush_tables =
                (uint32_t)MAX(1, (memtable_max + table_values - 1) / table_values);
        /* Filtered layouts (the id maps) only: their tables are small, and an ordered scan,
         * which opens a cursor per level-0 table, does not read them. */
        tree->level0_tables_per_fill = layout->filter ? tree->level0_flush_tables : 1;
        tree->filter_offset_legacy = layout->filter ? lsm_table_filter_offset_legacy(layout) : 0;
        tree->budget_scale = layout->filter && layout->table_data_blocks_max == 0
                                     ? LSM_TABLE_FILTER_BITS_PER_KEY_MIN /
                                               LSM_TABLE_FILTER_BITS_PER_KEY_LEGACY
                                     : 1;
        tree->level0_budget = LSM_LEVEL0_FILL_MAX;
        tree->worker_keep_up_lag = WORKER_KEEP_UP_LAG;
        tree->hash_position_bits = 1;
        while (tree->hash_position_bits < 32 &&
               (1ull << tree->hash_position_bits) <= (uint64_t)memtable_max)
                tree->hash_position_bits++;
        uint32_t hash_size = 1;
        while (hash_size < 2 * memtable_max)
                hash_size *= 2;
        tree->hash_mask = hash_size - 1;
        tree->memtable = memtable_alloc((size_t)memtable_max * layout->value_size, false);
        if (!layout->insert_only)
                tree->hash = memtable_alloc((size_t)hash_size * sizeof(uint32_t), true);
        tree->sorted = memtable_alloc((size_t)memtable_max * sizeof(uint32_t), false);
        tree->sort_scratch = memtable_alloc((size_t)memtable_max * 2 * sizeof(uint64_t), false);
        if (layout->filter)
                tree->filter_pages = aligned_alloc(LSM_TABLE_FILTER_PAGE_SIZE, LSM_BLOCK_SIZE);
        if (tree->memtable == NULL || (tree->hash == NULL && !layout->insert_only) ||
            (layout->filter && tree->filter_pages == NULL) ||
            tree->sorted == NULL || tree->sort_scratch == NULL ||
            lsm_table_builder_init(&tree->builder, &tree->layout, grid, NULL, NULL) != 0 ||
            lsm_table_builder_init(&tree->flush_builder, &tree->layout, grid, NULL, NULL) != 0) {
                lsm_tree_deinit(tree);
                return -ENOMEM;
        }
        return 0;
}

void lsm_tree_deinit(struct lsm_tree *tree)
{
        if (tree->job.active)
                job_free(tree); /* first: a worker may be merging it */
        free(tree->memtable);
        free(tree->hash);
        free(tree->sorted);
        free(tree->sort_scratch);
        free(tree->filter_pages);
        for (uint32_t i = 0; i < LSM_LEVELS; i++)
                free(tree->levels[i].tables);
        lsm_stage_free(&tree->job.stage);
        free(tree->built.tables);
        lsm_table_builder_deinit(&tree->builder);
        lsm_table_builder_deinit(&tree->flush_builder);
        memset(tree, 0, sizeof(*tree));
}

bool lsm_tree_has_room(const struct lsm_tree *tree, uint32_t count)
{
        return tree->memtable_count + (uint64_t)count <= tree->room_max;
}

/* Appends a value with a key not in the memtable (or, insert_only, maybe there already). */
static void memtable_append(struct lsm_tree *tree, const void *value)
{
        const struct lsm_layout *layout = &tree->layout;
        tally_assert(tree->memtable_count < tree->memtable_max);
        uint32_t position = tree->memtable_count++;
        if (tree->in_order && position > 0 &&
            lsm_key_compare(layout, lsm_key_of(layout, memtable_value(tree, position - 1)),
                            lsm_key_of(layout, value)) >= 0)
                tree->in_order = false;
        memcpy(memtable_value(tree, position), value, layout->value_size);
        tree->sorted_dirty = true;
        tree->version++;
}

void lsm_tree_put(struct lsm_tree *tree, const void *value)
{
        const struct lsm_layout *layout = &tree->layout;
        tree->stats.puts++;
        if (layout->insert_only) {
                memtable_append(tree, value);
                return;
        }
        const uint8_t *key = lsm_key_of(layout, value);
        uint32_t slot = memtable_slot(tree, key);
        if (tree->hash[slot] != 0) {
                memcpy(memtable_value(tree, hash_position(tree, tree->hash[slot])), value,
                       layout->value_size);
                tree->version++;
                return;
        }
        tree->hash[slot] = hash_entry(tree, key, tree->memtable_count);
        memtable_append(tree, value);
}

void lsm_tree_put_prefetch(const struct lsm_tree *tree, const void *key)
{
        if (tree->hash == NULL)
                return; /* insert_only: the put appends */
        uint64_t h = lsm_key_hash(&tree->layout, key);
        __builtin_prefetch(&tree->hash[(uint32_t)h & tree->hash_mask], 1);
}

void lsm_tree_value_prefetch(const struct lsm_tree *tree, const void *key)
{
        if (tree->hash == NULL)
                return;
        uint32_t entry = tree->hash[(uint32_t)lsm_key_hash(&tree->layout, key) & tree->hash_mask];
        if (entry != 0) /* the key's, or another's a probe passes: either way it is read */
                __builtin_prefetch(lsm_key_of(&tree->layout,
                                              memtable_value(tree, hash_position(tree, entry))));
}

/* Orders positions by key, then by position (so that the newest of equal keys comes last). */
static int compare_positions(const void *a, const void *b, void *context)
{
        const struct lsm_tree *tree = context;
        const struct lsm_layout *layout = &tree->layout;
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        int c = lsm_key_compare(layout, lsm_key_of(layout, memtable_value(tree, x)),
                                lsm_key_of(layout, memtable_value(tree, y)));
        return c != 0 ? c : (x > y) - (x < y);
}

/* Keys `stride` bytes apart from `base`, for compare_key_entries. */
struct key_order {
        const struct lsm_layout *layout;
        const uint8_t *base;
        size_t stride;
};

/* (prefix << 32 | index) entries by their keys, equal keys by index. */
static int compare_key_entries(const void *a, const void *b, void *context)
{
        const struct key_order *o = context;
        uint32_t x = (uint32_t)*(const uint64_t *)a, y = (uint32_t)*(const uint64_t *)b;
        int c = lsm_key_compare(o->layout, o->base + (size_t)x * o->stride,
                                o->base + (size_t)y * o->stride);
        return c != 0 ? c : (x > y) - (x < y);
}

/*
 * Orders `n` keys (`stride` bytes apart from `base`; equal keys by index): a stable LSD radix
 * sort on the 32 most significant bits that vary among them (at most four byte passes,
 * skipping bytes that never vary), then each run that shares those bits, if it is out of
 * order, by comparison. Returns `a` or `b` (each n values), whichever ends up holding
 * (prefix << 32 | index) in that order. Keys that vary only in a window of 32 bits (timestamps
 * in a bar, index entries of one field value) need nothing else; random ids almost never share
 * 32 bits. About 10x faster than qsort_r with a comparison callback on 65,536 keys.
 */
static uint64_t *keys_sorted(const struct lsm_layout *layout, const uint8_t *base, size_t stride,
                             uint32_t n, uint64_t *a, uint64_t *b)
{
        uint64_t first[3], diff[3] = {0, 0, 0};
        lsm_key_words(layout, base, first);
        for (uint32_t i = 1; i < n; i++) {
                uint64_t w[3];
                lsm_key_words(layout, base + (size_t)i * stride, w);
                for (uint32_t j = 0; j < 3; j++)
                        diff[j] |= w[j] ^ first[j];
        }
        uint32_t word = 0;
        while (word < 3 && diff[word] == 0)
                word++;
        if (word == 3) { /* every key equal: index order */
                for (uint32_t i = 0; i < n; i++)
                        a[i] = i;
                return a;
        }
        uint32_t top = 63 - (uint32_t)__builtin_clzll(diff[word]); /* highest varying bit */
        uint32_t counts[4][256];
        memset(counts, 0, sizeof(counts));
        for (uint32_t i = 0; i < n; i++) {
                uint64_t w[3];
                lsm_key_words(layout, base + (size_t)i * stride, w);
                u128 x = ((u128)w[word] << 64) | (word + 1 < 3 ? w[word + 1] : 0);
                uint32_t prefix = (uint32_t)(x >> (top + 33));
                a[i] = ((uint64_t)prefix << 32) | i;
                for (uint32_t d = 0; d < 4; d++)
                        counts[d][(prefix >> (8 * d)) & 0xFF]++;
        }
        for (uint32_t d = 0; d < 4; d++) {
                if (counts[d][(a[0] >> (32 + 8 * d)) & 0xFF] == n)
                        continue; /* this byte never varies */
                uint32_t offset = 0;
                for (uint32_t v = 0; v < 256; v++) {
                        uint32_t c = counts[d][v];
                        counts[d][v] = offset;
                        offset += c;
                }
                for (uint32_t i = 0; i < n; i++)
                        b[counts[d][(a[i] >> (32 + 8 * d)) & 0xFF]++] = a[i];
                uint64_t *t = a;
                a = b;
                b = t;
        }
        /* Runs with equal prefixes: in index order, which is key order unless checked not. */
        struct key_order order = {.layout = layout, .base = base, .stride = stride};
        for (uint32_t i = 0; i + 1 < n;) {
                uint32_t j = i + 1;
                while (j < n && (a[j] >> 32) == (a[i] >> 32))
                        j++;
                for (uint32_t k = i; k + 1 < j; k++) {
                        if (compare_key_entries(&a[k], &a[k + 1], &order) > 0) {
                                qsort_r(&a[i], j - i, sizeof(a[0]), compare_key_entries, &order);
                                break;
                        }
                }
                i = j;
        }
        return a;
}

/* Sorts the memtable's positions by key (keys_sorted), equal keys in arrival order. */
static void memtable_radix_sort(struct lsm_tree *tree)
{
        const struct lsm_layout *layout = &tree->layout;
        uint32_t n = tree->memtable_count;
        const uint64_t *a = keys_sorted(layout, memtable_value(tree, 0) + layout->key_offset,
                                        layout->value_size, n, tree->sort_scratch,
                                        tree->sort_scratch + tree->memtable_max);
        for (uint32_t i = 0; i < n; i++)
                tree->sorted[i] = (uint32_t)a[i];
}

/* The sorted view: positions in key order, one per key (the newest), up to date. */
static void memtable_sort(struct lsm_tree *tree)
{
        const struct lsm_layout *layout = &tree->layout;
        if (!tree->sorted_dirty)
                return;
        uint32_t n = tree->memtable_count;
        if (tree->in_order) {
                /* The view so far was the arrival order too: extend it. */
                for (uint32_t i = tree->sorted_count; i < n; i++)
                        tree->sorted[i] = i;
                tree->sorted_count = n;
                tree->sorted_dirty = false;
                return;
        }
        if (layout->key_kind != LSM_KEY_CUSTOM) {
                memtable_radix_sort(tree);
        } else {
                for (uint32_t i = 0; i < n; i++)
                        tree->sorted[i] = i;
                qsort_r(tree->sorted, n, sizeof(uint32_t), compare_positions, tree);
        }
        uint32_t count = n;
        if (layout->insert_only) { /* keep the last (newest) position of equal keys */
                count = 0;
                for (uint32_t i = 0; i < n; i++) {
                        if (i + 1 < n &&
                            lsm_key_compare(layout,
                                            lsm_key_of(layout, memtable_value(tree, tree->sorted[i])),
                                            lsm_key_of(layout,
                                                       memtable_value(tree, tree->sorted[i + 1]))) == 0)
                                continue;
                        tree->sorted[count++] = tree->sorted[i];
                }
        }
        tree->sorted_count = count;
        tree->sorted_dirty = false;
}

/* The memtable's position of `key`, or -1. */
static int64_t memtable_find(const struct lsm_tree *tree_const, const void *key)
{
        const struct lsm_layout *layout = &tree_const->layout;
        if (!layout->insert_only) {
                uint32_t entry = tree_const->hash[memtable_slot(tree_const, key)];
                return entry == 0 ? -1 : (int64_t)hash_position(tree_const, entry);
        }
        /* The sorted view is a cache of the memtable's order: reading may bring it up to date. */
        struct lsm_tree *tree = (struct lsm_tree *)tree_const;
        memtable_sort(tree);
        uint32_t lo = 0, hi = tree->sorted_count;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (lsm_key_compare(layout, lsm_key_of(layout, memtable_value(tree, tree->sorted[mid])),
                                    key) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < tree->sorted_count &&
            lsm_key_compare(layout, lsm_key_of(layout, memtable_value(tree, tree->sorted[lo])),
                            key) == 0)
                return tree->sorted[lo];
        return -1;
}

/* ---- levels ----------------------------------------------------------------------------- */

uint32_t lsm_tree_level_budget(const struct lsm_tree *tree, uint32_t level)
{
        tally_assert(level < LSM_LEVELS);
        if (level == 0)
                return tree->level0_budget;
        uint32_t budget = tree->budget_scale;
        for (uint32_t i = 0; i < level; i++)
                budget *= LSM_GROWTH_FACTOR;
        return budget;
}

static void level_insert(struct lsm_level *level, uint32_t at, const struct lsm_table_info *table)
{
        if (level->count == level->capacity) {
                uint32_t capacity = MAX(8u, level->capacity * 2);
                struct lsm_table_info *grown = realloc(level->tables, capacity * sizeof(*grown));
                tally_assert(grown != NULL); /* the manifest: ~100 bytes per 8 MiB table */
                level->tables = grown;
                level->capacity = capacity;
        }
        tally_assert(at <= level->count);
        memmove(&level->tables[at + 1], &level->tables[at],
                (level->count - at) * sizeof(*level->tables));
        level->tables[at] = *table;
        level->count++;
        level->value_count += table->value_count;
}

static void level_remove(struct lsm_level *level, uint32_t at, uint32_t count)
{
        tally_assert(at + count <= level->count);
        if (count == 0)
                return;
        for (uint32_t t = at; t < at + count; t++)
                level->value_count -= level->tables[t].value_count;
        memmove(&level->tables[at], &level->tables[at + count],
                (level->count - at - count) * sizeof(*level->tables));
        level->count -= count;
}

/*
 * Finds level 0's runs again after it changed: a table starts a new run unless its keys all
 * come after those of the table before it (a flush's tables, written in key order, make one).
 */
static void level0_runs_update(struct lsm_tree *tree)
{
        const struct lsm_level *zero = &tree->levels[0];
        uint32_t runs = 0;
        for (uint32_t k = 0; k < zero->count; k++) {
                if (k > 0 && lsm_key_compare(&tree->layout, zero->tables[k].key_min,
                                             zero->tables[k - 1].key_max) > 0)
                        continue;
                if (runs == LSM_LEVEL0_RUNS_TRACKED) {
                        runs++; /* too many to track: lookups look at every table */
                        break;
                }
                tree->level0_run_start[runs++] = k;
        }
        tree->level0_runs = runs;
}

uint32_t lsm_tree_level0_fill(const struct lsm_tree *tree)
{
        uint32_t tables = tree->levels[0].count;
        if (tree->level0_runs > LSM_LEVEL0_RUNS_TRACKED)
                return tables;
        uint32_t per_fill = tree->level0_tables_per_fill;
        uint32_t by_tables = (tables + per_fill - 1) / per_fill;
        return MAX(tree->level0_runs, by_tables);
}

/* In a sorted level >= 1: the first table whose key_max >= key. */
static uint32_t level_search(const struct lsm_tree *tree, const struct lsm_level *level,
                             const void *key)
{
        uint32_t lo = 0, hi = level->count;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (lsm_key_compare(&tree->layout, level->tables[mid].key_max, key) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

bool lsm_tree_memtable_get(const struct lsm_tree *tree, const void *key, void *out)
{
        int64_t position = memtable_find(tree, key);
        if (position < 0)
                return false;
        memcpy(out, memtable_value(tree, (uint32_t)position), tree->layout.value_size);
        return true;
}

const struct lsm_table_info *lsm_tree_level_find(const struct lsm_tree *tree, uint32_t level,
                                                 const void *key)
{
        tally_assert(level >= 1 && level < LSM_LEVELS);
        const struct lsm_level *l = &tree->levels[level];
        uint32_t t = level_search(tree, l, key);
        if (t == l->count || lsm_key_compare(&tree->layout, key, l->tables[t].key_min) < 0)
                return NULL;
        return &l->tables[t];
}

/*
 * A table whose index block is not cached is asked through its filter's pages (table.h,
 * "Filter pages"): page 0, checked against the table's reference, then each page that holds a
 * bucket of one of the table's keys (they come in a row, in key order), checked against page 0,
 * each read once into its place in tree->filter_pages. Anything that does not read or check
 * says "maybe": the lookup reads the block.
 */
struct filter_pages {
        uint32_t table;  /* whose pages are in tree->filter_pages (UINT32_MAX: none) */
        bool page0_ok;
        uint16_t loaded; /* pages read and checked, by bit */
        uint16_t failed; /* pages that did not read or check */
};

/*
 * Pages only when the tree's index blocks cannot all stay cached: while they fit in half the
 * block cache, an uncached one (after a restart, or pushed out once) is read whole, as before,
 * and stays for the next batches; read by pages it would never come back into the cache.
 */
static bool filter_pages_worth(const struct lsm_tree *tree)
{
        uint64_t tables = 0;
        for (uint32_t i = 0; i < LSM_LEVELS; i++)
                tables += tree->levels[i].count;
        return tables > tree->grid->slot_count / 2;
}

static bool filter_pages_may_contain(struct lsm_tree *tree, struct filter_pages *p,
                                     uint32_t table_number, const struct lsm_table_info *table,
                                     uint64_t hash)
{
        uint8_t *block = tree->filter_pages;
        if (p->table != table_number) {
                p->table = table_number;
                p->page0_ok = lsm_grid_read_range(tree->grid, table->index.address, 0,
                                                  LSM_TABLE_FILTER_PAGE_SIZE, block) == 0 &&
                              lsm_table_filter_page_sum(block) == table->index.reserved;
                p->loaded = 1; /* page 0: when it did not check, nothing below is asked */
                p->failed = 0;
        }
        if (!p->page0_ok)
                return true;
        uint32_t at;
        uint32_t number = lsm_table_filter_page_of(block, hash, &at);
        if (number >= LSM_TABLE_FILTER_PAGES)
                return true;
        uint16_t bit = (uint16_t)(1u << number);
        uint8_t *page = block + (size_t)number * LSM_TABLE_FILTER_PAGE_SIZE;
        if ((p->loaded & bit) == 0 && (p->failed & bit) == 0) {
                if (lsm_grid_read_range(tree->grid, table->index.address,
                                        number * LSM_TABLE_FILTER_PAGE_SIZE,
                                        LSM_TABLE_FILTER_PAGE_SIZE, page) == 0 &&
                    lsm_table_filter_page_check(block, number, page))
                        p->loaded |= bit;
                else
                        p->failed |= bit;
        }
        if (p->failed & bit)
                return true;
        return lsm_table_filter_bucket_may_contain(page + at, hash);
}

/*
 * lsm_tree_get for filtered layouts, whose lookups mostly miss everywhere: the memtable's hash
 * slot and the filter buckets of the tables that may hold the key (newest first) are loaded
 * at once (one cache miss each, overlapped instead of one after the other), then the memtable
 * is looked at and the tables are probed in order; a table whose index
 * block is not cached, or whose filter says maybe, takes the ordinary path. Level 0 gives one
 * candidate per run at most (its tables in a run do not overlap). Returns 2 when it cannot (too
 * many level-0 runs): the caller takes the ordinary path for all of them.
 */
#define GET_CANDIDATES_MAX (LSM_LEVEL0_RUNS_TRACKED + LSM_LEVELS)
static int tree_get_filtered(struct lsm_tree *tree, const void *key, void *out)
{
        const struct lsm_layout *layout = &tree->layout;
        const struct lsm_level *zero = &tree->levels[0];
        const struct lsm_table_info *candidates[GET_CANDIDATES_MAX];
        const uint8_t *index[GET_CANDIDATES_MAX];
        uint32_t count = 0;
        if (tree->level0_runs > LSM_LEVEL0_RUNS_TRACKED)
                return 2;
        uint64_t hash = lsm_key_hash(layout, key);
        if (tree->hash != NULL) /* its miss overlaps with the filters' below */
                __builtin_prefetch(&tree->hash[(uint32_t)hash & tree->hash_mask]);
        for (uint32_t r = tree->level0_runs; r > 0; r--) { /* newest run first */
                uint32_t first = tree->level0_run_start[r - 1];
                uint32_t k = r < tree->level0_runs ? tree->level0_run_start[r] : zero->count;
                /* The run's last table that starts at or before the key is the only one that
                 * can hold it. */
                while (k > first && lsm_key_compare(layout, key, zero->tables[k - 1].key_min) < 0)
                        k--;
                if (k > first && lsm_key_compare(layout, key, zero->tables[k - 1].key_max) <= 0)
                        candidates[count++] = &zero->tables[k - 1];
        }
        for (uint32_t i = 1; i < LSM_LEVELS; i++) {
                const struct lsm_table_info *t = lsm_tree_level_find(tree, i, key);
                if (t != NULL)
                        candidates[count++] = t;
        }
        for (uint32_t c = 0; c < count; c++)
                lsm_grid_cached_prefetch(tree->grid, candidates[c]->index);
        for (uint32_t c = 0; c < count; c++) {
                index[c] = lsm_grid_cached(tree->grid, candidates[c]->index);
                if (index[c] != NULL) {
                        const void *bucket = lsm_table_filter_bucket_at(
                                index[c], tree->filter_offset_legacy, hash);
                        if (bucket != NULL)
                                __builtin_prefetch(bucket);
                }
        }
        int64_t position = memtable_find(tree, key); /* the newest version of all */
        if (position >= 0) {
                memcpy(out, memtable_value(tree, (uint32_t)position), layout->value_size);
                return 1;
        }
        bool cache_changed = false; /* a read may have replaced a block index[] points to */
        for (uint32_t c = 0; c < count; c++) {
                const uint8_t *block = index[c];
                if (cache_changed)
                        block = lsm_grid_cached(tree->grid, candidates[c]->index);
                if (block != NULL &&
                    !lsm_table_filter_may_contain_at(block, tree->filter_offset_legacy, hash))
                        continue;
                if (block == NULL && candidates[c]->index.reserved != 0 &&
                    filter_pages_worth(tree)) {
                        struct filter_pages pages = {.table = UINT32_MAX};
                        if (!filter_pages_may_contain(tree, &pages, 0, candidates[c], hash))
                                continue;
                }
                int rc = lsm_table_get(tree->grid, layout, candidates[c], key, out);
                if (rc != 0)
                        return rc;
                cache_changed = true;
        }
        return 0;
}

int lsm_tree_get(struct lsm_tree *tree, const void *key, void *out)
{
        const struct lsm_layout *layout = &tree->layout;
        if (layout->filter) {
                int rc = tree_get_filtered(tree, key, out);
                if (rc != 2)
                        return rc;
        }
        int64_t position = memtable_find(tree, key);
        if (position >= 0) {
                memcpy(out, memtable_value(tree, (uint32_t)position), layout->value_size);
                return 1;
        }
        const struct lsm_level *zero = &tree->levels[0];
        for (uint32_t k = zero->count; k > 0; k--) {
                int rc = lsm_table_get(tree->grid, layout, &zero->tables[k - 1], key, out);
                if (rc != 0)
                        return rc;
        }
        for (uint32_t i = 1; i < LSM_LEVELS; i++) {
                const struct lsm_level *level = &tree->levels[i];
                uint32_t t = level_search(tree, level, key);
                if (t == level->count)
                        continue;
                int rc = lsm_table_get(tree->grid, layout, &level->tables[t], key, out);
                if (rc != 0)
                        return rc;
        }
        return 0;
}

/* The newest table whose range holds `key` (level 0 newest first, then each level), or NULL. */
static const struct lsm_table_info *newest_table_holding(const struct lsm_tree *tree,
                                                         const void *key)
{
        const struct lsm_layout *layout = &tree->layout;
        const struct lsm_level *zero = &tree->levels[0];
        for (uint32_t k = zero->count; k > 0; k--) {
                const struct lsm_table_info *t = &zero->tables[k - 1];
                if (lsm_key_compare(layout, key, t->key_min) >= 0 &&
                    lsm_key_compare(layout, key, t->key_max) <= 0)
                        return t;
        }
        for (uint32_t i = 1; i < LSM_LEVELS; i++) {
                const struct lsm_table_info *t = lsm_tree_level_find(tree, i, key);
                if (t != NULL)
                        return t;
        }
        return NULL;
}

/*
 * Reads together what reading each tables[i] at keys[i] starts with: the tables' index blocks
 * at once, then from each the data block a seek of its key reads first (`seek`, `reversed`
 * its direction; a NULL key: the table's end) or the one a lookup of it reads, at once. A
 * block that does not read or check is left to the read that needs it, which reports it.
 */
static void tables_read_ahead(struct lsm_tree *tree, const struct lsm_table_info *const *tables,
                              const void *const *keys, uint32_t n, bool seek, bool reversed)
{
        struct lsm_grid *grid = tree->grid;
        tally_assert(n <= LSM_GRID_PREFETCH_MAX);
        struct lsm_block_ref refs[LSM_GRID_PREFETCH_MAX];
        for (uint32_t i = 0; i < n; i++)
                refs[i] = tables[i]->index;
        lsm_grid_prefetch(grid, refs, n, LSM_BLOCK_TABLE_INDEX); /* skips what is cached */
        uint32_t d = 0;
        for (uint32_t i = 0; i < n; i++) {
                const uint8_t *index = lsm_grid_read(grid, tables[i]->index, LSM_BLOCK_TABLE_INDEX);
                if (index == NULL)
                        continue;
                if (seek)
                        refs[d] = lsm_table_seek_block(&tree->layout, index, tables[i], keys[i],
                                                       reversed);
                else if (!lsm_table_index_entry_find(&tree->layout, index, keys[i], &refs[d]))
                        continue;
                d += refs[d].address != 0;
        }
        if (d > 0)
                lsm_grid_prefetch(grid, refs, d, LSM_BLOCK_TABLE_DATA);
}

void lsm_tree_get_prefetch(struct lsm_tree *tree, const void *keys, size_t stride,
                           uint32_t count)
{
        if (tree->grid->device.read_many_start == NULL || count < 2)
                return;
        enum { MAX = LSM_GRID_PREFETCH_MAX / 2 };
        const struct lsm_table_info *tables[MAX];
        const void *table_keys[MAX];
        uint32_t n = 0;
        for (uint32_t i = 0; i < count && n < MAX; i++) {
                const uint8_t *key = (const uint8_t *)keys + (size_t)i * stride;
                if (memtable_find(tree, key) >= 0)
                        continue;
                const struct lsm_table_info *t = newest_table_holding(tree, key);
                if (t == NULL)
                        continue;
                tables[n] = t;
                table_keys[n++] = key;
        }
        if (n > 0)
                tables_read_ahead(tree, tables, table_keys, n, false, false);
}

/*
 * One list of tables in key order that do not overlap (a level-0 run, or a deeper level) against
 * the keys in key order (`order`: indexes of keys): each key that a table's range holds goes to
 * that table's filter. First a walk of both lists finds the buckets (one cache lookup per table,
 * no binary search per key), then the buckets are tested with the ones a few keys ahead loading
 * meanwhile: thousands of independent probes, so their cache misses overlap. The walk looks
 * tables up ahead of their keys the same way (a batch of random keys touches nearly every
 * table of a deep level: 2,800 of the id map's at 100 M): the cache's bookkeeping of the table
 * MAY_CONTAIN_TABLES_AHEAD x 2 ahead starts loading, and the header of the block of the one
 * MAY_CONTAIN_TABLES_AHEAD ahead, so each table's misses are paid while earlier ones' keys are.
 * Only when the keys are at least as many as the tables: a few keys among many tables would
 * look up tables no key falls in.
 */
#define MAY_CONTAIN_AHEAD 16u
#define MAY_CONTAIN_TABLES_AHEAD 16u
struct may_contain_candidates {
        struct lsm_block_ref *refs; /* NULL: none wanted */
        uint32_t count;
        uint32_t max;
};

static void tables_may_contain(struct lsm_tree *tree, const struct lsm_table_info *tables,
                               uint32_t table_count, const uint8_t *keys, size_t stride,
                               const uint64_t *order, uint32_t count, const uint64_t *hash,
                               const void **buckets, uint32_t *bucket_key,
                               uint32_t *bucket_table, bool *maybe,
                               struct may_contain_candidates *found)
{
        const struct lsm_layout *layout = &tree->layout;
        uint32_t t = 0, block_table = UINT32_MAX, offset = 0, m = 0;
        const uint8_t *block = NULL;
        /* Tables looked up ahead: [t, looked) in `ahead` (by table, modulo its size), and the
         * bookkeeping of [looked, loading) loading. */
        const uint8_t *ahead[2 * MAY_CONTAIN_TABLES_AHEAD];
        uint32_t looked = 0, loading = 0;
        uint32_t lead = count >= table_count ? MAY_CONTAIN_TABLES_AHEAD : 0;
        bool pages_worth = filter_pages_worth(tree);
        for (uint32_t j = 0; j < count; j++) {
                uint32_t i = (uint32_t)order[j];
                if (maybe[i])
                        continue; /* an earlier table let it through: nothing more to learn */
                const uint8_t *key = keys + (size_t)i * stride;
                while (t < table_count && lsm_key_compare(layout, key, tables[t].key_max) > 0)
                        t++;
                if (t == table_count)
                        break;
                if (lsm_key_compare(layout, key, tables[t].key_min) < 0)
                        continue;
                if (t != block_table) {
                        block_table = t;
                        if (t >= looked) /* a jump past what was looked up: start over here */
                                looked = loading = t;
                        uint32_t end = MIN(t + 2 * lead, table_count);
                        for (; loading < end; loading++)
                                lsm_grid_cached_prefetch(tree->grid, tables[loading].index);
                        end = MIN(t + lead + 1, table_count);
                        for (; looked < end; looked++) {
                                const uint8_t *b = lsm_grid_cached(tree->grid,
                                                                   tables[looked].index);
                                if (b != NULL)
                                        __builtin_prefetch(b);
                                ahead[looked % (2 * MAY_CONTAIN_TABLES_AHEAD)] = b;
                        }
                        block = ahead[t % (2 * MAY_CONTAIN_TABLES_AHEAD)];
                        offset = block != NULL ? lsm_table_filter_start(
                                                         block, tree->filter_offset_legacy)
                                               : 0;
                }
                if (offset == 0) {
                        if (block == NULL && tables[t].index.reserved != 0 && pages_worth) {
                                buckets[m] = NULL; /* not cached: its filter's pages, below */
                                bucket_table[m] = t;
                                bucket_key[m++] = i;
                                continue;
                        }
                        maybe[i] = true; /* not cached, or no filter: only a read can say */
                        continue;
                }
                buckets[m] = lsm_table_filter_bucket_in(block, offset, hash[i]);
                bucket_table[m] = t;
                bucket_key[m++] = i;
        }
        for (uint32_t c = 0; c < m && c < MAY_CONTAIN_AHEAD; c++)
                if (buckets[c] != NULL)
                        __builtin_prefetch(buckets[c]);
        struct filter_pages pages = {.table = UINT32_MAX};
        for (uint32_t c = 0; c < m; c++) {
                if (c + MAY_CONTAIN_AHEAD < m && buckets[c + MAY_CONTAIN_AHEAD] != NULL)
                        __builtin_prefetch(buckets[c + MAY_CONTAIN_AHEAD]);
                uint32_t i = bucket_key[c];
                if (buckets[c] == NULL) {
                        const struct lsm_table_info *table = &tables[bucket_table[c]];
                        if (!filter_pages_may_contain(tree, &pages, bucket_table[c], table,
                                                      hash[i]))
                                continue;
                        maybe[i] = true;
                        struct lsm_block_ref data;
                        if (found->refs != NULL && found->count < found->max &&
                            pages.page0_ok &&
                            lsm_table_index_entry_find(layout, tree->filter_pages,
                                                       keys + (size_t)i * stride, &data))
                                found->refs[found->count++] = data;
                        continue;
                }
                if (!lsm_table_filter_bucket_may_contain(buckets[c], hash[i]))
                        continue;
                maybe[i] = true;
                if (found->refs == NULL || found->count == found->max)
                        continue;
                /* Rare (new ids pass about one filter in 400): the index block again. */
                const uint8_t *index = lsm_grid_cached(tree->grid, tables[bucket_table[c]].index);
                struct lsm_block_ref data;
                if (index != NULL &&
                    lsm_table_index_find(layout, index, keys + (size_t)i * stride, &data))
                        found->refs[found->count++] = data;
        }
}

/* Then the memtable, for the keys no table may hold: their hash slots loaded a few ahead. */
static void memtable_may_contain(struct lsm_tree *tree, const uint8_t *keys, size_t stride,
                                 uint32_t count, const uint64_t *hash, uint32_t *pending,
                                 bool *maybe)
{
        uint32_t m = 0;
        for (uint32_t i = 0; i < count; i++)
                if (!maybe[i])
                        pending[m++] = i;
        if (tree->memtable_count == 0)
                return;
        for (uint32_t c = 0; c < m; c++) {
                uint32_t i = pending[c];
                const uint8_t *key = keys + (size_t)i * stride;
                if (tree->hash == NULL) { /* insert_only: the sorted view */
                        maybe[i] = memtable_find(tree, key) >= 0;
                        continue;
                }
                if (c + MAY_CONTAIN_AHEAD < m)
                        __builtin_prefetch(
                                &tree->hash[(uint32_t)hash[pending[c + MAY_CONTAIN_AHEAD]] &
                                            tree->hash_mask]);
                maybe[i] = tree->hash[memtable_slot_hashed(tree, key, hash[i])] != 0;
        }
}

void lsm_tree_may_contain(struct lsm_tree *tree, const void *keys_in, size_t stride,
                          uint32_t count, bool *maybe, struct lsm_block_ref *candidates,
                          uint32_t *candidate_count)
{
        const struct lsm_layout *layout = &tree->layout;
        const uint8_t *keys = keys_in;
        struct may_contain_candidates found = {.refs = candidates, .max = count};
        if (candidate_count != NULL)
                *candidate_count = 0;
        if (!layout->filter || layout->key_kind == LSM_KEY_CUSTOM ||
            tree->level0_runs > LSM_LEVEL0_RUNS_TRACKED) {
                memset(maybe, 1, count * sizeof(bool));
                return;
        }
        memset(maybe, 0, count * sizeof(bool));
        /* An insert-only memtable is looked up through its sorted view: brought up to date now,
         * since making it uses the scratch below. */
        if (tree->hash == NULL)
                memtable_sort(tree);
        /* Scratch: the memtable sort's, free between flushes: 4 words per key. */
        uint32_t chunk = tree->memtable_max / 2;
        const struct lsm_level *zero = &tree->levels[0];
        for (uint32_t done = 0; done < count; done += chunk) {
                uint32_t n = MIN(chunk, count - done);
                const uint8_t *base = keys + (size_t)done * stride;
                bool *out = maybe + done;
                uint64_t *hash = tree->sort_scratch, *a = hash + n, *b = a + n;
                uint32_t *bucket_key = (uint32_t *)(b + n);
                uint32_t *bucket_table = bucket_key + n;
                for (uint32_t i = 0; i < n; i++)
                        hash[i] = lsm_key_hash(layout, base + (size_t)i * stride);
                const uint64_t *order = keys_sorted(layout, base, stride, n, a, b);
                const void **buckets = (const void **)(order == a ? b : a);
                for (uint32_t r = 0; r < tree->level0_runs; r++) {
                        uint32_t first = tree->level0_run_start[r];
                        uint32_t end = r + 1 < tree->level0_runs ? tree->level0_run_start[r + 1]
                                                                 : zero->count;
                        tables_may_contain(tree, &zero->tables[first], end - first,
                                           base, stride, order, n, hash, buckets,
                                           bucket_key, bucket_table, out, &found);
                }
                for (uint32_t l = 1; l < LSM_LEVELS; l++)
                        tables_may_contain(tree, tree->levels[l].tables, tree->levels[l].count,
                                           base, stride, order, n, hash, buckets,
                                           bucket_key, bucket_table, out, &found);
                memtable_may_contain(tree, base, stride, n, hash, bucket_key, out);
        }
        if (candidate_count != NULL)
                *candidate_count = found.count;
}

void lsm_tree_table_append(struct lsm_tree *tree, uint32_t level,
                           const struct lsm_table_info *table)
{
        tally_assert(level < LSM_LEVELS);
        struct lsm_level *l = &tree->levels[level];
        if (level > 0 && l->count > 0)
                tally_assert(lsm_key_compare(&tree->layout, l->tables[l->count - 1].key_max,
                                                  table->key_min) < 0);
        level_insert(l, l->count, table);
        if (level == 0)
                level0_runs_update(tree);
        tree->version++;
}

uint64_t lsm_tree_value_count_on_disk(const struct lsm_tree *tree)
{
        uint64_t count = 0;
        for (uint32_t i = 0; i < LSM_LEVELS; i++)
                for (uint32_t t = 0; t < tree->levels[i].count; t++)
                        count += tree->levels[i].tables[t].value_count;
        return count;
}

/* ---- merged sources ----------------------------------------------------------------------- */

struct source {
        uint32_t rank;
        bool memtable;
        /* memtable: positions [index, end) of tree->sorted (reversed: index down to end) */
        int64_t index;
        int64_t end;
        /* tables: a run of non-overlapping tables, visited in order */
        const struct lsm_table_info *tables;
        int32_t table_count;
        int32_t table_index;
        struct lsm_table_cursor cursor;
        bool cursor_ready;
        const uint8_t *value; /* current, NULL when done */
        /* The current value's key as lsm_key_words gives it (layouts that have that form):
         * merges compare these, held here, rather than keys in the blocks. */
        uint64_t words[3];
};

struct lsm_merge {
        struct lsm_tree *tree;
        struct source *sources;
        /* merge_run's heap, one entry per source, reserved with the sources: a run allocates
         * nothing (a compaction's run writes blocks, where an embedder may unwind). */
        struct source **heap;
        struct source *heap_small[16];
        uint32_t count;
        const void *key_min; /* bounds, NULL: none */
        const void *key_max;
        bool reversed;
        bool failed;
        bool words; /* the layout's keys have lsm_key_words: sources keep them */
        /* Older versions of a key stepped past and not emitted: with what was emitted, the
         * inputs a compaction has consumed (its worker's progress, job_grant). */
        uint64_t dropped;
};

static bool past_bound(const struct lsm_merge *m, const uint8_t *value)
{
        const struct lsm_layout *layout = &m->tree->layout;
        const uint8_t *key = lsm_key_of(layout, value);
        if (!m->reversed)
                return m->key_max != NULL && lsm_key_compare(layout, key, m->key_max) > 0;
        return m->key_min != NULL && lsm_key_compare(layout, key, m->key_min) < 0;
}

static void source_settle(struct lsm_merge *m, struct source *s)
{
        if (s->memtable) {
                bool in = m->reversed ? s->index >= s->end : s->index < s->end;
                s->value = in ? memtable_value(m->tree, m->tree->sorted[s->index]) : NULL;
        } else {
                for (;;) {
                        s->value = s->cursor_ready ? lsm_table_cursor_value(&s->cursor) : NULL;
                        if (s->value != NULL)
                                break;
                        if (s->cursor_ready && s->cursor.failed) {
                                m->failed = true;
                                break;
                        }
                        s->table_index += m->reversed ? -1 : 1;
                        if (s->table_index < 0 || s->table_index >= s->table_count)
                                break;
                        lsm_table_cursor_seek(&s->cursor, &s->tables[s->table_index], NULL,
                                              m->reversed);
                        s->cursor_ready = true;
                }
        }
        if (s->value != NULL && past_bound(m, s->value))
                s->value = NULL;
        if (s->value != NULL && m->words)
                lsm_key_words(&m->tree->layout, lsm_key_of(&m->tree->layout, s->value), s->words);
}

/* lsm_key_compare of two keys in their lsm_key_words form. */
static inline int words_compare(const uint64_t *a, const uint64_t *b)
{
        if (a[0] != b[0])
                return a[0] < b[0] ? -1 : 1;
        if (a[1] != b[1])
                return a[1] < b[1] ? -1 : 1;
        return (a[2] > b[2]) - (a[2] < b[2]);
}

static void source_advance(struct lsm_merge *m, struct source *s)
{
        if (s->memtable)
                s->index += m->reversed ? -1 : 1;
        else
                lsm_table_cursor_next(&s->cursor);
        source_settle(m, s);
}

/* Positions a memtable source at the start of the merge's range. */
static void source_memtable(struct lsm_merge *m, struct source *s)
{
        struct lsm_tree *tree = m->tree;
        const struct lsm_layout *layout = &tree->layout;
        memtable_sort(tree);
        s->memtable = true;
        const void *start = m->reversed ? m->key_max : m->key_min;
        int64_t lo = 0, hi = tree->sorted_count;
        if (start != NULL) { /* first position with key >= start (reversed: > start) */
                while (lo < hi) {
                        int64_t mid = lo + (hi - lo) / 2;
                        int c = lsm_key_compare(layout, 
                                lsm_key_of(layout, memtable_value(tree, tree->sorted[mid])), start);
                        if (c < 0 || (m->reversed && c == 0))
                                lo = mid + 1;
                        else
                                hi = mid;
                }
        }
        if (!m->reversed) {
                s->index = start != NULL ? lo : 0;
                s->end = tree->sorted_count;
        } else {
                s->index = (start != NULL ? lo : (int64_t)tree->sorted_count) - 1;
                s->end = 0;
        }
        source_settle(m, s);
}

/* Where a merge's range starts: its lowest key, reversed its highest (NULL: unbounded). */
static const void *merge_start(const struct lsm_merge *m)
{
        return m->reversed ? m->key_max : m->key_min;
}

/*
 * The table of a run of non-overlapping tables where the merge's range starts: forward, the
 * first whose key_max >= start; reversed, the last whose key_min <= start. -1 or count: none.
 */
static int32_t run_table_at(const struct lsm_merge *m, const struct lsm_table_info *tables,
                            uint32_t count)
{
        const struct lsm_layout *layout = &m->tree->layout;
        const void *start = merge_start(m);
        int32_t lo = 0, hi = (int32_t)count;
        while (start != NULL && lo < hi) {
                int32_t mid = lo + (hi - lo) / 2;
                bool before = !m->reversed ? lsm_key_compare(layout, tables[mid].key_max, start) < 0
                                           : lsm_key_compare(layout, tables[mid].key_min, start) <= 0;
                if (before)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (!m->reversed)
                return start != NULL ? lo : 0;
        return start != NULL ? lo - 1 : (int32_t)count - 1;
}

/* Positions a run of non-overlapping tables at the start of the merge's range. */
static void source_tables(struct lsm_merge *m, struct source *s, const struct lsm_table_info *tables,
                          uint32_t count)
{
        s->tables = tables;
        s->table_count = (int32_t)count;
        s->cursor_ready = false; /* (re)positioned: the old cursor position means nothing */
        const void *start = merge_start(m);
        int32_t t = run_table_at(m, tables, count);
        s->table_index = t;
        if (t >= 0 && t < (int32_t)count) {
                lsm_table_cursor_seek(&s->cursor, &tables[t], start, m->reversed);
                s->cursor_ready = true;
        }
        source_settle(m, s);
}

/* Order of two sources: the next value first (smallest key, reversed largest), then the
 * newest (highest rank) among equal keys. */
static bool source_before(const struct lsm_merge *m, const struct source *a,
                          const struct source *b)
{
        const struct lsm_layout *layout = &m->tree->layout;
        int c = m->words ? words_compare(a->words, b->words)
                         : lsm_key_compare(layout, lsm_key_of(layout, a->value),
                                           lsm_key_of(layout, b->value));
        if (m->reversed)
                c = -c;
        return c < 0 || (c == 0 && a->rank > b->rank);
}

/* The source holding the next value (source_before), or NULL when every one is done. */
static struct source *merge_pick(struct lsm_merge *m)
{
        struct source *best = NULL;
        for (uint32_t i = 0; i < m->count; i++) {
                struct source *s = &m->sources[i];
                if (s->value != NULL && (best == NULL || source_before(m, s, best)))
                        best = s;
        }
        return best;
}

static void heap_down(const struct lsm_merge *m, struct source **heap, uint32_t count, uint32_t i)
{
        for (;;) {
                uint32_t best = i, l = 2 * i + 1, r = 2 * i + 2;
                if (l < count && source_before(m, heap[l], heap[best]))
                        best = l;
                if (r < count && source_before(m, heap[r], heap[best]))
                        best = r;
                if (best == i)
                        return;
                struct source *t = heap[i];
                heap[i] = heap[best];
                heap[best] = t;
                i = best;
        }
}

/* Fills the merge's heap with the sources that have a value; their count. */
static uint32_t heap_build(struct lsm_merge *m)
{
        uint32_t count = 0;
        for (uint32_t i = 0; i < m->count; i++)
                if (m->sources[i].value != NULL)
                        m->heap[count++] = &m->sources[i];
        for (uint32_t i = count / 2; i > 0; i--)
                heap_down(m, m->heap, count, i - 1);
        return count;
}

/*
 * Calls `emit` with each value in merged order, newest version only. False on a read fault, or
 * when `emit` returns false (then *stopped is set). The sources are kept in a binary heap for
 * the call (a compaction of ten level-0 tables compares ~7 keys per value, not ~20).
 */
static bool merge_run(struct lsm_merge *m, bool (*emit)(void *context, const void *value),
                      void *context, uint64_t *emitted, bool *stopped, uint64_t limit)
{
        const struct lsm_layout *layout = &m->tree->layout;
        uint8_t key[LSM_KEY_SIZE_MAX];
        struct source **heap = m->heap;
        uint32_t count = heap_build(m);
        bool ok = true;
        for (;;) {
                if (m->failed) {
                        ok = false;
                        break;
                }
                if (*emitted == limit) {
                        *stopped = true; /* to be continued */
                        break;
                }
                if (count == 0)
                        break;
                struct source *best = heap[0];
                uint64_t words[3];
                if (m->words)
                        memcpy(words, best->words, sizeof(words));
                else
                        memcpy(key, lsm_key_of(layout, best->value), layout->key_size);
                bool go_on = emit(context, best->value);
                (*emitted)++;
                /* Every other version of this key is older (lower rank): skip them all. */
                uint64_t advanced = 0;
                for (;;) {
                        if (count == 0 || m->failed)
                                break;
                        bool same = m->words ? words_compare(heap[0]->words, words) == 0
                                             : lsm_key_compare(layout,
                                                               lsm_key_of(layout, heap[0]->value),
                                                               key) == 0;
                        if (!same)
                                break;
                        source_advance(m, heap[0]);
                        advanced++;
                        if (heap[0]->value == NULL)
                                heap[0] = heap[--count];
                        heap_down(m, heap, count, 0);
                }
                if (advanced > 1)
                        m->dropped += advanced - 1; /* the first was the one emitted */
                if (!go_on) {
                        *stopped = true;
                        break;
                }
        }
        return ok;
}

/*
 * merge_run for a compaction into the job's table builder (forward, keys in words form, no
 * bounds, tables only): it emits exactly what merge_run would, in the same order, so the tables
 * written are the same. The source at the top of the heap hands over, as one run, its values
 * that come before the least current value of the others (one of the top's two children),
 * found by a scan of its block; the table builder copies a run once per block it fills
 * (lsm_table_builder_add_run). A job of one table into the level below merges two sources, and
 * random keys interleave about one value of the upper table with eight of the level below; in a
 * level-0 job of an index tree (an account, then a timestamp) each level-0 table holds runs of
 * an account's newer entries and level 1 runs of its older ones. A value in a run costs a key
 * comparison and a share of a copy instead of a heap step, a cursor step and a call of its own.
 */
static bool merge_can_run(const struct lsm_merge *m)
{
        if (!m->words || m->reversed || m->key_min != NULL || m->key_max != NULL)
                return false;
        for (uint32_t i = 0; i < m->count; i++) {
                if (m->sources[i].memtable)
                        return false;
        }
        return true;
}

static bool merge_run_bulk(struct lsm_merge *m, struct lsm_table_builder *builder,
                           uint64_t *emitted, bool *stopped, uint64_t limit, uint64_t *in_runs)
{
        const struct lsm_layout *layout = &m->tree->layout;
        const uint32_t size = layout->value_size;
        struct source **heap = m->heap;
        uint32_t count = heap_build(m);
        for (;;) {
                if (m->failed)
                        return false;
                if (*emitted == limit) {
                        *stopped = true; /* to be continued */
                        return true;
                }
                if (count == 0)
                        return true;
                struct source *best = heap[0];
                const struct source *next = count > 1 ? heap[1] : NULL;
                if (count > 2 && source_before(m, heap[2], heap[1]))
                        next = heap[2];
                if (next != NULL && words_compare(best->words, next->words) == 0) {
                        /* Versions of one key in several sources: the newest (the top, by
                         * rank) only, and every source steps past the key, as merge_run does. */
                        uint64_t words[3];
                        memcpy(words, best->words, sizeof(words));
                        bool go_on = lsm_table_builder_add(builder, best->value);
                        (*emitted)++;
                        uint64_t advanced = 0;
                        while (count > 0 && !m->failed &&
                               words_compare(heap[0]->words, words) == 0) {
                                source_advance(m, heap[0]);
                                advanced++;
                                if (heap[0]->value == NULL)
                                        heap[0] = heap[--count];
                                heap_down(m, heap, count, 0);
                        }
                        if (advanced > 1)
                                m->dropped += advanced - 1;
                        if (!go_on) {
                                *stopped = true;
                                return true;
                        }
                        continue;
                }
                const uint8_t *values;
                uint32_t run = lsm_table_cursor_run(&best->cursor, &values);
                tally_assert(run > 0 && values == best->value);
                run = (uint32_t)MIN((uint64_t)run, limit - *emitted);
                uint32_t n = 1; /* the current value comes before next's */
                if (next != NULL) {
                        for (; n < run; n++) {
                                uint64_t words[3];
                                lsm_key_words(layout, lsm_key_of(layout, values + (size_t)n * size),
                                              words);
                                if (words_compare(words, next->words) >= 0)
                                        break;
                        }
                } else {
                        n = run;
                }
                bool go_on = lsm_table_builder_add_run(builder, values, n);
                *emitted += n;
                if (n > 1)
                        *in_runs += n;
                lsm_table_cursor_skip(&best->cursor, n);
                source_settle(m, best);
                if (best->value == NULL)
                        heap[0] = heap[--count];
                heap_down(m, heap, count, 0);
                if (!go_on) {
                        *stopped = true;
                        return true;
                }
        }
}

static void merge_heap_free(struct lsm_merge *m)
{
        if (m->heap != m->heap_small)
                free(m->heap);
        m->heap = NULL;
}

/* `uncached`: a compaction's merge (lsm_table_cursor.uncached). */
static bool merge_alloc(struct lsm_merge *m, struct lsm_tree *tree, struct lsm_grid *grid,
                        uint32_t count, bool uncached)
{
        memset(m, 0, sizeof(*m));
        m->tree = tree;
        uint64_t probe[3];
        uint8_t zero[LSM_KEY_SIZE_MAX] = {0};
        m->words = lsm_key_words(&tree->layout, zero, probe);
        m->sources = calloc(count, sizeof(*m->sources));
        m->heap = count <= 16 ? m->heap_small : calloc(count, sizeof(*m->heap));
        if (m->sources == NULL || m->heap == NULL) {
                merge_heap_free(m);
                free(m->sources);
                return false;
        }
        for (uint32_t i = 0; i < count; i++) {
                if (lsm_table_cursor_init(&m->sources[i].cursor, &tree->layout, grid) != 0) {
                        for (uint32_t k = 0; k <= i; k++)
                                lsm_table_cursor_deinit(&m->sources[k].cursor);
                        free(m->sources);
                        merge_heap_free(m);
                        return false;
                }
                m->sources[i].cursor.uncached = uncached;
        }
        m->count = count;
        return true;
}

static void merge_free(struct lsm_merge *m)
{
        for (uint32_t i = 0; i < m->count; i++)
                lsm_table_cursor_deinit(&m->sources[i].cursor);
        free(m->sources);
        merge_heap_free(m);
        m->sources = NULL;
}

int64_t lsm_tree_scan(struct lsm_tree *tree, const void *key_min, const void *key_max,
                      bool reversed, bool (*visit)(void *context, const void *value),
                      void *context)
{
        const struct lsm_level *zero = &tree->levels[0];
        uint32_t count = 1 + zero->count + (LSM_LEVELS - 1);
        struct lsm_merge m;
        if (!merge_alloc(&m, tree, tree->grid, count, false)) {
                snprintf(tree->grid->error, sizeof(tree->grid->error), "out of memory for a scan");
                return -1;
        }
        m.key_min = key_min;
        m.key_max = key_max;
        m.reversed = reversed;
        uint32_t n = 0;
        m.sources[n].rank = count;
        source_memtable(&m, &m.sources[n++]);
        for (uint32_t k = zero->count; k > 0; k--) { /* newest first: highest rank */
                m.sources[n].rank = count - n;
                source_tables(&m, &m.sources[n++], &zero->tables[k - 1], 1);
        }
        for (uint32_t i = 1; i < LSM_LEVELS; i++) {
                m.sources[n].rank = count - n;
                source_tables(&m, &m.sources[n++], tree->levels[i].tables, tree->levels[i].count);
        }
        uint64_t emitted = 0;
        bool stopped = false;
        bool ok = merge_run(&m, visit, context, &emitted, &stopped, UINT64_MAX);
        merge_free(&m);
        return ok ? (int64_t)emitted : -1;
}

/* ---- pull cursors ------------------------------------------------------------------------ */

/* Positions every source at the merge's start (key_min, or key_max when reversed). */
static void merge_position(struct lsm_merge *m)
{
        for (uint32_t k = 0; k < m->count; k++) {
                struct source *s = &m->sources[k];
                if (s->memtable)
                        source_memtable(m, s);
                else
                        source_tables(m, s, s->tables, (uint32_t)s->table_count);
        }
}

/*
 * Reads together the blocks that the sources `moving` selects (all of them if NULL; only the
 * first LSM_GRID_PREFETCH_MAX sources are looked at, the others seek as before) need to
 * position themselves at the start of the merge's range: first the index block of the table
 * each run starts in, then the data block each seek reads first. A query cursor over a tree
 * with dozens of level-0 tables waited for the disk twice per table, one read at a time; now
 * it waits about twice. A block that does not read or check is left to the seek, which reads
 * it again and reports it (lsm_grid_prefetch).
 */
static void cursor_prefetch(struct lsm_merge *m, const bool *moving)
{
        if (m->tree->grid->device.read_many_start == NULL)
                return;
        const struct lsm_table_info *tables[LSM_GRID_PREFETCH_MAX];
        const void *starts[LSM_GRID_PREFETCH_MAX];
        const void *start = merge_start(m);
        uint32_t n = 0;
        for (uint32_t k = 0; k < MIN(m->count, LSM_GRID_PREFETCH_MAX); k++) {
                const struct source *s = &m->sources[k];
                if (s->memtable || (moving != NULL && !moving[k]))
                        continue;
                int32_t t = run_table_at(m, s->tables, (uint32_t)s->table_count);
                if (t < 0 || t >= s->table_count)
                        continue;
                tables[n] = &s->tables[t];
                starts[n++] = start;
        }
        if (n >= 2) /* one seek gains nothing from reading ahead */
                tables_read_ahead(m->tree, tables, starts, n, true, m->reversed);
}

int lsm_tree_cursor_open(struct lsm_tree_cursor *c, struct lsm_tree *tree, const void *key_min,
                         const void *key_max, bool reversed)
{
        memset(c, 0, sizeof(*c));
        c->tree = tree;
        const struct lsm_level *zero = &tree->levels[0];
        uint32_t count = 1 + zero->count + (LSM_LEVELS - 1);
        c->merge = malloc(sizeof(*c->merge));
        if (c->merge == NULL || !merge_alloc(c->merge, tree, tree->grid, count, false)) {
                free(c->merge);
                c->merge = NULL;
                return -ENOMEM;
        }
        struct lsm_merge *m = c->merge;
        uint32_t key_size = tree->layout.key_size;
        if (key_min != NULL) {
                memcpy(c->bound_min, key_min, key_size);
                m->key_min = c->bound_min;
        }
        if (key_max != NULL) {
                memcpy(c->bound_max, key_max, key_size);
                m->key_max = c->bound_max;
        }
        m->reversed = reversed;
        uint32_t n = 0;
        m->sources[n].rank = count;
        m->sources[n++].memtable = true;
        for (uint32_t k = zero->count; k > 0; k--) {
                m->sources[n].rank = count - n;
                m->sources[n].tables = &zero->tables[k - 1];
                m->sources[n++].table_count = 1;
        }
        for (uint32_t i = 1; i < LSM_LEVELS; i++) {
                m->sources[n].rank = count - n;
                m->sources[n].tables = tree->levels[i].tables;
                m->sources[n++].table_count = (int32_t)tree->levels[i].count;
        }
        cursor_prefetch(m, NULL);
        merge_position(m);
        return 0;
}

void lsm_tree_cursor_close(struct lsm_tree_cursor *c)
{
        if (c->merge != NULL) {
                merge_free(c->merge);
                free(c->merge);
        }
        c->merge = NULL;
}

const void *lsm_tree_cursor_value(struct lsm_tree_cursor *c)
{
        if (c->merge == NULL || c->merge->failed)
                return NULL;
        struct source *best = merge_pick(c->merge);
        return best != NULL ? best->value : NULL;
}

bool lsm_tree_cursor_failed(const struct lsm_tree_cursor *c)
{
        return c->merge == NULL || c->merge->failed;
}

void lsm_tree_cursor_next(struct lsm_tree_cursor *c)
{
        struct lsm_merge *m = c->merge;
        const struct lsm_layout *layout = &c->tree->layout;
        struct source *best = merge_pick(m);
        if (best == NULL)
                return;
        uint8_t key[LSM_KEY_SIZE_MAX];
        memcpy(key, lsm_key_of(layout, best->value), layout->key_size);
        for (uint32_t i = 0; i < m->count; i++) {
                struct source *s = &m->sources[i];
                while (s->value != NULL && lsm_key_compare(layout, lsm_key_of(layout, s->value), key) == 0)
                        source_advance(m, s);
        }
}

/* True if the source's current value comes before `key` in the merge's direction. */
static bool source_behind(const struct lsm_merge *m, const struct source *s, const void *key)
{
        if (s->value == NULL)
                return false;
        const struct lsm_layout *layout = &m->tree->layout;
        int cmp = lsm_key_compare(layout, lsm_key_of(layout, s->value), key);
        return m->reversed ? cmp > 0 : cmp < 0;
}

void lsm_tree_cursor_seek(struct lsm_tree_cursor *c, const void *key)
{
        struct lsm_merge *m = c->merge;
        const struct lsm_layout *layout = &c->tree->layout;
        /* Forward: from max(key, key_min); reversed: from min(key, key_max). Never back. */
        if (!m->reversed) {
                if (m->key_min != NULL && lsm_key_compare(layout, key, m->key_min) <= 0)
                        return;
                memcpy(c->bound_min, key, layout->key_size);
                m->key_min = c->bound_min;
        } else {
                if (m->key_max != NULL && lsm_key_compare(layout, key, m->key_max) >= 0)
                        return;
                memcpy(c->bound_max, key, layout->key_size);
                m->key_max = c->bound_max;
        }
        /* Only the sources behind the key move: the others are at or past it already (or
         * done: nothing further in this direction). */
        bool moving[LSM_GRID_PREFETCH_MAX];
        uint32_t count = MIN(m->count, LSM_GRID_PREFETCH_MAX), behind = 0;
        for (uint32_t k = 0; k < count; k++) {
                moving[k] = source_behind(m, &m->sources[k], key);
                behind += moving[k] && !m->sources[k].memtable;
        }
        if (behind > 1)
                cursor_prefetch(m, moving);
        for (uint32_t k = 0; k < m->count; k++) {
                struct source *s = &m->sources[k];
                if (!(k < count ? moving[k] : source_behind(m, s, key)))
                        continue;
                if (s->memtable)
                        source_memtable(m, s);
                else
                        source_tables(m, s, s->tables, (uint32_t)s->table_count);
        }
}

/* ---- flush and compaction ---------------------------------------------------------------- */

/* A job's output table (on the worker's thread too: the loop counts them at install). */
static void on_built(void *context, const struct lsm_table_info *table)
{
        struct lsm_tree *tree = context;
        level_insert(&tree->built, tree->built.count, table);
}

static void on_flushed(void *context, const struct lsm_table_info *table)
{
        struct lsm_tree *tree = context;
        /* One flush's tables do not overlap each other: level 0 takes them in key order. */
        level_insert(&tree->levels[0], tree->levels[0].count, table);
        level0_runs_update(tree);
        tree->stats.tables_written++;
}

static bool emit_to_builder(void *context, const void *value)
{
        struct lsm_tree *tree = context;
        return lsm_table_builder_add(&tree->builder, value);
}

/* Releases every block of a table. False if its index block cannot be read. */
static bool table_release(struct lsm_tree *tree, const struct lsm_table_info *table)
{
        const uint8_t *index = lsm_grid_read(tree->grid, table->index, LSM_BLOCK_TABLE_INDEX);
        if (index == NULL)
                return false;
        const struct lsm_index_entry *entries =
                (const struct lsm_index_entry *)(index + LSM_BLOCK_HEADER_SIZE);
        for (uint32_t i = 0; i < table->data_block_count; i++)
                lsm_grid_release(tree->grid, entries[i].data.address);
        lsm_grid_release(tree->grid, table->index.address);
        return true;
}

bool lsm_tree_flush(struct lsm_tree *tree)
{
        if (tree->memtable_count == 0)
                return true;
        memtable_sort(tree);
        struct lsm_table_builder *b = &tree->flush_builder;
        b->on_table = on_flushed;
        b->context = tree;
        b->failed = false;
        for (uint32_t i = 0; i < tree->sorted_count; i++) {
                /* Sorted order gathers values from all over the memtable: load ahead. */
                if (i + 8 < tree->sorted_count)
                        __builtin_prefetch(memtable_value(tree, tree->sorted[i + 8]));
                if (!lsm_table_builder_add(b, memtable_value(tree, tree->sorted[i])))
                        return false;
        }
        if (!lsm_table_builder_finish(b))
                return false;
        lsm_grid_issue_writes(tree->grid);
        if (tree->hash != NULL)
                memset(tree->hash, 0, (size_t)(tree->hash_mask + 1) * sizeof(uint32_t));
        tree->memtable_count = 0;
        tree->sorted_count = 0;
        tree->sorted_dirty = false;
        tree->in_order = true;
        tree->stats.flushes++;
        tree->version++;
        return true;
}

/* The key range [min, max] of `count` tables. */
static void tables_range(const struct lsm_tree *tree, const struct lsm_table_info *tables,
                         uint32_t count, uint8_t *min, uint8_t *max)
{
        tally_assert(count > 0);
        memcpy(min, tables[0].key_min, LSM_KEY_SIZE_MAX);
        memcpy(max, tables[0].key_max, LSM_KEY_SIZE_MAX);
        for (uint32_t k = 1; k < count; k++) {
                if (lsm_key_compare(&tree->layout, tables[k].key_min, min) < 0)
                        memcpy(min, tables[k].key_min, LSM_KEY_SIZE_MAX);
                if (lsm_key_compare(&tree->layout, tables[k].key_max, max) > 0)
                        memcpy(max, tables[k].key_max, LSM_KEY_SIZE_MAX);
        }
}

/* The tables of sorted level `level` overlapping [min, max]: [*first, *first + *count). */
static void level_overlap(const struct lsm_tree *tree, uint32_t level, const uint8_t *min,
                          const uint8_t *max, uint32_t *first, uint32_t *count)
{
        const struct lsm_level *l = &tree->levels[level];
        uint32_t a = level_search(tree, l, min);
        uint32_t b = a;
        while (b < l->count && lsm_key_compare(&tree->layout, l->tables[b].key_min, max) <= 0)
                b++;
        *first = a;
        *count = b - a;
}

static bool same_table(const struct lsm_table_info *a, const struct lsm_table_info *b)
{
        return a->index.address == b->index.address && a->index.checksum == b->index.checksum;
}

static void job_free(struct lsm_tree *tree)
{
        struct lsm_compaction *job = &tree->job;
        if (job->on_worker) {
                /* Dropped while the worker may merge it: it stops at its next chunk. */
                __atomic_store_n(&job->cancel, 1, __ATOMIC_RELAXED);
                lsm_compactor_wait(tree->compactor, tree);
        }
        job_kept_free(job);
        if (job->merge != NULL) {
                merge_free(job->merge);
                free(job->merge);
        }
        free(job->inputs);
        struct lsm_stage stage = job->stage;
        memset(job, 0, sizeof(*job));
        job->stage = stage; /* kept (and reused) across jobs; freed with the tree */
}

/* A fault: drops the job; its inputs are untouched and still in place. */
static void job_drop(struct lsm_tree *tree)
{
        tree->grid->reserve_active = NULL;
        lsm_grid_stage_abandon(tree->grid, &tree->job.stage);
        tree->built.count = 0;
        job_free(tree);
}

/*
 * Starts merging `upper_count` tables of level `from` (level 0: its oldest, the last one the
 * newest; else one table) into level from + 1. The inputs stay where they are, visible to
 * lookups, until the job installs its output.
 */
static bool job_start(struct lsm_tree *tree, uint32_t from, const struct lsm_table_info *upper,
                      uint32_t upper_count)
{
        struct lsm_compaction *job = &tree->job;
        uint32_t target = from + 1;
        uint8_t min[LSM_KEY_SIZE_MAX], max[LSM_KEY_SIZE_MAX];
        tables_range(tree, upper, upper_count, min, max);
        struct lsm_stage stage = job->stage; /* its list is kept from job to job */
        memset(job, 0, sizeof(*job));
        job->stage = stage;
        level_overlap(tree, target, min, max, &job->overlap_first, &job->overlap_count);
        job->from = from;
        job->upper_count = upper_count;
        uint32_t input_count = upper_count + job->overlap_count;
        job->inputs = malloc(input_count * sizeof(*job->inputs));
        if (job->inputs == NULL) {
                snprintf(tree->grid->error, sizeof(tree->grid->error),
                         "out of memory for a compaction");
                return false;
        }
        memcpy(job->inputs, upper, upper_count * sizeof(*job->inputs));
        if (job->overlap_count > 0) /* an empty level has no table array yet */
                memcpy(job->inputs + upper_count, &tree->levels[target].tables[job->overlap_first],
                       job->overlap_count * sizeof(*job->inputs));
        uint64_t data_blocks = 0;
        for (uint32_t k = 0; k < input_count; k++) {
                job->values_total += job->inputs[k].value_count;
                data_blocks += job->inputs[k].data_block_count;
        }
        /*
         * The output's addresses, taken now: it packs the inputs' values (fewer, when versions
         * of a key meet) into full blocks and full tables, so it needs no more data blocks than
         * the inputs and an index block per table of them, plus one.
         */
        uint64_t per_table = tree->builder.data_blocks_max;
        uint64_t blocks = data_blocks + (data_blocks + per_table - 1) / per_table + 1;
        if (!lsm_grid_reserve(tree->grid, &job->stage, &job->reserve, (uint32_t)blocks)) {
                job_free(tree);
                return false;
        }
        tree->builder.on_table = on_built;
        tree->builder.context = tree;
        lsm_table_builder_reset(&tree->builder); /* a dropped job may have left a table half built */
        tree->built.count = 0;
        job->active = true;
        if (tree->compactor != NULL) {
                /* The worker writes the reserved addresses and reads the inputs on the device:
                 * the file must reach the former, and the latter must have landed. */
                uint64_t last = job->reserve.count ? job->reserve.addresses[job->reserve.count - 1]
                                                   : 0;
                const struct lsm_device *device = &tree->grid->device;
                int rc = device->grow != NULL && last > 0 ? device->grow(device->context, last) : 0;
                if (rc != 0)
                        snprintf(tree->grid->error, sizeof(tree->grid->error),
                                 "cannot grow the grid for a compaction: %s", strerror(-rc));
                if (rc != 0 || !lsm_grid_flush_writes(tree->grid)) {
                        job_drop(tree);
                        return false;
                }
                job->on_worker = true;
                lsm_compactor_submit(tree->compactor, tree);
                return true;
        }
        job->merge = malloc(sizeof(*job->merge));
        if (job->merge == NULL || !job_merge_open(tree, tree->grid, job->merge)) {
                free(job->merge);
                job->merge = NULL;
                job_drop(tree);
                snprintf(tree->grid->error, sizeof(tree->grid->error),
                         "out of memory for a compaction");
                return false;
        }
        return true;
}

/* The merge of the job's inputs through `grid`: the loop's, or the worker's. */
static bool job_merge_open(struct lsm_tree *tree, struct lsm_grid *grid, struct lsm_merge *m)
{
        struct lsm_compaction *job = &tree->job;
        uint32_t upper_count = job->upper_count;
        if (!merge_alloc(m, tree, grid, upper_count + 1, true))
                return false;
        for (uint32_t k = 0; k < upper_count; k++) {
                m->sources[k].rank = k + 1; /* later upper tables are newer */
                source_tables(m, &m->sources[k], &job->inputs[k], 1);
        }
        m->sources[upper_count].rank = 0;
        source_tables(m, &m->sources[upper_count], job->inputs + upper_count,
                      job->overlap_count);
        return true;
}

/* The worker grid's on_write_hot: keeps a copy of an index block for the loop's cache. */
static void job_keep(void *context, const uint8_t *block, struct lsm_block_ref ref)
{
        struct lsm_compaction *job = context;
        if (job->kept_count == LSM_JOB_KEPT_MAX)
                return;
        if (job->kept == NULL) {
                job->kept = calloc(LSM_JOB_KEPT_MAX, sizeof(*job->kept));
                job->kept_refs = calloc(LSM_JOB_KEPT_MAX, sizeof(*job->kept_refs));
                if (job->kept == NULL || job->kept_refs == NULL) {
                        free(job->kept);
                        free(job->kept_refs);
                        job->kept = NULL;
                        job->kept_refs = NULL;
                        return;
                }
        }
        uint32_t size = ((const struct lsm_block_header *)block)->size;
        uint8_t *copy = malloc(size);
        if (copy == NULL)
                return; /* only slower: a lookup reads it */
        memcpy(copy, block, size);
        job->kept[job->kept_count] = copy;
        job->kept_refs[job->kept_count++] = ref;
}

static void job_kept_free(struct lsm_compaction *job)
{
        for (uint32_t i = 0; i < job->kept_count; i++)
                free(job->kept[i]);
        free(job->kept);
        free(job->kept_refs);
        job->kept = NULL;
        job->kept_refs = NULL;
        job->kept_count = 0;
}

/* Ends a job on the worker: its blocks landed (or it failed), its merge freed. */
static void worker_finish(struct lsm_tree *tree, struct lsm_grid *grid, bool ok)
{
        struct lsm_compaction *job = &tree->job;
        /* Landed before the loop installs the job (and a checkpoint names them), and before a
         * dropped job's addresses can be handed out again. */
        bool landed = lsm_grid_flush_writes(grid);
        if (ok && !landed)
                snprintf(job->worker_error, sizeof(job->worker_error), "%s", grid->error);
        ok = ok && landed;
        /*
         * The blocks were written past the page cache (O_DIRECT): ask the device to read them
         * back into it, off the loop, since the loop's lookups read their data blocks (the ones
         * a key filter lets through) and the worker's next job merges them. Without it those
         * reads waited for the disk in the loop: 14 % of its context switches at 10 M.
         */
        const struct lsm_device *device = &grid->device;
        if (ok && device->prefetch != NULL && job->reserve.next > 0)
                device->prefetch(device->context, job->reserve.addresses, job->reserve.next);
        if (job->merge != NULL) {
                merge_free(job->merge);
                free(job->merge);
                job->merge = NULL;
        }
        job->worker_ok = ok;
}

bool lsm_tree_job_merge_step(struct lsm_tree *tree, struct lsm_grid *grid)
{
        struct lsm_compaction *job = &tree->job;
        struct lsm_table_builder *b = &tree->builder;
        grid->error[0] = 0;
        if (job->merge == NULL) { /* the job's first chunk */
                job->values_in_runs = 0;
                job->worker_error[0] = 0;
                job->merge = malloc(sizeof(*job->merge));
                if (job->merge == NULL || !job_merge_open(tree, grid, job->merge)) {
                        free(job->merge);
                        job->merge = NULL;
                        snprintf(job->worker_error, sizeof(job->worker_error),
                                 "out of memory for a compaction");
                        worker_finish(tree, grid, false);
                        return true;
                }
        }
        if (__atomic_load_n(&job->cancel, __ATOMIC_RELAXED)) {
                snprintf(job->worker_error, sizeof(job->worker_error), "compaction cancelled");
                worker_finish(tree, grid, false);
                return true;
        }
        uint64_t writes_before = grid->stats.writes, reads_before = grid->stats.reads;
        b->grid = grid;
        grid->reserve_active = &job->reserve;
        grid->on_write_hot = job_keep;
        grid->on_write_hot_context = job;
        uint64_t emitted = 0;
        bool stopped = false;
        struct lsm_merge *m = job->merge;
        uint64_t dropped_before = m->dropped;
        bool ok = !tree->merge_heap_only && merge_can_run(m)
                          ? merge_run_bulk(m, b, &emitted, &stopped, WORKER_CHUNK_VALUES,
                                           &job->values_in_runs)
                          : merge_run(m, emit_to_builder, tree, &emitted, &stopped,
                                      WORKER_CHUNK_VALUES);
        ok = ok && !(stopped && b->failed);
        bool done = !ok || !stopped;
        if (ok && done)
                ok = lsm_table_builder_finish(b);
        grid->reserve_active = NULL;
        grid->on_write_hot = NULL;
        b->grid = tree->grid;
        job->worker_merged += emitted + (m->dropped - dropped_before);
        if (!ok) {
                snprintf(job->worker_error, sizeof(job->worker_error), "%s",
                         grid->error[0] ? grid->error : "a compaction's merge failed");
                job->worker_damaged = grid->fault_damaged;
        }
        if (done)
                worker_finish(tree, grid, ok);
        job->blocks_written += grid->stats.writes - writes_before;
        job->blocks_read += grid->stats.reads - reads_before;
        return done;
}

/* The merge is done: the output replaces the inputs in one step. */
static bool job_install(struct lsm_tree *tree)
{
        struct lsm_compaction *job = &tree->job;
        uint32_t target = job->from + 1;
        uint32_t input_count = job->upper_count + job->overlap_count;
        for (uint32_t k = 0; k < input_count; k++) {
                if (!table_release(tree, &job->inputs[k]))
                        return false;
        }
        struct lsm_level *from = &tree->levels[job->from];
        if (job->from == 0) {
                /* Flushes only append to level 0: the inputs are still its oldest tables. */
                for (uint32_t k = 0; k < job->upper_count; k++)
                        tally_assert(same_table(&from->tables[k], &job->inputs[k]));
                level_remove(from, 0, job->upper_count);
                level0_runs_update(tree);
        } else {
                uint32_t at = level_search(tree, from, job->inputs[0].key_min);
                tally_assert(at < from->count && same_table(&from->tables[at], &job->inputs[0]));
                level_remove(from, at, 1);
        }
        level_remove(&tree->levels[target], job->overlap_first, job->overlap_count);
        struct lsm_level *l = &tree->levels[target];
        for (uint32_t k = 0; k < tree->built.count; k++) {
                const struct lsm_table_info *table = &tree->built.tables[k];
                level_insert(l, level_search(tree, l, table->key_min), table);
        }
        for (uint32_t k = 0; k < job->kept_count; k++)
                lsm_grid_cache_insert(tree->grid, job->kept[k], job->kept_refs[k]);
        tree->grid->stats.writes += job->blocks_written; /* the worker's, counted here */
        tree->grid->stats.reads += job->blocks_read;
        tree->stats.tables_written += tree->built.count;
        tree->stats.values_in_runs += job->values_in_runs;
        tree->built.count = 0;
        tree->stats.compactions++;
        tree->version++;
        lsm_grid_reserve_return(tree->grid, &job->reserve);
        lsm_grid_stage_commit(tree->grid, &job->stage);
        job->on_worker = false; /* done with it */
        job_free(tree);
        return true;
}

/*
 * The next compaction to do, started as a job; or, for a table of level >= 1 that overlaps
 * nothing below, moved at once (and the search goes on). False when every level is within its
 * budget (or on a fault: grid->error set, *fault).
 */
static bool ranges_overlap(const struct lsm_tree *tree, const struct lsm_table_info *a,
                           const struct lsm_table_info *b)
{
        return lsm_key_compare(&tree->layout, a->key_min, b->key_max) <= 0 &&
               lsm_key_compare(&tree->layout, b->key_min, a->key_max) <= 0;
}

/*
 * Moves down to level 1, unchanged, each level-0 table whose key range overlaps no other
 * level-0 table and no level-1 table: it holds the only versions of its keys in both levels,
 * so nothing newer or older is merged with it. Flushes of keys that only grow (objects by
 * timestamp, an index of a field with one value) are never rewritten that way.
 */
static void level0_move_disjoint(struct lsm_tree *tree)
{
        struct lsm_level *zero = &tree->levels[0];
        for (uint32_t k = 0; k < zero->count;) {
                const struct lsm_table_info *t = &zero->tables[k];
                bool alone = true;
                for (uint32_t o = 0; o < zero->count && alone; o++)
                        alone = o == k || !ranges_overlap(tree, t, &zero->tables[o]);
                uint32_t first, overlap;
                if (alone)
                        level_overlap(tree, 1, t->key_min, t->key_max, &first, &overlap);
                if (!alone || overlap > 0) {
                        k++;
                        continue;
                }
                struct lsm_table_info table = *t;
                level_remove(zero, k, 1);
                level_insert(&tree->levels[1], first, &table);
                tree->stats.tables_moved++;
                tree->version++;
        }
        level0_runs_update(tree);
}

/*
 * The level to compact next: the one furthest over its budget (tables, or level 0's fill, over
 * the budget), the shallower on a tie; LSM_LEVELS when every level is within its budget. Level 0
 * goes first, whatever the others, once its fill is halfway from its budget to its stall point.
 *
 * Level 0 first always (as before 2026-12-04) starved level 1 when flushes cover the whole key
 * range (the indexes by account: every flush holds every hot account): each level-0 job merged
 * all of level 1, level 1 never got its turn, and grew with the data, so every flush's merge
 * rewrote more (20 M transfers: 15 level-0 tables with 51 of level 1, 18.9 M values, against a
 * level-1 budget of 8 tables; the loop waited up to 0.7 s for those merges).
 */
static uint32_t level_to_compact(const struct lsm_tree *tree)
{
        uint32_t fill = lsm_tree_level0_fill(tree);
        uint32_t budget0 = lsm_tree_level_budget(tree, 0);
        if (fill >= budget0 + (lsm_tree_level0_stall(tree) - budget0) / 2)
                return 0;
        uint32_t best = LSM_LEVELS;
        uint64_t over = 0, under = 1; /* the best level's count over its budget: over / under */
        if (fill > budget0) {
                best = 0;
                over = fill;
                under = budget0;
        }
        for (uint32_t level = 1; level + 1 < LSM_LEVELS; level++) {
                uint64_t count = tree->levels[level].count;
                uint64_t budget = lsm_tree_level_budget(tree, level);
                if (count > budget && count * under > over * budget) {
                        best = level;
                        over = count;
                        under = budget;
                }
        }
        return best;
}

static bool job_pick(struct lsm_tree *tree, bool *fault)
{
        *fault = false;
        struct lsm_level *zero = &tree->levels[0];
        if (lsm_tree_level0_fill(tree) > lsm_tree_level_budget(tree, 0))
                level0_move_disjoint(tree);
        for (;;) {
                uint32_t level = level_to_compact(tree);
                if (level == LSM_LEVELS)
                        return false;
                if (level == 0) {
                        if (!job_start(tree, 0, zero->tables, zero->count)) {
                                *fault = true;
                                return false;
                        }
                        return true;
                }
                struct lsm_level *l = &tree->levels[level];
                uint32_t pick = 0;
                if (tree->compact_cursor_set[level]) {
                        while (pick < l->count &&
                               lsm_key_compare(&tree->layout, l->tables[pick].key_min,
                                               tree->compact_cursor[level]) <= 0)
                                pick++;
                        if (pick == l->count)
                                pick = 0;
                }
                struct lsm_table_info table = l->tables[pick];
                memcpy(tree->compact_cursor[level], table.key_min, LSM_KEY_SIZE_MAX);
                tree->compact_cursor_set[level] = true;
                uint32_t first, overlap;
                level_overlap(tree, level + 1, table.key_min, table.key_max, &first, &overlap);
                if (overlap == 0) {
                        level_remove(l, pick, 1);
                        level_insert(&tree->levels[level + 1], first, &table);
                        tree->stats.tables_moved++;
                        tree->version++;
                        continue;
                }
                if (!job_start(tree, level, &table, 1)) {
                        *fault = true;
                        return false;
                }
                return true;
        }
}

/*
 * A job merged (in the loop) or merging (on the worker): the beat grants `*budget` of its
 * values, and the grant that reaches values_total installs it, waiting for the worker if need
 * be. Either way a job installs at the same op, so replicas write the same blocks whether or
 * not they merge on a worker.
 *
 * A grant that leaves the worker more than WORKER_KEEP_UP_LAG values behind waits for it to
 * come within that, so the loop waits a little at each op the worker falls behind rather than
 * for the whole rest of the merge at the install: the pace can grant a level-0 job of the id
 * map (1.5 M values at 100 M transfers) within a few ops, and the loop waited up to 120 ms at
 * its install. The worker's progress counts the input values it consumed (written, or older
 * versions of a key dropped), as the grants do.
 */
static bool job_grant(struct lsm_tree *tree, uint64_t *budget)
{
        struct lsm_compaction *job = &tree->job;
        uint64_t grant = MIN(*budget, job->values_total - job->values_done);
        job->values_done += grant;
        if (job->on_worker && grant > 0) {
                __atomic_store_n(&job->worker_granted, job->values_done, __ATOMIC_RELAXED);
                lsm_compactor_granted(tree->compactor);
        }
        tree->stats.values_compacted += grant;
        *budget -= grant;
        if (job->values_done < job->values_total) {
                if (job->on_worker)
                        lsm_compactor_keep_up(tree->compactor, tree, tree->worker_keep_up_lag);
                return true;
        }
        if (job->on_worker) {
                lsm_compactor_wait(tree->compactor, tree);
                job->on_worker = false; /* the worker is done with it */
#ifdef TALLY_DEBUG
                /* Its progress counted every input value, as the grants do. */
                tally_assert(!job->worker_ok || job->worker_merged == job->values_total);
#endif
                if (!job->worker_ok) {
                        snprintf(tree->grid->error, sizeof(tree->grid->error), "%s",
                                 job->worker_error);
                        tree->grid->fault_damaged = job->worker_damaged;
                        job_drop(tree);
                        return false;
                }
        }
        if (!job_install(tree)) {
                job_drop(tree);
                return false;
        }
        return true;
}

bool lsm_tree_compact_step(struct lsm_tree *tree, uint64_t budget, bool *idle)
{
        *idle = false;
        while (budget > 0) {
                struct lsm_compaction *job = &tree->job;
                if (!job->active) {
                        bool fault;
                        if (!job_pick(tree, &fault)) {
                                *idle = !fault;
                                return !fault;
                        }
                }
                if (job->on_worker || job->merged) {
                        if (!job_grant(tree, &budget))
                                return false;
                        continue;
                }
                uint64_t emitted = 0;
                bool stopped = false;
                /* Blocks written now are the job's, at the addresses it reserved. */
                tree->grid->reserve_active = &job->reserve;
                bool ok = !tree->merge_heap_only && merge_can_run(job->merge)
                                  ? merge_run_bulk(job->merge, &tree->builder, &emitted,
                                                   &stopped, budget, &job->values_in_runs)
                                  : merge_run(job->merge, emit_to_builder, tree, &emitted,
                                              &stopped, budget);
                tree->stats.values_compacted += emitted;
                job->values_done += emitted;
                budget -= MIN(budget, emitted);
                if (!ok || (stopped && tree->builder.failed)) {
                        job_drop(tree);
                        return false;
                }
                if (stopped) {
                        tree->grid->reserve_active = NULL;
                        continue; /* the budget ran out mid-merge */
                }
                bool finished = lsm_table_builder_finish(&tree->builder);
                tree->grid->reserve_active = NULL;
                if (!finished) {
                        job_drop(tree);
                        return false;
                }
                /* Merged; it installs when the grants reach its values, as a worker's would
                 * (versions of one key that met made it shorter than its inputs). */
                job->merged = true;
        }
        return true;
}

uint64_t lsm_tree_compaction_pace(const struct lsm_tree *tree, uint64_t values_put)
{
        return lsm_tree_compaction_pace_to(tree, values_put, lsm_tree_level0_stall(tree));
}

/*
 * The merging that the levels over their budget will need after the job in progress, about:
 * each table past a level's budget (the job's own not counted) merged with its share of the
 * level below. Without it the pace covered the job in progress alone, so a level that a job
 * left far over its budget came down one table per job at that pace, while level 0 filled:
 * at 90-100 M transfers level 1 of the indexes by account held 55 tables against a budget of
 * 8, and every level-0 job merged 20 M values.
 */
static uint64_t compaction_backlog(const struct lsm_tree *tree)
{
        uint64_t backlog = 0;
        for (uint32_t level = 1; level + 1 < LSM_LEVELS; level++) {
                const struct lsm_level *l = &tree->levels[level];
                uint64_t count = l->count;
                if (tree->job.active && tree->job.from == level && count > 0)
                        count--;
                uint64_t budget = lsm_tree_level_budget(tree, level);
                if (count <= budget)
                        continue;
                /* A table's values, and the values below in the share of the key range it
                 * holds (the level's tables split it about evenly). */
                uint64_t values = l->value_count + tree->levels[level + 1].value_count;
                backlog += (count - budget) * values / l->count;
        }
        return backlog;
}

uint64_t lsm_tree_compaction_pace_to(const struct lsm_tree *tree, uint64_t values_put,
                                     uint32_t stall)
{
        const struct lsm_compaction *job = &tree->job;
        if (!job->active || job->values_done >= job->values_total)
                return 0;
        uint64_t remaining = job->values_total - job->values_done;
        uint32_t fill = lsm_tree_level0_fill(tree);
        if (fill >= stall)
                return remaining;
        /* A flush adds one run and as many tables as a full memtable needs (filters bound a
         * table's values) at most; the flush that takes level 0 past twice its budget ends the
         * room. */
        uint32_t per_fill = tree->level0_tables_per_fill;
        uint64_t per_flush = (tree->level0_flush_tables + per_fill - 1) / per_fill;
        uint64_t flushes = (stall - fill) / per_flush;
        uint64_t room = flushes * tree->room_max +
                        (tree->room_max - MIN(tree->room_max, tree->memtable_count));
        if (room == 0)
                return remaining;
        uint64_t work = remaining + compaction_backlog(tree);
        u128 pace = ((u128)2 * work * values_put + room - 1) / room;
        return pace > remaining ? remaining : (uint64_t)pace;
}

bool lsm_tree_compact(struct lsm_tree *tree)
{
        for (;;) {
                bool idle;
                if (!lsm_tree_compact_step(tree, UINT64_MAX, &idle))
                        return false;
                if (idle)
                        return true;
        }
}
