/*
 * bus.c: connections, framing and send queues (see bus.h).
 *
 * Life of a connection slot: accept -> active (one receive and at most one send in flight) ->
 * closing (shutdown(2) makes the kernel finish both operations quickly) -> freed once neither
 * operation is in flight, with its generation bumped so that old handles go stale.
 */
#include "net/bus.h"
#include "lib/log.h"
#include "wire/checksum.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bus_connection_id connection_id(const struct bus *bus, const struct bus_connection *c)
{
        uint32_t index = (uint32_t)(c - bus->connections);
        return ((uint64_t)c->generation << 32) | (uint64_t)(index + 1);
}

static struct bus_connection *connection_get(const struct bus *bus, bus_connection_id id)
{
        uint32_t index_plus_one = (uint32_t)(id & 0xFFFFFFFFu);
        if (index_plus_one == 0 || index_plus_one > bus->connections_max)
                return NULL;
        struct bus_connection *c = &bus->connections[index_plus_one - 1];
        if (!c->active || c->generation != (uint32_t)(id >> 32))
                return NULL;
        return c;
}

static void recv_start(struct bus *bus, struct bus_connection *c);
static void send_start(struct bus *bus, struct bus_connection *c);
static void on_recv(struct io_completion *completion, int32_t result);
static void on_send(struct io_completion *completion, int32_t result);
static void on_accept(struct io_completion *completion, int32_t result);

int bus_init(struct bus *bus, struct io *io, struct message_pool *pool, u128 cluster,
             uint32_t connections_max, const struct bus_callbacks *callbacks)
{
        memset(bus, 0, sizeof(*bus));
        bus->io = io;
        bus->pool = pool;
        bus->cluster = cluster;
        bus->callbacks = *callbacks;
        bus->listen_fd = -1;
        bus->message_size_max = WIRE_MESSAGE_SIZE_MAX;
        bus->connections = calloc(connections_max, sizeof(struct bus_connection));
        if (bus->connections == NULL)
                return -ENOMEM;
        bus->connections_max = connections_max;
        for (uint32_t i = 0; i < connections_max; i++) {
                bus->connections[i].fd = -1;
                bus->connections[i].generation = 1;
        }
        return 0;
}

void bus_deinit(struct bus *bus)
{
        for (uint32_t i = 0; i < bus->connections_max; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (c->fd >= 0)
                        close(c->fd);
                if (c->recv_message != NULL)
                        message_unref(bus->pool, c->recv_message);
                for (uint32_t k = 0; k < c->send_count; k++) {
                        uint32_t slot = (c->send_head + k) % BUS_SEND_QUEUE_MAX;
                        message_unref(bus->pool, c->send_queue[slot]);
                }
        }
        if (bus->listen_fd >= 0)
                close(bus->listen_fd);
        free(bus->connections);
        bus->connections = NULL;
}

static void accept_start(struct bus *bus)
{
        if (bus->accept_pending || bus->stopping || bus->listen_fd < 0)
                return;
        bus->accept_pending = true;
        bus->accept_completion.callback = on_accept;
        bus->accept_completion.context = bus;
        io_accept(bus->io, &bus->accept_completion, bus->listen_fd);
}

int bus_listen(struct bus *bus, const struct address *address, struct sockaddr_storage *bound)
{
        int fd = socket(address->sockaddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                log_error("cannot create socket error=%s", strerror(errno));
                return -1;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /*
         * A previous process's socket can linger for a moment after it exited (io_uring closes
         * its files asynchronously), so a restart retries EADDRINUSE for up to 5 seconds.
         */
        int rc = -1;
        for (int attempt = 0; attempt < 50; attempt++) {
                rc = bind(fd, (const struct sockaddr *)&address->sockaddr,
                          address->sockaddr_size);
                if (rc == 0 || errno != EADDRINUSE)
                        break;
                usleep(100000);
        }
        if (rc != 0) {
                char text[80];
                address_format(&address->sockaddr, text, sizeof(text));
                log_error("cannot listen address=%s error=%s", text, strerror(errno));
                close(fd);
                return -1;
        }
        if (listen(fd, 1024) != 0) {
                log_error("listen failed error=%s", strerror(errno));
                close(fd);
                return -1;
        }
        socklen_t size = sizeof(*bound);
        getsockname(fd, (struct sockaddr *)bound, &size);
        bus->listen_fd = fd;
        accept_start(bus);
        return 0;
}

static struct bus_connection *slot_free(struct bus *bus)
{
        for (uint32_t i = 0; i < bus->connections_max; i++) {
                if (!bus->connections[i].active)
                        return &bus->connections[i];
        }
        return NULL;
}

static void on_accept(struct io_completion *completion, int32_t result)
{
        struct bus *bus = completion->context;
        bus->accept_pending = false;
        if (result < 0) {
                if (result != -ECANCELED && !bus->stopping)
                        log_warn("accept failed error=%s", strerror(-result));
                accept_start(bus);
                return;
        }
        int fd = result;
        if (bus->stopping) {
                close(fd);
                return;
        }
        struct bus_connection *c = slot_free(bus);
        if (c == NULL) {
                bus->stats.connections_refused++;
                if (bus->stats.connections_refused % 1000 == 1)
                        log_warn("connection refused: all slots in use connections_max=%u "
                                 "refused_total=%llu",
                                 bus->connections_max,
                                 (unsigned long long)bus->stats.connections_refused);
                close(fd);
                accept_start(bus);
                return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        uint32_t generation = c->generation;
        memset(c, 0, sizeof(*c));
        c->generation = generation;
        c->fd = fd;
        c->active = true;
        address_format(&completion->address, c->peer, sizeof(c->peer));
        bus->stats.connections_accepted++;
        bus->stats.connections_active++;
        log_debug("connection accepted peer=%s", c->peer);
        recv_start(bus, c);
        accept_start(bus);
}

/* Frees the slot once no operation is in flight. */
static void close_finish(struct bus *bus, struct bus_connection *c)
{
        if (c->recv_pending || c->send_pending)
                return;
        bus_connection_id id = connection_id(bus, c);
        close(c->fd);
        c->fd = -1;
        if (c->recv_message != NULL)
                message_unref(bus->pool, c->recv_message);
        c->recv_message = NULL;
        while (c->send_count > 0) {
                message_unref(bus->pool, c->send_queue[c->send_head]);
                c->send_head = (c->send_head + 1) % BUS_SEND_QUEUE_MAX;
                c->send_count--;
        }
        c->active = false;
        c->closing = false;
        c->generation++;
        tally_assert(bus->stats.connections_active > 0);
        bus->stats.connections_active--;
        if (bus->callbacks.on_close != NULL)
                bus->callbacks.on_close(bus->callbacks.context, id);
}

static void connection_close(struct bus *bus, struct bus_connection *c, const char *reason,
                             bool bad_input)
{
        if (c->closing)
                return;
        c->closing = true;
        if (bad_input) {
                bus->stats.connections_closed_bad_input++;
                log_warn("connection closed: %s peer=%s", reason, c->peer);
        } else {
                log_debug("connection closed: %s peer=%s", reason, c->peer);
        }
        shutdown(c->fd, SHUT_RDWR);
        close_finish(bus, c);
}

void bus_close(struct bus *bus, bus_connection_id id, const char *reason)
{
        struct bus_connection *c = connection_get(bus, id);
        if (c != NULL)
                connection_close(bus, c, reason, false);
}

bool bus_connection_alive(const struct bus *bus, bus_connection_id id)
{
        const struct bus_connection *c = connection_get(bus, id);
        return c != NULL && !c->closing;
}

static void recv_start(struct bus *bus, struct bus_connection *c)
{
        tally_assert(!c->recv_pending);
        if (c->closing)
                return;
        if (c->recv_message == NULL) {
                c->recv_message = message_pool_get(bus->pool);
                if (c->recv_message == NULL) {
                        c->recv_paused = true;
                        return;
                }
                c->recv_size = 0;
        }
        tally_assert(c->recv_size < WIRE_MESSAGE_SIZE_MAX);
        c->recv_paused = false;
        c->recv_pending = true;
        c->recv_completion.callback = on_recv;
        c->recv_completion.context = bus;
        io_recv(bus->io, &c->recv_completion, c->fd, c->recv_message->buffer + c->recv_size,
                WIRE_MESSAGE_SIZE_MAX - c->recv_size);
}

/* Hands one complete message at the front of the buffer to the replica. */
static bool deliver(struct bus *bus, struct bus_connection *c, uint32_t size)
{
        struct message *m;
        if (c->recv_size == size) {
                m = c->recv_message;
                c->recv_message = NULL;
                c->recv_size = 0;
        } else {
                m = message_pool_get(bus->pool);
                if (m == NULL)
                        return false;
                memcpy(m->buffer, c->recv_message->buffer, size);
                memmove(c->recv_message->buffer, c->recv_message->buffer + size,
                        c->recv_size - size);
                c->recv_size -= size;
        }
        bus->stats.messages_received++;
        bus->callbacks.on_message(bus->callbacks.context, connection_id(bus, c), m);
        message_unref(bus->pool, m);
        return true;
}

/*
 * Checks and delivers every complete message in the receive buffer. Returns false if the
 * connection was closed or must wait (paused) before receiving more.
 */
static bool process_buffer(struct bus *bus, struct bus_connection *c)
{
        while (c->recv_message != NULL && c->recv_size >= WIRE_HEADER_SIZE) {
                const struct wire_header *h = c->recv_message->header;
                if (!wire_header_checksum_valid(h)) {
                        connection_close(bus, c, "invalid header checksum", true);
                        return false;
                }
                if (h->size < WIRE_HEADER_SIZE || h->size > bus->message_size_max) {
                        connection_close(bus, c, "message size out of range", true);
                        return false;
                }
                if (h->cluster != bus->cluster) {
                        connection_close(bus, c, "message for another cluster", true);
                        return false;
                }
                if (c->recv_size < h->size)
                        return true;
                if (!wire_body_checksum_valid(h, c->recv_message->buffer + WIRE_HEADER_SIZE)) {
                        connection_close(bus, c, "invalid body checksum", true);
                        return false;
                }
                const char *invalid = wire_header_invalid(h);
                if (invalid != NULL) {
                        bus->stats.messages_dropped_invalid++;
                        log_warn("message dropped: invalid header command=%s reason=\"%s\" "
                                 "peer=%s",
                                 wire_command_name(h->command), invalid, c->peer);
                        uint32_t size = h->size;
                        memmove(c->recv_message->buffer, c->recv_message->buffer + size,
                                c->recv_size - size);
                        c->recv_size -= size;
                        continue;
                }
                if (!deliver(bus, c, h->size)) {
                        c->recv_paused = true;
                        return false;
                }
                if (!c->active || c->closing)
                        return false;
        }
        return true;
}

static void on_recv(struct io_completion *completion, int32_t result)
{
        struct bus *bus = completion->context;
        struct bus_connection *c =
                (struct bus_connection *)((uint8_t *)completion -
                                          offsetof(struct bus_connection, recv_completion));
        c->recv_pending = false;
        if (c->closing) {
                close_finish(bus, c);
                return;
        }
        if (result <= 0) {
                connection_close(bus, c, result == 0 ? "peer closed" : strerror(-result), false);
                return;
        }
        c->recv_size += (uint32_t)result;
        if (process_buffer(bus, c))
                recv_start(bus, c);
}

void bus_tick(struct bus *bus)
{
        for (uint32_t i = 0; i < bus->connections_max; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (!c->active || c->closing || !c->recv_paused || c->recv_pending)
                        continue;
                if (process_buffer(bus, c))
                        recv_start(bus, c);
        }
}

static void send_start(struct bus *bus, struct bus_connection *c)
{
        tally_assert(!c->send_pending);
        tally_assert(c->send_count > 0);
        struct message *m = c->send_queue[c->send_head];
        tally_assert(c->send_offset < m->header->size);
        c->send_pending = true;
        c->send_completion.callback = on_send;
        c->send_completion.context = bus;
        io_send(bus->io, &c->send_completion, c->fd, m->buffer + c->send_offset,
                m->header->size - c->send_offset);
}

static void on_send(struct io_completion *completion, int32_t result)
{
        struct bus *bus = completion->context;
        struct bus_connection *c =
                (struct bus_connection *)((uint8_t *)completion -
                                          offsetof(struct bus_connection, send_completion));
        c->send_pending = false;
        if (c->closing) {
                close_finish(bus, c);
                return;
        }
        if (result <= 0) {
                connection_close(bus, c, result == 0 ? "send returned 0" : strerror(-result),
                                 false);
                return;
        }
        c->send_offset += (uint32_t)result;
        struct message *m = c->send_queue[c->send_head];
        if (c->send_offset == m->header->size) {
                message_unref(bus->pool, m);
                c->send_head = (c->send_head + 1) % BUS_SEND_QUEUE_MAX;
                c->send_count--;
                c->send_offset = 0;
                bus->stats.messages_sent++;
        }
        if (c->send_count > 0)
                send_start(bus, c);
}

bool bus_send(struct bus *bus, bus_connection_id id, struct message *message)
{
        struct bus_connection *c = connection_get(bus, id);
        if (c == NULL || c->closing)
                return false;
        if (c->send_count == BUS_SEND_QUEUE_MAX) {
                bus->stats.messages_dropped_send_queue_full++;
                log_debug("message dropped: send queue full peer=%s", c->peer);
                return false;
        }
        uint32_t slot = (c->send_head + c->send_count) % BUS_SEND_QUEUE_MAX;
        c->send_queue[slot] = message_ref(message);
        c->send_count++;
        if (!c->send_pending)
                send_start(bus, c);
        return true;
}

void bus_stop(struct bus *bus)
{
        bus->stopping = true;
        if (bus->listen_fd >= 0) {
                shutdown(bus->listen_fd, SHUT_RDWR);
        }
        for (uint32_t i = 0; i < bus->connections_max; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (c->active)
                        connection_close(bus, c, "server stopping", false);
        }
}
