/*
 * ledger_verify.c: the ledger's invariants, checked offline (`tally inspect --verify`) on a
 * ledger loaded from a checkpoint, reported rather than asserted.
 *
 * 1. Per ledger, over all its accounts: the sum of debits_posted equals the sum of
 *    credits_posted, and the sum of debits_pending equals the sum of credits_pending (double
 *    entry: every transfer adds its amount to one debit and one credit of the same ledger).
 * 2. Per account: its balances equal the sum of its transfers: posted = every transfer that is
 *    neither pending nor a void (a post_pending transfer stores the amount it posted), pending
 *    = every pending transfer still pending.
 * 3. Every transfer names existing accounts, and the count of live pending transfers matches.
 * Sums are taken modulo 2^128 (balances cannot overflow it, the ledger checks), so the
 * comparisons are exact. It allocates its scratch memory (this is a tool, not the hot path):
 * a map of every account's sums, while the transfers are scanned from the trees.
 */
#include "ledger/ledger_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct balance_sums {
        u128 debits_pending;
        u128 credits_pending;
        u128 debits_posted;
        u128 credits_posted;
};

/* Per-ledger sums in an open-addressing map keyed by ledger id (capacity a power of two). */
struct ledger_sums {
        uint32_t ledger;
        bool used;
        struct balance_sums sums;
};

static struct ledger_sums *ledger_slot(struct ledger_sums *map, uint32_t capacity, uint32_t id)
{
        uint32_t i = (id * 2654435761u) & (capacity - 1);
        for (uint32_t probes = 0; probes < capacity; probes++) {
                if (!map[i].used || map[i].ledger == id) {
                        map[i].used = true;
                        map[i].ledger = id;
                        return &map[i];
                }
                i = (i + 1) & (capacity - 1);
        }
        tally_assert(false); /* capacity > account count: never full */
        return NULL;
}

static void format_u128_hex(u128 value, char out[40])
{
        snprintf(out, 40, "0x%016llx%016llx", (unsigned long long)(value >> 64),
                 (unsigned long long)value);
}

/* Every account, by id, with the sums of its transfers. */
struct account_sums {
        u128 id;
        bool used;
        struct wire_account account;
        struct balance_sums sums;
};

struct verify_scan {
        struct ledger *ledger;
        struct account_sums *accounts;
        uint64_t capacity; /* a power of two > 2 x accounts */
        uint64_t accounts_seen;
        uint64_t transfers_seen;
        uint64_t pending_live;
        char *error;
        size_t error_size;
        bool failed;
};

static uint64_t id_hash(u128 id)
{
        uint64_t h = (uint64_t)id ^ (uint64_t)(id >> 64) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 31;
        return h * 0xBF58476D1CE4E5B9ull;
}

static struct account_sums *account_slot(struct verify_scan *scan, u128 id, bool insert)
{
        uint64_t i = id_hash(id) & (scan->capacity - 1);
        for (;;) {
                struct account_sums *a = &scan->accounts[i];
                if (a->used && a->id == id) return a;
                if (!a->used) {
                        if (!insert) return NULL;
                        a->used = true;
                        a->id = id;
                        return a;
                }
                i = (i + 1) & (scan->capacity - 1);
        }
}

static bool verify_account(void *context, const void *value)
{
        struct verify_scan *scan = context;
        struct wire_account a;
        memcpy(&a, value, sizeof(a));
        if (scan->accounts_seen == scan->capacity / 2) {
                snprintf(scan->error, scan->error_size,
                         "more accounts in the tree than the ledger counts");
                scan->failed = true;
                return false;
        }
        scan->accounts_seen++;
        account_slot(scan, a.id, true)->account = a;
        return true;
}

static bool verify_transfer(void *context, const void *value)
{
        struct verify_scan *scan = context;
        struct wire_transfer t;
        memcpy(&t, value, sizeof(t));
        scan->transfers_seen++;
        struct account_sums *dr = account_slot(scan, t.debit_account_id, false);
        struct account_sums *cr = account_slot(scan, t.credit_account_id, false);
        if (dr == NULL || cr == NULL) {
                char id[40];
                format_u128_hex(t.id, id);
                snprintf(scan->error, scan->error_size,
                         "transfer %s names an account that does not exist", id);
                scan->failed = true;
                return false;
        }
        if (t.flags & TRANSFER_FLAG_PENDING) {
                if (ledger_status_get(scan->ledger, t.timestamp) != TRANSFER_STATUS_PENDING)
                        return true;
                scan->pending_live++;
                dr->sums.debits_pending += t.amount;
                cr->sums.credits_pending += t.amount;
        } else if (!(t.flags & TRANSFER_FLAG_VOID_PENDING)) {
                dr->sums.debits_posted += t.amount;
                cr->sums.credits_posted += t.amount;
        }
        return true;
}

int ledger_verify(struct ledger *ledger, struct ledger_verify_report *report, char *error,
                  size_t error_size)
{
        memset(report, 0, sizeof(*report));
        const struct ledger_counters *n = &ledger->counters;
        report->accounts = n->account_count;
        report->transfers = n->transfer_count;
        struct verify_scan scan = {.ledger = ledger, .error = error, .error_size = error_size};
        scan.capacity = 16;
        while (scan.capacity < 2u * n->account_count + 2u)
                scan.capacity *= 2;
        uint32_t capacity = 16;
        while (capacity < 2u * n->account_count + 2u)
                capacity *= 2;
        struct ledger_sums *map = calloc(capacity, sizeof(*map));
        scan.accounts = calloc(scan.capacity, sizeof(*scan.accounts));
        int result = -1;
        if (map == NULL || scan.accounts == NULL) {
                snprintf(error, error_size, "out of memory for the verification");
                goto done;
        }
        if (lsm_tree_scan(&ledger->accounts.objects, NULL, NULL, false, verify_account, &scan) <
                    0 ||
            (!scan.failed && lsm_tree_scan(&ledger->transfers.objects, NULL, NULL, false,
                                           verify_transfer, &scan) < 0)) {
                snprintf(error, error_size, "a block of the ledger is unreadable: %s",
                         ledger->grid.error);
                goto done;
        }
        if (scan.failed)
                goto done;
        if (scan.accounts_seen != n->account_count || scan.transfers_seen != n->transfer_count) {
                snprintf(error, error_size,
                         "the trees hold %llu accounts and %llu transfers but the ledger counts "
                         "%llu and %llu",
                         (unsigned long long)scan.accounts_seen,
                         (unsigned long long)scan.transfers_seen,
                         (unsigned long long)n->account_count,
                         (unsigned long long)n->transfer_count);
                goto done;
        }
        if (scan.pending_live != n->pending_live) {
                snprintf(error, error_size,
                         "%llu transfers are pending but the ledger counts %llu",
                         (unsigned long long)scan.pending_live,
                         (unsigned long long)n->pending_live);
                goto done;
        }
        for (uint64_t i = 0; i < scan.capacity; i++) {
                if (!scan.accounts[i].used)
                        continue;
                const struct wire_account *a = &scan.accounts[i].account;
                const struct balance_sums *s = &scan.accounts[i].sums;
                if (a->debits_pending != s->debits_pending ||
                    a->credits_pending != s->credits_pending ||
                    a->debits_posted != s->debits_posted ||
                    a->credits_posted != s->credits_posted) {
                        char id[40];
                        format_u128_hex(a->id, id);
                        snprintf(error, error_size,
                                 "account %s: its balances differ from the sum of its transfers "
                                 "(%s)",
                                 id,
                                 a->debits_posted != s->debits_posted     ? "debits_posted"
                                 : a->credits_posted != s->credits_posted ? "credits_posted"
                                 : a->debits_pending != s->debits_pending ? "debits_pending"
                                                                          : "credits_pending");
                        goto done;
                }
                struct ledger_sums *l = ledger_slot(map, capacity, a->ledger);
                l->sums.debits_pending += a->debits_pending;
                l->sums.credits_pending += a->credits_pending;
                l->sums.debits_posted += a->debits_posted;
                l->sums.credits_posted += a->credits_posted;
        }
        for (uint32_t k = 0; k < capacity; k++) {
                if (!map[k].used)
                        continue;
                report->ledgers++;
                const struct balance_sums *s = &map[k].sums;
                if (s->debits_posted != s->credits_posted ||
                    s->debits_pending != s->credits_pending) {
                        snprintf(error, error_size,
                                 "ledger %u: the sum of %s debits differs from the sum of its "
                                 "credits",
                                 map[k].ledger,
                                 s->debits_posted != s->credits_posted ? "posted" : "pending");
                        goto done;
                }
        }
        result = 0;
done:
        free(map);
        free(scan.accounts);
        return result;
}
