/*
 * groove.c: objects, id map and field indexes over LSM trees; leapfrog queries (groove.h).
 */
#include "lsm/groove.h"
#include "lib/huge_pages.h"
#include "lib/mix.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The id tree's values: 24 bytes, no padding (a u128 member would align the struct to 32), so
 * that the id map and the 16-byte field indexes, written for every object, cost a quarter less
 * disk, cache and compaction.
 */
struct id_value {
        uint8_t id[16]; /* u128, little-endian */
        uint64_t timestamp;
};
_Static_assert(sizeof(struct id_value) == 24, "id value size");
_Static_assert(offsetof(struct id_value, timestamp) == 16, "id value timestamp");

/* Index values: (field, timestamp), ordered by field then timestamp. */
struct index_small {
        uint64_t field;
        uint64_t timestamp;
};
_Static_assert(sizeof(struct index_small) == 16, "small index value size");

struct index_large {
        uint8_t field[16]; /* u128, little-endian */
        uint64_t timestamp;
};
_Static_assert(sizeof(struct index_large) == 24, "large index value size");
_Static_assert(offsetof(struct index_large, timestamp) == 16, "large index timestamp");

static int compare_u64(const void *a, const void *b)
{
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        return x < y ? -1 : x > y;
}

static int compare_u128(const void *a, const void *b)
{
        u128 x, y;
        memcpy(&x, a, 16);
        memcpy(&y, b, 16);
        return x < y ? -1 : x > y;
}

static int compare_small(const void *a, const void *b)
{
        int c = compare_u64(a, b);
        return c != 0 ? c : compare_u64((const uint8_t *)a + 8, (const uint8_t *)b + 8);
}

static int compare_large(const void *a, const void *b)
{
        int c = compare_u128(a, b);
        return c != 0 ? c : compare_u64((const uint8_t *)a + 16, (const uint8_t *)b + 16);
}

static u128 field_of(const struct lsm_groove_index_config *index, const void *object)
{
        u128 value = 0;
        memcpy(&value, (const uint8_t *)object + index->offset, index->size);
        return value;
}

static uint64_t timestamp_of(const struct lsm_groove *g, const void *object)
{
        uint64_t timestamp;
        memcpy(&timestamp, (const uint8_t *)object + g->config.timestamp_offset, 8);
        return timestamp;
}

/* ---- the object cache --------------------------------------------------------------------- */

static void cache_deinit(struct lsm_groove *g);

static void cache_init(struct lsm_groove *g)
{
        struct lsm_groove_cache *c = &g->cache;
        uint64_t way_bytes = g->config.object_size + sizeof(uint32_t) + 1;
        uint64_t sets = g->config.cache_bytes / (way_bytes * LSM_GROOVE_CACHE_WAYS);
        if (sets == 0)
                return;
        uint32_t set_count = 1;
        while ((uint64_t)set_count * 2 <= sets && set_count < (1u << 30))
                set_count *= 2;
        uint64_t ways = (uint64_t)set_count * LSM_GROOVE_CACHE_WAYS;
        /* Sets are picked by hash: huge pages, or nearly every lookup misses the TLB too. */
        c->tags = huge_pages_alloc(ways * sizeof(uint32_t));
        c->referenced = huge_pages_alloc(ways);
        c->hands = huge_pages_alloc(set_count);
        c->objects = huge_pages_alloc(ways * g->config.object_size);
        c->set_count = set_count;
        if (c->tags == NULL || c->referenced == NULL || c->hands == NULL || c->objects == NULL)
                cache_deinit(g); /* no cache: slower, never wrong */
}

static void cache_deinit(struct lsm_groove *g)
{
        struct lsm_groove_cache *c = &g->cache;
        uint64_t ways = (uint64_t)c->set_count * LSM_GROOVE_CACHE_WAYS;
        huge_pages_free(c->tags, ways * sizeof(uint32_t));
        huge_pages_free(c->referenced, ways);
        huge_pages_free(c->hands, c->set_count);
        huge_pages_free(c->objects, ways * g->config.object_size);
        memset(c, 0, sizeof(*c));
}

static uint64_t cache_hash(u128 id)
{
        return mix64((uint64_t)id ^ mix64((uint64_t)(id >> 64) + 1));
}

static u128 object_id(const struct lsm_groove *g, const void *object)
{
        u128 id;
        memcpy(&id, (const uint8_t *)object + g->config.id_offset, 16);
        return id;
}

/* The way holding `id`, or -1; *set_out its set. */
static int64_t cache_find(const struct lsm_groove *g, u128 id, uint32_t *set_out,
                          uint32_t *tag_out)
{
        const struct lsm_groove_cache *c = &g->cache;
        uint64_t h = cache_hash(id);
        uint32_t set = (uint32_t)h & (c->set_count - 1);
        uint32_t tag = (uint32_t)(h >> 32) | 1;
        *set_out = set;
        *tag_out = tag;
        uint64_t base = (uint64_t)set * LSM_GROOVE_CACHE_WAYS;
        for (uint32_t w = 0; w < LSM_GROOVE_CACHE_WAYS; w++) {
                if (c->tags[base + w] == tag &&
                    object_id(g, c->objects + (base + w) * g->config.object_size) == id)
                        return (int64_t)(base + w);
        }
        return -1;
}

void lsm_groove_cache_put(struct lsm_groove *g, const void *object)
{
        struct lsm_groove_cache *c = &g->cache;
        if (c->set_count == 0)
                return;
        uint32_t set, tag;
        int64_t way = cache_find(g, object_id(g, object), &set, &tag);
        if (way < 0) {
                uint64_t base = (uint64_t)set * LSM_GROOVE_CACHE_WAYS;
                for (uint32_t w = 0; w < LSM_GROOVE_CACHE_WAYS && way < 0; w++)
                        if (c->tags[base + w] == 0)
                                way = (int64_t)(base + w);
                while (way < 0) { /* CLOCK: the first way not referenced since the hand passed */
                        uint64_t candidate = base + c->hands[set];
                        c->hands[set] = (uint8_t)((c->hands[set] + 1) % LSM_GROOVE_CACHE_WAYS);
                        if (c->referenced[candidate])
                                c->referenced[candidate] = 0;
                        else
                                way = (int64_t)candidate;
                }
                c->tags[way] = tag;
        }
        c->referenced[way] = 1;
        memcpy(c->objects + (uint64_t)way * g->config.object_size, object, g->config.object_size);
}

void lsm_groove_cache_prefetch(const struct lsm_groove *g, u128 id, bool near)
{
        const struct lsm_groove_cache *c = &g->cache;
        if (c->set_count == 0)
                return;
        uint64_t h = cache_hash(id);
        uint64_t base = (uint64_t)((uint32_t)h & (c->set_count - 1)) * LSM_GROOVE_CACHE_WAYS;
        if (!near) {
                __builtin_prefetch(&c->tags[base]);
                return;
        }
        uint32_t tag = (uint32_t)(h >> 32) | 1;
        for (uint32_t w = 0; w < LSM_GROOVE_CACHE_WAYS; w++) {
                if (c->tags[base + w] == tag) { /* most likely the id's: it will be written */
                        const uint8_t *object = c->objects + (base + w) * g->config.object_size;
                        __builtin_prefetch(object, 1);
                        __builtin_prefetch(object + g->config.object_size - 1, 1);
                        return;
                }
        }
}

bool lsm_groove_cached(struct lsm_groove *g, u128 id, void *out)
{
        struct lsm_groove_cache *c = &g->cache;
        if (c->set_count == 0)
                return false;
        uint32_t set, tag;
        int64_t way = cache_find(g, id, &set, &tag);
        if (way < 0) {
                c->misses++;
                return false;
        }
        c->hits++;
        c->referenced[way] = 1;
        memcpy(out, c->objects + (uint64_t)way * g->config.object_size, g->config.object_size);
        return true;
}

/* ---- the groove --------------------------------------------------------------------------- */

int lsm_groove_init(struct lsm_groove *g, const struct lsm_groove_config *config,
                    struct lsm_grid *grid)
{
        tally_assert(config->index_count <= LSM_GROOVE_INDEXES_MAX);
        tally_assert(config->object_size <= LSM_VALUE_SIZE_MAX);
        tally_assert(config->tree_base + 2 + config->index_count <= LSM_FOREST_TREES_MAX);
        memset(g, 0, sizeof(*g));
        g->config = *config;
        uint32_t blocks = config->table_data_blocks_max;
        g->layouts[0] = (struct lsm_layout){.tree = config->tree_base,
                                            .value_size = config->object_size,
                                            .key_size = 8,
                                            .key_offset = config->timestamp_offset,
                                            .compare = compare_u64,
                                            .table_data_blocks_max = blocks,
                                            .key_kind = LSM_KEY_U64,
                                            .insert_only = config->objects_insert_only};
        g->layouts[1] = (struct lsm_layout){.tree = (uint8_t)(config->tree_base + 1),
                                            .value_size = sizeof(struct id_value),
                                            .key_size = 16,
                                            .key_offset = 0,
                                            .compare = compare_u128,
                                            .table_data_blocks_max = blocks,
                                            .key_kind = LSM_KEY_U128,
                                            /* every new id is looked up: most miss */
                                            .filter = true};
        char name[32];
        snprintf(name, sizeof(name), "%s", config->name);
        if (lsm_tree_init(&g->objects, name, &g->layouts[0], grid, config->memtable_max) != 0)
                return -ENOMEM;
        snprintf(name, sizeof(name), "%s.id", config->name);
        if (lsm_tree_init(&g->ids, name, &g->layouts[1], grid, config->memtable_max) != 0) {
                lsm_groove_deinit(g);
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < config->index_count; i++) {
                const struct lsm_groove_index_config *index = &config->indexes[i];
                tally_assert(index->size == 1 || index->size == 2 || index->size == 4 ||
                             index->size == 8 || index->size == 16);
                bool large = index->size == 16;
                g->layouts[2 + i] = (struct lsm_layout){
                        .tree = (uint8_t)(config->tree_base + 2 + i),
                        .value_size = large ? sizeof(struct index_large)
                                            : sizeof(struct index_small),
                        .key_size = large ? 24 : 16,
                        .key_offset = 0,
                        .compare = large ? compare_large : compare_small,
                        .table_data_blocks_max = blocks,
                        .key_kind = large ? LSM_KEY_U128_U64 : LSM_KEY_U64_U64,
                        /* (field, timestamp): unique, never replaced */
                        .insert_only = true};
                snprintf(name, sizeof(name), "%s.%s", config->name, index->name);
                if (lsm_tree_init(&g->indexes[i], name, &g->layouts[2 + i], grid,
                                  config->memtable_max) != 0) {
                        lsm_groove_deinit(g);
                        return -ENOMEM;
                }
                if (index->level0_budget != 0)
                        g->indexes[i].level0_budget = index->level0_budget;
        }
        cache_init(g);
        return 0;
}

void lsm_groove_deinit(struct lsm_groove *g)
{
        cache_deinit(g);
        free(g->id_candidates);
        g->id_candidates = NULL;
        g->id_candidates_max = 0;
        if (g->objects.memtable != NULL)
                lsm_tree_deinit(&g->objects);
        if (g->ids.memtable != NULL)
                lsm_tree_deinit(&g->ids);
        for (uint32_t i = 0; i < LSM_GROOVE_INDEXES_MAX; i++)
                if (g->indexes[i].memtable != NULL)
                        lsm_tree_deinit(&g->indexes[i]);
}

void lsm_groove_add_to_forest(struct lsm_groove *g, struct lsm_forest *forest)
{
        lsm_forest_add(forest, &g->objects);
        lsm_forest_add(forest, &g->ids);
        for (uint32_t i = 0; i < g->config.index_count; i++)
                lsm_forest_add(forest, &g->indexes[i]);
}

bool lsm_groove_has_room(const struct lsm_groove *g, uint32_t count)
{
        /* Every tree takes at most one value per object. */
        return lsm_tree_has_room(&g->objects, count);
}

static void index_put(struct lsm_groove *g, uint32_t i, u128 field, uint64_t timestamp)
{
        if (g->config.indexes[i].size == 16) {
                struct index_large v = {.timestamp = timestamp};
                memcpy(v.field, &field, 16);
                lsm_tree_put(&g->indexes[i], &v);
        } else {
                struct index_small v = {.field = (uint64_t)field, .timestamp = timestamp};
                lsm_tree_put(&g->indexes[i], &v);
        }
}

void lsm_groove_insert(struct lsm_groove *g, const void *object)
{
        uint64_t timestamp = timestamp_of(g, object);
        tally_assert(timestamp != 0);
        lsm_tree_put(&g->objects, object);
        struct id_value id = {.timestamp = timestamp};
        memcpy(id.id, (const uint8_t *)object + g->config.id_offset, 16);
        lsm_tree_put(&g->ids, &id);
        for (uint32_t i = 0; i < g->config.index_count; i++) {
                u128 field = field_of(&g->config.indexes[i], object);
                if (field != 0)
                        index_put(g, i, field, timestamp);
        }
        /* Not cached here: a new id cannot be cached already, and whether a new object will be
         * read again soon is the caller's to say (lsm_groove_cache_put). */
}

void lsm_groove_insert_prefetch(const struct lsm_groove *g, const void *object)
{
        lsm_tree_put_prefetch(&g->objects, (const uint8_t *)object + g->config.timestamp_offset);
        lsm_tree_put_prefetch(&g->ids, (const uint8_t *)object + g->config.id_offset);
}

void lsm_groove_update(struct lsm_groove *g, const void *object)
{
        tally_assert(!g->config.objects_insert_only);
        tally_assert(timestamp_of(g, object) != 0);
        lsm_tree_put(&g->objects, object);
        lsm_groove_cache_put(g, object);
}

int lsm_groove_get_by_timestamp(struct lsm_groove *g, uint64_t timestamp, void *out)
{
        return lsm_tree_get(&g->objects, &timestamp, out);
}

int lsm_groove_get_id(struct lsm_groove *g, u128 id, uint64_t *timestamp)
{
        struct id_value value;
        int rc = lsm_tree_get(&g->ids, &id, &value);
        if (rc == 1)
                *timestamp = value.timestamp;
        return rc;
}

void lsm_groove_ids_may_contain(struct lsm_groove *g, const void *ids, size_t stride,
                                uint32_t count, bool *maybe)
{
        if (count > g->id_candidates_max) {
                struct lsm_block_ref *grown =
                        realloc(g->id_candidates, (size_t)count * sizeof(*grown));
                if (grown != NULL) {
                        g->id_candidates = grown;
                        g->id_candidates_max = count;
                }
        }
        if (count > g->id_candidates_max) { /* no memory: the lookups read one at a time */
                lsm_tree_may_contain(&g->ids, ids, stride, count, maybe, NULL, NULL);
                return;
        }
        uint32_t candidates = 0;
        lsm_tree_may_contain(&g->ids, ids, stride, count, maybe, g->id_candidates, &candidates);
        lsm_grid_prefetch(g->ids.grid, g->id_candidates, candidates, LSM_BLOCK_TABLE_DATA);
}

void lsm_groove_put_id(struct lsm_groove *g, u128 id, uint64_t timestamp)
{
        struct id_value value = {.timestamp = timestamp};
        memcpy(value.id, &id, 16);
        lsm_tree_put(&g->ids, &value);
}

int lsm_groove_get_by_id(struct lsm_groove *g, u128 id, void *out)
{
        if (lsm_groove_cached(g, id, out))
                return 1;
        struct id_value value;
        int rc = lsm_tree_get(&g->ids, &id, &value);
        if (rc != 1)
                return rc;
        rc = lsm_groove_get_by_timestamp(g, value.timestamp, out);
        /* The id map and the objects are written together: one without the other is a bug. */
        tally_assert(rc != 0);
        if (rc == 1)
                lsm_groove_cache_put(g, out);
        return rc;
}

bool lsm_groove_flush(struct lsm_groove *g)
{
        bool ok = lsm_tree_flush(&g->objects) && lsm_tree_flush(&g->ids);
        for (uint32_t i = 0; ok && i < g->config.index_count; i++)
                ok = lsm_tree_flush(&g->indexes[i]);
        return ok;
}

bool lsm_groove_compact(struct lsm_groove *g)
{
        bool ok = lsm_tree_compact(&g->objects) && lsm_tree_compact(&g->ids);
        for (uint32_t i = 0; ok && i < g->config.index_count; i++)
                ok = lsm_tree_compact(&g->indexes[i]);
        return ok;
}

/* ---- queries ------------------------------------------------------------------------------ */

/* An index key (field, timestamp) in the layout of index i. */
static void index_key(const struct lsm_groove *g, uint32_t i, u128 field, uint64_t timestamp,
                      uint8_t *key)
{
        memset(key, 0, LSM_KEY_SIZE_MAX);
        if (g->config.indexes[i].size == 16) {
                memcpy(key, &field, 16);
                memcpy(key + 16, &timestamp, 8);
        } else {
                uint64_t small = (uint64_t)field;
                memcpy(key, &small, 8);
                memcpy(key + 8, &timestamp, 8);
        }
}

static uint64_t index_timestamp(const struct lsm_groove *g, uint32_t i, const void *value)
{
        uint64_t timestamp;
        memcpy(&timestamp, (const uint8_t *)value + (g->config.indexes[i].size == 16 ? 16 : 8), 8);
        return timestamp;
}

/*
 * One intersection of index scans (or the objects tree over the range when nothing is
 * filtered), producing matching timestamps in order: the leapfrog of groove.h.
 */
struct leapfrog {
        struct lsm_groove *g;
        uint32_t n; /* filtered indexes; 0: walk the objects tree */
        uint32_t filtered[LSM_GROOVE_INDEXES_MAX];
        u128 value[LSM_GROOVE_INDEXES_MAX];
        struct lsm_tree_cursor cursors[LSM_GROOVE_INDEXES_MAX];
        uint32_t opened;
        bool reversed;
        bool failed;
        struct lsm_groove_query_stats *stats;
};

static bool leapfrog_open(struct leapfrog *l, struct lsm_groove *g, const uint32_t *filtered,
                          const u128 *value, uint32_t n, uint64_t ts_min, uint64_t ts_max,
                          bool reversed, struct lsm_groove_query_stats *stats)
{
        memset(l, 0, sizeof(*l));
        l->g = g;
        l->n = n;
        l->reversed = reversed;
        l->stats = stats;
        if (n == 0) {
                l->failed = lsm_tree_cursor_open(&l->cursors[0], &g->objects, &ts_min, &ts_max,
                                                 reversed) != 0;
                l->opened = l->failed ? 0 : 1;
                return !l->failed;
        }
        for (uint32_t k = 0; k < n && !l->failed; k++) {
                uint32_t i = filtered[k];
                l->filtered[k] = i;
                l->value[k] = value[k];
                uint8_t lo[LSM_KEY_SIZE_MAX], hi[LSM_KEY_SIZE_MAX];
                index_key(g, i, value[k], ts_min, lo);
                index_key(g, i, value[k], ts_max, hi);
                l->failed = lsm_tree_cursor_open(&l->cursors[k], &g->indexes[i], lo, hi,
                                                 reversed) != 0;
                l->opened += l->failed ? 0 : 1;
        }
        return !l->failed;
}

static void leapfrog_close(struct leapfrog *l)
{
        for (uint32_t k = 0; k < l->opened; k++) {
                l->failed = l->failed || lsm_tree_cursor_failed(&l->cursors[k]);
                lsm_tree_cursor_close(&l->cursors[k]);
        }
        l->opened = 0;
}

/* The timestamp every cursor agrees on next (not consumed), or 0 at the end or on a fault. */
static uint64_t leapfrog_peek(struct leapfrog *l)
{
        if (l->failed)
                return 0;
        if (l->n == 0) {
                const void *v = lsm_tree_cursor_value(&l->cursors[0]);
                return v != NULL ? timestamp_of(l->g, v) : 0;
        }
        for (;;) {
                uint64_t target = 0;
                bool agree = true;
                for (uint32_t k = 0; k < l->n; k++) {
                        const void *v = lsm_tree_cursor_value(&l->cursors[k]);
                        if (v == NULL)
                                return 0;
                        uint64_t t = index_timestamp(l->g, l->filtered[k], v);
                        if (k == 0) {
                                target = t;
                        } else if (t != target) {
                                agree = false;
                                if (l->reversed ? t < target : t > target)
                                        target = t;
                        }
                }
                if (agree)
                        return target;
                /* The cursors behind seek to the one ahead: each move skips what cannot match. */
                for (uint32_t k = 0; k < l->n; k++) {
                        const void *v = lsm_tree_cursor_value(&l->cursors[k]);
                        if (index_timestamp(l->g, l->filtered[k], v) == target)
                                continue;
                        uint8_t key[LSM_KEY_SIZE_MAX];
                        index_key(l->g, l->filtered[k], l->value[k], target, key);
                        lsm_tree_cursor_seek(&l->cursors[k], key);
                        l->stats->seeks++;
                        l->stats->steps++;
                }
        }
}

static void leapfrog_next(struct leapfrog *l)
{
        uint32_t cursors = l->n == 0 ? 1 : l->n;
        for (uint32_t k = 0; k < cursors; k++) {
                lsm_tree_cursor_next(&l->cursors[k]);
                l->stats->steps++;
        }
}

/* Results a query finds before it reads their objects, together (lsm_tree_get_prefetch). */
#define QUERY_READ_AHEAD 64u

int64_t lsm_groove_query(struct lsm_groove *g, const struct lsm_groove_filter *f, void *out,
                         struct lsm_groove_query_stats *stats)
{
        memset(stats, 0, sizeof(*stats));
        uint64_t ts_min = f->timestamp_min, ts_max = f->timestamp_max != 0 ? f->timestamp_max
                                                                          : UINT64_MAX;
        if (f->limit == 0 || ts_min > ts_max)
                return 0;
        /* The filters every result must match, and the alternatives of an "either" filter. */
        uint32_t filtered[LSM_GROOVE_INDEXES_MAX + 1];
        u128 values[LSM_GROOVE_INDEXES_MAX + 1];
        uint32_t n = 0;
        for (uint32_t i = 0; i < g->config.index_count; i++) {
                if (f->present[i]) {
                        tally_assert(f->value[i] != 0); /* 0 means no filter */
                        filtered[n] = i;
                        values[n++] = f->value[i];
                }
        }
        uint32_t alternatives = f->either_count;
        tally_assert(alternatives == 0 || (alternatives == 2 && f->either_value != 0));
        struct leapfrog frogs[2];
        uint32_t frog_count = alternatives == 0 ? 1 : 2;
        bool ok = true;
        for (uint32_t a = 0; a < frog_count && ok; a++) {
                uint32_t m = n;
                if (alternatives != 0) {
                        tally_assert(f->either[a] < g->config.index_count);
                        filtered[m] = f->either[a];
                        values[m++] = f->either_value;
                }
                ok = leapfrog_open(&frogs[a], g, filtered, values, m, ts_min, ts_max,
                                   f->reversed, stats);
                if (!ok)
                        frog_count = a + 1;
        }
        uint8_t *results = out;
        uint32_t size = g->config.object_size;
        int64_t count = 0;
        bool more = true;
        while (ok && more && count < f->limit) {
                /* A union of the alternatives: merged by timestamp, each object once. Up to
                 * QUERY_READ_AHEAD results are found first, so that the blocks of their objects
                 * are read together (a result's object is often in a block of its own). */
                uint64_t found[QUERY_READ_AHEAD];
                uint32_t found_count = 0;
                while (found_count < QUERY_READ_AHEAD && count + found_count < f->limit) {
                        uint64_t best = 0;
                        for (uint32_t a = 0; a < frog_count; a++) {
                                uint64_t t = leapfrog_peek(&frogs[a]);
                                if (t != 0 && (best == 0 || (f->reversed ? t > best : t < best)))
                                        best = t;
                        }
                        if (best == 0) {
                                more = false;
                                break;
                        }
                        for (uint32_t a = 0; a < frog_count; a++) {
                                if (leapfrog_peek(&frogs[a]) == best)
                                        leapfrog_next(&frogs[a]);
                        }
                        found[found_count++] = best;
                }
                lsm_tree_get_prefetch(&g->objects, found, sizeof(found[0]), found_count);
                for (uint32_t i = 0; i < found_count; i++) {
                        int rc = lsm_groove_get_by_timestamp(g, found[i],
                                                             results + (size_t)count * size);
                        if (rc < 0) {
                                ok = false;
                                break;
                        }
                        tally_assert(rc == 1); /* indexed (or walked), so stored */
                        count++;
                }
        }
        for (uint32_t a = 0; a < frog_count; a++) {
                leapfrog_close(&frogs[a]);
                ok = ok && !frogs[a].failed;
        }
        return ok ? count : -1;
}
