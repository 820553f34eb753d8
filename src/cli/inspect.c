/*
 * inspect.c: `tally inspect <path> [--json] [--live] [--verify]`: what a data file holds, what
 * of it is damaged, and what `tally start` would do about it, for a person or a script.
 *
 * Prints every superblock copy (and which are valid), the zones, the checkpoint and the range
 * of ops in the journal. Then it verifies every checksum it can, as start's recovery would
 * meet them: each superblock copy; the checkpoint's manifest, every grid block it names, and
 * the reply of every session the checkpoint keeps; every journal entry after the checkpoint
 * (header, body, and the hash chain from the checkpoint's prepare on). Each damage is listed
 * with its consequence, and the verdict says whether start would succeed as is, succeed by
 * dropping or repairing something (a torn journal head is dropped; a replica of a cluster
 * copies a damaged checkpoint or journal entry from a peer), or fail. The exit status says
 * the same: 0 intact, 3 damaged but start succeeds (drops, or repairs from peers), 1 start
 * would fail (or the file cannot be read), 2 bad usage. It only reads; a damaged file is
 * described, never changed.
 *
 * --verify also loads the checkpoint into a ledger (capacities as `start`'s: the file's
 * defaults, or --accounts-max / --transfers-max) and checks the ledger's invariants
 * (ledger_verify): per ledger debits equal credits, posted and pending; every account's
 * balances equal the sum of its transfers. A violation is a failure (exit 1): no peer would
 * hold anything better.
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
        uint64_t checkpoint_op = sb->manifest_address != 0 ? sb->checkpoint_op : 0;
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
 * The checkpoint: every grid block the manifest names, against its checksum, then the reply
 * of every session the checkpoint keeps. Returns the blob (malloc'd, for --verify) when every
 * block is intact, else NULL.
 */
static uint8_t *checkpoint_check(struct storage *storage, struct message *reply)
{
        const struct superblock *sb = &storage->superblock;
        bool cluster = sb->replica_count > 1;
        const char *consequence = cluster ? "start copies a peer's checkpoint (state sync)"
                                          : "a single replica cannot start without it";
        if (storage->checkpoint_problem[0] != '\0') {
                damage(!cluster, "checkpoint: %s; %s", storage->checkpoint_problem, consequence);
                return NULL;
        }
        if (sb->manifest_address == 0)
                return NULL;
        uint8_t *blob = malloc(sb->checkpoint_size > 0 ? sb->checkpoint_size : 1);
        if (blob == NULL) {
                damage(true, "checkpoint: cannot allocate %llu bytes to read it",
                       (unsigned long long)sb->checkpoint_size);
                return NULL;
        }
        uint64_t offset = 0;
        uint32_t bad = 0;
        for (uint32_t i = 0; i < storage->manifest_entry_count; i++) {
                const struct grid_manifest_entry *e = &storage->manifest_entries[i];
                uint64_t at = sb->grid_offset + (e->address - 1) * (uint64_t)GRID_BLOCK_SIZE;
                bool ok = offset + e->size <= sb->checkpoint_size &&
                          pread(storage->fd, blob + offset, e->size, (off_t)at) ==
                                  (ssize_t)e->size &&
                          checksum(blob + offset, e->size) == e->checksum;
                if (!ok) {
                        bad++;
                        damage(!cluster,
                               "checkpoint grid block %llu (entry %u of %u) fails its checksum "
                               "(zone grid); %s",
                               (unsigned long long)e->address, i, storage->manifest_entry_count,
                               consequence);
                }
                offset += e->size;
        }
        if (bad == 0 && offset != sb->checkpoint_size) {
                bad++;
                damage(!cluster, "checkpoint blocks hold %llu bytes, the superblock says %llu; %s",
                       (unsigned long long)offset, (unsigned long long)sb->checkpoint_size,
                       consequence);
        }
        if (bad > 0) {
                free(blob);
                return NULL;
        }
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (replica_checkpoint_sessions(blob, sb->checkpoint_size, sessions) != 0) {
                damage(!cluster, "checkpoint header is not valid (zone grid); %s", consequence);
                free(blob);
                return NULL;
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
        return blob;
}

/* --verify: the checkpoint loaded into a ledger, and its invariants. */
static void verify(const struct superblock *sb, const uint8_t *blob, uint64_t accounts_max,
                   uint64_t transfers_max)
{
        if (sb->manifest_address == 0) {
                findings.verified = true;
                snprintf(findings.verify_text, sizeof(findings.verify_text),
                         "verify: no checkpoint yet (an empty ledger)");
                return;
        }
        if (blob == NULL) {
                snprintf(findings.verify_text, sizeof(findings.verify_text),
                         "verify: not run, the checkpoint is damaged");
                return;
        }
        const uint8_t *part = NULL;
        uint64_t part_size = 0;
        struct ledger_config config = {
                .accounts_max = accounts_max,
                .transfers_max = transfers_max,
                .request_body_size_max = sb->message_size_max - WIRE_HEADER_SIZE,
        };
        struct ledger *ledger = NULL;
        if (replica_checkpoint_ledger(blob, sb->checkpoint_size, &part, &part_size) != 0) {
                damage(true, "verify: the checkpoint's ledger part is malformed");
                return;
        }
        ledger = ledger_create(&config);
        if (ledger == NULL) {
                damage(true, "verify: cannot reserve a ledger of accounts_max=%llu "
                       "transfers_max=%llu",
                       (unsigned long long)accounts_max, (unsigned long long)transfers_max);
                return;
        }
        struct ledger_memory_reader reader = {.data = part, .size = part_size, .offset = 0};
        struct ledger_stream stream = {.read = ledger_memory_read, .context = &reader};
        if (ledger_checkpoint_read(ledger, &stream) != 0) {
                damage(true,
                       "verify: the ledger checkpoint does not load (damaged, or larger than "
                       "accounts_max=%llu transfers_max=%llu: pass start's --accounts-max / "
                       "--transfers-max)",
                       (unsigned long long)accounts_max, (unsigned long long)transfers_max);
                ledger_destroy(ledger);
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
        ledger_destroy(ledger);
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
                       const struct storage *storage, const struct wal_summary *wal, bool live,
                       int status)
{
        const struct superblock *sb = chosen >= 0 ? &copies[chosen] : NULL;
        printf("{\"path\":");
        print_json_string(path);
        printf(",\"status\":\"%s\"", storage_error_name(rc));
        if (rc != STORAGE_OK) {
                printf(",\"error\":");
                print_json_string(error);
        } else if (storage->checkpoint_problem[0] != '\0') {
                printf(",\"checkpoint_problem\":");
                print_json_string(storage->checkpoint_problem);
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
                       "\"checkpoint_op\":%llu,\"checkpoint_bytes\":%llu,"
                       "\"checkpoint_interval\":%u,\"wal_slot_count\":%u,"
                       "\"message_size_max\":%u,\"grid_bytes\":%llu,\"file_bytes\":%llu,"
                       "\"wal_headers_offset\":%llu,\"wal_prepares_offset\":%llu,"
                       "\"client_replies_offset\":%llu,\"grid_offset\":%llu",
                       chosen, cluster, sb->replica, sb->replica_count, sb->format_version,
                       sb->development ? "true" : "false", sb->caught_up ? "true" : "false",
                       (unsigned long long)sb->sequence, sb->view,
                       (unsigned long long)sb->commit, (unsigned long long)sb->checkpoint_op,
                       (unsigned long long)sb->checkpoint_size, sb->checkpoint_interval,
                       sb->wal_slot_count, sb->message_size_max,
                       (unsigned long long)sb->grid_size, (unsigned long long)sb->file_size,
                       (unsigned long long)sb->wal_headers_offset,
                       (unsigned long long)sb->wal_prepares_offset,
                       (unsigned long long)sb->client_replies_offset,
                       (unsigned long long)sb->grid_offset);
        }
        if (rc == STORAGE_OK)
                printf(",\"wal\":{\"op_min\":%llu,\"op_max\":%llu,\"valid\":%u,"
                       "\"invalid\":%u},\"checkpoint_blocks\":%u,"
                       "\"checkpoint_first_block\":%llu,\"manifest_block\":%llu",
                       (unsigned long long)wal->op_min, (unsigned long long)wal->op_max,
                       wal->valid, wal->invalid, storage->manifest_entry_count,
                       storage->manifest_entry_count > 0
                               ? (unsigned long long)storage->manifest_entries[0].address
                               : 0ull,
                       (unsigned long long)storage->superblock.manifest_address);
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
                       const struct storage *storage, const struct wal_summary *wal, bool live,
                       int status)
{
        const struct superblock *sb = chosen >= 0 ? &copies[chosen] : NULL;
        printf("data file: %s\n", path);
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++)
                print_copy_text(i, &copies[i], valid[i], (int)i == chosen);
        if (rc != STORAGE_OK)
                printf("problem: %s (%s)\n", error, storage_error_name(rc));
        else if (storage->checkpoint_problem[0] != '\0')
                printf("problem: %s; a replica of a cluster starts without its state "
                       "and copies a peer's checkpoint\n",
                       storage->checkpoint_problem);
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
                printf("checkpoint: op %llu, %llu bytes in %u grid blocks\n",
                       (unsigned long long)sb->checkpoint_op,
                       (unsigned long long)sb->checkpoint_size,
                       rc == STORAGE_OK ? storage->manifest_entry_count : 0);
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
        if (rc == STORAGE_OK && !live) {
                static struct message_pool pool;
                if (message_pool_init(&pool, 2) != 0) {
                        cli_error("inspect: cannot reserve memory for messages");
                        return EXIT_START_FAILS;
                }
                struct message *m = message_pool_get(&pool);
                uint8_t *blob = checkpoint_check(&storage, m);
                wal_check(&storage, m);
                if (flags[2].present) {
                        const struct superblock *sb = &storage.superblock;
                        uint64_t accounts_max = flags[3].present  ? flags[3].u64
                                                : sb->development ? 65536u
                                                                  : 1048576u;
                        uint64_t transfers_max = flags[4].present  ? flags[4].u64
                                                 : sb->development ? 1048576u
                                                                   : 16777216u;
                        verify(sb, blob, accounts_max, transfers_max);
                }
                free(blob);
                message_unref(&pool, m);
                message_pool_deinit(&pool);
        }
        int status = findings.fatal ? EXIT_START_FAILS
                     : findings.count > 0 ? EXIT_REPAIRABLE
                                          : EXIT_INTACT;
        if (json)
                print_json(path, rc, error, copies, valid, chosen, &storage, &wal, live, status);
        else
                print_text(path, rc, error, copies, valid, chosen, &storage, &wal, live, status);
        if (rc == STORAGE_OK)
                storage_close(&storage);
        if (live)
                return rc == STORAGE_OK ? EXIT_INTACT : EXIT_START_FAILS;
        return status;
}
