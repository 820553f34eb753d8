/*
 * resolver.h: host name resolution that never blocks the event loop.
 *
 * A replica resolves each peer's host name again before every connection attempt (pod
 * addresses change when pods restart), and DNS can take seconds to answer or fail. So a
 * lookup is started, then polled on the loop's tick until it is done.
 *
 * Built on glibc's getaddrinfo_a (in libc itself since glibc 2.34; nothing more to link). It
 * runs getaddrinfo in a helper thread owned by libc, so Tally has no thread, lock or queue of
 * its own to get right, and we poll the request with gai_error() instead of taking a signal or
 * a callback on a foreign thread. The price is up to one tick (10 ms) of extra latency per
 * lookup, nothing next to a reconnect backoff, and that a lookup already running cannot be
 * cancelled: resolver_query_destroy() waits for it briefly and otherwise abandons it to libc
 * (only at shutdown).
 */
#ifndef TALLY_NET_RESOLVER_H
#define TALLY_NET_RESOLVER_H

#include "lib/common.h"

#include <sys/socket.h>

enum resolver_status {
        RESOLVER_IDLE,    /* never started, or the last result was taken */
        RESOLVER_PENDING, /* the lookup is running */
        RESOLVER_DONE,    /* `sockaddr` holds the address */
        RESOLVER_FAILED,  /* `error` says why */
};

struct resolver_query;

/* Reserves a query (at start-up). NULL if out of memory. */
struct resolver_query *resolver_query_create(void);
void resolver_query_destroy(struct resolver_query *query);

/*
 * Starts resolving `host` (a name, or an IP literal) for TCP `port`. The query must not be
 * pending. Returns false if libc could not queue the lookup (out of memory or threads); the
 * caller tries again later.
 */
bool resolver_query_start(struct resolver_query *query, const char *host, uint16_t port);

/*
 * Where the query is. On RESOLVER_DONE, `sockaddr` and `sockaddr_size` receive the address
 * (IPv4 preferred when the name has both); on RESOLVER_FAILED, `error` the reason. Either
 * result is returned once; the query is then idle and may be started again.
 */
enum resolver_status resolver_query_poll(struct resolver_query *query,
                                         struct sockaddr_storage *sockaddr,
                                         socklen_t *sockaddr_size, char *error,
                                         size_t error_size);

#endif
