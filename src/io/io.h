/*
 * io.h: the event loop. Every socket and file operation is submitted here and its completion
 * calls back into the caller; nothing blocks the single thread.
 *
 * Two backends behind this one interface, chosen at io_init:
 *   - io_uring (io.c), through <linux/io_uring.h> and raw system calls only (no liburing);
 *   - epoll (io_epoll.c), for where io_uring is forbidden (the default seccomp profiles of Docker
 *     and of Kubernetes' RuntimeDefault) or missing: non-blocking sockets waited on with epoll,
 *     and file reads, writes and fdatasync on a small fixed pool of threads that signal an
 *     eventfd, so that a journal fdatasync never stalls the network.
 * Either way the server links nothing but libc.
 *
 * What callers may rely on, with both backends:
 *   - A caller owns each struct io_completion until its callback runs; the callback receives the
 *     operation's result (bytes, fd, or -errno) and may submit again, the same completion too.
 *   - Callbacks run only inside io_run, never inside the io_* call that submits.
 *   - Operations are not ordered with one another: two writes, or a write and an fsync, may
 *     complete in either order (wait for a write's callback before the fsync that must cover it).
 *   - Close an fd only when no operation on it is in flight: shutdown(2) makes a pending accept,
 *     connect, recv or send complete promptly (an error, or 0 for a recv).
 *   - The opcode field holds the IORING_OP_* value of the operation in both backends.
 */
#ifndef TALLY_IO_H
#define TALLY_IO_H

#include "lib/common.h"

#include <sys/socket.h>

struct io_completion;
typedef void (*io_callback)(struct io_completion *completion, int32_t result);

/* Internal: a FIFO of completions linked through their `next` (both backends' queues). */
struct io_queue {
        struct io_completion *head;
        struct io_completion *tail;
};

struct io_completion {
        io_callback callback;
        void *context;
        struct io_completion *next; /* internal: the backend's queues */
        int32_t result;             /* internal (epoll): the result until the callback runs */
        uint8_t opcode;
        /* Run in a kernel worker, never inline in the submitting system call: for bulk writes
         * that would otherwise copy into the page cache while the loop waits. */
        bool background;
        /* A write that is durable when it completes (RWF_DSYNC): no fdatasync must follow, so
         * nothing between the write and its durability waits for the loop's turn. */
        bool durable;
        int fd;
        void *buffer;
        uint32_t size;
        uint64_t offset;
        struct sockaddr_storage address; /* accept: the peer */
        socklen_t address_size;
};

enum io_backend {
        IO_BACKEND_IO_URING = 1,
        IO_BACKEND_EPOLL = 2,
};

struct io_epoll; /* the epoll backend's state, io_epoll.c */

struct io {
        enum io_backend backend;
        struct io_epoll *epoll; /* IO_BACKEND_EPOLL only */
        /* IO_BACKEND_IO_URING only, from here to the fault hook. */
        int ring_fd;
        uint32_t sq_entries;
        uint32_t cq_entries;
        /* Submission ring. */
        uint32_t *sq_head;
        uint32_t *sq_tail;
        uint32_t *sq_mask;
        uint32_t *sq_array;
        struct io_uring_sqe *sqes;
        /* Completion ring. */
        uint32_t *cq_head;
        uint32_t *cq_tail;
        uint32_t *cq_mask;
        struct io_uring_cqe *cqes;
        void *sq_ring;
        size_t sq_ring_size;
        void *cq_ring;
        size_t cq_ring_size;
        size_t sqes_size;
        uint32_t sq_pending; /* prepared but not yet submitted */
        uint64_t in_flight;  /* submitted, completion not yet seen */
        struct io_queue overflow; /* waiting for a free submission slot */
        /* Fault injection for tests: may replace an operation's result before its callback. */
        int32_t (*fault)(void *context, const struct io_completion *completion, int32_t result);
        void *fault_context;
        struct io_queue deferred; /* io_defer's callbacks, in order (both backends) */
};

/* Internal, the queues' operations (io.c, io_epoll.c). */
static inline void io_queue_push(struct io_queue *q, struct io_completion *c)
{
        c->next = NULL;
        if (q->tail != NULL)
                q->tail->next = c;
        else
                q->head = c;
        q->tail = c;
}

static inline struct io_completion *io_queue_pop(struct io_queue *q)
{
        struct io_completion *c = q->head;
        if (c != NULL) {
                q->head = c->next;
                if (q->head == NULL)
                        q->tail = NULL;
                c->next = NULL;
        }
        return c;
}

/*
 * Picks the backend from the environment variable TALLY_IO: "io_uring" or "epoll" insists on
 * that one; unset (or "auto") takes io_uring when io_uring_setup works, else falls back to epoll
 * with one log line per process, "io_uring unavailable (EPERM): using the epoll backend".
 * `entries` sizes the io_uring submission ring. Returns 0, or -errno with a log line.
 */
int io_init(struct io *io, uint32_t entries);
void io_deinit(struct io *io);

void io_accept(struct io *io, struct io_completion *c, int fd);
void io_recv(struct io *io, struct io_completion *c, int fd, void *buffer, uint32_t size);
void io_send(struct io *io, struct io_completion *c, int fd, const void *buffer, uint32_t size);
void io_connect(struct io *io, struct io_completion *c, int fd, const struct sockaddr *address,
                socklen_t address_size);
void io_read(struct io *io, struct io_completion *c, int fd, void *buffer, uint32_t size,
             uint64_t offset);
void io_write(struct io *io, struct io_completion *c, int fd, const void *buffer, uint32_t size,
              uint64_t offset);
/* As io_write, durable on the disk when it completes (as if an fdatasync of the file followed). */
void io_write_durable(struct io *io, struct io_completion *c, int fd, const void *buffer,
                      uint32_t size, uint64_t offset);
/* fdatasync. */
void io_fsync(struct io *io, struct io_completion *c, int fd);
/*
 * Runs c->callback (result 0) inside io_run once the completions ready now have run and what
 * their callbacks queued has gone to the kernel: work that may keep the loop busy for long
 * (executing a batch) waits for the loop's turn, not the other way round.
 */
void io_defer(struct io *io, struct io_completion *c);

/*
 * Submits what is queued and runs completions until `timeout_ns` has passed (or at least one
 * batch of completions ran, when `return_early` is set). Returns 0, or -errno on a ring failure.
 */
int io_run(struct io *io, uint64_t timeout_ns, bool return_early);

/*
 * Hands every queued operation to the kernel now (sockets tried at once) without waiting and
 * without running a callback: for a caller stuck in long synchronous work that must get one
 * message out meanwhile (a primary's heartbeat). Completions still run in io_run.
 */
void io_submit(struct io *io);

/* "io_uring" or "epoll". */
const char *io_backend_name(const struct io *io);

uint64_t io_monotonic_ns(void);
uint64_t io_realtime_ns(void);

#endif
