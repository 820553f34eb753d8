/*
 * test_address_flags.c: `--addresses` forms and command-line flag parsing, including every
 * malformed input getting an error rather than a guess.
 */
#include "io/address.h"
#include "lib/flags.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>

static void test_address_forms(void)
{
        struct address a[ADDRESSES_MAX];
        uint32_t n = 0;
        char error[256];
        CHECK(address_parse_list("3000", a, &n, error, sizeof(error)) == 0);
        CHECK_EQ_U64(n, 1);
        CHECK(strcmp(a[0].host, "127.0.0.1") == 0);
        CHECK_EQ_U64(a[0].port, 3000);
        CHECK(!a[0].is_name);
        CHECK(address_parse_list("127.0.0.1", a, &n, error, sizeof(error)) == 0);
        CHECK_EQ_U64(a[0].port, ADDRESS_PORT_DEFAULT);
        CHECK(address_parse_list("10.1.2.3:4000,[::1]:3001,localhost:3002", a, &n, error,
                                 sizeof(error)) == 0);
        CHECK_EQ_U64(n, 3);
        CHECK_EQ_U64(a[0].port, 4000);
        CHECK_EQ_U64(a[1].sockaddr.ss_family, AF_INET6);
        CHECK_EQ_U64(a[1].port, 3001);
        CHECK(a[2].is_name);
        CHECK(strcmp(a[2].host, "localhost") == 0);
        CHECK(address_resolve(&a[2], error, sizeof(error)) == 0);
        CHECK(a[2].sockaddr_size > 0);
        char text[80];
        address_format(&a[0].sockaddr, text, sizeof(text));
        CHECK(strcmp(text, "10.1.2.3:4000") == 0);
        address_format(&a[1].sockaddr, text, sizeof(text));
        CHECK(strcmp(text, "[::1]:3001") == 0);
        CHECK(address_parse_list("tally-0.tally-headless.ns.svc.cluster.local:3000", a, &n,
                                 error, sizeof(error)) == 0);
        CHECK(a[0].is_name);
}

static void test_address_errors(void)
{
        struct address a[ADDRESSES_MAX];
        uint32_t n = 0;
        char error[256];
        const char *bad[] = {
                "",          "3000,",      ",3000",        "::1",          "[::1",
                "[::1]:",    "[::1]x",     "1.2.3.4:",     "1.2.3.4:0",    "1.2.3.4:65536",
                "1.2.3.4:x", "70000",      "0",            "host name:1",  "[1.2.3.4]:5",
                "1,2,3,4,5,6,7",
        };
        for (uint32_t i = 0; i < ARRAY_LEN(bad); i++) {
                error[0] = '\0';
                int rc = address_parse_list(bad[i], a, &n, error, sizeof(error));
                if (rc == 0)
                        fprintf(stderr, "  accepted bad address '%s'\n", bad[i]);
                CHECK(rc != 0);
                CHECK(error[0] != '\0');
        }
        CHECK(address_parse_list("1,2,3,4,5,6", a, &n, error, sizeof(error)) == 0);
        CHECK_EQ_U64(n, 6);
        /* A name that does not resolve is an error at resolve time, not at parse time. */
        CHECK(address_parse_list("no-such-host.invalid:3000", a, &n, error, sizeof(error)) == 0);
        CHECK(address_resolve(&a[0], error, sizeof(error)) != 0);
}

static void test_u128_parse(void)
{
        u128 v;
        CHECK(parse_u128("0", &v) && v == 0);
        CHECK(parse_u128("340282366920938463463374607431768211455", &v) && v == U128_MAX);
        CHECK(!parse_u128("340282366920938463463374607431768211456", &v));
        CHECK(!parse_u128("", &v));
        CHECK(!parse_u128("-1", &v));
        CHECK(!parse_u128("12a", &v));
        uint64_t w;
        CHECK(parse_u64("18446744073709551615", &w) && w == UINT64_MAX);
        CHECK(!parse_u64("18446744073709551616", &w));
        CHECK(parse_bytes("4096", &w) && w == 4096);
        CHECK(parse_bytes("512MiB", &w) && w == 512ull << 20);
        CHECK(parse_bytes("1G", &w) && w == 1ull << 30);
        CHECK(parse_bytes("2GB", &w) && w == 2ull << 30);
        CHECK(parse_bytes("3TiB", &w) && w == 3ull << 40);
        CHECK(parse_bytes("7B", &w) && w == 7);
        CHECK(!parse_bytes("", &w));
        CHECK(!parse_bytes("MiB", &w));
        CHECK(!parse_bytes("12XB", &w));
        CHECK(!parse_bytes("-1", &w));
        CHECK(!parse_bytes("16777216TiB", &w)); /* 2^64 */
        CHECK(parse_bytes("16777215TiB", &w) && w == 16777215ull << 40);
        char text[40];
        format_u128(U128_MAX, text);
        CHECK(strcmp(text, "340282366920938463463374607431768211455") == 0);
        format_u128(0, text);
        CHECK(strcmp(text, "0") == 0);
}

static int parse(int argc, char **argv, struct flag *flags, uint32_t count, char *error)
{
        const char *positional[2];
        uint32_t positional_count;
        return flags_parse(argc, argv, flags, count, positional, 1, &positional_count, error,
                           256);
}

static void test_flags(void)
{
        char error[256];
        struct flag flags[] = {
                {.name = "cluster", .kind = FLAG_U128, .required = true},
                {.name = "replica", .kind = FLAG_U64},
                {.name = "development", .kind = FLAG_SWITCH},
        };
        char *ok[] = {"--cluster=5", "--replica=2", "--development", "path"};
        CHECK(parse(4, ok, flags, ARRAY_LEN(flags), error) == 0);
        CHECK(flags[0].u128 == 5 && flags[1].u64 == 2 && flags[2].present);

        char *cases[][3] = {
                {"--cluster=5", "--nope=1", "p"},       {"--cluster", "p", "q"},
                {"--cluster=x", "p", "p"},              {"--cluster=5", "--cluster=6", "p"},
                {"--cluster=5", "--development=1", "p"}, {"--replica=1", "p", "p"},
                {"--cluster=5", "--replica=-1", "p"},
        };
        int counts[] = {3, 2, 2, 3, 3, 2, 3};
        for (uint32_t i = 0; i < ARRAY_LEN(cases); i++) {
                for (uint32_t k = 0; k < ARRAY_LEN(flags); k++)
                        flags[k].present = false;
                error[0] = '\0';
                CHECK(parse(counts[i], cases[i], flags, ARRAY_LEN(flags), error) != 0);
                CHECK(error[0] != '\0');
        }
        /* Two positionals where one is allowed. */
        for (uint32_t k = 0; k < ARRAY_LEN(flags); k++)
                flags[k].present = false;
        char *two[] = {"--cluster=1", "a", "b"};
        CHECK(parse(3, two, flags, ARRAY_LEN(flags), error) != 0);
}

int main(void)
{
        TEST_RUN(test_address_forms);
        TEST_RUN(test_address_errors);
        TEST_RUN(test_u128_parse);
        TEST_RUN(test_flags);
        TEST_MAIN_END();
}
