/*
 * io_epoll.c: the epoll backend of io.h, for where io_uring is forbidden (Docker's and
 * Kubernetes' default seccomp profiles, io_uring_disabled=2) or missing (kernels before 5.11).
 *
 * Every io_* call only queues. io_run hands the queue over in one go, as io_uring_enter does:
 *
 * Sockets. Each operation is tried once at once with a non-blocking system call (accept4; recv
 * and send with MSG_DONTWAIT; connect on a socket made O_NONBLOCK), as io_uring itself first
 * does. One that would block waits in its fd's queue, reads (accept, recv) and writes (connect,
 * send) apart, each first in first out, and the fd is armed in epoll with EPOLLONESHOT for what
 * its queues wait for: one epoll_ctl per wait, and nothing to undo when the caller closes the fd
 * (close removes it from the epoll set; a later file with the same number gets ENOENT from
 * EPOLL_CTL_MOD and is added again). The listening and connecting sockets are left O_NONBLOCK.
 *
 * Files. Reads, writes and fdatasync go to IO_EPOLL_WORKERS threads that run pread, pwrite and
 * fdatasync, put the operation on a done list and write an eventfd that epoll watches like a
 * socket. The loop thread never waits for the disk: a journal fdatasync of several milliseconds
 * stalls no client, and several writes (a journal slot, a checkpoint block) run at once.
 *
 * Finished operations wait on the ready list in the order they finished; io_run runs their
 * callbacks, and only io_run does. Everything is allocated in io_epoll_init and the queues are
 * intrusive (io_completion.next), so nothing allocates per operation.
 */
#include "io/io_epoll.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <signal.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

/*
 * File operation threads. The journal keeps up to three operations going per prepare (two
 * writes, then an fdatasync that covers several prepares) and a checkpoint four block writes
 * (STORAGE_CHECKPOINT_WRITES_IN_FLIGHT): four threads let a long fdatasync run while the next
 * prepares are written. More would only queue in the device; each costs a stack (8 MiB of
 * address space, a few KiB resident).
 */
#define IO_EPOLL_WORKERS 4u
/* Events taken per epoll_wait; more simply wait for the next call, which does not block. */
#define IO_EPOLL_EVENTS_MAX 256
/* The fd table's limit (RLIMIT_NOFILE above it is ignored): 40 bytes an fd of address space,
 * touched only for the fds in use. */
#define IO_EPOLL_FDS_MAX (1u << 20)
/* The eventfd's epoll tag: never an fd. */
#define EVENT_FD_TAG UINT64_MAX

struct fd_waiters {
        struct io_queue read;  /* accept, recv */
        struct io_queue write; /* connect, send */
        uint32_t armed;     /* events asked of epoll and not yet reported (EPOLLONESHOT) */
        bool registered;    /* added to the epoll set, maybe for an earlier file of this number */
};

struct io_epoll {
        int epoll_fd;
        int event_fd;
        bool pwait2_missing;    /* epoll_pwait2 refused (before 5.11, or seccomp): ms timeouts */
        struct fd_waiters *fds; /* indexed by fd */
        uint32_t fd_count;
        struct io_queue submitted; /* queued by io_*, handed over by the next io_run */
        struct io_queue ready;     /* finished, callbacks not yet run */
        uint64_t waiting;       /* socket operations in fd queues */
        uint64_t in_workers;    /* file operations handed to the threads and not yet back */
        /* Shared with the threads, under `mutex`. */
        pthread_mutex_t mutex;
        pthread_cond_t work_added;
        struct io_queue work;
        struct io_queue done;
        bool stopping;
        uint32_t thread_count;
        pthread_t threads[IO_EPOLL_WORKERS];
        struct epoll_event events[IO_EPOLL_EVENTS_MAX];
};

/* Moves all of `from` to the end of `to`. */
static void queue_append(struct io_queue *to, struct io_queue *from)
{
        if (from->head == NULL)
                return;
        if (to->tail != NULL)
                to->tail->next = from->head;
        else
                to->head = from->head;
        to->tail = from->tail;
        from->head = NULL;
        from->tail = NULL;
}

static void finish(struct io_epoll *e, struct io_completion *c, int32_t result)
{
        c->result = result;
        io_queue_push(&e->ready, c);
}

/* ---- files, on the threads ------------------------------------------------------------------ */

static int32_t file_operation(const struct io_completion *c)
{
        ssize_t n = -1;
        /* Signals are blocked on these threads, so EINTR is not expected: retry a few times. */
        for (uint32_t attempt = 0; attempt < 8; attempt++) {
                switch (c->opcode) {
                case IORING_OP_READ:
                        n = pread(c->fd, c->buffer, c->size, (off_t)c->offset);
                        break;
                case IORING_OP_WRITE: {
                        struct iovec iov = {.iov_base = c->buffer, .iov_len = c->size};
                        n = pwritev2(c->fd, &iov, 1, (off_t)c->offset,
                                     c->durable ? RWF_DSYNC : 0);
                        break;
                }
                case IORING_OP_FSYNC:
                        n = fdatasync(c->fd);
                        break;
                default:
                        tally_assert(false);
                }
                if (n >= 0 || errno != EINTR)
                        break;
        }
        if (n < 0)
                return -errno;
        tally_assert((uint64_t)n <= c->size);
        return (int32_t)n;
}

static void *worker_main(void *context)
{
        struct io_epoll *e = context;
        for (;;) {
                pthread_mutex_lock(&e->mutex);
                while (!e->stopping && e->work.head == NULL)
                        pthread_cond_wait(&e->work_added, &e->mutex);
                if (e->stopping) {
                        pthread_mutex_unlock(&e->mutex);
                        return NULL;
                }
                struct io_completion *c = io_queue_pop(&e->work);
                pthread_mutex_unlock(&e->mutex);
                c->result = file_operation(c);
                pthread_mutex_lock(&e->mutex);
                /* Only the first of a batch signals: the loop takes the whole list at once. */
                bool signal_loop = e->done.head == NULL;
                io_queue_push(&e->done, c);
                pthread_mutex_unlock(&e->mutex);
                if (signal_loop) {
                        uint64_t one = 1;
                        ssize_t n = write(e->event_fd, &one, sizeof(one));
                        tally_assert(n == (ssize_t)sizeof(one) || errno == EAGAIN);
                }
        }
}

/* The eventfd fired: every finished file operation joins the ready list. */
static void files_done(struct io_epoll *e)
{
        /* Read first, then take the list: an operation finished in between signals again. */
        uint64_t count;
        ssize_t n = read(e->event_fd, &count, sizeof(count));
        tally_assert(n == (ssize_t)sizeof(count) || errno == EAGAIN);
        pthread_mutex_lock(&e->mutex);
        struct io_queue done = e->done;
        e->done.head = NULL;
        e->done.tail = NULL;
        pthread_mutex_unlock(&e->mutex);
        for (struct io_completion *c = done.head; c != NULL; c = c->next) {
                tally_assert(e->in_workers > 0);
                e->in_workers--;
        }
        queue_append(&e->ready, &done);
}

static void files_submit(struct io_epoll *e, struct io_queue *files, uint32_t count)
{
        tally_assert(count > 0 && files->head != NULL);
        pthread_mutex_lock(&e->mutex);
        queue_append(&e->work, files);
        if (count == 1)
                pthread_cond_signal(&e->work_added);
        else
                pthread_cond_broadcast(&e->work_added);
        pthread_mutex_unlock(&e->mutex);
        e->in_workers += count;
}

/* ---- sockets, on the loop ------------------------------------------------------------------- */

static int set_nonblocking(int fd)
{
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return -errno;
        if ((flags & O_NONBLOCK) == 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
                return -errno;
        return 0;
}

/* The connect's outcome once epoll reported its socket; -EAGAIN if it is still under way. */
static int32_t connect_outcome(const struct io_completion *c, bool hangup)
{
        int err = 0;
        socklen_t size = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &size) != 0)
                return -errno;
        if (err != 0)
                return -err;
        struct sockaddr_storage peer;
        socklen_t peer_size = sizeof(peer);
        if (getpeername(c->fd, (struct sockaddr *)&peer, &peer_size) == 0)
                return 0;
        if (errno != ENOTCONN)
                return -errno;
        return hangup ? -ECONNRESET : -EAGAIN;
}

/*
 * One non-blocking attempt at a socket operation: its result, or -EAGAIN to wait for epoll. A
 * connect is started by the first attempt (c->result = -EINPROGRESS marks it started) and
 * checked by the next ones.
 */
static int32_t socket_attempt(struct io_completion *c, bool hangup)
{
        ssize_t n;
        switch (c->opcode) {
        case IORING_OP_ACCEPT: {
                int rc = set_nonblocking(c->fd);
                if (rc < 0)
                        return rc;
                c->address_size = sizeof(c->address);
                n = accept4(c->fd, (struct sockaddr *)&c->address, &c->address_size,
                            SOCK_CLOEXEC | SOCK_NONBLOCK);
                break;
        }
        case IORING_OP_RECV:
                n = recv(c->fd, c->buffer, c->size, MSG_DONTWAIT);
                break;
        case IORING_OP_SEND:
                n = send(c->fd, c->buffer, c->size, MSG_DONTWAIT | MSG_NOSIGNAL);
                break;
        case IORING_OP_CONNECT: {
                if (c->result == -EINPROGRESS)
                        return connect_outcome(c, hangup);
                int rc = set_nonblocking(c->fd);
                if (rc < 0)
                        return rc;
                if (connect(c->fd, (const struct sockaddr *)&c->address, c->address_size) == 0)
                        return 0;
                if (errno != EINPROGRESS && errno != EINTR)
                        return -errno;
                c->result = -EINPROGRESS;
                return -EAGAIN;
        }
        default:
                tally_assert(false);
                return -EINVAL;
        }
        if (n >= 0)
                return (int32_t)n;
        if (errno == EWOULDBLOCK || errno == EINTR)
                return -EAGAIN;
        return -errno;
}

static struct fd_waiters *fd_waiters(struct io_epoll *e, int fd)
{
        if (fd < 0 || (uint32_t)fd >= e->fd_count)
                return NULL;
        return &e->fds[fd];
}

static void waiters_fail(struct io_epoll *e, struct fd_waiters *w, int32_t result)
{
        struct io_completion *c;
        while ((c = io_queue_pop(&w->read)) != NULL || (c = io_queue_pop(&w->write)) != NULL) {
                tally_assert(e->waiting > 0);
                e->waiting--;
                finish(e, c, result);
        }
}

/* Asks epoll, once, for what the fd's queues wait for. */
static void fd_arm(struct io_epoll *e, int fd, struct fd_waiters *w)
{
        uint32_t want = 0;
        if (w->read.head != NULL)
                want |= EPOLLIN | EPOLLRDHUP;
        if (w->write.head != NULL)
                want |= EPOLLOUT;
        if (want == 0 || want == w->armed)
                return;
        struct epoll_event event = {.events = want | EPOLLONESHOT, .data.u64 = (uint64_t)fd};
        int rc = epoll_ctl(e->epoll_fd, w->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event);
        if (rc != 0 && errno == ENOENT)
                rc = epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, fd, &event);
        else if (rc != 0 && errno == EEXIST)
                rc = epoll_ctl(e->epoll_fd, EPOLL_CTL_MOD, fd, &event);
        if (rc != 0) {
                /* Not pollable (EPERM: a regular file) or out of memory: fail what waits. */
                int err = errno;
                w->armed = 0;
                waiters_fail(e, w, -err);
                return;
        }
        w->registered = true;
        w->armed = want;
}

static void socket_submit(struct io_epoll *e, struct io_completion *c)
{
        struct fd_waiters *w = fd_waiters(e, c->fd);
        if (w == NULL) {
                finish(e, c, c->fd < 0 ? -EBADF : -EMFILE);
                return;
        }
        bool reads = c->opcode == IORING_OP_ACCEPT || c->opcode == IORING_OP_RECV;
        struct io_queue *q = reads ? &w->read : &w->write;
        /* Behind others of its kind it waits its turn: no overtaking on one fd. */
        if (q->head == NULL) {
                int32_t result = socket_attempt(c, false);
                if (result != -EAGAIN) {
                        finish(e, c, result);
                        return;
                }
        }
        io_queue_push(q, c);
        e->waiting++;
        fd_arm(e, c->fd, w);
}

/* Retries the queue's operations in order until one would block again. */
static void queue_retry(struct io_epoll *e, struct io_queue *q, bool hangup)
{
        while (q->head != NULL) {
                int32_t result = socket_attempt(q->head, hangup);
                if (result == -EAGAIN)
                        return;
                tally_assert(e->waiting > 0);
                e->waiting--;
                finish(e, io_queue_pop(q), result);
        }
}

static void fd_ready(struct io_epoll *e, int fd, uint32_t events)
{
        struct fd_waiters *w = fd_waiters(e, fd);
        tally_assert(w != NULL);
        w->armed = 0; /* EPOLLONESHOT: reported, so disarmed */
        bool hangup = (events & (EPOLLHUP | EPOLLERR)) != 0;
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                queue_retry(e, &w->read, hangup);
        if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                queue_retry(e, &w->write, hangup);
        fd_arm(e, fd, w);
}

/* ---- the loop ------------------------------------------------------------------------------- */

void io_epoll_submit(struct io *io, struct io_completion *c)
{
        tally_assert(io->backend == IO_BACKEND_EPOLL);
        tally_assert(c->callback != NULL);
        io_queue_push(&io->epoll->submitted, c);
}

/* Hands every queued operation over: sockets tried now, files to the threads. */
static void submit_all(struct io_epoll *e)
{
        struct io_queue files = {NULL, NULL};
        uint32_t file_count = 0;
        struct io_completion *c;
        while ((c = io_queue_pop(&e->submitted)) != NULL) {
                if (c->opcode == IORING_OP_READ || c->opcode == IORING_OP_WRITE ||
                    c->opcode == IORING_OP_FSYNC) {
                        io_queue_push(&files, c);
                        file_count++;
                } else {
                        socket_submit(e, c);
                }
        }
        if (file_count > 0)
                files_submit(e, &files, file_count);
}

void io_epoll_submit_now(struct io *io)
{
        tally_assert(io->backend == IO_BACKEND_EPOLL);
        submit_all(io->epoll);
}

static int wait_events(struct io_epoll *e, uint64_t wait_ns)
{
        int n = -1;
        if (!e->pwait2_missing) {
                struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000ull),
                                      .tv_nsec = (long)(wait_ns % 1000000000ull)};
                n = epoll_pwait2(e->epoll_fd, e->events, IO_EPOLL_EVENTS_MAX, &ts, NULL);
                if (n < 0 && (errno == ENOSYS || errno == EPERM))
                        e->pwait2_missing = true;
        }
        if (e->pwait2_missing) {
                /* Milliseconds, rounded up: io_run never returns before its deadline. */
                uint64_t ms = (wait_ns + 999999ull) / 1000000ull;
                n = epoll_wait(e->epoll_fd, e->events, IO_EPOLL_EVENTS_MAX,
                               (int)MIN(ms, (uint64_t)INT_MAX));
        }
        if (n < 0) {
                int err = errno;
                if (err == EINTR)
                        return 0;
                log_error("epoll_wait failed error=%s", strerror(err));
                return -err;
        }
        tally_assert(n <= IO_EPOLL_EVENTS_MAX);
        for (int i = 0; i < n; i++) {
                if (e->events[i].data.u64 == EVENT_FD_TAG)
                        files_done(e);
                else
                        fd_ready(e, (int)e->events[i].data.u64, e->events[i].events);
        }
        return 0;
}

/* Runs the callbacks of everything that finished; returns how many ran. */
static uint32_t run_ready(struct io *io)
{
        struct io_epoll *e = io->epoll;
        struct io_completion *c = e->ready.head;
        e->ready.head = NULL;
        e->ready.tail = NULL;
        uint32_t count = 0;
        while (c != NULL) {
                /* The callback may submit `c` again, which rewrites c->next. */
                struct io_completion *next = c->next;
                int32_t result = c->result;
                if (io->fault != NULL)
                        result = io->fault(io->fault_context, c, result);
                c->callback(c, result);
                c = next;
                count++;
        }
        return count;
}

int io_epoll_run(struct io *io, uint64_t timeout_ns, bool return_early)
{
        tally_assert(io->backend == IO_BACKEND_EPOLL);
        struct io_epoll *e = io->epoll;
        uint64_t deadline = io_monotonic_ns() + timeout_ns;
        for (;;) {
                submit_all(e);
                uint64_t now = io_monotonic_ns();
                uint64_t wait = e->ready.head != NULL || io->deferred.head != NULL ||
                                                now >= deadline
                                        ? 0
                                        : deadline - now;
                int rc = wait_events(e, wait);
                if (rc < 0)
                        return rc;
                uint32_t ran = run_ready(io);
                if (io->deferred.head != NULL) {
                        /* What the completions queued goes first, and what completes at once
                         * runs first too, as in io.c. */
                        for (uint32_t round = 0; round < IO_DEFER_ROUNDS_MAX; round++) {
                                submit_all(e);
                                if (e->ready.head == NULL)
                                        break;
                                ran += run_ready(io);
                        }
                        submit_all(e);
                        ran += io_deferred_run(io);
                }
                if (io_monotonic_ns() >= deadline || (return_early && ran > 0)) {
                        /* Hand what the callbacks queued over before returning, as io.c does. */
                        submit_all(e);
                        return 0;
                }
        }
}

/* ---- set-up --------------------------------------------------------------------------------- */

static uint32_t fd_table_count(void)
{
        struct rlimit limit;
        if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY)
                return IO_EPOLL_FDS_MAX;
        return (uint32_t)MAX(MIN(limit.rlim_cur, (rlim_t)IO_EPOLL_FDS_MAX), (rlim_t)1024);
}

static void teardown(struct io_epoll *e)
{
        pthread_mutex_lock(&e->mutex);
        e->stopping = true;
        pthread_cond_broadcast(&e->work_added);
        pthread_mutex_unlock(&e->mutex);
        for (uint32_t i = 0; i < e->thread_count; i++)
                pthread_join(e->threads[i], NULL);
        pthread_cond_destroy(&e->work_added);
        pthread_mutex_destroy(&e->mutex);
        if (e->fds != NULL)
                munmap(e->fds, (size_t)e->fd_count * sizeof(struct fd_waiters));
        if (e->event_fd >= 0)
                close(e->event_fd);
        if (e->epoll_fd >= 0)
                close(e->epoll_fd);
        free(e);
}

/* Starts the threads with every signal blocked, so that SIGTERM and SIGINT reach the loop. */
static int workers_start(struct io_epoll *e)
{
        sigset_t all, previous;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        int rc = 0;
        while (e->thread_count < IO_EPOLL_WORKERS) {
                rc = pthread_create(&e->threads[e->thread_count], NULL, worker_main, e);
                if (rc != 0)
                        break;
                e->thread_count++;
        }
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
        return -rc;
}

int io_epoll_init(struct io *io)
{
        tally_assert(io->epoll == NULL);
        struct io_epoll *e = calloc(1, sizeof(*e));
        if (e == NULL) {
                log_error("epoll backend: cannot allocate its state");
                return -ENOMEM;
        }
        e->epoll_fd = -1;
        e->event_fd = -1;
        pthread_mutex_init(&e->mutex, NULL);
        pthread_cond_init(&e->work_added, NULL);
        const char *step = "epoll_create1";
        int rc = 0;
        e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (e->epoll_fd < 0)
                goto fail_errno;
        step = "eventfd";
        e->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (e->event_fd < 0)
                goto fail_errno;
        struct epoll_event event = {.events = EPOLLIN, .data.u64 = EVENT_FD_TAG};
        if (epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, e->event_fd, &event) != 0)
                goto fail_errno;
        step = "mmap";
        e->fd_count = fd_table_count();
        void *fds =
            mmap(NULL, (size_t)e->fd_count * sizeof(struct fd_waiters), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (fds == MAP_FAILED)
                goto fail_errno;
        e->fds = fds;
        step = "pthread_create";
        rc = workers_start(e);
        if (rc != 0)
                goto fail;
        io->epoll = e;
        io->backend = IO_BACKEND_EPOLL;
        return 0;
fail_errno:
        rc = -errno;
fail:
        log_error("epoll backend: cannot start step=%s error=%s", step, strerror(-rc));
        teardown(e);
        return rc;
}

void io_epoll_deinit(struct io *io)
{
        tally_assert(io->backend == IO_BACKEND_EPOLL);
        if (io->epoll == NULL)
                return;
        teardown(io->epoll);
        io->epoll = NULL;
}
