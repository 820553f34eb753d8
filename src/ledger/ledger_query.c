/*
 * ledger_query.c: lookup_accounts, lookup_transfers, get_account_transfers,
 * get_account_balances, query_accounts, query_transfers (ledger-semantics.md sections 6-8).
 *
 * Results are copied out with memcpy, so the output buffer needs no particular alignment. An
 * invalid filter gives an empty result, as in TigerBeetle.
 *
 * Every filter is served through the grooves' indexes (lsm/groove.h): a query intersects the
 * index scans of its non-zero fields by timestamp and stops at its limit, so its cost follows
 * the results it returns, not the objects stored. Without a field filter it walks the objects
 * by timestamp over the range.
 */
#include "ledger/ledger_internal.h"

#include <string.h>

static bool timestamp_valid(uint64_t timestamp)
{
        return timestamp >= 1 && timestamp <= LEDGER_MAX63;
}

static bool zeroed(const uint8_t *bytes, size_t size)
{
        for (size_t i = 0; i < size; i++) {
                if (bytes[i] != 0) return false;
        }
        return true;
}

uint32_t ledger_lookup_accounts(struct ledger *ledger, const uint8_t *ids, uint32_t count,
                                uint8_t *out)
{
        uint32_t found = 0;
        for (uint32_t i = 0; i < count; i++) {
                u128 id;
                memcpy(&id, ids + (size_t)i * sizeof(u128), sizeof(id));
                if (id == 0 || id == U128_MAX) continue;
                struct wire_account a;
                int rc = lsm_groove_get_by_id(&ledger->accounts, id, &a);
                if (rc < 0) ledger_fault(ledger, "lookup_accounts");
                if (rc == 0) continue;
                memcpy(out + (size_t)found * sizeof(a), &a, sizeof(a));
                found++;
        }
        return found;
}

uint32_t ledger_lookup_transfers(struct ledger *ledger, const uint8_t *ids, uint32_t count,
                                 uint8_t *out)
{
        uint32_t found = 0;
        for (uint32_t i = 0; i < count; i++) {
                u128 id;
                memcpy(&id, ids + (size_t)i * sizeof(u128), sizeof(id));
                if (id == 0 || id == U128_MAX) continue;
                struct wire_transfer t;
                if (!lsm_groove_cached(&ledger->transfers, id, &t)) {
                        uint64_t timestamp = 0;
                        int rc = lsm_groove_get_id(&ledger->transfers, id, &timestamp);
                        if (rc < 0) ledger_fault(ledger, "lookup_transfers");
                        if (rc == 0 || timestamp == 0) continue; /* absent, or a burned id */
                        if (lsm_groove_get_by_timestamp(&ledger->transfers, timestamp, &t) != 1)
                                ledger_fault(ledger, "lookup_transfers");
                        lsm_groove_cache_put(&ledger->transfers, &t);
                }
                memcpy(out + (size_t)found * sizeof(t), &t, sizeof(t));
                found++;
        }
        return found;
}

/* ---------------------------------------------------------------------------------------- */
/* get_account_transfers / get_account_balances */

static bool account_filter_parse(const uint8_t *bytes, uint32_t result_max,
                                 struct wire_account_filter *f, struct lsm_groove_filter *q)
{
        memcpy(f, bytes, sizeof(*f));
        if (f->account_id == 0 || f->account_id == U128_MAX) return false;
        if (f->timestamp_min != 0 && !timestamp_valid(f->timestamp_min)) return false;
        if (f->timestamp_max != 0 && !timestamp_valid(f->timestamp_max)) return false;
        if (f->timestamp_max != 0 && f->timestamp_min > f->timestamp_max) return false;
        if (f->limit == 0) return false;
        if (!(f->flags & (ACCOUNT_FILTER_FLAG_DEBITS | ACCOUNT_FILTER_FLAG_CREDITS))) return false;
        if (f->flags & ACCOUNT_FILTER_FLAGS_PADDING) return false;
        if (!zeroed(f->reserved, sizeof(f->reserved))) return false;
        memset(q, 0, sizeof(*q));
        bool debits = (f->flags & ACCOUNT_FILTER_FLAG_DEBITS) != 0;
        bool credits = (f->flags & ACCOUNT_FILTER_FLAG_CREDITS) != 0;
        if (debits && credits) {
                q->either_count = 2;
                q->either[0] = TRANSFER_INDEX_DEBIT_ACCOUNT;
                q->either[1] = TRANSFER_INDEX_CREDIT_ACCOUNT;
                q->either_value = f->account_id;
        } else {
                uint32_t side = debits ? TRANSFER_INDEX_DEBIT_ACCOUNT
                                       : TRANSFER_INDEX_CREDIT_ACCOUNT;
                q->present[side] = true;
                q->value[side] = f->account_id;
        }
        q->present[TRANSFER_INDEX_USER_DATA_128] = f->user_data_128 != 0;
        q->value[TRANSFER_INDEX_USER_DATA_128] = f->user_data_128;
        q->present[TRANSFER_INDEX_USER_DATA_64] = f->user_data_64 != 0;
        q->value[TRANSFER_INDEX_USER_DATA_64] = f->user_data_64;
        q->present[TRANSFER_INDEX_USER_DATA_32] = f->user_data_32 != 0;
        q->value[TRANSFER_INDEX_USER_DATA_32] = f->user_data_32;
        q->present[TRANSFER_INDEX_CODE] = f->code != 0;
        q->value[TRANSFER_INDEX_CODE] = f->code;
        q->timestamp_min = f->timestamp_min ? f->timestamp_min : 1;
        q->timestamp_max = f->timestamp_max ? f->timestamp_max : LEDGER_MAX63;
        q->reversed = (f->flags & ACCOUNT_FILTER_FLAG_REVERSED) != 0;
        q->limit = MIN(f->limit, result_max);
        return true;
}

static uint32_t transfers_query(struct ledger *ledger, const struct lsm_groove_filter *q,
                                uint8_t *out)
{
        struct lsm_groove_query_stats stats;
        int64_t found = lsm_groove_query(&ledger->transfers, q, out, &stats);
        if (found < 0) ledger_fault(ledger, "transfers query");
        return (uint32_t)found;
}

uint32_t ledger_get_account_transfers(struct ledger *ledger, const uint8_t *filter,
                                      uint32_t result_max, uint8_t *out)
{
        struct wire_account_filter f;
        struct lsm_groove_filter q;
        if (!account_filter_parse(filter, result_max, &f, &q)) return 0;
        uint64_t timestamp;
        int rc = lsm_groove_get_id(&ledger->accounts, f.account_id, &timestamp);
        if (rc < 0) ledger_fault(ledger, "get_account_transfers");
        if (rc == 0) return 0;
        return transfers_query(ledger, &q, out);
}

uint32_t ledger_get_account_balances(struct ledger *ledger, const uint8_t *filter,
                                     uint32_t result_max, uint8_t *out)
{
        struct wire_account_filter f;
        struct lsm_groove_filter q;
        if (!account_filter_parse(filter, result_max, &f, &q)) return 0;
        struct wire_account account;
        int rc = lsm_groove_get_by_id(&ledger->accounts, f.account_id, &account);
        if (rc < 0) ledger_fault(ledger, "get_account_balances");
        if (rc == 0 || !(account.flags & ACCOUNT_FLAG_HISTORY)) return 0;
        uint8_t *transfers = ledger->scratch;
        uint32_t found = transfers_query(ledger, &q, transfers);
        for (uint32_t i = 0; i < found; i++) {
                struct wire_transfer t;
                memcpy(&t, transfers + (size_t)i * sizeof(t), sizeof(t));
                struct history_value key = {.account_id = f.account_id, .timestamp = t.timestamp};
                struct history_value h;
                if (lsm_tree_get(&ledger->history, &key, &h) != 1)
                        ledger_fault(ledger, "history record of a transfer");
                struct wire_account_balance balance;
                memset(&balance, 0, sizeof(balance));
                balance.debits_pending = h.debits_pending;
                balance.debits_posted = h.debits_posted;
                balance.credits_pending = h.credits_pending;
                balance.credits_posted = h.credits_posted;
                balance.timestamp = t.timestamp;
                memcpy(out + (size_t)i * sizeof(balance), &balance, sizeof(balance));
        }
        return found;
}

/* ---------------------------------------------------------------------------------------- */
/* query_accounts / query_transfers */

/* The filter as a groove query; `indexes` maps the five fields to the groove's index numbers. */
static bool query_filter_parse(const uint8_t *bytes, uint32_t result_max,
                               const uint32_t indexes[5], struct lsm_groove_filter *q)
{
        struct wire_query_filter f;
        memcpy(&f, bytes, sizeof(f));
        if (f.timestamp_min != 0 && !timestamp_valid(f.timestamp_min)) return false;
        if (f.timestamp_max != 0 && !timestamp_valid(f.timestamp_max)) return false;
        if (f.timestamp_max != 0 && f.timestamp_min > f.timestamp_max) return false;
        if (f.limit == 0) return false;
        if (f.flags & QUERY_FILTER_FLAGS_PADDING) return false;
        if (!zeroed(f.reserved, sizeof(f.reserved))) return false;
        memset(q, 0, sizeof(*q));
        u128 values[5] = {f.user_data_128, f.user_data_64, f.user_data_32, f.ledger, f.code};
        for (int i = 0; i < 5; i++) {
                q->present[indexes[i]] = values[i] != 0;
                q->value[indexes[i]] = values[i];
        }
        q->timestamp_min = f.timestamp_min ? f.timestamp_min : 1;
        q->timestamp_max = f.timestamp_max ? f.timestamp_max : LEDGER_MAX63;
        q->reversed = (f.flags & QUERY_FILTER_FLAG_REVERSED) != 0;
        q->limit = MIN(f.limit, result_max);
        return true;
}

uint32_t ledger_query_accounts(struct ledger *ledger, const uint8_t *filter,
                               uint32_t result_max, uint8_t *out)
{
        static const uint32_t indexes[5] = {ACCOUNT_INDEX_USER_DATA_128,
                                            ACCOUNT_INDEX_USER_DATA_64,
                                            ACCOUNT_INDEX_USER_DATA_32, ACCOUNT_INDEX_LEDGER,
                                            ACCOUNT_INDEX_CODE};
        struct lsm_groove_filter q;
        if (!query_filter_parse(filter, result_max, indexes, &q)) return 0;
        struct lsm_groove_query_stats stats;
        int64_t found = lsm_groove_query(&ledger->accounts, &q, out, &stats);
        if (found < 0) ledger_fault(ledger, "accounts query");
        return (uint32_t)found;
}

uint32_t ledger_query_transfers(struct ledger *ledger, const uint8_t *filter,
                                uint32_t result_max, uint8_t *out)
{
        static const uint32_t indexes[5] = {TRANSFER_INDEX_USER_DATA_128,
                                            TRANSFER_INDEX_USER_DATA_64,
                                            TRANSFER_INDEX_USER_DATA_32, TRANSFER_INDEX_LEDGER,
                                            TRANSFER_INDEX_CODE};
        struct lsm_groove_filter q;
        if (!query_filter_parse(filter, result_max, indexes, &q)) return 0;
        return transfers_query(ledger, &q, out);
}
