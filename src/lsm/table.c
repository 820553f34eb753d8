/*
 * table.c: building, searching and walking immutable sorted tables (see table.h).
 */
#include "lsm/table.h"

#include "wire/checksum.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint8_t *block_alloc(void)
{
        return aligned_alloc(4096, LSM_BLOCK_SIZE);
}

int lsm_table_builder_init(struct lsm_table_builder *builder, const struct lsm_layout *layout,
                           struct lsm_grid *grid,
                           void (*on_table)(void *context, const struct lsm_table_info *table),
                           void *context)
{
        tally_assert(layout->value_size > 0 && layout->value_size <= LSM_VALUE_SIZE_MAX);
        tally_assert(layout->key_size > 0 && layout->key_size <= LSM_KEY_SIZE_MAX);
        tally_assert(layout->key_offset + layout->key_size <= layout->value_size);
        tally_assert(layout->table_data_blocks_max <= LSM_TABLE_DATA_BLOCKS_MAX);
        memset(builder, 0, sizeof(*builder));
        builder->layout = layout;
        builder->grid = grid;
        builder->on_table = on_table;
        builder->context = context;
        builder->values_per_block = lsm_values_per_block(layout);
        builder->data_blocks_max = lsm_table_data_blocks_max(layout);
        builder->filter_offset = layout->filter ? lsm_table_filter_offset(layout) : 0;
        /* Only a filter that starts in page 0 is paged (table.h, "Filter pages"). */
        builder->filter_paged =
                layout->filter &&
                builder->filter_offset + LSM_TABLE_FILTER_BUCKET_SIZE <= LSM_TABLE_FILTER_PAGE_SIZE;
        builder->data = block_alloc();
        builder->index = block_alloc();
        if (builder->data == NULL || builder->index == NULL) {
                lsm_table_builder_deinit(builder);
                return -ENOMEM;
        }
        if (layout->filter)
                memset(builder->index, 0, LSM_BLOCK_SIZE);
        return 0;
}

void lsm_table_builder_reset(struct lsm_table_builder *b)
{
        b->data_count = 0;
        b->index_count = 0;
        b->table_values = 0;
        b->failed = false;
        if (b->layout->filter)
                memset(b->index, 0, LSM_BLOCK_SIZE);
}

void lsm_table_builder_deinit(struct lsm_table_builder *builder)
{
        free(builder->data);
        free(builder->index);
        builder->data = builder->index = NULL;
}

static struct lsm_index_entry *index_entries(uint8_t *index_block)
{
        return (struct lsm_index_entry *)(index_block + LSM_BLOCK_HEADER_SIZE);
}

static const struct lsm_index_entry *index_entries_const(const uint8_t *index_block)
{
        return (const struct lsm_index_entry *)(index_block + LSM_BLOCK_HEADER_SIZE);
}

static const uint8_t *data_value(const struct lsm_layout *layout, const uint8_t *block,
                                 uint32_t index)
{
        return block + LSM_BLOCK_HEADER_SIZE + (size_t)index * layout->value_size;
}

/* ---- filter ----------------------------------------------------------------------------- */

/* The most data blocks b with (payload - b x entry) x 8 >= b x values x bits_per_key. */
static uint32_t filtered_blocks_max(const struct lsm_layout *layout, uint32_t bits_per_key)
{
        uint32_t blocks = LSM_BLOCK_PAYLOAD_MAX * 8 /
                          ((uint32_t)sizeof(struct lsm_index_entry) * 8 +
                           lsm_values_per_block(layout) * bits_per_key);
        return MAX(1u, MIN(blocks, LSM_TABLE_DATA_BLOCKS_MAX));
}

uint32_t lsm_table_data_blocks_max(const struct lsm_layout *layout)
{
        if (layout->table_data_blocks_max != 0)
                return layout->table_data_blocks_max;
        if (!layout->filter)
                return LSM_TABLE_DATA_BLOCKS_MAX;
        return filtered_blocks_max(layout, LSM_TABLE_FILTER_BITS_PER_KEY_MIN);
}

/* Buckets start on a 32-byte boundary (offsets of the block are 64-byte aligned). */
static uint32_t filter_offset_after(uint32_t data_blocks)
{
        uint32_t offset = LSM_BLOCK_HEADER_SIZE +
                          data_blocks * (uint32_t)sizeof(struct lsm_index_entry);
        return (offset + LSM_TABLE_FILTER_BUCKET_SIZE - 1) / LSM_TABLE_FILTER_BUCKET_SIZE *
               LSM_TABLE_FILTER_BUCKET_SIZE;
}

/* Since 2026-12-06 the page checksums come first (table.h, "Filter pages"). */
uint32_t lsm_table_filter_offset(const struct lsm_layout *layout)
{
        return filter_offset_after(lsm_table_data_blocks_max(layout)) +
               LSM_TABLE_FILTER_PAGE_SUMS_SIZE;
}

/* Index blocks that say filter_offset 0 were written before the field, and before pages. */
uint32_t lsm_table_filter_offset_legacy(const struct lsm_layout *layout)
{
        if (layout->table_data_blocks_max != 0 || !layout->filter)
                return filter_offset_after(lsm_table_data_blocks_max(layout));
        return filter_offset_after(
                filtered_blocks_max(layout, LSM_TABLE_FILTER_BITS_PER_KEY_LEGACY));
}

uint64_t lsm_table_filter_page_sum(const uint8_t *page)
{
        return (uint64_t)checksum(page, LSM_TABLE_FILTER_PAGE_SIZE) | 1u;
}

/* The page checksums of a paged index block, before its filter (0: offset not plausible). */
static const uint8_t *filter_page_sums(const uint8_t *page0, uint32_t *offset)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)page0;
        *offset = h->filter_offset;
        uint64_t entries_end = LSM_BLOCK_HEADER_SIZE +
                               (uint64_t)h->count * sizeof(struct lsm_index_entry);
        if (h->size != LSM_BLOCK_SIZE || *offset < entries_end + LSM_TABLE_FILTER_PAGE_SUMS_SIZE ||
            *offset % LSM_TABLE_FILTER_BUCKET_SIZE != 0 ||
            *offset > LSM_TABLE_FILTER_PAGE_SIZE - LSM_TABLE_FILTER_BUCKET_SIZE)
                return NULL;
        return page0 + *offset - LSM_TABLE_FILTER_PAGE_SUMS_SIZE;
}

uint32_t lsm_table_filter_page_of(const uint8_t *page0, uint64_t hash, uint32_t *at)
{
        uint32_t offset;
        if (filter_page_sums(page0, &offset) == NULL)
                return LSM_TABLE_FILTER_PAGES;
        uint32_t place = lsm_table_filter_bucket_place(offset, hash);
        *at = place % LSM_TABLE_FILTER_PAGE_SIZE;
        return place / LSM_TABLE_FILTER_PAGE_SIZE;
}

bool lsm_table_filter_page_check(const uint8_t *page0, uint32_t number, const uint8_t *page)
{
        uint32_t offset;
        const uint8_t *sums = filter_page_sums(page0, &offset);
        if (sums == NULL || number == 0 || number >= LSM_TABLE_FILTER_PAGES)
                return false;
        uint64_t sum;
        memcpy(&sum, sums + (size_t)number * 8, 8);
        return lsm_table_filter_page_sum(page) == sum;
}

/* Before the seal: the checksums of pages 1.. (page 0's goes to the reference, after it). */
static void filter_pages_sum(uint8_t *index_block, uint32_t filter_offset)
{
        uint8_t *sums = index_block + filter_offset - LSM_TABLE_FILTER_PAGE_SUMS_SIZE;
        memset(sums, 0, 8);
        for (uint32_t p = 1; p < LSM_TABLE_FILTER_PAGES; p++) {
                uint64_t sum = lsm_table_filter_page_sum(index_block +
                                                         (size_t)p * LSM_TABLE_FILTER_PAGE_SIZE);
                memcpy(sums + (size_t)p * 8, &sum, 8);
        }
}

/*
 * Where this index block's filter starts, 0 if it has none. Its header says (sealed by the
 * builder, checksummed); 0 there means the legacy offset. An offset that does not leave the
 * entries and at least one bucket in the block is no filter (every key may be there).
 */
uint32_t lsm_table_filter_start(const uint8_t *index_block, uint32_t legacy_offset)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)index_block;
        if (h->size != LSM_BLOCK_SIZE)
                return 0;
        uint32_t offset = h->filter_offset != 0 ? h->filter_offset : legacy_offset;
        uint64_t entries_end = LSM_BLOCK_HEADER_SIZE +
                               (uint64_t)h->count * sizeof(struct lsm_index_entry);
        if (offset < entries_end || offset % LSM_TABLE_FILTER_BUCKET_SIZE != 0 ||
            offset > LSM_BLOCK_SIZE - LSM_TABLE_FILTER_BUCKET_SIZE)
                return 0;
        return offset;
}

const uint32_t lsm_table_filter_salt[8] = {0x47b6137bu, 0x44974d91u, 0x8824ad5bu, 0xa2b7289du,
                                           0x705495c7u, 0x2df1424bu, 0x9efc4947u, 0x5c6bfb31u};

static void filter_add(uint8_t *index_block, uint32_t offset, uint64_t hash)
{
        uint32_t *words = (uint32_t *)lsm_table_filter_bucket_in(index_block, offset, hash);
        for (uint32_t i = 0; i < 8; i++)
                words[i] |= 1u << (((uint32_t)hash * lsm_table_filter_salt[i]) >> 27);
}

bool lsm_table_filter_may_contain(const struct lsm_layout *layout, const uint8_t *index_block,
                                  const void *key)
{
        return lsm_table_filter_may_contain_hash(layout, index_block, lsm_key_hash(layout, key));
}

const void *lsm_table_filter_bucket(const struct lsm_layout *layout, const uint8_t *index_block,
                                    uint64_t hash)
{
        return lsm_table_filter_bucket_at(index_block, lsm_table_filter_offset_legacy(layout),
                                          hash);
}

const void *lsm_table_filter_bucket_at(const uint8_t *index_block, uint32_t legacy_offset,
                                       uint64_t hash)
{
        uint32_t offset = lsm_table_filter_start(index_block, legacy_offset);
        if (offset == 0)
                return NULL;
        return lsm_table_filter_bucket_in(index_block, offset, hash);
}

bool lsm_table_filter_may_contain_hash(const struct lsm_layout *layout,
                                       const uint8_t *index_block, uint64_t hash)
{
        return lsm_table_filter_may_contain_at(index_block, lsm_table_filter_offset_legacy(layout),
                                               hash);
}

bool lsm_table_filter_may_contain_at(const uint8_t *index_block, uint32_t legacy_offset,
                                     uint64_t hash)
{
        uint32_t offset = lsm_table_filter_start(index_block, legacy_offset);
        if (offset == 0)
                return true; /* no filter */
        return lsm_table_filter_bucket_may_contain(
                lsm_table_filter_bucket_in(index_block, offset, hash), hash);
}

/* Writes the data block being filled and records it in the index block. */
static bool data_flush(struct lsm_table_builder *b)
{
        const struct lsm_layout *layout = b->layout;
        tally_assert(b->data_count > 0 && b->index_count < LSM_TABLE_DATA_BLOCKS_MAX);
        struct lsm_index_entry *entry = &index_entries(b->index)[b->index_count];
        memset(entry, 0, sizeof(*entry));
        memcpy(entry->key_min, lsm_key_of(layout, data_value(layout, b->data, 0)),
               layout->key_size);
        memcpy(entry->key_max,
               lsm_key_of(layout, data_value(layout, b->data, b->data_count - 1)),
               layout->key_size);
        uint32_t size = LSM_BLOCK_HEADER_SIZE + b->data_count * layout->value_size;
        entry->data = lsm_grid_write_cold(b->grid, b->data, LSM_BLOCK_TABLE_DATA, layout->tree,
                                          layout->value_size, b->data_count, size);
        if (entry->data.address == 0) {
                b->failed = true;
                return false;
        }
        b->index_count++;
        b->data_count = 0;
        return true;
}

/* Writes the index block of the table being built and hands the table over. */
static bool table_flush(struct lsm_table_builder *b)
{
        tally_assert(b->index_count > 0);
        const struct lsm_index_entry *entries = index_entries(b->index);
        struct lsm_table_info table;
        memset(&table, 0, sizeof(table));
        memcpy(table.key_min, entries[0].key_min, LSM_KEY_SIZE_MAX);
        memcpy(table.key_max, entries[b->index_count - 1].key_max, LSM_KEY_SIZE_MAX);
        table.value_count = b->table_values;
        table.data_block_count = b->index_count;
        uint32_t size = LSM_BLOCK_HEADER_SIZE +
                        b->index_count * (uint32_t)sizeof(struct lsm_index_entry);
        if (b->layout->filter) {
                /* Replicas write identical blocks: no stale bytes between index and filter. */
                memset(b->index + size, 0, b->filter_offset - size);
                size = LSM_BLOCK_SIZE;
                if (b->filter_paged)
                        filter_pages_sum(b->index, b->filter_offset);
        }
        ((struct lsm_block_header *)b->index)->filter_offset = b->filter_offset;
        table.index = lsm_grid_write(b->grid, b->index, LSM_BLOCK_TABLE_INDEX, b->layout->tree,
                                     b->layout->value_size, b->index_count, size);
        if (table.index.address == 0) {
                b->failed = true;
                return false;
        }
        if (b->filter_paged) /* sealed in place: page 0 as written */
                table.index.reserved = lsm_table_filter_page_sum(b->index);
        b->index_count = 0;
        b->table_values = 0;
        if (b->layout->filter)
                memset(b->index + b->filter_offset, 0, LSM_BLOCK_SIZE - b->filter_offset);
        b->on_table(b->context, &table);
        return true;
}

bool lsm_table_builder_add(struct lsm_table_builder *b, const void *value)
{
        const struct lsm_layout *layout = b->layout;
        if (b->failed)
                return false;
        if (b->data_count > 0) {
                const uint8_t *last = data_value(layout, b->data, b->data_count - 1);
                tally_assert(lsm_key_compare(layout, lsm_key_of(layout, last),
                                             lsm_key_of(layout, value)) < 0);
        }
        uint8_t *to = b->data + LSM_BLOCK_HEADER_SIZE + (size_t)b->data_count * layout->value_size;
        switch (layout->value_size) { /* the sizes of the ledger's trees, copied inline */
        case 16:
                memcpy(to, value, 16);
                break;
        case 24:
                memcpy(to, value, 24);
                break;
        case 32:
                memcpy(to, value, 32);
                break;
        case 128:
                memcpy(to, value, 128);
                break;
        default:
                memcpy(to, value, layout->value_size);
        }
        if (layout->filter)
                filter_add(b->index, b->filter_offset,
                           lsm_key_hash(layout, lsm_key_of(layout, value)));
        b->data_count++;
        b->table_values++;
        if (b->data_count == b->values_per_block) {
                if (!data_flush(b))
                        return false;
                if (b->index_count == b->data_blocks_max && !table_flush(b))
                        return false;
        }
        return true;
}

bool lsm_table_builder_add_run(struct lsm_table_builder *b, const uint8_t *values,
                                uint32_t count)
{
        const struct lsm_layout *layout = b->layout;
        const uint32_t size = layout->value_size;
        if (b->failed)
                return false;
        if (count == 0)
                return true;
        const uint8_t *last = values + (size_t)(count - 1) * size;
        tally_assert(count == 1 || lsm_key_compare(layout, lsm_key_of(layout, values),
                                                   lsm_key_of(layout, last)) < 0);
        if (b->data_count > 0) {
                const uint8_t *before = data_value(layout, b->data, b->data_count - 1);
                tally_assert(lsm_key_compare(layout, lsm_key_of(layout, before),
                                             lsm_key_of(layout, values)) < 0);
        }
        while (count > 0) {
                uint32_t n = MIN(count, b->values_per_block - b->data_count);
                uint8_t *to = b->data + LSM_BLOCK_HEADER_SIZE + (size_t)b->data_count * size;
                memcpy(to, values, (size_t)n * size);
                if (layout->filter) {
                        for (uint32_t i = 0; i < n; i++)
                                filter_add(b->index, b->filter_offset,
                                           lsm_key_hash(layout, lsm_key_of(layout, to + (size_t)i * size)));
                }
                b->data_count += n;
                b->table_values += n;
                values += (size_t)n * size;
                count -= n;
                if (b->data_count == b->values_per_block) {
                        if (!data_flush(b))
                                return false;
                        if (b->index_count == b->data_blocks_max && !table_flush(b))
                                return false;
                }
        }
        return true;
}

bool lsm_table_builder_finish(struct lsm_table_builder *b)
{
        if (b->failed)
                return false;
        if (b->data_count > 0 && !data_flush(b))
                return false;
        if (b->index_count > 0 && !table_flush(b))
                return false;
        return true;
}

/*
 * The first of `count` sorted keys (key i at base + i * stride) that is >= key, or count.
 *
 * Keys of one block are close to evenly spread (timestamps are consecutive, ids are random or
 * sequential), so the search guesses the position by interpolating between the first and the
 * last key, then gallops from the guess and finishes with a binary search over the bracket it
 * found: one to three probes on even keys instead of the nine dependent cache misses a binary
 * search of a 64 KiB block costs, and at worst twice the binary search's steps on skewed keys
 * (an index tree's keys for one hot account). LSM_KEY_CUSTOM keys are binary searched.
 */
static uint32_t search_ge(const struct lsm_layout *layout, const uint8_t *base, size_t stride,
                          uint32_t count, const void *key)
{
#define KEY_AT(i) (base + (size_t)(i) * stride)
        if (count == 0)
                return 0;
        uint32_t lo = 0, hi = count; /* the answer is in [lo, hi] */
        uint64_t k[3], first[3], last[3];
        if (count > 2 && lsm_key_words(layout, key, k)) {
                lsm_key_words(layout, KEY_AT(0), first);
                lsm_key_words(layout, KEY_AT(count - 1), last);
                uint32_t d = 0;
                while (d < 3 && first[d] == last[d])
                        d++;
                uint32_t guess = 0;
                if (d < 3) {
                        int before = 0; /* the key against first and last in the words before d */
                        for (uint32_t w = 0; w < d && before == 0; w++)
                                before = k[w] < first[w] ? -1 : k[w] > first[w] ? 1 : 0;
                        if (before > 0 || (before == 0 && k[d] >= last[d]))
                                guess = count - 1;
                        else if (before == 0 && k[d] > first[d])
                                guess = (uint32_t)((unsigned __int128)(k[d] - first[d]) *
                                                   (count - 1) / (last[d] - first[d]));
                }
                if (lsm_key_compare(layout, KEY_AT(guess), key) < 0) {
                        uint32_t step = 1, below = guess; /* KEY_AT(below) < key */
                        for (;;) {
                                uint32_t next = guess + step;
                                if (next >= count) {
                                        lo = below + 1, hi = count;
                                        break;
                                }
                                if (lsm_key_compare(layout, KEY_AT(next), key) < 0) {
                                        below = next, step *= 2;
                                } else {
                                        lo = below + 1, hi = next;
                                        break;
                                }
                        }
                } else {
                        uint32_t step = 1, above = guess; /* KEY_AT(above) >= key */
                        for (;;) {
                                if (step > guess) {
                                        lo = 0, hi = above;
                                        break;
                                }
                                uint32_t next = guess - step;
                                if (lsm_key_compare(layout, KEY_AT(next), key) >= 0) {
                                        above = next, step *= 2;
                                } else {
                                        lo = next + 1, hi = above;
                                        break;
                                }
                        }
                }
        }
        while (lo < hi) { /* KEY_AT(hi) >= key, or hi == count */
                uint32_t mid = lo + (hi - lo) / 2;
                if (lsm_key_compare(layout, KEY_AT(mid), key) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
#undef KEY_AT
}

/* The first index entry whose key_max >= key, or count. */
static uint32_t index_search(const struct lsm_layout *layout, const uint8_t *index_block,
                             const void *key)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)index_block;
        return search_ge(layout, index_entries_const(index_block)->key_max,
                         sizeof(struct lsm_index_entry), h->count, key);
}

/* The first value in a data block whose key >= key, or count. */
static uint32_t data_search(const struct lsm_layout *layout, const uint8_t *block,
                            const void *key)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        return search_ge(layout, lsm_key_of(layout, block + LSM_BLOCK_HEADER_SIZE),
                         layout->value_size, h->count, key);
}

bool lsm_table_index_find(const struct lsm_layout *layout, const uint8_t *index_block,
                          const void *key, struct lsm_block_ref *data)
{
        if (!lsm_table_filter_may_contain(layout, index_block, key))
                return false;
        return lsm_table_index_entry_find(layout, index_block, key, data);
}

bool lsm_table_index_entry_find(const struct lsm_layout *layout, const uint8_t *index_block,
                                const void *key, struct lsm_block_ref *data)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)index_block;
        uint32_t i = index_search(layout, index_block, key);
        if (i == h->count)
                return false;
        const struct lsm_index_entry *entry = &index_entries_const(index_block)[i];
        if (lsm_key_compare(layout, key, entry->key_min) < 0)
                return false;
        *data = entry->data;
        return true;
}

bool lsm_table_data_find(const struct lsm_layout *layout, const uint8_t *data_block,
                         const void *key, void *out)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)data_block;
        uint32_t j = data_search(layout, data_block, key);
        if (j == h->count)
                return false;
        const uint8_t *value = data_value(layout, data_block, j);
        if (lsm_key_compare(layout, lsm_key_of(layout, value), key) != 0)
                return false;
        memcpy(out, value, layout->value_size);
        return true;
}

int lsm_table_get(struct lsm_grid *grid, const struct lsm_layout *layout,
                  const struct lsm_table_info *table, const void *key, void *out)
{
        if (lsm_key_compare(layout, key, table->key_min) < 0 || lsm_key_compare(layout, key, table->key_max) > 0)
                return 0;
        const uint8_t *index = lsm_grid_read(grid, table->index, LSM_BLOCK_TABLE_INDEX);
        if (index == NULL)
                return -1;
        struct lsm_block_ref data_ref; /* copied: the next read may evict the index block */
        if (!lsm_table_index_find(layout, index, key, &data_ref))
                return 0;
        const uint8_t *data = lsm_grid_read(grid, data_ref, LSM_BLOCK_TABLE_DATA);
        if (data == NULL)
                return -1;
        return lsm_table_data_find(layout, data, key, out) ? 1 : 0;
}

/* ---- cursors ---------------------------------------------------------------------------- */

int lsm_table_cursor_init(struct lsm_table_cursor *cursor, const struct lsm_layout *layout,
                          struct lsm_grid *grid)
{
        memset(cursor, 0, sizeof(*cursor));
        cursor->layout = layout;
        cursor->grid = grid;
        cursor->block = lsm_grid_buffer_get(grid);
        cursor->done = true;
        return cursor->block == NULL ? -ENOMEM : 0;
}

void lsm_table_cursor_deinit(struct lsm_table_cursor *cursor)
{
        lsm_grid_buffer_put(cursor->grid, cursor->block);
        cursor->block = NULL;
}

/* Loads data block `data_index` of the table into the cursor's own buffer. */
static bool cursor_load(struct lsm_table_cursor *c, int32_t data_index)
{
        const uint8_t *index = lsm_grid_read(c->grid, c->table.index, LSM_BLOCK_TABLE_INDEX);
        if (index == NULL) {
                c->failed = c->done = true;
                return false;
        }
        const struct lsm_block_header *ih = (const struct lsm_block_header *)index;
        if (data_index < 0 || (uint32_t)data_index >= ih->count) {
                c->done = true;
                return false;
        }
        struct lsm_block_ref ref = index_entries_const(index)[data_index].data;
        const struct lsm_device *device = &c->grid->device;
        if (c->uncached && !c->reversed && device->prefetch != NULL) {
                /* A merge reads its inputs in order, block by block, from blocks that left the
                 * page cache long ago (written past it, or evicted since): the device starts
                 * reading the next few meanwhile. */
                int32_t until = MIN(data_index + 1 + LSM_TABLE_CURSOR_READ_AHEAD,
                                    (int32_t)ih->count);
                uint64_t addresses[LSM_TABLE_CURSOR_READ_AHEAD];
                uint32_t count = 0;
                for (int32_t i = MAX(c->hinted, data_index + 1); i < until; i++)
                        addresses[count++] = index_entries_const(index)[i].data.address;
                if (count > 0)
                        device->prefetch(device->context, addresses, count);
                c->hinted = MAX(c->hinted, until);
        }
        /* Into the cursor's own buffer: through the cache (queries seek back into blocks other
         * cursors read), or past it for a compaction's merge (`uncached`). A seek within the
         * block the cursor holds reads nothing. */
        if (ref.address != c->loaded.address || ref.checksum != c->loaded.checksum) {
                c->loaded.address = 0;
                bool ok;
                if (c->uncached) {
                        ok = lsm_grid_read_copy(c->grid, ref, LSM_BLOCK_TABLE_DATA, c->block);
                } else {
                        const uint8_t *data = lsm_grid_read(c->grid, ref, LSM_BLOCK_TABLE_DATA);
                        ok = data != NULL;
                        if (ok)
                                memcpy(c->block, data,
                                       ((const struct lsm_block_header *)data)->size);
                }
                if (!ok) {
                        c->failed = c->done = true;
                        return false;
                }
                c->loaded = ref;
        }
        const struct lsm_block_header *dh = (const struct lsm_block_header *)c->block;
        c->data_index = data_index;
        c->value_count = dh->count;
        return true;
}

/* The data block a seek of `key` starts in (index_block may be NULL when key is). */
static int32_t seek_data_index(const struct lsm_layout *layout, const uint8_t *index_block,
                               const struct lsm_table_info *table, const void *key,
                               bool reversed)
{
        if (key == NULL)
                return reversed ? (int32_t)table->data_block_count - 1 : 0;
        int32_t data_index = (int32_t)index_search(layout, index_block, key);
        if (reversed && (uint32_t)data_index == table->data_block_count)
                data_index--;
        return data_index;
}

struct lsm_block_ref lsm_table_seek_block(const struct lsm_layout *layout,
                                          const uint8_t *index_block,
                                          const struct lsm_table_info *table, const void *key,
                                          bool reversed)
{
        const struct lsm_block_header *ih = (const struct lsm_block_header *)index_block;
        int32_t data_index = seek_data_index(layout, index_block, table, key, reversed);
        if (data_index < 0 || (uint32_t)data_index >= ih->count)
                return (struct lsm_block_ref){0};
        return index_entries_const(index_block)[data_index].data;
}

void lsm_table_cursor_seek(struct lsm_table_cursor *c, const struct lsm_table_info *table,
                           const void *key, bool reversed)
{
        const struct lsm_layout *layout = c->layout;
        if (c->table.index.address != table->index.address ||
            c->table.index.checksum != table->index.checksum)
                c->hinted = 0;
        c->table = *table;
        c->reversed = reversed;
        c->done = false;
        c->failed = false;
        const uint8_t *index = NULL;
        if (key != NULL) {
                index = lsm_grid_read(c->grid, table->index, LSM_BLOCK_TABLE_INDEX);
                if (index == NULL) {
                        c->failed = c->done = true;
                        return;
                }
        }
        if (!cursor_load(c, seek_data_index(layout, index, table, key, reversed)))
                return;
        if (key == NULL) {
                c->value_index = reversed ? (int32_t)c->value_count - 1 : 0;
                return;
        }
        uint32_t j = data_search(layout, c->block, key);
        if (!reversed) {
                c->value_index = (int32_t)j;
                if (j == c->value_count) { /* key > every value here: the next block */
                        if (cursor_load(c, c->data_index + 1))
                                c->value_index = 0;
                }
                return;
        }
        /* Reversed: the last value <= key. */
        if (j < c->value_count &&
            lsm_key_compare(layout, lsm_key_of(layout, data_value(layout, c->block, j)), key) == 0) {
                c->value_index = (int32_t)j;
                return;
        }
        if (j > 0) {
                c->value_index = (int32_t)j - 1;
                return;
        }
        if (cursor_load(c, c->data_index - 1))
                c->value_index = (int32_t)c->value_count - 1;
}

const uint8_t *lsm_table_cursor_value(const struct lsm_table_cursor *c)
{
        if (c->done)
                return NULL;
        return data_value(c->layout, c->block, (uint32_t)c->value_index);
}

uint32_t lsm_table_cursor_run(const struct lsm_table_cursor *c, const uint8_t **values)
{
        tally_assert(!c->reversed);
        if (c->done) {
                *values = NULL;
                return 0;
        }
        *values = data_value(c->layout, c->block, (uint32_t)c->value_index);
        return c->value_count - (uint32_t)c->value_index;
}

void lsm_table_cursor_skip(struct lsm_table_cursor *c, uint32_t count)
{
        tally_assert(!c->reversed && !c->done &&
                     count <= c->value_count - (uint32_t)c->value_index);
        c->value_index += (int32_t)count;
        if ((uint32_t)c->value_index == c->value_count && cursor_load(c, c->data_index + 1))
                c->value_index = 0;
}

void lsm_table_cursor_next(struct lsm_table_cursor *c)
{
        if (c->done)
                return;
        if (!c->reversed) {
                c->value_index++;
                if ((uint32_t)c->value_index == c->value_count && cursor_load(c, c->data_index + 1))
                        c->value_index = 0;
        } else {
                c->value_index--;
                if (c->value_index < 0 && cursor_load(c, c->data_index - 1))
                        c->value_index = (int32_t)c->value_count - 1;
        }
}
