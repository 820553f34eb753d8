/*
 * test_client_pool.c: the client pool against fake replicas running in threads of this process.
 *
 * A fake replica listens on a loopback port and answers pings, registers and requests with
 * well-formed messages, or misbehaves on purpose: drops requests (the pool must retransmit the
 * same bytes), closes the connection (the pool must reconnect and resend), evicts, stays
 * silent (the request must fail at its deadline), or reports a newer view (the pool must move
 * to the new primary guess, view % replica count).
 */
#include "test.h"

#include "client/client.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAKE_CONNECTIONS_MAX 16
#define BATCH_SIZE_LIMIT 1048320u

struct fake_replica {
        int listen_fd;
        uint16_t port;
        uint8_t index;
        uint32_t view;
        pthread_t thread;
        volatile bool stop;
        /* Misbehaviour, counted down per non-register request. */
        int drop_requests;
        int close_requests;
        bool evict;
        bool silent;
        /* Seen */
        int pings;
        int registers;
        int requests;
        int retransmissions; /* a request whose checksum equals the previous one's */
        u128 last_checksum;
        uint64_t commit;
        uint8_t *buffer;
};

static bool read_exact(int fd, uint8_t *p, uint32_t size)
{
        while (size > 0) {
                ssize_t n = recv(fd, p, size, MSG_WAITALL);
                if (n <= 0)
                        return false;
                p += n;
                size -= (uint32_t)n;
        }
        return true;
}

static void fake_send(int fd, struct wire_header *h, const void *body, uint32_t body_size)
{
        uint8_t message[WIRE_HEADER_SIZE + 64];
        h->size = WIRE_HEADER_SIZE + body_size;
        wire_header_set_checksum_body(h, body, body_size);
        if (h->command == COMMAND_REPLY)
                wire_reply_set_context(h);
        wire_header_set_checksum(h);
        memcpy(message, h, WIRE_HEADER_SIZE);
        if (body_size > 0)
                memcpy(message + WIRE_HEADER_SIZE, body, body_size);
        ssize_t n = send(fd, message, h->size, MSG_NOSIGNAL);
        (void)n;
}

static void fake_reply(struct fake_replica *f, int fd, const struct wire_header *request)
{
        struct wire_header h;
        wire_header_init(&h, COMMAND_REPLY, request->cluster, f->view, request->release, f->index);
        h.reply.request_checksum = request->checksum;
        h.reply.client = request->request.client;
        h.reply.op = h.reply.commit = ++f->commit;
        h.reply.timestamp = 1000 + f->commit;
        h.reply.request = request->request.request;
        h.reply.operation = request->request.operation;
        uint8_t body[64];
        memset(body, 0, sizeof(body));
        uint32_t body_size;
        if (request->request.operation == OPERATION_REGISTER) {
                struct wire_register_result result = {.batch_size_limit = BATCH_SIZE_LIMIT};
                memcpy(body, &result, sizeof(result));
                body_size = sizeof(result);
        } else {
                body_size = client_body_single_batch(body, sizeof(struct wire_create_result), 0);
        }
        fake_send(fd, &h, body, body_size);
}

/* Handles one message; false to close the connection. */
static bool fake_on_message(struct fake_replica *f, int fd, const struct wire_header *m)
{
        if (m->command == COMMAND_PING_CLIENT) {
                f->pings++;
                struct wire_header pong;
                wire_header_init(&pong, COMMAND_PONG_CLIENT, m->cluster, f->view,
                                 WIRE_RELEASE_SERVER, f->index);
                pong.pong_client.ping_timestamp_monotonic = m->ping_client.ping_timestamp_monotonic;
                fake_send(fd, &pong, NULL, 0);
                return true;
        }
        if (m->command != COMMAND_REQUEST)
                return true;
        if (m->request.operation == OPERATION_REGISTER) {
                f->registers++;
                fake_reply(f, fd, m);
                return true;
        }
        f->requests++;
        if (m->checksum == f->last_checksum)
                f->retransmissions++;
        f->last_checksum = m->checksum;
        if (f->silent)
                return true;
        if (f->drop_requests > 0) {
                f->drop_requests--;
                return true;
        }
        if (f->close_requests > 0) {
                f->close_requests--;
                return false;
        }
        if (f->evict) {
                struct wire_header e;
                wire_header_init(&e, COMMAND_EVICTION, m->cluster, f->view, WIRE_RELEASE_SERVER,
                                 f->index);
                e.eviction.client = m->request.client;
                e.eviction.reason = EVICTION_NO_SESSION;
                fake_send(fd, &e, NULL, 0);
                return true;
        }
        fake_reply(f, fd, m);
        return true;
}

static void *fake_run(void *context)
{
        struct fake_replica *f = context;
        struct pollfd fds[FAKE_CONNECTIONS_MAX + 1];
        uint32_t count = 1;
        fds[0] = (struct pollfd){.fd = f->listen_fd, .events = POLLIN};
        while (!f->stop) {
                if (poll(fds, count, 10) <= 0)
                        continue;
                if ((fds[0].revents & POLLIN) != 0 && count < FAKE_CONNECTIONS_MAX + 1) {
                        int fd = accept(f->listen_fd, NULL, NULL);
                        if (fd >= 0)
                                fds[count++] = (struct pollfd){.fd = fd, .events = POLLIN};
                }
                for (uint32_t i = 1; i < count; i++) {
                        if (fds[i].revents == 0)
                                continue;
                        struct wire_header *m = (struct wire_header *)f->buffer;
                        bool keep = read_exact(fds[i].fd, f->buffer, WIRE_HEADER_SIZE) &&
                                    m->size >= WIRE_HEADER_SIZE &&
                                    m->size <= WIRE_MESSAGE_SIZE_MAX &&
                                    read_exact(fds[i].fd, f->buffer + WIRE_HEADER_SIZE,
                                               m->size - WIRE_HEADER_SIZE) &&
                                    fake_on_message(f, fds[i].fd, m);
                        if (!keep) {
                                close(fds[i].fd);
                                fds[i--] = fds[--count];
                        }
                }
        }
        for (uint32_t i = 1; i < count; i++)
                close(fds[i].fd);
        return NULL;
}

static void fake_start(struct fake_replica *f, uint8_t index, struct address *address)
{
        memset(f, 0, sizeof(*f));
        f->index = index;
        f->buffer = aligned_alloc(16, WIRE_MESSAGE_SIZE_MAX);
        f->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t size = sizeof(sin);
        int rc = bind(f->listen_fd, (struct sockaddr *)&sin, size);
        tally_assert(rc == 0);
        rc = listen(f->listen_fd, 64);
        tally_assert(rc == 0);
        getsockname(f->listen_fd, (struct sockaddr *)&sin, &size);
        f->port = ntohs(sin.sin_port);
        memset(address, 0, sizeof(*address));
        memcpy(&address->sockaddr, &sin, sizeof(sin));
        address->sockaddr_size = sizeof(sin);
        address->port = f->port;
        snprintf(address->host, sizeof(address->host), "127.0.0.1");
}

static void fake_go(struct fake_replica *f)
{
        pthread_create(&f->thread, NULL, fake_run, f);
}

static void fake_stop(struct fake_replica *f)
{
        f->stop = true;
        pthread_join(f->thread, NULL);
        close(f->listen_fd);
        free(f->buffer);
}

struct outcome {
        int done;
        int ok;
        int result;
        uint32_t send_count;
        uint32_t results;
        uint8_t eviction_reason;
};

static void on_done(void *context, const struct client_completion *c)
{
        struct outcome *o = context;
        o->done++;
        o->result = c->result;
        o->send_count = c->send_count;
        o->eviction_reason = c->eviction_reason;
        if (c->result == CLIENT_OK) {
                const uint8_t *elements;
                uint32_t count = 0;
                if (client_reply_single_batch(c->body, c->body_size,
                                              sizeof(struct wire_create_result), &elements,
                                              &count)) {
                        o->ok++;
                        o->results += count;
                }
        }
}

/* Sends one empty create_transfers from `session` and waits (bounded) for it to finish. */
static struct outcome one_request(struct client_pool *pool, uint32_t session)
{
        struct outcome o;
        memset(&o, 0, sizeof(o));
        uint8_t *body = client_pool_body(pool, session);
        uint32_t size = client_body_single_batch(body, sizeof(struct wire_transfer), 0);
        CHECK_EQ_U64(client_pool_send(pool, session, OPERATION_CREATE_TRANSFERS, size, 7),
                     CLIENT_OK);
        for (int i = 0; i < 500 && o.done == 0; i++)
                client_pool_run(pool, 10, on_done, &o);
        return o;
}

static struct client_pool *pool_open(struct address *addresses, uint32_t count, uint32_t sessions,
                                     uint32_t timeout_ms, uint32_t deadline_ms)
{
        struct client_pool_options options = {
            .addresses = addresses,
            .address_count = count,
            .cluster = 0,
            .session_count = sessions,
            .request_timeout_ms = timeout_ms,
            .request_deadline_ms = deadline_ms,
        };
        char error[256] = "";
        struct client_pool *pool = client_pool_create(&options, error, sizeof(error));
        if (pool == NULL)
                fprintf(stderr, "  client_pool_create: %s\n", error);
        return pool;
}

static void test_register_and_request(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        fake_go(&f);
        struct client_pool *pool = pool_open(&a, 1, 3, 1000, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                CHECK_EQ_U64(f.registers, 3);
                CHECK_EQ_U64(client_pool_batch_size_limit(pool), BATCH_SIZE_LIMIT);
                /* Every session, twice: request numbers and parents chain per session. */
                for (int round = 0; round < 2; round++) {
                        for (uint32_t s = 0; s < 3; s++) {
                                struct outcome o = one_request(pool, s);
                                CHECK_EQ_U64(o.ok, 1);
                                CHECK_EQ_U64(o.results, 0);
                                CHECK_EQ_U64(o.send_count, 1);
                        }
                }
                CHECK_EQ_U64(f.requests, 6);
                CHECK_EQ_U64(client_pool_stats(pool)->retransmissions, 0);
                CHECK_EQ_U64(client_pool_in_flight(pool), 0);
                client_pool_destroy(pool);
        }
        fake_stop(&f);
}

/* Sessions side by side: every one has a request in flight at once. */
static void test_pipelining(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        fake_go(&f);
        struct client_pool *pool = pool_open(&a, 1, 8, 1000, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                struct outcome o;
                memset(&o, 0, sizeof(o));
                int32_t s;
                uint32_t sent = 0;
                while ((s = client_pool_idle_session(pool)) >= 0) {
                        uint8_t *body = client_pool_body(pool, (uint32_t)s);
                        uint32_t size =
                            client_body_single_batch(body, sizeof(struct wire_transfer), 0);
                        CHECK_EQ_U64(client_pool_send(pool, (uint32_t)s, OPERATION_CREATE_TRANSFERS,
                                                      size, sent),
                                     CLIENT_OK);
                        sent++;
                }
                CHECK_EQ_U64(sent, 8);
                CHECK_EQ_U64(client_pool_in_flight(pool), 8);
                for (int i = 0; i < 500 && o.done < 8; i++)
                        client_pool_run(pool, 10, on_done, &o);
                CHECK_EQ_U64(o.ok, 8);
                client_pool_destroy(pool);
        }
        fake_stop(&f);
}

/* A dropped request is sent again after the timeout, byte for byte. */
static void test_retransmission(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        f.drop_requests = 2;
        fake_go(&f);
        struct client_pool *pool = pool_open(&a, 1, 1, 20, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                struct outcome o = one_request(pool, 0);
                CHECK_EQ_U64(o.ok, 1);
                CHECK_EQ_U64(o.send_count, 3);
                CHECK_EQ_U64(f.requests, 3);
                CHECK_EQ_U64(f.retransmissions, 2); /* same checksum: identical bytes */
                CHECK_EQ_U64(client_pool_stats(pool)->retransmissions, 2);
                /* The next request is new: a new checksum. */
                o = one_request(pool, 0);
                CHECK_EQ_U64(o.ok, 1);
                CHECK_EQ_U64(f.retransmissions, 2);
                client_pool_destroy(pool);
        }
        fake_stop(&f);
}

/* A connection closed by the server is reopened and the request in flight resent. */
static void test_reconnect(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        f.close_requests = 1;
        fake_go(&f);
        struct client_pool *pool = pool_open(&a, 1, 1, 2000, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                struct outcome o = one_request(pool, 0);
                CHECK_EQ_U64(o.ok, 1);
                CHECK_EQ_U64(f.requests, 2);
                CHECK_EQ_U64(f.retransmissions, 1);
                CHECK_EQ_U64(client_pool_stats(pool)->reconnects, 1);
                client_pool_destroy(pool);
        }
        fake_stop(&f);
}

/* Pongs tell the view; requests go to replica view % count and not to the others. */
static void test_primary_from_view(void)
{
        struct fake_replica f[3];
        struct address a[3];
        for (uint8_t i = 0; i < 3; i++) {
                fake_start(&f[i], i, &a[i]);
                f[i].view = 4; /* primary 4 % 3 = 1 */
                fake_go(&f[i]);
        }
        struct client_pool *pool = pool_open(a, 3, 2, 1000, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                CHECK_EQ_U64(client_pool_view(pool), 4);
                CHECK_EQ_U64(f[1].registers, 2);
                CHECK_EQ_U64(f[0].registers + f[2].registers, 0);
                struct outcome o = one_request(pool, 1);
                CHECK_EQ_U64(o.ok, 1);
                CHECK_EQ_U64(f[1].requests, 1);
                CHECK_EQ_U64(f[0].requests + f[2].requests, 0);
                client_pool_destroy(pool);
        }
        for (int i = 0; i < 3; i++)
                fake_stop(&f[i]);
}

/* When the primary guess is silent, the retransmission also goes to another replica. */
static void test_retransmission_reaches_a_backup(void)
{
        struct fake_replica f[2];
        struct address a[2];
        for (uint8_t i = 0; i < 2; i++) {
                fake_start(&f[i], i, &a[i]);
                fake_go(&f[i]);
        }
        struct client_pool *pool = pool_open(a, 2, 1, 20, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                f[0].silent = true;
                struct outcome o = one_request(pool, 0);
                CHECK_EQ_U64(o.ok, 1);
                CHECK(o.send_count >= 2);
                CHECK_EQ_U64(f[1].requests, 1);
                client_pool_destroy(pool);
        }
        for (int i = 0; i < 2; i++)
                fake_stop(&f[i]);
}

static void test_eviction(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        f.evict = true;
        fake_go(&f);
        struct client_pool *pool = pool_open(&a, 1, 1, 1000, 5000);
        CHECK(pool != NULL);
        if (pool != NULL) {
                struct outcome o = one_request(pool, 0);
                CHECK_EQ_U64(o.done, 1);
                CHECK_EQ_U64(o.result, (uint64_t)CLIENT_ERROR_EVICTED);
                CHECK_EQ_U64(o.eviction_reason, EVICTION_NO_SESSION);
                CHECK_EQ_U64(client_pool_idle_session(pool), (uint64_t)-1);
                client_pool_destroy(pool);
        }
        fake_stop(&f);
}

static void test_deadline(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        f.silent = true;
        fake_go(&f);
        struct client_pool *pool = pool_open(&a, 1, 1, 20, 200);
        CHECK(pool != NULL);
        if (pool != NULL) {
                struct outcome o = one_request(pool, 0);
                CHECK_EQ_U64(o.done, 1);
                CHECK_EQ_U64(o.result, (uint64_t)CLIENT_ERROR_TIMEOUT);
                CHECK(f.retransmissions >= 2);
                CHECK_EQ_U64(client_pool_idle_session(pool), (uint64_t)-1);
                client_pool_destroy(pool);
        }
        fake_stop(&f);
}

static void test_nobody_listening(void)
{
        struct fake_replica f;
        struct address a;
        fake_start(&f, 0, &a);
        close(f.listen_fd); /* the port is now closed */
        f.listen_fd = -1;
        free(f.buffer);
        struct client_pool_options options = {
            .addresses = &a, .address_count = 1, .session_count = 1};
        char error[256] = "";
        struct client_pool *pool = client_pool_create(&options, error, sizeof(error));
        CHECK(pool == NULL);
        CHECK(strstr(error, "no replica answered") != NULL);
}

static void test_single_batch_helpers(void)
{
        uint8_t body[256];
        memset(body, 0, sizeof(body));
        /* Two accounts: 256 + 128-byte trailer (124 x ff, count 2, batch count 1). */
        uint8_t big[512];
        CHECK_EQ_U64(client_body_single_batch(big, 128, 2), 384);
        CHECK_EQ_U64(big[256], 0xff);
        CHECK_EQ_U64(big[379], 0xff);
        CHECK_EQ_U64(big[380], 2);
        CHECK_EQ_U64(big[382], 1);
        /* The empty create reply: ff ff ff ff 00 00 01 00. */
        CHECK_EQ_U64(client_body_single_batch(body, 8, 0), 8);
        const uint8_t expected[8] = {0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0};
        CHECK(memcmp(body, expected, 8) == 0);
        const uint8_t *elements;
        uint32_t count = 99;
        CHECK(client_reply_single_batch(body, 8, 8, &elements, &count));
        CHECK_EQ_U64(count, 0);
        CHECK(!client_reply_single_batch(body, 7, 8, &elements, &count));
}

int main(void)
{
        TEST_RUN(test_single_batch_helpers);
        TEST_RUN(test_register_and_request);
        TEST_RUN(test_pipelining);
        TEST_RUN(test_retransmission);
        TEST_RUN(test_reconnect);
        TEST_RUN(test_primary_from_view);
        TEST_RUN(test_retransmission_reaches_a_backup);
        TEST_RUN(test_eviction);
        TEST_RUN(test_deadline);
        TEST_RUN(test_nobody_listening);
        TEST_MAIN_END();
}
