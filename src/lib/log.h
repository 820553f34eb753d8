/*
 * log.h: one-line, key=value log events on stderr.
 *
 * Each call writes one whole line with a single write(2), so lines from a crashing process are
 * never interleaved halfway. The level says who must act: error (an operator), warn (look into
 * it), info (what happened), debug (only when asked for with TALLY_LOG=debug).
 *
 * With LOG_FORMAT_JSON (TALLY_LOG_FORMAT=json, or `--log-format=json` on any command) each
 * line is instead one JSON object for log pipelines: {"time", "level", "replica", "msg", and
 * every key=value pair of the event as a field}. The message is the text before the first
 * `key=` pair; a value runs to the next ` key=` (so values may hold spaces); values that are
 * plain integers are JSON numbers, the others strings.
 */
#ifndef TALLY_LIB_LOG_H
#define TALLY_LIB_LOG_H

#include <stdint.h>

enum log_level {
        LOG_DEBUG = 0,
        LOG_INFO = 1,
        LOG_WARN = 2,
        LOG_ERROR = 3,
        LOG_OFF = 4,
};

enum log_format {
        LOG_FORMAT_TEXT = 0,
        LOG_FORMAT_JSON = 1,
};

/* Reads TALLY_LOG (debug, info, warn, error, off; info if unset) and TALLY_LOG_FORMAT (text,
 * json). */
void log_init_from_env(void);
void log_set_level(enum log_level level);
void log_set_format(enum log_format format);
/*
 * Writes the JSON object of one event into `out` (NUL-terminated, at most `out_size` bytes,
 * cut short but still valid JSON when it does not fit). Exposed for tests.
 */
uint32_t log_format_json(char *out, uint32_t out_size, const char *time, const char *level,
                         int replica, const char *text);
enum log_level log_get_level(void);
/* Prefix every line with this replica's index; -1 for none. */
void log_set_replica(int replica);

__attribute__((format(printf, 2, 3))) void log_write(enum log_level level, const char *fmt, ...);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
