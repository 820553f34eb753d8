/*
 * sim_internal.h: the simulator's parts, shared by sim.c (world, faults, checks), sim_net.c
 * (network), sim_disk.c (storage) and sim_client.c (clients). Not a public interface.
 */
#ifndef TALLY_SIM_INTERNAL_H
#define TALLY_SIM_INTERNAL_H

#include "ledger/ledger.h"
#include "sim/sim.h"
#include "lsm/device_memory.h"
#include "vsr/replica.h"
#include "wire/message.h"

#include <setjmp.h>

#define SIM_NS_PER_MS 1000000ull
#define SIM_STEP_NS SIM_NS_PER_MS         /* the simulation advances 1 ms at a time */
#define SIM_TICK_NS (10ull * SIM_NS_PER_MS) /* replica_tick() period, as start.c */
/* Development-like limits, small enough for many seeds per minute. */
#define SIM_REQUEST_SIZE_MAX 32768u
#define SIM_CHECKPOINT_INTERVAL 32u
#define SIM_WAL_SLOTS 128u /* >= 2 * interval + pipeline, as replica_init asserts */
#define SIM_MESSAGES_PER_REPLICA 512u
#define SIM_WRITES_MAX 64u           /* journal writes in flight per disk */
#define SIM_REPLY_SLOTS (2u * REPLICA_CLIENTS_MAX)
#define SIM_GRID_BLOCKS (1u << 16) /* grid addresses of a simulated disk (4 GiB) */
#define SIM_ENDPOINTS_MAX (SIM_REPLICAS_MAX + SIM_CLIENTS_MAX)
#define SIM_ACCOUNTS 48u
/* The outsider's connections carry this client index: no sim client, nothing is sent to it. */
#define SIM_OUTSIDER_CLIENT UINT32_MAX
#define SIM_FORGE_CAPTURED 16u /* replica messages the outsider keeps to replay */ /* account ids 1..48: small, so events collide and fail in every way */

/* ---- PRNG: xoshiro256**, seeded by splitmix64 ------------------------------------------- */

struct sim_prng {
        uint64_t s[4];
};

void sim_prng_init(struct sim_prng *prng, uint64_t seed);
uint64_t sim_prng_next(struct sim_prng *prng);
/* Uniform in [0, n); n > 0. */
uint64_t sim_prng_below(struct sim_prng *prng, uint64_t n);
/* Uniform in [lo, hi]. */
uint64_t sim_prng_range(struct sim_prng *prng, uint64_t lo, uint64_t hi);
/* True with probability ppm / 1e6. */
bool sim_prng_chance(struct sim_prng *prng, uint32_t ppm);

/* ---- Disk ---------------------------------------------------------------------------------- */

#define SIM_GRID_DAMAGE_MAX 16u /* damaged blocks a disk keeps track of */

enum sim_grid_damage_kind {
        SIM_GRID_ROT = 1, /* a bit flipped at rest (grid-corrupt) */
        SIM_GRID_STALE,   /* a misdirected write never reached it: it holds what it held */
        SIM_GRID_OVER,    /* a misdirected write for another address overwrote it */
        SIM_GRID_TORN,    /* a prefix of the block being written when the replica crashed */
};

/* A block that reads back wrong until it is written again. */
struct sim_grid_damage {
        uint64_t address;
        uint8_t kind; /* enum sim_grid_damage_kind */
};

/* Grid writes a simulated disk holds in flight (the server's storage holds up to 64). */
#define SIM_GRID_PENDING_MAX 8u

struct sim_grid_pending {
        uint64_t address; /* 0: free */
        uint8_t *block;   /* LSM_BLOCK_SIZE */
};


struct sim_write {
        struct message *prepare; /* referenced until done */
        void (*done)(void *replica, struct message *prepare);
        void *done_context;
        uint64_t at_ns;
};

struct sim_disk {
        /* Durable contents: what survives a crash. */
        struct replica_view_state view_state; /* as formatted: {.fresh = true} */
        bool checkpoint_present;
        struct lsm_block_ref checkpoint_root;
        uint64_t checkpoint_blocks;
        uint64_t checkpoint_op;
        u128 checkpoint_prepare_checksum;
        uint64_t checkpoint_timestamp;
        uint8_t (*headers)[WIRE_HEADER_SIZE]; /* the WAL headers zone, one per slot */
        uint8_t **prepares;                   /* the WAL prepares zone (allocated lazily) */
        uint8_t **replies;                    /* the client replies zone (allocated lazily) */
        /*
         * The grid: the ledger writes its blocks here directly. A crash loses none of them,
         * which is sound: blocks the durable checkpoint names are never overwritten before a
         * newer one is durable, and any other block is free after a restart.
         */
        struct lsm_device_memory grid;
        /*
         * Grid damage (sim_disk.c, "the grid"). ROT, STALE and OVER blocks may be named by the
         * durable checkpoint, so they count as damage that sim_damage_allowed bounds; a TORN
         * block never is (it was being written after that checkpoint), so reading one is a
         * bug. `grid_met` says whether a read of the current call into the replica met
         * injected damage (or an injected read error), so the fault handler can tell it from
         * damage nobody injected.
         */
        struct sim_grid_damage grid_damage[SIM_GRID_DAMAGE_MAX];
        uint32_t grid_damage_count;
        uint64_t grid_written_max; /* the highest address ever written */
        bool grid_met;
        bool grid_read_armed; /* the next block read fails (SIM_FAULT_GRID_READ) */
        /* Until our next checkpoint is durable, the replica may be without one (a repair, or a
         * failed read while opening it): counted as damage. */
        bool grid_repairing;
        /*
         * Grid writes not yet landed: as the server's storage does, a write returns before its
         * block reaches the disk. Each lands at a later write, in any order, or when the
         * ledger waits for them all (lsm_device.flush, before a checkpoint names them); a
         * read of one is answered from it; a crash lands, tears or loses each.
         */
        struct sim_grid_pending grid_pending[SIM_GRID_PENDING_MAX];
        uint32_t grid_pending_count;
        /* What each read of the last read_many_start said (lsm_grid_prefetch). */
        int grid_read_many_results[LSM_GRID_PREFETCH_MAX];
        /* Damage the fault model must account for: the op of a lost or corrupt entry, 0 if none. */
        uint64_t *damaged_op;
        bool wiped;               /* re-formatted, and not yet caught up */
        uint64_t wiped_commit_max; /* what the cluster may have committed at the wipe */
        /*
         * Restarted to copy a peer's checkpoint (a grid fault): it starts without state and
         * does not use its journal, so the prepares it acknowledged since its checkpoint are
         * lost to the cluster until it commits what the cluster may have committed then
         * (repair_commit_max). Until that, it is one of the faulty ones, as a wiped one is,
         * even once its copied checkpoint is durable.
         */
        bool repair_catching_up;
        uint64_t repair_commit_max;

        /* In flight: lost at a crash (or torn, for journal writes). */
        struct sim_write writes[SIM_WRITES_MAX];
        uint32_t write_head;
        uint32_t write_count;
        bool view_pending;
        struct replica_view_state view_state_next;
        uint64_t view_at_ns;
        void (*view_done)(void *replica);
        void *view_done_context;
        bool checkpoint_pending;
        uint64_t checkpoint_at_ns;
        struct replica_checkpoint checkpoint_next;
        void (*checkpoint_done)(void *replica, bool ok);
        void *checkpoint_done_context;
};

/* ---- Replicas, clients, network ----------------------------------------------------------- */

struct sim;

struct sim_replica {
        struct sim *sim;
        uint8_t index;
        bool up;
        bool wipe_on_restart;
        uint64_t restart_at_ns;
        uint32_t incarnation; /* +1 per crash: messages of an older one are gone with it */
        /*
         * Every call into the replica runs under SIM_REPLICA_CALL: a grid fault (the ledger's
         * on_fault, or a crash injected in a block write) longjmps back to it, and the replica
         * crashes there. `guarded` while such a call runs; `opening` in replica_open.
         */
        jmp_buf fault_jump;
        bool guarded;
        bool opening;
        uint8_t fault_mode; /* enum sim_fault_mode, why it unwound */
        struct replica replica;
        struct ledger *ledger;
        struct message_pool pool;
        struct sim_disk disk;
        int64_t clock_skew_ns;
        uint64_t tick_next_ns;
        uint32_t view_seen;
        uint64_t sync_prepares_seen; /* replica.stats.state_sync_prepares already reported */
        uint64_t sync_retargets_seen; /* replica.stats.state_sync_retargets already reported */
        uint64_t blocks_repaired_seen; /* replica.stats.grid_blocks_repaired already reported */
        uint64_t parked_seen;        /* replica.stats.requests_parked already reported */
        /* Connection ids this replica sees messages from each peer on (0: none yet). */
        replica_connection peer_connection[SIM_REPLICAS_MAX];
};

enum sim_client_state {
        SIM_CLIENT_UNREGISTERED,
        SIM_CLIENT_READY,
        SIM_CLIENT_IN_FLIGHT,
};

/* One client id: a client gets a new one when it is evicted and registers again. */
struct sim_identity {
        u128 id;
        uint32_t client;         /* index of the sim client that used it */
        uint64_t register_op;    /* the op its register committed at (0: not yet) */
        uint64_t *request_op;    /* [request number]: the op it committed at, 0 if none */
        uint32_t request_op_capacity;
        uint32_t acked_max;      /* highest request number whose reply the client accepted */
};

struct sim_client {
        uint32_t index;
        uint32_t identity;
        u128 id;
        bool single;            /* given one address (a Service-like entry), not all */
        uint8_t single_replica;
        enum sim_client_state state;
        uint32_t view;
        uint64_t session;
        uint32_t request_number; /* of the request in flight or last sent */
        u128 parent;
        uint8_t *request;        /* the request in flight, retransmitted byte for byte */
        uint8_t operation;
        uint32_t expected_results_max;
        uint64_t first_sent_ns;
        uint64_t timeout_ns;
        uint32_t attempts;
        uint64_t rtt_ns;
        uint64_t think_until_ns;
        uint64_t ping_next_ns;
        replica_connection connection[SIM_REPLICAS_MAX];
        u128 pending_ids[16]; /* pending transfers it created, to post or void */
        uint32_t pending_id_count;
        uint64_t acked;
        uint64_t acked_after_heal;
};

struct sim_connection {
        bool open;
        bool peer;      /* replica-to-replica */
        uint8_t replica; /* the replica end (for a peer link: the receiving replica) */
        uint8_t other;   /* the peer replica, for a peer link */
        uint32_t client;
};

struct sim_packet {
        uint64_t at_ns;
        uint64_t sequence; /* ties broken in send order */
        uint16_t from;     /* endpoint: replicas 0..n-1, clients n.. */
        uint16_t to;
        uint32_t from_incarnation;
        replica_connection connection; /* client links; 0 on replica-to-replica messages */
        uint32_t size;
        uint8_t *bytes;
};

/* What the first replica to commit an op computed; every other must compute the same. */
struct sim_op {
        bool committed;
        bool has_reply;
        uint8_t operation;
        uint32_t request;
        u128 client;
        u128 prepare_checksum;
        u128 reply_digest; /* reply header (view, replica, checksums, context zeroed) and body */
        u128 reply_context;
        uint8_t context_replica; /* who computed reply_context */
};

struct sim_network {
        struct sim_packet *heap;
        uint32_t heap_count;
        uint32_t heap_capacity;
        uint64_t sequence;
        uint32_t loss_ppm;
        uint32_t duplicate_ppm;
        uint32_t delay_min_ms;
        uint32_t delay_max_ms;
        uint64_t next_change_ns;
        uint64_t partition_until_ns;
        uint64_t partition_next_ns;
        bool blocked[SIM_ENDPOINTS_MAX][SIM_ENDPOINTS_MAX]; /* [from][to] */
        struct sim_connection *connections; /* connection id c is connections[c - 1] */
        uint32_t connection_count;
        uint32_t connection_capacity;
};

struct sim {
        struct sim_options options;
        struct sim_report *report;
        struct sim_prng prng;
        uint64_t now_ns;
        uint64_t heal_ns; /* when the fault phase ends */
        bool healing;
        bool workload_stopped;
        bool failed;
        uint32_t replica_count;
        uint32_t quorum_faulty_max; /* replicas whose storage may be damaged at once */
        struct replica_config config;
        struct ledger_config ledger_config;
        struct sim_replica replicas[SIM_REPLICAS_MAX];
        struct sim_client *clients;
        uint32_t client_count;
        struct sim_identity *identities;
        uint32_t identity_count;
        uint32_t identity_capacity;
        struct sim_op *ops;
        uint64_t op_capacity;
        uint64_t commit_max;
        struct sim_network net;
        uint64_t crash_next_ns;
        uint64_t corrupt_next_ns;
        /* The grid faults' own random stream (sim_disk.c), so they shift no other fault. */
        struct sim_prng grid_prng;
        /* When grid writes in flight land, and what a crash does to each: a stream of its
         * own, so that modelling them reshuffles none of the faults. */
        struct sim_prng grid_write_prng;
        uint64_t grid_corrupt_next_ns;
        uint64_t grid_read_next_ns;
        uint64_t clock_next_ns;
        uint64_t close_next_ns;
        uint64_t realtime_base_ns;
        /* The outsider (SIM_FAULT_FORGE): its own PRNG, so that it never shifts the others. */
        struct sim_prng forge_prng;
        uint64_t forge_next_ns;
        replica_connection forge_connection[SIM_REPLICAS_MAX];
        uint8_t *forge_captured[SIM_FORGE_CAPTURED];
        uint32_t forge_captured_size[SIM_FORGE_CAPTURED];
        uint8_t *scratch; /* SIM_REQUEST_SIZE_MAX */
        uint8_t *grid_scratch; /* LSM_BLOCK_SIZE: a torn block being put together */
};

/* Replica log lines say which replica speaks: set before every call into a replica. */
void sim_enter(const struct sim_replica *sr);

enum sim_fault_mode {
        SIM_FAULT_MODE_CRASH = 1,  /* the process died (a crash in a block write, an abort) */
        SIM_FAULT_MODE_REPAIR = 2, /* damage found: restart without state and copy a peer's */
};

/*
 * Runs `call`, a call into replica `sr`. If a grid fault unwinds out of it (sim_grid_unwind),
 * the replica's in-memory state is half updated: it is crashed (sim_replica_faulted) and must
 * not be touched again; callers test sr->up afterwards before using its pool. A call made while
 * one is already running (a nested call into the same replica) uses the outer one's jump.
 */
#define SIM_REPLICA_CALL(sim, sr, call)                                 \
        do {                                                            \
                if ((sr)->guarded) {                                    \
                        call;                                           \
                        break;                                          \
                }                                                       \
                if (setjmp((sr)->fault_jump) == 0) {                    \
                        (sr)->guarded = true;                           \
                        (sr)->disk.grid_met = false;                    \
                        call;                                           \
                        (sr)->guarded = false;                          \
                } else {                                                \
                        (sr)->guarded = false;                          \
                        sim_replica_faulted(sim, sr);                   \
                }                                                       \
        } while (0)

/* Unwinds to the replica's SIM_REPLICA_CALL (it must be running one). */
_Noreturn void sim_grid_unwind(struct sim_replica *sr, enum sim_fault_mode mode);
/* After the unwind: the replica crashes (and, for a repair, restarts to copy a checkpoint). */
void sim_replica_faulted(struct sim *sim, struct sim_replica *sr);

/* sim.c */
void sim_fail(struct sim *sim, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sim_note(struct sim *sim, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool sim_fault_on(const struct sim *sim, enum sim_fault fault);
void sim_count_fault(struct sim *sim, enum sim_fault fault);
/* True if replica `r` may take storage damage now without risking acknowledged data. */
bool sim_damage_allowed(struct sim *sim, uint32_t r);
uint64_t sim_realtime_ns(struct sim *sim, uint32_t r);
/* A reply's identity: header (view, replica, checksum and context zeroed) and body. */
u128 sim_reply_digest(const struct wire_header *reply, const uint8_t *body);

/* sim_net.c */
void sim_net_init(struct sim *sim);
void sim_net_deinit(struct sim *sim);
replica_connection sim_connection_open(struct sim *sim, bool peer, uint32_t replica,
                                       uint32_t other_or_client);
struct sim_connection *sim_connection_get(struct sim *sim, replica_connection id);
/* Closes it on both ends: the replica is told (if up), the client forgets it. */
void sim_connection_close(struct sim *sim, replica_connection id);
/* Queues a copy of `bytes` from endpoint `from` to `to`, through the faults. */
void sim_net_send(struct sim *sim, uint32_t from, uint32_t to, replica_connection connection,
                  const uint8_t *bytes, uint32_t size);
void sim_net_deliver_due(struct sim *sim);
void sim_net_faults_step(struct sim *sim);
void sim_net_heal(struct sim *sim);
/* The env functions of a replica that touch the network. */
bool sim_env_send(void *context, replica_connection connection, struct message *message);
bool sim_env_connection_alive(void *context, replica_connection connection);
bool sim_env_connection_is_replica(void *context, replica_connection connection);
int sim_env_connection_replica(void *context, replica_connection connection);
bool sim_env_reply_read(void *context, uint32_t slot, u128 checksum, struct message *into);
/* Replica `r` just started: it and every other replica that is up connect to each other. */
void sim_net_connect_peers(struct sim *sim, uint32_t r);
void sim_env_send_to_replica(void *context, uint8_t replica, struct message *message);

/* sim_disk.c */
void sim_disk_init(struct sim *sim, struct sim_disk *disk);
void sim_disk_deinit(struct sim_disk *disk);
/* Wipes to a freshly formatted state. */
void sim_disk_format(struct sim *sim, struct sim_disk *disk);
void sim_disk_complete_due(struct sim *sim, struct sim_replica *sr);
/* A crash: writes in flight land, tear or vanish; references are released. */
void sim_disk_crash(struct sim *sim, struct sim_replica *sr);
void sim_disk_corrupt_one(struct sim *sim, struct sim_replica *sr);
/* The grid device of a replica: its disk's blocks, through the grid faults. */
struct lsm_device sim_grid_device(struct sim_replica *sr);
/* A crash: each grid write in flight lands whole, torn or not at all (sim_disk_crash). */
void sim_grid_crash(struct sim *sim, struct sim_replica *sr);
/* A bit flips in a block of the grid at rest (SIM_FAULT_GRID_CORRUPT). */
void sim_grid_corrupt_one(struct sim *sim, struct sim_replica *sr);
/* The ledger found a block damaged: true if the simulator damaged it (else a bug, failed). */
bool sim_grid_fault_injected(struct sim *sim, struct sim_replica *sr, const char *fault);
bool sim_disk_damaged(const struct sim *sim, const struct sim_disk *disk);
/* True if the disk durably holds this prepare (or a checkpoint past it). */
bool sim_disk_holds(struct sim *sim, struct sim_replica *sr, const struct wire_header *prepare);
void sim_disk_heal_check(struct sim *sim, struct sim_replica *sr);
/* Fills `durable` from the disk; the checkpoint blob is materialized into `blob`. */
void sim_disk_durable(struct sim *sim, struct sim_replica *sr, struct replica_durable *durable);
bool sim_env_journal_write(void *context, struct message *prepare,
                           void (*done)(void *replica, struct message *prepare), void *replica);
bool sim_env_journal_read(void *context, uint64_t op, u128 checksum, struct message *into);
bool sim_env_view_write(void *context, const struct replica_view_state *state,
                        void (*done)(void *replica), void *replica);
bool sim_env_checkpoint(void *context, const struct replica_checkpoint *checkpoint,
                        void (*done)(void *replica, bool ok), void *replica);

/* sim_forge.c */
void sim_forge_init(struct sim *sim);
void sim_forge_deinit(struct sim *sim);
/* A replica-to-replica message on the network: the outsider may keep a copy to replay. */
void sim_forge_capture(struct sim *sim, const uint8_t *bytes, uint32_t size);
void sim_forge_step(struct sim *sim);

/* sim_client.c */
void sim_client_init(struct sim *sim, struct sim_client *client, uint32_t index);
void sim_client_deinit(struct sim_client *client);
void sim_client_step(struct sim *sim, struct sim_client *client);
void sim_client_on_message(struct sim *sim, struct sim_client *client, uint32_t replica,
                           const uint8_t *bytes, uint32_t size);
/* The connection to `replica` was closed. */
void sim_client_on_close(struct sim *sim, struct sim_client *client, uint32_t replica);
struct sim_identity *sim_identity_find(struct sim *sim, u128 id);

#endif
