/*
 * ledger_create.c: create_accounts, create_transfers and the expiry pulse.
 *
 * Every check follows the order of ledger-semantics.md sections 4 and 5 (result-codes.csv gives
 * the position of each code); the comments name the positions (N34, P39, ...).
 *
 * Objects are reached through the working set (ledger_state.c): ws_account / ws_transfer load
 * an object once per operation, and every change goes through ws_touch first, so a linked chain
 * that fails is rolled back from the working set's undo log. Expiry entries are added only when
 * the event that created them is committed (end of its chain), so a rollback never has to look
 * for them.
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
                                uint64_t timestamp, uint32_t event);

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

        struct ws_entry *entry = ws_account(ledger, a->id);
        if (entry->state == WS_PRESENT) return account_exists(a, &entry->object.account);

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
                if (timestamp <= ledger->counters.account_timestamp_last)
                        return CA_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS;
                if (ledger_transfer_timestamp_exists(ledger, timestamp))
                        return CA_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS;
        }

        struct wire_account stored = *a;
        stored.debits_pending = 0;
        stored.debits_posted = 0;
        stored.credits_pending = 0;
        stored.credits_posted = 0;
        stored.reserved = 0;
        stored.timestamp = timestamp;
        ws_account_create(ledger, entry, &stored);
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
 * The accounts of a transfer a few events ahead (ws_account_hint): a batch names a few thousand
 * accounts, too many for the CPU's caches to keep between batches, each looked up once in the
 * working set and the object cache. (Naming the transfer's own id the same way, with its id
 * map's filters, made the loop slower: 327k against 356k/s at 10 M.)
 */
#define HINT_FAR 8u
#define HINT_NEAR 3u

static void accounts_hint(struct ledger *ledger, const uint8_t *event, bool near)
{
        u128 debit, credit;
        memcpy(&debit, event + offsetof(struct wire_transfer, debit_account_id), sizeof(debit));
        memcpy(&credit, event + offsetof(struct wire_transfer, credit_account_id), sizeof(credit));
        ws_account_hint(ledger, debit, near);
        ws_account_hint(ledger, credit, near);
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
        if (transfers)
                ws_transfers_hint(ledger, events, count);
        for (uint32_t i = 0; i < count; i++) {
                if (transfers && i + HINT_FAR < count)
                        accounts_hint(ledger, events + (size_t)(i + HINT_FAR) * 128, false);
                if (transfers && i + HINT_NEAR < count)
                        accounts_hint(ledger, events + (size_t)(i + HINT_NEAR) * 128, true);
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
                        ws_chain_begin(ledger);
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
                                                         timestamp_event, i);
                        } else {
                                result = account_create(ledger, &event.account, timestamp_event);
                        }
                }

                if (result != 0) {
                        if (ledger->chain_open && !chain_broken) {
                                chain_broken = true;
                                ws_chain_rollback(ledger);
                                for (uint32_t k = chain_start; k < i; k++) {
                                        results[written++] = (struct wire_create_result){
                                                .index = k, .result = CA_LINKED_EVENT_FAILED};
                                }
                        }
                        results[written++] =
                                (struct wire_create_result){.index = i, .result = result};
                        if (transfers && transfer_result_transient(result)) {
                                /* The id is burned: a retry gets id_already_failed. */
                                struct ws_entry *entry = ws_transfer(ledger, event.transfer.id);
                                ws_failed(ledger, entry);
                        }
                }
                if (ledger->chain_open && (!linked || result == CA_LINKED_EVENT_CHAIN_OPEN)) {
                        ledger->chain_open = false;
                        chain_broken = false;
                }
                if (!ledger->chain_open) ws_chain_commit(ledger);
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

static uint32_t transfer_exists(struct ledger *ledger, const struct wire_transfer *t,
                                const struct wire_transfer *e)
{
        if (t->flags != e->flags) return CT_EXISTS_WITH_DIFFERENT_FLAGS;
        if (t->pending_id != e->pending_id) return CT_EXISTS_WITH_DIFFERENT_PENDING_ID;
        if (t->timeout != e->timeout) return CT_EXISTS_WITH_DIFFERENT_TIMEOUT;

        if (t->flags & (TRANSFER_FLAG_POST_PENDING | TRANSFER_FLAG_VOID_PENDING)) {
                const struct ws_entry *p = ws_transfer(ledger, t->pending_id);
                tally_assert(p->state == WS_PRESENT);
                return transfer_exists_post_void(t, e, &p->object.transfer);
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
static bool imported_transfer_regresses(struct ledger *ledger, uint64_t timestamp)
{
        if (timestamp <= ledger->counters.transfer_timestamp_last) return true;
        return ledger_account_timestamp_exists(ledger, timestamp);
}

/* Stores a new transfer and the balances it left on accounts with flags.history. */
static void transfer_store(struct ledger *ledger, struct ws_entry *entry,
                           const struct wire_transfer *stored, const struct wire_account *dr,
                           const struct wire_account *cr, uint8_t status)
{
        ws_transfer_create(ledger, entry, stored, status);
        if (dr->flags & ACCOUNT_FLAG_HISTORY) ws_history_append(ledger, dr, stored->timestamp);
        if (cr->flags & ACCOUNT_FLAG_HISTORY) ws_history_append(ledger, cr, stored->timestamp);
}

/* Positions P24..P42 (section 5.8). */
static uint32_t transfer_post_or_void(struct ledger *ledger, struct ws_entry *entry,
                                      const struct wire_transfer *t, uint64_t timestamp)
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

        struct ws_entry *p_entry = ws_transfer(ledger, t->pending_id);
        if (p_entry->state != WS_PRESENT) return CT_PENDING_TRANSFER_NOT_FOUND;
        const struct wire_transfer *p = &p_entry->object.transfer;
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

        switch (p_entry->status) {
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

        struct ws_entry *dr_entry = ws_account(ledger, p->debit_account_id);
        struct ws_entry *cr_entry = ws_account(ledger, p->credit_account_id);
        tally_assert(dr_entry->state == WS_PRESENT && cr_entry->state == WS_PRESENT);
        struct wire_account *dr = &dr_entry->object.account;
        struct wire_account *cr = &cr_entry->object.account;
        if (post && (dr->flags & ACCOUNT_FLAG_CLOSED)) return CT_DEBIT_ACCOUNT_ALREADY_CLOSED;
        if (post && (cr->flags & ACCOUNT_FLAG_CLOSED)) return CT_CREDIT_ACCOUNT_ALREADY_CLOSED;

        ws_touch(ledger, dr_entry);
        ws_touch(ledger, cr_entry);
        ws_touch(ledger, p_entry);
        dr_entry->dirty = true;
        cr_entry->dirty = true;

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
        p_entry->status = post ? TRANSFER_STATUS_POSTED : TRANSFER_STATUS_VOIDED;
        p_entry->status_dirty = true;
        tally_assert(ledger->counters.pending_live > 0);
        ledger->counters.pending_live--;

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
        transfer_store(ledger, entry, &stored, dr, cr, TRANSFER_STATUS_NONE);
        return CT_OK;
}

/* Positions N24..N52 (section 5.4). */
static uint32_t transfer_normal(struct ledger *ledger, struct ws_entry *entry,
                                const struct wire_transfer *t, uint64_t timestamp)
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

        struct ws_entry *dr_entry = ws_account(ledger, t->debit_account_id);
        if (dr_entry->state != WS_PRESENT) return CT_DEBIT_ACCOUNT_NOT_FOUND;
        struct ws_entry *cr_entry = ws_account(ledger, t->credit_account_id);
        if (cr_entry->state != WS_PRESENT) return CT_CREDIT_ACCOUNT_NOT_FOUND;
        struct wire_account *dr = &dr_entry->object.account;
        struct wire_account *cr = &cr_entry->object.account;
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

        ws_touch(ledger, dr_entry);
        ws_touch(ledger, cr_entry);
        dr_entry->dirty = true;
        cr_entry->dirty = true;
        if (pending) {
                dr->debits_pending += amount;
                cr->credits_pending += amount;
                ledger->counters.pending_live++;
                if (t->flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags |= ACCOUNT_FLAG_CLOSED;
                if (t->flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags |= ACCOUNT_FLAG_CLOSED;
        } else {
                dr->debits_posted += amount;
                cr->credits_posted += amount;
        }
        struct wire_transfer stored = *t;
        stored.amount = amount;
        stored.timestamp = timestamp;
        transfer_store(ledger, entry, &stored, dr, cr,
                       pending ? TRANSFER_STATUS_PENDING : TRANSFER_STATUS_NONE);
        return CT_OK;
}

/* Positions 8..23 (section 5.1), then the post/void or the normal path. */
static uint32_t transfer_create(struct ledger *ledger, const struct wire_transfer *t,
                                uint64_t timestamp, uint32_t event)
{
        if (t->flags & TRANSFER_FLAGS_PADDING) return CT_RESERVED_FLAG;
        if (t->id == 0) return CT_ID_MUST_NOT_BE_ZERO;
        if (t->id == U128_MAX) return CT_ID_MUST_NOT_BE_INT_MAX;

        struct ws_entry *entry = ws_transfer_new(ledger, t->id, event);
        if (entry->state == WS_FAILED) return CT_ID_ALREADY_FAILED;
        if (entry->state == WS_PRESENT) {
                struct wire_transfer existing = entry->object.transfer;
                return transfer_exists(ledger, t, &existing);
        }
        if (t->flags & (TRANSFER_FLAG_POST_PENDING | TRANSFER_FLAG_VOID_PENDING))
                return transfer_post_or_void(ledger, entry, t, timestamp);
        return transfer_normal(ledger, entry, t, timestamp);
}

/* ---------------------------------------------------------------------------------------- */
/* pulse (section 5.11) */

struct expiry_batch {
        struct expiry_value *values;
        uint32_t count;
        uint32_t max;
        uint64_t timestamp;
};

static bool expiry_collect(void *context, const void *value)
{
        struct expiry_batch *b = context;
        struct expiry_value v;
        memcpy(&v, value, sizeof(v));
        if (v.expires_at > b->timestamp) return false;
        b->values[b->count++] = v;
        return b->count < b->max;
}

/*
 * Expires pending transfers in (expires_at, timestamp) order from the expiry cursor, at most
 * LEDGER_PULSE_TIMESTAMP_DELTA of them; entries of transfers posted or voided since are passed.
 */
void ledger_pulse(struct ledger *ledger, uint64_t timestamp)
{
        struct expiry_value *values = (struct expiry_value *)ledger->scratch;
        uint32_t expired = 0;
        bool more = true;
        while (more && expired < LEDGER_PULSE_TIMESTAMP_DELTA) {
                struct expiry_batch batch = {.values = values,
                                             .max = LEDGER_PULSE_TIMESTAMP_DELTA,
                                             .timestamp = timestamp};
                struct expiry_value from = {
                        .expires_at = ledger->counters.expiry_done_expires_at,
                        .timestamp = ledger->counters.expiry_done_timestamp + 1};
                if (lsm_tree_scan(&ledger->expiry, &from, NULL, false, expiry_collect, &batch) < 0)
                        ledger_fault(ledger, "expiry scan");
                more = batch.count == batch.max;
                for (uint32_t i = 0; i < batch.count && expired < LEDGER_PULSE_TIMESTAMP_DELTA;
                     i++) {
                        const struct expiry_value *v = &values[i];
                        ledger->counters.expiry_done_expires_at = v->expires_at;
                        ledger->counters.expiry_done_timestamp = v->timestamp;
                        struct wire_transfer p;
                        if (lsm_groove_get_by_timestamp(&ledger->transfers, v->timestamp, &p) != 1)
                                ledger_fault(ledger, "pending transfer of an expiry entry");
                        struct ws_entry *p_entry = ws_transfer(ledger, p.id);
                        if (p_entry->status != TRANSFER_STATUS_PENDING) continue;
                        expired++;
                        struct ws_entry *dr_entry = ws_account(ledger, p.debit_account_id);
                        struct ws_entry *cr_entry = ws_account(ledger, p.credit_account_id);
                        tally_assert(dr_entry->state == WS_PRESENT &&
                                     cr_entry->state == WS_PRESENT);
                        struct wire_account *dr = &dr_entry->object.account;
                        struct wire_account *cr = &cr_entry->object.account;
                        tally_assert(dr->debits_pending >= p.amount);
                        tally_assert(cr->credits_pending >= p.amount);
                        dr->debits_pending -= p.amount;
                        cr->credits_pending -= p.amount;
                        if (p.flags & TRANSFER_FLAG_CLOSING_DEBIT) dr->flags &= ~ACCOUNT_FLAG_CLOSED;
                        if (p.flags & TRANSFER_FLAG_CLOSING_CREDIT) cr->flags &= ~ACCOUNT_FLAG_CLOSED;
                        dr_entry->dirty = true;
                        cr_entry->dirty = true;
                        p_entry->status = TRANSFER_STATUS_EXPIRED;
                        p_entry->status_dirty = true;
                        tally_assert(ledger->counters.pending_live > 0);
                        ledger->counters.pending_live--;
                }
                /* The statuses changed above must be visible to the next round's checks. */
                ws_commit(ledger);
        }
        ledger_expiry_next_update(ledger);
}
