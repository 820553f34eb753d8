/*
 * compare_ledgers.c: does a restored cluster hold exactly what the original held at the
 * backup's checkpoint? Usage: compare_ledgers <original port> <restored port> <timestamp>
 *
 * <timestamp> is the backup's checkpoint timestamp: the original's objects with a timestamp
 * up to it are the state at the checkpoint. Through the C client (cluster 0):
 *   - every transfer of the original up to <timestamp>, in timestamp order (query_transfers,
 *     page by page), equals the restored cluster's transfer at the same position, byte for
 *     byte, and the restored cluster has no other transfer;
 *   - every account of the original up to <timestamp> equals the restored one in every field
 *     but the balances, and the restored balances equal the sums of those transfers (the
 *     original's own balances have moved on since);
 * Prints "compared accounts=A transfers=T" and exits 0, or names the first difference.
 */
#include "client/client.h"
#include "io/address.h"
#include "wire/types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ACCOUNTS_MAX 65536u

static struct client original, restored;
static uint8_t body[1 << 16];

struct balance {
        u128 id;
        u128 debits_posted;
        u128 credits_posted;
        bool used;
};
static struct balance balances[2 * ACCOUNTS_MAX];

static struct balance *balance_of(u128 id)
{
        uint64_t h = (uint64_t)(id * 0x9E3779B97F4A7C15ull) % (2 * ACCOUNTS_MAX);
        for (uint32_t i = 0; i < 2 * ACCOUNTS_MAX; i++) {
                struct balance *b = &balances[(h + i) % (2 * ACCOUNTS_MAX)];
                if (!b->used || b->id == id) {
                        b->used = true;
                        b->id = id;
                        return b;
                }
        }
        return NULL;
}

static int open_client(struct client *c, int port)
{
        struct sockaddr_storage ss;
        socklen_t ss_size = address_loopback((uint16_t)port, &ss);
        if (client_open(c, &ss, ss_size, 0, 0, 20000) != CLIENT_OK ||
            client_register(c) != CLIENT_OK) {
                fprintf(stderr, "compare: cannot register on port %d: %s\n", port,
                        c->error ? c->error : "?");
                return -1;
        }
        return 0;
}

/* One page of a query; elements copied into `out`. Returns the count or -1. */
static int64_t query(struct client *c, uint8_t operation, uint64_t min, uint64_t max,
                     uint32_t size, uint8_t *out)
{
        struct wire_query_filter f;
        memset(&f, 0, sizeof(f));
        f.timestamp_min = min;
        f.timestamp_max = max;
        f.limit = (c->batch_size_limit ? c->batch_size_limit : 32512u) / size - 1;
        memcpy(body, &f, sizeof(f));
        uint32_t body_size = client_body_single_batch(body, sizeof(f), 1);
        const struct wire_header *reply;
        if (client_request(c, operation, body, body_size, &reply) != CLIENT_OK) {
                fprintf(stderr, "compare: query failed: %s\n", c->error);
                return -1;
        }
        const uint8_t *elements;
        uint32_t count;
        if (!client_reply_single_batch((const uint8_t *)reply + WIRE_HEADER_SIZE,
                                       reply->size - WIRE_HEADER_SIZE, size, &elements, &count)) {
                fprintf(stderr, "compare: malformed query reply\n");
                return -1;
        }
        memcpy(out, elements, (size_t)count * size);
        return count;
}

static uint8_t page_a[1 << 20], page_b[1 << 20];

static int64_t compare_transfers(uint64_t timestamp)
{
        uint64_t next = 1, compared = 0;
        for (uint32_t pages = 0; pages < 1000000; pages++) {
                int64_t a = query(&original, OPERATION_QUERY_TRANSFERS, next, timestamp, 128,
                                  page_a);
                int64_t b = query(&restored, OPERATION_QUERY_TRANSFERS, next, 0, 128, page_b);
                if (a < 0 || b < 0)
                        return -1;
                if (a != b || memcmp(page_a, page_b, (size_t)a * 128) != 0) {
                        fprintf(stderr, "compare: transfers differ after %llu equal ones "
                                        "(page of %lld vs %lld)\n",
                                (unsigned long long)compared, (long long)a, (long long)b);
                        return -1;
                }
                for (int64_t i = 0; i < a; i++) {
                        struct wire_transfer t;
                        memcpy(&t, page_a + i * 128, sizeof(t));
                        struct balance *d = balance_of(t.debit_account_id);
                        struct balance *k = balance_of(t.credit_account_id);
                        if (d == NULL || k == NULL || t.flags != 0) {
                                fprintf(stderr, "compare: only plain posted transfers\n");
                                return -1;
                        }
                        d->debits_posted += t.amount;
                        k->credits_posted += t.amount;
                        next = t.timestamp + 1;
                }
                compared += (uint64_t)a;
                if (a == 0)
                        return (int64_t)compared;
        }
        return -1;
}

static int64_t compare_accounts(uint64_t timestamp)
{
        uint64_t next = 1, compared = 0;
        for (uint32_t pages = 0; pages < 100000; pages++) {
                int64_t a = query(&original, OPERATION_QUERY_ACCOUNTS, next, timestamp, 128,
                                  page_a);
                int64_t b = query(&restored, OPERATION_QUERY_ACCOUNTS, next, 0, 128, page_b);
                if (a < 0 || b < 0)
                        return -1;
                if (a != b) {
                        fprintf(stderr, "compare: %lld accounts vs %lld\n", (long long)a,
                                (long long)b);
                        return -1;
                }
                for (int64_t i = 0; i < a; i++) {
                        struct wire_account x, y;
                        memcpy(&x, page_a + i * 128, sizeof(x));
                        memcpy(&y, page_b + i * 128, sizeof(y));
                        struct balance *s = balance_of(x.id);
                        x.debits_posted = s->debits_posted;
                        x.credits_posted = s->credits_posted;
                        if (memcmp(&x, &y, sizeof(x)) != 0) {
                                fprintf(stderr, "compare: account %llu differs\n",
                                        (unsigned long long)x.id);
                                return -1;
                        }
                        next = x.timestamp + 1;
                }
                compared += (uint64_t)a;
                if (a == 0)
                        return (int64_t)compared;
        }
        return -1;
}

int main(int argc, char **argv)
{
        if (argc != 4) {
                fprintf(stderr, "usage: compare_ledgers <original port> <restored port> "
                                "<timestamp>\n");
                return 2;
        }
        uint64_t timestamp = strtoull(argv[3], NULL, 10);
        if (open_client(&original, atoi(argv[1])) != 0 || open_client(&restored, atoi(argv[2])) != 0)
                return 1;
        int64_t transfers = compare_transfers(timestamp);
        if (transfers < 0)
                return 1;
        int64_t accounts = compare_accounts(timestamp);
        if (accounts < 0)
                return 1;
        printf("compared accounts=%lld transfers=%lld\n", (long long)accounts,
               (long long)transfers);
        return 0;
}
