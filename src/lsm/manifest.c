/*
 * manifest.c: the forest's list of tables as a log of changes in chained grid blocks
 * (manifest.h says why and how).
 */
#include "lsm/manifest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lsm_manifest_entry {
        u128 checksum;
        uint64_t address; /* of the table's index block; 0: the slot is empty */
        uint64_t seq;     /* the table's last add record */
        uint32_t epoch;   /* the checkpoint that last saw the table in its tree */
        uint8_t tree;
        uint8_t level;
};

/* Records before a checkpoint plans its changes: a bound that keeps a damaged block from
 * asking for the moon. */
#define MANIFEST_BLOCKS_MAX (1u << 24)

void lsm_manifest_init(struct lsm_manifest *manifest)
{
        memset(manifest, 0, sizeof(*manifest));
}

void lsm_manifest_deinit(struct lsm_manifest *manifest)
{
        free(manifest->blocks);
        free(manifest->records);
        free(manifest->map);
        free(manifest->pending);
        free(manifest->written);
        free(manifest->scratch);
        memset(manifest, 0, sizeof(*manifest));
}

static void *grow(void *array, uint64_t *capacity, uint64_t needed, size_t size)
{
        if (needed <= *capacity)
                return array;
        uint64_t next = MAX(64u, *capacity);
        while (next < needed)
                next *= 2;
        void *grown = realloc(array, next * size);
        tally_assert(grown != NULL); /* as the trees' levels: ~100 bytes per table */
        *capacity = next;
        return grown;
}

static void records_reserve(struct lsm_manifest *m, uint64_t count)
{
        m->records = grow(m->records, &m->record_capacity, count, sizeof(*m->records));
}

static void pending_reserve(struct lsm_manifest *m, uint64_t count)
{
        m->pending = grow(m->pending, &m->pending_capacity, count, sizeof(*m->pending));
}

static void blocks_reserve(struct lsm_manifest_block **blocks, uint32_t *capacity,
                           uint64_t count)
{
        uint64_t c = *capacity;
        *blocks = grow(*blocks, &c, count, sizeof(**blocks));
        tally_assert(c <= UINT32_MAX);
        *capacity = (uint32_t)c;
}

/* ---- the map of live tables ---------------------------------------------------------------- */

static uint64_t identity_hash(uint8_t tree, uint8_t level, struct lsm_block_ref ref)
{
        uint64_t h = ref.address * 0x9e3779b97f4a7c15ull;
        h ^= (uint64_t)ref.checksum + ((uint64_t)tree << 8 | level);
        h *= 0xff51afd7ed558ccdull;
        return h ^ (h >> 29);
}

static struct lsm_manifest_entry *map_find(struct lsm_manifest *m, uint8_t tree, uint8_t level,
                                           struct lsm_block_ref ref)
{
        if (m->map_capacity == 0)
                return NULL;
        uint64_t mask = m->map_capacity - 1;
        for (uint64_t i = identity_hash(tree, level, ref) & mask;; i = (i + 1) & mask) {
                struct lsm_manifest_entry *e = &m->map[i];
                if (e->address == 0)
                        return NULL;
                if (e->address == ref.address && e->checksum == ref.checksum && e->tree == tree &&
                    e->level == level)
                        return e;
        }
}

static void map_place(struct lsm_manifest *m, const struct lsm_manifest_entry *entry)
{
        uint64_t mask = m->map_capacity - 1;
        struct lsm_block_ref ref = {.address = entry->address, .checksum = entry->checksum};
        uint64_t i = identity_hash(entry->tree, entry->level, ref) & mask;
        while (m->map[i].address != 0)
                i = (i + 1) & mask;
        m->map[i] = *entry;
}

/* Room for `count` live tables at most half full. */
static void map_reserve(struct lsm_manifest *m, uint64_t count)
{
        if (count * 2 <= m->map_capacity)
                return;
        uint64_t capacity = MAX(256u, m->map_capacity);
        while (count * 2 > capacity)
                capacity *= 2;
        struct lsm_manifest_entry *old = m->map;
        uint64_t old_capacity = m->map_capacity;
        m->map = calloc(capacity, sizeof(*m->map));
        tally_assert(m->map != NULL);
        m->map_capacity = capacity;
        for (uint64_t i = 0; i < old_capacity; i++)
                if (old[i].address != 0)
                        map_place(m, &old[i]);
        free(old);
}

static void map_upsert(struct lsm_manifest *m, const struct lsm_manifest_record *r, uint64_t seq,
                       uint32_t epoch)
{
        struct lsm_manifest_entry *e = map_find(m, r->tree, r->level, r->table.index);
        if (e != NULL) {
                e->seq = seq;
                e->epoch = epoch;
                return;
        }
        map_reserve(m, m->map_count + 1);
        struct lsm_manifest_entry entry = {.checksum = r->table.index.checksum,
                                           .address = r->table.index.address,
                                           .seq = seq,
                                           .epoch = epoch,
                                           .tree = r->tree,
                                           .level = r->level};
        map_place(m, &entry);
        m->map_count++;
}

/* Empties the entry's slot, moving later entries of its probe chain back (no tombstones). */
static void map_delete(struct lsm_manifest *m, struct lsm_manifest_entry *e)
{
        uint64_t mask = m->map_capacity - 1;
        uint64_t hole = (uint64_t)(e - m->map);
        m->map[hole].address = 0;
        m->map_count--;
        for (uint64_t i = (hole + 1) & mask; m->map[i].address != 0; i = (i + 1) & mask) {
                struct lsm_block_ref ref = {.address = m->map[i].address,
                                            .checksum = m->map[i].checksum};
                uint64_t home = identity_hash(m->map[i].tree, m->map[i].level, ref) & mask;
                /* Stays unless the hole lies on its way from home to i. */
                bool move = hole <= i ? (home <= hole || home > i) : (home <= hole && home > i);
                if (!move)
                        continue;
                m->map[hole] = m->map[i];
                m->map[i].address = 0;
                hole = i;
        }
}

static void replay(struct lsm_manifest *m, const struct lsm_manifest_record *r, uint64_t seq)
{
        if (r->kind == LSM_MANIFEST_ADD) {
                map_upsert(m, r, seq, m->epoch);
                return;
        }
        struct lsm_manifest_entry *e = map_find(m, r->tree, r->level, r->table.index);
        if (e != NULL)
                map_delete(m, e);
}

/* ---- load --------------------------------------------------------------------------------- */

static bool load_fail(struct lsm_grid *grid, uint64_t address, const char *what)
{
        snprintf(grid->error, sizeof(grid->error), "manifest block %llu: %s",
                 (unsigned long long)address, what);
        return false;
}

/* Appends one block's records to the log (and replays them). */
static bool load_block(struct lsm_manifest *m, struct lsm_grid *grid, struct lsm_block_ref ref,
                       bool legacy)
{
        const uint8_t *block = lsm_grid_read(grid, ref, LSM_BLOCK_MANIFEST);
        if (block == NULL)
                return false;
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        uint32_t offset = legacy ? 0 : LSM_MANIFEST_LINK_SIZE;
        uint32_t max = legacy ? LSM_MANIFEST_LEGACY_RECORDS_PER_BLOCK
                              : LSM_MANIFEST_RECORDS_PER_BLOCK;
        if (h->count > max || h->value_size != sizeof(struct lsm_manifest_record))
                return load_fail(grid, ref.address, "record count or size out of range");
        if (h->count == 0)
                return load_fail(grid, ref.address, "no records");
        records_reserve(m, m->record_count + h->count);
        memcpy(&m->records[m->record_count], block + LSM_BLOCK_HEADER_SIZE + offset,
               (size_t)h->count * sizeof(*m->records));
        for (uint32_t i = 0; i < h->count; i++) {
                const struct lsm_manifest_record *r = &m->records[m->record_count + i];
                if (r->level >= LSM_LEVELS || r->kind > LSM_MANIFEST_REMOVE ||
                    r->table.index.address == 0)
                        return load_fail(grid, ref.address, "a record out of range");
                replay(m, r, m->seq_base + m->record_count + i);
        }
        blocks_reserve(&m->blocks, &m->block_capacity, (uint64_t)m->block_count + 1);
        m->blocks[m->block_count++] = (struct lsm_manifest_block){.ref = ref, .count = h->count};
        m->record_count += h->count;
        return true;
}

bool lsm_manifest_load(struct lsm_manifest *manifest, struct lsm_grid *grid,
                       const struct lsm_block_ref *refs, uint32_t count, bool legacy)
{
        struct lsm_manifest *m = manifest;
        m->block_count = 0;
        m->record_count = 0;
        m->seq_base = 0;
        m->map_count = 0;
        if (m->map != NULL)
                memset(m->map, 0, m->map_capacity * sizeof(*m->map));
        m->legacy = legacy;
        if (count > MANIFEST_BLOCKS_MAX)
                return load_fail(grid, 0, "more blocks than a log can have");
        if (legacy) {
                for (uint32_t i = 0; i < count; i++)
                        if (!load_block(m, grid, refs[i], true))
                                return false;
                return true;
        }
        /* The chain back from the newest, into `written` (scratch), then read oldest first. */
        blocks_reserve(&m->written, &m->written_capacity, count);
        struct lsm_block_ref ref = count > 0 ? refs[0] : (struct lsm_block_ref){0};
        for (uint32_t i = 0; i < count; i++) {
                const uint8_t *block = lsm_grid_read(grid, ref, LSM_BLOCK_MANIFEST);
                if (block == NULL)
                        return false;
                m->written[count - 1 - i].ref = ref;
                memcpy(&ref, block + LSM_BLOCK_HEADER_SIZE, sizeof(ref));
                if (i + 1 < count && ref.address == 0)
                        return load_fail(grid, m->written[count - 1 - i].ref.address,
                                         "the chain ends before the root's count");
        }
        for (uint32_t i = 0; i < count; i++)
                if (!load_block(m, grid, m->written[i].ref, false))
                        return false;
        return true;
}

/* ---- live tables -------------------------------------------------------------------------- */

static bool record_live(struct lsm_manifest *m, uint64_t index)
{
        const struct lsm_manifest_record *r = &m->records[index];
        if (r->kind != LSM_MANIFEST_ADD)
                return false;
        const struct lsm_manifest_entry *e = map_find(m, r->tree, r->level, r->table.index);
        return e != NULL && e->seq == m->seq_base + index;
}

uint64_t lsm_manifest_live(struct lsm_manifest *manifest, const struct lsm_manifest_record **live)
{
        struct lsm_manifest *m = manifest;
        /* Log order is last-add order; a stable counting sort by (tree, level) keeps it. */
        static uint64_t starts[256 * LSM_LEVELS + 1];
        memset(starts, 0, sizeof(starts));
        for (uint64_t i = 0; i < m->record_count; i++)
                if (record_live(m, i))
                        starts[m->records[i].tree * LSM_LEVELS + m->records[i].level + 1]++;
        for (uint32_t k = 1; k <= 256 * LSM_LEVELS; k++)
                starts[k] += starts[k - 1];
        uint64_t total = starts[256 * LSM_LEVELS];
        tally_assert(total == m->map_count);
        pending_reserve(m, total);
        for (uint64_t i = 0; i < m->record_count; i++)
                if (record_live(m, i)) {
                        const struct lsm_manifest_record *r = &m->records[i];
                        m->pending[starts[r->tree * LSM_LEVELS + r->level]++] = *r;
                }
        *live = m->pending;
        return total;
}

struct lsm_block_ref lsm_manifest_newest(const struct lsm_manifest *manifest)
{
        if (manifest->block_count == 0)
                return (struct lsm_block_ref){0};
        return manifest->blocks[manifest->block_count - 1].ref;
}

/* ---- checkpoint --------------------------------------------------------------------------- */

static void pending_push(struct lsm_manifest *m, uint8_t tree, uint8_t level, uint8_t kind,
                         const struct lsm_table_info *table)
{
        pending_reserve(m, m->pending_count + 1);
        struct lsm_manifest_record *r = &m->pending[m->pending_count++];
        memset(r, 0, sizeof(*r));
        r->tree = tree;
        r->level = level;
        r->kind = kind;
        r->table = *table;
}

static void scratch_push(struct lsm_manifest *m, uint64_t value)
{
        m->scratch = grow(m->scratch, &m->scratch_capacity, m->scratch_count + 1,
                          sizeof(*m->scratch));
        m->scratch[m->scratch_count++] = value;
}

/*
 * Marks every table of the trees as seen in this checkpoint, and notes in `scratch` where the
 * ones the log lacks are (tree, level, position). Returns how many.
 */
static uint64_t plan_adds(struct lsm_manifest *m, struct lsm_tree *const *trees,
                          uint32_t tree_count)
{
        m->scratch_count = 0;
        for (uint32_t id = 0; id < tree_count; id++) {
                const struct lsm_tree *tree = trees[id];
                for (uint32_t level = 0; tree != NULL && level < LSM_LEVELS; level++) {
                        const struct lsm_level *l = &tree->levels[level];
                        for (uint32_t t = 0; t < l->count; t++) {
                                struct lsm_manifest_entry *e =
                                        map_find(m, (uint8_t)id, (uint8_t)level, l->tables[t].index);
                                if (e != NULL)
                                        e->epoch = m->epoch;
                                else
                                        scratch_push(m, (uint64_t)id << 40 | (uint64_t)level << 32 | t);
                        }
                }
        }
        return m->scratch_count;
}

/* The adds `scratch` notes, to `pending` (tree, level and level order). */
static void push_adds(struct lsm_manifest *m, struct lsm_tree *const *trees, uint64_t adds)
{
        tally_assert(m->scratch_count >= adds);
        for (uint64_t i = 0; i < adds; i++) {
                uint64_t where = m->scratch[i];
                uint8_t id = (uint8_t)(where >> 40), level = (uint8_t)(where >> 32);
                pending_push(m, id, level, LSM_MANIFEST_ADD,
                             &trees[id]->levels[level].tables[(uint32_t)where]);
        }
}

static int seq_compare(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/*
 * Tables the log has and the trees no longer do: remove records, in log order (not the map's
 * slot order: it depends on the map's history, which a restart changes, and every replica must
 * write the same blocks). Their seqs go after the adds' positions in `scratch`.
 */
static uint64_t plan_removes(struct lsm_manifest *m)
{
        uint64_t first = m->scratch_count;
        for (uint64_t i = 0; i < m->map_capacity; i++) {
                const struct lsm_manifest_entry *e = &m->map[i];
                if (e->address != 0 && e->epoch != m->epoch)
                        scratch_push(m, e->seq);
        }
        uint64_t removes = m->scratch_count - first;
        if (removes > 1)
                qsort(m->scratch + first, removes, sizeof(*m->scratch), seq_compare);
        for (uint64_t i = first; i < m->scratch_count; i++) {
                const struct lsm_manifest_record *r = &m->records[m->scratch[i] - m->seq_base];
                struct lsm_table_info table;
                memset(&table, 0, sizeof(table));
                table.index = r->table.index;
                pending_push(m, r->tree, r->level, LSM_MANIFEST_REMOVE, &table);
        }
        return removes;
}

/* A live record of the oldest block, appended again; a level-0 one brings its tree's level 0. */
static void plan_reappend(struct lsm_manifest *m, struct lsm_tree *const *trees,
                          uint32_t tree_count, const struct lsm_manifest_record *r,
                          bool *level0_done)
{
        if (r->level > 0) {
                pending_push(m, r->tree, r->level, LSM_MANIFEST_ADD, &r->table);
                return;
        }
        if (level0_done[r->tree])
                return;
        level0_done[r->tree] = true;
        tally_assert(r->tree < tree_count && trees[r->tree] != NULL);
        const struct lsm_level *zero = &trees[r->tree]->levels[0];
        for (uint32_t t = 0; t < zero->count; t++) {
                /* Tables new in this checkpoint are added after these anyway, in order. */
                const struct lsm_manifest_entry *e = map_find(m, r->tree, 0, zero->tables[t].index);
                if (e != NULL && e->epoch == m->epoch)
                        pending_push(m, r->tree, 0, LSM_MANIFEST_ADD, &zero->tables[t]);
        }
}

/*
 * Compacts oldest blocks into `pending` while the log would be over twice the live records,
 * up to its budget (every block for a legacy log). Returns how many blocks.
 */
static uint32_t plan_compaction(struct lsm_manifest *m, struct lsm_tree *const *trees,
                                uint32_t tree_count, uint64_t live, uint64_t adds,
                                uint64_t changes)
{
        static bool level0_done[256];
        memset(level0_done, 0, sizeof(level0_done));
        uint64_t per_block = LSM_MANIFEST_RECORDS_PER_BLOCK;
        uint64_t budget = LSM_MANIFEST_COMPACT_BLOCKS_MIN + 2 * ((changes + per_block - 1) / per_block);
        /* Twice the live records, and blocks: a checkpoint of a few changes writes a block
         * of its own, and start-up reads every block. */
        uint64_t target = 2 * live + 2 * per_block;
        uint64_t target_blocks = 2 * ((live + per_block - 1) / per_block) + 4;
        uint64_t remaining = m->record_count, first = 0;
        uint32_t compacted = 0;
        while (compacted < m->block_count) {
                uint64_t appended = m->pending_count + adds;
                uint64_t blocks = m->block_count - compacted + (appended + per_block - 1) / per_block;
                bool over = remaining + appended > target || blocks > target_blocks;
                if (!m->legacy && (!over || compacted >= budget))
                        break;
                uint32_t count = m->blocks[compacted].count;
                for (uint64_t i = first; i < first + count; i++) {
                        const struct lsm_manifest_record *r = &m->records[i];
                        if (!record_live(m, i))
                                continue;
                        const struct lsm_manifest_entry *e =
                                map_find(m, r->tree, r->level, r->table.index);
                        if (e->epoch != m->epoch)
                                continue; /* removed in this checkpoint */
                        plan_reappend(m, trees, tree_count, r, level0_done);
                }
                first += count;
                remaining -= count;
                compacted++;
        }
        return compacted;
}

/* Writes `pending` as blocks chained onto `previous`; false (and the written ones released). */
static bool write_blocks(struct lsm_manifest *m, struct lsm_grid *grid, struct lsm_block_ref previous,
                         uint8_t *block)
{
        uint64_t per_block = LSM_MANIFEST_RECORDS_PER_BLOCK;
        m->written_count = 0;
        blocks_reserve(&m->written, &m->written_capacity,
                       (m->pending_count + per_block - 1) / per_block);
        for (uint64_t first = 0; first < m->pending_count; first += per_block) {
                uint32_t count = (uint32_t)MIN(per_block, m->pending_count - first);
                uint8_t *payload = block + LSM_BLOCK_HEADER_SIZE;
                memset(payload, 0, LSM_MANIFEST_LINK_SIZE);
                memcpy(payload, &previous, sizeof(previous));
                memcpy(payload + LSM_MANIFEST_LINK_SIZE, &m->pending[first],
                       (size_t)count * sizeof(*m->pending));
                uint32_t size = LSM_BLOCK_HEADER_SIZE + LSM_MANIFEST_LINK_SIZE +
                                count * (uint32_t)sizeof(*m->pending);
                struct lsm_block_ref ref = lsm_grid_write(grid, block, LSM_BLOCK_MANIFEST, 0,
                                                          sizeof(*m->pending), count, size);
                if (ref.address == 0) {
                        for (uint32_t i = 0; i < m->written_count; i++)
                                lsm_grid_release(grid, m->written[i].ref.address);
                        return false;
                }
                m->written[m->written_count++] = (struct lsm_manifest_block){.ref = ref,
                                                                             .count = count};
                previous = ref;
        }
        return true;
}

/* The plan written: the log and the map become this checkpoint's. */
static void apply(struct lsm_manifest *m, struct lsm_grid *grid, uint32_t compacted)
{
        uint64_t dropped = 0;
        for (uint32_t b = 0; b < compacted; b++) {
                lsm_grid_release(grid, m->blocks[b].ref.address);
                dropped += m->blocks[b].count;
        }
        if (compacted > 0) {
                memmove(m->blocks, m->blocks + compacted,
                        (m->block_count - compacted) * sizeof(*m->blocks));
                m->block_count -= compacted;
                memmove(m->records, m->records + dropped,
                        (m->record_count - dropped) * sizeof(*m->records));
                m->record_count -= dropped;
                m->seq_base += dropped;
        }
        if (m->written_count > 0) {
                blocks_reserve(&m->blocks, &m->block_capacity,
                               (uint64_t)m->block_count + m->written_count);
                memcpy(m->blocks + m->block_count, m->written,
                       m->written_count * sizeof(*m->written));
                m->block_count += m->written_count;
        }
        records_reserve(m, m->record_count + m->pending_count);
        for (uint64_t i = 0; i < m->pending_count; i++) {
                uint64_t seq = m->seq_base + m->record_count;
                m->records[m->record_count++] = m->pending[i];
                replay(m, &m->pending[i], seq);
        }
        m->legacy = false;
}

bool lsm_manifest_checkpoint(struct lsm_manifest *manifest, struct lsm_grid *grid,
                             struct lsm_tree *const *trees, uint32_t tree_count, uint8_t *block)
{
        struct lsm_manifest *m = manifest;
        tally_assert(tree_count <= 256);
        m->epoch++;
        m->pending_count = 0;
        uint64_t adds = plan_adds(m, trees, tree_count);
        /* Written in this order: removes, what compaction appends again, adds. */
        uint64_t removes = plan_removes(m);
        uint64_t live = m->map_count - removes + adds;
        uint32_t compacted = plan_compaction(m, trees, tree_count, live, adds, adds + removes);
        push_adds(m, trees, adds);
        struct lsm_block_ref previous = {0};
        if (compacted < m->block_count)
                previous = m->blocks[m->block_count - 1].ref;
        if (!write_blocks(m, grid, previous, block)) {
                /* As before: entries seen in this plan keep their (stale) epoch; harmless, the
                 * next plan sets every one again. */
                return false;
        }
        m->blocks_written_last = m->written_count;
        m->blocks_compacted_last = compacted;
        apply(m, grid, compacted);
        return true;
}
