/*
 * inspect.c: `tally inspect <path> [--json] [--live]`: what a data file holds, for a person or
 * a script.
 *
 * Prints every superblock copy (and which are valid), the zones, the checkpoint and the range
 * of ops in the journal. It only reads; a damaged file is described, never changed.
 *
 * It holds a shared lock while it reads, so it refuses a file a running replica holds (naming
 * its pid): a superblock copy or journal entry caught half written would look damaged, and a
 * person reading "INVALID" about a healthy replica may act on it. `--live` reads such a file
 * anyway, without any lock (so it never makes a replica's start fail either): for scripts and
 * tests that watch a running replica's progress and know what they see may be mid-write.
 */
#include "cli/cli.h"
#include "lib/flags.h"
#include "lib/log.h"
#include "storage/storage.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct wal_summary {
        uint64_t op_min;
        uint64_t op_max;
        uint32_t valid;
        uint32_t invalid;
};

static void wal_scan(struct storage *storage, struct wal_summary *w)
{
        memset(w, 0, sizeof(*w));
        static struct wire_header header;
        for (uint32_t slot = 0; slot < storage->superblock.wal_slot_count; slot++) {
                if (!storage_read_wal_header(storage, slot, &header)) {
                        bool blank = true;
                        const uint8_t *bytes = (const uint8_t *)&header;
                        for (uint32_t i = 0; i < sizeof(header); i++)
                                blank = blank && bytes[i] == 0;
                        if (!blank)
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

int cli_inspect(int argc, char **argv)
{
        struct flag flags[] = {{.name = "json", .kind = FLAG_SWITCH},
                               {.name = "live", .kind = FLAG_SWITCH}};
        const char *positional[1];
        uint32_t positional_count = 0;
        char error[512];
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
        enum storage_access access = flags[1].present ? STORAGE_ACCESS_READ_LIVE
                                                      : STORAGE_ACCESS_READ;
        const char *path = positional[0];
        log_set_level(LOG_OFF);
        static struct storage storage;
        enum storage_error rc = storage_open(&storage, NULL, NULL, path, access, error,
                                             sizeof(error));
        if (rc == STORAGE_ERROR_IN_USE) {
                cli_error("inspect: %s; --live reads it anyway, perhaps mid-write", error);
                return 1;
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
                        return 1;
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
        struct wal_summary wal = {0};
        if (rc == STORAGE_OK)
                wal_scan(&storage, &wal);
        const struct superblock *sb = chosen >= 0 ? &copies[chosen] : NULL;
        if (json) {
                printf("{\"path\":\"%s\",\"status\":\"%s\"", path, storage_error_name(rc));
                if (rc != STORAGE_OK)
                        printf(",\"error\":\"%s\"", error);
                else if (storage.checkpoint_problem[0] != '\0')
                        printf(",\"checkpoint_problem\":\"%s\"", storage.checkpoint_problem);
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
                               chosen, cluster, sb->replica, sb->replica_count,
                               sb->format_version, sb->development ? "true" : "false",
                               sb->caught_up ? "true" : "false",
                               (unsigned long long)sb->sequence, sb->view,
                               (unsigned long long)sb->commit,
                               (unsigned long long)sb->checkpoint_op,
                               (unsigned long long)sb->checkpoint_size, sb->checkpoint_interval,
                               sb->wal_slot_count, sb->message_size_max,
                               (unsigned long long)sb->grid_size,
                               (unsigned long long)sb->file_size,
                               (unsigned long long)sb->wal_headers_offset,
                               (unsigned long long)sb->wal_prepares_offset,
                               (unsigned long long)sb->client_replies_offset,
                               (unsigned long long)sb->grid_offset);
                }
                if (rc == STORAGE_OK)
                        printf(",\"wal\":{\"op_min\":%llu,\"op_max\":%llu,\"valid\":%u,"
                               "\"invalid\":%u},\"checkpoint_blocks\":%u,"
                               "\"checkpoint_first_block\":%llu,\"manifest_block\":%llu",
                               (unsigned long long)wal.op_min, (unsigned long long)wal.op_max,
                               wal.valid, wal.invalid, storage.manifest_entry_count,
                               storage.manifest_entry_count > 0
                                       ? (unsigned long long)storage.manifest_entries[0].address
                                       : 0ull,
                               (unsigned long long)storage.superblock.manifest_address);
                printf("}\n");
        } else {
                printf("data file: %s\n", path);
                for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++)
                        print_copy_text(i, &copies[i], valid[i], (int)i == chosen);
                if (rc != STORAGE_OK)
                        printf("problem: %s (%s)\n", error, storage_error_name(rc));
                else if (storage.checkpoint_problem[0] != '\0')
                        printf("problem: %s; a replica of a cluster starts without its state "
                               "and copies a peer's checkpoint\n",
                               storage.checkpoint_problem);
                if (sb != NULL) {
                        printf("format version %u%s%s; checkpoint every %u ops; message size "
                               "max %u\n",
                               sb->format_version, sb->development ? ", development" : "",
                               sb->caught_up ? "" : ", fresh (not yet caught up with its cluster)",
                               sb->checkpoint_interval, sb->message_size_max);
                        printf("zones: superblock 0+%u, wal headers %llu+%llu, wal prepares "
                               "%llu+%llu, client replies %llu+%llu, grid %llu+%llu; file "
                               "%llu bytes\n",
                               SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE,
                               (unsigned long long)sb->wal_headers_offset,
                               (unsigned long long)(sb->wal_prepares_offset -
                                                    sb->wal_headers_offset),
                               (unsigned long long)sb->wal_prepares_offset,
                               (unsigned long long)(sb->client_replies_offset -
                                                    sb->wal_prepares_offset),
                               (unsigned long long)sb->client_replies_offset,
                               (unsigned long long)(sb->grid_offset -
                                                    sb->client_replies_offset),
                               (unsigned long long)sb->grid_offset,
                               (unsigned long long)sb->grid_size,
                               (unsigned long long)sb->file_size);
                        printf("checkpoint: op %llu, %llu bytes in %u grid blocks\n",
                               (unsigned long long)sb->checkpoint_op,
                               (unsigned long long)sb->checkpoint_size,
                               rc == STORAGE_OK ? storage.manifest_entry_count : 0);
                }
                if (rc == STORAGE_OK) {
                        if (wal.valid == 0)
                                printf("journal: empty\n");
                        else
                                printf("journal: ops %llu..%llu in %u slots (%u damaged)\n",
                                       (unsigned long long)wal.op_min,
                                       (unsigned long long)wal.op_max, wal.valid, wal.invalid);
                }
        }
        if (rc == STORAGE_OK)
                storage_close(&storage);
        return rc == STORAGE_OK ? 0 : 1;
}
