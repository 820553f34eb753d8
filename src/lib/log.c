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
static int log_replica = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init_from_env(void)
{
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

enum log_level log_get_level(void)
{
        return level_min;
}

void log_set_replica(int replica)
{
        log_replica = replica;
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
        int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, now.tv_nsec / 1000000, level_names[level]);
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
