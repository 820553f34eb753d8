/*
 * backup_file.c: writing, reading and checking the backup file (backup_file.h has the layout).
 */
#include "cli/backup_file.h"
#include "ledger/ledger.h"
#include "lsm/device_memory.h"
#include "storage/storage.h"
#include "vsr/replica.h"
#include "wire/checksum.h"
#include "wire/header.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static u128 header_checksum(const struct backup_header *h)
{
        return checksum((const uint8_t *)h + 16, sizeof(*h) - 16);
}

static int write_all(int fd, const void *data, uint64_t size)
{
        const uint8_t *p = data;
        while (size > 0) {
                ssize_t n = write(fd, p, size > (1u << 30) ? (1u << 30) : size);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                size -= (uint64_t)n;
        }
        return 0;
}

static int read_all(int fd, void *data, uint64_t size)
{
        uint8_t *p = data;
        while (size > 0) {
                ssize_t n = read(fd, p, size > (1u << 30) ? (1u << 30) : size);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                size -= (uint64_t)n;
        }
        return 0;
}

/* The block table of `image`: one checksum per whole block. malloc'd. */
static u128 *block_table(const uint8_t *image, uint64_t block_count)
{
        u128 *table = calloc(block_count + 1, sizeof(u128));
        if (table == NULL)
                return NULL;
        for (uint64_t i = 0; i < block_count; i++)
                table[i] = checksum(image + i * BACKUP_BLOCK_SIZE, BACKUP_BLOCK_SIZE);
        return table;
}

int backup_file_write(const char *path, struct backup_contents *contents, char *error,
                      size_t error_size)
{
        struct backup_header *h = &contents->header;
        memset(h->magic, 0, sizeof(h->magic));
        memcpy(h->magic, BACKUP_MAGIC, sizeof(BACKUP_MAGIC));
        h->format_version = BACKUP_FORMAT_VERSION;
        h->block_size = BACKUP_BLOCK_SIZE;
        u128 *table = block_table(contents->image, h->block_count);
        if (table == NULL) {
                snprintf(error, error_size, "out of memory for the block table");
                return -1;
        }
        h->block_table_checksum = checksum(table, (size_t)h->block_count * sizeof(u128));
        h->replies_checksum = checksum(contents->replies, h->replies_size);
        h->checksum = header_checksum(h);
        char temporary[4096];
        snprintf(temporary, sizeof(temporary), "%s.partial", path);
        int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
                snprintf(error, error_size, "cannot create %s: %s", temporary, strerror(errno));
                free(table);
                return -1;
        }
        int rc = write_all(fd, h, sizeof(*h));
        if (rc == 0)
                rc = write_all(fd, table, h->block_count * sizeof(u128));
        if (rc == 0)
                rc = write_all(fd, contents->image, h->block_count * BACKUP_BLOCK_SIZE);
        if (rc == 0)
                rc = write_all(fd, contents->replies, h->replies_size);
        if (rc == 0)
                rc = fsync(fd);
        int saved = errno;
        free(table);
        if (close(fd) != 0 && rc == 0) {
                rc = -1;
                saved = errno;
        }
        if (rc == 0 && rename(temporary, path) != 0) {
                rc = -1;
                saved = errno;
        }
        if (rc != 0) {
                snprintf(error, error_size, "cannot write %s: %s", path, strerror(saved));
                unlink(temporary);
                return -1;
        }
        char directory[4096];
        snprintf(directory, sizeof(directory), "%s", path);
        int dir_fd = open(dirname(directory), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd >= 0) {
                fsync(dir_fd);
                close(dir_fd);
        }
        return 0;
}

static int header_check(const struct backup_header *h, const char *path, char *error,
                        size_t error_size)
{
        if (memcmp(h->magic, BACKUP_MAGIC, strlen(BACKUP_MAGIC)) != 0) {
                snprintf(error, error_size, "'%s' is not a Tally backup file", path);
                return -1;
        }
        if (h->checksum != header_checksum(h)) {
                snprintf(error, error_size, "'%s': the backup header fails its checksum", path);
                return -1;
        }
        if (h->format_version != BACKUP_FORMAT_VERSION &&
            h->format_version != BACKUP_FORMAT_VERSION_LISTED_MANIFEST) {
                snprintf(error, error_size,
                         "'%s' has backup format version %u; this tally reads versions %u and "
                         "%u%s",
                         path, h->format_version, BACKUP_FORMAT_VERSION_LISTED_MANIFEST,
                         BACKUP_FORMAT_VERSION,
                         h->format_version < BACKUP_FORMAT_VERSION
                                 ? " (the file holds a checkpoint of an older data file format: "
                                   "restore it with the tally that wrote it, or take a new "
                                   "backup of the cluster)"
                                 : " (written by a newer tally)");
                return -1;
        }
        if (h->block_size != BACKUP_BLOCK_SIZE || h->block_count == 0 ||
            h->block_count > GRID_BLOCKS_MAX || h->root_address == 0 ||
            h->reply_count > BACKUP_REPLIES_MAX ||
            h->replies_size > (uint64_t)h->reply_count * WIRE_MESSAGE_SIZE_MAX) {
                snprintf(error, error_size, "'%s': the backup header's sizes do not agree",
                         path);
                return -1;
        }
        return 0;
}

/* Every reply is a whole, checked message, and the root's session table names it. */
static int replies_check(struct backup_contents *c, char *error, size_t error_size)
{
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (replica_checkpoint_sessions(c->image, BACKUP_BLOCK_SIZE, sessions) != 0) {
                snprintf(error, error_size, "the checkpoint's root has no valid session table");
                return -1;
        }
        uint32_t used = 0;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++)
                used += sessions[i].used ? 1u : 0u;
        if (used != c->header.reply_count) {
                snprintf(error, error_size, "%u replies for %u sessions", c->header.reply_count,
                         used);
                return -1;
        }
        uint64_t offset = 0;
        for (uint32_t k = 0; k < c->header.reply_count; k++) {
                _Alignas(16) struct wire_header h;
                if (c->header.replies_size - offset < sizeof(h)) {
                        snprintf(error, error_size, "reply %u is cut short", k);
                        return -1;
                }
                memcpy(&h, c->replies + offset, sizeof(h));
                if (!wire_header_checksum_valid(&h) || h.size < WIRE_HEADER_SIZE ||
                    h.size > c->header.replies_size - offset ||
                    !wire_body_checksum_valid(&h, c->replies + offset + WIRE_HEADER_SIZE)) {
                        snprintf(error, error_size, "reply %u fails its checksum", k);
                        return -1;
                }
                bool named = false;
                for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX && !named; i++)
                        named = sessions[i].used && sessions[i].reply_checksum == h.checksum;
                if (!named) {
                        snprintf(error, error_size, "reply %u belongs to no session", k);
                        return -1;
                }
                c->reply_offsets[k] = (uint32_t)offset;
                offset += h.size;
        }
        if (offset != c->header.replies_size) {
                snprintf(error, error_size, "trailing bytes after the replies");
                return -1;
        }
        return 0;
}

static int read_checked(int fd, struct backup_contents *c, const char *path, char *error,
                        size_t error_size)
{
        struct backup_header *h = &c->header;
        if (read_all(fd, h, sizeof(*h)) != 0) {
                snprintf(error, error_size, "'%s' is not a Tally backup file (too short)", path);
                return -1;
        }
        if (header_check(h, path, error, error_size) != 0)
                return -1;
        uint64_t image_size = h->block_count * BACKUP_BLOCK_SIZE;
        u128 *table = calloc(h->block_count + 1, sizeof(u128));
        c->image = malloc(image_size);
        c->replies = malloc(h->replies_size + 1);
        if (table == NULL || c->image == NULL || c->replies == NULL) {
                free(table);
                snprintf(error, error_size, "out of memory for a backup of %llu bytes",
                         (unsigned long long)image_size);
                return -1;
        }
        int rc = -1;
        if (read_all(fd, table, h->block_count * sizeof(u128)) != 0 ||
            read_all(fd, c->image, image_size) != 0 ||
            read_all(fd, c->replies, h->replies_size) != 0) {
                snprintf(error, error_size, "'%s' is truncated", path);
                goto done;
        }
        if (checksum(table, (size_t)h->block_count * sizeof(u128)) != h->block_table_checksum) {
                snprintf(error, error_size, "'%s': the block table fails its checksum", path);
                goto done;
        }
        for (uint64_t i = 0; i < h->block_count; i++) {
                const uint8_t *block = c->image + i * BACKUP_BLOCK_SIZE;
                if (checksum(block, BACKUP_BLOCK_SIZE) != table[i]) {
                        snprintf(error, error_size,
                                 "'%s': block %llu of %llu (grid address %llu as its header "
                                 "says, bytes %llu..%llu of the image) fails its checksum",
                                 path, (unsigned long long)i, (unsigned long long)h->block_count,
                                 (unsigned long long)((const struct lsm_block_header *)block)
                                         ->address,
                                 (unsigned long long)(i * BACKUP_BLOCK_SIZE),
                                 (unsigned long long)((i + 1) * BACKUP_BLOCK_SIZE));
                        goto done;
                }
        }
        struct lsm_block_ref root = {.address = h->root_address, .checksum = h->root_checksum};
        const char *problem = lsm_block_check(c->image, root, LSM_BLOCK_ROOT);
        if (problem != NULL) {
                snprintf(error, error_size,
                         "'%s': the image's first block is not the checkpoint's root block %llu "
                         "(%s)",
                         path, (unsigned long long)root.address, problem);
                goto done;
        }
        if (checksum(c->replies, h->replies_size) != h->replies_checksum) {
                snprintf(error, error_size, "'%s': the replies fail their checksum", path);
                goto done;
        }
        char reason[256];
        if (replies_check(c, reason, sizeof(reason)) != 0) {
                snprintf(error, error_size, "'%s': %s", path, reason);
                goto done;
        }
        uint8_t extra;
        if (read(fd, &extra, 1) != 0) {
                snprintf(error, error_size, "'%s' has bytes after its end", path);
                goto done;
        }
        rc = 0;
done:
        free(table);
        return rc;
}

int backup_file_read(const char *path, struct backup_contents *contents, char *error,
                     size_t error_size)
{
        memset(contents, 0, sizeof(*contents));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                snprintf(error, error_size, "cannot open %s: %s", path, strerror(errno));
                return -1;
        }
        int rc = read_checked(fd, contents, path, error, error_size);
        close(fd);
        if (rc != 0)
                backup_contents_free(contents);
        return rc;
}

void backup_contents_free(struct backup_contents *contents)
{
        free(contents->image);
        free(contents->replies);
        contents->image = NULL;
        contents->replies = NULL;
}

/* The walk over the checkpoint's blocks: each must be the image's next one. */
struct image_walk {
        const struct backup_contents *contents;
        uint64_t next;
        char *why;
        size_t why_size;
};

static int image_visit(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        struct image_walk *w = context;
        const struct backup_header *h = &w->contents->header;
        if (w->next >= h->block_count) {
                snprintf(w->why, w->why_size,
                         "the checkpoint names more blocks than the image's %llu",
                         (unsigned long long)h->block_count);
                return -1;
        }
        const uint8_t *block = w->contents->image + w->next * BACKUP_BLOCK_SIZE;
        const char *problem = lsm_block_check(block, ref, (enum lsm_block_kind)kind);
        if (problem != NULL) {
                snprintf(w->why, w->why_size,
                         "block %llu of the image is not the block the checkpoint names there "
                         "(grid address %llu): %s",
                         (unsigned long long)w->next, (unsigned long long)ref.address, problem);
                return -1;
        }
        w->next++;
        return 0;
}

/* Installs every block and checks the image is the checkpoint's blocks exactly. */
static int image_load(struct ledger *ledger, const struct backup_contents *contents, char *why,
                      size_t why_size)
{
        const struct backup_header *h = &contents->header;
        for (uint64_t i = 0; i < h->block_count; i++) {
                if (ledger_block_install(ledger, contents->image + i * BACKUP_BLOCK_SIZE) != 0) {
                        snprintf(why, why_size, "block %llu of the image is damaged",
                                 (unsigned long long)i);
                        return -1;
                }
        }
        struct lsm_block_ref root = {.address = h->root_address, .checksum = h->root_checksum};
        struct image_walk w = {.contents = contents, .why = why, .why_size = why_size};
        why[0] = '\0';
        int rc = ledger_checkpoint_blocks(ledger, root, image_visit, &w);
        if (rc == 0 && w.next != h->block_count)
                snprintf(why, why_size, "the image holds %llu blocks, the checkpoint names %llu",
                         (unsigned long long)h->block_count, (unsigned long long)w.next);
        else if (rc != 0 && why[0] == '\0')
                snprintf(why, why_size,
                         "a table index block the checkpoint names is missing from the image");
        return rc == 0 && w.next == h->block_count ? 0 : -1;
}

int backup_verify_ledger(const struct backup_contents *contents, uint64_t accounts_max,
                         uint64_t transfers_max, char *summary, size_t summary_size)
{
        static struct lsm_device_memory memory;
        lsm_device_memory_init(&memory, GRID_BLOCKS_MAX);
        struct ledger_config config = {.accounts_max = accounts_max,
                                       .transfers_max = transfers_max,
                                       .device = lsm_device_memory(&memory),
                                       .grid_blocks_max = GRID_BLOCKS_MAX};
        struct ledger *ledger = ledger_create(&config);
        if (ledger == NULL) {
                snprintf(summary, summary_size, "cannot reserve a ledger to load the backup into");
                lsm_device_memory_deinit(&memory);
                return -1;
        }
        int rc = -1;
        struct ledger_verify_report report;
        char reason[256];
        static uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t user_size = 0;
        struct lsm_block_ref root = {.address = contents->header.root_address,
                                     .checksum = contents->header.root_checksum};
        if (image_load(ledger, contents, reason, sizeof(reason)) != 0) {
                snprintf(summary, summary_size, "the checkpoint's image is not whole: %s",
                         reason);
        } else if (ledger_open(ledger, root, user, &user_size, reason, sizeof(reason)) != 0) {
                snprintf(summary, summary_size, "the ledger does not open: %s", reason);
        } else if (ledger_verify(ledger, &report, reason, sizeof(reason)) != 0) {
                snprintf(summary, summary_size, "ledger invariant violated: %s", reason);
        } else {
                snprintf(summary, summary_size,
                         "%llu accounts in %llu ledgers, %llu transfers; debits equal credits "
                         "per ledger, every balance equals the sum of its transfers",
                         (unsigned long long)report.accounts, (unsigned long long)report.ledgers,
                         (unsigned long long)report.transfers);
                rc = 0;
        }
        ledger_destroy(ledger);
        lsm_device_memory_deinit(&memory);
        return rc;
}
