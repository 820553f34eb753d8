/*
 * ledger.c: the state machine's entry points: memory, input validation, dispatch, statistics.
 *
 * The rules themselves live in ledger_create.c (create_accounts, create_transfers, pulse) and
 * ledger_query.c (lookups and queries); the trees and the working set in ledger_state.c; the
 * checkpoint stream in ledger_checkpoint.c. ledger_internal.h says what is stored where.
 *
 * Memory is fixed at ledger_create(): the block cache (config.cache_bytes), the memtables
 * (config.memtable_max values per tree), the working set of one operation and the free set's
 * bitmaps; none of it grows with the data.
 */
#include "ledger/ledger_internal.h"

#include <stdlib.h>
#include <string.h>

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

/*
 * The checkpoint stream's bound for these capacities (every tree value of every object), which
 * the replica reserves as its checkpoint buffer.
 */
uint64_t ledger_memory_bytes(const struct ledger_config *config)
{
        uint64_t per_account = 128 + 32 + 5 * 32 + 64;
        uint64_t per_transfer = 128 + 32 + 7 * 32 + 16 + 16 + 2 * 96 + 64;
        return config->accounts_max * per_account + config->transfers_max * per_transfer +
               (4u << 20);
}

struct ledger *ledger_create(const struct ledger_config *config)
{
        struct ledger_config c = *config;
        if (c.request_body_size_max == 0) c.request_body_size_max = BODY_MAX;
        if (c.request_body_size_max > BODY_MAX || c.request_body_size_max < 256) {
                log_error("ledger: request_body_size_max out of range value=%u",
                          c.request_body_size_max);
                return NULL;
        }
        struct ledger *ledger = calloc(1, sizeof(*ledger));
        if (ledger == NULL) {
                log_error("ledger: out of memory");
                return NULL;
        }
        ledger->config = c;
        ledger->scratch = malloc(BODY_MAX + 4096);
        if (ledger->scratch == NULL || ledger_state_init(ledger) != 0) {
                log_error("ledger: out of memory reserving the trees and their cache");
                ledger_destroy(ledger);
                return NULL;
        }
        ledger->memory_bytes = ledger_memory_bytes(&c);
        return ledger;
}

void ledger_destroy(struct ledger *ledger)
{
        if (ledger == NULL) return;
        ledger_state_deinit(ledger);
        free(ledger->scratch);
        free(ledger);
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
        const struct ledger_counters *n = &ledger->counters;
        if (info.kind == OP_CREATE_ACCOUNTS) {
                return ledger->config.accounts_max == 0 ||
                       n->account_count + events <= ledger->config.accounts_max;
        }
        return ledger->config.transfers_max == 0 ||
               n->transfer_count + n->failed_count + events <= ledger->config.transfers_max;
}

/* ---------------------------------------------------------------------------------------- */
/* Execution. */

static bool batch_fits(const struct ledger *ledger, enum op_kind kind, uint32_t count)
{
        const struct ledger_counters *n = &ledger->counters;
        if (kind == OP_CREATE_ACCOUNTS) {
                return ledger->config.accounts_max == 0 ||
                       n->account_count + count <= ledger->config.accounts_max;
        }
        return ledger->config.transfers_max == 0 ||
               n->transfer_count + n->failed_count + count <= ledger->config.transfers_max;
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
                _Static_assert(LEDGER_BATCH_EVENTS_MAX * sizeof(struct wire_create_result) <=
                                       BODY_MAX,
                               "results fit the scratch buffer");
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

uint32_t ledger_execute_begin(struct ledger *ledger, uint8_t operation, uint64_t timestamp,
                              const uint8_t *body, uint32_t body_size, uint8_t *reply)
{
        tally_assert(timestamp >= 1 && timestamp <= LEDGER_MAX63);
        tally_assert(ledger->finish == LEDGER_FINISH_NONE);
        if (operation == OPERATION_PULSE) {
                tally_assert(body_size == 0);
                ws_reserve(ledger, LEDGER_PULSE_TIMESTAMP_DELTA);
                ledger_pulse(ledger, timestamp);
                ledger_beat(ledger);
#ifdef TALLY_DEBUG
                ledger_check_invariants(ledger);
#endif
                return 0;
        }
        struct op_info info = op_info(operation);
        tally_assert(info.kind != OP_NONE);
        bool creates = info.kind == OP_CREATE_ACCOUNTS || info.kind == OP_CREATE_TRANSFERS;
        uint32_t reply_size = 0;
        /* The room the op's writes need is made in ledger_execute_finish, after its rules:
         * flushes move values without changing what a lookup finds, and the reply goes out
         * first. */
        ledger->finish_events = creates ? ledger_timestamp_delta(operation, body, body_size) : 0;

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
        ledger->finish = info.kind == OP_CREATE_TRANSFERS ? LEDGER_FINISH_TRANSFERS
                         : creates                        ? LEDGER_FINISH_ACCOUNTS
                                                          : LEDGER_FINISH_READ;
        tally_assert(reply_size <= BODY_MAX);
        return reply_size;
}

void ledger_execute_finish(struct ledger *ledger)
{
        enum ledger_finish finish = ledger->finish;
        ledger->finish = LEDGER_FINISH_NONE;
        /* Reads the batch started and did not wait for (ws_transfers_hint): landed by now,
         * mostly, and cached before anything else reads. */
        lsm_grid_prefetch_settle(&ledger->grid);
        if (finish == LEDGER_FINISH_NONE)
                return; /* a pulse: done in ledger_execute_begin */
        bool creates = finish != LEDGER_FINISH_READ;
        if (creates) {
                ws_reserve(ledger, ledger->finish_events);
                ws_commit(ledger);
        }
        if (finish == LEDGER_FINISH_TRANSFERS) ledger_expiry_next_update(ledger);
        ledger_beat(ledger);
#ifdef TALLY_DEBUG
        if (creates) ledger_check_invariants(ledger);
#endif
}

uint32_t ledger_execute(struct ledger *ledger, uint8_t operation, uint64_t timestamp,
                        const uint8_t *body, uint32_t body_size, uint8_t *reply)
{
        uint32_t reply_size =
                ledger_execute_begin(ledger, operation, timestamp, body, body_size, reply);
        ledger_execute_finish(ledger);
        return reply_size;
}

bool ledger_pulse_needed(const struct ledger *ledger, uint64_t timestamp)
{
        /* After every execute the first expiry entry is a live pending transfer's. */
        return ledger->expiry_next <= timestamp;
}

void ledger_get_stats(const struct ledger *ledger, struct ledger_stats *stats)
{
        stats->accounts = ledger->counters.account_count;
        stats->transfers = ledger->counters.transfer_count;
        stats->pending_live = ledger->counters.pending_live;
        stats->history_records = ledger->counters.history_count;
        stats->memory_bytes = ledger->memory_bytes;
        stats->grid_blocks_read = ledger->grid.stats.reads;
        stats->grid_pages_read = ledger->grid.stats.pages_read;
        stats->grid_blocks_written = ledger->grid.stats.writes;
        stats->grid_cache_hits = ledger->grid.stats.cache_hits;
        stats->grid_blocks_used = ledger->grid.used_count;
        stats->grid_address_max = ledger->grid.address_max;
        stats->tree_flushes = 0;
        stats->tree_tables_written = 0;
        stats->tree_values_compacted = 0;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                const struct lsm_tree *tree = ledger->forest.trees[id];
                if (tree == NULL)
                        continue;
                stats->tree_flushes += tree->stats.flushes;
                stats->tree_tables_written += tree->stats.tables_written;
                stats->tree_values_compacted += tree->stats.values_compacted;
        }
        stats->forced_compactions = ledger->forced_compactions;
        stats->compaction_waits = ledger->compactor.waits;
        stats->compaction_wait_ns = ledger->compactor.wait_ns;
        struct lsm_compactor_activity activity;
        lsm_compactor_activity(&ledger->compactor, &activity);
        stats->compaction_busy_ns = activity.busy_ns;
        stats->compaction_chunks_started = activity.chunks_started;
        stats->compaction_chunks_ended = activity.chunks_ended;
        stats->checkpoint_blocks_written = ledger->forest.blocks_written_last;
        stats->manifest_blocks_written = ledger->forest.log.blocks_written_last;
        stats->manifest_blocks = ledger->forest.log.block_count;
        stats->tables = ledger->forest.log.map_count;
}

/* ---------------------------------------------------------------------------------------- */
/* Debug invariants (TALLY_DEBUG): cheap enough for tests of up to ~100k objects. */

#ifdef TALLY_DEBUG
#define INVARIANT_LEDGERS_MAX 256u
#define INVARIANT_OBJECTS_MAX 20000u

struct invariant_scan {
        uint32_t ledgers[INVARIANT_LEDGERS_MAX];
        u128 sums[INVARIANT_LEDGERS_MAX][4];
        uint32_t ledger_count;
        bool per_ledger;
        uint64_t accounts;
};

static bool invariant_account(void *context, const void *value)
{
        struct invariant_scan *scan = context;
        struct wire_account a;
        memcpy(&a, value, sizeof(a));
        scan->accounts++;
        uint32_t k = 0;
        while (k < scan->ledger_count && scan->ledgers[k] != a.ledger) k++;
        if (k == scan->ledger_count) {
                if (scan->ledger_count == INVARIANT_LEDGERS_MAX) {
                        scan->per_ledger = false;
                        return false;
                }
                scan->ledgers[scan->ledger_count++] = a.ledger;
                memset(scan->sums[k], 0, sizeof(scan->sums[k]));
        }
        scan->sums[k][0] += a.debits_pending;
        scan->sums[k][1] += a.credits_pending;
        scan->sums[k][2] += a.debits_posted;
        scan->sums[k][3] += a.credits_posted;
        return true;
}

/* Per ledger, debits and credits balance, pending and posted separately (sums wrap modulo
 * 2^128, which keeps the comparison exact); the counters match the trees. */
void ledger_check_invariants(struct ledger *ledger)
{
        if (ledger->counters.account_count > INVARIANT_OBJECTS_MAX) return;
        struct invariant_scan *scan = calloc(1, sizeof(*scan));
        tally_assert(scan != NULL);
        scan->per_ledger = true;
        if (lsm_tree_scan(&ledger->accounts.objects, NULL, NULL, false, invariant_account,
                          scan) < 0) {
                /* A damaged or unreadable block: the fault it is, not a broken invariant. */
                free(scan);
                ledger_fault(ledger, "invariant scan");
        }
        for (uint32_t k = 0; scan->per_ledger && k < scan->ledger_count; k++) {
                tally_assert(scan->sums[k][0] == scan->sums[k][1]);
                tally_assert(scan->sums[k][2] == scan->sums[k][3]);
        }
        tally_assert(!scan->per_ledger || scan->accounts == ledger->counters.account_count);
        free(scan);
}
#endif
