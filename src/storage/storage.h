/*
 * storage.h: the data file. One preallocated file per replica, in fixed zones:
 *
 *   superblock      SUPERBLOCK_COPIES copies of 4 KiB, each checksummed; the newest valid
 *                   copy (highest sequence) is the truth
 *   wal headers     wal_slot_count x 256 B: the header of each journaled prepare
 *   wal prepares    wal_slot_count x message_size_max: each journaled prepare, whole
 *   client replies  clients_max x message_size_max: cached replies of client sessions
 *   grid            grid_size bytes: ledger checkpoints
 *
 * `format` writes the superblock copies and sizes the file; `open` validates it and says
 * precisely what is wrong with a file that is not ours, damaged, or made for another replica.
 * Journal writes are grouped: every prepare written before a sync starts is covered by it, so
 * one fdatasync serves a whole pipeline of prepares.
 */
#ifndef TALLY_STORAGE_H
#define TALLY_STORAGE_H

#include "io/io.h"
#include "wire/message.h"

#define SUPERBLOCK_COPIES 4u
#define SUPERBLOCK_COPY_SIZE 4096u
#define STORAGE_FORMAT_VERSION 1u
#define STORAGE_WAL_SLOTS_DEFAULT 1024u
#define STORAGE_WAL_SLOTS_DEVELOPMENT 256u
#define STORAGE_CLIENTS_MAX 64u
#define STORAGE_WRITES_MAX 64u /* journal writes in flight; >= the pipeline depth */

struct superblock {
        u128 checksum; /* of bytes 16..4095 */
        char magic[16];
        uint32_t format_version;
        uint32_t copy;
        uint8_t reserved_align[8];
        u128 cluster;
        uint64_t sequence;
        uint8_t replica;
        uint8_t replica_count;
        uint8_t development;
        uint8_t reserved_0[5];
        uint32_t view;
        uint32_t log_view;
        uint64_t commit;
        uint64_t checkpoint_op;
        uint32_t wal_slot_count;
        uint32_t message_size_max;
        uint32_t clients_max;
        uint32_t reserved_1;
        uint64_t wal_headers_offset;
        uint64_t wal_prepares_offset;
        uint64_t client_replies_offset;
        uint64_t grid_offset;
        uint64_t grid_size;
        uint64_t file_size;
        uint8_t reserved[3928];
};
_Static_assert(sizeof(struct superblock) == SUPERBLOCK_COPY_SIZE, "superblock size");
_Static_assert(offsetof(struct superblock, cluster) == 48, "superblock cluster offset");
_Static_assert(offsetof(struct superblock, file_size) == 160, "superblock file_size offset");

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
};

struct storage_write {
        struct message *message;
        void (*callback)(void *context, struct message *message);
        void *context;
        struct io_completion headers_completion;
        struct io_completion prepare_completion;
        uint8_t writes_pending;
        bool written; /* both writes done, waiting for a sync */
        bool in_sync; /* covered by the sync in flight */
        bool used;
        int32_t error;
        struct storage *storage;
};

struct storage {
        int fd;
        struct io *io;
        struct message_pool *pool;
        struct superblock superblock;
        struct storage_write writes[STORAGE_WRITES_MAX];
        bool sync_pending;
        struct io_completion sync_completion;
        bool failed; /* an I/O error: stop acknowledging anything */
        uint64_t syncs;
        uint64_t prepares_written;
};

/* Creates and formats a new data file. Never touches an existing file. */
enum storage_error storage_format(const char *path, const struct storage_format_options *options,
                                  char *error, size_t error_size);

/* Opens and validates; the superblock is then in storage->superblock. */
enum storage_error storage_open(struct storage *storage, struct io *io,
                                struct message_pool *pool, const char *path, char *error,
                                size_t error_size);
void storage_close(struct storage *storage);

/*
 * Journals a prepare at its op's WAL slot; `callback` runs once it is written and synced (in
 * op order of completion of their syncs). False if too many writes are in flight.
 */
bool storage_write_prepare(struct storage *storage, struct message *prepare,
                           void (*callback)(void *context, struct message *prepare),
                           void *context);

/* Reads and validates a superblock copy from raw bytes; exposed for tests and inspect. */
bool superblock_copy_valid(const struct superblock *copy);

const char *storage_error_name(enum storage_error error);

#endif
