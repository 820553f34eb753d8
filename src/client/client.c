/*
 * client.c: see client.h. Plain blocking sockets with poll(2) timeouts: tools and tests want
 * simple, obviously-correct code more than they want the server's event loop.
 */
#include "client/client.h"
#include "client/client_internal.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int client_open(struct client *c, const struct sockaddr_storage *address, socklen_t address_size,
                u128 cluster, u128 id, int timeout_ms)
{
        memset(c, 0, sizeof(*c));
        c->fd = -1;
        c->cluster = cluster;
        c->release = WIRE_RELEASE_NODE_CLIENT;
        c->timeout_ms = timeout_ms;
        while (id == 0) {
                if (getrandom(&id, sizeof(id), 0) != sizeof(id))
                        id = ((u128)(uint64_t)now_ms() << 64) | (uint64_t)getpid();
        }
        c->id = id;
        c->send_buffer = malloc(WIRE_MESSAGE_SIZE_MAX);
        c->recv_buffer = aligned_alloc(16, WIRE_MESSAGE_SIZE_MAX);
        if (c->send_buffer == NULL || c->recv_buffer == NULL) {
                c->error = "out of memory";
                return CLIENT_ERROR_CONNECT;
        }
        c->fd = socket(address->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (c->fd < 0) {
                c->error = "socket failed";
                return CLIENT_ERROR_CONNECT;
        }
        int rc = connect(c->fd, (const struct sockaddr *)address, address_size);
        if (rc != 0 && errno != EINPROGRESS) {
                c->error = "connect failed";
                return CLIENT_ERROR_CONNECT;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        if (poll(&pfd, 1, timeout_ms) != 1) {
                c->error = "connect timed out";
                return CLIENT_ERROR_TIMEOUT;
        }
        int err = 0;
        socklen_t size = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &size);
        if (err != 0) {
                c->error = "connect refused";
                return CLIENT_ERROR_CONNECT;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return CLIENT_OK;
}

void client_close(struct client *c)
{
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        free(c->send_buffer);
        free(c->recv_buffer);
        c->send_buffer = NULL;
        c->recv_buffer = NULL;
}

int client_send_raw(struct client *c, const void *bytes, uint32_t size)
{
        const uint8_t *p = bytes;
        int64_t deadline = now_ms() + c->timeout_ms;
        while (size > 0) {
                ssize_t n = send(c->fd, p, size, MSG_NOSIGNAL);
                if (n > 0) {
                        p += n;
                        size -= (uint32_t)n;
                        continue;
                }
                if (n < 0 && errno != EAGAIN && errno != EINTR) {
                        c->error = "send failed";
                        return CLIENT_ERROR_CLOSED;
                }
                int64_t left = deadline - now_ms();
                struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
                if (left <= 0 || poll(&pfd, 1, (int)left) != 1) {
                        c->error = "send timed out";
                        return CLIENT_ERROR_TIMEOUT;
                }
        }
        return CLIENT_OK;
}

int64_t client_frame_check(const uint8_t *bytes, uint32_t available, u128 cluster,
                           const char **error)
{
        if (available < WIRE_HEADER_SIZE)
                return 0;
        const struct wire_header *h = (const struct wire_header *)bytes;
        if (!wire_header_checksum_valid(h)) {
                *error = "reply header checksum invalid";
                return -1;
        }
        if (h->command >= COMMAND_COUNT) {
                *error = "undefined command (the official client exits)";
                return -1;
        }
        if (h->size < WIRE_HEADER_SIZE || h->size > WIRE_MESSAGE_SIZE_MAX) {
                *error = "reply size out of range";
                return -1;
        }
        if (available < h->size)
                return 0;
        if (!wire_body_checksum_valid(h, bytes + WIRE_HEADER_SIZE)) {
                *error = "reply body checksum invalid";
                return -1;
        }
        if (h->cluster != cluster) {
                *error = "reply for another cluster";
                return -1;
        }
        const char *invalid = wire_header_invalid(h);
        if (invalid != NULL) {
                *error = invalid;
                return -1;
        }
        return h->size;
}

int client_receive(struct client *c, const struct wire_header **message)
{
        /* Drop the message handed out by the previous call. */
        if (c->consumed_size > 0) {
                memmove(c->recv_buffer, c->recv_buffer + c->consumed_size,
                        c->recv_size - c->consumed_size);
                c->recv_size -= c->consumed_size;
                c->consumed_size = 0;
        }
        int64_t deadline = now_ms() + c->timeout_ms;
        for (;;) {
                int64_t size =
                    client_frame_check(c->recv_buffer, c->recv_size, c->cluster, &c->error);
                if (size < 0)
                        return CLIENT_ERROR_PROTOCOL;
                if (size > 0) {
                        c->consumed_size = (uint32_t)size;
                        *message = (const struct wire_header *)c->recv_buffer;
                        return CLIENT_OK;
                }
                ssize_t n = recv(c->fd, c->recv_buffer + c->recv_size,
                                 WIRE_MESSAGE_SIZE_MAX - c->recv_size, 0);
                if (n > 0) {
                        c->recv_size += (uint32_t)n;
                        continue;
                }
                if (n == 0) {
                        c->error = "connection closed by the server";
                        return CLIENT_ERROR_CLOSED;
                }
                if (errno != EAGAIN && errno != EINTR) {
                        c->error = "recv failed";
                        return CLIENT_ERROR_CLOSED;
                }
                int64_t left = deadline - now_ms();
                struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
                if (left <= 0 || poll(&pfd, 1, (int)left) != 1) {
                        c->error = "timed out waiting for a reply";
                        return CLIENT_ERROR_TIMEOUT;
                }
        }
}

void client_request_header(struct client *c, struct wire_header *h, uint8_t operation,
                           uint32_t body_size)
{
        wire_header_init(h, COMMAND_REQUEST, c->cluster, c->view, c->release, 0);
        h->size = WIRE_HEADER_SIZE + body_size;
        h->request.client = c->id;
        h->request.operation = operation;
        if (operation != OPERATION_REGISTER) {
                h->request.parent = c->parent;
                h->request.session = c->session;
                h->request.request = c->request_number + 1;
        }
}

/* Waits for the reply to the request in the send buffer, skipping pongs and stale replies. */
static int await_reply(struct client *c, const struct wire_header **reply)
{
        const struct wire_header *sent = (const struct wire_header *)c->send_buffer;
        for (;;) {
                const struct wire_header *m;
                int rc = client_receive(c, &m);
                if (rc != CLIENT_OK)
                        return rc;
                if (m->command == COMMAND_EVICTION) {
                        if (m->eviction.client != c->id || m->view < c->view)
                                continue;
                        c->eviction_reason = m->eviction.reason;
                        c->error = "evicted";
                        return CLIENT_ERROR_EVICTED;
                }
                if (m->command != COMMAND_REPLY || m->reply.client != c->id)
                        continue;
                if (m->release != c->release) {
                        c->error = "reply release differs from the client's (client panics)";
                        return CLIENT_ERROR_PROTOCOL;
                }
                if (m->reply.request < sent->request.request)
                        continue; /* stale */
                if (m->reply.request > sent->request.request ||
                    m->reply.request_checksum != sent->checksum ||
                    m->reply.operation != sent->request.operation) {
                        c->error = "reply does not match the request (client panics)";
                        return CLIENT_ERROR_PROTOCOL;
                }
                c->parent = m->reply.context;
                if (m->view > c->view)
                        c->view = m->view;
                *reply = m;
                return CLIENT_OK;
        }
}

int client_request(struct client *c, uint8_t operation, const void *body, uint32_t body_size,
                   const struct wire_header **reply)
{
        if (body_size > WIRE_BODY_SIZE_MAX)
                return CLIENT_ERROR_TOO_LARGE;
        struct wire_header *h = (struct wire_header *)c->send_buffer;
        client_request_header(c, h, operation, body_size);
        if (body_size > 0)
                memcpy(c->send_buffer + WIRE_HEADER_SIZE, body, body_size);
        wire_header_set_checksum_body(h, c->send_buffer + WIRE_HEADER_SIZE, body_size);
        wire_header_set_checksum(h);
        int rc = client_send_raw(c, c->send_buffer, h->size);
        if (rc != CLIENT_OK)
                return rc;
        if (operation != OPERATION_REGISTER)
                c->request_number++;
        return await_reply(c, reply);
}

int client_retransmit(struct client *c, const struct wire_header **reply)
{
        const struct wire_header *h = (const struct wire_header *)c->send_buffer;
        int rc = client_send_raw(c, c->send_buffer, h->size);
        if (rc != CLIENT_OK)
                return rc;
        return await_reply(c, reply);
}

int client_register(struct client *c)
{
        uint8_t body[sizeof(struct wire_register_request)];
        memset(body, 0, sizeof(body));
        const struct wire_header *reply;
        int rc = client_request(c, OPERATION_REGISTER, body, sizeof(body), &reply);
        if (rc != CLIENT_OK)
                return rc;
        struct wire_register_result result;
        memcpy(&result, (const uint8_t *)reply + WIRE_HEADER_SIZE, sizeof(result));
        if (reply->reply.commit == 0 || result.batch_size_limit == 0 ||
            result.batch_size_limit > WIRE_BODY_SIZE_MAX) {
                c->error = "invalid register reply";
                return CLIENT_ERROR_PROTOCOL;
        }
        c->session = reply->reply.commit;
        c->batch_size_limit = result.batch_size_limit;
        return CLIENT_OK;
}
