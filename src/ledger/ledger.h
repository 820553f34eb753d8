/*
 * ledger.h: the state machine, TigerBeetle 0.16.68's double-entry rules, behind one interface.
 *
 * The replica hands the ledger each committed operation in op order together with the
 * timestamp the primary assigned; the ledger returns the reply body. It performs no I/O, reads
 * no clock and no randomness, so every replica that executes the same prepares in the same
 * order holds byte-identical state and produces byte-identical replies.
 *
 * The state lives in LSM trees on a grid of blocks (ledger_internal.h), read through a block
 * cache of fixed size, so memory is fixed at ledger_create() whatever the ledger holds.
 */
#ifndef TALLY_LEDGER_H
#define TALLY_LEDGER_H

#include "lib/common.h"
#include "lsm/grid.h"

/* The largest body of a message: 1 MiB minus the 256-byte header. */
#define LEDGER_BODY_SIZE_MAX 1048320u
/* Timestamp slots a pulse reserves: the largest unbatched create_transfers batch. */
#define LEDGER_PULSE_TIMESTAMP_DELTA 8190u

struct ledger_config {
        /*
         * Bounds of the checkpoint stream (ledger_checkpoint_write) only: the trees hold as much
         * as the grid does. They go with the stream once checkpoints are grid roots.
         */
        uint64_t accounts_max;
        uint64_t transfers_max;
        /* Where the trees' blocks live; no read function: in memory (lsm/device_memory.h). */
        struct lsm_device device;
        uint64_t grid_blocks_max; /* addresses of the grid; 0: 2^24 (1 TiB) */
        uint64_t cache_bytes;     /* the block cache; 0: 64 MiB */
        uint32_t memtable_max;    /* values per tree between flushes; 0: 131,072 */
        uint32_t table_data_blocks_max; /* 0: the LSM's default (tests make small tables) */
        uint32_t beat_values; /* compaction per tree per operation; 0: 32,768 */
        /*
         * Merge compactions on a second thread (lsm/compactor.h) through `worker_device`: the
         * grid's device for another thread (storage_grid_device_worker), or none with the
         * in-memory device, which both threads may use. Replicas write the same blocks either
         * way; without it (or if the thread cannot start) jobs merge in the loop by beats.
         */
        bool compaction_worker;
        struct lsm_device worker_device;
        /* The request body limit advertised to clients (batch_size_limit); bounds events.
         * 0 means LEDGER_BODY_SIZE_MAX. */
        uint32_t request_body_size_max;
        /*
         * Called when the state cannot be read or written (a block that fails its checks or its
         * read, a failed write), after the fault is logged and before the process aborts:
         * `damaged` when a block read back wrong or could not be read (a peer of a cluster
         * holds a good copy), false for a failed write. It must not return to the ledger (it
         * exits or re-executes the process); if it returns, the ledger aborts. NULL: abort.
         */
        void (*on_fault)(void *context, const char *fault, bool damaged);
        void *on_fault_context;
};

/*
 * Result code of every event of a create batch that ledger_execute() refuses because the batch
 * could exceed accounts_max / transfers_max (only possible if the replica ignored
 * ledger_capacity_available()). The batch then has no effect at all. Not a TigerBeetle code.
 */
#define LEDGER_RESULT_CAPACITY_EXHAUSTED 0xFFFFFFFFu

struct ledger;

/* Bytes of memory ledger_create() reserves for this configuration. */
uint64_t ledger_memory_bytes(const struct ledger_config *config);

/* Reserves all memory. Returns NULL (and logs why) if it cannot. */
struct ledger *ledger_create(const struct ledger_config *config);
void ledger_destroy(struct ledger *ledger);

/* True for operations the state machine executes for clients (129..145). */
bool ledger_operation_valid(uint8_t operation);

/*
 * Input validation of a request body, before it is prepared: multi-batch framing, body size a
 * multiple of the event size, events per batch, one filter per query batch, worst-case reply
 * fits. False means the primary evicts the client with reason invalid_request_body.
 */
bool ledger_input_valid(const struct ledger *ledger, uint8_t operation, const uint8_t *body,
                        uint32_t body_size);

/*
 * How far the operation advances the cluster timestamp: the number of events over all batches
 * for create operations, LEDGER_PULSE_TIMESTAMP_DELTA for pulse, 0 otherwise.
 * Only called on bodies that passed ledger_input_valid().
 */
uint32_t ledger_timestamp_delta(uint8_t operation, const uint8_t *body, uint32_t body_size);

/*
 * Worst-case capacity check before preparing: false if executing this request (on top of
 * `events_in_flight` not yet executed create events) could exceed a configured capacity. The
 * replica refuses such a request rather than let the ledger run out mid-batch.
 */
bool ledger_capacity_available(const struct ledger *ledger, uint8_t operation,
                               const uint8_t *body, uint32_t body_size,
                               uint64_t events_in_flight);

/*
 * Executes one committed operation with the timestamp T the primary assigned (see
 * ledger-semantics.md section 2) and writes the reply body to `reply` (room for
 * LEDGER_BODY_SIZE_MAX bytes). Returns the reply body size. The body passed
 * ledger_input_valid(). OPERATION_PULSE (128) expires pending transfers; its reply is empty.
 */
uint32_t ledger_execute(struct ledger *ledger, uint8_t operation, uint64_t timestamp,
                        const uint8_t *body, uint32_t body_size, uint8_t *reply);
/*
 * ledger_execute in two steps, for a caller that sends the reply before the op's writes are
 * applied: begin runs the rules and writes the reply body, which is final; finish applies the
 * op's writes to the trees (the flushes that make room, memtables, the compaction beat: about
 * half a batch's time) and must come before anything else touches the ledger. Results and
 * state are exactly ledger_execute's.
 */
uint32_t ledger_execute_begin(struct ledger *ledger, uint8_t operation, uint64_t timestamp,
                              const uint8_t *body, uint32_t body_size, uint8_t *reply);
void ledger_execute_finish(struct ledger *ledger);

/*
 * True if a pulse prepared now, with a timestamp of at least `timestamp`, would expire at
 * least one pending transfer. The primary checks this on a timer and prepares a pulse.
 */
bool ledger_pulse_needed(const struct ledger *ledger, uint64_t timestamp);
/*
 * While deferred, operations do no compaction (no beats, no back-pressure): a restart replays
 * the journal since its checkpoint this way, so it serves sooner. The compaction a replay
 * would have done comes after, paced: a tree whose level 0 is over its budget then is paced
 * against a level 0 allowed one stall's worth of tables more, until it is back within budget.
 */
void ledger_defer_compaction(struct ledger *ledger, bool defer);

/* Counters for metrics and the README's memory figures. */
struct ledger_stats {
        uint64_t accounts;
        uint64_t transfers;
        uint64_t pending_live;
        uint64_t history_records;
        uint64_t memory_bytes;
        uint64_t grid_blocks_read;    /* from the device: cache misses */
        uint64_t grid_pages_read;     /* 4 KiB filter pages read past the cache */
        uint64_t grid_blocks_written;
        uint64_t grid_cache_hits;
        uint64_t grid_blocks_used;
        uint64_t grid_address_max; /* the highest grid address ever used */
        /* Background work of the trees, summed over every tree (a slow op says what it did). */
        uint64_t tree_flushes;
        uint64_t tree_tables_written;
        uint64_t tree_values_compacted;
        uint64_t forced_compactions; /* level 0 ran over twice its budget: compacted at once */
        /* The loop waited for the compaction worker (lsm/compactor.h): how often, how long. */
        uint64_t compaction_waits;
        uint64_t compaction_wait_ns;
        /* The worker's time merging, and its chunks of merging begun and ended (it was merging
         * during an op iff one was in progress before it or one began during it). */
        uint64_t compaction_busy_ns;
        uint64_t compaction_chunks_started;
        uint64_t compaction_chunks_ended;
        /* The last checkpoint's own blocks (manifest log, free set, root), of them the manifest
         * log's, and the log's blocks and the tables it lists after it. */
        uint64_t checkpoint_blocks_written;
        uint64_t manifest_blocks_written;
        uint64_t manifest_blocks;
        uint64_t tables;
};
void ledger_get_stats(const struct ledger *ledger, struct ledger_stats *stats);

/*
 * Offline check of the ledger's invariants (ledger_verify.c says which): 0, or -1 with the
 * first violation in `error`. Allocates scratch memory; for tools, never the replica.
 */
struct ledger_verify_report {
        uint64_t accounts;
        uint64_t transfers;
        uint64_t ledgers;
};
int ledger_verify(struct ledger *ledger, struct ledger_verify_report *report, char *error,
                  size_t error_size);

/*
 * Checkpoints: the whole state as a byte stream, read back bit for bit. The stream carries its
 * own format version and checksum; ledger_checkpoint_read() refuses a damaged stream.
 */
struct ledger_stream {
        /* Returns 0 on success, -1 on an error (the whole operation then fails). */
        int (*write)(void *context, const void *data, size_t size);
        /*
         * Optional. Bytes of an append-only array that never change again while the ledger
         * lives (only appends and rollbacks above them happen), always whole multiples of
         * LEDGER_CHECKPOINT_ALIGN at an aligned stream offset: the writer may reference them
         * instead of copying. NULL: everything goes through write().
         */
        int (*write_stable)(void *context, const void *data, size_t size);
        int (*read)(void *context, void *data, size_t size);
        void *context;
};
#define LEDGER_CHECKPOINT_ALIGN (1u << 20) /* every part starts at a multiple of this */
int ledger_checkpoint_write(struct ledger *ledger, struct ledger_stream *stream);
/* Replaces the ledger's state. On failure the ledger is left empty (as created). */
int ledger_checkpoint_read(struct ledger *ledger, struct ledger_stream *stream);

/*
 * Checkpoints as roots in the grid (config.device): flushes every tree and writes a checkpoint
 * of the forest carrying `user` bytes (the replica's sessions), then *root names it. Blocks the
 * previous checkpoint used stay allocated until ledger_checkpoint_durable() says this one is
 * durable, so a crash before that finds the previous one whole. False on a device fault or a
 * full grid (logged).
 */
#define LEDGER_CHECKPOINT_USER_MAX 7936u
bool ledger_checkpoint(struct ledger *ledger, const void *user, uint32_t user_size,
                       struct lsm_block_ref *root);
void ledger_checkpoint_durable(struct ledger *ledger);
/*
 * Replaces the state with the checkpoint `root` names on the device and copies its user bytes
 * into `user` (room for LEDGER_CHECKPOINT_USER_MAX; *user_size set). 0, or -1 with the reason
 * in `error` if a block is unreadable or damaged (the ledger is then empty).
 */
int ledger_open(struct ledger *ledger, struct lsm_block_ref root, void *user,
                uint32_t *user_size, char *error, size_t error_size);
/*
 * Calls `visit` for every block of the checkpoint `root` names (root first), as state sync and
 * backups copy them. 0, visit's first non-zero result, or -2 if a block is unreadable.
 */
int ledger_checkpoint_blocks(struct ledger *ledger, struct lsm_block_ref root,
                             int (*visit)(void *context, struct lsm_block_ref ref, uint8_t kind),
                             void *context);
/* ledger_checkpoint_blocks with lsm_forest_blocks_known's `table_known` (lsm/forest.h). */
int ledger_checkpoint_blocks_known(struct ledger *ledger, struct lsm_block_ref root,
                                   int (*visit)(void *context, struct lsm_block_ref ref,
                                                uint8_t kind),
                                   int (*table_known)(void *context, struct lsm_block_ref index),
                                   void *context);

/*
 * Blocks as state sync and backups move them. ledger_block_read: the block `ref` names, read
 * from the device (not the cache) and checked; 0 or -1 (damaged or unreadable, logged).
 * ledger_block_install: writes a block received from elsewhere at the address its header
 * names, after checking that it is whole (its own checksum); 0 or -1 (damaged, or the write
 * failed). Installing blocks overwrites whatever the grid held there: the ledger is unusable
 * until ledger_open(). ledger_blocks_flush: waits until every block written so far has landed
 * (the device's writes may return first), and stops the ledger (ledger_fault) if one failed:
 * after a failed install, and before a copied checkpoint is installed. Once an asynchronous
 * write has failed every later one fails, so a copy would only fail again.
 */
int ledger_block_read(struct ledger *ledger, struct lsm_block_ref ref, uint8_t *block);
int ledger_block_install(struct ledger *ledger, const uint8_t *block);
void ledger_blocks_flush(struct ledger *ledger);
/*
 * True if the device holds the block `ref` names, whole (read into `block`, LSM_BLOCK_SIZE);
 * false, silently, if not: state sync asks this of every block of a peer's checkpoint.
 */
bool ledger_block_present(struct ledger *ledger, struct lsm_block_ref ref, uint8_t *block);
/*
 * The block the last failed grid read was after, if that read found it damaged or unreadable
 * (a peer may hold a good copy: replica_sync.c repairs it); false after a write fault.
 */
bool ledger_damaged_block(const struct ledger *ledger, struct lsm_block_ref *ref);
/* Forgets that block, so that ledger_damaged_block names only one a later read found. */
void ledger_damaged_block_forget(struct ledger *ledger);
/* Drops every cached block: the next read of each goes to the device (tests of disk damage). */
void ledger_cache_drop(struct ledger *ledger);
/* The highest grid address this ledger's device takes (state sync checks a peer's list). */
uint64_t ledger_grid_blocks_max(const struct ledger *ledger);
/* The caller's user bytes of a checkpoint's root block; -1 if it is not one. */
int ledger_root_user(const uint8_t *root_block, void *user, uint32_t *user_size);
/*
 * Keeps the blocks of every checkpoint up to now readable until ledger_unhold (a backup copies
 * the durable one): blocks later checkpoints free are not reused meanwhile. 0 or -1.
 */
int ledger_hold(struct ledger *ledger);
void ledger_unhold(struct ledger *ledger);

/* Grid addresses 1..blocks stay untouched until the next durable checkpoint (conversions). */
void ledger_grid_reserve(struct ledger *ledger, uint64_t blocks);

/* A stream reading a checkpoint from memory: {.read = ledger_memory_read, .context = &r}. */
struct ledger_memory_reader {
        const uint8_t *data;
        uint64_t size;
        uint64_t offset;
};
int ledger_memory_read(void *context, void *data, size_t size);

#endif
