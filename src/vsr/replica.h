/*
 * replica.h: the replica protocol, as a pipeline of prepares.
 *
 * Each accepted request becomes a prepare with the next op number, hash-chained to the
 * previous prepare (its `parent` is the previous prepare's checksum) and stamped with the
 * cluster timestamp. Prepares are journaled; once a replication quorum holds one durably it is
 * committed: executed by the ledger in op order and answered. With one replica the quorum is the
 * replica itself, but the stages are the ones the replicated protocol uses.
 *
 * Client sessions follow TigerBeetle 0.16.68 exactly (wire-protocol.md sections 4 and 7): a
 * register creates a session when it commits, every request must chain to the context of the
 * previous reply, the latest reply is cached and resent for a retransmission, and the reasons
 * for eviction are TigerBeetle's.
 *
 * The replica reads no clock and touches no socket or file itself: everything goes through
 * struct replica_env, so the same code can run under a simulator.
 */
#ifndef TALLY_VSR_REPLICA_H
/* State sync: chunks a receiver asks for at once (replica_sync.c, request_chunks). */
#define REPLICA_SYNC_WINDOW 8u
/* State sync: a block once looked for at an address was not there (sync.known). */
#define REPLICA_SYNC_NOT_HERE (~(u128)0)
#define TALLY_VSR_REPLICA_H

#include "ledger/ledger.h"
#include "lib/histogram.h"
#include "wire/message.h"

#define REPLICA_PIPELINE_MAX 8u       /* prepares in flight (journaling, awaiting quorum) */
#define REPLICA_REQUEST_QUEUE_MAX 64u /* accepted requests waiting for the pipeline */
/*
 * Requests kept while no primary can take them (a view change, a new primary catching up, a
 * backup's silent primary), the latest per client, taken up again once one can, or dropped
 * after REPLICA_PARKED_TICKS: 10 s, since an outage without a quorum lasts as long as it
 * lasts, and the client refreshes the copy kept here only when one of its resends, sent to
 * the primary it knows and one backup at random at growing intervals, lands here. A request
 * executes at most once whenever it is taken up (its session says so).
 */
#define REPLICA_PARKED_MAX 16u
#define REPLICA_PARKED_TICKS 1000u
#define REPLICA_CLIENTS_MAX 64u       /* client sessions, as TigerBeetle's clients_max */
#define REPLICA_PREPARE_CACHE 64u     /* backups keep this many recent prepares in memory */
/*
 * The largest view and op a correct cluster can reach, so that no message moves a replica to
 * an absurd state and no arithmetic on them can overflow. Views: a view change takes at least
 * the primary-silence timeout (300 ms), so 2^31 views are 20 years of nothing but view changes. Ops:
 * 2^48 ops at 100,000 a second are 89 years. A peer's message beyond them is dropped; our own
 * view stops at REPLICA_VIEW_MAX rather than wrap.
 */
#define REPLICA_VIEW_MAX ((uint32_t)1 << 31)
#define REPLICA_OP_MAX ((uint64_t)1 << 48)

typedef uint64_t replica_connection;

/*
 * What a replica persists about its view: the view, the latest view in which its log was
 * normal, and the log's end when that view began (its op and header checksum). Every op after
 * the anchor in the journal carries log_view, and every op up to it chains back from it, so
 * recovery can tell the current log from stale entries a view change replaced.
 */
#define REPLICA_NOSTATE_OPS 64u
#define REPLICA_VIEW_PREFIXES 256u
#define REPLICA_NOSTATE_UNKNOWN (~(u128)0)

struct replica_view_state {
        uint32_t view;
        uint32_t log_view;
        uint64_t anchor_op;
        u128 anchor_checksum;
        /* Formatted into the cluster and not yet caught up with it (see replica.fresh). */
        bool fresh;
        bool fresh_joined;        /* and since joined a view whose log ended at: */
        uint64_t fresh_joined_op;
        /* A state sync is writing a peer's blocks into the grid (superblock.grid_syncing). */
        bool grid_syncing;
        /*
         * The log as log_view began: entry i is the low 64 bits of the checksum of the prepare
         * at op anchor_op - i in it (0: unknown). Recovery trusts a journal entry under the
         * anchor only if it is that prepare: a backup that joined a view whose log replaced
         * part of its own, and crashed before repairing it, still holds the cut prepares, which
         * chain from its checkpoint all the same (open_replicated).
         */
        uint64_t view_prefixes[REPLICA_VIEW_PREFIXES];
};

/* A session's reply that a checkpoint must make durable, in its reply slot. */
struct replica_reply_write {
        struct message *reply;
        uint32_t slot;
};

/*
 * What a checkpoint makes durable: the ledger's root as of `op` (already written to the grid by
 * ledger_checkpoint, with the session table in its user bytes) and the changed replies.
 */
struct replica_checkpoint {
        uint64_t op;
        u128 prepare_checksum; /* of the prepare at op: where the hash chain resumes */
        uint64_t timestamp;    /* the cluster timestamp at op */
        struct lsm_block_ref root;
        uint64_t blocks;           /* grid blocks in use (the image is at most this) */
        uint64_t grid_address_max; /* the highest grid block in use */
        struct replica_reply_write replies[REPLICA_CLIENTS_MAX];
        uint32_t reply_count;
};

struct replica_env {
        void *context;
        /* Queue a message on a connection; false if it is gone or congested. */
        bool (*send)(void *context, replica_connection connection, struct message *message);
        bool (*connection_alive)(void *context, replica_connection connection);
        /* Journal a prepare; `done` runs when it is durable. False: try again later. */
        bool (*journal_write)(void *context, struct message *prepare,
                              void (*done)(void *replica, struct message *prepare),
                              void *replica);
        uint64_t (*realtime_ns)(void *context);
        /*
         * Optional: true while the last checkpoint could not be written for lack of space (the
         * durable one is whole: try again later), and whether the file system has room again.
         */
        bool (*storage_full)(void *context);
        bool (*storage_room)(void *context);
        /* Make a checkpoint durable; `done` runs once it is (ok) or failed. False: busy. */
        bool (*checkpoint)(void *context, const struct replica_checkpoint *checkpoint,
                           void (*done)(void *replica, bool ok), void *replica);

        /* ---- used only with more than one replica ---- */

        /* True if the connection is one to another replica (not a client). */
        bool (*connection_is_replica)(void *context, replica_connection connection);
        /* The replica at the other end of a connection, or -1 (a client, or unknown). */
        int (*connection_replica)(void *context, replica_connection connection);
        /* Queue a message to another replica; dropped if there is no connection to it. */
        void (*send_to_replica)(void *context, uint8_t replica, struct message *message);
        /*
         * Read the journaled prepare of `op` into `into` (synchronous). False unless the slot
         * holds that op with header checksum `checksum` (any, when 0) and an intact body.
         */
        bool (*journal_read)(void *context, uint64_t op, u128 checksum, struct message *into);
        /* Persist the view state; `done` runs once durable. False: busy, try again. */
        bool (*view_write)(void *context, const struct replica_view_state *state,
                           void (*done)(void *replica), void *replica);
        /* State sync, serving side: the reply the durable checkpoint keeps in `slot`. */
        bool (*reply_read)(void *context, uint32_t slot, u128 checksum, struct message *into);

        /*
         * Optional: a monotonic clock for the request latency histogram (stats.request_latency);
         * without it (the simulator) latency is not measured.
         */
        uint64_t (*monotonic_ns)(void *context);
        /*
         * Optional: hands the messages queued so far to the network now, before the replica
         * executes an op that may keep its loop busy for long (the server: io_submit).
         */
        void (*flush)(void *context);
        /*
         * Optional: asks the host to call replica_commit_resume soon, once it has handled what
         * is ready (messages received, journal writes done). With it, the replica executes one
         * op per turn of the host's loop: a request that arrived while an op executed is
         * journaled before the next op executes, instead of after it, so its journal write
         * overlaps an execution. Without it, every op ready executes at once.
         */
        void (*defer)(void *context);

        /* Optional, for the simulator's checks: every prepare this replica commits, in order. */
        void (*committed)(void *context, const struct message *prepare,
                          const struct message *reply);
};

/*
 * What a replica's own data file holds when it starts, as the host read it: the durable view
 * state, the checkpoint, and access to the journal. replica_open() rebuilds the state from it.
 */
struct replica_durable {
        struct replica_view_state view_state; /* a formatted file's: {.fresh = true} */
        struct lsm_block_ref checkpoint_root; /* address 0: no checkpoint yet */
        uint64_t checkpoint_blocks;
        uint64_t checkpoint_op;
        u128 checkpoint_prepare_checksum;
        uint64_t checkpoint_timestamp;
        /*
         * The data file names a checkpoint that cannot be read. A replica of a cluster then
         * starts without state and copies a peer's checkpoint; a single replica cannot.
         */
        bool checkpoint_lost;
        void *context;
        int (*read_reply)(void *context, uint32_t slot, u128 checksum, struct message *into);
        /* The header in journal slot `slot`; false if torn, corrupt or never written. */
        bool (*read_header)(void *context, uint32_t slot, struct wire_header *into);
        /*
         * The whole prepare in `slot`, matching `header`; false if torn or corrupt. With
         * header NULL: whatever intact prepare the slot holds (its own checksums verified),
         * which recovers a header whose copy in the headers zone is damaged.
         */
        bool (*read_prepare)(void *context, uint32_t slot, const struct wire_header *header,
                             struct message *into);
};

struct replica_config {
        u128 cluster;
        uint8_t replica;
        uint8_t replica_count;
        uint32_t request_size_max; /* whole message, header included */
        uint32_t checkpoint_interval; /* ops between checkpoints */
        uint32_t wal_slot_count;      /* prepares the journal holds */
};

struct replica_client {
        bool used;
        u128 client;
        uint64_t session;           /* op of the register that created it */
        uint32_t request;           /* latest request number answered */
        uint32_t release;           /* the client's release at register time */
        struct message *reply;      /* latest reply, resent on retransmission */
        uint32_t reply_slot;        /* where the durable copy of `reply` lives (0 or 1) */
        bool reply_dirty;           /* changed since the last checkpoint */
};

/*
 * Where a client is connected to THIS replica (not replicated state): replies, pongs and
 * evictions for the client leave through that connection. `request` is the newest request
 * number the client sent here, so that with several replicas only those that saw a request
 * answer it.
 */
struct replica_client_connection {
        u128 client;
        replica_connection connection;
        uint32_t request;
        uint64_t tick; /* last use, for replacing the oldest entry */
};
#define REPLICA_CLIENT_CONNECTIONS_MAX 256u

/* A prepare the primary is replicating: op in (commit, op]. */
struct replica_pipeline_entry {
        struct message *prepare;
        struct message *reply; /* reserved at prepare time so commit cannot run short */
        uint8_t ok;            /* bit i: replica i holds the prepare durably */
        uint64_t received_ns;  /* its request's arrival (queued_request.received_ns), or 0 */
};

struct replica_queued_request {
        struct message *request;
        replica_connection connection;
        uint64_t received_ns; /* env.monotonic_ns when it arrived, 0 if not measured */
};

/* A checkpoint's blocks in image order, with each one's lsm_block_kind. */
struct replica_image_list {
        struct lsm_block_ref *blocks;
        uint8_t *kinds;
        uint64_t count;
        uint64_t capacity;
};

enum replica_status {
        REPLICA_STATUS_NORMAL = 0,
        REPLICA_STATUS_VIEW_CHANGE = 1,
        REPLICA_STATUS_RECOVERING = 2, /* restarted: waits for the current view */
};

/* What the journal holds for one slot. */
enum replica_slot_state {
        SLOT_EMPTY = 0,   /* no header for this slot's op */
        SLOT_MISSING = 1, /* header known (from a peer), prepare not here yet */
        SLOT_WRITING = 2, /* prepare being written */
        SLOT_DURABLE = 3, /* prepare written and synced */
        SLOT_FAULTY = 4,  /* written here once (maybe acknowledged), the copy is now damaged */
        /*
         * Recovery found no copy at all (a gap in the log, or the slot still holds an older
         * prepare): the write never completed, so it was not acknowledged, unless the disk
         * lost an acknowledged write. A nack, but one a damaged disk could be lying with.
         */
        SLOT_LOST = 5,
};

/* Why a client request was dropped without an answer (the client retries): counted by kind. */
enum replica_drop {
        REPLICA_DROP_CAPACITY_EXHAUSTED, /* the ledger could not hold the batch: refused */
        REPLICA_DROP_DISK_FULL,          /* a write while the data file cannot grow: refused */
        REPLICA_DROP_QUEUE_FULL,         /* REPLICA_REQUEST_QUEUE_MAX requests waiting */
        /* Since 2026-12-05 such requests are kept (REPLICA_PARKED_MAX), not dropped; the two
         * labels stay for dashboards. A backup not in a view drops a forwarded one. */
        REPLICA_DROP_VIEW_CHANGE, /* no primary to prepare it right now */
        REPLICA_DROP_NOT_NORMAL,
        REPLICA_DROP_PRIMARY_CATCHING_UP,
        REPLICA_DROP_NEWER_VIEW,
        REPLICA_DROP_FORWARDED_TO_BACKUP,
        REPLICA_DROP_ALREADY_IN_PIPELINE,
        REPLICA_DROP_REGISTER_IN_PIPELINE,
        REPLICA_DROP_OLDER_REQUEST,
        REPLICA_DROP_REQUEST_COLLISION,
        REPLICA_DROP_REQUEST_SKIPS_AHEAD,
        REPLICA_DROP_PARENT_MISMATCH,
        REPLICA_DROP_SESSION_FROM_FUTURE,
        REPLICA_DROP_COUNT,
};
/* "capacity_exhausted", ...: for logs and metrics labels. */
const char *replica_drop_name(enum replica_drop drop);

/*
 * Create results are counted by code: codes below this by value, larger ones (there are none
 * in TigerBeetle 0.16.68, whose largest is 68) in the last entry.
 */
#define REPLICA_RESULT_CODES_MAX 128u
/* A refusal of writes this recent (in ticks) means the replica is refusing writes now. */
#define REPLICA_REFUSING_TICKS 1000u
/* While refusing, a warning is logged at least this often (ticks of 10 ms). */
#define REPLICA_REFUSAL_LOG_TICKS 500u
/*
 * An op whose execution takes this long delays the replica's heartbeats and prepares by as much
 * (a backup starts a view change after TICKS_PRIMARY_SILENT): it is logged with what the trees
 * did meanwhile, at most once per REPLICA_SLOW_COMMIT_LOG_TICKS.
 */
/*
 * The most ops a restarted replica of a cluster executes with compaction deferred (replay_until):
 * twice the ops a checkpoint's work bound leaves at most, so level 0 grows by a few flushes, not
 * by a journal's worth of full batches.
 */
#define REPLICA_REPLAY_DEFER_OPS (2u * REPLICA_CHECKPOINT_WORK_REQUESTS)
#define REPLICA_SLOW_COMMIT_NS (100u * 1000u * 1000u)
#define REPLICA_SLOW_COMMIT_LOG_TICKS 100u
/*
 * A checkpoint is due before the interval (ops) has passed once the ops executed since the last
 * one carried this many full requests' worth of request and reply bodies. A restart replays the
 * journal since the durable checkpoint, and an op's cost follows its body (8189 transfers to
 * create, ids to look up) and its reply (the objects a lookup or query returns), not its count:
 * 32 full batches of creates replayed in 2.8 s at 10.5 M transfers stored (63 took 3.9 s),
 * while 256 ops of a few transfers each replay in milliseconds and checkpoint a quarter as
 * often as 64 would (each checkpoint writes at least a table per tree that changed).
 */
#define REPLICA_CHECKPOINT_WORK_REQUESTS 32u
/*
 * Checkpoints come every few hundred milliseconds under load: one info line per this many ticks
 * says how many became durable since the last (each one's own lines are debug), so the log
 * stays readable and a slow log reader is not fed dozens of lines a second.
 */
#define REPLICA_CHECKPOINT_LOG_TICKS 1000u

/*
 * Counters for metrics (ops/metrics.c reads them; nothing here does I/O). Per operation
 * counters are indexed by the operation's value. Counted where the replica executes, so every
 * replica counts every committed op, not only the primary.
 */
struct replica_stats {
        uint64_t requests_received;
        uint64_t requests_dropped;
        uint64_t requests_dropped_by[REPLICA_DROP_COUNT];
        uint64_t requests_forwarded;
        uint64_t requests_parked; /* kept through a view change (REPLICA_PARKED_MAX) */
        uint64_t replies_resent;
        uint64_t evictions_sent;
        uint64_t evictions_by_reason[16]; /* by wire eviction reason (1..), 0 unused */
        uint64_t sessions_evicted; /* the session table was full: the oldest made room */
        uint64_t prepares;
        uint64_t commits;
        uint64_t pulses;
        uint64_t events_committed;
        uint64_t committed_by_operation[256];
        uint64_t events_by_operation[256];
        uint64_t create_account_results[REPLICA_RESULT_CODES_MAX];
        uint64_t create_transfer_results[REPLICA_RESULT_CODES_MAX];
        uint64_t refused_capacity;
        uint64_t refused_disk_full;
        uint64_t refused_last_tick;    /* the last refusal of writes, in ticks (0: never) */
        uint64_t refused_logged_tick;  /* the last warning about it */
        uint64_t refused_since_logged; /* refusals since that warning */
        uint64_t checkpoints;
        uint64_t checkpoints_skipped;
        uint64_t checkpoint_logged_tick;  /* the last info line about checkpoints (0: none) */
        uint64_t checkpoints_since_logged;
        uint64_t wal_full_stalls;
        uint64_t view_changes;
        uint64_t repairs_requested;
        uint64_t repairs_served;
        uint64_t state_syncs_started;
        uint64_t state_syncs_installed;
        uint64_t state_sync_blocks_copied; /* blocks a state sync wrote from a peer */
        uint64_t state_sync_blocks_kept;   /* blocks it found already here, not copied */
        uint64_t state_sync_prepares;      /* prepares journaled while a copy ran */
        uint64_t state_sync_retargets;     /* a copy as long as the journal asked for a newer checkpoint */
        uint64_t grid_blocks_repaired;     /* damaged blocks of our checkpoint rewritten from a peer's copy */
        /* Primary: request received -> reply queued, for requests it prepared itself. */
        struct histogram request_latency;
        /* Every replica: executing one committed op (the ledger's rules and its trees' work). */
        struct histogram commit_execute;
        uint64_t slow_commits;           /* executes of REPLICA_SLOW_COMMIT_NS or more */
        uint64_t slow_commit_logged_tick; /* the last line about one (0: never) */
        uint64_t slow_commits_unlogged;   /* since that line */
};

struct replica {
        struct replica_config config;
        uint64_t peer_messages_dropped; /* replica messages refused (see replica.c) */
        bool disk_full;                 /* refusing writes until the data file can grow */
        uint64_t disk_full_check_tick;
        uint64_t disk_full_logged_tick;
        uint64_t peer_drop_warn_tick;
        struct replica_env env;
        struct message_pool *pool;
        struct ledger *ledger;
        enum replica_status status;
        uint32_t view;
        uint32_t log_view;      /* the latest view in which this log was normal */
        uint64_t anchor_op;    /* the log's end when log_view began (see replica_view_state) */
        u128 anchor_checksum;
        uint64_t view_prefixes[REPLICA_VIEW_PREFIXES]; /* see replica_view_state */
        /* The view state (these fields and fresh*) as persisted, and as being persisted. */
        struct replica_view_state view_state_durable;
        struct replica_view_state view_state_writing;
        bool view_write_in_flight;
        /*
         * Formatted (maybe re-formatted after losing its data file) and not yet caught up:
         * it may have acknowledged ops in an earlier life that it no longer holds, so it does
         * not count towards a view change, and it joins only a view at least as new as any
         * that enough peers report (fresh_heard, fresh_view_floor) — its lost promises.
         */
        bool fresh;
        bool checkpoint_lost; /* opened without its unreadable checkpoint (replica_durable) */
        /*
         * A fresh replica that joined a view knows every op after that view's log end
         * (fresh_joined_op): ops prepared before are in that log, later ones it saw. Its nacks
         * of those later ops count; of earlier ones, which it may have acknowledged before it
         * lost its disk, they do not.
         */
        bool fresh_joined;
        uint64_t fresh_joined_op;
        /*
         * A fresh replica that started without state (open_without_state) reports its
         * journal's top REPLICA_NOSTATE_OPS ops in a do_view_change, though it has no log that
         * counts: entry i is the checksum of the
         * prepare a slot held of op nostate_top - i at that start (0: none, so it never
         * acknowledged that op unless its disk lost the write; REPLICA_NOSTATE_UNKNOWN: two).
         * An entry follows what it journals since. See dvc_answer.
         */
        uint64_t nostate_top;
        u128 nostate_checksums[REPLICA_NOSTATE_OPS];
        uint32_t recovered_view; /* the durable view at the last start (see dvc_answer) */
        /*
         * Ops up to it replay the journal the replica opened with, so replica_execute runs them
         * with compaction deferred (ledger_defer_compaction) and a restart serves, or catches
         * up with its peers, sooner; the first op past it ends the deferral. A single replica:
         * the head of its journal. A replica of a cluster: the highest op its journal held,
         * at most REPLICA_REPLAY_DEFER_OPS past its checkpoint. Bounded by op number,
         * whatever view changes cut meanwhile.
         */
        uint64_t replay_until;
        bool replay_deferring;
        uint8_t fresh_heard;       /* peers whose current view this fresh replica heard */
        uint32_t fresh_view_floor; /* the highest of those views */
        uint64_t op;         /* highest op whose header is in the journal */
        uint64_t commit;     /* highest op executed */
        u128 commit_checksum; /* checksum of the prepare at `commit` (0 before any) */
        uint64_t commit_max; /* highest op known committed by the cluster */
        /* Backup: the highest op the primary of view primary_commit_view said it committed
         * (its prepares, commits and start_view); it needs no prepare_ok for those. */
        uint64_t primary_commit;
        uint32_t primary_commit_view;
        u128 parent;         /* checksum of the prepare at `op` */
        uint64_t timestamp_last;
        uint64_t pending_create_events; /* create events prepared, not yet executed */
        /* The journal in memory: each slot's header and what is known about its prepare. */
        struct wire_header *journal_headers;
        uint8_t *journal_state;
        /* Repair: when each slot's op was last asked of a peer (not again within a round). */
        uint64_t *repair_asked;
        /* Primary: the prepares being replicated, ops (commit, op]. */
        struct replica_pipeline_entry pipeline[REPLICA_PIPELINE_MAX];
        uint32_t pipeline_head;
        uint32_t pipeline_count;
        struct replica_queued_request queue[REPLICA_REQUEST_QUEUE_MAX];
        uint32_t queue_head;
        uint32_t queue_count;
        struct replica_parked_request {
                struct message *request;
                replica_connection connection;
                bool from_peer;
                uint64_t tick;
        } parked[REPLICA_PARKED_MAX];
        uint32_t parked_count;
        uint64_t parked_resume_tick; /* while parked_resume routes one: the tick it was kept at */
        struct replica_client clients[REPLICA_CLIENTS_MAX];
        struct replica_client_connection connections[REPLICA_CLIENT_CONNECTIONS_MAX];
        /* Timing, in ticks of 10 ms. */
        uint64_t tick;
        uint64_t primary_heard_tick;    /* backup: the primary's last prepare or commit */
        /*
         * Backup: how long (in ticks) the last op took to execute here. The primary executes
         * the same ops, so it is granted that much more silence before a view change: after
         * an op of a second it is most likely busy with the next one, not dead.
         */
        uint64_t primary_patience_ticks;
        /* Backup: the last tick our commit moved or matched commit_max (sync_repair_stuck). */
        uint64_t repair_progress_tick;
        uint64_t repair_progress_commit;
        uint64_t primary_checkpoint_op; /* the primary's durable checkpoint, from its commits */
        uint64_t peer_heard_tick[WIRE_REPLICAS_MAX]; /* each peer's last message, any kind */
        uint64_t heartbeat_sent_tick;   /* primary: last commit heartbeat */
        uint64_t view_change_tick;      /* when the current view change began */
        uint64_t repair_tick;           /* last repair request */
        /*
         * Backup: the newest prepare refused because its journal slot still held an op the
         * durable checkpoint lacks (a copy just installed is not durable yet): asked for again
         * the moment a checkpoint is, instead of at the primary's next resend.
         */
        uint64_t wal_refused_op;
        u128 wal_refused_checksum;
        /*
         * The highest op journaled while a copy ran (sync_may_journal), until one installs: a
         * copy of a checkpoint so old that this op's slot would have held one of the ops
         * install must keep is never started.
         */
        uint64_t sync_journaled_max;
        /*
         * A copy installed but not yet written as this replica's own checkpoint (storage was
         * busy): retried from the tick, since nothing commits before it is durable.
         */
        bool install_unwritten;
        u128 install_anchor;
        uint64_t headers_asked_tick;    /* last request_headers */
        uint64_t prepare_resent_tick;   /* primary: last retransmission of the pipeline */
        uint64_t start_view_asked_tick; /* recovering: last request_start_view */
        /* View change state. */
        uint32_t svc_view;              /* the view start_view_change votes are for */
        uint8_t svc_votes;              /* bit i: replica i wants svc_view */
        struct message *dvc[WIRE_REPLICAS_MAX]; /* do_view_change messages for `view` */
        bool start_view_pending;        /* new primary: repairing before start_view */
        bool commit_deferred;           /* ops ready to execute wait for replica_commit_resume */
        uint64_t suffix_next;           /* new primary: next old op to replicate again (0: none) */
        uint64_t suffix_progress_tick;  /* when suffix_next last moved */
        uint64_t commit_seen;           /* primary: r->commit at commit_seen_tick */
        uint64_t commit_seen_tick;      /* primary: when commit last moved (or prepares began) */
        uint64_t stall_logged_tick;     /* primary: last "commit stalled" warning */
        /* Backups: prepares received and not yet executed, by op % REPLICA_PREPARE_CACHE. */
        struct message *prepare_cache[REPLICA_PREPARE_CACHE];
        /* Checkpoints. */
        uint64_t checkpoint_op_durable;
        /* Bytes of request and reply bodies of the ops executed since the last checkpoint's op. */
        uint64_t checkpoint_work;
        struct lsm_block_ref checkpoint_root_durable;
        uint64_t checkpoint_blocks_durable;     /* grid blocks it needs */
        u128 checkpoint_checksum_durable;       /* its prepare's checksum (chain anchor) */
        uint64_t checkpoint_timestamp_durable;
        /* A state sync writes a peer's blocks into the grid (see replica_view_state). */
        bool grid_syncing;
        /*
         * The blocks of one checkpoint, listed for copying (state sync's source side, and
         * backups): image offset i x LSM_BLOCK_SIZE is block i of the list.
         */
        struct {
                struct lsm_block_ref root;
                struct replica_image_list list;
                /*
                 * The list of the root before: listing a newer checkpoint takes the blocks of
                 * the tables both have from it instead of reading their index blocks again.
                 */
                struct replica_image_list previous;
                uint64_t tables_reused; /* tables taken from a previous list (tests) */
        } image;
        /*
         * State sync (serving side): the checkpoint a peer is copying, its blocks held
         * (ledger_hold) so that the copy finishes even if this replica checkpoints meanwhile.
         * Released after TICKS_SYNC_SERVE_IDLE without a request for it.
         */
        struct {
                bool active;
                uint64_t op;
                struct lsm_block_ref root;
                u128 prepare_checksum;
                uint64_t timestamp;
                uint64_t tick; /* the last request for it */
        } serving;
        /*
         * State sync (receiving side, replica_sync.c): the list of a peer's checkpoint's
         * blocks, then only the blocks our grid does not already hold, straight to the grid.
         */
        struct {
                bool active;
                uint8_t source;
                uint8_t phase;        /* enum replica_sync_phase */
                uint64_t checkpoint_op;
                struct lsm_block_ref root;
                u128 prepare_checksum;
                uint64_t timestamp;
                /* The block list (or a format 1 replica's blob), received in order. */
                uint64_t size;        /* bytes of that stream */
                uint64_t offset;      /* bytes received */
                uint64_t requested;   /* the next offset to ask for (a window ahead of offset) */
                uint32_t chunk;       /* the source's chunk size, once its first chunk came */
                uint64_t gap_tick;    /* when a lost chunk last made us ask again */
                /* Chunks that arrived ahead of the one awaited, by (offset / chunk) % window. */
                struct message *early[REPLICA_SYNC_WINDOW];
                uint8_t *list;        /* the list's bytes: 32 per block (lsm_block_ref) */
                /* The blocks of the list: which are here, which are asked for. */
                struct lsm_block_ref *blocks;
                uint64_t block_count;
                uint8_t *block_state; /* per block: unknown, present or needed */
                uint64_t classified;  /* blocks 0..classified-1 are known present or needed */
                uint64_t present;     /* blocks of the list our grid now holds */
                uint64_t cursor;      /* image byte offset of the next request */
                uint32_t inflight;    /* requests not yet answered */
                uint64_t copied;      /* blocks copied by this sync (every checkpoint it tried) */
                uint64_t target_copied; /* of those, blocks of the checkpoint it copies now */
                /* Blocks arriving in pieces (messages smaller than a block). */
                struct {
                        bool used;
                        uint64_t index;
                        uint32_t mask; /* pieces received, by offset within the block / chunk */
                        uint8_t *block;
                } pieces[REPLICA_SYNC_WINDOW];
                /*
                 * What our grid holds, by address: the checksum of the block known to be
                 * there (0: not known; REPLICA_SYNC_NOT_HERE: not the block once wanted).
                 */
                u128 *known;
                uint64_t known_count;
                uint64_t install_blocks; /* the installed checkpoint's block count */
                uint8_t *root_block;  /* the root, kept for its session table */
                bool awaiting_mark;   /* blocks wait for grid_syncing to be durable */
                /* A format 1 replica's checkpoint (a rolling upgrade): its blob, converted here. */
                uint8_t *legacy_blob;
                uint64_t replies_missing; /* bit i: session i's reply still to fetch */
                struct message *replies[REPLICA_CLIENTS_MAX];
                uint64_t tick;        /* last request or progress, for retries */
                uint64_t source_heard_tick; /* the source's last message of any kind */
                uint32_t source_retries;    /* asked the same source again, no block since */
                bool forced; /* sync_repair_stuck: copy even where journals should cover us */
                uint64_t retarget_tick; /* last asked for a newer checkpoint (sync_retarget) */
        } sync;
        /*
         * A damaged block of our own checkpoint, found while listing it for a peer's copy: asked
         * of the peers in turn by (address, checksum) and written back at its address
         * (replica_sync.c, block_repair_*).
         */
        struct {
                bool active;
                struct lsm_block_ref ref;
                struct lsm_block_ref root; /* the checkpoint it belongs to */
                uint8_t *block;   /* LSM_BLOCK_SIZE, gathered from the pieces */
                uint32_t mask;    /* pieces received, by offset / chunk */
                uint32_t chunk;   /* the answering peer's piece size */
                uint8_t peer;     /* asked last */
                uint64_t tick;    /* asked last */
        } block_repair;
        bool checkpoint_in_progress;
        uint64_t checkpoint_retry_tick; /* after storage refused one, not before this tick */
        bool replaying; /* recovering from the WAL: no replies are sent */
        struct replica_checkpoint checkpoint;
        struct replica_stats stats;
};

/* Returns 0, or -1 if memory cannot be reserved. */
int replica_init(struct replica *replica, const struct replica_config *config,
                 const struct replica_env *env, struct message_pool *pool, struct ledger *ledger);
void replica_deinit(struct replica *replica);
/*
 * For a replica whose call was cut short (the simulator unwinds out of a grid fault, as a
 * process dies in the middle of an op): frees its memory without touching its messages, which
 * may be half handed over; the caller throws its whole message pool away.
 */
void replica_abandon(struct replica *replica);

/*
 * The fields of the state sync messages (request_blocks, block, request_reply), in the first
 * bytes of the header's command-specific part. `tally backup` speaks them too.
 *
 * `kind` says what a request_blocks asks for and a block carries:
 *   image:  bytes of the checkpoint's image at `offset`, in order (backups; format 1 peers);
 *   list:   bytes of the checkpoint's block list at `offset` (32 per block: address, 0,
 *           checksum; the root first), `size` = the list's bytes;
 *   blocks: image bytes at `offset`, at most `size` of them (a request), a run of the blocks
 *           the receiver lacks. A request for a checkpoint the source no longer serves is
 *           answered with the first chunk of its durable checkpoint's list.
 */
enum replica_sync_kind {
        REPLICA_SYNC_IMAGE = 0,
        REPLICA_SYNC_LIST = 1,
        REPLICA_SYNC_BLOCKS = 2,
        /* One block by (root_address, root_checksum): a peer repairs a damaged block of its
         * own from ours; answered in pieces of `chunk` at `offset` when messages are small. */
        REPLICA_SYNC_ONE_BLOCK = 3,
};
enum replica_sync_phase {
        REPLICA_SYNC_PHASE_LIST = 0,    /* receiving the list (or a format 1 blob) */
        REPLICA_SYNC_PHASE_BLOCKS = 1,  /* copying the blocks we lack */
        REPLICA_SYNC_PHASE_REPLIES = 2, /* every block here: fetching the sessions' replies */
};
struct replica_sync_fields {
        uint64_t checkpoint_op;
        uint64_t size;
        u128 prepare_checksum;
        uint64_t timestamp;
        uint64_t offset;
        uint32_t slot;
        uint32_t kind; /* enum replica_sync_kind */
        u128 checksum;
        u128 root_checksum; /* the checkpoint's root block */
        uint64_t root_address;
        uint32_t chunk; /* block: the source's chunk size (a multiple of 4096 bytes) */
        uint32_t reserved_1;
};
_Static_assert(sizeof(struct replica_sync_fields) == 112, "sync fields size");

/* A checked message from a connection (the bus already verified framing and checksums). */
void replica_on_message(struct replica *replica, replica_connection connection,
                        struct message *message);
void replica_on_connection_closed(struct replica *replica, replica_connection connection);
/* A connection to replica `replica` is up (the bus identified it). */
/* A keepalive ping to a peer (the server's bus asks when a connection has been idle). */
void replica_ping_peer(struct replica *replica, uint8_t peer);
void replica_on_peer_connected(struct replica *replica, uint8_t peer);
/* Every 10 ms: timeouts, retransmissions, retries of what waited for resources, pulses. */
void replica_tick(struct replica *replica);
/* The host's answer to env.defer: executes the next op ready, if any (deferring the rest). */
void replica_commit_resume(struct replica *replica);

/*
 * Recovery, before serving: restore the checkpoint, then replay the journal after it. With one
 * replica a damaged entry at the head is dropped and one before the head is fatal (no peer can
 * repair it); with several, damaged entries are left for repair from peers. Returns 0, or -1
 * with the reason (naming the op and zone) in `error`.
 */
int replica_open(struct replica *replica, const struct replica_durable *durable, char *error,
                 size_t error_size);

/* The building blocks of replica_open(), exposed for tests. */
int replica_restore(struct replica *replica, struct lsm_block_ref root, uint64_t blocks,
                    uint64_t checkpoint_op, u128 prepare_checksum, uint64_t timestamp,
                    int (*read_reply)(void *context, uint32_t slot, u128 checksum,
                                      struct message *message),
                    void *context, char *error, size_t error_size);
int replica_replay(struct replica *replica, struct message *prepare, char *error,
                   size_t error_size);

/*
 * The sessions a checkpoint names, from its root block (the first LSM_BLOCK_SIZE bytes of
 * `image`): used, reply slot, reply checksum (inspect and backups too).
 */
struct replica_checkpoint_session {
        bool used;
        uint32_t slot;
        u128 reply_checksum;
        u128 client;
};
int replica_checkpoint_sessions(const uint8_t *image, uint64_t size,
                                struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX]);
/*
 * A format 1 checkpoint blob (a header and the session table in its first megabyte, the
 * ledger's stream after it): this format's checkpoint user bytes for the same sessions
 * (room for LEDGER_CHECKPOINT_USER_MAX) and where the ledger stream is. 0, or -1 if malformed.
 */
int replica_checkpoint_legacy(const uint8_t *blob, uint64_t size, uint8_t *user,
                              uint32_t *user_size, const uint8_t **ledger_part,
                              uint64_t *ledger_size);
/*
 * A checkpoint as state sync and backups copy it, its "image": every block it needs, the root
 * first (ledger_checkpoint_blocks), LSM_BLOCK_SIZE bytes each. Copies `size` bytes at `offset`
 * of the image of `root` into `into`: the bytes copied, or -1 (a block unreadable: logged).
 */
int64_t replica_image_read(struct replica *replica, struct lsm_block_ref root, uint64_t offset,
                           uint8_t *into, uint32_t size);
/* A checkpoint a backup copies (the server holds its blocks meanwhile). */
struct backup_pin {
        bool active;
        uint64_t op;
        struct lsm_block_ref root;
        uint64_t blocks;
        u128 prepare_checksum;
        uint64_t timestamp;
        uint64_t bytes_read; /* for metrics: bytes served from pinned checkpoints */
};
/* Blocks in the image of `root`; 0 if it cannot be listed. */
uint64_t replica_image_blocks(struct replica *replica, struct lsm_block_ref root);
/* Frees the image lists (the next listing reads every index block). */
void replica_image_free(struct replica *r);

/* Largest request body a client may send: what register replies advertise. */
uint32_t replica_batch_size_limit(const struct replica *replica);

#endif
