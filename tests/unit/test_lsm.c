/*
 * test_lsm.c: the LSM core (src/lsm/) on an in-memory block device.
 *
 * Checked: the block format names what is wrong with a block (damaged, misdirected, stale,
 * wrong kind); the free set hands out the lowest address and frees released blocks only at a
 * checkpoint; tables answer lookups and walk in both directions from any key; a tree under
 * random inserts and overwrites, flushes and compactions answers every lookup and every scan
 * (bounds, reversed, stopped early) exactly as a simple model does, with a cache far smaller
 * than the data, also when compaction advances in bounded steps between writes; keys that only grow are moved down levels, never rewritten; and a damaged or
 * misdirected block on the device is reported by address instead of returning a wrong value;
 * a forest's checkpoint, reopened after a crash (with work and an unfinished checkpoint after
 * it), restores exactly the trees and free set it captured, and nothing it references was
 * overwritten; and a prefetch of thousands of lookups over an asynchronous device that completes
 * reads in random order resolves every one exactly as a synchronous lookup does, sharing reads
 * of the same block, even with a cache of 8 blocks, and names a damaged block; a groove of
 * objects with an id map and field indexes answers lookups by id and every combination of
 * filters, ranges, order and limit exactly as a brute-force scan of a model does, at a cost
 * that follows the results.
 */
#include "test.h"

#include "lsm/compactor.h"
#include "lsm/forest.h"
#include "lsm/manifest.h"
#include "lsm/groove.h"
#include "lsm/prefetch.h"

#include <errno.h>

/* ---- the device --------------------------------------------------------------------------- */

#define DEVICE_BLOCKS 65536u

struct memory_device {
        uint8_t *blocks[DEVICE_BLOCKS + 1];
        /* Writes since the last durable checkpoint, for a crash to decide their fate. */
        bool journal;
        uint64_t journal_addresses[4096];
        uint8_t *journal_before[4096]; /* the content before the write (NULL: never written) */
        uint32_t journal_count;
        uint64_t misdirect_from; /* a write to this address lands at misdirect_to */
        uint64_t misdirect_to;
        uint64_t fail_read; /* reads of this address fail with EIO */
};

static struct memory_device device_state;

static int device_read(void *context, uint64_t address, uint8_t *block)
{
        struct memory_device *d = context;
        tally_assert(address > 0 && address <= DEVICE_BLOCKS);
        if (address == d->fail_read)
                return -EIO;
        if (d->blocks[address] == NULL)
                memset(block, 0, LSM_BLOCK_SIZE);
        else
                memcpy(block, d->blocks[address], LSM_BLOCK_SIZE);
        return 0;
}

static int device_write(void *context, uint64_t address, const uint8_t *block)
{
        struct memory_device *d = context;
        tally_assert(address > 0 && address <= DEVICE_BLOCKS);
        if (address == d->misdirect_from)
                address = d->misdirect_to;
        if (d->journal) {
                tally_assert(d->journal_count < 4096);
                uint8_t *before = NULL;
                if (d->blocks[address] != NULL) {
                        before = malloc(LSM_BLOCK_SIZE);
                        tally_assert(before != NULL);
                        memcpy(before, d->blocks[address], LSM_BLOCK_SIZE);
                }
                d->journal_addresses[d->journal_count] = address;
                d->journal_before[d->journal_count++] = before;
        }
        if (d->blocks[address] == NULL)
                d->blocks[address] = malloc(LSM_BLOCK_SIZE);
        tally_assert(d->blocks[address] != NULL);
        memcpy(d->blocks[address], block, LSM_BLOCK_SIZE);
        return 0;
}

static void journal_clear(void)
{
        for (uint32_t i = 0; i < device_state.journal_count; i++)
                free(device_state.journal_before[i]);
        device_state.journal_count = 0;
}

static void device_reset(void)
{
        journal_clear();
        device_state.journal = false;
        for (uint32_t i = 0; i <= DEVICE_BLOCKS; i++) {
                free(device_state.blocks[i]);
                device_state.blocks[i] = NULL;
        }
        device_state.misdirect_from = device_state.misdirect_to = device_state.fail_read = 0;
}

static const struct lsm_device device = {
        .context = &device_state,
        .read = device_read,
        .write = device_write,
};

/* ---- a tree of 32-byte values, key u64 at offset 8 ---------------------------------------- */

struct value {
        uint64_t payload_a;
        uint64_t key;
        uint64_t payload_b;
        uint64_t version;
};

static int compare_u64(const void *a, const void *b)
{
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        return x < y ? -1 : x > y;
}

static const struct lsm_layout layout = {
        .tree = 7,
        .value_size = sizeof(struct value),
        .key_size = 8,
        .key_offset = 8,
        .compare = compare_u64,
};

/* The same with tables of two data blocks (4,092 values), so that small data fills 4 levels. */
static const struct lsm_layout layout_small_tables = {
        .tree = 8,
        .value_size = sizeof(struct value),
        .key_size = 8,
        .key_offset = 8,
        .compare = compare_u64,
        .table_data_blocks_max = 2,
};

static struct value value_make(uint64_t key, uint64_t version)
{
        return (struct value){.payload_a = key * 3 + 1, .key = key, .payload_b = ~key,
                              .version = version};
}

static uint64_t rng_state = 1;
static uint64_t rng(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

/* ---- key kinds ---------------------------------------------------------------------------- */

static int sign(int c)
{
        return (c > 0) - (c < 0);
}

static int compare_u128_ref(const void *a, const void *b)
{
        u128 x, y;
        memcpy(&x, a, 16);
        memcpy(&y, b, 16);
        return x < y ? -1 : x > y;
}

static int compare_u64_u64_ref(const void *a, const void *b)
{
        int c = compare_u64(a, b);
        return c != 0 ? c : compare_u64((const uint8_t *)a + 8, (const uint8_t *)b + 8);
}

static int compare_u128_u64_ref(const void *a, const void *b)
{
        int c = compare_u128_ref(a, b);
        return c != 0 ? c : compare_u64((const uint8_t *)a + 16, (const uint8_t *)b + 16);
}

static int compare_words(const uint64_t *a, const uint64_t *b)
{
        for (uint32_t i = 0; i < 3; i++)
                if (a[i] != b[i])
                        return a[i] < b[i] ? -1 : 1;
        return 0;
}

/* The inline comparisons and key words of each key kind order keys as its compare does. */
static void test_key_kinds(void)
{
        const struct lsm_layout layouts[] = {
                {.value_size = 32, .key_size = 8, .compare = compare_u64,
                 .key_kind = LSM_KEY_U64},
                {.value_size = 32, .key_size = 16, .compare = compare_u128_ref,
                 .key_kind = LSM_KEY_U128},
                {.value_size = 32, .key_size = 16, .compare = compare_u64_u64_ref,
                 .key_kind = LSM_KEY_U64_U64},
                {.value_size = 32, .key_size = 24, .compare = compare_u128_u64_ref,
                 .key_kind = LSM_KEY_U128_U64},
        };
        rng_state = 99;
        uint32_t wrong = 0;
        for (uint32_t k = 0; k < sizeof(layouts) / sizeof(layouts[0]); k++) {
                const struct lsm_layout *l = &layouts[k];
                for (uint32_t i = 0; i < 20000; i++) {
                        uint8_t a[24], b[24];
                        for (uint32_t w = 0; w < 3; w++) {
                                /* Few distinct words, so that equal fields are common. */
                                uint64_t x = rng() % 3 == 0 ? rng() % 4 : rng();
                                uint64_t y = rng() % 2 == 0 ? x : rng() % 4;
                                memcpy(a + 8 * w, &x, 8);
                                memcpy(b + 8 * w, &y, 8);
                        }
                        int expected = sign(l->compare(a, b));
                        uint64_t wa[3], wb[3];
                        CHECK(lsm_key_words(l, a, wa) && lsm_key_words(l, b, wb));
                        if (sign(lsm_key_compare(l, a, b)) != expected ||
                            compare_words(wa, wb) != expected)
                                wrong++;
                }
        }
        CHECK_EQ_U64(wrong, 0);
}

/* ---- block format and free set ------------------------------------------------------------ */

static void test_block_check(void)
{
        device_reset();
        uint8_t *block = aligned_alloc(4096, LSM_BLOCK_SIZE);
        memset(block, 0xab, LSM_BLOCK_SIZE);
        struct lsm_block_ref ref = lsm_block_seal(block, 12, LSM_BLOCK_TABLE_DATA, 1, 32, 3, 200);
        CHECK(lsm_block_check(block, ref, LSM_BLOCK_TABLE_DATA) == NULL);
        CHECK(strstr(lsm_block_check(block, ref, LSM_BLOCK_TABLE_INDEX), "expected") != NULL);
        struct lsm_block_ref elsewhere = ref;
        elsewhere.address = 13;
        CHECK(strstr(lsm_block_check(block, elsewhere, LSM_BLOCK_TABLE_DATA), "misdirected") !=
              NULL);
        struct lsm_block_ref stale = ref;
        stale.checksum ^= 1;
        CHECK(strstr(lsm_block_check(block, stale, LSM_BLOCK_TABLE_DATA), "stale") != NULL);
        block[100] ^= 4;
        CHECK(strstr(lsm_block_check(block, ref, LSM_BLOCK_TABLE_DATA), "checksum") != NULL);
        block[100] ^= 4;
        block[300] ^= 4; /* past `size`: not part of the block */
        CHECK(lsm_block_check(block, ref, LSM_BLOCK_TABLE_DATA) == NULL);
        memset(block, 0, LSM_BLOCK_SIZE);
        CHECK(strstr(lsm_block_check(block, ref, LSM_BLOCK_TABLE_DATA), "never written") != NULL);
        free(block);
}

/* Cursors' block buffers come back for the next cursors, up to a bound; the rest are freed
 * (and the kept ones with the grid: AddressSanitizer's leak check sees either mistake). */
static void test_grid_buffers(void)
{
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, 130, 8) == 0);
        uint8_t *first = lsm_grid_buffer_get(&grid);
        CHECK(first != NULL && (uintptr_t)first % 4096 == 0);
        memset(first, 0xab, LSM_BLOCK_SIZE); /* the whole block is writable */
        lsm_grid_buffer_put(&grid, first);
        CHECK(lsm_grid_buffer_get(&grid) == first); /* kept, handed out again */
        uint8_t *many[LSM_GRID_BUFFERS_KEPT + 6];
        many[0] = first;
        for (uint32_t i = 1; i < ARRAY_LEN(many); i++) {
                many[i] = lsm_grid_buffer_get(&grid);
                CHECK(many[i] != NULL && many[i] != many[i - 1]);
        }
        for (uint32_t i = 0; i < ARRAY_LEN(many); i++)
                lsm_grid_buffer_put(&grid, many[i]);
        CHECK_EQ_U64(grid.buffer_count, LSM_GRID_BUFFERS_KEPT);
        lsm_grid_buffer_put(&grid, NULL); /* nothing to keep */
        CHECK_EQ_U64(grid.buffer_count, LSM_GRID_BUFFERS_KEPT);
        lsm_grid_deinit(&grid);
}

static void test_free_set(void)
{
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, 130, 8) == 0);
        for (uint64_t a = 1; a <= 130; a++)
                CHECK_EQ_U64(lsm_grid_acquire(&grid), a);
        CHECK_EQ_U64(lsm_grid_acquire(&grid), 0); /* full */
        CHECK_EQ_U64(lsm_grid_free_count(&grid), 0);
        lsm_grid_release(&grid, 70);
        lsm_grid_release(&grid, 3);
        CHECK_EQ_U64(lsm_grid_acquire(&grid), 0); /* released, not free before a checkpoint */
        lsm_grid_checkpoint_written(&grid);
        lsm_grid_release(&grid, 5); /* after the checkpoint was written: it still names 5 */
        lsm_grid_checkpoint(&grid);
        CHECK_EQ_U64(lsm_grid_free_count(&grid), 2);
        CHECK_EQ_U64(lsm_grid_acquire(&grid), 3); /* the lowest first */
        CHECK_EQ_U64(lsm_grid_acquire(&grid), 70);
        CHECK_EQ_U64(lsm_grid_acquire(&grid), 0);
        /* 5 is free once the next checkpoint (which does not name it) is durable. */
        lsm_grid_checkpoint_written(&grid);
        lsm_grid_checkpoint(&grid);
        CHECK_EQ_U64(lsm_grid_acquire(&grid), 5);
        lsm_grid_deinit(&grid);
}

/*
 * The cache hands out its memory in order as slots are first used, whatever sets the blocks
 * hash to: the first k blocks cached lie in the first k frames (a flush first-touches a few
 * huge pages, not one per block).
 */
static void test_grid_cache_frames(void)
{
        device_reset();
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        uint8_t *block = aligned_alloc(4096, LSM_BLOCK_SIZE);
        struct lsm_block_ref refs[12];
        for (uint32_t i = 0; i < 12; i++) {
                memset(block, (int)i + 1, LSM_BLOCK_SIZE);
                refs[i] = lsm_grid_write(&grid, block, LSM_BLOCK_TABLE_DATA, 1, 32, 4, 4096);
                CHECK(refs[i].address != 0);
        }
        CHECK_EQ_U64(grid.frames_used, 12);
        uint32_t in_order = 0;
        for (uint32_t i = 0; i < 12; i++) {
                const uint8_t *data = lsm_grid_cached(&grid, refs[i]);
                CHECK(data != NULL);
                if (data == NULL)
                        continue;
                in_order += data == grid.slots + (size_t)i * LSM_BLOCK_SIZE;
                CHECK_EQ_U64(data[LSM_BLOCK_SIZE / 32], i + 1); /* its own bytes, not another's */
        }
        CHECK_EQ_U64(in_order, 12);
        free(block);
        lsm_grid_deinit(&grid);
}

/* ---- tables ------------------------------------------------------------------------------- */

struct collected {
        struct lsm_table_info tables[64];
        uint32_t count;
};

static void collect(void *context, const struct lsm_table_info *table)
{
        struct collected *c = context;
        tally_assert(c->count < 64);
        c->tables[c->count++] = *table;
}

static void test_table(void)
{
        device_reset();
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 4) == 0);
        struct collected c = {.count = 0};
        struct lsm_table_builder builder;
        CHECK(lsm_table_builder_init(&builder, &layout, &grid, collect, &c) == 0);
        uint32_t per_block = lsm_values_per_block(&layout);
        uint32_t n = per_block * (LSM_TABLE_DATA_BLOCKS_MAX + 3) + 17; /* two tables */
        for (uint32_t i = 0; i < n; i++) {
                struct value v = value_make(10 + 2 * (uint64_t)i, i); /* even keys */
                CHECK(lsm_table_builder_add(&builder, &v));
        }
        CHECK(lsm_table_builder_finish(&builder));
        CHECK_EQ_U64(c.count, 2);
        CHECK_EQ_U64(c.tables[0].data_block_count, LSM_TABLE_DATA_BLOCKS_MAX);
        CHECK_EQ_U64(c.tables[0].value_count + c.tables[1].value_count, n);
        /* Lookups through a 4-block cache: every one reads from the device. */
        uint32_t wrong = 0;
        for (uint32_t i = 0; i < n; i += 97) {
                uint64_t key = 10 + 2 * (uint64_t)i;
                struct value out;
                const struct lsm_table_info *t = &c.tables[i < c.tables[0].value_count ? 0 : 1];
                if (lsm_table_get(&grid, &layout, t, &key, &out) != 1 || out.version != i)
                        wrong++;
                key++; /* odd: absent */
                if (lsm_table_get(&grid, &layout, t, &key, &out) != 0)
                        wrong++;
        }
        CHECK_EQ_U64(wrong, 0);
        CHECK(grid.stats.reads > 0);
        /* Cursors from many keys, both directions, against the arithmetic. */
        struct lsm_table_cursor cursor;
        CHECK(lsm_table_cursor_init(&cursor, &layout, &grid) == 0);
        const struct lsm_table_info *t = &c.tables[1];
        uint64_t first = 10 + 2 * c.tables[0].value_count;
        uint64_t last = 10 + 2 * ((uint64_t)n - 1);
        uint64_t probes[] = {0, first - 1, first, first + 1, first + 2 * per_block - 1,
                             first + 2 * per_block, (first + last) / 2, last - 1, last,
                             last + 1, last + 100};
        for (uint32_t p = 0; p < ARRAY_LEN(probes); p++) {
                for (int reversed = 0; reversed < 2; reversed++) {
                        uint64_t key = probes[p];
                        lsm_table_cursor_seek(&cursor, t, &key, reversed);
                        /* Expected first value: forward the smallest even >= key in range. */
                        uint64_t expect;
                        bool any;
                        if (!reversed) {
                                expect = key <= first ? first : key + (key % 2);
                                any = expect <= last;
                        } else {
                                expect = key >= last ? last : key - (key % 2);
                                any = key >= first;
                        }
                        uint32_t walked = 0;
                        const uint8_t *v;
                        bool ordered = true;
                        while ((v = lsm_table_cursor_value(&cursor)) != NULL && walked < 3 * per_block) {
                                const struct value *value = (const struct value *)v;
                                if (value->key != expect)
                                        ordered = false;
                                expect = reversed ? expect - 2 : expect + 2;
                                walked++;
                                lsm_table_cursor_next(&cursor);
                        }
                        CHECK(ordered);
                        CHECK(any == (walked > 0));
                }
        }
        /* A compaction's cursor (uncached) walks the whole table and leaves the cache as it
         * was: each block it did not find there is read from the device into its own buffer. */
        t = &c.tables[0]; /* 128 data blocks through a cache of 8 */
        first = 10;
        CHECK(lsm_grid_read(&grid, t->index, LSM_BLOCK_TABLE_INDEX) != NULL); /* cached */
        uint64_t cached_before[8];
        tally_assert(grid.slot_count <= ARRAY_LEN(cached_before));
        memcpy(cached_before, grid.slot_address, grid.slot_count * sizeof(uint64_t));
        uint64_t reads_before = grid.stats.reads;
        cursor.uncached = true;
        lsm_table_cursor_seek(&cursor, t, &first, false);
        uint64_t expect = first, walked = 0;
        bool ordered = true;
        for (const uint8_t *v; (v = lsm_table_cursor_value(&cursor)) != NULL; walked++) {
                ordered = ordered && ((const struct value *)v)->key == expect;
                expect += 2;
                lsm_table_cursor_next(&cursor);
        }
        CHECK(ordered);
        CHECK_EQ_U64(walked, t->value_count);
        CHECK(memcmp(cached_before, grid.slot_address, grid.slot_count * sizeof(uint64_t)) == 0);
        CHECK(grid.stats.reads - reads_before + grid.slot_count >= t->data_block_count);
        lsm_table_cursor_deinit(&cursor);
        lsm_table_builder_deinit(&builder);
        lsm_grid_deinit(&grid);
}

/*
 * Searches within blocks guess a key's position from the block's first and last key: for each
 * key kind, tables of evenly spread, clustered, sequential and two-humped keys answer every
 * lookup (present and absent) and every cursor seek exactly as a binary search of the sorted
 * keys does.
 */
#define SEARCH_KEYS 30000u

struct search_key {
        uint64_t words[3];
};

static struct search_key search_keys[SEARCH_KEYS];

static int compare_search_keys(const void *a, const void *b)
{
        return compare_words(((const struct search_key *)a)->words,
                             ((const struct search_key *)b)->words);
}

/* Key bytes of `kind` whose lsm_key_words are `words`. */
static void search_key_bytes(uint8_t kind, const uint64_t words[3], uint8_t out[24])
{
        memset(out, 0, 24);
        switch (kind) {
        case LSM_KEY_U64:
                memcpy(out, &words[0], 8);
                break;
        case LSM_KEY_U128:
                memcpy(out + 8, &words[0], 8);
                memcpy(out, &words[1], 8);
                break;
        case LSM_KEY_U64_U64:
                memcpy(out, &words[0], 8);
                memcpy(out + 8, &words[1], 8);
                break;
        default: /* LSM_KEY_U128_U64 */
                memcpy(out + 8, &words[0], 8);
                memcpy(out, &words[1], 8);
                memcpy(out + 16, &words[2], 8);
                break;
        }
}

static uint64_t search_word(uint32_t distribution, uint32_t i)
{
        switch (distribution) {
        case 0: return rng(); /* random ids */
        case 1: return rng() % 16; /* a few hot accounts */
        case 2: return 1000 + i; /* sequential ids or timestamps */
        case 3: return rng() % 2 ? rng() % 1000 : (1ull << 63) + rng() % 1000; /* two humps */
        default: return 0;
        }
}

/* The first sorted key >= words (reversed: the last <= words), or -1. */
static int64_t search_expect(uint32_t n, const uint64_t words[3], bool reversed)
{
        uint32_t lo = 0, hi = n;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (compare_words(search_keys[mid].words, words) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (!reversed)
                return lo < n ? (int64_t)lo : -1;
        if (lo < n && compare_words(search_keys[lo].words, words) == 0)
                return lo;
        return (int64_t)lo - 1;
}

/*
 * The key filter of the id maps' layout (24-byte values, u128 keys): a full table passes every
 * key it holds and few absent ones, its header says where the filter starts; an index block
 * written before that field existed (filter_offset 0, the filter where 7 bits per key put it,
 * made here bit by bit as format 2 made it) is still read right.
 */
#define FILTER_PROBES 200000u
static uint64_t filter_key_hash(const struct lsm_layout *l, uint64_t i, uint64_t salt)
{
        uint8_t key[16];
        uint64_t words[2] = {i * 0x9E3779B97F4A7C15ull + salt, i ^ salt};
        memcpy(key, words, 16);
        return lsm_key_hash(l, key);
}

static void test_table_filter(void)
{
        static const uint32_t salt[8] = {0x47b6137bu, 0x44974d91u, 0x8824ad5bu, 0xa2b7289du,
                                         0x705495c7u, 0x2df1424bu, 0x9efc4947u, 0x5c6bfb31u};
        struct lsm_layout l = {.tree = 9, .value_size = 24, .key_size = 16,
                               .compare = compare_u128_ref, .key_kind = LSM_KEY_U128,
                               .filter = true};
        device_reset();
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        uint32_t blocks = lsm_table_data_blocks_max(&l);
        uint32_t n = blocks * lsm_values_per_block(&l);
        /* At least 14 bits per key of the block's space after the index. */
        CHECK((uint64_t)(LSM_BLOCK_SIZE - lsm_table_filter_offset(&l)) * 8 >= (uint64_t)n * 14);
        uint8_t (*keys)[24] = calloc(n, 24);
        CHECK(keys != NULL);
        for (uint32_t i = 0; i < n; i++) {
                uint64_t words[2] = {(uint64_t)i * 0x9E3779B97F4A7C15ull + 1, i ^ 1ull};
                memcpy(keys[i], words, 16);
        }
        qsort(keys, n, 24, compare_u128_ref);
        struct collected c = {.count = 0};
        struct lsm_table_builder builder;
        CHECK(lsm_table_builder_init(&builder, &l, &grid, collect, &c) == 0);
        for (uint32_t i = 0; i < n; i++)
                CHECK(lsm_table_builder_add(&builder, keys[i]));
        CHECK(lsm_table_builder_finish(&builder));
        lsm_table_builder_deinit(&builder);
        CHECK_EQ_U64(c.count, 1);
        const uint8_t *index = lsm_grid_read(&grid, c.tables[0].index, LSM_BLOCK_TABLE_INDEX);
        CHECK(index != NULL);
        if (index == NULL) {
                free(keys);
                lsm_grid_deinit(&grid);
                return;
        }
        const struct lsm_block_header *h = (const struct lsm_block_header *)index;
        CHECK_EQ_U64(h->filter_offset, lsm_table_filter_offset(&l));
        CHECK_EQ_U64(h->count, blocks);
        uint32_t missed = 0, passed = 0;
        for (uint32_t i = 0; i < n; i++)
                missed += !lsm_table_filter_may_contain(&l, index, keys[i]);
        for (uint64_t i = 0; i < FILTER_PROBES; i++)
                passed += lsm_table_filter_may_contain_hash(&l, index,
                                                            filter_key_hash(&l, i, 0xabcdef));
        CHECK_EQ_U64(missed, 0);
        CHECK(passed < FILTER_PROBES / 200); /* under 0.5 % (14.5 bits: about 0.2 %) */
        uint32_t passed_now = passed;

        /* A format-2 index block: entries as before, header filter_offset 0, filter at the
         * offset of 7 bits per key for as many keys as 7 bits leave room for. */
        uint32_t legacy = lsm_table_filter_offset_legacy(&l);
        CHECK(legacy > lsm_table_filter_offset(&l));
        CHECK_EQ_U64(legacy, 2560); /* 26 data blocks of 96-byte entries after the header */
        uint8_t *old = aligned_alloc(4096, LSM_BLOCK_SIZE);
        CHECK(old != NULL);
        memcpy(old, index, LSM_BLOCK_SIZE);
        memset(old + legacy, 0, LSM_BLOCK_SIZE - legacy);
        uint32_t legacy_keys = 26 * lsm_values_per_block(&l);
        uint32_t buckets = (LSM_BLOCK_SIZE - legacy) / LSM_TABLE_FILTER_BUCKET_SIZE;
        for (uint64_t i = 0; i < legacy_keys; i++) {
                uint64_t hash = filter_key_hash(&l, i, 0x5eed);
                uint32_t bucket = (uint32_t)(((hash >> 32) * buckets) >> 32);
                uint32_t *words = (uint32_t *)(old + legacy +
                                               (size_t)bucket * LSM_TABLE_FILTER_BUCKET_SIZE);
                for (uint32_t w = 0; w < 8; w++)
                        words[w] |= 1u << (((uint32_t)hash * salt[w]) >> 27);
        }
        ((struct lsm_block_header *)old)->filter_offset = 0;
        missed = passed = 0;
        for (uint64_t i = 0; i < legacy_keys; i++)
                missed += !lsm_table_filter_may_contain_hash(&l, old,
                                                             filter_key_hash(&l, i, 0x5eed));
        for (uint64_t i = 0; i < FILTER_PROBES; i++)
                passed += lsm_table_filter_may_contain_hash(&l, old,
                                                            filter_key_hash(&l, i, 0xabcdef));
        CHECK_EQ_U64(missed, 0);
        /* 7.1 bits per key: a few per cent pass, as they did. */
        CHECK(passed > FILTER_PROBES / 100 && passed < FILTER_PROBES / 10);
        printf("filter: %u absent keys of %u passed a table of %u keys (%u data blocks), "
               "%u passed a format-2 table of %u\n",
               passed_now, FILTER_PROBES, n, blocks, passed, legacy_keys);
        /* An offset that is no filter's (inside the entries) reads as no filter. */
        ((struct lsm_block_header *)old)->filter_offset = LSM_BLOCK_HEADER_SIZE;
        CHECK(lsm_table_filter_may_contain_hash(&l, old, filter_key_hash(&l, 1, 0xabcdef)));
        CHECK(lsm_table_filter_bucket(&l, old, 1) == NULL);
        free(old);
        free(keys);
        lsm_grid_deinit(&grid);
}

static void test_table_search(void)
{
        static const uint8_t kinds[] = {LSM_KEY_U64, LSM_KEY_U128, LSM_KEY_U64_U64,
                                        LSM_KEY_U128_U64};
        static const uint8_t key_sizes[] = {8, 16, 16, 24};
        static const uint32_t used_words[] = {1, 2, 2, 3};
        /* Per shape, the distribution of each word (4: always 0). */
        static const uint32_t shapes[][3] = {
                {0, 0, 0}, {1, 0, 2}, {2, 2, 2}, {3, 3, 0}, {4, 2, 2}, {1, 1, 2}, {3, 0, 1},
        };
        rng_state = 7;
        uint32_t wrong_get = 0, wrong_seek = 0, checked = 0;
        for (uint32_t k = 0; k < ARRAY_LEN(kinds); k++) {
                struct lsm_layout l = {.tree = 9, .value_size = 32, .key_size = key_sizes[k],
                                       .compare = compare_u64, .key_kind = kinds[k]};
                for (uint32_t s = 0; s < ARRAY_LEN(shapes); s++) {
                        device_reset();
                        struct lsm_grid grid;
                        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
                        for (uint32_t i = 0; i < SEARCH_KEYS; i++)
                                for (uint32_t w = 0; w < 3; w++)
                                        search_keys[i].words[w] =
                                                w < used_words[k] ? search_word(shapes[s][w], i) : 0;
                        qsort(search_keys, SEARCH_KEYS, sizeof(search_keys[0]),
                              compare_search_keys);
                        uint32_t n = 0; /* unique */
                        for (uint32_t i = 0; i < SEARCH_KEYS; i++)
                                if (n == 0 || compare_search_keys(&search_keys[n - 1],
                                                                  &search_keys[i]) != 0)
                                        search_keys[n++] = search_keys[i];
                        struct collected c = {.count = 0};
                        struct lsm_table_builder builder;
                        CHECK(lsm_table_builder_init(&builder, &l, &grid, collect, &c) == 0);
                        for (uint32_t i = 0; i < n; i++) {
                                uint8_t v[32];
                                search_key_bytes(kinds[k], search_keys[i].words, v);
                                uint64_t version = i;
                                memcpy(v + 24, &version, 8);
                                CHECK(lsm_table_builder_add(&builder, v));
                        }
                        CHECK(lsm_table_builder_finish(&builder));
                        CHECK_EQ_U64(c.count, 1);
                        struct lsm_table_cursor cursor;
                        CHECK(lsm_table_cursor_init(&cursor, &l, &grid) == 0);
                        for (uint32_t p = 0; p < 3000; p++) {
                                /* A present key, its neighbours in the last used word, or a
                                 * key drawn from the same shape. */
                                uint64_t words[3];
                                uint32_t i = (uint32_t)(rng() % n);
                                memcpy(words, search_keys[i].words, sizeof(words));
                                uint32_t last = used_words[k] - 1;
                                if (p < 4) /* beyond either end */
                                        for (uint32_t w = 0; w < used_words[k]; w++)
                                                words[w] = p % 2 ? UINT64_MAX : 0;
                                else if (p % 3 == 1)
                                        words[last] += rng() % 2 ? 1 : (uint64_t)-1;
                                else if (p % 3 == 2)
                                        for (uint32_t w = 0; w < used_words[k]; w++)
                                                words[w] = search_word(shapes[s][w], i);
                                uint8_t key[24], out[32];
                                search_key_bytes(kinds[k], words, key);
                                int64_t at = search_expect(n, words, false);
                                bool present = at >= 0 &&
                                               compare_words(search_keys[at].words, words) == 0;
                                int got = lsm_table_get(&grid, &l, &c.tables[0], key, out);
                                uint64_t version = 0;
                                memcpy(&version, out + 24, 8);
                                if (got != (present ? 1 : 0) ||
                                    (present && version != (uint64_t)at))
                                        wrong_get++;
                                for (int reversed = 0; reversed < 2; reversed++) {
                                        int64_t expect = search_expect(n, words, reversed);
                                        lsm_table_cursor_seek(&cursor, &c.tables[0], key,
                                                              reversed);
                                        const uint8_t *v = lsm_table_cursor_value(&cursor);
                                        if (v != NULL)
                                                memcpy(&version, v + 24, 8);
                                        if ((expect < 0) != (v == NULL) ||
                                            (v != NULL && version != (uint64_t)expect))
                                                wrong_seek++;
                                }
                                checked++;
                        }
                        lsm_table_cursor_deinit(&cursor);
                        lsm_table_builder_deinit(&builder);
                        lsm_grid_deinit(&grid);
                }
        }
        CHECK_EQ_U64(checked, 3000u * ARRAY_LEN(kinds) * ARRAY_LEN(shapes));
        CHECK_EQ_U64(wrong_get, 0);
        CHECK_EQ_U64(wrong_seek, 0);
}

/* ---- trees against a model ---------------------------------------------------------------- */

#define MODEL_KEYS 1000000u

static uint64_t model[MODEL_KEYS]; /* version + 1 of each key, 0 if absent */

struct scan_check {
        uint64_t expect_next; /* the next key the model says comes */
        bool reversed;
        uint64_t bound; /* the other end */
        uint64_t limit;
        uint64_t seen;
        uint64_t wrong;
};

/* The next present key of the model from `key` (inclusive), or UINT64_MAX. */
static uint64_t model_next(uint64_t key, bool reversed)
{
        if (!reversed) {
                for (uint64_t k = key; k < MODEL_KEYS; k++)
                        if (model[k] != 0)
                                return k;
                return UINT64_MAX;
        }
        for (uint64_t k = MIN(key, (uint64_t)MODEL_KEYS - 1) + 1; k-- > 0;)
                if (model[k] != 0)
                        return k;
        return UINT64_MAX;
}

static bool scan_visit(void *context, const void *value)
{
        struct scan_check *s = context;
        const struct value *v = value;
        if (s->expect_next == UINT64_MAX || v->key != s->expect_next ||
            v->version + 1 != model[v->key] || v->payload_b != ~v->key)
                s->wrong++;
        s->seen++;
        s->expect_next = s->reversed ? (v->key == 0 ? UINT64_MAX : model_next(v->key - 1, true))
                                     : model_next(v->key + 1, false);
        if (s->expect_next != UINT64_MAX &&
            (s->reversed ? s->expect_next < s->bound : s->expect_next > s->bound))
                s->expect_next = UINT64_MAX;
        return s->seen < s->limit;
}

/*
 * lsm_tree_may_contain over `probes` random keys in one call (more than one chunk of its
 * scratch when probes > 4/7 of the memtable): every key the model holds must come back true.
 * Absent keys it rules out are counted in may_ruled_out (of may_absent).
 */
static uint64_t may_ruled_out, may_absent;

#define MAY_PROBES_MAX 20000u

static void check_may_contain(struct lsm_tree *tree, uint32_t probes)
{
        static uint64_t keys[MAY_PROBES_MAX];
        static bool maybe[MAY_PROBES_MAX];
        probes = MIN(probes, MAY_PROBES_MAX);
        for (uint32_t p = 0; p < probes; p++)
                keys[p] = rng() % MODEL_KEYS;
        uint64_t version = tree->version;
        lsm_tree_may_contain(tree, keys, sizeof(uint64_t), probes, maybe, NULL, NULL);
        CHECK_EQ_U64(tree->version, version);
        uint32_t wrong = 0;
        for (uint32_t p = 0; p < probes; p++) {
                wrong += model[keys[p]] != 0 && !maybe[p];
                may_absent += model[keys[p]] == 0;
                may_ruled_out += model[keys[p]] == 0 && !maybe[p];
        }
        CHECK_EQ_U64(wrong, 0);
}

/* A fresh device, an empty model and the random keys' seed: each test's start. */
static void model_reset(uint64_t seed)
{
        device_reset();
        memset(model, 0, sizeof(model));
        rng_state = seed;
}

/* Puts `count` values of random keys (versions counting on from *version), in the model too. */
static void put_random(struct lsm_tree *tree, uint32_t count, uint64_t *version)
{
        for (uint32_t i = 0; i < count; i++) {
                uint64_t key = rng() % MODEL_KEYS;
                struct value v = value_make(key, *version);
                lsm_tree_put(tree, &v);
                model[key] = ++*version;
        }
}

static void check_against_model(struct lsm_tree *tree, uint32_t probes)
{
        check_may_contain(tree, probes);
        uint32_t wrong = 0;
        for (uint32_t p = 0; p < probes; p++) {
                uint64_t key = rng() % MODEL_KEYS;
                struct value out;
                int rc = lsm_tree_get(tree, &key, &out);
                if (rc < 0 || (rc == 1) != (model[key] != 0) ||
                    (rc == 1 && (out.version + 1 != model[key] || out.key != key)))
                        wrong++;
        }
        CHECK_EQ_U64(wrong, 0);
        for (uint32_t s = 0; s < 12; s++) {
                uint64_t a = rng() % MODEL_KEYS, b = rng() % MODEL_KEYS;
                uint64_t lo = MIN(a, b), hi = MAX(a, b);
                bool reversed = s % 2;
                struct scan_check check = {
                        .reversed = reversed,
                        .bound = reversed ? lo : hi,
                        .limit = s % 3 == 0 ? 50 : UINT64_MAX,
                };
                check.expect_next = model_next(reversed ? hi : lo, reversed);
                if (check.expect_next != UINT64_MAX &&
                    (reversed ? check.expect_next < lo : check.expect_next > hi))
                        check.expect_next = UINT64_MAX;
                int64_t n = lsm_tree_scan(tree, &lo, &hi, reversed, scan_visit, &check);
                CHECK(n >= 0);
                CHECK_EQ_U64(check.wrong, 0);
                /* Whole range visited (or stopped at the limit): nothing was left out. */
                if (check.seen < check.limit)
                        CHECK_EQ_U64(check.expect_next, UINT64_MAX);
        }
}

/* The same with inline key comparisons and a key filter in every index block. */
static const struct lsm_layout layout_small_tables_filtered = {
        .tree = 8,
        .value_size = sizeof(struct value),
        .key_size = 8,
        .key_offset = 8,
        .compare = compare_u64,
        .table_data_blocks_max = 2,
        .key_kind = LSM_KEY_U64,
        .filter = true,
};

/* Inline key comparisons, no filter. */
static const struct lsm_layout layout_small_tables_words = {
        .tree = 8,
        .value_size = sizeof(struct value),
        .key_size = 8,
        .key_offset = 8,
        .compare = compare_u64,
        .table_data_blocks_max = 2,
        .key_kind = LSM_KEY_U64,
};

/* Insert-only memtables (no hash; overwrites still keep the newest), with and without key kind. */
static const struct lsm_layout layout_small_tables_insert_only = {
        .tree = 8,
        .value_size = sizeof(struct value),
        .key_size = 8,
        .key_offset = 8,
        .compare = compare_u64,
        .table_data_blocks_max = 2,
        .key_kind = LSM_KEY_U64,
        .insert_only = true,
};

static const struct lsm_layout layout_small_tables_insert_only_custom = {
        .tree = 8,
        .value_size = sizeof(struct value),
        .key_size = 8,
        .key_offset = 8,
        .compare = compare_u64,
        .table_data_blocks_max = 2,
        .insert_only = true,
};

static void tree_model(const struct lsm_layout *tree_layout);

static int compare_u64_qsort(const void *a, const void *b)
{
        return compare_u64(a, b);
}

struct sorted_check {
        const uint64_t *expect; /* unique keys in order, with the newest version */
        const uint64_t *version;
        uint64_t count;
        uint64_t seen;
        uint64_t wrong;
};

static bool sorted_visit(void *context, const void *value)
{
        struct sorted_check *c = context;
        const struct value *v = value;
        if (c->seen >= c->count || v->key != c->expect[c->seen] || v->version != c->version[c->seen])
                c->wrong++;
        c->seen++;
        return true;
}

/*
 * The memtable's sorted view (radix sort on the varying 32 bits, then runs of equal prefixes)
 * against qsort, for keys whose varying bits span more than 32 bits (out-of-order runs), keys
 * in order, and repeated keys (the newest kept), in insert-only and hashed memtables.
 */
static void test_memtable_sort(void)
{
        enum { N = 30000 };
        static uint64_t keys[N], expect[N], version[N];
        const struct lsm_layout *layouts[] = {&layout_small_tables_insert_only,
                                              &layout_small_tables_filtered};
        for (uint32_t shape = 0; shape < 3; shape++) {
                for (uint32_t l = 0; l < 2; l++) {
                        device_reset();
                        rng_state = 4242 + shape;
                        struct lsm_grid grid;
                        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
                        struct lsm_tree tree;
                        CHECK(lsm_tree_init(&tree, "sort", layouts[l], &grid, N) == 0);
                        for (uint32_t i = 0; i < N; i++) {
                                if (shape == 0) /* 50 prefixes, random low bits */
                                        keys[i] = (rng() % 50) << 45 | (rng() % (1u << 20));
                                else if (shape == 1) /* in order */
                                        keys[i] = 1000 + 3ull * i;
                                else /* few keys, repeated */
                                        keys[i] = rng() % 5000;
                                struct value v = value_make(keys[i], i);
                                lsm_tree_put(&tree, &v);
                        }
                        /* Expected: unique keys in order, each with its last version. */
                        memcpy(expect, keys, sizeof(keys));
                        qsort(expect, N, sizeof(uint64_t), compare_u64_qsort);
                        uint64_t unique = 0;
                        for (uint32_t i = 0; i < N; i++)
                                if (unique == 0 || expect[unique - 1] != expect[i])
                                        expect[unique++] = expect[i];
                        for (uint32_t i = 0; i < N; i++) {
                                uint64_t lo = 0, hi = unique;
                                while (lo < hi) {
                                        uint64_t mid = (lo + hi) / 2;
                                        if (expect[mid] < keys[i])
                                                lo = mid + 1;
                                        else
                                                hi = mid;
                                }
                                version[lo] = i;
                        }
                        struct sorted_check check = {.expect = expect, .version = version,
                                                     .count = unique};
                        CHECK(lsm_tree_scan(&tree, NULL, NULL, false, sorted_visit, &check) ==
                              (int64_t)unique);
                        CHECK_EQ_U64(check.wrong, 0);
                        /* Lookups through the memtable, then through the flushed table. */
                        for (uint32_t pass = 0; pass < 2; pass++) {
                                uint32_t wrong = 0;
                                for (uint32_t i = 0; i < 2000; i++) {
                                        uint64_t k = rng() % unique;
                                        struct value out;
                                        if (lsm_tree_get(&tree, &expect[k], &out) != 1 ||
                                            out.version != version[k])
                                                wrong++;
                                }
                                CHECK_EQ_U64(wrong, 0);
                                CHECK(lsm_tree_flush(&tree));
                        }
                        lsm_tree_deinit(&tree);
                        lsm_grid_deinit(&grid);
                }
        }
}

static void test_tree_model_insert_only(void)
{
        tree_model(&layout_small_tables_insert_only);
        tree_model(&layout_small_tables_insert_only_custom);
}

/* Without filters lsm_tree_may_contain rules out nothing. */
static void test_tree_model(void)
{
        may_ruled_out = may_absent = 0;
        tree_model(&layout_small_tables);
        CHECK(may_absent > 10000);
        CHECK_EQ_U64(may_ruled_out, 0);
}

/*
 * With filters lsm_tree_may_contain rules out the absent keys whose tables' index blocks are
 * cached: with this test's 64-block cache and 200 tables, about one in seven (all of them in
 * test_tree_level0_runs).
 */
static void test_tree_model_filtered(void)
{
        may_ruled_out = may_absent = 0;
        tree_model(&layout_small_tables_filtered);
        printf("may_contain: %llu of %llu absent keys ruled out\n",
               (unsigned long long)may_ruled_out, (unsigned long long)may_absent);
        CHECK(may_ruled_out > may_absent / 10);
}

/* Each level's value_count is the sum of its tables'. */
static void check_level_value_counts(const struct lsm_tree *tree)
{
        for (uint32_t level = 0; level < LSM_LEVELS; level++) {
                const struct lsm_level *l = &tree->levels[level];
                uint64_t sum = 0;
                for (uint32_t t = 0; t < l->count; t++)
                        sum += l->tables[t].value_count;
                CHECK_EQ_U64(l->value_count, sum);
        }
}

static void tree_model(const struct lsm_layout *tree_layout)
{
        model_reset(0x1234567);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0); /* 4 MiB cache */
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "model", tree_layout, &grid, 20000) == 0);
        uint64_t version = 0;
        for (uint32_t bar = 0; bar < 60; bar++) {
                /* Random keys: inserts and overwrites, some repeated within the bar. */
                put_random(&tree, 20000, &version);
                if (bar % 7 == 3)
                        check_against_model(&tree, 2000); /* the memtable holds some */
                CHECK(lsm_tree_flush(&tree));
                CHECK(lsm_tree_compact(&tree));
                if (bar % 4 == 0) {
                        lsm_grid_checkpoint_written(&grid);
                        lsm_grid_checkpoint(&grid);
                }
                for (uint32_t level = 1; level + 1 < LSM_LEVELS; level++)
                        CHECK(tree.levels[level].count <= lsm_tree_level_budget(&tree, level));
        }
        check_against_model(&tree, 20000);
        CHECK(tree.stats.compactions > 0);
        CHECK(tree.levels[3].count > 0);
        /* Far more data than cache: lookups really went to the device. */
        CHECK(grid.stats.reads > 1000);
        check_level_value_counts(&tree);
        /* Levels >= 1 never overlap. */
        for (uint32_t level = 1; level < LSM_LEVELS; level++) {
                const struct lsm_level *l = &tree.levels[level];
                for (uint32_t t = 1; t < l->count; t++)
                        CHECK(compare_u64(l->tables[t - 1].key_max, l->tables[t].key_min) < 0);
        }
        printf("model: tables L0..L3 %u %u %u %u, compactions=%llu moved=%llu reads=%llu "
               "hits=%llu blocks_in_use=%llu\n",
               tree.levels[0].count, tree.levels[1].count, tree.levels[2].count,
               tree.levels[3].count, (unsigned long long)tree.stats.compactions,
               (unsigned long long)tree.stats.tables_moved,
               (unsigned long long)grid.stats.reads, (unsigned long long)grid.stats.cache_hits,
               (unsigned long long)grid.used_count);
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}

/*
 * Level 0 is measured in runs: a flush of random keys makes several tables that do not overlap
 * (one run), a lookup looks at one of them per run, and the budget counts runs (or tables over
 * a full flush's, whichever is more). Lookups over runs of several tables match the model,
 * present and absent keys alike; flushes of keys that only grow make one run.
 */
/*
 * A device that reads many blocks at once (lsm_grid_prefetch): it reads at start, one at a
 * time, and each wait returns what its read said (waits_left of them are still owed).
 */
static uint32_t read_many_blocks, read_many_waits_left;
static int read_many_results[LSM_GRID_PREFETCH_MAX];

static uint32_t device_read_many_start(void *context, const uint64_t *addresses,
                                       uint8_t *const *blocks, uint32_t count)
{
        CHECK_EQ_U64(read_many_waits_left, 0);
        for (uint32_t i = 0; i < count; i++) {
                read_many_results[i] = device_read(context, addresses[i], blocks[i]);
                read_many_blocks++;
        }
        read_many_waits_left = count;
        return count;
}

static int device_read_many_wait(void *context, uint32_t index)
{
        (void)context;
        tally_assert(read_many_waits_left > 0);
        read_many_waits_left--;
        return read_many_results[index];
}

static const struct lsm_device device_many = {
        .context = &device_state,
        .read = device_read,
        .write = device_write,
        .read_many_start = device_read_many_start,
        .read_many_wait = device_read_many_wait,
};

/* A filtered tree of small tables in `grid`: three flushes of 12,000 random puts (the model). */
static void three_flushes(struct lsm_grid *grid, struct lsm_tree *tree, const char *name,
                          uint64_t seed)
{
        model_reset(seed);
        CHECK(lsm_grid_init(grid, &device, DEVICE_BLOCKS, 256) == 0);
        CHECK(lsm_tree_init(tree, name, &layout_small_tables_filtered, grid, 20000) == 0);
        uint64_t version = 0;
        for (uint32_t flush = 0; flush < 3; flush++) {
                put_random(tree, 12000, &version);
                CHECK(lsm_tree_flush(tree));
        }
}

/* `present` keys the model holds, then absent ones up to `count`. */
static void model_keys(uint64_t *keys, uint32_t present, uint32_t count)
{
        uint32_t n = 0;
        while (n < count) {
                uint64_t key = rng() % MODEL_KEYS;
                if ((model[key] != 0) == (n < present))
                        keys[n++] = key;
        }
}

/*
 * lsm_tree_may_contain names, for each key a filter lets through, the data block a lookup of it
 * reads; lsm_grid_prefetch reads them into the cache at once, and the lookups that follow read
 * nothing more. A block that cannot be read is left out with no fault: the lookup that needs
 * it reports the fault, and finds the key once the block reads again.
 */
static void test_tree_may_contain_prefetch(void)
{
        struct lsm_grid grid;
        struct lsm_tree tree;
        three_flushes(&grid, &tree, "prefetch", 0x5eed);
        /* Another cache, which holds the tables' index blocks and none of their data blocks. */
        struct lsm_grid cold;
        CHECK(lsm_grid_init(&cold, &device_many, DEVICE_BLOCKS, 1024) == 0);
        tree.grid = &cold;
        for (uint32_t t = 0; t < tree.levels[0].count; t++)
                CHECK(lsm_grid_read(&cold, tree.levels[0].tables[t].index, LSM_BLOCK_TABLE_INDEX) !=
                      NULL);
        enum { PRESENT = 300, PROBES = 3000 };
        static uint64_t keys[PROBES];
        static bool maybe[PROBES];
        static struct lsm_block_ref candidates[PROBES];
        model_keys(keys, PRESENT, PROBES);
        /* The block of the first present key will not read. */
        uint32_t count = 0;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), 1, maybe, candidates, &count);
        CHECK(maybe[0]);
        CHECK_EQ_U64(count, 1);
        struct lsm_block_ref failing = candidates[0];
        device_state.fail_read = failing.address;
        uint64_t reads = cold.stats.reads;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, maybe, candidates, &count);
        CHECK_EQ_U64(cold.stats.reads, reads); /* only cached index blocks */
        uint32_t present_maybe = 0, absent_maybe = 0;
        for (uint32_t i = 0; i < PROBES; i++) {
                present_maybe += i < PRESENT && maybe[i];
                absent_maybe += i >= PRESENT && maybe[i];
        }
        CHECK_EQ_U64(present_maybe, PRESENT);
        /* One block per key let through (present keys, and absent ones a filter let pass). */
        CHECK_EQ_U64(count, PRESENT + absent_maybe);
        read_many_blocks = 0;
        lsm_grid_prefetch(&cold, candidates, count, LSM_BLOCK_TABLE_DATA);
        uint32_t started = read_many_blocks;
        CHECK(started > 0 && started <= count);
        CHECK_EQ_U64(cold.prefetch_count, started);
        /* The first lookup of a present key waits for its block's read alone. */
        struct value out;
        reads = cold.stats.reads;
        CHECK(lsm_tree_get(&tree, &keys[1], &out) == 1 && out.key == keys[1]);
        CHECK_EQ_U64(cold.stats.reads, reads);
        CHECK_EQ_U64(read_many_waits_left, started - 1);
        CHECK_EQ_U64(cold.stats.prefetched, 1);
        lsm_grid_prefetch_settle(&cold);
        CHECK_EQ_U64(read_many_waits_left, 0);
        printf("prefetch: %u keys let through of %u, %u blocks read at once, %llu cached\n",
               PRESENT + absent_maybe, PROBES, started,
               (unsigned long long)cold.stats.prefetched);
        CHECK_EQ_U64(cold.stats.prefetched, started - 1); /* all but the failing one */
        CHECK_EQ_U64(cold.stats.read_faults, 0);
        CHECK(!cold.fault_damaged);
        CHECK(lsm_grid_cached(&cold, failing) == NULL);
        /* The failing block's lookup reports the fault; once it reads, every lookup finds its
         * key, and nothing but that block is read. */
        reads = cold.stats.reads;
        CHECK_EQ_U64((uint64_t)(int64_t)lsm_tree_get(&tree, &keys[0], &out), (uint64_t)(int64_t)-1);
        CHECK_EQ_U64(cold.stats.read_faults, 1);
        device_state.fail_read = 0;
        uint32_t wrong = 0;
        for (uint32_t i = 0; i < PRESENT; i++) {
                bool found = lsm_tree_get(&tree, &keys[i], &out) == 1;
                wrong += !found || out.key != keys[i] || out.version != model[keys[i]] - 1;
        }
        CHECK_EQ_U64(wrong, 0);
        CHECK_EQ_U64(cold.stats.reads, reads + 2);
        tree.grid = &grid;
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&cold);
        lsm_grid_deinit(&grid);
}

/*
 * A query cursor over a tree of several level-0 tables reads the blocks its sources start in
 * together (lsm_grid_prefetch: the tables' index blocks, then the data block each seek reads
 * first) instead of one after another, and a seek forward does the same for the sources it
 * moves. Cursors on a cold cache, both ways, with seeks, match the model; opening one reads
 * no block on its own; a block that does not read fails the cursor, and once it reads the
 * same cursor opened again is right.
 */
static uint32_t cursor_walk(struct lsm_tree *tree, uint64_t lo, uint64_t hi, bool reversed,
                            uint32_t steps, uint32_t *wrong)
{
        struct lsm_tree_cursor c;
        CHECK(lsm_tree_cursor_open(&c, tree, &lo, &hi, reversed) == 0);
        uint64_t expect = model_next(reversed ? hi : lo, reversed);
        uint32_t seen = 0;
        for (uint32_t i = 0; i < steps; i++) {
                if (expect != UINT64_MAX && (reversed ? expect < lo : expect > hi))
                        expect = UINT64_MAX;
                const struct value *v = lsm_tree_cursor_value(&c);
                if (v == NULL) {
                        *wrong += expect != UINT64_MAX || lsm_tree_cursor_failed(&c);
                        break;
                }
                uint64_t key = v->key; /* v points into a block the next step may replace */
                *wrong += key != expect || v->version + 1 != model[key];
                seen++;
                if (i % 5 == 4) { /* leap ahead, as an intersection of index scans does */
                        uint64_t to = reversed ? (key > 300 ? key - 300 : 0) : key + 300;
                        lsm_tree_cursor_seek(&c, &to);
                        expect = model_next(to, reversed);
                } else {
                        lsm_tree_cursor_next(&c);
                        expect = reversed ? (key == 0 ? UINT64_MAX : model_next(key - 1, true))
                                          : model_next(key + 1, false);
                }
        }
        lsm_tree_cursor_close(&c);
        return seen;
}

static void test_tree_cursor_prefetch(void)
{
        struct lsm_grid grid;
        struct lsm_tree tree;
        three_flushes(&grid, &tree, "cursor", 0xc0de);
        uint64_t version = 3 * 12000;
        for (uint32_t flush = 0; flush < 3; flush++) {
                put_random(&tree, 12000, &version);
                CHECK(lsm_tree_flush(&tree));
        }
        uint32_t runs = tree.levels[0].count;
        CHECK(runs >= 6);
        struct lsm_grid cold;
        CHECK(lsm_grid_init(&cold, &device_many, DEVICE_BLOCKS, 1024) == 0);
        tree.grid = &cold;
        /* Opening a cursor on the cold cache: every block it needs comes from reads at once. */
        uint64_t lo = MODEL_KEYS / 3, hi = MODEL_KEYS / 2;
        read_many_blocks = 0;
        struct lsm_tree_cursor c;
        CHECK(lsm_tree_cursor_open(&c, &tree, &lo, &hi, false) == 0);
        CHECK(lsm_tree_cursor_value(&c) != NULL);
        CHECK_EQ_U64(cold.stats.reads, 0);
        CHECK(read_many_blocks >= 2 * runs);
        lsm_tree_cursor_close(&c);
        /* Cursors and seeks over a cache that holds a fraction of the tree's blocks. */
        lsm_grid_deinit(&cold);
        CHECK(lsm_grid_init(&cold, &device_many, DEVICE_BLOCKS, 32) == 0);
        uint32_t wrong = 0, seen = 0;
        for (uint32_t q = 0; q < 200; q++) {
                uint64_t a = rng() % MODEL_KEYS, b = rng() % MODEL_KEYS;
                seen += cursor_walk(&tree, MIN(a, b), MAX(a, b), q % 2, 40, &wrong);
        }
        CHECK_EQ_U64(wrong, 0);
        CHECK(seen > 4000);
        printf("cursor prefetch: %u level-0 runs, %u values seen, %llu blocks read ahead, %llu "
               "read alone\n",
               runs, seen, (unsigned long long)cold.stats.prefetched,
               (unsigned long long)cold.stats.reads);
        CHECK(cold.stats.prefetched > cold.stats.reads);
        /* A data block that will not read: the cursor that needs it fails, with the fault
         * named; once it reads, the same cursor is right. */
        lsm_grid_deinit(&cold);
        CHECK(lsm_grid_init(&cold, &device_many, DEVICE_BLOCKS, 1024) == 0);
        const struct lsm_table_info *t = NULL;
        for (uint32_t i = 0; i < tree.levels[0].count && t == NULL; i++) {
                const struct lsm_table_info *x = &tree.levels[0].tables[i];
                if (*(const uint64_t *)x->key_min <= lo && lo <= *(const uint64_t *)x->key_max)
                        t = x;
        }
        CHECK(t != NULL);
        if (t == NULL)
                return;
        const uint8_t *index = lsm_grid_read(&cold, t->index, LSM_BLOCK_TABLE_INDEX);
        CHECK(index != NULL);
        struct lsm_block_ref failing = lsm_table_seek_block(&tree.layout, index, t, &lo, false);
        CHECK(failing.address != 0);
        device_state.fail_read = failing.address;
        CHECK(lsm_tree_cursor_open(&c, &tree, &lo, &hi, false) == 0);
        CHECK(lsm_tree_cursor_value(&c) == NULL);
        CHECK(lsm_tree_cursor_failed(&c));
        CHECK_EQ_U64(cold.stats.read_faults, 1);
        lsm_tree_cursor_close(&c);
        device_state.fail_read = 0;
        wrong = 0;
        CHECK(cursor_walk(&tree, lo, hi, false, 40, &wrong) == 40);
        CHECK_EQ_U64(wrong, 0);
        lsm_grid_deinit(&cold);
        tree.grid = &grid;
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}

/*
 * lsm_tree_get_prefetch reads the blocks the lookups of a query's results will read (the newest
 * table holding each key: its index block, then its data block) together: a tree of keys that
 * only grow (as the objects by timestamp), on a cold cache; the lookups after it read nothing
 * alone and find every value; keys in the memtable read nothing.
 */
static void test_tree_get_prefetch(void)
{
        model_reset(0x9e7);
        struct lsm_grid grid;
        struct lsm_tree tree;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 256) == 0);
        CHECK(lsm_tree_init(&tree, "get_prefetch", &layout_small_tables_words, &grid, 20000) == 0);
        uint64_t version = 0, key = 0;
        for (uint32_t flush = 0; flush < 6; flush++) {
                for (uint32_t i = 0; i < 12000; i++, key += 3) {
                        struct value v = value_make(key, version);
                        lsm_tree_put(&tree, &v);
                        model[key] = ++version;
                }
                CHECK(lsm_tree_flush(&tree));
        }
        struct value v = value_make(key, version); /* one in the memtable */
        lsm_tree_put(&tree, &v);
        model[key] = ++version;
        struct lsm_grid cold;
        CHECK(lsm_grid_init(&cold, &device_many, DEVICE_BLOCKS, 256) == 0);
        tree.grid = &cold;
        enum { KEYS = 24 };
        uint64_t keys[KEYS];
        for (uint32_t i = 0; i + 1 < KEYS; i++)
                keys[i] = (rng() % (key / 3)) * 3;
        keys[KEYS - 1] = key;
        read_many_blocks = 0;
        lsm_tree_get_prefetch(&tree, keys, sizeof(keys[0]), KEYS);
        CHECK(read_many_blocks > 0);
        uint32_t wrong = 0;
        for (uint32_t i = 0; i < KEYS; i++) {
                struct value out;
                wrong += lsm_tree_get(&tree, &keys[i], &out) != 1 || out.key != keys[i] ||
                         out.version + 1 != model[keys[i]];
        }
        CHECK_EQ_U64(wrong, 0);
        CHECK_EQ_U64(cold.stats.reads, 0);
        printf("get prefetch: %u lookups over %u level-0 tables, %llu blocks read ahead, %llu "
               "alone\n",
               KEYS, tree.levels[0].count, (unsigned long long)cold.stats.prefetched,
               (unsigned long long)cold.stats.reads);
        tree.grid = &grid;
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&cold);
        lsm_grid_deinit(&grid);
}

/* A device that reads parts of blocks (filter pages), counting them. */
static uint32_t range_reads;
static int device_read_range(void *context, uint64_t address, uint32_t offset, uint32_t length,
                             uint8_t *out)
{
        struct memory_device *d = context;
        tally_assert(address > 0 && address <= DEVICE_BLOCKS);
        tally_assert(offset % LSM_TABLE_FILTER_PAGE_SIZE == 0 &&
                     length == LSM_TABLE_FILTER_PAGE_SIZE);
        range_reads++;
        if (address == d->fail_read)
                return -EIO;
        if (d->blocks[address] == NULL)
                memset(out, 0, length);
        else
                memcpy(out, d->blocks[address] + offset, length);
        return 0;
}

static const struct lsm_device device_pages = {
        .context = &device_state,
        .read = device_read,
        .write = device_write,
        .read_range = device_read_range,
};

/*
 * A batch's keys against tables whose index blocks are not cached: each table is asked through
 * its filter's 4 KiB pages (table.h, "Filter pages"), with exactly the answers the whole blocks
 * give, no block read, and the data blocks of the keys let through named from page 0. A page
 * that fails its checksum, or does not read, rules nothing out of its table.
 */
static void test_tree_filter_pages(void)
{
        struct lsm_grid grid;
        struct lsm_tree tree;
        three_flushes(&grid, &tree, "pages", 0xf11e);
        uint32_t tables = tree.levels[0].count, paged = 0;
        for (uint32_t t = 0; t < tables; t++)
                paged += tree.levels[0].tables[t].index.reserved != 0;
        CHECK(tables >= 6);
        CHECK_EQ_U64(paged, tables);
        enum { PRESENT = 300, PROBES = 3000 };
        static uint64_t keys[PROBES];
        static bool expected[PROBES], maybe[PROBES];
        static struct lsm_block_ref candidates[PROBES];
        model_keys(keys, PRESENT, PROBES);
        /* The answers of the whole blocks, cached. */
        for (uint32_t t = 0; t < tables; t++)
                CHECK(lsm_grid_read(&grid, tree.levels[0].tables[t].index, LSM_BLOCK_TABLE_INDEX) !=
                      NULL);
        uint32_t expected_count = 0;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, expected, candidates,
                             &expected_count);
        CHECK_EQ_U64(grid.stats.pages_read, 0);
        /* A grid that caches none of them but has room for them all: the walk leaves the
         * keys of uncached tables to lookups, which read the blocks whole and keep them. */
        struct lsm_grid roomy;
        CHECK(lsm_grid_init(&roomy, &device_pages, DEVICE_BLOCKS, 1024) == 0);
        tree.grid = &roomy;
        range_reads = 0;
        uint32_t count = 0;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, maybe, candidates, &count);
        uint32_t all_maybe = 0;
        for (uint32_t i = 0; i < PROBES; i++)
                all_maybe += maybe[i];
        CHECK_EQ_U64(all_maybe, PROBES);
        CHECK_EQ_U64(range_reads, 0);
        struct value got;
        CHECK(lsm_tree_get(&tree, &keys[PROBES - 1], &got) == 0);
        CHECK(roomy.stats.reads > 0 && roomy.stats.reads <= tables);
        CHECK_EQ_U64(range_reads, 0);
        lsm_grid_deinit(&roomy);
        /* Another grid, which caches none of them and could not hold them all (8 blocks). */
        struct lsm_grid cold;
        CHECK(lsm_grid_init(&cold, &device_pages, DEVICE_BLOCKS, 8) == 0);
        tree.grid = &cold;
        range_reads = 0;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, maybe, candidates, &count);
        uint32_t differ = 0, present_maybe = 0, absent_ruled_out = 0;
        for (uint32_t i = 0; i < PROBES; i++) {
                differ += maybe[i] != expected[i];
                present_maybe += i < PRESENT && maybe[i];
                absent_ruled_out += i >= PRESENT && !maybe[i];
        }
        CHECK_EQ_U64(differ, 0);
        CHECK_EQ_U64(present_maybe, PRESENT);
        CHECK(absent_ruled_out > (PROBES - PRESENT) * 99 / 100);
        CHECK_EQ_U64(count, expected_count); /* named from page 0 */
        CHECK_EQ_U64(cold.stats.reads, 0);
        /* Page 0 once per table, then the pages of its keys' buckets (at most 15 more). */
        CHECK(range_reads >= tables && range_reads <= tables * LSM_TABLE_FILTER_PAGES);
        CHECK_EQ_U64(cold.stats.pages_read, range_reads);
        uint32_t pages_first = range_reads;
        /* A lookup asks an uncached table's filter the same way before reading its block:
         * absent keys the filters rule out read no block, present keys are found. */
        uint32_t wrong = 0, absent_looked = 0;
        struct value out;
        for (uint32_t i = PRESENT; i < PROBES && absent_looked < 200; i++) {
                if (expected[i])
                        continue;
                absent_looked++;
                wrong += lsm_tree_get(&tree, &keys[i], &out) != 0;
        }
        CHECK_EQ_U64(cold.stats.reads, 0);
        CHECK(cold.stats.pages_read > pages_first);
        for (uint32_t i = 0; i < 50; i++)
                wrong += lsm_tree_get(&tree, &keys[i], &out) != 1 || out.key != keys[i] ||
                         out.version != model[keys[i]] - 1;
        CHECK_EQ_U64(wrong, 0);
        CHECK(cold.stats.reads > 0);
        lsm_grid_cache_clear(&cold);
        range_reads = 0;
        uint64_t pages_before = cold.stats.pages_read;

        /* Damage page 5 of one table and page 0 of another: their keys may be there. */
        const struct lsm_table_info *hurt5 = &tree.levels[0].tables[0];
        const struct lsm_table_info *hurt0 = &tree.levels[0].tables[1];
        device_state.blocks[hurt5->index.address][5 * LSM_TABLE_FILTER_PAGE_SIZE + 7] ^= 0x10;
        device_state.blocks[hurt0->index.address][100] ^= 0x01;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, maybe, candidates, &count);
        uint32_t lost = 0, ruled_in = 0;
        for (uint32_t i = 0; i < PROBES; i++) {
                lost += expected[i] && !maybe[i];
                ruled_in += !expected[i] && maybe[i];
        }
        CHECK_EQ_U64(lost, 0);
        CHECK(ruled_in > 0);
        CHECK_EQ_U64(cold.stats.read_faults, 0);
        CHECK(cold.stats.pages_read > pages_before);
        /* A page that does not read rules nothing out either. */
        device_state.fail_read = tree.levels[0].tables[2].index.address;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, maybe, candidates, &count);
        lost = 0;
        for (uint32_t i = 0; i < PROBES; i++)
                lost += expected[i] && !maybe[i];
        CHECK_EQ_U64(lost, 0);
        device_state.fail_read = 0;
        /* Without read_range the whole block is read, past the cache, for the same answers. */
        device_state.blocks[hurt5->index.address][5 * LSM_TABLE_FILTER_PAGE_SIZE + 7] ^= 0x10;
        device_state.blocks[hurt0->index.address][100] ^= 0x01;
        struct lsm_grid whole;
        CHECK(lsm_grid_init(&whole, &device, DEVICE_BLOCKS, 8) == 0);
        tree.grid = &whole;
        lsm_tree_may_contain(&tree, keys, sizeof(uint64_t), PROBES, maybe, candidates, &count);
        differ = 0;
        for (uint32_t i = 0; i < PROBES; i++)
                differ += maybe[i] != expected[i];
        CHECK_EQ_U64(differ, 0);
        CHECK_EQ_U64(whole.stats.pages_read, pages_first);
        CHECK(lsm_grid_cached(&whole, hurt5->index) == NULL);
        printf("filter pages: %u tables, %u pages read for %u keys (%u let through)\n", tables,
               pages_first, PROBES, expected_count);
        tree.grid = &grid;
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&whole);
        lsm_grid_deinit(&cold);
        lsm_grid_deinit(&grid);
}

static void test_tree_level0_runs(void)
{
        model_reset(0x2468ace);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 256) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "runs", &layout_small_tables_filtered, &grid, 20000) == 0);
        may_ruled_out = may_absent = 0;
        CHECK(tree.level0_flush_tables > 1);
        CHECK_EQ_U64(tree.level0_tables_per_fill, tree.level0_flush_tables);
        uint64_t version = 0;
        for (uint32_t flush = 1; flush <= LSM_LEVEL0_FILL_MAX + 1; flush++) {
                put_random(&tree, 12000, &version);
                CHECK(lsm_tree_flush(&tree));
                CHECK_EQ_U64(tree.level0_runs, flush);
                CHECK_EQ_U64(lsm_tree_level0_fill(&tree), flush);
                bool idle;
                CHECK(lsm_tree_compact_step(&tree, 1, &idle));
                /* Within its budget until the ninth run, though the tables are far more. */
                CHECK(idle == (flush <= LSM_LEVEL0_FILL_MAX));
                CHECK(tree.job.active == (flush > LSM_LEVEL0_FILL_MAX));
                if (flush == 4) {
                        CHECK(tree.levels[0].count >= 2 * flush);
                        check_against_model(&tree, 20000);
                }
        }
        check_against_model(&tree, 20000); /* mid-job: the inputs still answer */
        printf("level-0 runs: may_contain ruled out %llu of %llu absent keys\n",
               (unsigned long long)may_ruled_out, (unsigned long long)may_absent);
        CHECK(may_ruled_out > may_absent * 9 / 10); /* every index block cached: filters say */
        /* Keys that share the radix sort's 32-bit prefix (one key far above the others): their
         * order comes from comparisons (qsort of the run), and the answers stay exact. */
        static uint64_t wide[4001];
        static bool wide_maybe[4001];
        wide[0] = UINT64_C(1) << 63;
        for (uint32_t i = 1; i < 4001; i++)
                wide[i] = rng() % MODEL_KEYS;
        lsm_tree_may_contain(&tree, wide, sizeof(uint64_t), 4001, wide_maybe, NULL, NULL);
        uint32_t wide_wrong = 0, wide_absent = 0, wide_ruled_out = 0;
        for (uint32_t i = 1; i < 4001; i++) {
                wide_wrong += model[wide[i]] != 0 && !wide_maybe[i];
                wide_absent += model[wide[i]] == 0;
                wide_ruled_out += model[wide[i]] == 0 && !wide_maybe[i];
        }
        CHECK_EQ_U64(wide_wrong, 0);
        CHECK(wide_ruled_out > wide_absent * 9 / 10);
        CHECK(lsm_tree_compact(&tree));
        CHECK(lsm_tree_level0_fill(&tree) <= LSM_LEVEL0_FILL_MAX);
        CHECK_EQ_U64(tree.levels[0].count, 0);
        /* A light flush (one small table) is one run too. */
        put_random(&tree, 10, &version);
        CHECK(lsm_tree_flush(&tree));
        CHECK_EQ_U64(tree.levels[0].count, 1);
        CHECK_EQ_U64(lsm_tree_level0_fill(&tree), 1);
        check_against_model(&tree, 20000);
        lsm_tree_deinit(&tree);

        /* Keys that only grow: every flush continues the one run; the fill counts tables over
         * a full flush's. */
        struct lsm_tree seq;
        CHECK(lsm_tree_init(&seq, "sequential", &layout_small_tables_filtered, &grid, 20000) == 0);
        uint64_t next = 0;
        for (uint32_t flush = 1; flush <= 6; flush++) {
                for (uint32_t i = 0; i < 20000; i++) {
                        struct value v = value_make(next++, 0);
                        lsm_tree_put(&seq, &v);
                }
                CHECK(lsm_tree_flush(&seq));
                CHECK_EQ_U64(seq.level0_runs, 1);
                uint32_t tables = seq.levels[0].count;
                CHECK_EQ_U64(lsm_tree_level0_fill(&seq),
                             (tables + seq.level0_tables_per_fill - 1) /
                                     seq.level0_tables_per_fill);
        }
        uint32_t wrong = 0;
        for (uint32_t p = 0; p < 5000; p++) {
                uint64_t key = rng() % (next + 1000);
                struct value out;
                int rc = lsm_tree_get(&seq, &key, &out);
                wrong += rc != (key < next ? 1 : 0) || (rc == 1 && out.key != key);
        }
        CHECK_EQ_U64(wrong, 0);
        lsm_tree_deinit(&seq);
        lsm_grid_deinit(&grid);
}

/* Compaction in beats: every op does a bounded share, lookups and scans stay right mid-job. */
static void test_tree_paced(void)
{
        model_reset(777);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "paced", &layout_small_tables, &grid, 16 * 1000) == 0);
        uint64_t version = 0, steps_mid_job = 0, checks_mid_job = 0, worst_step = 0;
        const uint64_t budget = 8 * 1000; /* per op: 8x what it inserts */
        for (uint32_t op = 1; op <= 16 * 60; op++) {
                put_random(&tree, 1000, &version);
                if (op % 16 == 0) /* a bar of 16 ops */
                        CHECK(lsm_tree_flush(&tree));
                uint64_t before = tree.stats.values_compacted;
                bool idle;
                CHECK(lsm_tree_compact_step(&tree, budget, &idle));
                uint64_t done = tree.stats.values_compacted - before;
                worst_step = MAX(worst_step, done);
                CHECK(done <= budget);
                if (tree.job.active) {
                        steps_mid_job++;
                        if (op % 37 == 0) {
                                check_against_model(&tree, 500);
                                checks_mid_job++;
                        }
                }
        }
        CHECK(steps_mid_job > 20);
        CHECK(checks_mid_job > 0);
        CHECK(lsm_tree_compact(&tree)); /* drain */
        check_against_model(&tree, 5000);
        for (uint32_t level = 1; level + 1 < LSM_LEVELS; level++)
                CHECK(tree.levels[level].count <= lsm_tree_level_budget(&tree, level));
        printf("paced: ops=960 budget/op=%llu worst_step=%llu jobs=%llu moved=%llu mid_job_steps=%llu\n",
               (unsigned long long)budget, (unsigned long long)worst_step,
               (unsigned long long)tree.stats.compactions,
               (unsigned long long)tree.stats.tables_moved, (unsigned long long)steps_mid_job);
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}

/*
 * The same puts and the same beats, compacted once through the heap only, a value at a time,
 * and once in runs (merge_run_bulk): every table of every level must be the same block, with overwritten keys (a version in several inputs),
 * beats that stop mid-run, and key filters. Keys are random, or `clustered` as an index tree's
 * are (64 groups, each growing, like an account's timestamps, an eighth of the puts
 * overwriting a key of the group).
 */
struct merge_outcome {
        uint64_t tables;
        u128 digest; /* of every table's index block checksum, level by level */
        uint64_t compacted, in_runs;
        uint64_t grid_used;
};

#define CLUSTER_KEYS (MODEL_KEYS / 64u)

static struct merge_outcome bulk_merge_run(const struct lsm_layout *tree_layout,
                                           bool heap_only, bool clustered, bool worker)
{
        uint64_t grown[64] = {0};
        model_reset(4242);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "pair", tree_layout, &grid, 8000) == 0);
        tree.merge_heap_only = heap_only;
        static struct lsm_compactor compactor;
        if (worker) {
                CHECK_EQ_U64(lsm_compactor_start(&compactor, &device), 0);
                tree.compactor = &compactor;
                /* Beats grant 1,000-4,000 values: each may wait for the worker to keep up. */
                tree.worker_keep_up_lag = 500;
        }
        uint64_t version = 0, behind_max = 0;
        for (uint32_t op = 1; op <= 8 * 80; op++) {
                for (uint32_t i = 0; i < 1000; i++) {
                        uint64_t key = rng() % MODEL_KEYS;
                        if (clustered) {
                                uint64_t group = rng() % 64;
                                uint64_t at = rng() % 8 == 0 ? rng() % (grown[group] + 1)
                                                             : grown[group];
                                tally_assert(at < CLUSTER_KEYS);
                                grown[group] += at == grown[group];
                                key = group * CLUSTER_KEYS + at;
                        }
                        struct value v = value_make(key, version);
                        lsm_tree_put(&tree, &v);
                        model[key] = ++version;
                }
                if (op % 8 == 0)
                        CHECK(lsm_tree_flush(&tree));
                bool idle;
                CHECK(lsm_tree_compact_step(&tree, 1000 + rng() % 3000, &idle));
                if (worker && tree.job.active && tree.job.on_worker) {
                        /* The worker is within the lag of what was granted, or done. */
                        pthread_mutex_lock(&compactor.mutex);
                        uint64_t behind = tree.job.worker_done
                                                  ? 0
                                                  : tree.job.values_done -
                                                            MIN(tree.job.values_done,
                                                                tree.job.worker_progress);
                        pthread_mutex_unlock(&compactor.mutex);
                        behind_max = MAX(behind_max, behind);
                }
        }
        if (worker)
                CHECK(behind_max <= tree.worker_keep_up_lag);
        CHECK(lsm_tree_compact(&tree));
        check_against_model(&tree, 3000);
        struct merge_outcome run = {.compacted = tree.stats.values_compacted,
                               .in_runs = tree.stats.values_in_runs};
        for (uint32_t level = 0; level < LSM_LEVELS; level++) {
                for (uint32_t t = 0; t < tree.levels[level].count; t++) {
                        run.tables++;
                        run.digest = run.digest * 1000003u + tree.levels[level].tables[t].index.checksum +
                                     level;
                        /* The address too: a job writes the same blocks in the loop and on
                         * the worker, and installs at the same op. */
                        run.digest = run.digest * 1000003u + tree.levels[level].tables[t].index.address;
                }
        }
        run.grid_used = grid.used_count;
        lsm_tree_deinit(&tree);
        if (worker)
                lsm_compactor_stop(&compactor);
        lsm_grid_deinit(&grid);
        return run;
}

static void test_tree_bulk_merge(void)
{
        const struct lsm_layout *layouts[] = {&layout_small_tables_words,
                                              &layout_small_tables_filtered,
                                              &layout_small_tables};
        const char *names[] = {"key words", "key words and filters", "custom keys"};
        for (uint32_t k = 0; k < 3; k++) {
                for (uint32_t clustered = 0; clustered < 2; clustered++) {
                        struct merge_outcome heap =
                                bulk_merge_run(layouts[k], true, clustered, false);
                        struct merge_outcome bulk =
                                bulk_merge_run(layouts[k], false, clustered, false);
                        struct merge_outcome worker =
                                bulk_merge_run(layouts[k], false, clustered, true);
                        CHECK(heap.tables > 10);
                        CHECK_EQ_U64(heap.in_runs, 0);
                        /* Most values go over in runs (random keys: level 1's between two of
                         * the upper table's); custom keys have no words form: the heap. */
                        if (k < 2)
                                CHECK(bulk.in_runs > bulk.compacted / (clustered ? 2 : 3));
                        else
                                CHECK_EQ_U64(bulk.in_runs, 0);
                        CHECK_EQ_U64(bulk.compacted, heap.compacted);
                        CHECK_EQ_U64(bulk.tables, heap.tables);
                        CHECK(bulk.digest == heap.digest);
                        /* The same jobs merged on the compaction worker: the same tables at
                         * the same addresses, the same blocks in use. */
                        CHECK_EQ_U64(worker.compacted, bulk.compacted);
                        /* Runs are cut where a step's budget ends, the worker's at other
                         * points than the beats': nearly the same count. */
                        CHECK(worker.in_runs <= bulk.in_runs + bulk.in_runs / 100 &&
                              bulk.in_runs <= worker.in_runs + worker.in_runs / 100);
                        CHECK_EQ_U64(worker.tables, bulk.tables);
                        CHECK_EQ_U64(worker.grid_used, bulk.grid_used);
                        CHECK(worker.digest == bulk.digest);
                        printf("bulk merge (%s, %s keys): tables=%llu compacted=%llu in runs=%llu\n",
                               names[k], clustered ? "clustered" : "random",
                               (unsigned long long)bulk.tables,
                               (unsigned long long)bulk.compacted,
                               (unsigned long long)bulk.in_runs);
                }
        }
}

/*
 * A flat budget far too small for merges of level 0 into a level 1 of every random key, plus
 * the pace lsm_tree_compaction_pace asks for: level 0 never passes twice its budget (where the
 * ledger would compact the whole tree inside one op), and no op does more than the pace.
 */
static void test_tree_paced_by_writes(void)
{
        model_reset(4242);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "paced by writes", &layout_small_tables, &grid, 16 * 1000) ==
              0);
        uint64_t version = 0, puts_seen = 0, worst_zero = 0, paced_steps = 0, worst_step = 0;
        const uint64_t floor = 500; /* alone, level 0 grew to 194 tables over these ops */
        for (uint32_t op = 1; op <= 16 * 60; op++) {
                if (!lsm_tree_has_room(&tree, 1000))
                        CHECK(lsm_tree_flush(&tree));
                put_random(&tree, 1000, &version);
                uint64_t pace = lsm_tree_compaction_pace(&tree, tree.stats.puts - puts_seen);
                puts_seen = tree.stats.puts;
                uint64_t budget = MAX(floor, pace);
                paced_steps += pace > floor;
                uint64_t before = tree.stats.values_compacted;
                bool idle;
                CHECK(lsm_tree_compact_step(&tree, budget, &idle));
                worst_step = MAX(worst_step, tree.stats.values_compacted - before);
                CHECK(tree.stats.values_compacted - before <= budget);
                worst_zero = MAX(worst_zero, lsm_tree_level0_fill(&tree));
                CHECK(tree.levels[0].count <=
                      LSM_LEVEL0_FILL_STALL * tree.level0_tables_per_fill);
        }
        CHECK(worst_zero <= LSM_LEVEL0_FILL_STALL);
        CHECK(paced_steps > 0);
        CHECK(tree.stats.compactions > 5);
        check_against_model(&tree, 5000);
        printf("paced by writes: ops=960 worst level 0 fill=%llu, paced steps=%llu, worst "
               "step=%llu values, jobs=%llu\n",
               (unsigned long long)worst_zero, (unsigned long long)paced_steps,
               (unsigned long long)worst_step, (unsigned long long)tree.stats.compactions);
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}

/*
 * A tree given a larger level-0 budget (the ledger's indexes by account: level0_budget): no job
 * until its fill passes that budget, the pace and the stall point follow it (twice the budget),
 * lookups and scans stay exact across its many level-0 tables, and the same puts merge fewer
 * values than with the default budget, which is what the larger budget is for.
 */
static uint64_t level0_budget_load(uint32_t budget, uint32_t *worst_fill)
{
        model_reset(97531);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "level-0 budget", &layout_small_tables, &grid, 4000) == 0);
        CHECK_EQ_U64(tree.level0_budget, LSM_LEVEL0_FILL_MAX);
        tree.level0_budget = budget;
        CHECK_EQ_U64(lsm_tree_level_budget(&tree, 0), budget);
        CHECK_EQ_U64(lsm_tree_level0_stall(&tree), 2 * budget);
        uint64_t version = 0, puts_seen = 0;
        *worst_fill = 0;
        for (uint32_t op = 1; op <= 4 * 150; op++) {
                if (!lsm_tree_has_room(&tree, 1000))
                        CHECK(lsm_tree_flush(&tree));
                put_random(&tree, 1000, &version);
                uint64_t pace = lsm_tree_compaction_pace(&tree, tree.stats.puts - puts_seen);
                puts_seen = tree.stats.puts;
                bool idle, had_job = tree.job.active || tree.stats.compactions > 0;
                uint32_t fill = lsm_tree_level0_fill(&tree);
                CHECK(lsm_tree_compact_step(&tree, MAX(500, pace), &idle));
                /* The first job starts once the fill passes the budget, not before. */
                if (!had_job)
                        CHECK(tree.job.active == (fill > budget));
                *worst_fill = MAX(*worst_fill, lsm_tree_level0_fill(&tree));
                if (op == 4 * 20) /* level 0 at about 20 tables, no job yet when budget > 20 */
                        check_against_model(&tree, 3000);
        }
        check_against_model(&tree, 5000);
        uint64_t merged = tree.stats.values_compacted;
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
        return merged;
}

static void test_tree_level0_budget(void)
{
        uint32_t fill_default, fill_large;
        uint64_t merged_default = level0_budget_load(LSM_LEVEL0_FILL_MAX, &fill_default);
        uint64_t merged_large = level0_budget_load(32, &fill_large);
        printf("level-0 budget: 600,000 puts merged %llu values with a budget of %u (worst fill "
               "%u), %llu with 32 (worst fill %u)\n",
               (unsigned long long)merged_default, LSM_LEVEL0_FILL_MAX, fill_default,
               (unsigned long long)merged_large, fill_large);
        CHECK(fill_default <= 2 * LSM_LEVEL0_FILL_MAX);
        CHECK(fill_large <= 64);
        CHECK(fill_large > 2 * LSM_LEVEL0_FILL_MAX); /* it did hold more than the default's stall */
        CHECK(merged_large > 0);
        CHECK(merged_large < merged_default * 3 / 4);
}

/*
 * Flushes that span the whole key range, as in the ledger's indexes by account (an account,
 * then a timestamp: every flush holds every hot account), paced by the writes: level 1 stays
 * near its budget. When level 0 went first whenever it was over its budget, and the pace
 * covered only the job in progress, level 1 grew with the data (to 55 tables against a budget of
 * 8 at 100 M transfers) and every level-0 job rewrote all of it.
 */
static void test_tree_wide_flushes(void)
{
        device_reset();
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "wide flushes", &layout_small_tables, &grid, 16 * 1000) == 0);
        rng_state = 77;
        uint64_t sequence = 0, puts_seen = 0, worst_level1 = 0;
        for (uint32_t op = 1; op <= 16 * 120; op++) {
                if (!lsm_tree_has_room(&tree, 1000))
                        CHECK(lsm_tree_flush(&tree));
                for (uint32_t i = 0; i < 1000; i++) {
                        uint64_t key = (rng() % 64) << 40 | ++sequence;
                        struct value v = value_make(key, sequence);
                        lsm_tree_put(&tree, &v);
                }
                uint64_t pace = lsm_tree_compaction_pace(&tree, tree.stats.puts - puts_seen);
                puts_seen = tree.stats.puts;
                bool idle;
                CHECK(lsm_tree_compact_step(&tree, MAX(500u, pace), &idle));
                worst_level1 = MAX(worst_level1, tree.levels[1].count);
                CHECK(lsm_tree_level0_fill(&tree) <= LSM_LEVEL0_FILL_STALL);
        }
        check_level_value_counts(&tree);
        uint64_t budget1 = lsm_tree_level_budget(&tree, 1);
        printf("wide flushes: %llu values, worst level 1 %llu tables (budget %llu), %.2f values "
               "merged per value put, tables L1..L3 %u %u %u\n",
               (unsigned long long)sequence, (unsigned long long)worst_level1,
               (unsigned long long)budget1,
               (double)tree.stats.values_compacted / (double)tree.stats.puts,
               tree.levels[1].count, tree.levels[2].count, tree.levels[3].count);
        CHECK(tree.levels[2].count > 0);
        CHECK(worst_level1 <= 4 * budget1);
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}

/*
 * A job on the compaction worker that reads a damaged block fails where the loop installs it,
 * naming the block, and leaves its inputs in place; the same job succeeds once the block is
 * good again. A job dropped while the worker merges it (the tree goes away) is cancelled.
 */
static void test_tree_worker_faults(void)
{
        model_reset(777);
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 64) == 0);
        static struct lsm_compactor compactor;
        CHECK_EQ_U64(lsm_compactor_start(&compactor, &device), 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "worker faults", &layout_small_tables, &grid, 4000) == 0);
        tree.compactor = &compactor;
        uint64_t version = 0;
        for (uint32_t flush = 0; flush <= LSM_LEVEL0_FILL_MAX; flush++) {
                put_random(&tree, 4000, &version);
                CHECK(lsm_tree_flush(&tree));
        }
        CHECK(lsm_tree_level0_fill(&tree) > lsm_tree_level_budget(&tree, 0));
        /* Damage a data block of level 0's oldest table: the worker reads it from the device. */
        const uint8_t *index = lsm_grid_read(&grid, tree.levels[0].tables[0].index,
                                             LSM_BLOCK_TABLE_INDEX);
        CHECK(index != NULL);
        uint64_t damaged =
                ((const struct lsm_index_entry *)(index + LSM_BLOCK_HEADER_SIZE))[1].data.address;
        device_state.blocks[damaged][LSM_BLOCK_HEADER_SIZE + 8] ^= 0x01;
        uint32_t zero_before = tree.levels[0].count;
        uint64_t used_before = grid.used_count;
        grid.error[0] = '\0';
        bool idle;
        CHECK(!lsm_tree_compact_step(&tree, UINT64_MAX, &idle));
        char expected[64];
        snprintf(expected, sizeof(expected), "grid block %llu", (unsigned long long)damaged);
        CHECK(strstr(grid.error, expected) != NULL);
        CHECK(grid.fault_damaged);
        CHECK(!tree.job.active);
        CHECK_EQ_U64(tree.levels[0].count, zero_before); /* the inputs are where they were */
        /* The job's reserved blocks are released (free after the next checkpoint). */
        CHECK(grid.used_count >= used_before);
        device_state.blocks[damaged][LSM_BLOCK_HEADER_SIZE + 8] ^= 0x01;
        CHECK(lsm_tree_compact(&tree));
        CHECK(tree.levels[0].count < zero_before);
        check_against_model(&tree, 3000);
        /* A job on the worker when its tree goes away: cancelled, nothing left behind. */
        for (uint32_t flush = 0; flush <= LSM_LEVEL0_FILL_MAX; flush++) {
                for (uint32_t i = 0; i < 4000; i++) {
                        uint64_t key = rng() % MODEL_KEYS;
                        struct value v = value_make(key, version++);
                        lsm_tree_put(&tree, &v);
                }
                CHECK(lsm_tree_flush(&tree));
        }
        CHECK(lsm_tree_compact_step(&tree, 1, &idle));
        CHECK(tree.job.active && tree.job.on_worker);
        lsm_tree_deinit(&tree);
        lsm_compactor_stop(&compactor);
        lsm_grid_deinit(&grid);
}

/* Keys that only grow (timestamps): compaction moves tables down, never rewrites them. */
static void test_tree_append_only(void)
{
        device_reset();
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 16) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "append", &layout, &grid, 4000) == 0);
        uint64_t key = 1;
        for (uint32_t bar = 0; bar < 100; bar++) {
                for (uint32_t i = 0; i < 4000; i++) {
                        struct value v = value_make(key, key);
                        lsm_tree_put(&tree, &v);
                        key++;
                }
                CHECK(lsm_tree_flush(&tree));
                CHECK(lsm_tree_compact(&tree));
        }
        CHECK(tree.stats.tables_moved > 0);
        /* Level 0 into level 1 rewrites (it merges all of level 0); nothing deeper does. */
        CHECK(tree.stats.values_compacted <= 2 * 400000ull);
        uint32_t wrong = 0;
        for (uint32_t p = 0; p < 5000; p++) {
                uint64_t k = 1 + rng() % (key - 1);
                struct value out;
                if (lsm_tree_get(&tree, &k, &out) != 1 || out.version != k)
                        wrong++;
        }
        CHECK_EQ_U64(wrong, 0);
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}

/* A damaged, a misdirected and an unreadable block are reported by address, never misread. */
static void test_tree_faults(void)
{
        device_reset();
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 8) == 0);
        struct lsm_tree tree;
        CHECK(lsm_tree_init(&tree, "faults", &layout, &grid, 5000) == 0);
        for (uint64_t k = 0; k < 5000; k++) {
                struct value v = value_make(k, k);
                lsm_tree_put(&tree, &v);
        }
        CHECK(lsm_tree_flush(&tree));
        /* Evict everything: read enough other blocks through the tiny cache. */
        const struct lsm_table_info *table = &tree.levels[0].tables[0];
        const uint8_t *index = lsm_grid_read(&grid, table->index, LSM_BLOCK_TABLE_INDEX);
        CHECK(index != NULL);
        struct lsm_index_entry entry =
                ((const struct lsm_index_entry *)(index + LSM_BLOCK_HEADER_SIZE))[2];
        uint64_t damaged = entry.data.address;
        device_state.blocks[damaged][LSM_BLOCK_HEADER_SIZE + 40] ^= 0x10;
        lsm_grid_cache_clear(&grid);
        uint64_t key;
        memcpy(&key, entry.key_min, 8);
        struct value out;
        grid.error[0] = '\0';
        int rc = lsm_tree_get(&tree, &key, &out);
        CHECK_EQ_U64(rc, (uint64_t)-1);
        char expected[64];
        snprintf(expected, sizeof(expected), "grid block %llu", (unsigned long long)damaged);
        CHECK(strstr(grid.error, expected) != NULL);
        CHECK(strstr(grid.error, "checksum") != NULL);
        /* A scan over the damaged block fails too, rather than skip it. */
        uint64_t lo = 0, hi = 4999;
        struct scan_check check = {.limit = UINT64_MAX};
        CHECK(lsm_tree_scan(&tree, &lo, &hi, false, scan_visit, &check) == -1);
        device_state.blocks[damaged][LSM_BLOCK_HEADER_SIZE + 40] ^= 0x10;
        CHECK_EQ_U64(lsm_tree_get(&tree, &key, &out), 1);

        /* An unreadable block. */
        device_state.fail_read = damaged;
        lsm_grid_cache_clear(&grid);
        CHECK_EQ_U64(lsm_tree_get(&tree, &key, &out), (uint64_t)-1);
        CHECK(strstr(grid.error, "Input/output error") != NULL);
        device_state.fail_read = 0;

        /* A misdirected write: the next table's first block lands on an existing block. */
        device_state.misdirect_from = grid.acquire_hint;
        device_state.misdirect_to = damaged;
        for (uint64_t k = 5000; k < 6000; k++) {
                struct value v = value_make(k, k);
                lsm_tree_put(&tree, &v);
        }
        CHECK(lsm_tree_flush(&tree));
        device_state.misdirect_from = 0;
        lsm_grid_cache_clear(&grid);
        grid.error[0] = '\0';
        rc = lsm_tree_get(&tree, &key, &out); /* the block that was overwritten */
        CHECK_EQ_U64(rc, (uint64_t)-1);
        CHECK(strstr(grid.error, "misdirected") != NULL);
        lsm_tree_deinit(&tree);
        lsm_grid_deinit(&grid);
}


/* ---- forest checkpoints ------------------------------------------------------------------ */

#define FOREST_KEYS 60000u

struct forest_world {
        struct lsm_grid grid;
        struct lsm_tree a, b; /* layouts tree ids 7 and 8 */
        struct lsm_forest forest;
};

static uint64_t model_a[FOREST_KEYS], model_b[FOREST_KEYS];
static uint64_t saved_a[FOREST_KEYS], saved_b[FOREST_KEYS];

static bool world_start(struct forest_world *w)
{
        return lsm_grid_init(&w->grid, &device, 40000, 32) == 0 &&
               lsm_tree_init(&w->a, "a", &layout, &w->grid, 8000) == 0 &&
               lsm_tree_init(&w->b, "b", &layout_small_tables, &w->grid, 8000) == 0 &&
               lsm_forest_init(&w->forest, &w->grid) == 0 &&
               (lsm_forest_add(&w->forest, &w->a), lsm_forest_add(&w->forest, &w->b), true);
}

static void world_stop(struct forest_world *w)
{
        lsm_forest_deinit(&w->forest);
        lsm_tree_deinit(&w->a);
        lsm_tree_deinit(&w->b);
        lsm_grid_deinit(&w->grid);
}

static void world_bar(struct forest_world *w, uint64_t *version)
{
        for (uint32_t i = 0; i < 6000; i++) {
                uint64_t key = rng() % FOREST_KEYS;
                struct value v = value_make(key, *version);
                if (i % 3 == 0) {
                        lsm_tree_put(&w->b, &v);
                        model_b[key] = ++*version;
                } else {
                        lsm_tree_put(&w->a, &v);
                        model_a[key] = ++*version;
                }
        }
        CHECK(lsm_tree_flush(&w->a) && lsm_tree_flush(&w->b));
        CHECK(lsm_tree_compact(&w->a) && lsm_tree_compact(&w->b));
}

static uint32_t world_wrong(struct forest_world *w, const uint64_t *a, const uint64_t *b)
{
        uint32_t wrong = 0;
        for (uint64_t key = 0; key < FOREST_KEYS; key += 7) {
                struct value out;
                int rc = lsm_tree_get(&w->a, &key, &out);
                if (rc < 0 || (rc == 1) != (a[key] != 0) || (rc == 1 && out.version + 1 != a[key]))
                        wrong++;
                rc = lsm_tree_get(&w->b, &key, &out);
                if (rc < 0 || (rc == 1) != (b[key] != 0) || (rc == 1 && out.version + 1 != b[key]))
                        wrong++;
        }
        return wrong;
}

/* Blocks a checkpoint references: root, manifest, free set, every table's index and data. */
static uint64_t world_referenced(struct forest_world *w)
{
        uint64_t count = 1 + w->forest.manifest_count + w->forest.free_set_count;
        struct lsm_tree *trees[2] = {&w->a, &w->b};
        for (uint32_t t = 0; t < 2; t++)
                for (uint32_t level = 0; level < LSM_LEVELS; level++)
                        for (uint32_t k = 0; k < trees[t]->levels[level].count; k++)
                                count += 1 + trees[t]->levels[level].tables[k].data_block_count;
        return count;
}

static bool count_visit(void *context, const void *value)
{
        (void)value;
        (*(uint64_t *)context)++;
        return true;
}

static void test_forest_crash(void)
{
        device_reset();
        memset(model_a, 0, sizeof(model_a));
        memset(model_b, 0, sizeof(model_b));
        rng_state = 99;
        static struct forest_world w;
        CHECK(world_start(&w));
        uint64_t version = 0;
        struct lsm_block_ref durable = {0};
        uint64_t user_durable = 0;
        for (uint32_t round = 1; round <= 24; round++) {
                world_bar(&w, &version);
                if (round % 3 != 0)
                        continue;
                struct lsm_block_ref root;
                uint64_t user = round;
                CHECK(lsm_forest_checkpoint(&w.forest, &user, sizeof(user), &root));
                lsm_forest_checkpoint_durable(&w.forest);
                durable = root;
                user_durable = user;
                memcpy(saved_a, model_a, sizeof(model_a));
                memcpy(saved_b, model_b, sizeof(model_b));
        }
        CHECK(w.forest.blocks_written_last < w.grid.used_count); /* incremental free set */
        /* After the durable checkpoint: more bars (compactions release and the free set hands
         * out blocks) and a checkpoint whose superblock never made it. Then the crash. */
        for (uint32_t round = 0; round < 4; round++)
                world_bar(&w, &version);
        struct lsm_block_ref unfinished;
        uint64_t user = 999;
        CHECK(lsm_forest_checkpoint(&w.forest, &user, sizeof(user), &unfinished));
        world_bar(&w, &version);
        world_stop(&w);

        CHECK(world_start(&w));
        uint64_t restored = 0;
        uint32_t restored_size = 0;
        CHECK(lsm_forest_open(&w.forest, durable, &restored, &restored_size));
        CHECK_EQ_U64(restored_size, sizeof(uint64_t));
        CHECK_EQ_U64(restored, user_durable);
        CHECK_EQ_U64(world_wrong(&w, saved_a, saved_b), 0);
        /* Every block it references is intact: nothing after it overwrote one. */
        uint64_t n = 0;
        CHECK(lsm_tree_scan(&w.a, NULL, NULL, false, count_visit, &n) >= 0);
        CHECK(lsm_tree_scan(&w.b, NULL, NULL, true, count_visit, &n) >= 0);
        uint64_t expected = 0;
        for (uint32_t k = 0; k < FOREST_KEYS; k++)
                expected += (saved_a[k] != 0) + (saved_b[k] != 0);
        CHECK_EQ_U64(n, expected);
        /* The free set is the checkpoint's: exactly the referenced blocks are in use. */
        CHECK_EQ_U64(w.grid.used_count, world_referenced(&w));
        /* Work goes on from there: new bars, a checkpoint, another reopen. */
        memcpy(model_a, saved_a, sizeof(model_a));
        memcpy(model_b, saved_b, sizeof(model_b));
        for (uint32_t round = 0; round < 5; round++)
                world_bar(&w, &version);
        struct lsm_block_ref root;
        user = 1234;
        CHECK(lsm_forest_checkpoint(&w.forest, &user, sizeof(user), &root));
        lsm_forest_checkpoint_durable(&w.forest);
        world_stop(&w);
        CHECK(world_start(&w));
        CHECK(lsm_forest_open(&w.forest, root, &restored, &restored_size));
        CHECK_EQ_U64(restored, 1234);
        CHECK_EQ_U64(world_wrong(&w, model_a, model_b), 0);
        CHECK_EQ_U64(w.grid.used_count, world_referenced(&w));
        /* A damaged root is named, not trusted. */
        device_state.blocks[root.address][LSM_BLOCK_HEADER_SIZE + 3] ^= 1;
        lsm_grid_cache_clear(&w.grid);
        CHECK(!lsm_forest_open(&w.forest, root, &restored, &restored_size));
        CHECK(strstr(w.grid.error, "checkpoint root") != NULL);
        CHECK(strstr(w.grid.error, "checksum") != NULL);
        world_stop(&w);
}

/* ---- the manifest log --------------------------------------------------------------------- */

/*
 * A model of two trees' levels (fake tables: one key each, made-up index references; the
 * manifest reads neither; level 0 kept small, as trees do), changed at random between
 * checkpoints: after each checkpoint the log
 * read back from the grid gives exactly the model's tables, level 0 in order; a checkpoint's
 * manifest writes follow its changes, not the 20,000 tables stored; a root written before the
 * log reads back and is rewritten whole once; a damaged log block is named.
 */
#define MODEL_TREES 2u
struct manifest_model {
        struct lsm_table_info *tables[MODEL_TREES][LSM_LEVELS];
        uint32_t count[MODEL_TREES][LSM_LEVELS];
        uint64_t next_key, next_address;
};
static struct manifest_model mm;

static uint64_t table_key(const struct lsm_table_info *t)
{
        uint64_t key;
        memcpy(&key, t->key_min, 8);
        return key;
}

static void model_insert(uint32_t tree, uint32_t level, const struct lsm_table_info *table)
{
        uint32_t n = mm.count[tree][level];
        mm.tables[tree][level] = realloc(mm.tables[tree][level], (n + 1) * sizeof(*table));
        tally_assert(mm.tables[tree][level] != NULL);
        uint32_t at = n;
        if (level > 0) /* sorted by key; level 0 appends (newest last) */
                while (at > 0 && table_key(&mm.tables[tree][level][at - 1]) > table_key(table))
                        at--;
        memmove(&mm.tables[tree][level][at + 1], &mm.tables[tree][level][at],
                (n - at) * sizeof(*table));
        mm.tables[tree][level][at] = *table;
        mm.count[tree][level]++;
}

static struct lsm_table_info model_remove(uint32_t tree, uint32_t level, uint32_t at)
{
        struct lsm_table_info t = mm.tables[tree][level][at];
        memmove(&mm.tables[tree][level][at], &mm.tables[tree][level][at + 1],
                (mm.count[tree][level] - at - 1) * sizeof(t));
        mm.count[tree][level]--;
        return t;
}

static struct lsm_table_info model_table(void)
{
        struct lsm_table_info t;
        memset(&t, 0, sizeof(t));
        uint64_t key = (mm.next_key += 1 + rng() % 1000);
        memcpy(t.key_min, &key, 8);
        memcpy(t.key_max, &key, 8);
        t.index.address = ++mm.next_address;
        t.index.checksum = ((u128)rng() << 64) | rng();
        t.value_count = 1 + rng() % 100;
        t.data_block_count = 1;
        return t;
}

static uint64_t model_live(void)
{
        uint64_t n = 0;
        for (uint32_t t = 0; t < MODEL_TREES; t++)
                for (uint32_t l = 0; l < LSM_LEVELS; l++)
                        n += mm.count[t][l];
        return n;
}

/* Random changes: `adds` new tables (a third to level 0), `removes` gone, `moves` level 0 -> 1. */
static uint32_t model_churn(uint32_t adds, uint32_t removes, uint32_t moves)
{
        uint32_t changes = 0;
        for (uint32_t i = 0; i < adds; i++, changes++) {
                struct lsm_table_info t = model_table();
                uint32_t tree = rng() % MODEL_TREES;
                /* Level 0 stays small, as a tree's budget keeps it. */
                bool zero = rng() % 3 == 0 && mm.count[tree][0] < 48;
                model_insert(tree, zero ? 0 : 1 + rng() % (LSM_LEVELS - 1), &t);
        }
        for (uint32_t i = 0; i < removes; i++) {
                uint32_t tree = rng() % MODEL_TREES, level = rng() % LSM_LEVELS;
                if (mm.count[tree][level] == 0)
                        continue;
                model_remove(tree, level, (uint32_t)(rng() % mm.count[tree][level]));
                changes++;
        }
        for (uint32_t i = 0; i < moves; i++) {
                uint32_t tree = rng() % MODEL_TREES;
                if (mm.count[tree][0] == 0)
                        continue;
                struct lsm_table_info t = model_remove(tree, 0, 0); /* the oldest */
                model_insert(tree, 1, &t);
                changes += 2;
        }
        return changes;
}

/* The trees' levels become the model's. */
static void model_to_trees(struct lsm_tree *trees)
{
        for (uint32_t t = 0; t < MODEL_TREES; t++)
                for (uint32_t l = 0; l < LSM_LEVELS; l++) {
                        trees[t].levels[l].count = 0;
                        trees[t].levels[l].value_count = 0;
                        for (uint32_t k = 0; k < mm.count[t][l]; k++)
                                lsm_tree_table_append(&trees[t], l, &mm.tables[t][l][k]);
                }
}

static int record_key_compare(const void *a, const void *b)
{
        uint64_t x = table_key(&((const struct lsm_manifest_record *)a)->table);
        uint64_t y = table_key(&((const struct lsm_manifest_record *)b)->table);
        return x < y ? -1 : x > y;
}

/* Mismatches between a manifest's live tables and the model. */
static uint32_t manifest_wrong(struct lsm_manifest *m)
{
        const struct lsm_manifest_record *live;
        uint64_t count = lsm_manifest_live(m, &live);
        if (count != model_live())
                return 1;
        uint32_t wrong = 0;
        uint64_t at = 0;
        for (uint32_t t = 0; t < MODEL_TREES; t++)
                for (uint32_t l = 0; l < LSM_LEVELS; l++) {
                        uint32_t n = mm.count[t][l];
                        struct lsm_manifest_record *group = (struct lsm_manifest_record *)&live[at];
                        if (l > 0)
                                qsort(group, n, sizeof(*group), record_key_compare);
                        for (uint32_t k = 0; k < n; k++) {
                                const struct lsm_manifest_record *r = &group[k];
                                const struct lsm_table_info *want = &mm.tables[t][l][k];
                                if (r->tree != 7 + t || r->level != l ||
                                    r->table.index.address != want->index.address ||
                                    r->table.index.checksum != want->index.checksum ||
                                    r->table.value_count != want->value_count)
                                        wrong++;
                        }
                        at += n;
                }
        return wrong;
}

static bool manifest_reload(struct lsm_manifest *from, struct lsm_manifest *into,
                            struct lsm_grid *grid)
{
        struct lsm_block_ref newest = lsm_manifest_newest(from);
        lsm_grid_cache_clear(grid);
        return lsm_manifest_load(into, grid, &newest, from->block_count, false);
}

static void test_manifest_log(void)
{
        device_reset();
        memset(&mm, 0, sizeof(mm));
        rng_state = 4242;
        static struct lsm_grid grid;
        static struct lsm_tree trees[MODEL_TREES];
        struct lsm_tree *named[9] = {NULL};
        CHECK(lsm_grid_init(&grid, &device, 8000, 32) == 0);
        for (uint32_t t = 0; t < MODEL_TREES; t++) {
                CHECK(lsm_tree_init(&trees[t], "model", &layout, &grid, 64) == 0);
                named[7 + t] = &trees[t];
        }
        uint8_t *block = aligned_alloc(4096, LSM_BLOCK_SIZE);
        static struct lsm_manifest m, back;
        lsm_manifest_init(&m);
        lsm_manifest_init(&back);
        uint32_t wrong = 0, over_budget = 0, rounds = 0;
        uint64_t written_churn = 0, churn_rounds = 0, ratio_max_x100 = 0;
        uint32_t written_max = 0;
        for (uint32_t round = 0; round < 260; round++) {
                uint32_t changes = round < 40 ? model_churn(500, 0, 0)
                                              : model_churn(rng() % 40, rng() % 40, rng() % 4);
                model_to_trees(trees);
                CHECK(lsm_manifest_checkpoint(&m, &grid, named, 9, block));
                lsm_grid_checkpoint_written(&grid);
                lsm_grid_checkpoint(&grid);
                rounds++;
                wrong += manifest_wrong(&m);
                CHECK(manifest_reload(&m, &back, &grid));
                wrong += manifest_wrong(&back);
                uint32_t per_block = LSM_MANIFEST_RECORDS_PER_BLOCK;
                uint32_t change_blocks = (changes + per_block - 1) / per_block;
                /* + 1: a tree's level 0 appended again whole (48 tables at most here). */
                if (m.blocks_written_last > change_blocks + m.blocks_compacted_last + 1 ||
                    m.blocks_compacted_last > LSM_MANIFEST_COMPACT_BLOCKS_MIN + 2 * change_blocks)
                        over_budget++;
                uint64_t live = model_live();
                ratio_max_x100 = MAX(ratio_max_x100, m.record_count * 100 / (live + 1));
                if (round >= 60) {
                        written_max = MAX(written_max, m.blocks_written_last);
                        written_churn += m.blocks_written_last;
                        churn_rounds++;
                }
        }
        uint64_t live = model_live();
        printf("manifest log: %llu tables live (%llu blocks listed whole), %llu log blocks, "
               "%.2f blocks written per checkpoint of churn (max %u), log/live records max %.2f\n",
               (unsigned long long)live,
               (unsigned long long)((live + LSM_MANIFEST_LEGACY_RECORDS_PER_BLOCK - 1) / LSM_MANIFEST_LEGACY_RECORDS_PER_BLOCK),
               (unsigned long long)m.block_count, (double)written_churn / (double)churn_rounds,
               written_max, (double)ratio_max_x100 / 100.0);
        CHECK_EQ_U64(wrong, 0);
        CHECK_EQ_U64(over_budget, 0);
        CHECK(live >= 19000);
        /* What changed, not what is stored: a whole list would be 38+ blocks each time. */
        CHECK(written_churn <= 4 * churn_rounds);
        /* The log stays near twice the live records (plus a few blocks in flight), in as
         * many blocks. */
        CHECK(m.record_count <= 2 * live + 6 * LSM_MANIFEST_RECORDS_PER_BLOCK);
        CHECK(m.block_count <= 2 * (live / LSM_MANIFEST_RECORDS_PER_BLOCK + 1) + 8);

        /* A root written before the log: every table once, level order, records from the
         * payload's start. It reads back, and the next checkpoint rewrites it whole. */
        struct lsm_block_ref legacy[64];
        uint32_t legacy_count = 0, in_block = 0;
        struct lsm_manifest_record *records = (struct lsm_manifest_record *)(block + LSM_BLOCK_HEADER_SIZE);
        for (uint32_t t = 0; t <= MODEL_TREES; t++)
                for (uint32_t l = 0; l < LSM_LEVELS && t < MODEL_TREES; l++)
                        for (uint32_t k = 0; k < mm.count[t][l]; k++) {
                                memset(&records[in_block], 0, sizeof(records[in_block]));
                                records[in_block].tree = (uint8_t)(7 + t);
                                records[in_block].level = (uint8_t)l;
                                records[in_block].table = mm.tables[t][l][k];
                                if (++in_block < LSM_MANIFEST_LEGACY_RECORDS_PER_BLOCK)
                                        continue;
                                legacy[legacy_count++] = lsm_grid_write(
                                        &grid, block, LSM_BLOCK_MANIFEST, 0, 128, in_block,
                                        LSM_BLOCK_HEADER_SIZE + in_block * 128);
                                in_block = 0;
                        }
        if (in_block > 0)
                legacy[legacy_count++] = lsm_grid_write(&grid, block, LSM_BLOCK_MANIFEST, 0, 128,
                                                        in_block,
                                                        LSM_BLOCK_HEADER_SIZE + in_block * 128);
        lsm_grid_cache_clear(&grid);
        CHECK(lsm_manifest_load(&back, &grid, legacy, legacy_count, true));
        CHECK_EQ_U64(manifest_wrong(&back), 0);
        CHECK(back.legacy);
        model_churn(10, 10, 1);
        model_to_trees(trees);
        CHECK(lsm_manifest_checkpoint(&back, &grid, named, 9, block));
        CHECK_EQ_U64(back.blocks_compacted_last, legacy_count);
        CHECK(!back.legacy);
        CHECK(manifest_reload(&back, &m, &grid));
        CHECK_EQ_U64(manifest_wrong(&m), 0);

        /* A damaged log block is named, not trusted. */
        uint64_t victim = m.blocks[m.block_count / 2].ref.address;
        device_state.blocks[victim][LSM_BLOCK_HEADER_SIZE + 200] ^= 4;
        CHECK(!manifest_reload(&back, &m, &grid));
        CHECK(strstr(grid.error, "checksum") != NULL);

        lsm_manifest_deinit(&m);
        lsm_manifest_deinit(&back);
        for (uint32_t t = 0; t < MODEL_TREES; t++) {
                lsm_tree_deinit(&trees[t]);
                for (uint32_t l = 0; l < LSM_LEVELS; l++)
                        free(mm.tables[t][l]);
        }
        lsm_grid_deinit(&grid);
        free(block);
}

/*
 * Crashes with every fate for the writes since the last durable checkpoint (kept, lost, torn,
 * damaged), over many seeds: the checkpoint always reopens with exactly its contents, because
 * it references none of those writes. Then bit rot in a block it does reference: every lookup
 * returns the right value or reports a fault, never a wrong value.
 */
static void test_forest_crash_fates(void)
{
        uint32_t reopened = 0, lookups_faulted = 0, wrong_total = 0;
        for (uint64_t seed = 1; seed <= 12; seed++) {
                device_reset();
                memset(model_a, 0, sizeof(model_a));
                memset(model_b, 0, sizeof(model_b));
                rng_state = seed * 7919;
                static struct forest_world w;
                CHECK(world_start(&w));
                device_state.journal = true;
                uint64_t version = 0;
                struct lsm_block_ref durable = {0};
                uint32_t rounds = 4 + (uint32_t)(rng() % 8);
                for (uint32_t round = 1; round <= rounds; round++) {
                        world_bar(&w, &version);
                        if (rng() % 3 == 0 || round == 2) {
                                struct lsm_block_ref root;
                                uint64_t user = round;
                                CHECK(lsm_forest_checkpoint(&w.forest, &user, sizeof(user), &root));
                                lsm_forest_checkpoint_durable(&w.forest);
                                durable = root;
                                journal_clear();
                                memcpy(saved_a, model_a, sizeof(model_a));
                                memcpy(saved_b, model_b, sizeof(model_b));
                        }
                }
                if (rng() % 2) { /* an unfinished checkpoint too */
                        struct lsm_block_ref root;
                        uint64_t user = 0;
                        CHECK(lsm_forest_checkpoint(&w.forest, &user, sizeof(user), &root));
                }
                world_stop(&w);
                /* The crash: each write since the durable checkpoint lands, vanishes, tears or
                 * is damaged. */
                for (uint32_t i = device_state.journal_count; i-- > 0;) {
                        uint64_t address = device_state.journal_addresses[i];
                        uint8_t *block = device_state.blocks[address];
                        uint8_t *before = device_state.journal_before[i];
                        switch (rng() % 4) {
                        case 0:
                                break; /* landed */
                        case 1: /* lost: the old content */
                                if (before != NULL)
                                        memcpy(block, before, LSM_BLOCK_SIZE);
                                else
                                        memset(block, 0, LSM_BLOCK_SIZE);
                                break;
                        case 2: /* torn: the second half is old */
                                if (before != NULL)
                                        memcpy(block + LSM_BLOCK_SIZE / 2, before + LSM_BLOCK_SIZE / 2,
                                               LSM_BLOCK_SIZE / 2);
                                else
                                        memset(block + LSM_BLOCK_SIZE / 2, 0, LSM_BLOCK_SIZE / 2);
                                break;
                        default: /* damaged */
                                block[rng() % LSM_BLOCK_SIZE] ^= (uint8_t)(1u << (rng() % 8));
                                break;
                        }
                }
                device_state.journal = false;
                journal_clear();
                CHECK(world_start(&w));
                uint64_t restored = 0;
                uint32_t size = 0;
                bool opened = lsm_forest_open(&w.forest, durable, &restored, &size);
                CHECK(opened);
                if (opened) {
                        reopened++;
                        uint32_t wrong = world_wrong(&w, saved_a, saved_b);
                        CHECK_EQ_U64(wrong, 0);
                        CHECK_EQ_U64(w.grid.used_count, world_referenced(&w));
                }
                /* Bit rot in a block the checkpoint references: faults, never wrong values. */
                if (opened && w.a.levels[0].count + w.a.levels[1].count > 0) {
                        const struct lsm_level *l = &w.a.levels[w.a.levels[1].count > 0 ? 1 : 0];
                        const uint8_t *index = lsm_grid_read(&w.grid, l->tables[0].index,
                                                             LSM_BLOCK_TABLE_INDEX);
                        CHECK(index != NULL);
                        struct lsm_block_ref victim =
                                ((const struct lsm_index_entry *)(index +
                                                                  LSM_BLOCK_HEADER_SIZE))[0].data;
                        device_state.blocks[victim.address][LSM_BLOCK_HEADER_SIZE + 7] ^= 0x40;
                        lsm_grid_cache_clear(&w.grid);
                        for (uint64_t key = 0; key < FOREST_KEYS; key += 3) {
                                struct value out;
                                int rc = lsm_tree_get(&w.a, &key, &out);
                                if (rc < 0)
                                        lookups_faulted++;
                                else if ((rc == 1) != (saved_a[key] != 0) ||
                                         (rc == 1 && out.version + 1 != saved_a[key]))
                                        wrong_total++;
                        }
                }
                world_stop(&w);
        }
        CHECK_EQ_U64(reopened, 12);
        CHECK(lookups_faulted > 0);
        CHECK_EQ_U64(wrong_total, 0);
        printf("crash fates: 12 seeds reopened exactly; bit rot: %u lookups faulted, 0 wrong\n",
               lookups_faulted);
}

/* ---- prefetch ----------------------------------------------------------------------------- */

struct async_read {
        uint64_t address;
        uint8_t *block;
        void (*callback)(void *token, int result);
        void *token;
};

static struct async_read async_queue[LSM_GRID_READS_MAX];
static uint32_t async_count;
static uint32_t async_in_flight_max;

static void device_read_async(void *context, uint64_t address, uint8_t *block,
                              void (*callback)(void *token, int result), void *token)
{
        (void)context;
        tally_assert(async_count < LSM_GRID_READS_MAX);
        async_queue[async_count++] = (struct async_read){address, block, callback, token};
        async_in_flight_max = MAX(async_in_flight_max, async_count);
}

/* Completes queued reads in random order until none is left. */
static void async_pump(void)
{
        while (async_count > 0) {
                uint32_t i = (uint32_t)(rng() % async_count);
                struct async_read read = async_queue[i];
                async_queue[i] = async_queue[--async_count];
                int rc = device_read(&device_state, read.address, read.block);
                read.callback(read.token, rc);
        }
}

static const struct lsm_device device_async = {
        .context = &device_state,
        .read = device_read,
        .write = device_write,
        .read_async = device_read_async,
};

static uint32_t prefetch_done_calls;
static void prefetch_done(void *context)
{
        (void)context;
        prefetch_done_calls++;
}

#define PREFETCH_LOOKUPS 6000u

static struct lsm_lookup lookups[PREFETCH_LOOKUPS];
static struct value results[PREFETCH_LOOKUPS];

/* Prefetches random keys (with repeats) and compares each answer with lsm_tree_get. */
static void prefetch_check(struct lsm_tree *tree, struct lsm_grid *grid, uint64_t key_space,
                           struct lsm_prefetch_stats *stats)
{
        for (uint32_t i = 0; i < PREFETCH_LOOKUPS; i++) {
                uint64_t key = i % 10 == 9 ? rng() % 16 : rng() % key_space; /* hot keys too */
                lsm_lookup_init(&lookups[i], tree, &key, &results[i]);
        }
        static struct lsm_prefetch prefetch;
        prefetch_done_calls = 0;
        lsm_prefetch_start(&prefetch, grid, lookups, PREFETCH_LOOKUPS, prefetch_done, NULL);
        async_pump();
        CHECK_EQ_U64(prefetch_done_calls, 1);
        CHECK(!lsm_prefetch_busy(&prefetch));
        uint32_t wrong = 0;
        for (uint32_t i = 0; i < PREFETCH_LOOKUPS; i++) {
                uint64_t key;
                memcpy(&key, lookups[i].key, 8);
                struct value out;
                int rc = lsm_tree_get(tree, &key, &out);
                bool found = lookups[i].state == LSM_LOOKUP_FOUND;
                if (lookups[i].state == LSM_LOOKUP_PENDING || lookups[i].state == LSM_LOOKUP_FAULT ||
                    rc != (found ? 1 : 0) || (found && memcmp(&out, &results[i], sizeof(out)) != 0))
                        wrong++;
        }
        CHECK_EQ_U64(wrong, 0);
        *stats = prefetch.stats;
}

static void test_prefetch(void)
{
        device_reset();
        rng_state = 4242;
        uint32_t caches[2] = {256, 8};
        for (uint32_t round = 0; round < 2; round++) {
                device_reset();
                struct lsm_grid grid;
                CHECK(lsm_grid_init(&grid, &device_async, DEVICE_BLOCKS, caches[round]) == 0);
                struct lsm_tree tree;
                CHECK(lsm_tree_init(&tree, "prefetch", &layout_small_tables, &grid, 10000) == 0);
                uint64_t key_space = 400000, version = 0;
                for (uint32_t bar = 0; bar < 30; bar++) {
                        for (uint32_t i = 0; i < 10000; i++) {
                                struct value v = value_make(rng() % key_space, version++);
                                lsm_tree_put(&tree, &v);
                        }
                        CHECK(lsm_tree_flush(&tree));
                        CHECK(lsm_tree_compact(&tree));
                }
                for (uint32_t i = 0; i < 3000; i++) { /* some answers come from the memtable */
                        struct value v = value_make(rng() % key_space, version++);
                        lsm_tree_put(&tree, &v);
                }
                lsm_grid_cache_clear(&grid);
                async_in_flight_max = 0;
                struct lsm_prefetch_stats stats;
                prefetch_check(&tree, &grid, key_space, &stats);
                CHECK(stats.reads > 0);
                CHECK(stats.reads_shared > 0);         /* hot keys share their reads */
                /* Reads really go out together: as many as the cache has ways to pin. */
                CHECK(async_in_flight_max >= MIN(8u, caches[round]));
                CHECK(round == 1 || async_in_flight_max > 8);
                printf("prefetch cache=%u: lookups=%u reads=%llu shared=%llu in_flight_max=%u\n",
                       caches[round], PREFETCH_LOOKUPS, (unsigned long long)stats.reads,
                       (unsigned long long)stats.reads_shared, stats.in_flight_max);
                /* A damaged block: the lookups that need it fail and say which; none misreads. */
                if (round == 0) {
                        const struct lsm_table_info *table = &tree.levels[1].tables[0];
                        device_state.blocks[table->index.address][LSM_BLOCK_HEADER_SIZE] ^= 1;
                        lsm_grid_cache_clear(&grid);
                        uint64_t key;
                        memcpy(&key, table->key_min, 8);
                        struct value out;
                        struct lsm_lookup one;
                        lsm_lookup_init(&one, &tree, &key, &out);
                        struct lsm_prefetch prefetch;
                        prefetch_done_calls = 0;
                        lsm_prefetch_start(&prefetch, &grid, &one, 1, prefetch_done, NULL);
                        async_pump();
                        CHECK_EQ_U64(prefetch_done_calls, 1);
                        if (one.state != LSM_LOOKUP_FOUND) { /* not answered by a newer table */
                                CHECK(one.state == LSM_LOOKUP_FAULT);
                                char expected[48];
                                snprintf(expected, sizeof(expected), "grid block %llu",
                                         (unsigned long long)table->index.address);
                                CHECK(strstr(grid.error, expected) != NULL);
                        }
                        device_state.blocks[table->index.address][LSM_BLOCK_HEADER_SIZE] ^= 1;
                }
                lsm_tree_deinit(&tree);
                lsm_grid_deinit(&grid);
        }
}

/* ---- grooves and indexed queries ---------------------------------------------------------- */

struct object {
        u128 id;
        u128 user_data_128;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint32_t ledger;
        uint16_t code;
        uint16_t flags;
        uint8_t reserved[12];
        u128 balance; /* changes; never indexed */
        uint8_t reserved_2[40];
        uint64_t timestamp;
};
_Static_assert(sizeof(struct object) == 128, "test object size");

#define GROOVE_OBJECTS 40000u

static struct object objects_model[GROOVE_OBJECTS]; /* in timestamp order */
static struct object query_out[256];

static const struct lsm_groove_config groove_config = {
        .name = "things",
        .tree_base = 10,
        .object_size = sizeof(struct object),
        .id_offset = 0,
        .timestamp_offset = 120,
        .index_count = 5,
        .indexes = {{"user_data_128", 16, 16},
                    {"user_data_64", 32, 8},
                    {"user_data_32", 40, 4},
                    {"ledger", 44, 4},
                    {"code", 48, 2}},
        .memtable_max = 4000,
        .table_data_blocks_max = 4,
};

static u128 object_field(const struct object *o, uint32_t i)
{
        switch (i) {
        case 0: return o->user_data_128;
        case 1: return o->user_data_64;
        case 2: return o->user_data_32;
        case 3: return o->ledger;
        default: return o->code;
        }
}

/*
 * The object cache of a groove: with room for a few hundred objects among 40,000, lookups
 * interleaved with inserts and updates always return the latest version (an update of a cached
 * object writes through it), the cache is hit, and it evicts.
 */
static void test_groove_cache(void)
{
        device_reset();
        rng_state = 4242;
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 128) == 0);
        static struct lsm_groove groove;
        struct lsm_groove_config config = groove_config;
        config.cache_bytes = 64 << 10;
        CHECK(lsm_groove_init(&groove, &config, &grid) == 0);
        CHECK(groove.cache.set_count > 0);
        uint32_t ways = groove.cache.set_count * LSM_GROOVE_CACHE_WAYS;
        uint64_t timestamp = 1000;
        uint32_t wrong = 0;
        for (uint32_t n = 0; n < GROOVE_OBJECTS; n++) {
                struct object *o = &objects_model[n];
                memset(o, 0, sizeof(*o));
                o->id = ((u128)rng() << 64) | rng();
                o->code = (uint16_t)(1 + rng() % 400);
                o->balance = n;
                timestamp += 1 + rng() % 5;
                o->timestamp = timestamp;
                if (!lsm_groove_has_room(&groove, 3)) { /* an insert and two updates */
                        CHECK(lsm_groove_flush(&groove));
                        CHECK(lsm_groove_compact(&groove));
                }
                lsm_groove_insert(&groove, o);
                struct object out;
                /* A hot set looked up over and over, and now and then one of them changes. */
                struct object *hot = &objects_model[rng() % (n < 64 ? n + 1 : 64)];
                if (lsm_groove_get_by_id(&groove, hot->id, &out) != 1 ||
                    memcmp(&out, hot, sizeof(out)) != 0)
                        wrong++;
                if (n % 3 == 0) {
                        hot->balance += 1000000;
                        lsm_groove_update(&groove, hot);
                }
                /* And anything at all, looked up and changed. */
                struct object *any = &objects_model[rng() % (n + 1)];
                if (lsm_groove_get_by_id(&groove, any->id, &out) != 1 ||
                    memcmp(&out, any, sizeof(out)) != 0)
                        wrong++;
                if (n % 7 == 0) {
                        any->balance += 1;
                        lsm_groove_update(&groove, any);
                }
        }
        for (uint32_t n = 0; n < GROOVE_OBJECTS; n++) {
                struct object out;
                if (lsm_groove_get_by_id(&groove, objects_model[n].id, &out) != 1 ||
                    memcmp(&out, &objects_model[n], sizeof(out)) != 0)
                        wrong++;
        }
        CHECK_EQ_U64(wrong, 0);
        CHECK(ways < GROOVE_OBJECTS / 50); /* most objects were evicted or never cached */
        CHECK(groove.cache.hits > GROOVE_OBJECTS / 2); /* the hot set stays */
        CHECK(groove.cache.misses > GROOVE_OBJECTS / 2);
        printf("groove cache: %u ways, hits=%llu misses=%llu\n", ways,
               (unsigned long long)groove.cache.hits, (unsigned long long)groove.cache.misses);
        lsm_groove_deinit(&groove);
        lsm_grid_deinit(&grid);
}

/* 400 random queries of `groove` against brute force over objects_model: the mismatches. */
static uint32_t groove_queries_check(struct lsm_groove *groove, uint64_t timestamp,
                                     uint32_t *unions, uint32_t *union_results)
{
        uint32_t mismatches = 0;
        for (uint32_t q = 0; q < 400; q++) {
                struct lsm_groove_filter filter;
                memset(&filter, 0, sizeof(filter));
                uint32_t fields = (uint32_t)(rng() % 4);
                for (uint32_t k = 0; k < fields; k++) {
                        uint32_t i = (uint32_t)(rng() % groove_config.index_count);
                        const struct object *sample = &objects_model[rng() % GROOVE_OBJECTS];
                        u128 v = object_field(sample, i);
                        if (v == 0)
                                continue;
                        filter.present[i] = true;
                        filter.value[i] = v;
                }
                if (rng() % 3 == 0) { /* user_data_64 = v or user_data_32 = v */
                        filter.either_count = 2;
                        filter.either[0] = 1;
                        filter.either[1] = 2;
                        filter.either_value = 1 + rng() % 5;
                }
                if (rng() % 2) {
                        filter.timestamp_min = 1000 + rng() % (timestamp - 1000);
                        filter.timestamp_max = filter.timestamp_min + rng() % 60000;
                }
                filter.reversed = rng() % 2;
                filter.limit = 1 + (uint32_t)(rng() % 200);
                struct lsm_groove_query_stats stats;
                int64_t got = lsm_groove_query(groove, &filter, query_out, &stats);
                /* Brute force. */
                uint32_t expect = 0;
                bool same = got >= 0;
                for (uint32_t m = 0; m < GROOVE_OBJECTS && expect < filter.limit; m++) {
                        const struct object *o =
                                &objects_model[filter.reversed ? GROOVE_OBJECTS - 1 - m : m];
                        if (o->timestamp < filter.timestamp_min ||
                            (filter.timestamp_max != 0 && o->timestamp > filter.timestamp_max))
                                continue;
                        bool match = true;
                        for (uint32_t i = 0; i < groove_config.index_count; i++)
                                if (filter.present[i] && object_field(o, i) != filter.value[i])
                                        match = false;
                        if (filter.either_count == 2 &&
                            object_field(o, filter.either[0]) != filter.either_value &&
                            object_field(o, filter.either[1]) != filter.either_value)
                                match = false;
                        if (!match)
                                continue;
                        if (same && (expect >= (uint64_t)got ||
                                     memcmp(&query_out[expect], o, sizeof(*o)) != 0))
                                same = false;
                        expect++;
                }
                if (!same || got != expect)
                        mismatches++;
                if (filter.either_count == 2) {
                        (*unions)++;
                        *union_results += expect;
                }
        }
        return mismatches;
}

static void test_groove(void)
{
        device_reset();
        rng_state = 31337;
        struct lsm_grid grid;
        CHECK(lsm_grid_init(&grid, &device, DEVICE_BLOCKS, 128) == 0);
        static struct lsm_groove groove;
        CHECK(lsm_groove_init(&groove, &groove_config, &grid) == 0);
        uint64_t timestamp = 1000;
        for (uint32_t n = 0; n < GROOVE_OBJECTS; n++) {
                struct object *o = &objects_model[n];
                memset(o, 0, sizeof(*o));
                o->id = ((u128)rng() << 64) | rng();
                o->user_data_128 = rng() % 10 < 4 ? 0 : 1 + rng() % 12;
                o->user_data_64 = rng() % 25;
                o->user_data_32 = (uint32_t)(rng() % 6);
                o->ledger = 1 + (uint32_t)(rng() % 3);
                o->code = (uint16_t)(1 + rng() % 400);
                o->balance = n;
                timestamp += 1 + rng() % 5;
                o->timestamp = timestamp;
                if (!lsm_groove_has_room(&groove, 1)) {
                        CHECK(lsm_groove_flush(&groove));
                        CHECK(lsm_groove_compact(&groove));
                }
                lsm_groove_insert(&groove, o);
                /* Now and then an older object changes (like an account's balances). */
                if (n > 10 && n % 13 == 0) {
                        struct object *old = &objects_model[rng() % n];
                        old->balance += 1000000;
                        lsm_groove_update(&groove, old);
                }
        }
        /* By id and by timestamp, from the memtable and the tables alike. */
        uint32_t wrong = 0;
        for (uint32_t k = 0; k < 3000; k++) {
                const struct object *o = &objects_model[rng() % GROOVE_OBJECTS];
                struct object out;
                if (lsm_groove_get_by_id(&groove, o->id, &out) != 1 ||
                    memcmp(&out, o, sizeof(out)) != 0)
                        wrong++;
        }
        struct object out;
        if (lsm_groove_get_by_id(&groove, (u128)12345, &out) != 0)
                wrong++;
        CHECK_EQ_U64(wrong, 0);
        /* Queries against brute force, then again reading blocks ahead (cursors' first blocks
         * and results' objects together) as the server's device does. */
        uint32_t unions = 0, union_results = 0;
        uint32_t mismatches = groove_queries_check(&groove, timestamp, &unions, &union_results);
        grid.device = device_many;
        uint64_t ahead = grid.stats.prefetched, alone = grid.stats.reads;
        mismatches += groove_queries_check(&groove, timestamp, &unions, &union_results);
        CHECK(grid.stats.prefetched > ahead);
        printf("groove: 400 queries read %llu blocks ahead, %llu alone\n",
               (unsigned long long)(grid.stats.prefetched - ahead),
               (unsigned long long)(grid.stats.reads - alone));
        CHECK_EQ_U64(mismatches, 0);
        CHECK(unions > 50 && union_results > 100); /* unions were tried, and matched things */
        /* Cost follows the results: 10 objects of one code among 40,000. */
        struct lsm_groove_filter rare;
        memset(&rare, 0, sizeof(rare));
        rare.present[4] = true;
        rare.value[4] = 7;
        rare.limit = 10;
        struct lsm_groove_query_stats stats;
        CHECK_EQ_U64(lsm_groove_query(&groove, &rare, query_out, &stats), 10);
        CHECK(stats.steps <= 10);
        /* An intersection (ledger 2 and code 7: about 1 in 1,200) leaps, it does not walk
         * ledger 2's 13,000 entries. */
        rare.present[3] = true;
        rare.value[3] = 2;
        rare.limit = 5;
        int64_t got = lsm_groove_query(&groove, &rare, query_out, &stats);
        CHECK(got >= 1);
        CHECK(stats.steps < 200);
        printf("groove: 40000 objects, code=7 limit 10: %llu steps; ledger=2 & code=7 limit 5: "
               "%lld results, %llu steps, %llu seeks\n",
               (unsigned long long)10, (long long)got, (unsigned long long)stats.steps,
               (unsigned long long)stats.seeks);
        lsm_groove_deinit(&groove);
        lsm_grid_deinit(&grid);
}

int main(void)
{
        TEST_RUN(test_key_kinds);
        TEST_RUN(test_block_check);
        TEST_RUN(test_grid_buffers);
        TEST_RUN(test_free_set);
        TEST_RUN(test_grid_cache_frames);
        TEST_RUN(test_table);
        TEST_RUN(test_table_search);
        TEST_RUN(test_table_filter);
        TEST_RUN(test_tree_model);
        TEST_RUN(test_tree_model_filtered);
        TEST_RUN(test_tree_level0_runs);
        TEST_RUN(test_tree_level0_budget);
        TEST_RUN(test_tree_may_contain_prefetch);
        TEST_RUN(test_tree_cursor_prefetch);
        TEST_RUN(test_tree_get_prefetch);
        TEST_RUN(test_tree_filter_pages);
        TEST_RUN(test_tree_model_insert_only);
        TEST_RUN(test_memtable_sort);
        TEST_RUN(test_tree_paced);
        TEST_RUN(test_tree_paced_by_writes);
        TEST_RUN(test_tree_wide_flushes);
        TEST_RUN(test_tree_bulk_merge);
        TEST_RUN(test_tree_append_only);
        TEST_RUN(test_tree_faults);
        TEST_RUN(test_tree_worker_faults);
        TEST_RUN(test_forest_crash);
        TEST_RUN(test_forest_crash_fates);
        TEST_RUN(test_manifest_log);
        TEST_RUN(test_prefetch);
        TEST_RUN(test_groove);
        TEST_RUN(test_groove_cache);
        device_reset();
        TEST_MAIN_END();
}
