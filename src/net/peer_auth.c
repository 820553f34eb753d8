/*
 * peer_auth.c: the cluster key, the handshake's proofs and the per-message tags of
 * authenticated replica connections (see peer_auth.h for the protocol).
 *
 * Every MAC here is AEGIS-128L over associated data only (checksum_stream_init_keyed), the
 * same primitive as the wire checksums. Distinct purposes use distinct AEGIS nonces (constant
 * labels for the proofs and session keys, whose inputs already include fresh random nonces; a
 * sequence number for message tags), so no (key, nonce) pair ever authenticates two kinds of
 * input.
 */
#include "net/peer_auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* AEGIS nonces of the fixed-purpose MACs: 16-byte labels. */
static const uint8_t label_key[16] = "tally/clusterkey";
static const uint8_t label_proof_dial[16] = "tally/proof-dial";
static const uint8_t label_proof_accept[16] = "tally/proof-acpt";
static const uint8_t label_session_dial[16] = "tally/sess-dial.";
static const uint8_t label_session_accept[16] = "tally/sess-acpt.";

static void u128_to_bytes(u128 value, uint8_t out[16])
{
        memcpy(out, &value, 16); /* little-endian, asserted in lib/common.h */
}

const char *peer_auth_key_load(const char *path, struct peer_auth_key *key)
{
        static char reason[160];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                snprintf(reason, sizeof(reason), "cannot open cluster key file: %s",
                         strerror(errno));
                return reason;
        }
        uint8_t content[PEER_AUTH_KEY_FILE_SIZE_MAX + 1];
        size_t size = 0;
        while (size < sizeof(content)) {
                ssize_t n = read(fd, content + size, sizeof(content) - size);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        snprintf(reason, sizeof(reason), "cannot read cluster key file: %s",
                                 strerror(errno));
                        close(fd);
                        return reason;
                }
                if (n == 0)
                        break;
                size += (size_t)n;
        }
        close(fd);
        if (size < PEER_AUTH_KEY_FILE_SIZE_MIN || size > PEER_AUTH_KEY_FILE_SIZE_MAX) {
                snprintf(reason, sizeof(reason),
                         "cluster key file holds %zu%s bytes, must hold %u to %u "
                         "(make one with `tally keygen <path>`)",
                         size, size > PEER_AUTH_KEY_FILE_SIZE_MAX ? " or more" : "",
                         PEER_AUTH_KEY_FILE_SIZE_MIN, PEER_AUTH_KEY_FILE_SIZE_MAX);
                return reason;
        }
        /* The key is the MAC of the whole content under the zero key: all of it counts. */
        static const uint8_t zero_key[PEER_AUTH_KEY_SIZE];
        struct checksum_stream stream;
        checksum_stream_init_keyed(&stream, zero_key, label_key);
        checksum_stream_add(&stream, content, size);
        u128_to_bytes(checksum_stream_final(&stream), key->bytes);
        memset(content, 0, sizeof(content));
        memset(&stream, 0, sizeof(stream));
        return NULL;
}

bool peer_auth_random(void *bytes, size_t size)
{
        uint8_t *out = bytes;
        size_t done = 0;
        while (done < size) {
                ssize_t n = getrandom(out + done, size - done, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return false;
                done += (size_t)n;
        }
        return true;
}

bool peer_auth_key_generate(char text[66])
{
        uint8_t random[32];
        if (!peer_auth_random(random, sizeof(random)))
                return false;
        static const char digits[] = "0123456789abcdef";
        for (uint32_t i = 0; i < sizeof(random); i++) {
                text[2 * i] = digits[random[i] >> 4];
                text[2 * i + 1] = digits[random[i] & 15];
        }
        text[64] = '\n';
        text[65] = '\0';
        memset(random, 0, sizeof(random));
        return true;
}

void peer_auth_hello_message(struct wire_header *header, u128 cluster, uint8_t sender,
                             const struct peer_auth_hello *hello)
{
        tally_assert(hello->step >= 1 && hello->step <= 3);
        wire_header_init(header, (uint8_t)PEER_AUTH_COMMAND, cluster, 0, WIRE_RELEASE_SERVER,
                         sender);
        uint8_t *body = (uint8_t *)header + WIRE_HEADER_SIZE;
        memcpy(body, hello, sizeof(*hello));
        header->size = WIRE_HEADER_SIZE + (uint32_t)sizeof(*hello);
        wire_header_set_checksum_body(header, body, (uint32_t)sizeof(*hello));
        wire_header_set_checksum(header);
}

const struct peer_auth_hello *peer_auth_hello_parse(const struct wire_header *header,
                                                    const char **reason)
{
        tally_assert(header->command == PEER_AUTH_COMMAND);
        if (header->size != WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)) {
                *reason = "authentication message of the wrong size";
                return NULL;
        }
        const struct peer_auth_hello *hello =
                (const struct peer_auth_hello *)((const uint8_t *)header + WIRE_HEADER_SIZE);
        if (memcmp(hello->magic, PEER_AUTH_MAGIC, sizeof(hello->magic)) != 0) {
                *reason = "authentication message of another protocol version";
                return NULL;
        }
        if (hello->step < 1 || hello->step > 3) {
                *reason = "authentication message with an unknown step";
                return NULL;
        }
        if (hello->dialer >= hello->acceptor && hello->dialer != PEER_AUTH_DIALER_BACKUP) {
                *reason = "authentication message: only a lower replica dials a higher one";
                return NULL;
        }
        if (header->replica != (hello->step == 2 ? hello->acceptor : hello->dialer)) {
                *reason = "authentication message from a replica it does not name";
                return NULL;
        }
        return hello;
}

/* The MAC under `key` (AEGIS nonce `label`) of everything both sides agreed on. */
static void handshake_mac(const uint8_t key[PEER_AUTH_KEY_SIZE], const uint8_t label[16],
                          u128 cluster, const struct peer_auth_hello *hello, uint8_t out[16])
{
        struct checksum_stream stream;
        checksum_stream_init_keyed(&stream, key, label);
        uint8_t fields[16 + 2];
        u128_to_bytes(cluster, fields);
        fields[16] = hello->dialer;
        fields[17] = hello->acceptor;
        checksum_stream_add(&stream, fields, sizeof(fields));
        checksum_stream_add(&stream, hello->nonce_dial, sizeof(hello->nonce_dial));
        checksum_stream_add(&stream, hello->nonce_accept, sizeof(hello->nonce_accept));
        u128_to_bytes(checksum_stream_final(&stream), out);
        memset(&stream, 0, sizeof(stream));
}

void peer_auth_proof(const struct peer_auth_key *key, u128 cluster,
                     const struct peer_auth_hello *hello, bool by_dialer, uint8_t proof[16])
{
        handshake_mac(key->bytes, by_dialer ? label_proof_dial : label_proof_accept, cluster,
                      hello, proof);
}

bool peer_auth_equal(const uint8_t a[16], const uint8_t b[16])
{
        uint8_t difference = 0;
        for (uint32_t i = 0; i < 16; i++)
                difference |= (uint8_t)(a[i] ^ b[i]);
        return difference == 0;
}

void peer_auth_session(const struct peer_auth_key *key, u128 cluster,
                       const struct peer_auth_hello *hello, bool from_dialer,
                       struct peer_auth_session *session)
{
        handshake_mac(key->bytes, from_dialer ? label_session_dial : label_session_accept,
                      cluster, hello, session->key);
        session->sequence = 0;
}

u128 peer_auth_tag(struct peer_auth_session *session, const struct wire_header *header,
                   const void *body)
{
        tally_assert(header->size >= WIRE_HEADER_SIZE);
        tally_assert(session->sequence < UINT64_MAX);
        uint8_t nonce[16] = {0};
        memcpy(nonce, &session->sequence, sizeof(session->sequence));
        session->sequence++;
        struct checksum_stream stream;
        checksum_stream_init_keyed(&stream, session->key, nonce);
        checksum_stream_add(&stream, (const uint8_t *)header + 16, WIRE_HEADER_SIZE - 16);
        checksum_stream_add(&stream, body, header->size - WIRE_HEADER_SIZE);
        return checksum_stream_final(&stream);
}
