/*
 * test_storage.c: the data file under injected faults (short writes, EIO, ENOSPC) and the
 * checkpoint protocol: a fault must never be acknowledged and must never damage what the file
 * already held durably.
 */
#include "io/io.h"
#include "ledger/ledger.h"
#include "storage/storage.h"
#include "test.h"
#include "wire/checksum.h"
#include "wire/types.h"
#include "lib/log.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];
static char path[128];
static struct io io;
static struct message_pool pool;

enum fault_kind {
        FAULT_NONE,
        FAULT_SHORT_WRITE,
        FAULT_WRITE_EIO,
        FAULT_WRITE_ENOSPC,
        FAULT_SYNC_EIO,
        FAULT_READ_EIO,
        FAULT_SHORT_READ,
};
static enum fault_kind fault_kind;
static uint32_t faults_injected;

static int32_t inject(void *context, const struct io_completion *c, int32_t result)
{
        (void)context;
        if (result < 0)
                return result;
        if (c->opcode == IORING_OP_READ && fault_kind == FAULT_READ_EIO) {
                faults_injected++;
                return -EIO;
        }
        if (c->opcode == IORING_OP_READ && fault_kind == FAULT_SHORT_READ && c->size > 1) {
                faults_injected++;
                return (int32_t)(c->size / 2);
        }
        if (c->opcode == IORING_OP_WRITE) {
                if (fault_kind == FAULT_SHORT_WRITE && c->size > 1) {
                        /* The kernel wrote everything; pretend only half went, like a real
                         * short write the caller must finish (rewriting the rest is harmless). */
                        faults_injected++;
                        return (int32_t)(c->size / 2);
                }
                if (fault_kind == FAULT_WRITE_EIO) {
                        faults_injected++;
                        return -EIO;
                }
                if (fault_kind == FAULT_WRITE_ENOSPC) {
                        faults_injected++;
                        return -ENOSPC;
                }
        }
        /* A journal write syncs itself (io_write_durable): its sync failing fails the write. */
        if ((c->opcode == IORING_OP_FSYNC || (c->opcode == IORING_OP_WRITE && c->durable)) &&
            fault_kind == FAULT_SYNC_EIO) {
                faults_injected++;
                return -EIO;
        }
        return result;
}

static uint32_t acknowledged;
static void on_durable(void *context, struct message *prepare)
{
        (void)context;
        (void)prepare;
        acknowledged++;
}

static struct message *make_prepare(uint64_t op, uint32_t body_size)
{
        struct message *m = message_pool_get(&pool);
        tally_assert(m != NULL);
        wire_header_init(m->header, COMMAND_PREPARE, 5, 0, WIRE_RELEASE_SERVER, 0);
        m->header->size = WIRE_HEADER_SIZE + body_size;
        m->header->prepare.op = op;
        m->header->prepare.operation = 138;
        for (uint32_t i = 0; i < body_size; i++)
                m->buffer[WIRE_HEADER_SIZE + i] = (uint8_t)(op * 7 + i);
        wire_header_set_checksum_body(m->header, m->buffer + WIRE_HEADER_SIZE, body_size);
        wire_header_set_checksum(m->header);
        return m;
}

static void run_until(struct storage *s, uint32_t *counter, uint32_t target)
{
        for (int i = 0; i < 500 && *counter < target && !s->failed; i++)
                io_run(&io, 2000000, true);
        for (int i = 0; i < 20; i++)
                io_run(&io, 1000000, true); /* let stragglers finish */
}

static bool open_storage(struct storage *s)
{
        char error[256];
        return storage_open(s, &io, &pool, path, STORAGE_ACCESS_WRITE, error, sizeof(error)) ==
               STORAGE_OK;
}

static bool prepare_readable(struct storage *s, uint64_t op)
{
        struct wire_header h;
        uint32_t slot = (uint32_t)(op % s->superblock.wal_slot_count);
        if (!storage_read_wal_header(s, slot, &h) || h.prepare.op != op)
                return false;
        struct message *m = message_pool_get(&pool);
        bool ok = storage_read_prepare(s, slot, &h, m);
        message_unref(&pool, m);
        return ok;
}

static void write_ops(struct storage *s, uint64_t first, uint64_t count)
{
        acknowledged = 0;
        for (uint64_t op = first; op < first + count; op++) {
                struct message *m = make_prepare(op, 1000 + (uint32_t)op * 13);
                CHECK(storage_write_prepare(s, m, on_durable, NULL));
                message_unref(&pool, m);
        }
        run_until(s, &acknowledged, (uint32_t)count);
}

static void test_format_and_open(void)
{
        char error[256];
        struct storage_format_options o = {.cluster = 5, .replica = 0, .replica_count = 1,
                                           .development = true};
        CHECK_EQ_U64(storage_format(path, &o, error, sizeof(error)), STORAGE_OK);
        CHECK_EQ_U64(storage_format(path, &o, error, sizeof(error)), STORAGE_ERROR_EXISTS);
        char missing[160];
        snprintf(missing, sizeof(missing), "%s/no/such/dir.tally", dir);
        CHECK_EQ_U64(storage_format(missing, &o, error, sizeof(error)), STORAGE_ERROR_IO);
        struct storage s;
        CHECK(open_storage(&s));
        CHECK(s.superblock.cluster == 5);
        CHECK_EQ_U64(s.superblock.checkpoint_op, 0);
        storage_close(&s);
}

static void test_writes_durable(void)
{
        struct storage s;
        CHECK(open_storage(&s));
        fault_kind = FAULT_NONE;
        write_ops(&s, 1, 20);
        CHECK_EQ_U64(acknowledged, 20);
        CHECK(s.syncs >= 1 && s.syncs <= 20); /* grouped */
        for (uint64_t op = 1; op <= 20; op++)
                CHECK(prepare_readable(&s, op));
        storage_close(&s);
}

static void test_short_writes_completed(void)
{
        struct storage s;
        CHECK(open_storage(&s));
        fault_kind = FAULT_SHORT_WRITE;
        faults_injected = 0;
        write_ops(&s, 21, 10);
        fault_kind = FAULT_NONE;
        CHECK(faults_injected > 0);
        CHECK_EQ_U64(acknowledged, 10);
        CHECK(!s.failed);
        for (uint64_t op = 21; op <= 30; op++)
                CHECK(prepare_readable(&s, op));
        storage_close(&s);
}

static void check_fault_not_acknowledged(enum fault_kind kind)
{
        struct storage s;
        CHECK(open_storage(&s));
        fault_kind = kind;
        faults_injected = 0;
        write_ops(&s, 31, 5);
        fault_kind = FAULT_NONE;
        CHECK(faults_injected > 0);
        CHECK_EQ_U64(acknowledged, 0);
        CHECK(s.failed);
        /* After a failure nothing more is accepted (no ack can be trusted). */
        struct message *m = make_prepare(40, 100);
        CHECK(!storage_write_prepare(&s, m, on_durable, NULL));
        message_unref(&pool, m);
        storage_close(&s);
        /* What was durable before is intact. */
        CHECK(open_storage(&s));
        for (uint64_t op = 1; op <= 30; op++)
                CHECK(prepare_readable(&s, op));
        storage_close(&s);
}

static void test_write_eio(void)
{
        check_fault_not_acknowledged(FAULT_WRITE_EIO);
}

static void test_write_enospc(void)
{
        check_fault_not_acknowledged(FAULT_WRITE_ENOSPC);
}

static void test_sync_eio(void)
{
        check_fault_not_acknowledged(FAULT_SYNC_EIO);
}

static uint32_t checkpoints_done;
static bool checkpoint_ok;
static void on_checkpoint(void *context, bool ok)
{
        (void)context;
        checkpoints_done++;
        checkpoint_ok = ok;
}

static bool checkpoint(struct storage *s, uint64_t op, struct ledger *ledger,
                       struct lsm_block_ref root)
{
        struct ledger_stats stats;
        ledger_get_stats(ledger, &stats);
        struct storage_checkpoint_request r;
        memset(&r, 0, sizeof(r));
        r.op = op;
        r.prepare_checksum = 77;
        r.timestamp = 1000 + op;
        r.root_address = root.address;
        r.root_checksum = root.checksum;
        r.blocks = stats.grid_blocks_used;
        r.grid_address_max = stats.grid_address_max;
        r.done = on_checkpoint;
        checkpoints_done = 0;
        if (!storage_checkpoint_start(s, &r))
                return false;
        run_until(s, &checkpoints_done, 1);
        return checkpoints_done == 1 && checkpoint_ok;
}

static struct ledger *ledger_on(struct storage *s)
{
        struct ledger_config config = {.device = storage_grid_device(s),
                                       .grid_blocks_max = GRID_BLOCKS_MAX,
                                       .memtable_max = 256,
                                       .table_data_blocks_max = 2};
        return ledger_create(&config);
}

/* Accounts first..first+count-1 (ledger 1, code 1). */
static void accounts_create(struct ledger *ledger, uint32_t first, uint32_t count,
                            uint64_t timestamp)
{
        static struct wire_account accounts[1000];
        static uint8_t reply[LEDGER_BODY_SIZE_MAX];
        tally_assert(count <= 1000);
        memset(accounts, 0, sizeof(accounts));
        for (uint32_t i = 0; i < count; i++) {
                accounts[i].id = first + i;
                accounts[i].ledger = 1;
                accounts[i].code = 1;
        }
        CHECK_EQ_U64(ledger_execute(ledger, OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED,
                                    timestamp, (const uint8_t *)accounts,
                                    count * sizeof(accounts[0]), reply),
                     0);
}

/* How many of the accounts 1..count the ledger holds. */
static uint32_t accounts_found(struct ledger *ledger, uint32_t count)
{
        static u128 ids[1000];
        static uint8_t reply[LEDGER_BODY_SIZE_MAX];
        tally_assert(count <= 1000);
        for (uint32_t i = 0; i < count; i++)
                ids[i] = i + 1;
        return ledger_execute(ledger, OPERATION_DEPRECATED_LOOKUP_ACCOUNTS_UNBATCHED, 1u << 30,
                              (const uint8_t *)ids, count * sizeof(u128), reply) /
               sizeof(struct wire_account);
}

/*
 * The ledger's blocks go to the grid zone as it writes them; a checkpoint makes them durable and
 * names the root, and the file reopened gives the same state. A failing checkpoint leaves the
 * previous one in force, and the blocks written since never touched it.
 */
/* Journals one prepare of `body_size` under `kind`, which must strike: how many were
 * acknowledged (0 or 1). */
static uint32_t write_one_faulted(struct storage *s, uint64_t op, uint32_t body_size,
                                  enum fault_kind kind)
{
        fault_kind = kind;
        faults_injected = 0;
        acknowledged = 0;
        struct message *m = make_prepare(op, body_size);
        CHECK(storage_write_prepare(s, m, on_durable, NULL));
        message_unref(&pool, m);
        run_until(s, &acknowledged, 1);
        fault_kind = FAULT_NONE;
        CHECK(faults_injected > 0);
        return acknowledged;
}

/*
 * Prepares of STORAGE_SELF_SYNC_MIN bytes or more sync themselves (RWF_DSYNC writes, no
 * fdatasync): each is acknowledged once both its writes complete, and a failure of those writes
 * or of their sync is never acknowledged. A file formatted for production (1 MiB messages).
 */
static void test_large_prepares_sync_themselves(void)
{
        char large[160];
        snprintf(large, sizeof(large), "%s/large.tally", dir);
        char error[256];
        struct storage_format_options o = {.cluster = 5, .replica = 0, .replica_count = 1};
        CHECK_EQ_U64(storage_format(large, &o, error, sizeof(error)), STORAGE_OK);
        struct storage s;
        CHECK_EQ_U64(storage_open(&s, &io, &pool, large, STORAGE_ACCESS_WRITE, error,
                                  sizeof(error)),
                     STORAGE_OK);
        CHECK(s.superblock.message_size_max >= 2 * STORAGE_SELF_SYNC_MIN);
        fault_kind = FAULT_NONE;
        acknowledged = 0;
        uint64_t syncs = s.syncs;
        for (uint64_t op = 1; op <= 6; op++) {
                struct message *m = make_prepare(op, STORAGE_SELF_SYNC_MIN + (uint32_t)op * 4099);
                CHECK(storage_write_prepare(&s, m, on_durable, NULL));
                message_unref(&pool, m);
        }
        run_until(&s, &acknowledged, 6);
        CHECK_EQ_U64(acknowledged, 6);
        CHECK_EQ_U64(s.syncs - syncs, 6); /* one per prepare, none shared */
        CHECK(!s.sync_pending);
        CHECK_EQ_U64(storage_journal_writes_in_flight(&s), 0);
        for (uint64_t op = 1; op <= 6; op++)
                CHECK(prepare_readable(&s, op));
        /* Short writes are finished, synced as well. */
        CHECK_EQ_U64(write_one_faulted(&s, 7, 3 * STORAGE_SELF_SYNC_MIN, FAULT_SHORT_WRITE), 1);
        CHECK(prepare_readable(&s, 7));
        /* Their sync failing fails them. */
        CHECK_EQ_U64(write_one_faulted(&s, 8, STORAGE_SELF_SYNC_MIN, FAULT_SYNC_EIO), 0);
        CHECK(s.failed);
        CHECK_EQ_U64(storage_journal_writes_in_flight(&s), 0);
        storage_close(&s);
        unlink(large);
}

static void test_checkpoints(void)
{
        struct storage s;
        CHECK(open_storage(&s));
        struct ledger *ledger = ledger_on(&s);
        tally_assert(ledger != NULL);
        accounts_create(ledger, 1, 500, 1000000);
        struct lsm_block_ref root;
        const char user[] = "sessions";
        CHECK(ledger_checkpoint(ledger, user, sizeof(user), &root));
        CHECK(checkpoint(&s, 64, ledger, root));
        ledger_checkpoint_durable(ledger);
        struct ledger_stats stats;
        ledger_get_stats(ledger, &stats);
        CHECK(stats.grid_blocks_written > 10);
        CHECK(s.grid_block_count > stats.grid_address_max); /* room ahead */
        ledger_destroy(ledger);
        storage_close(&s);

        CHECK(open_storage(&s));
        CHECK_EQ_U64(s.superblock.checkpoint_op, 64);
        CHECK(s.superblock.checkpoint_prepare_checksum == 77);
        CHECK_EQ_U64(s.superblock.root_address, root.address);
        CHECK(s.superblock.root_checksum == root.checksum);
        ledger = ledger_on(&s);
        char back[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t back_size = 0;
        char error[256];
        CHECK_EQ_U64(ledger_open(ledger, root, back, &back_size, error, sizeof(error)), 0);
        CHECK_EQ_U64(back_size, sizeof(user));
        CHECK_EQ_U64(accounts_found(ledger, 1000), 500);
        /* A failing checkpoint leaves the previous one in force. */
        accounts_create(ledger, 501, 300, 2000000);
        struct lsm_block_ref later;
        CHECK(ledger_checkpoint(ledger, user, sizeof(user), &later));
        fault_kind = FAULT_SYNC_EIO;
        CHECK(!checkpoint(&s, 128, ledger, later));
        fault_kind = FAULT_NONE;
        ledger_destroy(ledger);
        storage_close(&s);
        CHECK(open_storage(&s));
        CHECK_EQ_U64(s.superblock.checkpoint_op, 64);
        ledger = ledger_on(&s);
        CHECK_EQ_U64(ledger_open(ledger, root, back, &back_size, error, sizeof(error)), 0);
        CHECK_EQ_U64(accounts_found(ledger, 1000), 500);
        /*
         * A superblock write reported failed (it may have landed on some copies or none): not
         * acknowledged, and whichever checkpoint the file names afterwards opens whole.
         */
        accounts_create(ledger, 501, 300, 2000000);
        CHECK(ledger_checkpoint(ledger, user, sizeof(user), &later));
        fault_kind = FAULT_WRITE_EIO;
        CHECK(!checkpoint(&s, 128, ledger, later));
        fault_kind = FAULT_NONE;
        ledger_destroy(ledger);
        storage_close(&s);
        CHECK(open_storage(&s));
        bool newer = s.superblock.checkpoint_op == 128;
        CHECK(newer || s.superblock.checkpoint_op == 64);
        struct lsm_block_ref named = {.address = s.superblock.root_address,
                                      .checksum = s.superblock.root_checksum};
        ledger = ledger_on(&s);
        CHECK_EQ_U64(ledger_open(ledger, named, back, &back_size, error, sizeof(error)), 0);
        CHECK_EQ_U64(accounts_found(ledger, 1000), newer ? 800 : 500);
        ledger_destroy(ledger);
        storage_close(&s);
}

/*
 * In a child process (a lock is per process): opens `path` with `access` and expects `want`;
 * when `holder` is not 0, also that the error names it. True if the child saw what we expect.
 */
static bool child_open(enum storage_access access, enum storage_error want, pid_t holder)
{
        pid_t child = fork();
        if (child == 0) {
                static struct storage s;
                char error[512];
                /* No io: the parent's ring is not the child's to use. */
                enum storage_error rc = storage_open(&s, NULL, NULL, path, access, error,
                                                     sizeof(error));
                char pid_text[32];
                snprintf(pid_text, sizeof(pid_text), "(pid %d,", (int)holder);
                bool ok = rc == want && (holder == 0 || strstr(error, pid_text) != NULL);
                if (!ok)
                        fprintf(stderr, "child: %s: %s\n", storage_error_name(rc), error);
                if (rc == STORAGE_OK)
                        storage_close(&s);
                _exit(ok ? 0 : 1);
        }
        int status = 0;
        return child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
               WEXITSTATUS(status) == 0;
}

/* A child's format over `path`: refused, and the error names `holder`. */
static bool child_format_refused(pid_t holder)
{
        pid_t child = fork();
        if (child == 0) {
                char error[512];
                struct storage_format_options o = {.cluster = 5, .replica = 0,
                                                   .replica_count = 1, .development = true};
                enum storage_error rc = storage_format(path, &o, error, sizeof(error));
                char pid_text[32];
                snprintf(pid_text, sizeof(pid_text), "(pid %d,", (int)holder);
                _exit(rc == STORAGE_ERROR_EXISTS && strstr(error, pid_text) != NULL ? 0 : 1);
        }
        int status = 0;
        return child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
               WEXITSTATUS(status) == 0;
}

/* One process per data file: a writer excludes everyone, readers exclude writers only. */
static void test_lock(void)
{
        pid_t self = getpid();
        CHECK(child_open(STORAGE_ACCESS_WRITE, STORAGE_OK, 0)); /* free to begin with */
        struct storage s;
        CHECK(open_storage(&s));
        CHECK(child_open(STORAGE_ACCESS_WRITE, STORAGE_ERROR_IN_USE, self));
        CHECK(child_open(STORAGE_ACCESS_READ, STORAGE_ERROR_IN_USE, self));
        CHECK(child_open(STORAGE_ACCESS_READ_LIVE, STORAGE_OK, 0));
        CHECK(child_format_refused(self));
        /* A second open in this process is refused before it could drop the lock by closing. */
        static struct storage again;
        char error[512];
        CHECK_EQ_U64(storage_open(&again, &io, &pool, path, STORAGE_ACCESS_READ, error,
                                  sizeof(error)),
                     STORAGE_ERROR_IN_USE);
        struct storage_format_options o = {.cluster = 5, .replica = 0, .replica_count = 1,
                                           .development = true};
        CHECK_EQ_U64(storage_format(path, &o, error, sizeof(error)), STORAGE_ERROR_EXISTS);
        /* Neither attempt released the lock. */
        CHECK(child_open(STORAGE_ACCESS_WRITE, STORAGE_ERROR_IN_USE, self));
        storage_close(&s);
        CHECK(child_open(STORAGE_ACCESS_WRITE, STORAGE_OK, 0));

        /* Readers share; a writer waits for none of them. */
        CHECK_EQ_U64(storage_open(&s, NULL, NULL, path, STORAGE_ACCESS_READ, error,
                                  sizeof(error)),
                     STORAGE_OK);
        CHECK(child_open(STORAGE_ACCESS_READ, STORAGE_OK, 0));
        CHECK(child_open(STORAGE_ACCESS_WRITE, STORAGE_ERROR_IN_USE, self));
        storage_close(&s);
        CHECK(open_storage(&s)); /* and the table let go of it */
        storage_close(&s);
}

/* A grid block whose every 8-byte word says (address, generation). */
static void block_fill(uint8_t *block, uint64_t address, uint64_t generation)
{
        for (uint32_t i = 0; i < GRID_BLOCK_SIZE; i += 16) {
                memcpy(block + i, &address, 8);
                memcpy(block + i + 8, &generation, 8);
        }
}

static bool block_is(struct storage *s, uint64_t address, uint64_t generation)
{
        static uint8_t want[GRID_BLOCK_SIZE] __attribute__((aligned(4096)));
        static uint8_t got[GRID_BLOCK_SIZE] __attribute__((aligned(4096)));
        block_fill(want, address, generation);
        return storage_grid_read(s, address, got) == 0 && memcmp(want, got, GRID_BLOCK_SIZE) == 0;
}

/* read_many_start, then a wait for each read it started (the grid's way): the results. */
static void read_many(struct lsm_device *device, const uint64_t *addresses, uint8_t *const *blocks,
                      int *results, uint32_t count)
{
        for (uint32_t i = 0; i < count;) {
                uint32_t started =
                        device->read_many_start(device->context, addresses + i, blocks + i,
                                                count - i);
                CHECK(started > 0);
                /* Waited for out of order: the last first. */
                for (uint32_t k = started; k-- > 0;)
                        results[i + k] = device->read_many_wait(device->context, k);
                i += started;
        }
}

/*
 * The grid device's reads of many blocks at once (lsm_grid_prefetch): more blocks than its
 * ring holds at once, read whole; a block whose write is still in flight comes from that
 * write; an address past the file reads as zeros (its check fails), address 0 is refused; a
 * read that fails or comes back short says so, and the next call reads again.
 */
static void test_grid_read_many(void)
{
        static uint8_t block[GRID_BLOCK_SIZE] __attribute__((aligned(4096)));
        struct storage s;
        CHECK(open_storage(&s));
        const uint32_t count = 2 * STORAGE_GRID_READS_MAX + 7;
        for (uint64_t a = 1; a <= count; a++) {
                block_fill(block, a, 1);
                CHECK_EQ_U64(storage_grid_write(&s, a, block), 0);
        }
        CHECK_EQ_U64(storage_grid_flush(&s), 0);
        block_fill(block, 2, 2);
        CHECK_EQ_U64(storage_grid_write(&s, 2, block), 0); /* may still be in flight */
        struct lsm_device device = storage_grid_device(&s);
        CHECK(device.read_many_start != NULL && device.read_many_wait != NULL);
        const uint32_t n = count + 2;
        uint64_t *addresses = calloc(n, sizeof(*addresses));
        uint8_t **blocks = calloc(n, sizeof(*blocks));
        uint8_t *memory = malloc((size_t)n * GRID_BLOCK_SIZE);
        int *results = calloc(n, sizeof(*results));
        uint8_t *want = malloc(GRID_BLOCK_SIZE);
        CHECK(addresses != NULL && blocks != NULL && memory != NULL && results != NULL &&
              want != NULL);
        for (uint32_t i = 0; i < n; i++) {
                addresses[i] = i < count ? count - i : i == count ? count + 10 : 0;
                blocks[i] = memory + (size_t)i * GRID_BLOCK_SIZE;
        }
        memset(memory, 0xee, (size_t)n * GRID_BLOCK_SIZE);
        read_many(&device, addresses, blocks, results, n);
        uint32_t wrong = 0;
        for (uint32_t i = 0; i < count; i++) {
                block_fill(want, addresses[i], addresses[i] == 2 ? 2 : 1);
                wrong += results[i] != 0 || memcmp(want, blocks[i], GRID_BLOCK_SIZE) != 0;
        }
        CHECK_EQ_U64(wrong, 0);
        memset(want, 0, GRID_BLOCK_SIZE);
        CHECK(results[count] == 0 && memcmp(want, blocks[count], GRID_BLOCK_SIZE) == 0);
        CHECK(results[count + 1] == -EINVAL);
        CHECK(s.grid_reader.io != NULL);
        CHECK_EQ_U64(s.grid_reader.in_flight, 0);
        /* Failed and short reads. */
        CHECK_EQ_U64(storage_grid_flush(&s), 0);
        s.grid_reader.io->fault = inject;
        for (int kind = FAULT_READ_EIO; kind <= FAULT_SHORT_READ; kind++) {
                fault_kind = (enum fault_kind)kind;
                faults_injected = 0;
                read_many(&device, addresses, blocks, results, 8);
                uint32_t failed = 0;
                for (uint32_t i = 0; i < 8; i++)
                        failed += results[i] == -EIO;
                CHECK_EQ_U64(failed, 8);
                CHECK_EQ_U64(faults_injected, 8);
        }
        fault_kind = FAULT_NONE;
        read_many(&device, addresses, blocks, results, 8);
        wrong = 0;
        for (uint32_t i = 0; i < 8; i++) {
                block_fill(want, addresses[i], addresses[i] == 2 ? 2 : 1);
                wrong += results[i] != 0 || memcmp(want, blocks[i], GRID_BLOCK_SIZE) != 0;
        }
        CHECK_EQ_U64(wrong, 0);
        free(addresses);
        free(blocks);
        free(memory);
        free(results);
        free(want);
        storage_close(&s);
}

/*
 * Grid writes return before they land (STORAGE_GRID_WRITES_MAX in flight): a block reads back
 * whole at once, from its copy while in flight; a second write of one address wins over the
 * first; every block is on disk after storage_grid_flush and after a reopen. A failed write
 * fails the flush, every later write and the next checkpoint, which never names it.
 */
static void test_grid_writes_async(void)
{
        static uint8_t block[GRID_BLOCK_SIZE] __attribute__((aligned(4096)));
        struct storage s;
        CHECK(open_storage(&s));
        const uint64_t count = 3 * STORAGE_GRID_WRITES_MAX + 5;
        bool all_read = true;
        for (uint64_t a = 1; a <= count; a++) {
                block_fill(block, a, 1);
                CHECK_EQ_U64(storage_grid_write(&s, a, block), 0);
                memset(block, 0xee, sizeof(block)); /* the caller's block is free at once */
                all_read = all_read && block_is(&s, a, 1);
        }
        CHECK(all_read);
        CHECK(s.grid_writer.io != NULL);
        /* Rewrites of addresses likely still in flight: the last one wins. */
        for (uint64_t generation = 2; generation <= 4; generation++) {
                for (uint64_t a = count - 3; a <= count; a++) {
                        block_fill(block, a, generation);
                        CHECK_EQ_U64(storage_grid_write(&s, a, block), 0);
                }
        }
        CHECK_EQ_U64(storage_grid_flush(&s), 0);
        CHECK_EQ_U64(s.grid_writer.in_flight, 0);
        CHECK(block_is(&s, 1, 1) && block_is(&s, count, 4));
        storage_close(&s);
        CHECK(open_storage(&s));
        all_read = true;
        for (uint64_t a = 1; a <= count; a++)
                all_read = all_read && block_is(&s, a, a > count - 4 ? 4 : 1);
        CHECK(all_read);

        /* Short writes are finished. */
        block_fill(block, 1, 5);
        CHECK_EQ_U64(storage_grid_write(&s, 1, block), 0);
        s.grid_writer.io->fault = inject;
        fault_kind = FAULT_SHORT_WRITE;
        faults_injected = 0;
        for (uint64_t a = 1; a <= 8; a++) {
                block_fill(block, a, 6);
                CHECK_EQ_U64(storage_grid_write(&s, a, block), 0);
        }
        CHECK_EQ_U64(storage_grid_flush(&s), 0);
        fault_kind = FAULT_NONE;
        CHECK(faults_injected > 0);
        storage_close(&s);
        CHECK(open_storage(&s));
        all_read = true;
        for (uint64_t a = 1; a <= 8; a++)
                all_read = all_read && block_is(&s, a, 6);
        CHECK(all_read);

        /* A failed write: reported by the flush and every later write, never checkpointed. */
        uint64_t checkpoint_op = s.superblock.checkpoint_op;
        block_fill(block, 1, 7);
        CHECK_EQ_U64(storage_grid_write(&s, 1, block), 0);
        s.grid_writer.io->fault = inject;
        fault_kind = FAULT_WRITE_EIO;
        block_fill(block, 2, 7);
        CHECK_EQ_U64(storage_grid_write(&s, 2, block), 0); /* not landed yet: no error so far */
        CHECK_EQ_U64(storage_grid_flush(&s), (uint64_t)-EIO);
        fault_kind = FAULT_NONE;
        CHECK_EQ_U64(storage_grid_write(&s, 3, block), (uint64_t)-EIO);
        struct ledger *ledger = ledger_on(&s);
        tally_assert(ledger != NULL);
        CHECK(!checkpoint(&s, checkpoint_op + 64, ledger,
                          (struct lsm_block_ref){.address = 1, .checksum = 1}));
        ledger_destroy(ledger);
        storage_close(&s);
        CHECK(open_storage(&s));
        CHECK_EQ_U64(s.superblock.checkpoint_op, checkpoint_op);
        storage_close(&s);
}

/*
 * Blocks written at consecutive addresses leave in one write of up to STORAGE_GRID_WRITE_RUN_MAX
 * blocks, issued when full, when a block that does not follow comes, at a flush, or when the
 * loop's device is told a flush of tables ended (`issue`); until then they read back from the
 * writer's buffer, and a block written again before its write left is written once, newest.
 */
static void test_grid_writes_joined(void)
{
        static uint8_t block[GRID_BLOCK_SIZE] __attribute__((aligned(4096)));
        struct storage s;
        CHECK(open_storage(&s));
        const uint64_t run = STORAGE_GRID_WRITE_RUN_MAX, count = 2 * run + 8;
        for (uint64_t a = 1; a <= count; a++) {
                block_fill(block, a, 1);
                CHECK_EQ_U64(storage_grid_write(&s, a, block), 0);
        }
        CHECK_EQ_U64(s.grid_writer.writes_issued, 2); /* two full runs; the last 8 held */
        CHECK(block_is(&s, count, 1));                /* from the held run's buffer */
        block_fill(block, count, 2);
        CHECK_EQ_U64(storage_grid_write(&s, count, block), 0); /* again, still held */
        CHECK_EQ_U64(s.grid_writer.writes_issued, 2);
        CHECK(block_is(&s, count, 2));
        block_fill(block, 1000, 1);
        CHECK_EQ_U64(storage_grid_write(&s, 1000, block), 0); /* does not follow: 8 leave */
        CHECK_EQ_U64(s.grid_writer.writes_issued, 3);
        struct lsm_device device = storage_grid_device(&s);
        CHECK(device.issue != NULL);
        device.issue(device.context); /* the loop's flush ended: block 1000 leaves */
        CHECK_EQ_U64(s.grid_writer.writes_issued, 4);
        block_fill(block, 1001, 1);
        CHECK_EQ_U64(storage_grid_write(&s, 1001, block), 0);
        CHECK_EQ_U64(storage_grid_flush(&s), 0);
        CHECK_EQ_U64(s.grid_writer.writes_issued, 5);
        CHECK_EQ_U64(s.grid_writer.in_flight, 0);
        CHECK_EQ_U64(s.grid_writer.blocks_written, count + 3);
        /* A block that follows the held run but whose earlier write was issued does not join
         * it: the held run leaves, and the new write waits for the earlier one. */
        for (uint64_t a = 2000; a < 2000 + run; a++) {
                block_fill(block, a, 1);
                CHECK_EQ_U64(storage_grid_write(&s, a, block), 0);
        }
        CHECK_EQ_U64(s.grid_writer.writes_issued, 6); /* full: issued */
        block_fill(block, 1998, 1);
        CHECK_EQ_U64(storage_grid_write(&s, 1998, block), 0);
        block_fill(block, 1999, 1);
        CHECK_EQ_U64(storage_grid_write(&s, 1999, block), 0);
        block_fill(block, 2000, 2);
        CHECK_EQ_U64(storage_grid_write(&s, 2000, block), 0);
        CHECK_EQ_U64(s.grid_writer.writes_issued, 7); /* 1998-1999 left; 2000 is held */
        CHECK(block_is(&s, 2000, 2));
        CHECK_EQ_U64(storage_grid_flush(&s), 0);
        storage_close(&s);
        CHECK(open_storage(&s));
        bool all_read = true;
        for (uint64_t a = 1; a <= count; a++)
                all_read = all_read && block_is(&s, a, a == count ? 2 : 1);
        CHECK(all_read && block_is(&s, 1000, 1) && block_is(&s, 1001, 1));
        for (uint64_t a = 1998; a < 2000 + run; a++)
                all_read = all_read && block_is(&s, a, a == 2000 ? 2 : 1);
        CHECK(all_read);
        storage_close(&s);
}

int main(void)
{
        log_set_level(LOG_OFF);
        snprintf(dir, sizeof(dir), "/tmp/tally-test-storage.XXXXXX");
        if (mkdtemp(dir) == NULL)
                return 1;
        snprintf(path, sizeof(path), "%s/a.tally", dir);
        if (io_init(&io, 64) != 0 || message_pool_init(&pool, 64) != 0)
                return 1;
        io.fault = inject;
        TEST_RUN(test_format_and_open);
        TEST_RUN(test_writes_durable);
        TEST_RUN(test_short_writes_completed);
        TEST_RUN(test_write_eio);
        TEST_RUN(test_write_enospc);
        TEST_RUN(test_sync_eio);
        TEST_RUN(test_large_prepares_sync_themselves);
        TEST_RUN(test_checkpoints);
        TEST_RUN(test_grid_writes_async);
        TEST_RUN(test_grid_writes_joined);
        TEST_RUN(test_grid_read_many);
        TEST_RUN(test_lock);
        unlink(path);
        rmdir(dir);
        TEST_MAIN_END();
}
