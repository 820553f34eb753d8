/*
 * expo.c: see expo.h.
 */
#include "ops/expo.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void expo_init(struct expo *expo, char *buffer, uint32_t capacity)
{
        tally_assert(capacity > 0);
        expo->buffer = buffer;
        expo->capacity = capacity;
        expo->size = 0;
        expo->overflow = false;
}

__attribute__((format(printf, 2, 3))) static void put(struct expo *expo, const char *fmt, ...)
{
        if (expo->overflow)
                return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(expo->buffer + expo->size, expo->capacity - expo->size, fmt, ap);
        va_end(ap);
        if (n < 0 || (uint32_t)n >= expo->capacity - expo->size) {
                expo->overflow = true;
                return;
        }
        expo->size += (uint32_t)n;
}

static void put_char(struct expo *expo, char c)
{
        if (expo->overflow)
                return;
        if (expo->size + 1 >= expo->capacity) {
                expo->overflow = true;
                return;
        }
        expo->buffer[expo->size++] = c;
        expo->buffer[expo->size] = '\0';
}

/*
 * Escapes `text` for a help line (\\ and \n) or a label value (also \"). Copied a byte at a
 * time without formatting: help texts are most of the page.
 */
static void put_escaped(struct expo *expo, const char *text, bool quotes)
{
        for (const char *p = text; *p != '\0' && !expo->overflow; p++) {
                if (*p == '\\' || (*p == '"' && quotes)) {
                        put_char(expo, '\\');
                        put_char(expo, *p);
                } else if (*p == '\n') {
                        put_char(expo, '\\');
                        put_char(expo, 'n');
                } else {
                        put_char(expo, *p);
                }
        }
}

bool expo_name_valid(const char *name)
{
        if (name == NULL || name[0] == '\0' || (name[0] >= '0' && name[0] <= '9'))
                return false;
        for (const char *p = name; *p != '\0'; p++) {
                bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                          (*p >= '0' && *p <= '9') || *p == '_' || *p == ':';
                if (!ok)
                        return false;
        }
        return true;
}

void expo_family(struct expo *expo, const char *name, const char *type, const char *help)
{
        tally_assert(expo_name_valid(name));
        tally_assert(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                     strcmp(type, "histogram") == 0);
        put(expo, "# HELP %s ", name);
        put_escaped(expo, help, false);
        put(expo, "\n# TYPE %s %s\n", name, type);
}

static void put_labels(struct expo *expo, const char *label_1, const char *value_1,
                       const char *label_2, const char *value_2)
{
        if (label_1 == NULL)
                return;
        tally_assert(expo_name_valid(label_1));
        put(expo, "{%s=\"", label_1);
        put_escaped(expo, value_1, true);
        put(expo, "\"");
        if (label_2 != NULL) {
                tally_assert(expo_name_valid(label_2));
                put(expo, ",%s=\"", label_2);
                put_escaped(expo, value_2, true);
                put(expo, "\"");
        }
        put(expo, "}");
}

void expo_u64(struct expo *expo, const char *name, const char *label, const char *label_value,
              uint64_t value)
{
        expo_u64_2(expo, name, label, label_value, NULL, NULL, value);
}

void expo_u64_2(struct expo *expo, const char *name, const char *label_1, const char *value_1,
                const char *label_2, const char *value_2, uint64_t value)
{
        tally_assert(expo_name_valid(name));
        put(expo, "%s", name);
        put_labels(expo, label_1, value_1, label_2, value_2);
        put(expo, " %llu\n", (unsigned long long)value);
}

void expo_f64(struct expo *expo, const char *name, const char *label, const char *label_value,
              double value)
{
        tally_assert(expo_name_valid(name));
        put(expo, "%s", name);
        put_labels(expo, label, label_value, NULL, NULL);
        put(expo, " %.9g\n", value);
}

void expo_histogram(struct expo *expo, const char *name, const char *help,
                    const struct histogram *histogram)
{
        size_t length = strlen(name);
        tally_assert(length > 8 && strcmp(name + length - 8, "_seconds") == 0);
        tally_assert(length < 100);
        char bucket[112], sum[112], count[112];
        snprintf(bucket, sizeof(bucket), "%s_bucket", name);
        snprintf(sum, sizeof(sum), "%s_sum", name);
        snprintf(count, sizeof(count), "%s_count", name);
        expo_family(expo, name, "histogram", help);
        uint64_t cumulative = 0;
        for (uint32_t i = 0; i < HISTOGRAM_BUCKETS; i++) {
                cumulative += histogram->buckets[i];
                char le[32];
                snprintf(le, sizeof(le), "%g", (double)histogram_bound_ns(i) / 1e9);
                expo_u64(expo, bucket, "le", le, cumulative);
        }
        cumulative += histogram->buckets[HISTOGRAM_BUCKETS];
        tally_assert(cumulative == histogram->count);
        expo_u64(expo, bucket, "le", "+Inf", histogram->count);
        expo_f64(expo, sum, NULL, NULL, (double)histogram->sum_ns / 1e9);
        expo_u64(expo, count, NULL, NULL, histogram->count);
}
