/*
 * ledger_create.c: create_accounts, create_transfers and the expiry pulse.
 *
 * Every check follows the order of ledger-semantics.md sections 4 and 5 (result-codes.csv gives
 * the position of each code); the comments name the positions (N34, P39, ...).
 *
 * Linked chains: everything a chain creates is appended at the end of the arrays, so a failed
 * chain is rolled back by undoing its transfers from the last to the first (each undo is the
 * exact inverse of the apply, computed from the stored transfer) and truncating. Expiry index
 * entries are added only when the event that created them is committed (end of its chain), so a
 * rollback never has to look for them.
 */
#include "ledger/ledger_internal.h"

#include <string.h>

enum create_account_result {
        CA_OK = 0,
        CA_LINKED_EVENT_FAILED = 1,
        CA_LINKED_EVENT_CHAIN_OPEN = 2,
        CA_TIMESTAMP_MUST_BE_ZERO = 3,
        CA_RESERVED_FIELD = 4,
        CA_RESERVED_FLAG = 5,
        CA_ID_MUST_NOT_BE_ZERO = 6,
        CA_ID_MUST_NOT_BE_INT_MAX = 7,
        CA_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8,
        CA_DEBITS_PENDING_MUST_BE_ZERO = 9,
        CA_DEBITS_POSTED_MUST_BE_ZERO = 10,
        CA_CREDITS_PENDING_MUST_BE_ZERO = 11,
        CA_CREDITS_POSTED_MUST_BE_ZERO = 12,
        CA_LEDGER_MUST_NOT_BE_ZERO = 13,
        CA_CODE_MUST_NOT_BE_ZERO = 14,
        CA_EXISTS_WITH_DIFFERENT_FLAGS = 15,
        CA_EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16,
        CA_EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17,
        CA_EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18,
        CA_EXISTS_WITH_DIFFERENT_LEDGER = 19,
        CA_EXISTS_WITH_DIFFERENT_CODE = 20,
        CA_EXISTS = 21,
        CA_IMPORTED_EVENT_EXPECTED = 22,
        CA_IMPORTED_EVENT_NOT_EXPECTED = 23,
        CA_IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 24,
        CA_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 25,
        CA_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 26,
};

enum create_transfer_result {
        CT_OK = 0,
        CT_LINKED_EVENT_FAILED = 1,
        CT_LINKED_EVENT_CHAIN_OPEN = 2,
        CT_TIMESTAMP_MUST_BE_ZERO = 3,
        CT_RESERVED_FLAG = 4,
        CT_ID_MUST_NOT_BE_ZERO = 5,
        CT_ID_MUST_NOT_BE_INT_MAX = 6,
        CT_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 7,
        CT_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 8,
        CT_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 9,
        CT_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 10,
        CT_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 11,
        CT_ACCOUNTS_MUST_BE_DIFFERENT = 12,
        CT_PENDING_ID_MUST_BE_ZERO = 13,
        CT_PENDING_ID_MUST_NOT_BE_ZERO = 14,
        CT_PENDING_ID_MUST_NOT_BE_INT_MAX = 15,
        CT_PENDING_ID_MUST_BE_DIFFERENT = 16,
        CT_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 17,
        CT_LEDGER_MUST_NOT_BE_ZERO = 19,
        CT_CODE_MUST_NOT_BE_ZERO = 20,
        CT_DEBIT_ACCOUNT_NOT_FOUND = 21,
        CT_CREDIT_ACCOUNT_NOT_FOUND = 22,
        CT_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 23,
        CT_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 24,
        CT_PENDING_TRANSFER_NOT_FOUND = 25,
        CT_PENDING_TRANSFER_NOT_PENDING = 26,
        CT_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 27,
        CT_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 28,
        CT_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 29,
        CT_PENDING_TRANSFER_HAS_DIFFERENT_CODE = 30,
        CT_EXCEEDS_PENDING_TRANSFER_AMOUNT = 31,
        CT_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 32,
        CT_PENDING_TRANSFER_ALREADY_POSTED = 33,
        CT_PENDING_TRANSFER_ALREADY_VOIDED = 34,
        CT_PENDING_TRANSFER_EXPIRED = 35,
        CT_EXISTS_WITH_DIFFERENT_FLAGS = 36,
        CT_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 37,
        CT_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 38,
        CT_EXISTS_WITH_DIFFERENT_AMOUNT = 39,
        CT_EXISTS_WITH_DIFFERENT_PENDING_ID = 40,
        CT_EXISTS_WITH_DIFFERENT_USER_DATA_128 = 41,
        CT_EXISTS_WITH_DIFFERENT_USER_DATA_64 = 42,
        CT_EXISTS_WITH_DIFFERENT_USER_DATA_32 = 43,
        CT_EXISTS_WITH_DIFFERENT_TIMEOUT = 44,
        CT_EXISTS_WITH_DIFFERENT_CODE = 45,
        CT_EXISTS = 46,
        CT_OVERFLOWS_DEBITS_PENDING = 47,
        CT_OVERFLOWS_CREDITS_PENDING = 48,
        CT_OVERFLOWS_DEBITS_POSTED = 49,
        CT_OVERFLOWS_CREDITS_POSTED = 50,
        CT_OVERFLOWS_DEBITS = 51,
        CT_OVERFLOWS_CREDITS = 52,
        CT_OVERFLOWS_TIMEOUT = 53,
        CT_EXCEEDS_CREDITS = 54,
        CT_EXCEEDS_DEBITS = 55,
        CT_IMPORTED_EVENT_EXPECTED = 56,
        CT_IMPORTED_EVENT_NOT_EXPECTED = 57,
        CT_IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 58,
        CT_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 59,
        CT_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 60,
        CT_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT = 61,
        CT_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT = 62,
        CT_IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO = 63,
        CT_CLOSING_TRANSFER_MUST_BE_PENDING = 64,
        CT_DEBIT_ACCOUNT_ALREADY_CLOSED = 65,
        CT_CREDIT_ACCOUNT_ALREADY_CLOSED = 66,
        CT_EXISTS_WITH_DIFFERENT_LEDGER = 67,
        CT_ID_ALREADY_FAILED = 68,
};

static bool timestamp_valid(uint64_t timestamp)
{
        return timestamp >= 1 && timestamp <= LEDGER_MAX63;
}

static bool sum_overflows(u128 a, u128 b)
{
        return a + b < a;
}

static bool transfer_result_transient(uint32_t result)
{
        switch (result) {
        case CT_DEBIT_ACCOUNT_NOT_FOUND:
        case CT_CREDIT_ACCOUNT_NOT_FOUND:
        case CT_PENDING_TRANSFER_NOT_FOUND:
        case CT_EXCEEDS_CREDITS:
        case CT_EXCEEDS_DEBITS:
        case CT_DEBIT_ACCOUNT_ALREADY_CLOSED:
        case CT_CREDIT_ACCOUNT_ALREADY_CLOSED:
                return true;
        default:
                return false;
        }
}

static uint32_t transfer_create(struct ledger *ledger, const struct wire_transfer *t,
                                uint64_t timestamp);

/* ---------------------------------------------------------------------------------------- */
/* Per-account transfer lists. */

static void edge_push(struct ledger *ledger, uint32_t account, uint32_t transfer)
{
        struct account_index *index = &ledger->account_index[account];
        struct edge_chunk *tail = index->tail ? &ledger->chunks[index->tail - 1] : NULL;
        if (tail == NULL || tail->count == CHUNK_ITEMS) {
                tally_assert(ledger->chunk_count < ledger->chunks_max);
                uint32_t fresh = ledger->chunk_count++;
                struct edge_chunk *chunk = &ledger->chunks[fresh];
                chunk->prev = index->tail;
                chunk->next = 0;
                chunk->count = 0;
                if (tail) tail->next = fresh + 1;
                else index->head = fresh + 1;
                index->tail = fresh + 1;
                tail = chunk;
        }
        tally_assert(tail->count == 0 || tail->items[tail->count - 1] < transfer);
        tail->items[tail->count++] = transfer;
}

static void edge_pop(struct ledger *ledger, uint32_t account, uint32_t transfer)
{
        struct account_index *index = &ledger->account_index[account];
        tally_assert(index->tail != 0);
        uint32_t tail_index = index->tail - 1;
        struct edge_chunk *tail = &ledger->chunks[tail_index];
        tally_assert(tail->count > 0);
        tally_assert(tail->items[tail->count - 1] == transfer);
        tail->count--;
        if (tail->count > 0) return;
        /* Chunks are freed in the reverse order of their allocation. */
        tally_assert(tail_index == ledger->chunk_count - 1);
        index->tail = tail->prev;
        if (tail->prev) ledger->chunks[tail->prev - 1].next = 0;
        else index->head = 0;
        memset(tail, 0, sizeof(*tail));
        ledger->chunk_count--;
}

static void history_append(struct ledger *ledger, uint32_t transfer, uint32_t side,
                           const struct wire_account *account)
{
        tally_assert(ledger->history_count < ledger->history_max);
        struct history_record *record = &ledger->history[ledger->history_count++];
        record->transfer = transfer;
        record->side = side;
        record->reserved = 0;
        record->debits_pending = account->debits_pending;
        record->debits_posted = account->debits_posted;
        record->credits_pending = account->credits_pending;
        record->credits_posted = account->credits_posted;
}

/* ---------------------------------------------------------------------------------------- */
/* Expiry heap, ordered by (expires_at, timestamp). */

static bool expiry_less(const struct expiry_entry *a, const struct expiry_entry *b)
{
        if (a->expires_at != b->expires_at) return a->expires_at < b->expires_at;
        return a->timestamp < b->timestamp;
}

static void expiry_push(struct ledger *ledger, uint32_t transfer)
{
        const struct wire_transfer *p = &ledger->transfers[transfer];
        tally_assert(p->timeout > 0);
        tally_assert(ledger->expiry_count < ledger->transfers_max);
        struct expiry_entry entry = {
                .expires_at = p->timestamp + (uint64_t)p->timeout * LEDGER_NS_PER_S,
                .timestamp = p->timestamp,
                .transfer = transfer,
                .reserved = 0,
        };
        uint32_t i = ledger->expiry_count++;
        while (i > 0) {
                uint32_t parent = (i - 1) / 2;
                if (!expiry_less(&entry, &ledger->expiry[parent])) break;
                ledger->expiry[i] = ledger->expiry[parent];
                i = parent;
        }
        ledger->expiry[i] = entry;
}

static void expiry_pop(struct ledger *ledger)
{
        tally_assert(ledger->expiry_count > 0);
        uint32_t count = --ledger->expiry_count;
        struct expiry_entry last = ledger->expiry[count];
        memset(&ledger->expiry[count], 0, sizeof(last));
        if (count == 0) return;
        uint32_t i = 0;
        for (;;) {
                uint32_t child = 2 * i + 1;
                if (child >= count) break;
                if (child + 1 < count && expiry_less(&ledger->expiry[child + 1],
                                                     &ledger->expiry[child]))
                        child++;
                if (!expiry_less(&ledger->expiry[child], &last)) break;
                ledger->expiry[i] = ledger->expiry[child];
                i = child;
        }
        ledger->expiry[i] = last;
}

/* Entries of transfers that were posted or voided since are dropped when they reach the top. */
void ledger_expiry_drop_stale(struct ledger *ledger)
{
        while (ledger->expiry_count > 0 &&
               ledger->transfer_status[ledger->expiry[0].transfer] != TRANSFER_STATUS_PENDING) {
                expiry_pop(ledger);
        }
}

/* ---------------------------------------------------------------------------------------- */
/* Commit and rollback of chains. */

/* Everything created so far is final: index the new pending transfers' expiries. */
static void chain_commit(struct ledger *ledger)
{
        for (uint32_t i = ledger->chain_transfer_count; i < ledger->transfer_count; i++) {
                const struct wire_transfer *t = &ledger->transfers[i];
                if (t->timeout > 0 && ledger->transfer_status[i] == TRANSFER_STATUS_PENDING) {
                        expiry_push(ledger, i);
                }
        }
        ledger->chain_transfer_count = ledger->transfer_count;
        ledger->chain_history_count = ledger->history_count;
        ledger->chain_account_count = ledger->account_count;
}

static void transfer_undo(struct ledger *ledger, uint32_t position)
{
        const struct wire_transfer *t = &ledger->transfers[position];
        uint32_t dr_ref = account_find(ledger, t->debit_account_id);
        uint32_t cr_ref = account_find(ledger, t->credit_account_id);
        tally_assert(dr_ref != 0 && cr_ref != 0);
        struct wire_account *dr = &ledger->accounts[dr_ref - 1];
        struct wire_account *cr = &ledger->accounts[cr_ref - 1];

        edge_pop(ledger, cr_ref - 1, position);
        edge_pop(ledger, dr_ref - 1, position);

        if (t->flags & (TRANSFER_FLAG_POST_PENDING | TRANSFER_FLAG_VOID_PENDING)) {
                uint32_t p_ref = table_find(ledger, &ledger->transfers_table, t->pending_id);
                tally_assert(p_ref != 0 && !(p_ref & TABLE_REF_FAILED));
                const struct wire_transfer *p = &ledger->transfers[p_ref - 1];
                tally_assert(ledger->transfer_status[p_ref - 1] != TRANSFER_STATUS_PENDING);
                ledger->transfer_status[p_ref - 1] = TRANSFER_STATUS_PENDING;
                ledger->pending_live++;
                dr->debits_pending += p->amount;
                cr->credits_pending += p->amount;
                if (t->flags & TRANSFER_FLAG_POST_PENDING) {
                        dr->debits_posted -= t->amount;
                        cr->credits_posted -= t->amount;
                } else {
                        if (p->flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags |= ACCOUNT_FLAG_CLOSED;
                        if (p->flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags |= ACCOUNT_FLAG_CLOSED;
                }
        } else if (t->flags & TRANSFER_FLAG_PENDING) {
                tally_assert(ledger->transfer_status[position] == TRANSFER_STATUS_PENDING);
                tally_assert(ledger->pending_live > 0);
                ledger->pending_live--;
                dr->debits_pending -= t->amount;
                cr->credits_pending -= t->amount;
                if (t->flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags &= ~ACCOUNT_FLAG_CLOSED;
                if (t->flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags &= ~ACCOUNT_FLAG_CLOSED;
        } else {
                dr->debits_posted -= t->amount;
                cr->credits_posted -= t->amount;
        }
        ledger->transfer_status[position] = TRANSFER_STATUS_NONE;
        table_remove(ledger, &ledger->transfers_table, t->id);
        memset(&ledger->transfers[position], 0, sizeof(struct wire_transfer));
}

static void chain_rollback(struct ledger *ledger)
{
        while (ledger->transfer_count > ledger->chain_transfer_count) {
                uint32_t position = ledger->transfer_count - 1;
                transfer_undo(ledger, position);
                ledger->transfer_count--;
        }
        while (ledger->history_count > ledger->chain_history_count) {
                ledger->history_count--;
                memset(&ledger->history[ledger->history_count], 0, sizeof(struct history_record));
        }
        while (ledger->account_count > ledger->chain_account_count) {
                uint32_t position = ledger->account_count - 1;
                table_remove(ledger, &ledger->accounts_table, ledger->accounts[position].id);
                memset(&ledger->accounts[position], 0, sizeof(struct wire_account));
                ledger->account_count--;
        }
}

/* ---------------------------------------------------------------------------------------- */
/* create_accounts */

static uint32_t account_exists(const struct wire_account *a, const struct wire_account *e)
{
        if (a->flags != e->flags) return CA_EXISTS_WITH_DIFFERENT_FLAGS;
        if (a->user_data_128 != e->user_data_128) return CA_EXISTS_WITH_DIFFERENT_USER_DATA_128;
        if (a->user_data_64 != e->user_data_64) return CA_EXISTS_WITH_DIFFERENT_USER_DATA_64;
        if (a->user_data_32 != e->user_data_32) return CA_EXISTS_WITH_DIFFERENT_USER_DATA_32;
        if (a->ledger != e->ledger) return CA_EXISTS_WITH_DIFFERENT_LEDGER;
        if (a->code != e->code) return CA_EXISTS_WITH_DIFFERENT_CODE;
        return CA_EXISTS;
}

/* Positions 8..26 of section 4.1; `timestamp` is the event's (cluster or imported). */
static uint32_t account_create(struct ledger *ledger, const struct wire_account *a,
                               uint64_t timestamp)
{
        if (a->reserved != 0) return CA_RESERVED_FIELD;
        if (a->flags & ACCOUNT_FLAGS_PADDING) return CA_RESERVED_FLAG;
        if (a->id == 0) return CA_ID_MUST_NOT_BE_ZERO;
        if (a->id == U128_MAX) return CA_ID_MUST_NOT_BE_INT_MAX;

        uint32_t ref = account_find(ledger, a->id);
        if (ref != 0) return account_exists(a, &ledger->accounts[ref - 1]);

        if ((a->flags & ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS) &&
            (a->flags & ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS))
                return CA_FLAGS_ARE_MUTUALLY_EXCLUSIVE;
        if (a->debits_pending != 0) return CA_DEBITS_PENDING_MUST_BE_ZERO;
        if (a->debits_posted != 0) return CA_DEBITS_POSTED_MUST_BE_ZERO;
        if (a->credits_pending != 0) return CA_CREDITS_PENDING_MUST_BE_ZERO;
        if (a->credits_posted != 0) return CA_CREDITS_POSTED_MUST_BE_ZERO;
        if (a->ledger == 0) return CA_LEDGER_MUST_NOT_BE_ZERO;
        if (a->code == 0) return CA_CODE_MUST_NOT_BE_ZERO;

        if (a->flags & ACCOUNT_FLAG_IMPORTED) {
                if (ledger->account_count > 0 &&
                    timestamp <= ledger->accounts[ledger->account_count - 1].timestamp)
                        return CA_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS;
                if (ledger_transfer_timestamp_exists(ledger, timestamp))
                        return CA_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS;
        }

        tally_assert(ledger->account_count < ledger->accounts_max);
        tally_assert(ledger->account_count == 0 ||
                     timestamp > ledger->accounts[ledger->account_count - 1].timestamp);
        uint32_t position = ledger->account_count++;
        struct wire_account *stored = &ledger->accounts[position];
        *stored = *a;
        stored->debits_pending = 0;
        stored->debits_posted = 0;
        stored->credits_pending = 0;
        stored->credits_posted = 0;
        stored->reserved = 0;
        stored->timestamp = timestamp;
        ledger->account_index[position] = (struct account_index){0, 0};
        table_insert(&ledger->accounts_table, a->id, position + 1);
        return CA_OK;
}

/* Lines 1..7 of section 4.1 (and 5.1), shared by both create operations. */
static uint32_t batch_prefix_check(bool linked, bool last, bool chain_broken, bool imported,
                                   bool batch_imported, uint64_t event_timestamp,
                                   uint64_t batch_timestamp, uint32_t event_count,
                                   uint32_t index, uint32_t expected_code,
                                   uint32_t not_expected_code, uint64_t *timestamp)
{
        if (linked && last) return CA_LINKED_EVENT_CHAIN_OPEN;
        if (chain_broken) return CA_LINKED_EVENT_FAILED;
        if (batch_imported != imported) return imported ? not_expected_code : expected_code;
        if (imported) {
                /* Out of range / must not advance: the same positions in both operations. */
                if (!timestamp_valid(event_timestamp)) return expected_code + 2;
                if (event_timestamp >= batch_timestamp) return expected_code + 3;
                *timestamp = event_timestamp;
                return 0;
        }
        if (event_timestamp != 0) return CA_TIMESTAMP_MUST_BE_ZERO;
        *timestamp = batch_timestamp - event_count + index + 1;
        return 0;
}

/*
 * Runs one batch. `results` has room for `count` records; `*result_count` gets how many were
 * written (failures only, in index order).
 */
static void create_batch(struct ledger *ledger, bool transfers, uint64_t timestamp,
                         const uint8_t *events, uint32_t count,
                         struct wire_create_result *results, uint32_t *result_count)
{
        *result_count = 0;
        if (count == 0) return;
        tally_assert(!ledger->chain_open);
        tally_assert(ledger->chain_transfer_count == ledger->transfer_count);
        tally_assert(ledger->chain_account_count == ledger->account_count);

        uint16_t imported_flag = transfers ? TRANSFER_FLAG_IMPORTED : ACCOUNT_FLAG_IMPORTED;
        uint32_t expected_code = transfers ? CT_IMPORTED_EVENT_EXPECTED : CA_IMPORTED_EVENT_EXPECTED;
        uint32_t not_expected_code =
                transfers ? CT_IMPORTED_EVENT_NOT_EXPECTED : CA_IMPORTED_EVENT_NOT_EXPECTED;

        /* flags sit at offset 118 and timestamp at 120 in both Account and Transfer. */
        uint16_t first_flags;
        memcpy(&first_flags, events + 118, sizeof(first_flags));
        bool batch_imported = (first_flags & imported_flag) != 0;

        bool chain_broken = false;
        uint32_t chain_start = 0;
        uint32_t written = 0;
        for (uint32_t i = 0; i < count; i++) {
                union {
                        struct wire_account account;
                        struct wire_transfer transfer;
                } event;
                memcpy(&event, events + (size_t)i * 128, 128);
                uint16_t flags = transfers ? event.transfer.flags : event.account.flags;
                uint64_t event_timestamp =
                        transfers ? event.transfer.timestamp : event.account.timestamp;
                bool linked = (flags & 1u) != 0; /* both LINKED flags are bit 0 */
                bool imported = (flags & imported_flag) != 0;

                if (linked && !ledger->chain_open) {
                        ledger->chain_open = true;
                        chain_start = i;
                }

                uint64_t timestamp_event = 0;
                uint32_t result = batch_prefix_check(
                        linked, i == count - 1, chain_broken, imported, batch_imported,
                        event_timestamp, timestamp, count, i, expected_code, not_expected_code,
                        &timestamp_event);
                if (result == 0) {
                        tally_assert(timestamp_valid(timestamp_event));
                        if (transfers) {
                                result = transfer_create(ledger, &event.transfer,
                                                         timestamp_event);
                        } else {
                                result = account_create(ledger, &event.account, timestamp_event);
                        }
                }

                if (result != 0) {
                        if (ledger->chain_open && !chain_broken) {
                                chain_broken = true;
                                chain_rollback(ledger);
                                for (uint32_t k = chain_start; k < i; k++) {
                                        results[written++] = (struct wire_create_result){
                                                .index = k, .result = CA_LINKED_EVENT_FAILED};
                                }
                        }
                        results[written++] =
                                (struct wire_create_result){.index = i, .result = result};
                        if (transfers && transfer_result_transient(result)) {
                                tally_assert(ledger->transfer_count + ledger->failed_count <
                                             ledger->transfers_max);
                                uint32_t f = ledger->failed_count++;
                                ledger->failed_ids[f] = event.transfer.id;
                                table_insert(&ledger->transfers_table, event.transfer.id,
                                             TABLE_REF_FAILED | (f + 1));
                        }
                }
                if (ledger->chain_open && (!linked || result == CA_LINKED_EVENT_CHAIN_OPEN)) {
                        ledger->chain_open = false;
                        chain_broken = false;
                }
                if (!ledger->chain_open) chain_commit(ledger);
        }
        tally_assert(!ledger->chain_open);
        tally_assert(written <= count);
        *result_count = written;
}

void ledger_create_accounts_batch(struct ledger *ledger, uint64_t timestamp,
                                  const uint8_t *events, uint32_t count,
                                  struct wire_create_result *results, uint32_t *result_count)
{
        create_batch(ledger, false, timestamp, events, count, results, result_count);
}

void ledger_create_transfers_batch(struct ledger *ledger, uint64_t timestamp,
                                   const uint8_t *events, uint32_t count,
                                   struct wire_create_result *results, uint32_t *result_count)
{
        create_batch(ledger, true, timestamp, events, count, results, result_count);
}

/* ---------------------------------------------------------------------------------------- */
/* create_transfers */

static uint32_t transfer_exists_post_void(const struct wire_transfer *t,
                                          const struct wire_transfer *e,
                                          const struct wire_transfer *p)
{
        if (t->debit_account_id != 0 && t->debit_account_id != e->debit_account_id)
                return CT_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID;
        if (t->credit_account_id != 0 && t->credit_account_id != e->credit_account_id)
                return CT_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID;
        if (t->flags & TRANSFER_FLAG_VOID_PENDING) {
                if (t->amount == 0 ? e->amount != p->amount : t->amount != e->amount)
                        return CT_EXISTS_WITH_DIFFERENT_AMOUNT;
        }
        if (t->flags & TRANSFER_FLAG_POST_PENDING) {
                if (t->amount == U128_MAX ? e->amount != p->amount : t->amount != e->amount)
                        return CT_EXISTS_WITH_DIFFERENT_AMOUNT;
        }
        if (t->user_data_128 == 0 ? e->user_data_128 != p->user_data_128
                                  : t->user_data_128 != e->user_data_128)
                return CT_EXISTS_WITH_DIFFERENT_USER_DATA_128;
        if (t->user_data_64 == 0 ? e->user_data_64 != p->user_data_64
                                 : t->user_data_64 != e->user_data_64)
                return CT_EXISTS_WITH_DIFFERENT_USER_DATA_64;
        if (t->user_data_32 == 0 ? e->user_data_32 != p->user_data_32
                                 : t->user_data_32 != e->user_data_32)
                return CT_EXISTS_WITH_DIFFERENT_USER_DATA_32;
        if (t->ledger != 0 && t->ledger != e->ledger) return CT_EXISTS_WITH_DIFFERENT_LEDGER;
        if (t->code != 0 && t->code != e->code) return CT_EXISTS_WITH_DIFFERENT_CODE;
        return CT_EXISTS;
}

static uint32_t transfer_exists(const struct ledger *ledger, const struct wire_transfer *t,
                                const struct wire_transfer *e)
{
        if (t->flags != e->flags) return CT_EXISTS_WITH_DIFFERENT_FLAGS;
        if (t->pending_id != e->pending_id) return CT_EXISTS_WITH_DIFFERENT_PENDING_ID;
        if (t->timeout != e->timeout) return CT_EXISTS_WITH_DIFFERENT_TIMEOUT;

        if (t->flags & (TRANSFER_FLAG_POST_PENDING | TRANSFER_FLAG_VOID_PENDING)) {
                uint32_t p_ref = table_find(ledger, &ledger->transfers_table, t->pending_id);
                tally_assert(p_ref != 0 && !(p_ref & TABLE_REF_FAILED));
                return transfer_exists_post_void(t, e, &ledger->transfers[p_ref - 1]);
        }
        if (t->debit_account_id != e->debit_account_id)
                return CT_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID;
        if (t->credit_account_id != e->credit_account_id)
                return CT_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID;
        if (t->flags & (TRANSFER_FLAG_BALANCING_DEBIT | TRANSFER_FLAG_BALANCING_CREDIT)) {
                /* The stored amount is what moved; any request amount at least that is fine. */
                if (t->amount < e->amount) return CT_EXISTS_WITH_DIFFERENT_AMOUNT;
        } else {
                if (t->amount != e->amount) return CT_EXISTS_WITH_DIFFERENT_AMOUNT;
        }
        if (t->user_data_128 != e->user_data_128) return CT_EXISTS_WITH_DIFFERENT_USER_DATA_128;
        if (t->user_data_64 != e->user_data_64) return CT_EXISTS_WITH_DIFFERENT_USER_DATA_64;
        if (t->user_data_32 != e->user_data_32) return CT_EXISTS_WITH_DIFFERENT_USER_DATA_32;
        if (t->ledger != e->ledger) return CT_EXISTS_WITH_DIFFERENT_LEDGER;
        if (t->code != e->code) return CT_EXISTS_WITH_DIFFERENT_CODE;
        return CT_EXISTS;
}

/* Imported events must be newer than every transfer and share no account's timestamp. */
static bool imported_transfer_regresses(const struct ledger *ledger, uint64_t timestamp)
{
        if (ledger->transfer_count > 0 &&
            timestamp <= ledger->transfers[ledger->transfer_count - 1].timestamp)
                return true;
        return ledger_account_timestamp_exists(ledger, timestamp);
}

/* Appends a transfer and indexes it under both accounts; returns its position. */
static uint32_t transfer_store(struct ledger *ledger, const struct wire_transfer *stored,
                               uint32_t dr_position, uint32_t cr_position, uint8_t status)
{
        tally_assert(ledger->transfer_count + ledger->failed_count < ledger->transfers_max);
        tally_assert(ledger->transfer_count == 0 ||
                     stored->timestamp > ledger->transfers[ledger->transfer_count - 1].timestamp);
        uint32_t position = ledger->transfer_count++;
        ledger->transfers[position] = *stored;
        ledger->transfer_status[position] = status;
        table_insert(&ledger->transfers_table, stored->id, position + 1);
        edge_push(ledger, dr_position, position);
        edge_push(ledger, cr_position, position);

        const struct wire_account *dr = &ledger->accounts[dr_position];
        const struct wire_account *cr = &ledger->accounts[cr_position];
        if (dr->flags & ACCOUNT_FLAG_HISTORY) history_append(ledger, position, 0, dr);
        if (cr->flags & ACCOUNT_FLAG_HISTORY) history_append(ledger, position, 1, cr);
        return position;
}

/* Positions P24..P42 (section 5.8). */
static uint32_t transfer_post_or_void(struct ledger *ledger, const struct wire_transfer *t,
                                      uint64_t timestamp)
{
        bool post = (t->flags & TRANSFER_FLAG_POST_PENDING) != 0;
        bool is_void = (t->flags & TRANSFER_FLAG_VOID_PENDING) != 0;
        if (post && is_void) return CT_FLAGS_ARE_MUTUALLY_EXCLUSIVE;
        if (t->flags & (TRANSFER_FLAG_PENDING | TRANSFER_FLAG_BALANCING_DEBIT |
                        TRANSFER_FLAG_BALANCING_CREDIT | TRANSFER_FLAG_CLOSING_DEBIT |
                        TRANSFER_FLAG_CLOSING_CREDIT))
                return CT_FLAGS_ARE_MUTUALLY_EXCLUSIVE;
        if (t->pending_id == 0) return CT_PENDING_ID_MUST_NOT_BE_ZERO;
        if (t->pending_id == U128_MAX) return CT_PENDING_ID_MUST_NOT_BE_INT_MAX;
        if (t->pending_id == t->id) return CT_PENDING_ID_MUST_BE_DIFFERENT;
        if (t->timeout != 0) return CT_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER;

        uint32_t p_ref = table_find(ledger, &ledger->transfers_table, t->pending_id);
        if (p_ref == 0 || (p_ref & TABLE_REF_FAILED)) return CT_PENDING_TRANSFER_NOT_FOUND;
        uint32_t p_position = p_ref - 1;
        const struct wire_transfer *p = &ledger->transfers[p_position];
        /*
         * TigerBeetle 0.16.68 asserts p.timestamp < timestamp here, which an imported post/void
         * older than p violates (a crash, ledger-semantics.md 11.2). We carry on with the checks
         * instead, which reach P40 (imported_event_timestamp_must_not_regress) unless an earlier
         * check applies.
         */
        if (!(p->flags & TRANSFER_FLAG_PENDING)) return CT_PENDING_TRANSFER_NOT_PENDING;
        if (t->debit_account_id != 0 && t->debit_account_id != p->debit_account_id)
                return CT_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID;
        if (t->credit_account_id != 0 && t->credit_account_id != p->credit_account_id)
                return CT_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID;
        if (t->ledger != 0 && t->ledger != p->ledger)
                return CT_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER;
        if (t->code != 0 && t->code != p->code) return CT_PENDING_TRANSFER_HAS_DIFFERENT_CODE;

        u128 amount;
        if (is_void) amount = t->amount == 0 ? p->amount : t->amount;
        else amount = t->amount == U128_MAX ? p->amount : t->amount;
        if (amount > p->amount) return CT_EXCEEDS_PENDING_TRANSFER_AMOUNT;
        if (is_void && amount < p->amount) return CT_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT;

        switch (ledger->transfer_status[p_position]) {
        case TRANSFER_STATUS_PENDING:
                break;
        case TRANSFER_STATUS_POSTED:
                return CT_PENDING_TRANSFER_ALREADY_POSTED;
        case TRANSFER_STATUS_VOIDED:
                return CT_PENDING_TRANSFER_ALREADY_VOIDED;
        case TRANSFER_STATUS_EXPIRED:
                return CT_PENDING_TRANSFER_EXPIRED;
        default:
                tally_assert(false);
        }
        if (p->timeout > 0 &&
            p->timestamp + (uint64_t)p->timeout * LEDGER_NS_PER_S <= timestamp)
                return CT_PENDING_TRANSFER_EXPIRED;

        if ((t->flags & TRANSFER_FLAG_IMPORTED) && imported_transfer_regresses(ledger, timestamp))
                return CT_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS;

        uint32_t dr_ref = account_find(ledger, p->debit_account_id);
        uint32_t cr_ref = account_find(ledger, p->credit_account_id);
        tally_assert(dr_ref != 0 && cr_ref != 0);
        struct wire_account *dr = &ledger->accounts[dr_ref - 1];
        struct wire_account *cr = &ledger->accounts[cr_ref - 1];
        if (post && (dr->flags & ACCOUNT_FLAG_CLOSED)) return CT_DEBIT_ACCOUNT_ALREADY_CLOSED;
        if (post && (cr->flags & ACCOUNT_FLAG_CLOSED)) return CT_CREDIT_ACCOUNT_ALREADY_CLOSED;

        /* Apply: the pending amount is released in full, the posted amount may be less. */
        tally_assert(dr->debits_pending >= p->amount && cr->credits_pending >= p->amount);
        dr->debits_pending -= p->amount;
        cr->credits_pending -= p->amount;
        if (post) {
                dr->debits_posted += amount;
                cr->credits_posted += amount;
        } else {
                if (p->flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags &= ~ACCOUNT_FLAG_CLOSED;
                if (p->flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags &= ~ACCOUNT_FLAG_CLOSED;
        }
        ledger->transfer_status[p_position] =
                post ? TRANSFER_STATUS_POSTED : TRANSFER_STATUS_VOIDED;
        tally_assert(ledger->pending_live > 0);
        ledger->pending_live--;

        struct wire_transfer stored = {
                .id = t->id,
                .debit_account_id = p->debit_account_id,
                .credit_account_id = p->credit_account_id,
                .amount = amount,
                .pending_id = t->pending_id,
                .user_data_128 = t->user_data_128 ? t->user_data_128 : p->user_data_128,
                .user_data_64 = t->user_data_64 ? t->user_data_64 : p->user_data_64,
                .user_data_32 = t->user_data_32 ? t->user_data_32 : p->user_data_32,
                .timeout = 0,
                .ledger = p->ledger,
                .code = p->code,
                .flags = t->flags,
                .timestamp = timestamp,
        };
        transfer_store(ledger, &stored, dr_ref - 1, cr_ref - 1, TRANSFER_STATUS_NONE);
        return CT_OK;
}

/* Positions N24..N52 (section 5.4). */
static uint32_t transfer_normal(struct ledger *ledger, const struct wire_transfer *t,
                                uint64_t timestamp)
{
        if (t->debit_account_id == 0) return CT_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO;
        if (t->debit_account_id == U128_MAX) return CT_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX;
        if (t->credit_account_id == 0) return CT_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO;
        if (t->credit_account_id == U128_MAX) return CT_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX;
        if (t->credit_account_id == t->debit_account_id) return CT_ACCOUNTS_MUST_BE_DIFFERENT;
        if (t->pending_id != 0) return CT_PENDING_ID_MUST_BE_ZERO;
        bool pending = (t->flags & TRANSFER_FLAG_PENDING) != 0;
        if (!pending) {
                if (t->timeout != 0) return CT_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER;
                if (t->flags & (TRANSFER_FLAG_CLOSING_DEBIT | TRANSFER_FLAG_CLOSING_CREDIT))
                        return CT_CLOSING_TRANSFER_MUST_BE_PENDING;
        }
        if (t->ledger == 0) return CT_LEDGER_MUST_NOT_BE_ZERO;
        if (t->code == 0) return CT_CODE_MUST_NOT_BE_ZERO;

        uint32_t dr_ref = account_find(ledger, t->debit_account_id);
        if (dr_ref == 0) return CT_DEBIT_ACCOUNT_NOT_FOUND;
        uint32_t cr_ref = account_find(ledger, t->credit_account_id);
        if (cr_ref == 0) return CT_CREDIT_ACCOUNT_NOT_FOUND;
        struct wire_account *dr = &ledger->accounts[dr_ref - 1];
        struct wire_account *cr = &ledger->accounts[cr_ref - 1];
        if (dr->ledger != cr->ledger) return CT_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER;
        if (t->ledger != dr->ledger) return CT_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS;

        if (t->flags & TRANSFER_FLAG_IMPORTED) {
                if (imported_transfer_regresses(ledger, timestamp))
                        return CT_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS;
                if (timestamp <= dr->timestamp)
                        return CT_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT;
                if (timestamp <= cr->timestamp)
                        return CT_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT;
                if (t->timeout != 0) return CT_IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO;
        }
        if (dr->flags & ACCOUNT_FLAG_CLOSED) return CT_DEBIT_ACCOUNT_ALREADY_CLOSED;
        if (cr->flags & ACCOUNT_FLAG_CLOSED) return CT_CREDIT_ACCOUNT_ALREADY_CLOSED;

        u128 amount = t->amount;
        if (t->flags & TRANSFER_FLAG_BALANCING_DEBIT) {
                u128 balance = dr->debits_posted + dr->debits_pending;
                u128 room = dr->credits_posted > balance ? dr->credits_posted - balance : 0;
                amount = MIN(amount, room);
        }
        if (t->flags & TRANSFER_FLAG_BALANCING_CREDIT) {
                u128 balance = cr->credits_posted + cr->credits_pending;
                u128 room = cr->debits_posted > balance ? cr->debits_posted - balance : 0;
                amount = MIN(amount, room);
        }

        if (pending) {
                if (sum_overflows(amount, dr->debits_pending)) return CT_OVERFLOWS_DEBITS_PENDING;
                if (sum_overflows(amount, cr->credits_pending)) return CT_OVERFLOWS_CREDITS_PENDING;
        }
        if (sum_overflows(amount, dr->debits_posted)) return CT_OVERFLOWS_DEBITS_POSTED;
        if (sum_overflows(amount, cr->credits_posted)) return CT_OVERFLOWS_CREDITS_POSTED;
        if (sum_overflows(amount, dr->debits_pending + dr->debits_posted))
                return CT_OVERFLOWS_DEBITS;
        if (sum_overflows(amount, cr->credits_pending + cr->credits_posted))
                return CT_OVERFLOWS_CREDITS;
        /* timestamp <= 2^63 - 1 and timeout * 10^9 < 2^62, so the sum fits a u64. */
        if (timestamp + (uint64_t)t->timeout * LEDGER_NS_PER_S > LEDGER_MAX63)
                return CT_OVERFLOWS_TIMEOUT;
        if ((dr->flags & ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS) &&
            dr->debits_pending + dr->debits_posted + amount > dr->credits_posted)
                return CT_EXCEEDS_CREDITS;
        if ((cr->flags & ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS) &&
            cr->credits_pending + cr->credits_posted + amount > cr->debits_posted)
                return CT_EXCEEDS_DEBITS;

        if (pending) {
                dr->debits_pending += amount;
                cr->credits_pending += amount;
                ledger->pending_live++;
                if (t->flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags |= ACCOUNT_FLAG_CLOSED;
                if (t->flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags |= ACCOUNT_FLAG_CLOSED;
        } else {
                dr->debits_posted += amount;
                cr->credits_posted += amount;
        }
        struct wire_transfer stored = *t;
        stored.amount = amount;
        stored.timestamp = timestamp;
        transfer_store(ledger, &stored, dr_ref - 1, cr_ref - 1,
                       pending ? TRANSFER_STATUS_PENDING : TRANSFER_STATUS_NONE);
        return CT_OK;
}

/* Positions 8..23 (section 5.1), then the post/void or the normal path. */
static uint32_t transfer_create(struct ledger *ledger, const struct wire_transfer *t,
                                uint64_t timestamp)
{
        if (t->flags & TRANSFER_FLAGS_PADDING) return CT_RESERVED_FLAG;
        if (t->id == 0) return CT_ID_MUST_NOT_BE_ZERO;
        if (t->id == U128_MAX) return CT_ID_MUST_NOT_BE_INT_MAX;

        uint32_t ref = table_find(ledger, &ledger->transfers_table, t->id);
        if (ref != 0) {
                if (ref & TABLE_REF_FAILED) return CT_ID_ALREADY_FAILED;
                return transfer_exists(ledger, t, &ledger->transfers[ref - 1]);
        }
        if (t->flags & (TRANSFER_FLAG_POST_PENDING | TRANSFER_FLAG_VOID_PENDING))
                return transfer_post_or_void(ledger, t, timestamp);
        return transfer_normal(ledger, t, timestamp);
}

/* ---------------------------------------------------------------------------------------- */
/* pulse (section 5.11) */

void ledger_pulse(struct ledger *ledger, uint64_t timestamp)
{
        ledger_expiry_drop_stale(ledger);
        uint32_t expired = 0;
        while (expired < LEDGER_PULSE_TIMESTAMP_DELTA && ledger->expiry_count > 0) {
                struct expiry_entry top = ledger->expiry[0];
                if (ledger->transfer_status[top.transfer] != TRANSFER_STATUS_PENDING) {
                        expiry_pop(ledger);
                        continue;
                }
                if (top.expires_at > timestamp) break;
                expiry_pop(ledger);
                expired++;

                const struct wire_transfer *p = &ledger->transfers[top.transfer];
                tally_assert(p->timestamp == top.timestamp);
                uint32_t dr_ref = account_find(ledger, p->debit_account_id);
                uint32_t cr_ref = account_find(ledger, p->credit_account_id);
                tally_assert(dr_ref != 0 && cr_ref != 0);
                struct wire_account *dr = &ledger->accounts[dr_ref - 1];
                struct wire_account *cr = &ledger->accounts[cr_ref - 1];
                tally_assert(dr->debits_pending >= p->amount);
                tally_assert(cr->credits_pending >= p->amount);
                dr->debits_pending -= p->amount;
                cr->credits_pending -= p->amount;
                if (p->flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags &= ~ACCOUNT_FLAG_CLOSED;
                if (p->flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags &= ~ACCOUNT_FLAG_CLOSED;
                ledger->transfer_status[top.transfer] = TRANSFER_STATUS_EXPIRED;
                tally_assert(ledger->pending_live > 0);
                ledger->pending_live--;
        }
        ledger_expiry_drop_stale(ledger);
}
