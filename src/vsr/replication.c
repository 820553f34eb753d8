/*
 * replication.c: Viewstamped Replication between replicas (VR Revisited, Liskov and Cowling
 * 2012), in the shape TigerBeetle uses: hash-chained prepares, durable view state instead of a
 * recovery protocol, start_view_change votes before a view change begins.
 *
 * Normal operation. The primary of view v is replica v mod n. It turns each request into a
 * prepare (next op, parent = the previous prepare's checksum, the cluster timestamp), journals
 * it, and sends it to every backup. A backup appends a prepare only if it chains onto its log,
 * journals it, and answers prepare_ok once it is durable. The primary commits an op once a
 * replication quorum (a majority) holds it durably and every earlier op is committed, executes
 * it, answers the client, and tells the backups at once with a commit message (also sent every
 * 50 ms as a heartbeat). Backups execute committed ops in order, so every ledger is identical;
 * an op executes only once the chain from the log's head down to it is known (chain_verified).
 * A backup repairing ops its primary said it committed sends no prepare_ok for them.
 *
 * View change. A backup that hears nothing from its primary for 300 ms votes start_view_change
 * for the next view; a quorum of votes moves replicas into the view change. Each sends
 * do_view_change, with its log's headers, to the new primary once its new view is durable.
 * With a quorum of them the new primary takes the log with the highest (log_view, op): every
 * op that may have been committed is in it, because a commit needed a majority and any two
 * majorities share a replica. It fetches the prepares it lacks, then sends start_view; backups
 * adopt the log, fetch what they lack, and acknowledge the uncommitted suffix. An uncommitted
 * op that no replica of the quorum holds intact is cut from the log once enough replicas prove
 * they never acknowledged it (nacks; truncate_unrecoverable). A replica in a view the others
 * missed announces it (SVC_JOINED) and they join it.
 *
 * Repair. A replica missing prepares asks a peer for them by op (and checksum when known); a
 * prepare is only accepted where it chains onto the log, so a wrong or corrupt one never gets
 * in. A replica formatted afresh ("fresh", persisted until it caught up) never counts towards a
 * view change quorum unless every replica reports, joins only a view at least as new as its
 * peers report, and its nacks do not count, so a wiped replica cannot make the cluster forget
 * what it acknowledged.
 */
#include "vsr/replica_internal.h"
#include "lib/log.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <string.h>

/* The part of a journal a do_view_change or start_view carries: headers up to the log's op. */
#define VIEW_HEADERS_MAX 1024u

const struct wire_header *journal_header(const struct replica *r, uint64_t op)
{
        if (op == 0)
                return NULL;
        uint32_t slot = replica_slot(r, op);
        if (r->journal_state[slot] == SLOT_EMPTY || r->journal_headers[slot].prepare.op != op)
                return NULL;
        return &r->journal_headers[slot];
}

enum replica_slot_state journal_state_of(const struct replica *r, uint64_t op)
{
        return journal_header(r, op) == NULL ? SLOT_EMPTY
                                             : (enum replica_slot_state)r->journal_state[replica_slot(r, op)];
}

static void journal_put(struct replica *r, const struct wire_header *h, enum replica_slot_state s)
{
        uint32_t slot = replica_slot(r, h->prepare.op);
        r->journal_headers[slot] = *h;
        r->journal_state[slot] = (uint8_t)s;
}

/*
 * Whether the slot of `op` belongs to a newer op of our log (one lap of the ring later), which
 * may have been acknowledged: then neither its header nor its prepare may replace that op's. A
 * replica without state (commit 0) repairing from its commit took op 61 into the slot of op
 * 189 it had acknowledged, since op 62 there (an older lap) chained onto it; the primary
 * committed 189 counting that ok (simulator, seeds 1 and 45 on 5 replicas, with backups
 * sending no prepare_ok for ops their primary said it committed; 44 on 5 replicas since
 * requests are parked).
 */
static bool slot_holds_newer(const struct replica *r, uint64_t op)
{
        return op + r->config.wal_slot_count <= r->op;
}

static void cache_put(struct replica *r, struct message *m)
{
        uint32_t i = (uint32_t)(m->header->prepare.op % REPLICA_PREPARE_CACHE);
        if (r->prepare_cache[i] != NULL)
                message_unref(r->pool, r->prepare_cache[i]);
        r->prepare_cache[i] = message_ref(m);
}

/* The prepare for `op` with this checksum from memory, or NULL. */
static struct message *cache_get(struct replica *r, uint64_t op, u128 checksum)
{
        struct message *m = r->prepare_cache[op % REPLICA_PREPARE_CACHE];
        if (m != NULL && m->header->prepare.op == op && m->header->checksum == checksum)
                return m;
        for (uint32_t k = 0; k < r->pipeline_count; k++) {
                struct message *p =
                        r->pipeline[(r->pipeline_head + k) % REPLICA_PIPELINE_MAX].prepare;
                if (p->header->prepare.op == op && p->header->checksum == checksum)
                        return p;
        }
        return NULL;
}

/* The prepare for `op` (as the journal names it), from memory or disk; a new reference. */
static struct message *prepare_load(struct replica *r, uint64_t op)
{
        const struct wire_header *h = journal_header(r, op);
        if (h == NULL || r->journal_state[replica_slot(r, op)] != SLOT_DURABLE)
                return NULL;
        struct message *m = cache_get(r, op, h->checksum);
        if (m != NULL)
                return message_ref(m);
        if (r->env.journal_read == NULL)
                return NULL;
        m = message_pool_get(r->pool);
        if (m == NULL)
                return NULL;
        if (!r->env.journal_read(r->env.context, op, h->checksum, m)) {
                message_unref(r->pool, m);
                /* The disk copy is damaged: fetch it again from a peer. */
                r->journal_state[replica_slot(r, op)] = SLOT_FAULTY;
                log_warn("journal entry damaged; will repair from a peer op=%llu",
                         (unsigned long long)op);
                return NULL;
        }
        return m;
}

static void broadcast(struct replica *r, struct message *m)
{
        for (uint8_t j = 0; j < r->config.replica_count; j++) {
                if (j != r->config.replica)
                        r->env.send_to_replica(r->env.context, j, m);
        }
}

static void send_to_replica(struct replica *r, uint8_t j, struct message *m)
{
        if (j != r->config.replica && j < r->config.replica_count)
                r->env.send_to_replica(r->env.context, j, m);
}

static struct message *header_only(struct replica *r, uint8_t command)
{
        struct message *m = message_pool_get(r->pool);
        if (m != NULL)
                wire_header_init(m->header, command, r->config.cluster, r->view,
                                 WIRE_RELEASE_SERVER, r->config.replica);
        return m;
}

static void finish_and_send(struct replica *r, struct message *m, int target)
{
        wire_header_set_checksum_body(m->header, message_body(m),
                                      m->header->size - WIRE_HEADER_SIZE);
        wire_header_set_checksum(m->header);
        if (target < 0)
                broadcast(r, m);
        else
                send_to_replica(r, (uint8_t)target, m);
        message_unref(r->pool, m);
}

void replication_init(struct replica *r)
{
        r->status = REPLICA_STATUS_NORMAL;
}

static void pipeline_clear(struct replica *r)
{
        for (uint32_t k = 0; k < r->pipeline_count; k++) {
                struct replica_pipeline_entry *e =
                        &r->pipeline[(r->pipeline_head + k) % REPLICA_PIPELINE_MAX];
                message_unref(r->pool, e->prepare);
                message_unref(r->pool, e->reply);
                memset(e, 0, sizeof(*e));
        }
        r->pipeline_head = 0;
        r->pipeline_count = 0;
}

static void dvc_clear(struct replica *r)
{
        for (uint32_t j = 0; j < WIRE_REPLICAS_MAX; j++) {
                if (r->dvc[j] != NULL)
                        message_unref(r->pool, r->dvc[j]);
                r->dvc[j] = NULL;
        }
}

void replication_deinit(struct replica *r)
{
        sync_deinit(r);
        pipeline_clear(r);
        dvc_clear(r);
        for (uint32_t i = 0; i < REPLICA_PREPARE_CACHE; i++) {
                if (r->prepare_cache[i] != NULL)
                        message_unref(r->pool, r->prepare_cache[i]);
                r->prepare_cache[i] = NULL;
        }
}

void replication_open(struct replica *r)
{
        r->commit_max = MAX(r->commit_max, r->commit);
        if (r->config.replica_count == 1) {
                r->status = REPLICA_STATUS_NORMAL;
                return;
        }
        /* Restarted: find out the current view before taking part (durable view state means
         * this replica never goes back to an older view). */
        r->status = REPLICA_STATUS_RECOVERING;
        r->view_change_tick = r->tick;
        r->fresh_heard = 0;
        r->fresh_view_floor = 0;
        /*
         * Even a brand-new replica waits: it cannot tell a new cluster from one that went on
         * without it (a re-formatted replica), and acting as primary of view 0 in a cluster
         * that has moved on would evict every client that talks to it. A new cluster elects
         * its first primary by a view change once its replicas find nobody to follow.
         */
}

/* ---- primary: prepares and commits ------------------------------------------------------ */

static void on_journal_durable(void *context, struct message *prepare);

/*
 * Starts the journal write of a prepare, and keeps what a fresh replica without state reports
 * of its journal true (nostate_checksums): from here on it may acknowledge this prepare.
 */
static bool journal_write(struct replica *r, struct message *prepare)
{
        uint64_t op = prepare->header->prepare.op;
        if (op <= r->nostate_top && r->nostate_top - op < REPLICA_NOSTATE_OPS) {
                u128 *held = &r->nostate_checksums[r->nostate_top - op];
                u128 checksum = prepare->header->checksum;
                *held = *held == 0 || *held == checksum ? checksum : REPLICA_NOSTATE_UNKNOWN;
        }
        return r->env.journal_write(r->env.context, prepare, on_journal_durable, r);
}

static uint64_t timestamp_next(struct replica *r, uint32_t delta)
{
        uint64_t now = r->env.realtime_ns(r->env.context);
        uint64_t base = MAX(r->timestamp_last + 1, now);
        r->timestamp_last = base + delta;
        return r->timestamp_last;
}

bool replication_prepare(struct replica *r, const struct message *request,
                         replica_connection connection)
{
        (void)connection;
        /* New ops only after the log this view started with: the pipeline commits in order. */
        if (r->pipeline_count == REPLICA_PIPELINE_MAX || r->suffix_next != 0)
                return false;
        /* The journal slot of the next op must not hold an op the durable checkpoint lacks. */
        if (r->op + 1 >= r->checkpoint_op_durable + r->config.wal_slot_count) {
                r->stats.wal_full_stalls++;
                return false;
        }
        struct message *p = message_pool_get(r->pool);
        if (p == NULL)
                return false;
        struct message *reply = message_pool_get(r->pool);
        if (reply == NULL) {
                message_unref(r->pool, p);
                return false;
        }
        struct wire_header *h = p->header;
        uint8_t operation = OPERATION_PULSE;
        uint32_t body_size = 0;
        uint32_t delta = LEDGER_PULSE_TIMESTAMP_DELTA;
        uint32_t release = WIRE_RELEASE_SERVER;
        if (request != NULL) {
                const struct wire_header *rh = request->header;
                operation = rh->request.operation;
                body_size = rh->size - WIRE_HEADER_SIZE;
                release = rh->release;
                memcpy(message_body(p), message_body(request), body_size);
                delta = 0;
                if (operation == OPERATION_REGISTER) {
                        struct wire_register_request body;
                        memset(&body, 0, sizeof(body));
                        body.batch_size_limit = replica_batch_size_limit(r);
                        memcpy(message_body(p), &body, sizeof(body));
                } else {
                        delta = ledger_timestamp_delta(operation, message_body(request),
                                                       body_size);
                }
        }
        wire_header_init(h, COMMAND_PREPARE, r->config.cluster, r->view, release,
                         r->config.replica);
        h->size = WIRE_HEADER_SIZE + body_size;
        h->prepare.parent = r->parent;
        h->prepare.op = r->op + 1;
        h->prepare.commit = r->commit;
        h->prepare.timestamp = timestamp_next(r, delta);
        h->prepare.operation = operation;
        if (request != NULL) {
                h->prepare.request_checksum = request->header->checksum;
                h->prepare.client = request->header->request.client;
                h->prepare.request = request->header->request.request;
        }
        wire_header_set_checksum_body(h, message_body(p), body_size);
        wire_header_set_checksum(h);
        if (!journal_write(r, p)) {
                message_unref(r->pool, p);
                message_unref(r->pool, reply);
                return false;
        }
        r->op++;
        r->parent = h->checksum;
        journal_put(r, h, SLOT_WRITING);
        struct replica_pipeline_entry *e =
                &r->pipeline[(r->pipeline_head + r->pipeline_count) % REPLICA_PIPELINE_MAX];
        e->prepare = p;
        e->reply = reply;
        e->ok = 0;
        r->pipeline_count++;
        r->stats.prepares++;
        if (r->config.replica_count > 1)
                broadcast(r, p);
        return true;
}

/*
 * A new primary's log may end in ops that were prepared but not known committed (after every
 * replica restarted, that can be every op since the last checkpoint). They go through the
 * pipeline again, in order, before any new request.
 */
static void suffix_pump(struct replica *r)
{
        while (r->suffix_next != 0 && r->suffix_next <= r->op &&
               r->pipeline_count < REPLICA_PIPELINE_MAX) {
                uint64_t op = r->suffix_next;
                if (op <= r->commit) {
                        r->suffix_next++;
                        continue;
                }
                struct message *p = prepare_load(r, op);
                struct message *reply = message_pool_get(r->pool);
                if (p == NULL || reply == NULL) {
                        if (p != NULL)
                                message_unref(r->pool, p);
                        if (reply != NULL)
                                message_unref(r->pool, reply);
                        return; /* retried on the next tick */
                }
                struct replica_pipeline_entry *e =
                        &r->pipeline[(r->pipeline_head + r->pipeline_count) %
                                     REPLICA_PIPELINE_MAX];
                e->prepare = p;
                e->reply = reply;
                e->ok = (uint8_t)(1u << r->config.replica);
                r->pipeline_count++;
                r->suffix_next++;
                r->suffix_progress_tick = r->tick;
                broadcast(r, p); /* backups that hold it answer prepare_ok at once */
        }
        if (r->suffix_next > r->op)
                r->suffix_next = 0;
}

void replication_prepare_pump(struct replica *r)
{
        if (r->status != REPLICA_STATUS_NORMAL || !replica_is_primary(r))
                return;
        if (r->suffix_next != 0) {
                suffix_pump(r);
                if (r->suffix_next != 0)
                        return;
        }
        while (r->queue_count > 0) {
                struct replica_queued_request *q = &r->queue[r->queue_head];
                if (!replication_prepare(r, q->request, q->connection))
                        return;
                r->pipeline[(r->pipeline_head + r->pipeline_count - 1) % REPLICA_PIPELINE_MAX]
                        .received_ns = q->received_ns;
                message_unref(r->pool, q->request);
                q->request = NULL;
                r->queue_head = (r->queue_head + 1) % REPLICA_REQUEST_QUEUE_MAX;
                r->queue_count--;
        }
}

/* Tells the backups that every op up to `commit` (of checksum `checksum`) is committed. */
static void send_commit_of(struct replica *r, uint64_t commit, u128 checksum)
{
        struct message *m = header_only(r, COMMAND_COMMIT);
        if (m == NULL)
                return;
        m->header->commit.commit = commit;
        m->header->commit.commit_checksum = checksum;
        m->header->commit.checkpoint_op = r->checkpoint_op_durable;
        m->header->commit.timestamp_monotonic = r->tick;
        r->heartbeat_sent_tick = r->tick;
        finish_and_send(r, m, -1);
}

static void send_commit(struct replica *r)
{
        const struct wire_header *h = journal_header(r, r->commit);
        send_commit_of(r, r->commit, h != NULL ? h->checksum : 0);
}

/*
 * Ops that may take long to execute, which the primary says are committed before executing
 * them, not after: queries and scans (up to 8,189 results, each maybe a block read), and any
 * batch of this many bytes or more (a lookup of 8,189 transfers whose blocks are not cached
 * takes a second at 10 M transfers).
 */
#define COMMIT_EARLY_BODY_MIN (16u * 1024u)

static bool op_may_run_long(const struct wire_header *p)
{
        switch (p->prepare.operation) {
        case OPERATION_DEPRECATED_GET_ACCOUNT_TRANSFERS_UNBATCHED:
        case OPERATION_DEPRECATED_GET_ACCOUNT_BALANCES_UNBATCHED:
        case OPERATION_DEPRECATED_QUERY_ACCOUNTS_UNBATCHED:
        case OPERATION_DEPRECATED_QUERY_TRANSFERS_UNBATCHED:
        case OPERATION_GET_CHANGE_EVENTS:
        case OPERATION_GET_ACCOUNT_TRANSFERS:
        case OPERATION_GET_ACCOUNT_BALANCES:
        case OPERATION_QUERY_ACCOUNTS:
        case OPERATION_QUERY_TRANSFERS:
                return true;
        default:
                return p->size - WIRE_HEADER_SIZE >= COMMIT_EARLY_BODY_MIN;
        }
}

static uint32_t bits(uint8_t x)
{
        return (uint32_t)__builtin_popcount(x);
}

static void fresh_check(struct replica *r);

static void commit_advance(struct replica *r);

/*
 * With env.defer, one op executes per turn of the host's loop: after an op, the next waits
 * until the loop has handled what is ready (a request that arrived meanwhile is journaled, so
 * its journal write overlaps the next op's execution instead of following it) and called
 * replica_commit_resume. commit_wait says whether an op must wait; commit_executed asks for
 * the turn.
 */
static bool commit_wait(const struct replica *r)
{
        return r->env.defer != NULL && r->commit_deferred;
}

static void commit_executed(struct replica *r)
{
        if (r->env.defer == NULL || r->commit_deferred)
                return;
        r->commit_deferred = true;
        r->env.defer(r->env.context);
}

void replica_commit_resume(struct replica *r)
{
        if (!r->commit_deferred)
                return;
        r->commit_deferred = false;
        commit_advance(r);
}

/*
 * Whether the entry at `op` is the one our log holds there: each header from the log's head
 * down to it names the one below as its parent. The head is this view's (a prepare or the
 * start_view of its primary; a new primary's, the best do_view_change's); an entry under a
 * gap in the chain may be of another log. A new primary kept its own ops 53 and 54 of view 1
 * under a gap of the best log (of view 5: its sender held placeholders there) and executed
 * them, where view 2 had committed others (simulator, seed 2109 on 5 replicas; now
 * test_replication's test_backup_executes_only_a_chained_entry). Where the chain names
 * another prepare than ours, ours is dropped, and repair fetches this log's.
 */
static bool chain_verified(struct replica *r, uint64_t op)
{
        const struct wire_header *above = journal_header(r, r->op);
        if (above == NULL || above->checksum == 0)
                return false;
        for (uint64_t x = r->op - 1; x >= op; x--) {
                const struct wire_header *h = journal_header(r, x);
                if (h == NULL || h->checksum == 0)
                        return false; /* not known yet: repair brings it */
                if (h->checksum != above->prepare.parent) {
                        log_info("journal entry not of this log dropped op=%llu view=%u",
                                 (unsigned long long)x, h->view);
                        r->journal_state[replica_slot(r, x)] = SLOT_EMPTY;
                        return false;
                }
                above = h;
        }
        return true;
}

/* Executes every op that can be: known committed and here, in op order (see commit_wait). */
static void commit_advance(struct replica *r)
{
        /* A state sync is overwriting the ledger's blocks: nothing executes until it installs. */
        if (r->grid_syncing)
                return;
        uint64_t committed_before = r->commit;
        /* Ops known committed (after a view change, or on a backup). */
        while (r->commit < r->commit_max && r->commit < r->op) {
                uint64_t op = r->commit + 1;
                if (r->pipeline_count > 0 &&
                    r->pipeline[r->pipeline_head].prepare->header->prepare.op == op)
                        break; /* the primary's own pipeline commits it below */
                if (!chain_verified(r, op))
                        break;
                if (commit_wait(r))
                        break;
                struct message *p = prepare_load(r, op);
                if (p == NULL)
                        break;
                struct message *reply = message_pool_get(r->pool);
                if (reply == NULL) {
                        message_unref(r->pool, p);
                        break;
                }
                replica_execute(r, p, reply);
                commit_executed(r);
                replica_checkpoint_maybe(r, p);
                message_unref(r->pool, p);
        }
        /* The primary's pipeline: each op once a quorum holds it durably. */
        while (r->status == REPLICA_STATUS_NORMAL && replica_is_primary(r) &&
               r->pipeline_count > 0) {
                struct replica_pipeline_entry *e = &r->pipeline[r->pipeline_head];
                if (e->prepare->header->prepare.op != r->commit + 1)
                        break;
                if (bits(e->ok) < replica_quorum(r) ||
                    !(e->ok & (1u << r->config.replica)))
                        break;
                if (commit_wait(r))
                        break;
                uint64_t received_ns = e->received_ns;
                if (r->config.replica_count > 1 && op_may_run_long(e->prepare->header)) {
                        /*
                         * Backups otherwise learn of it when the primary is done: executing in
                         * turn, each side idles while the other works, and a backup idle for
                         * TICKS_PRIMARY_SILENT starts a view change (at 10 M transfers, a dozen
                         * during 100 lookups of 8,189 transfers). Said now, and handed to the
                         * network before the loop stalls, they execute it alongside.
                         */
                        r->commit_max = MAX(r->commit_max, r->commit + 1);
                        send_commit_of(r, r->commit + 1, e->prepare->header->checksum);
                        if (r->env.flush != NULL)
                                r->env.flush(r->env.context);
                }
                replica_execute(r, e->prepare, e->reply);
                commit_executed(r);
                if (received_ns != 0 && r->env.monotonic_ns != NULL) {
                        uint64_t now_ns = r->env.monotonic_ns(r->env.context);
                        histogram_observe(&r->stats.request_latency,
                                          now_ns > received_ns ? now_ns - received_ns : 0);
                }
                replica_checkpoint_maybe(r, e->prepare);
                message_unref(r->pool, e->prepare);
                memset(e, 0, sizeof(*e));
                r->pipeline_head = (r->pipeline_head + 1) % REPLICA_PIPELINE_MAX;
                r->pipeline_count--;
        }
        if (r->commit > committed_before && r->status == REPLICA_STATUS_NORMAL &&
            replica_is_primary(r) && r->config.replica_count > 1) {
                r->commit_max = MAX(r->commit_max, r->commit);
                send_commit(r); /* backups commit (and answer their clients) at once */
        }
        /* Wherever the last known-committed op got executed (a repair, a journal write). */
        fresh_check(r);
        replication_prepare_pump(r);
}

static void pipeline_ok(struct replica *r, uint64_t op, u128 checksum, uint8_t from)
{
        for (uint32_t k = 0; k < r->pipeline_count; k++) {
                struct replica_pipeline_entry *e =
                        &r->pipeline[(r->pipeline_head + k) % REPLICA_PIPELINE_MAX];
                if (e->prepare->header->prepare.op == op &&
                    e->prepare->header->checksum == checksum) {
                        e->ok |= (uint8_t)(1u << from);
                        commit_advance(r);
                        return;
                }
        }
}

/* The primary of our view said it committed `commit` (it executes ops up to there unasked). */
static void primary_commit_heard(struct replica *r, uint64_t commit)
{
        if (r->primary_commit_view != r->view) {
                r->primary_commit_view = r->view;
                r->primary_commit = 0;
        }
        r->primary_commit = MAX(r->primary_commit, commit);
}

static void send_prepare_ok(struct replica *r, const struct wire_header *prepare)
{
        if (r->status != REPLICA_STATUS_NORMAL || replica_is_primary(r))
                return;
        /*
         * Not for an op the primary already committed: it waits for none. A backup that
         * repaired thousands of ops after a state sync sent an ok for each; they filled its
         * send queue, and the oks of the ops the primary did wait for were dropped behind them
         * (10,373 dropped in one partition test run).
         */
        if (r->primary_commit_view == r->view && prepare->prepare.op <= r->primary_commit)
                return;
        /*
         * Not before this view's state is durable: recovery keeps an op of log_view only if
         * the persisted log_view says so, and an acknowledged op must never be forgotten.
         */
        if (r->view_state_durable.log_view != r->view ||
            r->view_state_durable.anchor_op != r->anchor_op)
                return;
        struct message *m = header_only(r, COMMAND_PREPARE_OK);
        if (m == NULL)
                return;
        m->header->prepare_ok.prepare_checksum = prepare->checksum;
        m->header->prepare_ok.parent = prepare->prepare.parent;
        m->header->prepare_ok.client = prepare->prepare.client;
        m->header->prepare_ok.op = prepare->prepare.op;
        m->header->prepare_ok.commit_min = r->commit;
        m->header->prepare_ok.timestamp = prepare->prepare.timestamp;
        m->header->prepare_ok.request = prepare->prepare.request;
        m->header->prepare_ok.operation = prepare->prepare.operation;
        finish_and_send(r, m, replica_primary_index(r, r->view));
}

static void start_view_maybe_finish(struct replica *r);

static void on_journal_durable(void *context, struct message *prepare)
{
        struct replica *r = context;
        const struct wire_header *h = prepare->header;
        uint32_t slot = replica_slot(r, h->prepare.op);
        if (r->journal_headers[slot].checksum != h->checksum ||
            r->journal_state[slot] == SLOT_EMPTY)
                return; /* truncated by a view change meanwhile */
        r->journal_state[slot] = SLOT_DURABLE;
        if (r->status == REPLICA_STATUS_NORMAL && replica_is_primary(r)) {
                pipeline_ok(r, h->prepare.op, h->checksum, r->config.replica);
                commit_advance(r); /* a repaired committed op may be the next to execute */
                return;
        }
        if (r->start_view_pending) {
                start_view_maybe_finish(r);
                return;
        }
        if (h->prepare.op > r->commit)
                send_prepare_ok(r, h);
        commit_advance(r);
}

/* ---- backups: prepares and commits -------------------------------------------------------- */

static void request_start_view(struct replica *r, int target)
{
        struct message *m = header_only(r, COMMAND_REQUEST_START_VIEW);
        if (m == NULL)
                return;
        r->start_view_asked_tick = r->tick;
        finish_and_send(r, m, target);
}

/* Asks peers for prepares this replica lacks: missing bodies, and ops up to commit_max. */
static void repair(struct replica *r, int target);

/*
 * Asks the primary for its headers of committed ops we have not executed: ours for those ops
 * may be stale (from a view whose log was replaced) and only the primary's are certain.
 */
static void request_headers(struct replica *r)
{
        if (r->commit >= r->commit_max || replica_is_primary(r) ||
            r->status != REPLICA_STATUS_NORMAL ||
            r->tick - r->headers_asked_tick < TICKS_REPAIR)
                return;
        r->headers_asked_tick = r->tick;
        struct message *m = header_only(r, COMMAND_REQUEST_HEADERS);
        if (m == NULL)
                return;
        uint64_t range[2] = {r->commit + 1, r->commit_max};
        uint32_t max = (r->config.request_size_max - WIRE_HEADER_SIZE) / WIRE_HEADER_SIZE;
        range[1] = MIN(range[1], range[0] + max - 1);
        memcpy(m->header->raw, range, sizeof(range)); /* op_min @128, op_max @136 */
        finish_and_send(r, m, replica_primary_index(r, r->view));
}

static void on_request_headers(struct replica *r, struct message *m)
{
        if (r->status != REPLICA_STATUS_NORMAL || !replica_is_primary(r))
                return;
        uint64_t range[2];
        memcpy(range, m->header->raw, sizeof(range));
        struct message *reply = header_only(r, COMMAND_HEADERS);
        if (reply == NULL)
                return;
        uint32_t max = (r->config.request_size_max - WIRE_HEADER_SIZE) / WIRE_HEADER_SIZE;
        uint32_t count = 0;
        for (uint64_t op = range[0]; op <= range[1] && op <= r->commit && count < max; op++) {
                const struct wire_header *h = journal_header(r, op);
                if (h == NULL)
                        continue;
                memcpy(message_body(reply) + (size_t)count * WIRE_HEADER_SIZE, h,
                       WIRE_HEADER_SIZE);
                count++;
        }
        reply->header->size = WIRE_HEADER_SIZE + count * WIRE_HEADER_SIZE;
        finish_and_send(r, reply, m->header->replica);
}

/* The primary's headers of committed ops replace any stale ones of ours. */
/*
 * The state of a slot whose header arrives from a peer. A recovery placeholder (header unknown)
 * keeps what recovery knew of it: faulty (we may have acknowledged what was there) or lost;
 * anything else is missing (never written here).
 */
static enum replica_slot_state gap_state(const struct replica *r, const struct wire_header *mine,
                                         uint64_t op)
{
        enum replica_slot_state st = r->journal_state[replica_slot(r, op)];
        if (mine != NULL && mine->checksum == 0 && (st == SLOT_FAULTY || st == SLOT_LOST))
                return st;
        return SLOT_MISSING;
}

static void on_headers(struct replica *r, struct message *m, int from)
{
        if (r->status != REPLICA_STATUS_NORMAL || from != (int)replica_primary_index(r, r->view) ||
            m->header->view != r->view)
                return;
        uint32_t count = (m->header->size - WIRE_HEADER_SIZE) / WIRE_HEADER_SIZE;
        for (uint32_t i = 0; i < count; i++) {
                struct wire_header h;
                memcpy(&h, message_body(m) + (size_t)i * WIRE_HEADER_SIZE, sizeof(h));
                if (h.command != COMMAND_PREPARE || !wire_header_checksum_valid(&h) ||
                    h.prepare.op <= r->commit || h.prepare.op > r->commit_max ||
                    slot_holds_newer(r, h.prepare.op))
                        continue;
                const struct wire_header *mine = journal_header(r, h.prepare.op);
                if (mine != NULL && mine->checksum == h.checksum)
                        continue;
                journal_put(r, &h, gap_state(r, mine, h.prepare.op));
                if (h.prepare.op > r->op) {
                        r->op = h.prepare.op;
                        r->parent = h.checksum;
                }
        }
        repair(r, from);
}

/* Asks `to` for the prepare of `op` (checksum 0: whichever was committed there). */
static bool request_prepare_send(struct replica *r, uint64_t op, u128 checksum, int to)
{
        struct message *m = header_only(r, COMMAND_REQUEST_PREPARE);
        if (m == NULL)
                return false;
        m->header->raw[0] = 0;
        struct {
                u128 checksum;
                u128 padding;
                uint64_t op;
        } request = {.checksum = checksum, .op = op};
        memcpy(m->header->raw, &request, sizeof(request));
        r->stats.repairs_requested++;
        finish_and_send(r, m, to);
        return true;
}

static bool accept_prepare(struct replica *r, struct message *m, int from);

/*
 * The checksum the log's chain names for `op`, whose own header is unknown here: the head's is
 * r->parent (known from a view's anchor, or its sender, even without the header), any other's
 * the parent the next op's header names. 0 if neither is known.
 */
static u128 chain_names(const struct replica *r, uint64_t op)
{
        if (op == r->op)
                return r->parent;
        const struct wire_header *next = journal_header(r, op + 1);
        return next != NULL && next->checksum != 0 ? next->prepare.parent : 0;
}

/*
 * An op our own journal may still hold intact though our log lost track of it: an entry that
 * recovery, or a view change below a break in the chain, made a placeholder of (faulty or
 * lost), now named by the chain. Read back and taken as if a peer had sent it (checked as
 * such, and written again, so it is durable whatever the read came from). Without it a replica
 * asked only its peers, and an op committed with its copy and one damaged elsewhere stayed
 * unrepairable (simulator, seed 1505 on 3 replicas).
 */
static bool repair_from_own_journal(struct replica *r, uint64_t op, u128 want)
{
        enum replica_slot_state s = journal_state_of(r, op);
        if (r->env.journal_read == NULL || want == 0 ||
            (s != SLOT_FAULTY && s != SLOT_LOST && s != SLOT_EMPTY))
                return false;
        struct message *p = message_pool_get(r->pool);
        if (p == NULL)
                return false;
        bool taken = r->env.journal_read(r->env.context, op, want, p) &&
                     accept_prepare(r, p, r->config.replica);
        message_unref(r->pool, p);
        return taken;
}

static void repair(struct replica *r, int target)
{
        /* A state sync replaces the log: prepares repaired meanwhile would be refused. */
        if (r->config.replica_count == 1 || r->sync.active)
                return;
        r->repair_tick = r->tick;
        request_headers(r);
        /*
         * Up to REPAIR_REQUESTS_MAX ops asked for and not yet here; an op is asked for again
         * only a round (TICKS_REPAIR) after it was asked. A replica catching up under load
         * calls this for every prepare that does not chain yet: asking the same ops each time
         * filled the link to the peer with duplicates (thousands of requests a second dropped
         * by a full send queue) and it never closed the gap.
         */
        uint32_t asked = 0;
        uint64_t last = MAX(r->op, r->commit_max);
        for (uint64_t op = r->commit + 1; op <= last && asked < REPAIR_REQUESTS_MAX; op++) {
                const struct wire_header *h = journal_header(r, op);
                enum replica_slot_state s = journal_state_of(r, op);
                if (s == SLOT_DURABLE || s == SLOT_WRITING)
                        continue;
                if (h == NULL && op > r->op + 1)
                        break; /* ask for the next op first; it tells the chain */
                uint64_t *asked_tick = &r->repair_asked[replica_slot(r, op)];
                if (*asked_tick != 0 && r->tick - *asked_tick < TICKS_REPAIR) {
                        asked++; /* in flight */
                        continue;
                }
                *asked_tick = r->tick;
                u128 want = h != NULL && h->checksum != 0 ? h->checksum : chain_names(r, op);
                if (repair_from_own_journal(r, op, want))
                        continue;
                /*
                 * Every other round, and always instead of ourselves, rotate over the peers:
                 * the one we would ask may have lost its copy (a committed op it no longer
                 * needs, so it never repairs it).
                 */
                uint64_t round = r->tick / TICKS_REPAIR;
                int to = target;
                if (to < 0)
                        to = replica_primary_index(r, r->view);
                if (to == r->config.replica || round % 2 == 1)
                        to = (r->config.replica + 1 +
                              (int)((op + round / 2) % (r->config.replica_count - 1))) %
                             r->config.replica_count;
                if (!request_prepare_send(r, op, want, to))
                        return;
                asked++;
        }
}

void replication_checkpoint_durable(struct replica *r)
{
        uint64_t op = r->wal_refused_op;
        if (op == 0)
                return;
        r->wal_refused_op = 0;
        if (op != r->op + 1 || op >= r->checkpoint_op_durable + r->config.wal_slot_count ||
            r->status != REPLICA_STATUS_NORMAL || replica_is_primary(r))
                return;
        request_prepare_send(r, op, r->wal_refused_checksum,
                             (int)replica_primary_index(r, r->view));
}

/*
 * Takes a prepare into the journal when it is known to belong to this replica's log:
 *  - its header is already there (from a start_view or do_view_change) without the body;
 *  - it is the next op, chains onto the log, and comes from this view's primary (a new op of
 *    this view, or a committed op the primary repairs for us);
 *  - it fills a gap below a known header whose parent is its checksum.
 * A prepare that merely chains is not enough: a stale primary of an older view can send one
 * that chains onto a common prefix but was never committed.
 */
static bool accept_prepare(struct replica *r, struct message *m, int from)
{
        const struct wire_header *h = m->header;
        uint64_t op = h->prepare.op;
        const struct wire_header *existing = journal_header(r, op);
        uint32_t slot = replica_slot(r, op);
        if (existing != NULL && existing->checksum == 0)
                existing = NULL; /* a recovery gap: its header is unknown */
        bool from_primary = from == (int)replica_primary_index(r, r->view) &&
                            r->status == REPLICA_STATUS_NORMAL;
        if (r->sync.active && !sync_may_journal(r, op))
                return false; /* the log is about to be replaced from a checkpoint */
        if (slot_holds_newer(r, op))
                return false;
        if (existing != NULL && existing->checksum == h->checksum) {
                if (r->journal_state[slot] != SLOT_MISSING &&
                    r->journal_state[slot] != SLOT_FAULTY && r->journal_state[slot] != SLOT_LOST)
                        return false; /* already here or being written */
        } else if (op == r->op + 1 && h->prepare.parent == r->parent && from_primary &&
                   (h->view == r->view || op <= r->commit_max)) {
                if (op >= sync_journal_base(r) + r->config.wal_slot_count) {
                        r->stats.wal_full_stalls++;
                        r->wal_refused_op = op;
                        r->wal_refused_checksum = h->checksum;
                        return false; /* the slot still holds an op the checkpoint lacks */
                }
                r->op = op;
                r->parent = h->checksum;
        } else if (existing == NULL && op <= r->op && op > r->commit &&
                   chain_names(r, op) == h->checksum) {
                /* Verified by the chain from above (at the head: its checksum, log_install). */
        } else {
                log_debug("prepare not taken op=%llu view=%u from=%d my_op=%llu my_view=%u "
                          "status=%d chains=%d known=%d commit_max=%llu",
                          (unsigned long long)op, h->view, from, (unsigned long long)r->op,
                          r->view, r->status, h->prepare.parent == r->parent,
                          existing != NULL, (unsigned long long)r->commit_max);
                return false;
        }
        if (!journal_write(r, m))
                return false;
        if (r->sync.active) {
                r->sync_journaled_max = MAX(r->sync_journaled_max, op);
                r->stats.state_sync_prepares++;
        }
        journal_put(r, h, SLOT_WRITING);
        cache_put(r, m);
        r->timestamp_last = MAX(r->timestamp_last, h->prepare.timestamp);
        return true;
}

static void on_prepare(struct replica *r, struct message *m, int from)
{
        const struct wire_header *h = m->header;
        if (from < 0)
                return;
        if (h->view > r->view) {
                /* A newer view exists: learn its log before taking part. */
                if (r->tick - r->start_view_asked_tick >= TICKS_REQUEST_START_VIEW / 2)
                        request_start_view(r, from);
                return;
        }
        if (r->status == REPLICA_STATUS_NORMAL && h->view == r->view &&
            from == (int)replica_primary_index(r, r->view) && !replica_is_primary(r)) {
                r->primary_heard_tick = r->tick;
                r->commit_max = MAX(r->commit_max, h->prepare.commit);
                primary_commit_heard(r, h->prepare.commit);
        }
        if (h->prepare.op <= r->commit) {
                /*
                 * Executed here already, but a new primary that knows less re-replicates it:
                 * without our ok it may never gather a quorum for it.
                 */
                const struct wire_header *mine = journal_header(r, h->prepare.op);
                if (from != (int)replica_primary_index(r, r->view))
                        return;
                if (mine != NULL && mine->checksum == h->checksum)
                        send_prepare_ok(r, mine);
                else if (mine == NULL)
                        /*
                         * Executed, but not from our journal: a state sync installed a
                         * checkpoint past it (or the journal moved on). Only committed ops
                         * are executed, and the primary's log holds every committed op as
                         * it was, so this is that op, and its effect is durable here. A
                         * primary whose view began before our sync re-replicates it; without
                         * our ok it could not commit past it until another backup returns.
                         */
                        send_prepare_ok(r, h);
                return;
        }
        if (replica_is_primary(r) && r->status == REPLICA_STATUS_NORMAL) {
                /* Only a repair of our own log: an op our journal lost. */
                const struct wire_header *mine = journal_header(r, h->prepare.op);
                enum replica_slot_state st = journal_state_of(r, h->prepare.op);
                if (mine != NULL && mine->checksum == h->checksum &&
                    (st == SLOT_MISSING || st == SLOT_FAULTY || st == SLOT_LOST))
                        accept_prepare(r, m, from);
                return;
        }
        const struct wire_header *existing = journal_header(r, h->prepare.op);
        if (existing != NULL && existing->checksum == h->checksum &&
            r->journal_state[replica_slot(r, h->prepare.op)] == SLOT_DURABLE) {
                send_prepare_ok(r, existing); /* our ok was lost: say it again */
                return;
        }
        if (!accept_prepare(r, m, from)) {
                if (h->prepare.op > r->op + 1 && r->status == REPLICA_STATUS_NORMAL)
                        repair(r, from);
                return;
        }
        commit_advance(r);
}

static void on_prepare_ok(struct replica *r, struct message *m)
{
        const struct wire_header *h = m->header;
        if (r->status != REPLICA_STATUS_NORMAL || !replica_is_primary(r) || h->view != r->view)
                return;
        pipeline_ok(r, h->prepare_ok.op, h->prepare_ok.prepare_checksum, h->replica);
}

static void view_persist(struct replica *r);

/* A fresh replica joins its first view: from here on it witnesses every op (fresh_joined). */
static void fresh_joined_set(struct replica *r)
{
        if (!r->fresh || r->fresh_joined)
                return;
        r->fresh_joined = true;
        r->fresh_joined_op = r->op;
}

/*
 * A fresh (wiped) replica may have acknowledged ops before it lost its disk; it counts in view
 * changes again only once it holds everything the cluster has committed.
 */
static void fresh_check(struct replica *r)
{
        if (r->fresh && r->status == REPLICA_STATUS_NORMAL && r->commit >= r->commit_max) {
                r->fresh = false;
                log_info("caught up with the cluster commit=%llu", (unsigned long long)r->commit);
                view_persist(r);
        }
}

static void on_commit(struct replica *r, struct message *m)
{
        const struct wire_header *h = m->header;
        if (h->view > r->view) {
                if (r->tick - r->start_view_asked_tick >= TICKS_REQUEST_START_VIEW / 2)
                        request_start_view(r, h->replica);
                return;
        }
        if (h->view == r->view && r->status != REPLICA_STATUS_NORMAL &&
            h->replica == replica_primary_index(r, r->view) &&
            r->tick - r->start_view_asked_tick >= TICKS_REQUEST_START_VIEW / 2) {
                /* This view has a working primary; we missed its start_view. */
                request_start_view(r, h->replica);
                return;
        }
        if (h->view < r->view || r->status != REPLICA_STATUS_NORMAL || replica_is_primary(r) ||
            h->replica != replica_primary_index(r, r->view))
                return;
        r->primary_heard_tick = r->tick;
        const struct wire_header *mine = journal_header(r, h->commit.commit);
        if (mine != NULL && mine->checksum != h->commit.commit_checksum &&
            h->commit.commit > r->commit) {
                /* Our log differs from the primary's: take its view's log again. */
                request_start_view(r, h->replica);
                return;
        }
        r->commit_max = MAX(r->commit_max, h->commit.commit);
        primary_commit_heard(r, h->commit.commit);
        r->primary_checkpoint_op = h->commit.checkpoint_op;
        sync_maybe(r, h->replica, h->commit.checkpoint_op);
        commit_advance(r);
        fresh_check(r);
        if (r->commit < r->commit_max && r->tick - r->repair_tick >= TICKS_REPAIR)
                repair(r, h->replica);
}

static void on_request_prepare(struct replica *r, struct message *m)
{
        struct {
                u128 checksum;
                u128 padding;
                uint64_t op;
        } request;
        memcpy(&request, m->header->raw, sizeof(request));
        const struct wire_header *h = journal_header(r, request.op);
        if (h == NULL) {
                /*
                 * Not in our log, yet perhaps on our disk: a replica without state (its
                 * checkpoint damaged, a copy of one under way) keeps its journal intact, and a
                 * view change may need an op that only it still holds whole. Asked for by
                 * checksum, the very prepare is unambiguous wherever it lies.
                 */
                if (request.checksum != 0 && r->env.journal_read != NULL) {
                        struct message *p = message_pool_get(r->pool);
                        if (p == NULL)
                                return;
                        if (r->env.journal_read(r->env.context, request.op, request.checksum,
                                                p)) {
                                r->stats.repairs_served++;
                                send_to_replica(r, m->header->replica, p);
                        }
                        message_unref(r->pool, p);
                }
                return;
        }
        /* Without a checksum only a committed op is unambiguous. */
        if (request.checksum == 0 ? request.op > r->commit : h->checksum != request.checksum)
                return;
        struct message *p = prepare_load(r, request.op);
        if (p == NULL)
                return;
        r->stats.repairs_served++;
        send_to_replica(r, m->header->replica, p);
        message_unref(r->pool, p);
}

/* ---- view changes -------------------------------------------------------------------------- */

/*
 * Writes up to VIEW_HEADERS_MAX journal headers ending at op into the body, leaving `reserve`
 * bytes of the message free; returns bytes.
 */
static uint32_t headers_write(struct replica *r, uint8_t *body, uint32_t reserve)
{
        uint32_t count = 0;
        /* As many as fit in one message of the request size (also between replicas). */
        uint32_t room = r->config.request_size_max - WIRE_HEADER_SIZE;
        uint32_t fit = room > reserve ? (room - reserve) / WIRE_HEADER_SIZE : 0;
        uint32_t max = MIN(VIEW_HEADERS_MAX, fit);
        uint64_t first = r->op > max ? r->op - max + 1 : 1;
        for (uint64_t op = first; op <= r->op; op++) {
                const struct wire_header *h = journal_header(r, op);
                if (h == NULL)
                        continue;
                memcpy(body + (size_t)count * WIRE_HEADER_SIZE, h, WIRE_HEADER_SIZE);
                count++;
        }
        return count * WIRE_HEADER_SIZE;
}

static void send_do_view_change(struct replica *r)
{
        if (r->view_state_durable.view != r->view)
                return; /* the new view must be durable before it is promised to anyone */
        struct message *m = header_only(r, COMMAND_DO_VIEW_CHANGE);
        if (m == NULL)
                return;
        struct wire_header *h = m->header;
        /* A fresh replica without state appends what its journal holds (nostate_checksums). */
        uint32_t nostate = r->fresh ? (uint32_t)MIN((uint64_t)REPLICA_NOSTATE_OPS, r->nostate_top)
                                    : 0;
        uint32_t nostate_bytes = nostate * (uint32_t)sizeof(u128);
        uint32_t headers = headers_write(r, message_body(m), nostate_bytes);
        memcpy(message_body(m) + headers, r->nostate_checksums, nostate_bytes);
        h->size = WIRE_HEADER_SIZE + headers + nostate_bytes;
        /* Our own meanings of the do_view_change fields: */
        memset(h->raw, 0, sizeof(h->raw));
        uint64_t fields[4] = {r->op, r->commit_max, r->checkpoint_op_durable, r->log_view};
        memcpy(h->raw + 32, fields, sizeof(fields)); /* op, commit_max, checkpoint, log_view */
        h->raw[64] = r->fresh ? 1 : 0;
        h->raw[65] = r->fresh && r->view_state_durable.fresh_joined ? 1 : 0;
        memcpy(h->raw + 96, &r->fresh_joined_op, sizeof(r->fresh_joined_op));
        memcpy(h->raw + 104, &r->recovered_view, sizeof(r->recovered_view));
        /* The checksum of the prepare at op, even when that header is not here (dvc_head). */
        memcpy(h->raw + 112, &r->parent, sizeof(r->parent));
        memcpy(h->raw + 72, &r->nostate_top, sizeof(r->nostate_top));
        memcpy(h->raw + 80, &nostate, sizeof(nostate));
        /*
         * For the top 128 ops (bit i: op - i): present = held durably; faulty = a damaged
         * copy or one being rewritten, which may have been acknowledged. Any other op is
         * absent here: the new primary reads that as a nack (see dvc_answer).
         */
        u128 present = 0, faulty = 0;
        for (uint32_t i = 0; i < 128 && i < r->op; i++) {
                enum replica_slot_state st = journal_state_of(r, r->op - i);
                if (st == SLOT_DURABLE)
                        present |= (u128)1 << i;
                else if (st == SLOT_FAULTY || st == SLOT_WRITING)
                        faulty |= (u128)1 << i;
        }
        memcpy(h->raw, &present, sizeof(present));
        memcpy(h->raw + 16, &faulty, sizeof(faulty));
        uint8_t primary = replica_primary_index(r, r->view);
        if (primary == r->config.replica) {
                /* Our own vote, kept with the others'. */
                wire_header_set_checksum_body(h, message_body(m), h->size - WIRE_HEADER_SIZE);
                wire_header_set_checksum(h);
                if (r->dvc[r->config.replica] != NULL)
                        message_unref(r->pool, r->dvc[r->config.replica]);
                r->dvc[r->config.replica] = m;
                return;
        }
        finish_and_send(r, m, primary);
}

/*
 * A do_view_change's body: its log's headers, then the journal report of a replica without
 * state (nostate_checksums; its count at raw + 80, its top op at raw + 72). A count that does
 * not fit the body is taken as none.
 */
static uint32_t dvc_nostate_count(const struct message *m)
{
        uint32_t count;
        memcpy(&count, m->header->raw + 80, sizeof(count));
        uint32_t body = m->header->size - WIRE_HEADER_SIZE;
        return count <= REPLICA_NOSTATE_OPS && count * (uint32_t)sizeof(u128) <= body ? count : 0;
}

static uint32_t dvc_header_count(const struct message *m)
{
        uint32_t body = m->header->size - WIRE_HEADER_SIZE;
        return (body - dvc_nostate_count(m) * (uint32_t)sizeof(u128)) / WIRE_HEADER_SIZE;
}

/* The sender's journal report for `op`: false if it has none for it. */
static bool dvc_nostate_held(const struct message *m, uint64_t op, u128 *held)
{
        uint32_t count = dvc_nostate_count(m);
        uint64_t top;
        memcpy(&top, m->header->raw + 72, sizeof(top));
        if (op > top || top - op >= count)
                return false;
        uint32_t body = m->header->size - WIRE_HEADER_SIZE;
        memcpy(held,
               message_body(m) + body - count * sizeof(u128) + (top - op) * sizeof(u128),
               sizeof(*held));
        return true;
}

static void dvc_fields(const struct message *m, uint64_t *op, uint64_t *commit_max,
                       uint64_t *log_view, bool *fresh)
{
        uint64_t fields[4];
        memcpy(fields, m->header->raw + 32, sizeof(fields));
        *op = fields[0];
        *commit_max = fields[1];
        *log_view = fields[3];
        *fresh = m->header->raw[64] != 0;
}

/* The checksum of the prepare at the sender's op (0: unknown; a peer of the release before). */
static u128 dvc_head(const struct message *m)
{
        u128 head;
        memcpy(&head, m->header->raw + 112, sizeof(head));
        return head;
}

/* A backup acknowledges the uncommitted ops of its log it already holds. */
static void suffix_acknowledge(struct replica *r)
{
        for (uint64_t op = r->commit + 1; op <= r->op; op++) {
                const struct wire_header *x = journal_header(r, op);
                if (x != NULL && r->journal_state[replica_slot(r, op)] == SLOT_DURABLE)
                        send_prepare_ok(r, x);
        }
}

static void on_view_written(void *context)
{
        struct replica *r = context;
        r->view_write_in_flight = false;
        r->view_state_durable = r->view_state_writing;
        if (r->start_view_pending)
                start_view_maybe_finish(r);
        else if (r->status == REPLICA_STATUS_VIEW_CHANGE)
                send_do_view_change(r);
        else if (r->status == REPLICA_STATUS_NORMAL && !replica_is_primary(r)) {
                suffix_acknowledge(r); /* what waited for the view state to be durable */
        }
}

/* Persists view and log_view when they changed; retried every tick until it is taken. */
static void view_persist(struct replica *r)
{
        if (r->view_write_in_flight || r->env.view_write == NULL)
                return;
        struct replica_view_state now = {
                .view = r->view,
                .log_view = r->log_view,
                .anchor_op = r->anchor_op,
                .anchor_checksum = r->anchor_checksum,
                .fresh = r->fresh,
                .fresh_joined = r->fresh_joined,
                .fresh_joined_op = r->fresh_joined_op,
                .grid_syncing = r->grid_syncing,
        };
        memcpy(now.view_prefixes, r->view_prefixes, sizeof(now.view_prefixes));
        const struct replica_view_state *d = &r->view_state_durable;
        if (d->view == now.view && d->log_view == now.log_view &&
            d->anchor_op == now.anchor_op && d->anchor_checksum == now.anchor_checksum &&
            d->fresh == now.fresh && d->fresh_joined == now.fresh_joined &&
            d->fresh_joined_op == now.fresh_joined_op && d->grid_syncing == now.grid_syncing &&
            memcmp(d->view_prefixes, now.view_prefixes, sizeof(now.view_prefixes)) == 0)
                return;
        r->view_state_writing = now;
        r->view_write_in_flight = true;
        if (!r->env.view_write(r->env.context, &now, on_view_written, r))
                r->view_write_in_flight = false;
}

static void view_change_start(struct replica *r, uint32_t view)
{
        tally_assert(view > r->view);
        log_info("view change started view=%u from_view=%u op=%llu commit=%llu", view, r->view,
                 (unsigned long long)r->op, (unsigned long long)r->commit);
        r->stats.view_changes++;
        r->status = REPLICA_STATUS_VIEW_CHANGE;
        r->view = view;
        r->view_change_tick = r->tick;
        r->start_view_pending = false;
        r->suffix_next = 0;
        pipeline_clear(r);
        dvc_clear(r);
        /* Queued requests wait for a primary; their clients retry. */
        for (uint32_t k = 0; k < r->queue_count; k++)
                message_unref(r->pool,
                              r->queue[(r->queue_head + k) % REPLICA_REQUEST_QUEUE_MAX].request);
        r->queue_count = 0;
        r->queue_head = 0;
        r->pending_create_events = 0;
        view_persist(r);
        send_do_view_change(r);
}

/*
 * A start_view_change either proposes `view` (a vote; the sender moves only with a quorum) or,
 * with SVC_JOINED, says the sender is in `view` already, which took a quorum's votes. A peer
 * still in an older view joins it then: otherwise a replica that entered a view the others
 * missed (their vote quorum met only at that replica, or it restarted into it) waits forever
 * while they keep a primary it cannot go back to.
 */
#define SVC_JOINED 1u

static void send_start_view_change_as(struct replica *r, uint32_t view, uint8_t flags)
{
        struct message *m = header_only(r, COMMAND_START_VIEW_CHANGE);
        if (m == NULL)
                return;
        m->header->view = view;
        m->header->raw[0] = flags;
        finish_and_send(r, m, -1);
}

/* Backup: the primary has not been heard for longer than it may take (primary_patience). */
static bool primary_silent(const struct replica *r)
{
        return r->tick - r->primary_heard_tick >= TICKS_PRIMARY_SILENT + r->primary_patience_ticks;
}

static void send_start_view_change(struct replica *r, uint32_t view)
{
        send_start_view_change_as(r, view, 0);
}

/* Records a vote for `view` and moves to it once a quorum wants it. */
static void svc_vote(struct replica *r, uint32_t view, uint8_t from)
{
        if (view <= r->view)
                return;
        if (view > r->svc_view) {
                r->svc_view = view;
                r->svc_votes = 0;
        }
        if (view < r->svc_view)
                return;
        r->svc_votes |= (uint8_t)(1u << from);
        if (bits(r->svc_votes) >= replica_quorum(r) && (r->svc_votes & (1u << r->config.replica)))
                view_change_start(r, view);
}

static void on_start_view_change(struct replica *r, struct message *m)
{
        const struct wire_header *h = m->header;
        if ((h->raw[0] & SVC_JOINED) && h->view > r->view && !r->sync.active) {
                log_info("joining a view change in progress view=%u from=%u", h->view,
                         h->replica);
                view_change_start(r, h->view);
                return;
        }
        svc_vote(r, h->view, h->replica);
        /*
         * Join if our own primary is silent too (or we are in a view change ourselves), or if
         * our view is over: every vote is for its sender's view + 1, so a vote beyond our
         * next view comes from a replica already in a newer view, which a quorum (or our
         * view's primary, stepping down) had to leave ours for. Our view can commit nothing
         * more, even with us as its primary; without this a stale primary and a backup of
         * the newer view, with that view's primary gone, would wait for it forever.
         */
        bool over = h->view > r->view + 1;
        bool silent = over || r->status != REPLICA_STATUS_NORMAL ||
                      (!replica_is_primary(r) && primary_silent(r));
        if (silent && h->view > r->view && !(r->svc_votes & (1u << r->config.replica)) &&
            h->view == r->svc_view) {
                send_start_view_change(r, h->view);
                svc_vote(r, h->view, r->config.replica);
        }
}

/*
 * Whether a do_view_change or start_view carries a valid prepare header for `op`; `cursor`
 * (initially the count of headers) walks the body down, so ops are asked for in descending
 * order.
 */
static bool message_header_at(const struct message *m, uint32_t *cursor, uint64_t op,
                              struct wire_header *out)
{
        while (*cursor > 0) {
                memcpy(out, message_body(m) + (size_t)(*cursor - 1) * WIRE_HEADER_SIZE,
                       sizeof(*out));
                if (out->prepare.op > op) {
                        (*cursor)--;
                        continue;
                }
                return out->prepare.op == op && out->command == COMMAND_PREPARE &&
                       wire_header_checksum_valid(out);
        }
        return false;
}

/*
 * Installs the headers of a log (from a do_view_change or start_view) up to `op`. The message
 * carries only the log's top, and may have gaps; where it carries nothing, our own entries stay
 * only where they chain down from the header (or head) above: an entry that does not is from a
 * replaced log and is dropped (repair then fetches the right one, checked against the chain
 * from above).
 */
static void log_install(struct replica *r, const struct message *m, uint64_t op)
{
        uint32_t count = m->header->command == COMMAND_DO_VIEW_CHANGE
                                 ? dvc_header_count(m)
                                 : (m->header->size - WIRE_HEADER_SIZE) / WIRE_HEADER_SIZE;
        for (uint32_t i = 0; i < count; i++) {
                struct wire_header h;
                memcpy(&h, message_body(m) + (size_t)i * WIRE_HEADER_SIZE, sizeof(h));
                if (h.command != COMMAND_PREPARE || !wire_header_checksum_valid(&h) ||
                    h.prepare.op > op || h.prepare.op <= r->commit)
                        continue;
                const struct wire_header *mine = journal_header(r, h.prepare.op);
                if (mine != NULL && mine->checksum == h.checksum)
                        continue;
                journal_put(r, &h, gap_state(r, mine, h.prepare.op));
        }
        /* Everything past the chosen log's end was never committed: forget it. */
        for (uint64_t x = op + 1; x <= r->op; x++) {
                if (journal_header(r, x) != NULL)
                        r->journal_state[replica_slot(r, x)] = SLOT_EMPTY;
        }
        /*
         * The sender's head, known by its checksum even when the message carries no header of
         * it (its log ends at its checkpoint, or it lost its journal's headers in a restart).
         */
        u128 head = 0;
        if (m->header->command == COMMAND_DO_VIEW_CHANGE)
                head = dvc_head(m);
        else if (m->header->command == COMMAND_START_VIEW)
                memcpy(&head, m->header->start_view.op_checksum, sizeof(head));
        /*
         * Everywhere the message carried no header (below its headers, in gaps between them,
         * or, when it carried none, from the head down): keep what chains down from the header
         * or head above. Where the chain names another prepare than ours, ours was never in
         * this log: dropped (a nack). Below a break in the chain we cannot tell: such an entry
         * becomes a placeholder that may have been acknowledged, unless it does not name the
         * carried header under it as its parent (then it is not of this log either: dropped);
         * a recovery placeholder keeps what it was; repair fills it from the chain, from our
         * own journal first.
         * Checked from the head too: a backup kept its own op 64 of view 5 as the head and
         * executed it (simulator, seed 355 on 3 replicas: a primary restarted at its
         * checkpoint sent a start_view without headers), and a new primary whose chosen log
         * came without headers kept its own ops 403 and 404 of view 5 under the head of view
         * 6 and executed a request twice (seed 1979 on 3 replicas). And in gaps: a new primary
         * kept its own ops 721 and 722 of view 8 between carried headers 720 and 723 of view
         * 9, cut 722 and 723 (never acknowledged by a quorum) and made its own 721 the head,
         * under which the log's 720 no longer chained (seed 3097 on 5 replicas: a stall).
         */
        u128 expected = head;
        bool chained = head != 0;
        bool anchored = chained; /* under something known: nothing to check above it */
        uint32_t cursor = count; /* the message's headers ascend by op: walked down alongside */
        struct wire_header carried_below;
        bool below_carried = message_header_at(m, &cursor, op, &carried_below);
        for (uint64_t x = op; x > r->commit; x--) {
                bool carried = below_carried;
                below_carried = x - 1 > r->commit &&
                                message_header_at(m, &cursor, x - 1, &carried_below);
                const struct wire_header *mine = journal_header(r, x);
                uint32_t slot = replica_slot(r, x);
                if (carried && mine != NULL) {
                        expected = mine->prepare.parent;
                        chained = anchored = true;
                        continue;
                }
                if (!anchored)
                        continue;
                if (chained && mine != NULL && mine->checksum == expected) {
                        expected = mine->prepare.parent;
                        continue;
                }
                if (mine == NULL || mine->checksum == 0) {
                        chained = false;
                        continue;
                }
                if (chained || (below_carried && mine->prepare.parent != carried_below.checksum)) {
                        log_info("journal entry not of this log dropped op=%llu view=%u",
                                 (unsigned long long)x, mine->view);
                        r->journal_state[slot] = SLOT_EMPTY;
                        chained = false;
                        continue;
                }
                memset(&r->journal_headers[slot], 0, sizeof(r->journal_headers[slot]));
                r->journal_headers[slot].prepare.op = x;
                r->journal_state[slot] = SLOT_FAULTY;
        }
        r->op = MAX(op, r->commit);
        const struct wire_header *last = journal_header(r, r->op);
        if (last != NULL && last->checksum != 0) {
                r->parent = last->checksum;
                r->timestamp_last = MAX(r->timestamp_last, last->prepare.timestamp);
        } else if (r->op == op && head != 0) {
                /*
                 * The log's last header is unknown to its sender too (it joined a view whose
                 * start it never journaled, and restarted), but its checksum is known: repair
                 * asks for that very prepare, and from it for the ops under it. Unknown, no
                 * replica could serve the op (one that is not committed is served only by
                 * checksum), and the view could never start (simulator, seed 301 on 3
                 * replicas).
                 */
                r->parent = head;
        } else if (r->op == r->commit) {
                /* The log ends at the last executed op (a checkpoint's, not journaled). */
                r->parent = r->commit_checksum;
        }
}

/* The log's end as the new log_view begins: recovery trusts what chains back to it. */
static void anchor_set(struct replica *r)
{
        r->anchor_op = r->op;
        r->anchor_checksum = r->parent;
        /* And which prepares the log holds under it (replica_view_state.view_prefixes). */
        for (uint32_t i = 0; i < REPLICA_VIEW_PREFIXES; i++) {
                const struct wire_header *h = i < r->op ? journal_header(r, r->op - i) : NULL;
                r->view_prefixes[i] = h != NULL ? (uint64_t)h->checksum : 0;
        }
}

static bool log_complete(const struct replica *r)
{
        for (uint64_t op = r->commit + 1; op <= r->op; op++) {
                if (journal_state_of(r, op) != SLOT_DURABLE)
                        return false;
        }
        return true;
}

static void send_start_view(struct replica *r, int target)
{
        struct message *m = header_only(r, COMMAND_START_VIEW);
        if (m == NULL)
                return;
        m->header->size = WIRE_HEADER_SIZE + headers_write(r, message_body(m), 0);
        m->header->start_view.op = r->op;
        m->header->start_view.commit_max = r->commit_max;
        m->header->start_view.checkpoint_op = r->checkpoint_op_durable;
        memcpy(m->header->start_view.op_checksum, &r->parent, sizeof(r->parent));
        /*
         * A replica told of the view on its own is (re)joining it: what it acknowledged
         * before may be gone with its disk (re-formatted), so those oks no longer count. It
         * acknowledges again what it holds when it takes the start_view. Counted, a primary
         * of 5 committed op 4 held by 2 replicas: the third ok came from a replica wiped since,
         * which then rejoined the same view (simulator, seed 3140 on 5 replicas).
         */
        for (uint32_t k = 0; target >= 0 && k < r->pipeline_count; k++)
                r->pipeline[(r->pipeline_head + k) % REPLICA_PIPELINE_MAX].ok &=
                        (uint8_t)~(1u << target);
        finish_and_send(r, m, target);
}

/* What a do_view_change says about one op of the new primary's log. */
enum dvc_answer {
        DVC_UNKNOWN, /* present, or out of its window */
        DVC_NACK,    /* never acknowledged it */
        DVC_LOST,    /* never acknowledged it, unless its disk lost an acknowledged write */
        DVC_FAULTY,  /* holds a damaged copy, or lost its disk: may have acknowledged it */
};

/*
 * `header` is the new primary's header for the op (checksum 0 if unknown). An op absent from
 * the sender's journal was never acknowledged by it, unless it acknowledged it before a crash
 * and the disk lost that write: possible only for an op of a view it had reached before its
 * last restart (recovered_view), since a replica acknowledges only ops of views up to its own.
 *
 * A fresh replica that has not joined a view since its format acknowledged nothing since; it
 * is either new (it never acknowledged anything) or re-formatted (its disk lost whatever it
 * acknowledged before). Either way an op absent here, or damaged, is a nack unless this disk
 * lost it: the same answer as a lost write, counted against the damaged disks the cluster
 * tolerates. Were it faulty instead, a new cluster whose first primary's only copy of an
 * uncommitted op was damaged could never cut that op: every replica of a new cluster is fresh
 * until a view starts (simulator, seed 73 on 3 replicas: 3 fresh answers for op 1, 256 view
 * changes, no commit).
 * A fresh replica that joined a view may have acknowledged ops up to the one it joined at
 * (fresh_joined_op) that it does not report (it restarted without its checkpoint): faulty.
 * One that reports its journal as any replica does (it has state) answers for those ops from
 * it, but an op absent there is a lost write at worst, never a nack.
 */
static enum dvc_answer dvc_answer(const struct message *m, uint64_t op,
                                  const struct wire_header *header)
{
        u128 checksum = header != NULL ? header->checksum : 0;
        uint64_t dvc_op, commit_max, log_view;
        bool fresh;
        dvc_fields(m, &dvc_op, &commit_max, &log_view, &fresh);
        bool unjoined = fresh && m->header->raw[65] == 0;
        bool below_join = false;
        if (fresh && !unjoined) {
                uint64_t joined_op;
                memcpy(&joined_op, m->header->raw + 96, sizeof(joined_op));
                u128 held;
                if (dvc_nostate_held(m, op, &held)) {
                        /* Its journal holds no prepare of the op, or another one: a nack. */
                        if (held == 0 || (checksum != 0 && held != checksum &&
                                          held != REPLICA_NOSTATE_UNKNOWN))
                                return DVC_LOST;
                        return DVC_FAULTY;
                }
                if (op <= joined_op && dvc_nostate_count(m) != 0)
                        return DVC_FAULTY;
                /*
                 * No journal report: it has state and reports its journal as any replica
                 * does. What it lacks there it never wrote since its format, so a lost write at
                 * worst: its disk is the damaged one if it acknowledged the op before. Faulty
                 * instead, an uncommitted op that two replicas had lost their writes of, one of
                 * them fresh (it had joined at op 180 and copied a checkpoint), while the third
                 * held it damaged, could never be cut (simulator, seed 2065 on 3 replicas: the
                 * views rotated forever at op 178).
                 */
                below_join = op <= joined_op; /* absent: a lost write, never a nack */
        }
        uint32_t recovered_view;
        memcpy(&recovered_view, m->header->raw + 104, sizeof(recovered_view));
        enum dvc_answer absent = checksum != 0 && header->view > recovered_view && !unjoined &&
                                                 !below_join
                                         ? DVC_NACK
                                         : DVC_LOST;
        if (op > dvc_op)
                return absent;
        uint64_t i = dvc_op - op;
        if (i >= 128)
                return DVC_UNKNOWN;
        u128 present, faulty;
        memcpy(&present, m->header->raw, sizeof(present));
        memcpy(&faulty, m->header->raw + 16, sizeof(faulty));
        if ((faulty >> i) & 1)
                return unjoined ? DVC_LOST : DVC_FAULTY; /* unjoined: acknowledged nothing */
        if (!((present >> i) & 1))
                return absent;
        if (checksum == 0)
                return DVC_UNKNOWN;
        /* Present, but which prepare? One with another checksum is a different op. */
        uint32_t count = dvc_header_count(m);
        for (uint32_t k = 0; k < count; k++) {
                struct wire_header h;
                memcpy(&h, message_body(m) + (size_t)k * WIRE_HEADER_SIZE, sizeof(h));
                if (h.prepare.op == op)
                        return h.checksum != checksum ? absent : DVC_UNKNOWN;
        }
        return DVC_UNKNOWN;
}

/*
 * The highest op any do_view_change of this view says committed (its commit_max or its
 * checkpoint), or the view's commit_max. One that came after the quorum's may know more than
 * the view's commit_max, and its journal no longer holds what its checkpoint covers, which
 * would read as its nack (simulator, seed 113 on 5 replicas: a replica with a checkpoint at op
 * 64 reported after the quorum, and ops 58 to 67 were cut though 58 to 64 were committed).
 */
static uint64_t dvc_committed_max(const struct replica *r)
{
        uint64_t committed = r->commit_max;
        for (uint32_t j = 0; j < r->config.replica_count; j++) {
                if (r->dvc[j] == NULL)
                        continue;
                uint64_t fields[4]; /* op, commit_max, checkpoint, log_view */
                memcpy(fields, r->dvc[j]->header->raw + 32, sizeof(fields));
                committed = MAX(committed, MAX(fields[1], fields[2]));
        }
        return committed;
}

/*
 * A new primary missing an uncommitted op that enough replicas prove they never
 * acknowledged cuts its log there: the op cannot have been committed (a commit needed a
 * replication quorum, and the nacks leave fewer replicas than that), and without a copy
 * anywhere the view could never start.
 */
static void truncate_unrecoverable(struct replica *r)
{
        uint32_t n = r->config.replica_count;
        uint32_t nack_quorum = n - replica_quorum(r) + 1;
        uint32_t damaged_max = (n - 1) / 2; /* disks the cluster tolerates damaged at once */
        /* Never an op some replica knows committed (dvc_committed_max). */
        for (uint64_t op = dvc_committed_max(r) + 1; op <= r->op; op++) {
                if (journal_state_of(r, op) == SLOT_DURABLE)
                        continue;
                const struct wire_header *h = journal_header(r, op);
                uint32_t nacks = 0, lost = 0, faulty = 0;
                for (uint32_t j = 0; j < n; j++) {
                        if (r->dvc[j] == NULL)
                                continue;
                        enum dvc_answer a = dvc_answer(r->dvc[j], op, h);
                        nacks += a == DVC_NACK;
                        lost += a == DVC_LOST;
                        faulty += a == DVC_FAULTY;
                }
                /*
                 * A lost write is a nack unless that disk loses acknowledged writes, and at
                 * most damaged_max disks are damaged, fewer by each that reports a damaged
                 * copy (which does not nack). So the nacks that cannot be lies number at least
                 * nacks + lost - min(lost, damaged_max - faulty); enough of them prove that
                 * fewer than a replication quorum acknowledged the op. (If the faulty ones are
                 * not damaged disks at all, they still do not nack, and the count still holds.)
                 */
                uint32_t liars = faulty >= damaged_max ? 0 : MIN(lost, damaged_max - faulty);
                if (nacks + lost - liars < nack_quorum)
                        return; /* it may be committed: wait for repair */
                const struct wire_header *before = journal_header(r, op - 1);
                u128 parent;
                if (before != NULL)
                        parent = before->checksum;
                else if (op - 1 == r->commit)
                        parent = r->commit_checksum;
                else
                        return;
                log_info("log truncated: ops never acknowledged by a quorum op=%llu to=%llu "
                         "nacks=%u",
                         (unsigned long long)op, (unsigned long long)r->op, nacks);
                for (uint64_t x = op; x <= r->op; x++) {
                        if (journal_header(r, x) != NULL)
                                r->journal_state[replica_slot(r, x)] = SLOT_EMPTY;
                }
                r->op = op - 1;
                r->parent = parent;
                anchor_set(r);
                return;
        }
}

/*
 * Fills the headers of the installed log that its sender did not know (recovery placeholders)
 * from any do_view_change, of any log_view, whose header for that op is the one the chain from
 * a known checksum above names: a checksum names one prepare, so that header is this log's
 * whichever log it came in. Without it, a log whose top ops only a replica of an older log_view
 * still held could not be repaired (a prepare not known committed is asked for by checksum),
 * and the view never started (simulator, seed 1525 on 3 replicas).
 */
static void log_fill_from_dvcs(struct replica *r)
{
        uint32_t cursor[WIRE_REPLICAS_MAX] = {0};
        for (uint32_t j = 0; j < r->config.replica_count; j++)
                cursor[j] = r->dvc[j] != NULL ? dvc_header_count(r->dvc[j]) : 0;
        u128 expected = r->parent;
        for (uint64_t op = r->op; op > r->commit && expected != 0; op--) {
                const struct wire_header *mine = journal_header(r, op);
                if (mine != NULL && mine->checksum != 0) {
                        if (mine->checksum != expected)
                                return;
                        expected = mine->prepare.parent;
                        continue;
                }
                if (slot_holds_newer(r, op))
                        return;
                bool found = false;
                struct wire_header h;
                for (uint32_t j = 0; j < r->config.replica_count && !found; j++)
                        found = message_header_at(r->dvc[j], &cursor[j], op, &h) &&
                                h.checksum == expected;
                if (!found)
                        return;
                journal_put(r, &h, gap_state(r, mine, op));
                expected = h.prepare.parent;
        }
}

/* The new primary, once its log is whole and its view durable, starts the view. */
static void start_view_maybe_finish(struct replica *r)
{
        if (r->start_view_pending) {
                truncate_unrecoverable(r);
                /*
                 * A cut log must be durable as cut (its anchor) before the view starts on it.
                 * Not waited for, a new primary that cut ops 291-297 of view 9 started view
                 * 10 at 290, crashed, recovered its log of view 10 as 297 from the anchor
                 * persisted before the cut, and the views rotated forever over ops 291-297
                 * that no replica could supply (simulator, seed 824 on 3 replicas).
                 */
                view_persist(r);
        }
        if (!r->start_view_pending || r->view_state_durable.view != r->view ||
            r->view_state_durable.log_view != r->view ||
            r->view_state_durable.anchor_op != r->anchor_op ||
            r->view_state_durable.anchor_checksum != r->anchor_checksum || !log_complete(r))
                return;
        /*
         * A do_view_change after the quorum's says ops beyond this log were committed: this
         * view would give them to new requests (see dvc_quorum_check). It must not start; the
         * next view change hears that replica's log in time.
         */
        uint64_t committed = dvc_committed_max(r);
        if (committed > r->op) {
                if (r->tick % 100 == 0)
                        log_warn("view change waits: ops up to %llu were committed but this "
                                 "log ends at %llu view=%u",
                                 (unsigned long long)committed, (unsigned long long)r->op,
                                 r->view);
                return;
        }
        r->start_view_pending = false;
        r->status = REPLICA_STATUS_NORMAL;
        r->fresh = false; /* it holds the whole log: everything committed */
        log_info("primary of view view=%u op=%llu commit_max=%llu", r->view,
                 (unsigned long long)r->op, (unsigned long long)r->commit_max);
        /* The uncommitted suffix is replicated again in this view, a pipeline at a time. */
        r->suffix_next = r->commit_max + 1;
        r->suffix_progress_tick = r->tick;
        suffix_pump(r);
        send_start_view(r, -1);
        commit_advance(r);
        send_commit(r);
}

static void dvc_quorum_check(struct replica *r)
{
        if (r->status != REPLICA_STATUS_VIEW_CHANGE || !replica_is_primary(r) ||
            r->start_view_pending)
                return;
        uint32_t count = 0, settled = 0;
        const struct message *best = NULL;
        uint64_t best_op = 0, best_log_view = 0, commit_max = r->commit_max;
        uint64_t checkpoint_max = 0;
        for (uint32_t j = 0; j < r->config.replica_count; j++) {
                if (r->dvc[j] == NULL)
                        continue;
                uint64_t op, cmax, log_view;
                bool fresh;
                dvc_fields(r->dvc[j], &op, &cmax, &log_view, &fresh);
                uint64_t fields[4];
                memcpy(fields, r->dvc[j]->header->raw + 32, sizeof(fields));
                checkpoint_max = MAX(checkpoint_max, fields[2]);
                count++;
                if (!fresh)
                        settled++;
                commit_max = MAX(commit_max, cmax);
                if (best == NULL || log_view > best_log_view ||
                    (log_view == best_log_view && op > best_op)) {
                        best = r->dvc[j];
                        best_op = op;
                        best_log_view = log_view;
                }
        }
        /*
         * A wiped replica's log must not outvote a log that may hold commits, so a quorum
         * counts only replicas that are not fresh. (A quorum of a wiped replica and one that
         * never heard anything could miss the committed ops that live on the replica that is
         * missing.) When every replica reports, nothing that survives anywhere is missing:
         * that is how a new cluster, all fresh, elects its first primary.
         */
        bool everyone = count == r->config.replica_count;
        if (count < replica_quorum(r) || (settled < replica_quorum(r) && !everyone))
                return;
        /*
         * So far behind that the ops we lack may be in no journal any more (only in a peer's
         * checkpoint): we could never finish this view. Step aside for the next primary.
         */
        /* Likewise without a state (open_without_state): it could execute nothing. */
        if (r->grid_syncing || checkpoint_max > r->commit + r->config.checkpoint_interval) {
                if (r->tick % 10 == 0) {
                        log_info("view forfeited: %s view=%u commit=%llu peer_checkpoint=%llu",
                                 r->grid_syncing ? "no state to lead with"
                                                 : "too far behind to lead",
                                 r->view, (unsigned long long)r->commit,
                                 (unsigned long long)checkpoint_max);
                        send_start_view_change(r, replica_view_next(r));
                        svc_vote(r, replica_view_next(r), r->config.replica);
                }
                return;
        }
        /*
         * Ops up to commit_max were committed, so some log of the latest view holds them: a
         * best log that ends before is missing them, and a view started on it would give
         * those ops to new requests. That happens only when the replicas that hold them
         * report no log that counts (fresh ones), so wait for more of the cluster, or for
         * their copies, instead (simulator, seed 47 on 3 replicas with backups answering only
         * their own client's request: two replicas that had acknowledged ops 464-469
         * restarted without state, which then reported no log, and the third started view 20
         * at op 463, committing a different op 464; open_without_state).
         */
        if (commit_max > best_op) {
                if (r->tick % 100 == 0)
                        log_warn("view change waits: ops up to %llu were committed but the best "
                                 "log reported ends at %llu view=%u votes=%u",
                                 (unsigned long long)commit_max, (unsigned long long)best_op,
                                 r->view, count);
                return;
        }
        log_info("view change quorum view=%u votes=%u best_replica=%u best_op=%llu "
                 "commit_max=%llu",
                 r->view, count, best->header->replica, (unsigned long long)best_op,
                 (unsigned long long)commit_max);
        log_install(r, best, best_op);
        log_fill_from_dvcs(r);
        r->commit_max = commit_max; /* at most best_op (checked above), so within the log */
        r->log_view = r->view;
        anchor_set(r);
        r->start_view_pending = true;
        view_persist(r);
        repair(r, best->header->replica);
        commit_advance(r);
        start_view_maybe_finish(r);
}

static void on_do_view_change(struct replica *r, struct message *m)
{
        const struct wire_header *h = m->header;
        if (h->view < r->view)
                return;
        if (h->view == r->view && r->status == REPLICA_STATUS_NORMAL && replica_is_primary(r)) {
                /* The view started without this replica hearing of it: tell it again. */
                send_start_view(r, h->replica);
                return;
        }
        if (h->view > r->view)
                view_change_start(r, h->view);
        if (r->status != REPLICA_STATUS_VIEW_CHANGE || !replica_is_primary(r))
                return;
        if (r->dvc[h->replica] != NULL)
                message_unref(r->pool, r->dvc[h->replica]);
        r->dvc[h->replica] = message_ref(m);
        if (r->start_view_pending)
                log_fill_from_dvcs(r); /* a late one may name what the log lacks */
        dvc_quorum_check(r);
}

/*
 * What a fresh replica learns of its peers' views. It may have promised a view before it lost
 * its data file; every view that took its promise also took those of quorum - 1 others, so
 * hearing n - quorum + 1 peers includes one of them, and a view at least as new as theirs is
 * one it may join. A message names its sender's current view, except a prepare (the view it
 * was first prepared in) and a start_view_change vote (the view proposed).
 */
static void fresh_hear(struct replica *r, uint8_t from, const struct message *m)
{
        const struct wire_header *h = m->header;
        if (h->command == COMMAND_PREPARE ||
            (h->command == COMMAND_START_VIEW_CHANGE && !(h->raw[0] & SVC_JOINED)))
                return;
        r->fresh_heard |= (uint8_t)(1u << from);
        r->fresh_view_floor = MAX(r->fresh_view_floor, h->view);
}

static bool fresh_may_join(const struct replica *r, uint32_t view)
{
        uint32_t needed = r->config.replica_count - replica_quorum(r) + 1;
        return bits(r->fresh_heard) >= needed && view >= r->fresh_view_floor;
}

static void on_ping(struct replica *r, int from)
{
        struct message *m = header_only(r, COMMAND_PONG);
        if (m != NULL && from >= 0)
                finish_and_send(r, m, from);
        else if (m != NULL)
                message_unref(r->pool, m);
}

static void on_start_view(struct replica *r, struct message *m)
{
        const struct wire_header *h = m->header;
        if (h->view < r->view || h->replica != replica_primary_index(r, h->view) ||
            h->replica == r->config.replica)
                return;
        if (r->fresh && !fresh_may_join(r, h->view)) {
                log_debug("start_view not taken: fresh, peers' views not known yet view=%u "
                          "heard=%x floor=%u",
                          h->view, r->fresh_heard, r->fresh_view_floor);
                return;
        }
        if (h->view == r->view && r->status == REPLICA_STATUS_NORMAL && r->log_view == h->view) {
                /* Already in this view: only fill gaps, and acknowledge again what we hold
                 * (the primary forgot our oks when it sent this: send_start_view). */
                r->commit_max = MAX(r->commit_max, h->start_view.commit_max);
                primary_commit_heard(r, h->start_view.commit_max);
                r->primary_heard_tick = r->tick;
                /* A log longer than ours: its headers, so repair fetches what we lack. */
                if (h->start_view.op > r->op)
                        log_install(r, m, h->start_view.op);
                suffix_acknowledge(r);
                commit_advance(r);
                return;
        }
        if (h->view > r->view)
                log_info("joining view view=%u primary=%u", h->view, h->replica);
        r->view = h->view;
        r->log_view = h->view;
        r->status = REPLICA_STATUS_NORMAL;
        r->start_view_pending = false;
        r->suffix_next = 0;
        r->primary_heard_tick = r->tick;
        pipeline_clear(r);
        dvc_clear(r);
        log_install(r, m, h->start_view.op);
        anchor_set(r);
        fresh_joined_set(r);
        r->commit_max = MAX(r->commit_max, h->start_view.commit_max);
        primary_commit_heard(r, h->start_view.commit_max);
        sync_view_joined(r);
        sync_maybe(r, h->replica, h->start_view.checkpoint_op);
        view_persist(r);
        suffix_acknowledge(r); /* the rest comes by repair */
        commit_advance(r);
        fresh_check(r);
        repair(r, h->replica);
}

static void on_request_start_view(struct replica *r, struct message *m)
{
        if (r->status == REPLICA_STATUS_NORMAL && replica_is_primary(r))
                send_start_view(r, m->header->replica);
}

uint32_t replica_view_next(const struct replica *r)
{
        tally_assert(r->view <= REPLICA_VIEW_MAX);
        if (r->view == REPLICA_VIEW_MAX) {
                log_error("view limit reached view=%u: this cluster cannot change views any "
                          "more",
                          r->view);
                return r->view;
        }
        return r->view + 1;
}

void replication_on_message(struct replica *r, replica_connection connection,
                            struct message *m)
{
        int from = r->env.connection_replica != NULL
                           ? r->env.connection_replica(r->env.context, connection)
                           : -1;
        if (r->fresh && from >= 0)
                fresh_hear(r, (uint8_t)from, m);
        if (from >= 0 && from < (int)WIRE_REPLICAS_MAX)
                r->peer_heard_tick[from] = r->tick;
        if (r->sync.active && from == (int)r->sync.source)
                r->sync.source_heard_tick = r->tick;
        switch (m->header->command) {
        case COMMAND_PING:
                on_ping(r, from);
                break;
        case COMMAND_PREPARE:
                on_prepare(r, m, from);
                break;
        case COMMAND_PREPARE_OK:
                on_prepare_ok(r, m);
                break;
        case COMMAND_COMMIT:
                on_commit(r, m);
                break;
        case COMMAND_START_VIEW_CHANGE:
                on_start_view_change(r, m);
                break;
        case COMMAND_DO_VIEW_CHANGE:
                on_do_view_change(r, m);
                break;
        case COMMAND_START_VIEW:
                on_start_view(r, m);
                break;
        case COMMAND_REQUEST_START_VIEW:
                on_request_start_view(r, m);
                break;
        case COMMAND_REQUEST_PREPARE:
                on_request_prepare(r, m);
                break;
        case COMMAND_REQUEST_HEADERS:
                on_request_headers(r, m);
                break;
        case COMMAND_HEADERS:
                on_headers(r, m, from);
                break;
        case COMMAND_REQUEST_BLOCKS:
        case COMMAND_BLOCK:
        case COMMAND_REQUEST_REPLY:
                sync_on_message(r, m);
                break;
        default:
                break; /* pong and the rest: connection keep-alive only */
        }
}

void replica_ping_peer(struct replica *r, uint8_t replica)
{
        tally_assert(replica < r->config.replica_count && replica != r->config.replica);
        struct message *m = header_only(r, COMMAND_PING);
        if (m != NULL)
                finish_and_send(r, m, replica);
}

void replica_on_peer_connected(struct replica *r, uint8_t replica)
{
        if (r->config.replica_count == 1)
                return;
        struct message *m = header_only(r, COMMAND_PING);
        if (m != NULL)
                finish_and_send(r, m, replica);
        if (r->status == REPLICA_STATUS_NORMAL && replica_is_primary(r))
                send_start_view(r, replica);
}

static void pulse_maybe(struct replica *r)
{
        if (r->pipeline_count != 0 || r->queue_count != 0 || r->suffix_next != 0)
                return;
        uint64_t now = r->env.realtime_ns(r->env.context);
        if (ledger_pulse_needed(r->ledger,
                                MAX(now, r->timestamp_last + 1) + LEDGER_PULSE_TIMESTAMP_DELTA))
                replication_prepare(r, NULL, 0);
}

/*
 * Primary: prepares waiting a second or more for a quorum are logged (once a second), with the
 * replicas that hold the oldest one: the operator sees which peers a stalled cluster lacks.
 */
static void commit_stall_check(struct replica *r)
{
        if (r->pipeline_count == 0 || r->commit != r->commit_seen) {
                r->commit_seen = r->commit;
                r->commit_seen_tick = r->tick;
                return;
        }
        if (r->tick - r->commit_seen_tick < TICKS_COMMIT_STALLED ||
            r->tick - r->stall_logged_tick < TICKS_COMMIT_STALLED)
                return;
        r->stall_logged_tick = r->tick;
        const struct replica_pipeline_entry *e = &r->pipeline[r->pipeline_head];
        log_warn("commit stalled: no quorum for op=%llu for %llu ms view=%u held_by=0x%x "
                 "pipeline=%u",
                 (unsigned long long)e->prepare->header->prepare.op,
                 (unsigned long long)(r->tick - r->commit_seen_tick) * 10u, r->view, e->ok,
                 r->pipeline_count);
}

static void tick_primary(struct replica *r)
{
        /*
         * An op our journal lost (found when executing a committed op, or when the pipeline
         * loads one of the suffix) comes from a peer.
         */
        if ((r->suffix_next != 0 || r->commit < r->commit_max) &&
            r->tick - r->repair_tick >= TICKS_REPAIR)
                repair(r, -1);
        /*
         * An uncommitted op of the suffix that no peer can give back either: step down. The
         * next view change decides, from every replica's nacks, whether it can be cut.
         */
        if (r->suffix_next != 0 && r->tick - r->suffix_progress_tick >= 2 * TICKS_VIEW_CHANGE) {
                log_warn("view abandoned: op of the log not intact here nor repaired by a peer "
                         "view=%u op=%llu",
                         r->view, (unsigned long long)r->suffix_next);
                view_change_start(r, replica_view_next(r));
                return;
        }
        if (r->config.replica_count > 1) {
                commit_stall_check(r);
                if (r->tick - r->heartbeat_sent_tick >= TICKS_HEARTBEAT)
                        send_commit(r);
                if (r->tick - r->prepare_resent_tick >= TICKS_PREPARE_RESEND) {
                        r->prepare_resent_tick = r->tick;
                        for (uint32_t k = 0; k < r->pipeline_count; k++) {
                                struct replica_pipeline_entry *e =
                                        &r->pipeline[(r->pipeline_head + k) %
                                                     REPLICA_PIPELINE_MAX];
                                for (uint8_t j = 0; j < r->config.replica_count; j++) {
                                        if (!(e->ok & (1u << j)))
                                                send_to_replica(r, j, e->prepare);
                                }
                        }
                }
        }
        replication_prepare_pump(r);
        pulse_maybe(r);
}

void replication_tick(struct replica *r)
{
        r->tick++;
        view_persist(r);
        sync_tick(r);
        if (r->fresh && r->status != REPLICA_STATUS_NORMAL && r->config.replica_count > 1 &&
            r->tick % TICKS_REQUEST_START_VIEW == 0) {
                struct message *m = header_only(r, COMMAND_PING);
                if (m != NULL)
                        finish_and_send(r, m, -1); /* peers answer with their views */
        }
        if (r->config.replica_count == 1) {
                replication_prepare_pump(r);
                pulse_maybe(r);
                return;
        }
        switch (r->status) {
        case REPLICA_STATUS_NORMAL:
                if (replica_is_primary(r)) {
                        tick_primary(r);
                        break;
                }
                if (primary_silent(r) && r->tick % 10 == 0) {
                        send_start_view_change(r, replica_view_next(r));
                        svc_vote(r, replica_view_next(r), r->config.replica);
                }
                if ((r->commit < r->commit_max || !log_complete(r)) &&
                    r->tick - r->repair_tick >= TICKS_REPAIR)
                        repair(r, -1);
                commit_advance(r);
                /* Stuck only while the primary is heard: cut off, nothing can progress. */
                if (r->commit >= r->commit_max || r->commit != r->repair_progress_commit ||
                    r->tick - r->primary_heard_tick >= TICKS_PRIMARY_SILENT) {
                        r->repair_progress_tick = r->tick;
                        r->repair_progress_commit = r->commit;
                } else if (r->tick - r->repair_progress_tick >= TICKS_REPAIR_STUCK) {
                        r->repair_progress_tick = r->tick;
                        sync_repair_stuck(r, (uint8_t)replica_primary_index(r, r->view),
                                          r->primary_checkpoint_op);
                }
                break;
        case REPLICA_STATUS_VIEW_CHANGE:
                /* Peers still in an older view join this one (see SVC_JOINED). */
                if (r->view_state_durable.view == r->view && r->tick % 10 == 0)
                        send_start_view_change_as(r, r->view, SVC_JOINED);
                if (r->tick - r->view_change_tick >= TICKS_VIEW_CHANGE && r->tick % 10 == 0) {
                        send_start_view_change(r, replica_view_next(r));
                        svc_vote(r, replica_view_next(r), r->config.replica);
                        break;
                }
                if (r->tick % 10 == 0)
                        send_do_view_change(r);
                if (replica_is_primary(r)) {
                        dvc_quorum_check(r);
                        if (r->start_view_pending) {
                                if (r->tick - r->repair_tick >= TICKS_REPAIR)
                                        repair(r, -1);
                                start_view_maybe_finish(r);
                        }
                }
                break;
        case REPLICA_STATUS_RECOVERING:
                if (r->tick - r->start_view_asked_tick >= TICKS_REQUEST_START_VIEW)
                        request_start_view(r, -1);
                /* Restarted during a view change: its view may be one the others missed. */
                if (r->view > r->log_view && r->view_state_durable.view == r->view &&
                    r->tick % 10 == 0)
                        send_start_view_change_as(r, r->view, SVC_JOINED);
                /* Nobody answers: every replica restarted (or a new cluster); decide a view. */
                if (r->tick - r->view_change_tick >= 2 * TICKS_PRIMARY_SILENT &&
                    r->tick % 10 == 0) {
                        send_start_view_change(r, replica_view_next(r));
                        svc_vote(r, replica_view_next(r), r->config.replica);
                }
                break;
        }
}
