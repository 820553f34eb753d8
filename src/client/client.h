/*
 * client.h: a small blocking client for the wire protocol, for tests, the benchmark and tools.
 *
 * One connection, one request in flight, every wait bounded by a timeout. It registers a
 * session, chains each request to the previous reply's context and checks every reply the way
 * the official client does (checksums, release, request number, request checksum, operation).
 * Raw send/receive helpers let tests put arbitrary bytes on the wire.
 */
#ifndef TALLY_CLIENT_H
#define TALLY_CLIENT_H

#include "io/address.h"
#include "wire/header.h"

enum client_result {
        CLIENT_OK = 0,
        CLIENT_ERROR_CONNECT = -1,
        CLIENT_ERROR_TIMEOUT = -2,
        CLIENT_ERROR_CLOSED = -3,   /* the server closed the connection */
        CLIENT_ERROR_EVICTED = -4,  /* see client.eviction_reason */
        CLIENT_ERROR_PROTOCOL = -5, /* a reply the official client would reject */
        CLIENT_ERROR_TOO_LARGE = -6,
};

struct client {
        int fd;
        u128 cluster;
        u128 id;
        uint32_t release;
        uint32_t view;
        uint64_t session;
        uint32_t request_number; /* of the last request sent */
        u128 parent;             /* context of the last reply */
        uint32_t batch_size_limit;
        int timeout_ms;
        uint8_t eviction_reason;
        uint8_t *send_buffer; /* WIRE_MESSAGE_SIZE_MAX */
        uint8_t *recv_buffer; /* WIRE_MESSAGE_SIZE_MAX */
        uint32_t recv_size;
        uint32_t consumed_size; /* of the message handed out last */
        const char *error; /* what went wrong, for a log line */
};

/* Connects (blocking, bounded by timeout_ms). `id` 0 picks a random id. */
int client_open(struct client *client, const struct sockaddr_storage *address,
                socklen_t address_size, u128 cluster, u128 id, int timeout_ms);
void client_close(struct client *client);

int client_register(struct client *client);

/*
 * Sends one request and waits for its reply. On CLIENT_OK, *reply points into the client's
 * receive buffer (valid until the next call): header then body.
 */
int client_request(struct client *client, uint8_t operation, const void *body,
                   uint32_t body_size, const struct wire_header **reply);

/* Sends the last request again, byte for byte, and waits for its reply. */
int client_retransmit(struct client *client, const struct wire_header **reply);

/* Raw access for tests. */
int client_send_raw(struct client *client, const void *bytes, uint32_t size);
/* Waits for the next whole message; *message points into the receive buffer. */
int client_receive(struct client *client, const struct wire_header **message);

/* Fills a request header (without checksums) the way the official client does. */
void client_request_header(struct client *client, struct wire_header *header, uint8_t operation,
                           uint32_t body_size);

#endif
