/*
 * flags.c: see flags.h.
 */
#include "lib/flags.h"

#include <stdio.h>
#include <string.h>

bool parse_u128(const char *text, u128 *out)
{
        if (text == NULL || *text == '\0')
                return false;
        u128 value = 0;
        for (const char *p = text; *p != '\0'; p++) {
                if (*p < '0' || *p > '9')
                        return false;
                u128 digit = (u128)(*p - '0');
                if (value > (U128_MAX - digit) / 10)
                        return false;
                value = value * 10 + digit;
        }
        *out = value;
        return true;
}

bool parse_u64(const char *text, uint64_t *out)
{
        u128 value;
        if (!parse_u128(text, &value) || value > UINT64_MAX)
                return false;
        *out = (uint64_t)value;
        return true;
}

bool parse_bytes(const char *text, uint64_t *out)
{
        size_t digits = 0;
        while (text[digits] >= '0' && text[digits] <= '9')
                digits++;
        if (digits == 0 || digits > 20)
                return false;
        char number[24];
        memcpy(number, text, digits);
        number[digits] = '\0';
        uint64_t value;
        if (!parse_u64(number, &value))
                return false;
        static const struct {
                const char *name;
                uint32_t shift;
        } units[] = {
                {"", 0},     {"B", 0},    {"K", 10},   {"KB", 10}, {"KiB", 10},
                {"M", 20},   {"MB", 20},  {"MiB", 20}, {"G", 30},  {"GB", 30},
                {"GiB", 30}, {"T", 40},   {"TB", 40},  {"TiB", 40},
        };
        const char *unit = text + digits;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
                if (strcmp(unit, units[i].name) != 0)
                        continue;
                if (units[i].shift > 0 && value > (UINT64_MAX >> units[i].shift))
                        return false;
                *out = value << units[i].shift;
                return true;
        }
        return false;
}

void format_u128(u128 value, char *out)
{
        char digits[40];
        int n = 0;
        do {
                digits[n++] = (char)('0' + (int)(value % 10));
                value /= 10;
        } while (value != 0);
        for (int i = 0; i < n; i++)
                out[i] = digits[n - 1 - i];
        out[n] = '\0';
}

static struct flag *flag_find(struct flag *flags, uint32_t count, const char *name, size_t size)
{
        for (uint32_t i = 0; i < count; i++) {
                if (strlen(flags[i].name) == size && memcmp(flags[i].name, name, size) == 0)
                        return &flags[i];
        }
        return NULL;
}

int flags_parse(int argc, char **argv, struct flag *flags, uint32_t flag_count,
                const char **positional, uint32_t positional_max, uint32_t *positional_count,
                char *error, size_t error_size)
{
        *positional_count = 0;
        for (int i = 0; i < argc; i++) {
                const char *arg = argv[i];
                if (strncmp(arg, "--", 2) != 0) {
                        if (*positional_count == positional_max) {
                                snprintf(error, error_size, "unexpected argument '%s'", arg);
                                return -1;
                        }
                        positional[(*positional_count)++] = arg;
                        continue;
                }
                const char *name = arg + 2;
                const char *equals = strchr(name, '=');
                size_t name_size = equals != NULL ? (size_t)(equals - name) : strlen(name);
                struct flag *f = flag_find(flags, flag_count, name, name_size);
                if (f == NULL) {
                        snprintf(error, error_size, "unknown flag '--%.*s'", (int)name_size,
                                 name);
                        return -1;
                }
                if (f->present) {
                        snprintf(error, error_size, "flag '--%s' given twice", f->name);
                        return -1;
                }
                f->present = true;
                if (f->kind == FLAG_SWITCH) {
                        if (equals != NULL) {
                                snprintf(error, error_size, "flag '--%s' takes no value",
                                         f->name);
                                return -1;
                        }
                        continue;
                }
                if (equals == NULL || equals[1] == '\0') {
                        snprintf(error, error_size, "flag '--%s' needs a value: --%s=<value>",
                                 f->name, f->name);
                        return -1;
                }
                const char *value = equals + 1;
                f->string = value;
                if (f->kind == FLAG_U64 && !parse_u64(value, &f->u64)) {
                        snprintf(error, error_size,
                                 "flag '--%s': '%s' is not a non-negative integer", f->name,
                                 value);
                        return -1;
                }
                if (f->kind == FLAG_BYTES && !parse_bytes(value, &f->u64)) {
                        snprintf(error, error_size,
                                 "flag '--%s': '%s' is not a size (bytes, or a number with KiB, "
                                 "MiB, GiB or TiB)",
                                 f->name, value);
                        return -1;
                }
                if (f->kind == FLAG_U128 && !parse_u128(value, &f->u128)) {
                        snprintf(error, error_size,
                                 "flag '--%s': '%s' is not an unsigned 128-bit integer", f->name,
                                 value);
                        return -1;
                }
        }
        for (uint32_t i = 0; i < flag_count; i++) {
                if (flags[i].required && !flags[i].present) {
                        snprintf(error, error_size, "missing required flag '--%s'",
                                 flags[i].name);
                        return -1;
                }
        }
        return 0;
}
