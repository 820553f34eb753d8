/*
 * flags.h: command-line flags in TigerBeetle's spelling (`--name=value`, `--switch`).
 *
 * A command declares the flags it accepts; anything else, a missing value, a malformed number
 * or a repeated flag is an error with a one-line message naming the flag.
 */
#ifndef TALLY_LIB_FLAGS_H
#define TALLY_LIB_FLAGS_H

#include "lib/common.h"

enum flag_kind {
        FLAG_SWITCH, /* --development */
        FLAG_STRING, /* --addresses=... */
        FLAG_U64,    /* --replica=0 */
        FLAG_U128,   /* --cluster=... */
        FLAG_BYTES,  /* --cache=512MiB: a size, into u64 (see parse_bytes) */
};

struct flag {
        const char *name; /* without the leading dashes */
        enum flag_kind kind;
        bool required;
        /* Filled in by flags_parse: */
        bool present;
        const char *string;
        uint64_t u64;
        u128 u128;
};

/*
 * Parses argv (after the command name) into `flags` and at most `positional_max` positional
 * arguments. Returns 0, or -1 with a one-line message in `error`.
 */
int flags_parse(int argc, char **argv, struct flag *flags, uint32_t flag_count,
                const char **positional, uint32_t positional_max, uint32_t *positional_count,
                char *error, size_t error_size);

/* Decimal u128 ("0".."340282366920938463463374607431768211455"); false if malformed. */
bool parse_u128(const char *text, u128 *out);
bool parse_u64(const char *text, uint64_t *out);
/*
 * A size in bytes: digits and an optional binary unit, KiB MiB GiB TiB (or K M G T, with or
 * without a trailing B), or B. False if malformed or beyond 2^64 - 1.
 */
bool parse_bytes(const char *text, uint64_t *out);
/* Formats a u128 in decimal. `out` must hold 40 bytes. */
void format_u128(u128 value, char *out);

#endif
