/*
 * check_transfers.c: are transfers first..first+count-1 all stored, as the load tool sent them?
 * Usage: check_transfers <port> <first id> <count>. Looks them up in batches (cluster 0) and
 * prints "found=<n> missing=<n>"; exit status 0 only if none is missing or different.
 */
#include "client/client.h"
#include "io/address.h"
#include "wire/types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
        if (argc != 4) {
                fprintf(stderr, "usage: check_transfers <port> <first id> <count>\n");
                return 2;
        }
        struct sockaddr_storage ss;
        socklen_t ss_size = address_loopback((uint16_t)atoi(argv[1]), &ss);
        uint64_t first = strtoull(argv[2], NULL, 10), count = strtoull(argv[3], NULL, 10);
        struct client c;
        if (client_open(&c, &ss, ss_size, 0, 0, 20000) != CLIENT_OK ||
            client_register(&c) != CLIENT_OK) {
                fprintf(stderr, "check: cannot register: %s\n", c.error ? c.error : "?");
                return 1;
        }
        static uint8_t body[1 << 16];
        uint64_t found = 0, bad = 0;
        for (uint64_t at = 0; at < count;) {
                uint32_t n = (uint32_t)(count - at < 200 ? count - at : 200);
                for (uint32_t i = 0; i < n; i++) {
                        u128 id = first + at + i;
                        memcpy(body + i * 16, &id, 16);
                }
                uint32_t size = client_body_single_batch(body, 16, n);
                const struct wire_header *reply;
                if (client_request(&c, OPERATION_LOOKUP_TRANSFERS, body, size, &reply) !=
                    CLIENT_OK) {
                        fprintf(stderr, "check: lookup failed: %s\n", c.error);
                        return 1;
                }
                const uint8_t *elements;
                uint32_t got;
                if (!client_reply_single_batch((const uint8_t *)reply + WIRE_HEADER_SIZE,
                                               reply->size - WIRE_HEADER_SIZE, 128, &elements,
                                               &got))
                        return 1;
                for (uint32_t i = 0; i < got; i++) {
                        struct wire_transfer t;
                        memcpy(&t, elements + i * 128, sizeof(t));
                        bool same = t.amount == 1 && t.debit_account_id == 1 + (t.id % 16) &&
                                    t.credit_account_id == 1 + ((t.id + 1) % 16);
                        found += same ? 1 : 0;
                        bad += same ? 0 : 1;
                }
                at += n;
        }
        printf("found=%llu missing=%llu\n", (unsigned long long)found,
               (unsigned long long)(count - found));
        client_close(&c);
        return found == count && bad == 0 ? 0 : 1;
}
