/*
 * expo.h: Prometheus text exposition format 0.0.4, written into a fixed buffer.
 *
 * A metric family is a `# HELP` and a `# TYPE` line followed by its samples; names and label
 * names are [a-zA-Z_:][a-zA-Z0-9_:]* (asserted: they are compile-time strings), label values
 * and help text are escaped. Writing past the buffer sets `overflow` and writes nothing more,
 * so a caller checks once at the end.
 */
#ifndef TALLY_OPS_EXPO_H
#define TALLY_OPS_EXPO_H

#include "lib/common.h"
#include "lib/histogram.h"

#define EXPO_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct expo {
        char *buffer;
        uint32_t capacity;
        uint32_t size;
        bool overflow;
};

void expo_init(struct expo *expo, char *buffer, uint32_t capacity);
/* `type`: "counter", "gauge", "histogram". */
void expo_family(struct expo *expo, const char *name, const char *type, const char *help);
/* A sample without labels, or with one label (label NULL: none). */
void expo_u64(struct expo *expo, const char *name, const char *label, const char *label_value,
              uint64_t value);
void expo_f64(struct expo *expo, const char *name, const char *label, const char *label_value,
              double value);
/* A sample with two labels. */
void expo_u64_2(struct expo *expo, const char *name, const char *label_1, const char *value_1,
                const char *label_2, const char *value_2, uint64_t value);
/* A whole histogram family in seconds: `name` must end in _seconds. */
void expo_histogram(struct expo *expo, const char *name, const char *help,
                    const struct histogram *histogram);
/* True if `name` is a valid metric or label name. */
bool expo_name_valid(const char *name);

#endif
