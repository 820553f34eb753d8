/*
 * log.c: formats one log event into a stack buffer and writes it with one write(2).
 */
#include "lib/log.h"
#include "lib/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level level_min = LOG_INFO;
static enum log_format format = LOG_FORMAT_TEXT;
static int log_replica = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init_from_env(void)
{
        const char *format_env = getenv("TALLY_LOG_FORMAT");
        if (format_env != NULL && strcmp(format_env, "json") == 0)
                format = LOG_FORMAT_JSON;
        const char *env = getenv("TALLY_LOG");
        if (env == NULL)
                return;
        for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
                if (strcmp(env, level_names[i]) == 0)
                        level_min = (enum log_level)i;
        }
        if (strcmp(env, "off") == 0)
                level_min = LOG_OFF;
}

void log_set_level(enum log_level level)
{
        level_min = level;
}

void log_set_format(enum log_format value)
{
        format = value;
}

enum log_level log_get_level(void)
{
        return level_min;
}

void log_set_replica(int replica)
{
        log_replica = replica;
}

/* JSON writer into a bounded buffer: stops (keeping room to close the object) when full. */
struct json_out {
        char *out;
        uint32_t size; /* capacity, minus the room kept for "}\0" */
        uint32_t used;
};

static void json_char(struct json_out *j, char c)
{
        if (j->used < j->size)
                j->out[j->used++] = c;
}

static void json_raw(struct json_out *j, const char *text, size_t length)
{
        for (size_t i = 0; i < length; i++)
                json_char(j, text[i]);
}

static void json_string(struct json_out *j, const char *text, size_t length)
{
        if (j->used + 2 > j->size)
                return; /* no room for even an empty string: the caller's key is dropped too */
        json_char(j, '"');
        for (size_t i = 0; i < length && j->used + 2 < j->size; i++) {
                unsigned char c = (unsigned char)text[i];
                if (c == '"' || c == '\\') {
                        if (j->used + 3 >= j->size)
                                break;
                        json_char(j, '\\');
                        json_char(j, (char)c);
                } else if (c < 0x20) {
                        char escaped[8];
                        snprintf(escaped, sizeof(escaped), "\\u%04x", c);
                        if (j->used + 7 >= j->size)
                                break;
                        json_raw(j, escaped, 6);
                } else {
                        json_char(j, (char)c);
                }
        }
        j->out[j->used++] = '"'; /* room was kept */
}

static bool is_key_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* Length of a `key=` starting at `p` (a key is [a-z_][a-z0-9_]*), or 0. */
static size_t key_at(const char *p)
{
        if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
                return 0;
        size_t n = 0;
        while (is_key_char(p[n]))
                n++;
        return p[n] == '=' ? n : 0;
}

/* Where the next " key=" starts after `p`, or the end of the text. */
static const char *next_pair(const char *p)
{
        for (; *p != '\0'; p++) {
                if (*p == ' ' && key_at(p + 1) > 0)
                        return p;
        }
        return p;
}

static bool is_integer(const char *p, size_t length)
{
        size_t i = p[0] == '-' ? 1 : 0;
        if (length <= i || length - i > 18 || (p[i] == '0' && length - i > 1))
                return false;
        for (; i < length; i++) {
                if (p[i] < '0' || p[i] > '9')
                        return false;
        }
        return true;
}

uint32_t log_format_json(char *out, uint32_t out_size, const char *time, const char *level,
                         int replica, const char *text)
{
        tally_assert(out_size >= 64);
        struct json_out j = {.out = out, .size = out_size - 2, .used = 0};
        json_raw(&j, "{\"time\":", 8);
        json_string(&j, time, strlen(time));
        json_raw(&j, ",\"level\":", 9);
        json_string(&j, level, strlen(level));
        if (replica >= 0) {
                char number[16];
                int n = snprintf(number, sizeof(number), ",\"replica\":%d", replica);
                json_raw(&j, number, (size_t)n);
        }
        /* The message: up to the first pair (a line may also start with one). */
        const char *p = text;
        const char *msg_end = key_at(p) > 0 ? p : next_pair(p);
        json_raw(&j, ",\"msg\":", 7);
        json_string(&j, text, (size_t)(msg_end - text));
        p = msg_end;
        /* The pairs; at most 64 (bounded loop), the rest stays in the last value. */
        for (uint32_t pairs = 0; *p != '\0' && pairs < 64; pairs++) {
                if (*p == ' ')
                        p++;
                size_t key_length = key_at(p);
                tally_assert(key_length > 0);
                const char *value = p + key_length + 1;
                const char *value_end = pairs == 63 ? value + strlen(value) : next_pair(value);
                size_t value_length = (size_t)(value_end - value);
                if (replica >= 0 && key_length == 7 && memcmp(p, "replica", 7) == 0) {
                        p = value_end; /* already the "replica" field */
                        continue;
                }
                uint32_t before = j.used;
                json_char(&j, ',');
                json_string(&j, p, key_length);
                json_char(&j, ':');
                if (is_integer(value, value_length))
                        json_raw(&j, value, value_length);
                else
                        json_string(&j, value, value_length);
                if (j.used >= j.size)
                        j.used = before; /* a pair cut short is dropped whole */
                p = value_end;
        }
        out[j.used++] = '}';
        out[j.used] = '\0';
        return j.used;
}

void log_write(enum log_level level, const char *fmt, ...)
{
        if (level < level_min || level >= LOG_OFF)
                return;
        char line[1024];
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        char time_text[96];
        snprintf(time_text, sizeof(time_text), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 now.tv_nsec / 1000000);
        int n;
        if (format == LOG_FORMAT_JSON) {
                char text[1024];
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(text, sizeof(text), fmt, ap);
                va_end(ap);
                char json[2048]; /* on the stack: any thread may log */
                n = (int)log_format_json(json, sizeof(json) - 1, time_text, level_names[level],
                                         log_replica, text);
                json[n++] = '\n';
                ssize_t written = write(STDERR_FILENO, json, (size_t)n);
                (void)written;
                return;
        }
        n = snprintf(line, sizeof(line), "%s %-5s ", time_text, level_names[level]);
        if (log_replica >= 0 && n < (int)sizeof(line))
                n += snprintf(line + n, sizeof(line) - (size_t)n, "replica=%d ", log_replica);
        va_list ap;
        va_start(ap, fmt);
        if (n < (int)sizeof(line))
                n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (n >= (int)sizeof(line) - 1)
                n = (int)sizeof(line) - 2;
        line[n++] = '\n';
        ssize_t written = write(STDERR_FILENO, line, (size_t)n);
        (void)written;
}

_Noreturn void tally_assert_fail(const char *expr, const char *file, int line, const char *func)
{
        fprintf(stderr, "assertion failed: %s at %s:%d in %s\n", expr, file, line, func);
        abort();
}
