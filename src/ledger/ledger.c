/*
 * ledger.c: the state machine's entry points: memory, input validation, dispatch, statistics.
 *
 * The rules themselves live in ledger_create.c (create_accounts, create_transfers, pulse) and
 * ledger_query.c (lookups and queries); the checkpoint stream in ledger_checkpoint.c. The layout
 * of the state is described in ledger_internal.h.
 *
 * Memory (reserved with mmap(MAP_NORESERVE), so only what is used becomes resident, except
 * the two hash tables, which are faulted in at start-up; see ledger_create):
 *
 *   per account  (accounts_max):  128 B Account + 8 B list head/tail + 16..32 B of hash table
 *                                 (slots = next power of two >= 2 x capacity, 8 B each)
 *                                 + 64 B for the first chunk of its transfer list
 *                                 = about 216..232 B resident per account with transfers.
 *   per transfer (transfers_max): 128 B Transfer + 1 B pending status + 16..32 B of hash table
 *                                 + 2 x 4 B list entries in 64 B chunks of 13 (9.8 B)
 *                                 = about 155..171 B resident per transfer;
 *                                 reserved but only touched when used: 16 B failed id per burned
 *                                 id, 24 B expiry entry per pending transfer with a timeout,
 *                                 80 B history record per side whose account has flags.history.
 *
 * Measured (bench/ledger_bench, 819k transfers over 10,000 accounts): 155..162 bytes of resident
 * memory per transfer, huge pages included.
 *
 * The capacity in transfers_max is shared by created transfers and burned (failed) ids: each
 * create_transfers event consumes at most one of either.
 *
 * Query costs: lookups are O(1) per id. get_account_transfers / get_account_balances walk the
 * account's own transfer list (skipping whole 13-entry chunks outside the timestamp range), so
 * they cost O(the account's transfers in range / 13 + results). query_accounts / query_transfers
 * binary-search the timestamp range in the timestamp-ordered array and scan it, stopping at the
 * limit: O(objects scanned in range), which is the whole range when few objects match.
 */
#include "ledger/ledger_internal.h"

#include <string.h>
#include <sys/mman.h>

#include "lib/log.h"
#include "wire/multi_batch.h"

/* The largest reply body; also the room of every reply buffer. */
#define BODY_MAX LEDGER_BODY_SIZE_MAX

enum op_kind {
        OP_NONE = 0,
        OP_CREATE_ACCOUNTS,
        OP_CREATE_TRANSFERS,
        OP_LOOKUP_ACCOUNTS,
        OP_LOOKUP_TRANSFERS,
        OP_GET_ACCOUNT_TRANSFERS,
        OP_GET_ACCOUNT_BALANCES,
        OP_QUERY_ACCOUNTS,
        OP_QUERY_TRANSFERS,
        OP_GET_CHANGE_EVENTS,
};

struct op_info {
        enum op_kind kind;
        uint32_t event_size;
        uint32_t result_size;
        bool multi_batch;
        bool batchable;
};

static struct op_info op_info(uint8_t operation)
{
        static const struct op_info kinds[] = {
                [OP_CREATE_ACCOUNTS] = {OP_CREATE_ACCOUNTS, 128, 8, false, true},
                [OP_CREATE_TRANSFERS] = {OP_CREATE_TRANSFERS, 128, 8, false, true},
                [OP_LOOKUP_ACCOUNTS] = {OP_LOOKUP_ACCOUNTS, 16, 128, false, true},
                [OP_LOOKUP_TRANSFERS] = {OP_LOOKUP_TRANSFERS, 16, 128, false, true},
                [OP_GET_ACCOUNT_TRANSFERS] = {OP_GET_ACCOUNT_TRANSFERS, 128, 128, false, false},
                [OP_GET_ACCOUNT_BALANCES] = {OP_GET_ACCOUNT_BALANCES, 128, 128, false, false},
                [OP_QUERY_ACCOUNTS] = {OP_QUERY_ACCOUNTS, 64, 128, false, false},
                [OP_QUERY_TRANSFERS] = {OP_QUERY_TRANSFERS, 64, 128, false, false},
        };
        struct op_info info = {OP_NONE, 0, 0, false, false};
        if (operation >= OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED &&
            operation <= OPERATION_DEPRECATED_QUERY_TRANSFERS_UNBATCHED) {
                info = kinds[operation - OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED + 1];
        } else if (operation >= OPERATION_CREATE_ACCOUNTS &&
                   operation <= OPERATION_QUERY_TRANSFERS) {
                info = kinds[operation - OPERATION_CREATE_ACCOUNTS + 1];
                info.multi_batch = true;
        } else if (operation == OPERATION_GET_CHANGE_EVENTS) {
                info = (struct op_info){OP_GET_CHANGE_EVENTS, 64, 384, false, false};
        }
        return info;
}

/* Events per batch (TigerBeetle's Operation.event_max). */
static uint32_t event_max(const struct op_info *info, uint32_t batch_size_limit)
{
        if (!info->multi_batch) {
                return MIN(batch_size_limit / info->event_size, BODY_MAX / info->result_size);
        }
        uint32_t request_trailer = multi_batch_trailer_size(info->event_size, 1);
        uint32_t reply_trailer = multi_batch_trailer_size(info->result_size, 1);
        if (batch_size_limit < request_trailer) return 0;
        return MIN((batch_size_limit - request_trailer) / info->event_size,
                   (BODY_MAX - reply_trailer) / info->result_size);
}

/* Results per batch (TigerBeetle's Operation.result_max). */
static uint32_t result_max(const struct op_info *info, uint32_t batch_size_limit)
{
        if (info->batchable) return event_max(info, batch_size_limit);
        if (!info->multi_batch) return BODY_MAX / info->result_size;
        return (BODY_MAX - multi_batch_trailer_size(info->result_size, 1)) / info->result_size;
}

/* ---------------------------------------------------------------------------------------- */
/* Memory. */

struct ledger_sizes {
        uint64_t accounts_max;
        uint64_t transfers_max;
        uint64_t accounts_slots;
        uint64_t transfers_slots;
        uint64_t chunks_max;
        uint64_t history_max;
};

static uint64_t table_slots_for(uint64_t capacity)
{
        uint64_t slots = 16;
        while (slots < 2 * capacity) slots *= 2;
        return slots;
}

static struct ledger_sizes ledger_sizes(const struct ledger_config *config)
{
        struct ledger_sizes s;
        s.accounts_max = config->accounts_max;
        s.transfers_max = config->transfers_max;
        s.accounts_slots = table_slots_for(s.accounts_max);
        s.transfers_slots = table_slots_for(s.transfers_max);
        /* Every chunk but an account's last is full; see ledger_internal.h. */
        s.chunks_max = s.accounts_max + (2 * s.transfers_max) / CHUNK_ITEMS + 1;
        s.history_max = 2 * s.transfers_max;
        return s;
}

static uint64_t page_round(uint64_t size)
{
        return (size + 4095) & ~(uint64_t)4095;
}

#define REGION_COUNT 11
static void region_sizes(const struct ledger_config *config, uint64_t sizes[REGION_COUNT])
{
        struct ledger_sizes s = ledger_sizes(config);
        sizes[0] = s.accounts_max * sizeof(struct wire_account);
        sizes[1] = s.accounts_max * sizeof(struct account_index);
        sizes[2] = s.accounts_slots * sizeof(uint64_t);
        sizes[3] = s.transfers_max * sizeof(struct wire_transfer);
        sizes[4] = s.transfers_max * sizeof(uint8_t);
        sizes[5] = s.transfers_max * sizeof(u128);
        sizes[6] = s.transfers_slots * sizeof(uint64_t);
        sizes[7] = s.chunks_max * sizeof(struct edge_chunk);
        sizes[8] = s.history_max * sizeof(struct history_record);
        sizes[9] = s.transfers_max * sizeof(struct expiry_entry);
        sizes[10] = LEDGER_BATCH_EVENTS_MAX * sizeof(struct wire_create_result);
        for (int i = 0; i < REGION_COUNT; i++) sizes[i] = page_round(MAX(sizes[i], 1));
}

uint64_t ledger_memory_bytes(const struct ledger_config *config)
{
        uint64_t sizes[REGION_COUNT];
        region_sizes(config, sizes);
        uint64_t total = page_round(sizeof(struct ledger));
        for (int i = 0; i < REGION_COUNT; i++) total += sizes[i];
        return total;
}

static void *region_map(uint64_t size)
{
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return NULL;
        /* Hash probes and object reads land anywhere in these arrays: huge pages save most
         * TLB misses. Advice only; it is fine if the kernel ignores it. */
        if (size >= (2u << 20)) (void)madvise(p, size, MADV_HUGEPAGE);
        return p;
}

static void **region_slot(struct ledger *ledger, int i)
{
        void **slots[REGION_COUNT] = {
                (void **)&ledger->accounts,        (void **)&ledger->account_index,
                (void **)&ledger->accounts_table.slots, (void **)&ledger->transfers,
                (void **)&ledger->transfer_status, (void **)&ledger->failed_ids,
                (void **)&ledger->transfers_table.slots, (void **)&ledger->chunks,
                (void **)&ledger->history,         (void **)&ledger->expiry,
                (void **)&ledger->scratch,
        };
        return slots[i];
}

struct ledger *ledger_create(const struct ledger_config *config)
{
        struct ledger_config c = *config;
        if (c.request_body_size_max == 0) c.request_body_size_max = BODY_MAX;
        if (c.accounts_max > LEDGER_CAPACITY_LIMIT || c.transfers_max > LEDGER_CAPACITY_LIMIT) {
                log_error("ledger: capacity too large accounts_max=%llu transfers_max=%llu "
                          "limit=%u",
                          (unsigned long long)c.accounts_max,
                          (unsigned long long)c.transfers_max, LEDGER_CAPACITY_LIMIT);
                return NULL;
        }
        if (c.request_body_size_max > BODY_MAX || c.request_body_size_max < 256) {
                log_error("ledger: request_body_size_max out of range value=%u",
                          c.request_body_size_max);
                return NULL;
        }
        struct ledger *ledger = region_map(page_round(sizeof(struct ledger)));
        if (ledger == NULL) {
                log_error("ledger: mmap failed");
                return NULL;
        }
        memset(ledger, 0, sizeof(*ledger));
        ledger->config = c;
        ledger->memory_bytes = ledger_memory_bytes(&c);

        uint64_t sizes[REGION_COUNT];
        region_sizes(&c, sizes);
        for (int i = 0; i < REGION_COUNT; i++) {
                void *p = region_map(sizes[i]);
                if (p == NULL) {
                        log_error("ledger: mmap failed region=%d bytes=%llu", i,
                                  (unsigned long long)sizes[i]);
                        ledger_destroy(ledger);
                        return NULL;
                }
                *region_slot(ledger, i) = p;
        }
        /*
         * The hash tables are probed at random, so a few thousand inserts touch every page of
         * them; the kernel then zeroes hundreds of megabytes inside the first requests (the
         * biggest cost in a profile of a fresh three-replica cluster: 37 % of the primary's
         * time in clear_page_erms). Fault them in now, at start-up, where it costs nothing a
         * client waits for. Advice only: older kernels ignore it.
         */
        for (int i = 0; i < REGION_COUNT; i++) {
                if (region_slot(ledger, i) == (void **)&ledger->accounts_table.slots ||
                    region_slot(ledger, i) == (void **)&ledger->transfers_table.slots)
                        (void)madvise(*region_slot(ledger, i), sizes[i], MADV_POPULATE_WRITE);
        }
        struct ledger_sizes s = ledger_sizes(&c);
        ledger->accounts_max = (uint32_t)s.accounts_max;
        ledger->transfers_max = (uint32_t)s.transfers_max;
        ledger->accounts_table.mask = s.accounts_slots - 1;
        ledger->transfers_table.mask = s.transfers_slots - 1;
        ledger->chunks_max = (uint32_t)s.chunks_max;
        ledger->history_max = s.history_max;
        return ledger;
}

void ledger_destroy(struct ledger *ledger)
{
        if (ledger == NULL) return;
        uint64_t sizes[REGION_COUNT];
        region_sizes(&ledger->config, sizes);
        for (int i = 0; i < REGION_COUNT; i++) {
                void *p = *region_slot(ledger, i);
                if (p) munmap(p, sizes[i]);
        }
        munmap(ledger, page_round(sizeof(struct ledger)));
}

/* Zeroes every used part of every array and the counters: the state after ledger_create(). */
void ledger_reset(struct ledger *ledger)
{
        memset(ledger->accounts, 0, (size_t)ledger->account_count * sizeof(struct wire_account));
        memset(ledger->account_index, 0,
               (size_t)ledger->account_count * sizeof(struct account_index));
        memset(ledger->transfers, 0,
               (size_t)ledger->transfer_count * sizeof(struct wire_transfer));
        memset(ledger->transfer_status, 0, ledger->transfer_count);
        memset(ledger->failed_ids, 0, (size_t)ledger->failed_count * sizeof(u128));
        memset(ledger->chunks, 0, (size_t)ledger->chunk_count * sizeof(struct edge_chunk));
        memset(ledger->history, 0, ledger->history_count * sizeof(struct history_record));
        memset(ledger->expiry, 0, (size_t)ledger->expiry_count * sizeof(struct expiry_entry));
        memset(ledger->accounts_table.slots, 0,
               (ledger->accounts_table.mask + 1) * sizeof(uint64_t));
        memset(ledger->transfers_table.slots, 0,
               (ledger->transfers_table.mask + 1) * sizeof(uint64_t));
        ledger->accounts_table.count = 0;
        ledger->transfers_table.count = 0;
        ledger->account_count = 0;
        ledger->transfer_count = 0;
        ledger->failed_count = 0;
        ledger->chunk_count = 0;
        ledger->history_count = 0;
        ledger->expiry_count = 0;
        ledger->pending_live = 0;
        ledger->chain_open = false;
        ledger->chain_transfer_count = 0;
        ledger->chain_history_count = 0;
        ledger->chain_account_count = 0;
}

/* Re-inserts every id in array order (the tables are not part of a checkpoint). */
void ledger_rebuild_tables(struct ledger *ledger)
{
        memset(ledger->accounts_table.slots, 0,
               (ledger->accounts_table.mask + 1) * sizeof(uint64_t));
        memset(ledger->transfers_table.slots, 0,
               (ledger->transfers_table.mask + 1) * sizeof(uint64_t));
        ledger->accounts_table.count = 0;
        ledger->transfers_table.count = 0;
        for (uint32_t i = 0; i < ledger->account_count; i++) {
                table_insert(&ledger->accounts_table, ledger->accounts[i].id, i + 1);
        }
        for (uint32_t i = 0; i < ledger->transfer_count; i++) {
                table_insert(&ledger->transfers_table, ledger->transfers[i].id, i + 1);
        }
        for (uint32_t i = 0; i < ledger->failed_count; i++) {
                table_insert(&ledger->transfers_table, ledger->failed_ids[i],
                             TABLE_REF_FAILED | (i + 1));
        }
        ledger->chain_transfer_count = ledger->transfer_count;
        ledger->chain_history_count = ledger->history_count;
        ledger->chain_account_count = ledger->account_count;
}

/* ---------------------------------------------------------------------------------------- */
/* Validation. */

bool ledger_operation_valid(uint8_t operation)
{
        return operation >= OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED &&
               operation <= OPERATION_QUERY_TRANSFERS;
}

/* A query filter's limit field: offset 120 in AccountFilter, 56 in the 64-byte filters. */
static uint32_t filter_limit(const struct op_info *info, const uint8_t *filter)
{
        uint32_t limit;
        memcpy(&limit, filter + (info->event_size == 128 ? 120 : 56), sizeof(limit));
        return limit;
}

static bool batch_valid(const struct op_info *info, uint32_t batch_size_limit,
                        uint32_t batch_size)
{
        if (!info->batchable) return batch_size == info->event_size;
        if (batch_size % info->event_size != 0) return false;
        return batch_size / info->event_size <= event_max(info, batch_size_limit);
}

static uint32_t result_count_expected(const struct op_info *info, const uint8_t *batch,
                                      uint32_t batch_size)
{
        if (info->batchable) return batch_size / info->event_size;
        return MIN(filter_limit(info, batch), result_max(info, BODY_MAX));
}

bool ledger_input_valid(const struct ledger *ledger, uint8_t operation, const uint8_t *body,
                        uint32_t body_size)
{
        struct op_info info = op_info(operation);
        if (info.kind == OP_NONE) return false;
        uint32_t limit = ledger->config.request_body_size_max;
        if (body_size > limit) return false;
        if (!info.multi_batch) return batch_valid(&info, limit, body_size);

        struct multi_batch_decoder decoder;
        if (!multi_batch_decode_init(&decoder, body, body_size, info.event_size)) return false;
        uint64_t results = 0;
        const uint8_t *batch;
        uint32_t count;
        while (multi_batch_decode_next(&decoder, &batch, &count)) {
                uint32_t batch_size = count * info.event_size;
                if (!batch_valid(&info, limit, batch_size)) return false;
                results += result_count_expected(&info, batch, batch_size);
        }
        uint64_t reply_size = results * info.result_size +
                              multi_batch_trailer_size(info.result_size, decoder.batch_count);
        return reply_size <= BODY_MAX;
}

/* Events over all batches of a create operation. */
static uint32_t create_event_count(const struct op_info *info, const uint8_t *body,
                                   uint32_t body_size)
{
        if (!info->multi_batch) return body_size / info->event_size;
        struct multi_batch_decoder decoder;
        bool valid = multi_batch_decode_init(&decoder, body, body_size, info->event_size);
        tally_assert(valid);
        return (decoder.payload_size) / info->event_size;
}

uint32_t ledger_timestamp_delta(uint8_t operation, const uint8_t *body, uint32_t body_size)
{
        if (operation == OPERATION_PULSE) return LEDGER_PULSE_TIMESTAMP_DELTA;
        struct op_info info = op_info(operation);
        if (info.kind != OP_CREATE_ACCOUNTS && info.kind != OP_CREATE_TRANSFERS) return 0;
        return create_event_count(&info, body, body_size);
}

bool ledger_capacity_available(const struct ledger *ledger, uint8_t operation,
                               const uint8_t *body, uint32_t body_size,
                               uint64_t events_in_flight)
{
        struct op_info info = op_info(operation);
        if (info.kind != OP_CREATE_ACCOUNTS && info.kind != OP_CREATE_TRANSFERS) return true;
        uint64_t events = create_event_count(&info, body, body_size) + events_in_flight;
        if (info.kind == OP_CREATE_ACCOUNTS) {
                return ledger->account_count + events <= ledger->accounts_max;
        }
        return (uint64_t)ledger->transfer_count + ledger->failed_count + events <=
               ledger->transfers_max;
}

/* ---------------------------------------------------------------------------------------- */
/* Execution. */

static bool batch_fits(const struct ledger *ledger, enum op_kind kind, uint32_t count)
{
        if (kind == OP_CREATE_ACCOUNTS) {
                return (uint64_t)ledger->account_count + count <= ledger->accounts_max;
        }
        return (uint64_t)ledger->transfer_count + ledger->failed_count + count <=
               ledger->transfers_max;
}

/* One batch of any operation; returns the number of result elements written to `out`. */
static uint32_t execute_batch(struct ledger *ledger, const struct op_info *info,
                              uint64_t timestamp, const uint8_t *batch, uint32_t count,
                              uint8_t *out)
{
        uint32_t limit = result_max(info, ledger->config.request_body_size_max);
        switch (info->kind) {
        case OP_CREATE_ACCOUNTS:
        case OP_CREATE_TRANSFERS: {
                struct wire_create_result *results = (struct wire_create_result *)ledger->scratch;
                uint32_t written = 0;
                if (!batch_fits(ledger, info->kind, count)) {
                        /* Never reached when the replica honours ledger_capacity_available(). */
                        log_error("ledger: capacity exhausted, batch refused events=%u", count);
                        for (uint32_t i = 0; i < count; i++) {
                                struct wire_create_result r = {
                                        .index = i, .result = LEDGER_RESULT_CAPACITY_EXHAUSTED};
                                memcpy(out + (size_t)i * sizeof(r), &r, sizeof(r));
                        }
                        return count;
                }
                if (info->kind == OP_CREATE_ACCOUNTS) {
                        ledger_create_accounts_batch(ledger, timestamp, batch, count, results,
                                                     &written);
                } else {
                        ledger_create_transfers_batch(ledger, timestamp, batch, count, results,
                                                      &written);
                }
                memcpy(out, results, (size_t)written * sizeof(struct wire_create_result));
                return written;
        }
        case OP_LOOKUP_ACCOUNTS:
                return ledger_lookup_accounts(ledger, batch, count, out);
        case OP_LOOKUP_TRANSFERS:
                return ledger_lookup_transfers(ledger, batch, count, out);
        case OP_GET_ACCOUNT_TRANSFERS:
                return ledger_get_account_transfers(ledger, batch, limit, out);
        case OP_GET_ACCOUNT_BALANCES:
                return ledger_get_account_balances(ledger, batch, limit, out);
        case OP_QUERY_ACCOUNTS:
                return ledger_query_accounts(ledger, batch, limit, out);
        case OP_QUERY_TRANSFERS:
                return ledger_query_transfers(ledger, batch, limit, out);
        case OP_GET_CHANGE_EVENTS:
                return 0; /* not implemented: always an empty reply */
        case OP_NONE:
                break;
        }
        tally_assert(false);
        return 0;
}

uint32_t ledger_execute(struct ledger *ledger, uint8_t operation, uint64_t timestamp,
                        const uint8_t *body, uint32_t body_size, uint8_t *reply)
{
        tally_assert(timestamp >= 1 && timestamp <= LEDGER_MAX63);
        if (operation == OPERATION_PULSE) {
                tally_assert(body_size == 0);
                ledger_pulse(ledger, timestamp);
#ifdef TALLY_DEBUG
                ledger_check_invariants(ledger);
#endif
                return 0;
        }
        struct op_info info = op_info(operation);
        tally_assert(info.kind != OP_NONE);
        bool creates = info.kind == OP_CREATE_ACCOUNTS || info.kind == OP_CREATE_TRANSFERS;
        uint32_t reply_size = 0;

        if (!info.multi_batch) {
                uint32_t count = info.batchable ? body_size / info.event_size : 1;
                uint32_t results = execute_batch(ledger, &info, timestamp, body, count, reply);
                reply_size = results * info.result_size;
        } else {
                struct multi_batch_decoder decoder;
                bool valid = multi_batch_decode_init(&decoder, body, body_size, info.event_size);
                tally_assert(valid);
                uint32_t events_total = decoder.payload_size / info.event_size;
                uint64_t events_before = 0; /* events of the batches already executed */
                struct multi_batch_encoder encoder;
                multi_batch_encoder_init(&encoder, reply, BODY_MAX, info.result_size);
                const uint8_t *batch;
                uint32_t count;
                while (multi_batch_decode_next(&decoder, &batch, &count)) {
                        uint32_t room = 0;
                        uint8_t *out = multi_batch_encoder_writable(&encoder, &room);
                        tally_assert(out != NULL);
                        /* Batch b's own timestamp: T - total + (events up to and with b). */
                        uint64_t batch_timestamp = timestamp;
                        if (creates) {
                                batch_timestamp = timestamp - events_total + events_before + count;
                        }
                        uint32_t results =
                                execute_batch(ledger, &info, batch_timestamp, batch, count, out);
                        tally_assert(results <= room);
                        multi_batch_encoder_add(&encoder, results);
                        events_before += count;
                }
                reply_size = multi_batch_encoder_finish(&encoder);
        }
        if (info.kind == OP_CREATE_TRANSFERS) ledger_expiry_drop_stale(ledger);
#ifdef TALLY_DEBUG
        if (creates) ledger_check_invariants(ledger);
#endif
        tally_assert(reply_size <= BODY_MAX);
        return reply_size;
}

bool ledger_pulse_needed(const struct ledger *ledger, uint64_t timestamp)
{
        /* After every execute the heap's top is a live pending transfer (stale tops dropped). */
        return ledger->expiry_count > 0 && ledger->expiry[0].expires_at <= timestamp;
}

void ledger_get_stats(const struct ledger *ledger, struct ledger_stats *stats)
{
        stats->accounts = ledger->account_count;
        stats->transfers = ledger->transfer_count;
        stats->pending_live = ledger->pending_live;
        stats->history_records = ledger->history_count;
        stats->memory_bytes = ledger->memory_bytes;
}

/* ---------------------------------------------------------------------------------------- */
/* Timestamp lookups over the timestamp-ordered arrays. */

uint32_t ledger_timestamp_search(const uint8_t *objects, uint32_t count, size_t offset,
                                 uint64_t timestamp, bool after)
{
        uint32_t lo = 0, hi = count;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                uint64_t t;
                memcpy(&t, objects + (size_t)mid * 128 + offset, sizeof(t));
                if (t < timestamp || (after && t == timestamp))
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

bool ledger_account_timestamp_exists(const struct ledger *ledger, uint64_t timestamp)
{
        _Static_assert(sizeof(struct wire_account) == 128, "128-byte records");
        uint32_t i = ledger_timestamp_search((const uint8_t *)ledger->accounts,
                                             ledger->account_count,
                                             offsetof(struct wire_account, timestamp), timestamp,
                                             false);
        return i < ledger->account_count && ledger->accounts[i].timestamp == timestamp;
}

bool ledger_transfer_timestamp_exists(const struct ledger *ledger, uint64_t timestamp)
{
        _Static_assert(sizeof(struct wire_transfer) == 128, "128-byte records");
        uint32_t i = ledger_timestamp_search((const uint8_t *)ledger->transfers,
                                             ledger->transfer_count,
                                             offsetof(struct wire_transfer, timestamp), timestamp,
                                             false);
        return i < ledger->transfer_count && ledger->transfers[i].timestamp == timestamp;
}

/* ---------------------------------------------------------------------------------------- */
/* Debug invariants (TALLY_DEBUG): cheap enough for tests of up to ~100k objects. */

#ifdef TALLY_DEBUG
#define INVARIANT_LEDGERS_MAX 256u
void ledger_check_invariants(const struct ledger *ledger)
{
        /* Per ledger: debits and credits balance, pending and posted separately (the sums
         * wrap modulo 2^128, which keeps the comparison exact). */
        uint32_t ledgers[INVARIANT_LEDGERS_MAX];
        u128 sums[INVARIANT_LEDGERS_MAX][4];
        uint32_t ledger_count = 0;
        bool per_ledger = true;
        for (uint32_t i = 0; i < ledger->account_count && per_ledger; i++) {
                const struct wire_account *a = &ledger->accounts[i];
                uint32_t k = 0;
                while (k < ledger_count && ledgers[k] != a->ledger) k++;
                if (k == ledger_count) {
                        if (ledger_count == INVARIANT_LEDGERS_MAX) {
                                per_ledger = false;
                                break;
                        }
                        ledgers[ledger_count++] = a->ledger;
                        memset(sums[k], 0, sizeof(sums[k]));
                }
                sums[k][0] += a->debits_pending;
                sums[k][1] += a->credits_pending;
                sums[k][2] += a->debits_posted;
                sums[k][3] += a->credits_posted;
        }
        for (uint32_t k = 0; per_ledger && k < ledger_count; k++) {
                tally_assert(sums[k][0] == sums[k][1]);
                tally_assert(sums[k][2] == sums[k][3]);
        }
        if (ledger->transfer_count > 200000) return;

        /* Each account's pending amounts are the sum of its live pending transfers. */
        static u128 pending_debits[1u << 16];
        static u128 pending_credits[1u << 16];
        if (ledger->account_count > (1u << 16)) return;
        memset(pending_debits, 0, ledger->account_count * sizeof(u128));
        memset(pending_credits, 0, ledger->account_count * sizeof(u128));
        uint32_t live = 0;
        for (uint32_t i = 0; i < ledger->transfer_count; i++) {
                if (ledger->transfer_status[i] != TRANSFER_STATUS_PENDING) continue;
                const struct wire_transfer *t = &ledger->transfers[i];
                tally_assert(t->flags & TRANSFER_FLAG_PENDING);
                uint32_t dr = account_find(ledger, t->debit_account_id);
                uint32_t cr = account_find(ledger, t->credit_account_id);
                tally_assert(dr != 0 && cr != 0);
                pending_debits[dr - 1] += t->amount;
                pending_credits[cr - 1] += t->amount;
                live++;
        }
        tally_assert(live == ledger->pending_live);
        for (uint32_t i = 0; i < ledger->account_count; i++) {
                tally_assert(ledger->accounts[i].debits_pending == pending_debits[i]);
                tally_assert(ledger->accounts[i].credits_pending == pending_credits[i]);
        }
}
#endif
