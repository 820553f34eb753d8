/*
 * main.c: `tally <command>`: dispatch to the commands, TigerBeetle's command-line spellings.
 */
#include "cli/cli.h"
#include "io/address.h"
#include "lib/log.h"
#include "ops/http.h"
#include "storage/storage.h"
#include "vsr/replica.h"
#include "wire/checksum.h"

#ifndef TALLY_BUILD_CFLAGS
#define TALLY_BUILD_CFLAGS "unknown"
#endif

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
        "usage:\n"
        "  tally version [--verbose]\n"
        "  tally format --cluster=<u128> --replica=<index> --replica-count=<n> "
        "[--development] <path>\n"
        "  tally start --addresses=<a,b,c> [--development] [--cache=<size>] "
        "[--cluster-key-file=<path>] [--metrics-address=<ip:port>] <path>\n"
        "  tally keygen <path>\n"
        "  tally inspect [--json] [--live] [--verify] <path>\n"
        "  tally backup --addresses=<a,b,c> [--cluster=<u128>] [--cluster-key-file=<path>] "
        "[--replica=<index>] <output>\n"
        "  tally restore --replica-count=<n> [--cluster=<u128>] [--development] <backup> "
        "<output-dir>\n"
        "  tally benchmark [--addresses=<a,b,c>] [--cluster=<u128>] [--accounts=<n>] "
        "[--transfers=<n>] [--batch=<n>] [--clients=<n>] [--hot-accounts=pareto|uniform] "
        "[--id-order=sequential|random] [--query-count=<n>] [--seed=<n>]\n"
        "  tally sim [--seed=<n>] [--replicas=1..6] [--clients=<n>] [--ticks=<n>] "
        "[--liveness-ticks=<n>] [--faults=all|none|<list>] [--verbose] "
        "[--peer-message-size-max=<bytes>]\n"
        "  tally <command> --help\n"
        "\n"
        "every command also takes --log-format=text|json (or TALLY_LOG_FORMAT=json); "
        "TALLY_LOG=debug|info|warn|error|off sets the level\n"
        "addresses: 3000 (port on 127.0.0.1), 127.0.0.1:3000, [::1]:3000, host.name:3000\n";

/* `tally <command> --help`: what the command does and its flags. */
static const struct {
        const char *command;
        const char *text;
} command_help[] = {
        {"version", "usage: tally version [--verbose]\n"
                    "\n"
                    "Prints the release. --verbose adds the build's configuration: compiler, "
                    "flags,\nchecksum implementation, I/O backend and limits.\n"},
        {"format", "usage: tally format --cluster=<u128> --replica=<index> --replica-count=<n> "
                   "[--development] <path>\n"
                   "\n"
                   "Creates a new data file for one replica; never overwrites an existing "
                   "file.\n"
                   "  --cluster        the cluster id every replica and client shares\n"
                   "  --replica        this replica's index, 0..replica-count-1\n"
                   "  --replica-count  replicas in the cluster (1..6)\n"
                   "  --development    small zones (32 KiB messages, 256 WAL slots)\n"},
        {"start", "usage: tally start --addresses=<a,b,c> [--development] [--cache=<size>]\n"
                  "                   [--cluster-key-file=<path>] [--metrics-address=<ip:port>] "
                  "<path>\n"
                  "\n"
                  "Serves the replica of the data file at <path> until SIGINT or SIGTERM.\n"
                  "Memory is fixed at start: the caches plus about 200 MiB; the ledger\n"
                  "holds as much as the disk does.\n"
                  "  --addresses         every replica's address, in replica order\n"
                  "  --cache             the ledger's caches (blocks, objects by id), e.g. 2GiB (default "
                  "512MiB;\n"
                  "                      64MiB for a --development data file)\n"
                  "  --accounts-max      optional: refuse accounts beyond this many\n"
                  "  --transfers-max     optional: refuse transfers beyond this many\n"
                  "  --cluster-key-file  a secret all replicas share: authenticates replica "
                  "traffic\n"
                  "  --metrics-address   serve /metrics, /health/live and /health/ready over "
                  "HTTP there\n"
                  "  --development       accepted for TigerBeetle compatibility (the file "
                  "decides)\n"},
        {"keygen", "usage: tally keygen <path>\n"
                   "\n"
                   "Writes a new random cluster key (for --cluster-key-file) to <path>.\n"},
        {"inspect", "usage: tally inspect [--json] [--live] [--verify] <path>\n"
                    "\n"
                    "Checks every checksum of a data file (superblock copies, journal headers "
                    "and bodies,\ncheckpoint manifest and blocks, client replies) and says "
                    "what is damaged and what\n`tally start` would do. Exit status: 0 intact, "
                    "3 damaged but repairable (start repairs\nfrom peers or drops a torn "
                    "journal head), 1 start would fail, 2 bad usage.\n"
                    "  --json    the same as one JSON object\n"
                    "  --live    read a running replica's file without the lock (may be "
                    "mid-write)\n"
                    "  --verify  also load the checkpoint into a ledger and check its "
                    "invariants\n"},
        {"backup", "usage: tally backup --addresses=<a,b,c> [--cluster=<u128>] "
                   "[--cluster-key-file=<path>] [--replica=<index>]\n"
                   "                    [--accounts-max=<n>] [--transfers-max=<n>] <output>\n"
                   "\n"
                   "Copies a running cluster's newest durable checkpoint (ledger and client "
                   "sessions) into\n<output> without stopping it, then reads the file back, "
                   "checks every checksum and the\nledger's invariants. Exit status 0 only if "
                   "all of it passed.\n"
                   "  --addresses         every replica's address, in replica order\n"
                   "  --cluster           the cluster id (default 0)\n"
                   "  --cluster-key-file  the replicas' key file, if they use one\n"
                   "  --replica           copy from this replica (default: a backup, not the "
                   "primary)\n"
                   "  --accounts-max, --transfers-max  capacities to verify with (as start's)\n"},
        {"restore", "usage: tally restore --replica-count=<n> [--cluster=<u128>] "
                    "[--development] <backup> <output-dir>\n"
                    "\n"
                    "Checks a backup file (checksums, ledger invariants), then writes the data "
                    "files\n<output-dir>/<cluster>_<i>.tally of a new cluster of n replicas "
                    "whose state is the\nbackup's checkpoint. Start them with `tally start` "
                    "as any cluster.\n"
                    "  --replica-count  replicas of the new cluster (1..6)\n"
                    "  --cluster        must be the backup's cluster id if given\n"
                    "  --development    small zones, as `format --development` (use the "
                    "source's setting)\n"
                    "  --accounts-max, --transfers-max  capacities to verify with (as start's)\n"},
        {"benchmark", "usage: tally benchmark [--addresses=<a,b,c>] [--cluster=<u128>] "
                      "[--accounts=<n>] [--transfers=<n>] [--batch=<n>]\n"
                      "                       [--clients=<n>] "
                      "[--hot-accounts=pareto|uniform] [--id-order=sequential|random]\n"
                      "                       [--query-count=<n>] [--seed=<n>] "
                      "[--latency-log=<path>]\n"
                      "\n"
                      "Creates accounts, sends transfers, verifies balances and runs queries; "
                      "prints\nthroughput and latency. Without --addresses it starts a "
                      "temporary replica.\n"},
        {"sim", "usage: tally sim [--seed=<n>] [--replicas=1..6] [--clients=<n>] "
                "[--ticks=<n>] [--liveness-ticks=<n>]\n"
                "                 [--faults=all|none|<list>] [--verbose] "
                "[--peer-message-size-max=<bytes>]\n"
                "\n"
                "Runs the deterministic simulator for one seed; prints the command that "
                "replays a failure.\n"},
};

static bool is_help(const char *arg)
{
        return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

/*
 * Removes --log-format=<text|json> from argv (any position, any command) and applies it.
 * Returns the new argc, or -1 with an error printed.
 */
static int log_format_flag(int argc, char **argv)
{
        int out = 0;
        for (int i = 0; i < argc; i++) {
                if (strncmp(argv[i], "--log-format=", 13) != 0) {
                        argv[out++] = argv[i];
                        continue;
                }
                const char *value = argv[i] + 13;
                if (strcmp(value, "json") == 0) {
                        log_set_format(LOG_FORMAT_JSON);
                } else if (strcmp(value, "text") == 0) {
                        log_set_format(LOG_FORMAT_TEXT);
                } else {
                        cli_error("--log-format: expected text or json, got '%s'", value);
                        return -1;
                }
        }
        argv[out] = NULL;
        return out;
}

static void version_verbose(void)
{
        (void)checksum(NULL, 0);
        enum checksum_impl impl = checksum_selected();
        printf("build:\n");
        printf("  compiler: gcc %s\n", __VERSION__);
#if defined(__SANITIZE_ADDRESS__)
        printf("  variant: asan (AddressSanitizer + UBSan)\n");
#else
        printf("  variant: release\n");
#endif
#ifdef __OPTIMIZE__
        printf("  optimized: yes\n");
#else
        printf("  optimized: no\n");
#endif
#ifdef TALLY_DEBUG
        printf("  debug invariants (TALLY_DEBUG): on\n");
#else
        printf("  debug invariants (TALLY_DEBUG): off\n");
#endif
        printf("  cflags: %s\n", TALLY_BUILD_CFLAGS);
        printf("  checksum: AEGIS-128L, %s\n",
               impl == CHECKSUM_IMPL_AESNI ? "AES-NI" : "portable (table-based AES)");
        printf("  io backend: io_uring (raw system calls, no liburing)\n");
        printf("  data file format version: %u\n", STORAGE_FORMAT_VERSION);
        printf("limits:\n");
        printf("  message size max: %u bytes (%u with --development)\n", WIRE_MESSAGE_SIZE_MAX,
               WIRE_MESSAGE_SIZE_MAX_DEVELOPMENT);
        printf("  journal slots: %u (%u with --development)\n", STORAGE_WAL_SLOTS_DEFAULT,
               STORAGE_WAL_SLOTS_DEVELOPMENT);
        printf("  client sessions: %u\n", REPLICA_CLIENTS_MAX);
        printf("  pipeline: %u prepares, request queue: %u\n", REPLICA_PIPELINE_MAX,
               REPLICA_REQUEST_QUEUE_MAX);
        printf("  replicas max: %u\n", ADDRESSES_MAX);
        printf("  grid block size: %u bytes, grid blocks max: %u\n", GRID_BLOCK_SIZE,
               GRID_BLOCKS_MAX);
        printf("  metrics: %u connections, %u-byte requests, %u-byte responses\n",
               HTTP_CONNECTIONS_MAX, HTTP_REQUEST_SIZE_MAX, HTTP_RESPONSE_SIZE_MAX);
}

void cli_error(const char *fmt, ...)
{
        char line[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        fprintf(stderr, "error: %s\n", line);
}

char **cli_argv;

int main(int argc, char **argv)
{
        /* A copy: log_format_flag takes its flag out of argv. */
        static char *arguments[256];
        if (argc < (int)ARRAY_LEN(arguments)) {
                memcpy(arguments, argv, (size_t)argc * sizeof(char *));
                arguments[argc] = NULL;
                cli_argv = arguments;
        }
        log_init_from_env();
        argc = log_format_flag(argc, argv);
        if (argc < 0)
                return 2;
        if (argc < 2) {
                cli_error("missing command");
                fputs(usage, stderr);
                return 2;
        }
        const char *command = argv[1];
        for (int i = 2; i < argc; i++) {
                if (!is_help(argv[i]))
                        continue;
                for (uint32_t k = 0; k < ARRAY_LEN(command_help); k++) {
                        if (strcmp(command, command_help[k].command) == 0) {
                                fputs(command_help[k].text, stdout);
                                return 0;
                        }
                }
        }
        if (strcmp(command, "version") == 0) {
                bool verbose = false;
                for (int i = 2; i < argc; i++) {
                        if (strcmp(argv[i], "--verbose") != 0) {
                                cli_error("unexpected argument '%s' for version", argv[i]);
                                return 2;
                        }
                        verbose = true;
                }
                printf("Tally version %s (TigerBeetle %s compatible)\n", TALLY_VERSION,
                       TALLY_VERSION);
                if (verbose)
                        version_verbose();
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
        if (strcmp(command, "backup") == 0)
                return cli_backup(argc - 2, argv + 2);
        if (strcmp(command, "restore") == 0)
                return cli_restore(argc - 2, argv + 2);
        if (strcmp(command, "help") == 0 || strcmp(command, "--help") == 0 ||
            strcmp(command, "-h") == 0) {
                fputs(usage, stdout);
                return 0;
        }
        cli_error("unknown command '%s' (see 'tally help')", command);
        return 2;
}
