/*
 * test_ledger_model.c: long random sequences of requests, checked against a reference model.
 *
 * The model below is deliberately simple and slow: linear arrays, linear searches, a chain
 * rolled back by restoring a copy of the accounts and statuses. It shares no code with
 * src/ledger; it is written from ledger-semantics.md. Every create result, every account after
 * every request, and the answers to random lookups and queries (valid and invalid filters) are
 * compared byte for byte. Requests use all flags, linked chains, two-phase transfers with
 * timeouts, expiry by pulse, closing, balancing and imported batches, over small id spaces so
 * that collisions (exists*, id_already_failed) are frequent.
 *
 * Seeded: TALLY_SEED=<n> replays one seed; on a failure the seed and request number are
 * printed. Bounded to a few seconds under ASan.
 */
#include "test.h"

#include "ledger/ledger.h"
#include "wire/types.h"

#define MAX128 (~(u128)0)
#define MAX63 ((uint64_t)INT64_MAX)
#define M_ACCOUNTS 48
#define M_TRANSFERS 6000
#define M_FAILED 30000

struct m_transfer {
        struct wire_transfer t;
        u128 balance_dr[4]; /* debit account's balances after this transfer */
        u128 balance_cr[4];
};

struct model {
        struct wire_account accounts[M_ACCOUNTS];
        uint32_t account_count;
        struct m_transfer transfers[M_TRANSFERS];
        uint8_t status[M_TRANSFERS]; /* 0 none, 1 pending, 2 posted, 3 voided, 4 expired */
        uint32_t transfer_count;
        u128 failed[M_FAILED];
        uint32_t failed_count;
};

static struct model m;

static struct {
        struct wire_account accounts[M_ACCOUNTS];
        uint8_t status[M_TRANSFERS];
        uint32_t account_count;
        uint32_t transfer_count;
} snap;

static void m_snapshot(void)
{
        memcpy(snap.accounts, m.accounts, sizeof(m.accounts));
        memcpy(snap.status, m.status, m.transfer_count);
        snap.account_count = m.account_count;
        snap.transfer_count = m.transfer_count;
}

static void m_restore(void)
{
        memcpy(m.accounts, snap.accounts, sizeof(m.accounts));
        memcpy(m.status, snap.status, snap.transfer_count);
        m.account_count = snap.account_count;
        m.transfer_count = snap.transfer_count;
}

static struct wire_account *m_account(u128 id)
{
        for (uint32_t i = 0; i < m.account_count; i++) {
                if (m.accounts[i].id == id) return &m.accounts[i];
        }
        return NULL;
}

static int m_transfer(u128 id)
{
        for (uint32_t i = 0; i < m.transfer_count; i++) {
                if (m.transfers[i].t.id == id) return (int)i;
        }
        return -1;
}

static bool m_failed(u128 id)
{
        for (uint32_t i = 0; i < m.failed_count; i++) {
                if (m.failed[i] == id) return true;
        }
        return false;
}

static bool m_timestamp_used_by_account(uint64_t ts)
{
        for (uint32_t i = 0; i < m.account_count; i++) {
                if (m.accounts[i].timestamp == ts) return true;
        }
        return false;
}

static bool m_timestamp_used_by_transfer(uint64_t ts)
{
        for (uint32_t i = 0; i < m.transfer_count; i++) {
                if (m.transfers[i].t.timestamp == ts) return true;
        }
        return false;
}

static uint64_t m_max_account_ts(void)
{
        uint64_t x = 0;
        for (uint32_t i = 0; i < m.account_count; i++) x = MAX(x, m.accounts[i].timestamp);
        return x;
}

static uint64_t m_max_transfer_ts(void)
{
        uint64_t x = 0;
        for (uint32_t i = 0; i < m.transfer_count; i++) x = MAX(x, m.transfers[i].t.timestamp);
        return x;
}

static uint32_t m_create_account(const struct wire_account *a, uint64_t ts)
{
        if (a->reserved) return 4;
        if (a->flags & 0xFFC0) return 5;
        if (a->id == 0) return 6;
        if (a->id == MAX128) return 7;
        struct wire_account *e = m_account(a->id);
        if (e) {
                if (e->flags != a->flags) return 15;
                if (e->user_data_128 != a->user_data_128) return 16;
                if (e->user_data_64 != a->user_data_64) return 17;
                if (e->user_data_32 != a->user_data_32) return 18;
                if (e->ledger != a->ledger) return 19;
                if (e->code != a->code) return 20;
                return 21;
        }
        if ((a->flags & 2) && (a->flags & 4)) return 8;
        if (a->debits_pending) return 9;
        if (a->debits_posted) return 10;
        if (a->credits_pending) return 11;
        if (a->credits_posted) return 12;
        if (a->ledger == 0) return 13;
        if (a->code == 0) return 14;
        if ((a->flags & 0x10) &&
            (ts <= m_max_account_ts() || m_timestamp_used_by_transfer(ts)))
                return 26;
        tally_assert(m.account_count < M_ACCOUNTS);
        struct wire_account *n = &m.accounts[m.account_count++];
        *n = *a;
        n->debits_pending = n->debits_posted = n->credits_pending = n->credits_posted = 0;
        n->timestamp = ts;
        return 0;
}

static void m_record(struct m_transfer *x, const struct wire_account *dr,
                     const struct wire_account *cr)
{
        x->balance_dr[0] = dr->debits_pending;
        x->balance_dr[1] = dr->debits_posted;
        x->balance_dr[2] = dr->credits_pending;
        x->balance_dr[3] = dr->credits_posted;
        x->balance_cr[0] = cr->debits_pending;
        x->balance_cr[1] = cr->debits_posted;
        x->balance_cr[2] = cr->credits_pending;
        x->balance_cr[3] = cr->credits_posted;
}

static bool add_overflows(u128 a, u128 b)
{
        return a > MAX128 - b;
}

static uint32_t m_exists(const struct wire_transfer *t, const struct wire_transfer *e)
{
        if (t->flags != e->flags) return 36;
        if (t->pending_id != e->pending_id) return 40;
        if (t->timeout != e->timeout) return 44;
        if (t->flags & 0xC) {
                const struct wire_transfer *p = &m.transfers[m_transfer(t->pending_id)].t;
                if (t->debit_account_id && t->debit_account_id != e->debit_account_id) return 37;
                if (t->credit_account_id && t->credit_account_id != e->credit_account_id)
                        return 38;
                u128 want = t->amount;
                if ((t->flags & 8) && t->amount == 0) want = p->amount;
                if ((t->flags & 4) && t->amount == MAX128) want = p->amount;
                if (want != e->amount) return 39;
                if ((t->user_data_128 ? t->user_data_128 : p->user_data_128) != e->user_data_128)
                        return 41;
                if ((t->user_data_64 ? t->user_data_64 : p->user_data_64) != e->user_data_64)
                        return 42;
                if ((t->user_data_32 ? t->user_data_32 : p->user_data_32) != e->user_data_32)
                        return 43;
                if (t->ledger && t->ledger != e->ledger) return 67;
                if (t->code && t->code != e->code) return 45;
                return 46;
        }
        if (t->debit_account_id != e->debit_account_id) return 37;
        if (t->credit_account_id != e->credit_account_id) return 38;
        if (t->flags & 0x30) {
                if (t->amount < e->amount) return 39;
        } else if (t->amount != e->amount) {
                return 39;
        }
        if (t->user_data_128 != e->user_data_128) return 41;
        if (t->user_data_64 != e->user_data_64) return 42;
        if (t->user_data_32 != e->user_data_32) return 43;
        if (t->ledger != e->ledger) return 67;
        if (t->code != e->code) return 45;
        return 46;
}

static uint32_t m_post_void(const struct wire_transfer *t, uint64_t ts)
{
        bool post = t->flags & 4;
        if ((t->flags & 4) && (t->flags & 8)) return 7;
        if (t->flags & (2 | 0x10 | 0x20 | 0x40 | 0x80)) return 7;
        if (t->pending_id == 0) return 14;
        if (t->pending_id == MAX128) return 15;
        if (t->pending_id == t->id) return 16;
        if (t->timeout) return 17;
        int pi = m_transfer(t->pending_id);
        if (pi < 0) return 25;
        struct wire_transfer *p = &m.transfers[pi].t;
        if (!(p->flags & 2)) return 26;
        if (t->debit_account_id && t->debit_account_id != p->debit_account_id) return 27;
        if (t->credit_account_id && t->credit_account_id != p->credit_account_id) return 28;
        if (t->ledger && t->ledger != p->ledger) return 29;
        if (t->code && t->code != p->code) return 30;
        u128 amount = t->amount;
        if (!post && amount == 0) amount = p->amount;
        if (post && amount == MAX128) amount = p->amount;
        if (amount > p->amount) return 31;
        if (!post && amount < p->amount) return 32;
        if (m.status[pi] == 2) return 33;
        if (m.status[pi] == 3) return 34;
        if (m.status[pi] == 4) return 35;
        if (p->timeout && p->timestamp + (uint64_t)p->timeout * 1000000000ull <= ts) return 35;
        if ((t->flags & 0x100) &&
            (ts <= m_max_transfer_ts() || m_timestamp_used_by_account(ts)))
                return 60;
        struct wire_account *dr = m_account(p->debit_account_id);
        struct wire_account *cr = m_account(p->credit_account_id);
        if (post && (dr->flags & 0x20)) return 65;
        if (post && (cr->flags & 0x20)) return 66;
        dr->debits_pending -= p->amount;
        cr->credits_pending -= p->amount;
        if (post) {
                dr->debits_posted += amount;
                cr->credits_posted += amount;
        } else {
                if (p->flags & 0x40) dr->flags &= (uint16_t)~0x20;
                if (p->flags & 0x80) cr->flags &= (uint16_t)~0x20;
        }
        m.status[pi] = post ? 2 : 3;
        tally_assert(m.transfer_count < M_TRANSFERS);
        struct m_transfer *x = &m.transfers[m.transfer_count];
        m.status[m.transfer_count] = 0;
        m.transfer_count++;
        x->t = *t;
        x->t.debit_account_id = p->debit_account_id;
        x->t.credit_account_id = p->credit_account_id;
        x->t.ledger = p->ledger;
        x->t.code = p->code;
        if (!t->user_data_128) x->t.user_data_128 = p->user_data_128;
        if (!t->user_data_64) x->t.user_data_64 = p->user_data_64;
        if (!t->user_data_32) x->t.user_data_32 = p->user_data_32;
        x->t.amount = amount;
        x->t.timeout = 0;
        x->t.timestamp = ts;
        m_record(x, dr, cr);
        return 0;
}

static uint32_t m_create_transfer(const struct wire_transfer *t, uint64_t ts)
{
        if (t->flags & 0xFE00) return 4;
        if (t->id == 0) return 5;
        if (t->id == MAX128) return 6;
        int ei = m_transfer(t->id);
        if (ei >= 0) return m_exists(t, &m.transfers[ei].t);
        if (m_failed(t->id)) return 68;
        if (t->flags & 0xC) return m_post_void(t, ts);
        if (t->debit_account_id == 0) return 8;
        if (t->debit_account_id == MAX128) return 9;
        if (t->credit_account_id == 0) return 10;
        if (t->credit_account_id == MAX128) return 11;
        if (t->debit_account_id == t->credit_account_id) return 12;
        if (t->pending_id) return 13;
        bool pending = t->flags & 2;
        if (!pending && t->timeout) return 17;
        if (!pending && (t->flags & 0xC0)) return 64;
        if (t->ledger == 0) return 19;
        if (t->code == 0) return 20;
        struct wire_account *dr = m_account(t->debit_account_id);
        if (!dr) return 21;
        struct wire_account *cr = m_account(t->credit_account_id);
        if (!cr) return 22;
        if (dr->ledger != cr->ledger) return 23;
        if (t->ledger != dr->ledger) return 24;
        if (t->flags & 0x100) {
                if (ts <= m_max_transfer_ts() || m_timestamp_used_by_account(ts)) return 60;
                if (ts <= dr->timestamp) return 61;
                if (ts <= cr->timestamp) return 62;
                if (t->timeout) return 63;
        }
        if (dr->flags & 0x20) return 65;
        if (cr->flags & 0x20) return 66;
        u128 amount = t->amount;
        if (t->flags & 0x10) {
                u128 used = dr->debits_posted + dr->debits_pending;
                u128 room = dr->credits_posted >= used ? dr->credits_posted - used : 0;
                if (room < amount) amount = room;
        }
        if (t->flags & 0x20) {
                u128 used = cr->credits_posted + cr->credits_pending;
                u128 room = cr->debits_posted >= used ? cr->debits_posted - used : 0;
                if (room < amount) amount = room;
        }
        if (pending && add_overflows(amount, dr->debits_pending)) return 47;
        if (pending && add_overflows(amount, cr->credits_pending)) return 48;
        if (add_overflows(amount, dr->debits_posted)) return 49;
        if (add_overflows(amount, cr->credits_posted)) return 50;
        if (add_overflows(amount, dr->debits_pending + dr->debits_posted)) return 51;
        if (add_overflows(amount, cr->credits_pending + cr->credits_posted)) return 52;
        if ((u128)ts + (u128)t->timeout * 1000000000u > MAX63) return 53;
        if ((dr->flags & 2) && dr->debits_pending + dr->debits_posted + amount > dr->credits_posted)
                return 54;
        if ((cr->flags & 4) && cr->credits_pending + cr->credits_posted + amount > cr->debits_posted)
                return 55;
        if (pending) {
                dr->debits_pending += amount;
                cr->credits_pending += amount;
                if (t->flags & 0x40) dr->flags |= 0x20;
                if (t->flags & 0x80) cr->flags |= 0x20;
        } else {
                dr->debits_posted += amount;
                cr->credits_posted += amount;
        }
        tally_assert(m.transfer_count < M_TRANSFERS);
        struct m_transfer *x = &m.transfers[m.transfer_count];
        m.status[m.transfer_count] = pending ? 1 : 0;
        m.transfer_count++;
        x->t = *t;
        x->t.amount = amount;
        x->t.timestamp = ts;
        m_record(x, dr, cr);
        return 0;
}

/* One batch; results as (index, code) pairs of failures. */
static uint32_t m_create(bool transfers, const uint8_t *events, uint32_t n, uint64_t batch_ts,
                         struct wire_create_result *out)
{
        uint32_t count = 0;
        bool in_chain = false, broken = false;
        uint32_t chain_start = 0;
        bool batch_imported = false;
        for (uint32_t i = 0; i < n; i++) {
                struct wire_account a;
                struct wire_transfer t;
                memcpy(&a, events + i * 128, 128);
                memcpy(&t, events + i * 128, 128);
                uint16_t flags = transfers ? t.flags : a.flags;
                uint64_t ets = transfers ? t.timestamp : a.timestamp;
                bool imported = transfers ? (flags & 0x100) : (flags & 0x10);
                if (i == 0) batch_imported = imported;
                bool linked = flags & 1;
                if (linked && !in_chain) {
                        in_chain = true;
                        chain_start = i;
                        m_snapshot();
                }
                uint32_t r;
                uint32_t base = transfers ? 56 : 22;
                if (linked && i == n - 1) r = 2;
                else if (broken) r = 1;
                else if (batch_imported && !imported) r = base;
                else if (!batch_imported && imported) r = base + 1;
                else if (imported && (ets == 0 || ets > MAX63)) r = base + 2;
                else if (imported && ets >= batch_ts) r = base + 3;
                else if (!imported && ets != 0) r = 3;
                else {
                        uint64_t ts = imported ? ets : batch_ts - n + i + 1;
                        r = transfers ? m_create_transfer(&t, ts) : m_create_account(&a, ts);
                }
                if (r != 0) {
                        if (in_chain && !broken) {
                                broken = true;
                                m_restore();
                                for (uint32_t k = chain_start; k < i; k++) {
                                        out[count++] = (struct wire_create_result){k, 1};
                                }
                        }
                        out[count++] = (struct wire_create_result){i, r};
                        if (transfers && (r == 21 || r == 22 || r == 25 || r == 54 || r == 55 ||
                                          r == 65 || r == 66)) {
                                tally_assert(m.failed_count < M_FAILED);
                                m.failed[m.failed_count++] = t.id;
                        }
                }
                if (in_chain && (!linked || r == 2)) {
                        in_chain = false;
                        broken = false;
                }
        }
        return count;
}

static void m_pulse(uint64_t T)
{
        /* Selection sort of the due transfers by (expires_at, timestamp), at most 8190. */
        uint32_t done = 0;
        for (;;) {
                int best = -1;
                uint64_t best_exp = 0;
                for (uint32_t i = 0; i < m.transfer_count; i++) {
                        const struct wire_transfer *p = &m.transfers[i].t;
                        if (m.status[i] != 1 || p->timeout == 0) continue;
                        uint64_t exp = p->timestamp + (uint64_t)p->timeout * 1000000000ull;
                        if (exp > T) continue;
                        if (best < 0 || exp < best_exp ||
                            (exp == best_exp && p->timestamp < m.transfers[best].t.timestamp)) {
                                best = (int)i;
                                best_exp = exp;
                        }
                }
                if (best < 0 || done == 8190) return;
                const struct wire_transfer *p = &m.transfers[best].t;
                struct wire_account *dr = m_account(p->debit_account_id);
                struct wire_account *cr = m_account(p->credit_account_id);
                dr->debits_pending -= p->amount;
                cr->credits_pending -= p->amount;
                if (p->flags & 0x40) dr->flags &= (uint16_t)~0x20;
                if (p->flags & 0x80) cr->flags &= (uint16_t)~0x20;
                m.status[best] = 4;
                done++;
        }
}

/* Queries on the model, written into `out` as the wire would carry them. */
static uint32_t m_account_query(bool balances, const struct wire_account_filter *f, uint8_t *out)
{
        bool valid = f->account_id != 0 && f->account_id != MAX128 &&
                     f->timestamp_min <= MAX63 && f->timestamp_max <= MAX63 &&
                     (f->timestamp_max == 0 || f->timestamp_min <= f->timestamp_max) &&
                     f->limit != 0 && (f->flags & 3) && !(f->flags & ~7u);
        for (size_t i = 0; i < sizeof(f->reserved); i++) valid = valid && f->reserved[i] == 0;
        if (!valid) return 0;
        const struct wire_account *acc = m_account(f->account_id);
        if (balances && (!acc || !(acc->flags & 8))) return 0;
        uint64_t lo = f->timestamp_min ? f->timestamp_min : 1;
        uint64_t hi = f->timestamp_max ? f->timestamp_max : MAX63;
        uint32_t limit = MIN(f->limit, 8190u);
        uint32_t n = 0;
        bool reversed = f->flags & 4;
        for (uint32_t k = 0; k < m.transfer_count && n < limit; k++) {
                uint32_t i = reversed ? m.transfer_count - 1 - k : k;
                const struct m_transfer *x = &m.transfers[i];
                const struct wire_transfer *t = &x->t;
                bool side = ((f->flags & 1) && t->debit_account_id == f->account_id) ||
                            ((f->flags & 2) && t->credit_account_id == f->account_id);
                if (!side || t->timestamp < lo || t->timestamp > hi) continue;
                if (f->user_data_128 && t->user_data_128 != f->user_data_128) continue;
                if (f->user_data_64 && t->user_data_64 != f->user_data_64) continue;
                if (f->user_data_32 && t->user_data_32 != f->user_data_32) continue;
                if (f->code && t->code != f->code) continue;
                if (balances) {
                        struct wire_account_balance b;
                        memset(&b, 0, sizeof(b));
                        const u128 *s = t->debit_account_id == f->account_id ? x->balance_dr
                                                                             : x->balance_cr;
                        b.debits_pending = s[0];
                        b.debits_posted = s[1];
                        b.credits_pending = s[2];
                        b.credits_posted = s[3];
                        b.timestamp = t->timestamp;
                        memcpy(out + n * 128, &b, 128);
                } else {
                        memcpy(out + n * 128, t, 128);
                }
                n++;
        }
        return n * 128;
}

static uint32_t m_query(bool transfers, const struct wire_query_filter *f, uint8_t *out)
{
        bool valid = f->timestamp_min <= MAX63 && f->timestamp_max <= MAX63 &&
                     (f->timestamp_max == 0 || f->timestamp_min <= f->timestamp_max) &&
                     f->limit != 0 && !(f->flags & ~1u);
        for (size_t i = 0; i < sizeof(f->reserved); i++) valid = valid && f->reserved[i] == 0;
        if (!valid) return 0;
        uint64_t lo = f->timestamp_min ? f->timestamp_min : 1;
        uint64_t hi = f->timestamp_max ? f->timestamp_max : MAX63;
        uint32_t limit = MIN(f->limit, 8190u);
        uint32_t count = transfers ? m.transfer_count : m.account_count;
        uint32_t n = 0;
        for (uint32_t k = 0; k < count && n < limit; k++) {
                uint32_t i = (f->flags & 1) ? count - 1 - k : k;
                /* Account and Transfer share these offsets. */
                const uint8_t *o = transfers ? (const uint8_t *)&m.transfers[i].t
                                             : (const uint8_t *)&m.accounts[i];
                const struct wire_account *view = (const struct wire_account *)o;
                if (view->timestamp < lo || view->timestamp > hi) continue;
                if (f->user_data_128 && view->user_data_128 != f->user_data_128) continue;
                if (f->user_data_64 && view->user_data_64 != f->user_data_64) continue;
                if (f->user_data_32 && view->user_data_32 != f->user_data_32) continue;
                if (f->ledger && view->ledger != f->ledger) continue;
                if (f->code && view->code != f->code) continue;
                memcpy(out + n * 128, o, 128);
                n++;
        }
        return n * 128;
}

/* ------------------------------------------------------------------------------------------ */
/* The random driver. */

static uint64_t rng_state;

static uint64_t rnd(void)
{
        uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

static uint32_t below(uint32_t n)
{
        return (uint32_t)(rnd() % n);
}

static bool chance(uint32_t percent)
{
        return below(100) < percent;
}

static u128 rnd_amount(void)
{
        switch (below(12)) {
        case 0:
                return 0;
        case 1:
                return MAX128;
        case 2:
                return MAX128 - below(3);
        case 3:
                return (u128)1 << 127;
        default:
                return 1 + below(50);
        }
}

static u128 rnd_account_id(void)
{
        if (chance(2)) return chance(50) ? 0 : MAX128;
        return 1 + below(40);
}

static u128 rnd_transfer_id(void)
{
        if (chance(1)) return chance(50) ? 0 : MAX128;
        return chance(30) ? 1 + below(300) : 1 + below(50000);
}

static struct ledger *ledger;
static uint64_t clock_ns, last_ts;
static uint8_t request[LEDGER_BODY_SIZE_MAX];
static uint8_t reply[LEDGER_BODY_SIZE_MAX];
static uint8_t expected[LEDGER_BODY_SIZE_MAX];
static uint32_t failures;

static uint64_t prepare(uint8_t op, uint32_t size)
{
        clock_ns += chance(5) ? 1000000000ull * (1 + below(3)) : 1000 + below(1000);
        uint64_t base = MAX(last_ts + 1, clock_ns);
        last_ts = base + ledger_timestamp_delta(op, request, size);
        return last_ts;
}

static void gen_account(struct wire_account *a, bool imported, uint64_t *imported_ts)
{
        memset(a, 0, sizeof(*a));
        a->id = rnd_account_id();
        a->ledger = chance(3) ? 0 : (chance(90) ? 1 : 2);
        a->code = chance(3) ? 0 : 1 + below(2);
        a->flags = (uint16_t)(below(64) & ~0x10u & (chance(90) ? (chance(50) ? 0x08u : 0x0Eu)
                                                               : 0x3Fu));
        if (chance(3)) a->flags |= 0x40;
        if (chance(10)) a->flags |= 1;
        if (chance(3)) a->reserved = 1;
        if (chance(3)) a->debits_posted = 1;
        a->user_data_128 = below(3);
        a->user_data_64 = below(3);
        a->user_data_32 = below(3);
        if (imported) {
                a->flags |= 0x10;
                *imported_ts += chance(10) ? 0 : 1 + below(3);
                a->timestamp = chance(5) ? below(3) : *imported_ts;
        } else if (chance(2)) {
                a->timestamp = 1 + below(5);
        }
}

static void gen_transfer(struct wire_transfer *t, bool imported, uint64_t *imported_ts)
{
        memset(t, 0, sizeof(*t));
        t->id = rnd_transfer_id();
        t->ledger = chance(3) ? 0 : 1;
        t->code = chance(3) ? 0 : 1 + below(2);
        t->amount = rnd_amount();
        t->user_data_128 = below(3);
        t->user_data_64 = below(3);
        t->user_data_32 = below(3);
        uint32_t kind = below(10);
        if (kind < 3) {
                t->flags = 2; /* pending */
                if (chance(50)) t->timeout = below(3);
                if (chance(8)) t->flags |= chance(50) ? 0x40 : 0x80;
        } else if (kind < 6 && m.transfer_count > 0) {
                t->flags = chance(50) ? 4 : 8;
                t->pending_id = chance(90) ? m.transfers[below(m.transfer_count)].t.id
                                           : rnd_transfer_id();
                if (chance(30)) t->amount = chance(50) ? 0 : MAX128;
                if (chance(60)) t->ledger = 0;
                if (chance(60)) t->code = 0;
        }
        if (!(t->flags & 0xC) || chance(30)) {
                t->debit_account_id = rnd_account_id();
                t->credit_account_id = rnd_account_id();
        }
        if (chance(10)) t->flags |= 0x10;
        if (chance(10)) t->flags |= 0x20;
        if (chance(2)) t->flags |= (uint16_t)(1u << below(9));
        if (chance(2)) t->flags |= 0x200;
        if (chance(2)) t->timeout = 1;
        if (chance(10)) t->flags |= 1;
        if (imported) {
                t->flags |= 0x100;
                t->timeout = chance(90) ? 0 : 1;
                *imported_ts += chance(10) ? 0 : 1 + below(3);
                t->timestamp = chance(5) ? 1 : *imported_ts;
        } else {
                t->flags &= (uint16_t)~0x100u;
                if (chance(2)) t->flags |= 0x100; /* imported_event_not_expected */
                if (chance(2)) t->timestamp = 7;
        }
}

static void compare(const char *what, uint32_t got_size, const uint8_t *got, uint32_t want_size,
                    const uint8_t *want, uint32_t step)
{
        if (got_size == want_size && memcmp(got, want, want_size) == 0) return;
        if (failures < 5) {
                fprintf(stderr, "  step %u: %s differs (sizes %u / %u)\n", step, what, got_size,
                        want_size);
                for (uint32_t i = 0; i < MIN(got_size, want_size); i += 8) {
                        if (memcmp(got + i, want + i, 8) != 0) {
                                fprintf(stderr, "    first difference at byte %u\n", i);
                                break;
                        }
                }
        }
        failures++;
}

static void step_create(bool transfers, uint32_t step)
{
        uint32_t n = chance(10) ? 0 : 1 + below(chance(10) ? 120 : 12);
        bool imported = chance(8);
        uint64_t imported_ts = MAX(last_ts, MAX(m_max_account_ts(), m_max_transfer_ts()));
        for (uint32_t i = 0; i < n; i++) {
                if (transfers) {
                        struct wire_transfer t;
                        gen_transfer(&t, imported && (i > 0 || chance(95)), &imported_ts);
                        memcpy(request + i * 128, &t, 128);
                } else {
                        struct wire_account a;
                        gen_account(&a, imported && (i > 0 || chance(95)), &imported_ts);
                        memcpy(request + i * 128, &a, 128);
                }
        }
        uint8_t op = transfers ? 130 : 129;
        uint32_t size = n * 128;
        tally_assert(ledger_input_valid(ledger, op, request, size));
        uint64_t T = prepare(op, size);
        uint32_t got = ledger_execute(ledger, op, T, request, size, reply);
        uint32_t want = m_create(transfers, request, n, T, (struct wire_create_result *)expected);
        compare(transfers ? "create_transfers results" : "create_accounts results", got, reply,
                want * 8, expected, step);
}

static void check_accounts(uint32_t step)
{
        /* Every id of the account space, in one lookup: current balances and flags. */
        for (uint32_t i = 0; i < 42; i++) {
                u128 id = i;
                memcpy(request + i * 16, &id, 16);
        }
        uint64_t T = prepare(131, 42 * 16);
        uint32_t got = ledger_execute(ledger, 131, T, request, 42 * 16, reply);
        uint32_t want = 0;
        for (uint32_t i = 0; i < 42; i++) {
                const struct wire_account *a = m_account(i);
                if (i != 0 && a) memcpy(expected + 128 * want++, a, 128);
        }
        compare("accounts", got, reply, want * 128, expected, step);
}

static void step_query(uint32_t step)
{
        uint64_t span = last_ts > 0 ? last_ts : 1;
        uint64_t t1 = chance(50) ? 0 : 1 + rnd() % span;
        uint64_t t2 = chance(50) ? 0 : 1 + rnd() % span;
        if (chance(5)) t1 = 1ull << 63;
        uint32_t limit = chance(5) ? 0 : 1 + below(chance(50) ? 5 : 10000);
        uint32_t kind = below(5);
        uint32_t got = 0, want = 0;
        if (kind <= 1) {
                struct wire_account_filter f;
                memset(&f, 0, sizeof(f));
                f.account_id = rnd_account_id();
                f.timestamp_min = MIN(t1, t2 ? t2 : t1);
                f.timestamp_max = t2;
                f.limit = limit;
                f.flags = below(8);
                if (chance(3)) f.flags |= 8;
                if (chance(3)) f.reserved[below(58)] = 1;
                if (chance(20)) f.user_data_32 = below(3);
                if (chance(20)) f.code = (uint16_t)below(3);
                if (chance(10)) f.user_data_128 = below(3);
                if (chance(10)) f.user_data_64 = below(3);
                memcpy(request, &f, 128);
                uint8_t op = kind == 0 ? 133 : 134;
                uint64_t T = prepare(op, 128);
                got = ledger_execute(ledger, op, T, request, 128, reply);
                want = m_account_query(kind == 1, &f, expected);
        } else if (kind <= 3) {
                struct wire_query_filter f;
                memset(&f, 0, sizeof(f));
                f.timestamp_min = MIN(t1, t2 ? t2 : t1);
                f.timestamp_max = t2;
                f.limit = limit;
                f.flags = below(2);
                if (chance(3)) f.flags |= 2;
                if (chance(3)) f.reserved[below(6)] = 1;
                if (chance(30)) f.user_data_32 = below(3);
                if (chance(30)) f.ledger = below(3);
                if (chance(30)) f.code = (uint16_t)below(3);
                if (chance(20)) f.user_data_128 = below(3);
                if (chance(20)) f.user_data_64 = below(3);
                memcpy(request, &f, 64);
                uint8_t op = kind == 2 ? 135 : 136;
                uint64_t T = prepare(op, 64);
                got = ledger_execute(ledger, op, T, request, 64, reply);
                want = m_query(kind == 3, &f, expected);
        } else {
                uint32_t n = below(20);
                for (uint32_t i = 0; i < n; i++) {
                        u128 id = rnd_transfer_id();
                        memcpy(request + i * 16, &id, 16);
                }
                uint64_t T = prepare(132, n * 16);
                got = ledger_execute(ledger, 132, T, request, n * 16, reply);
                for (uint32_t i = 0; i < n; i++) {
                        u128 id;
                        memcpy(&id, request + i * 16, 16);
                        int k = m_transfer(id);
                        if (k >= 0) memcpy(expected + want, &m.transfers[k].t, 128), want += 128;
                }
        }
        compare("query", got, reply, want, expected, step);
}

static void run_seed(uint64_t seed, uint32_t steps, bool tiny)
{
        rng_state = seed;
        memset(&m, 0, sizeof(m));
        struct ledger_config config = {
                .accounts_max = 1000, .transfers_max = 20000, .request_body_size_max = 0};
        if (tiny) {
                /* Every flush, compaction and lookup path goes through blocks on small data. */
                config.memtable_max = 64;
                config.cache_bytes = 32u * 65536u;
                config.table_data_blocks_max = 2;
                config.beat_values = 64;
        }
        ledger = ledger_create(&config);
        tally_assert(ledger != NULL);
        clock_ns = 1700000000000000000ull;
        last_ts = 0;
        uint32_t before = failures;
        for (uint32_t step = 0; step < steps && failures == before; step++) {
                if (m.transfer_count > M_TRANSFERS - 400) break;
                if (m.failed_count > M_FAILED - 400) break;
                uint32_t kind = below(100);
                if (kind < 20 || m.account_count < 10) {
                        step_create(false, step);
                } else if (kind < 75) {
                        step_create(true, step);
                } else if (kind < 82) {
                        uint64_t T = MAX(last_ts + 1, clock_ns) + LEDGER_PULSE_TIMESTAMP_DELTA;
                        last_ts = T;
                        ledger_execute(ledger, OPERATION_PULSE, T, NULL, 0, reply);
                        m_pulse(T);
                } else {
                        step_query(step);
                }
                check_accounts(step);
        }
        if (getenv("TALLY_VERBOSE")) {
                fprintf(stderr, "  seed %llu: %u accounts, %u transfers, %u failed ids\n",
                        (unsigned long long)seed, m.account_count, m.transfer_count,
                        m.failed_count);
        }
        if (failures != before) {
                fprintf(stderr, "  seed %llu failed (TALLY_SEED=%llu to replay)\n",
                        (unsigned long long)seed, (unsigned long long)seed);
        }
        ledger_destroy(ledger);
}

static void test_random_sequences(void)
{
        const char *env = getenv("TALLY_SEED");
        if (env) {
                run_seed(strtoull(env, NULL, 10), 3000, getenv("TALLY_TINY") != NULL);
        } else {
                for (uint64_t seed = 1; seed <= 40; seed++) run_seed(seed, 1500, false);
                for (uint64_t seed = 41; seed <= 52; seed++) run_seed(seed, 1500, true);
        }
        CHECK_EQ_U64(failures, 0);
}

int main(void)
{
        TEST_RUN(test_random_sequences);
        TEST_MAIN_END();
}
