/*
 * metrics.h: what `tally start --metrics-address` serves: the /metrics page (Prometheus text
 * format, every name under `tally_`) and the health verdicts behind /health/live and
 * /health/ready.
 *
 * Reads the replica's, the bus's and the storage's counters as they stand between two events
 * of the loop (the replica itself does no I/O and knows nothing of this). Building the page
 * (~18 KB, ~450 samples) takes 0.2-0.4 ms of the loop, measured; it is built straight into the
 * HTTP connection's fixed buffer.
 */
#ifndef TALLY_OPS_METRICS_H
#define TALLY_OPS_METRICS_H

#include "ops/expo.h"
#include "ops/http.h"

struct replica;
struct bus;
struct storage;
struct message_pool;
struct ledger;

/*
 * A backup whose commit trails the highest op it knows committed by more than this is not
 * ready: it is catching up (repairing, or executing a backlog). Two pipelines' worth: a
 * healthy backup under full load trails by at most about one pipeline.
 */
#define METRICS_READY_COMMIT_LAG_MAX 16u

struct metrics_sources {
        const struct replica *replica;
        const struct bus *bus;
        const struct storage *storage;
        const struct message_pool *pool;
        const struct ledger *ledger;
        const struct backup_pin *backup_pin; /* optional */
        uint64_t accounts_max;
        uint64_t transfers_max;
        const struct http_stats *http;
        uint64_t started_realtime_ns; /* process start, for tally_start_time_seconds */
        uint64_t grid_repairs; /* restarts for a damaged grid block, across re-executions */
        const char *version;
};

/* The whole /metrics page. Check expo->overflow afterwards. */
void metrics_format(const struct metrics_sources *sources, struct expo *expo);
/*
 * A replica of a new cluster (fresh, never in a view) without a primary while some peers are
 * not connected: a new cluster elects its first primary only with every replica up (README,
 * "Replication"). True with "replica 0, replica 2" (the peers not connected) in `missing`.
 */
bool metrics_first_primary_waiting(const struct replica *r, const struct bus *bus,
                                   char *missing, size_t missing_size);
/* True if this replica can serve now; else false with one line saying why in `why`. */
bool metrics_ready(const struct metrics_sources *sources, char *why, size_t why_size);
/* The name of a create_accounts (accounts) or create_transfers result code, or NULL. */
const char *metrics_result_name(bool accounts, uint32_t code);
/* Serves /metrics, /health/live and /health/ready (`context` is struct metrics_sources). */
void metrics_http_handler(void *context, const char *path, struct http_response *response);

#endif
