/*
 * replica.c: one replica's dealings with clients and its own state: request checks, sessions
 * and their cached replies, forwarding to the primary, executing committed prepares in op
 * order, checkpoints and recovery. The protocol between replicas (prepares, commits, view
 * changes, repair) is in replication.c.
 *
 * Client sessions follow TigerBeetle 0.16.68 (wire-protocol.md sections 4 and 7): a register
 * creates a session when it commits (session = its op), every request chains to the previous
 * reply's context, the latest reply is kept and resent for a retransmission, and evictions use
 * TigerBeetle's reasons. Sessions are replicated state: every replica executes the same
 * prepares, so every replica holds the same sessions and the same replies, and any replica a
 * client is connected to can answer it.
 */
#include "vsr/replica_internal.h"
#include "lib/log.h"
#include "wire/checksum.h"
#include "wire/multi_batch.h"
#include "wire/types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The replica's part of a checkpoint, in the ledger root's user bytes: a header, the sessions. */
#define CHECKPOINT_MAGIC "TALLYCKP"
#define CHECKPOINT_VERSION 2u

struct checkpoint_header {
        char magic[8];
        uint32_t version;
        uint32_t session_count; /* always REPLICA_CLIENTS_MAX entries follow */
        uint64_t reserved_0;
        uint8_t reserved[8];
};
_Static_assert(sizeof(struct checkpoint_header) == 32, "checkpoint header size");

struct checkpoint_session {
        u128 client;
        u128 reply_checksum;
        uint64_t session;
        uint32_t request;
        uint32_t release;
        uint32_t reply_slot; /* absolute slot in the client replies zone */
        uint8_t used;
        uint8_t reserved[11];
};
_Static_assert(sizeof(struct checkpoint_session) == 64, "checkpoint session size");
#define CHECKPOINT_USER_SIZE                                                                       \
        (sizeof(struct checkpoint_header) + REPLICA_CLIENTS_MAX * sizeof(struct checkpoint_session))
_Static_assert(CHECKPOINT_USER_SIZE <= LEDGER_CHECKPOINT_USER_MAX, "sessions fit in a root");

int replica_init(struct replica *r, const struct replica_config *config,
                 const struct replica_env *env, struct message_pool *pool, struct ledger *ledger)
{
        memset(r, 0, sizeof(*r));
        tally_assert(config->replica < config->replica_count);
        tally_assert(config->replica_count <= WIRE_REPLICAS_MAX);
        tally_assert(config->request_size_max > WIRE_HEADER_SIZE);
        tally_assert(config->request_size_max <= WIRE_MESSAGE_SIZE_MAX);
        tally_assert(config->checkpoint_interval > 0);
        tally_assert(config->wal_slot_count >= 2 * config->checkpoint_interval +
                                                       REPLICA_PIPELINE_MAX);
        r->config = *config;
        r->env = *env;
        r->pool = pool;
        r->ledger = ledger;
        r->journal_headers = calloc(config->wal_slot_count, sizeof(struct wire_header));
        r->journal_state = calloc(config->wal_slot_count, 1);
        r->repair_asked = calloc(config->wal_slot_count, sizeof(*r->repair_asked));
        if (r->journal_headers == NULL || r->journal_state == NULL || r->repair_asked == NULL) {
                log_error("cannot allocate the journal index slots=%u", config->wal_slot_count);
                return -1;
        }
        replication_init(r);
        return 0;
}

void replica_deinit(struct replica *r)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (r->clients[i].reply != NULL)
                        message_unref(r->pool, r->clients[i].reply);
        }
        replication_deinit(r);
        for (uint32_t k = 0; k < r->queue_count; k++) {
                message_unref(r->pool,
                              r->queue[(r->queue_head + k) % REPLICA_REQUEST_QUEUE_MAX].request);
        }
        for (uint32_t k = 0; k < r->parked_count; k++)
                message_unref(r->pool, r->parked[k].request);
        replica_image_free(r);
        free(r->journal_headers);
        free(r->journal_state);
        free(r->repair_asked);
        memset(r, 0, sizeof(*r));
}

void replica_abandon(struct replica *r)
{
        sync_free_memory(r);
        replica_image_free(r);
        free(r->journal_headers);
        free(r->journal_state);
        free(r->repair_asked);
        memset(r, 0, sizeof(*r));
}

uint32_t replica_batch_size_limit(const struct replica *r)
{
        return r->config.request_size_max - WIRE_HEADER_SIZE;
}

static struct replica_client *client_find(struct replica *r, u128 client)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (r->clients[i].used && r->clients[i].client == client)
                        return &r->clients[i];
        }
        return NULL;
}

void replica_send_to(struct replica *r, replica_connection connection, struct message *m)
{
        if (connection != 0)
                r->env.send(r->env.context, connection, m);
}

/*
 * Sends a reply to its client. A reply carries the view its op was prepared in; one committed
 * by a later view (a new primary re-commits the old view's last ops, or resends a cached reply)
 * leaves with the view of this replica's durable log instead, in a copy, since the client sends
 * its next request to that view's primary: told the old view, it sent the next request to the
 * old primary, cut off, and waited a whole request timeout (the partition suite's
 * lagging-backup-then-primary: 1.2 s without service after the new view had started). The
 * context, which chains the client's next request, is unchanged.
 */
static void reply_send(struct replica *r, replica_connection connection, struct message *reply)
{
        uint32_t view = r->view_state_durable.log_view;
        if (connection == 0 || reply->header->view >= view) {
                replica_send_to(r, connection, reply);
                return;
        }
        struct message *copy = message_pool_get(r->pool);
        if (copy == NULL) {
                replica_send_to(r, connection, reply);
                return;
        }
        memcpy(copy->buffer, reply->buffer, reply->header->size);
        copy->header->view = view;
        wire_header_set_checksum(copy->header);
        replica_send_to(r, connection, copy);
        message_unref(r->pool, copy);
}

struct replica_client_connection *replica_client_connection(struct replica *r, u128 client)
{
        for (uint32_t i = 0; i < REPLICA_CLIENT_CONNECTIONS_MAX; i++) {
                if (r->connections[i].connection != 0 && r->connections[i].client == client)
                        return &r->connections[i];
        }
        return NULL;
}

/* Remembers that `client` talks to this replica over `connection`. */
void replica_client_seen(struct replica *r, u128 client, replica_connection connection,
                         uint32_t request)
{
        struct replica_client_connection *c = replica_client_connection(r, client);
        if (c == NULL) {
                /* A free entry, else the one unused for longest. */
                c = &r->connections[0];
                for (uint32_t i = 0; i < REPLICA_CLIENT_CONNECTIONS_MAX; i++) {
                        struct replica_client_connection *x = &r->connections[i];
                        if (x->connection == 0) {
                                c = x;
                                break;
                        }
                        if (x->tick < c->tick)
                                c = x;
                }
                memset(c, 0, sizeof(*c));
                c->client = client;
        }
        c->connection = connection;
        if (request > c->request)
                c->request = request;
        c->tick = r->tick;
}

void replica_send_eviction(struct replica *r, replica_connection connection, u128 client,
                           uint8_t reason)
{
        struct message *m = message_pool_get(r->pool);
        if (m == NULL)
                return;
        struct wire_header *h = m->header;
        wire_header_init(h, COMMAND_EVICTION, r->config.cluster, r->view, WIRE_RELEASE_SERVER,
                         r->config.replica);
        h->eviction.client = client;
        h->eviction.reason = reason;
        wire_header_set_checksum(h);
        tally_assert(wire_header_invalid(h) == NULL);
        r->stats.evictions_sent++;
        r->stats.evictions_by_reason[reason < ARRAY_LEN(r->stats.evictions_by_reason) ? reason
                                                                                    : 0]++;
        log_info("client evicted client=%016llx%016llx reason=%u", U128_HI(client),
                 U128_LO(client), reason);
        replica_send_to(r, connection, m);
        message_unref(r->pool, m);
}

static const char *const drop_names[REPLICA_DROP_COUNT] = {
        [REPLICA_DROP_CAPACITY_EXHAUSTED] = "capacity_exhausted",
        [REPLICA_DROP_DISK_FULL] = "disk_full",
        [REPLICA_DROP_QUEUE_FULL] = "queue_full",
        [REPLICA_DROP_VIEW_CHANGE] = "view_change",
        [REPLICA_DROP_NOT_NORMAL] = "not_normal",
        [REPLICA_DROP_PRIMARY_CATCHING_UP] = "primary_catching_up",
        [REPLICA_DROP_NEWER_VIEW] = "newer_view",
        [REPLICA_DROP_FORWARDED_TO_BACKUP] = "forwarded_to_backup",
        [REPLICA_DROP_ALREADY_IN_PIPELINE] = "already_in_pipeline",
        [REPLICA_DROP_REGISTER_IN_PIPELINE] = "register_in_pipeline",
        [REPLICA_DROP_OLDER_REQUEST] = "older_request",
        [REPLICA_DROP_REQUEST_COLLISION] = "request_collision",
        [REPLICA_DROP_REQUEST_SKIPS_AHEAD] = "request_skips_ahead",
        [REPLICA_DROP_PARENT_MISMATCH] = "parent_mismatch",
        [REPLICA_DROP_SESSION_FROM_FUTURE] = "session_from_future",
};

const char *replica_drop_name(enum replica_drop drop)
{
        tally_assert(drop < REPLICA_DROP_COUNT);
        tally_assert(drop_names[drop] != NULL);
        return drop_names[drop];
}

static void drop(struct replica *r, const struct wire_header *h, enum replica_drop why)
{
        tally_assert(why < REPLICA_DROP_COUNT);
        r->stats.requests_dropped++;
        r->stats.requests_dropped_by[why]++;
        log_debug("request dropped: %s client=%016llx%016llx request=%u", replica_drop_name(why),
                  U128_HI(h->request.client), U128_LO(h->request.client), h->request.request);
}

/*
 * A refusal of writes is an operator's problem that lasts until they act, and clients only
 * see their requests go unanswered: so it is logged at least every REPLICA_REFUSAL_LOG_TICKS
 * while requests keep being refused, each line with the number refused since the last.
 */
static void refusal_note(struct replica *r, const char *why)
{
        r->stats.refused_since_logged++;
        if (r->stats.refused_logged_tick != 0 &&
            r->tick < r->stats.refused_logged_tick + REPLICA_REFUSAL_LOG_TICKS)
                return;
        log_error("request refused: %s refused_since_last_log=%llu refused_total=%llu", why,
                  (unsigned long long)r->stats.refused_since_logged,
                  (unsigned long long)(r->stats.refused_capacity + r->stats.refused_disk_full));
        r->stats.refused_logged_tick = MAX(r->tick, 1);
        r->stats.refused_since_logged = 0;
}

/* Operations that add to the ledger (and so, sooner or later, to the data file). */
static bool operation_writes(uint8_t operation)
{
        return operation == OPERATION_CREATE_ACCOUNTS || operation == OPERATION_CREATE_TRANSFERS ||
               operation == OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED ||
               operation == OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED;
}

/* True if this client already has a request queued or in the pipeline. */
static bool client_in_flight(const struct replica *r, u128 client, bool *is_register)
{
        for (uint32_t k = 0; k < r->pipeline_count; k++) {
                const struct message *p =
                        r->pipeline[(r->pipeline_head + k) % REPLICA_PIPELINE_MAX].prepare;
                if (p->header->prepare.client == client) {
                        *is_register = p->header->prepare.operation == OPERATION_REGISTER;
                        return true;
                }
        }
        for (uint32_t k = 0; k < r->queue_count; k++) {
                const struct message *q =
                        r->queue[(r->queue_head + k) % REPLICA_REQUEST_QUEUE_MAX].request;
                if (q->header->request.client == client) {
                        *is_register = q->header->request.operation == OPERATION_REGISTER;
                        return true;
                }
        }
        return false;
}

static bool operation_valid(uint8_t operation)
{
        if (operation == OPERATION_REGISTER)
                return true;
        if (operation == OPERATION_PULSE)
                return false; /* prepared by the primary only */
        return operation >= 128 && ledger_operation_valid(operation);
}

/* The checks that do not depend on sessions; false if the request was answered or dropped. */
static bool request_well_formed(struct replica *r, replica_connection connection,
                                const struct message *m)
{
        const struct wire_header *h = m->header;
        const struct wire_request *req = &h->request;
        if (h->release < WIRE_RELEASE_CLIENT_MIN) {
                replica_send_eviction(r, connection, req->client, EVICTION_CLIENT_RELEASE_TOO_LOW);
                return false;
        }
        if (h->release > WIRE_RELEASE_SERVER) {
                replica_send_eviction(r, connection, req->client,
                                      EVICTION_CLIENT_RELEASE_TOO_HIGH);
                return false;
        }
        if (h->size > r->config.request_size_max) {
                replica_send_eviction(r, connection, req->client,
                                      EVICTION_INVALID_REQUEST_BODY_SIZE);
                return false;
        }
        if (!operation_valid(req->operation)) {
                replica_send_eviction(r, connection, req->client,
                                      EVICTION_INVALID_REQUEST_OPERATION);
                return false;
        }
        if (req->operation != OPERATION_REGISTER &&
            !ledger_input_valid(r->ledger, req->operation, m->buffer + WIRE_HEADER_SIZE,
                                h->size - WIRE_HEADER_SIZE)) {
                replica_send_eviction(r, connection, req->client, EVICTION_INVALID_REQUEST_BODY);
                return false;
        }
        if (req->operation == OPERATION_REGISTER &&
            h->size != WIRE_HEADER_SIZE + sizeof(struct wire_register_request)) {
                replica_send_eviction(r, connection, req->client,
                                      EVICTION_INVALID_REQUEST_BODY_SIZE);
                return false;
        }
        return true;
}

/*
 * The primary's session checks (wire-protocol.md 7.1, steps 13-16). True if the request is to be
 * prepared; otherwise it was answered (cached reply, eviction) or dropped.
 */
bool replica_request_acceptable(struct replica *r, replica_connection connection,
                                struct message *m)
{
        const struct wire_header *h = m->header;
        const struct wire_request *req = &h->request;
        struct replica_client *entry = client_find(r, req->client);
        if (entry != NULL) {
                if (req->operation != OPERATION_REGISTER) {
                        if (req->session < entry->session) {
                                replica_send_eviction(r, connection, req->client,
                                                      EVICTION_SESSION_TOO_LOW);
                                return false;
                        }
                        if (req->session > entry->session) {
                                drop(r, h, REPLICA_DROP_SESSION_FROM_FUTURE);
                                return false;
                        }
                }
                if (h->release != entry->release) {
                        replica_send_eviction(r, connection, req->client,
                                              EVICTION_SESSION_RELEASE_MISMATCH);
                        return false;
                }
                if (req->request < entry->request) {
                        drop(r, h, REPLICA_DROP_OLDER_REQUEST);
                        return false;
                }
                if (req->request == entry->request) {
                        if (h->checksum != entry->reply->header->reply.request_checksum) {
                                drop(r, h, REPLICA_DROP_REQUEST_COLLISION);
                                return false;
                        }
                        r->stats.replies_resent++;
                        reply_send(r, connection, entry->reply);
                        return false;
                }
                if (req->request != entry->request + 1) {
                        drop(r, h, REPLICA_DROP_REQUEST_SKIPS_AHEAD);
                        return false;
                }
                if (req->parent != entry->reply->header->reply.context) {
                        drop(r, h, REPLICA_DROP_PARENT_MISMATCH);
                        return false;
                }
        } else if (req->operation != OPERATION_REGISTER) {
                bool is_register = false;
                if (client_in_flight(r, req->client, &is_register) && is_register) {
                        drop(r, h, REPLICA_DROP_REGISTER_IN_PIPELINE);
                        return false;
                }
                replica_send_eviction(r, connection, req->client, EVICTION_NO_SESSION);
                return false;
        }
        bool is_register = false;
        if (client_in_flight(r, req->client, &is_register)) {
                drop(r, h, REPLICA_DROP_ALREADY_IN_PIPELINE);
                return false;
        }
        if (r->queue_count == REPLICA_REQUEST_QUEUE_MAX) {
                drop(r, h, REPLICA_DROP_QUEUE_FULL);
                return false;
        }
        if (r->disk_full && operation_writes(req->operation)) {
                r->stats.refused_disk_full++;
                refusal_note(r, "the data file cannot grow: no space left on its file system; "
                                "lookups and queries are still served; free space and writes "
                                "resume by themselves");
                drop(r, h, REPLICA_DROP_DISK_FULL);
                return false;
        }
        if (req->operation != OPERATION_REGISTER &&
            !ledger_capacity_available(r->ledger, req->operation, m->buffer + WIRE_HEADER_SIZE,
                                       h->size - WIRE_HEADER_SIZE,
                                       r->pending_create_events)) {
                r->stats.refused_capacity++;
                r->stats.refused_last_tick = MAX(r->tick, 1);
                refusal_note(r, "ledger capacity exhausted; restart with larger "
                                "--accounts-max / --transfers-max");
                drop(r, h, REPLICA_DROP_CAPACITY_EXHAUSTED);
                return false;
        }
        return true;
}

/*
 * A request that arrives while no primary can take it (this replica is in a view change, or
 * is the new primary still executing what the old view committed) is kept, and taken up again
 * once one can (parked_resume), instead of dropped. The official client resends a request only
 * after a timeout that doubles with each attempt, to the primary of the view it last heard of
 * and one backup at random: a resend dropped just before the new view was ready cost it the
 * next, longer wait (the partition suite's lagging-backup-then-primary saw 2.5 s without
 * service for a view change that took 0.7 s). The latest request per client is kept.
 */
static void park(struct replica *r, replica_connection connection, struct message *m,
                 bool from_peer)
{
        uint32_t k = 0;
        while (k < r->parked_count &&
               r->parked[k].request->header->request.client != m->header->request.client)
                k++;
        if (k == r->parked_count) {
                if (r->parked_count == REPLICA_PARKED_MAX) {
                        /* Full: the oldest goes (its client retries, as it would have). */
                        message_unref(r->pool, r->parked[0].request);
                        memmove(&r->parked[0], &r->parked[1],
                                (REPLICA_PARKED_MAX - 1) * sizeof(r->parked[0]));
                        k = REPLICA_PARKED_MAX - 1;
                } else {
                        r->parked_count++;
                }
        } else {
                /* A late copy of an older request does not replace a newer one. */
                if (r->parked[k].request->header->request.request > m->header->request.request)
                        return;
                message_unref(r->pool, r->parked[k].request);
        }
        /* One taken up again and kept once more keeps its first tick: the bound stays real. */
        uint64_t tick = r->parked_resume_tick != 0 ? r->parked_resume_tick : r->tick;
        r->parked[k] = (struct replica_parked_request){.request = message_ref(m),
                                                       .connection = connection,
                                                       .from_peer = from_peer,
                                                       .tick = tick};
        r->stats.requests_parked++;
}

/*
 * False while a request must wait (park): this replica is in a view change, or is a new
 * primary that first executes what is committed and replicates its log's old suffix (a
 * request may be among those ops already, and sessions are not current yet: an eviction now
 * could be wrong), or is a backup whose primary is silent (cut off or dead), to which a
 * forwarded request would be lost: the client would resend it only after its next timeout,
 * grown through the outage, while kept here it goes on the moment a primary can take it (the
 * partition suite's kill-during-partition: the surviving backup stayed in its view, without a
 * quorum for a view change, and the client's requests to it were forwarded to the killed
 * primary; service came back 1.4-2.9 s after the new view started).
 */
static bool may_take_requests(const struct replica *r)
{
        if (r->status != REPLICA_STATUS_NORMAL)
                return false;
        if (!replica_is_primary(r))
                return r->tick - r->primary_heard_tick < TICKS_PRIMARY_SILENT;
        return r->commit >= r->commit_max && r->suffix_next == 0;
}

static void request_route(struct replica *r, replica_connection connection, struct message *m,
                          bool from_peer);

/* Each tick: the kept requests go on once a primary can take them; stale ones are dropped. */
static void parked_resume(struct replica *r)
{
        if (r->parked_count == 0)
                return;
        bool ready = may_take_requests(r);
        uint32_t kept = 0;
        struct replica_parked_request go[REPLICA_PARKED_MAX];
        uint32_t go_count = 0;
        for (uint32_t k = 0; k < r->parked_count; k++) {
                struct replica_parked_request *p = &r->parked[k];
                bool stale = r->tick - p->tick > REPLICA_PARKED_TICKS ||
                             (!p->from_peer && r->env.connection_alive != NULL &&
                              !r->env.connection_alive(r->env.context, p->connection));
                if (stale)
                        message_unref(r->pool, p->request);
                else if (ready)
                        go[go_count++] = *p;
                else
                        r->parked[kept++] = *p;
        }
        r->parked_count = kept;
        /* Taken up in arrival order; one that cannot go on now is kept again (park). */
        for (uint32_t k = 0; k < go_count; k++) {
                r->parked_resume_tick = go[k].tick;
                request_route(r, go[k].connection, go[k].request, go[k].from_peer);
                r->parked_resume_tick = 0;
                message_unref(r->pool, go[k].request);
        }
}

/*
 * A backup's answer to a client request (wire-protocol.md 7.2), extended so that a client
 * given only this replica's address is fully served: the cached reply if this is the latest
 * request, otherwise the request goes to the primary unchanged.
 */
static void backup_on_request(struct replica *r, replica_connection connection,
                              struct message *m)
{
        const struct wire_header *h = m->header;
        struct replica_client *entry = client_find(r, h->request.client);
        if (entry != NULL && h->request.request == entry->request &&
            h->checksum == entry->reply->header->reply.request_checksum) {
                r->stats.replies_resent++;
                reply_send(r, connection, entry->reply);
                return;
        }
        if (entry != NULL && h->request.request < entry->request)
                return drop(r, h, REPLICA_DROP_OLDER_REQUEST);
        r->stats.requests_forwarded++;
        r->env.send_to_replica(r->env.context, replica_primary_index(r, r->view), m);
}

/*
 * True if the request is the one after a request of the same client that this primary's
 * pipeline holds: an earlier primary committed that one and replied (the client sends a
 * request only after the reply to the one before), and a new primary re-replicates it as part
 * of its view's log. Its client session here is one request behind until it commits, so the
 * request looks as if it skipped one. Dropped, it cost the client a request timeout (doubled
 * by each one before it): the partition suite's lagging-backup-then-primary went 3.8 s without
 * service, 2.9 s of them after the new primary was ready. Kept instead (park), it goes on
 * once that op commits.
 */
static bool request_follows_in_flight(struct replica *r, const struct message *m)
{
        const struct wire_request *req = &m->header->request;
        if (req->operation == OPERATION_REGISTER)
                return false;
        const struct replica_client *entry = client_find(r, req->client);
        if (entry == NULL || req->session != entry->session || req->request <= entry->request + 1)
                return false;
        for (uint32_t k = 0; k < r->pipeline_count; k++) {
                const struct wire_header *p =
                        r->pipeline[(r->pipeline_head + k) % REPLICA_PIPELINE_MAX].prepare->header;
                if (p->prepare.client == req->client && p->prepare.request + 1 == req->request)
                        return true;
        }
        return false;
}

static void on_request(struct replica *r, replica_connection connection, struct message *m,
                       bool from_peer)
{
        const struct wire_header *h = m->header;
        const struct wire_request *req = &h->request;
        r->stats.requests_received++;
        if (!from_peer)
                replica_client_seen(r, req->client, connection, req->request);
        request_route(r, connection, m, from_peer);
}

/* Where a request goes: the pipeline, the primary (from a backup), the parked ones, or away. */
static void request_route(struct replica *r, replica_connection connection, struct message *m,
                          bool from_peer)
{
        const struct wire_header *h = m->header;
        const struct wire_request *req = &h->request;
        if (!may_take_requests(r)) {
                /* A backup that cannot take it drops what a peer forwarded (not primary). */
                if (from_peer && !replica_is_primary(r))
                        return drop(r, h, REPLICA_DROP_NOT_NORMAL);
                return park(r, connection, m, from_peer);
        }
        if (!replica_is_primary(r)) {
                if (from_peer)
                        return drop(r, h, REPLICA_DROP_FORWARDED_TO_BACKUP);
                return backup_on_request(r, connection, m);
        }
        /* A client may know a newer view than a lagging primary; it retries. */
        if (h->view > r->view)
                return drop(r, h, REPLICA_DROP_NEWER_VIEW);
        if (!request_well_formed(r, connection, m))
                return;
        if (request_follows_in_flight(r, m))
                return park(r, connection, m, from_peer);
        if (!replica_request_acceptable(r, connection, m))
                return;
        struct replica_queued_request *q =
                &r->queue[(r->queue_head + r->queue_count) % REPLICA_REQUEST_QUEUE_MAX];
        q->request = message_ref(m);
        q->connection = from_peer ? 0 : connection;
        q->received_ns = (!from_peer && r->env.monotonic_ns != NULL)
                                 ? r->env.monotonic_ns(r->env.context)
                                 : 0;
        r->queue_count++;
        if (req->operation != OPERATION_REGISTER)
                r->pending_create_events += ledger_timestamp_delta(
                        req->operation, m->buffer + WIRE_HEADER_SIZE, h->size - WIRE_HEADER_SIZE);
        replication_prepare_pump(r);
}

static void on_ping_client(struct replica *r, replica_connection connection, struct message *m)
{
        const struct wire_header *h = m->header;
        if (h->release < WIRE_RELEASE_CLIENT_MIN || h->release > WIRE_RELEASE_SERVER) {
                /* Every replica drops such a ping; the primary also evicts (7.1). */
                if (replica_is_primary(r))
                        replica_send_eviction(r, connection, h->ping_client.client,
                                              h->release < WIRE_RELEASE_CLIENT_MIN
                                                      ? EVICTION_CLIENT_RELEASE_TOO_LOW
                                                      : EVICTION_CLIENT_RELEASE_TOO_HIGH);
                return;
        }
        replica_client_seen(r, h->ping_client.client, connection, 0);
        struct message *pong = message_pool_get(r->pool);
        if (pong == NULL)
                return;
        wire_header_init(pong->header, COMMAND_PONG_CLIENT, r->config.cluster, r->view,
                         WIRE_RELEASE_SERVER, r->config.replica);
        pong->header->pong_client.ping_timestamp_monotonic =
                h->ping_client.ping_timestamp_monotonic;
        wire_header_set_checksum(pong->header);
        replica_send_to(r, connection, pong);
        message_unref(r->pool, pong);
}

/* An eviction the primary sent for a request this backup forwarded: pass it to the client. */
static void on_eviction_from_peer(struct replica *r, struct message *m)
{
        struct replica_client_connection *c = replica_client_connection(r, m->header->eviction.client);
        if (c != NULL)
                replica_send_to(r, c->connection, m);
}

static bool op_plausible(uint64_t op)
{
        return op <= REPLICA_OP_MAX;
}

static bool ops_plausible(const uint8_t *raw, uint32_t count)
{
        for (uint32_t i = 0; i < count; i++) {
                uint64_t op;
                memcpy(&op, raw + 8 * i, sizeof(op));
                if (!op_plausible(op))
                        return false;
        }
        return true;
}

/*
 * Views and ops in a peer's message within what a correct cluster can reach (REPLICA_VIEW_MAX,
 * REPLICA_OP_MAX): NULL, or why not.
 */
static const char *peer_message_implausible(const struct wire_header *h)
{
        if (h->view > REPLICA_VIEW_MAX)
                return "view beyond any a cluster can reach";
        bool ok = true;
        switch (h->command) {
        case COMMAND_PREPARE:
                ok = op_plausible(h->prepare.op) && op_plausible(h->prepare.commit);
                break;
        case COMMAND_PREPARE_OK:
                ok = op_plausible(h->prepare_ok.op) && op_plausible(h->prepare_ok.commit_min);
                break;
        case COMMAND_COMMIT:
                ok = op_plausible(h->commit.commit) && op_plausible(h->commit.checkpoint_op);
                break;
        case COMMAND_START_VIEW:
                ok = op_plausible(h->start_view.op) && op_plausible(h->start_view.commit_max) &&
                     op_plausible(h->start_view.checkpoint_op);
                break;
        case COMMAND_DO_VIEW_CHANGE: /* op, commit_max, checkpoint, log_view at raw + 32 */
                ok = ops_plausible(h->raw + 32, 3) && ops_plausible(h->raw + 72, 1) &&
                     ops_plausible(h->raw + 96, 1);
                if (ok) {
                        uint64_t log_view;
                        memcpy(&log_view, h->raw + 56, sizeof(log_view));
                        ok = log_view <= h->view;
                }
                break;
        case COMMAND_REQUEST_HEADERS: /* op_min, op_max at raw + 0 */
                ok = ops_plausible(h->raw, 2);
                break;
        default:
                break;
        }
        return ok ? NULL : "op beyond any a cluster can reach";
}

/*
 * A replica-only message is taken only from the connection of the replica it names (the bus
 * identified or authenticated that connection), or, for a prepare, which names its author, from
 * any peer; and only with views and ops a correct cluster can reach. False: drop it.
 */
static bool peer_message_acceptable(struct replica *r, replica_connection connection,
                                    const struct wire_header *h)
{
        int from = r->env.connection_replica != NULL
                           ? r->env.connection_replica(r->env.context, connection)
                           : -1;
        const char *problem = NULL;
        if (from < 0)
                problem = "not from a replica's connection";
        else if (h->command != COMMAND_PREPARE && h->replica != (uint8_t)from)
                problem = "names another replica than the connection's";
        else
                problem = peer_message_implausible(h);
        if (problem == NULL)
                return true;
        r->peer_messages_dropped++;
        if (r->tick >= r->peer_drop_warn_tick) {
                r->peer_drop_warn_tick = r->tick + 100; /* a second */
                log_warn("replica message dropped: %s command=%s replica=%u view=%u from=%d "
                         "dropped_total=%llu",
                         problem, wire_command_name(h->command), h->replica, h->view, from,
                         (unsigned long long)r->peer_messages_dropped);
        }
        return false;
}

void replica_on_message(struct replica *r, replica_connection connection, struct message *m)
{
        uint8_t command = m->header->command;
        if (wire_command_between_replicas(command)) {
                if (r->config.replica_count > 1 &&
                    !peer_message_acceptable(r, connection, m->header))
                        return;
                /*
                 * A prepare names its author, not its sender: a new primary retransmits the
                 * prepares of earlier views as they were, to their authors too.
                 */
                bool from_self = m->header->replica == r->config.replica &&
                                 command != COMMAND_PREPARE;
                if (r->config.replica_count > 1 && m->header->replica < r->config.replica_count &&
                    !from_self)
                        replication_on_message(r, connection, m);
                return;
        }
        switch (command) {
        case COMMAND_REQUEST:
                /* A request on a replica's connection was forwarded by a backup. */
                on_request(r, connection, m,
                           r->env.connection_is_replica != NULL &&
                                   r->env.connection_is_replica(r->env.context, connection));
                break;
        case COMMAND_PING_CLIENT:
                on_ping_client(r, connection, m);
                break;
        case COMMAND_REPLY:
                /* Replies travel between replicas only for state sync. */
                if (r->env.connection_is_replica != NULL &&
                    r->env.connection_is_replica(r->env.context, connection))
                        sync_on_message(r, m);
                break;
        case COMMAND_EVICTION:
                /* Only the primary evicts; it sends evictions for forwarded requests here. */
                if (r->env.connection_is_replica != NULL &&
                    r->env.connection_is_replica(r->env.context, connection))
                        on_eviction_from_peer(r, m);
                break;
        default:
                log_debug("message ignored command=%s", wire_command_name(command));
                break;
        }
}

void replica_on_connection_closed(struct replica *r, replica_connection connection)
{
        for (uint32_t i = 0; i < REPLICA_CLIENT_CONNECTIONS_MAX; i++) {
                if (r->connections[i].connection == connection)
                        r->connections[i].connection = 0;
        }
        for (uint32_t k = 0; k < r->queue_count; k++) {
                struct replica_queued_request *q =
                        &r->queue[(r->queue_head + k) % REPLICA_REQUEST_QUEUE_MAX];
                if (q->connection == connection)
                        q->connection = 0;
        }
}

static void checkpoint_overdue(struct replica *r);

void replica_tick(struct replica *r)
{
        replication_tick(r);
        parked_resume(r);
        /*
         * An installed copy whose checkpoint could not be written (a view-state write held the
         * storage): nothing commits until it is durable (the journal has no room after an
         * unwritten checkpoint, and grid_syncing holds execution), so no commit would retry it.
         * The partition suite saw a backup wait 3.7 s so, and the quorum that needed it with it.
         */
        if (r->install_unwritten) {
                if (r->checkpoint_op_durable != 0)
                        r->install_unwritten = false;
                else if (!r->checkpoint_in_progress && !r->sync.active &&
                         r->tick >= r->checkpoint_retry_tick)
                        replica_checkpoint_installed(r, r->install_anchor);
        }
        checkpoint_overdue(r);
        /*
         * Once a second: the ledger grows the data file as it writes, and a write that finds
         * no room cannot be undone, so writes are refused while the file system lacks room
         * for the next growth steps, before any write can fail.
         */
        if (!r->disk_full && r->env.storage_room != NULL &&
            r->tick >= r->disk_full_check_tick + 100) {
                r->disk_full_check_tick = r->tick;
                if (!r->env.storage_room(r->env.context)) {
                        log_error("refusing writes: the data file cannot grow much further (its "
                                  "file system is almost full); lookups and queries go on");
                        r->disk_full = true;
                        r->disk_full_logged_tick = r->tick;
                }
        }
        /* Refusing writes for lack of space: once a second, see whether there is room again. */
        if (r->disk_full && r->tick >= r->disk_full_check_tick + 100) {
                r->disk_full_check_tick = r->tick;
                if (r->env.storage_room != NULL && r->env.storage_room(r->env.context)) {
                        log_info("accepting writes again: the data file's file system has room "
                                 "to grow it");
                        r->disk_full = false;
                } else if (r->tick >= r->disk_full_logged_tick + REPLICA_REFUSAL_LOG_TICKS) {
                        /* Said again while it lasts, whether or not writes keep coming. */
                        r->disk_full_logged_tick = r->tick;
                        log_error("still refusing writes: the data file cannot grow (no space "
                                  "left on its file system) refused_total=%llu",
                                  (unsigned long long)r->stats.refused_disk_full);
                }
        }
}

/* Counts one create batch's results by code (only failures are in a reply). */
static void stats_count_results(uint64_t *counts, const uint8_t *results, uint32_t count)
{
        for (uint32_t i = 0; i < count; i++) {
                struct wire_create_result result;
                memcpy(&result, results + (size_t)i * sizeof(result), sizeof(result));
                counts[MIN(result.result, REPLICA_RESULT_CODES_MAX - 1)]++;
        }
}

/*
 * Per operation counters and create result codes. The reply holds one result per failed
 * event only, so this walks a few entries per batch at most in the common case.
 */
static void stats_count_commit(struct replica *r, const struct message *prepare,
                               const struct message *reply, uint32_t reply_body_size)
{
        const struct wire_header *p = prepare->header;
        uint8_t operation = p->prepare.operation;
        r->stats.committed_by_operation[operation]++;
        if (operation == OPERATION_REGISTER || operation == OPERATION_PULSE)
                return;
        uint32_t body_size = p->size - WIRE_HEADER_SIZE;
        uint32_t events = ledger_timestamp_delta(operation, message_body(prepare), body_size);
        if (operation == OPERATION_LOOKUP_ACCOUNTS || operation == OPERATION_LOOKUP_TRANSFERS) {
                struct multi_batch_decoder ids;
                if (multi_batch_decode_init(&ids, message_body(prepare), body_size, sizeof(u128)))
                        events = ids.payload_size / (uint32_t)sizeof(u128);
        }
        r->stats.events_by_operation[operation] += events;
        uint64_t *counts = NULL;
        bool multi = true;
        if (operation == OPERATION_CREATE_ACCOUNTS ||
            operation == OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED) {
                counts = r->stats.create_account_results;
                multi = operation == OPERATION_CREATE_ACCOUNTS;
        } else if (operation == OPERATION_CREATE_TRANSFERS ||
                   operation == OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED) {
                counts = r->stats.create_transfer_results;
                multi = operation == OPERATION_CREATE_TRANSFERS;
        }
        if (counts == NULL || reply_body_size == 0)
                return;
        if (!multi) {
                stats_count_results(counts, message_body(reply),
                                    reply_body_size / sizeof(struct wire_create_result));
                return;
        }
        struct multi_batch_decoder decoder;
        if (!multi_batch_decode_init(&decoder, message_body(reply), reply_body_size,
                                     sizeof(struct wire_create_result)))
                return;
        const uint8_t *batch;
        uint32_t count;
        while (multi_batch_decode_next(&decoder, &batch, &count))
                stats_count_results(counts, batch, count);
}

/* Creates the session of a committed register, evicting the oldest session if full. */
static struct replica_client *session_create(struct replica *r, const struct wire_header *p)
{
        struct replica_client *entry = client_find(r, p->prepare.client);
        if (entry != NULL)
                return entry; /* a duplicate register cannot commit twice, but be safe */
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (!r->clients[i].used) {
                        entry = &r->clients[i];
                        break;
                }
        }
        if (entry == NULL) {
                /* Full: the session whose latest reply is oldest goes (deterministic). */
                entry = &r->clients[0];
                for (uint32_t i = 1; i < REPLICA_CLIENTS_MAX; i++) {
                        if (r->clients[i].reply->header->reply.commit <
                            entry->reply->header->reply.commit)
                                entry = &r->clients[i];
                }
                r->stats.sessions_evicted++;
                log_info("session evicted to make room client=%016llx%016llx session=%llu",
                         U128_HI(entry->client), U128_LO(entry->client),
                         (unsigned long long)entry->session);
                message_unref(r->pool, entry->reply);
        }
        uint32_t reply_slot = entry->reply_slot;
        memset(entry, 0, sizeof(*entry));
        entry->used = true;
        entry->client = p->prepare.client;
        entry->session = p->prepare.op;
        entry->release = p->release;
        entry->reply_slot = reply_slot; /* the slot pair belongs to the table entry */
        return entry;
}

/*
 * An execute took `ns` (REPLICA_SLOW_COMMIT_NS or more): counted, and logged with the trees'
 * work since `before`, so an operator (and a benchmark) can tell a flush from a compaction.
 */
static void slow_commit_note(struct replica *r, const struct wire_header *p, uint64_t ns,
                             const struct ledger_stats *before)
{
        r->stats.slow_commits++;
        r->stats.slow_commits_unlogged++;
        if (r->stats.slow_commit_logged_tick != 0 &&
            r->tick < r->stats.slow_commit_logged_tick + REPLICA_SLOW_COMMIT_LOG_TICKS)
                return;
        struct ledger_stats after;
        ledger_get_stats(r->ledger, &after);
        log_warn("slow commit op=%llu operation=%u took_ms=%llu flushes=%llu tables_written=%llu "
                 "values_compacted=%llu forced_compactions=%llu compaction_wait_ms=%llu "
                 "blocks_read=%llu pages_read=%llu blocks_written=%llu "
                 "slow_commits_since_last_log=%llu",
                 (unsigned long long)p->prepare.op, (unsigned)p->prepare.operation,
                 (unsigned long long)(ns / 1000000u),
                 (unsigned long long)(after.tree_flushes - before->tree_flushes),
                 (unsigned long long)(after.tree_tables_written - before->tree_tables_written),
                 (unsigned long long)(after.tree_values_compacted - before->tree_values_compacted),
                 (unsigned long long)(after.forced_compactions - before->forced_compactions),
                 (unsigned long long)((after.compaction_wait_ns - before->compaction_wait_ns) /
                                      1000000u),
                 (unsigned long long)(after.grid_blocks_read - before->grid_blocks_read),
                 (unsigned long long)(after.grid_pages_read - before->grid_pages_read),
                 (unsigned long long)(after.grid_blocks_written - before->grid_blocks_written),
                 (unsigned long long)r->stats.slow_commits_unlogged);
        r->stats.slow_commit_logged_tick = MAX(r->tick, 1);
        r->stats.slow_commits_unlogged = 0;
}

/*
 * With debug logging, every op's execution: its time before the reply (`begin_us`) and in all,
 * and the background work that ran in it: memtables flushed, values its beats granted to
 * compaction, the loop's waits for the compaction worker, and whether the worker merged
 * meanwhile (and for how long, counted by the chunks it finished).
 * bench/background_latency.sh sorts requests by it.
 */
static void executed_note(struct replica *r, const struct wire_header *p, uint64_t begin_ns,
                          uint64_t ns, const struct ledger_stats *before)
{
        struct ledger_stats after;
        ledger_get_stats(r->ledger, &after);
        bool worker = before->compaction_chunks_started > before->compaction_chunks_ended ||
                      after.compaction_chunks_started > before->compaction_chunks_started;
        log_debug("op executed op=%llu operation=%u begin_us=%llu took_us=%llu flushes=%llu "
                  "values_compacted=%llu compaction_wait_us=%llu worker_merging=%u "
                  "worker_busy_us=%llu",
                  (unsigned long long)p->prepare.op, (unsigned)p->prepare.operation,
                  (unsigned long long)(begin_ns / 1000u), (unsigned long long)(ns / 1000u),
                  (unsigned long long)(after.tree_flushes - before->tree_flushes),
                  (unsigned long long)(after.tree_values_compacted - before->tree_values_compacted),
                  (unsigned long long)((after.compaction_wait_ns - before->compaction_wait_ns) /
                                       1000u),
                  (unsigned)worker,
                  (unsigned long long)((after.compaction_busy_ns - before->compaction_busy_ns) /
                                       1000u));
}

/* Every field comes from the prepare, so every replica builds the same reply. */
static void reply_build(struct replica *r, const struct wire_header *p, struct message *reply,
                        uint32_t body_size)
{
        struct wire_header *h = reply->header;
        wire_header_init(h, COMMAND_REPLY, r->config.cluster, p->view, p->release, p->replica);
        h->size = WIRE_HEADER_SIZE + body_size;
        h->reply.request_checksum = p->prepare.request_checksum;
        h->reply.client = p->prepare.client;
        h->reply.op = p->prepare.op;
        h->reply.commit = p->prepare.op;
        h->reply.timestamp = p->prepare.timestamp;
        h->reply.request = p->prepare.request;
        h->reply.operation = p->prepare.operation;
        wire_header_set_checksum_body(h, message_body(reply), body_size);
        wire_reply_set_context(h);
        wire_header_set_checksum(h);
}

/* Where the reply to `p` goes now: its client's connection here, or 0 (none, or not ours). */
static replica_connection reply_connection(struct replica *r, const struct wire_header *p,
                                           const struct replica_client *entry)
{
        if (entry == NULL || r->replaying)
                return 0;
        struct replica_client_connection *c = replica_client_connection(r, entry->client);
        if (c != NULL && (replica_is_primary(r) || c->request >= p->prepare.request ||
                          p->prepare.operation == OPERATION_REGISTER))
                return c->connection;
        return 0;
}

/*
 * Executes the next committed prepare and builds its reply in `reply` (consumed). Every
 * replica does this for every op, in op order, so sessions and replies are replicated state.
 * The reply leaves through this replica's connection to the client if it has one and either
 * is the primary or received this very request, as soon as the ledger has run the op's rules
 * (before its writes are applied: ledger_execute_begin).
 */
void replica_execute(struct replica *r, struct message *prepare, struct message *reply)
{
        const struct wire_header *p = prepare->header;
        tally_assert(p->prepare.op == r->commit + 1);
        bool replaying = p->prepare.op <= r->replay_until;
        if (replaying != r->replay_deferring) {
                ledger_defer_compaction(r->ledger, replaying);
                r->replay_deferring = replaying;
        }
        uint32_t body_size = 0;
        struct replica_client *entry = NULL;
        replica_connection sent = 0;
        if (p->prepare.operation == OPERATION_REGISTER) {
                entry = session_create(r, p);
                struct wire_register_result result;
                memset(&result, 0, sizeof(result));
                result.batch_size_limit = replica_batch_size_limit(r);
                memcpy(message_body(reply), &result, sizeof(result));
                body_size = sizeof(result);
                reply_build(r, p, reply, body_size);
        } else {
                uint64_t started_ns = r->env.monotonic_ns ? r->env.monotonic_ns(r->env.context) : 0;
                struct ledger_stats before;
                ledger_get_stats(r->ledger, &before);
                body_size = ledger_execute_begin(r->ledger, p->prepare.operation,
                                                 p->prepare.timestamp, message_body(prepare),
                                                 p->size - WIRE_HEADER_SIZE, message_body(reply));
                tally_assert(body_size <= WIRE_BODY_SIZE_MAX);
                uint64_t begun_ns = r->env.monotonic_ns ? r->env.monotonic_ns(r->env.context) : 0;
                if (p->prepare.client != 0)
                        entry = client_find(r, p->prepare.client);
                if (p->prepare.operation != OPERATION_PULSE) {
                        reply_build(r, p, reply, body_size);
                        /*
                         * The reply is final before the op's writes are applied (its effects
                         * are durable in the journal already): sent now, its client prepares
                         * the next request while the ledger finishes, and that request is
                         * journaled by the time the op after this one ends.
                         */
                        sent = reply_connection(r, p, entry);
                        if (sent != 0) {
                                reply_send(r, sent, reply);
                                if (r->env.flush != NULL)
                                        r->env.flush(r->env.context);
                        }
                }
                ledger_execute_finish(r->ledger);
                r->checkpoint_work += (uint64_t)(p->size - WIRE_HEADER_SIZE) + body_size;
                if (r->env.monotonic_ns != NULL) {
                        uint64_t ns = r->env.monotonic_ns(r->env.context) - started_ns;
                        histogram_observe(&r->stats.commit_execute, ns);
                        r->primary_patience_ticks = MIN(ns / TICK_NS, TICKS_PRIMARY_PATIENCE_MAX);
                        if (ns >= REPLICA_SLOW_COMMIT_NS)
                                slow_commit_note(r, p, ns, &before);
                        if (log_get_level() == LOG_DEBUG)
                                executed_note(r, p, begun_ns - started_ns, ns, &before);
                }
                uint32_t events = ledger_timestamp_delta(p->prepare.operation,
                                                         message_body(prepare),
                                                         p->size - WIRE_HEADER_SIZE);
                if (p->prepare.operation != OPERATION_PULSE) {
                        r->pending_create_events -= MIN(r->pending_create_events, events);
                        r->stats.events_committed += events;
                }
        }
        stats_count_commit(r, prepare, reply, body_size);
        r->commit = p->prepare.op;
        r->commit_checksum = p->checksum;
        if (r->commit_max < r->commit)
                r->commit_max = r->commit;
        r->stats.commits++;
        if (p->prepare.operation == OPERATION_PULSE) {
                r->stats.pulses++;
                if (r->env.committed != NULL)
                        r->env.committed(r->env.context, prepare, NULL);
                message_unref(r->pool, reply);
                return;
        }
        if (r->env.committed != NULL)
                r->env.committed(r->env.context, prepare, reply);
        if (entry == NULL) {
                /* The session was evicted while its request was in the pipeline. */
                message_unref(r->pool, reply);
                return;
        }
        entry->request = p->prepare.request;
        if (entry->reply != NULL)
                message_unref(r->pool, entry->reply);
        entry->reply = reply;
        entry->reply_dirty = true;
        if (sent == 0) {
                replica_connection connection = reply_connection(r, p, entry);
                reply_send(r, connection, reply);
        }
}

static void on_checkpoint_done(void *context, bool ok)
{
        struct replica *r = context;
        tally_assert(r->checkpoint_in_progress);
        r->checkpoint_in_progress = false;
        if (!ok && r->env.storage_full != NULL && r->env.storage_full(r->env.context)) {
                /*
                 * Out of space, not broken: the durable checkpoint is whole. The replies this
                 * checkpoint moved to the other slot of their pairs go back, or the next try would
                 * move them onto the slot the durable checkpoint names. Refuse writes (the ledger
                 * must not outgrow what can be checkpointed) and try again in a second.
                 */
                for (uint32_t k = 0; k < r->checkpoint.reply_count; k++) {
                        uint32_t slot = r->checkpoint.replies[k].slot;
                        struct replica_client *c = &r->clients[slot / 2];
                        c->reply_slot = (slot % 2) ^ 1u;
                        c->reply_dirty = true;
                }
                if (!r->disk_full)
                        log_error("refusing writes: the data file cannot grow (no space left on "
                                  "its file system); lookups and queries go on");
                if (!r->disk_full)
                        r->disk_full_logged_tick = r->tick;
                r->disk_full = true;
                r->disk_full_check_tick = r->tick;
                r->checkpoint_retry_tick = r->tick + 100;
                r->stats.checkpoints_skipped++;
                return;
        }
        if (!ok) {
                /* Storage now refuses writes; nothing more is acknowledged. An installed copy
                 * still unwritten (install_unwritten) tries again in a second, not every tick. */
                r->checkpoint_retry_tick = r->tick + 100;
                return;
        }
        if (r->disk_full)
                log_info("accepting writes again: a checkpoint grew the data file");
        r->disk_full = false;
        ledger_checkpoint_durable(r->ledger);
        r->checkpoint_op_durable = r->checkpoint.op;
        r->checkpoint_root_durable = r->checkpoint.root;
        r->checkpoint_blocks_durable = r->checkpoint.blocks;
        r->checkpoint_checksum_durable = r->checkpoint.prepare_checksum;
        r->checkpoint_timestamp_durable = r->checkpoint.timestamp;
        /* The superblock it wrote says the grid holds our own checkpoint again. */
        r->grid_syncing = false;
        r->view_state_durable.grid_syncing = false;
        r->stats.checkpoints++;
        r->stats.checkpoints_since_logged++;
        bool quiet = r->stats.checkpoint_logged_tick != 0 &&
                     r->tick < r->stats.checkpoint_logged_tick + REPLICA_CHECKPOINT_LOG_TICKS;
        log_write(quiet ? LOG_DEBUG : LOG_INFO,
                  "checkpoint durable op=%llu blocks=%llu replies=%u durable_since_last_log=%llu",
                  (unsigned long long)r->checkpoint.op, (unsigned long long)r->checkpoint.blocks,
                  r->checkpoint.reply_count,
                  (unsigned long long)r->stats.checkpoints_since_logged);
        if (!quiet) {
                r->stats.checkpoint_logged_tick = MAX(r->tick, 1);
                r->stats.checkpoints_since_logged = 0;
        }
        replication_checkpoint_durable(r);
        replication_prepare_pump(r);
}

static void checkpoint_start(struct replica *r, uint64_t op, u128 prepare_checksum);

/*
 * Due once the interval has passed since the last durable checkpoint, or sooner once the ops
 * executed since the last checkpoint carried REPLICA_CHECKPOINT_WORK_REQUESTS full requests'
 * worth of bodies (replica.h: a restart replays those ops, whose cost follows their bodies, not
 * their count); one that could not start (the previous still being written, storage busy) is
 * tried again at the next commit, or by replica_tick if no commit comes (checkpoint_overdue).
 */
static bool checkpoint_due(const struct replica *r, uint64_t op)
{
        if (op < r->checkpoint_op_durable + r->config.checkpoint_interval &&
            r->checkpoint_work < (uint64_t)REPLICA_CHECKPOINT_WORK_REQUESTS *
                                         r->config.request_size_max)
                return false;
        if (r->checkpoint_in_progress || r->tick < r->checkpoint_retry_tick)
                return false;
        /* State sync receives the peer's checkpoint into the same buffer; it installs one. */
        return !r->sync.active;
}

/* After committing an op, write the state as of that op if a checkpoint is due. */
void replica_checkpoint_maybe(struct replica *r, const struct message *prepare)
{
        if (checkpoint_due(r, prepare->header->prepare.op))
                checkpoint_start(r, prepare->header->prepare.op, prepare->header->checksum);
}

/*
 * A checkpoint that could not start at its commit (storage busy with a view-state write at a
 * view change) was left for the next commit; but the journal holds only wal_slot_count ops past
 * the durable checkpoint, and a backup may already have journaled and executed all of them:
 * then no commit comes, the journal refuses the next prepare, and that backup acknowledges
 * nothing until the checkpoint is written. The partition suite saw a backup stuck so for 6 s
 * (one-way: its checkpoint skipped at a view change, the primary's next op at the journal's
 * end) with the other backup cut off, so the majority stopped too. So a due checkpoint is also
 * started from the tick, at the op executed last.
 */
static void checkpoint_overdue(struct replica *r)
{
        if (!checkpoint_due(r, r->commit) || r->install_unwritten || r->grid_syncing ||
            r->replaying)
                return;
        /* Refusing writes for lack of space: the checkpoint waits for room (replica_tick). */
        if (r->disk_full)
                return;
        checkpoint_start(r, r->commit, r->commit_checksum);
}

static void checkpoint_start(struct replica *r, uint64_t op, u128 prepare_checksum)
{
        struct replica_checkpoint *cp = &r->checkpoint;
        uint64_t started_ns = r->env.realtime_ns(r->env.context); /* for the log line only */
        memset(cp, 0, sizeof(*cp));
        cp->op = op;
        cp->prepare_checksum = prepare_checksum;
        cp->timestamp = r->timestamp_last;
        static uint8_t user[CHECKPOINT_USER_SIZE];
        memset(user, 0, sizeof(user));
        struct checkpoint_header header;
        memset(&header, 0, sizeof(header));
        memcpy(header.magic, CHECKPOINT_MAGIC, 8);
        header.version = CHECKPOINT_VERSION;
        header.session_count = REPLICA_CLIENTS_MAX;
        memcpy(user, &header, sizeof(header));
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                struct replica_client *c = &r->clients[i];
                struct checkpoint_session s;
                memset(&s, 0, sizeof(s));
                if (c->used && c->reply != NULL) {
                        if (c->reply_dirty) {
                                c->reply_slot ^= 1;
                                c->reply_dirty = false;
                                cp->replies[cp->reply_count].reply = c->reply;
                                cp->replies[cp->reply_count].slot = 2 * i + c->reply_slot;
                                cp->reply_count++;
                        }
                        s.used = 1;
                        s.client = c->client;
                        s.reply_checksum = c->reply->header->checksum;
                        s.session = c->session;
                        s.request = c->request;
                        s.release = c->release;
                        s.reply_slot = 2 * i + c->reply_slot;
                }
                memcpy(user + sizeof(header) + i * sizeof(s), &s, sizeof(s));
        }
        if (!ledger_checkpoint(r->ledger, user, sizeof(user), &cp->root)) {
                /* The grid could not take it (a device fault or a full grid): as out of space. */
                for (uint32_t k = 0; k < cp->reply_count; k++) {
                        uint32_t slot = cp->replies[k].slot;
                        struct replica_client *c = &r->clients[slot / 2];
                        c->reply_slot = (slot % 2) ^ 1u;
                        c->reply_dirty = true;
                }
                r->stats.checkpoints_skipped++;
                r->checkpoint_retry_tick = r->tick + 100;
                return;
        }
        struct ledger_stats stats;
        ledger_get_stats(r->ledger, &stats);
        cp->blocks = stats.grid_blocks_used;
        cp->grid_address_max = stats.grid_address_max;
        log_debug("checkpoint started op=%llu root=%llu blocks_in_use=%llu serialize_us=%llu "
                  "work_bytes=%llu tables=%llu blocks_written=%llu manifest_blocks_written=%llu "
                  "manifest_blocks=%llu",
                  (unsigned long long)op, (unsigned long long)cp->root.address,
                  (unsigned long long)cp->blocks,
                  (unsigned long long)((r->env.realtime_ns(r->env.context) - started_ns) / 1000),
                  (unsigned long long)r->checkpoint_work, (unsigned long long)stats.tables,
                  (unsigned long long)stats.checkpoint_blocks_written,
                  (unsigned long long)stats.manifest_blocks_written,
                  (unsigned long long)stats.manifest_blocks);
        r->checkpoint_in_progress = true;
        if (r->env.checkpoint(r->env.context, cp, on_checkpoint_done, r)) {
                r->checkpoint_work = 0; /* counted from this checkpoint's op on */
        } else {
                /* Storage is busy (a view-state write): the root stays valid until the next
                 * ledger_checkpoint; try again in half a second, not at every commit. */
                r->checkpoint_in_progress = false;
                r->stats.checkpoints_skipped++;
                r->checkpoint_retry_tick = r->tick + 50;
                for (uint32_t k = 0; k < cp->reply_count; k++) {
                        uint32_t slot = cp->replies[k].slot;
                        struct replica_client *c = &r->clients[slot / 2];
                        c->reply_slot = (slot % 2) ^ 1u;
                        c->reply_dirty = true;
                }
        }
}

int replica_restore(struct replica *r, struct lsm_block_ref root, uint64_t blocks,
                    uint64_t checkpoint_op, u128 prepare_checksum, uint64_t timestamp,
                    int (*read_reply)(void *context, uint32_t slot, u128 checksum,
                                      struct message *message),
                    void *context, char *error, size_t error_size)
{
        tally_assert(r->op == 0 && r->commit == 0);
        static uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t user_size = 0;
        char why[256];
        if (ledger_open(r->ledger, root, user, &user_size, why, sizeof(why)) != 0) {
                snprintf(error, error_size, "ledger checkpoint is not valid (zone grid): %s",
                         why);
                return -1;
        }
        struct checkpoint_header header;
        memcpy(&header, user, sizeof(header));
        if (user_size != CHECKPOINT_USER_SIZE || memcmp(header.magic, CHECKPOINT_MAGIC, 8) != 0 ||
            header.version != CHECKPOINT_VERSION || header.session_count != REPLICA_CLIENTS_MAX) {
                snprintf(error, error_size, "checkpoint session table is not valid (zone grid)");
                return -1;
        }
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                struct checkpoint_session s;
                memcpy(&s, user + sizeof(header) + i * sizeof(s), sizeof(s));
                if (!s.used)
                        continue;
                struct message *reply = message_pool_get(r->pool);
                tally_assert(reply != NULL);
                if (s.reply_slot / 2 != i || read_reply(context, s.reply_slot, s.reply_checksum,
                                                         reply) != 0) {
                        message_unref(r->pool, reply);
                        snprintf(error, error_size,
                                 "reply of session %llu (slot %u) is corrupt (zone client "
                                 "replies)",
                                 (unsigned long long)s.session, s.reply_slot);
                        return -1;
                }
                struct replica_client *c = &r->clients[i];
                c->used = true;
                c->client = s.client;
                c->session = s.session;
                c->request = s.request;
                c->release = s.release;
                c->reply = reply;
                c->reply_slot = s.reply_slot % 2;
                c->reply_dirty = false;
        }
        r->op = checkpoint_op;
        r->commit = checkpoint_op;
        r->commit_checksum = prepare_checksum;
        r->commit_max = checkpoint_op;
        r->parent = prepare_checksum;
        r->timestamp_last = timestamp;
        r->checkpoint_op_durable = checkpoint_op;
        r->checkpoint_work = 0;
        r->checkpoint_root_durable = root;
        r->checkpoint_blocks_durable = blocks;
        r->checkpoint_checksum_durable = prepare_checksum;
        r->checkpoint_timestamp_durable = timestamp;
        return 0;
}

int replica_replay(struct replica *r, struct message *prepare, char *error, size_t error_size)
{
        const struct wire_header *h = prepare->header;
        tally_assert(r->pipeline_count == 0);
        if (h->prepare.op != r->op + 1 || h->prepare.parent != r->parent) {
                snprintf(error, error_size, "prepare op %llu does not chain to op %llu",
                         (unsigned long long)h->prepare.op, (unsigned long long)r->op);
                return -1;
        }
        struct message *reply = message_pool_get(r->pool);
        tally_assert(reply != NULL);
        r->replaying = true;
        if (h->prepare.operation != OPERATION_REGISTER && h->prepare.operation != OPERATION_PULSE)
                r->pending_create_events += ledger_timestamp_delta(
                        h->prepare.operation, message_body(prepare), h->size - WIRE_HEADER_SIZE);
        r->op = h->prepare.op;
        r->parent = h->checksum;
        r->timestamp_last = MAX(r->timestamp_last, h->prepare.timestamp);
        uint32_t slot = replica_slot(r, r->op);
        r->journal_headers[slot] = *h;
        r->journal_state[slot] = SLOT_DURABLE;
        replica_execute(r, prepare, reply);
        replica_checkpoint_maybe(r, prepare);
        r->replaying = false;
        return 0;
}

/* The header in `slot`: from the headers zone, else from the prepare zone's own copy. */
static bool header_recover(struct replica *r, const struct replica_durable *d, uint32_t slot,
                           struct wire_header *into, struct message *scratch)
{
        if (d->read_header(d->context, slot, into))
                return true;
        if (!d->read_prepare(d->context, slot, NULL, scratch))
                return false;
        memcpy(into, scratch->header, sizeof(*into));
        (void)r;
        return true;
}

/*
 * Multi-replica start: the journal after the checkpoint is known but not executed (whether
 * those ops committed is for the cluster to say). An entry belongs to this replica's log if it
 * chains forward from the checkpoint, chains back from the view anchor, or lies after the
 * anchor (and the checkpoint) and was prepared in log_view (one primary per view, so one
 * chain). Anything else is stale: left over from a log that a view change replaced. Gaps
 * (damaged or lost entries) stay in the log as ops to repair, so an op this replica
 * acknowledged is never forgotten.
 */
static void open_replicated(struct replica *r, const struct replica_durable *d,
                            uint64_t checkpoint_op)
{
        uint32_t slots = r->config.wal_slot_count;
        static struct wire_header header;
        struct message *scratch = message_pool_get(r->pool);
        tally_assert(scratch != NULL);
        uint64_t last = checkpoint_op;
        u128 expected = r->parent;
        bool forward = true;
        uint64_t present = 0, missing = 0;
        const struct replica_view_state *v = &d->view_state;
        uint64_t anchor = v->anchor_op > checkpoint_op ? v->anchor_op : 0;
        /*
         * Forward from the checkpoint, and everything of log_view after the anchor (or after
         * the checkpoint, when log_view began before it): a backup acknowledges each prepare
         * it holds, gaps or not, so an acknowledged op may lie beyond a gap.
         */
        for (uint64_t op = checkpoint_op + 1; op <= checkpoint_op + slots; op++) {
                uint32_t slot = (uint32_t)(op % slots);
                bool ok = header_recover(r, d, slot, &header, scratch) &&
                          header.prepare.op == op;
                /*
                 * After the op log_view began at, every op of its log was prepared in it: an
                 * entry of an older view there is stale (its branch was cut by the view
                 * change) even when it chains, and taking it would splice two logs.
                 */
                bool in_view = v->log_view == 0 || v->anchor_op == 0 || op <= v->anchor_op ||
                               header.view == v->log_view;
                bool chains = ok && forward && header.prepare.parent == expected && in_view;
                bool current = ok && op > anchor && header.view == v->log_view;
                if (!chains)
                        forward = false;
                if (chains)
                        expected = header.checksum;
                if (!chains && !current)
                        continue;
                r->journal_headers[slot] = header;
                r->journal_state[slot] = SLOT_MISSING;
                last = op;
        }
        /* Back from the anchor: what chains to it is the log as log_view began. */
        if (anchor != 0) {
                expected = v->anchor_checksum;
                uint64_t low = anchor + 1; /* the lowest op that chains back to the anchor */
                for (uint64_t op = anchor; op > checkpoint_op; op--) {
                        uint32_t slot = (uint32_t)(op % slots);
                        if (!header_recover(r, d, slot, &header, scratch) ||
                            header.prepare.op != op || header.checksum != expected)
                                break;
                        r->journal_headers[slot] = header;
                        r->journal_state[slot] = SLOT_MISSING;
                        expected = header.prepare.parent;
                        low = op;
                }
                /*
                 * Where that chain stops, the forward chain must meet it: an intact entry of
                 * another checksum just below is a prepare of a branch the view change cut
                 * (this replica crashed before repairing it), and the forward chain under it
                 * may be that branch too. Spliced onto log_view's ops it would make a log no
                 * primary ever had (the simulator: a request executed twice). Those ops are
                 * unknown here: placeholders, faulty (this replica may have acknowledged what
                 * they were), repaired from peers one under the other.
                 */
                uint32_t below = (uint32_t)((low - 1) % slots);
                if (low - 1 > checkpoint_op && r->journal_state[below] != SLOT_EMPTY &&
                    r->journal_headers[below].prepare.op == low - 1 &&
                    r->journal_headers[below].checksum != expected) {
                        for (uint64_t op = checkpoint_op + 1; op < low; op++) {
                                uint32_t slot = (uint32_t)(op % slots);
                                memset(&r->journal_headers[slot], 0,
                                       sizeof(r->journal_headers[slot]));
                                r->journal_headers[slot].prepare.op = op;
                                r->journal_state[slot] = SLOT_FAULTY;
                        }
                        log_warn("recovery: the journal under the view's anchor is of a "
                                 "branch the view change cut; ops %llu to %llu are repaired "
                                 "from peers",
                                 (unsigned long long)(checkpoint_op + 1),
                                 (unsigned long long)(low - 1));
                }
                /*
                 * Under a gap the chain cannot reach across, the forward chain is checked op by
                 * op against the prepares the log held as log_view began (view_prefixes): a
                 * cut branch chains from the checkpoint all the same (simulator, seed 372 on 3
                 * replicas: ops 214-219 of a view the next one cut, under a gap at 220, were
                 * taken as the log and committed in place of the acknowledged ones). One that
                 * is not the log's becomes a placeholder, faulty, repaired from peers.
                 */
                uint64_t cut = 0;
                for (uint64_t op = low - 1;
                     op > checkpoint_op && anchor - op < REPLICA_VIEW_PREFIXES; op--) {
                        uint32_t slot = (uint32_t)(op % slots);
                        uint64_t prefix = v->view_prefixes[anchor - op];
                        if (r->journal_state[slot] != SLOT_MISSING ||
                            r->journal_headers[slot].prepare.op != op || prefix == 0 ||
                            (uint64_t)r->journal_headers[slot].checksum == prefix)
                                continue;
                        memset(&r->journal_headers[slot], 0, sizeof(r->journal_headers[slot]));
                        r->journal_headers[slot].prepare.op = op;
                        r->journal_state[slot] = SLOT_FAULTY;
                        cut++;
                }
                if (cut > 0)
                        log_warn("recovery: %llu journal entries under the view's anchor are of "
                                 "a branch the view change cut; they are repaired from peers",
                                 (unsigned long long)cut);
                last = MAX(last, anchor);
        }
        r->replay_until = MIN(last, checkpoint_op + REPLICA_REPLAY_DEFER_OPS);
        /*
         * Which bodies are intact. A gap becomes a placeholder (header unknown) that is lost:
         * its write never landed. So is a header whose slot still holds an older prepare. A
         * header whose prepare fails its checksums is faulty: it may have been written whole,
         * acknowledged and damaged since.
         */
        for (uint64_t op = checkpoint_op + 1; op <= last; op++) {
                uint32_t slot = (uint32_t)(op % slots);
                if (r->journal_state[slot] == SLOT_EMPTY ||
                    r->journal_headers[slot].prepare.op != op) {
                        memset(&r->journal_headers[slot], 0, sizeof(r->journal_headers[slot]));
                        r->journal_headers[slot].prepare.op = op;
                        r->journal_state[slot] = SLOT_LOST;
                        continue;
                }
                if (r->journal_state[slot] != SLOT_MISSING)
                        continue;
                if (d->read_prepare(d->context, slot, &r->journal_headers[slot], scratch)) {
                        r->journal_state[slot] = SLOT_DURABLE;
                        present++;
                } else if (d->read_prepare(d->context, slot, NULL, scratch) &&
                           scratch->header->prepare.op != op) {
                        r->journal_state[slot] = SLOT_LOST;
                        missing++;
                } else {
                        r->journal_state[slot] = SLOT_FAULTY;
                        missing++;
                }
                r->timestamp_last =
                        MAX(r->timestamp_last, r->journal_headers[slot].prepare.timestamp);
        }
        message_unref(r->pool, scratch);
        r->op = last;
        /* The head's checksum: a placeholder's is unknown, unless the head is the anchor. */
        const struct wire_header *top = journal_header(r, last);
        if (top != NULL && top->checksum != 0)
                r->parent = top->checksum;
        else if (anchor != 0 && last == anchor)
                r->parent = v->anchor_checksum;
        else if (top != NULL)
                r->parent = 0;
        log_info("recovered checkpoint_op=%llu journal_ops=%llu to_repair=%llu commit=%llu "
                 "op=%llu view=%u log_view=%u",
                 (unsigned long long)checkpoint_op, (unsigned long long)present,
                 (unsigned long long)(last - checkpoint_op - present),
                 (unsigned long long)r->commit, (unsigned long long)r->op, r->view, r->log_view);
        (void)missing;
}

/*
 * Forgets the sessions (with their replies) and how far ops were executed, before another
 * state replaces them. Each session entry keeps its reply slot: the slot pair belongs to the
 * entry. The ledger is the caller's to reset.
 */
static void executed_state_forget(struct replica *r)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (r->clients[i].reply != NULL)
                        message_unref(r->pool, r->clients[i].reply);
                uint32_t slot = r->clients[i].reply_slot;
                memset(&r->clients[i], 0, sizeof(r->clients[i]));
                r->clients[i].reply_slot = slot;
        }
        r->op = 0;
        r->commit = 0;
        r->commit_checksum = 0;
        r->commit_max = 0;
        r->timestamp_last = 0;
        r->pending_create_events = 0;
        r->checkpoint_work = 0;
}

/* The highest op any slot of the journal holds an intact header of (either copy), or 0. */
static uint64_t journal_op_max(struct replica *r, const struct replica_durable *d)
{
        static struct wire_header header;
        struct message *scratch = message_pool_get(r->pool);
        tally_assert(scratch != NULL);
        uint64_t max = 0;
        for (uint32_t slot = 0; slot < r->config.wal_slot_count; slot++) {
                if (header_recover(r, d, slot, &header, scratch))
                        max = MAX(max, header.prepare.op);
        }
        message_unref(r->pool, scratch);
        return max;
}

/*
 * What a replica without state reports of its journal's top REPLICA_NOSTATE_OPS ops (see
 * replica.nostate_checksums): the prepare a slot holds of each, from either copy of its header.
 * Every op it acknowledged was written to its journal first, and no op up to the top is
 * overwritten within one lap of the ring, so a slot holding no prepare of an op, or another
 * prepare of it, is a nack unless the disk lost the write (dvc_answer).
 */
static void nostate_scan(struct replica *r, const struct replica_durable *d, uint64_t top)
{
        static struct wire_header header;
        struct message *scratch = message_pool_get(r->pool);
        tally_assert(scratch != NULL);
        r->nostate_top = top;
        memset(r->nostate_checksums, 0, sizeof(r->nostate_checksums));
        /* Within one lap of the ring: an older op's slot may hold a newer op since. */
        for (uint32_t i = 0; i < REPLICA_NOSTATE_OPS && i < top && i < r->config.wal_slot_count;
             i++) {
                uint64_t op = top - i;
                uint32_t slot = (uint32_t)(op % r->config.wal_slot_count);
                u128 in_headers = 0, in_prepares = 0;
                if (d->read_header(d->context, slot, &header) && header.prepare.op == op)
                        in_headers = header.checksum;
                if (d->read_prepare(d->context, slot, NULL, scratch) &&
                    scratch->header->prepare.op == op)
                        in_prepares = scratch->header->checksum;
                /* Two prepares of one op in one slot: a rewrite that crashed halfway. */
                if (in_headers != 0 && in_prepares != 0 && in_headers != in_prepares)
                        r->nostate_checksums[i] = REPLICA_NOSTATE_UNKNOWN;
                else
                        r->nostate_checksums[i] = in_headers != 0 ? in_headers : in_prepares;
        }
        message_unref(r->pool, scratch);
}

/*
 * A replica of a cluster whose checkpoint is unreadable (damaged, or a state sync interrupted
 * while its blocks were landing) starts with an empty ledger, executes nothing (grid_syncing)
 * and copies a peer's checkpoint (state sync), which a restart then finds in place of the
 * damaged one.
 *
 * Only its state is gone: its view state and journal are intact, and every op it acknowledged
 * is there. So it keeps its log, found as a restart finds it (open_replicated) but without a
 * checkpoint to chain from: over the last lap of the ring, the ops of log_view after the anchor
 * and what chains back from the anchor. It reports that log in view changes like any replica,
 * and serves its prepares. Reported as no log instead (as it once was), two such replicas that
 * had acknowledged the latest committed ops left a view to start from the third's shorter log,
 * which gave those ops to new requests (simulator, seed 358 on 3 replicas, with a state sync
 * source change: one replica's grid damaged, another crashed in the middle of a copy after
 * acknowledging ops 208-210 during it). It never leads a view until it has a state again
 * (dvc_quorum_check).
 *
 * A replica still fresh (formatted into the cluster and never caught up) never had a log that
 * counts; it reports which prepare its journal holds of its top ops (nostate_scan) so that its
 * nacks count, and "joined" at the highest op its journal holds: every op it acknowledged was
 * written there first, none above unless the disk lost that write, which a do_view_change
 * already counts against the faults tolerated (a lost op is not a proof; dvc_answer).
 */
static void open_without_state(struct replica *r, const struct replica_durable *d)
{
        /* The ledger is still empty: a failed checkpoint read leaves it reset. */
        executed_state_forget(r);
        uint64_t journal_max = journal_op_max(r, d);
        r->checkpoint_lost = true;
        /*
         * Nothing is written to the grid until the superblock says the checkpoint it names is
         * not to be trusted (grid_syncing, durable), and nothing executes before a copy is
         * installed: an empty ledger's free set is the whole grid, and executing the journal's
         * ops from op 1 wrote over the blocks of the checkpoint the superblock still named,
         * which a restart then trusted again (its read error had passed) and found stale
         * (simulator, seed 139 on 5 replicas, once a replica this far behind no longer always
         * copied).
         */
        r->grid_syncing = true;
        if (!r->fresh) {
                uint32_t slots = r->config.wal_slot_count;
                uint64_t base = journal_max > slots ? journal_max - slots : 0;
                r->parent = 0; /* op 1's parent; above it, nothing chains forward from base */
                open_replicated(r, d, base);
                r->replay_until = 0; /* nothing is replayed: the state is copied */
                log_warn("starting without state: copying the latest checkpoint from a peer "
                         "(state sync); the journal's log is kept view=%u log_view=%u op=%llu",
                         r->view, r->log_view, (unsigned long long)r->op);
                return;
        }
        r->parent = 0;
        r->log_view = 0;
        r->anchor_op = 0;
        r->anchor_checksum = 0;
        memset(r->view_prefixes, 0, sizeof(r->view_prefixes));
        r->fresh_joined_op = MAX(r->fresh_joined_op, journal_max);
        nostate_scan(r, d, journal_max);
        log_warn("starting without state: copying the latest checkpoint from a peer (state "
                 "sync) view=%u",
                 r->view);
}

int replica_open(struct replica *r, const struct replica_durable *d, char *error,
                 size_t error_size)
{
        const struct replica_view_state *v = &d->view_state;
        r->view = v->view;
        r->log_view = v->log_view;
        r->anchor_op = v->anchor_op;
        r->anchor_checksum = v->anchor_checksum;
        memcpy(r->view_prefixes, v->view_prefixes, sizeof(r->view_prefixes));
        r->fresh = v->fresh;
        r->fresh_joined = v->fresh_joined;
        r->fresh_joined_op = v->fresh_joined_op;
        r->view_state_durable = *v;
        r->grid_syncing = v->grid_syncing;
        r->recovered_view = v->view;
        bool lost = d->checkpoint_lost || v->grid_syncing;
        if (!lost && d->checkpoint_root.address != 0 &&
            replica_restore(r, d->checkpoint_root, d->checkpoint_blocks, d->checkpoint_op,
                            d->checkpoint_prepare_checksum, d->checkpoint_timestamp,
                            d->read_reply, d->context, error, error_size) != 0) {
                if (r->config.replica_count == 1)
                        return -1;
                log_error("checkpoint cannot be restored: %s", error);
                lost = true;
        }
        if (lost) {
                if (r->config.replica_count == 1) {
                        snprintf(error, error_size,
                                 "the checkpoint cannot be read and a single replica has no "
                                 "peer to copy one from");
                        return -1;
                }
                open_without_state(r, d);
                replication_open(r);
                return 0;
        }
        uint64_t checkpoint_op = d->checkpoint_root.address != 0 ? d->checkpoint_op : 0;
        if (r->config.replica_count > 1) {
                open_replicated(r, d, checkpoint_op);
                replication_open(r);
                return 0;
        }
        uint32_t slots = r->config.wal_slot_count;
        /* The head: the highest op after the checkpoint with an intact header. */
        uint64_t head = checkpoint_op;
        static struct wire_header header;
        for (uint32_t slot = 0; slot < slots; slot++) {
                if (d->read_header(d->context, slot, &header) &&
                    header.prepare.op % slots == slot && header.prepare.op > head &&
                    header.prepare.op <= checkpoint_op + slots)
                        head = header.prepare.op;
        }
        struct message *prepare = message_pool_get(r->pool);
        tally_assert(prepare != NULL);
        uint64_t replayed = 0;
        int result = 0;
        r->replay_until = head; /* every op of a single replica's journal (replica.h) */
        for (uint64_t op = checkpoint_op + 1; op <= head; op++) {
                uint32_t slot = (uint32_t)(op % slots);
                const char *zone = NULL;
                if (!d->read_header(d->context, slot, &header) || header.prepare.op != op)
                        zone = "wal headers";
                else if (!d->read_prepare(d->context, slot, &header, prepare))
                        zone = "wal prepares";
                char reason[256] = "";
                if (zone == NULL && replica_replay(r, prepare, reason, sizeof(reason)) != 0)
                        zone = "wal (hash chain)";
                if (zone == NULL) {
                        replayed++;
                        continue;
                }
                if (op == head) {
                        log_warn("journal head truncated: entry is torn or corrupt op=%llu "
                                 "zone=\"%s\" %s",
                                 (unsigned long long)op, zone, reason);
                        break;
                }
                snprintf(error, error_size,
                         "journal entry for op %llu is corrupt (zone %s) and ops up to %llu "
                         "follow it; a single replica has no peer to repair it from",
                         (unsigned long long)op, zone, (unsigned long long)head);
                result = -1;
                break;
        }
        message_unref(r->pool, prepare);
        if (result == 0) {
                replication_open(r);
                log_info("recovered checkpoint_op=%llu replayed=%llu commit=%llu",
                         (unsigned long long)checkpoint_op, (unsigned long long)replayed,
                         (unsigned long long)r->commit);
        }
        return result;
}

int replica_checkpoint_sessions(const uint8_t *image, uint64_t size,
                                struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX])
{
        static uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t user_size = 0;
        if (size < LSM_BLOCK_SIZE || ledger_root_user(image, user, &user_size) != 0 ||
            user_size != CHECKPOINT_USER_SIZE)
                return -1;
        struct checkpoint_header header;
        memcpy(&header, user, sizeof(header));
        if (memcmp(header.magic, CHECKPOINT_MAGIC, 8) != 0 ||
            header.version != CHECKPOINT_VERSION || header.session_count != REPLICA_CLIENTS_MAX)
                return -1;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                struct checkpoint_session c;
                memcpy(&c, user + sizeof(header) + i * sizeof(c), sizeof(c));
                sessions[i].used = c.used != 0;
                sessions[i].slot = c.reply_slot;
                sessions[i].reply_checksum = c.reply_checksum;
                sessions[i].client = c.client;
        }
        return 0;
}

int replica_checkpoint_legacy(const uint8_t *blob, uint64_t size, uint8_t *user,
                              uint32_t *user_size, const uint8_t **ledger_part,
                              uint64_t *ledger_size)
{
        struct checkpoint_header header;
        if (size < LEDGER_CHECKPOINT_ALIGN)
                return -1;
        memcpy(&header, blob, sizeof(header));
        if (memcmp(header.magic, CHECKPOINT_MAGIC, 8) != 0 || header.version != 1 ||
            header.session_count != REPLICA_CLIENTS_MAX ||
            header.reserved_0 != size - LEDGER_CHECKPOINT_ALIGN)
                return -1; /* format 1 kept the ledger part's size where reserved_0 is */
        header.version = CHECKPOINT_VERSION;
        header.reserved_0 = 0;
        memcpy(user, &header, sizeof(header));
        memcpy(user + sizeof(header), blob + sizeof(header),
               REPLICA_CLIENTS_MAX * sizeof(struct checkpoint_session));
        *user_size = CHECKPOINT_USER_SIZE;
        *ledger_part = blob + LEDGER_CHECKPOINT_ALIGN;
        *ledger_size = size - LEDGER_CHECKPOINT_ALIGN;
        return 0;
}

struct install_context {
        struct message **replies;
};

static int install_read_reply(void *context, uint32_t slot, u128 reply_checksum,
                              struct message *into)
{
        struct install_context *c = context;
        struct message *m = c->replies[slot / 2];
        if (m == NULL || m->header->checksum != reply_checksum)
                return -1;
        memcpy(into->buffer, m->buffer, m->header->size);
        return 0;
}

int replica_install(struct replica *r, struct lsm_block_ref root, uint64_t blocks, uint64_t op,
                    u128 prepare_checksum, uint64_t timestamp, struct message **replies)
{
        tally_assert(!r->checkpoint_in_progress);
        /*
         * Which slot of each entry's pair our durable checkpoint uses: the installed replies
         * must be written to the other one, or a crash before the new superblock would leave
         * the old checkpoint naming an overwritten reply. (The peer's slots say nothing here.)
         */
        uint32_t durable_slot[REPLICA_CLIENTS_MAX];
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++)
                durable_slot[i] = r->clients[i].reply_slot;
        /* Journal entries after the checkpoint that chain onto it stay: they may have been
         * acknowledged. Everything else in the journal is superseded by the checkpoint. */
        u128 chain = prepare_checksum;
        uint64_t keep = op;
        for (uint64_t x = op + 1; x <= op + r->config.wal_slot_count; x++) {
                uint32_t slot = (uint32_t)(x % r->config.wal_slot_count);
                if (r->journal_state[slot] == SLOT_EMPTY ||
                    r->journal_headers[slot].prepare.op != x ||
                    r->journal_headers[slot].prepare.parent != chain)
                        break;
                chain = r->journal_headers[slot].checksum;
                keep = x;
        }
        uint64_t op_before = r->op, commit_max_before = r->commit_max;
        u128 parent_before = r->parent;
        executed_state_forget(r);
        struct install_context c = {.replies = replies};
        char error[256];
        if (replica_restore(r, root, blocks, op, prepare_checksum, timestamp, install_read_reply,
                            &c, error, sizeof(error)) != 0) {
                log_error("state sync: the checkpoint does not install: %s", error);
                /*
                 * The state is gone either way (its blocks were being overwritten), but the
                 * journal's log stays whole: this replica may have acknowledged any of it, and
                 * its do_view_change must say so. Forgotten here, a replica whose install met a
                 * damaged block reported op 0 in log_view 10 after acknowledging ops 87 to 96,
                 * and a view of the other two gave op 87 to another request (simulator, seed
                 * 2700 on 3 replicas).
                 */
                r->op = op_before;
                r->parent = parent_before;
                r->commit_max = commit_max_before;
                return -1;
        }
        for (uint32_t slot = 0; slot < r->config.wal_slot_count; slot++) {
                uint64_t x = r->journal_headers[slot].prepare.op;
                if (!(x > op && x <= keep))
                        r->journal_state[slot] = SLOT_EMPTY;
        }
        if (keep > op) {
                r->op = keep;
                r->parent = chain;
        }
        r->sync_journaled_max = 0;
        /* The replies came from the peer's slots; ours must be written with the checkpoint
         * (which moves each to the other slot of its pair). */
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                r->clients[i].reply_slot = durable_slot[i];
                if (r->clients[i].used)
                        r->clients[i].reply_dirty = true;
        }
        return 0;
}

/*
 * Writes the installed state as this replica's own checkpoint (a restart then starts there).
 * Its chain anchor is the installed op's prepare checksum, not r->parent: journal entries kept
 * after the installed op moved r->parent to the last of them, and a restart replays those
 * entries from the anchor, each chaining onto the one before.
 */
void replica_checkpoint_installed(struct replica *r, u128 prepare_checksum)
{
        r->checkpoint_op_durable = 0; /* not durable here until written */
        r->install_unwritten = true;
        r->install_anchor = prepare_checksum;
        if (r->checkpoint_in_progress)
                return; /* the next commit tries again */
        struct message fake;
        struct wire_header h;
        memset(&h, 0, sizeof(h));
        h.prepare.op = r->commit;
        h.checksum = prepare_checksum;
        fake.header = &h;
        fake.buffer = (uint8_t *)&h;
        replica_checkpoint_maybe(r, &fake);
}
