/*
 * restore.c: `tally restore [--cluster=<id>] --replica-count=<n> [--development] <backup>
 * <output-dir>` creates the data files of a new cluster of n replicas whose state is the
 * backup's checkpoint.
 *
 * It first checks the backup as `tally backup` did (every checksum, then the ledger's
 * invariants), then for each replica i: formats <output-dir>/<cluster>_<i>.tally, marks its
 * grid as being overwritten (grid_syncing, durable), writes every block of the backup's image
 * into the grid at the address its header names, then the sessions' replies and a superblock
 * naming the backup's root through the same storage code a replica's checkpoint uses
 * (storage_checkpoint_start: one sync covers the blocks and replies before the superblock),
 * and marks the replica caught up in view 0 with an empty journal after the checkpoint.
 *
 * Why grid_syncing first: a restore cut short (a crash, a full disk) leaves a file whose
 * superblock names no checkpoint; unmarked it would look like a formatted replica and start
 * with an empty ledger. Marked, a single replica refuses to start and a replica of a cluster
 * copies a peer's checkpoint, as after a state sync cut short. The checkpoint's superblock
 * clears the mark.
 *
 * Why "caught up" (not fresh): a formatted replica is fresh, may have lost acknowledged ops,
 * and cannot count towards a view change until it catches up from a peer. A restored replica
 * holds the cluster's whole state as of the checkpoint, and every replica of the new cluster
 * holds the same: the replicas start as a cluster whose members were all restarted together,
 * recover to the checkpoint, find no one in a newer view, and elect a primary by a view
 * change (replication_open). The next op chains onto the checkpoint's prepare checksum, which
 * the backup carries.
 *
 * The cluster id is the backup's: the sessions' cached replies carry it, and the clients of
 * those sessions know the cluster by it. --cluster, if given, must match.
 */
#include "cli/backup_file.h"
#include "cli/cli.h"
#include "io/address.h"
#include "io/io.h"
#include "lib/flags.h"
#include "storage/storage.h"
#include "vsr/replica.h"
#include "wire/header.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Each storage write (the checkpoint, then the view state) must finish within this. */
#define RESTORE_WRITE_TIMEOUT_NS (600ull * 1000000000ull)

static struct io io;
static struct message_pool pool;
static struct storage storage;

struct wait {
        bool done;
        bool ok;
};

static void checkpoint_done(void *context, bool ok)
{
        struct wait *w = context;
        w->done = true;
        w->ok = ok;
}

static void view_done(void *context)
{
        struct wait *w = context;
        w->done = true;
        w->ok = true;
}

static int wait_for(struct wait *w)
{
        uint64_t deadline = io_monotonic_ns() + RESTORE_WRITE_TIMEOUT_NS;
        while (!w->done && io_monotonic_ns() < deadline) {
                if (io_run(&io, 10000000ull, true) != 0)
                        return -1;
        }
        return w->done && w->ok && !storage.failed ? 0 : -1;
}

/*
 * Every block of the image into the grid, each at the address its header names (the backup was
 * checked: every block is whole and the one the checkpoint names). The highest address into
 * *address_max.
 */
static int grid_write_image(const struct backup_contents *c, const char *path,
                            uint64_t *address_max, char *error, size_t error_size)
{
        *address_max = 0;
        for (uint64_t i = 0; i < c->header.block_count; i++) {
                const uint8_t *block = c->image + i * BACKUP_BLOCK_SIZE;
                uint64_t address = ((const struct lsm_block_header *)block)->address;
                tally_assert(address != 0 && address <= GRID_BLOCKS_MAX);
                int rc = storage_grid_write(&storage, address, block);
                if (rc != 0) {
                        snprintf(error, error_size, "%s: writing grid block %llu failed: %s",
                                 path, (unsigned long long)address, strerror(-rc));
                        return -1;
                }
                *address_max = MAX(*address_max, address);
        }
        int rc = storage_grid_flush(&storage); /* the writes return before they land */
        if (rc != 0) {
                snprintf(error, error_size, "%s: writing the grid blocks failed: %s", path,
                         strerror(-rc));
                return -1;
        }
        return 0;
}

/* The checkpoint request for the backup: its root, the replies in their sessions' slots. */
static int checkpoint_request(const struct backup_contents *c, uint64_t address_max,
                              struct storage_checkpoint_request *request, char *error,
                              size_t error_size)
{
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (replica_checkpoint_sessions(c->image, BACKUP_BLOCK_SIZE, sessions) != 0) {
                snprintf(error, error_size, "the checkpoint has no valid session table");
                return -1;
        }
        memset(request, 0, sizeof(*request));
        request->op = c->header.checkpoint_op;
        request->prepare_checksum = c->header.checkpoint_prepare_checksum;
        request->timestamp = c->header.checkpoint_timestamp;
        request->root_address = c->header.root_address;
        request->root_checksum = c->header.root_checksum;
        request->blocks = c->header.block_count;
        request->grid_address_max = address_max;
        for (uint32_t k = 0; k < c->header.reply_count; k++) {
                const struct wire_header *h =
                        (const struct wire_header *)(c->replies + c->reply_offsets[k]);
                struct message *m = message_pool_get(&pool);
                if (m == NULL) {
                        snprintf(error, error_size, "no message buffer for reply %u", k);
                        return -1;
                }
                memcpy(m->buffer, h, h->size);
                uint32_t slot = UINT32_MAX;
                for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                        if (sessions[i].used && sessions[i].reply_checksum == h->checksum)
                                slot = sessions[i].slot;
                }
                tally_assert(slot < STORAGE_REPLY_SLOTS); /* backup_file_read checked it */
                request->replies[request->reply_count].reply = m;
                request->replies[request->reply_count].slot = slot;
                request->reply_count++;
        }
        return 0;
}

static int restore_one(const struct backup_contents *c, const char *path, uint8_t replica,
                       uint8_t replica_count, bool development, char *error, size_t error_size)
{
        struct storage_format_options options = {.cluster = c->header.cluster,
                                                 .replica = replica,
                                                 .replica_count = replica_count,
                                                 .development = development};
        if (storage_format(path, &options, error, error_size) != STORAGE_OK)
                return -1;
        if (storage_open(&storage, &io, &pool, path, STORAGE_ACCESS_WRITE, error, error_size) !=
            STORAGE_OK)
                return -1;
        int rc = -1;
        static struct storage_checkpoint_request request;
        memset(&request, 0, sizeof(request));
        struct wait w = {0};
        struct storage_view syncing = {.fresh = true, .grid_syncing = true};
        if (!storage_write_view(&storage, &syncing, view_done, &w) || wait_for(&w) != 0) {
                snprintf(error, error_size, "%s: marking the grid as being written failed",
                         path);
                goto done;
        }
        uint64_t address_max = 0;
        if (grid_write_image(c, path, &address_max, error, error_size) != 0 ||
            checkpoint_request(c, address_max, &request, error, error_size) != 0)
                goto done;
        w = (struct wait){0};
        request.done = checkpoint_done;
        request.context = &w;
        if (!storage_checkpoint_start(&storage, &request) || wait_for(&w) != 0) {
                snprintf(error, error_size, "%s: writing the checkpoint failed", path);
                goto done;
        }
        struct storage_view view = {.view = 0, .log_view = 0, .fresh = false};
        w = (struct wait){0};
        if (!storage_write_view(&storage, &view, view_done, &w) || wait_for(&w) != 0) {
                snprintf(error, error_size, "%s: writing the view state failed", path);
                goto done;
        }
        rc = 0;
done:
        for (uint32_t i = 0; i < request.reply_count; i++)
                message_unref(&pool, request.replies[i].reply);
        storage_close(&storage);
        return rc;
}

int cli_restore(int argc, char **argv)
{
        struct flag flags[] = {
                {.name = "cluster", .kind = FLAG_U128},
                {.name = "replica-count", .kind = FLAG_U64, .required = true},
                {.name = "development", .kind = FLAG_SWITCH},
                {.name = "accounts-max", .kind = FLAG_U64},
                {.name = "transfers-max", .kind = FLAG_U64},
        };
        const char *positional[2];
        uint32_t positional_count = 0;
        char error[8192] = "";
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), positional, 2, &positional_count,
                        error, sizeof(error)) != 0 ||
            positional_count != 2) {
                cli_error("restore: %s",
                          error[0] ? error
                                   : "usage: tally restore --replica-count=<n> <backup> <dir>");
                return 2;
        }
        uint64_t replica_count = flags[1].u64;
        if (replica_count < 1 || replica_count > ADDRESSES_MAX) {
                cli_error("restore: --replica-count=%llu: must be 1..%u",
                          (unsigned long long)replica_count, ADDRESSES_MAX);
                return 2;
        }
        uint64_t started = io_monotonic_ns();
        struct backup_contents contents;
        if (backup_file_read(positional[0], &contents, error, sizeof(error)) != 0) {
                cli_error("restore: %s", error);
                return 1;
        }
        char cluster_text[40], wanted_text[40];
        format_u128(contents.header.cluster, cluster_text);
        if (flags[0].present && flags[0].u128 != contents.header.cluster) {
                format_u128(flags[0].u128, wanted_text);
                cli_error("restore: --cluster=%s, but the backup is of cluster %s (the sessions' "
                          "replies and their clients belong to it)",
                          wanted_text, cluster_text);
                backup_contents_free(&contents);
                return 2;
        }
        char summary[512];
        bool development = flags[2].present;
        if (backup_verify_ledger(&contents, flags[3].present ? flags[3].u64 : 0,
                                 flags[4].present ? flags[4].u64 : 0, summary,
                                 sizeof(summary)) != 0) {
                cli_error("restore: %s: %s", positional[0], summary);
                backup_contents_free(&contents);
                return 1;
        }
        double verify_s = (double)(io_monotonic_ns() - started) / 1e9;
        mkdir(positional[1], 0755);
        if (io_init(&io, 256) != 0 || message_pool_init(&pool, BACKUP_REPLIES_MAX + 8) != 0) {
                cli_error("restore: cannot set up the event loop");
                backup_contents_free(&contents);
                return 1;
        }
        int rc = 0;
        for (uint8_t i = 0; i < replica_count && rc == 0; i++) {
                char path[4096];
                snprintf(path, sizeof(path), "%.4000s/%s_%u.tally", positional[1], cluster_text, i);
                if (restore_one(&contents, path, i, (uint8_t)replica_count, development, error,
                                sizeof(error)) != 0) {
                        cli_error("restore: %s", error);
                        rc = 1;
                        break;
                }
                printf("restore: wrote %s (replica %u of %llu)\n", path, i,
                       (unsigned long long)replica_count);
        }
        if (rc == 0)
                printf("restore: checkpoint op %llu, %s; verified in %.3f s, restored in %.3f s\n",
                       (unsigned long long)contents.header.checkpoint_op, summary, verify_s,
                       (double)(io_monotonic_ns() - started) / 1e9);
        backup_contents_free(&contents);
        return rc;
}
