/*
 * test_wire.c: the header layout, checksums and every validity rule.
 *
 * Starts from messages the real client sent (and replies it accepted), checks they pass, then
 * breaks one field at a time and checks each break is caught with a reason.
 */
#include "test.h"
#include "vectors.h"
#include "wire/checksum.h"
#include "wire/header.h"
#include "wire/types.h"

static struct vector_message client_messages[VECTOR_MESSAGES_MAX];
static struct vector_message server_messages[VECTOR_MESSAGES_MAX];
static int client_count;
static int server_count;

static struct wire_header *header_of(struct vector_message *m)
{
        return (struct wire_header *)m->bytes;
}

static void test_vectors_load(void)
{
        CHECK_EQ_U64(client_count, 8);
        CHECK_EQ_U64(server_count, 6);
}

static void test_captured_messages_are_valid(void)
{
        for (int i = 0; i < client_count; i++) {
                struct wire_header *h = header_of(&client_messages[i]);
                CHECK_EQ_U64(h->size, client_messages[i].size);
                CHECK(wire_header_checksum_valid(h));
                CHECK(wire_body_checksum_valid(h, client_messages[i].bytes + WIRE_HEADER_SIZE));
                const char *reason = wire_header_invalid(h);
                if (reason != NULL)
                        fprintf(stderr, "  client message %d: %s\n", i, reason);
                CHECK(reason == NULL);
        }
        for (int i = 0; i < server_count; i++) {
                struct wire_header *h = header_of(&server_messages[i]);
                CHECK_EQ_U64(h->size, server_messages[i].size);
                CHECK(wire_header_checksum_valid(h));
                CHECK(wire_header_invalid(h) == NULL);
        }
}

static void test_header_round_trip(void)
{
        /* Rebuild the captured register request field by field and compare bytes. */
        struct wire_header *captured = header_of(&client_messages[0]);
        struct wire_header built;
        wire_header_init(&built, COMMAND_REQUEST, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
        built.size = 512;
        built.request.client = captured->request.client;
        built.request.operation = OPERATION_REGISTER;
        uint8_t body[256] = {0};
        wire_header_set_checksum_body(&built, body, sizeof(body));
        wire_header_set_checksum(&built);
        CHECK(memcmp(&built, captured, WIRE_HEADER_SIZE) == 0);

        /* The captured register reply: recompute context and checksum. */
        struct wire_header reply;
        memcpy(&reply, server_messages[0].bytes, sizeof(reply));
        u128 context = reply.reply.context;
        u128 sum = reply.checksum;
        wire_reply_set_context(&reply);
        wire_header_set_checksum(&reply);
        CHECK(reply.reply.context == context);
        CHECK(reply.checksum == sum);
        CHECK_EQ_U64(reply.release, WIRE_RELEASE_NODE_CLIENT);
}

static void test_checksum_detects_any_flipped_bit(void)
{
        struct wire_header h;
        memcpy(&h, client_messages[0].bytes, sizeof(h));
        CHECK(wire_header_checksum_valid(&h));
        int missed = 0;
        for (uint32_t bit = 0; bit < 8 * WIRE_HEADER_SIZE; bit++) {
                uint8_t *bytes = (uint8_t *)&h;
                bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                if (wire_header_checksum_valid(&h))
                        missed++;
                bytes[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        CHECK_EQ_U64(missed, 0);
}

/* Applies `mutate` to a copy of vector message `m` and expects it to be invalid. */
#define EXPECT_INVALID(base, statement)                                                           \
        do {                                                                                      \
                struct wire_header h_;                                                            \
                memcpy(&h_, (base), sizeof(h_));                                                  \
                struct wire_header *h = &h_;                                                      \
                statement;                                                                        \
                const char *reason_ = wire_header_invalid(h);                                     \
                if (reason_ == NULL)                                                              \
                        fprintf(stderr, "  expected invalid: %s\n", #statement);                  \
                CHECK(reason_ != NULL);                                                           \
        } while (0)

static void test_frame_rules(void)
{
        const void *base = client_messages[2].bytes; /* create_accounts request */
        EXPECT_INVALID(base, h->checksum_padding = 1);
        EXPECT_INVALID(base, h->checksum_body_padding = 1);
        EXPECT_INVALID(base, h->nonce_reserved = 1);
        EXPECT_INVALID(base, h->size = 255);
        EXPECT_INVALID(base, h->size = WIRE_MESSAGE_SIZE_MAX + 1);
        EXPECT_INVALID(base, h->epoch = 1);
        EXPECT_INVALID(base, h->reserved_frame[11] = 1);
        EXPECT_INVALID(base, h->protocol = 1);
        EXPECT_INVALID(base, h->command = COMMAND_RESERVED);
        EXPECT_INVALID(base, h->command = COMMAND_DEPRECATED_12);
        EXPECT_INVALID(base, h->command = COMMAND_DEPRECATED_22);
        EXPECT_INVALID(base, h->command = 25);
        EXPECT_INVALID(base, h->command = 255);
}

static void test_request_rules(void)
{
        const void *reg = client_messages[0].bytes;
        const void *create = client_messages[2].bytes;
        EXPECT_INVALID(create, h->release = 0);
        EXPECT_INVALID(create, h->request.parent_padding = 1);
        EXPECT_INVALID(create, h->request.timestamp = 1);
        EXPECT_INVALID(create, h->request.previous_request_latency_padding[0] = 1);
        EXPECT_INVALID(create, h->request.reserved[51] = 1);
        EXPECT_INVALID(create, h->request.operation = OPERATION_RESERVED);
        EXPECT_INVALID(create, h->request.operation = OPERATION_ROOT);
        EXPECT_INVALID(create, h->request.operation = 7);
        EXPECT_INVALID(create, h->request.operation = 127);
        EXPECT_INVALID(create, h->replica = 1);
        EXPECT_INVALID(create, h->request.client = 0);
        EXPECT_INVALID(create, h->request.session = 0);
        EXPECT_INVALID(create, h->request.request = 0);
        EXPECT_INVALID(create, h->request.operation = OPERATION_NOOP);
        EXPECT_INVALID(create, h->request.operation = OPERATION_RECONFIGURE);
        EXPECT_INVALID(create, (h->request.operation = OPERATION_VSR_PULSE));
        EXPECT_INVALID(reg, h->replica = 1);
        EXPECT_INVALID(reg, h->request.client = 0);
        EXPECT_INVALID(reg, h->request.parent = 1);
        EXPECT_INVALID(reg, h->request.session = 1);
        EXPECT_INVALID(reg, h->request.request = 1);
        EXPECT_INVALID(reg, h->size = 300);
        /* The first request after register carries an uninitialised latency: never checked. */
        struct wire_header ok;
        memcpy(&ok, create, sizeof(ok));
        ok.request.previous_request_latency = 0xFFFFFFFFu;
        CHECK(wire_header_invalid(&ok) == NULL);
        memcpy(&ok, reg, sizeof(ok));
        ok.size = 256; /* a register without body is a valid header (evicted later) */
        CHECK(wire_header_invalid(&ok) == NULL);
}

static void test_reply_rules(void)
{
        const void *reg = server_messages[0].bytes;
        const void *create = server_messages[1].bytes;
        EXPECT_INVALID(create, h->release = 0);
        EXPECT_INVALID(create, h->reply.client = 0);
        EXPECT_INVALID(create, h->reply.request_checksum_padding = 1);
        EXPECT_INVALID(create, h->reply.context_padding = 1);
        EXPECT_INVALID(create, h->reply.op = h->reply.commit + 1);
        EXPECT_INVALID(create, h->reply.timestamp = 0);
        EXPECT_INVALID(create, h->reply.reserved[18] = 1);
        EXPECT_INVALID(create, (h->reply.op = 0, h->reply.commit = 0));
        EXPECT_INVALID(create, h->reply.request = 0);
        EXPECT_INVALID(reg, h->size = 256);
        EXPECT_INVALID(reg, h->reply.request = 1);
        EXPECT_INVALID(reg, (h->reply.op = 0, h->reply.commit = 0));
}

static void test_ping_pong_eviction_rules(void)
{
        const void *ping = client_messages[7].bytes;
        const void *pong = server_messages[4].bytes;
        const void *eviction = server_messages[5].bytes;
        CHECK_EQ_U64(header_of(&client_messages[7])->command, COMMAND_PING_CLIENT);
        CHECK_EQ_U64(header_of(&server_messages[4])->command, COMMAND_PONG_CLIENT);
        CHECK_EQ_U64(header_of(&server_messages[5])->command, COMMAND_EVICTION);
        EXPECT_INVALID(ping, h->size = 512);
        EXPECT_INVALID(ping, h->checksum_body = 0);
        EXPECT_INVALID(ping, h->release = 0);
        EXPECT_INVALID(ping, h->replica = 1);
        EXPECT_INVALID(ping, h->view = 1);
        EXPECT_INVALID(ping, h->ping_client.client = 0);
        EXPECT_INVALID(ping, h->ping_client.reserved[0] = 1);
        EXPECT_INVALID(pong, h->size = 257);
        EXPECT_INVALID(pong, h->release = 0);
        EXPECT_INVALID(pong, h->pong_client.reserved[119] = 1);
        EXPECT_INVALID(eviction, h->release = 0);
        EXPECT_INVALID(eviction, h->eviction.client = 0);
        EXPECT_INVALID(eviction, h->eviction.reserved[0] = 1);
        EXPECT_INVALID(eviction, h->eviction.reason = 0);
        EXPECT_INVALID(eviction, h->eviction.reason = 9);
}

static void test_command_names(void)
{
        CHECK(strcmp(wire_command_name(COMMAND_REQUEST), "request") == 0);
        CHECK(strcmp(wire_command_name(COMMAND_START_VIEW), "start_view") == 0);
        CHECK(strcmp(wire_command_name(200), "command_200") == 0);
}

static void test_empty_checksum_constant(void)
{
        CHECK(checksum("", 0) == CHECKSUM_EMPTY);
        struct wire_header h;
        wire_header_init(&h, COMMAND_PONG_CLIENT, 7, 3, WIRE_RELEASE_SERVER, 2);
        wire_header_set_checksum(&h);
        CHECK(wire_header_checksum_valid(&h));
        CHECK(wire_header_invalid(&h) == NULL);
}

int main(void)
{
        client_count = vectors_load("tests/vectors/client_messages_captured.json", client_messages,
                                    VECTOR_MESSAGES_MAX);
        server_count = vectors_load("tests/vectors/server_messages_accepted.json",
                                    server_messages, VECTOR_MESSAGES_MAX);
        TEST_RUN(test_vectors_load);
        if (client_count == 8 && server_count == 6) {
                TEST_RUN(test_captured_messages_are_valid);
                TEST_RUN(test_header_round_trip);
                TEST_RUN(test_checksum_detects_any_flipped_bit);
                TEST_RUN(test_frame_rules);
                TEST_RUN(test_request_rules);
                TEST_RUN(test_reply_rules);
                TEST_RUN(test_ping_pong_eviction_rules);
        }
        TEST_RUN(test_command_names);
        TEST_RUN(test_empty_checksum_constant);
        TEST_MAIN_END();
}
