/*
 * bad_input.c: hostile and broken input against a running server.
 *
 * Usage: bad_input <port>. Every scenario sends something wrong, checks the server's answer
 * (connection closed, message dropped, or the exact eviction TigerBeetle sends), then checks
 * that the server still serves a well-behaved client: register, create an account, look it up.
 */
#include "client/client.h"
#include "test.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/random.h>
#include <unistd.h>

#define TIMEOUT_MS 5000

static struct sockaddr_storage server_address;
static socklen_t server_address_size;
static uint64_t account_id_next = 1000;

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
        uint8_t commands[] = {25, 200, 255, COMMAND_RESERVED, COMMAND_DEPRECATED_12};
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

int main(int argc, char **argv)
{
        if (argc != 2) {
                fprintf(stderr, "usage: bad_input <port>\n");
                return 2;
        }
        struct sockaddr_in *v4 = (struct sockaddr_in *)&server_address;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)atoi(argv[1]));
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        server_address_size = sizeof(*v4);
        TEST_RUN(check_server_serves);
        TEST_RUN(test_random_bytes);
        TEST_RUN(test_truncated_header);
        TEST_RUN(test_oversized_size_field);
        TEST_RUN(test_wrong_checksums);
        TEST_RUN(test_wrong_cluster);
        TEST_RUN(test_unknown_and_invalid_commands);
        TEST_RUN(test_silent_client);
        TEST_RUN(test_thousand_connections);
        TEST_RUN(test_evictions);
        TEST_RUN(test_duplicate_request_gets_cached_reply);
        TEST_RUN(test_ping_client);
        TEST_RUN(check_server_serves);
        TEST_MAIN_END();
}
