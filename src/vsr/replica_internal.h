/*
 * replica_internal.h: what replica.c (clients, sessions, execution, checkpoints) and
 * replication.c (prepares, commits, view changes, repair) share. Not a public interface.
 */
#ifndef TALLY_VSR_REPLICA_INTERNAL_H
#define TALLY_VSR_REPLICA_INTERNAL_H

#include "vsr/replica.h"

/* Timeouts, in ticks of 10 ms. */
#define TICKS_HEARTBEAT 5u             /* primary: commit heartbeat every 50 ms */
#define TICKS_PRIMARY_SILENT 30u       /* backup: 300 ms without the primary starts a view change */
#define TICKS_PRIMARY_PATIENCE_MAX 500u /* backup: at most 5 s more after executing a long op */
#define TICK_NS 10000000u
#define TICKS_VIEW_CHANGE 60u          /* a view change stuck this long moves to the next view */
#define TICKS_PREPARE_RESEND 20u       /* primary: retransmit unacknowledged prepares */
#define TICKS_REPAIR_STUCK 1000u      /* backup: 10 s of repair without a commit: copy instead */
#define TICKS_COMMIT_STALLED 100u      /* primary: a prepare without quorum this long is logged */
#define TICKS_REPAIR 10u               /* ask again for missing prepares */
#define TICKS_REQUEST_START_VIEW 20u   /* recovering: ask for the current view again */
#define REPAIR_REQUESTS_MAX 64u        /* missing prepares asked for and not yet here */
#define TICKS_SYNC_RETRY 50u           /* state sync: ask again after 500 ms of silence */
#define TICKS_SYNC_GAP 5u              /* state sync: a chunk came early: ask again for the one awaited, at most every 50 ms */
#define TICKS_SYNC_SOURCE_QUIET 10u    /* state sync: a source unheard this long when a new view starts is left */
#define TICKS_SYNC_AGAIN 25u           /* state sync: no answer for 250 ms from a source heard meanwhile: ask it again */
#define SYNC_SOURCE_RETRIES 3u         /* state sync: times a live source is asked again before another is tried */
#define TICKS_SYNC_SERVE_IDLE 300u     /* state sync: a held checkpoint is let go after 3 s */
#define TICKS_SYNC_RETARGET 5u         /* state sync: a copy as long as the journal asks for a newer checkpoint at most every 50 ms */

static inline uint8_t replica_primary_index(const struct replica *r, uint32_t view)
{
        return (uint8_t)(view % r->config.replica_count);
}

static inline bool replica_is_primary(const struct replica *r)
{
        return replica_primary_index(r, r->view) == r->config.replica;
}

static inline uint32_t replica_quorum(const struct replica *r)
{
        return r->config.replica_count / 2u + 1u;
}

static inline uint32_t replica_slot(const struct replica *r, uint64_t op)
{
        return (uint32_t)(op % r->config.wal_slot_count);
}

/* The journal header of `op`, or NULL if the slot holds another op or nothing. */
const struct wire_header *journal_header(const struct replica *r, uint64_t op);
enum replica_slot_state journal_state_of(const struct replica *r, uint64_t op);

/* replica.c */
void replica_send_eviction(struct replica *r, replica_connection connection, u128 client,
                           uint8_t reason);
void replica_send_to(struct replica *r, replica_connection connection, struct message *m);
void replica_client_seen(struct replica *r, u128 client, replica_connection connection,
                         uint32_t request);
struct replica_client_connection *replica_client_connection(struct replica *r, u128 client);
/* Executes the next op; `reply` is a free message for the reply (consumed). */
void replica_execute(struct replica *r, struct message *prepare, struct message *reply);
void replica_checkpoint_maybe(struct replica *r, const struct message *prepare);
bool replica_request_acceptable(struct replica *r, replica_connection connection,
                                struct message *m);

/* Replaces the whole state by a checkpoint blob (state sync); replies[i] for session i. */
int replica_install(struct replica *r, struct lsm_block_ref root, uint64_t blocks, uint64_t op,
                    u128 prepare_checksum, uint64_t timestamp, struct message **replies);
/* Persists the checkpoint just installed by state sync. */
void replica_checkpoint_installed(struct replica *r, u128 prepare_checksum);

/* replica_sync.c */
void sync_maybe(struct replica *r, uint8_t source, uint64_t checkpoint_op);
void sync_on_message(struct replica *r, struct message *m);
void sync_tick(struct replica *r);
/*
 * Repair has not moved our commit for TICKS_REPAIR_STUCK though the cluster committed more: the
 * ops we lack are in no peer's journal any more (each peer's journal began again at a
 * checkpoint it installed or recovered from), which sync_maybe's estimate cannot tell. Copies
 * the peer's checkpoint if it is past our commit, however close.
 */
void sync_repair_stuck(struct replica *r, uint8_t source, uint64_t checkpoint_op);
/* This replica joined a view: a copy from a quiet source moves to the new primary. */
void sync_view_joined(struct replica *r);
/*
 * While a copy runs: true if `op` may still be journaled (and acknowledged). See
 * replica_sync.c.
 */
bool sync_may_journal(const struct replica *r, uint64_t op);
/* The op whose successors' journal slots are free to take: see replication.c's accept. */
uint64_t sync_journal_base(const struct replica *r);
void sync_deinit(struct replica *r);
/* Frees what state sync allocated, touching no message (replica_abandon). */
void sync_free_memory(struct replica *r);

/* replication.c */
void replication_init(struct replica *r);
void replication_deinit(struct replica *r);
void replication_on_message(struct replica *r, replica_connection connection,
                            struct message *m);
void replication_tick(struct replica *r);
void replication_prepare_pump(struct replica *r);
/* A checkpoint became durable: a prepare refused for lack of journal room is asked again. */
void replication_checkpoint_durable(struct replica *r);
/* After recovery: journal headers of intact ops after the checkpoint (multi-replica). */
void replication_open(struct replica *r);
/* The primary turns a pulse (request == NULL) or a queued request into the next prepare. */
bool replication_prepare(struct replica *r, const struct message *request,
                         replica_connection connection);

/* r->view + 1, or REPLICA_VIEW_MAX once there: a view never wraps. */
uint32_t replica_view_next(const struct replica *r);

#endif
