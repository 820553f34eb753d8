/*
 * cli.h: the `tally` commands. Each returns the process exit status.
 */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

#define TALLY_VERSION "0.16.68"

int cli_format(int argc, char **argv);
int cli_start(int argc, char **argv);
int cli_inspect(int argc, char **argv);
int cli_benchmark(int argc, char **argv);
int cli_sim(int argc, char **argv);
int cli_keygen(int argc, char **argv);
int cli_backup(int argc, char **argv);
int cli_restore(int argc, char **argv);

/* The process's arguments as given to main (start re-executes itself with them to repair its
 * grid from a peer). */
extern char **cli_argv;

/* Prints "error: <message>" as one line on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
