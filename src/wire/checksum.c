/*
 * checksum.c: TigerBeetle's checksum, the AEGIS-128L tag with a zero key and a zero nonce over
 * the input as associated data and an empty message (wire-protocol.md section 3).
 *
 * Why it exists: every message carries two checksums, one over header bytes 16..255 and one over
 * the body, and the server computes both for every message it receives and sends. Bodies reach
 * 1 MiB, so this is on the hot path, and it must match TigerBeetle bit for bit or no client will
 * talk to us.
 *
 * How it works. The state is eight 16-byte blocks S0..S7. Update(M0, M1) replaces every block
 * Si with AESRound(S(i-1), Si) (S0 takes S7), all from the old values, then XORs M0 into S0 and
 * M1 into S4. AESRound is one full AES encryption round (SubBytes, ShiftRows, MixColumns, XOR
 * key), exactly what the AESENC instruction does.
 *   1. Init: S = [0, C1, C0, C1, 0, C0, C1, C0], then Update(0, 0) ten times. With key and
 *      nonce fixed at zero the result never changes, so it is the constant init_state below
 *      (checked against a fresh computation whenever an implementation is selected).
 *   2. Absorb: Update(first 16 bytes, next 16 bytes) for each 32-byte block of the input; a
 *      last partial block is zero-padded to 32 bytes. The empty input absorbs nothing.
 *   3. Finalize: t = (LE64(input bits) || LE64(0)) XOR S2, Update(t, t) seven times, and the
 *      tag is S0 XOR ... XOR S6. The second length word stays 0: this is the AEAD tag of
 *      draft-irtf-cfrg-aegis-aead as in Zig 0.13, not the later drafts' MAC mode, which puts
 *      the tag length there and gives different results.
 *   4. The 16 tag bytes read as a little-endian u128 are the checksum.
 *
 * Two implementations give identical results. The AES-NI one keeps the whole state in eight
 * XMM registers for the length of a call and does eight AESENC per 32 bytes; it is compiled
 * with a target attribute, so the build needs no -march flag, and is chosen at run time when
 * the CPU has AES-NI. The portable one computes the AES round from a single 1 KiB T-table (the
 * other three tables are byte rotations of it). Table lookups leak timing, which does not
 * matter here: the key is public (zero) and a checksum protects against corruption, not against
 * an adversary.
 *
 * The streaming form keeps the state as bytes in struct checksum_stream, in the same layout for
 * both implementations, so the result does not depend on how the input was split (nor on which
 * implementation handled which piece). Full 32-byte blocks are absorbed as soon as they are
 * complete; up to 31 bytes wait in `pending` for the next add or the final.
 */
#include "wire/checksum.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define CHECKSUM_HAVE_AESNI 1
#include <immintrin.h>
#else
#define CHECKSUM_HAVE_AESNI 0
#endif

#define BLOCK_SIZE 32 /* bytes absorbed per Update: two 16-byte AES blocks */
#define INIT_ROUNDS 10
#define FINAL_ROUNDS 7

/*
 * AEGIS-128L limits associated data to 2^61 - 1 bytes, so that its length in bits fits the
 * 64-bit length word. Real inputs are at most a 1 MiB message; the limit only catches garbage.
 */
#define CHECKSUM_SIZE_MAX ((UINT64_C(1) << 61) - 1)

_Static_assert(sizeof(((struct checksum_stream *)0)->pending) == BLOCK_SIZE,
               "pending holds exactly one partial block");

/* The AEGIS constants: C0 is the Fibonacci sequence mod 256, C1 continues it. */
static const uint8_t aegis_c0[16] = {0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x08, 0x0d,
                                     0x15, 0x22, 0x37, 0x59, 0x90, 0xe9, 0x79, 0x62};
static const uint8_t aegis_c1[16] = {0xdb, 0x3d, 0x18, 0x55, 0x6d, 0xc2, 0x2f, 0xf1,
                                     0x20, 0x11, 0x31, 0x42, 0x73, 0xb5, 0x28, 0xdd};

/* S0..S7 after Init with key = 0 and nonce = 0 (step 1 above). */
static const _Alignas(16) uint8_t init_state[8][16] = {
    {0x72, 0xf2, 0xf4, 0x5d, 0x9e, 0xc7, 0x42, 0x02, 0x3e, 0x84, 0xaa, 0x66, 0xae, 0xfd, 0x35,
     0x92},
    {0x42, 0x07, 0x1d, 0xcd, 0x30, 0x1a, 0xf7, 0xcf, 0x8a, 0x7c, 0x6c, 0x4a, 0x20, 0xf6, 0x30,
     0x65},
    {0xf8, 0x4e, 0xa4, 0xa1, 0xc6, 0xaa, 0x99, 0xce, 0xa5, 0x1d, 0x8b, 0x5c, 0x9c, 0xc3, 0x05,
     0x8f},
    {0x0f, 0xc0, 0x5e, 0x11, 0x17, 0xaf, 0x10, 0x75, 0xa4, 0x11, 0x19, 0xf3, 0x29, 0xc5, 0xa8,
     0xd2},
    {0x57, 0x88, 0x8c, 0x33, 0xd3, 0x16, 0x03, 0x55, 0x36, 0x40, 0x35, 0xc8, 0xf2, 0x1e, 0x79,
     0x86},
    {0x48, 0xfa, 0x4b, 0x5d, 0xd5, 0x70, 0x42, 0xc4, 0x08, 0x4f, 0xe9, 0xf5, 0x15, 0x08, 0xb6,
     0x44},
    {0x0b, 0x99, 0x89, 0xcc, 0x91, 0x05, 0x03, 0x85, 0x03, 0x05, 0xde, 0x7e, 0xf1, 0xa9, 0x8b,
     0xfe},
    {0xb3, 0x0e, 0x75, 0x21, 0x39, 0x0c, 0xcf, 0x8e, 0xcf, 0xe9, 0x4a, 0xf6, 0x87, 0x95, 0x5d,
     0xd7},
};

/*
 * T-table for the portable AES round. Entry x is the MixColumns column of S = SBox(x) placed in
 * row 0, as a little-endian word: bytes (2*S, S, S, 3*S) in GF(2^8). Rows 1..3 use the same
 * entry rotated left by 8, 16 and 24 bits.
 */
static const uint32_t aes_t0[256] = {
    0xa56363c6, 0x847c7cf8, 0x997777ee, 0x8d7b7bf6, 0x0df2f2ff, 0xbd6b6bd6, 0xb16f6fde, 0x54c5c591,
    0x50303060, 0x03010102, 0xa96767ce, 0x7d2b2b56, 0x19fefee7, 0x62d7d7b5, 0xe6abab4d, 0x9a7676ec,
    0x45caca8f, 0x9d82821f, 0x40c9c989, 0x877d7dfa, 0x15fafaef, 0xeb5959b2, 0xc947478e, 0x0bf0f0fb,
    0xecadad41, 0x67d4d4b3, 0xfda2a25f, 0xeaafaf45, 0xbf9c9c23, 0xf7a4a453, 0x967272e4, 0x5bc0c09b,
    0xc2b7b775, 0x1cfdfde1, 0xae93933d, 0x6a26264c, 0x5a36366c, 0x413f3f7e, 0x02f7f7f5, 0x4fcccc83,
    0x5c343468, 0xf4a5a551, 0x34e5e5d1, 0x08f1f1f9, 0x937171e2, 0x73d8d8ab, 0x53313162, 0x3f15152a,
    0x0c040408, 0x52c7c795, 0x65232346, 0x5ec3c39d, 0x28181830, 0xa1969637, 0x0f05050a, 0xb59a9a2f,
    0x0907070e, 0x36121224, 0x9b80801b, 0x3de2e2df, 0x26ebebcd, 0x6927274e, 0xcdb2b27f, 0x9f7575ea,
    0x1b090912, 0x9e83831d, 0x742c2c58, 0x2e1a1a34, 0x2d1b1b36, 0xb26e6edc, 0xee5a5ab4, 0xfba0a05b,
    0xf65252a4, 0x4d3b3b76, 0x61d6d6b7, 0xceb3b37d, 0x7b292952, 0x3ee3e3dd, 0x712f2f5e, 0x97848413,
    0xf55353a6, 0x68d1d1b9, 0x00000000, 0x2cededc1, 0x60202040, 0x1ffcfce3, 0xc8b1b179, 0xed5b5bb6,
    0xbe6a6ad4, 0x46cbcb8d, 0xd9bebe67, 0x4b393972, 0xde4a4a94, 0xd44c4c98, 0xe85858b0, 0x4acfcf85,
    0x6bd0d0bb, 0x2aefefc5, 0xe5aaaa4f, 0x16fbfbed, 0xc5434386, 0xd74d4d9a, 0x55333366, 0x94858511,
    0xcf45458a, 0x10f9f9e9, 0x06020204, 0x817f7ffe, 0xf05050a0, 0x443c3c78, 0xba9f9f25, 0xe3a8a84b,
    0xf35151a2, 0xfea3a35d, 0xc0404080, 0x8a8f8f05, 0xad92923f, 0xbc9d9d21, 0x48383870, 0x04f5f5f1,
    0xdfbcbc63, 0xc1b6b677, 0x75dadaaf, 0x63212142, 0x30101020, 0x1affffe5, 0x0ef3f3fd, 0x6dd2d2bf,
    0x4ccdcd81, 0x140c0c18, 0x35131326, 0x2fececc3, 0xe15f5fbe, 0xa2979735, 0xcc444488, 0x3917172e,
    0x57c4c493, 0xf2a7a755, 0x827e7efc, 0x473d3d7a, 0xac6464c8, 0xe75d5dba, 0x2b191932, 0x957373e6,
    0xa06060c0, 0x98818119, 0xd14f4f9e, 0x7fdcdca3, 0x66222244, 0x7e2a2a54, 0xab90903b, 0x8388880b,
    0xca46468c, 0x29eeeec7, 0xd3b8b86b, 0x3c141428, 0x79dedea7, 0xe25e5ebc, 0x1d0b0b16, 0x76dbdbad,
    0x3be0e0db, 0x56323264, 0x4e3a3a74, 0x1e0a0a14, 0xdb494992, 0x0a06060c, 0x6c242448, 0xe45c5cb8,
    0x5dc2c29f, 0x6ed3d3bd, 0xefacac43, 0xa66262c4, 0xa8919139, 0xa4959531, 0x37e4e4d3, 0x8b7979f2,
    0x32e7e7d5, 0x43c8c88b, 0x5937376e, 0xb76d6dda, 0x8c8d8d01, 0x64d5d5b1, 0xd24e4e9c, 0xe0a9a949,
    0xb46c6cd8, 0xfa5656ac, 0x07f4f4f3, 0x25eaeacf, 0xaf6565ca, 0x8e7a7af4, 0xe9aeae47, 0x18080810,
    0xd5baba6f, 0x887878f0, 0x6f25254a, 0x722e2e5c, 0x241c1c38, 0xf1a6a657, 0xc7b4b473, 0x51c6c697,
    0x23e8e8cb, 0x7cdddda1, 0x9c7474e8, 0x211f1f3e, 0xdd4b4b96, 0xdcbdbd61, 0x868b8b0d, 0x858a8a0f,
    0x907070e0, 0x423e3e7c, 0xc4b5b571, 0xaa6666cc, 0xd8484890, 0x05030306, 0x01f6f6f7, 0x120e0e1c,
    0xa36161c2, 0x5f35356a, 0xf95757ae, 0xd0b9b969, 0x91868617, 0x58c1c199, 0x271d1d3a, 0xb99e9e27,
    0x38e1e1d9, 0x13f8f8eb, 0xb398982b, 0x33111122, 0xbb6969d2, 0x70d9d9a9, 0x898e8e07, 0xa7949433,
    0xb69b9b2d, 0x221e1e3c, 0x92878715, 0x20e9e9c9, 0x49cece87, 0xff5555aa, 0x78282850, 0x7adfdfa5,
    0x8f8c8c03, 0xf8a1a159, 0x80898909, 0x170d0d1a, 0xdabfbf65, 0x31e6e6d7, 0xc6424284, 0xb86868d0,
    0xc3414182, 0xb0999929, 0x772d2d5a, 0x110f0f1e, 0xcbb0b07b, 0xfc5454a8, 0xd6bbbb6d, 0x3a16162c,
};

/* Portable implementation. A block is four little-endian 32-bit words, one per AES column. */

struct portable_block {
        uint32_t w[4];
};

struct portable_state {
        struct portable_block s[8];
};

static inline uint32_t rotl32(uint32_t x, unsigned bits)
{
        return (x << bits) | (x >> (32 - bits));
}

static inline struct portable_block portable_load(const uint8_t *bytes)
{
        struct portable_block block;
        memcpy(block.w, bytes, sizeof(block.w)); /* the host is little-endian (common.h) */
        return block;
}

static inline struct portable_block portable_xor(struct portable_block a, struct portable_block b)
{
        for (int i = 0; i < 4; i++)
                a.w[i] ^= b.w[i];
        return a;
}

/*
 * One AES round, as AESENC. ShiftRows moves row r of column c + r to column c, so output column
 * c takes row 0 from input column c, row 1 from c + 1, row 2 from c + 2 and row 3 from c + 3.
 */
static inline struct portable_block portable_round(struct portable_block x,
                                                   struct portable_block key)
{
        struct portable_block out;
        for (int c = 0; c < 4; c++) {
                out.w[c] = aes_t0[x.w[c] & 0xff] ^
                           rotl32(aes_t0[(x.w[(c + 1) & 3] >> 8) & 0xff], 8) ^
                           rotl32(aes_t0[(x.w[(c + 2) & 3] >> 16) & 0xff], 16) ^
                           rotl32(aes_t0[x.w[(c + 3) & 3] >> 24], 24) ^ key.w[c];
        }
        return out;
}

static inline void portable_update(struct portable_state *state, struct portable_block m0,
                                   struct portable_block m1)
{
        struct portable_block *s = state->s;
        struct portable_block s7_old = s[7];
        /* Downwards, so that s[i - 1] still holds its old value when s[i] is computed. */
        for (int i = 7; i > 0; i--)
                s[i] = portable_round(s[i - 1], s[i]);
        s[0] = portable_xor(portable_round(s7_old, s[0]), m0);
        s[4] = portable_xor(s[4], m1);
}

static void portable_state_load(struct portable_state *state, const uint8_t bytes[8][16])
{
        for (int i = 0; i < 8; i++)
                state->s[i] = portable_load(bytes[i]);
}

static void portable_state_store(const struct portable_state *state, uint8_t bytes[8][16])
{
        for (int i = 0; i < 8; i++)
                memcpy(bytes[i], state->s[i].w, 16);
}

static void portable_absorb(struct portable_state *state, const uint8_t *blocks, size_t block_count)
{
        for (size_t i = 0; i < block_count; i++) {
                const uint8_t *block = blocks + i * BLOCK_SIZE;
                portable_update(state, portable_load(block), portable_load(block + 16));
        }
}

/* Absorbs a last partial block of 1..31 bytes, zero-padded. */
static void portable_absorb_tail(struct portable_state *state, const uint8_t *tail,
                                 size_t tail_size)
{
        tally_assert(tail_size > 0 && tail_size < BLOCK_SIZE);
        uint8_t padded[BLOCK_SIZE] = {0};
        memcpy(padded, tail, tail_size);
        portable_absorb(state, padded, 1);
}

static u128 portable_finalize(struct portable_state *state, uint64_t size)
{
        tally_assert(size <= CHECKSUM_SIZE_MAX);
        struct portable_block lengths = {{(uint32_t)(size * 8), (uint32_t)(size * 8 >> 32), 0, 0}};
        struct portable_block t = portable_xor(lengths, state->s[2]);
        for (int i = 0; i < FINAL_ROUNDS; i++)
                portable_update(state, t, t);

        struct portable_block tag = state->s[0];
        for (int i = 1; i < 7; i++)
                tag = portable_xor(tag, state->s[i]);
        u128 result;
        memcpy(&result, tag.w, sizeof(result));
        return result;
}

static u128 portable_checksum(const uint8_t *data, size_t size)
{
        struct portable_state state;
        portable_state_load(&state, init_state);
        portable_absorb(&state, data, size / BLOCK_SIZE);
        if (size % BLOCK_SIZE != 0)
                portable_absorb_tail(&state, data + size - size % BLOCK_SIZE, size % BLOCK_SIZE);
        return portable_finalize(&state, size);
}

static void portable_stream_absorb(uint8_t bytes[8][16], const uint8_t *blocks, size_t block_count)
{
        struct portable_state state;
        portable_state_load(&state, bytes);
        portable_absorb(&state, blocks, block_count);
        portable_state_store(&state, bytes);
}

static u128 portable_stream_final(const uint8_t bytes[8][16], const uint8_t *tail, size_t tail_size,
                                  uint64_t size)
{
        struct portable_state state;
        portable_state_load(&state, bytes);
        if (tail_size > 0)
                portable_absorb_tail(&state, tail, tail_size);
        return portable_finalize(&state, size);
}

/*
 * The init state is a constant only because key and nonce are zero. Recompute it from C0 and C1
 * so that a wrong constant (or a wrong portable round) stops the process at selection time
 * instead of producing checksums no peer accepts.
 */
static void init_state_verify(void)
{
        struct portable_block zero = {{0, 0, 0, 0}};
        struct portable_block c0 = portable_load(aegis_c0);
        struct portable_block c1 = portable_load(aegis_c1);
        struct portable_state state = {{zero, c1, c0, c1, zero, c0, c1, c0}};
        for (int i = 0; i < INIT_ROUNDS; i++)
                portable_update(&state, zero, zero);

        uint8_t bytes[8][16];
        portable_state_store(&state, bytes);
        tally_assert(memcmp(bytes, init_state, sizeof(bytes)) == 0);
}

#if CHECKSUM_HAVE_AESNI

/*
 * AES-NI implementation. Every function here carries the target attribute so that the compiler
 * may emit AESENC without -maes, and so that they inline into each other: a call keeps S0..S7 in
 * registers from the first block to the tag. Only reached after the CPU check in cpu_has_aesni().
 */
#define AESNI_TARGET __attribute__((target("aes,sse4.1")))

struct aesni_state {
        __m128i s[8];
};

static inline AESNI_TARGET void aesni_update(struct aesni_state *state, __m128i m0, __m128i m1)
{
        __m128i *s = state->s;
        __m128i s7_old = s[7];
        s[7] = _mm_aesenc_si128(s[6], s[7]);
        s[6] = _mm_aesenc_si128(s[5], s[6]);
        s[5] = _mm_aesenc_si128(s[4], s[5]);
        s[4] = _mm_xor_si128(_mm_aesenc_si128(s[3], s[4]), m1);
        s[3] = _mm_aesenc_si128(s[2], s[3]);
        s[2] = _mm_aesenc_si128(s[1], s[2]);
        s[1] = _mm_aesenc_si128(s[0], s[1]);
        s[0] = _mm_xor_si128(_mm_aesenc_si128(s7_old, s[0]), m0);
}

static inline AESNI_TARGET void aesni_state_load(struct aesni_state *state,
                                                 const uint8_t bytes[8][16])
{
        for (int i = 0; i < 8; i++)
                state->s[i] = _mm_loadu_si128((const __m128i *)bytes[i]);
}

static inline AESNI_TARGET void aesni_state_store(const struct aesni_state *state,
                                                  uint8_t bytes[8][16])
{
        for (int i = 0; i < 8; i++)
                _mm_storeu_si128((__m128i *)bytes[i], state->s[i]);
}

static inline AESNI_TARGET void aesni_absorb(struct aesni_state *state, const uint8_t *blocks,
                                             size_t block_count)
{
        for (size_t i = 0; i < block_count; i++) {
                const uint8_t *block = blocks + i * BLOCK_SIZE;
                __m128i m0 = _mm_loadu_si128((const __m128i *)block);
                __m128i m1 = _mm_loadu_si128((const __m128i *)(block + 16));
                aesni_update(state, m0, m1);
        }
}

static inline AESNI_TARGET void aesni_absorb_tail(struct aesni_state *state, const uint8_t *tail,
                                                  size_t tail_size)
{
        tally_assert(tail_size > 0 && tail_size < BLOCK_SIZE);
        uint8_t padded[BLOCK_SIZE] = {0};
        memcpy(padded, tail, tail_size);
        aesni_absorb(state, padded, 1);
}

static inline AESNI_TARGET u128 aesni_finalize(struct aesni_state *state, uint64_t size)
{
        tally_assert(size <= CHECKSUM_SIZE_MAX);
        __m128i lengths = _mm_set_epi64x(0, (long long)(size * 8));
        __m128i t = _mm_xor_si128(lengths, state->s[2]);
        for (int i = 0; i < FINAL_ROUNDS; i++)
                aesni_update(state, t, t);

        __m128i tag = state->s[0];
        for (int i = 1; i < 7; i++)
                tag = _mm_xor_si128(tag, state->s[i]);
        u128 result;
        _mm_storeu_si128((__m128i *)&result, tag);
        return result;
}

static AESNI_TARGET u128 aesni_checksum(const uint8_t *data, size_t size)
{
        struct aesni_state state;
        aesni_state_load(&state, init_state);
        aesni_absorb(&state, data, size / BLOCK_SIZE);
        if (size % BLOCK_SIZE != 0)
                aesni_absorb_tail(&state, data + size - size % BLOCK_SIZE, size % BLOCK_SIZE);
        return aesni_finalize(&state, size);
}

static AESNI_TARGET void aesni_stream_absorb(uint8_t bytes[8][16], const uint8_t *blocks,
                                             size_t block_count)
{
        struct aesni_state state;
        aesni_state_load(&state, bytes);
        aesni_absorb(&state, blocks, block_count);
        aesni_state_store(&state, bytes);
}

static AESNI_TARGET u128 aesni_stream_final(const uint8_t bytes[8][16], const uint8_t *tail,
                                            size_t tail_size, uint64_t size)
{
        struct aesni_state state;
        aesni_state_load(&state, bytes);
        if (tail_size > 0)
                aesni_absorb_tail(&state, tail, tail_size);
        return aesni_finalize(&state, size);
}

#endif /* CHECKSUM_HAVE_AESNI */

/* Selection. */

/* AUTO until the first use or checksum_select(); then PORTABLE or AESNI, never AUTO again. */
static enum checksum_impl impl_current = CHECKSUM_IMPL_AUTO;

static bool cpu_has_aesni(void)
{
#if CHECKSUM_HAVE_AESNI
        __builtin_cpu_init(); /* harmless if already done; needed if we run before constructors */
        return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
#else
        return false;
#endif
}

bool checksum_select(enum checksum_impl impl)
{
        tally_assert(impl == CHECKSUM_IMPL_AUTO || impl == CHECKSUM_IMPL_PORTABLE ||
                     impl == CHECKSUM_IMPL_AESNI);
        init_state_verify();

        bool aesni = cpu_has_aesni();
        if (impl == CHECKSUM_IMPL_AESNI && !aesni)
                return false;
        if (impl == CHECKSUM_IMPL_AUTO)
                impl = aesni ? CHECKSUM_IMPL_AESNI : CHECKSUM_IMPL_PORTABLE;
        __atomic_store_n(&impl_current, impl, __ATOMIC_RELAXED);
        return true;
}

/* The implementation in use, resolving AUTO on first use. Never returns AUTO. */
static enum checksum_impl impl_get(void)
{
        enum checksum_impl impl = __atomic_load_n(&impl_current, __ATOMIC_RELAXED);
        if (__builtin_expect(impl == CHECKSUM_IMPL_AUTO, 0)) {
                init_state_verify();
                enum checksum_impl best =
                    cpu_has_aesni() ? CHECKSUM_IMPL_AESNI : CHECKSUM_IMPL_PORTABLE;
                /* A concurrent checksum_select() wins over this default. */
                __atomic_compare_exchange_n(&impl_current, &impl, best, false, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED);
                impl = __atomic_load_n(&impl_current, __ATOMIC_RELAXED);
        }
        tally_assert(impl == CHECKSUM_IMPL_PORTABLE || impl == CHECKSUM_IMPL_AESNI);
        return impl;
}

enum checksum_impl checksum_selected(void)
{
        return impl_get();
}

/* Public interface. */

u128 checksum(const void *data, size_t size)
{
        tally_assert(data != NULL || size == 0);
        tally_assert((uint64_t)size <= CHECKSUM_SIZE_MAX);
#if CHECKSUM_HAVE_AESNI
        if (impl_get() == CHECKSUM_IMPL_AESNI)
                return aesni_checksum(data, size);
#endif
        return portable_checksum(data, size);
}

static void stream_absorb(uint8_t state[8][16], const uint8_t *blocks, size_t block_count)
{
#if CHECKSUM_HAVE_AESNI
        if (impl_get() == CHECKSUM_IMPL_AESNI) {
                aesni_stream_absorb(state, blocks, block_count);
                return;
        }
#endif
        portable_stream_absorb(state, blocks, block_count);
}

void checksum_stream_init(struct checksum_stream *stream)
{
        tally_assert(stream != NULL);
        memcpy(stream->state, init_state, sizeof(stream->state));
        memset(stream->pending, 0, sizeof(stream->pending));
        stream->pending_size = 0;
        stream->total_size = 0;
}

/*
 * Init(key, nonce): S = [K^N, C1, C0, C1, K^N, K^C0, K^C1, K^C0], then Update(N, K) ten times.
 * Update(M0, M1) is exactly the absorption of the 32-byte block M0 || M1, so the ten rounds go
 * through the selected implementation (AES-NI when present: no key-dependent table lookups).
 */
void checksum_stream_init_keyed(struct checksum_stream *stream,
                                const uint8_t key[CHECKSUM_KEY_SIZE],
                                const uint8_t nonce[CHECKSUM_NONCE_SIZE])
{
        tally_assert(stream != NULL && key != NULL && nonce != NULL);
        for (uint32_t i = 0; i < 16; i++) {
                uint8_t kn = key[i] ^ nonce[i];
                stream->state[0][i] = kn;
                stream->state[1][i] = aegis_c1[i];
                stream->state[2][i] = aegis_c0[i];
                stream->state[3][i] = aegis_c1[i];
                stream->state[4][i] = kn;
                stream->state[5][i] = key[i] ^ aegis_c0[i];
                stream->state[6][i] = key[i] ^ aegis_c1[i];
                stream->state[7][i] = key[i] ^ aegis_c0[i];
        }
        _Alignas(16) uint8_t rounds[INIT_ROUNDS][BLOCK_SIZE];
        for (uint32_t r = 0; r < INIT_ROUNDS; r++) {
                memcpy(rounds[r], nonce, 16);
                memcpy(rounds[r] + 16, key, 16);
        }
        stream_absorb(stream->state, &rounds[0][0], INIT_ROUNDS);
        memset(rounds, 0, sizeof(rounds));
        memset(stream->pending, 0, sizeof(stream->pending));
        stream->pending_size = 0;
        stream->total_size = 0;
}

void checksum_stream_add(struct checksum_stream *stream, const void *data, size_t size)
{
        tally_assert(stream->pending_size < BLOCK_SIZE);
        tally_assert(data != NULL || size == 0);
        tally_assert((uint64_t)size <= CHECKSUM_SIZE_MAX - stream->total_size);
        if (size == 0)
                return;

        const uint8_t *bytes = data;
        stream->total_size += size;
        if (stream->pending_size > 0) {
                size_t take = MIN(size, (size_t)(BLOCK_SIZE - stream->pending_size));
                memcpy(stream->pending + stream->pending_size, bytes, take);
                stream->pending_size += (uint32_t)take;
                bytes += take;
                size -= take;
                if (stream->pending_size < BLOCK_SIZE)
                        return;
                stream_absorb(stream->state, stream->pending, 1);
                stream->pending_size = 0;
        }

        size_t block_count = size / BLOCK_SIZE;
        if (block_count > 0)
                stream_absorb(stream->state, bytes, block_count);
        stream->pending_size = (uint32_t)(size % BLOCK_SIZE);
        memcpy(stream->pending, bytes + block_count * BLOCK_SIZE, stream->pending_size);
}

/*
 * Leaves the stream untouched: more adds may follow, and a later final covers everything added
 * so far.
 */
u128 checksum_stream_final(struct checksum_stream *stream)
{
        tally_assert(stream->pending_size < BLOCK_SIZE);
        tally_assert(stream->total_size <= CHECKSUM_SIZE_MAX);
        tally_assert(stream->total_size % BLOCK_SIZE == stream->pending_size);
#if CHECKSUM_HAVE_AESNI
        if (impl_get() == CHECKSUM_IMPL_AESNI)
                return aesni_stream_final((const uint8_t(*)[16])stream->state, stream->pending,
                                          stream->pending_size, stream->total_size);
#endif
        return portable_stream_final((const uint8_t(*)[16])stream->state, stream->pending,
                                     stream->pending_size, stream->total_size);
}
