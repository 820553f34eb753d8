/*
 * common.h: the few definitions every Tally module shares.
 *
 * Fixed-width types, the 128-bit integer type used by every on-wire field, an assertion that
 * stays on in release builds (a broken internal invariant must stop the process, never let it
 * carry on with corrupt state), and small helpers for sizes.
 */
#ifndef TALLY_LIB_COMMON_H
#define TALLY_LIB_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef unsigned __int128 u128;

#define U128_MAX (~(u128)0)

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "Tally's wire and disk formats are little-endian; big-endian hosts are not supported"
#endif

/* Assertions are part of the program's logic and are never compiled out. */
#define tally_assert(cond)                                                                        \
        do {                                                                                      \
                if (__builtin_expect(!(cond), 0))                                                 \
                        tally_assert_fail(#cond, __FILE__, __LINE__, __func__);                   \
        } while (0)

_Noreturn void tally_assert_fail(const char *expr, const char *file, int line, const char *func);

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
