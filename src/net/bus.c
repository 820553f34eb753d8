/*
 * bus.c: connections, framing and send queues (see bus.h).
 *
 * Life of a connection slot: accept (or connect, for a peer of higher index) -> active (one
 * receive and at most one send in flight) -> closing (shutdown(2) makes the kernel finish
 * every operation quickly, a pending connect included) -> freed once no operation is in
 * flight, with its generation bumped so that old handles go stale.
 *
 * Slots [0, connections_max) take accepted connections, clients and peers of lower index
 * alike; the BUS_OUTGOING_SLOTS after them take only our outgoing connections, so that a flood
 * of clients never keeps this replica from reaching the others; the BUS_PEER_RESERVED_SLOTS
 * last take accepted connections when the first are full, for a short while unless they
 * identify as a replica, so that a flood of clients never keeps the others from reaching us.
 *
 * Framing: a receive fills recv_message from recv_size on; the complete messages at its front
 * are handled in order (recv_consumed advances past each), then the partial tail moves to the
 * front once. Each header is checked in an aligned copy, since messages follow each other at
 * any offset.
 *
 * Peer bookkeeping lives in bus->peers[j]: `connection` is set exactly while replica j's
 * connection is established (between on_peer_connected and on_peer_disconnected); the outgoing
 * state machine is WAITING -> (RESOLVING) -> CONNECTING -> CONNECTED -> WAITING ..., driven by
 * completions and by bus_tick's clock.
 */
#include "net/bus.h"
#include "lib/log.h"
#include "net/resolver.h"
#include "wire/checksum.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
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
        if (index_plus_one == 0 || index_plus_one > bus->slot_count)
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
static void on_connect(struct io_completion *completion, int32_t result);
static void peer_connection_closing(struct bus *bus, struct bus_connection *c,
                                    const char *reason, bool bad_input);
static bool peer_check(struct bus *bus, struct bus_connection *c, const struct wire_header *h);
static void peers_tick(struct bus *bus, uint64_t now_ns);
static bool auth_on_message(struct bus *bus, struct bus_connection *c);
static bool warn_due(struct bus *bus, enum bus_warn kind);
static bool auth_verify_front(struct bus *bus, struct bus_connection *c);
static void auth_dial(struct bus *bus, struct bus_connection *c);
static void auth_and_keepalive_tick(struct bus *bus, uint64_t now_ns);
static bool replica_message_refused(struct bus *bus, struct bus_connection *c,
                                    const struct wire_header *h);
static bool limits_may_deliver(struct bus *bus, struct bus_connection *c, uint32_t delivered);
static bool limits_check_reserved(struct bus *bus, struct bus_connection *c,
                                  const struct wire_header *h);
static void limits_tick(struct bus *bus, uint64_t now_ns);
static void refusal(struct bus *bus, enum bus_refusal kind, const struct bus_connection *c,
                    const char *detail);

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
        bus->connect_timeout_ms = BUS_PEER_CONNECT_TIMEOUT_MS;
        bus->idle_timeout_ms = BUS_IDLE_TIMEOUT_MS;
        bus->idle_timeout_full_ms = BUS_IDLE_TIMEOUT_FULL_MS;
        bus->partial_timeout_ms = BUS_PARTIAL_TIMEOUT_MS;
        bus->peer_identify_timeout_ms = BUS_PEER_IDENTIFY_TIMEOUT_MS;
        uint32_t slot_count = connections_max + BUS_OUTGOING_SLOTS + BUS_PEER_RESERVED_SLOTS;
        bus->connections = calloc(slot_count, sizeof(struct bus_connection));
        if (bus->connections == NULL)
                return -ENOMEM;
        bus->connections_max = connections_max;
        bus->slot_count = slot_count;
        for (uint32_t i = 0; i < slot_count; i++) {
                bus->connections[i].fd = -1;
                bus->connections[i].generation = 1;
                bus->connections[i].replica = -1;
        }
        return 0;
}

void bus_deinit(struct bus *bus)
{
        for (uint32_t i = 0; i < bus->slot_count; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (c->fd >= 0)
                        close(c->fd);
                if (c->recv_message != NULL)
                        message_unref(bus->pool, c->recv_message);
                for (uint32_t k = 0; k < c->send_count; k++) {
                        uint32_t slot = (c->send_head + k) % BUS_SEND_QUEUE_PEER_MAX;
                        message_unref(bus->pool, c->send_queue[slot]);
                }
        }
        for (uint32_t j = 0; j < ADDRESSES_MAX; j++) {
                resolver_query_destroy(bus->peers[j].query);
                bus->peers[j].query = NULL;
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
                int err = errno;
                log_error("cannot create socket error=%s", strerror(err));
                return -err;
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
                int err = errno;
                char text[80];
                address_format(&address->sockaddr, text, sizeof(text));
                log_error("cannot listen address=%s error=%s", text, strerror(err));
                close(fd);
                return -err;
        }
        if (listen(fd, 1024) != 0) {
                int err = errno;
                log_error("listen failed error=%s", strerror(err));
                close(fd);
                return -err;
        }
        socklen_t size = sizeof(*bound);
        getsockname(fd, (struct sockaddr *)bound, &size);
        bus->listen_fd = fd;
        accept_start(bus);
        return 0;
}

/* A free slot in [from, to), or NULL. */
static struct bus_connection *slot_free(struct bus *bus, uint32_t from, uint32_t to)
{
        for (uint32_t i = from; i < to; i++) {
                if (!bus->connections[i].active)
                        return &bus->connections[i];
        }
        return NULL;
}

/* Makes a free slot an active connection on `fd`. */
static void slot_open(struct bus *bus, struct bus_connection *c, int fd)
{
        tally_assert(!c->active);
        tally_assert(fd >= 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        uint32_t generation = c->generation;
        memset(c, 0, sizeof(*c));
        c->generation = generation;
        c->fd = fd;
        c->active = true;
        c->replica = -1;
        c->send_queue_max = BUS_SEND_QUEUE_MAX;
        bus->stats.connections_active++;
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
        bool peer_slot = false;
        struct bus_connection *c = slot_free(bus, 0, bus->connections_max);
        if (c == NULL && bus->replica > 0) {
                /* Only a replica with peers of lower index expects incoming peers. */
                c = slot_free(bus, bus->slot_count - BUS_PEER_RESERVED_SLOTS, bus->slot_count);
                peer_slot = true;
        }
        if (c == NULL) {
                bus->stats.connections_refused++;
                char peer[64], detail[128];
                address_format(&completion->address, peer, sizeof(peer));
                snprintf(detail, sizeof(detail), "all slots in use connections_max=%u peer=%s",
                         bus->connections_max, peer);
                refusal(bus, BUS_REFUSAL_SLOTS_FULL, NULL, detail);
                close(fd);
                accept_start(bus);
                return;
        }
        slot_open(bus, c, fd);
        c->client_budget = true;
        c->peer_slot = peer_slot;
        c->accepted_ns = io_monotonic_ns();
        address_format(&completion->address, c->peer, sizeof(c->peer));
        bus->stats.connections_accepted++;
        log_debug("connection accepted peer=%s", c->peer);
        recv_start(bus, c);
        accept_start(bus);
}

/* Frees the slot once no operation is in flight. */
static void close_finish(struct bus *bus, struct bus_connection *c)
{
        if (c->recv_pending || c->send_pending || c->connect_pending)
                return;
        bus_connection_id id = connection_id(bus, c);
        close(c->fd);
        c->fd = -1;
        if (c->recv_message != NULL)
                message_unref(bus->pool, c->recv_message);
        c->recv_message = NULL;
        while (c->send_count > 0) {
                message_unref(bus->pool, c->send_queue[c->send_head]);
                c->send_head = (c->send_head + 1) % BUS_SEND_QUEUE_PEER_MAX;
                c->send_count--;
                if (c->client_budget) {
                        tally_assert(bus->client_send_queued > 0);
                        bus->client_send_queued--;
                }
        }
        c->active = false;
        c->replica = -1;
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
        if (c->replica >= 0)
                peer_connection_closing(bus, c, reason, bad_input);
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
        return c != NULL && !c->closing && !c->connect_pending;
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
                c->recv_consumed = 0;
        }
        tally_assert(c->recv_size < WIRE_MESSAGE_SIZE_MAX);
        tally_assert(c->recv_consumed == 0);
        c->recv_armed_ns = io_monotonic_ns();
        c->recv_paused = false;
        c->recv_pending = true;
        c->recv_completion.callback = on_recv;
        c->recv_completion.context = bus;
        io_recv(bus->io, &c->recv_completion, c->fd, c->recv_message->buffer + c->recv_size,
                WIRE_MESSAGE_SIZE_MAX - c->recv_size);
}

/*
 * Hands the complete message at recv_consumed to the replica: the buffer itself if it holds
 * nothing else, else a copy (the rest stays in place: no move per message).
 */
static bool deliver(struct bus *bus, struct bus_connection *c, uint32_t size)
{
        struct message *m;
        tally_assert(c->recv_size - c->recv_consumed >= size);
        if (c->recv_consumed == 0 && c->recv_size == size) {
                m = c->recv_message;
                c->recv_message = NULL;
                c->recv_size = 0;
        } else {
                m = message_pool_get(bus->pool);
                if (m == NULL)
                        return false;
                memcpy(m->buffer, c->recv_message->buffer + c->recv_consumed, size);
                c->recv_consumed += size;
        }
        c->front_verified = false;
        bus->stats.messages_received++;
        c->received = true;
        c->last_received_ns = io_monotonic_ns();
        bus->callbacks.on_message(bus->callbacks.context, connection_id(bus, c), m);
        message_unref(bus->pool, m);
        return true;
}

/* Moves the partial message after what was handled to the front of the buffer. */
static void recv_compact(struct bus_connection *c)
{
        if (c->recv_message == NULL || c->recv_consumed == 0)
                return;
        tally_assert(c->recv_consumed <= c->recv_size);
        memmove(c->recv_message->buffer, c->recv_message->buffer + c->recv_consumed,
                c->recv_size - c->recv_consumed);
        c->recv_size -= c->recv_consumed;
        c->recv_consumed = 0;
}

/*
 * Checks and delivers the complete messages in the receive buffer. Returns false if the
 * connection was closed or must wait (paused, resumed on tick) before receiving more.
 */
static bool process_buffer(struct bus *bus, struct bus_connection *c)
{
        uint32_t delivered = 0;
        bool receive = true;
        while (c->recv_message != NULL && c->recv_size - c->recv_consumed >= WIRE_HEADER_SIZE) {
                /* First, so that a paused connection costs a tick nothing but this check. */
                if (!limits_may_deliver(bus, c, delivered)) {
                        receive = false;
                        break;
                }
                /* An aligned copy: messages follow one another at any offset. */
                struct wire_header header;
                const struct wire_header *h = &header;
                const uint8_t *at = c->recv_message->buffer + c->recv_consumed;
                memcpy(&header, at, sizeof(header));
                if (c->auth_state == BUS_AUTH_DONE && !c->front_verified) {
                        /* The checksum field holds a tag: check it, then put the checksum
                         * back, and go on as with any message. */
                        if (h->size < WIRE_HEADER_SIZE || h->size > bus->message_size_max) {
                                connection_close(bus, c, "message size out of range", true);
                                return false;
                        }
                        if (c->recv_size - c->recv_consumed < h->size)
                                break;
                        if (!auth_verify_front(bus, c))
                                return false;
                        memcpy(&header, at, sizeof(header));
                }
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
                if (c->recv_size - c->recv_consumed < h->size)
                        break;
                if (!wire_body_checksum_valid(h, at + WIRE_HEADER_SIZE)) {
                        connection_close(bus, c, "invalid body checksum", true);
                        return false;
                }
                /* A single replica has no peers, but `tally backup` dials it the same way
                 * (auth_on_dial refuses any dialer but a backup there). */
                if (h->command == PEER_AUTH_COMMAND) {
                        if (!auth_on_message(bus, c))
                                return false;
                        continue;
                }
                const char *invalid = wire_header_invalid(h);
                if (invalid != NULL) {
                        bus->stats.messages_dropped_invalid++;
                        if (warn_due(bus, BUS_WARN_INVALID_HEADER))
                                log_warn("message dropped: invalid header command=%s "
                                         "reason=\"%s\" peer=%s",
                                         wire_command_name(h->command), invalid, c->peer);
                        c->recv_consumed += h->size;
                        c->front_verified = false;
                        continue;
                }
                if (!limits_check_reserved(bus, c, h))
                        return false;
                if (c->backup) {
                        if (h->command != COMMAND_REQUEST_BLOCKS &&
                            h->command != COMMAND_REQUEST_REPLY) {
                                connection_close(bus, c,
                                                 "backup connection: only checkpoint reads", true);
                                return false;
                        }
                } else if (bus->replica_count > 0 && !bus->auth &&
                    bus_command_names_sender(h->command) && !peer_check(bus, c, h))
                        return false;
                if (!c->backup && bus->replica_count > 0 && replica_message_refused(bus, c, h))
                        return false;
                if (!deliver(bus, c, h->size)) {
                        receive = false;
                        break;
                }
                delivered++;
                if (!c->active || c->closing)
                        return false;
        }
        recv_compact(c);
        if (!receive)
                c->recv_paused = true;
        return receive;
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
        for (uint32_t i = 0; i < bus->slot_count; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (!c->active || c->closing || !c->recv_paused || c->recv_pending)
                        continue;
                if (process_buffer(bus, c))
                        recv_start(bus, c);
        }
        uint64_t now_ns = io_monotonic_ns();
        if (!bus->stopping)
                limits_tick(bus, now_ns);
        if (bus->replica_count > 0 && !bus->stopping)
                peers_tick(bus, now_ns);
        if (!bus->stopping) /* a backup's handshake times out on a single replica too */
                auth_and_keepalive_tick(bus, now_ns);
}

/*
 * On an authenticated connection a message goes out with a tag in place of its header
 * checksum: the header from a per-connection copy, then the body from the shared buffer
 * (other connections send the same message with their own tags). Handshake messages go out
 * as they are.
 */
static void send_start(struct bus *bus, struct bus_connection *c)
{
        tally_assert(!c->send_pending);
        tally_assert(c->send_count > 0);
        struct message *m = c->send_queue[c->send_head];
        tally_assert(c->send_offset < m->header->size);
        c->send_pending = true;
        c->send_completion.callback = on_send;
        c->send_completion.context = bus;
        if (c->auth_state == BUS_AUTH_DONE && m->header->command != PEER_AUTH_COMMAND) {
                if (!c->send_tagged) {
                        tally_assert(c->send_offset == 0);
                        c->send_header = *m->header;
                        c->send_header.checksum =
                                peer_auth_tag(&c->auth_send, m->header, message_body(m));
                        c->send_tagged = true;
                }
                if (c->send_offset < WIRE_HEADER_SIZE) {
                        io_send(bus->io, &c->send_completion, c->fd,
                                (const uint8_t *)&c->send_header + c->send_offset,
                                WIRE_HEADER_SIZE - c->send_offset);
                        return;
                }
        }
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
                c->send_head = (c->send_head + 1) % BUS_SEND_QUEUE_PEER_MAX;
                c->send_count--;
                c->send_offset = 0;
                c->send_tagged = false;
                if (c->client_budget) {
                        tally_assert(bus->client_send_queued > 0);
                        bus->client_send_queued--;
                }
                bus->stats.messages_sent++;
        }
        if (c->send_count > 0)
                send_start(bus, c);
}

/* Queues on an active connection; false if it is closing, connecting or its queue is full. */
static bool connection_send(struct bus *bus, struct bus_connection *c, struct message *message)
{
        if (c->closing || c->connect_pending)
                return false;
        tally_assert(c->send_queue_max <= BUS_SEND_QUEUE_PEER_MAX);
        if (c->send_count == c->send_queue_max) {
                bus->stats.messages_dropped_send_queue_full++;
                char detail[96];
                snprintf(detail, sizeof(detail), "message dropped: send queue full command=%s",
                         wire_command_name(message->header->command));
                refusal(bus, BUS_REFUSAL_SEND_QUEUE_FULL, c, detail);
                return false;
        }
        uint32_t slot = (c->send_head + c->send_count) % BUS_SEND_QUEUE_PEER_MAX;
        c->send_queue[slot] = message_ref(message);
        c->send_count++;
        c->last_sent_ns = io_monotonic_ns();
        if (c->client_budget)
                bus->client_send_queued++;
        if (!c->send_pending)
                send_start(bus, c);
        return true;
}

bool bus_send(struct bus *bus, bus_connection_id id, struct message *message)
{
        struct bus_connection *c = connection_get(bus, id);
        if (c == NULL)
                return false;
        return connection_send(bus, c, message);
}

void bus_stop(struct bus *bus)
{
        bus->stopping = true;
        if (bus->listen_fd >= 0) {
                shutdown(bus->listen_fd, SHUT_RDWR);
        }
        for (uint32_t i = 0; i < bus->slot_count; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (c->active)
                        connection_close(bus, c, "server stopping", false);
        }
}

/* ---- replicas ------------------------------------------------------------------------- */

bool bus_command_names_sender(uint8_t command)
{
        /* A prepare names the primary that prepared it, not whoever relays it in repair. */
        return wire_command_between_replicas(command) && command != COMMAND_PREPARE;
}

static uint64_t random_next(struct bus *bus)
{
        /* xorshift64: jitter only, nothing depends on its quality. */
        uint64_t x = bus->random_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bus->random_state = x;
        return x;
}

int bus_peers_start(struct bus *bus, uint8_t replica, const struct address *addresses,
                    uint8_t replica_count)
{
        tally_assert(bus->replica_count == 0);
        tally_assert(replica_count >= 1 && replica_count <= ADDRESSES_MAX);
        tally_assert(replica < replica_count);
        bus->replica = replica;
        bus->random_state = (io_monotonic_ns() ^ ((uint64_t)replica + 1) * 0x9E3779B97F4A7C15ull) |
                            1u;
        uint64_t now = io_monotonic_ns();
        for (uint8_t j = 0; j < replica_count; j++) {
                struct bus_peer *peer = &bus->peers[j];
                memset(peer, 0, sizeof(*peer));
                peer->address = addresses[j];
                const char *open = strchr(peer->address.host, ':') != NULL ? "[" : "";
                const char *close = open[0] != '\0' ? "]" : "";
                snprintf(peer->address_text, sizeof(peer->address_text), "%s%s%s:%u", open,
                         peer->address.host, close, peer->address.port);
                peer->state = BUS_PEER_INCOMING;
                peer->backoff_ms = BUS_PEER_BACKOFF_MIN_MS;
                if (j <= replica)
                        continue;
                peer->state = BUS_PEER_WAITING;
                peer->attempt_at_ns = now;
                if (peer->address.is_name) {
                        peer->query = resolver_query_create();
                        if (peer->query == NULL)
                                return -ENOMEM;
                }
        }
        bus->replica_count = replica_count;
        return 0;
}

static struct bus_connection *peer_connection(const struct bus *bus, uint8_t replica)
{
        tally_assert(replica < bus->replica_count);
        const struct bus_peer *peer = &bus->peers[replica];
        if (peer->connection == BUS_CONNECTION_NONE)
                return NULL;
        struct bus_connection *c = connection_get(bus, peer->connection);
        tally_assert(c != NULL && c->established && c->replica == (int8_t)replica);
        return c;
}

bool bus_send_to_replica(struct bus *bus, uint8_t replica, struct message *message)
{
        tally_assert(replica < bus->replica_count);
        tally_assert(replica != bus->replica);
        struct bus_connection *c = peer_connection(bus, replica);
        if (c == NULL) {
                bus->stats.messages_dropped_no_peer++;
                log_debug("message dropped: no connection to replica=%u command=%s", replica,
                          wire_command_name(message->header->command));
                return false;
        }
        return connection_send(bus, c, message);
}

bool bus_peer_connected(const struct bus *bus, uint8_t replica)
{
        return replica < bus->replica_count && bus->peers[replica].connection != 0;
}

bool bus_connection_is_backup(const struct bus *bus, bus_connection_id id)
{
        const struct bus_connection *c = connection_get(bus, id);
        return c != NULL && c->backup && !c->closing;
}

int bus_connection_replica(const struct bus *bus, bus_connection_id id)
{
        const struct bus_connection *c = connection_get(bus, id);
        if (c == NULL || !c->established || c->closing)
                return -1;
        return c->replica;
}

/* The next attempt in a jittered backoff; the backoff doubles for the one after. */
static uint32_t peer_schedule(struct bus *bus, struct bus_peer *peer, uint64_t now_ns)
{
        tally_assert(peer->backoff_ms >= BUS_PEER_BACKOFF_MIN_MS);
        tally_assert(peer->backoff_ms <= BUS_PEER_BACKOFF_MAX_MS);
        uint32_t half = peer->backoff_ms / 2;
        uint32_t delay_ms = half + (uint32_t)(random_next(bus) % (peer->backoff_ms - half + 1));
        peer->backoff_ms = MIN(peer->backoff_ms * 2, BUS_PEER_BACKOFF_MAX_MS);
        peer->state = BUS_PEER_WAITING;
        peer->attempt_at_ns = now_ns + (uint64_t)delay_ms * 1000000ull;
        return delay_ms;
}

/*
 * How loudly to log the peer->failures-th failure in a row. The first is info: replicas
 * started together refuse each other for a moment. From the fifth (about a second of
 * failures) it is a warning, at most every BUS_PEER_WARN_INTERVAL_MS; the rest are debug.
 */
static enum log_level peer_failure_level(struct bus_peer *peer, uint64_t now_ns)
{
        tally_assert(peer->failures > 0);
        if (peer->failures == 1)
                return LOG_INFO;
        if (peer->failures < 5 || now_ns < peer->warn_after_ns)
                return LOG_DEBUG;
        peer->warn_after_ns = now_ns + BUS_PEER_WARN_INTERVAL_MS * 1000000ull;
        return LOG_WARN;
}

/* An outgoing attempt that never connected (refused, timed out, cannot resolve, no slot). */
static void peer_attempt_failed(struct bus *bus, uint8_t replica, const char *what,
                                const char *error)
{
        struct bus_peer *peer = &bus->peers[replica];
        uint64_t now = io_monotonic_ns();
        peer->failures++;
        peer->connecting = BUS_CONNECTION_NONE;
        uint32_t delay_ms = peer_schedule(bus, peer, now);
        enum log_level level = peer_failure_level(peer, now);
        log_write(level, "%s replica=%u address=%s%s%s error=\"%s\" failures=%u retrying in %u ms",
                  what, replica, peer->address_text, peer->target_text[0] != '\0' ? " ip=" : "",
                  peer->target_text, error, peer->failures, delay_ms);
}

/* Dead peer detection by the kernel (see BUS_PEER_TCP_TIMEOUT_MS). Best effort. */
static void peer_socket_options(int fd)
{
        int on = 1;
        int user_timeout_ms = (int)BUS_PEER_TCP_TIMEOUT_MS;
        int idle_s = 5, interval_s = 2, count = 3; /* an idle dead peer: gone after ~11 s */
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

static void peer_established(struct bus *bus, struct bus_connection *c, uint8_t replica)
{
        struct bus_peer *peer = &bus->peers[replica];
        tally_assert(peer->connection == BUS_CONNECTION_NONE);
        tally_assert(!c->established && !c->closing);
        c->replica = (int8_t)replica;
        c->established = true;
        c->last_received_ns = io_monotonic_ns(); /* silence is counted from here */
        c->send_queue_max = BUS_SEND_QUEUE_PEER_MAX;
        if (c->client_budget) {
                /* A replica's queue is not a client's: out of the budget. */
                tally_assert(bus->client_send_queued >= c->send_count);
                bus->client_send_queued -= c->send_count;
                c->client_budget = false;
        }
        peer_socket_options(c->fd);
        peer->connection = connection_id(bus, c);
        peer->failures = 0;
        peer->warn_after_ns = 0;
        bus->stats.peer_connects++;
        if (c->outgoing) {
                peer->state = BUS_PEER_CONNECTED;
                peer->connecting = BUS_CONNECTION_NONE;
                log_info("peer connected replica=%u address=%s%s%s direction=outgoing", replica,
                         peer->address_text, peer->address.is_name ? " ip=" : "",
                         peer->address.is_name ? c->peer : "");
        } else {
                log_info("peer connected replica=%u address=%s direction=incoming", replica,
                         c->peer);
        }
        if (bus->callbacks.on_peer_connected != NULL)
                bus->callbacks.on_peer_connected(bus->callbacks.context, replica);
}

/* `c` (replica c->replica's, established or an outgoing attempt) starts closing. */
static void peer_connection_closing(struct bus *bus, struct bus_connection *c,
                                    const char *reason, bool bad_input)
{
        tally_assert(c->replica >= 0 && c->replica < (int8_t)bus->replica_count);
        uint8_t replica = (uint8_t)c->replica;
        struct bus_peer *peer = &bus->peers[replica];
        if (!c->established) {
                /* An outgoing attempt that never connected. */
                tally_assert(c->outgoing);
                bus->stats.peer_connect_failures++;
                if (!bus->stopping)
                        peer_attempt_failed(bus, replica, "cannot connect to peer", reason);
                return;
        }
        bool current = peer->connection == connection_id(bus, c);
        c->established = false;
        if (!current)
                return; /* replaced already; the replica was told of the new one */
        peer->connection = BUS_CONNECTION_NONE;
        if (bus->stopping) {
                log_info("peer disconnected replica=%u reason=\"%s\"", replica, reason);
        } else {
                log_warn("peer lost replica=%u address=%s reason=\"%s\"", replica,
                         c->outgoing ? peer->address_text : c->peer, reason);
        }
        if (c->outgoing && !bus->stopping) {
                /* A connection that carried messages was good: start the backoff over. One
                 * closed for bad input was not: redialling at once would only repeat it. */
                if (c->received && !bad_input)
                        peer->backoff_ms = BUS_PEER_BACKOFF_MIN_MS;
                else
                        peer->failures++;
                uint32_t delay_ms = peer_schedule(bus, peer, io_monotonic_ns());
                log_debug("peer reconnect replica=%u in %u ms", replica, delay_ms);
        }
        if (bus->callbacks.on_peer_disconnected != NULL)
                bus->callbacks.on_peer_disconnected(bus->callbacks.context, replica);
}

/*
 * A valid replica-to-replica message arrived on `c`: identify an accepted connection by it, or
 * check that it comes from the replica the connection belongs to. False if `c` was closed.
 */
static bool peer_check(struct bus *bus, struct bus_connection *c, const struct wire_header *h)
{
        if (c->replica >= 0) {
                /* Only a ping or pong proves a wrong sender: it says who sends it. */
                bool ping = h->command == COMMAND_PING || h->command == COMMAND_PONG;
                if (h->replica == (uint8_t)c->replica || !ping)
                        return true;
                char reason[128];
                snprintf(reason, sizeof(reason),
                         "message from replica %u on the connection of replica %d "
                         "(--addresses differ between replicas?)",
                         h->replica, c->replica);
                connection_close(bus, c, reason, true);
                return false;
        }
        if (c->outgoing)
                return true; /* still connecting: cannot happen, nothing was received */
        if (h->replica < bus->replica && h->replica < bus->replica_count) {
                struct bus_peer *peer = &bus->peers[h->replica];
                struct bus_connection *old = peer_connection(bus, h->replica);
                if (old != NULL && io_monotonic_ns() - old->last_received_ns <
                                           (uint64_t)BUS_PEER_LIVE_MS * 1000000ull) {
                        /* Nothing proves who is on the new connection, and the replica it
                         * claims to be is alive on the old one: keep the old. */
                        bus->stats.peer_claims_refused++;
                        char reason[160];
                        snprintf(reason, sizeof(reason),
                                 "claims to be replica %u, which is connected and alive "
                                 "(--cluster-key-file makes replicas prove who they are)",
                                 h->replica);
                        if (warn_due(bus, BUS_WARN_CLAIM_REFUSED))
                                log_warn("connection refused: %s peer=%s", reason, c->peer);
                        connection_close(bus, c, reason, false);
                        return false;
                }
                if (old != NULL) {
                        /* The peer reconnected: the old connection is stale (often a peer that
                         * restarted before we saw its old connection fail). */
                        connection_close(bus, old, "replaced by a newer connection", false);
                }
                tally_assert(peer->connection == BUS_CONNECTION_NONE);
                peer_established(bus, c, h->replica);
                return c->active && !c->closing;
        }
        if (!c->warned_identity) {
                c->warned_identity = true;
                /* Once per connection is not enough of a limit: an outsider opens many. */
                if (warn_due(bus, BUS_WARN_UNEXPECTED_REPLICA))
                        log_warn("replica message on an incoming connection from an unexpected "
                                 "replica command=%s replica=%u self=%u peer=%s (only lower "
                                 "replicas connect to us; same --addresses order everywhere? two "
                                 "processes with one index?)",
                                 wire_command_name(h->command), h->replica, bus->replica, c->peer);
        }
        return true; /* not identified: replica_message_refused() closes it */
}

/* Each kind of refusal warning (outsiders, misconfigured peers) at most once a second. */
static bool warn_due(struct bus *bus, enum bus_warn kind)
{
        tally_assert(kind < BUS_WARN_COUNT);
        uint64_t now = io_monotonic_ns();
        if (now < bus->warn_after_ns[kind]) {
                bus->warn_suppressed[kind]++;
                return false;
        }
        if (bus->warn_suppressed[kind] > 0)
                log_warn("%llu more like the next line were not logged in the last second",
                         (unsigned long long)bus->warn_suppressed[kind]);
        bus->warn_suppressed[kind] = 0;
        bus->warn_after_ns[kind] = now + 1000000000ull;
        return true;
}

/*
 * A replica-only command arrived on `c`. Refused (and the connection closed: nothing a client
 * sends is ever a replica command) unless `c` is a peer's connection: proven by the handshake
 * with a cluster key, else identified by its first message. On a peer's connection, a command
 * that names its sender must name that peer. True if `c` was closed.
 */
static bool replica_message_refused(struct bus *bus, struct bus_connection *c,
                                    const struct wire_header *h)
{
        if (!wire_command_between_replicas(h->command))
                return false;
        bool peer = bus->auth ? c->auth_state == BUS_AUTH_DONE : c->established;
        const char *reason = NULL;
        if (!peer) {
                bus->stats.replica_messages_unauthenticated++;
                reason = bus->auth ? "replica message on a connection that has not proven the "
                                     "cluster key"
                                   : "replica message on a connection no replica identified";
        } else if (bus_command_names_sender(h->command) && h->replica != (uint8_t)c->replica) {
                reason = "replica message naming another replica than the connection's";
        }
        if (reason == NULL)
                return false;
        if (warn_due(bus, BUS_WARN_REPLICA_MESSAGE_REFUSED))
                log_warn("connection closed: %s command=%s replica=%u peer=%s", reason,
                         wire_command_name(h->command), h->replica, c->peer);
        connection_close(bus, c, reason, false);
        return true;
}

uint32_t bus_peer_attempt_timeout_ms(const struct bus_peer *peer, uint32_t connect_timeout_ms)
{
        bool long_turn = peer->failures % BUS_PEER_CONNECT_LONG_EVERY ==
                         BUS_PEER_CONNECT_LONG_EVERY - 1;
        if (long_turn && (!peer->near || peer->failures >= BUS_PEER_CONNECT_NEAR_FAILURES))
                return connect_timeout_ms;
        return MIN(connect_timeout_ms, BUS_PEER_CONNECT_QUICK_MS);
}

static void peer_connect_start(struct bus *bus, uint8_t replica,
                               const struct sockaddr_storage *target, socklen_t target_size)
{
        struct bus_peer *peer = &bus->peers[replica];
        tally_assert(peer->state == BUS_PEER_WAITING || peer->state == BUS_PEER_RESOLVING);
        address_format(target, peer->target_text, sizeof(peer->target_text));
        struct bus_connection *c =
                slot_free(bus, bus->connections_max, bus->slot_count);
        if (c == NULL) {
                /* Every outgoing slot is still closing: try again after the backoff. */
                peer_attempt_failed(bus, replica, "cannot connect to peer", "no free slot");
                return;
        }
        int fd = socket(target->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                peer_attempt_failed(bus, replica, "cannot connect to peer", strerror(errno));
                return;
        }
        slot_open(bus, c, fd);
        c->outgoing = true;
        c->replica = (int8_t)replica;
        c->connect_pending = true;
        memcpy(c->peer, peer->target_text, sizeof(c->peer));
        c->peer[sizeof(c->peer) - 1] = '\0';
        peer->state = BUS_PEER_CONNECTING;
        peer->connecting = connection_id(bus, c);
        uint32_t timeout_ms = bus_peer_attempt_timeout_ms(peer, bus->connect_timeout_ms);
        peer->connect_started_ns = io_monotonic_ns();
        peer->connect_deadline_ns = peer->connect_started_ns + (uint64_t)timeout_ms * 1000000ull;
        c->recv_completion.callback = on_connect;
        c->recv_completion.context = bus;
        io_connect(bus->io, &c->recv_completion, fd, (const struct sockaddr *)target, target_size);
}

static void on_connect(struct io_completion *completion, int32_t result)
{
        struct bus *bus = completion->context;
        struct bus_connection *c =
                (struct bus_connection *)((uint8_t *)completion -
                                          offsetof(struct bus_connection, recv_completion));
        tally_assert(c->connect_pending && c->outgoing);
        c->connect_pending = false;
        if (c->closing) {
                close_finish(bus, c); /* timed out or stopping: already accounted for */
                return;
        }
        if (result < 0) {
                connection_close(bus, c, strerror(-result), false);
                return;
        }
        tally_assert(c->replica >= 0);
        struct bus_peer *peer = &bus->peers[c->replica];
        peer->near = io_monotonic_ns() - peer->connect_started_ns <
                     (uint64_t)BUS_PEER_CONNECT_NEAR_MS * 1000000ull;
        if (bus->auth) {
                auth_dial(bus, c); /* established once the acceptor proves the key */
        } else {
                peer_established(bus, c, (uint8_t)c->replica);
        }
        if (c->active && !c->closing)
                recv_start(bus, c);
}

static void peer_resolve_poll(struct bus *bus, uint8_t replica)
{
        struct bus_peer *peer = &bus->peers[replica];
        struct sockaddr_storage target;
        socklen_t target_size = 0;
        char error[128];
        enum resolver_status status =
                resolver_query_poll(peer->query, &target, &target_size, error, sizeof(error));
        if (status == RESOLVER_PENDING)
                return;
        if (status == RESOLVER_DONE) {
                peer_connect_start(bus, replica, &target, target_size);
                return;
        }
        tally_assert(status == RESOLVER_FAILED);
        bus->stats.peer_resolve_failures++;
        peer->target_text[0] = '\0';
        peer_attempt_failed(bus, replica, "cannot resolve peer", error);
}

static void peer_attempt(struct bus *bus, uint8_t replica)
{
        struct bus_peer *peer = &bus->peers[replica];
        tally_assert(peer->state == BUS_PEER_WAITING);
        if (!peer->address.is_name) {
                peer_connect_start(bus, replica, &peer->address.sockaddr,
                                   peer->address.sockaddr_size);
                return;
        }
        if (!resolver_query_start(peer->query, peer->address.host, peer->address.port)) {
                peer->target_text[0] = '\0';
                peer_attempt_failed(bus, replica, "cannot resolve peer",
                                    "lookup could not be started");
                return;
        }
        peer->state = BUS_PEER_RESOLVING;
}

static void peers_tick(struct bus *bus, uint64_t now_ns)
{
        for (uint8_t j = (uint8_t)(bus->replica + 1); j < bus->replica_count; j++) {
                struct bus_peer *peer = &bus->peers[j];
                switch (peer->state) {
                case BUS_PEER_WAITING:
                        if (now_ns >= peer->attempt_at_ns)
                                peer_attempt(bus, j);
                        break;
                case BUS_PEER_RESOLVING:
                        peer_resolve_poll(bus, j);
                        break;
                case BUS_PEER_CONNECTING:
                        if (now_ns >= peer->connect_deadline_ns) {
                                struct bus_connection *c = connection_get(bus, peer->connecting);
                                tally_assert(c != NULL && c->connect_pending);
                                connection_close(bus, c, "connect timed out", false);
                        }
                        break;
                case BUS_PEER_CONNECTED:
                        tally_assert(peer->connection != BUS_CONNECTION_NONE);
                        break;
                case BUS_PEER_INCOMING:
                default:
                        tally_assert(false);
                }
        }
}

/* ---- authenticated peers (cluster key; see net/peer_auth.h) ---------------------------- */

void bus_auth_key_set(struct bus *bus, const struct peer_auth_key *key)
{
        tally_assert(bus->replica_count == 0);
        bus->auth = true;
        bus->auth_key = *key;
}

/* Queues one handshake message on `c`; false (and `c` closed) if no message is free. */
static bool auth_send(struct bus *bus, struct bus_connection *c)
{
        struct message *m = message_pool_get(bus->pool);
        if (m == NULL) {
                connection_close(bus, c, "no message free for the authentication handshake",
                                 false);
                return false;
        }
        peer_auth_hello_message(m->header, bus->cluster, bus->replica, &c->auth_hello);
        bool queued = connection_send(bus, c, m);
        message_unref(bus->pool, m);
        if (!queued)
                connection_close(bus, c, "cannot queue the authentication handshake", false);
        return queued;
}

static void auth_deadline_start(struct bus_connection *c)
{
        c->auth_deadline_ns = io_monotonic_ns() + (uint64_t)BUS_PEER_AUTH_TIMEOUT_MS * 1000000ull;
}

/* Our outgoing connection to c->replica is up: step 1, our fresh nonce. */
static void auth_dial(struct bus *bus, struct bus_connection *c)
{
        tally_assert(c->outgoing && c->replica > (int8_t)bus->replica);
        memset(&c->auth_hello, 0, sizeof(c->auth_hello));
        memcpy(c->auth_hello.magic, PEER_AUTH_MAGIC, sizeof(c->auth_hello.magic));
        c->auth_hello.step = 1;
        c->auth_hello.dialer = bus->replica;
        c->auth_hello.acceptor = (uint8_t)c->replica;
        if (!peer_auth_random(c->auth_hello.nonce_dial, sizeof(c->auth_hello.nonce_dial))) {
                connection_close(bus, c, "no random bytes for the authentication nonce", false);
                return;
        }
        c->auth_state = BUS_AUTH_DIAL_SENT;
        auth_deadline_start(c);
        auth_send(bus, c);
}

/* The handshake failed in a way a correct peer with the same key never causes. */
static bool auth_refuse(struct bus *bus, struct bus_connection *c, const char *reason)
{
        bus->stats.peer_auth_failures++;
        if (warn_due(bus, BUS_WARN_AUTH_FAILED))
                log_warn("peer authentication failed: %s peer=%s", reason, c->peer);
        connection_close(bus, c, reason, false);
        return false;
}

/*
 * `tally backup` proved itself (or, without a key, announced itself): the connection reads
 * checkpoints and nothing else. It stays a client as far as the limits go (its queue counts in
 * the client budget), so a backup can never take what replicas need.
 */
static void backup_accepted(struct bus *bus, struct bus_connection *c)
{
        (void)bus;
        c->backup = true;
        log_info("backup connection accepted authenticated=%u peer=%s",
                 c->auth_state == BUS_AUTH_DONE, c->peer);
}

/* Step 1 of `tally backup` to a replica without a key: step 2 says so, and carries no proof. */
static bool auth_on_backup_dial_keyless(struct bus *bus, struct bus_connection *c,
                                        const struct peer_auth_hello *hello)
{
        if (c->outgoing || c->auth_state != BUS_AUTH_NONE || c->established ||
            hello->acceptor != bus->replica)
                return auth_refuse(bus, c, "backup handshake out of turn or for another replica");
        c->auth_hello = *hello;
        c->auth_hello.step = 2;
        c->auth_hello.flags = PEER_AUTH_FLAG_NO_KEY;
        if (!peer_auth_random(c->auth_hello.nonce_accept, sizeof(c->auth_hello.nonce_accept))) {
                connection_close(bus, c, "no random bytes for the authentication nonce", false);
                return false;
        }
        if (!auth_send(bus, c))
                return false;
        backup_accepted(bus, c);
        return true;
}

/* Step 1 on an accepted connection: answer with our nonce and proof. */
static bool auth_on_dial(struct bus *bus, struct bus_connection *c,
                         const struct peer_auth_hello *hello)
{
        if (c->outgoing || c->auth_state != BUS_AUTH_NONE || c->established)
                return auth_refuse(bus, c, "authentication step 1 out of turn");
        if (hello->acceptor != bus->replica ||
            (hello->dialer >= bus->replica_count && hello->dialer != PEER_AUTH_DIALER_BACKUP))
                return auth_refuse(bus, c,
                                   "authentication for another replica (same --addresses "
                                   "everywhere?)");
        c->auth_hello = *hello;
        c->auth_hello.step = 2;
        if (!peer_auth_random(c->auth_hello.nonce_accept, sizeof(c->auth_hello.nonce_accept))) {
                connection_close(bus, c, "no random bytes for the authentication nonce", false);
                return false;
        }
        peer_auth_proof(&bus->auth_key, bus->cluster, &c->auth_hello, false,
                        c->auth_hello.proof);
        c->auth_state = BUS_AUTH_ACCEPT_SENT;
        auth_deadline_start(c);
        return auth_send(bus, c);
}

/* Step 2 on our outgoing connection: check the acceptor's proof, prove ours, and we're up. */
static bool auth_on_accept(struct bus *bus, struct bus_connection *c,
                           const struct peer_auth_hello *hello)
{
        if (!c->outgoing || c->auth_state != BUS_AUTH_DIAL_SENT)
                return auth_refuse(bus, c, "authentication step 2 out of turn");
        if (hello->dialer != bus->replica || hello->acceptor != (uint8_t)c->replica ||
            !peer_auth_equal(hello->nonce_dial, c->auth_hello.nonce_dial))
                return auth_refuse(bus, c, "authentication answer for another handshake");
        uint8_t expected[16];
        peer_auth_proof(&bus->auth_key, bus->cluster, hello, false, expected);
        if (!peer_auth_equal(expected, hello->proof))
                return auth_refuse(bus, c,
                                   "the peer does not hold this cluster key (is "
                                   "--cluster-key-file the same file on every replica?)");
        c->auth_hello = *hello;
        c->auth_hello.step = 3;
        peer_auth_proof(&bus->auth_key, bus->cluster, &c->auth_hello, true, c->auth_hello.proof);
        if (!auth_send(bus, c))
                return false;
        /* Step 3 is queued untagged; everything after it is tagged. */
        peer_auth_session(&bus->auth_key, bus->cluster, &c->auth_hello, true, &c->auth_send);
        peer_auth_session(&bus->auth_key, bus->cluster, &c->auth_hello, false, &c->auth_recv);
        c->auth_state = BUS_AUTH_DONE;
        peer_established(bus, c, (uint8_t)c->replica);
        return c->active && !c->closing;
}

/* Step 3 on an accepted connection: check the dialer's proof; the connection is replica i's. */
static bool auth_on_proof(struct bus *bus, struct bus_connection *c,
                          const struct peer_auth_hello *hello)
{
        if (c->outgoing || c->auth_state != BUS_AUTH_ACCEPT_SENT)
                return auth_refuse(bus, c, "authentication step 3 out of turn");
        if (hello->dialer != c->auth_hello.dialer || hello->acceptor != bus->replica ||
            !peer_auth_equal(hello->nonce_dial, c->auth_hello.nonce_dial) ||
            !peer_auth_equal(hello->nonce_accept, c->auth_hello.nonce_accept))
                return auth_refuse(bus, c, "authentication proof for another handshake");
        uint8_t expected[16];
        peer_auth_proof(&bus->auth_key, bus->cluster, &c->auth_hello, true, expected);
        if (!peer_auth_equal(expected, hello->proof))
                return auth_refuse(bus, c,
                                   "the peer does not hold this cluster key (is "
                                   "--cluster-key-file the same file on every replica?)");
        peer_auth_session(&bus->auth_key, bus->cluster, &c->auth_hello, false, &c->auth_send);
        peer_auth_session(&bus->auth_key, bus->cluster, &c->auth_hello, true, &c->auth_recv);
        c->auth_state = BUS_AUTH_DONE;
        uint8_t replica = c->auth_hello.dialer;
        if (replica == PEER_AUTH_DIALER_BACKUP) {
                backup_accepted(bus, c);
                return true;
        }
        struct bus_connection *old = peer_connection(bus, replica);
        if (old != NULL) {
                /* Proven, so newer: the old connection is one the peer has given up. */
                connection_close(bus, old, "replaced by a newer authenticated connection",
                                 false);
        }
        tally_assert(bus->peers[replica].connection == BUS_CONNECTION_NONE);
        peer_established(bus, c, replica);
        return c->active && !c->closing;
}

/*
 * A handshake message is at the front of the buffer (checksums, size and cluster checked).
 * Consumes it; false if `c` was closed.
 */
static bool auth_on_message(struct bus *bus, struct bus_connection *c)
{
        if (c->auth_state == BUS_AUTH_DONE || c->backup)
                return auth_refuse(bus, c, "authentication message after the handshake");
        /* An aligned copy: the message may start at any offset of the buffer. */
        _Alignas(16) uint8_t copy[WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)];
        const uint8_t *at = c->recv_message->buffer + c->recv_consumed;
        uint32_t size;
        memcpy(&size, at + offsetof(struct wire_header, size), sizeof(size));
        if (size != sizeof(copy))
                return auth_refuse(bus, c, "authentication message of the wrong size");
        memcpy(copy, at, sizeof(copy));
        const char *reason = NULL;
        const struct peer_auth_hello *parsed =
                peer_auth_hello_parse((const struct wire_header *)copy, &reason);
        if (parsed == NULL)
                return auth_refuse(bus, c, reason);
        struct peer_auth_hello hello = *parsed;
        bool backup_dial = hello.step == 1 && hello.dialer == PEER_AUTH_DIALER_BACKUP;
        if (!bus->auth && !backup_dial) {
                if (warn_due(bus, BUS_WARN_NO_KEY))
                        log_warn("connection closed: a peer authenticates with a cluster key "
                                 "but this replica has none (start every replica with the same "
                                 "--cluster-key-file) peer=%s",
                                 c->peer);
                connection_close(bus, c, "peer authenticates, we have no cluster key", false);
                return false;
        }
        c->recv_consumed += size;
        c->front_verified = false;
        if (backup_dial && !bus->auth)
                return auth_on_backup_dial_keyless(bus, c, &hello);
        switch (hello.step) {
        case 1:
                return auth_on_dial(bus, c, &hello);
        case 2:
                return auth_on_accept(bus, c, &hello);
        default:
                tally_assert(hello.step == 3);
                return auth_on_proof(bus, c, &hello);
        }
}

/*
 * The complete message at recv_consumed of an authenticated connection's buffer: its checksum
 * field must be the next tag of the peer's session. Puts the ordinary checksum back so the
 * message is the one the peer holds. False if `c` was closed.
 */
static bool auth_verify_front(struct bus *bus, struct bus_connection *c)
{
        uint8_t *at = c->recv_message->buffer + c->recv_consumed;
        struct wire_header header; /* aligned */
        memcpy(&header, at, sizeof(header));
        tally_assert(c->auth_state == BUS_AUTH_DONE && !c->front_verified);
        tally_assert(c->recv_size - c->recv_consumed >= header.size);
        u128 tag = peer_auth_tag(&c->auth_recv, &header, at + WIRE_HEADER_SIZE);
        uint8_t expected[16], received[16];
        memcpy(expected, &tag, 16);
        memcpy(received, &header.checksum, 16);
        if (!peer_auth_equal(expected, received)) {
                connection_close(bus, c, "message failed authentication (forged, altered or "
                                         "replayed)", true);
                bus->stats.peer_auth_failures++;
                return false;
        }
        wire_header_set_checksum(&header);
        memcpy(at, &header.checksum, sizeof(header.checksum));
        c->front_verified = true;
        return true;
}

/* Handshakes that took too long, and keepalives of idle peer connections. */
static void auth_and_keepalive_tick(struct bus *bus, uint64_t now_ns)
{
        for (uint32_t i = 0; i < bus->slot_count; i++) {
                struct bus_connection *c = &bus->connections[i];
                if (!c->active || c->closing || c->connect_pending)
                        continue;
                if ((c->auth_state == BUS_AUTH_DIAL_SENT ||
                     c->auth_state == BUS_AUTH_ACCEPT_SENT) &&
                    now_ns >= c->auth_deadline_ns) {
                        auth_refuse(bus, c, "authentication handshake timed out");
                        continue;
                }
                if (c->established && bus->callbacks.on_peer_idle != NULL &&
                    now_ns - c->last_received_ns >= (uint64_t)BUS_PEER_SILENT_MS * 1000000ull) {
                        bus->stats.peer_silent_closes++;
                        log_warn("peer silent replica=%d for %u ms: closing its connection to "
                                 "dial again peer=%s",
                                 c->replica, BUS_PEER_SILENT_MS, c->peer);
                        connection_close(bus, c, "peer silent", false);
                        continue;
                }
                if (c->established && bus->callbacks.on_peer_idle != NULL &&
                    now_ns - c->last_sent_ns >= (uint64_t)BUS_PEER_KEEPALIVE_MS * 1000000ull) {
                        c->last_sent_ns = now_ns; /* once per interval even if nothing queues */
                        bus->callbacks.on_peer_idle(bus->callbacks.context, (uint8_t)c->replica);
                }
        }
}

/* ---- limits per connection (see bus.h) ------------------------------------------------ */

static const char *const refusal_names[BUS_REFUSAL_COUNT] = {
        [BUS_REFUSAL_SLOTS_FULL] = "slots_full",
        [BUS_REFUSAL_IDLE] = "idle_timeout",
        [BUS_REFUSAL_PARTIAL] = "partial_message_timeout",
        [BUS_REFUSAL_PEER_SLOT_TIMEOUT] = "reserved_slot_not_identified",
        [BUS_REFUSAL_PEER_SLOT_CLIENT] = "reserved_slot_client_message",
        [BUS_REFUSAL_READ_PAUSED] = "reading_paused",
        [BUS_REFUSAL_SEND_QUEUE_FULL] = "send_queue_full",
};

const char *bus_refusal_name(enum bus_refusal refusal)
{
        tally_assert(refusal < BUS_REFUSAL_COUNT);
        return refusal_names[refusal];
}

/*
 * Counts a refusal and logs it: at warn once per BUS_REFUSAL_LOG_INTERVAL_MS and kind, with
 * how many were logged at debug since, so that a flood cannot flood the log too.
 */
static void refusal(struct bus *bus, enum bus_refusal kind, const struct bus_connection *c,
                    const char *detail)
{
        tally_assert(kind < BUS_REFUSAL_COUNT);
        bus->stats.refusals[kind]++;
        struct bus_refusal_log *limit = &bus->refusal_logs[kind];
        uint64_t now_ns = io_monotonic_ns();
        const char *peer = c != NULL ? c->peer : NULL;
        if (now_ns < limit->warn_after_ns) {
                limit->suppressed++;
                log_debug("connection limit kind=%s: %s%s%s", refusal_names[kind], detail,
                          peer != NULL ? " peer=" : "", peer != NULL ? peer : "");
                return;
        }
        log_warn("connection limit kind=%s: %s%s%s total=%llu not_logged_since=%llu",
                 refusal_names[kind], detail, peer != NULL ? " peer=" : "",
                 peer != NULL ? peer : "", (unsigned long long)bus->stats.refusals[kind],
                 (unsigned long long)limit->suppressed);
        limit->warn_after_ns = now_ns + BUS_REFUSAL_LOG_INTERVAL_MS * 1000000ull;
        limit->suppressed = 0;
}

/*
 * Whether the next complete message of `c` may be handled now. A client connection waits
 * (paused until a tick finds this true) after BUS_CLIENT_MESSAGES_PER_TURN_MAX in one turn,
 * and while its replies are not being read: its queue is full, or it has replies queued and
 * all client queues together are at BUS_CLIENT_SEND_QUEUED_MAX. One with nothing queued is
 * always served, so that the others' unread replies never starve it.
 */
static bool limits_may_deliver(struct bus *bus, struct bus_connection *c, uint32_t delivered)
{
        if (!c->client_budget)
                return true; /* a replica's connection */
        if (delivered >= BUS_CLIENT_MESSAGES_PER_TURN_MAX)
                return false;
        tally_assert(c->send_count <= c->send_queue_max);
        bool may = c->send_count == 0 || (c->send_count < c->send_queue_max &&
                                          bus->client_send_queued < BUS_CLIENT_SEND_QUEUED_MAX);
        if (may) {
                c->read_paused = false;
                return true;
        }
        if (!c->read_paused) {
                c->read_paused = true;
                char detail[128];
                snprintf(detail, sizeof(detail),
                         "reading paused, replies not being read queued=%u clients_queued=%u",
                         c->send_count, bus->client_send_queued);
                refusal(bus, BUS_REFUSAL_READ_PAUSED, c, detail);
        }
        return false;
}

/* A connection in a reserved slot may only speak as a replica. False if `c` was closed. */
static bool limits_check_reserved(struct bus *bus, struct bus_connection *c,
                                  const struct wire_header *h)
{
        if (!c->peer_slot || c->established || wire_command_between_replicas(h->command))
                return true;
        char detail[128];
        snprintf(detail, sizeof(detail),
                 "client message on a slot reserved for replicas command=%s",
                 wire_command_name(h->command));
        refusal(bus, BUS_REFUSAL_PEER_SLOT_CLIENT, c, detail);
        connection_close(bus, c, "client message on a slot reserved for replicas", false);
        return false;
}

/* Closes `c` if it overstayed one of the timeouts (`full`: every client slot is taken). */
static void limits_check_timeouts(struct bus *bus, struct bus_connection *c, uint64_t now_ns,
                                  bool full)
{
        tally_assert(c->client_budget && !c->established && !c->outgoing);
        uint64_t age_ms = (now_ns - c->accepted_ns) / 1000000ull;
        char detail[96];
        if (c->peer_slot) {
                if (age_ms < bus->peer_identify_timeout_ms)
                        return;
                snprintf(detail, sizeof(detail), "not identified as a replica within %u ms",
                         bus->peer_identify_timeout_ms);
                refusal(bus, BUS_REFUSAL_PEER_SLOT_TIMEOUT, c, detail);
                connection_close(bus, c, "reserved slot: not identified as a replica", false);
                return;
        }
        uint32_t idle_ms = full ? bus->idle_timeout_full_ms : bus->idle_timeout_ms;
        if (!c->received && age_ms >= idle_ms) {
                snprintf(detail, sizeof(detail), "no complete message within %u ms%s", idle_ms,
                         full ? " (client slots full)" : "");
                refusal(bus, BUS_REFUSAL_IDLE, c, detail);
                connection_close(bus, c, "idle timeout", false);
                return;
        }
        /* Part of a message is buffered and we are waiting for the rest (not paused). */
        if (c->recv_pending && c->recv_size > 0 &&
            now_ns - c->recv_armed_ns >= (uint64_t)bus->partial_timeout_ms * 1000000ull) {
                snprintf(detail, sizeof(detail), "%u bytes of a message, then nothing for %u ms",
                         c->recv_size, bus->partial_timeout_ms);
                refusal(bus, BUS_REFUSAL_PARTIAL, c, detail);
                connection_close(bus, c, "partial message timeout", false);
        }
}

static void limits_tick(struct bus *bus, uint64_t now_ns)
{
        uint32_t clients_active = 0;
        for (uint32_t i = 0; i < bus->connections_max; i++)
                clients_active += bus->connections[i].active ? 1u : 0u;
        bool full = clients_active == bus->connections_max;
        /* Accepted connections only: the client slots, then the reserved ones. */
        for (uint32_t i = 0; i < bus->slot_count; i++) {
                bool outgoing_slot = i >= bus->connections_max &&
                                     i < bus->connections_max + BUS_OUTGOING_SLOTS;
                struct bus_connection *c = &bus->connections[i];
                if (!outgoing_slot && c->active && !c->closing && c->client_budget)
                        limits_check_timeouts(bus, c, now_ns, full);
        }
}
