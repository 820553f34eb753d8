/*
 * client.h: a C client for the wire protocol, for tests, the benchmark, the simulator and tools.
 *
 * Two ways in, sharing the same checks of every reply (checksums, cluster, validity rules,
 * release, request number, request checksum, operation: the checks the official client makes):
 *
 * 1. `struct client`: blocking, one connection, one request in flight, every wait bounded by a
 *    timeout. Raw send/receive helpers let tests put arbitrary bytes on the wire.
 *
 * 2. `struct client_pool`: many sessions driven from one thread with non-blocking sockets and
 *    epoll. The protocol allows one request in flight per session, so throughput comes from
 *    running several sessions side by side ("pipelining" across sessions), each over its own
 *    connections. Per request it keeps TigerBeetle's client rules:
 *      - the request goes to the primary guess, replica `view % address_count`; the view is the
 *        highest seen in replies and pongs (each new connection sends a ping_client first, and
 *        the pool pings every replica before registering, so it starts at the right primary);
 *      - after `request_timeout_ms` without a reply the same bytes are sent again (to the
 *        primary guess and one other replica); the server answers a retransmission of the
 *        latest request from its reply cache. The wait doubles each time, up to 8x;
 *      - a closed connection is reopened with a backoff and the request in flight resent;
 *      - after `request_deadline_ms` the request fails with CLIENT_ERROR_TIMEOUT and its
 *        session is unusable (its hash chain cannot continue without the lost reply).
 *    Request bodies are written in place (client_pool_body) so a 1 MiB batch is never copied.
 *
 * Typical pool use:
 *
 *     struct client_pool *pool = client_pool_create(&options, error, sizeof(error));
 *     for (;;) {
 *             int32_t s = client_pool_idle_session(pool);
 *             if (s >= 0) {
 *                     uint8_t *body = client_pool_body(pool, s);
 *                     ... write events and a multi-batch trailer (client_body_single_batch) ...
 *                     client_pool_send(pool, s, OPERATION_CREATE_TRANSFERS, size, tag);
 *                     continue;
 *             }
 *             client_pool_run(pool, 100, on_done, context); // calls on_done per reply
 *     }
 *     client_pool_destroy(pool);
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
        const char *error;      /* what went wrong, for a log line */
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
int client_request(struct client *client, uint8_t operation, const void *body, uint32_t body_size,
                   const struct wire_header **reply);

/* Sends the last request again, byte for byte, and waits for its reply. */
int client_retransmit(struct client *client, const struct wire_header **reply);

/* Raw access for tests. */
int client_send_raw(struct client *client, const void *bytes, uint32_t size);
/* Waits for the next whole message; *message points into the receive buffer. */
int client_receive(struct client *client, const struct wire_header **message);

/* Fills a request header (without checksums) the way the official client does. */
void client_request_header(struct client *client, struct wire_header *header, uint8_t operation,
                           uint32_t body_size);

/* ---- Many sessions from one thread ------------------------------------------------------- */

/* The server keeps 64 sessions (evicting the least recently used); more sessions than that
 * evict each other. The cap only bounds memory: 1 MiB of request buffer per session. */
#define CLIENT_POOL_SESSIONS_MAX 256u

struct client_pool_options {
        const struct address *addresses; /* resolved; address i is replica i */
        uint32_t address_count;          /* 1..ADDRESSES_MAX */
        u128 cluster;
        uint32_t session_count;       /* 1..CLIENT_POOL_SESSIONS_MAX */
        uint32_t request_timeout_ms;  /* first retransmission; 0 means 1000 */
        uint32_t request_deadline_ms; /* failure; 0 means 60000 */
};

struct client_completion {
        uint32_t session;
        int result; /* CLIENT_OK, or CLIENT_ERROR_TIMEOUT / _EVICTED */
        uint8_t operation;
        uint64_t user_data;              /* as given to client_pool_send */
        const struct wire_header *reply; /* NULL unless CLIENT_OK; valid during the callback */
        const uint8_t *body;             /* the reply's body, in the receive buffer */
        uint32_t body_size;
        uint64_t latency_ns; /* from the first send to the reply */
        uint32_t send_count; /* 1 + retransmissions */
        uint8_t eviction_reason;
};

typedef void (*client_pool_callback)(void *context, const struct client_completion *completion);

struct client_pool_stats {
        uint64_t requests;
        uint64_t retransmissions;
        uint64_t reconnects;
        uint64_t messages_dropped; /* invalid messages (the connection is then closed) */
        uint64_t bytes_sent;
        uint64_t bytes_received;
};

struct client_pool;

/*
 * Connects, pings every replica to learn the view, and registers every session, bounded by
 * request_deadline_ms. NULL on failure, with a one-line reason in `error`.
 */
struct client_pool *client_pool_create(const struct client_pool_options *options, char *error,
                                       size_t error_size);
void client_pool_destroy(struct client_pool *pool);

/* From the register replies: the largest request body the cluster accepts. */
uint32_t client_pool_batch_size_limit(const struct client_pool *pool);
uint32_t client_pool_view(const struct client_pool *pool);
uint32_t client_pool_in_flight(const struct client_pool *pool);
const struct client_pool_stats *client_pool_stats(const struct client_pool *pool);
/* The last protocol problem seen (dropped message, failed connect), or NULL. */
const char *client_pool_last_error(const struct client_pool *pool);

/* A usable session with no request in flight, or -1 if every session is busy or failed. */
int32_t client_pool_idle_session(struct client_pool *pool);
/* Where the next request's body goes: batch_size_limit bytes, valid until send. */
uint8_t *client_pool_body(struct client_pool *pool, uint32_t session);
/* Sends the body written at client_pool_body(); the session must be idle. */
int client_pool_send(struct client_pool *pool, uint32_t session, uint8_t operation,
                     uint32_t body_size, uint64_t user_data);

/*
 * Waits at most timeout_ms for the network, handles timers, and calls `callback` once for each
 * request that finished (the callback may send the next request). Returns how many finished.
 */
int client_pool_run(struct client_pool *pool, int timeout_ms, client_pool_callback callback,
                    void *context);

/*
 * Ends `body` (element_count elements of element_size bytes already written at its start) with
 * the one-batch multi-batch trailer; returns the body size.
 */
uint32_t client_body_single_batch(uint8_t *body, uint32_t element_size, uint32_t element_count);

/* The elements of a one-batch multi-batch reply body; false if it is not one. */
bool client_reply_single_batch(const uint8_t *body, uint32_t body_size, uint32_t element_size,
                               const uint8_t **elements, uint32_t *element_count);

#endif
