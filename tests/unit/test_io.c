/*
 * test_io.c: the event loop's contract for durable writes and deferred work, on both backends
 * (io_uring where the kernel allows it, and epoll): a durable write lands whole, and a deferred
 * callback runs only after the completions that were ready and after what their callbacks
 * queued has gone to the kernel (the replica executes its next op there: a request that arrived
 * meanwhile must be journaled first).
 */
#include "io/io.h"
#include "lib/log.h"
#include "test.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char path[64];

struct order {
        char events[16];
        uint32_t count;
        int fd;
        int peer;
        struct io *io;
        struct io_completion send_completion;
        struct io_completion recv_completion;
        struct io_completion deferred;
        struct io_completion deferred_again;
        uint8_t recv_buffer[8];
        uint32_t deferred_runs;
};

static void note(struct order *o, char event)
{
        if (o->count < sizeof(o->events) - 1)
                o->events[o->count++] = event;
}

static void on_write(struct io_completion *c, int32_t result)
{
        *(int32_t *)c->context = result;
}

static void test_durable_write(struct io *io)
{
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        CHECK(fd >= 0);
        uint8_t data[3000];
        for (uint32_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t)(i * 7 + 1);
        int32_t result = 1;
        struct io_completion c = {.callback = on_write, .context = &result};
        io_write_durable(io, &c, fd, data, sizeof(data), 4096);
        CHECK(c.durable);
        for (uint32_t i = 0; i < 100 && result == 1; i++)
                CHECK_EQ_U64(io_run(io, 10000000ull, true), 0);
        CHECK_EQ_U64((uint64_t)result, sizeof(data));
        uint8_t back[sizeof(data)];
        CHECK_EQ_U64((uint64_t)pread(fd, back, sizeof(back), 4096), sizeof(back));
        CHECK(memcmp(back, data, sizeof(data)) == 0);
        /* A plain write on the same completion is not durable any more. */
        result = 1;
        io_write(io, &c, fd, data, 10, 0);
        CHECK(!c.durable);
        for (uint32_t i = 0; i < 100 && result == 1; i++)
                CHECK_EQ_U64(io_run(io, 10000000ull, true), 0);
        CHECK_EQ_U64((uint64_t)result, 10);
        close(fd);
        unlink(path);
}

static void on_deferred_again(struct io_completion *c, int32_t result)
{
        struct order *o = c->context;
        CHECK_EQ_U64((uint64_t)result, 0);
        note(o, 'a');
}

static void on_send(struct io_completion *c, int32_t result)
{
        (void)c;
        CHECK_EQ_U64((uint64_t)result, 1);
}

/* The recv's callback queues a send, as a replica queues a journal write for a request. */
static void on_recv(struct io_completion *c, int32_t result)
{
        struct order *o = c->context;
        CHECK_EQ_U64((uint64_t)result, 1);
        note(o, 'r');
        o->send_completion.callback = on_send;
        o->send_completion.context = o;
        io_send(o->io, &o->send_completion, o->fd, "z", 1);
}

static void on_deferred(struct io_completion *c, int32_t result)
{
        struct order *o = c->context;
        CHECK_EQ_U64((uint64_t)result, 0);
        o->deferred_runs++;
        note(o, 'd');
        /* The send the recv's callback queued has reached the kernel already. */
        char byte = 0;
        if (recv(o->peer, &byte, 1, MSG_DONTWAIT) == 1 && byte == 'z')
                note(o, 'z');
        /* Deferred from a deferred callback: runs on a later turn, not in this one. */
        o->deferred_again.callback = on_deferred_again;
        o->deferred_again.context = o;
        io_defer(o->io, &o->deferred_again);
        note(o, 'q');
}

static void test_defer_order(struct io *io)
{
        int pair[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
        static struct order o;
        memset(&o, 0, sizeof(o));
        o.io = io;
        o.fd = pair[0];
        o.peer = pair[1];
        /* A byte is waiting: its recv completes on the first turn. */
        CHECK(write(pair[1], "x", 1) == 1);
        o.recv_completion.callback = on_recv;
        o.recv_completion.context = &o;
        io_recv(io, &o.recv_completion, pair[0], o.recv_buffer, sizeof(o.recv_buffer));
        o.deferred.callback = on_deferred;
        o.deferred.context = &o;
        io_defer(io, &o.deferred);
        /* Nothing runs inside the submitting call. */
        CHECK_EQ_U64(o.count, 0);
        /* A deferred callback does not make io_run wait for its timeout. */
        uint64_t started = io_monotonic_ns();
        for (uint32_t i = 0; i < 10 && o.count < 5; i++)
                CHECK_EQ_U64(io_run(io, 2000000000ull, true), 0);
        CHECK(io_monotonic_ns() - started < 1000000000ull);
        CHECK_EQ_U64(o.deferred_runs, 1);
        /* recv, then the deferred callback (which sees the recv's send out), then the one it
         * deferred, on a later turn. */
        CHECK(strcmp(o.events, "rdzqa") == 0);
        close(pair[0]);
        close(pair[1]);
}

static void run_backend(const char *name)
{
        setenv("TALLY_IO", name, 1);
        struct io io;
        if (io_init(&io, 64) != 0) {
                /* io_uring may be forbidden here (seccomp): the epoll run still covers the
                 * contract. */
                CHECK(strcmp(name, "io_uring") == 0);
                return;
        }
        test_durable_write(&io);
        test_defer_order(&io);
        io_deinit(&io);
}

static void test_io_uring(void)
{
        run_backend("io_uring");
}

static void test_epoll(void)
{
        run_backend("epoll");
}

int main(void)
{
        log_set_level(LOG_OFF);
        snprintf(path, sizeof(path), "/tmp/tally-test-io.%d", (int)getpid());
        TEST_RUN(test_io_uring);
        TEST_RUN(test_epoll);
        TEST_MAIN_END();
}
