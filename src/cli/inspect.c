/*
 * inspect.c: `tally inspect <path> [--json] [--live] [--verify]`: what a data file holds, what
 * of it is damaged, and what `tally start` would do about it, for a person or a script.
 *
 * Prints every superblock copy (and which are valid), the zones, the checkpoint and the range
 * of ops in the journal. Then it verifies every checksum it can, as start's recovery would
 * meet them: each superblock copy; the checkpoint's root block (the grid block the superblock
 * names), the session table in it and the reply of every session it keeps, the ledger opened
 * from the root (its manifest and free set blocks), then every other block of the checkpoint
 * (its tables' index and data blocks, which start reads only when the ledger needs them, so a
 * damaged one stops a running replica later); every journal entry after the checkpoint
 * (header, body, and the hash chain from the checkpoint's prepare on). Each damage is listed
 * with its consequence, and the verdict says whether start would succeed as is, succeed by
 * dropping or repairing something (a torn journal head is dropped; a replica of a cluster
 * copies a damaged checkpoint or journal entry from a peer), or fail. The exit status says
 * the same: 0 intact, 3 damaged but start succeeds (drops, or repairs from peers), 1 start
 * would fail (or the file cannot be read), 2 bad usage. It only reads; a damaged file is
 * described, never changed.
 *
 * --verify also checks the invariants of the ledger opened from an intact checkpoint, on the
 * file's own grid (ledger_verify): per ledger debits equal credits, posted and pending; every
 * account's balances equal the sum of its transfers. A violation is a failure (exit 1): no
 * peer would hold anything better. (--accounts-max / --transfers-max are accepted as start's
 * limits; a checkpoint no longer depends on them.)
 *
 * It holds a shared lock while it reads, so it refuses a file a running replica holds (naming
 * its pid): a superblock copy or journal entry caught half written would look damaged, and a
 * person reading "INVALID" about a healthy replica may act on it. `--live` reads such a file
 * anyway, without any lock (so it never makes a replica's start fail either): for scripts and
 * tests that watch a running replica's progress and know what they see may be mid-write; it
 * checks headers only (no bodies, blocks or replies) and gives no verdict.
 */
#include "cli/cli.h"
#include "ledger/ledger.h"
#include "lib/flags.h"
#include "lib/log.h"
#include "storage/storage.h"
#include "vsr/replica.h"
#include "wire/checksum.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_INTACT 0
#define EXIT_START_FAILS 1
#define EXIT_REPAIRABLE 3

/* Damage listed one line each; beyond this many only counted. */
#define DAMAGE_LINES_MAX 32u

struct findings {
        char lines[DAMAGE_LINES_MAX][320];
        uint32_t count;      /* damages found (may exceed the lines kept) */
        bool fatal;          /* start would fail */
        char fatal_why[320]; /* the first reason it would */
        bool verified;       /* --verify ran and passed */
        char verify_text[320];
};

static struct findings findings;

__attribute__((format(printf, 2, 3))) static void damage(bool fatal, const char *fmt, ...)
{
        char line[320];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (findings.count < DAMAGE_LINES_MAX)
                memcpy(findings.lines[findings.count], line, sizeof(line));
        findings.count++;
        if (fatal && !findings.fatal) {
                findings.fatal = true;
                memcpy(findings.fatal_why, line, sizeof(line));
        }
}

struct wal_summary {
        uint64_t op_min;
        uint64_t op_max;
        uint32_t valid;
        uint32_t invalid;
};

static bool header_blank(const struct wire_header *header)
{
        const uint8_t *bytes = (const uint8_t *)header;
        for (uint32_t i = 0; i < sizeof(*header); i++) {
                if (bytes[i] != 0)
                        return false;
        }
        return true;
}

static void wal_scan(struct storage *storage, struct wal_summary *w)
{
        memset(w, 0, sizeof(*w));
        static struct wire_header header;
        for (uint32_t slot = 0; slot < storage->superblock.wal_slot_count; slot++) {
                if (!storage_read_wal_header(storage, slot, &header)) {
                        if (!header_blank(&header))
                                w->invalid++;
                        continue;
                }
                w->valid++;
                if (w->op_min == 0 || header.prepare.op < w->op_min)
                        w->op_min = header.prepare.op;
                if (header.prepare.op > w->op_max)
                        w->op_max = header.prepare.op;
        }
}

/*
 * The journal as recovery reads it (replica_open): the head is the highest op after the
 * checkpoint with an intact header in its slot; every op from the checkpoint to the head
 * needs an intact header, an intact body and the hash chain. A damaged head is dropped (a
 * write torn by a crash, never acknowledged); a damaged entry before the head stops a single
 * replica and is repaired from a peer in a cluster. Damaged slots outside that range are
 * older or torn entries recovery never reads.
 */
static void wal_check(struct storage *storage, struct message *prepare)
{
        const struct superblock *sb = &storage->superblock;
        uint32_t slots = sb->wal_slot_count;
        uint64_t checkpoint_op = sb->root_address != 0 ? sb->checkpoint_op : 0;
        bool cluster = sb->replica_count > 1;
        static struct wire_header header;
        uint64_t head = checkpoint_op;
        for (uint32_t slot = 0; slot < slots; slot++) {
                if (storage_read_wal_header(storage, slot, &header) &&
                    header.prepare.op % slots == slot && header.prepare.op > head &&
                    header.prepare.op <= checkpoint_op + slots)
                        head = header.prepare.op;
        }
        static bool covered[1u << 16];
        tally_assert(slots <= ARRAY_LEN(covered));
        memset(covered, 0, sizeof(covered));
        u128 parent = sb->checkpoint_prepare_checksum;
        bool chain_known = checkpoint_op == 0 || sb->checkpoint_prepare_checksum != 0;
        for (uint64_t op = checkpoint_op + 1; op <= head; op++) {
                uint32_t slot = (uint32_t)(op % slots);
                covered[slot] = true;
                const char *zone = NULL;
                if (!storage_read_wal_header(storage, slot, &header) || header.prepare.op != op)
                        zone = "wal headers";
                else if (!storage_read_prepare(storage, slot, &header, prepare))
                        zone = "wal prepares";
                else if (chain_known && op > 1 && header.prepare.parent != parent)
                        zone = "wal (hash chain)";
                if (zone == NULL) {
                        parent = header.checksum;
                        chain_known = true;
                        continue;
                }
                chain_known = false; /* the next entry's parent cannot be checked */
                if (op == head)
                        damage(false,
                               "journal op %llu (zone %s) is damaged at the head: start drops "
                               "it as a write torn by a crash, never acknowledged",
                               (unsigned long long)op, zone);
                else if (cluster)
                        damage(false,
                               "journal op %llu (zone %s) is damaged with ops up to %llu after "
                               "it: start repairs it from a peer",
                               (unsigned long long)op, zone, (unsigned long long)head);
                else
                        damage(true,
                               "journal op %llu (zone %s) is damaged with ops up to %llu after "
                               "it: a single replica has no peer to repair it from, start fails",
                               (unsigned long long)op, zone, (unsigned long long)head);
        }
        for (uint32_t slot = 0; slot < slots; slot++) {
                if (covered[slot] || storage_read_wal_header(storage, slot, &header) ||
                    header_blank(&header))
                        continue;
                damage(false,
                       "journal slot %u has a damaged header outside the ops start replays "
                       "(%llu..%llu): ignored (a torn write past the head, or an old entry)",
                       slot, (unsigned long long)checkpoint_op + 1, (unsigned long long)head);
        }
}

/*
 * The ledger's grid device for inspect: the data file's blocks, read only (a write fails, so
 * inspect can never change the file). It remembers the last address the ledger read, to name
 * a block the ledger could not read when all it says is that one failed.
 */
struct inspect_device {
        struct storage *storage;
        uint64_t last_read;
};

static int inspect_device_read(void *context, uint64_t address, uint8_t *block)
{
        struct inspect_device *d = context;
        d->last_read = address;
        return storage_grid_read(d->storage, address, block);
}

static int inspect_device_write(void *context, uint64_t address, const uint8_t *block)
{
        (void)context, (void)address, (void)block;
        return -EROFS;
}

static const char *block_kind_name(uint8_t kind)
{
        switch (kind) {
        case LSM_BLOCK_ROOT:
                return "root";
        case LSM_BLOCK_MANIFEST:
                return "manifest";
        case LSM_BLOCK_FREE_SET:
                return "free set";
        case LSM_BLOCK_TABLE_INDEX:
                return "table index";
        case LSM_BLOCK_TABLE_DATA:
                return "table data";
        default:
                return "unknown";
        }
}

/* What the walk over the checkpoint's blocks found, per tree (the tree of a table's index). */
#define TREES_MAX 256u
struct image_summary {
        bool walked;          /* every block of the checkpoint was listed and read */
        uint64_t blocks;      /* blocks of the image: root, manifest, free set, tables */
        uint64_t damaged;
        uint32_t trees_used;
        struct {
                uint64_t tables;
                uint64_t blocks;
                uint64_t first_data_block;
        } trees[TREES_MAX];
};

static struct image_summary image;

struct walk {
        struct storage *storage;
        uint8_t *block;
        bool cluster;
        bool tree_known; /* the index block before this table's data blocks was read */
        uint8_t tree;
};

/*
 * A table block as a replica meets it: start opens a checkpoint reading its root, manifest and
 * free set only, so a damaged table block is found when the ledger first needs it. A single
 * replica then stops; one of a cluster restarts itself and copies a peer's checkpoint (grid
 * repair, start.c), so start succeeds there.
 */
#define TABLE_BLOCK_CONSEQUENCE(cluster)                                                           \
        ((cluster) ? "start opens the checkpoint without reading it; when the replica first "  \
                     "needs the block it restarts itself and copies a peer's checkpoint (grid " \
                     "repair)"                                                                  \
                   : "start opens the checkpoint without reading it and the replica stops "     \
                     "when it first needs the block: restore a backup")

static int walk_visit(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        struct walk *w = context;
        image.blocks++;
        int rc = storage_grid_read(w->storage, ref.address, w->block);
        const char *problem = rc != 0 ? strerror(-rc)
                                      : lsm_block_check(w->block, ref, (enum lsm_block_kind)kind);
        if (kind == LSM_BLOCK_TABLE_INDEX) {
                w->tree_known = problem == NULL;
                w->tree = ((const struct lsm_block_header *)w->block)->tree;
        }
        if (problem != NULL) {
                image.damaged++;
                bool table = kind == LSM_BLOCK_TABLE_INDEX || kind == LSM_BLOCK_TABLE_DATA;
                char tree[32] = "";
                if (kind == LSM_BLOCK_TABLE_DATA && w->tree_known)
                        snprintf(tree, sizeof(tree), " of tree %u", w->tree);
                damage(table && !w->cluster,
                       "checkpoint grid block %llu (%s%s) is damaged: %s (zone grid); %s",
                       (unsigned long long)ref.address, block_kind_name(kind), tree, problem,
                       table ? TABLE_BLOCK_CONSEQUENCE(w->cluster)
                             : "start fails to open the checkpoint");
                return 0;
        }
        if ((kind == LSM_BLOCK_TABLE_INDEX || kind == LSM_BLOCK_TABLE_DATA) && w->tree_known) {
                if (image.trees[w->tree].blocks == 0)
                        image.trees_used++;
                image.trees[w->tree].blocks++;
                if (kind == LSM_BLOCK_TABLE_INDEX)
                        image.trees[w->tree].tables++;
                else if (image.trees[w->tree].first_data_block == 0)
                        image.trees[w->tree].first_data_block = ref.address;
        }
        return 0;
}

/*
 * The checkpoint as start's recovery meets it (replica_restore): the root block the superblock
 * names, its session table and every session's reply, then the ledger opened from the root
 * (manifest and free set). Then every other block of the checkpoint against the reference that
 * names it (start reads those only when the ledger needs them). True if the ledger is open on
 * an intact checkpoint (for --verify).
 */
static bool checkpoint_check(struct storage *storage, struct message *reply, struct ledger *ledger,
                             struct inspect_device *device, uint8_t *block)
{
        const struct superblock *sb = &storage->superblock;
        bool cluster = sb->replica_count > 1;
        const char *consequence = cluster ? "start copies a peer's checkpoint (state sync)"
                                          : "a single replica cannot start without it";
        if (sb->root_address == 0)
                return false;
        if (sb->grid_syncing) {
                damage(!cluster,
                       "checkpoint: a state sync or restore was writing another replica's blocks "
                       "into the grid (grid_syncing), so the checkpoint at op %llu is not to be "
                       "trusted; %s",
                       (unsigned long long)sb->checkpoint_op, consequence);
                return false;
        }
        struct lsm_block_ref root = {.address = sb->root_address, .checksum = sb->root_checksum};
        int rc = storage_grid_read(storage, root.address, block);
        const char *problem = rc != 0 ? strerror(-rc)
                                      : lsm_block_check(block, root, LSM_BLOCK_ROOT);
        if (problem != NULL) {
                damage(!cluster, "checkpoint root block %llu is damaged: %s (zone grid); %s",
                       (unsigned long long)root.address, problem, consequence);
                return false;
        }
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (replica_checkpoint_sessions(block, LSM_BLOCK_SIZE, sessions) != 0) {
                damage(!cluster,
                       "checkpoint root block %llu has no valid session table (zone grid); %s",
                       (unsigned long long)root.address, consequence);
                return false;
        }
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (!sessions[i].used)
                        continue;
                char error[256];
                if (sessions[i].slot / 2 != i ||
                    storage_read_reply(storage, sessions[i].slot, reply,
                                       sessions[i].reply_checksum, error, sizeof(error)) != 0)
                        damage(!cluster,
                               "reply of session %u (slot %u) fails its checksum (zone client "
                               "replies); %s",
                               i, sessions[i].slot, consequence);
        }
        static uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t user_size = 0;
        char why[256];
        if (ledger_open(ledger, root, user, &user_size, why, sizeof(why)) != 0) {
                damage(!cluster, "checkpoint does not open: %s (zone grid); %s", why,
                       consequence);
                return false;
        }
        uint64_t damaged_before = findings.count;
        struct walk w = {.storage = storage, .block = block, .cluster = cluster};
        device->last_read = 0;
        rc = ledger_checkpoint_blocks(ledger, root, walk_visit, &w);
        if (rc != 0) {
                /* A table index block the listing needs is unreadable: the ledger's last read. */
                damage(!cluster,
                       "checkpoint grid block %llu (table index) is damaged or unreadable (zone "
                       "grid): the blocks it names cannot be listed; %s",
                       (unsigned long long)device->last_read, TABLE_BLOCK_CONSEQUENCE(cluster));
                return false;
        }
        image.walked = true;
        return findings.count == damaged_before;
}

/* --verify: the ledger opened from the checkpoint, and its invariants. */
static void verify(const struct superblock *sb, struct ledger *ledger, bool opened)
{
        if (sb->root_address == 0) {
                findings.verified = true;
                snprintf(findings.verify_text, sizeof(findings.verify_text),
                         "verify: no checkpoint yet (an empty ledger)");
                return;
        }
        if (!opened) {
                /* The ledger stops the process on a block it cannot read: never on damage. */
                snprintf(findings.verify_text, sizeof(findings.verify_text),
                         "verify: not run, the checkpoint is damaged");
                return;
        }
        struct ledger_verify_report report;
        char error[256];
        if (ledger_verify(ledger, &report, error, sizeof(error)) != 0) {
                damage(true, "verify: ledger invariant violated at checkpoint op %llu: %s",
                       (unsigned long long)sb->checkpoint_op, error);
        } else {
                findings.verified = true;
                snprintf(findings.verify_text, sizeof(findings.verify_text),
                         "verify: ok at checkpoint op %llu: %llu accounts in %llu ledgers, %llu "
                         "transfers; debits equal credits per ledger, every balance equals the "
                         "sum of its transfers",
                         (unsigned long long)sb->checkpoint_op,
                         (unsigned long long)report.accounts, (unsigned long long)report.ledgers,
                         (unsigned long long)report.transfers);
        }
}

static void print_copy_text(uint32_t i, const struct superblock *c, bool valid, bool chosen)
{
        char cluster[40];
        format_u128(c->cluster, cluster);
        if (!valid) {
                printf("superblock copy %u: INVALID (checksum or magic)\n", i);
                return;
        }
        printf("superblock copy %u: valid%s sequence=%llu cluster=%s replica=%u/%u "
               "checkpoint_op=%llu commit=%llu view=%u\n",
               i, chosen ? " (in use)" : "", (unsigned long long)c->sequence, cluster,
               c->replica, c->replica_count, (unsigned long long)c->checkpoint_op,
               (unsigned long long)c->commit, c->view);
}

/* A JSON string of `text` (escapes quotes, backslashes and control characters). */
static void print_json_string(const char *text)
{
        putchar('"');
        for (const char *p = text; *p != '\0'; p++) {
                if (*p == '"' || *p == '\\')
                        printf("\\%c", *p);
                else if ((unsigned char)*p < 0x20)
                        printf("\\u%04x", (unsigned char)*p);
                else
                        putchar(*p);
        }
        putchar('"');
}

static const char *verdict_name(int status)
{
        return status == EXIT_INTACT       ? "intact"
               : status == EXIT_REPAIRABLE ? "damaged_start_succeeds"
                                           : "start_fails";
}

static const char *verdict_text(int status, bool cluster)
{
        if (status == EXIT_INTACT)
                return "intact: start would succeed as is";
        if (status == EXIT_REPAIRABLE)
                return cluster ? "damaged: start would succeed and repair from peers or drop a "
                                 "torn head"
                               : "damaged: start would succeed, dropping what is listed";
        return "start would fail";
}

static void print_json(const char *path, enum storage_error rc, const char *error,
                       const struct superblock *copies, const bool *valid, int chosen,
                       const struct wal_summary *wal, bool live,
                       int status)
{
        const struct superblock *sb = chosen >= 0 ? &copies[chosen] : NULL;
        printf("{\"path\":");
        print_json_string(path);
        printf(",\"status\":\"%s\"", storage_error_name(rc));
        if (rc != STORAGE_OK) {
                printf(",\"error\":");
                print_json_string(error);
        }
        printf(",\"superblock_copies\":[");
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++) {
                printf("%s{\"copy\":%u,\"valid\":%s,\"sequence\":%llu}", i ? "," : "", i,
                       valid[i] ? "true" : "false",
                       valid[i] ? (unsigned long long)copies[i].sequence : 0ull);
        }
        printf("]");
        if (sb != NULL) {
                char cluster[40];
                format_u128(sb->cluster, cluster);
                printf(",\"copy_in_use\":%d,\"cluster\":\"%s\",\"replica\":%u,"
                       "\"replica_count\":%u,\"format_version\":%u,\"development\":%s,"
                       "\"caught_up\":%s,\"sequence\":%llu,\"view\":%u,\"commit\":%llu,"
                       "\"checkpoint_op\":%llu,\"checkpoint_blocks\":%llu,"
                       "\"root_block\":%llu,\"grid_syncing\":%s,\"checkpoint_interval\":%u,"
                       "\"wal_slot_count\":%u,"
                       "\"message_size_max\":%u,\"grid_bytes\":%llu,\"file_bytes\":%llu,"
                       "\"wal_headers_offset\":%llu,\"wal_prepares_offset\":%llu,"
                       "\"client_replies_offset\":%llu,\"grid_offset\":%llu",
                       chosen, cluster, sb->replica, sb->replica_count, sb->format_version,
                       sb->development ? "true" : "false", sb->caught_up ? "true" : "false",
                       (unsigned long long)sb->sequence, sb->view,
                       (unsigned long long)sb->commit, (unsigned long long)sb->checkpoint_op,
                       (unsigned long long)sb->checkpoint_blocks,
                       (unsigned long long)sb->root_address,
                       sb->grid_syncing ? "true" : "false", sb->checkpoint_interval,
                       sb->wal_slot_count, sb->message_size_max,
                       (unsigned long long)sb->grid_size, (unsigned long long)sb->file_size,
                       (unsigned long long)sb->wal_headers_offset,
                       (unsigned long long)sb->wal_prepares_offset,
                       (unsigned long long)sb->client_replies_offset,
                       (unsigned long long)sb->grid_offset);
        }
        if (rc == STORAGE_OK)
                printf(",\"wal\":{\"op_min\":%llu,\"op_max\":%llu,\"valid\":%u,"
                       "\"invalid\":%u}",
                       (unsigned long long)wal->op_min, (unsigned long long)wal->op_max,
                       wal->valid, wal->invalid);
        if (!live && image.walked) {
                /* Per tree (by the tree number its table index blocks carry). */
                printf(",\"image_blocks\":%llu,\"trees\":[", (unsigned long long)image.blocks);
                bool first = true;
                for (uint32_t t = 0; t < TREES_MAX; t++) {
                        if (image.trees[t].blocks == 0)
                                continue;
                        printf("%s{\"tree\":%u,\"tables\":%llu,\"blocks\":%llu,"
                               "\"first_data_block\":%llu}",
                               first ? "" : ",", t, (unsigned long long)image.trees[t].tables,
                               (unsigned long long)image.trees[t].blocks,
                               (unsigned long long)image.trees[t].first_data_block);
                        first = false;
                }
                printf("]");
        }
        if (!live) {
                printf(",\"damage\":[");
                for (uint32_t i = 0; i < MIN(findings.count, DAMAGE_LINES_MAX); i++) {
                        if (i > 0)
                                putchar(',');
                        print_json_string(findings.lines[i]);
                }
                printf("],\"damage_count\":%u,\"verdict\":\"%s\"", findings.count,
                       verdict_name(status));
                if (findings.verify_text[0] != '\0') {
                        printf(",\"verify\":");
                        print_json_string(findings.verify_text);
                }
        }
        printf("}\n");
}

static void print_text(const char *path, enum storage_error rc, const char *error,
                       const struct superblock *copies, const bool *valid, int chosen,
                       const struct wal_summary *wal, bool live,
                       int status)
{
        const struct superblock *sb = chosen >= 0 ? &copies[chosen] : NULL;
        printf("data file: %s\n", path);
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++)
                print_copy_text(i, &copies[i], valid[i], (int)i == chosen);
        if (rc != STORAGE_OK)
                printf("problem: %s (%s)\n", error, storage_error_name(rc));
        else if (sb != NULL && sb->grid_syncing)
                printf("problem: a state sync or restore was overwriting the grid when it "
                       "stopped; the checkpoint is not trusted, and a replica of a cluster "
                       "starts without its state and copies a peer's checkpoint\n");
        if (sb != NULL) {
                printf("format version %u%s%s; checkpoint every %u ops; message size max %u\n",
                       sb->format_version, sb->development ? ", development" : "",
                       sb->caught_up ? "" : ", fresh (not yet caught up with its cluster)",
                       sb->checkpoint_interval, sb->message_size_max);
                printf("zones: superblock 0+%u, wal headers %llu+%llu, wal prepares %llu+%llu, "
                       "client replies %llu+%llu, grid %llu+%llu; file %llu bytes\n",
                       SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE,
                       (unsigned long long)sb->wal_headers_offset,
                       (unsigned long long)(sb->wal_prepares_offset - sb->wal_headers_offset),
                       (unsigned long long)sb->wal_prepares_offset,
                       (unsigned long long)(sb->client_replies_offset - sb->wal_prepares_offset),
                       (unsigned long long)sb->client_replies_offset,
                       (unsigned long long)(sb->grid_offset - sb->client_replies_offset),
                       (unsigned long long)sb->grid_offset, (unsigned long long)sb->grid_size,
                       (unsigned long long)sb->file_size);
                printf("checkpoint: op %llu, root block %llu, %llu grid blocks in use\n",
                       (unsigned long long)sb->checkpoint_op,
                       (unsigned long long)sb->root_address,
                       (unsigned long long)sb->checkpoint_blocks);
                if (!live && image.walked)
                        printf("checkpoint image: %llu blocks, %llu damaged; tables of %u "
                               "trees\n",
                               (unsigned long long)image.blocks,
                               (unsigned long long)image.damaged, image.trees_used);
        }
        if (rc == STORAGE_OK) {
                if (wal->valid == 0)
                        printf("journal: empty\n");
                else
                        printf("journal: ops %llu..%llu in %u slots (%u damaged)\n",
                               (unsigned long long)wal->op_min, (unsigned long long)wal->op_max,
                               wal->valid, wal->invalid);
        }
        if (live) {
                printf("verdict: not judged (--live reads headers only, maybe mid-write)\n");
                return;
        }
        for (uint32_t i = 0; i < MIN(findings.count, DAMAGE_LINES_MAX); i++)
                printf("damage: %s\n", findings.lines[i]);
        if (findings.count > DAMAGE_LINES_MAX)
                printf("damage: ... and %u more\n", findings.count - DAMAGE_LINES_MAX);
        if (findings.verify_text[0] != '\0')
                printf("%s\n", findings.verify_text);
        printf("verdict: %s\n",
               verdict_text(status, sb != NULL && sb->replica_count > 1));
}

/*
 * Everything start's recovery reads, checked: the checkpoint (and --verify's ledger), then the
 * journal. 0, or -1 if memory cannot be reserved (said on stderr).
 */
static int inspect_checkpoint(struct storage *storage, const struct flag *flags)
{
        const struct superblock *sb = &storage->superblock;
        static struct message_pool pool;
        if (message_pool_init(&pool, 2) != 0) {
                cli_error("inspect: cannot reserve memory for messages");
                return -1;
        }
        struct message *m = message_pool_get(&pool);
        /*
         * The ledger reads the file's grid through a device that refuses writes. Capacities as
         * start's (they bound no read; the grid's size must be the server's: a root names it).
         */
        static struct inspect_device device;
        device = (struct inspect_device){.storage = storage};
        struct ledger_config config = {
                .accounts_max = flags[3].present ? flags[3].u64 : 0,
                .transfers_max = flags[4].present ? flags[4].u64 : 0,
                .device = {.context = &device,
                           .read = inspect_device_read,
                           .write = inspect_device_write},
                .grid_blocks_max = GRID_BLOCKS_MAX,
                .request_body_size_max = sb->message_size_max - WIRE_HEADER_SIZE,
        };
        struct ledger *ledger = sb->root_address != 0 ? ledger_create(&config) : NULL;
        uint8_t *block = aligned_alloc(4096, LSM_BLOCK_SIZE);
        if ((sb->root_address != 0 && ledger == NULL) || block == NULL) {
                cli_error("inspect: cannot reserve memory for a ledger to read the checkpoint");
                if (ledger != NULL)
                        ledger_destroy(ledger);
                free(block);
                message_unref(&pool, m);
                message_pool_deinit(&pool);
                return -1;
        }
        bool opened = ledger != NULL && checkpoint_check(storage, m, ledger, &device, block);
        wal_check(storage, m);
        if (flags[2].present)
                verify(sb, ledger, opened);
        if (ledger != NULL)
                ledger_destroy(ledger);
        free(block);
        message_unref(&pool, m);
        message_pool_deinit(&pool);
        return 0;
}

int cli_inspect(int argc, char **argv)
{
        struct flag flags[] = {{.name = "json", .kind = FLAG_SWITCH},
                               {.name = "live", .kind = FLAG_SWITCH},
                               {.name = "verify", .kind = FLAG_SWITCH},
                               {.name = "accounts-max", .kind = FLAG_U64},
                               {.name = "transfers-max", .kind = FLAG_U64}};
        const char *positional[1];
        uint32_t positional_count = 0;
        char error[512] = "";
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), positional, 1, &positional_count,
                        error, sizeof(error)) != 0) {
                cli_error("inspect: %s", error);
                return 2;
        }
        if (positional_count != 1) {
                cli_error("inspect: missing the data file path");
                return 2;
        }
        bool json = flags[0].present;
        bool live = flags[1].present;
        if (live && flags[2].present) {
                cli_error("inspect: --verify needs the file at rest (not --live)");
                return 2;
        }
        enum storage_access access = live ? STORAGE_ACCESS_READ_LIVE : STORAGE_ACCESS_READ;
        const char *path = positional[0];
        log_set_level(LOG_OFF);
        memset(&findings, 0, sizeof(findings));
        memset(&image, 0, sizeof(image));
        static struct storage storage;
        enum storage_error rc = storage_open(&storage, NULL, NULL, path, access, error,
                                             sizeof(error));
        if (rc == STORAGE_ERROR_IN_USE) {
                cli_error("inspect: %s; --live reads it anyway, perhaps mid-write", error);
                return EXIT_START_FAILS;
        }
        /*
         * The raw copies, damaged ones too. Through the locked descriptor when open succeeded;
         * when it failed nothing is held, and a descriptor of our own is fine.
         */
        static struct superblock copies[SUPERBLOCK_COPIES];
        memset(copies, 0, sizeof(copies));
        ssize_t n;
        if (rc == STORAGE_OK) {
                n = pread(storage.fd, copies, sizeof(copies), 0);
        } else {
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0) {
                        cli_error("inspect: cannot open '%s'", path);
                        return EXIT_START_FAILS;
                }
                n = pread(fd, copies, sizeof(copies), 0);
                close(fd);
        }
        bool valid[SUPERBLOCK_COPIES];
        int chosen = -1;
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++) {
                valid[i] = n >= (ssize_t)((i + 1) * sizeof(struct superblock)) &&
                           superblock_copy_valid(&copies[i]);
                if (valid[i] && (chosen < 0 || copies[i].sequence > copies[chosen].sequence))
                        chosen = (int)i;
        }
        if (rc != STORAGE_OK)
                damage(true, "%s (%s)", error, storage_error_name(rc));
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES && chosen >= 0; i++) {
                if (!valid[i])
                        damage(false,
                               "superblock copy %u fails its checksum: start uses copy %d; the "
                               "next superblock write (view change or checkpoint) rewrites it",
                               i, chosen);
        }
        struct wal_summary wal = {0};
        if (rc == STORAGE_OK)
                wal_scan(&storage, &wal);
        if (rc == STORAGE_OK && !live && inspect_checkpoint(&storage, flags) != 0)
                return EXIT_START_FAILS;
        int status = findings.fatal ? EXIT_START_FAILS
                     : findings.count > 0 ? EXIT_REPAIRABLE
                                          : EXIT_INTACT;
        if (json)
                print_json(path, rc, error, copies, valid, chosen, &wal, live, status);
        else
                print_text(path, rc, error, copies, valid, chosen, &wal, live, status);
        if (rc == STORAGE_OK)
                storage_close(&storage);
        if (live)
                return rc == STORAGE_OK ? EXIT_INTACT : EXIT_START_FAILS;
        return status;
}
