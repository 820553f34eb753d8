/*
 * ledger_state.c: the ledger's trees and the working set that create batches run on
 * (ledger_internal.h says what is stored where).
 *
 * Why a working set: the rules (ledger_create.c) read and change objects in place and undo a
 * failed linked chain; the trees only take whole values into their memtables. The working set
 * sits between: an object is read from the trees the first time an operation names it and kept
 * here, every change of the operation happens here (a chain saves an entry in its undo log the
 * first time it changes it), and when the operation ends every changed object goes into the
 * trees in the order the operation first touched it, so all replicas fill their memtables alike.
 */
#include "ledger/ledger_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/huge_pages.h"
#include "lib/mix.h"

#define CACHE_BYTES_DEFAULT (64ull << 20)
/*
 * Values per tree between flushes. 131,072 (16 batches of 8,189 transfers) rather than 65,536:
 * level 0 fills half as often, so the random-key trees (id map, debit and credit indexes) are
 * merged into level 1 half as often, and a lookup of a new id crosses fewer tables per transfer
 * stored; measured over 2.5 M transfers, 417 -> 336 grid bytes written per transfer and 1.6x
 * the throughput. Costs ~75 MB more of memtables (~150 MB in all), fixed at start-up.
 */
#define MEMTABLE_MAX_DEFAULT 131072u
/*
 * Level 0's budget of the trees keyed by (account, timestamp): the transfers' debit and credit
 * indexes and the balance history. Every flush of theirs holds every busy account, so it
 * overlaps all of level 1, and every level-0 job rewrites all of level 1: with the default 8,
 * these two indexes merged about 15 values per value put at 90-100 M transfers, two thirds
 * of all compaction. 32 runs make each level-0 job four times as large against level 1; the
 * price is paid by scans (get_account_transfers, get_account_balances), which open a cursor
 * per level-0 table (up to 64 at the stall point). No lookup reads these trees by key.
 * 100 M random transfers in steps of 10 M (bench/scale.sh): the last step 41 % of the first
 * (327k against 796k/s) before, 51 % and 46 % in two runs after (399k against 777k/s, 403k
 * against 881k/s), query p99 4-22 ms against 4-14.
 */
#define LEDGER_LEVEL0_BUDGET_BY_ACCOUNT 32u
#define GRID_BLOCKS_MAX_DEFAULT (1ull << 24) /* 1 TiB of grid */

static int compare_u64(const void *a, const void *b)
{
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        return x < y ? -1 : x > y;
}

static int compare_expiry(const void *a, const void *b)
{
        int c = compare_u64(a, b);
        return c != 0 ? c : compare_u64((const uint8_t *)a + 8, (const uint8_t *)b + 8);
}

static int compare_history(const void *a, const void *b)
{
        u128 x, y;
        memcpy(&x, a, 16);
        memcpy(&y, b, 16);
        if (x != y)
                return x < y ? -1 : 1;
        return compare_u64((const uint8_t *)a + 16, (const uint8_t *)b + 16);
}

_Noreturn void ledger_fault(struct ledger *ledger, const char *what)
{
        snprintf(ledger->fault, sizeof(ledger->fault), "%s: %s", what, ledger->grid.error);
        log_error("ledger: the state cannot be read: %s", ledger->fault);
        if (ledger->config.on_fault != NULL)
                ledger->config.on_fault(ledger->config.on_fault_context, ledger->fault,
                                        ledger->grid.fault_damaged);
        abort();
}

static const struct lsm_groove_config accounts_config = {
        .name = "accounts",
        .tree_base = LEDGER_TREE_ACCOUNTS,
        .object_size = sizeof(struct wire_account),
        .id_offset = offsetof(struct wire_account, id),
        .timestamp_offset = offsetof(struct wire_account, timestamp),
        .index_count = ACCOUNT_INDEX_COUNT,
        .indexes = {
                {"user_data_128", offsetof(struct wire_account, user_data_128), 16},
                {"user_data_64", offsetof(struct wire_account, user_data_64), 8},
                {"user_data_32", offsetof(struct wire_account, user_data_32), 4},
                {"ledger", offsetof(struct wire_account, ledger), 4},
                {"code", offsetof(struct wire_account, code), 2},
        },
};

static const struct lsm_groove_config transfers_config = {
        .name = "transfers",
        .tree_base = LEDGER_TREE_TRANSFERS,
        .object_size = sizeof(struct wire_transfer),
        .id_offset = offsetof(struct wire_transfer, id),
        .timestamp_offset = offsetof(struct wire_transfer, timestamp),
        .index_count = TRANSFER_INDEX_COUNT,
        .indexes = {
                {"debit_account_id", offsetof(struct wire_transfer, debit_account_id), 16,
                 LEDGER_LEVEL0_BUDGET_BY_ACCOUNT},
                {"credit_account_id", offsetof(struct wire_transfer, credit_account_id), 16,
                 LEDGER_LEVEL0_BUDGET_BY_ACCOUNT},
                {"user_data_128", offsetof(struct wire_transfer, user_data_128), 16},
                {"user_data_64", offsetof(struct wire_transfer, user_data_64), 8},
                {"user_data_32", offsetof(struct wire_transfer, user_data_32), 4},
                {"ledger", offsetof(struct wire_transfer, ledger), 4},
                {"code", offsetof(struct wire_transfer, code), 2},
        },
};

static int trees_init(struct ledger *ledger)
{
        const struct ledger_config *c = &ledger->config;
        uint32_t memtable_max = c->memtable_max ? c->memtable_max : MEMTABLE_MAX_DEFAULT;
        struct lsm_groove_config accounts = accounts_config;
        struct lsm_groove_config transfers = transfers_config;
        accounts.memtable_max = memtable_max;
        transfers.memtable_max = memtable_max;
        accounts.table_data_blocks_max = c->table_data_blocks_max;
        transfers.table_data_blocks_max = c->table_data_blocks_max;
        transfers.objects_insert_only = true; /* a transfer's status lives in its own tree */
        /* Of the quarter of the cache for objects: a third for accounts, which every transfer
         * reads, two thirds for transfers. */
        uint64_t cache_bytes = c->cache_bytes ? c->cache_bytes : CACHE_BYTES_DEFAULT;
        accounts.cache_bytes = cache_bytes / 12;
        transfers.cache_bytes = cache_bytes / 6;
        if (lsm_forest_init(&ledger->forest, &ledger->grid) != 0 ||
            lsm_groove_init(&ledger->accounts, &accounts, &ledger->grid) != 0 ||
            lsm_groove_init(&ledger->transfers, &transfers, &ledger->grid) != 0)
                return -ENOMEM;
        ledger->status_layout = (struct lsm_layout){
                .tree = LEDGER_TREE_STATUS, .value_size = sizeof(struct status_value),
                .key_size = 8, .key_offset = 0, .compare = compare_u64,
                .table_data_blocks_max = c->table_data_blocks_max, .key_kind = LSM_KEY_U64};
        ledger->expiry_layout = (struct lsm_layout){
                .tree = LEDGER_TREE_EXPIRY, .value_size = sizeof(struct expiry_value),
                .key_size = 16, .key_offset = 0, .compare = compare_expiry,
                .table_data_blocks_max = c->table_data_blocks_max, .key_kind = LSM_KEY_U64_U64,
                .insert_only = true};
        ledger->history_layout = (struct lsm_layout){
                .tree = LEDGER_TREE_HISTORY, .value_size = sizeof(struct history_value),
                .key_size = 24, .key_offset = 0, .compare = compare_history,
                .table_data_blocks_max = c->table_data_blocks_max, .key_kind = LSM_KEY_U128_U64,
                .insert_only = true};
        /* A transfer changes at most one status and two history records. */
        if (lsm_tree_init(&ledger->status, "transfers.status", &ledger->status_layout,
                          &ledger->grid, memtable_max) != 0 ||
            lsm_tree_init(&ledger->expiry, "transfers.expiry", &ledger->expiry_layout,
                          &ledger->grid, memtable_max) != 0 ||
            lsm_tree_init(&ledger->history, "history", &ledger->history_layout, &ledger->grid,
                          2 * memtable_max) != 0)
                return -ENOMEM;
        ledger->history.level0_budget = LEDGER_LEVEL0_BUDGET_BY_ACCOUNT;
        lsm_groove_add_to_forest(&ledger->accounts, &ledger->forest);
        lsm_groove_add_to_forest(&ledger->transfers, &ledger->forest);
        lsm_forest_add(&ledger->forest, &ledger->status);
        lsm_forest_add(&ledger->forest, &ledger->expiry);
        lsm_forest_add(&ledger->forest, &ledger->history);
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX && ledger->compactor.running; id++) {
                if (ledger->forest.trees[id] != NULL)
                        ledger->forest.trees[id]->compactor = &ledger->compactor;
        }
        return 0;
}

static void trees_deinit(struct ledger *ledger)
{
        if (ledger->history.memtable != NULL)
                lsm_tree_deinit(&ledger->history);
        if (ledger->expiry.memtable != NULL)
                lsm_tree_deinit(&ledger->expiry);
        if (ledger->status.memtable != NULL)
                lsm_tree_deinit(&ledger->status);
        lsm_groove_deinit(&ledger->transfers);
        lsm_groove_deinit(&ledger->accounts);
        if (ledger->forest.block != NULL)
                lsm_forest_deinit(&ledger->forest);
}

int ledger_state_init(struct ledger *ledger)
{
        struct ledger_config *c = &ledger->config;
        struct lsm_device device = c->device;
        uint64_t blocks_max = c->grid_blocks_max ? c->grid_blocks_max : GRID_BLOCKS_MAX_DEFAULT;
        if (device.read == NULL) {
                lsm_device_memory_init(&ledger->memory_device, blocks_max);
                device = lsm_device_memory(&ledger->memory_device);
        }
        /* A quarter of the cache holds objects by id (groove.h), the rest blocks. */
        uint64_t cache_bytes = c->cache_bytes ? c->cache_bytes : CACHE_BYTES_DEFAULT;
        uint64_t cache_blocks = MAX((cache_bytes - cache_bytes / 4) / LSM_BLOCK_SIZE,
                                    4u * LSM_CACHE_WAYS);
        if (lsm_grid_init(&ledger->grid, &device, blocks_max, (uint32_t)cache_blocks) != 0)
                return -ENOMEM;
        if (c->compaction_worker) {
                struct lsm_device worker = c->worker_device.read != NULL ? c->worker_device : device;
                tally_assert(c->worker_device.read != NULL || c->device.read == NULL);
                int rc = lsm_compactor_start(&ledger->compactor, &worker);
                if (rc != 0)
                        log_warn("compaction stays in the loop: no worker thread error=%s",
                                 strerror(-rc));
        }
        if (trees_init(ledger) != 0)
                return -ENOMEM;
        struct working_set *ws = &ledger->ws;
        ws->entries = huge_pages_alloc(WS_ENTRIES_MAX * sizeof(*ws->entries));
        ws->slots = huge_pages_alloc(WS_SLOTS * sizeof(*ws->slots));
        ws->undo = huge_pages_alloc(WS_ENTRIES_MAX * sizeof(*ws->undo));
        ws->created_accounts = calloc(LEDGER_BATCH_EVENTS_MAX, sizeof(uint32_t));
        ws->created_transfers = calloc(LEDGER_BATCH_EVENTS_MAX, sizeof(uint32_t));
        ws->history = calloc(2 * LEDGER_BATCH_EVENTS_MAX, sizeof(*ws->history));
        ws->expiry = calloc(LEDGER_BATCH_EVENTS_MAX, sizeof(*ws->expiry));
        ws->failed = calloc(LEDGER_BATCH_EVENTS_MAX, sizeof(*ws->failed));
        ws->id_maybe = calloc(LEDGER_BATCH_EVENTS_MAX, sizeof(*ws->id_maybe));
        if (ws->entries == NULL || ws->slots == NULL || ws->undo == NULL ||
            ws->created_accounts == NULL || ws->created_transfers == NULL ||
            ws->history == NULL || ws->expiry == NULL || ws->failed == NULL ||
            ws->id_maybe == NULL)
                return -ENOMEM;
        ledger->expiry_next = UINT64_MAX;
        return 0;
}

void ledger_state_deinit(struct ledger *ledger)
{
        struct working_set *ws = &ledger->ws;
        huge_pages_free(ws->entries, WS_ENTRIES_MAX * sizeof(*ws->entries));
        huge_pages_free(ws->slots, WS_SLOTS * sizeof(*ws->slots));
        huge_pages_free(ws->undo, WS_ENTRIES_MAX * sizeof(*ws->undo));
        free(ws->created_accounts);
        free(ws->created_transfers);
        free(ws->history);
        free(ws->expiry);
        free(ws->failed);
        free(ws->id_maybe);
        memset(ws, 0, sizeof(*ws));
        trees_deinit(ledger);
        lsm_compactor_stop(&ledger->compactor);
        if (ledger->grid.slots != NULL)
                lsm_grid_deinit(&ledger->grid);
        if (ledger->memory_device.block_count_max != 0)
                lsm_device_memory_deinit(&ledger->memory_device);
}

void ledger_state_reset(struct ledger *ledger)
{
        tally_assert(ledger->ws.count == 0);
        trees_deinit(ledger);
        memset(&ledger->forest, 0, sizeof(ledger->forest));
        memset(&ledger->accounts, 0, sizeof(ledger->accounts));
        memset(&ledger->transfers, 0, sizeof(ledger->transfers));
        memset(&ledger->status, 0, sizeof(ledger->status));
        memset(&ledger->expiry, 0, sizeof(ledger->expiry));
        memset(&ledger->history, 0, sizeof(ledger->history));
        lsm_grid_free_set_clear(&ledger->grid);
        lsm_grid_cache_clear(&ledger->grid);
        if (trees_init(ledger) != 0) {
                log_error("ledger: out of memory resetting the trees");
                abort();
        }
        memset(&ledger->counters, 0, sizeof(ledger->counters));
        memset(ledger->beat_puts, 0, sizeof(ledger->beat_puts)); /* the trees count from 0 */
        ledger->expiry_next = UINT64_MAX;
        ledger->chain_open = false;
}

/* ---- the working set ---------------------------------------------------------------------- */

static uint64_t ws_hash(uint8_t kind, u128 id)
{
        return mix64((uint64_t)id ^ mix64((uint64_t)(id >> 64) + 1 + kind));
}

/* The entry of (kind, id), or a new one (state unset) if `*fresh`. */
static struct ws_entry *ws_slot(struct ledger *ledger, uint8_t kind, u128 id, bool *fresh)
{
        struct working_set *ws = &ledger->ws;
        uint64_t i = ws_hash(kind, id) & (WS_SLOTS - 1);
        for (;;) {
                uint32_t ref = ws->slots[i];
                if (ref == 0)
                        break;
                struct ws_entry *e = &ws->entries[ref - 1];
                if (e->kind == kind && e->id == id) {
                        *fresh = false;
                        return e;
                }
                i = (i + 1) & (WS_SLOTS - 1);
        }
        tally_assert(ws->count < WS_ENTRIES_MAX);
        struct ws_entry *e = &ws->entries[ws->count++];
        memset(e, 0, sizeof(*e));
        e->kind = kind;
        e->id = id;
        ws->slots[i] = ws->count;
        *fresh = true;
        return e;
}

void ws_account_hint(struct ledger *ledger, u128 id, bool near)
{
        if (!near)
                __builtin_prefetch(&ledger->ws.slots[ws_hash(WS_ACCOUNT, id) & (WS_SLOTS - 1)]);
        lsm_groove_cache_prefetch(&ledger->accounts, id, near);
}

struct ws_entry *ws_account(struct ledger *ledger, u128 id)
{
        bool fresh;
        struct ws_entry *e = ws_slot(ledger, WS_ACCOUNT, id, &fresh);
        if (!fresh)
                return e;
        int rc = lsm_groove_get_by_id(&ledger->accounts, id, &e->object.account);
        if (rc < 0)
                ledger_fault(ledger, "account lookup");
        e->state = rc == 1 ? WS_PRESENT : WS_ABSENT;
        return e;
}

uint8_t ledger_status_get(struct ledger *ledger, uint64_t timestamp)
{
        struct status_value value;
        int rc = lsm_tree_get(&ledger->status, &timestamp, &value);
        if (rc < 0)
                ledger_fault(ledger, "transfer status lookup");
        return rc == 1 ? value.status : TRANSFER_STATUS_NONE;
}

/*
 * The object cache first for an id that is usually there (a pending transfer a post or void
 * names); the id map first for one that usually is not (a new transfer's own id): its filters
 * say so, and the cache, which holds nothing the trees do not, need not be asked. Asking it
 * first cost a cache miss per new transfer (17.8 % of the loop's samples at 17 M stored).
 * `maybe` false: the batch's hint (ws_transfers_hint) says the id map cannot hold the id.
 */
static struct ws_entry *transfer_lookup(struct ledger *ledger, u128 id, bool usually_absent,
                                        bool maybe)
{
        bool fresh;
        struct ws_entry *e = ws_slot(ledger, WS_TRANSFER, id, &fresh);
        if (!fresh)
                return e;
        if (!maybe) {
                e->state = WS_ABSENT;
                return e;
        }
        bool cached = false;
        uint64_t timestamp = 0;
        if (!usually_absent)
                cached = lsm_groove_cached(&ledger->transfers, id, &e->object.transfer);
        if (!cached) {
                int rc = lsm_groove_get_id(&ledger->transfers, id, &timestamp);
                if (rc < 0)
                        ledger_fault(ledger, "transfer id lookup");
                if (rc == 0) {
                        e->state = WS_ABSENT;
                        return e;
                }
                if (timestamp == 0) {
                        e->state = WS_FAILED;
                        return e;
                }
                if (usually_absent)
                        cached = lsm_groove_cached(&ledger->transfers, id, &e->object.transfer);
        }
        if (!cached) {
                int rc = lsm_groove_get_by_timestamp(&ledger->transfers, timestamp,
                                                     &e->object.transfer);
                if (rc != 1)
                        ledger_fault(ledger, rc < 0 ? "transfer lookup"
                                                    : "transfer of an id is missing");
                lsm_groove_cache_put(&ledger->transfers, &e->object.transfer);
        }
        e->state = WS_PRESENT;
        if (e->object.transfer.flags & TRANSFER_FLAG_PENDING)
                e->status = ledger_status_get(ledger, e->object.transfer.timestamp);
        return e;
}

struct ws_entry *ws_transfer(struct ledger *ledger, u128 id)
{
        return transfer_lookup(ledger, id, false, true);
}

/*
 * Below this many transfers a batch asks the id map one id at a time: sorting and walking every
 * level for a handful of ids costs more than it saves.
 */
#define TRANSFERS_HINT_MIN 64u

void ws_transfers_hint(struct ledger *ledger, const uint8_t *events, uint32_t count)
{
        struct working_set *ws = &ledger->ws;
        ws->id_maybe_count = 0;
        if (count < TRANSFERS_HINT_MIN)
                return;
        tally_assert(count <= LEDGER_BATCH_EVENTS_MAX);
        _Static_assert(offsetof(struct wire_transfer, id) == 0, "a transfer's id comes first");
        lsm_groove_ids_may_contain(&ledger->transfers, events, sizeof(struct wire_transfer), count,
                                   ws->id_maybe);
        ws->id_maybe_count = count;
        ws->id_maybe_version = ledger->transfers.ids.version;
}

struct ws_entry *ws_transfer_new(struct ledger *ledger, u128 id, uint32_t event)
{
        const struct working_set *ws = &ledger->ws;
        bool maybe = event >= ws->id_maybe_count ||
                     ws->id_maybe_version != ledger->transfers.ids.version || ws->id_maybe[event];
        return transfer_lookup(ledger, id, true, maybe);
}

void ws_touch(struct ledger *ledger, struct ws_entry *entry)
{
        struct working_set *ws = &ledger->ws;
        if (ws->chain == 0 || entry->undo_chain == ws->chain)
                return;
        tally_assert(ws->undo_count < WS_ENTRIES_MAX);
        struct ws_undo *u = &ws->undo[ws->undo_count++];
        u->entry = (uint32_t)(entry - ws->entries);
        u->state = entry->state;
        u->created = entry->created;
        u->dirty = entry->dirty;
        u->status = entry->status;
        u->status_dirty = entry->status_dirty;
        memcpy(&u->object, &entry->object, sizeof(u->object));
        entry->undo_chain = ws->chain;
}

void ws_account_create(struct ledger *ledger, struct ws_entry *entry,
                       const struct wire_account *account)
{
        struct working_set *ws = &ledger->ws;
        tally_assert(entry->kind == WS_ACCOUNT && entry->state == WS_ABSENT);
        tally_assert(account->timestamp > ledger->counters.account_timestamp_last);
        ws_touch(ledger, entry);
        entry->state = WS_PRESENT;
        entry->created = true;
        entry->dirty = true;
        entry->object.account = *account;
        ws->created_accounts[ws->created_account_count++] = (uint32_t)(entry - ws->entries);
        ledger->counters.account_count++;
        ledger->counters.account_timestamp_last = account->timestamp;
}

void ws_transfer_create(struct ledger *ledger, struct ws_entry *entry,
                        const struct wire_transfer *transfer, uint8_t status)
{
        struct working_set *ws = &ledger->ws;
        tally_assert(entry->kind == WS_TRANSFER && entry->state == WS_ABSENT);
        tally_assert(transfer->timestamp > ledger->counters.transfer_timestamp_last);
        ws_touch(ledger, entry);
        entry->state = WS_PRESENT;
        entry->created = true;
        entry->dirty = true;
        entry->object.transfer = *transfer;
        entry->status = status;
        entry->status_dirty = status != TRANSFER_STATUS_NONE;
        ws->created_transfers[ws->created_transfer_count++] = (uint32_t)(entry - ws->entries);
        ledger->counters.transfer_count++;
        ledger->counters.transfer_timestamp_last = transfer->timestamp;
}

void ws_history_append(struct ledger *ledger, const struct wire_account *account,
                       uint64_t timestamp)
{
        struct working_set *ws = &ledger->ws;
        tally_assert(ws->history_count < 2 * LEDGER_BATCH_EVENTS_MAX);
        ws->history[ws->history_count++] = (struct history_value){
                .account_id = account->id,
                .timestamp = timestamp,
                .debits_pending = account->debits_pending,
                .debits_posted = account->debits_posted,
                .credits_pending = account->credits_pending,
                .credits_posted = account->credits_posted,
        };
        ledger->counters.history_count++;
}

void ws_failed(struct ledger *ledger, struct ws_entry *entry)
{
        struct working_set *ws = &ledger->ws;
        tally_assert(entry->kind == WS_TRANSFER && entry->state == WS_ABSENT);
        entry->state = WS_FAILED;
        ws->failed[ws->failed_count++] = entry->id;
        ledger->counters.failed_count++;
}

void ws_chain_begin(struct ledger *ledger)
{
        struct working_set *ws = &ledger->ws;
        static uint32_t chain_seq; /* only distinguishes chains within one operation */
        ws->chain = ++chain_seq == 0 ? ++chain_seq : chain_seq;
        ws->undo_count = 0;
        ledger->chain_counters = ledger->counters;
        ledger->chain_created_accounts = ws->created_account_count;
        ledger->chain_created_transfers = ws->created_transfer_count;
        ledger->chain_history = ws->history_count;
}

/* The events so far are final: the new pending transfers with a timeout get expiry entries. */
void ws_chain_commit(struct ledger *ledger)
{
        struct working_set *ws = &ledger->ws;
        for (uint32_t i = ledger->chain_created_transfers; i < ws->created_transfer_count; i++) {
                const struct ws_entry *e = &ws->entries[ws->created_transfers[i]];
                const struct wire_transfer *t = &e->object.transfer;
                if (t->timeout == 0 || e->status != TRANSFER_STATUS_PENDING)
                        continue;
                struct expiry_value v = {
                        .expires_at = t->timestamp + (uint64_t)t->timeout * LEDGER_NS_PER_S,
                        .timestamp = t->timestamp,
                };
                ws->expiry[ws->expiry_count++] = v;
                ledger->expiry_next = MIN(ledger->expiry_next, v.expires_at);
        }
        ws->chain = 0;
        ws->undo_count = 0;
        ledger->chain_counters = ledger->counters;
        ledger->chain_created_accounts = ws->created_account_count;
        ledger->chain_created_transfers = ws->created_transfer_count;
        ledger->chain_history = ws->history_count;
}

void ws_chain_rollback(struct ledger *ledger)
{
        struct working_set *ws = &ledger->ws;
        tally_assert(ws->chain != 0);
        while (ws->undo_count > 0) {
                const struct ws_undo *u = &ws->undo[--ws->undo_count];
                struct ws_entry *e = &ws->entries[u->entry];
                e->state = u->state;
                e->created = u->created;
                e->dirty = u->dirty;
                e->status = u->status;
                e->status_dirty = u->status_dirty;
                memcpy(&e->object, &u->object, sizeof(e->object));
                e->undo_chain = 0;
        }
        ledger->counters = ledger->chain_counters;
        ws->created_account_count = ledger->chain_created_accounts;
        ws->created_transfer_count = ledger->chain_created_transfers;
        ws->history_count = ledger->chain_history;
        ws->chain = 0;
}

/* ---- flushes ------------------------------------------------------------------------------ */

/*
 * Compaction is paced by op: after every operation each tree does beat_values of merging
 * (lsm_tree_compact_step), or more when its job would not end before level 0 fills otherwise
 * (lsm_tree_compaction_pace: in proportion to the values the op put into the tree), so no
 * request waits for a whole merge. Jobs stay in flight across checkpoints (their blocks are
 * staged: grid.h). A tree whose level 0 grows past twice its budget anyway (writes outpacing
 * the beats) is compacted at once: back-pressure, at a point fixed by the operations like
 * everything here.
 */
#define BEAT_VALUES_DEFAULT 32768u

static struct lsm_tree *forest_tree(struct ledger *ledger, uint32_t id)
{
        return ledger->forest.trees[id];
}

/* Flushes every memtable (no compaction). */
static void trees_flush(struct ledger *ledger)
{
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest_tree(ledger, id);
                if (tree != NULL && !lsm_tree_flush(tree))
                        ledger_fault(ledger, "flush");
        }
}

static void tree_backpressure(struct ledger *ledger, struct lsm_tree *tree)
{
        uint32_t stall =
                MAX(lsm_tree_level0_stall(tree), ledger->catch_up_stall[tree->layout.tree]);
        if (lsm_tree_level0_fill(tree) <= stall || ledger->compaction_deferred)
                return;
        ledger->forced_compactions++;
        if (!lsm_tree_compact(tree))
                ledger_fault(ledger, "compaction");
}

/*
 * A tree whose level 0 a deferral left over its budget would otherwise merge all of it inside
 * the next operations (the pace asks for a whole job once level 0 is at its stall point, and
 * back-pressure past it): after a restart at 10 M transfers, ops of 6.8 and 5.7 M values, 1.0
 * and 0.5 s, and a first request of 1.3-1.5 s. It catches up paced against a level 0 allowed
 * another stall's worth of tables instead, until level 0 is back within its budget.
 */
void ledger_defer_compaction(struct ledger *ledger, bool defer)
{
        ledger->compaction_deferred = defer;
        if (defer)
                return;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest_tree(ledger, id);
                if (tree == NULL)
                        continue;
                ledger->beat_puts[id] = tree->stats.puts; /* the next beat paces what it puts */
                uint32_t zero = lsm_tree_level0_fill(tree);
                uint32_t stall = lsm_tree_level0_stall(tree);
                ledger->catch_up_stall[id] =
                        zero > lsm_tree_level_budget(tree, 0) ? MAX(zero, stall) + stall : 0;
        }
}

void ledger_beat(struct ledger *ledger)
{
        if (ledger->compaction_deferred)
                return;
        /*
         * An op that wrote nothing (a query, a lookup, a pulse that expired nothing) does an
         * eighth of the floor: it adds no work, and a client reading one request at a time
         * waited for the whole floor of every tree with a job (8-9 ms per query after a
         * restart at 20 M stored, against 0.5 ms for the query itself). Writes pace the rest.
         */
        bool wrote = false;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX && !wrote; id++) {
                const struct lsm_tree *tree = forest_tree(ledger, id);
                wrote = tree != NULL && tree->stats.puts != ledger->beat_puts[id];
        }
        uint64_t beat_floor = ledger->config.beat_values ? ledger->config.beat_values
                                                         : BEAT_VALUES_DEFAULT;
        if (!wrote)
                beat_floor = MAX(beat_floor / 8, 1);
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest_tree(ledger, id);
                if (tree == NULL)
                        continue;
                bool idle;
                uint64_t beat = beat_floor;
                uint64_t put = tree->stats.puts - ledger->beat_puts[id];
                ledger->beat_puts[id] = tree->stats.puts;
                if (ledger->catch_up_stall[id] != 0 &&
                    lsm_tree_level0_fill(tree) <= lsm_tree_level_budget(tree, 0))
                        ledger->catch_up_stall[id] = 0; /* caught up */
                uint32_t stall = ledger->catch_up_stall[id] != 0 ? ledger->catch_up_stall[id]
                                                                 : lsm_tree_level0_stall(tree);
                beat = MAX(beat, lsm_tree_compaction_pace_to(tree, put, stall));
                if (!lsm_tree_compact_step(tree, beat, &idle))
                        ledger_fault(ledger, "compaction");
                tree_backpressure(ledger, tree);
        }
}

/* Flushes `tree` first if it has no room for `count` more values. */
static void tree_reserve(struct ledger *ledger, struct lsm_tree *tree, uint32_t count)
{
        if (lsm_tree_has_room(tree, count))
                return;
        if (!lsm_tree_flush(tree))
                ledger_fault(ledger, "flush");
        tree_backpressure(ledger, tree);
}

/*
 * Before an operation of up to `events` events: each tree that could not take the
 * operation's worst case flushes now, alone (trees fill at different rates, so their flushes
 * fall on different operations). The index trees flush as they fill (tree_room).
 */
void ws_reserve(struct ledger *ledger, uint32_t events)
{
        tree_reserve(ledger, &ledger->accounts.objects, 3 * events);
        tree_reserve(ledger, &ledger->accounts.ids, events);
        tree_reserve(ledger, &ledger->transfers.objects, events);
        tree_reserve(ledger, &ledger->transfers.ids, 2 * events);
        tree_reserve(ledger, &ledger->status, events);
        tree_reserve(ledger, &ledger->expiry, events);
        tree_reserve(ledger, &ledger->history, 2 * events);
}

void ledger_flush(struct ledger *ledger)
{
        tally_assert(ledger->ws.count == 0);
        trees_flush(ledger);
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest_tree(ledger, id);
                if (tree != NULL && !lsm_tree_compact(tree))
                        ledger_fault(ledger, "compaction");
        }
}

/*
 * Room for one more value in `tree` (and, for a groove, in each of its trees): an operation
 * larger than a memtable flushes in the middle of its commit, at a point fixed by the
 * operations, so replicas still flush alike.
 */
static void tree_room(struct ledger *ledger, struct lsm_tree *tree)
{
        if (lsm_tree_has_room(tree, 1))
                return;
        if (!lsm_tree_flush(tree))
                ledger_fault(ledger, "flush");
        tree_backpressure(ledger, tree);
}

static void groove_room(struct ledger *ledger, struct lsm_groove *g)
{
        tree_room(ledger, &g->objects);
        tree_room(ledger, &g->ids);
        for (uint32_t i = 0; i < g->config.index_count; i++)
                tree_room(ledger, &g->indexes[i]);
}

/* True if committing `e` updates an existing account (lsm_groove_update below). */
static bool ws_account_update(const struct ws_entry *e)
{
        return e->state == WS_PRESENT && e->kind == WS_ACCOUNT && !e->created && e->dirty;
}

void ws_commit(struct ledger *ledger)
{
        struct working_set *ws = &ledger->ws;
        tally_assert(ws->chain == 0);
        /* Puts of random ids miss the cache in the id maps' hash tables: start loading the
         * slots of the objects a few entries ahead, so that those misses overlap. */
        const uint32_t ahead = 16, near = 8;
        for (uint32_t i = 0; i < ws->count; i++) {
                if (i + ahead < ws->count) {
                        const struct ws_entry *next = &ws->entries[i + ahead];
                        if (next->state == WS_PRESENT && next->created)
                                lsm_groove_insert_prefetch(next->kind == WS_ACCOUNT
                                                                   ? &ledger->accounts
                                                                   : &ledger->transfers,
                                                           &next->object);
                        else if (ws_account_update(next)) { /* an update compares the value */
                                lsm_tree_put_prefetch(&ledger->accounts.objects,
                                                      &next->object.account.timestamp);
                                /* and writes through the object cache */
                                lsm_groove_cache_prefetch(&ledger->accounts, next->id, false);
                        }
                }
                if (i + near < ws->count) {
                        const struct ws_entry *next = &ws->entries[i + near];
                        if (ws_account_update(next)) {
                                lsm_tree_value_prefetch(&ledger->accounts.objects,
                                                        &next->object.account.timestamp);
                                lsm_groove_cache_prefetch(&ledger->accounts, next->id, true);
                        }
                }
                const struct ws_entry *e = &ws->entries[i];
                if (e->state != WS_PRESENT)
                        continue;
                if (e->kind == WS_ACCOUNT) {
                        if (e->created) {
                                groove_room(ledger, &ledger->accounts);
                                lsm_groove_insert(&ledger->accounts, &e->object.account);
                                lsm_groove_cache_put(&ledger->accounts, &e->object.account);
                        } else if (e->dirty) {
                                tree_room(ledger, &ledger->accounts.objects);
                                lsm_groove_update(&ledger->accounts, &e->object.account);
                        }
                        continue;
                }
                if (e->created) {
                        groove_room(ledger, &ledger->transfers);
                        lsm_groove_insert(&ledger->transfers, &e->object.transfer);
                        /* A pending transfer is read again by the post or void that ends it. */
                        if (e->object.transfer.flags & TRANSFER_FLAG_PENDING)
                                lsm_groove_cache_put(&ledger->transfers, &e->object.transfer);
                }
                if (e->status_dirty) {
                        struct status_value v = {.timestamp = e->object.transfer.timestamp,
                                                 .status = e->status};
                        tree_room(ledger, &ledger->status);
                        lsm_tree_put(&ledger->status, &v);
                }
        }
        for (uint32_t i = 0; i < ws->failed_count; i++) {
                tree_room(ledger, &ledger->transfers.ids);
                lsm_groove_put_id(&ledger->transfers, ws->failed[i], 0);
        }
        for (uint32_t i = 0; i < ws->history_count; i++) {
                tree_room(ledger, &ledger->history);
                lsm_tree_put(&ledger->history, &ws->history[i]);
        }
        for (uint32_t i = 0; i < ws->expiry_count; i++) {
                tree_room(ledger, &ledger->expiry);
                lsm_tree_put(&ledger->expiry, &ws->expiry[i]);
        }
        if (ws->count > WS_SLOTS / 16) {
                memset(ws->slots, 0, WS_SLOTS * sizeof(*ws->slots));
        } else {
                for (uint32_t i = 0; i < ws->count; i++) {
                        uint64_t s = ws_hash(ws->entries[i].kind, ws->entries[i].id) &
                                     (WS_SLOTS - 1);
                        while (ws->slots[s] != i + 1)
                                s = (s + 1) & (WS_SLOTS - 1);
                        ws->slots[s] = 0;
                }
        }
        ws->count = 0;
        ws->undo_count = 0;
        ws->created_account_count = 0;
        ws->created_transfer_count = 0;
        ws->history_count = 0;
        ws->expiry_count = 0;
        ws->failed_count = 0;
        ledger->chain_created_accounts = 0;
        ledger->chain_created_transfers = 0;
        ledger->chain_history = 0;
        ledger->chain_counters = ledger->counters;
}

/* ---- timestamps --------------------------------------------------------------------------- */

/* In the created list (timestamps increasing): true if one has exactly `timestamp`. */
static bool created_has(const struct ledger *ledger, const uint32_t *created, uint32_t count,
                        bool accounts, uint64_t timestamp)
{
        uint32_t lo = 0, hi = count;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                const struct ws_entry *e = &ledger->ws.entries[created[mid]];
                uint64_t t = accounts ? e->object.account.timestamp : e->object.transfer.timestamp;
                if (t == timestamp)
                        return true;
                if (t < timestamp)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

bool ledger_account_timestamp_exists(struct ledger *ledger, uint64_t timestamp)
{
        if (timestamp > ledger->counters.account_timestamp_last)
                return false;
        if (created_has(ledger, ledger->ws.created_accounts, ledger->ws.created_account_count,
                        true, timestamp))
                return true;
        struct wire_account a;
        int rc = lsm_groove_get_by_timestamp(&ledger->accounts, timestamp, &a);
        if (rc < 0)
                ledger_fault(ledger, "account lookup by timestamp");
        return rc == 1;
}

bool ledger_transfer_timestamp_exists(struct ledger *ledger, uint64_t timestamp)
{
        if (timestamp > ledger->counters.transfer_timestamp_last)
                return false;
        if (created_has(ledger, ledger->ws.created_transfers, ledger->ws.created_transfer_count,
                        false, timestamp))
                return true;
        struct wire_transfer t;
        int rc = lsm_groove_get_by_timestamp(&ledger->transfers, timestamp, &t);
        if (rc < 0)
                ledger_fault(ledger, "transfer lookup by timestamp");
        return rc == 1;
}

/* ---- expiry ------------------------------------------------------------------------------- */

static bool expiry_first(void *context, const void *value)
{
        memcpy(context, value, sizeof(struct expiry_value));
        return false;
}

/* The first expiry entry after the cursor; false if there is none. */
static bool expiry_peek(struct ledger *ledger, struct expiry_value *out)
{
        struct expiry_value from = {.expires_at = ledger->counters.expiry_done_expires_at,
                                    .timestamp = ledger->counters.expiry_done_timestamp + 1};
        int64_t n = lsm_tree_scan(&ledger->expiry, &from, NULL, false, expiry_first, out);
        if (n < 0)
                ledger_fault(ledger, "expiry scan");
        return n > 0;
}

/*
 * Moves the cursor past entries of transfers that are no longer pending, so that expiry_next
 * is the expiry of a live pending transfer (or UINT64_MAX).
 */
void ledger_expiry_next_update(struct ledger *ledger)
{
        struct expiry_value v;
        while (expiry_peek(ledger, &v)) {
                if (ledger_status_get(ledger, v.timestamp) == TRANSFER_STATUS_PENDING) {
                        ledger->expiry_next = v.expires_at;
                        return;
                }
                ledger->counters.expiry_done_expires_at = v.expires_at;
                ledger->counters.expiry_done_timestamp = v.timestamp;
        }
        ledger->expiry_next = UINT64_MAX;
}

/* ---- checkpoints in the grid -------------------------------------------------------------- */

/* The root's user bytes: the counters, then the caller's. */
struct root_user {
        struct ledger_counters counters;
        uint32_t size;
        uint32_t reserved;
        uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
};
_Static_assert(sizeof(struct root_user) <= LSM_FOREST_USER_SIZE_MAX, "root user bytes fit");

bool ledger_checkpoint(struct ledger *ledger, const void *user, uint32_t user_size,
                       struct lsm_block_ref *root)
{
        tally_assert(ledger->ws.count == 0 && !ledger->chain_open);
        tally_assert(user_size <= LEDGER_CHECKPOINT_USER_MAX);
        trees_flush(ledger);
        static struct root_user bytes;
        memset(&bytes, 0, sizeof(bytes));
        bytes.counters = ledger->counters;
        bytes.size = user_size;
        memcpy(bytes.user, user, user_size);
        uint32_t size = (uint32_t)offsetof(struct root_user, user) + user_size;
        if (!lsm_forest_checkpoint(&ledger->forest, &bytes, size, root)) {
                log_error("ledger: checkpoint not written: %s", ledger->grid.error);
                return false;
        }
        /* The root names blocks whose writes may not have landed yet; one that failed would
         * leave the checkpoint naming a block that is not on disk. */
        if (!lsm_grid_flush_writes(&ledger->grid))
                ledger_fault(ledger, "checkpoint");
        return true;
}

void ledger_checkpoint_durable(struct ledger *ledger)
{
        lsm_forest_checkpoint_durable(&ledger->forest);
}

int ledger_open(struct ledger *ledger, struct lsm_block_ref root, void *user,
                uint32_t *user_size, char *error, size_t error_size)
{
        tally_assert(ledger->ws.count == 0);
        ledger_state_reset(ledger);
        static struct root_user bytes;
        uint32_t size = 0;
        memset(&bytes, 0, sizeof(bytes));
        if (!lsm_forest_open(&ledger->forest, root, &bytes, &size)) {
                snprintf(error, error_size, "%s", ledger->grid.error);
                ledger_state_reset(ledger);
                return -1;
        }
        if (size < offsetof(struct root_user, user) || bytes.size > LEDGER_CHECKPOINT_USER_MAX ||
            size != offsetof(struct root_user, user) + bytes.size) {
                snprintf(error, error_size, "checkpoint root: its ledger bytes are malformed");
                ledger_state_reset(ledger);
                return -1;
        }
        ledger->counters = bytes.counters;
        memcpy(user, bytes.user, bytes.size);
        *user_size = bytes.size;
        ledger_expiry_next_update(ledger);
        return 0;
}

int ledger_checkpoint_blocks(struct ledger *ledger, struct lsm_block_ref root,
                             int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                             void *context)
{
        return lsm_forest_blocks(&ledger->forest, root, visit, context);
}

int ledger_checkpoint_blocks_known(struct ledger *ledger, struct lsm_block_ref root,
                                   int (*visit)(void *context, struct lsm_block_ref ref,
                                                uint8_t kind),
                                   int (*table_known)(void *context, struct lsm_block_ref index),
                                   void *context)
{
        return lsm_forest_blocks_known(&ledger->forest, root, visit, table_known, context);
}

/* ---- blocks as sync and backups move them ------------------------------------------------- */

int ledger_block_read(struct ledger *ledger, struct lsm_block_ref ref, uint8_t *block)
{
        int rc = ledger->grid.device.read(ledger->grid.device.context, ref.address, block);
        if (rc != 0) {
                log_error("ledger: grid block %llu unreadable errno=%d",
                          (unsigned long long)ref.address, -rc);
                return -1;
        }
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        const char *why = lsm_block_check(block, ref, (enum lsm_block_kind)h->kind);
        if (why != NULL) {
                log_error("ledger: grid block %llu is not the one the checkpoint names: %s",
                          (unsigned long long)ref.address, why);
                return -1;
        }
        return 0;
}

bool ledger_block_present(struct ledger *ledger, struct lsm_block_ref ref, uint8_t *block)
{
        struct lsm_device *device = &ledger->grid.device;
        int rc = device->probe != NULL ? device->probe(device->context, ref.address, block)
                                       : device->read(device->context, ref.address, block);
        if (rc != 0)
                return false;
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        return h->kind != LSM_BLOCK_NONE && h->kind < LSM_BLOCK_KIND_COUNT &&
               lsm_block_check(block, ref, (enum lsm_block_kind)h->kind) == NULL;
}

bool ledger_damaged_block(const struct ledger *ledger, struct lsm_block_ref *ref)
{
        if (!ledger->grid.fault_damaged || ledger->grid.fault_ref.address == 0)
                return false;
        *ref = ledger->grid.fault_ref;
        return true;
}

static void compaction_settle(struct ledger *ledger);

void ledger_cache_drop(struct ledger *ledger)
{
        compaction_settle(ledger);
        lsm_grid_prefetch_settle(&ledger->grid);
        lsm_grid_cache_clear(&ledger->grid);
}

void ledger_damaged_block_forget(struct ledger *ledger)
{
        ledger->grid.fault_ref = (struct lsm_block_ref){0};
}

uint64_t ledger_grid_blocks_max(const struct ledger *ledger)
{
        return ledger->grid.block_count_max;
}

/*
 * A job merging on the worker writes addresses the loop's free set reserved for it, which a
 * copied checkpoint may use for its own blocks: it must be done before they are written.
 */
static void compaction_settle(struct ledger *ledger)
{
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++) {
                struct lsm_tree *tree = forest_tree(ledger, id);
                if (tree != NULL && tree->job.on_worker)
                        lsm_compactor_wait(tree->compactor, tree);
        }
}

int ledger_block_install(struct ledger *ledger, const uint8_t *block)
{
        compaction_settle(ledger);
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        struct lsm_block_ref ref = {.address = h->address, .checksum = h->checksum};
        if (h->address == 0 || h->address > ledger->grid.block_count_max ||
            h->kind == LSM_BLOCK_NONE || h->kind >= LSM_BLOCK_KIND_COUNT ||
            lsm_block_check(block, ref, (enum lsm_block_kind)h->kind) != NULL) {
                log_error("ledger: a block to install is damaged address=%llu",
                          (unsigned long long)h->address);
                return -1;
        }
        int rc = ledger->grid.device.write(ledger->grid.device.context, h->address, block);
        if (rc != 0) {
                log_error("ledger: grid block %llu not written errno=%d",
                          (unsigned long long)h->address, -rc);
                return -1;
        }
        return 0;
}

void ledger_blocks_flush(struct ledger *ledger)
{
        if (!lsm_grid_flush_writes(&ledger->grid))
                ledger_fault(ledger, "installing a copied checkpoint");
}

int ledger_root_user(const uint8_t *root_block, void *user, uint32_t *user_size)
{
        static struct root_user bytes;
        uint32_t size = 0;
        if (!lsm_forest_root_user(root_block, &bytes, &size) ||
            size < offsetof(struct root_user, user) || bytes.size > LEDGER_CHECKPOINT_USER_MAX ||
            size != offsetof(struct root_user, user) + bytes.size)
                return -1;
        memcpy(user, bytes.user, bytes.size);
        *user_size = bytes.size;
        return 0;
}

int ledger_hold(struct ledger *ledger)
{
        return lsm_grid_hold(&ledger->grid) == 0 ? 0 : -1;
}

void ledger_unhold(struct ledger *ledger)
{
        lsm_grid_unhold(&ledger->grid);
}

void ledger_grid_reserve(struct ledger *ledger, uint64_t blocks)
{
        lsm_grid_reserve_below(&ledger->grid, blocks);
}
