/*
 * test_ledger.c: the ledger's rules, table by table (ledger-semantics.md, result-codes.csv).
 *
 * Requests go through ledger_execute() exactly as the replica sends them, with timestamps from
 * TigerBeetle's rule (T = max(previous + 1, clock) + events), the clock advancing 1000 ns per
 * request unless a test moves it.
 */
#include "test.h"

#include "ledger/ledger.h"
#include "wire/multi_batch.h"
#include "wire/types.h"

#define MAX128 (~(u128)0)
#define MAX63 ((uint64_t)INT64_MAX)

static struct ledger *ledger;
static uint64_t clock_ns;
static uint64_t last_timestamp;
static uint8_t reply[LEDGER_BODY_SIZE_MAX];
static uint8_t body[LEDGER_BODY_SIZE_MAX] __attribute__((unused));

static void fresh(void)
{
        if (ledger) ledger_destroy(ledger);
        struct ledger_config config = {
                .accounts_max = 10000, .transfers_max = 100000, .request_body_size_max = 0};
        ledger = ledger_create(&config);
        tally_assert(ledger != NULL);
        clock_ns = 1000000000ull;
        last_timestamp = 0;
}

/* Prepares and executes one request; returns the reply size. */
static uint32_t run(uint8_t operation, const void *request, uint32_t size)
{
        tally_assert(ledger_input_valid(ledger, operation, request, size));
        clock_ns += 1000;
        uint64_t base = MAX(last_timestamp + 1, clock_ns);
        uint64_t timestamp = base + ledger_timestamp_delta(operation, request, size);
        last_timestamp = timestamp;
        return ledger_execute(ledger, operation, timestamp, request, size, reply);
}

__attribute__((unused)) static void pulse_at(uint64_t clock)
{
        clock_ns = clock;
        uint64_t base = MAX(last_timestamp + 1, clock_ns);
        uint64_t timestamp = base + LEDGER_PULSE_TIMESTAMP_DELTA;
        last_timestamp = timestamp;
        CHECK_EQ_U64(ledger_execute(ledger, OPERATION_PULSE, timestamp, NULL, 0, reply), 0);
}

static struct wire_account account(u128 id, uint32_t ledger_id, uint16_t code, uint16_t flags)
{
        struct wire_account a;
        memset(&a, 0, sizeof(a));
        a.id = id;
        a.ledger = ledger_id;
        a.code = code;
        a.flags = flags;
        return a;
}

static struct wire_transfer transfer(u128 id, u128 dr, u128 cr, u128 amount, uint16_t flags)
{
        struct wire_transfer t;
        memset(&t, 0, sizeof(t));
        t.id = id;
        t.debit_account_id = dr;
        t.credit_account_id = cr;
        t.amount = amount;
        t.ledger = 1;
        t.code = 1;
        t.flags = flags;
        return t;
}

/* Results of an unbatched create (129/130): the list of (index, result) records. */
static uint32_t create_accounts(const struct wire_account *a, uint32_t n,
                                struct wire_create_result *results)
{
        uint32_t size = run(OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED, a, n * 128);
        memcpy(results, reply, size);
        return size / 8;
}

static uint32_t create_transfers(const struct wire_transfer *t, uint32_t n,
                                 struct wire_create_result *results)
{
        uint32_t size = run(OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED, t, n * 128);
        memcpy(results, reply, size);
        return size / 8;
}

/* The result of a single-event create, 0 for ok. */
__attribute__((unused)) static uint32_t create_account1(struct wire_account a)
{
        struct wire_create_result r[1];
        uint32_t n = create_accounts(&a, 1, r);
        return n == 0 ? 0 : r[0].result;
}

static uint32_t create_transfer1(struct wire_transfer t)
{
        struct wire_create_result r[1];
        uint32_t n = create_transfers(&t, 1, r);
        return n == 0 ? 0 : r[0].result;
}

static bool lookup_account(u128 id, struct wire_account *out)
{
        uint32_t size = run(OPERATION_DEPRECATED_LOOKUP_ACCOUNTS_UNBATCHED, &id, 16);
        if (size == 0) return false;
        memcpy(out, reply, sizeof(*out));
        return true;
}

static bool lookup_transfer(u128 id, struct wire_transfer *out)
{
        uint32_t size = run(OPERATION_DEPRECATED_LOOKUP_TRANSFERS_UNBATCHED, &id, 16);
        if (size == 0) return false;
        memcpy(out, reply, sizeof(*out));
        return true;
}

static void check_balances(u128 id, u128 dp, u128 dpo, u128 cp, u128 cpo, int line)
{
        struct wire_account a;
        bool found = lookup_account(id, &a);
        if (!found || a.debits_pending != dp || a.debits_posted != dpo ||
            a.credits_pending != cp || a.credits_posted != cpo) {
                fprintf(stderr, "  balances of account %llu wrong (line %d)\n",
                        (unsigned long long)id, line);
                test_checks_failed_in_current++;
        }
}
#define CHECK_BALANCES(id, dp, dpo, cp, cpo) check_balances(id, dp, dpo, cp, cpo, __LINE__)

/* Two plain accounts 1 and 2 on ledger 1. */
static void setup_two(void)
{
        fresh();
        struct wire_account a[2] = {account(1, 1, 1, 0), account(2, 1, 1, 0)};
        struct wire_create_result r[2];
        tally_assert(create_accounts(a, 2, r) == 0);
}

static void test_smoke(void)
{
        setup_two();
        CHECK_EQ_U64(create_transfer1(transfer(10, 1, 2, 100, 0)), 0);
        CHECK_BALANCES(1, 0, 100, 0, 0);
        CHECK_BALANCES(2, 0, 0, 0, 100);
        struct wire_transfer t = {0};
        CHECK(lookup_transfer(10, &t));
        CHECK(t.amount == 100);
        CHECK(t.timestamp > 0);
        CHECK(!lookup_transfer(11, &t));
        struct ledger_stats stats;
        ledger_get_stats(ledger, &stats);
        CHECK_EQ_U64(stats.accounts, 2);
        CHECK_EQ_U64(stats.transfers, 1);
}

int main(void)
{
        TEST_RUN(test_smoke);
        if (ledger) ledger_destroy(ledger);
        TEST_MAIN_END();
}
