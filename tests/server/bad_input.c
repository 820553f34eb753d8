/*
 * bad_input.c: hostile and broken input against a running server.
 *
 * Usage: bad_input <port> [test]. Every scenario sends something wrong, checks the server's answer
 * (connection closed, message dropped, or the exact eviction TigerBeetle sends), then checks
 * that the server still serves a well-behaved client: register, create an account, look it up.
 */
#include "client/client.h"
#include "test.h"
#include "net/peer_auth.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 5000

static struct sockaddr_storage server_address;
static socklen_t server_address_size;
static uint64_t account_id_next; /* random, so that the suite can run twice on one server */

static int open_client(struct client *c, u128 cluster)
{
        return client_open(c, &server_address, server_address_size, cluster, 0, TIMEOUT_MS);
}

/* A well-behaved client still gets served: register, create an account, look it up. */
static void check_server_serves(void)
{
        struct client c;
        int rc = open_client(&c, 0);
        CHECK_EQ_U64(rc, CLIENT_OK);
        if (rc == CLIENT_OK)
                rc = client_register(&c);
        CHECK_EQ_U64(rc, CLIENT_OK);
        if (rc != CLIENT_OK) {
                fprintf(stderr, "  server did not serve: %s\n", c.error ? c.error : "?");
                client_close(&c);
                return;
        }
        struct {
                struct wire_account account;
                uint8_t trailer[128];
        } body;
        memset(&body, 0, sizeof(body));
        body.account.id = account_id_next++;
        body.account.ledger = 1;
        body.account.code = 1;
        memset(body.trailer, 0xFF, sizeof(body.trailer));
        body.trailer[124] = 1; /* one batch of one event: count u16 then batch_count u16 */
        body.trailer[125] = 0;
        body.trailer[126] = 1;
        body.trailer[127] = 0;
        const struct wire_header *reply;
        rc = client_request(&c, OPERATION_CREATE_ACCOUNTS, &body, sizeof(body), &reply);
        CHECK_EQ_U64(rc, CLIENT_OK);
        if (rc == CLIENT_OK) {
                /* No failures: an empty batch, 8 bytes of trailer. */
                CHECK_EQ_U64(reply->size, WIRE_HEADER_SIZE + 8);
        }
        struct {
                u128 id;
                uint8_t trailer[16];
        } lookup;
        memset(&lookup, 0xFF, sizeof(lookup));
        lookup.id = body.account.id;
        lookup.trailer[12] = 1;
        lookup.trailer[13] = 0;
        lookup.trailer[14] = 1;
        lookup.trailer[15] = 0;
        rc = client_request(&c, OPERATION_LOOKUP_ACCOUNTS, &lookup, sizeof(lookup), &reply);
        CHECK_EQ_U64(rc, CLIENT_OK);
        if (rc == CLIENT_OK) {
                CHECK_EQ_U64(reply->size, WIRE_HEADER_SIZE + 128 + 128);
                struct wire_account found;
                memcpy(&found, (const uint8_t *)reply + WIRE_HEADER_SIZE, sizeof(found));
                CHECK(found.id == body.account.id);
                CHECK(found.timestamp != 0);
        }
        client_close(&c);
}

/* True if the server closes this connection within the timeout. */
static bool expect_closed(struct client *c)
{
        const struct wire_header *m;
        int rc = client_receive(c, &m);
        return rc == CLIENT_ERROR_CLOSED;
}

static void send_and_expect_close(const void *bytes, uint32_t size)
{
        struct client c;
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_send_raw(&c, bytes, size), CLIENT_OK);
        CHECK(expect_closed(&c));
        client_close(&c);
        check_server_serves();
}

static void build_register(struct wire_header *h, uint8_t *body)
{
        memset(body, 0, 256);
        wire_header_init(h, COMMAND_REQUEST, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
        h->size = 512;
        h->request.client = 42;
        h->request.operation = OPERATION_REGISTER;
        wire_header_set_checksum_body(h, body, 256);
        wire_header_set_checksum(h);
}

static void test_random_bytes(void)
{
        uint8_t bytes[4096];
        for (int round = 0; round < 5; round++) {
                getrandom(bytes, sizeof(bytes), 0);
                send_and_expect_close(bytes, sizeof(bytes));
        }
}

static void test_truncated_header(void)
{
        _Alignas(16) uint8_t message[512];
        build_register((struct wire_header *)message, message + 256);
        struct client c;
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_send_raw(&c, message, 100), CLIENT_OK);
        client_close(&c); /* hang up mid-header */
        check_server_serves();
        /* A truncated header that stays open must not block anybody else. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_send_raw(&c, message, 200), CLIENT_OK);
        check_server_serves();
        client_close(&c);
}

static void test_oversized_size_field(void)
{
        _Alignas(16) uint8_t message[512];
        struct wire_header *h = (struct wire_header *)message;
        build_register(h, message + 256);
        h->size = 2 * WIRE_MESSAGE_SIZE_MAX;
        wire_header_set_checksum(h);
        send_and_expect_close(message, sizeof(message));
        h->size = 100; /* below the header size */
        wire_header_set_checksum(h);
        send_and_expect_close(message, sizeof(message));
}

static void test_wrong_checksums(void)
{
        _Alignas(16) uint8_t message[512];
        struct wire_header *h = (struct wire_header *)message;
        build_register(h, message + 256);
        h->checksum ^= 1;
        send_and_expect_close(message, sizeof(message));
        build_register(h, message + 256);
        message[300] = 1; /* the body no longer matches checksum_body */
        send_and_expect_close(message, sizeof(message));
}

static void test_wrong_cluster(void)
{
        _Alignas(16) uint8_t message[512];
        struct wire_header *h = (struct wire_header *)message;
        build_register(h, message + 256);
        h->cluster = 7;
        wire_header_set_checksum(h);
        send_and_expect_close(message, sizeof(message));
        /* The client library's own register against the wrong cluster: closed, no reply. */
        struct client c;
        CHECK_EQ_U64(open_client(&c, 7), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_ERROR_CLOSED);
        client_close(&c);
        check_server_serves();
}

static void test_unknown_and_invalid_commands(void)
{
        /* 200 is the replicas' (and `tally backup`'s) handshake, which every replica reads,
         * a single one too since 2026-12-06: a malformed one closes the connection (below). */
        uint8_t commands[] = {25, 201, 255, COMMAND_RESERVED, COMMAND_DEPRECATED_12};
        for (uint32_t i = 0; i < ARRAY_LEN(commands); i++) {
                struct wire_header h;
                wire_header_init(&h, commands[i], 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
                wire_header_set_checksum(&h);
                struct client c;
                CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
                CHECK_EQ_U64(client_send_raw(&c, &h, sizeof(h)), CLIENT_OK);
                /* Dropped without an answer; the same connection then registers fine. */
                CHECK_EQ_U64(client_register(&c), CLIENT_OK);
                client_close(&c);
        }
        /* A handshake message of the wrong size: the connection is closed, the server goes on. */
        struct wire_header hello;
        wire_header_init(&hello, PEER_AUTH_COMMAND, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
        wire_header_set_checksum(&hello);
        send_and_expect_close(&hello, sizeof(hello));
        check_server_serves();
        /* An invalid header (epoch 1) is dropped the same way. */
        _Alignas(16) uint8_t message[512];
        struct wire_header *h = (struct wire_header *)message;
        build_register(h, message + 256);
        h->epoch = 1;
        wire_header_set_checksum(h);
        struct client c;
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_send_raw(&c, message, sizeof(message)), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_OK);
        client_close(&c);
        check_server_serves();
}

static void test_silent_client(void)
{
        struct client silent;
        CHECK_EQ_U64(open_client(&silent, 0), CLIENT_OK);
        check_server_serves();
        check_server_serves();
        client_close(&silent);
}

static void test_thousand_connections(void)
{
        enum { CONNECTIONS = 1000 };
        static int fds[CONNECTIONS];
        int opened = 0;
        for (int i = 0; i < CONNECTIONS; i++) {
                fds[i] = socket(server_address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&server_address,
                                           server_address_size) == 0)
                        opened++;
        }
        CHECK_EQ_U64(opened, CONNECTIONS);
        for (int i = 0; i < CONNECTIONS; i++) {
                if (fds[i] >= 0)
                        close(fds[i]);
        }
        check_server_serves();
}

/* Sends a request with the given tweaks and expects an eviction with `reason`. */
static void expect_eviction(struct client *c, uint8_t operation, const void *body,
                            uint32_t body_size, uint8_t reason)
{
        const struct wire_header *reply;
        int rc = client_request(c, operation, body, body_size, &reply);
        CHECK_EQ_U64(rc, CLIENT_ERROR_EVICTED);
        CHECK_EQ_U64(c->eviction_reason, reason);
}

static void test_evictions(void)
{
        struct client c;
        uint8_t empty_lookup[16];
        memset(empty_lookup, 0xFF, sizeof(empty_lookup));
        empty_lookup[12] = 0; /* one batch with zero ids */
        empty_lookup[13] = 0;
        empty_lookup[14] = 1;
        empty_lookup[15] = 0;

        /* 2: release too low. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        c.release = WIRE_RELEASE(0, 16, 3);
        CHECK_EQ_U64(client_register(&c), CLIENT_ERROR_EVICTED);
        CHECK_EQ_U64(c.eviction_reason, EVICTION_CLIENT_RELEASE_TOO_LOW);
        client_close(&c);
        /* 3: release too high. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        c.release = WIRE_RELEASE(0, 16, 69);
        CHECK_EQ_U64(client_register(&c), CLIENT_ERROR_EVICTED);
        CHECK_EQ_U64(c.eviction_reason, EVICTION_CLIENT_RELEASE_TOO_HIGH);
        client_close(&c);
        /* 1: a request without a session. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        c.session = 1;
        expect_eviction(&c, OPERATION_LOOKUP_ACCOUNTS, empty_lookup, sizeof(empty_lookup),
                        EVICTION_NO_SESSION);
        client_close(&c);
        /* 4: an operation the state machine does not know. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_OK);
        expect_eviction(&c, 200, NULL, 0, EVICTION_INVALID_REQUEST_OPERATION);
        client_close(&c);
        /* 5: a body that is not a multi-batch of accounts. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_OK);
        uint8_t junk[100];
        memset(junk, 0xAB, sizeof(junk));
        expect_eviction(&c, OPERATION_CREATE_ACCOUNTS, junk, sizeof(junk),
                        EVICTION_INVALID_REQUEST_BODY);
        client_close(&c);
        /* 6: a register without its body. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        expect_eviction(&c, OPERATION_REGISTER, NULL, 0, EVICTION_INVALID_REQUEST_BODY_SIZE);
        client_close(&c);
        /* 7: a session number below the client's session. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_OK);
        c.session -= 1;
        expect_eviction(&c, OPERATION_LOOKUP_ACCOUNTS, empty_lookup, sizeof(empty_lookup),
                        EVICTION_SESSION_TOO_LOW);
        client_close(&c);
        /* 8: another release within the session. */
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_OK);
        c.release = WIRE_RELEASE(0, 16, 60);
        expect_eviction(&c, OPERATION_LOOKUP_ACCOUNTS, empty_lookup, sizeof(empty_lookup),
                        EVICTION_SESSION_RELEASE_MISMATCH);
        client_close(&c);
        check_server_serves();
}

static void test_duplicate_request_gets_cached_reply(void)
{
        struct client c;
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        CHECK_EQ_U64(client_register(&c), CLIENT_OK);
        struct {
                struct wire_account account;
                uint8_t trailer[128];
        } body;
        memset(&body, 0, sizeof(body));
        body.account.id = account_id_next++;
        body.account.ledger = 1;
        body.account.code = 1;
        memset(body.trailer, 0xFF, sizeof(body.trailer));
        body.trailer[124] = 1;
        body.trailer[125] = 0;
        body.trailer[126] = 1;
        body.trailer[127] = 0;
        const struct wire_header *reply;
        CHECK_EQ_U64(client_request(&c, OPERATION_CREATE_ACCOUNTS, &body, sizeof(body), &reply),
                     CLIENT_OK);
        uint8_t first[512];
        uint32_t first_size = reply->size;
        memcpy(first, reply, first_size);
        /* The same bytes again: the cached reply, not a second execution (no `exists`). */
        CHECK_EQ_U64(client_retransmit(&c, &reply), CLIENT_OK);
        CHECK_EQ_U64(reply->size, first_size);
        CHECK(memcmp(reply, first, first_size) == 0);
        /* The next request must chain to the context; a wrong parent is ignored. */
        c.parent ^= 1;
        uint8_t empty_lookup[16];
        memset(empty_lookup, 0xFF, sizeof(empty_lookup));
        empty_lookup[12] = 0;
        empty_lookup[13] = 0;
        empty_lookup[14] = 1;
        empty_lookup[15] = 0;
        c.timeout_ms = 500;
        CHECK_EQ_U64(client_request(&c, OPERATION_LOOKUP_ACCOUNTS, empty_lookup,
                                    sizeof(empty_lookup), &reply),
                     CLIENT_ERROR_TIMEOUT);
        client_close(&c);
}

static void test_ping_client(void)
{
        struct client c;
        CHECK_EQ_U64(open_client(&c, 0), CLIENT_OK);
        struct wire_header ping;
        wire_header_init(&ping, COMMAND_PING_CLIENT, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
        ping.ping_client.client = 99;
        ping.ping_client.ping_timestamp_monotonic = 123456789;
        wire_header_set_checksum(&ping);
        CHECK_EQ_U64(client_send_raw(&c, &ping, sizeof(ping)), CLIENT_OK);
        const struct wire_header *pong;
        CHECK_EQ_U64(client_receive(&c, &pong), CLIENT_OK);
        CHECK_EQ_U64(pong->command, COMMAND_PONG_CLIENT);
        CHECK_EQ_U64(pong->pong_client.ping_timestamp_monotonic, 123456789);
        CHECK_EQ_U64(pong->release, WIRE_RELEASE_SERVER);
        CHECK(pong->replica < WIRE_REPLICAS_MAX);
        client_close(&c);
}

static uint64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A plain TCP connection to the server, or -1. */
static int connect_raw(void)
{
        int fd = socket(server_address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        if (connect(fd, (struct sockaddr *)&server_address, server_address_size) != 0) {
                close(fd);
                return -1;
        }
        return fd;
}

/* The flooders stop by themselves after this long, whatever happens to the parent. */
#define FLOOD_SECONDS_MAX 60

/*
 * A child process that opens `connections` connections and writes ping_client messages on
 * each as fast as the server takes them, never reading a pong. Returns its pid.
 */
static pid_t ping_flood_start(int connections)
{
        pid_t pid = fork();
        if (pid != 0)
                return pid;
        alarm(FLOOD_SECONDS_MAX);
        static int fds[512];
        tally_assert(connections <= (int)ARRAY_LEN(fds));
        static struct wire_header pings[4096]; /* 1 MiB per write */
        for (uint32_t i = 0; i < ARRAY_LEN(pings); i++) {
                wire_header_init(&pings[i], COMMAND_PING_CLIENT, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
                pings[i].ping_client.client = 7000 + i;
                pings[i].ping_client.ping_timestamp_monotonic = i;
                wire_header_set_checksum(&pings[i]);
        }
        for (int i = 0; i < connections; i++) {
                fds[i] = connect_raw();
                if (fds[i] < 0)
                        _exit(1);
                fcntl(fds[i], F_SETFL, O_NONBLOCK);
        }
        /* Each connection writes whole messages only, so the stream stays well framed. */
        static uint32_t offsets[512];
        static struct pollfd polls[512];
        for (;;) {
                for (int i = 0; i < connections; i++)
                        polls[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
                poll(polls, (nfds_t)connections, 100);
                for (int i = 0; i < connections; i++) {
                        if (fds[i] < 0)
                                continue;
                        const uint8_t *bytes = (const uint8_t *)pings;
                        ssize_t n = send(fds[i], bytes + offsets[i], sizeof(pings) - offsets[i],
                                         MSG_NOSIGNAL);
                        if (n > 0) {
                                offsets[i] = (offsets[i] + (uint32_t)n) % sizeof(pings);
                        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                                close(fds[i]); /* closed by the server: that is allowed */
                                fds[i] = -1;
                        }
                }
        }
}

static void process_stop(pid_t pid)
{
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
}

/*
 * Connections that flood ping_client and never read a pong must not keep anybody else from
 * being served: the server stops reading from a connection whose replies are not being read.
 */
static void ping_flood(int connections)
{
        pid_t pid = ping_flood_start(connections);
        CHECK(pid > 0);
        if (pid <= 0)
                return;
        usleep(1500 * 1000); /* let the flood fill every buffer on the way */
        for (int round = 0; round < 3; round++) {
                uint64_t started = now_ms();
                int failed_before = test_checks_failed_in_current;
                check_server_serves();
                uint64_t elapsed = now_ms() - started;
                printf("  ping flood connections=%d: served register+create+lookup in %llu ms%s\n",
                       connections, (unsigned long long)elapsed,
                       test_checks_failed_in_current > failed_before ? " (FAILED)" : "");
                /* Three round trips on loopback: far below a second if nobody is starved. */
                CHECK(elapsed < 2000);
        }
        process_stop(pid);
        check_server_serves();
}

static void test_ping_flood_few(void)
{
        ping_flood(4);
}

static void test_ping_flood_many(void)
{
        ping_flood(120);
}

/*
 * The server's client connection limit (CONNECTIONS_MAX in src/cli/start.c), and how long the
 * test waits for it to free slots: longer than it keeps a connection that sent part of a
 * message and then nothing (BUS_PARTIAL_TIMEOUT_MS, 10 s) or, while every slot is taken, one
 * that never completed a message (BUS_IDLE_TIMEOUT_FULL_MS, 5 s).
 */
#define SERVER_CONNECTIONS_MAX 1024
#define STALL_WAIT_MS 20000u

/*
 * More connections than the server has client slots, each sending half a header and then
 * nothing: the server must close them (partial-message timeout) so that a new client is
 * served within a bounded time, not locked out for as long as they stay.
 */
static void test_half_header_stall(void)
{
        enum { STALLERS = SERVER_CONNECTIONS_MAX + 16 };
        static int fds[STALLERS];
        _Alignas(16) uint8_t message[512];
        build_register((struct wire_header *)message, message + 256);
        int opened = 0;
        for (int i = 0; i < STALLERS; i++) {
                fds[i] = connect_raw();
                if (fds[i] >= 0 && send(fds[i], message, 100, MSG_NOSIGNAL) == 100)
                        opened++;
        }
        CHECK(opened > SERVER_CONNECTIONS_MAX / 2);
        usleep(500 * 1000); /* the server has accepted (or refused) them all */
        uint64_t started = now_ms();
        bool served = false;
        while (!served && now_ms() - started < STALL_WAIT_MS) {
                struct client c;
                if (client_open(&c, &server_address, server_address_size, 0, 0, 1000) ==
                    CLIENT_OK) {
                        served = client_register(&c) == CLIENT_OK;
                        client_close(&c);
                }
                if (!served)
                        usleep(200 * 1000);
        }
        uint64_t elapsed = now_ms() - started;
        printf("  half-header stall connections=%d: a new client %s after %llu ms\n", opened,
               served ? "was served" : "was NOT served", (unsigned long long)elapsed);
        CHECK(served);
        /* The stalled connections are closed by the server (a read sees the end) within
         * the partial-message timeout of their last byte. */
        int closed = 0;
        uint64_t deadline = now_ms() + STALL_WAIT_MS;
        for (int i = 0; i < STALLERS; i++) {
                if (fds[i] < 0)
                        continue;
                uint64_t now = now_ms();
                struct pollfd p = {.fd = fds[i], .events = POLLIN};
                char byte;
                if (poll(&p, 1, now < deadline ? (int)(deadline - now) : 0) == 1 &&
                    recv(fds[i], &byte, 1, MSG_DONTWAIT) <= 0)
                        closed++;
                close(fds[i]);
        }
        printf("  half-header stall: %d of %d stalled connections closed by the server\n", closed,
               opened);
        CHECK(closed > SERVER_CONNECTIONS_MAX / 2);
        check_server_serves();
}

int main(int argc, char **argv)
{
        if (argc != 2 && argc != 3) {
                fprintf(stderr, "usage: bad_input <port> [only this test]\n");
                return 2;
        }
        const char *only = argc == 3 ? argv[2] : NULL;
        getrandom(&account_id_next, sizeof(account_id_next), 0);
        account_id_next = (account_id_next >> 2) + 1;
#define RUN(fn)                                                                                   \
        do {                                                                                      \
                if (only == NULL || strcmp(only, #fn) == 0)                                       \
                        TEST_RUN(fn);                                                             \
        } while (0)
        struct sockaddr_in *v4 = (struct sockaddr_in *)&server_address;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)atoi(argv[1]));
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        server_address_size = sizeof(*v4);
        RUN(check_server_serves);
        RUN(test_random_bytes);
        RUN(test_truncated_header);
        RUN(test_oversized_size_field);
        RUN(test_wrong_checksums);
        RUN(test_wrong_cluster);
        RUN(test_unknown_and_invalid_commands);
        RUN(test_silent_client);
        RUN(test_thousand_connections);
        RUN(test_evictions);
        RUN(test_duplicate_request_gets_cached_reply);
        RUN(test_ping_client);
        RUN(test_ping_flood_few);
        RUN(test_ping_flood_many);
        RUN(test_half_header_stall);
        RUN(check_server_serves);
        TEST_MAIN_END();
}
