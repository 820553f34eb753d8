/*
 * sim.c: the simulated world (see sim.h): replicas with their lifecycles, the fault schedule,
 * the main loop, and the checks.
 *
 * Checks, failing the seed at the first violation:
 *   - every op committed by any replica has the same prepare checksum on every replica that
 *     commits it (also when a restarted replica replays its journal), and the same reply,
 *     byte for byte apart from view, replica, checksum (and the context, checked separately:
 *     a client's next request chains to it, whichever replica answers);
 *   - a (client, request) commits at one op only; a register at one op only;
 *   - every reply a client accepts is what the replicas committed for that op;
 *   - replicas only send messages a receiver's bus accepts; no replica leaks messages
 *     (its pool is full again after replica_deinit);
 *   - liveness: after the fault phase every client completes a new request and all replicas
 *     reach the same commit within liveness_ticks;
 *   - a replica reports a damaged grid block only if the simulator damaged it (or failed its
 *     read), and never reads a block that a crash tore in the middle of its write;
 *   - at the end, every acknowledged request is committed on every replica, and the ledgers
 *     and session tables of all replicas are identical (replicas with grid damage are
 *     scrubbed first: every block of their trees read, and repaired if damaged).
 *
 * Storage damage that could lose an acknowledged op (corruption, bad writes, wipes, damaged
 * grid blocks, a replica repairing its grid) is kept on at most (n - 1) / 2 replicas at a
 * time, and is detectable (checksums, the fresh flag, the grid's block references): a replica
 * never mistakes a damaged copy of an op it acknowledged for one it never had.
 */
#include "sim/sim_internal.h"
#include "lib/log.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- PRNG ------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
        uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

void sim_prng_init(struct sim_prng *prng, uint64_t seed)
{
        uint64_t x = seed;
        for (uint32_t i = 0; i < 4; i++)
                prng->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
        return (x << k) | (x >> (64 - k));
}

uint64_t sim_prng_next(struct sim_prng *prng)
{
        uint64_t *s = prng->s;
        uint64_t result = rotl(s[1] * 5, 7) * 9;
        uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return result;
}

uint64_t sim_prng_below(struct sim_prng *prng, uint64_t n)
{
        tally_assert(n > 0);
        return (uint64_t)(((unsigned __int128)sim_prng_next(prng) * n) >> 64);
}

uint64_t sim_prng_range(struct sim_prng *prng, uint64_t lo, uint64_t hi)
{
        tally_assert(lo <= hi);
        return lo + sim_prng_below(prng, hi - lo + 1);
}

bool sim_prng_chance(struct sim_prng *prng, uint32_t ppm)
{
        return sim_prng_below(prng, 1000000) < ppm;
}

/* ---- options, faults, reporting ---------------------------------------------------------- */

static const char *const fault_names[SIM_FAULT_COUNT] = {
        [SIM_FAULT_LOSS] = "loss",         [SIM_FAULT_DUPLICATE] = "duplicate",
        [SIM_FAULT_DELAY] = "delay",       [SIM_FAULT_PARTITION] = "partition",
        [SIM_FAULT_CLOSE] = "close",       [SIM_FAULT_CRASH] = "crash",
        [SIM_FAULT_TORN] = "torn",         [SIM_FAULT_CORRUPT] = "corrupt",
        [SIM_FAULT_BAD_WRITE] = "bad-write", [SIM_FAULT_WIPE] = "wipe",
        [SIM_FAULT_CLOCK] = "clock",       [SIM_FAULT_BUSY] = "busy",
        [SIM_FAULT_FORGE] = "forge",
        [SIM_FAULT_GRID_READ] = "grid-read", [SIM_FAULT_GRID_CORRUPT] = "grid-corrupt",
        [SIM_FAULT_GRID_MISDIRECT] = "grid-misdirect", [SIM_FAULT_GRID_CRASH] = "grid-crash",
        [SIM_FAULT_GRID_TORN] = "grid-torn",
};

const char *sim_fault_name(enum sim_fault fault)
{
        tally_assert(fault < SIM_FAULT_COUNT);
        return fault_names[fault];
}

bool sim_faults_parse(const char *text, uint32_t *faults)
{
        if (strcmp(text, "all") == 0) {
                *faults = SIM_FAULTS_ALL;
                return true;
        }
        *faults = 0;
        if (strcmp(text, "none") == 0)
                return true;
        const char *p = text;
        while (*p != '\0') {
                size_t length = strcspn(p, ",");
                bool found = false;
                for (uint32_t f = 0; f < SIM_FAULT_COUNT; f++) {
                        if (strlen(fault_names[f]) == length &&
                            strncmp(p, fault_names[f], length) == 0) {
                                *faults |= 1u << f;
                                found = true;
                        }
                }
                if (!found)
                        return false;
                p += length;
                if (*p == ',')
                        p++;
        }
        return true;
}

void sim_options_default(struct sim_options *o)
{
        if (o->replica_count == 0)
                o->replica_count = 3;
        if (o->client_count == 0)
                o->client_count = 8;
        if (o->ticks == 0)
                o->ticks = 3000; /* 30 s of faults */
        if (o->liveness_ticks == 0)
                o->liveness_ticks = 3000; /* 30 s to heal */
}

void sim_fail(struct sim *sim, const char *fmt, ...)
{
        if (sim->failed)
                return;
        sim->failed = true;
        char text[600];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        snprintf(sim->report->failure, sizeof(sim->report->failure), "t=%llums: %s",
                 (unsigned long long)(sim->now_ns / SIM_NS_PER_MS), text);
}

void sim_note(struct sim *sim, const char *fmt, ...)
{
        if (!sim->options.verbose)
                return;
        char text[600];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        fprintf(stderr, "sim t=%llums %s\n", (unsigned long long)(sim->now_ns / SIM_NS_PER_MS),
                text);
}

void sim_enter(const struct sim_replica *sr)
{
        log_set_replica(sr->index);
}

bool sim_fault_on(const struct sim *sim, enum sim_fault fault)
{
        return (sim->options.faults & (1u << fault)) != 0;
}

void sim_count_fault(struct sim *sim, enum sim_fault fault)
{
        sim->report->faults[fault]++;
}

/*
 * More damage on a replica already damaged adds no faulty replica, but only while the others
 * are fewer than the bound: a replica can also lose its state with no fault injected (a crash
 * in the middle of a state sync), and then the damaged ones may already be too many.
 */
bool sim_damage_allowed(struct sim *sim, uint32_t r)
{
        uint32_t damaged = 0;
        for (uint32_t i = 0; i < sim->replica_count; i++)
                if (i != r && sim_disk_damaged(sim, &sim->replicas[i].disk))
                        damaged++;
        return damaged < sim->quorum_faulty_max;
}

uint64_t sim_realtime_ns(struct sim *sim, uint32_t r)
{
        return (uint64_t)((int64_t)(sim->realtime_base_ns + sim->now_ns) +
                          sim->replicas[r].clock_skew_ns);
}

u128 sim_reply_digest(const struct wire_header *reply, const uint8_t *body)
{
        struct wire_header h = *reply;
        h.checksum = 0;
        h.view = 0;
        h.replica = 0;
        h.reply.context = 0;
        struct checksum_stream stream;
        checksum_stream_init(&stream);
        checksum_stream_add(&stream, &h, sizeof(h));
        checksum_stream_add(&stream, body, reply->size - WIRE_HEADER_SIZE);
        return checksum_stream_final(&stream);
}

/* ---- commits ----------------------------------------------------------------------------- */

static struct sim_op *op_slot(struct sim *sim, uint64_t op)
{
        if (op >= sim->op_capacity) {
                uint64_t capacity = MAX(1024u, sim->op_capacity);
                while (capacity <= op)
                        capacity *= 2;
                sim->ops = realloc(sim->ops, capacity * sizeof(*sim->ops));
                tally_assert(sim->ops != NULL);
                memset(sim->ops + sim->op_capacity, 0,
                       (capacity - sim->op_capacity) * sizeof(*sim->ops));
                sim->op_capacity = capacity;
        }
        return &sim->ops[op];
}

/* A (client, request) commits at one op only. */
static void check_once(struct sim *sim, uint32_t replica, const struct wire_header *p)
{
        uint64_t op = p->prepare.op;
        struct sim_identity *id = sim_identity_find(sim, p->prepare.client);
        if (id == NULL) {
                sim_fail(sim, "replica %u committed op %llu for an unknown client", replica,
                         (unsigned long long)op);
                return;
        }
        uint64_t *slot = &id->register_op;
        if (p->prepare.operation != OPERATION_REGISTER) {
                uint32_t request = p->prepare.request;
                if (request >= id->request_op_capacity) {
                        uint32_t capacity = MAX(64u, id->request_op_capacity);
                        while (capacity <= request)
                                capacity *= 2;
                        id->request_op = realloc(id->request_op, capacity * sizeof(uint64_t));
                        tally_assert(id->request_op != NULL);
                        memset(id->request_op + id->request_op_capacity, 0,
                               (capacity - id->request_op_capacity) * sizeof(uint64_t));
                        id->request_op_capacity = capacity;
                }
                slot = &id->request_op[request];
        }
        /* With more clients than sessions a register's session can be evicted before its
         * reply arrives; the retransmitted register then rightly opens a new one. */
        bool evictions = sim->identity_count > REPLICA_CLIENTS_MAX;
        if (*slot != 0 && *slot != op &&
            !(evictions && p->prepare.operation == OPERATION_REGISTER))
                sim_fail(sim, "client %u request %u (operation %u) executed twice: ops %llu and "
                              "%llu (replica %u)",
                         id->client, p->prepare.request, p->prepare.operation,
                         (unsigned long long)*slot, (unsigned long long)op, replica);
        *slot = op;
}

/*
 * Durable before committed: when an op first commits, a replication quorum must hold it on
 * disk (the smallest quorum any sane choice uses: half the replicas, rounded up, and both of
 * two). Faults the simulator injected on an entry count as held.
 */
static void check_durable_quorum(struct sim *sim, uint32_t replica, const struct wire_header *p)
{
        uint32_t n = sim->replica_count;
        uint32_t quorum = n == 2 ? 2 : (n + 1) / 2;
        uint32_t holding = 0;
        char who[64] = "";
        size_t used = 0;
        for (uint32_t r = 0; r < n; r++) {
                if (sim_disk_holds(sim, &sim->replicas[r], p)) {
                        holding++;
                        used += (size_t)snprintf(who + used, sizeof(who) - used, " %u", r);
                }
        }
        if (holding < quorum)
                sim_fail(sim, "op %llu committed by replica %u while only %u replica(s) hold it "
                              "durably (quorum %u):%s",
                         (unsigned long long)p->prepare.op, replica, holding, quorum,
                         used > 0 ? who : " none");
}

static void on_committed(void *context, const struct message *prepare, const struct message *reply)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        const struct wire_header *p = prepare->header;
        uint64_t op = p->prepare.op;
        struct sim_op *o = op_slot(sim, op);
        u128 digest = reply != NULL ? sim_reply_digest(reply->header, message_body(reply)) : 0;
        if (!o->committed) {
                o->committed = true;
                o->has_reply = reply != NULL;
                o->operation = p->prepare.operation;
                o->request = p->prepare.request;
                o->client = p->prepare.client;
                o->prepare_checksum = p->checksum;
                o->reply_digest = digest;
                o->reply_context = reply != NULL ? reply->header->reply.context : 0;
                o->context_replica = sr->index;
                sim->commit_max = MAX(sim->commit_max, op);
                check_durable_quorum(sim, sr->index, p);
                if (p->prepare.client != 0)
                        check_once(sim, sr->index, p);
                return;
        }
        if (o->prepare_checksum != p->checksum) {
                sim_fail(sim, "op %llu committed as %016llx%016llx by replica %u but as "
                              "%016llx%016llx by replica %u",
                         (unsigned long long)op, U128_HI(o->prepare_checksum),
                         U128_LO(o->prepare_checksum), o->context_replica, U128_HI(p->checksum),
                         U128_LO(p->checksum), sr->index);
                return;
        }
        if (o->has_reply != (reply != NULL) || o->reply_digest != digest) {
                sim_fail(sim, "op %llu: replica %u computed a different reply than replica %u",
                         (unsigned long long)op, sr->index, o->context_replica);
                return;
        }
        if (reply != NULL && o->reply_context != reply->header->reply.context)
                sim_fail(sim, "op %llu: reply context of replica %u differs from replica %u's "
                              "(a client's next request chains to it whichever replica answers)",
                         (unsigned long long)op, sr->index, o->context_replica);
}

/* ---- replica lifecycle ------------------------------------------------------------------- */

static uint64_t ms(uint64_t n)
{
        return n * SIM_NS_PER_MS;
}

/* The replica's deferred commits resume once the step's deliveries are in (step, below): the
 * flag in the replica is the request, so there is nothing to queue here. */
static void sim_env_defer(void *context)
{
        (void)context;
}

static uint64_t env_realtime_ns(void *context)
{
        struct sim_replica *sr = context;
        return sim_realtime_ns(sr->sim, sr->index);
}

/*
 * The ledger found a block it cannot use (grid repair, docs/storage.md "Damaged blocks"). As
 * `tally start` does, a replica of a cluster restarts without its checkpoint and copies a
 * peer's; a single replica stops (it is restarted, and reads again). The simulator checks
 * that it damaged that block: otherwise the ledger read a block it should not have.
 */
static void on_ledger_fault(void *context, const char *fault, bool damaged)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        if (!sr->guarded) {
                sim_fail(sim, "replica %u: a grid fault outside a call into it: %s", sr->index,
                         fault);
                return; /* the ledger aborts */
        }
        if (!damaged)
                sim_fail(sim, "replica %u: a grid write failed: %s", sr->index, fault);
        else
                sim_grid_fault_injected(sim, sr, fault);
        sim_note(sim, "replica %u grid fault: %s", sr->index, fault);
        sim_grid_unwind(sr, damaged && sim->replica_count > 1 ? SIM_FAULT_MODE_REPAIR
                                                               : SIM_FAULT_MODE_CRASH);
}

_Noreturn void sim_grid_unwind(struct sim_replica *sr, enum sim_fault_mode mode)
{
        tally_assert(sr->guarded);
        sr->fault_mode = (uint8_t)mode;
        longjmp(sr->fault_jump, 1);
}

static void replica_open_guarded(struct sim *sim, struct sim_replica *sr,
                                 const struct replica_durable *durable, char *error,
                                 size_t error_size)
{
        sr->opening = true;
        if (replica_open(&sr->replica, durable, error, error_size) != 0)
                sim_fail(sim, "replica %u cannot recover from its disk: %s", sr->index, error);
        sr->opening = false;
}

static void replica_start(struct sim *sim, struct sim_replica *sr)
{
        struct ledger_config ledger_config = sim->ledger_config;
        ledger_config.device = sim_grid_device(sr);
        ledger_config.on_fault = on_ledger_fault;
        ledger_config.on_fault_context = sr;
        sr->ledger = ledger_create(&ledger_config);
        tally_assert(sr->ledger != NULL);
        struct replica_config config = sim->config;
        config.replica = sr->index;
        struct replica_env env = {
                .context = sr,
                .send = sim_env_send,
                .connection_alive = sim_env_connection_alive,
                .connection_is_replica = sim_env_connection_is_replica,
                .connection_replica = sim_env_connection_replica,
                .journal_write = sim_env_journal_write,
                .realtime_ns = env_realtime_ns,
                .checkpoint = sim_env_checkpoint,
                .send_to_replica = sim_env_send_to_replica,
                .journal_read = sim_env_journal_read,
                .view_write = sim_env_view_write,
                .reply_read = sim_env_reply_read,
                .committed = on_committed,
                .defer = sim_env_defer,
        };
        sim_enter(sr);
        tally_assert(replica_init(&sr->replica, &config, &env, &sr->pool, sr->ledger) == 0);
        struct replica_durable durable;
        sim_disk_durable(sim, sr, &durable);
        sr->up = true;
        memset(sr->peer_connection, 0, sizeof(sr->peer_connection));
        char error[256];
        SIM_REPLICA_CALL(sim, sr, replica_open_guarded(sim, sr, &durable, error, sizeof(error)));
        if (sim->failed || !sr->up)
                return; /* failed, or crashed while replaying its journal */
        sr->tick_next_ns = sim->now_ns + sim_prng_range(&sim->prng, 1, 10) * SIM_NS_PER_MS;
        sr->view_seen = sr->replica.view;
        sim_net_connect_peers(sim, sr->index);
        sim_note(sim, "replica %u up view=%u commit=%llu", sr->index, sr->replica.view,
                 (unsigned long long)sr->replica.commit);
}

/*
 * Frees what the replica held; every message of its pool must be free again. After an unwind
 * (`unwound`) the replica's references are half updated (a message may be referenced from a
 * field and from the frames that were unwound, or only from those): its memory is freed
 * without touching them, and it gets a fresh pool, as a new process would (the simulator
 * holds no message of it then: sim_disk_crash released the disk's, and the network holds
 * copies). The leak check stays for every ordinary crash.
 */
static void replica_stop(struct sim *sim, struct sim_replica *sr, bool unwound)
{
        sim_enter(sr);
        if (unwound)
                replica_abandon(&sr->replica);
        else
                replica_deinit(&sr->replica);
        ledger_destroy(sr->ledger);
        sr->ledger = NULL;
        if (unwound) {
                message_pool_deinit(&sr->pool);
                tally_assert(message_pool_init(&sr->pool, SIM_MESSAGES_PER_REPLICA) == 0);
                return;
        }
        if (sr->pool.free_count != sr->pool.count)
                sim_fail(sim, "replica %u leaked %u messages", sr->index,
                         sr->pool.count - sr->pool.free_count);
}

/*
 * Adds what a replica's counters gained since last seen to the report: every tick, and at a
 * crash (the counters go with the replica's memory). A counter below what was seen: restarted.
 */
static void count_since(uint64_t now, uint64_t *seen, uint64_t *total)
{
        if (now < *seen)
                *seen = 0;
        *total += now - *seen;
        *seen = now;
}

static void report_counters(struct sim *sim, struct sim_replica *sr)
{
        const struct replica_stats *st = &sr->replica.stats;
        count_since(st->state_sync_prepares, &sr->sync_prepares_seen, &sim->report->sync_prepares);
        count_since(st->state_sync_retargets, &sr->sync_retargets_seen,
                    &sim->report->sync_retargets);
        count_since(st->grid_blocks_repaired, &sr->blocks_repaired_seen,
                    &sim->report->blocks_repaired);
        count_since(st->requests_parked, &sr->parked_seen, &sim->report->requests_parked);
}

static void replica_crash(struct sim *sim, struct sim_replica *sr, bool unwound)
{
        report_counters(sim, sr);
        sr->up = false;
        sr->incarnation++;
        for (uint32_t i = 0; i < sim->net.connection_count; i++) {
                struct sim_connection *c = &sim->net.connections[i];
                if (c->open && (c->replica == sr->index || (c->peer && c->other == sr->index)))
                        sim_connection_close(sim, i + 1);
        }
        sim_disk_crash(sim, sr);
        replica_stop(sim, sr, unwound);
        sim->report->restarts++;
        bool wipe = !unwound && sim_fault_on(sim, SIM_FAULT_WIPE) && sim->replica_count > 2 &&
                    sim_prng_chance(&sim->prng, 150000) && sim_damage_allowed(sim, sr->index);
        for (uint32_t i = 0; wipe && i < sim->replica_count; i++)
                if (sim->replicas[i].disk.wiped)
                        wipe = false; /* one at a time */
        if (wipe) {
                sim_disk_format(sim, &sr->disk);
                sr->disk.wiped = true;
                sr->disk.wiped_commit_max = sim->commit_max;
                sim_count_fault(sim, SIM_FAULT_WIPE);
        }
        sim_note(sim, "replica %u crashed%s", sr->index, wipe ? " and wiped" : "");
}

/*
 * A grid fault unwound out of a call into the replica: it crashes there. A repair then marks
 * the grid as being overwritten (grid_syncing) before it opens again, as `tally start`'s
 * restarted process does (grid_repair_mark), so it starts without state and copies a peer's
 * checkpoint; it restarts at once, as a re-executed process would.
 */
void sim_replica_faulted(struct sim *sim, struct sim_replica *sr)
{
        bool repair = sr->fault_mode == SIM_FAULT_MODE_REPAIR;
        replica_crash(sim, sr, true);
        if (repair) {
                sr->disk.view_state.grid_syncing = true;
                sr->disk.grid_repairing = true;
                sr->disk.repair_catching_up = true;
                sr->disk.repair_commit_max = MAX(sr->disk.repair_commit_max, sim->commit_max);
                sim->report->grid_repairs++;
                sim_note(sim, "replica %u restarts to copy a peer's checkpoint", sr->index);
        }
        sr->restart_at_ns = sim->now_ns + ms(repair ? sim_prng_range(&sim->grid_prng, 1, 50)
                                                    : sim_prng_range(&sim->grid_prng, 10, 3000));
}

/* ---- the fault schedule ------------------------------------------------------------------ */

/* From the grid faults' own stream (sim->grid_prng): they reshuffle no other fault. */
static void grid_faults_step(struct sim *sim)
{
        struct sim_prng *prng = &sim->grid_prng;
        if (sim_fault_on(sim, SIM_FAULT_GRID_CORRUPT) && sim->now_ns >= sim->grid_corrupt_next_ns) {
                uint32_t r = (uint32_t)sim_prng_below(prng, sim->replica_count);
                if (sim_damage_allowed(sim, r))
                        sim_grid_corrupt_one(sim, &sim->replicas[r]);
                sim->grid_corrupt_next_ns = sim->now_ns + ms(sim_prng_range(prng, 1000, 6000));
        }
        if (sim_fault_on(sim, SIM_FAULT_GRID_READ) && sim->now_ns >= sim->grid_read_next_ns) {
                /* The replica's next block read fails, when its damage is allowed then. */
                sim->replicas[sim_prng_below(prng, sim->replica_count)].disk.grid_read_armed = true;
                sim->grid_read_next_ns = sim->now_ns + ms(sim_prng_range(prng, 2000, 12000));
        }
}

static void faults_step(struct sim *sim)
{
        struct sim_prng *prng = &sim->prng;
        sim_net_faults_step(sim);
        if (sim_fault_on(sim, SIM_FAULT_CRASH) && sim->now_ns >= sim->crash_next_ns) {
                struct sim_replica *sr = &sim->replicas[sim_prng_below(prng, sim->replica_count)];
                if (sr->up) {
                        replica_crash(sim, sr, false);
                        sim_count_fault(sim, SIM_FAULT_CRASH);
                        sr->restart_at_ns = sim->now_ns + ms(sim_prng_range(prng, 10, 3000));
                }
                sim->crash_next_ns = sim->now_ns + ms(sim_prng_range(prng, 300, 5000));
        }
        if (sim_fault_on(sim, SIM_FAULT_CORRUPT) && sim->now_ns >= sim->corrupt_next_ns) {
                uint32_t r = (uint32_t)sim_prng_below(prng, sim->replica_count);
                if (sim_damage_allowed(sim, r))
                        sim_disk_corrupt_one(sim, &sim->replicas[r]);
                sim->corrupt_next_ns = sim->now_ns + ms(sim_prng_range(prng, 100, 2000));
        }

        if (sim_fault_on(sim, SIM_FAULT_CLOCK) && sim->now_ns >= sim->clock_next_ns) {
                struct sim_replica *sr = &sim->replicas[sim_prng_below(prng, sim->replica_count)];
                sr->clock_skew_ns -= (int64_t)ms(sim_prng_range(prng, 10, 1000));
                sim_count_fault(sim, SIM_FAULT_CLOCK);
                sim->clock_next_ns = sim->now_ns + ms(sim_prng_range(prng, 500, 6000));
        }
        if (sim_fault_on(sim, SIM_FAULT_CLOSE) && sim->now_ns >= sim->close_next_ns) {
                struct sim_client *c = &sim->clients[sim_prng_below(prng, sim->client_count)];
                uint32_t r = (uint32_t)sim_prng_below(prng, sim->replica_count);
                if (c->connection[r] != 0) {
                        sim_connection_close(sim, c->connection[r]);
                        sim_count_fault(sim, SIM_FAULT_CLOSE);
                }
                sim->close_next_ns = sim->now_ns + ms(sim_prng_range(prng, 50, 1500));
        }
        if (sim_fault_on(sim, SIM_FAULT_FORGE))
                sim_forge_step(sim);
        grid_faults_step(sim);
}

/* Clocks wander within +-50 ms; a backward jump drifts back into that band. */
static void clock_drift(struct sim *sim, struct sim_replica *sr)
{
        int64_t limit = (int64_t)ms(50);
        if (sr->clock_skew_ns < -limit)
                sr->clock_skew_ns += (int64_t)ms(1);
        else
                sr->clock_skew_ns += (int64_t)sim_prng_range(&sim->prng, 0, 200000) - 100000;
        if (sr->clock_skew_ns > limit)
                sr->clock_skew_ns = limit;
}

static void heal(struct sim *sim)
{
        sim->healing = true;
        sim_net_heal(sim);
        for (uint32_t r = 0; r < sim->replica_count; r++)
                if (!sim->replicas[r].up)
                        sim->replicas[r].restart_at_ns = sim->now_ns;
        sim_note(sim, "faults stop: healing");
}

/* ---- liveness and the final checks ------------------------------------------------------- */

static int ledger_digest_write(void *context, const void *data, size_t size)
{
        checksum_stream_add(context, data, size);
        return 0;
}

/* The digest of everything the ledger holds (it reads every block of its trees). */
static bool ledger_digest(struct ledger *ledger, u128 *digest)
{
        struct checksum_stream stream;
        checksum_stream_init(&stream);
        struct ledger_stream s = {.write = ledger_digest_write, .context = &stream};
        if (ledger_checkpoint_write(ledger, &s) != 0)
                return false;
        *digest = checksum_stream_final(&stream);
        return true;
}

/*
 * Grid damage that no op has read yet: every block a replica's trees name is read, as a
 * scrubber would, on replicas with damage. True if none is found; else the replica found
 * damaged restarts to repair (the run goes on until it has caught up).
 */
static bool grid_scrubbed(struct sim *sim)
{
        bool clean = true;
        for (uint32_t r = 0; r < sim->replica_count && !sim->failed; r++) {
                struct sim_replica *sr = &sim->replicas[r];
                u128 digest;
                sr->disk.grid_met = false;
                if (!sim_disk_damaged(sim, &sr->disk) || ledger_digest(sr->ledger, &digest))
                        continue;
                clean = false;
                if (!sim_grid_fault_injected(sim, sr, "scrub"))
                        return false;
                sim_note(sim, "replica %u: the scrub found a damaged block", r);
                sr->fault_mode = SIM_FAULT_MODE_REPAIR;
                sim_replica_faulted(sim, sr);
        }
        return clean;
}

/* True once every client completed a request sent after healing and all replicas agree. */
static bool healed(struct sim *sim)
{
        if (!sim->workload_stopped) {
                for (uint32_t i = 0; i < sim->client_count; i++)
                        if (sim->clients[i].acked_after_heal == 0)
                                return false;
                sim->workload_stopped = true;
        }
        for (uint32_t i = 0; i < sim->client_count; i++)
                if (sim->clients[i].state == SIM_CLIENT_IN_FLIGHT)
                        return false;
        for (uint32_t r = 0; r < sim->replica_count; r++) {
                const struct sim_replica *sr = &sim->replicas[r];
                if (!sr->up || sr->replica.commit != sim->commit_max)
                        return false;
        }
        return grid_scrubbed(sim);
}

static void liveness_failure(struct sim *sim)
{
        char text[400];
        size_t used = 0;
        for (uint32_t r = 0; r < sim->replica_count && used < sizeof(text); r++) {
                const struct sim_replica *sr = &sim->replicas[r];
                used += (size_t)snprintf(text + used, sizeof(text) - used,
                                         " r%u(%s view=%u op=%llu commit=%llu)", r,
                                         sr->up ? "up" : "down", sr->replica.view,
                                         (unsigned long long)sr->replica.op,
                                         (unsigned long long)sr->replica.commit);
        }
        uint32_t stuck = 0, never = 0;
        for (uint32_t i = 0; i < sim->client_count; i++) {
                stuck += sim->clients[i].state == SIM_CLIENT_IN_FLIGHT;
                never += sim->clients[i].acked_after_heal == 0;
        }
        sim_fail(sim, "liveness: not healed %llu ms after faults stopped: commit_max=%llu "
                      "clients_in_flight=%u clients_without_new_reply=%u;%s",
                 (unsigned long long)(sim->options.liveness_ticks * 10),
                 (unsigned long long)sim->commit_max, stuck, never, text);
}

static bool sessions_equal(const struct replica *a, const struct replica *b)
{
        uint32_t count_a = 0, count_b = 0;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                count_b += b->clients[i].used;
                if (!a->clients[i].used)
                        continue;
                count_a++;
                bool found = false;
                for (uint32_t j = 0; j < REPLICA_CLIENTS_MAX && !found; j++) {
                        const struct replica_client *x = &a->clients[i], *y = &b->clients[j];
                        found = y->used && y->client == x->client && y->session == x->session &&
                                y->request == x->request;
                }
                if (!found)
                        return false;
        }
        return count_a == count_b;
}

static void final_checks(struct sim *sim)
{
        for (uint64_t op = 1; op <= sim->commit_max; op++)
                if (!sim->ops[op].committed)
                        return sim_fail(sim, "op %llu below commit_max=%llu was never executed",
                                        (unsigned long long)op,
                                        (unsigned long long)sim->commit_max);
        for (uint32_t i = 0; i < sim->identity_count; i++) {
                const struct sim_identity *id = &sim->identities[i];
                for (uint32_t n = 1; n <= id->acked_max; n++) {
                        uint64_t op = n < id->request_op_capacity ? id->request_op[n] : 0;
                        for (uint32_t r = 0; r < sim->replica_count; r++)
                                if (op == 0 || sim->replicas[r].replica.commit < op)
                                        return sim_fail(sim, "client %u request %u was "
                                                             "acknowledged but replica %u lacks "
                                                             "it (op %llu, commit %llu)",
                                                        id->client, n, r,
                                                        (unsigned long long)op,
                                                        (unsigned long long)sim->replicas[r]
                                                                .replica.commit);
                }
        }
        u128 first = 0;
        for (uint32_t r = 0; r < sim->replica_count; r++) {
                u128 digest;
                if (!ledger_digest(sim->replicas[r].ledger, &digest))
                        return sim_fail(sim, "the ledger of replica %u cannot be read", r);
                if (r == 0)
                        first = digest;
                else if (digest != first)
                        return sim_fail(sim, "the ledgers of replicas 0 and %u differ", r);
                if (!sessions_equal(&sim->replicas[0].replica, &sim->replicas[r].replica))
                        return sim_fail(sim, "the session tables of replicas 0 and %u differ", r);
        }
        struct checksum_stream stream;
        checksum_stream_init(&stream);
        for (uint64_t op = 1; op <= sim->commit_max; op++)
                checksum_stream_add(&stream, &sim->ops[op].prepare_checksum, sizeof(u128));
        sim->report->digest = checksum_stream_final(&stream);
}

/* ---- the run ----------------------------------------------------------------------------- */

static void setup(struct sim *sim)
{
        uint32_t n = sim->options.replica_count;
        sim->replica_count = n;
        sim->quorum_faulty_max = (n - 1) / 2;
        sim_prng_init(&sim->prng, sim->options.seed);
        sim->realtime_base_ns = 1700000000ull * 1000000000ull +
                                sim_prng_below(&sim->prng, 1000000) * 1000000000ull;
        sim->ledger_config = (struct ledger_config){
                .accounts_max = 1024,
                .transfers_max = 1u << 20,
                .request_body_size_max = SIM_REQUEST_SIZE_MAX - WIRE_HEADER_SIZE,
                /* Small trees, so every flush, compaction and block read path runs here. */
                .grid_blocks_max = SIM_GRID_BLOCKS,
                .cache_bytes = 32u * LSM_BLOCK_SIZE,
                .memtable_max = 256,
                .table_data_blocks_max = 2,
                .beat_values = 64, /* compactions span operations and checkpoints */
        };
        sim->config = (struct replica_config){
                .cluster = ((u128)sim_prng_next(&sim->prng) << 64) | 1u,
                .replica_count = (uint8_t)n,
                .request_size_max = SIM_REQUEST_SIZE_MAX,
                .checkpoint_interval = SIM_CHECKPOINT_INTERVAL,
                .wal_slot_count = SIM_WAL_SLOTS,
        };
        sim->scratch = malloc(SIM_REQUEST_SIZE_MAX);
        sim->grid_scratch = malloc(LSM_BLOCK_SIZE);
        tally_assert(sim->scratch != NULL && sim->grid_scratch != NULL);
        sim_net_init(sim);
        for (uint32_t r = 0; r < n; r++) {
                struct sim_replica *sr = &sim->replicas[r];
                sr->sim = sim;
                sr->index = (uint8_t)r;
                sr->clock_skew_ns = (int64_t)ms(sim_prng_range(&sim->prng, 0, 100)) - (int64_t)ms(50);
                tally_assert(message_pool_init(&sr->pool, SIM_MESSAGES_PER_REPLICA) == 0);
                sim_disk_init(sim, &sr->disk);
        }
        sim->client_count = sim->options.client_count;
        sim->clients = calloc(sim->client_count, sizeof(*sim->clients));
        tally_assert(sim->clients != NULL);
        for (uint32_t i = 0; i < sim->client_count; i++)
                sim_client_init(sim, &sim->clients[i], i);
        sim->crash_next_ns = ms(sim_prng_range(&sim->prng, 200, 3000));
        sim->corrupt_next_ns = ms(sim_prng_range(&sim->prng, 200, 3000));
        sim_prng_init(&sim->grid_prng, sim->options.seed ^ 0x67726964666c7470ull);
        sim_prng_init(&sim->grid_write_prng, sim->options.seed ^ 0x6772696477726974ull);
        sim->grid_corrupt_next_ns = ms(sim_prng_range(&sim->grid_prng, 200, 3000));
        sim->grid_read_next_ns = ms(sim_prng_range(&sim->grid_prng, 200, 3000));
        sim->clock_next_ns = ms(sim_prng_range(&sim->prng, 200, 3000));
        sim->close_next_ns = ms(sim_prng_range(&sim->prng, 200, 3000));
        sim_forge_init(sim);
        sim->heal_ns = sim->options.ticks * SIM_TICK_NS;
        for (uint32_t r = 0; r < n && !sim->failed; r++)
                replica_start(sim, &sim->replicas[r]);
}

static void teardown(struct sim *sim)
{
        for (uint32_t r = 0; r < sim->replica_count; r++) {
                struct sim_replica *sr = &sim->replicas[r];
                struct sim_disk *disk = &sr->disk;
                for (uint32_t k = 0; k < disk->write_count; k++)
                        message_unref(&sr->pool,
                                      disk->writes[(disk->write_head + k) % SIM_WRITES_MAX].prepare);
                disk->write_count = 0;
                if (disk->checkpoint_pending) {
                        for (uint32_t i = 0; i < disk->checkpoint_next.reply_count; i++)
                                message_unref(&sr->pool, disk->checkpoint_next.replies[i].reply);
                        disk->checkpoint_pending = false;
                }
                if (sr->ledger != NULL) {
                        sr->up = false;
                        replica_stop(sim, sr, false);
                }
                message_pool_deinit(&sr->pool);
                sim_disk_deinit(disk);
        }
        for (uint32_t i = 0; i < sim->client_count; i++)
                sim_client_deinit(&sim->clients[i]);
        free(sim->clients);
        for (uint32_t i = 0; i < sim->identity_count; i++)
                free(sim->identities[i].request_op);
        free(sim->identities);
        free(sim->ops);
        free(sim->scratch);
        free(sim->grid_scratch);
        sim_net_deinit(sim);
        sim_forge_deinit(sim);
}

/* As the server's loop does between its turns: one op per resume, until none waits. */
static void commits_resume(struct sim *sim, struct sim_replica *sr)
{
        while (sr->up && !sim->failed && sr->replica.commit_deferred) {
                sim_enter(sr);
                SIM_REPLICA_CALL(sim, sr, replica_commit_resume(&sr->replica));
        }
}

static void step(struct sim *sim)
{
        sim->now_ns += SIM_STEP_NS;
        if (!sim->healing && sim->now_ns >= sim->heal_ns)
                heal(sim);
        if (!sim->healing)
                faults_step(sim);
        for (uint32_t r = 0; r < sim->replica_count && !sim->failed; r++) {
                struct sim_replica *sr = &sim->replicas[r];
                if (!sr->up && sim->now_ns >= sr->restart_at_ns)
                        replica_start(sim, sr);
                if (sr->up)
                        sim_disk_complete_due(sim, sr);
        }
        sim_net_deliver_due(sim);
        for (uint32_t r = 0; r < sim->replica_count && !sim->failed; r++)
                commits_resume(sim, &sim->replicas[r]);
        for (uint32_t r = 0; r < sim->replica_count && !sim->failed; r++) {
                struct sim_replica *sr = &sim->replicas[r];
                if (!sr->up || sim->now_ns < sr->tick_next_ns)
                        continue;
                sr->tick_next_ns += SIM_TICK_NS;
                if (sim_fault_on(sim, SIM_FAULT_CLOCK))
                        clock_drift(sim, sr);
                sim_enter(sr);
                SIM_REPLICA_CALL(sim, sr, replica_tick(&sr->replica));
                if (!sr->up)
                        continue;
                if (sr->disk.wiped)
                        sim_disk_heal_check(sim, sr);
                if (sr->disk.repair_catching_up &&
                    sr->replica.commit >= sr->disk.repair_commit_max) {
                        sr->disk.repair_catching_up = false;
                        sr->disk.repair_commit_max = 0;
                        sim_note(sim, "replica %u caught up after its grid repair", sr->index);
                }
                report_counters(sim, sr);
                if (sr->replica.view > sr->view_seen) {
                        sim->report->view_changes++;
                        sr->view_seen = sr->replica.view;
                }
                sim->report->view_max = MAX(sim->report->view_max, (uint64_t)sr->replica.view);
        }
        for (uint32_t i = 0; i < sim->client_count && !sim->failed; i++)
                sim_client_step(sim, &sim->clients[i]);
}

int sim_run(const struct sim_options *options, struct sim_report *report)
{
        struct sim *sim = calloc(1, sizeof(*sim));
        tally_assert(sim != NULL);
        memset(report, 0, sizeof(*report));
        sim->options = *options;
        sim_options_default(&sim->options);
        sim->report = report;
        tally_assert(sim->options.replica_count >= 1 &&
                     sim->options.replica_count <= SIM_REPLICAS_MAX);
        tally_assert(sim->options.client_count >= 1 &&
                     sim->options.client_count <= SIM_CLIENTS_MAX);
        setup(sim);
        uint64_t deadline = sim->heal_ns + sim->options.liveness_ticks * SIM_TICK_NS;
        while (!sim->failed) {
                step(sim);
                if (sim->healing && !sim->failed && healed(sim))
                        break;
                if (sim->now_ns >= deadline && !sim->failed)
                        liveness_failure(sim);
        }
        if (!sim->failed)
                final_checks(sim);
        report->ok = !sim->failed;
        report->time_ms = sim->now_ns / SIM_NS_PER_MS;
        report->ops_committed = sim->commit_max;
        teardown(sim);
        free(sim);
        return report->ok ? 0 : -1;
}
