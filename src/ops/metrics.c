/*
 * metrics.c: see metrics.h. Every family is written on every scrape, labelled series of
 * per-kind counters included (zeros too, so rate() has a start), except create result codes,
 * which appear once seen (there are 96 of them).
 */
#include "ops/metrics.h"
#include "ledger/ledger.h"
#include "net/bus.h"
#include "storage/storage.h"
#include "vsr/replica.h"
#include "wire/types.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* From docs/result-codes.csv (TigerBeetle 0.16.68). */
static const char *const account_result_names[] = {
        [0] = "ok",
        [1] = "linked_event_failed",
        [2] = "linked_event_chain_open",
        [3] = "timestamp_must_be_zero",
        [4] = "reserved_field",
        [5] = "reserved_flag",
        [6] = "id_must_not_be_zero",
        [7] = "id_must_not_be_int_max",
        [8] = "flags_are_mutually_exclusive",
        [9] = "debits_pending_must_be_zero",
        [10] = "debits_posted_must_be_zero",
        [11] = "credits_pending_must_be_zero",
        [12] = "credits_posted_must_be_zero",
        [13] = "ledger_must_not_be_zero",
        [14] = "code_must_not_be_zero",
        [15] = "exists_with_different_flags",
        [16] = "exists_with_different_user_data_128",
        [17] = "exists_with_different_user_data_64",
        [18] = "exists_with_different_user_data_32",
        [19] = "exists_with_different_ledger",
        [20] = "exists_with_different_code",
        [21] = "exists",
        [22] = "imported_event_expected",
        [23] = "imported_event_not_expected",
        [24] = "imported_event_timestamp_out_of_range",
        [25] = "imported_event_timestamp_must_not_advance",
        [26] = "imported_event_timestamp_must_not_regress",
};
static const char *const transfer_result_names[] = {
        [0] = "ok",
        [1] = "linked_event_failed",
        [2] = "linked_event_chain_open",
        [3] = "timestamp_must_be_zero",
        [4] = "reserved_flag",
        [5] = "id_must_not_be_zero",
        [6] = "id_must_not_be_int_max",
        [7] = "flags_are_mutually_exclusive",
        [8] = "debit_account_id_must_not_be_zero",
        [9] = "debit_account_id_must_not_be_int_max",
        [10] = "credit_account_id_must_not_be_zero",
        [11] = "credit_account_id_must_not_be_int_max",
        [12] = "accounts_must_be_different",
        [13] = "pending_id_must_be_zero",
        [14] = "pending_id_must_not_be_zero",
        [15] = "pending_id_must_not_be_int_max",
        [16] = "pending_id_must_be_different",
        [17] = "timeout_reserved_for_pending_transfer",
        [18] = "deprecated_18",
        [19] = "ledger_must_not_be_zero",
        [20] = "code_must_not_be_zero",
        [21] = "debit_account_not_found",
        [22] = "credit_account_not_found",
        [23] = "accounts_must_have_the_same_ledger",
        [24] = "transfer_must_have_the_same_ledger_as_accounts",
        [25] = "pending_transfer_not_found",
        [26] = "pending_transfer_not_pending",
        [27] = "pending_transfer_has_different_debit_account_id",
        [28] = "pending_transfer_has_different_credit_account_id",
        [29] = "pending_transfer_has_different_ledger",
        [30] = "pending_transfer_has_different_code",
        [31] = "exceeds_pending_transfer_amount",
        [32] = "pending_transfer_has_different_amount",
        [33] = "pending_transfer_already_posted",
        [34] = "pending_transfer_already_voided",
        [35] = "pending_transfer_expired",
        [36] = "exists_with_different_flags",
        [37] = "exists_with_different_debit_account_id",
        [38] = "exists_with_different_credit_account_id",
        [39] = "exists_with_different_amount",
        [40] = "exists_with_different_pending_id",
        [41] = "exists_with_different_user_data_128",
        [42] = "exists_with_different_user_data_64",
        [43] = "exists_with_different_user_data_32",
        [44] = "exists_with_different_timeout",
        [45] = "exists_with_different_code",
        [46] = "exists",
        [47] = "overflows_debits_pending",
        [48] = "overflows_credits_pending",
        [49] = "overflows_debits_posted",
        [50] = "overflows_credits_posted",
        [51] = "overflows_debits",
        [52] = "overflows_credits",
        [53] = "overflows_timeout",
        [54] = "exceeds_credits",
        [55] = "exceeds_debits",
        [56] = "imported_event_expected",
        [57] = "imported_event_not_expected",
        [58] = "imported_event_timestamp_out_of_range",
        [59] = "imported_event_timestamp_must_not_advance",
        [60] = "imported_event_timestamp_must_not_regress",
        [61] = "imported_event_timestamp_must_postdate_debit_account",
        [62] = "imported_event_timestamp_must_postdate_credit_account",
        [63] = "imported_event_timeout_must_be_zero",
        [64] = "closing_transfer_must_be_pending",
        [65] = "debit_account_already_closed",
        [66] = "credit_account_already_closed",
        [67] = "exists_with_different_ledger",
        [68] = "id_already_failed",
};

const char *metrics_result_name(bool accounts, uint32_t code)
{
        if (accounts)
                return code < ARRAY_LEN(account_result_names) ? account_result_names[code] : NULL;
        return code < ARRAY_LEN(transfer_result_names) ? transfer_result_names[code] : NULL;
}

static const struct {
        uint8_t operation;
        const char *name;
} operations[] = {
        {OPERATION_REGISTER, "register"},
        {OPERATION_PULSE, "pulse"},
        {OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED, "create_accounts_unbatched"},
        {OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED, "create_transfers_unbatched"},
        {OPERATION_DEPRECATED_LOOKUP_ACCOUNTS_UNBATCHED, "lookup_accounts_unbatched"},
        {OPERATION_DEPRECATED_LOOKUP_TRANSFERS_UNBATCHED, "lookup_transfers_unbatched"},
        {OPERATION_DEPRECATED_GET_ACCOUNT_TRANSFERS_UNBATCHED,
         "get_account_transfers_unbatched"},
        {OPERATION_DEPRECATED_GET_ACCOUNT_BALANCES_UNBATCHED, "get_account_balances_unbatched"},
        {OPERATION_DEPRECATED_QUERY_ACCOUNTS_UNBATCHED, "query_accounts_unbatched"},
        {OPERATION_DEPRECATED_QUERY_TRANSFERS_UNBATCHED, "query_transfers_unbatched"},
        {OPERATION_GET_CHANGE_EVENTS, "get_change_events"},
        {OPERATION_CREATE_ACCOUNTS, "create_accounts"},
        {OPERATION_CREATE_TRANSFERS, "create_transfers"},
        {OPERATION_LOOKUP_ACCOUNTS, "lookup_accounts"},
        {OPERATION_LOOKUP_TRANSFERS, "lookup_transfers"},
        {OPERATION_GET_ACCOUNT_TRANSFERS, "get_account_transfers"},
        {OPERATION_GET_ACCOUNT_BALANCES, "get_account_balances"},
        {OPERATION_QUERY_ACCOUNTS, "query_accounts"},
        {OPERATION_QUERY_TRANSFERS, "query_transfers"},
};

static const char *const eviction_names[] = {
        [1] = "no_session",
        [2] = "client_release_too_low",
        [3] = "client_release_too_high",
        [4] = "invalid_request_operation",
        [5] = "invalid_request_body",
        [6] = "invalid_request_body_size",
        [7] = "session_too_low",
        [8] = "session_release_mismatch",
};

static const char *status_name(enum replica_status status)
{
        switch (status) {
        case REPLICA_STATUS_NORMAL: return "normal";
        case REPLICA_STATUS_VIEW_CHANGE: return "view_change";
        case REPLICA_STATUS_RECOVERING: return "recovering";
        }
        return "unknown";
}

static uint8_t primary_of(const struct replica *r)
{
        return (uint8_t)(r->view % r->config.replica_count);
}

static bool refusing_capacity(const struct replica *r)
{
        return r->stats.refused_last_tick != 0 &&
               r->tick < r->stats.refused_last_tick + REPLICA_REFUSING_TICKS;
}

/* Resident set size from /proc/self/statm (pages), 0 if unreadable. */
static uint64_t resident_bytes(void)
{
        int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return 0;
        char text[128];
        ssize_t n = read(fd, text, sizeof(text) - 1);
        close(fd);
        if (n <= 0)
                return 0;
        text[n] = '\0';
        unsigned long long size = 0, resident = 0;
        if (sscanf(text, "%llu %llu", &size, &resident) != 2)
                return 0;
        return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void counter(struct expo *e, const char *name, const char *help, uint64_t value)
{
        expo_family(e, name, "counter", help);
        expo_u64(e, name, NULL, NULL, value);
}

static void gauge(struct expo *e, const char *name, const char *help, uint64_t value)
{
        expo_family(e, name, "gauge", help);
        expo_u64(e, name, NULL, NULL, value);
}

static void format_replica(const struct metrics_sources *s, struct expo *e)
{
        const struct replica *r = s->replica;
        expo_family(e, "tally_info", "gauge", "Build and cluster of this process (always 1).");
        expo_u64(e, "tally_info", "version", s->version, 1);
        gauge(e, "tally_replica", "This replica's index in the cluster.", r->config.replica);
        gauge(e, "tally_replicas", "Replicas in the cluster.", r->config.replica_count);
        expo_family(e, "tally_replica_status", "gauge",
                    "1 for the replica's current status, 0 for the others.");
        for (int k = REPLICA_STATUS_NORMAL; k <= REPLICA_STATUS_RECOVERING; k++)
                expo_u64(e, "tally_replica_status", "status",
                         status_name((enum replica_status)k), r->status == (enum replica_status)k);
        gauge(e, "tally_view", "Current view number.", r->view);
        gauge(e, "tally_log_view", "Latest view in which this replica's log was normal.",
              r->log_view);
        gauge(e, "tally_is_primary", "1 if this replica is the primary of its view and normal.",
              r->status == REPLICA_STATUS_NORMAL && primary_of(r) == r->config.replica);
        gauge(e, "tally_primary", "Index of the primary of the current view.", primary_of(r));
        gauge(e, "tally_op", "Highest op whose header is in this replica's journal.", r->op);
        gauge(e, "tally_commit", "Highest op executed by this replica.", r->commit);
        gauge(e, "tally_commit_max", "Highest op this replica knows the cluster committed.",
              r->commit_max);
        gauge(e, "tally_checkpoint_op", "Op of the durable checkpoint.", r->checkpoint_op_durable);
        gauge(e, "tally_fresh",
              "1 while a (re-)formatted replica has not caught up with its cluster.", r->fresh);
        gauge(e, "tally_pipeline_prepares", "Prepares in the primary's pipeline.",
              r->pipeline_count);
        gauge(e, "tally_request_queue_requests", "Requests waiting for the pipeline.",
              r->queue_count);
}

static void format_requests(const struct metrics_sources *s, struct expo *e)
{
        const struct replica_stats *st = &s->replica->stats;
        counter(e, "tally_requests_received_total", "Client requests received (any replica).",
                st->requests_received);
        counter(e, "tally_requests_forwarded_total", "Requests a backup forwarded to the primary.",
                st->requests_forwarded);
        counter(e, "tally_requests_parked_total",
                "Requests kept while no primary could take them (a view change), then taken up.",
                st->requests_parked);
        counter(e, "tally_replies_resent_total", "Cached replies resent for retransmissions.",
                st->replies_resent);
        expo_family(e, "tally_requests_dropped_total", "counter",
                    "Requests dropped without an answer (the client retries), by reason.");
        for (uint32_t k = 0; k < REPLICA_DROP_COUNT; k++)
                expo_u64(e, "tally_requests_dropped_total", "reason",
                         replica_drop_name((enum replica_drop)k), st->requests_dropped_by[k]);
        expo_family(e, "tally_requests_refused_total", "counter",
                    "Write requests refused because the replica cannot take them, by reason.");
        expo_u64(e, "tally_requests_refused_total", "reason", "ledger_capacity",
                 st->refused_capacity);
        expo_family(e, "tally_refusing_writes", "gauge",
                    "1 while the replica refuses writes, by reason (see README, Operations).");
        expo_u64(e, "tally_refusing_writes", "reason", "ledger_capacity",
                 refusing_capacity(s->replica));
        expo_u64(e, "tally_refusing_writes", "reason", "storage_io_error", s->storage->failed);
        expo_u64(e, "tally_refusing_writes", "reason", "disk_full", s->replica->disk_full);
        expo_family(e, "tally_ops_committed_total", "counter",
                    "Ops executed by this replica, by operation.");
        for (uint32_t k = 0; k < ARRAY_LEN(operations); k++)
                expo_u64(e, "tally_ops_committed_total", "operation", operations[k].name,
                         st->committed_by_operation[operations[k].operation]);
        expo_family(e, "tally_events_committed_total", "counter",
                    "Events (accounts, transfers, ids) in ops executed, by operation.");
        for (uint32_t k = 0; k < ARRAY_LEN(operations); k++) {
                uint8_t op = operations[k].operation;
                if (op == OPERATION_REGISTER || op == OPERATION_PULSE)
                        continue;
                expo_u64(e, "tally_events_committed_total", "operation", operations[k].name,
                         st->events_by_operation[op]);
        }
}

static void format_results(const struct metrics_sources *s, struct expo *e)
{
        const struct replica_stats *st = &s->replica->stats;
        expo_family(e, "tally_create_results_total", "counter",
                    "Results of executed create events by code (ok = events without an error).");
        for (int accounts = 1; accounts >= 0; accounts--) {
                const uint64_t *counts = accounts ? st->create_account_results
                                                  : st->create_transfer_results;
                const char *operation = accounts ? "create_accounts" : "create_transfers";
                uint64_t events =
                        accounts ? st->events_by_operation[OPERATION_CREATE_ACCOUNTS] +
                                           st->events_by_operation
                                                   [OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED]
                                 : st->events_by_operation[OPERATION_CREATE_TRANSFERS] +
                                           st->events_by_operation
                                                   [OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED];
                uint64_t failed = 0;
                for (uint32_t code = 1; code < REPLICA_RESULT_CODES_MAX; code++)
                        failed += counts[code];
                expo_u64_2(e, "tally_create_results_total", "operation", operation, "result", "ok",
                           events >= failed ? events - failed : 0);
                for (uint32_t code = 1; code < REPLICA_RESULT_CODES_MAX; code++) {
                        if (counts[code] == 0)
                                continue;
                        const char *name = metrics_result_name(accounts, code);
                        expo_u64_2(e, "tally_create_results_total", "operation", operation,
                                   "result", name != NULL ? name : "other", counts[code]);
                }
        }
        expo_histogram(e, "tally_request_latency_seconds",
                       "Primary: client request received to reply sent, per request.",
                       &st->request_latency);
        expo_histogram(e, "tally_commit_execute_seconds",
                       "Executing one committed op: the ledger's rules, its trees' flushes and "
                       "compaction steps.",
                       &st->commit_execute);
        counter(e, "tally_slow_commits_total",
                "Committed ops that took 100 ms or more to execute (each is logged, at most one "
                "line a second).",
                st->slow_commits);
        expo_histogram(e, "tally_journal_sync_seconds",
                       "Journal sync duration: an fdatasync covering every small prepare "
                       "written before it, or a large prepare's own synchronous writes.",
                       &s->storage->sync_latency);
        counter(e, "tally_journal_syncs_total",
                "Journal syncs completed (fdatasyncs, and large prepares that synced themselves).",
                s->storage->syncs);
        counter(e, "tally_prepares_total", "Prepares made by this replica as primary.",
                st->prepares);
        counter(e, "tally_checkpoints_total", "Checkpoints made durable.", st->checkpoints);
        counter(e, "tally_checkpoints_skipped_total", "Checkpoints postponed (storage busy).",
                st->checkpoints_skipped);
        counter(e, "tally_wal_full_stalls_total",
                "Times a prepare waited for a checkpoint to free journal slots.",
                st->wal_full_stalls);
}

static void format_cluster(const struct metrics_sources *s, struct expo *e)
{
        const struct replica *r = s->replica;
        const struct replica_stats *st = &r->stats;
        counter(e, "tally_view_changes_total", "View changes this replica took part in.",
                st->view_changes);
        counter(e, "tally_repairs_requested_total", "Missing prepares asked of peers.",
                st->repairs_requested);
        counter(e, "tally_repairs_served_total", "Prepares sent to peers that asked.",
                st->repairs_served);
        counter(e, "tally_grid_repairs_total",
                "Times this replica met a damaged grid block and restarted itself to copy a "
                "peer's checkpoint (counted across those restarts).",
                s->grid_repairs);
        counter(e, "tally_state_syncs_started_total", "State syncs (checkpoint copies) started.",
                st->state_syncs_started);
        counter(e, "tally_state_syncs_installed_total", "State syncs completed and installed.",
                st->state_syncs_installed);
        counter(e, "tally_state_sync_prepares_total",
                "Prepares journaled (and acknowledged) while a state sync ran.",
                st->state_sync_prepares);
        counter(e, "tally_grid_blocks_repaired_total",
                "Damaged blocks of this replica's checkpoint rewritten from a peer's copy.",
                st->grid_blocks_repaired);
        counter(e, "tally_state_sync_retargets_total",
                "Times a state sync that lasted as long as the journal's ring asked its source "
                "for a newer checkpoint.",
                st->state_sync_retargets);
        counter(e, "tally_backup_served_bytes_total",
                "Checkpoint bytes sent to `tally backup` connections.",
                s->backup_pin != NULL ? s->backup_pin->bytes_read : 0);
        gauge(e, "tally_backup_pinned_checkpoint_op",
              "The checkpoint kept readable for a backup in progress (0: none).",
              s->backup_pin != NULL && s->backup_pin->active ? s->backup_pin->op : 0);
        gauge(e, "tally_state_sync_active", "1 while copying a peer's checkpoint.",
              r->sync.active);
        gauge(e, "tally_state_sync_received_bytes",
              "Bytes of the checkpoint being copied that are here (found or copied) so far.",
              r->sync.active ? r->sync.present * LSM_BLOCK_SIZE : 0);
        gauge(e, "tally_state_sync_size_bytes", "Size of the checkpoint being copied.",
              r->sync.active ? r->sync.block_count * LSM_BLOCK_SIZE : 0);
        counter(e, "tally_state_sync_copied_bytes_total",
                "Bytes of grid blocks state syncs copied from peers.",
                st->state_sync_blocks_copied * LSM_BLOCK_SIZE);
        counter(e, "tally_state_sync_kept_bytes_total",
                "Bytes of the checkpoints state syncs completed that were already here, not copied.",
                st->state_sync_blocks_kept * LSM_BLOCK_SIZE);
        counter(e, "tally_peer_messages_dropped_total", "Replica messages refused (see logs).",
                r->peer_messages_dropped);
        if (r->config.replica_count > 1) {
                expo_family(e, "tally_peer_connected", "gauge",
                            "1 if the connection to that replica is established.");
                for (uint8_t k = 0; k < r->config.replica_count; k++) {
                        if (k == r->config.replica)
                                continue;
                        char peer[8];
                        snprintf(peer, sizeof(peer), "%u", k);
                        expo_u64(e, "tally_peer_connected", "peer", peer,
                                 bus_peer_connected(s->bus, k));
                }
        }
}

static void format_bus(const struct metrics_sources *s, struct expo *e)
{
        const struct bus_stats *b = &s->bus->stats;
        gauge(e, "tally_connections", "Open connections (clients and replicas).",
              b->connections_active);
        counter(e, "tally_connections_accepted_total", "Connections accepted.",
                b->connections_accepted);
        counter(e, "tally_connections_closed_bad_input_total",
                "Connections closed for bad framing, checksums or cluster.",
                b->connections_closed_bad_input);
        expo_family(e, "tally_connection_refusals_total", "counter",
                    "Connection limits enforced, by kind (README: At the connection limits).");
        for (uint32_t k = 0; k < BUS_REFUSAL_COUNT; k++)
                expo_u64(e, "tally_connection_refusals_total", "kind",
                         bus_refusal_name((enum bus_refusal)k), b->refusals[k]);
        counter(e, "tally_messages_received_total", "Messages received.", b->messages_received);
        counter(e, "tally_messages_sent_total", "Messages sent.", b->messages_sent);
        counter(e, "tally_messages_dropped_invalid_total", "Well-framed invalid messages dropped.",
                b->messages_dropped_invalid);
        counter(e, "tally_messages_dropped_no_peer_total",
                "Messages to a replica dropped: no connection to it.",
                b->messages_dropped_no_peer);
        counter(e, "tally_peer_connects_total", "Peer connections established.",
                b->peer_connects);
        counter(e, "tally_peer_connect_failures_total", "Outgoing peer connects that failed.",
                b->peer_connect_failures);
        counter(e, "tally_peer_resolve_failures_total", "Peer host names that did not resolve.",
                b->peer_resolve_failures);
        counter(e, "tally_peer_auth_failures_total", "Peer handshakes or tags that failed.",
                b->peer_auth_failures);
        counter(e, "tally_peer_claims_refused_total",
                "Connections refused a live peer's identity.", b->peer_claims_refused);
        counter(e, "tally_peer_silent_closes_total", "Silent peer connections redialled.",
                b->peer_silent_closes);
        counter(e, "tally_replica_messages_unauthenticated_total",
                "Replica commands on connections that are not a peer's.",
                b->replica_messages_unauthenticated);
}

static void format_sessions(const struct metrics_sources *s, struct expo *e)
{
        const struct replica *r = s->replica;
        uint32_t used = 0;
        for (uint32_t k = 0; k < REPLICA_CLIENTS_MAX; k++)
                used += r->clients[k].used;
        gauge(e, "tally_client_sessions", "Client sessions registered.", used);
        gauge(e, "tally_client_sessions_max", "Client sessions the cluster keeps.",
              REPLICA_CLIENTS_MAX);
        counter(e, "tally_sessions_evicted_total",
                "Sessions evicted to make room for a new client.", r->stats.sessions_evicted);
        expo_family(e, "tally_evictions_total", "counter", "Eviction messages sent, by reason.");
        for (uint32_t k = 1; k < ARRAY_LEN(eviction_names); k++)
                expo_u64(e, "tally_evictions_total", "reason", eviction_names[k],
                         r->stats.evictions_by_reason[k]);
}

static void format_resources(const struct metrics_sources *s, struct expo *e)
{
        struct ledger_stats ls;
        ledger_get_stats(s->ledger, &ls);
        gauge(e, "tally_accounts", "Accounts stored.", ls.accounts);
        gauge(e, "tally_accounts_max", "Accounts the ledger can hold (--accounts-max).",
              s->accounts_max);
        gauge(e, "tally_transfers", "Transfers stored.", ls.transfers);
        gauge(e, "tally_transfers_max", "Transfers the ledger can hold (--transfers-max).",
              s->transfers_max);
        gauge(e, "tally_pending_transfers", "Pending transfers not yet posted, voided or expired.",
              ls.pending_live);
        gauge(e, "tally_ledger_memory_bytes", "Memory reserved for the ledger.",
              ls.memory_bytes);
        counter(e, "tally_grid_cache_hits_total",
                "Grid blocks the ledger found in its block cache (--cache).", ls.grid_cache_hits);
        counter(e, "tally_grid_blocks_read_total",
                "Grid blocks the ledger read from the data file: block cache misses.",
                ls.grid_blocks_read);
        counter(e, "tally_grid_filter_pages_read_total",
                "4 KiB pages of key filters read past the block cache to check new ids: many "
                "a second means the id filters outgrew --cache.",
                ls.grid_pages_read);
        const struct message_pool *pool = s->pool;
        gauge(e, "tally_message_pool_messages", "Message buffers in the pool.", pool->count);
        gauge(e, "tally_message_pool_messages_used", "Message buffers in use.",
              pool->count - pool->free_count);
        gauge(e, "tally_message_pool_bytes", "Memory reserved for message buffers.",
              (uint64_t)pool->count * WIRE_MESSAGE_SIZE_MAX);
        gauge(e, "tally_resident_memory_bytes", "Resident set size (/proc/self/statm).",
              resident_bytes());
        const struct storage *st = s->storage;
        gauge(e, "tally_data_file_size_bytes", "Size of the data file.",
              st->superblock.file_size);
        gauge(e, "tally_data_file_grid_bytes", "Bytes of the data file's grid (checkpoints).",
              st->superblock.grid_size);
        struct statvfs fs;
        bool have_fs = fstatvfs(st->fd, &fs) == 0;
        gauge(e, "tally_data_file_free_bytes",
              "Space available to the data file's file system (statvfs f_bavail).",
              have_fs ? (uint64_t)fs.f_bavail * fs.f_frsize : 0);
        gauge(e, "tally_data_file_filesystem_bytes", "Size of the data file's file system.",
              have_fs ? (uint64_t)fs.f_blocks * fs.f_frsize : 0);
        expo_family(e, "tally_start_time_seconds", "gauge", "When this process started (Unix).");
        expo_f64(e, "tally_start_time_seconds", NULL, NULL, (double)s->started_realtime_ns / 1e9);
}

static void format_http(const struct metrics_sources *s, struct expo *e)
{
        const struct http_stats *h = s->http;
        counter(e, "tally_metrics_requests_total", "Requests answered by the metrics server.",
                h->responses);
        counter(e, "tally_metrics_refused_total",
                "Metrics connections closed at accept: all slots in use.", h->refused_full);
        counter(e, "tally_metrics_timeouts_total", "Metrics connections closed for slowness.",
                h->timeouts);
        counter(e, "tally_metrics_bad_requests_total", "Malformed or unsupported HTTP requests.",
                h->bad_requests);
        expo_family(e, "tally_metrics_handler_seconds_total", "counter",
                    "Time the event loop spent building metrics and health responses.");
        expo_f64(e, "tally_metrics_handler_seconds_total", NULL, NULL,
                 (double)h->handler_ns / 1e9);
}

void metrics_format(const struct metrics_sources *sources, struct expo *expo)
{
        format_replica(sources, expo);
        format_requests(sources, expo);
        format_results(sources, expo);
        format_cluster(sources, expo);
        format_bus(sources, expo);
        format_sessions(sources, expo);
        format_resources(sources, expo);
        format_http(sources, expo);
}

bool metrics_first_primary_waiting(const struct replica *r, const struct bus *bus,
                                   char *missing, size_t missing_size)
{
        if (r->status == REPLICA_STATUS_NORMAL || !r->fresh || r->fresh_joined ||
            r->config.replica_count < 2)
                return false;
        size_t used = 0;
        missing[0] = 0;
        for (uint8_t k = 0; k < r->config.replica_count; k++) {
                if (k == r->config.replica || bus_peer_connected(bus, k))
                        continue;
                int n = snprintf(missing + used, missing_size - used, "%sreplica %u",
                                 used > 0 ? ", " : "", k);
                if (n < 0 || (size_t)n >= missing_size - used)
                        break;
                used += (size_t)n;
        }
        return used > 0;
}

bool metrics_ready(const struct metrics_sources *s, char *why, size_t why_size)
{
        const struct replica *r = s->replica;
        uint8_t primary = primary_of(r);
        if (s->storage->failed) {
                snprintf(why, why_size, "refusing writes: a data file write or sync failed");
                return false;
        }
        if (r->disk_full) {
                snprintf(why, why_size, "refusing writes: the data file cannot grow (no space "
                                        "left on its file system)");
                return false;
        }
        char missing[64];
        if (metrics_first_primary_waiting(r, s->bus, missing, sizeof(missing))) {
                snprintf(why, why_size,
                         "status %s in view %u: a new cluster elects its first primary only "
                         "with all %u replicas up; not connected: %s",
                         status_name(r->status), r->view, r->config.replica_count, missing);
                return false;
        }
        if (r->status != REPLICA_STATUS_NORMAL) {
                snprintf(why, why_size, "status %s in view %u", status_name(r->status), r->view);
                return false;
        }
        if (r->sync.active) {
                snprintf(why, why_size,
                         "copying a checkpoint from replica %u (%llu of %llu bytes here)",
                         r->sync.source,
                         (unsigned long long)(r->sync.present * LSM_BLOCK_SIZE),
                         (unsigned long long)(r->sync.block_count * LSM_BLOCK_SIZE));
                return false;
        }
        /* A single replica has nothing to catch up with; in a cluster a fresh one may lack
         * ops its peers committed. */
        if (r->fresh && r->config.replica_count > 1) {
                snprintf(why, why_size, "fresh: not yet caught up with the cluster since format");
                return false;
        }
        if (primary == r->config.replica) {
                uint32_t connected = 1;
                for (uint8_t k = 0; k < r->config.replica_count; k++)
                        connected += k != r->config.replica && bus_peer_connected(s->bus, k);
                if (connected < r->config.replica_count / 2u + 1u) {
                        snprintf(why, why_size,
                                 "primary of view %u reaches %u of the %u replicas a quorum needs",
                                 r->view, connected, r->config.replica_count / 2u + 1u);
                        return false;
                }
        } else if (!bus_peer_connected(s->bus, primary)) {
                snprintf(why, why_size, "no connection to the primary (replica %u of view %u)",
                         primary, r->view);
                return false;
        }
        if (r->commit + METRICS_READY_COMMIT_LAG_MAX < r->commit_max) {
                snprintf(why, why_size, "catching up: commit %llu of %llu",
                         (unsigned long long)r->commit, (unsigned long long)r->commit_max);
                return false;
        }
        struct ledger_stats ls;
        ledger_get_stats(s->ledger, &ls);
        /* Refused recently, or full now (clients back off, so refusals can pause). */
        /* A limit of 0 is none (start's default since --cache). */
        if (refusing_capacity(r) || (s->accounts_max != 0 && ls.accounts >= s->accounts_max) ||
            (s->transfers_max != 0 && ls.transfers >= s->transfers_max)) {
                snprintf(why, why_size,
                         "refusing writes: ledger capacity exhausted (accounts %llu of %llu, "
                         "transfers %llu of %llu)",
                         (unsigned long long)ls.accounts, (unsigned long long)s->accounts_max,
                         (unsigned long long)ls.transfers, (unsigned long long)s->transfers_max);
                return false;
        }
        snprintf(why, why_size, "ready: %s of view %u, commit %llu",
                 primary == r->config.replica ? "primary" : "backup", r->view,
                 (unsigned long long)r->commit);
        return true;
}

void metrics_http_handler(void *context, const char *path, struct http_response *response)
{
        const struct metrics_sources *sources = context;
        if (strcmp(path, "/metrics") == 0) {
                struct expo expo;
                expo_init(&expo, response->body, response->body_capacity);
                metrics_format(sources, &expo);
                response->content_type = EXPO_CONTENT_TYPE;
                response->body_size = expo.overflow ? response->body_capacity + 1 : expo.size;
                return;
        }
        if (strcmp(path, "/health/live") == 0) {
                response->body_size =
                        (uint32_t)snprintf(response->body, response->body_capacity, "live\n");
                return;
        }
        if (strcmp(path, "/health/ready") == 0) {
                char why[256];
                bool ready = metrics_ready(sources, why, sizeof(why));
                response->status = ready ? 200 : 503;
                response->body_size = (uint32_t)snprintf(response->body, response->body_capacity,
                                                         "%s\n", why);
                return;
        }
        response->status = 404;
        response->body_size = (uint32_t)snprintf(
                response->body, response->body_capacity,
                "not found; try /metrics, /health/live or /health/ready\n");
}
