/*
 * main.c: `tally <command>`: dispatch to the commands, TigerBeetle's command-line spellings.
 */
#include "cli/cli.h"
#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
        "usage:\n"
        "  tally version\n"
        "  tally format --cluster=<u128> --replica=<index> --replica-count=<n> "
        "[--development] <path>\n"
        "  tally start --addresses=<a,b,c> [--development] [--accounts-max=<n>] "
        "[--transfers-max=<n>] [--cluster-key-file=<path>] <path>\n"
        "  tally keygen <path>\n"
        "  tally inspect [--json] [--live] <path>\n"
        "  tally benchmark [--addresses=<a,b,c>] [--cluster=<u128>] [--accounts=<n>] "
        "[--transfers=<n>] [--batch=<n>] [--clients=<n>] [--hot-accounts=pareto|uniform] "
        "[--id-order=sequential|random] [--query-count=<n>] [--seed=<n>]\n"
        "  tally sim [--seed=<n>] [--replicas=1..6] [--clients=<n>] [--ticks=<n>] "
        "[--liveness-ticks=<n>] [--faults=all|none|<list>] [--verbose] "
        "[--peer-message-size-max=<bytes>]\n"
        "\n"
        "addresses: 3000 (port on 127.0.0.1), 127.0.0.1:3000, [::1]:3000, host.name:3000\n";

void cli_error(const char *fmt, ...)
{
        char line[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        fprintf(stderr, "error: %s\n", line);
}

int main(int argc, char **argv)
{
        log_init_from_env();
        if (argc < 2) {
                cli_error("missing command");
                fputs(usage, stderr);
                return 2;
        }
        const char *command = argv[1];
        if (strcmp(command, "version") == 0) {
                if (argc > 2 && strcmp(argv[2], "--verbose") != 0) {
                        cli_error("unexpected argument '%s' for version", argv[2]);
                        return 2;
                }
                printf("Tally version %s (TigerBeetle %s compatible)\n", TALLY_VERSION,
                       TALLY_VERSION);
                return 0;
        }
        if (strcmp(command, "format") == 0)
                return cli_format(argc - 2, argv + 2);
        if (strcmp(command, "start") == 0)
                return cli_start(argc - 2, argv + 2);
        if (strcmp(command, "inspect") == 0)
                return cli_inspect(argc - 2, argv + 2);
        if (strcmp(command, "benchmark") == 0)
                return cli_benchmark(argc - 2, argv + 2);
        if (strcmp(command, "sim") == 0)
                return cli_sim(argc - 2, argv + 2);
        if (strcmp(command, "keygen") == 0)
                return cli_keygen(argc - 2, argv + 2);
        if (strcmp(command, "help") == 0 || strcmp(command, "--help") == 0 ||
            strcmp(command, "-h") == 0) {
                fputs(usage, stdout);
                return 0;
        }
        cli_error("unknown command '%s' (see 'tally help')", command);
        return 2;
}
