/*
 * backup_file.h: the file `tally backup` writes and `tally restore` reads. It is checked on its
 * own, without the cluster it came from:
 *
 *   header       4096 B: magic, format version, cluster, the checkpoint (op, timestamp, the
 *                prepare checksum that anchors the hash chain after it, its root block's
 *                address and checksum), sizes, the checksum of the block table and of the
 *                replies; its own checksum first
 *   block table  block_count x 16 B: the checksum of every whole block of the image
 *   image        block_count x BACKUP_BLOCK_SIZE: the checkpoint's image, every grid block it
 *                needs with the root first (ledger_checkpoint_blocks), as state sync copies it
 *   replies      reply_count whole reply messages, each with its wire checksums, one per
 *                session of the root's session table (that table names each reply's checksum)
 *
 * Reading checks every checksum and names the first block that fails. Restoring writes each
 * block at the grid address its own header names, so a restored data file holds the very
 * blocks, and the very root, the source replica checkpointed.
 *
 * Version 1 held a format-1 checkpoint blob instead of blocks; this tally refuses it by name.
 */
#ifndef TALLY_CLI_BACKUP_FILE_H
#define TALLY_CLI_BACKUP_FILE_H

#include "lib/common.h"
#include "lsm/grid.h"

/* Every version's magic starts so; a version the reader does not know is refused by number. */
#define BACKUP_MAGIC "tally-backup"
#define BACKUP_FORMAT_VERSION 3u
/* Version 2: the same file around a checkpoint whose root lists every manifest block (data file
 * format 2); restored as it is, since this tally reads such roots. */
#define BACKUP_FORMAT_VERSION_LISTED_MANIFEST 2u
#define BACKUP_HEADER_SIZE 4096u
/* The unit of the block table: one grid block, so damage is located to the block. */
#define BACKUP_BLOCK_SIZE LSM_BLOCK_SIZE
#define BACKUP_REPLIES_MAX 64u

struct backup_header {
        u128 checksum; /* of bytes 16..4095 */
        char magic[16];
        uint32_t format_version;
        uint32_t block_size;
        uint32_t reserved_0;
        uint32_t reply_count;
        u128 cluster;
        uint64_t checkpoint_op;
        uint64_t checkpoint_timestamp;
        u128 checkpoint_prepare_checksum;
        uint64_t block_count; /* blocks of the image, the root first */
        uint64_t replies_size;
        u128 block_table_checksum;
        u128 replies_checksum;
        u128 root_checksum;
        uint64_t root_address;
        uint64_t created_realtime_ns;
        uint8_t source_replica;
        uint8_t source_replica_count;
        uint8_t reserved[3918];
};
_Static_assert(sizeof(struct backup_header) == BACKUP_HEADER_SIZE, "backup header size");
_Static_assert(offsetof(struct backup_header, format_version) == 32, "backup header version");
_Static_assert(offsetof(struct backup_header, cluster) == 48, "backup header cluster offset");
_Static_assert(offsetof(struct backup_header, checkpoint_prepare_checksum) == 80,
               "backup header anchor offset");
_Static_assert(offsetof(struct backup_header, block_count) == 96, "backup header blocks");
_Static_assert(offsetof(struct backup_header, root_checksum) == 144, "backup header root");
_Static_assert(offsetof(struct backup_header, source_replica) == 176, "backup header source");
_Static_assert(offsetof(struct backup_header, reserved) == 178, "backup header reserved");

/* A backup in memory: the image and the replies (each a whole message, back to back). */
struct backup_contents {
        struct backup_header header;
        uint8_t *image;   /* malloc'd, block_count x BACKUP_BLOCK_SIZE bytes */
        uint8_t *replies; /* malloc'd, replies_size bytes */
        uint32_t reply_offsets[BACKUP_REPLIES_MAX];
};

/*
 * Writes `contents` (header fields cluster, checkpoint_*, root_*, block_count, source_*,
 * reply_count and replies_size filled in; the rest is computed here) to `path` through a
 * temporary file, synced and renamed: a crash never leaves a half-written backup under the
 * name. 0, or -1 with the reason.
 */
int backup_file_write(const char *path, struct backup_contents *contents, char *error,
                      size_t error_size);

/* Reads and checks every checksum; 0, or -1 naming what is damaged. Free with _free. */
int backup_file_read(const char *path, struct backup_contents *contents, char *error,
                     size_t error_size);
void backup_contents_free(struct backup_contents *contents);

/*
 * The image loaded into a ledger on a grid in memory (each block installed at its address),
 * checked to be exactly the blocks the root names, in order, then the ledger opened from the
 * root and its invariants checked (ledger_verify: debits equal credits per ledger, balances
 * equal the sums of transfers). The capacities bound no load (a checkpoint's size no longer
 * depends on them); they configure the ledger as start would. 0 with `summary` filled, or -1
 * with the reason.
 */
int backup_verify_ledger(const struct backup_contents *contents, uint64_t accounts_max,
                         uint64_t transfers_max, char *summary, size_t summary_size);

#endif
