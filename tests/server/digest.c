/*
 * digest.c: the ledger state a stopped replica's data file holds as of an op, as one checksum,
 * so that tests can tell whether replicas are identical. Usage: digest <data file> <op>
 *
 * Restores the file's checkpoint (the ledger opened from the root block the superblock names),
 * executes the journal after it up to <op> (each prepare must chain onto the previous one),
 * and prints "op=<op> prepare=<checksum of the prepare at op>
 * ledger=<checksum of the ledger's checkpoint stream>" (hex). Two replicas of a correct cluster
 * print the same line for any op both have. Exit status 0, or 1 with the reason (the file's
 * checkpoint is newer than <op>, or the journal lacks an op up to it).
 *
 * The file is only read: the ledger's grid is the file's, with every block the execution writes
 * (flushes, compactions) kept in memory over it.
 */
#include "io/io.h"
#include "ledger/ledger.h"
#include "lib/log.h"
#include "lsm/device_memory.h"
#include "storage/storage.h"
#include "vsr/replica.h"
#include "wire/checksum.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct io io;
static struct message_pool pool;
static struct storage storage;
static struct replica replica;

static uint64_t now_ns(void *context)
{
        (void)context;
        return 0;
}

static bool refuse_checkpoint(void *context, const struct replica_checkpoint *checkpoint,
                              void (*done)(void *replica, bool ok), void *r)
{
        (void)context, (void)checkpoint, (void)done, (void)r;
        return false; /* nothing is written: the file is only read */
}

/* The file's grid, read only, under the blocks written since in memory. */
static struct lsm_device_memory written;

static int overlay_read(void *context, uint64_t address, uint8_t *block)
{
        (void)context;
        if (address < written.capacity && written.blocks[address] != NULL)
                return lsm_device_memory(&written).read(&written, address, block);
        return storage_grid_read(&storage, address, block);
}

static int overlay_write(void *context, uint64_t address, const uint8_t *block)
{
        (void)context;
        return lsm_device_memory(&written).write(&written, address, block);
}

static int read_reply(void *context, uint32_t slot, u128 checksum, struct message *message)
{
        char error[256];
        (void)context;
        return storage_read_reply(&storage, slot, message, checksum, error, sizeof(error));
}

static int stream_add(void *context, const void *data, size_t size)
{
        checksum_stream_add(context, data, size);
        return 0;
}

static void hex(u128 x, char out[33])
{
        snprintf(out, 33, "%016llx%016llx", (unsigned long long)(x >> 64),
                 (unsigned long long)x);
}

int main(int argc, char **argv)
{
        if (argc != 3) {
                fprintf(stderr, "usage: digest <data file> <op>\n");
                return 2;
        }
        uint64_t target = strtoull(argv[2], NULL, 10);
        char error[512];
        /*
         * Replaying the journal logs what the replica did (sessions evicted to make room, ...),
         * which differs between replicas whose checkpoints differ; tests compare the digest
         * line, so only warnings and errors are logged.
         */
        log_set_level(LOG_WARN);
        /*
         * A restored checkpoint holds a reply per client session (up to REPLICA_CLIENTS_MAX),
         * each in a message of the pool, and replay needs a few more. With 64, a cluster that
         * had served about 60 clients left none for reading the journal (upgrade.sh: digest
         * died on a NULL message, now and then).
         */
        if (io_init(&io, 64) != 0 || message_pool_init(&pool, REPLICA_CLIENTS_MAX + 16) != 0) {
                fprintf(stderr, "digest: no io or message pool\n");
                return 1;
        }
        if (storage_open(&storage, &io, &pool, argv[1], STORAGE_ACCESS_READ, error,
                         sizeof(error)) != STORAGE_OK) {
                fprintf(stderr, "digest: %s\n", error);
                return 1;
        }
        const struct superblock *sb = &storage.superblock;
        lsm_device_memory_init(&written, GRID_BLOCKS_MAX);
        struct ledger_config lc = {
                /* As start's by default: no limits (a limit changes what executes). */
                .accounts_max = 0,
                .transfers_max = 0,
                .request_body_size_max = sb->message_size_max - WIRE_HEADER_SIZE,
                .device = {.read = overlay_read, .write = overlay_write},
                .grid_blocks_max = GRID_BLOCKS_MAX,
        };
        struct ledger *ledger = ledger_create(&lc);
        struct replica_config rc = {
                .cluster = sb->cluster,
                .replica = 0,
                .replica_count = 1, /* execution only: no peers, no view changes */
                .request_size_max = sb->message_size_max,
                .checkpoint_interval = sb->checkpoint_interval,
                .wal_slot_count = sb->wal_slot_count,
        };
        struct replica_env env = {.realtime_ns = now_ns, .checkpoint = refuse_checkpoint};
        if (ledger == NULL || replica_init(&replica, &rc, &env, &pool, ledger) != 0) {
                fprintf(stderr, "digest: no ledger or replica\n");
                return 1;
        }
        uint64_t op = 0;
        if (sb->grid_syncing) {
                fprintf(stderr, "digest: the grid was being overwritten (grid_syncing): its "
                                "checkpoint is not to be trusted\n");
                return 1;
        }
        if (sb->root_address != 0) {
                if (sb->checkpoint_op > target) {
                        fprintf(stderr, "digest: the checkpoint (op %llu) is newer than op %llu\n",
                                (unsigned long long)sb->checkpoint_op,
                                (unsigned long long)target);
                        return 1;
                }
                struct lsm_block_ref root = {.address = sb->root_address,
                                             .checksum = sb->root_checksum};
                if (replica_restore(&replica, root, sb->checkpoint_blocks,
                                    sb->checkpoint_op, sb->checkpoint_prepare_checksum,
                                    sb->checkpoint_timestamp, read_reply, NULL, error,
                                    sizeof(error)) != 0) {
                        fprintf(stderr, "digest: checkpoint: %s\n", error);
                        return 1;
                }
                op = sb->checkpoint_op;
        }
        u128 prepare_checksum = sb->root_address != 0 ? sb->checkpoint_prepare_checksum : 0;
        struct message *m = message_pool_get(&pool);
        if (m == NULL) {
                fprintf(stderr, "digest: no message left to read the journal with\n");
                return 1;
        }
        static struct wire_header header;
        for (op = op + 1; op <= target; op++) {
                uint32_t slot = (uint32_t)(op % sb->wal_slot_count);
                if (!storage_read_wal_header(&storage, slot, &header) ||
                    header.prepare.op != op || !storage_read_prepare(&storage, slot, &header, m) ||
                    replica_replay(&replica, m, error, sizeof(error)) != 0) {
                        fprintf(stderr, "digest: the journal lacks op %llu\n",
                                (unsigned long long)op);
                        return 1;
                }
                prepare_checksum = header.checksum;
        }
        struct checksum_stream cs;
        checksum_stream_init(&cs);
        struct ledger_stream s = {.write = stream_add, .context = &cs};
        if (ledger_checkpoint_write(ledger, &s) != 0) {
                fprintf(stderr, "digest: the ledger's state cannot be written out\n");
                return 1;
        }
        char p[33], l[33];
        hex(prepare_checksum, p);
        hex(checksum_stream_final(&cs), l);
        printf("op=%llu prepare=%s ledger=%s\n", (unsigned long long)target, p, l);
        return 0;
}
