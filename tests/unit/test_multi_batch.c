/*
 * test_multi_batch.c: the multi-batch envelope, including the examples of wire-protocol.md 6.2.
 */
#include "test.h"

#include "wire/multi_batch.h"

static uint8_t body[1 << 16];

static void test_trailer_size(void)
{
        CHECK_EQ_U64(multi_batch_trailer_size(128, 1), 128);
        CHECK_EQ_U64(multi_batch_trailer_size(16, 1), 16);
        CHECK_EQ_U64(multi_batch_trailer_size(8, 1), 8);
        CHECK_EQ_U64(multi_batch_trailer_size(8, 3), 8);
        CHECK_EQ_U64(multi_batch_trailer_size(8, 4), 16);
        CHECK_EQ_U64(multi_batch_trailer_size(64, 31), 64);
        CHECK_EQ_U64(multi_batch_trailer_size(64, 32), 128);
        CHECK_EQ_U64(multi_batch_trailer_size(128, 65534), 131072);
}

/* create_accounts, 1 call of 2 accounts: 256 + 128 bytes, trailer 124 x ff, 02 00, 01 00. */
static void test_example_two_accounts(void)
{
        memset(body, 0, sizeof(body));
        memset(body + 256, 0xFF, 124);
        body[380] = 2;
        body[381] = 0;
        body[382] = 1;
        body[383] = 0;
        struct multi_batch_decoder d;
        CHECK(multi_batch_decode_init(&d, body, 384, 128));
        CHECK_EQ_U64(d.batch_count, 1);
        const uint8_t *batch = NULL;
        uint32_t count = 0;
        CHECK(multi_batch_decode_next(&d, &batch, &count));
        CHECK(batch == body);
        CHECK_EQ_U64(count, 2);
        CHECK(!multi_batch_decode_next(&d, &batch, &count));

        /* The encoder produces exactly those bytes. */
        static uint8_t out[1024];
        memset(out, 0xAB, sizeof(out));
        struct multi_batch_encoder e;
        multi_batch_encoder_init(&e, out, sizeof(out), 128);
        uint32_t max = 0;
        uint8_t *w = multi_batch_encoder_writable(&e, &max);
        CHECK(w == out);
        CHECK_EQ_U64(max, 7);
        memset(w, 0, 256);
        multi_batch_encoder_add(&e, 2);
        CHECK_EQ_U64(multi_batch_encoder_finish(&e), 384);
        CHECK(memcmp(out, body, 384) == 0);
}

/* lookup_accounts of ids 1, 2, 99: 48 + 16 bytes: 12 x ff, 03 00, 01 00. */
static void test_example_lookup(void)
{
        uint8_t b[64];
        memset(b, 0, sizeof(b));
        b[0] = 1;
        b[16] = 2;
        b[32] = 99;
        memset(b + 48, 0xFF, 12);
        b[60] = 3;
        b[62] = 1;
        struct multi_batch_decoder d;
        CHECK(multi_batch_decode_init(&d, b, 64, 16));
        const uint8_t *batch;
        uint32_t count;
        CHECK(multi_batch_decode_next(&d, &batch, &count));
        CHECK_EQ_U64(count, 3);
        /* A padding byte that is not 0xFF is refused. */
        b[50] = 0xFE;
        CHECK(!multi_batch_decode_init(&d, b, 64, 16));
}

/* 3 create_accounts calls of 2, 0 and 1 accounts: 384 + 128, trailer 120 x ff, 01 00, 00 00,
 * 02 00, 03 00; and the reply with one result in the third batch. */
static void test_example_merged(void)
{
        static uint8_t b[512];
        memset(b, 0, sizeof(b));
        memset(b + 384, 0xFF, 120);
        uint8_t tail[8] = {1, 0, 0, 0, 2, 0, 3, 0};
        memcpy(b + 504, tail, 8);
        struct multi_batch_decoder d;
        CHECK(multi_batch_decode_init(&d, b, 512, 128));
        CHECK_EQ_U64(d.batch_count, 3);
        uint32_t counts[3];
        const uint8_t *batches[3];
        for (int i = 0; i < 3; i++) CHECK(multi_batch_decode_next(&d, &batches[i], &counts[i]));
        CHECK_EQ_U64(counts[0], 2);
        CHECK_EQ_U64(counts[1], 0);
        CHECK_EQ_U64(counts[2], 1);
        CHECK(batches[2] == b + 256);

        uint8_t reply[64];
        struct multi_batch_encoder e;
        multi_batch_encoder_init(&e, reply, sizeof(reply), 8);
        uint32_t max;
        multi_batch_encoder_writable(&e, &max);
        multi_batch_encoder_add(&e, 0);
        multi_batch_encoder_writable(&e, &max);
        multi_batch_encoder_add(&e, 0);
        uint8_t *w = multi_batch_encoder_writable(&e, &max);
        uint8_t result[8] = {0, 0, 0, 0, 0x15, 0, 0, 0};
        memcpy(w, result, 8);
        multi_batch_encoder_add(&e, 1);
        CHECK_EQ_U64(multi_batch_encoder_finish(&e), 16);
        uint8_t expected[16] = {0, 0, 0, 0, 0x15, 0, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0};
        CHECK(memcmp(reply, expected, 16) == 0);
}

/* A create reply with no errors, 1 batch: ff ff ff ff 00 00 01 00. */
static void test_example_empty_reply(void)
{
        uint8_t reply[8];
        struct multi_batch_encoder e;
        multi_batch_encoder_init(&e, reply, sizeof(reply), 8);
        uint32_t max = 99;
        CHECK(multi_batch_encoder_writable(&e, &max) != NULL);
        CHECK_EQ_U64(max, 0);
        multi_batch_encoder_add(&e, 0);
        CHECK_EQ_U64(multi_batch_encoder_finish(&e), 8);
        uint8_t expected[8] = {0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0};
        CHECK(memcmp(reply, expected, 8) == 0);
        struct multi_batch_decoder d;
        CHECK(multi_batch_decode_init(&d, reply, 8, 8));
}

static void test_rejects(void)
{
        struct multi_batch_decoder d;
        uint8_t b[256];
        memset(b, 0xFF, sizeof(b));
        CHECK(!multi_batch_decode_init(&d, b, 0, 16));
        CHECK(!multi_batch_decode_init(&d, b, 1, 16));
        /* batch_count 0 */
        b[14] = 0;
        b[15] = 0;
        CHECK(!multi_batch_decode_init(&d, b, 16, 16));
        /* batch_count 0xFFFF */
        b[14] = 0xFF;
        b[15] = 0xFF;
        CHECK(!multi_batch_decode_init(&d, b, 16, 16));
        /* body shorter than the trailer */
        b[6] = 8;
        b[7] = 0;
        CHECK(!multi_batch_decode_init(&d, b, 8, 16));
        /* counts do not match the payload */
        memset(b, 0xFF, sizeof(b));
        b[28] = 2; /* batch 0: 2 elements, but the payload holds 1 */
        b[29] = 0;
        b[30] = 1;
        b[31] = 0;
        CHECK(!multi_batch_decode_init(&d, b, 32, 16));
        b[28] = 1;
        CHECK(multi_batch_decode_init(&d, b, 32, 16));
        /* the same with a trailing extra byte */
        CHECK(!multi_batch_decode_init(&d, b, 33, 16));
        /* element counts whose product overflows 32 bits are refused, not wrapped */
        memset(b, 0xFF, sizeof(b));
        b[124] = 0xFE;
        b[125] = 0xFF;
        b[126] = 1;
        b[127] = 0;
        CHECK(!multi_batch_decode_init(&d, b, 128, 128));
}

static void test_round_trip_many(void)
{
        /* Random batch layouts encode and decode to the same counts. */
        uint64_t seed = 12345;
        for (int round = 0; round < 200; round++) {
                uint32_t element = 1u << (3 + round % 5); /* 8..128 */
                uint32_t n = 1 + (uint32_t)(seed % 40);
                uint32_t counts[40];
                struct multi_batch_encoder e;
                multi_batch_encoder_init(&e, body, sizeof(body), element);
                for (uint32_t i = 0; i < n; i++) {
                        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                        uint32_t max;
                        uint8_t *w = multi_batch_encoder_writable(&e, &max);
                        CHECK(w != NULL);
                        counts[i] = (uint32_t)(seed >> 33) % 5;
                        if (counts[i] > max) counts[i] = max;
                        memset(w, (int)i, (size_t)counts[i] * element);
                        multi_batch_encoder_add(&e, counts[i]);
                }
                uint32_t size = multi_batch_encoder_finish(&e);
                CHECK(size % element == 0);
                struct multi_batch_decoder d;
                CHECK(multi_batch_decode_init(&d, body, size, element));
                CHECK_EQ_U64(d.batch_count, n);
                for (uint32_t i = 0; i < n; i++) {
                        const uint8_t *batch;
                        uint32_t count;
                        CHECK(multi_batch_decode_next(&d, &batch, &count));
                        CHECK_EQ_U64(count, counts[i]);
                        if (count > 0) CHECK_EQ_U64(batch[0], i);
                }
        }
}

int main(void)
{
        TEST_RUN(test_trailer_size);
        TEST_RUN(test_example_two_accounts);
        TEST_RUN(test_example_lookup);
        TEST_RUN(test_example_merged);
        TEST_RUN(test_example_empty_reply);
        TEST_RUN(test_rejects);
        TEST_RUN(test_round_trip_many);
        TEST_MAIN_END();
}
