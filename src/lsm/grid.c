/*
 * grid.c: block format, free set and block cache of the grid (see grid.h).
 */
#include "lsm/grid.h"
#include "lib/huge_pages.h"
#include "wire/checksum.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const char *const kind_names[LSM_BLOCK_KIND_COUNT] = {
        "none", "table index", "table data", "manifest", "free set", "root",
};

static const char *kind_name(uint8_t kind)
{
        return kind < LSM_BLOCK_KIND_COUNT ? kind_names[kind] : "unknown";
}

struct lsm_block_ref lsm_block_seal(uint8_t *block, uint64_t address, enum lsm_block_kind kind,
                                    uint8_t tree, uint16_t value_size, uint32_t count,
                                    uint32_t size)
{
        tally_assert(address > 0);
        tally_assert(size >= LSM_BLOCK_HEADER_SIZE && size <= LSM_BLOCK_SIZE);
        struct lsm_block_header *h = (struct lsm_block_header *)block;
        uint32_t filter_offset = kind == LSM_BLOCK_TABLE_INDEX ? h->filter_offset : 0;
        memset(h, 0, sizeof(*h));
        h->filter_offset = filter_offset;
        h->address = address;
        h->size = size;
        h->kind = (uint8_t)kind;
        h->tree = tree;
        h->value_size = value_size;
        h->count = count;
        h->checksum = checksum(block + 16, size - 16);
        return (struct lsm_block_ref){.address = address, .checksum = h->checksum};
}

const char *lsm_block_check(const uint8_t *block, struct lsm_block_ref ref,
                            enum lsm_block_kind kind)
{
        static char reason[128];
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        if (h->size < LSM_BLOCK_HEADER_SIZE || h->size > LSM_BLOCK_SIZE)
                return "size out of range (never written, or damaged)";
        if (checksum(block + 16, h->size - 16) != h->checksum)
                return "checksum mismatch (damaged or torn)";
        if (h->address != ref.address) {
                snprintf(reason, sizeof(reason), "holds the block of address %llu (misdirected)",
                         (unsigned long long)h->address);
                return reason;
        }
        if (h->checksum != ref.checksum)
                return "another version of the block (stale)";
        if (h->kind != kind) {
                snprintf(reason, sizeof(reason), "a %s block where a %s block was expected",
                         kind_name(h->kind), kind_name((uint8_t)kind));
                return reason;
        }
        return NULL;
}

/* ---- free set --------------------------------------------------------------------------- */

static bool bit_get(const uint64_t *bits, uint64_t index)
{
        return (bits[index / 64] >> (index % 64)) & 1u;
}

static void bit_set(uint64_t *bits, uint64_t index, bool value)
{
        uint64_t mask = (uint64_t)1 << (index % 64);
        if (value)
                bits[index / 64] |= mask;
        else
                bits[index / 64] &= ~mask;
}

int lsm_grid_init(struct lsm_grid *grid, const struct lsm_device *device,
                  uint64_t block_count_max, uint32_t cache_blocks)
{
        tally_assert(block_count_max > 0);
        memset(grid, 0, sizeof(*grid));
        grid->cache_cold_writes = true;
        grid->device = *device;
        grid->block_count_max = block_count_max;
        uint64_t words = (block_count_max + 1 + 63) / 64; /* bit 0 (address 0) stays set */
        grid->used = calloc(words, sizeof(uint64_t));
        grid->released = calloc(words, sizeof(uint64_t));
        grid->pending = calloc(words, sizeof(uint64_t));
        grid->staged = calloc(words, sizeof(uint64_t));
        uint32_t sets = (cache_blocks + LSM_CACHE_WAYS - 1) / LSM_CACHE_WAYS;
        if (sets == 0)
                sets = 1;
        grid->slot_count = sets * LSM_CACHE_WAYS;
        grid->set_count = sets;
        /*
         * Huge pages: the cache is touched block by block as it fills, and 16 page faults per
         * 64 KiB block cost more than the copy into it. A hint only. A slot's memory (its
         * frame) is handed out in order the first time the slot is used, not at the slot's own
         * place: sets are scattered by hash, so a flush of 128 blocks into their own places
         * would first-touch 128 huge pages (256 MiB zeroed, ~0.3-0.5 s on this VM, enough to
         * trigger a view change), where in order it touches 4.
         */
        size_t slots_bytes = (size_t)grid->slot_count * LSM_BLOCK_SIZE;
        void *slots = NULL;
        if (posix_memalign(&slots, 2u << 20, slots_bytes) == 0) {
                grid->slots = slots;
                (void)madvise(slots, slots_bytes, MADV_HUGEPAGE);
                huge_pages_note(slots, slots_bytes);
        }
        grid->slot_frame = malloc((size_t)grid->slot_count * sizeof(uint32_t));
        if (grid->slot_frame != NULL)
                memset(grid->slot_frame, 0xff, (size_t)grid->slot_count * sizeof(uint32_t));
        grid->slot_address = calloc(grid->slot_count, sizeof(uint64_t));
        grid->slot_checksum = calloc(grid->slot_count, sizeof(u128));
        grid->slot_referenced = calloc(grid->slot_count, 1);
        grid->slot_reading = calloc(grid->slot_count, 1);
        grid->set_hand = calloc(sets, sizeof(uint32_t));
        grid->scratch = aligned_alloc(4096, LSM_BLOCK_SIZE);
        if (grid->used == NULL || grid->released == NULL || grid->pending == NULL ||
            grid->staged == NULL ||
            grid->slots == NULL || grid->slot_frame == NULL ||
            grid->slot_address == NULL || grid->slot_checksum == NULL ||
            grid->slot_referenced == NULL || grid->slot_reading == NULL ||
            grid->set_hand == NULL || grid->scratch == NULL) {
                lsm_grid_deinit(grid);
                return -ENOMEM;
        }
        bit_set(grid->used, 0, true);
        grid->acquire_hint = 1;
        return 0;
}

void lsm_grid_deinit(struct lsm_grid *grid)
{
        if (grid->slot_reading != NULL)
                lsm_grid_prefetch_settle(grid); /* the device must not write into freed slots */
        free(grid->used);
        free(grid->released);
        free(grid->pending);
        free(grid->staged);
        free(grid->held);
        free(grid->slots);
        free(grid->slot_frame);
        free(grid->slot_address);
        free(grid->slot_checksum);
        free(grid->slot_referenced);
        free(grid->slot_reading);
        free(grid->set_hand);
        free(grid->scratch);
        for (uint32_t i = 0; i < grid->buffer_count; i++)
                free(grid->buffers[i]);
        memset(grid, 0, sizeof(*grid));
}

uint8_t *lsm_grid_buffer_get(struct lsm_grid *grid)
{
        if (grid->buffer_count > 0)
                return grid->buffers[--grid->buffer_count];
        return aligned_alloc(4096, LSM_BLOCK_SIZE);
}

void lsm_grid_buffer_put(struct lsm_grid *grid, uint8_t *buffer)
{
        if (buffer == NULL)
                return;
        if (grid->buffer_count < LSM_GRID_BUFFERS_KEPT)
                grid->buffers[grid->buffer_count++] = buffer;
        else
                free(buffer);
}

void lsm_grid_reserve_below(struct lsm_grid *grid, uint64_t count)
{
        grid->acquire_floor = MIN(count, grid->block_count_max);
}

uint64_t lsm_grid_acquire(struct lsm_grid *grid)
{
        struct lsm_reserve *reserve = grid->reserve_active;
        if (reserve != NULL)
                return reserve->next < reserve->count ? reserve->addresses[reserve->next++] : 0;
        for (uint64_t a = MAX(grid->acquire_hint, grid->acquire_floor + 1);
             a <= grid->block_count_max; a++) {
                if ((a % 64) == 0 && grid->used[a / 64] == UINT64_MAX) {
                        a += 63; /* a whole word in use */
                        continue;
                }
                if (!bit_get(grid->used, a)) {
                        bit_set(grid->used, a, true);
                        grid->acquire_hint = a + 1;
                        grid->used_count++;
                        grid->address_max = MAX(grid->address_max, a);
                        grid->stats.acquired++;
                        struct lsm_stage *stage = grid->stage_active;
                        if (stage != NULL) {
                                if (stage->count == stage->capacity) {
                                        uint32_t capacity = MAX(stage->capacity * 2, 64u);
                                        uint64_t *more = realloc(stage->addresses,
                                                                 capacity * sizeof(*more));
                                        tally_assert(more != NULL);
                                        stage->addresses = more;
                                        stage->capacity = capacity;
                                }
                                stage->addresses[stage->count++] = a;
                                bit_set(grid->staged, a, true);
                        }
                        return a;
                }
        }
        grid->acquire_hint = grid->block_count_max + 1;
        return 0;
}

void lsm_grid_stage_commit(struct lsm_grid *grid, struct lsm_stage *stage)
{
        for (uint32_t i = 0; i < stage->count; i++)
                bit_set(grid->staged, stage->addresses[i], false);
        stage->count = 0;
}

void lsm_grid_stage_abandon(struct lsm_grid *grid, struct lsm_stage *stage)
{
        for (uint32_t i = 0; i < stage->count; i++) {
                bit_set(grid->staged, stage->addresses[i], false);
                lsm_grid_release(grid, stage->addresses[i]);
        }
        stage->count = 0;
}

bool lsm_grid_reserve(struct lsm_grid *grid, struct lsm_stage *stage, struct lsm_reserve *reserve,
                      uint32_t count)
{
        tally_assert(grid->reserve_active == NULL && stage->count == 0);
        struct lsm_stage *was = grid->stage_active;
        grid->stage_active = stage;
        bool ok = true;
        for (uint32_t i = 0; i < count && ok; i++)
                ok = lsm_grid_acquire(grid) != 0;
        grid->stage_active = was;
        if (!ok) {
                snprintf(grid->error, sizeof(grid->error),
                         "grid full (%llu blocks in use; a compaction reserves %u)",
                         (unsigned long long)grid->used_count, count);
                grid->fault_damaged = false;
                lsm_grid_stage_abandon(grid, stage);
                memset(reserve, 0, sizeof(*reserve));
                return false;
        }
        *reserve = (struct lsm_reserve){.addresses = stage->addresses, .count = count};
        return true;
}

void lsm_grid_reserve_return(struct lsm_grid *grid, struct lsm_reserve *reserve)
{
        for (uint32_t i = reserve->next; i < reserve->count; i++) {
                uint64_t a = reserve->addresses[i];
                tally_assert(bit_get(grid->used, a) && bit_get(grid->staged, a));
                bit_set(grid->staged, a, false);
                bit_set(grid->used, a, false);
                grid->used_count--;
                grid->acquire_hint = MIN(grid->acquire_hint, a);
        }
        reserve->count = reserve->next;
}

void lsm_stage_free(struct lsm_stage *stage)
{
        free(stage->addresses);
        memset(stage, 0, sizeof(*stage));
}

void lsm_grid_release(struct lsm_grid *grid, uint64_t address)
{
        tally_assert(address > 0 && address <= grid->block_count_max);
        tally_assert(bit_get(grid->used, address));
        tally_assert(!bit_get(grid->released, address) && !bit_get(grid->pending, address));
        bit_set(grid->released, address, true);
        grid->stats.released++;
}

void lsm_grid_checkpoint_written(struct lsm_grid *grid)
{
        uint64_t words = (grid->block_count_max + 1 + 63) / 64;
        for (uint64_t w = 0; w < words; w++) {
                grid->pending[w] |= grid->released[w];
                grid->released[w] = 0;
        }
}

/* Frees the blocks of bit word `w` set in `freed` (nonzero). */
static void free_word(struct lsm_grid *grid, uint64_t w, uint64_t freed)
{
        grid->used[w] &= ~freed;
        grid->used_count -= (uint64_t)__builtin_popcountll(freed);
        uint64_t first = w * 64 + (uint64_t)__builtin_ctzll(freed);
        if (first < grid->acquire_hint)
                grid->acquire_hint = first;
}

void lsm_grid_checkpoint(struct lsm_grid *grid)
{
        grid->acquire_floor = 0;
        uint64_t words = (grid->block_count_max + 1 + 63) / 64;
        for (uint64_t w = 0; w < words; w++) {
                uint64_t freed = grid->pending[w];
                if (freed == 0)
                        continue;
                grid->pending[w] = 0;
                if (grid->held != NULL) {
                        grid->held[w] |= freed;
                        continue;
                }
                free_word(grid, w, freed);
        }
}

int lsm_grid_hold(struct lsm_grid *grid)
{
        if (grid->held == NULL) {
                grid->held = calloc((grid->block_count_max + 1 + 63) / 64, sizeof(uint64_t));
                if (grid->held == NULL)
                        return -ENOMEM;
        }
        grid->holds++;
        return 0;
}

void lsm_grid_unhold(struct lsm_grid *grid)
{
        if (grid->held == NULL || grid->holds == 0)
                return;
        if (--grid->holds > 0)
                return;
        uint64_t words = (grid->block_count_max + 1 + 63) / 64;
        for (uint64_t w = 0; w < words; w++) {
                uint64_t freed = grid->held[w];
                if (freed == 0)
                        continue;
                free_word(grid, w, freed);
        }
        free(grid->held);
        grid->held = NULL;
}

uint64_t lsm_grid_free_count(const struct lsm_grid *grid)
{
        return grid->block_count_max - grid->used_count;
}

uint32_t lsm_grid_free_set_chunks(const struct lsm_grid *grid)
{
        return (uint32_t)((grid->block_count_max + 1 + LSM_FREE_SET_CHUNK_BITS - 1) /
                          LSM_FREE_SET_CHUNK_BITS);
}

static uint64_t free_set_words(const struct lsm_grid *grid)
{
        return (grid->block_count_max + 1 + 63) / 64;
}

void lsm_grid_free_set_encode(const struct lsm_grid *grid, uint32_t chunk, uint64_t *words)
{
        tally_assert(chunk < lsm_grid_free_set_chunks(grid));
        uint64_t first = (uint64_t)chunk * LSM_FREE_SET_CHUNK_WORDS;
        uint64_t total = free_set_words(grid);
        for (uint32_t w = 0; w < LSM_FREE_SET_CHUNK_WORDS; w++) {
                uint64_t i = first + w;
                uint64_t held = grid->held != NULL && i < total ? grid->held[i] : 0;
                words[w] = i < total ? grid->used[i] & ~grid->released[i] & ~grid->pending[i] &
                                               ~grid->staged[i] & ~held
                                     : 0;
        }
}

void lsm_grid_free_set_clear(struct lsm_grid *grid)
{
        uint64_t total = free_set_words(grid);
        memset(grid->used, 0, total * sizeof(uint64_t));
        memset(grid->released, 0, total * sizeof(uint64_t));
        memset(grid->pending, 0, total * sizeof(uint64_t));
        memset(grid->staged, 0, total * sizeof(uint64_t));
        grid->stage_active = NULL;
        free(grid->held);
        grid->held = NULL;
        grid->holds = 0;
        bit_set(grid->used, 0, true);
        grid->used_count = 0;
        grid->address_max = 0;
        grid->acquire_hint = 1;
}

void lsm_grid_free_set_decode(struct lsm_grid *grid, uint32_t chunk, const uint64_t *words)
{
        tally_assert(chunk < lsm_grid_free_set_chunks(grid));
        uint64_t first = (uint64_t)chunk * LSM_FREE_SET_CHUNK_WORDS;
        uint64_t total = free_set_words(grid);
        for (uint32_t w = 0; w < LSM_FREE_SET_CHUNK_WORDS && first + w < total; w++) {
                uint64_t i = first + w;
                uint64_t bits = words[w];
                if (i == total - 1 && (grid->block_count_max + 1) % 64 != 0)
                        bits &= ((uint64_t)1 << ((grid->block_count_max + 1) % 64)) - 1;
                uint64_t before = grid->used[i];
                grid->used[i] |= bits;
                grid->used_count += (uint64_t)__builtin_popcountll(grid->used[i] & ~before);
                uint64_t high = grid->used[i] & (i == 0 ? ~(uint64_t)1 : ~(uint64_t)0);
                if (high != 0)
                        grid->address_max = MAX(grid->address_max,
                                                i * 64 + 63 - (uint64_t)__builtin_clzll(high));
        }
}

/* ---- cache ------------------------------------------------------------------------------ */

static int32_t cache_find(struct lsm_grid *grid, struct lsm_block_ref ref)
{
        uint32_t base = lsm_grid_set_of(grid, ref.address) * LSM_CACHE_WAYS;
        for (uint32_t w = 0; w < LSM_CACHE_WAYS; w++) {
                uint32_t slot = base + w;
                if (grid->slot_address[slot] == ref.address &&
                    grid->slot_checksum[slot] == ref.checksum)
                        return (int32_t)slot;
        }
        return -1;
}

/*
 * A slot for `address` in its set: its own (a stale version), an empty one, else CLOCK's
 * choice; never a slot an asynchronous read is filling. UINT32_MAX if every way is.
 */
static uint32_t cache_victim(struct lsm_grid *grid, uint64_t address)
{
        uint32_t set = lsm_grid_set_of(grid, address);
        uint32_t base = set * LSM_CACHE_WAYS;
        for (uint32_t w = 0; w < LSM_CACHE_WAYS; w++) {
                uint32_t slot = base + w;
                if (!grid->slot_reading[slot] &&
                    (grid->slot_address[slot] == address || grid->slot_address[slot] == 0))
                        return slot;
        }
        for (uint32_t turn = 0; turn < 2 * LSM_CACHE_WAYS; turn++) {
                uint32_t slot = base + grid->set_hand[set];
                grid->set_hand[set] = (grid->set_hand[set] + 1) % LSM_CACHE_WAYS;
                if (grid->slot_reading[slot])
                        continue;
                if (!grid->slot_referenced[slot])
                        return slot;
                grid->slot_referenced[slot] = 0;
        }
        for (uint32_t w = 0; w < LSM_CACHE_WAYS; w++) {
                if (!grid->slot_reading[base + w])
                        return base + w;
        }
        return UINT32_MAX;
}

/* The slot's memory: the next unused frame the first time it is asked for (see init). */
static uint8_t *slot_data(struct lsm_grid *grid, uint32_t slot)
{
        uint32_t frame = grid->slot_frame[slot];
        if (frame == UINT32_MAX) {
                tally_assert(grid->frames_used < grid->slot_count);
                frame = grid->frames_used++;
                grid->slot_frame[slot] = frame;
        }
        return grid->slots + (size_t)frame * LSM_BLOCK_SIZE;
}

/* `referenced` 0: the first slot of its set the clock takes back unless it is read first. */
static void cache_put(struct lsm_grid *grid, const uint8_t *block, struct lsm_block_ref ref,
                      uint8_t referenced)
{
        uint32_t slot = cache_victim(grid, ref.address);
        if (slot == UINT32_MAX)
                return; /* every way is being read into: not cached, which is only slower */
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        memcpy(slot_data(grid, slot), block, h->size);
        grid->slot_address[slot] = ref.address;
        grid->slot_checksum[slot] = ref.checksum;
        grid->slot_referenced[slot] = referenced;
}

void lsm_grid_cache_insert(struct lsm_grid *grid, const uint8_t *block, struct lsm_block_ref ref)
{
        cache_put(grid, block, ref, 1);
}

void lsm_grid_cache_clear(struct lsm_grid *grid)
{
        tally_assert(grid->reads_active == 0);
        memset(grid->slot_address, 0, grid->slot_count * sizeof(uint64_t));
        memset(grid->slot_referenced, 0, grid->slot_count);
}

const uint8_t *lsm_grid_cached(struct lsm_grid *grid, struct lsm_block_ref ref)
{
        int32_t slot = cache_find(grid, ref);
        if (slot < 0)
                return NULL;
        grid->slot_referenced[slot] = 1;
        grid->stats.cache_hits++;
        return slot_data(grid, (uint32_t)slot);
}

static int compare_ref_addresses(const void *a, const void *b)
{
        uint64_t x = ((const struct lsm_block_ref *)a)->address;
        uint64_t y = ((const struct lsm_block_ref *)b)->address;
        return (x > y) - (x < y);
}

/* Waits for prefetch read `i` and caches its block if it read well. */
static void prefetch_settle_one(struct lsm_grid *grid, uint32_t i)
{
        if (grid->prefetch_settled[i])
                return;
        grid->prefetch_settled[i] = true;
        uint32_t slot = grid->prefetch_slots[i];
        struct lsm_block_ref ref = grid->prefetch_refs[i];
        int rc = grid->device.read_many_wait(grid->device.context, i);
        grid->slot_reading[slot] = 0;
        if (rc != 0 ||
            lsm_block_check(slot_data(grid, slot), ref, (enum lsm_block_kind)grid->prefetch_kinds[i]) !=
                    NULL)
                return; /* the slot stays free */
        grid->slot_address[slot] = ref.address;
        grid->slot_checksum[slot] = ref.checksum;
        grid->slot_referenced[slot] = 1;
        grid->stats.prefetched++;
}

void lsm_grid_prefetch_settle(struct lsm_grid *grid)
{
        for (uint32_t i = 0; i < grid->prefetch_count; i++)
                prefetch_settle_one(grid, i);
        grid->prefetch_count = 0;
}

/*
 * The cached block `ref` names, or NULL: if lsm_grid_prefetch started a read of it (its slot
 * is not yet named, so the cache misses), that read is waited for and settled first.
 */
static const uint8_t *cached_or_prefetched(struct lsm_grid *grid, struct lsm_block_ref ref)
{
        const uint8_t *cached = lsm_grid_cached(grid, ref);
        if (cached != NULL || grid->prefetch_count == 0)
                return cached;
        for (uint32_t i = 0; i < grid->prefetch_count; i++) {
                if (grid->prefetch_refs[i].address == ref.address) {
                        if (grid->prefetch_settled[i])
                                return NULL;
                        prefetch_settle_one(grid, i);
                        return lsm_grid_cached(grid, ref);
                }
        }
        return NULL;
}

void lsm_grid_prefetch(struct lsm_grid *grid, struct lsm_block_ref *refs, uint32_t count,
                       enum lsm_block_kind kind)
{
        lsm_grid_prefetch_settle(grid);
        if (grid->device.read_many_start == NULL || count == 0)
                return;
        /* In address order (the device reads neighbours together), each block once. */
        qsort(refs, count, sizeof(*refs), compare_ref_addresses);
        uint64_t addresses[LSM_GRID_PREFETCH_MAX];
        uint8_t *blocks[LSM_GRID_PREFETCH_MAX];
        uint32_t n = 0;
        for (uint32_t i = 0; i < count && n < LSM_GRID_PREFETCH_MAX; i++) {
                struct lsm_block_ref ref = refs[i];
                if (ref.address == 0 || (i > 0 && refs[i - 1].address == ref.address) ||
                    cache_find(grid, ref) >= 0)
                        continue;
                uint32_t slot = cache_victim(grid, ref.address);
                if (slot == UINT32_MAX)
                        continue;
                /* Pinned until settled: no other read takes it meanwhile. */
                grid->slot_reading[slot] = 1;
                grid->slot_address[slot] = 0;
                addresses[n] = ref.address;
                blocks[n] = slot_data(grid, slot);
                grid->prefetch_slots[n] = slot;
                grid->prefetch_refs[n] = ref;
                grid->prefetch_kinds[n] = (uint8_t)kind;
                grid->prefetch_settled[n++] = false;
        }
        if (n == 0)
                return;
        uint32_t started =
                grid->device.read_many_start(grid->device.context, addresses, blocks, n);
        for (uint32_t i = started; i < n; i++) /* the device took fewer: the rest stay free */
                grid->slot_reading[grid->prefetch_slots[i]] = 0;
        grid->prefetch_count = started;
}

struct lsm_block_ref lsm_grid_write(struct lsm_grid *grid, uint8_t *block,
                                    enum lsm_block_kind kind, uint8_t tree, uint16_t value_size,
                                    uint32_t count, uint32_t size)
{
        uint64_t address = lsm_grid_acquire(grid);
        if (address == 0) {
                snprintf(grid->error, sizeof(grid->error), "grid full (%llu blocks in use)",
                         (unsigned long long)grid->used_count);
                grid->fault_damaged = false;
                return (struct lsm_block_ref){0};
        }
        return lsm_grid_write_at(grid, block, address, kind, tree, value_size, count, size);
}

static struct lsm_block_ref grid_write_at(struct lsm_grid *grid, uint8_t *block,
                                          uint64_t address, enum lsm_block_kind kind,
                                          uint8_t tree, uint16_t value_size, uint32_t count,
                                          uint32_t size, bool hot);

struct lsm_block_ref lsm_grid_write_cold(struct lsm_grid *grid, uint8_t *block,
                                             enum lsm_block_kind kind, uint8_t tree,
                                             uint16_t value_size, uint32_t count, uint32_t size)
{
        uint64_t address = lsm_grid_acquire(grid);
        if (address == 0) {
                snprintf(grid->error, sizeof(grid->error), "grid full (%llu blocks in use)",
                         (unsigned long long)grid->used_count);
                grid->fault_damaged = false;
                return (struct lsm_block_ref){0};
        }
        return grid_write_at(grid, block, address, kind, tree, value_size, count, size, false);
}

int lsm_grid_read_range(struct lsm_grid *grid, uint64_t address, uint32_t offset,
                        uint32_t length, uint8_t *out)
{
        tally_assert(offset <= LSM_BLOCK_SIZE && length <= LSM_BLOCK_SIZE - offset);
        grid->stats.pages_read++;
        if (grid->device.read_range != NULL)
                return grid->device.read_range(grid->device.context, address, offset, length,
                                               out);
        int rc = grid->device.read(grid->device.context, address, grid->scratch);
        if (rc == 0)
                memcpy(out, grid->scratch + offset, length);
        return rc;
}

/* A block read back wrong or not at all: the fault, named, and which block (a peer may hold it). */
static void read_fault(struct lsm_grid *grid, struct lsm_block_ref ref, enum lsm_block_kind kind,
                       const char *problem)
{
        grid->stats.read_faults++;
        grid->fault_damaged = true;
        grid->fault_ref = ref;
        snprintf(grid->error, sizeof(grid->error), "grid block %llu (%s): %s",
                 (unsigned long long)ref.address, kind_name((uint8_t)kind), problem);
}

bool lsm_grid_read_copy(struct lsm_grid *grid, struct lsm_block_ref ref,
                        enum lsm_block_kind kind, uint8_t *out)
{
        tally_assert(ref.address > 0);
        const uint8_t *cached = cached_or_prefetched(grid, ref);
        if (cached != NULL) {
                memcpy(out, cached, ((const struct lsm_block_header *)cached)->size);
                return true;
        }
        grid->stats.reads++;
        int rc = grid->device.read(grid->device.context, ref.address, out);
        const char *problem = rc != 0 ? strerror(-rc) : lsm_block_check(out, ref, kind);
        if (problem != NULL) {
                read_fault(grid, ref, kind, problem);
                return false;
        }
        return true;
}

struct lsm_block_ref lsm_grid_write_at(struct lsm_grid *grid, uint8_t *block, uint64_t address,
                                       enum lsm_block_kind kind, uint8_t tree,
                                       uint16_t value_size, uint32_t count, uint32_t size)
{
        return grid_write_at(grid, block, address, kind, tree, value_size, count, size, true);
}

static struct lsm_block_ref grid_write_at(struct lsm_grid *grid, uint8_t *block,
                                          uint64_t address, enum lsm_block_kind kind,
                                          uint8_t tree, uint16_t value_size, uint32_t count,
                                          uint32_t size, bool hot)
{
        /* A worker's grid writes reserved addresses that only the loop's free set records. */
        tally_assert(address > 0 && (grid->reserve_active != NULL ||
                                     (address <= grid->block_count_max &&
                                      bit_get(grid->used, address))));
        struct lsm_block_ref ref =
                lsm_block_seal(block, address, kind, tree, value_size, count, size);
        /* The device writes whole blocks: the unused tail is zeros, never stale memory. */
        memset(block + size, 0, LSM_BLOCK_SIZE - size);
        int rc = grid->device.write(grid->device.context, address, block);
        if (rc != 0) {
                snprintf(grid->error, sizeof(grid->error), "write of grid block %llu failed: %s",
                         (unsigned long long)address, strerror(-rc));
                grid->fault_damaged = false;
                return (struct lsm_block_ref){0};
        }
        grid->stats.writes++;
        if (hot || grid->cache_cold_writes)
                cache_put(grid, block, ref, hot ? 1 : 0);
        if (hot && grid->on_write_hot != NULL)
                grid->on_write_hot(grid->on_write_hot_context, block, ref);
        return ref;
}

void lsm_grid_issue_writes(struct lsm_grid *grid)
{
        if (grid->device.issue != NULL)
                grid->device.issue(grid->device.context);
}

bool lsm_grid_flush_writes(struct lsm_grid *grid)
{
        if (grid->device.flush == NULL)
                return true;
        int rc = grid->device.flush(grid->device.context);
        if (rc == 0)
                return true;
        snprintf(grid->error, sizeof(grid->error), "a grid block write failed: %s", strerror(-rc));
        grid->fault_damaged = false;
        return false;
}

/* Checks a block just read into `slot`: published in the cache, or NULL and grid->error. */
static const uint8_t *read_finish(struct lsm_grid *grid, uint32_t slot, struct lsm_block_ref ref,
                                  enum lsm_block_kind kind, int rc)
{
        uint8_t *data = slot_data(grid, slot);
        const char *problem = rc != 0 ? strerror(-rc) : lsm_block_check(data, ref, kind);
        if (problem != NULL) {
                read_fault(grid, ref, kind, problem);
                return NULL;
        }
        grid->slot_address[slot] = ref.address;
        grid->slot_checksum[slot] = ref.checksum;
        grid->slot_referenced[slot] = 1;
        return data;
}

const uint8_t *lsm_grid_read(struct lsm_grid *grid, struct lsm_block_ref ref,
                             enum lsm_block_kind kind)
{
        tally_assert(ref.address > 0);
        const uint8_t *cached = cached_or_prefetched(grid, ref);
        if (cached != NULL)
                return cached;
        uint32_t slot = cache_victim(grid, ref.address);
        if (slot == UINT32_MAX) {
                /* Every way of the set is being filled: read into the scratch block. */
                grid->stats.reads++;
                int rc = grid->device.read(grid->device.context, ref.address, grid->scratch);
                const char *problem =
                        rc != 0 ? strerror(-rc) : lsm_block_check(grid->scratch, ref, kind);
                if (problem != NULL) {
                        read_fault(grid, ref, kind, problem);
                        return NULL;
                }
                return grid->scratch;
        }
        grid->slot_address[slot] = 0; /* not valid until checked */
        grid->stats.reads++;
        int rc = grid->device.read(grid->device.context, ref.address, slot_data(grid, slot));
        return read_finish(grid, slot, ref, kind, rc);
}

static void on_read_async(void *token, int result)
{
        struct lsm_grid_read *read = token;
        struct lsm_grid *grid = read->grid;
        tally_assert(read->active && grid->slot_reading[read->slot]);
        grid->slot_reading[read->slot] = 0;
        read->active = false;
        grid->reads_active--;
        bool ok = read_finish(grid, read->slot, read->ref, (enum lsm_block_kind)read->kind,
                              result) != NULL;
        read->done(read->context, ok);
}

enum lsm_read_start lsm_grid_read_start(struct lsm_grid *grid, struct lsm_block_ref ref,
                                        enum lsm_block_kind kind,
                                        void (*done)(void *context, bool ok), void *context)
{
        tally_assert(ref.address > 0);
        if (cached_or_prefetched(grid, ref) != NULL)
                return LSM_READ_CACHED;
        if (grid->device.read_async == NULL)
                return lsm_grid_read(grid, ref, kind) != NULL ? LSM_READ_CACHED : LSM_READ_FAULT;
        if (grid->reads_active == LSM_GRID_READS_MAX)
                return LSM_READ_BUSY;
        uint32_t slot = cache_victim(grid, ref.address);
        if (slot == UINT32_MAX)
                return LSM_READ_BUSY;
        struct lsm_grid_read *read = NULL;
        for (uint32_t i = 0; i < LSM_GRID_READS_MAX; i++) {
                if (!grid->reads[i].active) {
                        read = &grid->reads[i];
                        break;
                }
        }
        tally_assert(read != NULL);
        *read = (struct lsm_grid_read){.grid = grid, .active = true, .slot = slot,
                                       .kind = (uint8_t)kind, .ref = ref, .done = done,
                                       .context = context};
        grid->slot_address[slot] = 0;
        grid->slot_reading[slot] = 1;
        grid->reads_active++;
        grid->stats.reads++;
        grid->device.read_async(grid->device.context, ref.address, slot_data(grid, slot),
                                on_read_async, read);
        return LSM_READ_STARTED;
}
