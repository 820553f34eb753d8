/*
 * sim.c: `tally sim`: run the deterministic simulator (src/sim/) for one seed.
 *
 * Prints one summary line; on a failure also the check that failed and the exact command that
 * replays the run, and exits 1. An assertion inside a replica aborts the process: the replay
 * command is printed then too (from a SIGABRT handler, with write(2) only).
 */
#include "cli/cli.h"
#include "lib/flags.h"
#include "lib/log.h"
#include "sim/sim.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char replay_line[512];

static void on_abort(int signal)
{
        (void)signal;
        ssize_t n = write(STDOUT_FILENO, replay_line, strlen(replay_line));
        (void)n;
        _exit(1);
}

static void faults_text(uint32_t faults, char *out, size_t size)
{
        if (faults == SIM_FAULTS_ALL) {
                snprintf(out, size, "all");
                return;
        }
        size_t used = 0;
        out[0] = '\0';
        for (uint32_t f = 0; f < SIM_FAULT_COUNT && used < size; f++)
                if (faults & (1u << f))
                        used += (size_t)snprintf(out + used, size - used, "%s%s",
                                                 used > 0 ? "," : "", sim_fault_name(f));
        if (used == 0)
                snprintf(out, size, "none");
}

int cli_sim(int argc, char **argv)
{
        struct flag flags[] = {
                {.name = "seed", .kind = FLAG_U64},
                {.name = "replicas", .kind = FLAG_U64},
                {.name = "clients", .kind = FLAG_U64},
                {.name = "ticks", .kind = FLAG_U64},
                {.name = "liveness-ticks", .kind = FLAG_U64},
                {.name = "faults", .kind = FLAG_STRING},
                {.name = "verbose", .kind = FLAG_SWITCH},
                {.name = "peer-message-size-max", .kind = FLAG_U64},
        };
        char error[512];
        uint32_t positional_count = 0;
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), NULL, 0, &positional_count, error,
                        sizeof(error)) != 0) {
                cli_error("sim: %s", error);
                return 2;
        }
        struct sim_options options = {
                .seed = flags[0].present ? flags[0].u64 : 1,
                .replica_count = (uint32_t)flags[1].u64,
                .client_count = (uint32_t)flags[2].u64,
                .ticks = flags[3].u64,
                .liveness_ticks = flags[4].u64,
                .faults = SIM_FAULTS_ALL,
                .verbose = flags[6].present,
                .peer_message_size_max = (uint32_t)MIN(flags[7].u64, 1u << 20),
        };
        if (flags[1].present && (flags[1].u64 < 1 || flags[1].u64 > SIM_REPLICAS_MAX)) {
                cli_error("sim: --replicas must be 1..%u", SIM_REPLICAS_MAX);
                return 2;
        }
        if (flags[2].present && (flags[2].u64 < 1 || flags[2].u64 > SIM_CLIENTS_MAX)) {
                cli_error("sim: --clients must be 1..%u", SIM_CLIENTS_MAX);
                return 2;
        }
        if (flags[5].present && !sim_faults_parse(flags[5].string, &options.faults)) {
                cli_error("sim: --faults: expected all, none or a comma list of: loss, "
                          "duplicate, delay, partition, close, crash, torn, corrupt, "
                          "bad-write, wipe, clock, busy, forge, grid-read, grid-corrupt, "
                          "grid-misdirect, grid-crash, grid-torn");
                return 2;
        }
        sim_options_default(&options);
        if (getenv("TALLY_LOG") == NULL)
                log_set_level(options.verbose ? (getenv("TALLY_SIM_DEBUG") ? LOG_DEBUG : LOG_INFO) : LOG_OFF);
        char faults[256];
        faults_text(options.faults, faults, sizeof(faults));
        char peer_size[96] = "";
        if (options.peer_message_size_max != 0)
                snprintf(peer_size, sizeof(peer_size), " --peer-message-size-max=%u",
                         options.peer_message_size_max);
        snprintf(replay_line, sizeof(replay_line),
                 "replay: tally sim --seed=%llu --replicas=%u --clients=%u --ticks=%llu "
                 "--liveness-ticks=%llu --faults=%s%s\n",
                 (unsigned long long)options.seed, options.replica_count, options.client_count,
                 (unsigned long long)options.ticks, (unsigned long long)options.liveness_ticks,
                 faults, peer_size);
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_abort;
        sigaction(SIGABRT, &sa, NULL);

        static struct sim_report report;
        sim_run(&options, &report);
        printf("sim seed=%llu replicas=%u clients=%u %s time_ms=%llu ops_committed=%llu "
               "requests_acked=%llu retransmissions=%llu view_changes=%llu view_max=%llu "
               "restarts=%llu checkpoints=%llu grid_repairs=%llu sync_prepares=%llu "
               "sync_retargets=%llu blocks_repaired=%llu grid_writes_in_flight_at_crash=%llu "
               "requests_parked=%llu faults:",
               (unsigned long long)options.seed, options.replica_count, options.client_count,
               report.ok ? "ok" : "FAILED", (unsigned long long)report.time_ms,
               (unsigned long long)report.ops_committed,
               (unsigned long long)report.requests_acked,
               (unsigned long long)report.retransmissions,
               (unsigned long long)report.view_changes, (unsigned long long)report.view_max,
               (unsigned long long)report.restarts, (unsigned long long)report.checkpoints,
               (unsigned long long)report.grid_repairs,
               (unsigned long long)report.sync_prepares,
               (unsigned long long)report.sync_retargets,
               (unsigned long long)report.blocks_repaired,
               (unsigned long long)report.grid_writes_in_flight_at_crash,
               (unsigned long long)report.requests_parked);
        for (uint32_t f = 0; f < SIM_FAULT_COUNT; f++)
                printf(" %s=%llu", sim_fault_name(f), (unsigned long long)report.faults[f]);
        printf(" digest=%016llx%016llx\n", (unsigned long long)(report.digest >> 64),
               (unsigned long long)report.digest);
        if (!report.ok) {
                printf("failure: %s\n", report.failure);
                fputs(replay_line, stdout);
                fflush(stdout);
                return 1;
        }
        return 0;
}
