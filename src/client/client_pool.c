/*
 * client_pool.c: many client sessions driven from one thread (see client.h for the rules).
 *
 * Each session owns a request buffer (the bytes of its one request in flight, kept unchanged so
 * that a retransmission is byte-identical) and one connection per replica, opened on demand. A
 * connection has at most two things to write: the ping_client it starts with, then the session's
 * request (a cursor into the request buffer, so nothing is copied). Sockets are non-blocking; a
 * write that would block arms EPOLLOUT until it completes. Reads go into the connection's
 * receive buffer and are handed to the caller's callback in place.
 *
 * Timers are plain deadlines in each session, scanned once per client_pool_run(): with at most
 * a few hundred sessions that costs less than one system call.
 */
#include "client/client.h"
#include "client/client_internal.h"
#include "wire/checksum.h"
#include "wire/multi_batch.h"
#include "wire/types.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_TIMEOUT_MS_DEFAULT 1000u
#define REQUEST_DEADLINE_MS_DEFAULT 60000u
/* Retransmission waits double up to this multiple of the first one. */
#define REQUEST_TIMEOUT_MULTIPLE_MAX 8u
/* Reconnect backoff: 50 ms doubling per consecutive failure, capped at 1 s (as the official
 * client, without its jitter: the benchmark wants repeatable behaviour). */
#define RECONNECT_BACKOFF_MS_MIN 50u
#define RECONNECT_BACKOFF_MS_MAX 1000u
/* How long create() waits for pongs before registering at view 0's primary guess. */
#define PING_WAIT_MS 1000u
/* Socket buffers as the official client sets them: a whole 1 MiB request fits in one send. */
#define SOCKET_RECV_BUFFER_SIZE (4u << 20)
#define SOCKET_SEND_BUFFER_SIZE (2u << 20)
#define EPOLL_EVENTS_MAX 64

enum connection_state {
        CONNECTION_CLOSED = 0,
        CONNECTION_CONNECTING,
        CONNECTION_OPEN,
};

struct pool_connection {
        int fd;
        enum connection_state state;
        bool epoll_out; /* EPOLLOUT armed */
        uint8_t *recv;  /* WIRE_MESSAGE_SIZE_MAX bytes, allocated on first connect */
        uint32_t recv_start;
        uint32_t recv_end;
        _Alignas(16) uint8_t ping[WIRE_HEADER_SIZE];
        uint32_t ping_offset; /* == ping_size when written */
        uint32_t ping_size;
        uint32_t send_offset; /* into the session's request; send_size 0: nothing queued */
        uint32_t send_size;
        uint32_t connect_failures;
        uint64_t reconnect_ns; /* a closed connection with output queued reconnects then */
};

struct pool_session {
        u128 id;
        uint64_t session;
        uint32_t request_number; /* of the last request sent */
        u128 parent;             /* context of the last reply */
        uint8_t *message;        /* the request: header then body, WIRE_MESSAGE_SIZE_MAX */
        bool in_flight;
        bool failed; /* evicted or timed out: the hash chain is broken */
        uint64_t user_data;
        uint64_t first_send_ns;
        uint64_t resend_ns;
        uint64_t deadline_ns;
        uint32_t send_count;
        uint32_t timeout_ms;
        struct pool_connection connections[ADDRESSES_MAX];
};

struct client_pool {
        struct client_pool_options options;
        struct address addresses[ADDRESSES_MAX];
        struct pool_session *sessions;
        int epoll_fd;
        uint32_t view;
        uint32_t batch_size_limit;
        uint32_t in_flight;
        uint32_t idle_cursor;
        uint32_t pong_mask; /* replicas that answered a ping */
        uint64_t random_state;
        struct client_pool_stats stats;
        const char *last_error;
        char last_error_text[192];
};

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t pool_random(struct client_pool *pool)
{
        /* xorshift64*: only picks a backup replica; quality hardly matters. */
        uint64_t x = pool->random_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        pool->random_state = x;
        return x * 0x2545F4914F6CDD1Dull;
}

static void pool_error(struct client_pool *pool, const char *what, uint32_t session,
                       uint32_t replica, const char *detail)
{
        snprintf(pool->last_error_text, sizeof(pool->last_error_text),
                 "%s session=%u replica=%u: %s", what, session, replica, detail);
        pool->last_error = pool->last_error_text;
}

static uint64_t epoll_key(uint32_t session, uint32_t replica)
{
        return ((uint64_t)session << 8) | replica;
}

static uint32_t primary_guess(const struct client_pool *pool)
{
        return pool->view % pool->options.address_count;
}

static void connection_epoll(struct client_pool *pool, uint32_t s, uint32_t r, bool out)
{
        struct pool_connection *c = &pool->sessions[s].connections[r];
        if (c->epoll_out == out)
                return;
        struct epoll_event event = {.events = EPOLLIN | (out ? EPOLLOUT : 0),
                                    .data.u64 = epoll_key(s, r)};
        int rc = epoll_ctl(pool->epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
        tally_assert(rc == 0);
        c->epoll_out = out;
}

static void connection_close(struct client_pool *pool, uint32_t s, uint32_t r, const char *why)
{
        struct pool_session *session = &pool->sessions[s];
        struct pool_connection *c = &session->connections[r];
        if (c->state == CONNECTION_CLOSED)
                return;
        if (why != NULL)
                pool_error(pool, "connection closed", s, r, why);
        epoll_ctl(pool->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        c->state = CONNECTION_CLOSED;
        c->epoll_out = false;
        c->recv_start = 0;
        c->recv_end = 0;
        c->ping_offset = 0;
        c->ping_size = 0;
        c->connect_failures++;
        uint64_t backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        for (uint32_t i = 1; i < c->connect_failures && backoff_ms < RECONNECT_BACKOFF_MS_MAX; i++)
                backoff_ms *= 2;
        backoff_ms = MIN(backoff_ms, RECONNECT_BACKOFF_MS_MAX);
        c->reconnect_ns = now_ns() + backoff_ms * 1000000ull;
        /* The reply to a request in flight would have come on the primary's connection: send it
         * again, whole, once reconnected. */
        c->send_offset = 0;
        if (session->in_flight && r == primary_guess(pool) && why != NULL)
                c->send_size = ((const struct wire_header *)session->message)->size;
}

/* Writes what the connection has queued: its ping, then the session's request. */
static void connection_flush(struct client_pool *pool, uint32_t s, uint32_t r)
{
        struct pool_session *session = &pool->sessions[s];
        struct pool_connection *c = &session->connections[r];
        tally_assert(c->state == CONNECTION_OPEN);
        for (;;) {
                const uint8_t *bytes;
                uint32_t left;
                if (c->ping_offset < c->ping_size) {
                        bytes = c->ping + c->ping_offset;
                        left = c->ping_size - c->ping_offset;
                } else if (c->send_offset < c->send_size) {
                        bytes = session->message + c->send_offset;
                        left = c->send_size - c->send_offset;
                } else {
                        c->send_offset = 0;
                        c->send_size = 0;
                        connection_epoll(pool, s, r, false);
                        return;
                }
                ssize_t n = send(c->fd, bytes, left, MSG_NOSIGNAL);
                if (n > 0) {
                        pool->stats.bytes_sent += (uint64_t)n;
                        if (c->ping_offset < c->ping_size)
                                c->ping_offset += (uint32_t)n;
                        else
                                c->send_offset += (uint32_t)n;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        connection_epoll(pool, s, r, true);
                        return;
                }
                connection_close(pool, s, r, "send failed");
                return;
        }
}

static void connection_ping_prepare(struct client_pool *pool, uint32_t s, uint32_t r)
{
        struct pool_connection *c = &pool->sessions[s].connections[r];
        struct wire_header *h = (struct wire_header *)c->ping;
        wire_header_init(h, COMMAND_PING_CLIENT, pool->options.cluster, 0, WIRE_RELEASE_NODE_CLIENT,
                         0);
        h->size = WIRE_HEADER_SIZE;
        h->ping_client.client = pool->sessions[s].id;
        h->ping_client.ping_timestamp_monotonic = now_ns();
        wire_header_set_checksum_body(h, NULL, 0);
        wire_header_set_checksum(h);
        c->ping_offset = 0;
        c->ping_size = WIRE_HEADER_SIZE;
}

/* Starts a non-blocking connect; the ping and any queued request follow once it is up. */
static void connection_open(struct client_pool *pool, uint32_t s, uint32_t r)
{
        struct pool_connection *c = &pool->sessions[s].connections[r];
        tally_assert(c->state == CONNECTION_CLOSED);
        const struct address *address = &pool->addresses[r];
        if (c->recv == NULL) {
                c->recv = aligned_alloc(16, WIRE_MESSAGE_SIZE_MAX);
                tally_assert(c->recv != NULL); /* start-up sized; tiny next to the requests */
        }
        if (c->connect_failures > 0)
                pool->stats.reconnects++;
        c->fd = socket(address->sockaddr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
                pool_error(pool, "connect failed", s, r, "socket() failed");
                c->connect_failures++;
                c->reconnect_ns = now_ns() + RECONNECT_BACKOFF_MS_MAX * 1000000ull;
                return;
        }
        int one = 1;
        int recv_size = SOCKET_RECV_BUFFER_SIZE, send_size = SOCKET_SEND_BUFFER_SIZE;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &recv_size, sizeof(recv_size));
        setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &send_size, sizeof(send_size));
        connection_ping_prepare(pool, s, r);
        struct epoll_event event = {.events = EPOLLIN | EPOLLOUT, .data.u64 = epoll_key(s, r)};
        int rc = epoll_ctl(pool->epoll_fd, EPOLL_CTL_ADD, c->fd, &event);
        tally_assert(rc == 0);
        c->epoll_out = true;
        c->state = CONNECTION_CONNECTING;
        rc = connect(c->fd, (const struct sockaddr *)&address->sockaddr, address->sockaddr_size);
        if (rc != 0 && errno != EINPROGRESS)
                connection_close(pool, s, r, "connect failed");
}

/* Queues the session's request on replica r's connection, connecting if needed. */
static void connection_queue_request(struct client_pool *pool, uint32_t s, uint32_t r)
{
        struct pool_session *session = &pool->sessions[s];
        struct pool_connection *c = &session->connections[r];
        if (c->send_offset > 0 && c->send_offset < c->send_size)
                return; /* the same request is still going out on this connection */
        c->send_offset = 0;
        c->send_size = ((const struct wire_header *)session->message)->size;
        if (c->state == CONNECTION_OPEN)
                connection_flush(pool, s, r);
        else if (c->state == CONNECTION_CLOSED && now_ns() >= c->reconnect_ns)
                connection_open(pool, s, r);
}

/*
 * The request buffer is about to be reused: no connection may still be writing from it. A
 * connection halfway through it is closed (the stream would be cut mid-message otherwise),
 * except `keep`, whose close the caller does after it is done with its receive buffer.
 */
static bool session_release_output(struct client_pool *pool, uint32_t s, uint32_t keep)
{
        struct pool_session *session = &pool->sessions[s];
        bool close_keep = false;
        for (uint32_t r = 0; r < pool->options.address_count; r++) {
                struct pool_connection *c = &session->connections[r];
                if (c->send_offset > 0 && c->send_offset < c->send_size) {
                        if (r == keep)
                                close_keep = true;
                        else
                                connection_close(pool, s, r, NULL);
                }
                c->send_offset = 0;
                c->send_size = 0;
        }
        return close_keep;
}

static void session_complete(struct client_pool *pool, uint32_t s, int result,
                             const struct wire_header *reply, uint8_t eviction_reason,
                             client_pool_callback callback, void *context)
{
        struct pool_session *session = &pool->sessions[s];
        tally_assert(session->in_flight);
        const struct wire_header *sent = (const struct wire_header *)session->message;
        struct client_completion completion = {
            .session = s,
            .result = result,
            .operation = sent->request.operation,
            .user_data = session->user_data,
            .reply = reply,
            .body = reply != NULL ? (const uint8_t *)reply + WIRE_HEADER_SIZE : NULL,
            .body_size = reply != NULL ? reply->size - WIRE_HEADER_SIZE : 0,
            .latency_ns = now_ns() - session->first_send_ns,
            .send_count = session->send_count,
            .eviction_reason = eviction_reason,
        };
        session->in_flight = false;
        pool->in_flight--;
        if (callback != NULL)
                callback(context, &completion);
}

/* Accepts a reply for session s, or drops it (the official client's checks, section 4.4). */
static bool on_reply(struct client_pool *pool, uint32_t s, uint32_t r, const struct wire_header *h,
                     client_pool_callback callback, void *context)
{
        struct pool_session *session = &pool->sessions[s];
        const struct wire_header *sent = (const struct wire_header *)session->message;
        if (h->reply.client != session->id || !session->in_flight)
                return false;
        if (h->reply.request < sent->request.request)
                return false; /* stale */
        if (h->release != sent->release || h->reply.request != sent->request.request ||
            h->reply.request_checksum != sent->checksum ||
            h->reply.operation != sent->request.operation) {
                pool->stats.messages_dropped++;
                pool_error(pool, "reply dropped", s, r,
                           "does not match the request (the official client panics)");
                return false;
        }
        if (sent->request.operation == OPERATION_REGISTER) {
                struct wire_register_result result;
                if (h->size != WIRE_HEADER_SIZE + sizeof(result)) {
                        pool->stats.messages_dropped++;
                        pool_error(pool, "reply dropped", s, r, "register reply size");
                        return false;
                }
                memcpy(&result, (const uint8_t *)h + WIRE_HEADER_SIZE, sizeof(result));
                if (result.batch_size_limit == 0 || result.batch_size_limit > WIRE_BODY_SIZE_MAX) {
                        pool->stats.messages_dropped++;
                        pool_error(pool, "reply dropped", s, r, "register batch_size_limit");
                        return false;
                }
                session->session = h->reply.commit;
                if (pool->batch_size_limit == 0 || result.batch_size_limit < pool->batch_size_limit)
                        pool->batch_size_limit = result.batch_size_limit;
        }
        session->parent = h->reply.context;
        if (h->view > pool->view)
                pool->view = h->view;
        bool close_after = session_release_output(pool, s, r);
        session_complete(pool, s, CLIENT_OK, h, 0, callback, context);
        return close_after;
}

/* Handles one valid message from replica r on session s's connection. True: close it now. */
static bool on_message(struct client_pool *pool, uint32_t s, uint32_t r,
                       const struct wire_header *h, client_pool_callback callback, void *context)
{
        struct pool_session *session = &pool->sessions[s];
        switch (h->command) {
        case COMMAND_PONG_CLIENT:
                if (h->view > pool->view)
                        pool->view = h->view;
                pool->pong_mask |= 1u << r;
                return false;
        case COMMAND_EVICTION:
                if (h->eviction.client != session->id || h->view < pool->view)
                        return false;
                session->failed = true;
                pool_error(pool, "evicted", s, r, "the session is finished");
                if (session->in_flight) {
                        session_release_output(pool, s, r);
                        session_complete(pool, s, CLIENT_ERROR_EVICTED, NULL, h->eviction.reason,
                                         callback, context);
                }
                return true;
        case COMMAND_REPLY:
                return on_reply(pool, s, r, h, callback, context);
        default:
                return false; /* other valid commands are dropped, as the official client does */
        }
}

/* Reads what arrived and hands out every whole message. */
static void connection_receive(struct client_pool *pool, uint32_t s, uint32_t r,
                               client_pool_callback callback, void *context)
{
        struct pool_connection *c = &pool->sessions[s].connections[r];
        while (c->state == CONNECTION_OPEN) {
                ssize_t n =
                    recv(c->fd, c->recv + c->recv_end, WIRE_MESSAGE_SIZE_MAX - c->recv_end, 0);
                if (n == 0) {
                        connection_close(pool, s, r, "closed by the server");
                        return;
                }
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                connection_close(pool, s, r, "recv failed");
                        return;
                }
                pool->stats.bytes_received += (uint64_t)n;
                c->recv_end += (uint32_t)n;
                /* Every message in the buffer; the callback may close this connection. */
                while (c->state == CONNECTION_OPEN) {
                        const char *error = NULL;
                        uint8_t *start = c->recv + c->recv_start;
                        int64_t size = client_frame_check(start, c->recv_end - c->recv_start,
                                                          pool->options.cluster, &error);
                        if (size < 0) {
                                pool->stats.messages_dropped++;
                                connection_close(pool, s, r, error);
                                return;
                        }
                        if (size == 0)
                                break;
                        c->recv_start += (uint32_t)size;
                        bool close_now = on_message(pool, s, r, (const struct wire_header *)start,
                                                    callback, context);
                        if (close_now) {
                                connection_close(pool, s, r, NULL);
                                return;
                        }
                }
                if (c->state != CONNECTION_OPEN)
                        return;
                /* Keep the next message's header 16-byte aligned at the buffer's start, and
                 * room behind it for the largest message. */
                if (c->recv_start == c->recv_end) {
                        c->recv_start = 0;
                        c->recv_end = 0;
                } else if (c->recv_start > 0) {
                        memmove(c->recv, c->recv + c->recv_start, c->recv_end - c->recv_start);
                        c->recv_end -= c->recv_start;
                        c->recv_start = 0;
                }
        }
}

static void connection_on_event(struct client_pool *pool, uint32_t s, uint32_t r, uint32_t events,
                                client_pool_callback callback, void *context)
{
        struct pool_connection *c = &pool->sessions[s].connections[r];
        if (c->state == CONNECTION_CONNECTING) {
                int error = 0;
                socklen_t size = sizeof(error);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
                if (error != 0 || (events & (EPOLLERR | EPOLLHUP)) != 0) {
                        connection_close(pool, s, r, "connect refused");
                        return;
                }
                if ((events & EPOLLOUT) == 0)
                        return;
                c->state = CONNECTION_OPEN;
                c->connect_failures = 0;
        }
        if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0)
                connection_receive(pool, s, r, callback, context);
        if (c->state == CONNECTION_OPEN && (events & EPOLLOUT) != 0)
                connection_flush(pool, s, r);
}

/* Retransmissions, deadlines and reconnects due by `now`; returns the next due time. */
static uint64_t pool_timers(struct client_pool *pool, uint64_t now, client_pool_callback callback,
                            void *context)
{
        uint64_t next = UINT64_MAX;
        for (uint32_t s = 0; s < pool->options.session_count; s++) {
                struct pool_session *session = &pool->sessions[s];
                if (session->in_flight && now >= session->deadline_ns) {
                        session->failed = true;
                        pool_error(pool, "request timed out", s, primary_guess(pool),
                                   "no reply before the deadline");
                        session_release_output(pool, s, ADDRESSES_MAX);
                        for (uint32_t r = 0; r < pool->options.address_count; r++)
                                connection_close(pool, s, r, NULL);
                        session_complete(pool, s, CLIENT_ERROR_TIMEOUT, NULL, 0, callback, context);
                        continue;
                }
                if (session->in_flight && now >= session->resend_ns) {
                        pool->stats.retransmissions++;
                        session->send_count++;
                        session->timeout_ms =
                            MIN(session->timeout_ms * 2,
                                pool->options.request_timeout_ms * REQUEST_TIMEOUT_MULTIPLE_MAX);
                        session->resend_ns = now + session->timeout_ms * 1000000ull;
                        uint32_t n = pool->options.address_count;
                        uint32_t primary = primary_guess(pool);
                        connection_queue_request(pool, s, primary);
                        if (n > 1) {
                                uint32_t backup = (primary + 1 + pool_random(pool) % (n - 1)) % n;
                                connection_queue_request(pool, s, backup);
                        }
                }
                if (session->in_flight) {
                        next = MIN(next, session->resend_ns);
                        next = MIN(next, session->deadline_ns);
                }
                for (uint32_t r = 0; r < pool->options.address_count; r++) {
                        struct pool_connection *c = &session->connections[r];
                        if (c->state != CONNECTION_CLOSED || c->send_size == 0 || session->failed)
                                continue;
                        if (now >= c->reconnect_ns)
                                connection_open(pool, s, r);
                        else
                                next = MIN(next, c->reconnect_ns);
                }
        }
        return next;
}

int client_pool_run(struct client_pool *pool, int timeout_ms, client_pool_callback callback,
                    void *context)
{
        uint32_t in_flight_before = pool->in_flight;
        uint64_t now = now_ns();
        uint64_t next = pool_timers(pool, now, callback, context);
        if (pool->in_flight != in_flight_before)
                timeout_ms = 0; /* something finished already: let the caller act on it */
        if (next != UINT64_MAX) {
                uint64_t wait_ms = next > now ? (next - now + 999999) / 1000000 : 0;
                if (timeout_ms < 0 || wait_ms < (uint64_t)timeout_ms)
                        timeout_ms = (int)wait_ms;
        }
        struct epoll_event events[EPOLL_EVENTS_MAX];
        int count = epoll_wait(pool->epoll_fd, events, EPOLL_EVENTS_MAX, timeout_ms);
        for (int i = 0; i < count; i++) {
                uint32_t s = (uint32_t)(events[i].data.u64 >> 8);
                uint32_t r = (uint32_t)(events[i].data.u64 & 0xff);
                tally_assert(s < pool->options.session_count && r < pool->options.address_count);
                connection_on_event(pool, s, r, events[i].events, callback, context);
        }
        return (int)(in_flight_before - pool->in_flight);
}

int32_t client_pool_idle_session(struct client_pool *pool)
{
        uint32_t n = pool->options.session_count;
        for (uint32_t i = 0; i < n; i++) {
                uint32_t s = (pool->idle_cursor + i) % n;
                if (!pool->sessions[s].in_flight && !pool->sessions[s].failed) {
                        pool->idle_cursor = (s + 1) % n;
                        return (int32_t)s;
                }
        }
        return -1;
}

uint8_t *client_pool_body(struct client_pool *pool, uint32_t session)
{
        tally_assert(session < pool->options.session_count);
        tally_assert(!pool->sessions[session].in_flight);
        return pool->sessions[session].message + WIRE_HEADER_SIZE;
}

int client_pool_send(struct client_pool *pool, uint32_t s, uint8_t operation, uint32_t body_size,
                     uint64_t user_data)
{
        tally_assert(s < pool->options.session_count);
        struct pool_session *session = &pool->sessions[s];
        tally_assert(!session->in_flight);
        if (session->failed)
                return CLIENT_ERROR_EVICTED;
        uint32_t limit = pool->batch_size_limit != 0 ? pool->batch_size_limit : WIRE_BODY_SIZE_MAX;
        if (body_size > limit)
                return CLIENT_ERROR_TOO_LARGE;
        struct wire_header *h = (struct wire_header *)session->message;
        wire_header_init(h, COMMAND_REQUEST, pool->options.cluster, pool->view,
                         WIRE_RELEASE_NODE_CLIENT, 0);
        h->size = WIRE_HEADER_SIZE + body_size;
        h->request.client = session->id;
        h->request.operation = operation;
        if (operation != OPERATION_REGISTER) {
                tally_assert(session->session != 0);
                h->request.parent = session->parent;
                h->request.session = session->session;
                h->request.request = session->request_number + 1;
                session->request_number++;
        }
        wire_header_set_checksum_body(h, session->message + WIRE_HEADER_SIZE, body_size);
        wire_header_set_checksum(h);
        uint64_t now = now_ns();
        session->in_flight = true;
        session->user_data = user_data;
        session->first_send_ns = now;
        session->send_count = 1;
        session->timeout_ms = pool->options.request_timeout_ms;
        session->resend_ns = now + session->timeout_ms * 1000000ull;
        session->deadline_ns = now + pool->options.request_deadline_ms * 1000000ull;
        pool->in_flight++;
        pool->stats.requests++;
        connection_queue_request(pool, s, primary_guess(pool));
        return CLIENT_OK;
}

static void register_done(void *context, const struct client_completion *completion)
{
        int *failures = context;
        if (completion->result != CLIENT_OK)
                (*failures)++;
}

struct client_pool *client_pool_create(const struct client_pool_options *options, char *error,
                                       size_t error_size)
{
        if (options->address_count == 0 || options->address_count > ADDRESSES_MAX ||
            options->session_count == 0 || options->session_count > CLIENT_POOL_SESSIONS_MAX) {
                snprintf(error, error_size, "need 1..%u addresses and 1..%u sessions",
                         ADDRESSES_MAX, CLIENT_POOL_SESSIONS_MAX);
                return NULL;
        }
        struct client_pool *pool = calloc(1, sizeof(*pool));
        if (pool == NULL) {
                snprintf(error, error_size, "out of memory");
                return NULL;
        }
        pool->options = *options;
        if (pool->options.request_timeout_ms == 0)
                pool->options.request_timeout_ms = REQUEST_TIMEOUT_MS_DEFAULT;
        if (pool->options.request_deadline_ms == 0)
                pool->options.request_deadline_ms = REQUEST_DEADLINE_MS_DEFAULT;
        memcpy(pool->addresses, options->addresses,
               options->address_count * sizeof(pool->addresses[0]));
        pool->options.addresses = pool->addresses;
        if (getrandom(&pool->random_state, sizeof(pool->random_state), 0) !=
                sizeof(pool->random_state) ||
            pool->random_state == 0)
                pool->random_state = now_ns() | 1;
        pool->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        pool->sessions = calloc(options->session_count, sizeof(pool->sessions[0]));
        if (pool->epoll_fd < 0 || pool->sessions == NULL) {
                snprintf(error, error_size, "cannot create the event loop");
                client_pool_destroy(pool);
                return NULL;
        }
        for (uint32_t s = 0; s < options->session_count; s++) {
                struct pool_session *session = &pool->sessions[s];
                for (uint32_t r = 0; r < ADDRESSES_MAX; r++)
                        session->connections[r].fd = -1;
                while (session->id == 0)
                        session->id = ((u128)pool_random(pool) << 64) | pool_random(pool);
                session->message = aligned_alloc(16, WIRE_MESSAGE_SIZE_MAX);
                if (session->message == NULL) {
                        snprintf(error, error_size, "out of memory for request buffers");
                        client_pool_destroy(pool);
                        return NULL;
                }
        }
        for (uint32_t r = 0; r < options->address_count; r++) {
                if (options->addresses[r].sockaddr_size == 0) {
                        snprintf(error, error_size, "address %u is not resolved", r);
                        client_pool_destroy(pool);
                        return NULL;
                }
        }

        /* Find the primary: ping every replica from session 0, take the highest view. */
        uint32_t all = (1u << options->address_count) - 1;
        for (uint32_t r = 0; r < options->address_count; r++)
                connection_open(pool, 0, r);
        uint64_t ping_deadline = now_ns() + PING_WAIT_MS * 1000000ull;
        while (pool->pong_mask != all && now_ns() < ping_deadline)
                client_pool_run(pool, 10, NULL, NULL);
        if (pool->pong_mask == 0) {
                /* Not one replica reachable: fail now rather than after the deadline. */
                snprintf(error, error_size, "no replica answered a ping within %u ms (%s)",
                         PING_WAIT_MS, pool->last_error != NULL ? pool->last_error : "no reply");
                client_pool_destroy(pool);
                return NULL;
        }

        /* Register every session at once. */
        int failures = 0;
        for (uint32_t s = 0; s < options->session_count; s++) {
                memset(client_pool_body(pool, s), 0, sizeof(struct wire_register_request));
                client_pool_send(pool, s, OPERATION_REGISTER, sizeof(struct wire_register_request),
                                 0);
        }
        while (pool->in_flight > 0)
                client_pool_run(pool, 100, register_done, &failures);
        if (failures > 0) {
                snprintf(error, error_size, "%d of %u sessions failed to register (%s)", failures,
                         options->session_count,
                         pool->last_error != NULL ? pool->last_error : "no reply");
                client_pool_destroy(pool);
                return NULL;
        }
        return pool;
}

void client_pool_destroy(struct client_pool *pool)
{
        if (pool == NULL)
                return;
        if (pool->sessions != NULL) {
                for (uint32_t s = 0; s < pool->options.session_count; s++) {
                        struct pool_session *session = &pool->sessions[s];
                        for (uint32_t r = 0; r < ADDRESSES_MAX; r++) {
                                if (session->connections[r].state != CONNECTION_CLOSED)
                                        close(session->connections[r].fd);
                                free(session->connections[r].recv);
                        }
                        free(session->message);
                }
                free(pool->sessions);
        }
        if (pool->epoll_fd >= 0)
                close(pool->epoll_fd);
        free(pool);
}

uint32_t client_pool_batch_size_limit(const struct client_pool *pool)
{
        return pool->batch_size_limit;
}

uint32_t client_pool_view(const struct client_pool *pool)
{
        return pool->view;
}

uint32_t client_pool_in_flight(const struct client_pool *pool)
{
        return pool->in_flight;
}

const struct client_pool_stats *client_pool_stats(const struct client_pool *pool)
{
        return &pool->stats;
}

const char *client_pool_last_error(const struct client_pool *pool)
{
        return pool->last_error;
}

uint32_t client_body_single_batch(uint8_t *body, uint32_t element_size, uint32_t element_count)
{
        tally_assert(element_count <= MULTI_BATCH_COUNT_MAX);
        uint32_t payload = element_size * element_count;
        uint32_t trailer = multi_batch_trailer_size(element_size, 1);
        memset(body + payload, 0xFF, trailer - 4);
        uint16_t count = (uint16_t)element_count, batches = 1;
        memcpy(body + payload + trailer - 4, &count, 2);
        memcpy(body + payload + trailer - 2, &batches, 2);
        return payload + trailer;
}

bool client_reply_single_batch(const uint8_t *body, uint32_t body_size, uint32_t element_size,
                               const uint8_t **elements, uint32_t *element_count)
{
        struct multi_batch_decoder decoder;
        if (!multi_batch_decode_init(&decoder, body, body_size, element_size) ||
            decoder.batch_count != 1)
                return false;
        return multi_batch_decode_next(&decoder, elements, element_count);
}
