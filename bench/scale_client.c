/*
 * scale_client.c: the one client bench/scale.sh drives both servers with, Tally and
 * TigerBeetle 0.16.68, so that their figures at the same stored count compare like for like.
 *
 *   scale_client load   --addresses=A --first=F --count=C [--create-accounts] [common flags]
 *   scale_client lookup --addresses=A --stored=S [--count=1000] [common flags]
 *   scale_client query  --addresses=A --stored=S [--count=100] [common flags]
 *   scale_client history --addresses=A --stored=S [--count=100] [common flags]
 *   scale_client ready  --addresses=A [--stored=S] [--pid=P] [--timeout-ms=600000]
 *   common flags: [--cluster=0] [--accounts=10000] [--id-order=sequential|random]
 *                 [--batch=8189] [--clients=2] [--seed=N] [--deadline-ms=120000]
 *
 * Why not `tally benchmark`: it loads a fresh ledger in one go, with ids of a random run
 * prefix, and cannot be told to add transfers F..F+C-1 to a server that already holds F of them
 * and then read back any of the F+C. TigerBeetle's own benchmark cannot either (it expects a
 * fresh cluster). This client can, because transfer i is a pure function of (seed, i):
 *
 *   id             sequential: i + 1; random: a bijection of i spread over 128 bits
 *   accounts       two of --accounts, uniform (10,000 by default, as both benchmarks use)
 *   amount         1..1000
 *   user_data_128  i / 10 + 1: ten consecutive transfers share it (the legs of one order), so a
 *                  query for one value has exactly 10 results among everything stored
 *   user_data_64   i (lets a returned transfer be regenerated and compared field by field)
 *   ledger, code   1, 1
 *
 * Each command prints one `key=value` line that the script reads, and exits non-zero (with a
 * line on stderr) on any failure: a rejected transfer, a missing or different transfer read
 * back, a request that timed out.
 *
 * `load` keeps --clients sessions busy, one batch in flight each, and reports the throughput
 * and the batch latency percentiles. `lookup` and `query` send one request at a time through
 * one session (a single id; a filter with limit 10) so each latency is that of one read.
 * `ready` reconnects every 10 ms until a request is answered (and, with --stored, until
 * transfer 0 is read back), which is what "restarted" means to a client; a connected server
 * that does not answer yet gets the register request again every 100 ms.
 *
 * Single-replica servers only for lookup, query and ready (they talk to the first address).
 */
#include "client/client.h"
#include "io/io.h"
#include "io/address.h"
#include "lib/flags.h"
#include "lib/histogram.h"
#include "lib/mix.h"
#include "wire/types.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define EVENTS_PER_BATCH_MAX 8189u
#define AMOUNT_MAX 1000u
#define ORDER_LEGS 10u /* transfers per user_data_128 value: the query's result count */
#define QUERY_LIMIT 10u
#define LEDGER 1u
#define CODE 1u
#define SEED_DEFAULT 42u
/* A blocking lookup or query waits this long for its reply; a cold read at 100 M stored takes
 * milliseconds, so this only bounds a server that stopped answering. */
#define READ_TIMEOUT_MS 30000
/* `ready`: each connection attempt and each unanswered register gives up after this and
 * starts again, so the restart time is measured to within about this much. */
#define READY_ATTEMPT_MS 100
#define READY_RETRY_US 10000
/* A connection that accepted but never answers is dropped after this and a new one opened. */
#define READY_CONNECTION_MS 5000

enum id_order { ID_SEQUENTIAL, ID_RANDOM };

struct workload {
        enum id_order id_order;
        uint64_t seed;
        uint64_t account_count;
};

struct options {
        struct workload w;
        struct address address[ADDRESSES_MAX];
        uint32_t address_count;
        u128 cluster;
        uint64_t first;
        uint64_t count;
        uint64_t stored;
        uint64_t batch;
        uint64_t clients;
        uint64_t deadline_ms;
        uint64_t timeout_ms;
        uint64_t pid;
        bool create_accounts;
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int signal)
{
        stop_signal = signal;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        fputs("scale_client: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
}

/* ---- The workload: pure functions of (seed, index) ---------------------------------------- */

/*
 * Random ids: the low half is a bijection of (stream, index + 1), never 0, so ids are distinct;
 * the high half, derived from it with its top bit clear, spreads them over 128 bits like
 * random UUIDs and keeps every id below 2^128 - 1 (an invalid id).
 */
static u128 object_id(const struct workload *w, uint64_t stream, uint64_t index)
{
        tally_assert(index < (1ull << 62));
        if (w->id_order == ID_SEQUENTIAL)
                return (u128)index + 1;
        uint64_t low = mix64((index + 1) | (stream << 62));
        uint64_t high = mix64(low ^ 0x5bd1e995u) >> 1;
        return ((u128)high << 64) | low;
}

static u128 account_id(const struct workload *w, uint64_t index)
{
        return object_id(w, 0, index);
}

static u128 transfer_id(const struct workload *w, uint64_t index)
{
        return object_id(w, 1, index);
}

static void transfer_make(const struct workload *w, uint64_t index, struct wire_transfer *t)
{
        uint64_t debit = mix_hash(w->seed, 2, index) % w->account_count;
        uint64_t credit = mix_hash(w->seed, 3, index) % w->account_count;
        if (credit == debit)
                credit = (debit + 1) % w->account_count;
        memset(t, 0, sizeof(*t));
        t->id = transfer_id(w, index);
        t->debit_account_id = account_id(w, debit);
        t->credit_account_id = account_id(w, credit);
        t->amount = 1 + mix_hash(w->seed, 4, index) % AMOUNT_MAX;
        t->user_data_128 = (u128)(index / ORDER_LEGS) + 1;
        t->user_data_64 = index;
        t->ledger = LEDGER;
        t->code = CODE;
}

static void account_make(const struct workload *w, uint64_t index, struct wire_account *a)
{
        memset(a, 0, sizeof(*a));
        a->id = account_id(w, index);
        a->user_data_64 = index;
        a->ledger = LEDGER;
        a->code = CODE;
}

/* A transfer read back must be the one generated for its user_data_64, timestamp aside. */
static bool transfer_matches(const struct workload *w, const struct wire_transfer *t,
                             uint64_t stored)
{
        if (t->user_data_64 >= stored || t->timestamp == 0)
                return false;
        struct wire_transfer expected;
        transfer_make(w, t->user_data_64, &expected);
        expected.timestamp = t->timestamp;
        return memcmp(&expected, t, sizeof(expected)) == 0;
}

/* ---- Latencies ------------------------------------------------------------------------------ */

static void print_latencies(const char *prefix, uint64_t *latencies_ns, uint64_t count)
{
        latency_sort(latencies_ns, count);
        printf("%sp50_ms=%.3f %sp99_ms=%.3f %smax_ms=%.3f", prefix,
               latency_percentile_ms(latencies_ns, count, 50), prefix,
               latency_percentile_ms(latencies_ns, count, 99), prefix,
               latency_percentile_ms(latencies_ns, count, 100));
}

/* ---- load: many sessions, one batch in flight each ---------------------------------------- */

struct phase {
        const char *name;
        uint8_t operation;
        uint64_t first; /* index of the first object */
        uint64_t count; /* objects */
        uint32_t batch;
        uint64_t request_count;
        uint64_t sent;
        uint64_t done;
        uint64_t *latencies_ns;
        uint64_t rejected;
        bool failed;
        uint64_t start_ns;
        uint64_t end_ns;
        const struct workload *w;
        struct client_pool *pool;
        /* The next request's body, made while the sessions wait for replies (see phase_run). */
        uint8_t *next_body;
        uint32_t next_size;
        bool next_ready;
};

static uint32_t phase_fill(struct phase *p, uint8_t *body, uint64_t request)
{
        uint64_t first = p->first + request * p->batch;
        uint32_t count = (uint32_t)MIN((uint64_t)p->batch, p->first + p->count - first);
        if (p->operation == OPERATION_CREATE_ACCOUNTS) {
                for (uint32_t i = 0; i < count; i++)
                        account_make(p->w, first + i, (struct wire_account *)body + i);
                return client_body_single_batch(body, sizeof(struct wire_account), count);
        }
        for (uint32_t i = 0; i < count; i++)
                transfer_make(p->w, first + i, (struct wire_transfer *)body + i);
        return client_body_single_batch(body, sizeof(struct wire_transfer), count);
}

/* Create replies list only the events that failed: any is a failed run. */
static void phase_on_done(void *context, const struct client_completion *c)
{
        struct phase *p = context;
        p->done++;
        if (c->result != CLIENT_OK) {
                const char *error = client_pool_last_error(p->pool);
                fail("%s: request %llu %s: %s", p->name, (unsigned long long)c->user_data,
                     c->result == CLIENT_ERROR_TIMEOUT ? "timed out" : "was evicted",
                     error != NULL ? error : "no reply");
                p->failed = true;
                return;
        }
        p->latencies_ns[c->user_data] = c->latency_ns;
        const uint8_t *results;
        uint32_t count;
        if (!client_reply_single_batch(c->body, c->body_size, sizeof(struct wire_create_result),
                                       &results, &count)) {
                fail("%s: a reply is not a one-batch multi-batch body", p->name);
                p->failed = true;
                return;
        }
        if (count > 0 && p->rejected == 0) {
                struct wire_create_result first;
                memcpy(&first, results, sizeof(first));
                fail("%s: request %llu: %u events rejected, the first index=%u result=%u", p->name,
                     (unsigned long long)c->user_data, count, first.index, first.result);
        }
        p->rejected += count;
}

static int phase_run(struct phase *p)
{
        p->request_count = (p->count + p->batch - 1) / p->batch;
        p->latencies_ns = calloc(p->request_count + 1, sizeof(uint64_t));
        if (p->latencies_ns == NULL) {
                fail("%s: out of memory", p->name);
                return -1;
        }
        p->next_body = malloc(WIRE_BODY_SIZE_MAX);
        p->next_ready = false;
        p->start_ns = io_monotonic_ns();
        while (p->done < p->request_count && !p->failed && p->rejected == 0 && stop_signal == 0) {
                int32_t s;
                while (p->sent < p->request_count && (s = client_pool_idle_session(p->pool)) >= 0) {
                        uint8_t *body = client_pool_body(p->pool, (uint32_t)s);
                        uint32_t size;
                        if (p->next_ready) {
                                memcpy(body, p->next_body, p->next_size);
                                size = p->next_size;
                                p->next_ready = false;
                        } else {
                                size = phase_fill(p, body, p->sent);
                        }
                        if (client_pool_send(p->pool, (uint32_t)s, p->operation, size, p->sent) !=
                            CLIENT_OK) {
                                fail("%s: send failed", p->name);
                                p->failed = true;
                                break;
                        }
                        p->sent++;
                }
                if (p->sent < p->request_count && client_pool_in_flight(p->pool) == 0) {
                        fail("%s: no usable session left", p->name);
                        p->failed = true;
                }
                /*
                 * Every session busy: make the next body now, so a reply is answered with a
                 * request at once. Made after the reply instead, the request reached the server
                 * 2-3 ms later, while it executed another batch, and waited for it to be
                 * journaled: the client's think time, not the server's, in the figures.
                 */
                if (p->next_body != NULL && !p->next_ready && p->sent < p->request_count) {
                        p->next_size = phase_fill(p, p->next_body, p->sent);
                        p->next_ready = true;
                }
                client_pool_run(p->pool, 100, phase_on_done, p);
        }
        p->end_ns = io_monotonic_ns();
        free(p->next_body);
        p->next_body = NULL;
        if (stop_signal != 0)
                fail("%s: interrupted by signal %d", p->name, (int)stop_signal);
        return p->failed || p->rejected > 0 || stop_signal != 0 ? -1 : 0;
}

static int command_load(const struct options *o)
{
        struct client_pool_options pool_options = {
            .addresses = o->address,
            .address_count = o->address_count,
            .cluster = o->cluster,
            .session_count = (uint32_t)o->clients,
            .request_timeout_ms = 2000,
            .request_deadline_ms = (uint32_t)o->deadline_ms,
        };
        char error[256];
        struct client_pool *pool = client_pool_create(&pool_options, error, sizeof(error));
        if (pool == NULL) {
                fail("load: %s", error);
                return 1;
        }
        /* A batch must fit the cluster's limit (8189 transfers at 1 MiB, 253 in development). */
        uint32_t limit = client_pool_batch_size_limit(pool);
        uint32_t batch = (uint32_t)MIN(o->batch, (limit - 128) / sizeof(struct wire_transfer));
        int status = 1;
        struct phase accounts = {.name = "accounts",
                                 .operation = OPERATION_CREATE_ACCOUNTS,
                                 .count = o->w.account_count,
                                 .batch = batch,
                                 .w = &o->w,
                                 .pool = pool};
        struct phase transfers = {.name = "transfers",
                                  .operation = OPERATION_CREATE_TRANSFERS,
                                  .first = o->first,
                                  .count = o->count,
                                  .batch = batch,
                                  .w = &o->w,
                                  .pool = pool};
        if (o->create_accounts && phase_run(&accounts) != 0)
                goto done;
        if (phase_run(&transfers) != 0)
                goto done;
        double seconds = (double)(transfers.end_ns - transfers.start_ns) / 1e9;
        const struct client_pool_stats *stats = client_pool_stats(pool);
        printf("load: first=%llu transfers=%llu batch=%u seconds=%.3f transfers_per_second=%.0f ",
               (unsigned long long)o->first, (unsigned long long)o->count, batch, seconds,
               seconds > 0 ? (double)o->count / seconds : 0);
        print_latencies("batch_", transfers.latencies_ns, transfers.done);
        printf(" requests=%llu retransmissions=%llu\n", (unsigned long long)stats->requests,
               (unsigned long long)stats->retransmissions);
        status = 0;
done:
        free(accounts.latencies_ns);
        free(transfers.latencies_ns);
        client_pool_destroy(pool);
        return status;
}

/* ---- lookup, query, ready: one blocking session --------------------------------------------- */

static int session_open(const struct options *o, struct client *c, int timeout_ms)
{
        const struct address *a = &o->address[0];
        int rc = client_open(c, &a->sockaddr, a->sockaddr_size, o->cluster, 0, timeout_ms);
        if (rc == CLIENT_OK)
                rc = client_register(c);
        return rc;
}

/* Sends one request; on success *elements and *count are the reply's events. */
static int session_request(struct client *c, uint8_t operation, const void *event,
                           uint32_t event_size, uint32_t element_size, const uint8_t **elements,
                           uint32_t *count)
{
        uint8_t body[1024];
        memcpy(body, event, event_size);
        uint32_t size = client_body_single_batch(body, event_size, 1);
        const struct wire_header *reply;
        int rc = client_request(c, operation, body, size, &reply);
        if (rc != CLIENT_OK)
                return rc;
        if (!client_reply_single_batch((const uint8_t *)reply + WIRE_HEADER_SIZE,
                                       reply->size - WIRE_HEADER_SIZE, element_size, elements,
                                       count)) {
                c->error = "reply is not a one-batch multi-batch body";
                return CLIENT_ERROR_PROTOCOL;
        }
        return CLIENT_OK;
}

static uint64_t random_below(uint64_t *state, uint64_t bound)
{
        *state += 0x9e3779b97f4a7c15ull;
        return mix64(*state) % bound;
}

/* Looks up --count random stored transfers, one id per request, each compared with what was
 * sent. */
static int command_lookup(const struct options *o)
{
        struct client c;
        if (session_open(o, &c, READ_TIMEOUT_MS) != CLIENT_OK) {
                fail("lookup: cannot register: %s", c.error);
                client_close(&c);
                return 1;
        }
        uint64_t *latencies_ns = calloc(o->count + 1, sizeof(uint64_t));
        uint64_t state = o->w.seed ^ io_monotonic_ns(), done = 0, missing = 0, different = 0;
        int rc = latencies_ns == NULL ? CLIENT_ERROR_TOO_LARGE : CLIENT_OK;
        for (; done < o->count && rc == CLIENT_OK && stop_signal == 0; done++) {
                uint64_t index = random_below(&state, o->stored);
                u128 id = transfer_id(&o->w, index);
                const uint8_t *elements;
                uint32_t count;
                uint64_t start = io_monotonic_ns();
                rc = session_request(&c, OPERATION_LOOKUP_TRANSFERS, &id, sizeof(id),
                                     sizeof(struct wire_transfer), &elements, &count);
                latencies_ns[done] = io_monotonic_ns() - start;
                if (rc != CLIENT_OK)
                        break;
                struct wire_transfer t;
                if (count != 1) {
                        missing++;
                        continue;
                }
                memcpy(&t, elements, sizeof(t));
                if (t.user_data_64 != index || !transfer_matches(&o->w, &t, o->stored))
                        different++;
        }
        int status = 1;
        if (rc != CLIENT_OK) {
                fail("lookup: request %llu failed: %s", (unsigned long long)done,
                     c.error != NULL ? c.error : "out of memory");
        } else if (missing > 0 || different > 0 || stop_signal != 0) {
                fail("lookup: %llu of %llu transfers missing, %llu differ from what was sent",
                     (unsigned long long)missing, (unsigned long long)done,
                     (unsigned long long)different);
        } else {
                printf("lookup: count=%llu ", (unsigned long long)done);
                print_latencies("", latencies_ns, done);
                printf("\n");
                status = 0;
        }
        free(latencies_ns);
        client_close(&c);
        return status;
}

/*
 * Timed reads, one request at a time: `query`, query_transfers for one random order's
 * user_data_128, limit 10, each must return exactly its 10 legs, oldest first; `history`,
 * get_account_transfers of one random account, debits and credits, its first 10 (with
 * 10,000 accounts they lie thousands of transfers apart, among the oldest stored: a cold
 * object block each), each must return 10 of that account's transfers, oldest first, as they
 * were sent.
 */
static bool history_matches(const struct options *o, u128 account, const uint8_t *elements,
                            uint32_t count)
{
        bool ok = count == QUERY_LIMIT;
        uint64_t older = 0;
        for (uint32_t i = 0; i < count && ok; i++) {
                struct wire_transfer t;
                memcpy(&t, elements + i * sizeof(t), sizeof(t));
                ok = (t.debit_account_id == account || t.credit_account_id == account) &&
                     t.timestamp > older && transfer_matches(&o->w, &t, o->stored);
                older = t.timestamp;
        }
        return ok;
}

static bool query_matches(const struct options *o, uint64_t order, const uint8_t *elements,
                          uint32_t count)
{
        bool ok = count == ORDER_LEGS;
        for (uint32_t i = 0; i < count && ok; i++) {
                struct wire_transfer t;
                memcpy(&t, elements + i * sizeof(t), sizeof(t));
                ok = t.user_data_64 == order * ORDER_LEGS + i &&
                     transfer_matches(&o->w, &t, o->stored);
        }
        return ok;
}

static int command_reads(const struct options *o, bool history)
{
        const char *name = history ? "history" : "query";
        uint64_t orders = o->stored / ORDER_LEGS;
        if (orders == 0) {
                fail("%s: --stored must be at least %u", name, ORDER_LEGS);
                return 2;
        }
        struct client c;
        if (session_open(o, &c, READ_TIMEOUT_MS) != CLIENT_OK) {
                fail("%s: cannot register: %s", name, c.error);
                client_close(&c);
                return 1;
        }
        uint64_t *latencies_ns = calloc(o->count + 1, sizeof(uint64_t));
        uint64_t state = o->w.seed ^ io_monotonic_ns() ^ 1, done = 0, wrong = 0;
        int rc = latencies_ns == NULL ? CLIENT_ERROR_TOO_LARGE : CLIENT_OK;
        for (; done < o->count && rc == CLIENT_OK && stop_signal == 0; done++) {
                uint64_t pick = random_below(&state, history ? o->w.account_count : orders);
                struct wire_query_filter filter;
                struct wire_account_filter account_filter;
                memset(&filter, 0, sizeof(filter));
                memset(&account_filter, 0, sizeof(account_filter));
                filter.user_data_128 = (u128)pick + 1;
                filter.limit = QUERY_LIMIT;
                account_filter.account_id = account_id(&o->w, pick);
                account_filter.limit = QUERY_LIMIT;
                account_filter.flags = ACCOUNT_FILTER_FLAG_DEBITS | ACCOUNT_FILTER_FLAG_CREDITS;
                const uint8_t *elements;
                uint32_t count;
                uint64_t start = io_monotonic_ns();
                rc = session_request(&c,
                                     history ? OPERATION_GET_ACCOUNT_TRANSFERS
                                             : OPERATION_QUERY_TRANSFERS,
                                     history ? (const void *)&account_filter : &filter,
                                     history ? sizeof(account_filter) : sizeof(filter),
                                     sizeof(struct wire_transfer), &elements, &count);
                latencies_ns[done] = io_monotonic_ns() - start;
                if (rc != CLIENT_OK)
                        break;
                bool ok = history
                                  ? history_matches(o, account_filter.account_id, elements, count)
                                  : query_matches(o, pick, elements, count);
                wrong += ok ? 0 : 1;
        }
        int status = 1;
        if (rc != CLIENT_OK) {
                fail("%s: request %llu failed: %s", name, (unsigned long long)done,
                     c.error != NULL ? c.error : "out of memory");
        } else if (wrong > 0 || stop_signal != 0) {
                fail("%s: %llu of %llu requests did not return the %u transfers expected", name,
                     (unsigned long long)wrong, (unsigned long long)done, QUERY_LIMIT);
        } else {
                printf("%s: count=%llu results=%u ", name, (unsigned long long)done, QUERY_LIMIT);
                print_latencies("", latencies_ns, done);
                printf("\n");
                status = 0;
        }
        free(latencies_ns);
        client_close(&c);
        return status;
}

/*
 * Registers, sending the register request again every READY_ATTEMPT_MS while the server is
 * connected but not answering yet (a replica still recovering ignores requests), for at most
 * READY_CONNECTION_MS on one connection. The same as client_register otherwise.
 */
static int ready_register(struct client *c, uint64_t deadline_ns)
{
        int rc = client_register(c);
        uint64_t give_up_ns = MIN(deadline_ns, io_monotonic_ns() + READY_CONNECTION_MS * 1000000ull);
        while (rc == CLIENT_ERROR_TIMEOUT && io_monotonic_ns() < give_up_ns && stop_signal == 0) {
                const struct wire_header *reply;
                rc = client_retransmit(c, &reply);
                if (rc != CLIENT_OK)
                        continue;
                struct wire_register_result result;
                memcpy(&result, (const uint8_t *)reply + WIRE_HEADER_SIZE, sizeof(result));
                if (reply->reply.commit == 0 || result.batch_size_limit == 0) {
                        c->error = "invalid register reply";
                        return CLIENT_ERROR_PROTOCOL;
                }
                c->session = reply->reply.commit;
                c->batch_size_limit = result.batch_size_limit;
        }
        return rc;
}

/*
 * A connection to a local port nobody listens on can connect to itself when the kernel picks
 * that same port as its source (TCP simultaneous open): it then holds the server's port and
 * echoes every request back. bench/scale.sh picks ports outside the ephemeral range; this
 * check keeps `ready` from waiting on such a connection anyway.
 */
static bool connected_to_itself(int fd)
{
        struct sockaddr_storage local, peer;
        socklen_t local_size = sizeof(local), peer_size = sizeof(peer);
        memset(&local, 0, sizeof(local));
        memset(&peer, 0, sizeof(peer));
        if (getsockname(fd, (struct sockaddr *)&local, &local_size) != 0 ||
            getpeername(fd, (struct sockaddr *)&peer, &peer_size) != 0)
                return false;
        return local_size == peer_size && memcmp(&local, &peer, local_size) == 0;
}

/* One attempt: connect, register, and read back transfer 0 when some are stored. */
static bool ready_attempt(const struct options *o, uint64_t deadline_ns)
{
        const struct address *a = &o->address[0];
        struct client c;
        bool ready = false;
        if (client_open(&c, &a->sockaddr, a->sockaddr_size, o->cluster, 0, READY_ATTEMPT_MS) ==
                CLIENT_OK &&
            !connected_to_itself(c.fd) && ready_register(&c, deadline_ns) == CLIENT_OK) {
                ready = o->stored == 0;
                u128 id = transfer_id(&o->w, 0);
                const uint8_t *elements;
                uint32_t count = 0;
                c.timeout_ms = READ_TIMEOUT_MS;
                if (!ready &&
                    session_request(&c, OPERATION_LOOKUP_TRANSFERS, &id, sizeof(id),
                                    sizeof(struct wire_transfer), &elements, &count) == CLIENT_OK)
                        ready = count == 1;
        }
        client_close(&c);
        return ready;
}

static int command_ready(const struct options *o)
{
        uint64_t start = io_monotonic_ns();
        uint64_t deadline = start + o->timeout_ms * 1000000ull;
        uint64_t attempts = 0;
        while (io_monotonic_ns() < deadline && stop_signal == 0) {
                if (o->pid != 0 && kill((pid_t)o->pid, 0) != 0 && errno == ESRCH) {
                        fail("ready: the server (pid %llu) exited", (unsigned long long)o->pid);
                        return 1;
                }
                attempts++;
                if (ready_attempt(o, deadline)) {
                        printf("ready: seconds=%.3f attempts=%llu\n",
                               (double)(io_monotonic_ns() - start) / 1e9, (unsigned long long)attempts);
                        return 0;
                }
                usleep(READY_RETRY_US);
        }
        fail("ready: no answer within %llu ms (%llu attempts)", (unsigned long long)o->timeout_ms,
             (unsigned long long)attempts);
        return 1;
}

/* ---- Command line --------------------------------------------------------------------------- */

static void usage(void)
{
        fprintf(stderr,
                "usage: scale_client load|lookup|query|history|ready --addresses=<a,b,c> [--cluster=N]\n"
                "         [--first=N] [--count=N] [--stored=N] [--create-accounts] "
                "[--accounts=N]\n"
                "         [--id-order=sequential|random] [--batch=N] [--clients=N] [--seed=N]\n"
                "         [--deadline-ms=N] [--timeout-ms=N] [--pid=N]\n");
}

static int options_parse(int argc, char **argv, struct options *o)
{
        struct flag flags[] = {
            {.name = "addresses", .kind = FLAG_STRING, .required = true},
            {.name = "cluster", .kind = FLAG_U128},
            {.name = "first", .kind = FLAG_U64},
            {.name = "count", .kind = FLAG_U64},
            {.name = "stored", .kind = FLAG_U64},
            {.name = "create-accounts", .kind = FLAG_SWITCH},
            {.name = "accounts", .kind = FLAG_U64},
            {.name = "id-order", .kind = FLAG_STRING},
            {.name = "batch", .kind = FLAG_U64},
            {.name = "clients", .kind = FLAG_U64},
            {.name = "seed", .kind = FLAG_U64},
            {.name = "deadline-ms", .kind = FLAG_U64},
            {.name = "timeout-ms", .kind = FLAG_U64},
            {.name = "pid", .kind = FLAG_U64},
        };
        char error[512];
        uint32_t positional_count = 0;
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), NULL, 0, &positional_count, error,
                        sizeof(error)) != 0) {
                fail("%s", error);
                return -1;
        }
        memset(o, 0, sizeof(*o));
        o->cluster = flags[1].present ? flags[1].u128 : 0;
        o->first = flags[2].u64;
        o->count = flags[3].present ? flags[3].u64 : 0;
        o->stored = flags[4].u64;
        o->create_accounts = flags[5].present;
        o->w.account_count = flags[6].present ? flags[6].u64 : 10000;
        o->w.id_order = ID_SEQUENTIAL;
        if (flags[7].present && strcmp(flags[7].string, "random") == 0)
                o->w.id_order = ID_RANDOM;
        else if (flags[7].present && strcmp(flags[7].string, "sequential") != 0) {
                fail("--id-order must be sequential or random");
                return -1;
        }
        o->batch = flags[8].present ? flags[8].u64 : EVENTS_PER_BATCH_MAX;
        o->clients = flags[9].present ? flags[9].u64 : 2;
        o->w.seed = flags[10].present ? flags[10].u64 : SEED_DEFAULT;
        o->deadline_ms = flags[11].present ? flags[11].u64 : 120000;
        o->timeout_ms = flags[12].present ? flags[12].u64 : 600000;
        o->pid = flags[13].u64;
        if (o->w.account_count < 2 || o->w.account_count > (1ull << 32) || o->batch < 1 ||
            o->batch > EVENTS_PER_BATCH_MAX || o->clients < 1 ||
            o->clients > CLIENT_POOL_SESSIONS_MAX || o->first + o->count >= (1ull << 62) ||
            o->deadline_ms < 1000 || o->deadline_ms > UINT32_MAX) {
                fail("a flag is out of range (--accounts 2..2^32, --batch 1..%u, --clients "
                     "1..%u, --deadline-ms 1000..2^32-1)",
                     EVENTS_PER_BATCH_MAX, CLIENT_POOL_SESSIONS_MAX);
                return -1;
        }
        if (address_parse_list(flags[0].string, o->address, &o->address_count, error,
                               sizeof(error)) != 0) {
                fail("--addresses: %s", error);
                return -1;
        }
        for (uint32_t i = 0; i < o->address_count; i++) {
                if (address_resolve(&o->address[i], error, sizeof(error)) != 0) {
                        fail("--addresses: %s", error);
                        return -1;
                }
        }
        return 0;
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                usage();
                return 2;
        }
        const char *command = argv[1];
        struct options o;
        if (options_parse(argc - 2, argv + 2, &o) != 0) {
                usage();
                return 2;
        }
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);

        if (strcmp(command, "load") == 0)
                return command_load(&o);
        if (strcmp(command, "ready") == 0)
                return command_ready(&o);
        if (o.stored == 0) {
                fail("%s: --stored must be given (how many transfers the server holds)", command);
                return 2;
        }
        if (o.count == 0)
                o.count = strcmp(command, "lookup") == 0 ? 1000 : 100;
        if (strcmp(command, "lookup") == 0)
                return command_lookup(&o);
        if (strcmp(command, "query") == 0 || strcmp(command, "history") == 0)
                return command_reads(&o, strcmp(command, "history") == 0);
        usage();
        return 2;
}
