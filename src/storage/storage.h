/*
 * storage.h: the data file. One preallocated file per replica, in fixed zones:
 *
 *   superblock      SUPERBLOCK_COPIES copies of 4 KiB, each checksummed; the newest valid
 *                   copy (highest sequence) is the truth
 *   wal headers     wal_slot_count x 256 B: the header of each journaled prepare
 *   wal prepares    wal_slot_count x message_size_max: each journaled prepare, whole
 *   client replies  clients_max x message_size_max: cached replies of client sessions
 *   grid            grid_size bytes: the ledger's LSM blocks (lsm/grid.h), block `a` at
 *                   grid_offset + (a - 1) x LSM_BLOCK_SIZE; the file grows as the ledger
 *                   writes further out
 *
 * A checkpoint is a root block in the grid (ledger_checkpoint): the superblock names it by
 * address and checksum. The ledger writes its blocks itself, through the device this storage
 * gives it (storage_grid_device); a checkpoint makes them durable with one sync, then writes the
 * replies and the superblock.
 *
 * `format` writes the superblock copies and sizes the file; `open` validates it and says
 * precisely what is wrong with a file that is not ours, damaged, or made for another replica.
 * Small journal writes are grouped: every prepare written before a sync starts is covered by
 * it, so one fdatasync serves a whole pipeline of prepares. A prepare of STORAGE_SELF_SYNC_MIN
 * bytes or more syncs itself instead: its writes are durable when they complete (RWF_DSYNC,
 * io_write_durable), with no turn of the loop between a write and its sync. That turn can be
 * long: the loop executes the previous batch meanwhile (15 ms for 8,189 transfers), and the
 * next prepare's sync, started only after, left it idle 1-3 ms per batch.
 *
 * One process per data file: `format` and a writing `open` hold an exclusive advisory lock on
 * the file for as long as it is open, a reading `open` a shared one, so a second replica on the
 * same file fails at once (naming the holder's pid) instead of silently overwriting the first's
 * acknowledged writes. See storage_lock in storage.c for why the lock is the kind it is.
 */
#ifndef TALLY_STORAGE_H
#define TALLY_STORAGE_H

#include "io/io.h"
#include "lib/histogram.h"
#include "lsm/grid.h"
#include "wire/message.h"

#define SUPERBLOCK_COPIES 4u
#define SUPERBLOCK_COPY_SIZE 4096u
#define STORAGE_FORMAT_VERSION 3u
/*
 * Format 2 (2026-12-02 to 2026-12-06): as format 3, but each checkpoint's root names every
 * manifest block, each table listed once, instead of the newest block of the manifest log
 * (lsm/manifest.h). Read as it is; the next checkpoint writes the log and makes the file
 * format 3, which a tally of format 2 refuses (it would read the log as a list).
 */
#define STORAGE_FORMAT_VERSION_LISTED_MANIFEST 2u
/*
 * Format 1 (until 2026-12): the ledger's whole state as one blob in 1 MiB grid blocks named by a
 * manifest block; the other zones are laid out as in format 2, and the superblock's fields
 * sit where format 2's do (checkpoint_blocks held the blob's size, root_address the manifest's
 * block, root_checksum its checksum, grid_syncing its size). `start` converts such a file in
 * place (storage->legacy; storage_legacy_*).
 */
#define STORAGE_FORMAT_VERSION_LEGACY 1u
#define STORAGE_LEGACY_BLOCK_SIZE (1u << 20)
#define STORAGE_WAL_SLOTS_DEFAULT 1024u
#define STORAGE_WAL_SLOTS_DEVELOPMENT 256u
/*
 * Ops between checkpoints at most, in files formatted from now on (the superblock keeps each
 * file's own): a quarter of the WAL, so that the ops since the last durable checkpoint always fit
 * in it with a checkpoint in progress and the pipeline. A replica checkpoints sooner once the ops
 * since the last checkpoint carried enough work (REPLICA_CHECKPOINT_WORK_REQUESTS, vsr/replica.h):
 * that bounds a restart's replay for large batches; this bounds the checkpoints' own cost for
 * small ones (each writes at least a table per tree that changed).
 */
#define STORAGE_CHECKPOINT_INTERVAL_DIVISOR 4u
#define STORAGE_CLIENTS_MAX 64u
#define STORAGE_WRITES_MAX 64u /* journal writes in flight; >= the pipeline depth */
/* Prepares this large (a batch of 512 transfers or more) sync themselves (see above). */
#define STORAGE_SELF_SYNC_MIN (64u * 1024u)
/* Blocks of the grid: the LSM's (lsm/grid.h). */
#define GRID_BLOCK_SIZE (64u * 1024u)
#define GRID_BLOCKS_MAX (1u << 24) /* 1 TiB of grid */
/* The file grows in steps; a checkpoint keeps this much room ahead of the ledger's blocks. */
#define STORAGE_GRID_GROWTH_BYTES (64ull << 20)
/*
 * Grid writes in flight at once, each of up to STORAGE_GRID_WRITE_RUN_MAX blocks at consecutive
 * addresses. Each block is copied into a buffer of its write (this many x the run's bytes of
 * memory, reserved at the first write), so the caller's block is free as soon as the call
 * returns and the loop does not wait for the device: about 270 us per block here, a fifth of
 * the time of a load of creates, was spent waiting in pwrite. Runs: a job's output and a
 * flush's tables take addresses in order, mostly consecutive, and this disk writes 1 MiB
 * requests at twice the rate of 64 KiB ones (`dd`, with reads beside them: 920 against 455
 * MB/s); one write per block made 190,000 writes of 76 KiB on average per 10 M transfers at
 * 90 M stored.
 */
#define STORAGE_GRID_WRITES_MAX 16u
#define STORAGE_GRID_WRITE_RUN_MAX 16u
/* Two reply slots per session, used alternately, so a checkpoint never overwrites the reply
 * the previous (still current) checkpoint refers to. */
#define STORAGE_REPLY_SLOTS (2u * STORAGE_CLIENTS_MAX)

#define STORAGE_VIEW_PREFIXES 256u

struct superblock {
        u128 checksum; /* of bytes 16..4095 */
        char magic[16];
        uint32_t format_version;
        uint32_t copy;
        uint8_t reserved_align[8];
        u128 cluster;
        uint64_t sequence; /* bumped by every superblock write; the highest valid copy wins */
        uint8_t replica;
        uint8_t replica_count;
        uint8_t development;
        /*
         * 1 once the replica has caught up with its cluster since it was formatted; 0 (as
         * formatted) means fresh: it may have lost acknowledged ops with an earlier data file.
         */
        uint8_t caught_up;
        uint8_t fresh_joined; /* a fresh replica joined a view: fresh_joined_op is set */
        uint8_t reserved_0[3];
        uint32_t view;
        uint32_t log_view;
        uint64_t commit;        /* highest op known committed when this copy was written */
        uint64_t checkpoint_op; /* the ledger state in the grid is as of this op (0: empty) */
        uint32_t wal_slot_count;
        uint32_t message_size_max;
        uint32_t clients_max;
        uint32_t checkpoint_interval; /* ops between checkpoints */
        uint64_t wal_headers_offset;
        uint64_t wal_prepares_offset;
        uint64_t client_replies_offset;
        uint64_t grid_offset;
        uint64_t grid_size; /* bytes of grid currently allocated in the file */
        uint64_t file_size;
        /* The checkpoint: */
        uint64_t checkpoint_blocks;       /* grid blocks in use when it was written (its image is
                                             at most this: ledger_checkpoint_blocks lists it) */
        uint64_t checkpoint_timestamp;    /* cluster timestamp at checkpoint_op */
        uint64_t root_address;            /* grid block of its root; 0: no checkpoint */
        u128 checkpoint_prepare_checksum; /* of the prepare at checkpoint_op: the chain anchor */
        u128 root_checksum;               /* the root block's checksum */
        /*
         * 1 while a state sync or a restore writes a peer's blocks into the grid: the blocks of
         * the checkpoint named here may be overwritten, so it is not to be trusted.
         */
        uint32_t grid_syncing;
        uint32_t reserved_2;
        uint64_t view_anchor_op;          /* see struct replica_view_state */
        u128 view_anchor_checksum;
        uint64_t fresh_joined_op; /* see struct replica_view_state */
        /* see struct replica_view_state (all 0 in files written before 2026-12-03: none) */
        uint64_t view_prefixes[STORAGE_VIEW_PREFIXES];
        uint8_t reserved[1784];
};
_Static_assert(sizeof(struct superblock) == SUPERBLOCK_COPY_SIZE, "superblock size");
_Static_assert(offsetof(struct superblock, cluster) == 48, "superblock cluster offset");
_Static_assert(offsetof(struct superblock, file_size) == 160, "superblock file_size offset");
_Static_assert(offsetof(struct superblock, checkpoint_prepare_checksum) == 192, "anchor offset");
_Static_assert(offsetof(struct superblock, view_anchor_checksum) == 240, "anchor offset");
_Static_assert(offsetof(struct superblock, view_prefixes) == 264, "view prefixes offset");
_Static_assert(offsetof(struct superblock, reserved) == 2312, "superblock reserved offset");

struct storage_format_options {
        u128 cluster;
        uint8_t replica;
        uint8_t replica_count;
        bool development;
};

enum storage_error {
        STORAGE_OK = 0,
        STORAGE_ERROR_IO,            /* system call failed; the message says which */
        STORAGE_ERROR_EXISTS,        /* format: the file exists */
        STORAGE_ERROR_NOT_FOUND,     /* open: no such file */
        STORAGE_ERROR_NOT_TALLY,     /* no superblock copy has our magic */
        STORAGE_ERROR_CORRUPT,       /* our magic, but no copy passes its checksum */
        STORAGE_ERROR_VERSION,       /* another format version */
        STORAGE_ERROR_TRUNCATED,     /* shorter than its superblock says */
        STORAGE_ERROR_NO_SPACE,      /* format: the disk is full */
        STORAGE_ERROR_IN_USE,        /* open or format: another process holds the file */
};

/* How storage_open holds the data file. */
enum storage_access {
        STORAGE_ACCESS_WRITE,     /* read-write, exclusive lock: a replica */
        STORAGE_ACCESS_READ,      /* read-only, shared lock: readers exclude writers only */
        /*
         * Read-only and no lock at all, to watch a running replica's file (`inspect --live`):
         * it may see a write half done, and it never makes a replica's start fail.
         */
        STORAGE_ACCESS_READ_LIVE,
};

/* A session's reply to persist with a checkpoint, in its reply slot. */
struct storage_reply_write {
        struct message *reply;
        uint32_t slot;
};

/* Everything a checkpoint makes durable; the replies stay untouched until `done`. */
struct storage_checkpoint_request {
        uint64_t op;
        u128 prepare_checksum;
        uint64_t timestamp;
        uint64_t root_address; /* the ledger's root block, already written to the grid */
        u128 root_checksum;
        uint64_t blocks;        /* grid blocks in use (the image is at most this) */
        uint64_t grid_address_max; /* the highest grid block the ledger uses */
        struct storage_reply_write replies[STORAGE_CLIENTS_MAX];
        uint32_t reply_count;
        void (*done)(void *context, bool ok);
        void *context;
};

struct storage_write {
        struct message *message;
        void (*callback)(void *context, struct message *message);
        void *context;
        struct io_completion headers_completion;
        struct io_completion prepare_completion;
        uint8_t writes_pending; /* of its two writes */
        bool self_sync;         /* written durable (RWF_DSYNC), not covered by an fdatasync */
        bool written;           /* both writes done, waiting for a sync */
        bool in_sync;           /* covered by the sync in flight */
        bool used;
        uint64_t started_ns;
        int32_t error;
        struct storage *storage;
};

struct storage_checkpoint {
        bool active;
        uint8_t stage; /* 1: replies, 2: sync (grid blocks too), 3: superblock copies, 4: sync */
        uint32_t writes_pending;
        bool failed;
        struct storage_checkpoint_request request;
        struct io_completion completions[STORAGE_CLIENTS_MAX + SUPERBLOCK_COPIES + 1];
        uint32_t completion_count;
        struct superblock superblock_next;
        struct superblock copies[SUPERBLOCK_COPIES];
        bool no_space;  /* the grid could not grow */
        bool io_failed; /* a write or sync failed */
};

struct grid_writer;
struct storage_grid_write {
        struct io_completion completion;
        struct grid_writer *writer;
        uint64_t address; /* of its first block; 0: the buffer is free */
        uint32_t count;   /* blocks, at consecutive addresses */
        uint8_t *buffer;  /* STORAGE_GRID_WRITE_RUN_MAX blocks, 4 KiB aligned (O_DIRECT) */
};

/*
 * Grid writes on a ring of their own (one for the loop, one for the compaction worker's
 * thread): waiting for a free buffer or for every write to land runs no other completion in
 * the middle of the caller's work. Set up at the first write.
 */
struct grid_writer {
        struct storage *storage;
        struct io *io; /* NULL until the first write (or if it could not be set up) */
        struct storage_grid_write *writes; /* STORAGE_GRID_WRITES_MAX */
        /* The write the next block may extend (its address follows), not yet issued: issued
         * when full, when a block that does not follow comes, at a flush, and when the loop's
         * device is told to (lsm_device.issue, at the end of a memtable flush). */
        struct storage_grid_write *open;
        uint8_t *memory;
        uint32_t in_flight;
        int error; /* the first failed write (-errno); every later one fails */
        uint64_t blocks_written;
        uint64_t writes_issued; /* each of one or more blocks */
};

/*
 * The loop's reads of many grid blocks at once (lsm_grid_prefetch): on a ring of their own, so
 * that waiting for one runs no other completion in the middle of an op. Set up at first use.
 */
#define STORAGE_GRID_READS_MAX 256u
struct grid_reader;
struct storage_grid_read {
        struct io_completion completion;
        struct grid_reader *reader;
        int32_t result;
        bool landed;
};

struct grid_reader {
        struct io *io; /* NULL until the first use */
        bool unavailable; /* it could not be set up: reads go one at a time */
        struct storage_grid_read *reads; /* STORAGE_GRID_READS_MAX */
        uint32_t in_flight;
};

struct storage {
        int fd; /* holds the lock (see storage_open) */
        int32_t open_file; /* this file's entry in the process's table of open data files */
        /*
         * The same file opened O_DIRECT, for checkpoint blocks and replies, or -1 where the
         * file system refuses it. Bulk writes that bypass the page cache do not make the
         * journal's next fdatasync wait for them to be written back.
         */
        int fd_direct;
        struct io *io;
        struct message_pool *pool;
        struct superblock superblock;
        struct storage_write writes[STORAGE_WRITES_MAX];
        bool sync_pending;
        struct io_completion sync_completion;
        bool failed; /* an I/O error: stop acknowledging anything */
        /*
         * The last checkpoint could not grow the grid (no space on the file system). Not a
         * failure: the durable checkpoint is whole, nothing was acknowledged on the new one, and
         * the next checkpoint tries again. The replica refuses writes meanwhile.
         */
        bool no_space;
        /* Format 1, opened for writing: to be converted before anything else (see above). */
        bool legacy;
        uint64_t grid_block_count; /* blocks the file holds now */
        struct grid_writer grid_writer;   /* the loop's grid writes (storage_grid_write) */
        struct grid_writer worker_writer; /* the compaction worker's (storage_grid_device_worker) */
        struct grid_reader grid_reader;   /* the loop's reads of many blocks at once */
        uint64_t grid_blocks_read;
        struct storage_checkpoint checkpoint;
        uint64_t checkpoints;
        /* A view-state superblock write. */
        bool view_write_active;
        uint32_t view_write_pending; /* completions outstanding */
        bool view_write_failed;
        struct superblock view_copies[SUPERBLOCK_COPIES];
        struct io_completion view_completions[SUPERBLOCK_COPIES + 1];
        void (*view_done)(void *context);
        void *view_context;
        uint64_t syncs;                 /* journal fdatasyncs, and prepares that synced themselves */
        uint64_t prepares_written;
        uint64_t sync_started_ns;       /* of the journal sync in flight */
        struct histogram sync_latency; /* an fdatasync, or a self-synced prepare's writes */
};

/*
 * Creates and formats a new data file, holding it exclusively until done. Never touches an
 * existing file (its error names the holder's pid when a process holds it).
 */
enum storage_error storage_format(const char *path, const struct storage_format_options *options,
                                  char *error, size_t error_size);

/*
 * Opens, locks as `access` says, and validates; the superblock is then in storage->superblock.
 * STORAGE_ERROR_IN_USE, with the holder's pid in `error` when the kernel tells it, if another
 * process holds the file in a conflicting way, or if this process has it open already.
 */
enum storage_error storage_open(struct storage *storage, struct io *io,
                                struct message_pool *pool, const char *path,
                                enum storage_access access, char *error, size_t error_size);
void storage_close(struct storage *storage);
/* Journal writes in flight (storage_write_prepare's, not yet durable or failed). */
uint32_t storage_journal_writes_in_flight(const struct storage *storage);

/*
 * Journals a prepare at its op's WAL slot; `callback` runs once it is durable (prepares may
 * become durable in any order). False if too many writes are in flight.
 */
bool storage_write_prepare(struct storage *storage, struct message *prepare,
                           void (*callback)(void *context, struct message *prepare),
                           void *context);

/*
 * Starts making a checkpoint durable: grows the grid to keep room ahead of the ledger, writes
 * the replies, syncs (the ledger's grid blocks too), then every superblock copy and a sync. The
 * previous checkpoint stays whole until the new superblock is durable. False if one is in
 * progress.
 */
bool storage_checkpoint_start(struct storage *storage,
                              const struct storage_checkpoint_request *request);

/* True if the file system holding the data file has room for the grid's next growth step. */
bool storage_has_room(struct storage *storage);

/*
 * Persists view, log_view, the log anchor and whether the replica is fresh in every
 * superblock copy (sequence + 1), then syncs; `done` runs once durable. False while a
 * checkpoint or another superblock write is in flight: retry.
 */
struct storage_view {
        uint32_t view;
        uint32_t log_view;
        uint64_t anchor_op;
        u128 anchor_checksum;
        bool fresh;
        bool fresh_joined;
        uint64_t fresh_joined_op;
        bool grid_syncing; /* see superblock.grid_syncing */
        uint64_t view_prefixes[STORAGE_VIEW_PREFIXES];
};
bool storage_write_view(struct storage *storage, const struct storage_view *state,
                        void (*done)(void *context), void *context);

/*
 * The ledger's grid on this file: whole blocks by address. A write beyond the file grows it (by
 * STORAGE_GRID_GROWTH_BYTES); -ENOSPC when the file system is full. Writes are asynchronous: the
 * block is copied and the call returns; a read of a block still being written is answered from
 * that copy, a second write of the same address waits for the first, and a failed write fails
 * every later write and storage_grid_flush (the ledger then stops: lsm_grid_flush_writes).
 * storage_grid_flush waits for every write issued so far (0, or the first write error); a
 * checkpoint does so before its sync, and storage_close before closing the file.
 */
struct lsm_device storage_grid_device(struct storage *storage);
/*
 * The same grid for the compaction worker's thread (src/lsm/compactor.h): reads and writes
 * that block the calling thread (pread, and pwrite with O_DIRECT when it can), share nothing
 * with the loop's ring, and never grow the file (the loop's device did, `grow`, before the
 * job started). The blocks a worker reads were flushed before its job started, so none is
 * still in the loop's ring; the ones it writes are named by nothing until the loop installs
 * the job, and the checkpoint's sync makes them durable with the rest.
 */
struct lsm_device storage_grid_device_worker(struct storage *storage);
int storage_grid_read(struct storage *storage, uint64_t address, uint8_t *block);
int storage_grid_write(struct storage *storage, uint64_t address, const uint8_t *block);
int storage_grid_flush(struct storage *storage);

/*
 * Format 1 conversion, synchronous (start-up only). storage_legacy_read_checkpoint: the blob,
 * whole, in malloc'ed memory (*blob NULL and 0 when there is no checkpoint); 0 or -1.
 * storage_legacy_grid_blocks: the 64 KiB blocks format 1's grid covers (the conversion writes
 * above them). storage_legacy_convert: makes the converted state durable: syncs the grid, then
 * writes every superblock copy as format 2 naming the request's root; 0 or -1.
 */
int storage_legacy_read_checkpoint(struct storage *storage, uint8_t **blob, uint64_t *size,
                                   char *error, size_t error_size);
uint64_t storage_legacy_grid_blocks(const struct storage *storage);
int storage_legacy_convert(struct storage *storage,
                           const struct storage_checkpoint_request *request, char *error,
                           size_t error_size);

/* Recovery, synchronous (start-up only): 0 or a negative value with a message naming the zone. */
int storage_read_reply(struct storage *storage, uint32_t slot, struct message *message,
                       u128 checksum, char *error, size_t error_size);
/* The WAL header at `slot`; false if it fails its checksum (torn, corrupt, or never written). */
bool storage_read_wal_header(struct storage *storage, uint32_t slot, struct wire_header *header);
/* The prepare at `slot` into `message`; false if it does not match `header` or its checksums. */
bool storage_read_prepare(struct storage *storage, uint32_t slot,
                          const struct wire_header *header, struct message *message);

/* Reads and validates a superblock copy from raw bytes; exposed for tests and inspect. */
bool superblock_copy_valid(const struct superblock *copy);

const char *storage_error_name(enum storage_error error);

#endif
