/*
 * ledger_query.c: lookup_accounts, lookup_transfers, get_account_transfers,
 * get_account_balances, query_accounts, query_transfers (ledger-semantics.md sections 6-8).
 *
 * Results are copied out with memcpy, so the output buffer needs no particular alignment. An
 * invalid filter gives an empty result, as in TigerBeetle.
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

uint32_t ledger_lookup_accounts(const struct ledger *ledger, const uint8_t *ids, uint32_t count,
                                uint8_t *out)
{
        uint32_t found = 0;
        for (uint32_t i = 0; i < count; i++) {
                u128 id;
                memcpy(&id, ids + (size_t)i * sizeof(u128), sizeof(id));
                if (id == 0 || id == U128_MAX) continue;
                uint32_t ref = account_find(ledger, id);
                if (ref == 0) continue;
                memcpy(out + (size_t)found * sizeof(struct wire_account), &ledger->accounts[ref - 1],
                       sizeof(struct wire_account));
                found++;
        }
        return found;
}

uint32_t ledger_lookup_transfers(const struct ledger *ledger, const uint8_t *ids,
                                 uint32_t count, uint8_t *out)
{
        uint32_t found = 0;
        for (uint32_t i = 0; i < count; i++) {
                u128 id;
                memcpy(&id, ids + (size_t)i * sizeof(u128), sizeof(id));
                if (id == 0 || id == U128_MAX) continue;
                uint32_t ref = table_find(ledger, &ledger->transfers_table, id);
                if (ref == 0 || (ref & TABLE_REF_FAILED)) continue;
                memcpy(out + (size_t)found * sizeof(struct wire_transfer),
                       &ledger->transfers[ref - 1], sizeof(struct wire_transfer));
                found++;
        }
        return found;
}

/* ---------------------------------------------------------------------------------------- */
/* get_account_transfers / get_account_balances */

struct account_scan {
        struct wire_account_filter filter;
        uint64_t timestamp_min; /* inclusive, 0 replaced by 1 */
        uint64_t timestamp_max; /* inclusive, 0 replaced by 2^63 - 1 */
        uint32_t limit;
};

static bool account_filter_parse(const uint8_t *bytes, uint32_t result_max,
                                 struct account_scan *scan)
{
        struct wire_account_filter *f = &scan->filter;
        memcpy(f, bytes, sizeof(*f));
        if (f->account_id == 0 || f->account_id == U128_MAX) return false;
        if (f->timestamp_min != 0 && !timestamp_valid(f->timestamp_min)) return false;
        if (f->timestamp_max != 0 && !timestamp_valid(f->timestamp_max)) return false;
        if (f->timestamp_max != 0 && f->timestamp_min > f->timestamp_max) return false;
        if (f->limit == 0) return false;
        if (!(f->flags & (ACCOUNT_FILTER_FLAG_DEBITS | ACCOUNT_FILTER_FLAG_CREDITS))) return false;
        if (f->flags & ACCOUNT_FILTER_FLAGS_PADDING) return false;
        if (!zeroed(f->reserved, sizeof(f->reserved))) return false;
        scan->timestamp_min = f->timestamp_min ? f->timestamp_min : 1;
        scan->timestamp_max = f->timestamp_max ? f->timestamp_max : LEDGER_MAX63;
        scan->limit = MIN(f->limit, result_max);
        return true;
}

static bool account_scan_match(const struct account_scan *scan, const struct wire_transfer *t)
{
        const struct wire_account_filter *f = &scan->filter;
        bool side = ((f->flags & ACCOUNT_FILTER_FLAG_DEBITS) &&
                     t->debit_account_id == f->account_id) ||
                    ((f->flags & ACCOUNT_FILTER_FLAG_CREDITS) &&
                     t->credit_account_id == f->account_id);
        if (!side) return false;
        if (f->user_data_128 != 0 && t->user_data_128 != f->user_data_128) return false;
        if (f->user_data_64 != 0 && t->user_data_64 != f->user_data_64) return false;
        if (f->user_data_32 != 0 && t->user_data_32 != f->user_data_32) return false;
        if (f->code != 0 && t->code != f->code) return false;
        return true;
}

/* Positions of the selected transfers, in reply order, into ledger->scratch. */
static uint32_t account_scan_run(struct ledger *ledger, const struct account_scan *scan,
                                 uint32_t account)
{
        const struct account_index *index = &ledger->account_index[account];
        uint32_t *positions = ledger->scratch;
        uint32_t found = 0;
        bool reversed = (scan->filter.flags & ACCOUNT_FILTER_FLAG_REVERSED) != 0;
        uint32_t chunk_ref = reversed ? index->tail : index->head;
        while (chunk_ref != 0 && found < scan->limit) {
                const struct edge_chunk *chunk = &ledger->chunks[chunk_ref - 1];
                chunk_ref = reversed ? chunk->prev : chunk->next;
                tally_assert(chunk->count > 0 && chunk->count <= CHUNK_ITEMS);
                /* Skip a whole chunk that lies before (ascending) / after (descending) the
                 * range without looking at its entries. */
                if (!reversed &&
                    ledger->transfers[chunk->items[chunk->count - 1]].timestamp <
                            scan->timestamp_min)
                        continue;
                if (reversed && ledger->transfers[chunk->items[0]].timestamp > scan->timestamp_max)
                        continue;
                for (uint32_t k = 0; k < chunk->count && found < scan->limit; k++) {
                        uint32_t position = chunk->items[reversed ? chunk->count - 1 - k : k];
                        const struct wire_transfer *t = &ledger->transfers[position];
                        if (!reversed && t->timestamp < scan->timestamp_min) continue;
                        if (reversed && t->timestamp > scan->timestamp_max) continue;
                        if (t->timestamp < scan->timestamp_min || t->timestamp > scan->timestamp_max)
                                return found; /* past the far end of the range */
                        if (account_scan_match(scan, t)) positions[found++] = position;
                }
        }
        return found;
}

uint32_t ledger_get_account_transfers(struct ledger *ledger, const uint8_t *filter,
                                      uint32_t result_max, uint8_t *out)
{
        struct account_scan scan;
        if (!account_filter_parse(filter, result_max, &scan)) return 0;
        uint32_t ref = account_find(ledger, scan.filter.account_id);
        if (ref == 0) return 0;
        uint32_t found = account_scan_run(ledger, &scan, ref - 1);
        for (uint32_t i = 0; i < found; i++) {
                memcpy(out + (size_t)i * sizeof(struct wire_transfer),
                       &ledger->transfers[ledger->scratch[i]], sizeof(struct wire_transfer));
        }
        return found;
}

/* The history record of (transfer, side); records are sorted by that pair. */
static const struct history_record *history_find(const struct ledger *ledger, uint32_t transfer,
                                                 uint32_t side)
{
        uint64_t lo = 0, hi = ledger->history_count;
        while (lo < hi) {
                uint64_t mid = lo + (hi - lo) / 2;
                const struct history_record *r = &ledger->history[mid];
                if (r->transfer < transfer || (r->transfer == transfer && r->side < side)) {
                        lo = mid + 1;
                } else {
                        hi = mid;
                }
        }
        tally_assert(lo < ledger->history_count);
        const struct history_record *r = &ledger->history[lo];
        tally_assert(r->transfer == transfer && r->side == side);
        return r;
}

uint32_t ledger_get_account_balances(struct ledger *ledger, const uint8_t *filter,
                                     uint32_t result_max, uint8_t *out)
{
        struct account_scan scan;
        if (!account_filter_parse(filter, result_max, &scan)) return 0;
        uint32_t ref = account_find(ledger, scan.filter.account_id);
        if (ref == 0) return 0;
        if (!(ledger->accounts[ref - 1].flags & ACCOUNT_FLAG_HISTORY)) return 0;
        uint32_t found = account_scan_run(ledger, &scan, ref - 1);
        for (uint32_t i = 0; i < found; i++) {
                uint32_t position = ledger->scratch[i];
                const struct wire_transfer *t = &ledger->transfers[position];
                uint32_t side = t->debit_account_id == scan.filter.account_id ? 0 : 1;
                const struct history_record *r = history_find(ledger, position, side);
                struct wire_account_balance balance;
                memset(&balance, 0, sizeof(balance));
                balance.debits_pending = r->debits_pending;
                balance.debits_posted = r->debits_posted;
                balance.credits_pending = r->credits_pending;
                balance.credits_posted = r->credits_posted;
                balance.timestamp = t->timestamp;
                memcpy(out + (size_t)i * sizeof(balance), &balance, sizeof(balance));
        }
        return found;
}

/* ---------------------------------------------------------------------------------------- */
/* query_accounts / query_transfers */

struct query_scan {
        struct wire_query_filter filter;
        uint64_t timestamp_min;
        uint64_t timestamp_max;
        uint32_t limit;
        bool reversed;
};

static bool query_filter_parse(const uint8_t *bytes, uint32_t result_max, struct query_scan *scan)
{
        struct wire_query_filter *f = &scan->filter;
        memcpy(f, bytes, sizeof(*f));
        if (f->timestamp_min != 0 && !timestamp_valid(f->timestamp_min)) return false;
        if (f->timestamp_max != 0 && !timestamp_valid(f->timestamp_max)) return false;
        if (f->timestamp_max != 0 && f->timestamp_min > f->timestamp_max) return false;
        if (f->limit == 0) return false;
        if (f->flags & QUERY_FILTER_FLAGS_PADDING) return false;
        if (!zeroed(f->reserved, sizeof(f->reserved))) return false;
        scan->timestamp_min = f->timestamp_min ? f->timestamp_min : 1;
        scan->timestamp_max = f->timestamp_max ? f->timestamp_max : LEDGER_MAX63;
        scan->limit = MIN(f->limit, result_max);
        scan->reversed = (f->flags & QUERY_FILTER_FLAG_REVERSED) != 0;
        return true;
}

static bool query_match(const struct wire_query_filter *f, u128 user_data_128,
                        uint64_t user_data_64, uint32_t user_data_32, uint32_t ledger_id,
                        uint16_t code)
{
        if (f->user_data_128 != 0 && user_data_128 != f->user_data_128) return false;
        if (f->user_data_64 != 0 && user_data_64 != f->user_data_64) return false;
        if (f->user_data_32 != 0 && user_data_32 != f->user_data_32) return false;
        if (f->ledger != 0 && ledger_id != f->ledger) return false;
        if (f->code != 0 && code != f->code) return false;
        return true;
}

/*
 * Accounts and transfers share the fields a query looks at and the 128-byte stride, so one scan
 * serves both: `objects` is the array, `offsets` where the fields sit.
 */
struct query_layout {
        size_t user_data_128, user_data_64, user_data_32, ledger, code, timestamp;
};

static uint32_t query_run(const uint8_t *objects, uint32_t count,
                          const struct query_layout *layout, const struct query_scan *scan,
                          uint8_t *out)
{
        /* First position with timestamp >= min, first with timestamp > max. */
        uint32_t begin = ledger_timestamp_search(objects, count, layout->timestamp,
                                                 scan->timestamp_min, false);
        uint32_t end = ledger_timestamp_search(objects, count, layout->timestamp,
                                               scan->timestamp_max, true);
        tally_assert(begin <= end); /* the filter check keeps min <= max */

        uint32_t found = 0;
        for (uint32_t k = 0; k < end - begin && found < scan->limit; k++) {
                uint32_t i = scan->reversed ? end - 1 - k : begin + k;
                const uint8_t *o = objects + (size_t)i * 128;
                u128 ud128;
                uint64_t ud64;
                uint32_t ud32, ledger_id;
                uint16_t code;
                memcpy(&ud128, o + layout->user_data_128, sizeof(ud128));
                memcpy(&ud64, o + layout->user_data_64, sizeof(ud64));
                memcpy(&ud32, o + layout->user_data_32, sizeof(ud32));
                memcpy(&ledger_id, o + layout->ledger, sizeof(ledger_id));
                memcpy(&code, o + layout->code, sizeof(code));
                if (!query_match(&scan->filter, ud128, ud64, ud32, ledger_id, code)) continue;
                memcpy(out + (size_t)found * 128, o, 128);
                found++;
        }
        return found;
}

uint32_t ledger_query_accounts(const struct ledger *ledger, const uint8_t *filter,
                               uint32_t result_max, uint8_t *out)
{
        static const struct query_layout layout = {
                offsetof(struct wire_account, user_data_128),
                offsetof(struct wire_account, user_data_64),
                offsetof(struct wire_account, user_data_32),
                offsetof(struct wire_account, ledger),
                offsetof(struct wire_account, code),
                offsetof(struct wire_account, timestamp),
        };
        struct query_scan scan;
        if (!query_filter_parse(filter, result_max, &scan)) return 0;
        return query_run((const uint8_t *)ledger->accounts, ledger->account_count, &layout, &scan,
                         out);
}

uint32_t ledger_query_transfers(const struct ledger *ledger, const uint8_t *filter,
                                uint32_t result_max, uint8_t *out)
{
        static const struct query_layout layout = {
                offsetof(struct wire_transfer, user_data_128),
                offsetof(struct wire_transfer, user_data_64),
                offsetof(struct wire_transfer, user_data_32),
                offsetof(struct wire_transfer, ledger),
                offsetof(struct wire_transfer, code),
                offsetof(struct wire_transfer, timestamp),
        };
        struct query_scan scan;
        if (!query_filter_parse(filter, result_max, &scan)) return 0;
        return query_run((const uint8_t *)ledger->transfers, ledger->transfer_count, &layout,
                         &scan, out);
}
