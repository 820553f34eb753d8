/*
 * start.c: `tally start`: open the data file and serve clients until SIGINT or SIGTERM.
 *
 * Wires the layers together: io (the loop), bus (connections), storage (the data file),
 * ledger (state machine) and replica (sessions, pipeline, commit). The loop ticks every 10 ms.
 * With --metrics-address the same loop serves /metrics, /health/live and /health/ready (ops/).
 */
#include "cli/cli.h"
#include "io/address.h"
#include "io/io.h"
#include "ledger/ledger.h"
#include "lib/crash.h"
#include "lib/flags.h"
#include "lib/huge_pages.h"
#include "lib/log.h"
#include "net/bus.h"
#include "ops/http.h"
#include "ops/metrics.h"
#include "storage/storage.h"
#include "vsr/replica.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TICK_NS 10000000ull
#define CONNECTIONS_MAX 1024u
/* What client connections can hold at most (see bus.h), and 512 for the replica and peers. */
#define MESSAGES_MAX (BUS_CLIENT_MESSAGES_MAX(CONNECTIONS_MAX) + 512u)

struct server {
        struct io io;
        struct message_pool pool;
        struct storage storage;
        struct bus bus;
        struct replica replica;
        struct ledger *ledger;
        bool metrics;
        struct http_server http;
        struct metrics_sources metrics_sources;
        uint64_t storage_failed_logged_ns;
        uint64_t first_primary_logged_ns;
        bus_connection_id backup_pin_owner; /* the backup connection the pin is for */
        /* The checkpoint a backup copies (its blocks held, see ledger_hold). */
        struct backup_pin backup_pin;
        struct io_completion commit_resume; /* env_defer's, queued at most once */
        bool commit_resume_queued;
};

static volatile sig_atomic_t stop_signal;

static void on_signal(int signal)
{
        stop_signal = signal;
}

static bool env_send(void *context, replica_connection connection, struct message *message)
{
        struct server *s = context;
        return bus_send(&s->bus, connection, message);
}

static bool env_connection_alive(void *context, replica_connection connection)
{
        struct server *s = context;
        return bus_connection_alive(&s->bus, connection);
}

static bool env_connection_is_replica(void *context, replica_connection connection)
{
        struct server *s = context;
        return bus_connection_replica(&s->bus, connection) >= 0;
}

static int env_connection_replica(void *context, replica_connection connection)
{
        struct server *s = context;
        return bus_connection_replica(&s->bus, connection);
}

static void env_send_to_replica(void *context, uint8_t replica, struct message *message)
{
        struct server *s = context;
        bus_send_to_replica(&s->bus, replica, message); /* dropped (logged) if not connected */
}

static bool env_journal_write(void *context, struct message *prepare,
                              void (*done)(void *replica, struct message *prepare), void *replica)
{
        struct server *s = context;
        return storage_write_prepare(&s->storage, prepare, done, replica);
}

static uint64_t env_realtime_ns(void *context)
{
        (void)context;
        return io_realtime_ns();
}

static void env_flush(void *context)
{
        struct server *s = context;
        io_submit(&s->io);
}

static void on_commit_resume(struct io_completion *completion, int32_t result)
{
        (void)result;
        struct server *s = completion->context;
        s->commit_resume_queued = false;
        replica_commit_resume(&s->replica);
}

/* The replica's next op executes once the loop has handled what is ready (replica.h). */
static void env_defer(void *context)
{
        struct server *s = context;
        if (s->commit_resume_queued)
                return;
        s->commit_resume_queued = true;
        s->commit_resume.callback = on_commit_resume;
        s->commit_resume.context = s;
        io_defer(&s->io, &s->commit_resume);
}

static uint64_t env_monotonic_ns(void *context)
{
        (void)context;
        return io_monotonic_ns();
}

struct checkpoint_done_context {
        void (*done)(void *replica, bool ok);
        void *replica;
};
static struct checkpoint_done_context checkpoint_done_context;

static void env_checkpoint_done(void *context, bool ok)
{
        struct checkpoint_done_context *c = context;
        c->done(c->replica, ok);
}

static bool env_checkpoint(void *context, const struct replica_checkpoint *checkpoint,
                           void (*done)(void *replica, bool ok), void *replica)
{
        struct server *s = context;
        struct storage_checkpoint_request request;
        memset(&request, 0, sizeof(request));
        request.op = checkpoint->op;
        request.prepare_checksum = checkpoint->prepare_checksum;
        request.timestamp = checkpoint->timestamp;
        request.root_address = checkpoint->root.address;
        request.root_checksum = checkpoint->root.checksum;
        request.blocks = checkpoint->blocks;
        request.grid_address_max = checkpoint->grid_address_max;
        request.reply_count = checkpoint->reply_count;
        for (uint32_t i = 0; i < checkpoint->reply_count; i++) {
                request.replies[i].reply = checkpoint->replies[i].reply;
                request.replies[i].slot = checkpoint->replies[i].slot;
        }
        checkpoint_done_context.done = done;
        checkpoint_done_context.replica = replica;
        request.done = env_checkpoint_done;
        request.context = &checkpoint_done_context;
        return storage_checkpoint_start(&s->storage, &request);
}

static bool env_journal_read(void *context, uint64_t op, u128 want, struct message *into)
{
        struct server *s = context;
        uint32_t slot = (uint32_t)(op % s->storage.superblock.wal_slot_count);
        static struct wire_header header;
        if (!storage_read_wal_header(&s->storage, slot, &header) || header.prepare.op != op ||
            (want != 0 && header.checksum != want))
                return false;
        return storage_read_prepare(&s->storage, slot, &header, into);
}

/* The view state as the superblock holds it, and back. */
_Static_assert(REPLICA_VIEW_PREFIXES == STORAGE_VIEW_PREFIXES, "view prefixes");

static struct storage_view storage_view_of(const struct replica_view_state *state)
{
        struct storage_view v = {
                .view = state->view,
                .log_view = state->log_view,
                .anchor_op = state->anchor_op,
                .anchor_checksum = state->anchor_checksum,
                .fresh = state->fresh,
                .fresh_joined = state->fresh_joined,
                .fresh_joined_op = state->fresh_joined_op,
                .grid_syncing = state->grid_syncing,
        };
        memcpy(v.view_prefixes, state->view_prefixes, sizeof(v.view_prefixes));
        return v;
}

static struct replica_view_state view_state_of(const struct superblock *sb)
{
        struct replica_view_state v = {
                .view = sb->view,
                .log_view = sb->log_view,
                .anchor_op = sb->view_anchor_op,
                .anchor_checksum = sb->view_anchor_checksum,
                .fresh = sb->caught_up == 0,
                .fresh_joined = sb->fresh_joined != 0,
                .fresh_joined_op = sb->fresh_joined_op,
                .grid_syncing = sb->grid_syncing != 0,
        };
        memcpy(v.view_prefixes, sb->view_prefixes, sizeof(v.view_prefixes));
        return v;
}

static bool env_view_write(void *context, const struct replica_view_state *state,
                           void (*done)(void *replica), void *replica)
{
        struct server *s = context;
        struct storage_view v = storage_view_of(state);
        return storage_write_view(&s->storage, &v, done, replica);
}

static bool env_reply_read(void *context, uint32_t slot, u128 want, struct message *into)
{
        struct server *s = context;
        char error[256];
        return storage_read_reply(&s->storage, slot, into, want, error, sizeof(error)) == 0;
}

static int read_reply(void *context, uint32_t slot, u128 reply_checksum, struct message *message)
{
        struct server *s = context;
        char error[256];
        if (storage_read_reply(&s->storage, slot, message, reply_checksum, error,
                               sizeof(error)) != 0) {
                log_error("%s", error);
                return -1;
        }
        return 0;
}

static bool read_header(void *context, uint32_t slot, struct wire_header *into)
{
        struct server *s = context;
        return storage_read_wal_header(&s->storage, slot, into);
}

static bool read_prepare(void *context, uint32_t slot, const struct wire_header *header,
                         struct message *into)
{
        struct server *s = context;
        return storage_read_prepare(&s->storage, slot, header, into);
}

/*
 * A format 1 data file (storage.h): its checkpoint blob is read whole, loaded into the ledger's
 * trees (written above the old grid blocks, which stay intact until the converted checkpoint
 * is durable), checkpointed as a root, and the superblock rewritten as format 2, all before
 * anything is served. A crash in the middle leaves the format 1 file as it was.
 */
static int convert_legacy(struct server *s, char *error, size_t error_size)
{
        struct storage *st = &s->storage;
        const struct superblock *sb = &st->superblock;
        uint8_t *blob = NULL;
        uint64_t size = 0;
        if (storage_legacy_read_checkpoint(st, &blob, &size, error, error_size) != 0)
                return -1;
        struct storage_checkpoint_request request;
        memset(&request, 0, sizeof(request));
        if (blob != NULL) {
                static uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
                uint32_t user_size = 0;
                const uint8_t *part = NULL;
                uint64_t part_size = 0;
                if (replica_checkpoint_legacy(blob, size, user, &user_size, &part,
                                              &part_size) != 0) {
                        snprintf(error, error_size, "format 1 checkpoint has no valid session "
                                 "table (zone grid)");
                        free(blob);
                        return -1;
                }
                ledger_grid_reserve(s->ledger, storage_legacy_grid_blocks(st));
                struct ledger_memory_reader reader = {.data = part, .size = part_size};
                struct ledger_stream stream = {.read = ledger_memory_read, .context = &reader};
                int rc = ledger_checkpoint_read(s->ledger, &stream);
                struct lsm_block_ref root = {0};
                if (rc == 0 && !ledger_checkpoint(s->ledger, user, user_size, &root))
                        rc = -1;
                free(blob);
                if (rc != 0) {
                        snprintf(error, error_size, "format 1 checkpoint does not convert "
                                 "(zone grid)");
                        return -1;
                }
                struct ledger_stats stats;
                ledger_get_stats(s->ledger, &stats);
                request.op = sb->checkpoint_op;
                request.prepare_checksum = sb->checkpoint_prepare_checksum;
                request.timestamp = sb->checkpoint_timestamp;
                request.root_address = root.address;
                request.root_checksum = root.checksum;
                request.blocks = stats.grid_blocks_used;
                request.grid_address_max = stats.grid_address_max;
        }
        if (storage_legacy_convert(st, &request, error, error_size) != 0)
                return -1;
        ledger_checkpoint_durable(s->ledger);
        return 0;
}

/* Rebuilds the state from the data file: the checkpoint, then the journal after it. */
/*
 * Grid repair (docs/storage.md, "Damaged blocks"). A block of this replica's grid that fails its
 * checks (or its read) stops the ledger in the middle of an operation, which cannot go on. In a
 * cluster every peer holds the same state, so the replica re-executes itself (same pid, same
 * arguments; every descriptor is close-on-exec): the new process makes "the grid is being
 * overwritten" durable (grid_syncing) before it opens its checkpoint, so it starts without
 * state, and state sync copies a peer's checkpoint, which rewrites every block; the journal's
 * ops after it are executed again. To the cluster this is a crash and a restart, which it is
 * built to survive. A single replica has no peer: it stops, naming the block (restore from a
 * backup). A replica whose grid is damaged again within GRID_REPAIR_INTERVAL_S of its last
 * repair also stops: the disk may be failing, and copying again would not help.
 */
#define GRID_REPAIR_ENV "TALLY_GRID_REPAIR"       /* set by the process that found the damage */
#define GRID_REPAIR_AT_ENV "TALLY_GRID_REPAIR_AT" /* when (realtime seconds) the last was */
#define GRID_REPAIR_INTERVAL_S 600ull
#define GRID_REPAIRS_ENV "TALLY_GRID_REPAIRS" /* how many, for tally_grid_repairs_total */

static uint64_t grid_repairs(void)
{
        const char *text = getenv(GRID_REPAIRS_ENV);
        return text != NULL ? strtoull(text, NULL, 10) : 0;
}

static void on_ledger_fault(void *context, const char *fault, bool damaged)
{
        struct server *s = context;
        (void)fault; /* logged by the ledger */
        if (!damaged || s->storage.superblock.replica_count < 2 || cli_argv == NULL)
                return;
        uint64_t now = io_realtime_ns() / 1000000000ull;
        const char *last = getenv(GRID_REPAIR_AT_ENV);
        if (last != NULL && now - strtoull(last, NULL, 10) < GRID_REPAIR_INTERVAL_S) {
                log_error("grid repair: the grid is damaged again %llu s after the last repair; "
                          "the disk may be failing: stopping",
                          (unsigned long long)(now - strtoull(last, NULL, 10)));
                return;
        }
        char text[32], count[32];
        snprintf(text, sizeof(text), "%llu", (unsigned long long)now);
        snprintf(count, sizeof(count), "%llu", (unsigned long long)grid_repairs() + 1);
        if (setenv(GRID_REPAIR_AT_ENV, text, 1) != 0 || setenv(GRID_REPAIR_ENV, "1", 1) != 0 ||
            setenv(GRID_REPAIRS_ENV, count, 1) != 0)
                return;
        log_error("grid repair: restarting to copy a peer's checkpoint over this replica's grid");
        execv("/proc/self/exe", cli_argv);
        log_error("grid repair: cannot restart: %s", strerror(errno));
}

static bool repair_mark_done;
static void on_repair_mark(void *context)
{
        (void)context;
        repair_mark_done = true;
}

/* The restarted process of a grid repair: marks the checkpoint as not to be trusted. */
static int grid_repair_mark(struct server *s, char *error, size_t error_size)
{
        struct replica_view_state state = view_state_of(&s->storage.superblock);
        state.grid_syncing = true;
        struct storage_view v = storage_view_of(&state);
        repair_mark_done = false;
        if (!storage_write_view(&s->storage, &v, on_repair_mark, NULL)) {
                snprintf(error, error_size, "cannot write the superblock");
                return -1;
        }
        uint64_t deadline = io_monotonic_ns() + 30000000000ull;
        while (!repair_mark_done && !s->storage.failed && io_monotonic_ns() < deadline)
                if (io_run(&s->io, TICK_NS, true) != 0)
                        break;
        if (!repair_mark_done) {
                snprintf(error, error_size, "the superblock write did not complete");
                return -1;
        }
        log_warn("grid repair: this replica's checkpoint is not trusted any more; copying one "
                 "from a peer");
        return 0;
}

static int recover(struct server *s, char *error, size_t error_size)
{
        uint64_t started = io_monotonic_ns();
        if (s->storage.legacy && convert_legacy(s, error, error_size) != 0)
                return -1;
        const struct superblock *sb = &s->storage.superblock;
        struct replica_durable durable = {
                .view_state = view_state_of(sb),
                .context = s,
                .read_reply = read_reply,
                .read_header = read_header,
                .read_prepare = read_prepare,
        };
        if (sb->root_address != 0) {
                durable.checkpoint_root = (struct lsm_block_ref){.address = sb->root_address,
                                                                 .checksum = sb->root_checksum};
                durable.checkpoint_blocks = sb->checkpoint_blocks;
                durable.checkpoint_op = sb->checkpoint_op;
                durable.checkpoint_prepare_checksum = sb->checkpoint_prepare_checksum;
                durable.checkpoint_timestamp = sb->checkpoint_timestamp;
        }
        if (replica_open(&s->replica, &durable, error, error_size) != 0)
                return -1;
        log_info("recovery took duration_ms=%llu",
                 (unsigned long long)((io_monotonic_ns() - started) / 1000000));
        return 0;
}

/*
 * `tally backup` (cli/backup.c) on a backup connection (net/peer_auth.h): it reads a
 * checkpoint in chunks with state sync's request_blocks and the sessions' replies with
 * request_reply. A request for checkpoint op 0, or for one that is not pinned, pins the
 * durable checkpoint for this connection (ledger_hold: its blocks survive later checkpoints,
 * so the copy never starts over however long it takes) and answers from it; the pin goes
 * when the connection closes, or when another backup connection pins. Replies are read by
 * checksum from their slots, where they stay until the second checkpoint after theirs: the
 * tool asks for them as soon as it has the session table, and starts over if they are gone.
 *
 * Cost to this loop per request: one chunk (the whole blocks a message body holds, 960 KiB;
 * one 64 KiB block with --development) read with pread from the data file (usually the page
 * cache), each block checked and the chunk checksummed, or one reply read. The tool keeps
 * BACKUP_WINDOW (4) requests outstanding, so that is the most chunk work queued between two
 * turns of the loop for other traffic.
 */
static void backup_serve_chunk(struct server *s, bus_connection_id connection,
                               const struct replica_sync_fields *want)
{
        struct backup_pin *pin = &s->backup_pin;
        struct replica *r = &s->replica;
        bool ours = pin->active && s->backup_pin_owner == connection &&
                    want->checkpoint_op == pin->op;
        if (!ours && (r->checkpoint_root_durable.address == 0 || r->checkpoint_op_durable == 0 ||
                      ledger_hold(s->ledger) != 0)) {
                /* No durable checkpoint yet: say so (checkpoint_op 0, size 0) rather than let
                 * the tool wait for an answer that cannot come. */
                struct replica_sync_fields none;
                memset(&none, 0, sizeof(none));
                struct message *m = message_pool_get(&s->pool);
                if (m == NULL)
                        return; /* the tool asks again */
                wire_header_init(m->header, COMMAND_BLOCK, s->replica.config.cluster,
                                 s->replica.view, WIRE_RELEASE_SERVER, s->replica.config.replica);
                memcpy(m->header->raw, &none, sizeof(none));
                wire_header_set_checksum_body(m->header, message_body(m), 0);
                wire_header_set_checksum(m->header);
                bus_send(&s->bus, connection, m);
                message_unref(&s->pool, m);
                return;
        }
        if (!ours) {
                /* The hold keeps every block up to now, the durable checkpoint's among them. */
                pin->active = true;
                pin->op = r->checkpoint_op_durable;
                pin->root = r->checkpoint_root_durable;
                pin->prepare_checksum = r->checkpoint_checksum_durable;
                pin->timestamp = r->checkpoint_timestamp_durable;
                pin->blocks = replica_image_blocks(r, pin->root);
                s->backup_pin_owner = connection;
                log_info("backup: checkpoint pinned op=%llu blocks=%llu",
                         (unsigned long long)pin->op, (unsigned long long)pin->blocks);
        }
        struct replica_sync_fields f = {
                .checkpoint_op = pin->op,
                .size = pin->blocks * LSM_BLOCK_SIZE,
                .prepare_checksum = pin->prepare_checksum,
                .timestamp = pin->timestamp,
                .offset = ours ? want->offset : 0,
                .root_address = pin->root.address,
                .root_checksum = pin->root.checksum,
        };
        struct message *m = message_pool_get(&s->pool);
        if (m == NULL)
                return; /* the tool asks again */
        wire_header_init(m->header, COMMAND_BLOCK, s->replica.config.cluster, s->replica.view,
                         WIRE_RELEASE_SERVER, s->replica.config.replica);
        memcpy(m->header->raw, &f, sizeof(f));
        /* Whole blocks, at least one: --development's 32 KiB messages hold none, but every
         * connection takes messages up to WIRE_MESSAGE_SIZE_MAX (net/bus.c). */
        uint32_t chunk = MAX(LSM_BLOCK_SIZE, (s->replica.config.request_size_max -
                                              WIRE_HEADER_SIZE) / LSM_BLOCK_SIZE * LSM_BLOCK_SIZE);
        uint32_t size = (uint32_t)MIN((uint64_t)chunk, f.size - MIN(f.size, f.offset));
        int64_t n = size == 0 || f.offset % LSM_BLOCK_SIZE != 0
                            ? (size == 0 ? 0 : -1)
                            : replica_image_read(r, pin->root, f.offset, message_body(m), size);
        if (n == (int64_t)size) {
                pin->bytes_read += (uint64_t)size;
                m->header->size = WIRE_HEADER_SIZE + size;
                wire_header_set_checksum_body(m->header, message_body(m), size);
                wire_header_set_checksum(m->header);
                bus_send(&s->bus, connection, m);
        }
        message_unref(&s->pool, m);
}

static void backup_serve_reply(struct server *s, bus_connection_id connection,
                               const struct replica_sync_fields *want)
{
        if (want->slot >= STORAGE_REPLY_SLOTS)
                return;
        struct message *m = message_pool_get(&s->pool);
        if (m == NULL)
                return;
        char error[256];
        /* The checksum proves the slot still holds that reply. */
        if (storage_read_reply(&s->storage, want->slot, m, want->checksum, error,
                               sizeof(error)) == 0)
                bus_send(&s->bus, connection, m);
        message_unref(&s->pool, m);
}

static void bus_on_message(void *context, bus_connection_id connection, struct message *message)
{
        struct server *s = context;
        if (!bus_connection_is_backup(&s->bus, connection)) {
                replica_on_message(&s->replica, connection, message);
                return;
        }
        struct replica_sync_fields want;
        memcpy(&want, message->header->raw, sizeof(want));
        if (message->header->command == COMMAND_REQUEST_BLOCKS)
                backup_serve_chunk(s, connection, &want);
        else if (message->header->command == COMMAND_REQUEST_REPLY)
                backup_serve_reply(s, connection, &want);
}

static void bus_on_close(void *context, bus_connection_id connection)
{
        struct server *s = context;
        if (s->backup_pin.active && s->backup_pin_owner == connection) {
                ledger_unhold(s->ledger);
                s->backup_pin.active = false;
                s->backup_pin_owner = BUS_CONNECTION_NONE;
                log_info("backup: checkpoint unpinned (the backup connection closed)");
        }
        replica_on_connection_closed(&s->replica, connection);
}

/* A connection to another replica is up: the replica pings it at once, which also lets the
 * other side identify the connection. */
static void bus_on_peer_connected(void *context, uint8_t replica)
{
        struct server *s = context;
        replica_on_peer_connected(&s->replica, replica);
}

static bool env_storage_full(void *context)
{
        struct server *s = context;
        return s->storage.no_space;
}

static bool env_storage_room(void *context)
{
        struct server *s = context;
        return storage_has_room(&s->storage);
}

/* Nothing was sent to a peer for a while: a ping keeps the connection provably live. */
static void bus_on_peer_idle(void *context, uint8_t replica)
{
        struct server *s = context;
        replica_ping_peer(&s->replica, replica);
}

/*
 * Resolves our own entry of --addresses, to listen on. In a cluster, an own host name that
 * does not resolve yet is not fatal: a pod's name in a Kubernetes headless service may be
 * published only once the pod is ready, which needs it to listen first. So such a replica
 * listens on every interface at that port. A single replica keeps the plain error.
 */
static int resolve_self(struct address *self, uint8_t replica_count)
{
        char error[512];
        if (address_resolve(self, error, sizeof(error)) == 0)
                return 0;
        if (replica_count == 1) {
                cli_error("start: --addresses: %s", error);
                return -1;
        }
        log_warn("own address does not resolve: %s; listening on every interface port=%u", error,
                 self->port);
        struct sockaddr_in *any = (struct sockaddr_in *)&self->sockaddr;
        memset(&self->sockaddr, 0, sizeof(self->sockaddr));
        any->sin_family = AF_INET;
        any->sin_port = htons(self->port);
        any->sin_addr.s_addr = htonl(INADDR_ANY);
        self->sockaddr_size = sizeof(*any);
        return 0;
}

/*
 * After a failed write or sync the replica acknowledges nothing more until restarted; the
 * storage logs that once, and clients only see silence, so it is repeated every 5 s.
 */
#define STORAGE_FAILED_LOG_INTERVAL_NS 5000000000ull
static void storage_failed_log(struct server *s)
{
        if (!s->storage.failed)
                return;
        uint64_t now = io_monotonic_ns();
        if (s->storage_failed_logged_ns != 0 &&
            now < s->storage_failed_logged_ns + STORAGE_FAILED_LOG_INTERVAL_NS)
                return;
        s->storage_failed_logged_ns = now;
        log_error("refusing writes: a data file write or sync failed; nothing more is "
                  "acknowledged until this replica is restarted (check the disk) commit=%llu",
                  (unsigned long long)s->replica.commit);
}

/*
 * Every 10 s while a replica of a new cluster has no primary because some replicas are not up:
 * otherwise its log shows only view changes, as if the cluster were broken (README,
 * "Replication": the first primary needs every replica).
 */
#define FIRST_PRIMARY_LOG_INTERVAL_NS 10000000000ull

static void first_primary_log(struct server *s)
{
        uint64_t now = io_monotonic_ns();
        if (now < s->first_primary_logged_ns + FIRST_PRIMARY_LOG_INTERVAL_NS)
                return; /* the first 10 s after start, too: peers are still connecting */
        char missing[64];
        if (!metrics_first_primary_waiting(&s->replica, &s->bus, missing, sizeof(missing)))
                return;
        s->first_primary_logged_ns = now;
        log_warn("no primary yet: a new cluster elects its first primary only with all %u "
                 "replicas up (a quorum of fresh replicas cannot tell it from a cluster whose "
                 "acknowledged writes are on the missing one); not connected: %s view=%u",
                 s->replica.config.replica_count, missing, s->replica.view);
}

/* --metrics-address: one address, a literal or a name resolved once at start. */
static int metrics_start(struct server *s, const char *text,
                         const struct ledger_config *ledger_config)
{
        struct address address[ADDRESSES_MAX];
        uint32_t count = 0;
        char error[512];
        if (address_parse_list(text, address, &count, error, sizeof(error)) != 0 || count != 1) {
                cli_error("start: --metrics-address: %s",
                          count != 1 ? "exactly one address expected" : error);
                return -1;
        }
        if (address_resolve(&address[0], error, sizeof(error)) != 0) {
                cli_error("start: --metrics-address: %s", error);
                return -1;
        }
        s->metrics_sources = (struct metrics_sources){
                .replica = &s->replica,
                .bus = &s->bus,
                .storage = &s->storage,
                .pool = &s->pool,
                .ledger = s->ledger,
                .backup_pin = &s->backup_pin,
                .accounts_max = ledger_config->accounts_max,
                .transfers_max = ledger_config->transfers_max,
                .http = &s->http.stats,
                .started_realtime_ns = io_realtime_ns(),
                .grid_repairs = grid_repairs(),
                .version = TALLY_VERSION,
        };
        struct sockaddr_storage bound;
        if (http_server_start(&s->http, &s->io, &address[0], metrics_http_handler,
                              &s->metrics_sources, &bound) != 0) {
                cli_error("start: cannot listen on --metrics-address=%s", text);
                return -1;
        }
        s->metrics = true;
        char bound_text[80];
        address_format(&bound, bound_text, sizeof(bound_text));
        log_info("metrics listening on %s", bound_text);
        return 0;
}

static int serve(struct server *s)
{
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        s->first_primary_logged_ns = io_monotonic_ns();
        while (stop_signal == 0) {
                if (io_run(&s->io, TICK_NS, false) != 0)
                        return 1;
                bus_tick(&s->bus);
                replica_tick(&s->replica);
                if (s->metrics)
                        http_server_tick(&s->http);
                storage_failed_log(s);
                first_primary_log(s);
        }
        log_info("stopping signal=%s", stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
        bus_stop(&s->bus);
        if (s->metrics)
                http_server_stop(&s->http);
        /* Let closes and in-flight journal writes finish, for at most a second. */
        uint64_t deadline = io_monotonic_ns() + 1000000000ull;
        while (io_monotonic_ns() < deadline &&
               (s->bus.stats.connections_active > 0 ||
                storage_journal_writes_in_flight(&s->storage) > 0 ||
                (s->metrics && !http_server_idle(&s->http)))) {
                io_run(&s->io, TICK_NS, true);
        }
        log_info("stopped commit=%llu", (unsigned long long)s->replica.commit);
        return 0;
}

/* The caches: most of a replica's memory (docs/storage.md, "Memory"). */
#define TALLY_CACHE_DEFAULT (512ull << 20)
#define TALLY_CACHE_DEFAULT_DEVELOPMENT (64ull << 20)
#define TALLY_CACHE_MIN (4ull << 20)

int cli_start(int argc, char **argv)
{
        crash_handler_install();
        struct flag flags[] = {
                {.name = "addresses", .kind = FLAG_STRING, .required = true},
                {.name = "development", .kind = FLAG_SWITCH},
                {.name = "accounts-max", .kind = FLAG_U64},
                {.name = "transfers-max", .kind = FLAG_U64},
                {.name = "cluster-key-file", .kind = FLAG_STRING},
                {.name = "metrics-address", .kind = FLAG_STRING},
                {.name = "cache", .kind = FLAG_BYTES},
        };
        const char *positional[1];
        uint32_t positional_count = 0;
        char error[512];
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), positional, 1, &positional_count,
                        error, sizeof(error)) != 0) {
                cli_error("start: %s", error);
                return 2;
        }
        if (positional_count != 1) {
                cli_error("start: missing the data file path");
                return 2;
        }
        struct address addresses[ADDRESSES_MAX];
        uint32_t address_count = 0;
        if (address_parse_list(flags[0].string, addresses, &address_count, error,
                               sizeof(error)) != 0) {
                cli_error("start: --addresses: %s", error);
                return 2;
        }
        struct peer_auth_key cluster_key;
        if (flags[4].present) {
                const char *problem = peer_auth_key_load(flags[4].string, &cluster_key);
                if (problem != NULL) {
                        cli_error("start: --cluster-key-file=%s: %s", flags[4].string, problem);
                        return 2;
                }
        }
        static struct server server;
        struct server *s = &server;
        if (io_init(&s->io, 512) != 0) {
                cli_error("start: no I/O backend could start (see the log line above)");
                return 1;
        }
        if (message_pool_init(&s->pool, MESSAGES_MAX) != 0) {
                cli_error("start: cannot reserve memory for messages");
                return 1;
        }
        enum storage_error rc =
                storage_open(&s->storage, &s->io, &s->pool, positional[0], STORAGE_ACCESS_WRITE,
                             error, sizeof(error));
        if (rc != STORAGE_OK) {
                cli_error("start: %s", error);
                return 1;
        }
        const struct superblock *sb = &s->storage.superblock;
        if (address_count != sb->replica_count) {
                cli_error("start: --addresses has %u address(es) but the data file was "
                          "formatted for a cluster of %u replica(s)",
                          address_count, sb->replica_count);
                return 1;
        }
        bool development = flags[1].present;
        if (development != (sb->development != 0))
                log_warn("--development differs from the data file's format; using the file's "
                         "setting development=%u",
                         sb->development);
        struct address *self = &addresses[sb->replica];
        if (resolve_self(self, sb->replica_count) != 0)
                return 1;
        /*
         * Memory is the caches (--cache) plus a fixed part; capacity is the disk's.
         * --accounts-max / --transfers-max are optional limits, none by default.
         */
        uint64_t cache = flags[6].present ? flags[6].u64
                         : sb->development ? TALLY_CACHE_DEFAULT_DEVELOPMENT
                                           : TALLY_CACHE_DEFAULT;
        if (cache < TALLY_CACHE_MIN) {
                cli_error("start: --cache=%s is below the minimum of 4MiB", flags[6].string);
                return 1;
        }
        struct ledger_config ledger_config = {
                .accounts_max = flags[2].present ? flags[2].u64 : 0,
                .transfers_max = flags[3].present ? flags[3].u64 : 0,
                .request_body_size_max = sb->message_size_max - WIRE_HEADER_SIZE,
                .device = storage_grid_device(&s->storage),
                .compaction_worker = true,
                .worker_device = storage_grid_device_worker(&s->storage),
                .grid_blocks_max = GRID_BLOCKS_MAX,
                .cache_bytes = cache,
                .on_fault = on_ledger_fault,
                .on_fault_context = s,
        };
        s->ledger = ledger_create(&ledger_config);
        if (s->ledger == NULL) {
                cli_error("start: cannot reserve ledger memory (cache=%llu bytes)",
                          (unsigned long long)cache);
                return 1;
        }
        /* Its caches and memtables resident from the start, not first touched under load. */
        if (!huge_pages_populate_start())
                log_warn("start: memory is faulted in as it is first used (no thread for it)");
        struct replica_config replica_config = {
                .cluster = sb->cluster,
                .replica = sb->replica,
                .replica_count = sb->replica_count,
                .request_size_max = sb->message_size_max,
                .checkpoint_interval = sb->checkpoint_interval,
                .wal_slot_count = sb->wal_slot_count,
        };
        struct replica_env env = {
                .context = s,
                .send = env_send,
                .connection_alive = env_connection_alive,
                .journal_write = env_journal_write,
                .realtime_ns = env_realtime_ns,
                .monotonic_ns = env_monotonic_ns,
                .flush = env_flush,
                .defer = env_defer,
                .checkpoint = env_checkpoint,
                .storage_full = env_storage_full,
                .storage_room = env_storage_room,
                .journal_read = env_journal_read,
                .view_write = env_view_write,
                .reply_read = env_reply_read,
                .connection_is_replica = env_connection_is_replica,
                .connection_replica = env_connection_replica,
                .send_to_replica = env_send_to_replica,
        };
        if (replica_init(&s->replica, &replica_config, &env, &s->pool, s->ledger) != 0) {
                cli_error("start: cannot reserve memory for checkpoints");
                return 1;
        }
        if (getenv(GRID_REPAIR_ENV) != NULL) {
                unsetenv(GRID_REPAIR_ENV);
                if (sb->replica_count > 1 && grid_repair_mark(s, error, sizeof(error)) != 0) {
                        cli_error("start: grid repair: %s", error);
                        return 1;
                }
        }
        if (recover(s, error, sizeof(error)) != 0) {
                cli_error("start: %s", error);
                return 1;
        }
        struct bus_callbacks callbacks = {
                .context = s,
                .on_message = bus_on_message,
                .on_close = bus_on_close,
                .on_peer_connected = bus_on_peer_connected,
                .on_peer_idle = bus_on_peer_idle,
        };
        if (bus_init(&s->bus, &s->io, &s->pool, sb->cluster, CONNECTIONS_MAX, &callbacks) != 0) {
                cli_error("start: cannot reserve memory for connections");
                return 1;
        }
        struct sockaddr_storage bound;
        if (bus_listen(&s->bus, self, &bound) != 0) {
                cli_error("start: cannot listen on %s:%u", self->host, self->port);
                return 1;
        }
        if (flags[4].present) {
                bus_auth_key_set(&s->bus, &cluster_key);
                memset(&cluster_key, 0, sizeof(cluster_key));
                if (sb->replica_count > 1)
                        log_info("replica traffic authenticated with the cluster key");
        } else if (sb->replica_count > 1) {
                log_warn("replica traffic is not authenticated: any connection that claims to "
                         "be a replica is believed while that replica is not connected (start "
                         "every replica with --cluster-key-file=<path>; make one with `tally "
                         "keygen <path>`)");
        }
        if (sb->replica_count > 1 &&
            bus_peers_start(&s->bus, sb->replica, addresses, sb->replica_count) != 0) {
                cli_error("start: cannot reserve memory for name resolution");
                return 1;
        }
        log_set_replica(sb->replica);
        if (flags[5].present && metrics_start(s, flags[5].string, &ledger_config) != 0)
                return 1;
        char bound_text[80];
        address_format(&bound, bound_text, sizeof(bound_text));
        char cluster[40];
        format_u128(sb->cluster, cluster);
        log_info("listening on %s", bound_text);
        log_info("started cluster=%s replica=%u replica_count=%u release=%s "
                 "batch_size_limit=%u cache_bytes=%llu accounts_max=%llu transfers_max=%llu",
                 cluster, sb->replica, sb->replica_count, TALLY_VERSION,
                 replica_batch_size_limit(&s->replica), (unsigned long long)cache,
                 (unsigned long long)ledger_config.accounts_max,
                 (unsigned long long)ledger_config.transfers_max);
        int status = serve(s);
        replica_deinit(&s->replica);
        bus_deinit(&s->bus);
        ledger_destroy(s->ledger);
        storage_close(&s->storage);
        message_pool_deinit(&s->pool);
        io_deinit(&s->io);
        return status;
}
