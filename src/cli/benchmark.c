/*
 * benchmark.c: `tally benchmark`: load a cluster through the C client and measure it.
 *
 * Phases, each over every session of a client pool (one request in flight per session):
 *   1. create the accounts;
 *   2. create the transfers, batches of --batch: transfers per second and batch latency;
 *   3. verify: look up every account and compare its balances with the sums the benchmark
 *      kept (and total debits == total credits == the amount sent);
 *   4. queries: get_account_transfers on random accounts and lookup_transfers of random ids,
 *      every returned transfer compared field by field with what was sent.
 *
 * Nothing is stored per transfer: transfer i is a pure function of (seed, i), so any one can be
 * generated again to check what the server returns. Ids carry a random 63-bit run prefix in
 * their high half, so runs against one long-lived server never collide.
 *
 * --latency-log=<path> writes each create_transfers request's op (from its reply) and latency,
 * one "op latency_us" line each, so that a script can tell the requests a checkpoint delayed
 * or background work delayed from the others by the ops the server's log names
 * (bench/background_latency.sh).
 *
 * Without --addresses it formats a temporary data file, starts `tally start` (its own binary,
 * /proc/self/exe) on a free port, runs, stops it with SIGTERM and deletes the file, printing the
 * server's resident memory at the start and the end.
 */
#include "cli/cli.h"
#include "client/client.h"
#include "io/io.h"
#include "io/address.h"
#include "lib/flags.h"
#include "lib/histogram.h"
#include "lib/mix.h"
#include "wire/types.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EVENTS_PER_BATCH_MAX 8189u
/* Pareto, about 80/20: index = n * u^7 for u uniform in [0, 1) puts a share 0.2^(1/7) = 79.5%
 * of the picks on the first 20% of the accounts (80% exactly would need u^7.21 and libm). */
#define AMOUNT_MAX 1000u
#define SERVER_START_TIMEOUT_MS 10000
#define SERVER_STOP_TIMEOUT_MS 5000
#define LEDGER 1u
#define CODE 1u

enum hot_accounts { HOT_UNIFORM, HOT_PARETO };
enum id_order { ID_SEQUENTIAL, ID_RANDOM };

struct server_child {
        pid_t pid;
        char dir[256];
        char data_path[300];
        char log_path[300];
        char address[64];
};

struct bench {
        struct client_pool *pool;
        uint64_t seed;
        uint64_t id_prefix; /* high 64 bits of every id of this run */
        uint64_t account_count;
        uint64_t transfer_count;
        uint32_t batch;
        enum hot_accounts hot;
        enum id_order id_order;
        uint64_t query_count;
        const char *latency_log; /* --latency-log, or NULL */
        uint64_t *debits;  /* expected debits_posted per account */
        uint64_t *credits; /* expected credits_posted per account */
        u128 amount_total;
        uint64_t random_state;
        /* Outcome */
        uint64_t create_failures;
        uint64_t mismatches;
        uint64_t missing;
        uint64_t transfers_checked;
        uint64_t accounts_checked;
        u128 debits_seen;
        u128 credits_seen;
        bool failed;
        char failure[256];
};

struct phase {
        const char *name;
        uint8_t operation;
        uint64_t request_count;
        uint64_t sent;
        uint64_t done;
        uint64_t events; /* sent */
        uint64_t results;
        uint64_t *latencies_ns;
        uint64_t *ops;            /* per request, its reply's op */
        uint64_t *request_events; /* per request, when the check needs it */
        u128 *request_ids;        /* account of each get_account_transfers */
        uint32_t (*fill)(struct bench *b, struct phase *p, uint8_t *body, uint64_t request);
        void (*check)(struct bench *b, struct phase *p, const struct client_completion *c);
        uint64_t start_ns;
        uint64_t end_ns;
        struct bench *bench;
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int signal)
{
        stop_signal = signal;
}

static uint64_t bench_random(struct bench *b)
{
        b->random_state += 0x9e3779b97f4a7c15ull;
        return mix64(b->random_state);
}

static void bench_fail(struct bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bench_fail(struct bench *b, const char *fmt, ...)
{
        if (b->failed)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->failure, sizeof(b->failure), fmt, ap);
        va_end(ap);
        b->failed = true;
}

/* ---- The workload: pure functions of (seed, index) ---------------------------------------- */

static u128 object_id(const struct bench *b, uint64_t stream, uint64_t index)
{
        uint64_t low = b->id_order == ID_SEQUENTIAL ? index + 1 : mix64(index ^ (stream << 62));
        return ((u128)b->id_prefix << 64) | low;
}

static u128 account_id(const struct bench *b, uint64_t index)
{
        return object_id(b, 0, index);
}

static u128 transfer_id(const struct bench *b, uint64_t index)
{
        return object_id(b, 1, index);
}

static uint64_t pick_account(const struct bench *b, uint64_t h)
{
        if (b->hot == HOT_UNIFORM)
                return h % b->account_count;
        double u = (double)(h >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
        double u2 = u * u, u4 = u2 * u2;
        uint64_t index = (uint64_t)((double)b->account_count * (u4 * u2 * u));
        return MIN(index, b->account_count - 1);
}

static void transfer_make(const struct bench *b, uint64_t index, struct wire_transfer *t,
                          uint64_t *debit_index, uint64_t *credit_index)
{
        uint64_t debit = pick_account(b, mix_hash(b->seed, 2, index));
        uint64_t credit = pick_account(b, mix_hash(b->seed, 3, index));
        if (credit == debit)
                credit = (debit + 1) % b->account_count;
        memset(t, 0, sizeof(*t));
        t->id = transfer_id(b, index);
        t->debit_account_id = account_id(b, debit);
        t->credit_account_id = account_id(b, credit);
        t->amount = 1 + mix_hash(b->seed, 4, index) % AMOUNT_MAX;
        t->user_data_64 = index;
        t->ledger = LEDGER;
        t->code = CODE;
        *debit_index = debit;
        *credit_index = credit;
}

static void account_make(const struct bench *b, uint64_t index, struct wire_account *a)
{
        memset(a, 0, sizeof(*a));
        a->id = account_id(b, index);
        a->user_data_64 = index;
        a->ledger = LEDGER;
        a->code = CODE;
}

/* ---- Phases -------------------------------------------------------------------------------- */

static uint64_t phase_first(const struct bench *b, uint64_t request)
{
        return request * b->batch;
}

static uint32_t fill_accounts(struct bench *b, struct phase *p, uint8_t *body, uint64_t request)
{
        uint64_t first = phase_first(b, request);
        uint32_t count = (uint32_t)MIN((uint64_t)b->batch, b->account_count - first);
        struct wire_account *accounts = (struct wire_account *)body;
        for (uint32_t i = 0; i < count; i++)
                account_make(b, first + i, &accounts[i]);
        p->events += count;
        return client_body_single_batch(body, sizeof(struct wire_account), count);
}

static uint32_t fill_transfers(struct bench *b, struct phase *p, uint8_t *body, uint64_t request)
{
        uint64_t first = phase_first(b, request);
        uint32_t count = (uint32_t)MIN((uint64_t)b->batch, b->transfer_count - first);
        struct wire_transfer *transfers = (struct wire_transfer *)body;
        for (uint32_t i = 0; i < count; i++) {
                uint64_t debit, credit;
                transfer_make(b, first + i, &transfers[i], &debit, &credit);
                b->debits[debit] += (uint64_t)transfers[i].amount;
                b->credits[credit] += (uint64_t)transfers[i].amount;
                b->amount_total += transfers[i].amount;
        }
        p->events += count;
        return client_body_single_batch(body, sizeof(struct wire_transfer), count);
}

/* Create replies list only the failed events. */
static void check_create(struct bench *b, struct phase *p, const struct client_completion *c)
{
        const uint8_t *results;
        uint32_t count;
        if (!client_reply_single_batch(c->body, c->body_size, sizeof(struct wire_create_result),
                                       &results, &count)) {
                bench_fail(b, "%s: reply is not a one-batch multi-batch body", p->name);
                return;
        }
        if (count > 0) {
                struct wire_create_result first;
                memcpy(&first, results, sizeof(first));
                if (b->create_failures == 0)
                        fprintf(stderr,
                                "%s: request %llu: %u events failed, first index=%u "
                                "result=%u\n",
                                p->name, (unsigned long long)c->user_data, count, first.index,
                                first.result);
                b->create_failures += count;
        }
}

static uint32_t fill_lookup_accounts(struct bench *b, struct phase *p, uint8_t *body,
                                     uint64_t request)
{
        uint64_t first = phase_first(b, request);
        uint32_t count = (uint32_t)MIN((uint64_t)b->batch, b->account_count - first);
        for (uint32_t i = 0; i < count; i++) {
                u128 id = account_id(b, first + i);
                memcpy(body + i * sizeof(u128), &id, sizeof(id));
        }
        p->events += count;
        p->request_events[request] = count;
        return client_body_single_batch(body, sizeof(u128), count);
}

static void check_lookup_accounts(struct bench *b, struct phase *p,
                                  const struct client_completion *c)
{
        const uint8_t *results;
        uint32_t count;
        if (!client_reply_single_batch(c->body, c->body_size, sizeof(struct wire_account), &results,
                                       &count)) {
                bench_fail(b, "%s: reply is not a one-batch multi-batch body", p->name);
                return;
        }
        b->missing += p->request_events[c->user_data] - count;
        p->results += count;
        for (uint32_t i = 0; i < count; i++) {
                struct wire_account a;
                memcpy(&a, results + i * sizeof(a), sizeof(a));
                uint64_t index = a.user_data_64;
                if (index >= b->account_count || a.id != account_id(b, index) ||
                    a.debits_posted != b->debits[index] || a.credits_posted != b->credits[index] ||
                    a.debits_pending != 0 || a.credits_pending != 0 || a.ledger != LEDGER ||
                    a.code != CODE || a.flags != 0 || a.timestamp == 0) {
                        if (b->mismatches == 0)
                                fprintf(stderr,
                                        "verify: account index=%llu differs from what "
                                        "was sent\n",
                                        (unsigned long long)index);
                        b->mismatches++;
                        continue;
                }
                b->debits_seen += a.debits_posted;
                b->credits_seen += a.credits_posted;
                b->accounts_checked++;
        }
}

/* A returned transfer must equal transfer user_data_64 as generated. */
static bool transfer_matches(const struct bench *b, const struct wire_transfer *t)
{
        uint64_t index = t->user_data_64;
        if (index >= b->transfer_count)
                return false;
        struct wire_transfer expected;
        uint64_t debit, credit;
        transfer_make(b, index, &expected, &debit, &credit);
        if (t->timestamp == 0)
                return false;
        expected.timestamp = t->timestamp;
        return memcmp(&expected, t, sizeof(expected)) == 0;
}

static uint32_t fill_lookup_transfers(struct bench *b, struct phase *p, uint8_t *body,
                                      uint64_t request)
{
        (void)request;
        uint32_t count = (uint32_t)MIN((uint64_t)b->batch, b->transfer_count);
        for (uint32_t i = 0; i < count; i++) {
                u128 id = transfer_id(b, bench_random(b) % b->transfer_count);
                memcpy(body + i * sizeof(u128), &id, sizeof(id));
        }
        p->events += count;
        p->request_events[request] = count;
        return client_body_single_batch(body, sizeof(u128), count);
}

static void check_transfers(struct bench *b, struct phase *p, const struct client_completion *c,
                            u128 account)
{
        const uint8_t *results;
        uint32_t count;
        if (!client_reply_single_batch(c->body, c->body_size, sizeof(struct wire_transfer),
                                       &results, &count)) {
                bench_fail(b, "%s: reply is not a one-batch multi-batch body", p->name);
                return;
        }
        p->results += count;
        for (uint32_t i = 0; i < count; i++) {
                struct wire_transfer t;
                memcpy(&t, results + i * sizeof(t), sizeof(t));
                bool ok =
                    transfer_matches(b, &t) && (account == 0 || t.debit_account_id == account ||
                                                t.credit_account_id == account);
                if (!ok) {
                        if (b->mismatches == 0)
                                fprintf(stderr,
                                        "verify: %s returned a transfer "
                                        "(user_data_64=%llu) that differs from what "
                                        "was sent\n",
                                        p->name, (unsigned long long)t.user_data_64);
                        b->mismatches++;
                        continue;
                }
                b->transfers_checked++;
        }
        if (account == 0)
                b->missing += p->request_events[c->user_data] - count;
}

static void check_lookup_transfers(struct bench *b, struct phase *p,
                                   const struct client_completion *c)
{
        check_transfers(b, p, c, 0);
}

static uint32_t fill_account_transfers(struct bench *b, struct phase *p, uint8_t *body,
                                       uint64_t request)
{
        struct wire_account_filter filter;
        memset(&filter, 0, sizeof(filter));
        filter.account_id = account_id(b, pick_account(b, bench_random(b)));
        filter.limit = EVENTS_PER_BATCH_MAX;
        filter.flags = ACCOUNT_FILTER_FLAG_DEBITS | ACCOUNT_FILTER_FLAG_CREDITS;
        memcpy(body, &filter, sizeof(filter));
        p->request_ids[request] = filter.account_id;
        p->events += 1;
        return client_body_single_batch(body, sizeof(filter), 1);
}

static void check_account_transfers(struct bench *b, struct phase *p,
                                    const struct client_completion *c)
{
        check_transfers(b, p, c, p->request_ids[c->user_data]);
}

static void phase_on_done(void *context, const struct client_completion *c)
{
        struct phase *p = context;
        struct bench *b = p->bench;
        p->done++;
        if (c->result != CLIENT_OK) {
                bench_fail(b, "%s: request %llu failed: %s (eviction reason %u): %s", p->name,
                           (unsigned long long)c->user_data,
                           c->result == CLIENT_ERROR_TIMEOUT ? "timed out" : "evicted",
                           c->eviction_reason,
                           client_pool_last_error(b->pool) ? client_pool_last_error(b->pool) : "");
                return;
        }
        p->latencies_ns[c->user_data] = c->latency_ns;
        p->ops[c->user_data] = c->reply->reply.op;
        p->check(b, p, c);
}

static int phase_run(struct bench *b, struct phase *p)
{
        p->bench = b;
        p->latencies_ns = calloc(p->request_count + 1, sizeof(uint64_t));
        p->ops = calloc(p->request_count + 1, sizeof(uint64_t));
        p->request_events = calloc(p->request_count + 1, sizeof(uint64_t));
        p->request_ids = calloc(p->request_count + 1, sizeof(u128));
        if (p->latencies_ns == NULL || p->ops == NULL || p->request_events == NULL ||
            p->request_ids == NULL) {
                bench_fail(b, "%s: out of memory", p->name);
                return -1;
        }
        p->start_ns = io_monotonic_ns();
        while (p->done < p->request_count && !b->failed && stop_signal == 0) {
                int32_t s;
                while (p->sent < p->request_count && (s = client_pool_idle_session(b->pool)) >= 0) {
                        uint8_t *body = client_pool_body(b->pool, (uint32_t)s);
                        uint32_t size = p->fill(b, p, body, p->sent);
                        int rc =
                            client_pool_send(b->pool, (uint32_t)s, p->operation, size, p->sent);
                        if (rc != CLIENT_OK) {
                                bench_fail(b, "%s: send failed (%d)", p->name, rc);
                                break;
                        }
                        p->sent++;
                }
                if (p->sent < p->request_count && client_pool_in_flight(b->pool) == 0) {
                        bench_fail(b, "%s: no usable session left", p->name);
                        break;
                }
                client_pool_run(b->pool, 100, phase_on_done, p);
        }
        p->end_ns = io_monotonic_ns();
        if (stop_signal != 0)
                bench_fail(b, "interrupted");
        return b->failed ? -1 : 0;
}

/* Each request's op and latency, in request order (before phase_report sorts latencies). */
static int latency_log_write(const struct phase *p, const char *path)
{
        FILE *f = fopen(path, "w");
        if (f == NULL) {
                cli_error("benchmark: --latency-log: cannot open %s: %s", path, strerror(errno));
                return -1;
        }
        for (uint64_t i = 0; i < p->done; i++)
                fprintf(f, "%llu %llu\n", (unsigned long long)p->ops[i],
                        (unsigned long long)(p->latencies_ns[i] / 1000));
        if (fclose(f) != 0) {
                cli_error("benchmark: --latency-log: cannot write %s: %s", path, strerror(errno));
                return -1;
        }
        return 0;
}

static void phase_report(const struct phase *p, const char *unit, uint64_t units)
{
        double seconds = (double)(p->end_ns - p->start_ns) / 1e9;
        latency_sort(p->latencies_ns, p->done);
        printf("%s: %llu %s in %.3f s = %.0f %s/s (%llu requests)\n", p->name,
               (unsigned long long)units, unit, seconds, seconds > 0 ? (double)units / seconds : 0,
               unit, (unsigned long long)p->done);
        printf("%s: batch latency p50=%.3f ms p90=%.3f ms p99=%.3f ms p100=%.3f ms\n", p->name,
               latency_percentile_ms(p->latencies_ns, p->done, 50),
               latency_percentile_ms(p->latencies_ns, p->done, 90),
               latency_percentile_ms(p->latencies_ns, p->done, 99),
               latency_percentile_ms(p->latencies_ns, p->done, 100));
}

static void phase_free(struct phase *p)
{
        free(p->latencies_ns);
        free(p->ops);
        free(p->request_events);
        free(p->request_ids);
}

static uint64_t div_ceil(uint64_t a, uint64_t b)
{
        return (a + b - 1) / b;
}

static int bench_run(struct bench *b)
{
        struct phase phases[] = {
            {.name = "accounts",
             .operation = OPERATION_CREATE_ACCOUNTS,
             .request_count = div_ceil(b->account_count, b->batch),
             .fill = fill_accounts,
             .check = check_create},
            {.name = "transfers",
             .operation = OPERATION_CREATE_TRANSFERS,
             .request_count = div_ceil(b->transfer_count, b->batch),
             .fill = fill_transfers,
             .check = check_create},
            {.name = "lookup_accounts",
             .operation = OPERATION_LOOKUP_ACCOUNTS,
             .request_count = div_ceil(b->account_count, b->batch),
             .fill = fill_lookup_accounts,
             .check = check_lookup_accounts},
            {.name = "get_account_transfers",
             .operation = OPERATION_GET_ACCOUNT_TRANSFERS,
             .request_count = b->query_count,
             .fill = fill_account_transfers,
             .check = check_account_transfers},
            {.name = "lookup_transfers",
             .operation = OPERATION_LOOKUP_TRANSFERS,
             .request_count = b->query_count,
             .fill = fill_lookup_transfers,
             .check = check_lookup_transfers},
        };
        int status = 0;
        for (uint32_t i = 0; i < ARRAY_LEN(phases) && status == 0; i++) {
                struct phase *p = &phases[i];
                status = phase_run(b, p);
                if (status != 0)
                        break;
                if (i == 0) {
                        printf("accounts: %llu created in %.3f s\n",
                               (unsigned long long)b->account_count,
                               (double)(p->end_ns - p->start_ns) / 1e9);
                } else if (i == 1) {
                        if (b->latency_log != NULL && latency_log_write(p, b->latency_log) != 0)
                                status = -1;
                        phase_report(p, "transfers", b->transfer_count);
                } else if (i == 2) {
                        phase_report(p, "accounts", p->results);
                } else {
                        phase_report(p, "transfers", p->results);
                }
                fflush(stdout);
                if (i <= 1 && b->create_failures > 0) {
                        bench_fail(b, "%llu events failed to be created",
                                   (unsigned long long)b->create_failures);
                        status = -1;
                }
        }
        for (uint32_t i = 0; i < ARRAY_LEN(phases); i++)
                phase_free(&phases[i]);
        return status;
}

static int bench_verify_report(struct bench *b)
{
        char total[40], debits[40], credits[40];
        format_u128(b->amount_total, total);
        format_u128(b->debits_seen, debits);
        format_u128(b->credits_seen, credits);
        bool ok = b->mismatches == 0 && b->missing == 0 &&
                  b->accounts_checked == b->account_count && b->debits_seen == b->amount_total &&
                  b->credits_seen == b->amount_total;
        printf("verify: %s accounts_checked=%llu transfers_checked=%llu mismatches=%llu "
               "missing=%llu sum_debits=%s sum_credits=%s amount_sent=%s\n",
               ok ? "ok" : "FAILED", (unsigned long long)b->accounts_checked,
               (unsigned long long)b->transfers_checked, (unsigned long long)b->mismatches,
               (unsigned long long)b->missing, debits, credits, total);
        return ok ? 0 : -1;
}

/* ---- A temporary server -------------------------------------------------------------------- */

static int run_child(const char *log_path, char *const argv[], bool die_with_parent)
{
        pid_t pid = fork();
        if (pid != 0)
                return pid;
        if (die_with_parent)
                prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
                dup2(fd, STDOUT_FILENO);
                dup2(fd, STDERR_FILENO);
        }
        execv("/proc/self/exe", argv);
        _exit(127);
}

static uint16_t free_port(void)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in address = {.sin_family = AF_INET,
                                      .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t size = sizeof(address);
        uint16_t port = 0;
        if (fd >= 0 && bind(fd, (struct sockaddr *)&address, size) == 0 &&
            getsockname(fd, (struct sockaddr *)&address, &size) == 0)
                port = ntohs(address.sin_port);
        if (fd >= 0)
                close(fd);
        return port;
}

static bool log_contains(const char *path, const char *needle)
{
        char text[16384];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        ssize_t n = read(fd, text, sizeof(text) - 1);
        close(fd);
        if (n <= 0)
                return false;
        text[n] = '\0';
        return strstr(text, needle) != NULL;
}

static void print_log(const char *path)
{
        char text[4096];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return;
        ssize_t n = read(fd, text, sizeof(text) - 1);
        close(fd);
        if (n > 0) {
                text[n] = '\0';
                fprintf(stderr, "server log:\n%s", text);
        }
}

static void server_stop(struct server_child *server)
{
        if (server->pid > 0) {
                kill(server->pid, SIGTERM);
                int status = 0;
                uint64_t deadline = io_monotonic_ns() + SERVER_STOP_TIMEOUT_MS * 1000000ull;
                while (waitpid(server->pid, &status, WNOHANG) == 0) {
                        if (io_monotonic_ns() > deadline) {
                                fprintf(stderr, "benchmark: the server ignored SIGTERM; killing "
                                                "it\n");
                                kill(server->pid, SIGKILL);
                                waitpid(server->pid, &status, 0);
                                break;
                        }
                        usleep(10000);
                }
                server->pid = 0;
        }
        if (server->dir[0] != '\0') {
                unlink(server->data_path);
                unlink(server->log_path);
                rmdir(server->dir);
                server->dir[0] = '\0';
        }
}

static int server_start(struct server_child *server, u128 cluster)
{
        const char *tmp = getenv("TMPDIR");
        snprintf(server->dir, sizeof(server->dir), "%s/tally-benchmark-XXXXXX",
                 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
        if (mkdtemp(server->dir) == NULL) {
                cli_error("benchmark: cannot create a temporary directory %s: %s", server->dir,
                          strerror(errno));
                server->dir[0] = '\0';
                return -1;
        }
        snprintf(server->data_path, sizeof(server->data_path), "%s/0_0.tally", server->dir);
        snprintf(server->log_path, sizeof(server->log_path), "%s/server.log", server->dir);
        char cluster_flag[64], cluster_text[40];
        format_u128(cluster, cluster_text);
        snprintf(cluster_flag, sizeof(cluster_flag), "--cluster=%s", cluster_text);
        char *format_argv[] = {
            "tally",           "format", cluster_flag, "--replica=0", "--replica-count=1",
            server->data_path, NULL};
        int status = 0;
        pid_t pid = run_child(server->log_path, format_argv, false);
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
                cli_error("benchmark: `tally format` failed");
                print_log(server->log_path);
                return -1;
        }
        for (uint32_t attempt = 0; attempt < 3; attempt++) {
                uint16_t port = free_port();
                snprintf(server->address, sizeof(server->address), "127.0.0.1:%u", port);
                char addresses_flag[96], listening[96];
                snprintf(addresses_flag, sizeof(addresses_flag), "--addresses=%s", server->address);
                snprintf(listening, sizeof(listening), "listening on %s", server->address);
                char *start_argv[] = {"tally", "start", addresses_flag, server->data_path, NULL};
                server->pid = run_child(server->log_path, start_argv, true);
                if (server->pid < 0)
                        break;
                uint64_t deadline = io_monotonic_ns() + SERVER_START_TIMEOUT_MS * 1000000ull;
                while (io_monotonic_ns() < deadline && stop_signal == 0) {
                        if (log_contains(server->log_path, listening))
                                return 0;
                        if (waitpid(server->pid, &status, WNOHANG) == server->pid) {
                                server->pid = 0;
                                break;
                        }
                        usleep(10000);
                }
                if (server->pid > 0) {
                        kill(server->pid, SIGKILL);
                        waitpid(server->pid, &status, 0);
                        server->pid = 0;
                }
        }
        cli_error("benchmark: the server did not start");
        print_log(server->log_path);
        return -1;
}

static void print_rss(const struct server_child *server, const char *when)
{
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/status", (int)server->pid);
        FILE *f = fopen(path, "r");
        if (f == NULL)
                return;
        unsigned long rss = 0, hwm = 0;
        while (fgets(line, sizeof(line), f) != NULL) {
                sscanf(line, "VmRSS: %lu kB", &rss);
                sscanf(line, "VmHWM: %lu kB", &hwm);
        }
        fclose(f);
        printf("server memory at %s: rss=%lu KiB hwm=%lu KiB\n", when, rss, hwm);
}

/* ---- The command --------------------------------------------------------------------------- */

static int parse_choice(const struct flag *flag, const char *a, const char *b, int *out)
{
        if (!flag->present)
                return 0;
        if (strcmp(flag->string, a) == 0)
                *out = 0;
        else if (strcmp(flag->string, b) == 0)
                *out = 1;
        else {
                cli_error("benchmark: --%s must be %s or %s", flag->name, a, b);
                return -1;
        }
        return 0;
}

int cli_benchmark(int argc, char **argv)
{
        struct flag flags[] = {
            {.name = "addresses", .kind = FLAG_STRING},
            {.name = "cluster", .kind = FLAG_U128},
            {.name = "accounts", .kind = FLAG_U64},
            {.name = "transfers", .kind = FLAG_U64},
            {.name = "batch", .kind = FLAG_U64},
            {.name = "clients", .kind = FLAG_U64},
            {.name = "hot-accounts", .kind = FLAG_STRING},
            {.name = "id-order", .kind = FLAG_STRING},
            {.name = "query-count", .kind = FLAG_U64},
            {.name = "seed", .kind = FLAG_U64},
            {.name = "latency-log", .kind = FLAG_STRING},
        };
        char error[512];
        uint32_t positional_count = 0;
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), NULL, 0, &positional_count, error,
                        sizeof(error)) != 0) {
                cli_error("benchmark: %s", error);
                return 2;
        }
        static struct bench bench;
        struct bench *b = &bench;
        b->account_count = flags[2].present ? flags[2].u64 : 10000;
        b->transfer_count = flags[3].present ? flags[3].u64 : 1000000;
        uint64_t batch = flags[4].present ? flags[4].u64 : EVENTS_PER_BATCH_MAX;
        /* Two sessions keep the server busy while one reply is in transit; measured on 2 cores,
         * 4 or 8 gave the same throughput with 2-4x the batch latency (queueing). */
        uint64_t clients = flags[5].present ? flags[5].u64 : 2;
        b->query_count = flags[8].present ? flags[8].u64 : 100;
        b->latency_log = flags[10].present ? flags[10].string : NULL;
        int hot = 0, order = 0; /* the first choice of each is the default */
        if (parse_choice(&flags[6], "pareto", "uniform", &hot) != 0 ||
            parse_choice(&flags[7], "sequential", "random", &order) != 0)
                return 2;
        b->hot = hot == 0 ? HOT_PARETO : HOT_UNIFORM;
        b->id_order = order == 0 ? ID_SEQUENTIAL : ID_RANDOM;
        if (b->account_count < 2 || b->account_count > (1ull << 32) ||
            b->transfer_count > (1ull << 40)) {
                cli_error("benchmark: --accounts must be 2..4294967296 and --transfers at most "
                          "2^40");
                return 2;
        }
        if (batch < 1 || batch > EVENTS_PER_BATCH_MAX) {
                cli_error("benchmark: --batch must be 1..%u", EVENTS_PER_BATCH_MAX);
                return 2;
        }
        if (clients < 1 || clients > CLIENT_POOL_SESSIONS_MAX) {
                cli_error("benchmark: --clients must be 1..%u (the server keeps 64 sessions)",
                          CLIENT_POOL_SESSIONS_MAX);
                return 2;
        }
        if (getrandom(&b->seed, sizeof(b->seed), 0) != sizeof(b->seed))
                b->seed = io_monotonic_ns();
        if (flags[9].present)
                b->seed = flags[9].u64;
        b->random_state = mix64(b->seed);
        /* The prefix differs per run even with a fixed seed, so reruns against one server
         * never collide; 63 bits keep every id below 2^128 - 1. */
        uint64_t prefix = 0;
        if (getrandom(&prefix, sizeof(prefix), 0) != sizeof(prefix))
                prefix = io_monotonic_ns();
        b->id_prefix = (prefix >> 1) | 1;
        u128 cluster = flags[1].present ? flags[1].u128 : 0;

        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        struct server_child server;
        memset(&server, 0, sizeof(server));
        const char *address_list = flags[0].string;
        if (!flags[0].present) {
                if (server_start(&server, cluster) != 0) {
                        server_stop(&server);
                        return 1;
                }
                address_list = server.address;
        }
        struct address addresses[ADDRESSES_MAX];
        uint32_t address_count = 0;
        int status = 1;
        if (address_parse_list(address_list, addresses, &address_count, error, sizeof(error)) !=
            0) {
                cli_error("benchmark: --addresses: %s", error);
                status = 2;
                goto done;
        }
        for (uint32_t i = 0; i < address_count; i++) {
                if (address_resolve(&addresses[i], error, sizeof(error)) != 0) {
                        cli_error("benchmark: --addresses: %s", error);
                        status = 2;
                        goto done;
                }
        }
        b->debits = calloc(b->account_count, sizeof(uint64_t));
        b->credits = calloc(b->account_count, sizeof(uint64_t));
        if (b->debits == NULL || b->credits == NULL) {
                cli_error("benchmark: out of memory for %llu accounts",
                          (unsigned long long)b->account_count);
                goto done;
        }
        char cluster_text[40];
        format_u128(cluster, cluster_text);
        printf("benchmark: cluster=%s addresses=%s%s accounts=%llu transfers=%llu batch=%llu "
               "clients=%llu hot_accounts=%s id_order=%s query_count=%llu seed=%llu\n",
               cluster_text, address_list, server.pid > 0 ? " (started here)" : "",
               (unsigned long long)b->account_count, (unsigned long long)b->transfer_count,
               (unsigned long long)batch, (unsigned long long)clients,
               b->hot == HOT_PARETO ? "pareto" : "uniform",
               b->id_order == ID_SEQUENTIAL ? "sequential" : "random",
               (unsigned long long)b->query_count, (unsigned long long)b->seed);
        if (server.pid > 0)
                print_rss(&server, "start");
        fflush(stdout);

        struct client_pool_options options = {
            .addresses = addresses,
            .address_count = address_count,
            .cluster = cluster,
            .session_count = (uint32_t)clients,
            .request_timeout_ms = 2000,
            .request_deadline_ms = 60000,
        };
        b->pool = client_pool_create(&options, error, sizeof(error));
        if (b->pool == NULL) {
                cli_error("benchmark: %s", error);
                goto done;
        }
        /* A batch must fit the cluster's limit (8189 transfers at 1 MiB, 253 in development). */
        uint32_t limit = client_pool_batch_size_limit(b->pool);
        uint32_t batch_max = (limit - 128) / (uint32_t)sizeof(struct wire_transfer);
        if (batch > batch_max) {
                printf("benchmark: --batch lowered from %llu to %u (batch_size_limit=%u)\n",
                       (unsigned long long)batch, batch_max, limit);
                batch = batch_max;
        }
        b->batch = (uint32_t)batch;
        if (bench_run(b) == 0)
                status = bench_verify_report(b) == 0 ? 0 : 1;
        if (b->failed)
                cli_error("benchmark: %s", b->failure);
        const struct client_pool_stats *stats = client_pool_stats(b->pool);
        printf("client: requests=%llu retransmissions=%llu reconnects=%llu dropped=%llu "
               "sent_mib=%.1f received_mib=%.1f\n",
               (unsigned long long)stats->requests, (unsigned long long)stats->retransmissions,
               (unsigned long long)stats->reconnects, (unsigned long long)stats->messages_dropped,
               (double)stats->bytes_sent / 1048576.0, (double)stats->bytes_received / 1048576.0);
        if (server.pid > 0)
                print_rss(&server, "end");
done:
        client_pool_destroy(b->pool);
        free(b->debits);
        free(b->credits);
        if (server.pid > 0 && status != 0 && status != 2)
                print_log(server.log_path);
        server_stop(&server);
        return status;
}
