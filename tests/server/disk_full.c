/*
 * disk_full.c: a client that writes until the server's file system is full, then checks that
 * the server refuses writes but still answers lookups, waits for space to be freed, and checks
 * that writes resume by themselves and that nothing acknowledged was lost.
 *
 *   disk_full <port> <go-file> [batches_max] [batch]
 *
 * Phase 1: create accounts 1..16, then create_transfers batches of 8189 transfers with ids
 * counting from 1, each waited for at most 3 s, until one gets no reply (the server refuses
 * it) or batches_max are acknowledged (then the test fails: the disk never filled). Phase 2:
 * a second session registers and looks up the accounts and some acknowledged transfers. Then it
 * prints "REFUSED acknowledged=<n>" and waits up to 120 s for <go-file> to exist (the script
 * frees space and creates it). Phase 3: the refused request is retransmitted until it is
 * answered (at most 60 s), a few more batches go through, and every acknowledged transfer is
 * looked up. Prints the checks and "N passed, N failed".
 */
#include "client/client.h"
#include "io/address.h"
#include "wire/types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint32_t BATCH = 8189; /* events per request (smaller for --development) */

static int passed, failed;

static void check(bool ok, const char *what)
{
        printf("%s %s\n", ok ? "ok" : "FAIL", what);
        if (ok)
                passed++;
        else
                failed++;
}

static uint8_t body[WIRE_MESSAGE_SIZE_MAX];

static uint32_t transfers_body(uint64_t first_id)
{
        struct wire_transfer *t = (struct wire_transfer *)body;
        memset(t, 0, BATCH * sizeof(*t));
        for (uint32_t i = 0; i < BATCH; i++) {
                uint64_t id = first_id + i;
                t[i].id = id;
                t[i].debit_account_id = 1 + (id % 16);
                t[i].credit_account_id = 1 + ((id + 1) % 16);
                t[i].amount = 1;
                t[i].ledger = 1;
                t[i].code = 1;
        }
        return client_body_single_batch(body, sizeof(struct wire_transfer), BATCH);
}

/* Looks up transfers [first, first + count): how many came back, with the right id. */
static uint64_t lookup_transfers(struct client *c, uint64_t first, uint32_t count)
{
        u128 *ids = (u128 *)body;
        for (uint32_t i = 0; i < count; i++)
                ids[i] = first + i;
        uint32_t size = client_body_single_batch(body, sizeof(u128), count);
        const struct wire_header *reply;
        if (client_request(c, OPERATION_LOOKUP_TRANSFERS, body, size, &reply) != CLIENT_OK)
                return 0;
        const uint8_t *results;
        uint32_t result_count;
        if (!client_reply_single_batch((const uint8_t *)reply + WIRE_HEADER_SIZE,
                                       reply->size - WIRE_HEADER_SIZE, sizeof(struct wire_transfer),
                                       &results, &result_count))
                return 0;
        uint64_t found = 0;
        for (uint32_t i = 0; i < result_count; i++) {
                struct wire_transfer t;
                memcpy(&t, results + (size_t)i * sizeof(t), sizeof(t));
                if (t.id >= first && t.id < first + count && t.amount == 1)
                        found++;
        }
        return found;
}

int main(int argc, char **argv)
{
        if (argc < 3) {
                fprintf(stderr, "usage: disk_full <port> <go-file> [batches_max]\n");
                return 2;
        }
        struct sockaddr_storage ss;
        socklen_t ss_size = address_loopback((uint16_t)atoi(argv[1]), &ss);
        const char *go = argv[2];
        uint64_t batches_max = argc > 3 ? strtoull(argv[3], NULL, 10) : 400;
        if (argc > 4)
                BATCH = (uint32_t)strtoul(argv[4], NULL, 10);
        if (BATCH == 0 || BATCH > 8189) {
                fprintf(stderr, "disk_full: batch must be 1..8189\n");
                return 2;
        }
        struct client c;
        if (client_open(&c, &ss, ss_size, 0, 0, 10000) != CLIENT_OK ||
            client_register(&c) != CLIENT_OK) {
                fprintf(stderr, "disk_full: cannot register: %s\n", c.error ? c.error : "?");
                return 1;
        }
        struct wire_account accounts[16];
        memset(accounts, 0, sizeof(accounts));
        for (uint32_t i = 0; i < 16; i++) {
                accounts[i].id = i + 1;
                accounts[i].ledger = 1;
                accounts[i].code = 1;
        }
        memcpy(body, accounts, sizeof(accounts));
        uint32_t size = client_body_single_batch(body, sizeof(struct wire_account), 16);
        const struct wire_header *reply;
        if (client_request(&c, OPERATION_CREATE_ACCOUNTS, body, size, &reply) != CLIENT_OK) {
                fprintf(stderr, "disk_full: create_accounts failed: %s\n", c.error);
                return 1;
        }
        /* Phase 1: write until refused. */
        c.timeout_ms = 3000;
        uint64_t acknowledged = 0, batches = 0;
        bool refused = false;
        while (batches < batches_max) {
                size = transfers_body(acknowledged + 1);
                int rc = client_request(&c, OPERATION_CREATE_TRANSFERS, body, size, &reply);
                if (rc == CLIENT_ERROR_TIMEOUT) {
                        refused = true;
                        break;
                }
                if (rc != CLIENT_OK) {
                        fprintf(stderr, "disk_full: create_transfers failed: %s\n", c.error);
                        return 1;
                }
                acknowledged += BATCH;
                batches++;
        }
        check(refused, "the server refused writes once its file system was full");
        printf("REFUSED acknowledged=%llu\n", (unsigned long long)acknowledged);
        fflush(stdout);
        /* Phase 2: reads still served, by a new session too. */
        struct client r;
        bool reads = client_open(&r, &ss, ss_size, 0, 0, 5000) == CLIENT_OK &&
                     client_register(&r) == CLIENT_OK;
        if (reads) {
                u128 *ids = (u128 *)body;
                for (uint32_t i = 0; i < 16; i++)
                        ids[i] = i + 1;
                size = client_body_single_batch(body, sizeof(u128), 16);
                const struct wire_header *lookup;
                reads = client_request(&r, OPERATION_LOOKUP_ACCOUNTS, body, size, &lookup) ==
                                CLIENT_OK &&
                        lookup->size - WIRE_HEADER_SIZE >= 16 * sizeof(struct wire_account);
        }
        check(reads, "while refusing writes, a new session registers and looks up the accounts");
        check(acknowledged == 0 || lookup_transfers(&r, 1, 100) == 100,
              "while refusing writes, acknowledged transfers are looked up");
        /* Wait for the script to free space. */
        struct stat st;
        for (int i = 0; i < 1200 && stat(go, &st) != 0; i++)
                usleep(100000);
        check(stat(go, &st) == 0, "space was freed");
        /* Phase 3: the refused request goes through by itself once there is room. */
        bool resumed = false;
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (int attempt = 0; attempt < 20 && refused && !resumed; attempt++) {
                int rc = client_retransmit(&c, &reply);
                if (rc == CLIENT_OK)
                        resumed = true;
                else if (rc != CLIENT_ERROR_TIMEOUT)
                        break;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        double seconds = (double)(now.tv_sec - start.tv_sec) +
                         (double)(now.tv_nsec - start.tv_nsec) / 1e9;
        check(resumed, "the refused request was answered once space was freed");
        if (resumed) {
                printf("resumed %.1f s after space was freed\n", seconds);
                acknowledged += BATCH;
                for (int k = 0; k < 3; k++) {
                        size = transfers_body(acknowledged + 1);
                        if (client_request(&c, OPERATION_CREATE_TRANSFERS, body, size, &reply) !=
                            CLIENT_OK)
                                break;
                        acknowledged += BATCH;
                }
        }
        /* Nothing acknowledged lost. */
        uint64_t found = 0;
        for (uint64_t first = 1; first <= acknowledged; first += BATCH)
                found += lookup_transfers(&r, first, (uint32_t)MIN((uint64_t)BATCH,
                                                                   acknowledged - first + 1));
        printf("acknowledged=%llu found=%llu\n", (unsigned long long)acknowledged,
               (unsigned long long)found);
        check(found == acknowledged, "every acknowledged transfer is there");
        client_close(&r);
        client_close(&c);
        printf("%d passed, %d failed\n", passed, failed);
        return failed == 0 ? 0 : 1;
}
