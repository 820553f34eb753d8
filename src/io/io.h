/*
 * io.h: the event loop. Every socket and file operation is an io_uring submission whose
 * completion calls back into the caller; nothing blocks the single thread.
 *
 * Talks to the kernel through <linux/io_uring.h> and raw system calls only (no liburing), so the
 * server links nothing but libc. A caller owns each struct io_completion until its callback
 * runs; the callback receives the operation's result (bytes, fd, or -errno).
 */
#ifndef TALLY_IO_H
#define TALLY_IO_H

#include "lib/common.h"

#include <sys/socket.h>

struct io_completion;
typedef void (*io_callback)(struct io_completion *completion, int32_t result);

struct io_completion {
        io_callback callback;
        void *context;
        struct io_completion *next; /* internal: overflow queue when the ring is full */
        uint8_t opcode;
        /* Run in a kernel worker, never inline in the submitting system call: for bulk writes
         * that would otherwise copy into the page cache while the loop waits. */
        bool background;
        int fd;
        void *buffer;
        uint32_t size;
        uint64_t offset;
        struct sockaddr_storage address; /* accept: the peer */
        socklen_t address_size;
};

struct io {
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
        struct io_completion *overflow_head; /* waiting for a free submission slot */
        struct io_completion *overflow_tail;
        /* Fault injection for tests: may replace an operation's result before its callback. */
        int32_t (*fault)(void *context, const struct io_completion *completion, int32_t result);
        void *fault_context;
};

/* Returns 0, or -errno (with a log line) if io_uring is unavailable. */
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
/* fdatasync. */
void io_fsync(struct io *io, struct io_completion *c, int fd);

/*
 * Submits what is queued and runs completions until `timeout_ns` has passed (or at least one
 * batch of completions ran, when `return_early` is set). Returns 0, or -errno on a ring failure.
 */
int io_run(struct io *io, uint64_t timeout_ns, bool return_early);

uint64_t io_monotonic_ns(void);
uint64_t io_realtime_ns(void);

#endif
