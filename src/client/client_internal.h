/*
 * client_internal.h: what the blocking client (client.c) and the pool (client_pool.c) share.
 * Not part of the public interface; see client.h.
 */
#ifndef TALLY_CLIENT_INTERNAL_H
#define TALLY_CLIENT_INTERNAL_H

#include "wire/header.h"

/*
 * Checks the message at the start of `bytes` (`available` bytes received so far) the way the
 * official client does (wire-protocol.md section 1): header checksum, defined command, size,
 * body checksum, cluster, validity rules. Returns the message size when a whole valid message is
 * there, 0 when more bytes are needed, -1 when it is invalid (`*error` says why; the client
 * then closes the connection).
 */
int64_t client_frame_check(const uint8_t *bytes, uint32_t available, u128 cluster,
                           const char **error);

#endif
