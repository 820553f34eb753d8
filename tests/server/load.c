/*
 * load.c: writes a known amount of traffic into a server, for tests that then damage or
 * restart it. Usage: load <port> <requests> <first transfer id>
 *
 * Creates accounts 1..16 (an `exists` result is fine), then sends <requests> create_transfers
 * requests of 10 transfers each with ids counting up from <first transfer id>, and prints
 * "acknowledged=<n> commit=<op of the last reply>". Exit status 0 if every reply came.
 */
#include "client/client.h"
#include "io/address.h"
#include "wire/types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t body_one_batch(uint8_t *body, const void *events, uint32_t count, uint32_t size)
{
        memcpy(body, events, (size_t)count * size);
        return client_body_single_batch(body, size, count);
}

int main(int argc, char **argv)
{
        if (argc != 4) {
                fprintf(stderr, "usage: load <port> <requests> <first transfer id>\n");
                return 2;
        }
        struct sockaddr_storage ss;
        socklen_t ss_size = address_loopback((uint16_t)atoi(argv[1]), &ss);
        uint64_t requests = strtoull(argv[2], NULL, 10);
        uint64_t id = strtoull(argv[3], NULL, 10);
        struct client c;
        if (client_open(&c, &ss, ss_size, 0, 0, 10000) != CLIENT_OK ||
            client_register(&c) != CLIENT_OK) {
                fprintf(stderr, "load: cannot register: %s\n", c.error ? c.error : "?");
                return 1;
        }
        static uint8_t body[1 << 16];
        struct wire_account accounts[16];
        memset(accounts, 0, sizeof(accounts));
        for (uint32_t i = 0; i < 16; i++) {
                accounts[i].id = i + 1;
                accounts[i].ledger = 1;
                accounts[i].code = 1;
        }
        const struct wire_header *reply;
        uint32_t size = body_one_batch(body, accounts, 16, 128);
        if (client_request(&c, OPERATION_CREATE_ACCOUNTS, body, size, &reply) != CLIENT_OK) {
                fprintf(stderr, "load: create_accounts failed: %s\n", c.error);
                return 1;
        }
        uint64_t acknowledged = 0, commit = reply->reply.commit;
        for (uint64_t r = 0; r < requests; r++) {
                struct wire_transfer t[10];
                memset(t, 0, sizeof(t));
                for (uint32_t i = 0; i < 10; i++) {
                        t[i].id = id++;
                        t[i].debit_account_id = 1 + (t[i].id % 16);
                        t[i].credit_account_id = 1 + ((t[i].id + 1) % 16);
                        t[i].amount = 1;
                        t[i].ledger = 1;
                        t[i].code = 1;
                }
                size = body_one_batch(body, t, 10, 128);
                if (client_request(&c, OPERATION_CREATE_TRANSFERS, body, size, &reply) !=
                    CLIENT_OK) {
                        fprintf(stderr, "load: create_transfers failed: %s\n", c.error);
                        /* What was acknowledged before, for tests that check it survived. */
                        printf("acknowledged=%llu commit=%llu\n",
                               (unsigned long long)acknowledged, (unsigned long long)commit);
                        return 1;
                }
                acknowledged++;
                commit = reply->reply.commit;
        }
        printf("acknowledged=%llu commit=%llu\n", (unsigned long long)acknowledged,
               (unsigned long long)commit);
        client_close(&c);
        return 0;
}
