/*
 * test_checksum.c: the checksum against every published vector, under each implementation.
 *
 * Every test runs once per implementation (forced with checksum_select). The vectors come from
 * the repository's copies in tests/vectors/, read with a small purpose-built scanner rather than
 * a JSON parser: it finds a key, then the string or number after it. Each scan also counts what
 * it found, so a scanner that finds nothing fails instead of passing vacuously. Tests run from
 * the repository root.
 */
#include "test.h"
#include "wire/checksum.h"

#define VECTORS_DIR "tests/vectors/"
#define VECTOR_FILE_SIZE_MAX (1024 * 1024)
#define MESSAGE_SIZE_MAX (1024 * 1024)
#define HEADER_SIZE 256

static enum checksum_impl impl_under_test;

static const char *impl_name(enum checksum_impl impl)
{
        switch (impl) {
        case CHECKSUM_IMPL_PORTABLE:
                return "portable";
        case CHECKSUM_IMPL_AESNI:
                return "aesni";
        default:
                return "auto";
        }
}

/* Prints a u128 as 0x... with 32 hex digits, for failure messages. */
static void u128_print(const char *label, u128 value)
{
        fprintf(stderr, "    %s 0x%016llx%016llx\n", label, (unsigned long long)(value >> 64),
                (unsigned long long)value);
}

#define CHECK_EQ_U128(a, b)                                                                        \
        do {                                                                                       \
                u128 check_a_ = (a);                                                               \
                u128 check_b_ = (b);                                                               \
                CHECK(check_a_ == check_b_);                                                       \
                if (check_a_ != check_b_) {                                                        \
                        u128_print(#a, check_a_);                                                  \
                        u128_print(#b, check_b_);                                                  \
                }                                                                                  \
        } while (0)

/* Reading the vector files. */

/* The whole file, NUL-terminated, or NULL (reported) if it cannot be read. Caller frees. */
static char *file_read(const char *path)
{
        FILE *file = fopen(path, "rb");
        if (file == NULL) {
                fprintf(stderr, "  cannot open %s (tests run from the repository root)\n", path);
                return NULL;
        }
        char *text = malloc(VECTOR_FILE_SIZE_MAX + 1);
        size_t size = text == NULL ? 0 : fread(text, 1, VECTOR_FILE_SIZE_MAX + 1, file);
        fclose(file);
        if (text == NULL || size > VECTOR_FILE_SIZE_MAX) {
                fprintf(stderr, "  cannot read %s\n", path);
                free(text);
                return NULL;
        }
        text[size] = '\0';
        return text;
}

/*
 * Finds `"key"` in [from, end) followed by a colon and returns a pointer to the value after it,
 * or NULL. The quotes around the key make "checksum" not match "checksum_body".
 */
static const char *json_find_value(const char *from, const char *end, const char *key)
{
        char quoted[64];
        int n = snprintf(quoted, sizeof(quoted), "\"%s\"", key);
        if (n <= 0 || (size_t)n >= sizeof(quoted))
                return NULL;
        for (const char *p = from; p != NULL && p < end; p++) {
                p = strstr(p, quoted);
                if (p == NULL || p >= end)
                        return NULL;
                const char *q = p + n;
                while (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')
                        q++;
                if (*q != ':')
                        continue;
                q++;
                while (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')
                        q++;
                return q < end ? q : NULL;
        }
        return NULL;
}

static int hex_digit(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Parses a JSON string of hex digit pairs into out; returns the byte count or -1. */
static long json_hex_bytes(const char *value, uint8_t *out, size_t out_size)
{
        if (value == NULL || *value != '"')
                return -1;
        size_t count = 0;
        const char *p = value + 1;
        while (*p != '"') {
                int hi = hex_digit(p[0]);
                int lo = hi < 0 ? -1 : hex_digit(p[1]);
                if (lo < 0 || count == out_size)
                        return -1;
                out[count++] = (uint8_t)(hi << 4 | lo);
                p += 2;
        }
        return (long)count;
}

/* Parses a JSON string "0x..." of at most 32 hex digits; false if malformed. */
static bool json_u128(const char *value, u128 *out)
{
        if (value == NULL || strncmp(value, "\"0x", 3) != 0)
                return false;
        u128 result = 0;
        int digits = 0;
        for (const char *p = value + 3; *p != '"'; p++) {
                int d = hex_digit(*p);
                if (d < 0 || digits == 32)
                        return false;
                result = result << 4 | (u128)d;
                digits++;
        }
        *out = result;
        return digits > 0;
}

static u128 u128_from_le(const uint8_t bytes[16])
{
        u128 value;
        memcpy(&value, bytes, sizeof(value)); /* little-endian host, asserted in common.h */
        return value;
}

/* Splits the input in random pieces (sizes 0..max_piece) and streams it; rng is xorshift64. */
static u128 checksum_streamed(const uint8_t *data, size_t size, uint64_t *rng, size_t max_piece)
{
        struct checksum_stream stream;
        checksum_stream_init(&stream);
        size_t offset = 0;
        while (offset < size) {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                size_t piece = MIN((size_t)(*rng % (max_piece + 1)), size - offset);
                checksum_stream_add(&stream, data + offset, piece);
                offset += piece;
        }
        return checksum_stream_final(&stream);
}

/* Tests. */

static void test_empty(void)
{
        CHECK_EQ_U128(checksum(NULL, 0), CHECKSUM_EMPTY);
        CHECK_EQ_U128(checksum("", 0), CHECKSUM_EMPTY);

        struct checksum_stream stream;
        checksum_stream_init(&stream);
        CHECK_EQ_U128(checksum_stream_final(&stream), CHECKSUM_EMPTY);
        checksum_stream_add(&stream, NULL, 0);
        CHECK_EQ_U128(checksum_stream_final(&stream), CHECKSUM_EMPTY);
}

static void test_plain_vectors(void)
{
        char *text = file_read(VECTORS_DIR "checksum_vectors.json");
        CHECK(text != NULL);
        if (text == NULL)
                return;
        const char *end = text + strlen(text);

        static uint8_t input[4096];
        int vector_count = 0;
        const char *p = text;
        for (;;) {
                const char *input_hex = json_find_value(p, end, "input_hex");
                if (input_hex == NULL)
                        break;
                const char *expect_u128 = json_find_value(input_hex, end, "checksum_u128");
                const char *expect_wire =
                    json_find_value(input_hex, end, "tag_bytes_as_stored_on_wire");
                long size = json_hex_bytes(input_hex, input, sizeof(input));
                u128 expected;
                uint8_t wire[16];
                CHECK(size >= 0);
                CHECK(json_u128(expect_u128, &expected));
                CHECK(json_hex_bytes(expect_wire, wire, sizeof(wire)) == 16);
                if (size < 0 || expect_u128 == NULL || expect_wire == NULL)
                        break;

                u128 actual = checksum(input, (size_t)size);
                CHECK_EQ_U128(actual, expected);
                CHECK_EQ_U128(u128_from_le(wire), expected);
                uint8_t actual_bytes[16];
                memcpy(actual_bytes, &actual, sizeof(actual_bytes));
                CHECK(memcmp(actual_bytes, wire, sizeof(wire)) == 0);
                vector_count++;
                p = expect_wire;
        }
        CHECK_EQ_U64(vector_count, 8); /* wire-protocol.md section 3.2 lists eight */
        free(text);
}

struct xoshiro256 {
        uint64_t s[4];
};

static uint64_t rotl64(uint64_t x, int bits)
{
        return (x << bits) | (x >> (64 - bits));
}

static uint64_t splitmix64_next(uint64_t *state)
{
        *state += 0x9e3779b97f4a7c15ULL;
        uint64_t z = *state;
        z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ z >> 27) * 0x94d049bb133111ebULL;
        return z ^ z >> 31;
}

static uint64_t xoshiro256_next(struct xoshiro256 *x)
{
        uint64_t *s = x->s;
        uint64_t result = rotl64(s[0] + s[3], 23) + s[0];
        uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl64(s[3], 45);
        return result;
}

/* One next() per whole 8-byte group, little-endian; one more for a 1..7 byte tail. */
static void xoshiro256_fill(struct xoshiro256 *x, uint8_t *out, size_t size)
{
        for (size_t i = 0; i < size; i += 8) {
                uint64_t word = xoshiro256_next(x);
                memcpy(out + i, &word, MIN((size_t)8, size - i));
        }
}

/* TigerBeetle's change detector, wire-protocol.md section 3.2. */
static void test_stability(void)
{
        static uint8_t results[896][16];
        size_t count = 0;
        uint8_t input[268];

        for (size_t n = 0; n < 128; n++) {
                memset(input, 0, n);
                u128 value = checksum(input, n);
                memcpy(results[count++], &value, 16);
        }
        for (size_t k = 0; k < 512; k++) {
                memset(input, 0, 64);
                input[k / 8] = (uint8_t)(1u << (k % 8));
                u128 value = checksum(input, 64);
                memcpy(results[count++], &value, 16);
        }
        uint64_t seed = 92;
        struct xoshiro256 rng;
        for (int i = 0; i < 4; i++)
                rng.s[i] = splitmix64_next(&seed);
        for (size_t n = 13; n <= 268; n++) {
                xoshiro256_fill(&rng, input, n);
                u128 value = checksum(input, n);
                memcpy(results[count++], &value, 16);
        }
        CHECK_EQ_U64(count, 896);

        u128 expected = ((u128)0x82dcaacf4875b279ULL << 64) | 0x446825b6830d1263ULL;
        CHECK_EQ_U128(checksum(results, sizeof(results)), expected);

        /* The same value from the vector file, so the two cannot drift apart. */
        char *text = file_read(VECTORS_DIR "checksum_vectors.json");
        CHECK(text != NULL);
        if (text != NULL) {
                const char *end = text + strlen(text);
                const char *stability = json_find_value(text, end, "stability_test");
                u128 from_file = 0;
                CHECK(json_u128(json_find_value(stability ? stability : end, end, "result"),
                                &from_file));
                CHECK_EQ_U128(from_file, expected);
                free(text);
        }
}

/*
 * Checks every message in one vector file: the header checksum over bytes 16..255, the body
 * checksum over the body exactly, the checksums at offsets 0 and 32 of the header, and for
 * entries with a `context` field (replies) the context rule: the checksum of header bytes
 * 16..255 with bytes 160..175 zeroed. Returns the number of messages and of contexts checked.
 */
static void check_message_file(const char *path, int *message_count, int *context_count)
{
        *message_count = 0;
        *context_count = 0;
        char *text = file_read(path);
        CHECK(text != NULL);
        if (text == NULL)
                return;
        const char *end = text + strlen(text);
        static uint8_t body[MESSAGE_SIZE_MAX];

        /* Each entry starts at its "description"; its fields end where the next one starts. */
        const char *entry = json_find_value(text, end, "description");
        while (entry != NULL) {
                const char *next = json_find_value(entry, end, "description");
                const char *entry_end = next != NULL ? next : end;

                uint8_t header[HEADER_SIZE];
                u128 want_checksum, want_checksum_body, want_context;
                long header_size = json_hex_bytes(json_find_value(entry, entry_end, "header_hex"),
                                                  header, sizeof(header));
                long body_size = json_hex_bytes(json_find_value(entry, entry_end, "body_hex"), body,
                                                sizeof(body));
                CHECK(header_size == HEADER_SIZE);
                CHECK(body_size >= 0);
                CHECK(json_u128(json_find_value(entry, entry_end, "checksum"), &want_checksum));
                CHECK(json_u128(json_find_value(entry, entry_end, "checksum_body"),
                                &want_checksum_body));
                if (header_size != HEADER_SIZE || body_size < 0)
                        break;

                CHECK_EQ_U128(checksum(header + 16, HEADER_SIZE - 16), want_checksum);
                CHECK_EQ_U128(checksum(body, (size_t)body_size), want_checksum_body);
                CHECK_EQ_U128(u128_from_le(header), want_checksum);
                CHECK_EQ_U128(u128_from_le(header + 32), want_checksum_body);
                if (body_size == 0)
                        CHECK_EQ_U128(want_checksum_body, CHECKSUM_EMPTY);

                if (json_u128(json_find_value(entry, entry_end, "context"), &want_context)) {
                        CHECK_EQ_U128(u128_from_le(header + 160), want_context);
                        uint8_t zeroed[HEADER_SIZE];
                        memcpy(zeroed, header, sizeof(zeroed));
                        memset(zeroed + 160, 0, 16);
                        CHECK_EQ_U128(checksum(zeroed + 16, HEADER_SIZE - 16), want_context);
                        (*context_count)++;
                }
                (*message_count)++;
                entry = next;
        }
        free(text);
}

static void test_client_messages_captured(void)
{
        int messages, contexts;
        check_message_file(VECTORS_DIR "client_messages_captured.json", &messages, &contexts);
        CHECK_EQ_U64(messages, 8);
        CHECK_EQ_U64(contexts, 0);
}

static void test_server_messages_accepted(void)
{
        int messages, contexts;
        check_message_file(VECTORS_DIR "server_messages_accepted.json", &messages, &contexts);
        CHECK_EQ_U64(messages, 6);
        CHECK_EQ_U64(contexts, 4); /* the four replies */
}

/* Streaming in random pieces equals one shot, for every length around the block boundaries. */
static void test_stream_random_splits(void)
{
        static uint8_t data[4096];
        uint64_t rng = 0x9d2c5680a1b3e4f7ULL;
        for (size_t i = 0; i < sizeof(data); i++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                data[i] = (uint8_t)rng;
        }

        for (size_t size = 0; size <= 200; size++) {
                u128 expected = checksum(data, size);
                for (int round = 0; round < 8; round++)
                        CHECK_EQ_U128(checksum_streamed(data, size, &rng, 40), expected);
        }
        for (int round = 0; round < 50; round++) {
                size_t size = (size_t)(rng % sizeof(data));
                u128 expected = checksum(data, size);
                CHECK_EQ_U128(checksum_streamed(data, size, &rng, 1), expected);
                CHECK_EQ_U128(checksum_streamed(data, size, &rng, 100), expected);
                CHECK_EQ_U128(checksum_streamed(data, size, &rng, sizeof(data)), expected);
        }

        /* A final in the middle leaves the stream usable. */
        struct checksum_stream stream;
        checksum_stream_init(&stream);
        checksum_stream_add(&stream, data, 45);
        CHECK_EQ_U128(checksum_stream_final(&stream), checksum(data, 45));
        checksum_stream_add(&stream, data + 45, 100);
        CHECK_EQ_U128(checksum_stream_final(&stream), checksum(data, 145));
}

static u128 keyed(const uint8_t key[16], const uint8_t nonce[16], const uint8_t *data,
                  size_t size)
{
        struct checksum_stream stream;
        checksum_stream_init_keyed(&stream, key, nonce);
        checksum_stream_add(&stream, data, size);
        return checksum_stream_final(&stream);
}

/*
 * The keyed form (replica authentication): with a zero key and nonce it is the checksum, so
 * its Init is AEGIS-128L's; any bit of key or nonce changes every tag.
 */
static void test_keyed(void)
{
        static uint8_t data[300];
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t)(i * 29 + 3);
        uint8_t key[16] = {0}, nonce[16] = {0};
        for (size_t size = 0; size <= sizeof(data); size += 13)
                CHECK_EQ_U128(keyed(key, nonce, data, size), checksum(data, size));
        u128 zero = keyed(key, nonce, data, 100);
        for (uint32_t bit = 0; bit < 128; bit += 9) {
                key[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                u128 with_key = keyed(key, nonce, data, 100);
                CHECK(with_key != zero);
                key[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                nonce[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                u128 with_nonce = keyed(key, nonce, data, 100);
                CHECK(with_nonce != zero);
                CHECK(with_nonce != with_key);
                nonce[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        /* Init with a key reaches the same state whatever was in the stream before. */
        struct checksum_stream stream;
        checksum_stream_init(&stream);
        checksum_stream_add(&stream, data, 77);
        key[3] = 9;
        checksum_stream_init_keyed(&stream, key, nonce);
        checksum_stream_add(&stream, data, 50);
        CHECK_EQ_U128(checksum_stream_final(&stream), keyed(key, nonce, data, 50));
}

/* A 1 MiB message, the largest the server checksums, one-shot and streamed. */
static void test_large_message(void)
{
        size_t size = 1024 * 1024;
        uint8_t *data = malloc(size + 1);
        CHECK(data != NULL);
        if (data == NULL)
                return;
        for (size_t i = 0; i < size + 1; i++)
                data[i] = (uint8_t)(i * 131 + (i >> 11));
        uint64_t rng = 12345;
        u128 expected = checksum(data, size);
        CHECK_EQ_U128(checksum_streamed(data, size, &rng, 70000), expected);
        /* Unaligned start: the loads must not assume 16-byte alignment. */
        CHECK_EQ_U128(checksum_streamed(data + 1, size, &rng, 70000), checksum(data + 1, size));
        CHECK(checksum(data + 1, size) != expected);
        free(data);
}

/*
 * The two implementations against each other on random inputs, and a stream handed from one to
 * the other half way (both keep the same state layout). Runs once, outside the per-impl loop.
 */
static void test_implementations_agree(void)
{
        if (!checksum_select(CHECKSUM_IMPL_AESNI)) {
                fprintf(stderr, "  skipped: this CPU has no AES-NI\n");
                return;
        }
        static uint8_t data[3000];
        uint64_t rng = 77;
        for (size_t i = 0; i < sizeof(data); i++) {
                rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
                data[i] = (uint8_t)(rng >> 56);
        }
        for (size_t size = 0; size <= sizeof(data); size += 7) {
                CHECK(checksum_select(CHECKSUM_IMPL_AESNI));
                u128 aesni = checksum(data, size);
                CHECK(checksum_select(CHECKSUM_IMPL_PORTABLE));
                CHECK_EQ_U128(checksum(data, size), aesni);
        }

        /* Keyed: the Init rounds run on the selected implementation too. */
        uint8_t key[16], nonce[16];
        for (uint32_t i = 0; i < 16; i++) {
                key[i] = data[i];
                nonce[i] = data[100 + i];
        }
        for (size_t size = 0; size <= sizeof(data); size += 101) {
                CHECK(checksum_select(CHECKSUM_IMPL_AESNI));
                u128 aesni = keyed(key, nonce, data, size);
                CHECK(checksum_select(CHECKSUM_IMPL_PORTABLE));
                CHECK_EQ_U128(keyed(key, nonce, data, size), aesni);
        }

        struct checksum_stream stream;
        checksum_stream_init(&stream);
        CHECK(checksum_select(CHECKSUM_IMPL_PORTABLE));
        checksum_stream_add(&stream, data, 1001);
        CHECK(checksum_select(CHECKSUM_IMPL_AESNI));
        checksum_stream_add(&stream, data + 1001, 999);
        CHECK_EQ_U128(checksum_stream_final(&stream), checksum(data, 2000));
}

static void test_select(void)
{
        CHECK(checksum_select(CHECKSUM_IMPL_PORTABLE));
        CHECK(checksum_selected() == CHECKSUM_IMPL_PORTABLE);
        bool has_aesni = checksum_select(CHECKSUM_IMPL_AESNI);
        CHECK(checksum_selected() == (has_aesni ? CHECKSUM_IMPL_AESNI : CHECKSUM_IMPL_PORTABLE));
        CHECK(checksum_select(CHECKSUM_IMPL_AUTO));
        CHECK(checksum_selected() == (has_aesni ? CHECKSUM_IMPL_AESNI : CHECKSUM_IMPL_PORTABLE));
}

static void run_all_for(enum checksum_impl impl)
{
        impl_under_test = impl;
        if (!checksum_select(impl)) {
                printf("impl=%s skipped: not supported by this CPU\n", impl_name(impl));
                return;
        }
        printf("impl=%s\n", impl_name(checksum_selected()));
        TEST_RUN(test_empty);
        TEST_RUN(test_plain_vectors);
        TEST_RUN(test_stability);
        TEST_RUN(test_client_messages_captured);
        TEST_RUN(test_server_messages_accepted);
        TEST_RUN(test_stream_random_splits);
        TEST_RUN(test_large_message);
        TEST_RUN(test_keyed);
        if (checksum_selected() != impl_under_test) {
                fprintf(stderr, "FAIL impl=%s: a test switched implementations\n",
                        impl_name(impl_under_test));
                test_functions_failed++;
        }
}

int main(void)
{
        run_all_for(CHECKSUM_IMPL_PORTABLE);
        run_all_for(CHECKSUM_IMPL_AESNI);
        TEST_RUN(test_implementations_agree);
        TEST_RUN(test_select);
        TEST_MAIN_END();
}
