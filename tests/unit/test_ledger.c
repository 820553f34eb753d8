/*
 * test_ledger.c: the ledger's rules, table by table (ledger-semantics.md, result-codes.csv).
 *
 * Requests go through ledger_execute() exactly as the replica sends them, with timestamps from
 * TigerBeetle's rule (T = max(previous + 1, clock) + events), the clock advancing 1000 ns per
 * request unless a test moves it.
 */
#include "test.h"

#include "ledger/ledger.h"
#include "lsm/device_memory.h"
#include "wire/checksum.h"
#include "wire/multi_batch.h"
#include "wire/types.h"

#define MAX128 (~(u128)0)
#define MAX63 ((uint64_t)INT64_MAX)

static struct ledger *ledger;
static uint64_t clock_ns;
static uint64_t last_timestamp;
static uint8_t reply[LEDGER_BODY_SIZE_MAX];
static uint8_t body[LEDGER_BODY_SIZE_MAX];

/* When set, fresh() builds its ledgers with this configuration (a device of the test's). */
static const struct ledger_config *fresh_config;

static void fresh(void)
{
        if (ledger) ledger_destroy(ledger);
        struct ledger_config config = {
                .accounts_max = 10000, .transfers_max = 100000, .request_body_size_max = 0};
        if (fresh_config != NULL) config = *fresh_config;
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

static void pulse_at(uint64_t clock)
{
        clock_ns = clock;
        uint64_t base = MAX(last_timestamp + 1, clock_ns);
        uint64_t timestamp = base + LEDGER_PULSE_TIMESTAMP_DELTA;
        last_timestamp = timestamp;
        CHECK_EQ_U64(ledger_execute(ledger, OPERATION_PULSE, timestamp, NULL, 0, reply), 0);
}

/* Moves the clock so that the first event of the next create request gets `timestamp`. */
static void next_event_at(uint64_t timestamp)
{
        tally_assert(last_timestamp + 1 < timestamp - 1);
        clock_ns = timestamp - 1 - 1000; /* run() advances it by 1000; base + 1 is event 0 */
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
static uint32_t create_account1(struct wire_account a)
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

/* ------------------------------------------------------------------------------------------ */
/* create_accounts: every result code, and precedence when several rules are broken. */

enum {
        A_ACCOUNT_PLAIN = 1,
        A_ACCOUNT_LIMITED = 3, /* debits_must_not_exceed_credits */
};

struct account_case {
        const char *name;
        struct wire_account account;
        uint32_t expected;
};

/* Existing: account 1 (L1, C1, user data 7/8/9, flags 0); account 50 imported at ts 100. */
static void setup_accounts(void)
{
        fresh();
        struct wire_account a = account(1, 1, 1, 0);
        a.user_data_128 = 7;
        a.user_data_64 = 8;
        a.user_data_32 = 9;
        tally_assert(create_account1(a) == 0);
}

static void test_create_accounts_codes(void)
{
        const u128 X = 1000; /* a new id */
        const struct account_case cases[] = {
                {"ok", {.id = X, .ledger = 1, .code = 1}, 0},
                {"timestamp_must_be_zero", {.id = X, .ledger = 1, .code = 1, .timestamp = 5}, 3},
                {"reserved_field", {.id = X, .ledger = 1, .code = 1, .reserved = 1}, 4},
                {"reserved_flag", {.id = X, .ledger = 1, .code = 1, .flags = 0x40}, 5},
                {"reserved_flag top bit", {.id = X, .ledger = 1, .code = 1, .flags = 0x8000}, 5},
                {"id_must_not_be_zero", {.id = 0, .ledger = 1, .code = 1}, 6},
                {"id_must_not_be_int_max", {.id = MAX128, .ledger = 1, .code = 1}, 7},
                {"flags_are_mutually_exclusive", {.id = X, .ledger = 1, .code = 1, .flags = 6}, 8},
                {"debits_pending_must_be_zero",
                 {.id = X, .ledger = 1, .code = 1, .debits_pending = 1}, 9},
                {"debits_posted_must_be_zero", {.id = X, .ledger = 1, .code = 1, .debits_posted = 1},
                 10},
                {"credits_pending_must_be_zero",
                 {.id = X, .ledger = 1, .code = 1, .credits_pending = 1}, 11},
                {"credits_posted_must_be_zero",
                 {.id = X, .ledger = 1, .code = 1, .credits_posted = 1}, 12},
                {"ledger_must_not_be_zero", {.id = X, .ledger = 0, .code = 1}, 13},
                {"code_must_not_be_zero", {.id = X, .ledger = 1, .code = 0}, 14},
                {"exists_with_different_flags",
                 {.id = 1, .ledger = 1, .code = 1, .flags = 8, .user_data_128 = 7,
                  .user_data_64 = 8, .user_data_32 = 9}, 15},
                {"exists_with_different_user_data_128",
                 {.id = 1, .ledger = 1, .code = 1, .user_data_128 = 1, .user_data_64 = 8,
                  .user_data_32 = 9}, 16},
                {"exists_with_different_user_data_64",
                 {.id = 1, .ledger = 1, .code = 1, .user_data_128 = 7, .user_data_64 = 1,
                  .user_data_32 = 9}, 17},
                {"exists_with_different_user_data_32",
                 {.id = 1, .ledger = 1, .code = 1, .user_data_128 = 7, .user_data_64 = 8,
                  .user_data_32 = 1}, 18},
                {"exists_with_different_ledger",
                 {.id = 1, .ledger = 2, .code = 1, .user_data_128 = 7, .user_data_64 = 8,
                  .user_data_32 = 9}, 19},
                {"exists_with_different_code",
                 {.id = 1, .ledger = 1, .code = 2, .user_data_128 = 7, .user_data_64 = 8,
                  .user_data_32 = 9}, 20},
                {"exists (balances not compared, #7)",
                 {.id = 1, .ledger = 1, .code = 1, .user_data_128 = 7, .user_data_64 = 8,
                  .user_data_32 = 9, .debits_posted = 10}, 21},
                {"imported_event_timestamp_out_of_range 0",
                 {.id = X, .ledger = 1, .code = 1, .flags = 0x10, .timestamp = 0}, 24},
                {"imported_event_timestamp_out_of_range 2^63",
                 {.id = X, .ledger = 1, .code = 1, .flags = 0x10, .timestamp = 1ull << 63}, 24},
                {"imported_event_timestamp_must_not_advance",
                 {.id = X, .ledger = 1, .code = 1, .flags = 0x10, .timestamp = 1ull << 62}, 25},
                {"imported_event_timestamp_must_not_regress",
                 {.id = X, .ledger = 1, .code = 1, .flags = 0x10, .timestamp = 1}, 26},
                /* Several rules broken: the first in TigerBeetle's order wins. */
                {"#3 reserved_field before id", {.id = 0, .reserved = 1}, 4},
                {"#4 reserved_flag before id", {.id = 0, .flags = 0x40}, 5},
                {"#5 timestamp before reserved", {.id = X, .reserved = 1, .timestamp = 5}, 3},
                {"#8 exists before flags/ledger",
                 {.id = 1, .flags = 6, .user_data_128 = 7, .user_data_64 = 8, .user_data_32 = 9},
                 15},
                {"#9 user_data_128 before ledger",
                 {.id = 1, .ledger = 9, .code = 1, .user_data_128 = 2, .user_data_64 = 8,
                  .user_data_32 = 9}, 16},
                {"#14 balances before code", {.id = X, .ledger = 1, .credits_pending = 1}, 11},
                {"flags before balances", {.id = X, .flags = 6, .debits_pending = 1}, 8},
                {"ledger before code", {.id = X}, 13},
                {"id max before exists", {.id = MAX128, .reserved = 0, .flags = 6}, 7},
                {"out of range before reserved",
                 {.id = 0, .reserved = 1, .flags = 0x10, .timestamp = 0}, 24},
                {"regress after code", {.id = X, .ledger = 1, .flags = 0x10, .timestamp = 1}, 14},
                {"imported exists (#21)",
                 {.id = 1, .ledger = 1, .code = 1, .flags = 0x10, .timestamp = 4,
                  .user_data_128 = 7, .user_data_64 = 8, .user_data_32 = 9}, 15},
        };
        for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
                setup_accounts();
                uint32_t got = create_account1(cases[i].account);
                if (got != cases[i].expected) {
                        fprintf(stderr, "  %s: expected %u, got %u\n", cases[i].name,
                                cases[i].expected, got);
                        test_checks_failed_in_current++;
                }
        }
}

/* The batch-level codes: chains, imported mode. */
static void test_create_accounts_batches(void)
{
        struct wire_create_result r[8];
        struct wire_account a1 = account(1, 1, 1, 0), a2 = account(2, 1, 1, 0);
        struct wire_account a3 = account(3, 1, 1, 0), a4 = account(4, 1, 1, 0);
        struct wire_account l1 = account(1, 1, 1, 1), l2 = account(2, 1, 1, 1);
        struct wire_account l3 = account(3, 1, 1, 1);
        struct wire_account dummy;

        /* #1: a linked last event. */
        fresh();
        CHECK_EQ_U64(create_accounts(&l1, 1, r), 1);
        CHECK(r[0].index == 0 && r[0].result == 2);
        CHECK(!lookup_account(1, &dummy));

        /* #2 */
        fresh();
        struct wire_account b2[2] = {a1, l2};
        CHECK_EQ_U64(create_accounts(b2, 2, r), 1);
        CHECK(r[0].index == 1 && r[0].result == 2);
        CHECK(lookup_account(1, &dummy));
        CHECK(!lookup_account(2, &dummy));

        /* #10: stored with `linked`; re-sent alone it differs in flags. */
        fresh();
        struct wire_account b10[2] = {l1, a2};
        CHECK_EQ_U64(create_accounts(b10, 2, r), 0);
        CHECK_EQ_U64(create_account1(a1), 15);
        CHECK(lookup_account(1, &dummy) && dummy.flags == 1);

        /* #11: exists breaks a chain; nothing created. */
        fresh();
        struct wire_account b11[4] = {l1, l2, l1, a3};
        CHECK_EQ_U64(create_accounts(b11, 4, r), 4);
        CHECK(r[0].index == 0 && r[0].result == 1);
        CHECK(r[1].index == 1 && r[1].result == 1);
        CHECK(r[2].index == 2 && r[2].result == 21);
        CHECK(r[3].index == 3 && r[3].result == 1);
        CHECK(!lookup_account(1, &dummy) && !lookup_account(3, &dummy));
        /* Rolled-back ids may be reused. */
        CHECK_EQ_U64(create_account1(a1), 0);

        /* #12 */
        fresh();
        struct wire_account bad = account(3, 0, 1, 1);
        struct wire_account l4 = account(4, 1, 1, 1);
        struct wire_account b12[3] = {l2, bad, l4};
        CHECK_EQ_U64(create_accounts(b12, 3, r), 3);
        CHECK(r[0].index == 0 && r[0].result == 1);
        CHECK(r[1].index == 1 && r[1].result == 13);
        CHECK(r[2].index == 2 && r[2].result == 2);

        /* A failed chain followed by an independent event and a good chain. */
        fresh();
        struct wire_account b[6] = {l1, account(2, 0, 1, 0), a3, l3, a4, account(5, 1, 1, 0)};
        b[3].id = 6;
        CHECK_EQ_U64(create_accounts(b, 6, r), 2);
        CHECK(r[0].index == 0 && r[0].result == 1);
        CHECK(r[1].index == 1 && r[1].result == 13);
        CHECK(!lookup_account(1, &dummy));
        CHECK(lookup_account(3, &dummy) && lookup_account(6, &dummy) && lookup_account(4, &dummy));

        /* #16, #17: imported mode from the first event. */
        fresh();
        struct wire_account i1 = account(1, 1, 1, 0x10);
        i1.timestamp = 1;
        struct wire_account b16[2] = {i1, a2};
        CHECK_EQ_U64(create_accounts(b16, 2, r), 1);
        CHECK(r[0].index == 1 && r[0].result == 22);
        fresh();
        struct wire_account b17[2] = {a1, i1};
        b17[1].id = 2;
        CHECK_EQ_U64(create_accounts(b17, 2, r), 1);
        CHECK(r[0].index == 1 && r[0].result == 23);

        /* #20: regress inside the batch; #19: not advance relative to T_b. */
        fresh();
        struct wire_account i2 = account(2, 1, 1, 0x10);
        i1.timestamp = 2;
        i2.timestamp = 1;
        struct wire_account b20[2] = {i1, i2};
        CHECK_EQ_U64(create_accounts(b20, 2, r), 1);
        CHECK(r[0].index == 1 && r[0].result == 26);
        CHECK(lookup_account(1, &dummy) && dummy.timestamp == 2);
        /* The next request's T_b: base + 1 for one event. */
        i2.timestamp = MAX(last_timestamp + 1, clock_ns + 1000) + 1;
        i2.id = 3;
        CHECK_EQ_U64(create_account1(i2), 25);

        /* #22: an imported account may not reuse a transfer's timestamp. */
        fresh();
        struct wire_account ia = account(1, 1, 1, 0x10), ib = account(2, 1, 1, 0x10);
        ia.timestamp = 5;
        ib.timestamp = 6;
        struct wire_account bi[2] = {ia, ib};
        CHECK_EQ_U64(create_accounts(bi, 2, r), 0);
        struct wire_transfer it = transfer(1, 1, 2, 1, 0x100);
        it.timestamp = 10;
        CHECK_EQ_U64(create_transfer1(it), 0);
        struct wire_account ic = account(3, 1, 1, 0x10);
        ic.timestamp = 10;
        CHECK_EQ_U64(create_account1(ic), 26);
        ic.timestamp = 11;
        CHECK_EQ_U64(create_account1(ic), 0);
        /* Lower than a transfer's timestamp is fine for accounts, but not below accounts. */
        ic.id = 4;
        ic.timestamp = 7;
        CHECK_EQ_U64(create_account1(ic), 26);

        /* Empty batch (#75). */
        fresh();
        CHECK_EQ_U64(create_accounts(NULL, 0, r), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* create_transfers: every result code. */

/*
 * The world of every transfer case:
 *   accounts 1, 2 plain; 3 debits_must_not_exceed_credits; 4 credits_must_not_exceed_debits;
 *   5 on ledger 2; 6 created closed; 7 with history (all code 1, ledger 1 unless said);
 *   transfers 100: 1->2 10 (user data 1/2/3); 101: pending 1->2 15 (user data 4/5/6);
 *   102: pending 1->2 20 posted by 103; 104: pending 1->2 5 voided by 105;
 *   106 burned (debit_account_not_found).
 */
static void setup_world(void)
{
        fresh();
        struct wire_account a[7] = {
                account(1, 1, 1, 0), account(2, 1, 1, 0), account(3, 1, 1, 2),
                account(4, 1, 1, 4), account(5, 2, 1, 0), account(6, 1, 1, 0x20),
                account(7, 1, 1, 8),
        };
        struct wire_create_result r[8];
        tally_assert(create_accounts(a, 7, r) == 0);
        struct wire_transfer t[7] = {
                transfer(100, 1, 2, 10, 0),
                transfer(101, 1, 2, 15, TRANSFER_FLAG_PENDING),
                transfer(102, 1, 2, 20, TRANSFER_FLAG_PENDING),
                transfer(103, 0, 0, MAX128, TRANSFER_FLAG_POST_PENDING),
                transfer(104, 1, 2, 5, TRANSFER_FLAG_PENDING),
                transfer(105, 0, 0, 0, TRANSFER_FLAG_VOID_PENDING),
                transfer(106, 999, 2, 1, 0),
        };
        t[0].user_data_128 = 1;
        t[0].user_data_64 = 2;
        t[0].user_data_32 = 3;
        t[1].user_data_128 = 4;
        t[1].user_data_64 = 5;
        t[1].user_data_32 = 6;
        t[3].pending_id = 102;
        t[3].ledger = 0;
        t[3].code = 0;
        t[5].pending_id = 104;
        t[5].ledger = 0;
        t[5].code = 0;
        uint32_t n = create_transfers(t, 7, r);
        tally_assert(n == 1 && r[0].index == 6 && r[0].result == 21);
}

struct transfer_case {
        const char *name;
        struct wire_transfer t;
        uint32_t expected;
};

/* Defaults first, then the case's own fields (which may override them). */
#pragma GCC diagnostic ignored "-Woverride-init"
#define T_(...) ((struct wire_transfer){.ledger = 1, .code = 1, __VA_ARGS__})
#define POST TRANSFER_FLAG_POST_PENDING
#define VOID TRANSFER_FLAG_VOID_PENDING
#define PEND TRANSFER_FLAG_PENDING

static void test_create_transfers_codes(void)
{
        const u128 X = 500;
        const struct transfer_case cases[] = {
                {"ok", T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .amount = 1), 0},
                {"timestamp_must_be_zero",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .timestamp = 1), 3},
                {"reserved_flag", T_(.id = X, .debit_account_id = 1, .credit_account_id = 2,
                                     .flags = 0x200), 4},
                {"id_must_not_be_zero", T_(.id = 0, .debit_account_id = 1, .credit_account_id = 2),
                 5},
                {"id_must_not_be_int_max",
                 T_(.id = MAX128, .debit_account_id = 1, .credit_account_id = 2), 6},
                {"flags_are_mutually_exclusive post+void",
                 T_(.id = X, .pending_id = 101, .flags = POST | VOID), 7},
                {"flags_are_mutually_exclusive post+pending (#53)",
                 T_(.id = X, .pending_id = 101, .flags = POST | PEND), 7},
                {"flags_are_mutually_exclusive post+balancing (#53)",
                 T_(.id = X, .pending_id = 101, .flags = POST | 0x10), 7},
                {"flags_are_mutually_exclusive void+closing",
                 T_(.id = X, .pending_id = 101, .flags = VOID | 0x80), 7},
                {"debit_account_id_must_not_be_zero", T_(.id = X, .credit_account_id = 2), 8},
                {"debit_account_id_must_not_be_int_max",
                 T_(.id = X, .debit_account_id = MAX128, .credit_account_id = 2), 9},
                {"credit_account_id_must_not_be_zero", T_(.id = X, .debit_account_id = 1), 10},
                {"credit_account_id_must_not_be_int_max",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = MAX128), 11},
                {"accounts_must_be_different (#31)",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 1), 12},
                {"pending_id_must_be_zero",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .pending_id = 5), 13},
                {"pending_id_must_not_be_zero", T_(.id = X, .flags = POST), 14},
                {"pending_id_must_not_be_int_max", T_(.id = X, .pending_id = MAX128, .flags = POST),
                 15},
                {"pending_id_must_be_different (#52)", T_(.id = X, .pending_id = X, .flags = POST),
                 16},
                {"timeout_reserved_for_pending_transfer",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .timeout = 1), 17},
                {"timeout_reserved_for_pending_transfer (post)",
                 T_(.id = X, .pending_id = 101, .flags = POST, .timeout = 1), 17},
                {"ledger_must_not_be_zero",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .ledger = 0), 19},
                {"code_must_not_be_zero",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .code = 0), 20},
                {"debit_account_not_found",
                 T_(.id = X, .debit_account_id = 999, .credit_account_id = 2), 21},
                {"credit_account_not_found",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 999), 22},
                {"accounts_must_have_the_same_ledger (#32)",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 5), 23},
                {"transfer_must_have_the_same_ledger_as_accounts (#33)",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .ledger = 9), 24},
                {"pending_transfer_not_found", T_(.id = X, .pending_id = 999, .flags = POST), 25},
                {"pending_transfer_not_found: burned id (#68)",
                 T_(.id = X, .pending_id = 106, .flags = POST), 25},
                {"pending_transfer_not_pending (#51)", T_(.id = X, .pending_id = 100, .flags = VOID),
                 26},
                {"pending_transfer_has_different_debit_account_id (#54)",
                 T_(.id = X, .pending_id = 101, .flags = VOID, .debit_account_id = 3), 27},
                {"pending_transfer_has_different_credit_account_id",
                 T_(.id = X, .pending_id = 101, .flags = VOID, .credit_account_id = 3), 28},
                {"pending_transfer_has_different_ledger",
                 T_(.id = X, .pending_id = 101, .flags = VOID, .ledger = 2), 29},
                {"pending_transfer_has_different_code",
                 T_(.id = X, .pending_id = 101, .flags = VOID, .code = 2), 30},
                {"exceeds_pending_transfer_amount (#46)",
                 T_(.id = X, .pending_id = 101, .flags = POST, .amount = 16), 31},
                {"exceeds_pending_transfer_amount void MAX (#49)",
                 T_(.id = X, .pending_id = 101, .flags = VOID, .amount = MAX128), 31},
                {"exceeds_pending_transfer_amount MAX-1 (#47)",
                 T_(.id = X, .pending_id = 101, .flags = POST, .amount = MAX128 - 1), 31},
                {"pending_transfer_has_different_amount (#49)",
                 T_(.id = X, .pending_id = 101, .flags = VOID, .amount = 14), 32},
                {"pending_transfer_already_posted", T_(.id = X, .pending_id = 102, .flags = VOID),
                 33},
                {"pending_transfer_already_voided (#50)",
                 T_(.id = X, .pending_id = 104, .flags = POST), 34},
                {"exists_with_different_flags",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .flags = PEND), 36},
                {"exists_with_different_debit_account_id",
                 T_(.id = 100, .debit_account_id = 3, .credit_account_id = 2, .amount = 10), 37},
                {"exists_with_different_credit_account_id",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 3, .amount = 10), 38},
                {"exists_with_different_amount (#25, before code)",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 11,
                    .code = 2), 39},
                {"exists_with_different_pending_id (#27)",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .pending_id = 5), 40},
                {"exists_with_different_user_data_128",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 9, .user_data_64 = 2, .user_data_32 = 3), 41},
                {"exists_with_different_user_data_64",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 1, .user_data_64 = 9, .user_data_32 = 3), 42},
                {"exists_with_different_user_data_32",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 1, .user_data_64 = 2, .user_data_32 = 9), 43},
                {"exists_with_different_timeout (#26, before accounts)",
                 T_(.id = 101, .debit_account_id = 3, .credit_account_id = 2, .amount = 15,
                    .flags = PEND, .timeout = 2), 44},
                {"exists_with_different_ledger (#28)",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 1, .user_data_64 = 2, .user_data_32 = 3, .ledger = 2), 67},
                {"exists_with_different_code",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 1, .user_data_64 = 2, .user_data_32 = 3, .code = 2), 45},
                {"exists",
                 T_(.id = 100, .debit_account_id = 1, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 1, .user_data_64 = 2, .user_data_32 = 3), 46},
                {"exists post (inherited fields, MAX amount)",
                 T_(.id = 103, .pending_id = 102, .flags = POST, .amount = MAX128, .ledger = 0,
                    .code = 0), 46},
                {"exists post: amount 20 exact",
                 T_(.id = 103, .pending_id = 102, .flags = POST, .amount = 20, .ledger = 0,
                    .code = 0), 46},
                {"exists post: amount 0 differs",
                 T_(.id = 103, .pending_id = 102, .flags = POST, .amount = 0, .ledger = 0,
                    .code = 0), 39},
                {"exists void: amount 0 is the pending amount",
                 T_(.id = 105, .pending_id = 104, .flags = VOID, .ledger = 0, .code = 0), 46},
                {"exists void: ledger differs",
                 T_(.id = 105, .pending_id = 104, .flags = VOID, .ledger = 3, .code = 0), 67},
                {"exists void: user_data_64 differs from the inherited 0",
                 T_(.id = 105, .pending_id = 104, .flags = VOID, .user_data_64 = 3, .ledger = 0,
                    .code = 0), 42},
                {"exceeds_credits",
                 T_(.id = X, .debit_account_id = 3, .credit_account_id = 1, .amount = 1), 54},
                {"exceeds_credits pending",
                 T_(.id = X, .debit_account_id = 3, .credit_account_id = 1, .amount = 1,
                    .flags = PEND), 54},
                {"exceeds_debits",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 4, .amount = 1), 55},
                {"exceeds nothing at amount 0",
                 T_(.id = X, .debit_account_id = 3, .credit_account_id = 4, .amount = 0), 0},
                {"imported_event_timestamp_out_of_range",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .flags = 0x100), 58},
                {"imported_event_timestamp_must_not_advance",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .flags = 0x100,
                    .timestamp = 1ull << 62), 59},
                {"imported_event_timestamp_must_not_regress",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .flags = 0x100,
                    .timestamp = 1), 60},
                {"imported_event_timestamp_must_not_regress post",
                 T_(.id = X, .pending_id = 101, .flags = POST | 0x100, .timestamp = 1), 60},
                {"closing_transfer_must_be_pending (#30)",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .flags = 0x40), 64},
                {"debit_account_already_closed",
                 T_(.id = X, .debit_account_id = 6, .credit_account_id = 2), 65},
                {"credit_account_already_closed",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 6), 66},
                {"id_already_failed", T_(.id = 106, .debit_account_id = 1, .credit_account_id = 2),
                 68},
                /* Several rules broken: the first in TigerBeetle's order wins. */
                {"#24 reserved_flag before id", T_(.id = 0, .flags = 0x200), 4},
                {"#29 timeout before ledger",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .timeout = 1,
                    .ledger = 0), 17},
                {"id_already_failed before everything else",
                 T_(.id = 106, .debit_account_id = 0, .credit_account_id = 0, .flags = POST), 68},
                {"exists before validation",
                 T_(.id = 100, .debit_account_id = 0, .credit_account_id = 2, .amount = 10,
                    .user_data_128 = 1, .user_data_64 = 2, .user_data_32 = 3), 37},
                {"not found before ledger mismatch",
                 T_(.id = X, .debit_account_id = 999, .credit_account_id = 5, .ledger = 9), 21},
                {"closed after ledger checks",
                 T_(.id = X, .debit_account_id = 6, .credit_account_id = 5), 23},
                {"debit closed before credit closed",
                 T_(.id = X, .debit_account_id = 6, .credit_account_id = 6), 12},
                {"post amount checks before status (#58 analogue)",
                 T_(.id = X, .pending_id = 102, .flags = POST, .amount = 21), 31},
                {"post: credit id before ledger",
                 T_(.id = X, .pending_id = 101, .flags = POST, .credit_account_id = 9, .ledger = 9),
                 28},
                {"pending_id zero before timeout", T_(.id = X, .flags = VOID, .timeout = 1), 14},
                {"closing before ledger zero",
                 T_(.id = X, .debit_account_id = 1, .credit_account_id = 2, .flags = 0x80,
                    .ledger = 0), 64},
                {"imported mode before reserved_flag",
                 T_(.id = 0, .flags = 0x300, .timestamp = 0), 58},
        };
        for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
                setup_world();
                uint32_t got = create_transfer1(cases[i].t);
                if (got != cases[i].expected) {
                        fprintf(stderr, "  %s: expected %u, got %u\n", cases[i].name,
                                cases[i].expected, got);
                        test_checks_failed_in_current++;
                }
        }
}

/* Codes that need their own world: overflows, imported postdating, batch modes. */
static void test_create_transfers_codes_special(void)
{
        struct wire_create_result r[8];
        /* #36..#38 and the other overflow codes. */
        setup_two();
        CHECK_EQ_U64(create_account1(account(3, 1, 1, 0)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(1, 1, 2, MAX128 - 5, 0)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(2, 1, 2, 6, PEND)), 49); /* debits_posted */
        CHECK_EQ_U64(create_transfer1(transfer(3, 3, 2, 6, PEND)), 50); /* credits_posted */
        setup_two();
        CHECK_EQ_U64(create_account1(account(3, 1, 1, 0)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(1, 1, 2, MAX128 - 5, PEND)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(2, 1, 2, 6, 0)), 51);    /* overflows_debits */
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 2, 6, PEND)), 47); /* debits_pending */
        CHECK_EQ_U64(create_transfer1(transfer(4, 3, 2, 6, PEND)), 48); /* credits_pending */
        CHECK_EQ_U64(create_transfer1(transfer(5, 3, 2, 6, 0)), 52);    /* overflows_credits */
        CHECK_EQ_U64(create_transfer1(transfer(6, 3, 2, 5, 0)), 0);     /* exactly MAX */

        /* overflows_timeout: a cluster timestamp near 2^63. */
        setup_two();
        clock_ns = 5000000000000000000ull;
        struct wire_transfer big = transfer(1, 1, 2, 1, PEND);
        big.timeout = UINT32_MAX;
        CHECK_EQ_U64(create_transfer1(big), 53);
        big.timeout = 1;
        CHECK_EQ_U64(create_transfer1(big), 0);

        /* Imported postdating (#69) and timeout (#70). */
        fresh();
        struct wire_account ia[3] = {account(1, 1, 1, 0x10), account(2, 1, 1, 0x10),
                                     account(3, 1, 1, 0x10)};
        ia[0].timestamp = 1;
        ia[1].timestamp = 2;
        ia[2].timestamp = 9;
        CHECK_EQ_U64(create_accounts(ia, 3, r), 0);
        struct wire_transfer it = transfer(10, 1, 2, 1, 0x100);
        it.timestamp = 2;
        CHECK_EQ_U64(create_transfer1(it), 60);
        it = transfer(10, 3, 2, 1, 0x100);
        it.timestamp = 4;
        CHECK_EQ_U64(create_transfer1(it), 61);
        it = transfer(10, 1, 3, 1, 0x100);
        it.timestamp = 4;
        CHECK_EQ_U64(create_transfer1(it), 62);
        it = transfer(10, 1, 2, 1, 0x100 | PEND);
        it.timestamp = 4;
        it.timeout = 1;
        CHECK_EQ_U64(create_transfer1(it), 63);
        it = transfer(10, 1, 2, 1, 0x100);
        it.timestamp = 4;
        it.timeout = 1;
        CHECK_EQ_U64(create_transfer1(it), 17);
        it.timeout = 0;
        CHECK_EQ_U64(create_transfer1(it), 0);
        struct wire_transfer got;
        CHECK(lookup_transfer(10, &got) && got.timestamp == 4 && got.flags == 0x100);
        /* Imported re-submission: exists whatever the timestamp. */
        it.timestamp = 3;
        CHECK_EQ_U64(create_transfer1(it), 46);
        /* Imported pending, then an imported post with a later timestamp. */
        it = transfer(11, 1, 2, 5, 0x100 | PEND);
        it.timestamp = 20;
        CHECK_EQ_U64(create_transfer1(it), 0);
        it = transfer(12, 0, 0, MAX128, 0x100 | POST);
        it.pending_id = 11;
        it.timestamp = 20; /* not after p: the deliberate deviation (no crash) */
        CHECK_EQ_U64(create_transfer1(it), 60);
        it.timestamp = 21;
        CHECK_EQ_U64(create_transfer1(it), 0);
        CHECK_BALANCES(1, 0, 6, 0, 0);

        /* Batch modes (56, 57) and chain codes for transfers. */
        setup_two();
        struct wire_transfer imp = transfer(1, 1, 2, 1, 0x100);
        imp.timestamp = 10;
        struct wire_transfer b1[2] = {imp, transfer(2, 1, 2, 1, 0)};
        CHECK_EQ_U64(create_transfers(b1, 2, r), 2);
        CHECK(r[0].index == 0 && r[0].result == 61); /* older than its debit account */
        CHECK(r[1].index == 1 && r[1].result == 56);
        struct wire_transfer b2[2] = {transfer(3, 1, 2, 1, 0), imp};
        CHECK_EQ_U64(create_transfers(b2, 2, r), 1);
        CHECK(r[0].index == 1 && r[0].result == 57);
        struct wire_transfer b3[1] = {transfer(4, 1, 2, 1, TRANSFER_FLAG_LINKED)};
        CHECK_EQ_U64(create_transfers(b3, 1, r), 1);
        CHECK(r[0].index == 0 && r[0].result == 2);
}

static void test_linked_transfers(void)
{
        struct wire_create_result r[8];
        struct wire_transfer got;
        /* #66: rollback restores balances; transient id burned, others reusable. */
        fresh();
        struct wire_account a[3] = {account(1, 1, 1, 0), account(2, 1, 1, 0),
                                    account(3, 1, 1, 4)};
        CHECK_EQ_U64(create_accounts(a, 3, r), 0);
        CHECK_EQ_U64(create_transfer1(transfer(9, 2, 1, 40, 0)), 0);
        struct wire_transfer t3 = transfer(3, 0, 0, 0, VOID | TRANSFER_FLAG_LINKED);
        t3.pending_id = 2;
        t3.flags = VOID;
        struct wire_transfer b[3] = {
                transfer(1, 1, 2, 41, TRANSFER_FLAG_LINKED),
                transfer(2, 2, 3, 1, TRANSFER_FLAG_LINKED | PEND | 0x10),
                t3,
        };
        CHECK_EQ_U64(create_transfers(b, 3, r), 3);
        CHECK(r[0].index == 0 && r[0].result == 1);
        CHECK(r[1].index == 1 && r[1].result == 55);
        CHECK(r[2].index == 2 && r[2].result == 1);
        CHECK_BALANCES(1, 0, 0, 0, 40);
        CHECK_BALANCES(2, 0, 40, 0, 0);
        CHECK(!lookup_transfer(1, &got));
        CHECK_EQ_U64(create_transfer1(transfer(1, 1, 2, 1, 0)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(2, 1, 2, 1, 0)), 68);

        /* #67: a void may refer to a pending created earlier in the same chain. */
        setup_two();
        struct wire_transfer v = transfer(2, 0, 0, 0, VOID | TRANSFER_FLAG_LINKED);
        v.pending_id = 1;
        struct wire_transfer b67[3] = {transfer(1, 1, 2, 7, PEND | TRANSFER_FLAG_LINKED), v,
                                       transfer(3, 1, 2, 1, 0)};
        CHECK_EQ_U64(create_transfers(b67, 3, r), 0);
        CHECK_BALANCES(1, 0, 1, 0, 0);

        /* A chain with a post of an outside pending, rolled back: the pending is pending
         * again, balances and closed bits restored. */
        setup_two();
        CHECK_EQ_U64(create_transfer1(transfer(1, 1, 2, 10, PEND | 0x40)), 0); /* closes 1 */
        struct wire_account acc;
        CHECK(lookup_account(1, &acc) && (acc.flags & 0x20));
        struct wire_transfer vv = transfer(2, 0, 0, 0, VOID | TRANSFER_FLAG_LINKED);
        vv.pending_id = 1;
        struct wire_transfer bad = transfer(3, 1, 2, 1, 0); /* 1 is closed again? no: reopened */
        bad.ledger = 0;
        struct wire_transfer bc[2] = {vv, bad};
        CHECK_EQ_U64(create_transfers(bc, 2, r), 2);
        CHECK(r[0].result == 1 && r[1].result == 19);
        CHECK(lookup_account(1, &acc) && (acc.flags & 0x20));
        CHECK_BALANCES(1, 10, 0, 0, 0);
        vv.flags = VOID;
        CHECK_EQ_U64(create_transfer1(vv), 0); /* #62: re-opened */
        CHECK(lookup_account(1, &acc) && !(acc.flags & 0x20));
        CHECK_BALANCES(1, 0, 0, 0, 0);
        CHECK_EQ_U64(create_account1(account(1, 1, 1, 0)), 21);
}

static void test_balancing_and_posting(void)
{
        struct wire_transfer got;
        /* #39, #40 */
        fresh();
        struct wire_create_result r[4];
        struct wire_account a[4] = {account(1, 1, 1, 2), account(2, 1, 1, 0),
                                    account(3, 1, 1, 0), account(4, 1, 1, 0)};
        CHECK_EQ_U64(create_accounts(a, 4, r), 0);
        CHECK_EQ_U64(create_transfer1(transfer(1, 2, 1, 20, 0)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(2, 1, 2, 10, 0)), 0);
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 3, MAX128, 0x10)), 0);
        CHECK(lookup_transfer(3, &got) && got.amount == 10);
        CHECK_BALANCES(1, 0, 20, 0, 20);
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 3, 10, 0x10)), 46);
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 3, 9, 0x10)), 39);
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 3, MAX128, 0x10)), 46);
        /* #42: no balance to balance: amount 0, ok. */
        CHECK_EQ_U64(create_transfer1(transfer(4, 4, 3, 99, 0x30)), 0);
        CHECK(lookup_transfer(4, &got) && got.amount == 0);

        /* #44..#48, #55 */
        setup_two();
        struct wire_transfer p = transfer(1, 1, 2, 15, PEND);
        p.user_data_128 = 9;
        p.user_data_32 = 4;
        CHECK_EQ_U64(create_transfer1(p), 0);
        struct wire_transfer post = transfer(2, 0, 0, 13, POST);
        post.pending_id = 1;
        post.ledger = 0;
        post.code = 0;
        post.user_data_64 = 7;
        CHECK_EQ_U64(create_transfer1(post), 0);
        CHECK_BALANCES(1, 0, 13, 0, 0);
        CHECK(lookup_transfer(2, &got));
        CHECK(got.amount == 13 && got.user_data_128 == 9 && got.user_data_64 == 7 &&
              got.user_data_32 == 4 && got.debit_account_id == 1 && got.ledger == 1 &&
              got.timeout == 0 && got.pending_id == 1);
        post.amount = 0;
        CHECK_EQ_U64(create_transfer1(post), 39);
        post.amount = MAX128;
        CHECK_EQ_U64(create_transfer1(post), 39);
        post.amount = 13;
        CHECK_EQ_U64(create_transfer1(post), 46);
        /* #48: post 0 resolves the pending */
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 2, 1, PEND)), 0);
        struct wire_transfer post0 = transfer(4, 0, 0, 0, POST);
        post0.pending_id = 3;
        CHECK_EQ_U64(create_transfer1(post0), 0);
        CHECK_BALANCES(1, 0, 13, 0, 0);
        struct wire_transfer void3 = transfer(5, 0, 0, 0, VOID);
        void3.pending_id = 3;
        CHECK_EQ_U64(create_transfer1(void3), 33);
}

/* ------------------------------------------------------------------------------------------ */
/* Timeouts and expiry through pulse (#56, #57, #58, #64 and code 35). */

static void test_expiry(void)
{
        struct wire_transfer got;
        struct wire_account acc;
        setup_two();
        /* P at timestamp t with a 1 s timeout. */
        CHECK_EQ_U64(create_transfer1(transfer(1, 1, 2, 15, PEND)), 0);
        struct wire_transfer pt = transfer(1, 1, 2, 15, PEND);
        pt.id = 2;
        pt.timeout = 1;
        CHECK_EQ_U64(create_transfer1(pt), 0);
        CHECK(lookup_transfer(2, &got));
        uint64_t t = got.timestamp;
        uint64_t expires = t + 1000000000ull;
        CHECK(!ledger_pulse_needed(ledger, expires - 1));
        CHECK(ledger_pulse_needed(ledger, expires));

        /* The last moment a post is still possible: event timestamp expires - 1. */
        struct wire_transfer post = transfer(3, 0, 0, 5, POST);
        post.pending_id = 2;
        next_event_at(expires - 1);
        CHECK_EQ_U64(create_transfer1(post), 0);
        CHECK(lookup_transfer(3, &got) && got.timestamp == expires - 1);
        CHECK_BALANCES(1, 15, 5, 0, 0);

        /* #56: a second one, posted at exactly its expiry, before any pulse. */
        pt.id = 4;
        CHECK_EQ_U64(create_transfer1(pt), 0);
        CHECK(lookup_transfer(4, &got));
        expires = got.timestamp + 1000000000ull;
        next_event_at(expires);
        post.id = 5;
        post.pending_id = 4;
        CHECK_EQ_U64(create_transfer1(post), 35);
        CHECK_BALANCES(1, 30, 5, 0, 0); /* still pending until the pulse */
        /* #58: amount checks come first. */
        post.amount = 16;
        CHECK_EQ_U64(create_transfer1(post), 31);
        post.amount = 5;

        /* #57: the pulse releases it; later post/void: expired. */
        CHECK(ledger_pulse_needed(ledger, clock_ns));
        pulse_at(clock_ns);
        CHECK(!ledger_pulse_needed(ledger, MAX63));
        CHECK_BALANCES(1, 15, 5, 0, 0);
        CHECK_BALANCES(2, 0, 0, 15, 5);
        struct wire_transfer v = transfer(6, 0, 0, 0, VOID);
        v.pending_id = 4;
        CHECK_EQ_U64(create_transfer1(v), 35);
        CHECK(!lookup_transfer(6, &got));
        /* Expired is not transient: id 6 can be used. */
        CHECK_EQ_U64(create_transfer1(transfer(6, 1, 2, 1, 0)), 0);
        /* Transfer 1 (no timeout) is unaffected. */
        v.id = 7;
        v.pending_id = 1;
        CHECK_EQ_U64(create_transfer1(v), 0);
        CHECK_BALANCES(1, 0, 6, 0, 0);

        /* #64: a closing pending with a timeout re-opens its account on expiry. */
        setup_two();
        struct wire_transfer c = transfer(1, 1, 2, 3, PEND | 0x80);
        c.timeout = 2;
        CHECK_EQ_U64(create_transfer1(c), 0);
        CHECK(lookup_account(2, &acc) && (acc.flags & 0x20));
        CHECK_EQ_U64(create_transfer1(transfer(2, 1, 2, 1, 0)), 66);
        pulse_at(clock_ns + 1000000000ull); /* too early: nothing expires */
        CHECK(lookup_account(2, &acc) && (acc.flags & 0x20));
        pulse_at(clock_ns + 2000000000ull);
        CHECK(lookup_account(2, &acc) && !(acc.flags & 0x20));
        CHECK_BALANCES(2, 0, 0, 0, 0);
        CHECK_EQ_U64(create_transfer1(transfer(3, 1, 2, 1, 0)), 0);

        /* A post removes the expiry: a later pulse changes nothing. */
        setup_two();
        pt = transfer(1, 1, 2, 10, PEND);
        pt.timeout = 1;
        CHECK_EQ_U64(create_transfer1(pt), 0);
        post = transfer(2, 0, 0, MAX128, POST);
        post.pending_id = 1;
        CHECK_EQ_U64(create_transfer1(post), 0);
        CHECK(!ledger_pulse_needed(ledger, MAX63));
        pulse_at(clock_ns + 5000000000ull);
        CHECK_BALANCES(1, 0, 10, 0, 0);

        /* Expiry order and the 8190 limit per pulse. */
        setup_two();
        static struct wire_transfer many[8195];
        for (uint32_t i = 0; i < 8195; i++) {
                many[i] = transfer(1000 + i, 1, 2, 1, PEND);
                many[i].timeout = 1 + (i % 3 == 0); /* some expire later */
        }
        run(OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED, many, 8190 * 128);
        CHECK_EQ_U64(create_transfers(many + 8190, 5, (struct wire_create_result *)body), 0);
        CHECK_BALANCES(1, 8195, 0, 0, 0);
        pulse_at(clock_ns + 3000000000ull);
        CHECK_BALANCES(1, 5, 0, 0, 0);
        CHECK(ledger_pulse_needed(ledger, clock_ns + 3000000000ull));
        pulse_at(clock_ns + 1);
        CHECK_BALANCES(1, 0, 0, 0, 0);
        /* The 5 left for the second pulse were the latest-expiring ones. */
        for (uint32_t i = 8190; i < 8195; i++) {
                struct wire_transfer vo = transfer(20000 + i, 0, 0, 0, VOID);
                vo.pending_id = 1000 + i;
                CHECK_EQ_U64(create_transfer1(vo), 35);
        }
        struct ledger_stats stats;
        ledger_get_stats(ledger, &stats);
        CHECK_EQ_U64(stats.pending_live, 0);
}


/* ------------------------------------------------------------------------------------------ */
/* Input validation (every operation), multi-batch execution. */

/* A multi-batch body of `batches` batches with the given element counts (zeroed elements). */
static uint32_t multi_body(uint32_t element_size, const uint32_t *counts, uint32_t batches)
{
        struct multi_batch_encoder e;
        multi_batch_encoder_init(&e, body, sizeof(body), element_size);
        for (uint32_t i = 0; i < batches; i++) {
                uint32_t room;
                uint8_t *out = multi_batch_encoder_writable(&e, &room);
                tally_assert(out != NULL && counts[i] <= room);
                memset(out, 0, (size_t)counts[i] * element_size);
                multi_batch_encoder_add(&e, counts[i]);
        }
        return multi_batch_encoder_finish(&e);
}

static void set_filter_limit(uint32_t element_size, uint32_t index, uint32_t limit)
{
        uint32_t offset = element_size == 128 ? 120 : 56;
        memcpy(body + (size_t)index * element_size + offset, &limit, 4);
}

static void test_input_validation(void)
{
        fresh();
        CHECK(!ledger_operation_valid(OPERATION_PULSE));
        CHECK(!ledger_operation_valid(0));
        CHECK(!ledger_operation_valid(146));
        for (uint32_t op = 129; op <= 145; op++) CHECK(ledger_operation_valid((uint8_t)op));
        CHECK(!ledger_input_valid(ledger, 146, body, 0));

        /* Creates and lookups: 0 .. 8189 events per batch (multi), 8190 (unbatched). */
        const uint8_t batched_ops[4] = {138, 139, 140, 141};
        for (int k = 0; k < 4; k++) {
                uint8_t op = batched_ops[k];
                uint32_t e = op <= 139 ? 128 : 16;
                uint32_t counts[3] = {8189, 0, 0};
                CHECK(ledger_input_valid(ledger, op, body, multi_body(e, counts, 1)));
                counts[0] = 0;
                CHECK(ledger_input_valid(ledger, op, body, multi_body(e, counts, 1)));
                if (op >= 140) {
                        counts[0] = 8190; /* fits the request, but not the reply */
                        CHECK(!ledger_input_valid(ledger, op, body, multi_body(e, counts, 1)));
                }
                counts[0] = 2;
                counts[1] = 0;
                counts[2] = 1;
                uint32_t size = multi_body(e, counts, 3);
                CHECK(ledger_input_valid(ledger, op, body, size));
                CHECK(!ledger_input_valid(ledger, op, body, size - 1));
                CHECK(!ledger_input_valid(ledger, op, body, size + e));
                CHECK(!ledger_input_valid(ledger, op, body, 0)); /* no trailer */
                body[size - e] = 0; /* damage the padding */
                CHECK(!ledger_input_valid(ledger, op, body, size));
                /* unbatched */
                uint8_t old = (uint8_t)(op - 9);
                CHECK(ledger_input_valid(ledger, old, body, 0));
                CHECK(ledger_input_valid(ledger, old, body, e * 3));
                CHECK(!ledger_input_valid(ledger, old, body, e * 3 + 8));
                if (op <= 139) {
                        CHECK(ledger_input_valid(ledger, old, body, 8190 * 128));
                        CHECK(!ledger_input_valid(ledger, old, body, 8190 * 128 + 128));
                } else {
                        CHECK(ledger_input_valid(ledger, old, body, 8190 * 16));
                        CHECK(!ledger_input_valid(ledger, old, body, 8191 * 16));
                }
        }
        /* 8190 creates do not fit a multi-batch request within the 1 MiB body. */
        CHECK(!ledger_input_valid(ledger, 139, body, 8190 * 128 + 128));

        /* Queries: exactly one filter per batch; the worst-case reply must fit. */
        const uint8_t query_ops[4] = {142, 143, 144, 145};
        for (int k = 0; k < 4; k++) {
                uint8_t op = query_ops[k];
                uint32_t e = op <= 143 ? 128 : 64;
                uint32_t counts[2] = {1, 1};
                uint32_t size = multi_body(e, counts, 1);
                CHECK(ledger_input_valid(ledger, op, body, size)); /* limit 0: fits */
                counts[0] = 2;
                CHECK(!ledger_input_valid(ledger, op, body, multi_body(e, counts, 1)));
                counts[0] = 0;
                CHECK(!ledger_input_valid(ledger, op, body, multi_body(e, counts, 1)));
                counts[0] = 1;
                size = multi_body(e, counts, 2);
                set_filter_limit(e, 0, 8189);
                set_filter_limit(e, 1, 1);
                CHECK(!ledger_input_valid(ledger, op, body, size));
                set_filter_limit(e, 0, 8000);
                set_filter_limit(e, 1, 100);
                CHECK(ledger_input_valid(ledger, op, body, size));
                set_filter_limit(e, 1, UINT32_MAX);
                CHECK(!ledger_input_valid(ledger, op, body, size));
                size = multi_body(e, counts, 1);
                set_filter_limit(e, 0, UINT32_MAX); /* clamped to 8189: fits alone */
                CHECK(ledger_input_valid(ledger, op, body, size));
                uint8_t old = (uint8_t)(op - 9);
                CHECK(ledger_input_valid(ledger, old, body, e));
                CHECK(!ledger_input_valid(ledger, old, body, 2 * e));
                CHECK(!ledger_input_valid(ledger, old, body, 0));
        }
        CHECK(ledger_input_valid(ledger, OPERATION_GET_CHANGE_EVENTS, body, 64));
        CHECK(!ledger_input_valid(ledger, OPERATION_GET_CHANGE_EVENTS, body, 128));
        CHECK(!ledger_input_valid(ledger, OPERATION_GET_CHANGE_EVENTS, body, 0));

        /* A smaller request limit (--development: 32 KiB - 256) allows 253 creates. */
        ledger_destroy(ledger);
        struct ledger_config config = {
                .accounts_max = 100, .transfers_max = 100, .request_body_size_max = 32512};
        ledger = ledger_create(&config);
        tally_assert(ledger != NULL);
        uint32_t counts[1] = {253};
        CHECK(ledger_input_valid(ledger, 138, body, multi_body(128, counts, 1)));
        counts[0] = 2031;
        CHECK(ledger_input_valid(ledger, 140, body, multi_body(16, counts, 1)));
        counts[0] = 2032;
        CHECK(!ledger_input_valid(ledger, 140, body, multi_body(16, counts, 1)));

        /* Capacity: 100 accounts at most. */
        counts[0] = 100;
        uint32_t size = multi_body(128, counts, 1);
        CHECK(ledger_capacity_available(ledger, 138, body, size, 0));
        CHECK(!ledger_capacity_available(ledger, 138, body, size, 1));
        CHECK(ledger_capacity_available(ledger, 140, body, 16 + 16, 1000));
        ledger_destroy(ledger);
        ledger = NULL;
}

static void test_multi_batch_execution(void)
{
        fresh();
        /* Three calls merged: 2, 0 and 1 accounts; the third is a duplicate of the first. */
        struct wire_account a[3] = {account(1, 1, 1, 0), account(2, 1, 1, 0), account(1, 1, 1, 0)};
        struct multi_batch_encoder e;
        multi_batch_encoder_init(&e, body, sizeof(body), 128);
        uint32_t room;
        memcpy(multi_batch_encoder_writable(&e, &room), a, 256);
        multi_batch_encoder_add(&e, 2);
        multi_batch_encoder_writable(&e, &room);
        multi_batch_encoder_add(&e, 0);
        memcpy(multi_batch_encoder_writable(&e, &room), &a[2], 128);
        multi_batch_encoder_add(&e, 1);
        uint32_t size = multi_batch_encoder_finish(&e);
        CHECK_EQ_U64(ledger_timestamp_delta(138, body, size), 3);
        uint32_t reply_size = run(138, body, size);
        uint64_t T = last_timestamp;
        uint8_t expected[16] = {0, 0, 0, 0, 0x15, 0, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0};
        CHECK_EQ_U64(reply_size, 16);
        CHECK(memcmp(reply, expected, 16) == 0);
        struct wire_account got;
        CHECK(lookup_account(1, &got) && got.timestamp == T - 2);
        CHECK(lookup_account(2, &got) && got.timestamp == T - 1);

        /* Multi-batch lookups: one reply batch per request batch. */
        u128 ids[3] = {1, 99, 2};
        multi_batch_encoder_init(&e, body, sizeof(body), 16);
        memcpy(multi_batch_encoder_writable(&e, &room), ids, 32);
        multi_batch_encoder_add(&e, 2);
        memcpy(multi_batch_encoder_writable(&e, &room), &ids[2], 16);
        multi_batch_encoder_add(&e, 1);
        size = multi_batch_encoder_finish(&e);
        CHECK_EQ_U64(ledger_timestamp_delta(140, body, size), 0);
        reply_size = run(140, body, size);
        struct multi_batch_decoder d;
        CHECK(multi_batch_decode_init(&d, reply, reply_size, 128));
        CHECK_EQ_U64(d.batch_count, 2);
        CHECK_EQ_U64(multi_batch_decode_count(&d, 0), 1);
        CHECK_EQ_U64(multi_batch_decode_count(&d, 1), 1);

        /* Empty create batch: the reply is an empty batch (#75). */
        uint32_t zero = 0;
        size = multi_body(128, &zero, 1);
        CHECK_EQ_U64(run(139, body, size), 8);
        CHECK_EQ_U64(ledger_timestamp_delta(OPERATION_PULSE, NULL, 0), 8190);
}

/* ------------------------------------------------------------------------------------------ */
/* Queries. */

static uint32_t account_transfers(uint8_t op, struct wire_account_filter f, void *out)
{
        uint32_t size = run(op, &f, sizeof(f));
        memcpy(out, reply, size);
        return size / 128;
}

static void test_queries(void)
{
        fresh();
        struct wire_create_result r[8];
        struct wire_account a[3] = {account(1, 1, 1, 8), account(2, 1, 1, 0), account(3, 2, 5, 0)};
        a[1].user_data_64 = 77;
        CHECK_EQ_U64(create_accounts(a, 3, r), 0);
        /* Transfers 10..19 alternating direction; 13 pending, posted by 20. */
        for (uint32_t i = 0; i < 10; i++) {
                struct wire_transfer t = transfer(10 + i, i % 2 ? 2 : 1, i % 2 ? 1 : 2, i + 1,
                                                  i == 3 ? PEND : 0);
                t.user_data_32 = i % 3;
                t.code = (uint16_t)(1 + i % 2);
                CHECK_EQ_U64(create_transfer1(t), 0);
        }
        struct wire_transfer post = transfer(20, 0, 0, MAX128, POST);
        post.pending_id = 13;
        post.code = 0;
        CHECK_EQ_U64(create_transfer1(post), 0);
        static struct wire_transfer ts[16];
        static struct wire_account_balance bs[16];
        struct wire_transfer t10, t15;
        CHECK(lookup_transfer(10, &t10) && lookup_transfer(15, &t15));

        struct wire_account_filter f = {.account_id = 1, .limit = 100, .flags = 3};
        CHECK_EQ_U64(account_transfers(133, f, ts), 11);
        CHECK(ts[0].id == 10 && ts[10].id == 20);
        f.flags = 1; /* debits of 1: transfers 10, 12, 14, 16, 18 */
        CHECK_EQ_U64(account_transfers(133, f, ts), 5);
        f.flags = 2 | 4; /* credits, reversed: 20 (the post of 13, 2 -> 1), 19, ..., 11 */
        CHECK_EQ_U64(account_transfers(133, f, ts), 6);
        CHECK(ts[0].id == 20 && ts[5].id == 11);
        f.flags = 3;
        f.limit = 2;
        f.flags |= 4;
        CHECK_EQ_U64(account_transfers(133, f, ts), 2);
        CHECK(ts[0].id == 20 && ts[1].id == 19);
        f = (struct wire_account_filter){.account_id = 1, .limit = 100, .flags = 3,
                                         .timestamp_min = t10.timestamp + 1,
                                         .timestamp_max = t15.timestamp};
        CHECK_EQ_U64(account_transfers(133, f, ts), 5);
        CHECK(ts[0].id == 11 && ts[4].id == 15);
        f.code = 2;
        CHECK_EQ_U64(account_transfers(133, f, ts), 3);
        f.code = 0;
        f.user_data_32 = 2;
        CHECK_EQ_U64(account_transfers(133, f, ts), 2); /* 11 and 14 */
        /* Balances of account 1 (history) over the same selection. */
        f.user_data_32 = 0;
        CHECK_EQ_U64(account_transfers(134, f, bs), 5);
        struct wire_transfer t11;
        CHECK(lookup_transfer(11, &t11) && bs[0].timestamp == t11.timestamp);
        /* after 11 (2 -> 1, amount 2): debits 1, credits 2 */
        CHECK(bs[0].debits_posted == 1 && bs[0].credits_posted == 2);
        /* after 13 (pending 2 -> 1, amount 4); 12 (1 -> 2, 3) came before */
        CHECK(bs[2].credits_pending == 4 && bs[2].debits_posted == 4);
        CHECK(bs[2].credits_posted == 2 && bs[2].debits_pending == 0);
        f.account_id = 2; /* no history flag */
        CHECK_EQ_U64(account_transfers(134, f, bs), 0);
        /* Invalid filters: empty (#72). */
        struct wire_account_filter bad[] = {
                {.account_id = 1, .limit = 10, .flags = 0},
                {.account_id = 1, .limit = 0, .flags = 3},
                {.account_id = 1, .limit = 10, .flags = 3, .timestamp_min = 5, .timestamp_max = 4},
                {.account_id = 1, .limit = 10, .flags = 3, .timestamp_min = 1ull << 63},
                {.account_id = 1, .limit = 10, .flags = 3, .timestamp_max = UINT64_MAX},
                {.account_id = 1, .limit = 10, .flags = 11},
                {.account_id = 0, .limit = 10, .flags = 3},
                {.account_id = MAX128, .limit = 10, .flags = 3},
                {.account_id = 1, .limit = 10, .flags = 3, .reserved = {[57] = 1}},
        };
        for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
                CHECK_EQ_U64(account_transfers(133, bad[i], ts), 0);
                CHECK_EQ_U64(account_transfers(134, bad[i], bs), 0);
        }
        f = (struct wire_account_filter){.account_id = 1, .limit = 10, .flags = 3,
                                         .timestamp_min = t15.timestamp};
        CHECK_EQ_U64(account_transfers(133, f, ts), 6); /* open upper bound */
        f.account_id = 999;
        CHECK_EQ_U64(account_transfers(133, f, ts), 0);

        /* query_accounts / query_transfers */
        struct wire_query_filter q = {.limit = 1, .flags = 1};
        CHECK_EQ_U64(run(135, &q, 64), 128);
        struct wire_account last;
        memcpy(&last, reply, 128);
        CHECK(last.id == 3); /* #74 */
        q = (struct wire_query_filter){.limit = 10, .user_data_64 = 77};
        CHECK_EQ_U64(run(135, &q, 64), 128);
        q = (struct wire_query_filter){.limit = 10, .ledger = 2, .code = 5};
        CHECK_EQ_U64(run(135, &q, 64), 128);
        q = (struct wire_query_filter){.limit = 10, .ledger = 2, .code = 1};
        CHECK_EQ_U64(run(135, &q, 64), 0);
        q = (struct wire_query_filter){.limit = 100, .code = 2}; /* odd ids and the post */
        CHECK_EQ_U64(run(136, &q, 64), 6 * 128);
        q = (struct wire_query_filter){.limit = 100, .timestamp_min = t10.timestamp,
                                       .timestamp_max = t15.timestamp, .flags = 1};
        CHECK_EQ_U64(run(136, &q, 64), 6 * 128);
        memcpy(ts, reply, 128);
        CHECK(ts[0].id == 15);
        q.flags = 2; /* padding flag: invalid */
        CHECK_EQ_U64(run(136, &q, 64), 0);
        q.flags = 0;
        q.reserved[5] = 1;
        CHECK_EQ_U64(run(136, &q, 64), 0);
        q = (struct wire_query_filter){.limit = UINT32_MAX};
        CHECK_EQ_U64(run(136, &q, 64), 11 * 128);
        /* #71: lookups skip missing ids, keep duplicates. */
        u128 ids[4] = {1, 12345, 1, 0};
        CHECK_EQ_U64(run(131, ids, 64), 256);
}

/* The clamp of a query limit: 8189 in a multi-batch reply, 8190 unbatched. */
static void test_query_limits(void)
{
        fresh();
        struct ledger_config config = {
                .accounts_max = 20000, .transfers_max = 10, .request_body_size_max = 0};
        ledger_destroy(ledger);
        ledger = ledger_create(&config);
        static struct wire_account a[8190];
        for (uint32_t i = 0; i < 8190; i++) a[i] = account(1 + i, 1, 1, 0);
        run(129, a, 8190 * 128);
        for (uint32_t i = 0; i < 8190; i++) a[i].id += 8190;
        run(129, a, 10 * 128);
        struct wire_query_filter q = {.limit = 10000};
        uint32_t counts[1] = {1};
        uint32_t size = multi_body(64, counts, 1);
        memcpy(body, &q, 64);
        uint32_t reply_size = run(144, body, size);
        struct multi_batch_decoder d;
        CHECK(multi_batch_decode_init(&d, reply, reply_size, 128));
        CHECK_EQ_U64(multi_batch_decode_count(&d, 0), 8189);
        CHECK_EQ_U64(run(135, &q, 64), 8190 * 128);
}

/* ------------------------------------------------------------------------------------------ */
/* Checkpoint: write, read into a fresh ledger, write again (same bytes), same behaviour. */

struct memory_stream {
        uint8_t *data;
        size_t size;
        size_t capacity;
        size_t offset;
};

static int memory_write(void *context, const void *data, size_t size)
{
        struct memory_stream *m = context;
        if (m->size + size > m->capacity) return -1;
        memcpy(m->data + m->size, data, size);
        m->size += size;
        return 0;
}

static int memory_read(void *context, void *data, size_t size)
{
        struct memory_stream *m = context;
        if (m->offset + size > m->size) return -1;
        memcpy(data, m->data + m->offset, size);
        m->offset += size;
        return 0;
}

/* Some of everything: accounts with history, transfers, pending with timeouts, burned ids,
 * closed accounts, imported objects. */
static void build_state(void)
{
        setup_world();
        for (uint32_t i = 0; i < 40; i++) {
                struct wire_transfer t = transfer(1000 + i, 1 + i % 2, i % 2 ? 7 : 2, i, 0);
                if (i % 5 == 0) {
                        t.flags = PEND;
                        t.timeout = 1 + i % 3;
                }
                if (i % 7 == 0) t.debit_account_id = 999; /* burned */
                create_transfer1(t);
        }
        create_transfer1(transfer(2000, 1, 2, 1, PEND | 0x40)); /* closes account 1 */
}

static int count_block(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        struct {
                uint64_t blocks;
                uint64_t roots;
        } *counted = context;
        CHECK(ref.address != 0);
        counted->blocks++;
        counted->roots += kind == LSM_BLOCK_ROOT;
        if (counted->blocks == 1) CHECK(kind == LSM_BLOCK_ROOT);
        return 0;
}

static void test_checkpoint(void)
{
        static uint8_t stream_a[1 << 24], stream_b[1 << 24];
        build_state();
        struct memory_stream ma = {stream_a, 0, sizeof(stream_a), 0};
        struct ledger_stream sa = {.write = memory_write, .read = memory_read, .context = &ma};
        CHECK_EQ_U64(ledger_checkpoint_write(ledger, &sa), 0);

        struct ledger_config config = {
                .accounts_max = 10000, .transfers_max = 100000, .request_body_size_max = 0};
        struct ledger *copy = ledger_create(&config);
        tally_assert(copy != NULL);
        CHECK_EQ_U64(ledger_checkpoint_read(copy, &sa), 0);
        struct memory_stream mb = {stream_b, 0, sizeof(stream_b), 0};
        struct ledger_stream sb = {.write = memory_write, .read = memory_read, .context = &mb};
        CHECK_EQ_U64(ledger_checkpoint_write(copy, &sb), 0);
        CHECK_EQ_U64(ma.size, mb.size);
        CHECK(memcmp(stream_a, stream_b, ma.size) == 0);

        /* Same requests on both: same replies, byte for byte (pulse included). */
        struct ledger *original = ledger;
        uint64_t clock_saved = clock_ns, last_saved = last_timestamp;
        static uint8_t replies[2][8][LEDGER_BODY_SIZE_MAX / 64];
        uint32_t sizes[2][8];
        for (int side = 0; side < 2; side++) {
                ledger = side == 0 ? original : copy;
                clock_ns = clock_saved;
                last_timestamp = last_saved;
                int k = 0;
                struct wire_transfer t[4] = {transfer(3000, 1, 2, 1, 0), transfer(1001, 2, 7, 1, 0),
                                             transfer(1000, 1, 2, 5, 0), transfer(3001, 2, 7, 3, 0)};
                sizes[side][k] = run(130, t, sizeof(t));
                memcpy(replies[side][k], reply, sizes[side][k]);
                k++;
                pulse_at(clock_ns + 10000000000ull);
                u128 ids[3] = {1, 2, 7};
                sizes[side][k] = run(131, ids, sizeof(ids));
                memcpy(replies[side][k], reply, sizes[side][k]);
                k++;
                struct wire_account_filter f = {.account_id = 7, .limit = 100, .flags = 3};
                sizes[side][k] = run(134, &f, 128);
                memcpy(replies[side][k], reply, sizes[side][k]);
                k++;
                sizes[side][k] = run(133, &f, 128);
                memcpy(replies[side][k], reply, sizes[side][k]);
                k++;
        }
        for (int k = 0; k < 4; k++) {
                CHECK_EQ_U64(sizes[0][k], sizes[1][k]);
                CHECK(memcmp(replies[0][k], replies[1][k], sizes[0][k]) == 0);
        }
        CHECK(sizes[0][0] > 0); /* 1000 exists, 1001 was burned: some failures */
        ledger = original;

        /* A damaged stream is refused and leaves the ledger empty. */
        stream_a[ma.size / 2] ^= 1;
        ma.offset = 0;
        CHECK(ledger_checkpoint_read(copy, &sa) != 0);
        struct ledger_stats stats;
        ledger_get_stats(copy, &stats);
        CHECK_EQ_U64(stats.accounts, 0);
        CHECK_EQ_U64(stats.transfers, 0);
        /* A truncated one too. */
        stream_a[ma.size / 2] ^= 1;
        ma.offset = 0;
        ma.size -= 1;
        CHECK(ledger_checkpoint_read(copy, &sa) != 0);
        ma.size += 1;
        ma.offset = 0;
        CHECK_EQ_U64(ledger_checkpoint_read(copy, &sa), 0);
        /* Too large for a smaller ledger. */
        struct ledger_config small = {.accounts_max = 2, .transfers_max = 2};
        struct ledger *tiny = ledger_create(&small);
        ma.offset = 0;
        CHECK(ledger_checkpoint_read(tiny, &sa) != 0);
        ledger_destroy(tiny);
        ledger_destroy(copy);
}

/*
 * A ledger on a memory grid with tiny trees: memtables of 64 values, tables of two blocks and
 * beats of 16 values, so that a few hundred transfers flush often and compactions span
 * operations (some are in flight at a checkpoint).
 */
static struct ledger_config small_trees(struct lsm_device_memory *memory)
{
        lsm_device_memory_init(memory, 1u << 20);
        return (struct ledger_config){.device = lsm_device_memory(memory),
                                      .grid_blocks_max = 1u << 20,
                                      .memtable_max = 64,
                                      .table_data_blocks_max = 2,
                                      .beat_values = 16};
}

/* Operation `op` of a series: 20 transfers between accounts 1, 2 and 7, ids scattered. */
static uint32_t run_scattered(uint32_t op)
{
        static struct wire_transfer batch[20];
        for (uint32_t k = 0; k < 20; k++)
                batch[k] = transfer(((uint64_t)(op * 20 + k) * 2654435761u) % 4294967291u + 5000,
                                    1 + k % 2, k % 2 ? 7 : 2, 1, 0);
        return run(130, batch, sizeof(batch));
}

/*
 * Checkpoints as grid roots: a ledger opened from a root on the same device holds exactly the
 * state at the checkpoint (its stream dump is byte-identical), even after the first ledger went
 * on executing and flushing past it; and a damaged root is refused by name.
 */
static void test_checkpoint_root(void)
{
        static struct lsm_device_memory memory;
        struct ledger_config config = small_trees(&memory);
        struct ledger *saved = ledger;
        ledger = NULL;
        fresh_config = &config;
        build_state();
        fresh_config = NULL;
        /* Enough operations for many flushes, and compactions spanning operations. */
        for (uint32_t op = 0; op < 150; op++)
                run_scattered(op);
        const char user[] = "sessions of the replica";
        struct lsm_block_ref root;
        CHECK(ledger_checkpoint(ledger, user, sizeof(user), &root));
        static uint8_t stream_a[1 << 22], stream_b[1 << 22];
        struct memory_stream ma = {stream_a, 0, sizeof(stream_a), 0};
        struct ledger_stream sa = {.write = memory_write, .context = &ma};
        CHECK_EQ_U64(ledger_checkpoint_write(ledger, &sa), 0);
        /* More work after the checkpoint, flushed into new blocks, not yet durable. */
        for (uint32_t i = 0; i < 20; i++) {
                struct wire_transfer t = transfer(50000 + i, 1, 2, 1, 0);
                run(130, &t, sizeof(t));
        }
        struct lsm_block_ref later;
        CHECK(ledger_checkpoint(ledger, user, sizeof(user), &later));

        struct ledger *copy = ledger_create(&config);
        tally_assert(copy != NULL);
        char back[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t back_size = 0;
        char error[256];
        CHECK_EQ_U64(ledger_open(copy, root, back, &back_size, error, sizeof(error)), 0);
        CHECK_EQ_U64(back_size, sizeof(user));
        CHECK(memcmp(back, user, sizeof(user)) == 0);
        struct memory_stream mb = {stream_b, 0, sizeof(stream_b), 0};
        struct ledger_stream sb = {.write = memory_write, .context = &mb};
        CHECK_EQ_U64(ledger_checkpoint_write(copy, &sb), 0);
        CHECK_EQ_U64(ma.size, mb.size);
        CHECK(memcmp(stream_a, stream_b, ma.size) == 0);

        /* Every block of a checkpoint is listed once, the root first. */
        struct block_count { uint64_t blocks; uint64_t roots; } counted = {0, 0};
        CHECK_EQ_U64(ledger_checkpoint_blocks(copy, root, count_block, &counted), 0);
        CHECK(counted.blocks > 4 && counted.roots == 1);
        /*
         * Opened from a checkpoint, the grid holds exactly the blocks it names: none leaked
         * (blocks of compactions in flight when it was written are free again, they are
         * written anew), none missing.
         */
        struct ledger_stats copy_stats;
        ledger_get_stats(copy, &copy_stats);
        CHECK_EQ_U64(copy_stats.grid_blocks_used, counted.blocks);

        /* A root that names the wrong checksum is refused, and says why. */
        struct lsm_block_ref wrong = root;
        wrong.checksum ^= 1;
        CHECK(ledger_open(copy, wrong, back, &back_size, error, sizeof(error)) != 0);
        CHECK(strstr(error, "root") != NULL);
        ledger_destroy(copy);
        ledger_destroy(ledger);
        ledger = saved;
        lsm_device_memory_deinit(&memory);
}

/*
 * A restart replays its journal with compaction deferred (ledger_defer_compaction): no merge
 * runs meanwhile, level 0 grows past its stall point, and the first operation after catches
 * up. It changes no answer: the same operations with and without the deferral give the same
 * replies and the same state.
 */
static uint64_t defer_run(bool defer, uint64_t *compacted_deferring, uint64_t *forced,
                          uint8_t *stream, size_t *stream_size, u128 *replies_digest)
{
        static struct lsm_device_memory memory;
        struct ledger_config config = small_trees(&memory);
        fresh_config = &config;
        fresh();
        build_state();
        fresh_config = NULL;
        struct ledger_stats stats;
        ledger_get_stats(ledger, &stats);
        uint64_t compacted_before = stats.tree_values_compacted;
        u128 digest = 0;
        for (uint32_t op = 0; op < 150; op++) {
                if (op == 10)
                        ledger_defer_compaction(ledger, defer);
                if (op == 110) {
                        ledger_get_stats(ledger, &stats);
                        *compacted_deferring = stats.tree_values_compacted - compacted_before;
                        ledger_defer_compaction(ledger, false);
                }
                uint32_t size = run_scattered(op);
                digest = digest * 1000003u + checksum(reply, size);
        }
        ledger_get_stats(ledger, &stats);
        *forced = stats.forced_compactions;
        struct memory_stream m = {stream, 0, *stream_size, 0};
        struct ledger_stream out = {.write = memory_write, .context = &m};
        CHECK_EQ_U64(ledger_checkpoint_write(ledger, &out), 0);
        *stream_size = m.size;
        *replies_digest = digest;
        uint64_t compacted = stats.tree_values_compacted;
        ledger_destroy(ledger);
        ledger = NULL;
        lsm_device_memory_deinit(&memory);
        return compacted;
}

static void test_deferred_compaction(void)
{
        struct ledger *saved = ledger;
        ledger = NULL;
        static uint8_t stream_a[1 << 22], stream_b[1 << 22];
        size_t size_a = sizeof(stream_a), size_b = sizeof(stream_b);
        uint64_t deferring_a = 0, deferring_b = 0, forced_a = 0, forced_b = 0;
        u128 replies_a = 0, replies_b = 0;
        (void)defer_run(false, &deferring_a, &forced_a, stream_a, &size_a, &replies_a);
        uint64_t total_b = defer_run(true, &deferring_b, &forced_b, stream_b, &size_b, &replies_b);
        /* Without the deferral those 100 operations merge; with it, nothing. */
        CHECK(deferring_a > 0);
        CHECK_EQ_U64(deferring_b, 0);
        /* After it, the trees catch up. */
        CHECK(total_b > 0);
        CHECK(replies_a == replies_b);
        CHECK_EQ_U64(size_a, size_b);
        CHECK(memcmp(stream_a, stream_b, size_a) == 0);
        printf("deferred compaction: merged %llu values while deferring (%llu without); %llu "
               "forced compactions (%llu without)\n",
               (unsigned long long)deferring_b, (unsigned long long)deferring_a,
               (unsigned long long)forced_b, (unsigned long long)forced_a);
        ledger = saved;
}

int main(void)
{
        TEST_RUN(test_smoke);
        TEST_RUN(test_create_accounts_codes);
        TEST_RUN(test_create_accounts_batches);
        TEST_RUN(test_create_transfers_codes);
        TEST_RUN(test_create_transfers_codes_special);
        TEST_RUN(test_linked_transfers);
        TEST_RUN(test_balancing_and_posting);
        TEST_RUN(test_expiry);
        TEST_RUN(test_input_validation);
        TEST_RUN(test_multi_batch_execution);
        TEST_RUN(test_queries);
        TEST_RUN(test_query_limits);
        TEST_RUN(test_checkpoint);
        TEST_RUN(test_checkpoint_root);
        TEST_RUN(test_deferred_compaction);
        if (ledger) ledger_destroy(ledger);
        TEST_MAIN_END();
}
