/*
 * log.h: one-line, key=value log events on stderr.
 *
 * Each call writes one whole line with a single write(2), so lines from a crashing process are
 * never interleaved halfway. The level says who must act: error (an operator), warn (look into
 * it), info (what happened), debug (only when asked for with TALLY_LOG=debug).
 */
#ifndef TALLY_LIB_LOG_H
#define TALLY_LIB_LOG_H

enum log_level {
        LOG_DEBUG = 0,
        LOG_INFO = 1,
        LOG_WARN = 2,
        LOG_ERROR = 3,
        LOG_OFF = 4,
};

/* Reads TALLY_LOG (debug, info, warn, error, off) once; info if unset. */
void log_init_from_env(void);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Prefix every line with this replica's index; -1 for none. */
void log_set_replica(int replica);

__attribute__((format(printf, 2, 3))) void log_write(enum log_level level, const char *fmt, ...);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
