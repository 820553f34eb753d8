/*
 * checksum.h: TigerBeetle's checksum, the AEGIS-128L tag with a zero key and zero nonce over
 * the input as associated data (wire-protocol.md section 3).
 *
 * Two implementations give identical results: one on AES-NI, chosen at run time when the CPU
 * has it, and a portable one with a table-based AES round. Tests force each in turn.
 */
#ifndef TALLY_WIRE_CHECKSUM_H
#define TALLY_WIRE_CHECKSUM_H

#include "lib/common.h"

/* Checksum of the empty input, carried by every header-only message. */
#define CHECKSUM_EMPTY (((u128)0x49F174618255402DULL << 64) | (u128)0xE6E7E3C40D60CC83ULL)

u128 checksum(const void *data, size_t size);

/* Streaming form: the same result as checksum() over the concatenation of every add. */
struct checksum_stream {
        _Alignas(16) uint8_t state[8][16];
        uint8_t pending[32];
        uint32_t pending_size;
        uint64_t total_size;
};
void checksum_stream_init(struct checksum_stream *stream);
/*
 * Keyed form (a MAC, for authenticated replica traffic): AEGIS-128L initialised with `key` and
 * `nonce` instead of zeros, then the same absorb and tag. With a zero key and nonce it equals
 * checksum_stream_init(). A key must never be used twice with the same nonce.
 */
#define CHECKSUM_KEY_SIZE 16u
#define CHECKSUM_NONCE_SIZE 16u
void checksum_stream_init_keyed(struct checksum_stream *stream,
                                const uint8_t key[CHECKSUM_KEY_SIZE],
                                const uint8_t nonce[CHECKSUM_NONCE_SIZE]);
void checksum_stream_add(struct checksum_stream *stream, const void *data, size_t size);
u128 checksum_stream_final(struct checksum_stream *stream);

enum checksum_impl {
        CHECKSUM_IMPL_AUTO = 0, /* AES-NI if the CPU has it, else portable */
        CHECKSUM_IMPL_PORTABLE = 1,
        CHECKSUM_IMPL_AESNI = 2,
};
/* Selects an implementation; false (and no change) if the CPU lacks it. */
bool checksum_select(enum checksum_impl impl);
enum checksum_impl checksum_selected(void);

#endif
