/*
 * bus.h: the message bus. Accepts TCP connections, frames the byte stream into checked
 * messages, and queues outgoing messages per connection.
 *
 * What reaches the replica has passed every framing check: header checksum, size bounds, body
 * checksum, cluster, and the header validity rules. A connection that sends a bad checksum, an
 * impossible size or another cluster's id is closed with a log line; a well-framed but invalid
 * header is dropped with a log line. One slow or hostile peer never holds up others: receives
 * are re-armed only after what arrived was handled, and each connection's send queue is
 * bounded (a message that does not fit is dropped; clients retransmit).
 */
#ifndef TALLY_NET_BUS_H
#define TALLY_NET_BUS_H

#include "io/address.h"
#include "io/io.h"
#include "wire/message.h"

/* Messages queued for sending on one connection before further ones are dropped. */
#define BUS_SEND_QUEUE_MAX 16u

/* A connection handle: slot index and generation, so a stale handle never hits a new peer. */
typedef uint64_t bus_connection_id;
#define BUS_CONNECTION_NONE ((bus_connection_id)0)

struct bus;

struct bus_callbacks {
        void *context;
        /* A checked message; the callee takes its own reference if it keeps it. */
        void (*on_message)(void *context, bus_connection_id connection, struct message *message);
        /* The connection is gone; its id will never be used again. */
        void (*on_close)(void *context, bus_connection_id connection);
};

struct bus_connection {
        int fd;
        uint32_t generation;
        bool active;
        bool closing;
        bool recv_pending;
        bool recv_paused; /* no free message to receive into; resumed on tick */
        bool send_pending;
        struct io_completion recv_completion;
        struct io_completion send_completion;
        struct message *recv_message;
        uint32_t recv_size;
        struct message *send_queue[BUS_SEND_QUEUE_MAX];
        uint32_t send_head;
        uint32_t send_count;
        uint32_t send_offset;
        char peer[64];
};

struct bus_stats {
        uint64_t connections_accepted;
        uint64_t connections_refused; /* no free slot */
        uint64_t connections_closed_bad_input;
        uint64_t messages_received;
        uint64_t messages_dropped_invalid;
        uint64_t messages_sent;
        uint64_t messages_dropped_send_queue_full;
        uint32_t connections_active;
};

struct bus {
        struct io *io;
        struct message_pool *pool;
        struct bus_callbacks callbacks;
        u128 cluster;
        uint32_t message_size_max; /* larger messages close the connection */
        int listen_fd;
        bool accept_pending;
        bool stopping;
        struct io_completion accept_completion;
        struct bus_connection *connections;
        uint32_t connections_max;
        struct bus_stats stats;
};

int bus_init(struct bus *bus, struct io *io, struct message_pool *pool, u128 cluster,
             uint32_t connections_max, const struct bus_callbacks *callbacks);
/* Binds and listens; returns 0 or -1 with a log line. `bound` gets the actual address. */
int bus_listen(struct bus *bus, const struct address *address, struct sockaddr_storage *bound);
void bus_deinit(struct bus *bus);

/* Queues `message` (takes a reference). False if the connection is gone or its queue is full. */
bool bus_send(struct bus *bus, bus_connection_id connection, struct message *message);
void bus_close(struct bus *bus, bus_connection_id connection, const char *reason);
bool bus_connection_alive(const struct bus *bus, bus_connection_id connection);
/* Resumes receives paused for lack of messages; called on every tick. */
void bus_tick(struct bus *bus);
/* Stops accepting and closes every connection. */
void bus_stop(struct bus *bus);

#endif
