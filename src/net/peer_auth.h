/*
 * peer_auth.h: authentication of replica-to-replica connections with a cluster key.
 *
 * Why: a replica must never take a message from an outsider for one from a peer. TigerBeetle
 * trusts the `replica` byte of a header; two forged messages from any TCP connection can then
 * stop a cluster or fork a backup's log. With `--cluster-key-file`, every replica of a cluster
 * holds the same secret and proves it on every peer connection; client traffic is unchanged.
 *
 * Handshake (three messages, each a header plus a struct peer_auth_hello body, checked with the
 * ordinary unkeyed checksums; command PEER_AUTH_COMMAND, which no TigerBeetle peer sends):
 *
 *   dialer i -> acceptor j   step 1: i, j, nonce_dial (fresh random)
 *   j -> i                   step 2: + nonce_accept (fresh random), proof_accept
 *   i -> j                   step 3: proof_dial
 *
 * A proof is the AEGIS-128L MAC under the cluster key of (cluster, i, j, both nonces) with a
 * different constant nonce per side, so each side proves the key over a nonce it did not
 * choose: a recorded handshake is useless on a new connection. Both sides then derive one
 * session key per direction from the same inputs.
 *
 * After the handshake every message on the connection travels with its header checksum
 * (bytes 0..15, the only header bytes the checksum does not cover) replaced by a tag: the MAC
 * under the direction's session key, with the message's sequence number on the connection as
 * the AEGIS nonce, of header bytes 16..255 and the body. So a message cannot be forged,
 * altered, replayed, reordered or dropped without the receiver noticing, and a message from
 * one connection means nothing on another. The receiver checks the tag, then puts the
 * ordinary checksum back, so what reaches the replica (and its journal) is byte for byte the
 * message the sender holds: a relayed prepare keeps its checksum, and the data file never
 * depends on the key.
 */
#ifndef TALLY_NET_PEER_AUTH_H
#define TALLY_NET_PEER_AUTH_H

#include "wire/checksum.h"
#include "wire/header.h"

/* A command value outside TigerBeetle's (0..24): Tally replicas' handshake only. */
#define PEER_AUTH_COMMAND 200u

#define PEER_AUTH_KEY_SIZE CHECKSUM_KEY_SIZE
#define PEER_AUTH_NONCE_SIZE 16u
/*
 * Bytes a key file must hold at least: 32, so that even a key written as hexadecimal text
 * carries 128 bits of randomness. At most 4 KiB: a key file is not a data file.
 */
#define PEER_AUTH_KEY_FILE_SIZE_MIN 32u
#define PEER_AUTH_KEY_FILE_SIZE_MAX 4096u

struct peer_auth_key {
        uint8_t bytes[PEER_AUTH_KEY_SIZE];
};

struct peer_auth_hello {
        char magic[16]; /* PEER_AUTH_MAGIC */
        uint32_t step;  /* 1, 2 or 3 */
        uint8_t dialer;
        uint8_t acceptor;
        uint8_t flags; /* PEER_AUTH_FLAG_*: step 2 of a backup handshake only */
        uint8_t reserved[9];
        uint8_t nonce_dial[PEER_AUTH_NONCE_SIZE];
        uint8_t nonce_accept[PEER_AUTH_NONCE_SIZE]; /* steps 2 and 3 */
        uint8_t proof[16];                          /* steps 2 and 3 */
};
_Static_assert(sizeof(struct peer_auth_hello) == 80, "peer_auth_hello size");
#define PEER_AUTH_MAGIC "tally-peer-auth1"

/*
 * The dialer index of `tally backup`, which no replica has (a cluster has at most
 * ADDRESSES_MAX replicas). Why a backup identity of its own rather than a replica's index: a
 * connection proven as replica i *is* replica i to the acceptor: it would replace the real
 * replica i's link (the handshake's "newer proof wins"), take prepares, commits and view
 * change messages meant for it, and could send them. A backup needs none of that: it reads
 * the durable checkpoint and the sessions' replies, nothing else. So it proves the cluster key
 * with the same handshake (the proofs cover the dialer byte, so a backup's handshake can never
 * pass for a replica's) and the acceptor marks the connection a backup connection, on which
 * it answers request_blocks and request_reply and refuses every other command.
 *
 * Without a cluster key the same step 1 is answered by a step 2 carrying
 * PEER_AUTH_FLAG_NO_KEY and no proof, and the connection is a backup connection untagged:
 * such a cluster lets any client read every account and transfer anyway.
 */
#define PEER_AUTH_DIALER_BACKUP 255u
#define PEER_AUTH_FLAG_NO_KEY 1u

/* One direction of an authenticated connection. */
struct peer_auth_session {
        uint8_t key[PEER_AUTH_KEY_SIZE];
        uint64_t sequence; /* of the next message in this direction */
};

/*
 * Reads a key file (raw or text bytes, PEER_AUTH_KEY_FILE_SIZE_MIN..MAX) and derives the
 * cluster key from its whole content. Returns NULL, or a reason for an error line.
 */
const char *peer_auth_key_load(const char *path, struct peer_auth_key *key);
/* Fills `text` with a new key file's content: 64 random hex digits and a newline. */
bool peer_auth_key_generate(char text[66]);

/* Random bytes from the kernel (getrandom); false only if the kernel has none to give. */
bool peer_auth_random(void *bytes, size_t size);

/* Builds the handshake message of `hello->step` into `header` (a message buffer). */
void peer_auth_hello_message(struct wire_header *header, u128 cluster, uint8_t sender,
                             const struct peer_auth_hello *hello);
/*
 * The hello carried by a handshake message, after its checksums were verified; NULL (and a
 * reason) if it is malformed.
 */
const struct peer_auth_hello *peer_auth_hello_parse(const struct wire_header *header,
                                                    const char **reason);

/* The proof of the dialing (step 3) or accepting (step 2) side. */
void peer_auth_proof(const struct peer_auth_key *key, u128 cluster,
                     const struct peer_auth_hello *hello, bool by_dialer, uint8_t proof[16]);
/* Constant-time comparison of two 16-byte tags. */
bool peer_auth_equal(const uint8_t a[16], const uint8_t b[16]);
/* The session of messages sent by the dialer (or by the acceptor) on this connection. */
void peer_auth_session(const struct peer_auth_key *key, u128 cluster,
                       const struct peer_auth_hello *hello, bool from_dialer,
                       struct peer_auth_session *session);

/* The tag of the next message in `session` (and advances it). */
u128 peer_auth_tag(struct peer_auth_session *session, const struct wire_header *header,
                   const void *body);

#endif
