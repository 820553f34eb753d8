/*
 * table.h: an immutable sorted table of fixed-size values on the grid: data blocks of sorted
 * values and one index block naming each data block with its key range (docs/storage.md).
 *
 * Why: a table is the unit the LSM writes (a flushed memtable, a compaction's output), moves
 * between levels and frees. Its index block (key_min, key_max and a block reference per data
 * block) lets a lookup read exactly one data block, and lets a scan start at the right one.
 *
 * Values carry their key at `key_offset` (key_size bytes, ordered by the tree's compare
 * function); a table never holds two values with the same key.
 */
#ifndef TALLY_LSM_TABLE_H
#define TALLY_LSM_TABLE_H

#include "lsm/grid.h"

#include <string.h>

#define LSM_KEY_SIZE_MAX 32u
#define LSM_VALUE_SIZE_MAX 256u
/* Data blocks per table: with 128-byte values a table holds 65,408 values (8 MiB). */
#define LSM_TABLE_DATA_BLOCKS_MAX 128u

/*
 * The few key formats the ledger uses, so that the hot loops (binary searches in blocks,
 * merges, memtable sorts) compare keys inline instead of through `compare`: little-endian
 * unsigned integers, compared field by field. LSM_KEY_CUSTOM (0) uses `compare` alone.
 */
enum lsm_key_kind {
        LSM_KEY_CUSTOM = 0,
        LSM_KEY_U64 = 1,      /* key_size 8 */
        LSM_KEY_U128 = 2,     /* key_size 16 */
        LSM_KEY_U64_U64 = 3,  /* key_size 16: (u64, u64), the first field first */
        LSM_KEY_U128_U64 = 4, /* key_size 24: (u128, u64) */
};

/* How a tree's values are laid out and ordered. */
struct lsm_layout {
        uint8_t tree; /* id written into every block */
        uint16_t value_size;
        uint16_t key_size;
        uint16_t key_offset;
        int (*compare)(const void *key_a, const void *key_b);
        /* Data blocks per table, 0: LSM_TABLE_DATA_BLOCKS_MAX (tests make small tables). */
        uint32_t table_data_blocks_max;
        /* enum lsm_key_kind: must order keys exactly as `compare` does (asserted in tests). */
        uint8_t key_kind;
        /*
         * Tables carry a key filter in their index block (below): for trees whose point
         * lookups often miss, like the id maps that every new id is looked up in.
         */
        bool filter;
        /*
         * Values are inserted and (almost) never replaced, like index entries whose key holds
         * the object's unique timestamp: the memtable appends without a hash table and sorts
         * when it is read or flushed; a key put twice still keeps its newest value.
         */
        bool insert_only;
};

static inline const uint8_t *lsm_key_of(const struct lsm_layout *layout, const void *value)
{
        return (const uint8_t *)value + layout->key_offset;
}

static inline int lsm_compare_u64_at(const uint8_t *a, const uint8_t *b)
{
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        return (x > y) - (x < y);
}

static inline int lsm_compare_u128_at(const uint8_t *a, const uint8_t *b)
{
        u128 x, y;
        memcpy(&x, a, 16);
        memcpy(&y, b, 16);
        return (x > y) - (x < y);
}

/* Orders two keys of `layout`: negative, 0 or positive, as layout->compare does. */
static inline int lsm_key_compare(const struct lsm_layout *layout, const void *key_a,
                                  const void *key_b)
{
        const uint8_t *a = key_a, *b = key_b;
        int c;
        switch (layout->key_kind) {
        case LSM_KEY_U64:
                return lsm_compare_u64_at(a, b);
        case LSM_KEY_U128:
                return lsm_compare_u128_at(a, b);
        case LSM_KEY_U64_U64:
                c = lsm_compare_u64_at(a, b);
                return c != 0 ? c : lsm_compare_u64_at(a + 8, b + 8);
        case LSM_KEY_U128_U64:
                c = lsm_compare_u128_at(a, b);
                return c != 0 ? c : lsm_compare_u64_at(a + 16, b + 16);
        default:
                return layout->compare(a, b);
        }
}

/*
 * The key as three 64-bit words, most significant first, whose lexicographic order is the
 * key's order (unused words 0). LSM_KEY_CUSTOM keys have no such form: false.
 */
static inline bool lsm_key_words(const struct lsm_layout *layout, const void *key_in,
                                 uint64_t words[3])
{
        const uint8_t *key = key_in;
        words[0] = words[1] = words[2] = 0;
        switch (layout->key_kind) {
        case LSM_KEY_U64:
                memcpy(&words[0], key, 8);
                return true;
        case LSM_KEY_U128:
        case LSM_KEY_U64_U64:
                /* u128: the high half (bytes 8..15) first; (u64, u64): bytes 0..7 first. */
                memcpy(&words[0], key + (layout->key_kind == LSM_KEY_U128 ? 8 : 0), 8);
                memcpy(&words[1], key + (layout->key_kind == LSM_KEY_U128 ? 0 : 8), 8);
                return true;
        case LSM_KEY_U128_U64:
                memcpy(&words[0], key + 8, 8);
                memcpy(&words[1], key, 8);
                memcpy(&words[2], key + 16, 8);
                return true;
        default:
                return false;
        }
}

/* One data block's entry in a table's index block. */
struct lsm_index_entry {
        uint8_t key_min[LSM_KEY_SIZE_MAX];
        uint8_t key_max[LSM_KEY_SIZE_MAX];
        struct lsm_block_ref data;
};
_Static_assert(sizeof(struct lsm_index_entry) == 96, "index entry size");
_Static_assert(LSM_TABLE_DATA_BLOCKS_MAX * sizeof(struct lsm_index_entry) <= LSM_BLOCK_PAYLOAD_MAX,
               "an index block holds every data block of a table");

/*
 * The key filter: a split-block Bloom filter in the index block's space after the largest
 * index the layout's tables can have, up to the end of the block, in buckets of 256 bits. A key
 * sets one bit in each of the eight 32-bit words of one bucket; a lookup that finds any of them
 * clear skips the table without searching its index or reading a data block (a miss-bound
 * binary search of 11 probes). The filter costs no memory (it is read through the cache with
 * the index block) and no extra block. Its false positive rate follows the bits per key, so
 * tables of filtered layouts are capped at the data blocks that leave the filter at least
 * LSM_TABLE_FILTER_BITS_PER_KEY_MIN bits per key (13 blocks of 24-byte values: 14.5 bits, about
 * 0.2 % of absent keys pass), unless the layout sets table_data_blocks_max. An index block holds
 * a filter when its size reaches the end of the block; its header's filter_offset says where
 * the filter starts.
 *
 * Each new id is looked up in one table per level-0 flush and per deeper level, and a filter
 * that passes it costs a 64 KiB block read and checksum: at 7 bits per key (5.4 % of absent
 * keys pass), the tables written before 2026-12-03, those reads took 27 % of the loop at 50 M
 * random transfers.
 * Their index blocks say filter_offset 0 and keep their filter where 7 bits put it.
 */
#define LSM_TABLE_FILTER_BUCKET_SIZE 32u
#define LSM_TABLE_FILTER_BITS_PER_KEY_MIN 14u
#define LSM_TABLE_FILTER_BITS_PER_KEY_LEGACY 7u

/*
 * Filter pages (2026-12-06): a filter is checked 4 KiB at a time when its index block is not
 * cached. The id maps' index blocks are nearly all filter (64 KiB per 35,464 ids), and a batch
 * of random ids probes nearly every table of a deep level: once they outgrow the block cache
 * (with `--cache=32MiB` past 12 M random transfers, with the default 512 MiB somewhere past
 * 150 M), every table a batch touched cost a 64 KiB read and checksum for the one bucket of
 * each of its few new ids. An index block written since holds, just before its filter, the
 * checksums of its 4 KiB pages 1-15 (`page_sums`, 16 words, the first 0), and its reference's
 * `reserved` word holds the checksum of page 0 (the header, the entries, that table and the
 * filter's start); both are lsm_table_filter_page_sum, never 0. So page 0 is verified against
 * the manifest, and any other page against page 0: a new id is ruled out of a table by 8 KiB
 * read from the device (page 0 and its bucket's page) instead of 64 KiB, and no cache slot is
 * taken. A page that does not read or check rules nothing out (the ordinary lookup reads the
 * whole block and names the fault). Blocks written before say `reserved` 0 and are read whole.
 */
#define LSM_TABLE_FILTER_PAGE_SIZE 4096u
#define LSM_TABLE_FILTER_PAGES (LSM_BLOCK_SIZE / LSM_TABLE_FILTER_PAGE_SIZE)
#define LSM_TABLE_FILTER_PAGE_SUMS_SIZE (LSM_TABLE_FILTER_PAGES * 8u)

/* Data blocks per table of `layout`. */
uint32_t lsm_table_data_blocks_max(const struct lsm_layout *layout);
/* Where the filter starts in an index block of `layout` written now. */
uint32_t lsm_table_filter_offset(const struct lsm_layout *layout);
/* Where it starts in one whose header says filter_offset 0 (written before the field). */
uint32_t lsm_table_filter_offset_legacy(const struct lsm_layout *layout);

/* A page's checksum (never 0: 0 says the block has no page checksums). */
uint64_t lsm_table_filter_page_sum(const uint8_t *page);
/*
 * In a paged index block's page 0 (verified by the caller against index.reserved): the page
 * that holds the filter bucket of a key of this hash, with the bucket's offset in that page in
 * *at; LSM_TABLE_FILTER_PAGES if page 0 holds no paged filter (every key may be there).
 */
uint32_t lsm_table_filter_page_of(const uint8_t *page0, uint64_t hash, uint32_t *at);
/* Whether page `number` (1..15) of that index block is the one page 0 names. */
bool lsm_table_filter_page_check(const uint8_t *page0, uint32_t number, const uint8_t *page);

/* A 64-bit hash of a key (memtable hash tables and filters). */
static inline uint64_t lsm_key_hash(const struct lsm_layout *layout, const void *key_in)
{
        const uint8_t *key = key_in;
        uint32_t size = layout->key_size;
        uint64_t h = 0x9E3779B97F4A7C15ull ^ size;
        uint32_t whole = size & ~7u; /* every key kind but custom ones: all of it */
        for (uint32_t i = 0; i < whole; i += 8) {
                uint64_t word;
                memcpy(&word, key + i, 8);
                h = (h ^ word) * 0xBF58476D1CE4E5B9ull;
                h ^= h >> 31;
        }
        if (whole < size) {
                uint64_t word = 0;
                memcpy(&word, key + whole, size - whole);
                h = (h ^ word) * 0xBF58476D1CE4E5B9ull;
                h ^= h >> 31;
        }
        return h;
}

/*
 * Where an index block's filter starts (its header's filter_offset, or `legacy_offset` when
 * that says 0), or 0 if it has none. With the next two, a batch of keys probed against one
 * table computes this once (lsm_tree_may_contain).
 */
uint32_t lsm_table_filter_start(const uint8_t *index_block, uint32_t legacy_offset);
extern const uint32_t lsm_table_filter_salt[8];

/* Where in its index block the bucket of a key of this hash is, for a filter at `offset`. */
static inline uint32_t lsm_table_filter_bucket_place(uint32_t offset, uint64_t hash)
{
        uint32_t buckets = (LSM_BLOCK_SIZE - offset) / LSM_TABLE_FILTER_BUCKET_SIZE;
        uint32_t bucket = (uint32_t)(((hash >> 32) * buckets) >> 32);
        return offset + bucket * LSM_TABLE_FILTER_BUCKET_SIZE;
}

/* The bucket of a key of this hash in a filter starting at `offset` (non-zero). */
static inline const void *lsm_table_filter_bucket_in(const uint8_t *index_block, uint32_t offset,
                                                     uint64_t hash)
{
        return index_block + lsm_table_filter_bucket_place(offset, hash);
}

/* False if the key of this hash was never added to the filter holding `bucket`. */
static inline bool lsm_table_filter_bucket_may_contain(const void *bucket, uint64_t hash)
{
        const uint32_t *words = bucket;
        uint32_t missing = 0;
        for (uint32_t i = 0; i < 8; i++)
                missing |= ~words[i] & (1u << (((uint32_t)hash * lsm_table_filter_salt[i]) >> 27));
        return missing == 0;
}

/* False if the table whose index block this is cannot hold `key` (true without a filter). */
bool lsm_table_filter_may_contain(const struct lsm_layout *layout, const uint8_t *index_block,
                                  const void *key);
/* The same with the key's lsm_key_hash already computed (one hash for every table). */
bool lsm_table_filter_may_contain_hash(const struct lsm_layout *layout,
                                       const uint8_t *index_block, uint64_t hash);
/* The filter bucket a key of this hash maps to (to prefetch it), or NULL without a filter. */
const void *lsm_table_filter_bucket(const struct lsm_layout *layout, const uint8_t *index_block,
                                    uint64_t hash);
/* The same two with the layout's lsm_table_filter_offset_legacy computed once. */
const void *lsm_table_filter_bucket_at(const uint8_t *index_block, uint32_t legacy_offset,
                                       uint64_t hash);
bool lsm_table_filter_may_contain_at(const uint8_t *index_block, uint32_t legacy_offset,
                                     uint64_t hash);

/* What the manifest keeps of a table. */
struct lsm_table_info {
        uint8_t key_min[LSM_KEY_SIZE_MAX];
        uint8_t key_max[LSM_KEY_SIZE_MAX];
        struct lsm_block_ref index;
        uint64_t value_count;
        uint32_t data_block_count;
        uint32_t reserved;
};

static inline uint32_t lsm_values_per_block(const struct lsm_layout *layout)
{
        return LSM_BLOCK_PAYLOAD_MAX / layout->value_size;
}

/*
 * Builds tables from values added in strictly increasing key order. A table is finished (and
 * handed to `on_table`) when it reaches LSM_TABLE_DATA_BLOCKS_MAX data blocks or at
 * lsm_table_builder_finish(). Memory: two blocks, reserved at init.
 */
struct lsm_table_builder {
        const struct lsm_layout *layout;
        struct lsm_grid *grid;
        uint8_t *data;  /* the data block being filled */
        uint8_t *index; /* the index block being filled */
        uint32_t data_count;
        uint32_t index_count;
        uint64_t table_values;
        bool failed; /* a write failed: grid->error says why */
        void (*on_table)(void *context, const struct lsm_table_info *table);
        void *context;
        /* The layout's constants, computed once (each costs divisions): */
        uint32_t values_per_block;
        uint32_t data_blocks_max;
        uint32_t filter_offset; /* 0: no filter */
        bool filter_paged;      /* the filter starts in page 0: its pages are checksummed */
};

int lsm_table_builder_init(struct lsm_table_builder *builder, const struct lsm_layout *layout,
                           struct lsm_grid *grid,
                           void (*on_table)(void *context, const struct lsm_table_info *table),
                           void *context);
void lsm_table_builder_deinit(struct lsm_table_builder *builder);
/* Forgets a table half built (a job dropped on a fault): the next value starts a new table. */
void lsm_table_builder_reset(struct lsm_table_builder *builder);
/* False if a block could not be written (grid->error); the builder is then unusable. */
bool lsm_table_builder_add(struct lsm_table_builder *builder, const void *value);
/*
 * Adds `count` values stored one after another, in key order and after every value added so
 * far: lsm_table_builder_add of each, with one copy per block they fill (a merge hands over the
 * runs of one input that fall between two values of the other).
 */
bool lsm_table_builder_add_run(struct lsm_table_builder *builder, const uint8_t *values,
                               uint32_t count);
bool lsm_table_builder_finish(struct lsm_table_builder *builder);

/*
 * Finds `key` in a table: 1 and the value copied to `out`, 0 if absent, -1 if a block could not
 * be read (grid->error names it).
 */
int lsm_table_get(struct lsm_grid *grid, const struct lsm_layout *layout,
                  const struct lsm_table_info *table, const void *key, void *out);

/*
 * Searches within blocks already at hand (for lookups that step through the cache): the data
 * block of an index block that may hold `key` (false if none), and a value in a data block.
 */
bool lsm_table_index_find(const struct lsm_layout *layout, const uint8_t *index_block,
                          const void *key, struct lsm_block_ref *data);
/* The same without the filter: only the header and the entries are read (a filter's page 0). */
bool lsm_table_index_entry_find(const struct lsm_layout *layout, const uint8_t *index_block,
                                const void *key, struct lsm_block_ref *data);
bool lsm_table_data_find(const struct lsm_layout *layout, const uint8_t *data_block,
                         const void *key, void *out);

/*
 * A cursor over one table's values in key order (or reversed), with its own copy of the current
 * data block so that any number of cursors can be open at once whatever the cache does.
 */
struct lsm_table_cursor {
        const struct lsm_layout *layout;
        struct lsm_grid *grid;
        struct lsm_table_info table;
        uint8_t *block;       /* LSM_BLOCK_SIZE, owned */
        int32_t data_index;   /* current data block in the index */
        int32_t value_index;  /* current value in the block */
        uint32_t value_count; /* values in the current block */
        bool reversed;
        bool done;
        bool failed; /* grid->error says why */
        struct lsm_block_ref loaded; /* the data block in `block` (address 0: none) */
        /*
         * Data blocks not in the cache are read into `block` without entering it: a merge
         * reads each input block once, and through the cache it cost a 64 KiB copy more and
         * evicted blocks that lookups use. Set by the merge of a compaction job.
         */
        bool uncached;
        /* Uncached only: data blocks [0, hinted) of `table` were named to the device's
         * prefetch, so that a merge reading them in order does not wait for each in turn. */
        int32_t hinted;
};

/* Data blocks an uncached cursor names to the device ahead of the one it reads. */
#define LSM_TABLE_CURSOR_READ_AHEAD 8

int lsm_table_cursor_init(struct lsm_table_cursor *cursor, const struct lsm_layout *layout,
                          struct lsm_grid *grid);
void lsm_table_cursor_deinit(struct lsm_table_cursor *cursor);
/* Positions at the first value >= key (reversed: the last value <= key); key NULL: the end. */
void lsm_table_cursor_seek(struct lsm_table_cursor *cursor, const struct lsm_table_info *table,
                           const void *key, bool reversed);
/*
 * The data block such a seek of `table` reads first, from its index block (so that the blocks
 * of many seeks can be read at once); address 0 if it reads none.
 */
struct lsm_block_ref lsm_table_seek_block(const struct lsm_layout *layout,
                                          const uint8_t *index_block,
                                          const struct lsm_table_info *table, const void *key,
                                          bool reversed);
/* The current value, or NULL when done (or failed). */
const uint8_t *lsm_table_cursor_value(const struct lsm_table_cursor *cursor);
void lsm_table_cursor_next(struct lsm_table_cursor *cursor);
/*
 * Forward cursors only: the values left in the data block the cursor holds, from the current
 * one (*values, stored one after another), 0 when done; and a step over `count` <= that many
 * (to the next block when it reaches the end of this one).
 */
uint32_t lsm_table_cursor_run(const struct lsm_table_cursor *cursor, const uint8_t **values);
void lsm_table_cursor_skip(struct lsm_table_cursor *cursor, uint32_t count);

#endif
