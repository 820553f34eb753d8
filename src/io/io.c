/*
 * io.c: the io.h interface, its choice of backend, and the io_uring backend: a minimal io_uring
 * driver over raw system calls (the epoll backend is io_epoll.c).
 *
 * Submissions are written into the shared ring and handed to the kernel in one io_uring_enter
 * per loop iteration, so a burst of sends, writes and receives costs one system call. When the
 * ring is full, completions wait in an overflow list and are submitted as slots free up; no
 * operation is ever dropped. The sqe's user_data is the struct io_completion pointer.
 */
#include "io/io.h"
#include "io/io_epoll.h"
#include "lib/log.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int sys_io_uring_setup(uint32_t entries, struct io_uring_params *params)
{
        return (int)syscall(__NR_io_uring_setup, entries, params);
}

static int sys_io_uring_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags,
                              void *arg, size_t arg_size)
{
        return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg,
                            arg_size);
}

static void uring_unmap(struct io *io)
{
        if (io->sqes != NULL && io->sqes != MAP_FAILED)
                munmap(io->sqes, io->sqes_size);
        if (io->cq_ring != NULL && io->cq_ring != MAP_FAILED)
                munmap(io->cq_ring, io->cq_ring_size);
        if (io->sq_ring != NULL && io->sq_ring != MAP_FAILED)
                munmap(io->sq_ring, io->sq_ring_size);
}

/* Sets up the ring; returns 0, or -errno with nothing left open. Logs nothing: the caller
 * decides whether a failure is an error or a reason to fall back. */
static int uring_init(struct io *io, uint32_t entries)
{
        struct io_uring_params params;
        memset(&params, 0, sizeof(params));
        params.flags = IORING_SETUP_CQSIZE;
        params.cq_entries = entries * 4;
        int fd = sys_io_uring_setup(entries, &params);
        if (fd < 0)
                return -errno;
        if (!(params.features & IORING_FEAT_EXT_ARG)) {
                /* io_uring_enter with a timeout needs kernel 5.11 or newer. */
                close(fd);
                return -ENOSYS;
        }
        io->ring_fd = fd;
        io->sq_entries = params.sq_entries;
        io->cq_entries = params.cq_entries;
        io->sq_ring_size = params.sq_off.array + params.sq_entries * sizeof(uint32_t);
        io->cq_ring_size = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
        io->sqes_size = params.sq_entries * sizeof(struct io_uring_sqe);
        io->sq_ring = mmap(NULL, io->sq_ring_size, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
        io->cq_ring = mmap(NULL, io->cq_ring_size, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        io->sqes = mmap(NULL, io->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                        fd, IORING_OFF_SQES);
        if (io->sq_ring == MAP_FAILED || io->cq_ring == MAP_FAILED || io->sqes == MAP_FAILED) {
                int err = errno;
                uring_unmap(io);
                close(fd);
                return -err;
        }
        uint8_t *sq = io->sq_ring;
        uint8_t *cq = io->cq_ring;
        io->sq_head = (uint32_t *)(sq + params.sq_off.head);
        io->sq_tail = (uint32_t *)(sq + params.sq_off.tail);
        io->sq_mask = (uint32_t *)(sq + params.sq_off.ring_mask);
        io->sq_array = (uint32_t *)(sq + params.sq_off.array);
        io->cq_head = (uint32_t *)(cq + params.cq_off.head);
        io->cq_tail = (uint32_t *)(cq + params.cq_off.tail);
        io->cq_mask = (uint32_t *)(cq + params.cq_off.ring_mask);
        io->cqes = (struct io_uring_cqe *)(cq + params.cq_off.cqes);
        io->backend = IO_BACKEND_IO_URING;
        return 0;
}

static const char *errno_name(int err)
{
        const char *name = strerrorname_np(err);
        return name != NULL ? name : "unknown";
}

/* The fallback is said once per process, however many loops it runs (tests run several). */
static bool backend_logged;

int io_init(struct io *io, uint32_t entries)
{
        memset(io, 0, sizeof(*io));
        const char *choice = getenv("TALLY_IO");
        bool automatic = choice == NULL || choice[0] == '\0' || strcmp(choice, "auto") == 0;
        if (automatic || strcmp(choice, "io_uring") == 0) {
                int rc = uring_init(io, entries);
                if (rc == 0)
                        return 0;
                if (!automatic) {
                        log_error("io_uring unavailable (%s) and TALLY_IO=io_uring error=%s",
                                  errno_name(-rc), strerror(-rc));
                        return rc;
                }
                memset(io, 0, sizeof(*io));
                if (!backend_logged)
                        log_info("io_uring unavailable (%s): using the epoll backend",
                                 errno_name(-rc));
        } else if (strcmp(choice, "epoll") == 0) {
                if (!backend_logged)
                        log_info("using the epoll backend (TALLY_IO=epoll)");
        } else {
                log_error("TALLY_IO must be io_uring, epoll or auto value=%s", choice);
                return -EINVAL;
        }
        backend_logged = true;
        return io_epoll_init(io);
}

const char *io_backend_name(const struct io *io)
{
        return io->backend == IO_BACKEND_EPOLL ? "epoll" : "io_uring";
}

void io_deinit(struct io *io)
{
        if (io->backend == IO_BACKEND_EPOLL) {
                io_epoll_deinit(io);
                return;
        }
        if (io->ring_fd <= 0)
                return;
        uring_unmap(io);
        close(io->ring_fd);
        io->ring_fd = -1;
}

/* Fills a free sqe for `c`; false if the ring has no free slot. */
static bool sqe_fill(struct io *io, struct io_completion *c)
{
        uint32_t head = __atomic_load_n(io->sq_head, __ATOMIC_ACQUIRE);
        uint32_t tail = *io->sq_tail;
        if (tail - head >= io->sq_entries)
                return false;
        uint32_t index = tail & *io->sq_mask;
        struct io_uring_sqe *sqe = &io->sqes[index];
        memset(sqe, 0, sizeof(*sqe));
        sqe->opcode = c->opcode;
        sqe->fd = c->fd;
        sqe->user_data = (uint64_t)(uintptr_t)c;
        if (c->background)
                sqe->flags |= IOSQE_ASYNC;
        switch (c->opcode) {
        case IORING_OP_ACCEPT:
                c->address_size = sizeof(c->address);
                sqe->addr = (uint64_t)(uintptr_t)&c->address;
                sqe->addr2 = (uint64_t)(uintptr_t)&c->address_size;
                sqe->accept_flags = SOCK_CLOEXEC;
                break;
        case IORING_OP_RECV:
        case IORING_OP_SEND:
                sqe->addr = (uint64_t)(uintptr_t)c->buffer;
                sqe->len = c->size;
                sqe->msg_flags = c->opcode == IORING_OP_SEND ? MSG_NOSIGNAL : 0;
                break;
        case IORING_OP_CONNECT:
                sqe->addr = (uint64_t)(uintptr_t)&c->address;
                sqe->off = c->address_size;
                break;
        case IORING_OP_READ:
        case IORING_OP_WRITE:
                sqe->addr = (uint64_t)(uintptr_t)c->buffer;
                sqe->len = c->size;
                sqe->off = c->offset;
                sqe->rw_flags = c->durable ? RWF_DSYNC : 0;
                break;
        case IORING_OP_FSYNC:
                sqe->fsync_flags = IORING_FSYNC_DATASYNC;
                break;
        default:
                tally_assert(false);
        }
        io->sq_array[index] = index;
        __atomic_store_n(io->sq_tail, tail + 1, __ATOMIC_RELEASE);
        io->sq_pending++;
        return true;
}

static void enqueue(struct io *io, struct io_completion *c)
{
        tally_assert(c->callback != NULL);
        c->next = NULL;
        if (io->backend == IO_BACKEND_EPOLL) {
                io_epoll_submit(io, c);
                return;
        }
        tally_assert(io->backend == IO_BACKEND_IO_URING);
        if (io->overflow.head == NULL && sqe_fill(io, c))
                return;
        io_queue_push(&io->overflow, c);
}

static void prepare(struct io_completion *c, uint8_t opcode, int fd, void *buffer, uint32_t size,
                    uint64_t offset)
{
        c->opcode = opcode;
        c->fd = fd;
        c->buffer = buffer;
        c->size = size;
        c->offset = offset;
        c->result = 0;
        c->durable = false;
}

void io_accept(struct io *io, struct io_completion *c, int fd)
{
        prepare(c, IORING_OP_ACCEPT, fd, NULL, 0, 0);
        enqueue(io, c);
}

void io_recv(struct io *io, struct io_completion *c, int fd, void *buffer, uint32_t size)
{
        prepare(c, IORING_OP_RECV, fd, buffer, size, 0);
        enqueue(io, c);
}

void io_send(struct io *io, struct io_completion *c, int fd, const void *buffer, uint32_t size)
{
        prepare(c, IORING_OP_SEND, fd, (void *)buffer, size, 0);
        enqueue(io, c);
}

void io_connect(struct io *io, struct io_completion *c, int fd, const struct sockaddr *address,
                socklen_t address_size)
{
        tally_assert(address_size <= sizeof(c->address));
        prepare(c, IORING_OP_CONNECT, fd, NULL, 0, 0);
        memcpy(&c->address, address, address_size);
        c->address_size = address_size;
        enqueue(io, c);
}

void io_read(struct io *io, struct io_completion *c, int fd, void *buffer, uint32_t size,
             uint64_t offset)
{
        prepare(c, IORING_OP_READ, fd, buffer, size, offset);
        enqueue(io, c);
}

void io_write(struct io *io, struct io_completion *c, int fd, const void *buffer, uint32_t size,
              uint64_t offset)
{
        prepare(c, IORING_OP_WRITE, fd, (void *)buffer, size, offset);
        enqueue(io, c);
}

void io_write_durable(struct io *io, struct io_completion *c, int fd, const void *buffer,
                      uint32_t size, uint64_t offset)
{
        prepare(c, IORING_OP_WRITE, fd, (void *)buffer, size, offset);
        c->durable = true;
        enqueue(io, c);
}

void io_fsync(struct io *io, struct io_completion *c, int fd)
{
        prepare(c, IORING_OP_FSYNC, fd, NULL, 0, 0);
        enqueue(io, c);
}

static void flush_overflow(struct io *io)
{
        while (io->overflow.head != NULL && sqe_fill(io, io->overflow.head))
                io_queue_pop(&io->overflow);
}

/* Runs every completion in the ring; returns how many ran. */
static uint32_t reap(struct io *io)
{
        uint32_t count = 0;
        for (;;) {
                uint32_t head = *io->cq_head;
                uint32_t tail = __atomic_load_n(io->cq_tail, __ATOMIC_ACQUIRE);
                if (head == tail)
                        break;
                struct io_uring_cqe *cqe = &io->cqes[head & *io->cq_mask];
                struct io_completion *c = (struct io_completion *)(uintptr_t)cqe->user_data;
                int32_t result = cqe->res;
                __atomic_store_n(io->cq_head, head + 1, __ATOMIC_RELEASE);
                tally_assert(io->in_flight > 0);
                io->in_flight--;
                count++;
                if (io->fault != NULL)
                        result = io->fault(io->fault_context, c, result);
                c->callback(c, result);
        }
        return count;
}

static int enter(struct io *io, uint32_t min_complete, uint64_t timeout_ns)
{
        flush_overflow(io);
        uint32_t to_submit = io->sq_pending;
        struct __kernel_timespec ts = {
                .tv_sec = (long long)(timeout_ns / 1000000000ull),
                .tv_nsec = (long long)(timeout_ns % 1000000000ull),
        };
        struct io_uring_getevents_arg arg = {.ts = (uint64_t)(uintptr_t)&ts};
        uint32_t flags = IORING_ENTER_EXT_ARG;
        if (min_complete > 0)
                flags |= IORING_ENTER_GETEVENTS;
        int submitted = sys_io_uring_enter(io->ring_fd, to_submit, min_complete, flags, &arg,
                                           sizeof(arg));
        if (submitted < 0) {
                int err = errno;
                if (err == ETIME || err == EINTR || err == EAGAIN || err == EBUSY)
                        return 0;
                log_error("io_uring_enter failed error=%s", strerror(err));
                return -err;
        }
        tally_assert((uint32_t)submitted <= io->sq_pending);
        io->sq_pending -= (uint32_t)submitted;
        io->in_flight += (uint64_t)submitted;
        return 0;
}

void io_defer(struct io *io, struct io_completion *c)
{
        tally_assert(c->callback != NULL);
        io_queue_push(&io->deferred, c);
}

uint32_t io_deferred_run(struct io *io)
{
        struct io_completion *c = io->deferred.head;
        io->deferred = (struct io_queue){NULL, NULL};
        uint32_t count = 0;
        while (c != NULL) {
                struct io_completion *next = c->next; /* the callback may defer it again */
                c->callback(c, 0);
                c = next;
                count++;
        }
        return count;
}

void io_submit(struct io *io)
{
        if (io->backend == IO_BACKEND_EPOLL) {
                io_epoll_submit_now(io);
                return;
        }
        if (io->sq_pending > 0 || io->overflow.head != NULL)
                (void)enter(io, 0, 0); /* a failure shows again in the next io_run */
}

int io_run(struct io *io, uint64_t timeout_ns, bool return_early)
{
        if (io->backend == IO_BACKEND_EPOLL)
                return io_epoll_run(io, timeout_ns, return_early);
        tally_assert(io->backend == IO_BACKEND_IO_URING);
        uint64_t deadline = io_monotonic_ns() + timeout_ns;
        for (;;) {
                uint64_t now = io_monotonic_ns();
                uint64_t wait = now < deadline && io->deferred.head == NULL ? deadline - now : 0;
                int rc = enter(io, wait > 0 ? 1 : 0, wait);
                if (rc < 0)
                        return rc;
                uint32_t ran = reap(io);
                if (io->deferred.head != NULL) {
                        /*
                         * What the completions queued goes first (journal writes, replies), and
                         * what completes as it is submitted runs first too: a recv of the rest
                         * of a 1 MiB request already in the socket (a recv completes with what
                         * had arrived when it was served, often one 64 KiB segment).
                         */
                        for (uint32_t round = 0; round < IO_DEFER_ROUNDS_MAX; round++) {
                                if (io->sq_pending == 0 && io->overflow.head == NULL)
                                        break;
                                rc = enter(io, 0, 0);
                                if (rc < 0)
                                        return rc;
                                uint32_t more = reap(io);
                                ran += more;
                                if (more == 0)
                                        break;
                        }
                        if (io->sq_pending > 0 || io->overflow.head != NULL) {
                                rc = enter(io, 0, 0);
                                if (rc < 0)
                                        return rc;
                        }
                        ran += io_deferred_run(io);
                }
                if (io_monotonic_ns() >= deadline || (return_early && ran > 0)) {
                        /* Hand what the callbacks queued to the kernel before returning. */
                        if (io->sq_pending > 0 || io->overflow.head != NULL)
                                return enter(io, 0, 0);
                        return 0;
                }
        }
}

uint64_t io_monotonic_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t io_realtime_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
