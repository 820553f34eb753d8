/*
 * address.h: parsing of `--addresses` and name resolution.
 *
 * Accepts TigerBeetle's forms (`3000` = port on 127.0.0.1, `1.2.3.4` = default port 3001,
 * `1.2.3.4:3000`, `[::1]:3000`) and, beyond TigerBeetle, host names (`localhost:3000`,
 * `tally-0.tally.svc.cluster.local:3000`) resolved with getaddrinfo. A name is kept as text so
 * that it can be resolved again later: pod addresses change when pods restart.
 */
#ifndef TALLY_IO_ADDRESS_H
#define TALLY_IO_ADDRESS_H

#include "lib/common.h"

#include <sys/socket.h>

#define ADDRESS_HOST_SIZE_MAX 256u
#define ADDRESS_PORT_DEFAULT 3001u
#define ADDRESSES_MAX 6u

struct address {
        char host[ADDRESS_HOST_SIZE_MAX]; /* literal or name, without brackets */
        uint16_t port;
        bool is_name; /* needs getaddrinfo */
        struct sockaddr_storage sockaddr;
        socklen_t sockaddr_size; /* 0 until resolved */
};

/*
 * Parses a comma-separated list into `addresses` (at most ADDRESSES_MAX). Returns 0, or -1
 * with a one-line explanation in `error`. Literal IP addresses are resolved here already.
 */
int address_parse_list(const char *list, struct address *addresses, uint32_t *count,
                       char *error, size_t error_size);

/* Resolves a name (no-op for literals). Returns 0 or -1 with the reason in `error`. */
int address_resolve(struct address *address, char *error, size_t error_size);

/* 127.0.0.1:`port` into `out` (zeroed first); returns its size (test and bench tools). */
socklen_t address_loopback(uint16_t port, struct sockaddr_storage *out);

/* "127.0.0.1:3000" or "[::1]:3000" of a resolved address. */
void address_format(const struct sockaddr_storage *sockaddr, char *out, size_t out_size);

#endif
