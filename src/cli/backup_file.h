/*
 * backup_file.h: the file `tally backup` writes and `tally restore` reads. It is checked on its
 * own, without the cluster it came from:
 *
 *   header       4096 B: magic, format version, cluster, the checkpoint (op, timestamp, the
 *                prepare checksum that anchors the hash chain after it), sizes, the checksum
 *                of the chunk table and of the replies; its own checksum first
 *   chunk table  chunk_count x 16 B: the checksum of every BACKUP_CHUNK_SIZE piece of the blob
 *   blob         blob_size bytes: the checkpoint blob, exactly as replicas store it
 *   replies      reply_count whole reply messages, each with its wire checksums, one per
 *                session of the blob's session table (that table names each reply's checksum)
 *
 * Reading checks every checksum and names the first piece that fails. The blob is the one
 * format the whole ledger state has today (see docs/storage.md): a backup is a full copy, and
 * a restore writes it as any replica's checkpoint.
 */
#ifndef TALLY_CLI_BACKUP_FILE_H
#define TALLY_CLI_BACKUP_FILE_H

#include "lib/common.h"

#define BACKUP_MAGIC "tally-backup-v1"
#define BACKUP_FORMAT_VERSION 1u
#define BACKUP_HEADER_SIZE 4096u
/* The unit of the chunk table: damage is located to a megabyte, the table stays small
 * (16 B per MiB). */
#define BACKUP_CHUNK_SIZE (1u << 20)
#define BACKUP_REPLIES_MAX 64u

struct backup_header {
        u128 checksum; /* of bytes 16..4095 */
        char magic[16];
        uint32_t format_version;
        uint32_t chunk_size;
        uint32_t chunk_count;
        uint32_t reply_count;
        u128 cluster;
        uint64_t checkpoint_op;
        uint64_t checkpoint_timestamp;
        u128 checkpoint_prepare_checksum;
        uint64_t blob_size;
        uint64_t replies_size;
        u128 chunk_table_checksum;
        u128 replies_checksum;
        uint64_t created_realtime_ns;
        uint8_t source_replica;
        uint8_t source_replica_count;
        uint8_t reserved[3942];
};
_Static_assert(sizeof(struct backup_header) == BACKUP_HEADER_SIZE, "backup header size");
_Static_assert(offsetof(struct backup_header, cluster) == 48, "backup header cluster offset");
_Static_assert(offsetof(struct backup_header, checkpoint_prepare_checksum) == 80,
               "backup header anchor offset");
_Static_assert(offsetof(struct backup_header, reserved) == 154, "backup header reserved");

/* A backup in memory: the blob and the replies (each a whole message, back to back). */
struct backup_contents {
        struct backup_header header;
        uint8_t *blob;    /* malloc'd, blob_size bytes */
        uint8_t *replies; /* malloc'd, replies_size bytes */
        uint32_t reply_offsets[BACKUP_REPLIES_MAX];
};

/*
 * Writes `contents` (header fields cluster, checkpoint_*, blob_size, source_*, reply_count and
 * replies_size filled in; the rest is computed here) to `path` through a temporary file,
 * synced and renamed: a crash never leaves a half-written backup under the name. 0, or -1
 * with the reason.
 */
int backup_file_write(const char *path, struct backup_contents *contents, char *error,
                      size_t error_size);

/* Reads and checks every checksum; 0, or -1 naming what is damaged. Free with _free. */
int backup_file_read(const char *path, struct backup_contents *contents, char *error,
                     size_t error_size);
void backup_contents_free(struct backup_contents *contents);

/*
 * The blob's ledger loaded into a ledger of these capacities and its invariants checked
 * (ledger_verify: debits equal credits per ledger, balances equal the sums of transfers).
 * 0 with `summary` filled, or -1 with the reason.
 */
int backup_verify_ledger(const struct backup_contents *contents, uint64_t accounts_max,
                         uint64_t transfers_max, char *summary, size_t summary_size);

#endif
