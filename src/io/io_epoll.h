/*
 * io_epoll.h: the epoll backend's entry points, for io.c only (callers use io.h).
 */
#ifndef TALLY_IO_EPOLL_H
#define TALLY_IO_EPOLL_H

#include "io/io.h"

/* Sets io->backend and io->epoll; returns 0, or -errno with a log line. */
int io_epoll_init(struct io *io);
void io_epoll_deinit(struct io *io);
/* Queues `c` (prepared by io.c: opcode, fd, buffer, size, offset, address). */
void io_epoll_submit(struct io *io, struct io_completion *c);
int io_epoll_run(struct io *io, uint64_t timeout_ns, bool return_early);
void io_epoll_submit_now(struct io *io);
/* Before deferred callbacks run, completions that their predecessors' submissions produced at
 * once run too, for this many rounds at most (so deferred work is never starved). */
#define IO_DEFER_ROUNDS_MAX 8u
/* io.c: runs the callbacks io_defer queued before this call; how many ran. */
uint32_t io_deferred_run(struct io *io);

#endif
