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
 * comparisons are exact. It allocates its scratch memory (this is a tool, not the hot path).
 */
#include "ledger/ledger_internal.h"
#include "ledger/ledger_table.h"

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

int ledger_verify(const struct ledger *ledger, struct ledger_verify_report *report, char *error,
                  size_t error_size)
{
        memset(report, 0, sizeof(*report));
        report->accounts = ledger->account_count;
        report->transfers = ledger->transfer_count;
        uint32_t capacity = 16;
        while (capacity < 2u * ledger->account_count + 2u)
                capacity *= 2;
        struct ledger_sums *map = calloc(capacity, sizeof(*map));
        struct balance_sums *accounts = calloc((size_t)ledger->account_count + 1, sizeof(*accounts));
        int result = -1;
        if (map == NULL || accounts == NULL) {
                snprintf(error, error_size, "out of memory for the verification");
                goto done;
        }
        uint32_t pending_live = 0;
        for (uint32_t i = 0; i < ledger->transfer_count; i++) {
                const struct wire_transfer *t = &ledger->transfers[i];
                uint32_t dr = account_find(ledger, t->debit_account_id);
                uint32_t cr = account_find(ledger, t->credit_account_id);
                if (dr == 0 || cr == 0) {
                        char id[40];
                        format_u128_hex(t->id, id);
                        snprintf(error, error_size, "transfer %s names an account that does not "
                                 "exist", id);
                        goto done;
                }
                if (t->flags & TRANSFER_FLAG_PENDING) {
                        if (ledger->transfer_status[i] != TRANSFER_STATUS_PENDING)
                                continue;
                        pending_live++;
                        accounts[dr - 1].debits_pending += t->amount;
                        accounts[cr - 1].credits_pending += t->amount;
                } else if (!(t->flags & TRANSFER_FLAG_VOID_PENDING)) {
                        accounts[dr - 1].debits_posted += t->amount;
                        accounts[cr - 1].credits_posted += t->amount;
                }
        }
        if (pending_live != ledger->pending_live) {
                snprintf(error, error_size, "%u transfers are pending but the ledger counts %u",
                         pending_live, ledger->pending_live);
                goto done;
        }
        for (uint32_t i = 0; i < ledger->account_count; i++) {
                const struct wire_account *a = &ledger->accounts[i];
                const struct balance_sums *s = &accounts[i];
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
        free(accounts);
        return result;
}
