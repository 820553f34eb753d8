/*
 * test_ops.c: the operations endpoints' pieces: the Prometheus exposition writer, the latency
 * histogram, JSON log lines, the offline ledger invariants of `inspect --verify`, the HTTP request parser on hostile input (partial, oversized, malformed, random
 * bytes), and the HTTP server itself on loopback: a request answered, the connection limit,
 * a slowloris client and a client that never reads closed in bounded time, a huge header
 * answered 431, while a well-behaved client is still served.
 */
#include "test.h"

#include "io/address.h"
#include "io/io.h"
#include "ledger/ledger_internal.h"
#include "lib/histogram.h"
#include "lib/log.h"
#include "ops/expo.h"
#include "ops/http.h"
#include "ops/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_expo_format(void)
{
        static char buffer[4096];
        struct expo e;
        expo_init(&e, buffer, sizeof(buffer));
        expo_family(&e, "tally_x_total", "counter", "Help with \\ and\nnewline.");
        expo_u64(&e, "tally_x_total", NULL, NULL, 42);
        expo_u64(&e, "tally_x_total", "kind", "a\"b\\c\nd", 7);
        expo_u64_2(&e, "tally_x_total", "operation", "create_transfers", "result", "ok", 1);
        CHECK(!e.overflow);
        buffer[e.size] = '\0';
        CHECK(strcmp(buffer, "# HELP tally_x_total Help with \\\\ and\\nnewline.\n"
                             "# TYPE tally_x_total counter\n"
                             "tally_x_total 42\n"
                             "tally_x_total{kind=\"a\\\"b\\\\c\\nd\"} 7\n"
                             "tally_x_total{operation=\"create_transfers\",result=\"ok\"} 1\n") ==
              0);
        CHECK(expo_name_valid("tally_a:b_c9"));
        CHECK(!expo_name_valid("9abc"));
        CHECK(!expo_name_valid("a-b"));
        CHECK(!expo_name_valid(""));
}

static void test_expo_histogram(void)
{
        struct histogram h;
        memset(&h, 0, sizeof(h));
        histogram_observe(&h, 50000);       /* 50 us: first bucket */
        histogram_observe(&h, 100000);      /* exactly 100 us: first bucket (le) */
        histogram_observe(&h, 3000000);     /* 3 ms: the 5 ms bucket */
        histogram_observe(&h, 20000000000); /* 20 s: +Inf */
        CHECK_EQ_U64(h.count, 4);
        CHECK_EQ_U64(h.buckets[0], 2);
        CHECK_EQ_U64(h.buckets[5], 1);
        CHECK_EQ_U64(h.buckets[HISTOGRAM_BUCKETS], 1);
        static char buffer[8192];
        struct expo e;
        expo_init(&e, buffer, sizeof(buffer));
        expo_histogram(&e, "tally_latency_seconds", "Latency.", &h);
        CHECK(!e.overflow);
        buffer[e.size] = '\0';
        CHECK(strstr(buffer, "# TYPE tally_latency_seconds histogram\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_bucket{le=\"0.0001\"} 2\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_bucket{le=\"0.0025\"} 2\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_bucket{le=\"0.005\"} 3\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_bucket{le=\"10\"} 3\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_bucket{le=\"+Inf\"} 4\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_sum 20.00315\n") != NULL);
        CHECK(strstr(buffer, "tally_latency_seconds_count 4\n") != NULL);
}

static void test_expo_overflow(void)
{
        char buffer[40];
        struct expo e;
        expo_init(&e, buffer, sizeof(buffer));
        expo_family(&e, "tally_a_long_metric_name_total", "counter", "Some help text.");
        CHECK(e.overflow);
        uint32_t size = e.size;
        expo_u64(&e, "tally_b", NULL, NULL, 1);
        CHECK(e.overflow);
        CHECK_EQ_U64(e.size, size); /* nothing more written */
        CHECK(e.size < sizeof(buffer));
}

static void test_result_names(void)
{
        CHECK(strcmp(metrics_result_name(false, 54), "exceeds_credits") == 0);
        CHECK(strcmp(metrics_result_name(false, 46), "exists") == 0);
        CHECK(strcmp(metrics_result_name(true, 21), "exists") == 0);
        CHECK(metrics_result_name(true, 200) == NULL);
}

static void test_log_json(void)
{
        static char out[512];
        log_format_json(out, sizeof(out), "T", "warn", 2,
                        "connection closed: peer closed peer=127.0.0.1:5 error=Connection reset "
                        "by peer count=12 replica=2 note=\"q\"");
        CHECK(strcmp(out, "{\"time\":\"T\",\"level\":\"warn\",\"replica\":2,\"msg\":"
                          "\"connection closed: peer closed\",\"peer\":\"127.0.0.1:5\","
                          "\"error\":\"Connection reset by peer\",\"count\":12,"
                          "\"note\":\"\\\"q\\\"\"}") == 0);
        log_format_json(out, sizeof(out), "T", "info", -1, "key=1 other=-5 big=123456789012345678901");
        CHECK(strcmp(out, "{\"time\":\"T\",\"level\":\"info\",\"msg\":\"\",\"key\":1,"
                          "\"other\":-5,\"big\":\"123456789012345678901\"}") == 0);
        /* Cut short: still one valid object, whole pairs only. */
        char small[64];
        log_format_json(small, sizeof(small), "2026-01-01T00:00:00.000Z", "error", 1,
                        "a long message with control \x01 chars alpha=1 beta=2 gamma=3");
        size_t n = strlen(small);
        CHECK(n < sizeof(small));
        CHECK(small[0] == '{' && small[n - 1] == '}');
}

/* Tampering, straight into the trees: adds to an account's debits_posted / debits_pending. */
static void account_add(struct ledger *ledger, u128 id, u128 posted, u128 pending)
{
        struct wire_account a;
        CHECK(lsm_groove_get_by_id(&ledger->accounts, id, &a) == 1);
        a.debits_posted += posted;
        a.debits_pending += pending;
        lsm_groove_update(&ledger->accounts, &a);
}

/* ... and to a transfer's amount (its indexed fields stay as they are). */
static void transfer_add(struct ledger *ledger, u128 id, u128 amount)
{
        struct wire_transfer t;
        CHECK(lsm_groove_get_by_id(&ledger->transfers, id, &t) == 1);
        t.amount += amount;
        lsm_tree_put(&ledger->transfers.objects, &t);
        /* Transfers are never updated, so no groove call writes through the object cache: the
         * tampering does, or the next read of this id would find the copy from before it. */
        lsm_groove_cache_put(&ledger->transfers, &t);
}

/* ledger_verify: a ledger built by executing transfers passes; each kind of tampering fails. */
static void test_ledger_verify(void)
{
        struct ledger_config config = {.accounts_max = 64, .transfers_max = 256};
        struct ledger *ledger = ledger_create(&config);
        CHECK(ledger != NULL);
        if (ledger == NULL)
                return;
        static struct wire_account accounts[4];
        memset(accounts, 0, sizeof(accounts));
        for (uint32_t i = 0; i < 4; i++) {
                accounts[i].id = i + 1;
                accounts[i].ledger = i < 2 ? 1 : 2;
                accounts[i].code = 1;
        }
        static uint8_t reply[LEDGER_BODY_SIZE_MAX];
        uint64_t timestamp = 1000;
        CHECK(ledger_execute(ledger, OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED, timestamp,
                             (const uint8_t *)accounts, sizeof(accounts), reply) == 0);
        timestamp += 10;
        static struct wire_transfer transfers[3];
        memset(transfers, 0, sizeof(transfers));
        for (uint32_t i = 0; i < 3; i++) {
                transfers[i].id = 100 + i;
                transfers[i].debit_account_id = i == 2 ? 3 : 1;
                transfers[i].credit_account_id = i == 2 ? 4 : 2;
                transfers[i].amount = 10 * (i + 1);
                transfers[i].ledger = i == 2 ? 2 : 1;
                transfers[i].code = 1;
                transfers[i].flags = i == 1 ? TRANSFER_FLAG_PENDING : 0;
        }
        CHECK(ledger_execute(ledger, OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED, timestamp,
                             (const uint8_t *)transfers, sizeof(transfers), reply) == 0);
        struct ledger_verify_report report;
        char error[256];
        CHECK(ledger_verify(ledger, &report, error, sizeof(error)) == 0);
        CHECK_EQ_U64(report.accounts, 4);
        CHECK_EQ_U64(report.transfers, 3);
        CHECK_EQ_U64(report.ledgers, 2);
        account_add(ledger, 1, 1, 0); /* an account off its transfers */
        CHECK(ledger_verify(ledger, &report, error, sizeof(error)) != 0);
        CHECK(strstr(error, "debits_posted") != NULL);
        account_add(ledger, 1, (u128)-1, 0);
        transfer_add(ledger, 100, 5); /* a transfer that no balance reflects */
        CHECK(ledger_verify(ledger, &report, error, sizeof(error)) != 0);
        transfer_add(ledger, 100, (u128)-5);
        account_add(ledger, 1, 0, 7); /* both sides off: debits != credits */
        transfer_add(ledger, 101, 7);
        CHECK(ledger_verify(ledger, &report, error, sizeof(error)) != 0);
        CHECK(strstr(error, "credits_pending") != NULL);
        account_add(ledger, 1, 0, (u128)-7);
        transfer_add(ledger, 101, (u128)-7);
        ledger->counters.pending_live++;
        CHECK(ledger_verify(ledger, &report, error, sizeof(error)) != 0);
        ledger->counters.pending_live--;
        CHECK(ledger_verify(ledger, &report, error, sizeof(error)) == 0);
        ledger_destroy(ledger);
}

static enum http_parse parse(const char *text, struct http_request *request)
{
        return http_parse_request(text, (uint32_t)strlen(text), request);
}

static void test_parse_valid(void)
{
        struct http_request r;
        CHECK(parse("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", &r) ==
              HTTP_PARSE_OK);
        CHECK(strcmp(r.path, "/metrics") == 0);
        CHECK(parse("GET /health/ready?verbose=1 HTTP/1.0\n\n", &r) == HTTP_PARSE_OK);
        CHECK(strcmp(r.path, "/health/ready") == 0);
        const char *full = "GET / HTTP/1.1\r\n\r\nextra";
        CHECK(parse(full, &r) == HTTP_PARSE_OK);
        CHECK_EQ_U64(r.header_size, strlen(full) - 5);
}

static void test_parse_partial(void)
{
        /* Every strict prefix of a valid request is incomplete, never an answer. */
        const char *full = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUser-Agent: "
                           "Prometheus/2.42.0\r\n\r\n";
        uint32_t size = (uint32_t)strlen(full);
        struct http_request r;
        for (uint32_t n = 0; n < size; n++)
                CHECK(http_parse_request(full, n, &r) == HTTP_PARSE_INCOMPLETE);
        CHECK(http_parse_request(full, size, &r) == HTTP_PARSE_OK);
}

static void test_parse_hostile(void)
{
        struct http_request r;
        CHECK(parse("POST /metrics HTTP/1.1\r\n\r\n", &r) == HTTP_PARSE_METHOD);
        CHECK(parse("HEAD /metrics HTTP/1.1\r\n\r\n", &r) == HTTP_PARSE_METHOD);
        CHECK(parse("GET /metrics HTTP/2.0\r\n\r\n", &r) == HTTP_PARSE_VERSION);
        CHECK(parse("GET /metrics SPDY/3\r\n\r\n", &r) == HTTP_PARSE_BAD);
        CHECK(parse("GET metrics HTTP/1.1\r\n\r\n", &r) == HTTP_PARSE_BAD);
        CHECK(parse("GET  /metrics HTTP/1.1\r\n\r\n", &r) == HTTP_PARSE_BAD);
        CHECK(parse("GET /metrics\r\n\r\n", &r) == HTTP_PARSE_BAD);
        CHECK(parse("\r\n\r\n", &r) == HTTP_PARSE_BAD);
        CHECK(parse("GE\x01T / HTTP/1.1\r\n\r\n", &r) == HTTP_PARSE_BAD);
        CHECK(http_parse_request("GET /\0 HTTP/1.1\r\n\r\n", 19, &r) == HTTP_PARSE_BAD);
        /* A path longer than kept, finished or not. */
        static char line[8192];
        strcpy(line, "GET /");
        memset(line + 5, 'a', 300);
        strcpy(line + 305, " HTTP/1.1\r\n\r\n");
        CHECK(parse(line, &r) == HTTP_PARSE_URI_TOO_LONG);
        line[305] = '\0';
        CHECK(parse(line, &r) == HTTP_PARSE_URI_TOO_LONG);
        /* Headers that never end: incomplete at any size (the server answers 431 at its cap). */
        strcpy(line, "GET / HTTP/1.1\r\n");
        for (size_t i = strlen(line); i < sizeof(line) - 1; i++)
                line[i] = (i % 40 == 39) ? '\n' : 'x';
        line[sizeof(line) - 1] = '\0';
        CHECK(parse(line, &r) == HTTP_PARSE_INCOMPLETE);
        /* Random bytes: any answer but OK, never a read past the end (sanitizers watch). */
        uint64_t x = 12345;
        static char noise[512];
        uint32_t ok = 0;
        for (uint32_t round = 0; round < 20000; round++) {
                uint32_t n = (uint32_t)(round % sizeof(noise));
                for (uint32_t i = 0; i < n; i++) {
                        x = x * 6364136223846793005ull + 1442695040888963407ull;
                        noise[i] = (char)(x >> 56);
                }
                ok += http_parse_request(noise, n, &r) == HTTP_PARSE_OK;
        }
        CHECK_EQ_U64(ok, 0);
}

/* ---- the server on loopback ---- */

static struct io io;
static struct http_server server;
static uint32_t handled;

static void handler(void *context, const char *path, struct http_response *response)
{
        (void)context;
        handled++;
        if (strcmp(path, "/big") == 0) {
                memset(response->body, 'x', response->body_capacity);
                response->body_size = response->body_capacity;
                return;
        }
        response->body_size = (uint32_t)snprintf(response->body, response->body_capacity,
                                                  "path=%s\n", path);
}

static void pump(uint32_t ms)
{
        uint64_t deadline = io_monotonic_ns() + (uint64_t)ms * 1000000u;
        while (io_monotonic_ns() < deadline) {
                io_run(&io, 1000000ull, true);
                http_server_tick(&server);
        }
}

static uint16_t port;

static int client_connect_rcvbuf(int rcvbuf)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (rcvbuf > 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static int client_connect(void)
{
        return client_connect_rcvbuf(0);
}

/* Reads what arrives within `ms` while pumping the server; returns bytes read, -1 if not
 * closed by then. */
static int client_read_until_closed(int fd, char *into, uint32_t size, uint32_t ms)
{
        uint32_t got = 0;
        uint64_t deadline = io_monotonic_ns() + (uint64_t)ms * 1000000u;
        while (io_monotonic_ns() < deadline) {
                pump(2);
                ssize_t n = recv(fd, into + got, size - 1 - got, MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                        into[got] = '\0';
                        return (int)got;
                }
                if (n > 0)
                        got += (uint32_t)n;
                if (got == size - 1)
                        got = 0; /* keep reading, discard */
        }
        return -1;
}

static void test_server(void)
{
        log_set_level(LOG_OFF);
        CHECK(io_init(&io, 64) == 0);
        struct address address[ADDRESSES_MAX];
        uint32_t count = 0;
        char error[256];
        struct sockaddr_storage bound;
        int started = -1;
        for (uint32_t attempt = 0; attempt < 20 && started != 0; attempt++) {
                char text[32];
                snprintf(text, sizeof(text), "127.0.0.1:%u",
                         20000u + (uint32_t)(getpid() * 7u + attempt * 977u) % 20000u);
                CHECK(address_parse_list(text, address, &count, error, sizeof(error)) == 0);
                started = http_server_start(&server, &io, &address[0], handler, NULL, &bound);
        }
        CHECK(started == 0);
        port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        server.request_timeout_ms = 300;
        server.connection_timeout_ms = 600;
        static char reply[4096];

        /* A plain request. */
        int fd = client_connect();
        const char *get = "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
        CHECK(send(fd, get, strlen(get), 0) == (ssize_t)strlen(get));
        CHECK(client_read_until_closed(fd, reply, sizeof(reply), 1000) > 0);
        CHECK(strncmp(reply, "HTTP/1.1 200 OK\r\n", 17) == 0);
        CHECK(strstr(reply, "Content-Length: 18\r\n") != NULL);
        CHECK(strstr(reply, "\r\n\r\npath=/health/live\n") != NULL);
        close(fd);

        /* Sent a byte at a time (partial reads). */
        fd = client_connect();
        for (size_t i = 0; i < strlen(get); i++) {
                CHECK(send(fd, get + i, 1, 0) == 1);
                pump(1);
        }
        CHECK(client_read_until_closed(fd, reply, sizeof(reply), 1000) > 0);
        CHECK(strstr(reply, "path=/health/live") != NULL);
        close(fd);

        /* A POST, and headers that never end. */
        fd = client_connect();
        const char *post = "POST /metrics HTTP/1.1\r\n\r\n";
        CHECK(send(fd, post, strlen(post), 0) > 0);
        CHECK(client_read_until_closed(fd, reply, sizeof(reply), 1000) > 0);
        CHECK(strncmp(reply, "HTTP/1.1 405 ", 13) == 0);
        close(fd);
        fd = client_connect();
        static char huge[HTTP_REQUEST_SIZE_MAX + 100];
        strcpy(huge, "GET / HTTP/1.1\r\n");
        for (size_t i = strlen(huge); i < sizeof(huge); i++)
                huge[i] = (i % 50 == 49) ? '\n' : 'h';
        send(fd, huge, sizeof(huge), MSG_NOSIGNAL);
        int n = client_read_until_closed(fd, reply, sizeof(reply), 1000);
        CHECK(n > 0);
        CHECK(n > 0 && strncmp(reply, "HTTP/1.1 431 ", 13) == 0);
        close(fd);

        /* Slowloris: every slot held by half a request. A fifth connection is refused at
         * once; all four are closed after the request timeout, then a real client is served. */
        int slow[HTTP_CONNECTIONS_MAX];
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++) {
                slow[i] = client_connect();
                CHECK(send(slow[i], "GET /metr", 9, 0) == 9);
        }
        pump(20);
        uint64_t refused = server.stats.refused_full;
        int extra = client_connect();
        CHECK(client_read_until_closed(extra, reply, sizeof(reply), 200) == 0);
        CHECK_EQ_U64(server.stats.refused_full, refused + 1);
        close(extra);
        uint64_t slow_started = io_monotonic_ns();
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++) {
                CHECK(client_read_until_closed(slow[i], reply, sizeof(reply), 1000) == 0);
                close(slow[i]);
        }
        uint64_t took_ms = (io_monotonic_ns() - slow_started) / 1000000u;
        CHECK(took_ms < 600);
        CHECK(server.stats.timeouts >= HTTP_CONNECTIONS_MAX);
        fd = client_connect();
        CHECK(send(fd, get, strlen(get), 0) > 0);
        CHECK(client_read_until_closed(fd, reply, sizeof(reply), 1000) > 0);
        CHECK(strstr(reply, "path=/health/live") != NULL);
        close(fd);

        /* A client that asks for a big page and never reads it holds its slot no longer than
         * the connection timeout. */
        fd = client_connect_rcvbuf(2048);
        const char *big = "GET /big HTTP/1.1\r\n\r\n";
        CHECK(send(fd, big, strlen(big), 0) > 0);
        pump(800);
        /* Sent into the kernel's buffers, or closed by the timeout: either way, not held. */
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++)
                CHECK(!server.connections[i].active);
        close(fd);

        http_server_stop(&server);
        pump(50);
        CHECK(http_server_idle(&server));
        io_deinit(&io);
}

int main(void)
{
        TEST_RUN(test_expo_format);
        TEST_RUN(test_expo_histogram);
        TEST_RUN(test_expo_overflow);
        TEST_RUN(test_result_names);
        TEST_RUN(test_log_json);
        TEST_RUN(test_ledger_verify);
        TEST_RUN(test_parse_valid);
        TEST_RUN(test_parse_partial);
        TEST_RUN(test_parse_hostile);
        TEST_RUN(test_server);
        TEST_MAIN_END();
}
