/*
 * backup_file.c: writing, reading and checking the backup file (backup_file.h has the layout).
 */
#include "cli/backup_file.h"
#include "ledger/ledger.h"
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

/* The chunk table of `blob`: one checksum per BACKUP_CHUNK_SIZE piece. malloc'd. */
static u128 *chunk_table(const uint8_t *blob, uint64_t blob_size, uint32_t *count)
{
        uint64_t chunks = (blob_size + BACKUP_CHUNK_SIZE - 1) / BACKUP_CHUNK_SIZE;
        *count = (uint32_t)chunks;
        u128 *table = calloc(chunks == 0 ? 1 : chunks, sizeof(u128));
        if (table == NULL)
                return NULL;
        for (uint64_t i = 0; i < chunks; i++) {
                uint64_t offset = i * BACKUP_CHUNK_SIZE;
                uint64_t size = blob_size - offset < BACKUP_CHUNK_SIZE ? blob_size - offset
                                                                       : BACKUP_CHUNK_SIZE;
                table[i] = checksum(blob + offset, size);
        }
        return table;
}

int backup_file_write(const char *path, struct backup_contents *contents, char *error,
                      size_t error_size)
{
        struct backup_header *h = &contents->header;
        memcpy(h->magic, BACKUP_MAGIC, sizeof(h->magic));
        h->format_version = BACKUP_FORMAT_VERSION;
        h->chunk_size = BACKUP_CHUNK_SIZE;
        u128 *table = chunk_table(contents->blob, h->blob_size, &h->chunk_count);
        if (table == NULL) {
                snprintf(error, error_size, "out of memory for the chunk table");
                return -1;
        }
        h->chunk_table_checksum = checksum(table, (size_t)h->chunk_count * sizeof(u128));
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
                rc = write_all(fd, table, (uint64_t)h->chunk_count * sizeof(u128));
        if (rc == 0)
                rc = write_all(fd, contents->blob, h->blob_size);
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
        if (memcmp(h->magic, BACKUP_MAGIC, sizeof(h->magic)) != 0) {
                snprintf(error, error_size, "'%s' is not a Tally backup file", path);
                return -1;
        }
        if (h->checksum != header_checksum(h)) {
                snprintf(error, error_size, "'%s': the backup header fails its checksum", path);
                return -1;
        }
        if (h->format_version != BACKUP_FORMAT_VERSION) {
                snprintf(error, error_size,
                         "'%s' has backup format version %u; this tally reads version %u", path,
                         h->format_version, BACKUP_FORMAT_VERSION);
                return -1;
        }
        uint64_t chunks = (h->blob_size + BACKUP_CHUNK_SIZE - 1) / BACKUP_CHUNK_SIZE;
        if (h->chunk_size != BACKUP_CHUNK_SIZE || h->chunk_count != chunks ||
            h->reply_count > BACKUP_REPLIES_MAX ||
            h->replies_size > (uint64_t)h->reply_count * WIRE_MESSAGE_SIZE_MAX) {
                snprintf(error, error_size, "'%s': the backup header's sizes do not agree",
                         path);
                return -1;
        }
        return 0;
}

/* Every reply is a whole, checked message, and the blob's session table names it. */
static int replies_check(struct backup_contents *c, char *error, size_t error_size)
{
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (replica_checkpoint_sessions(c->blob, c->header.blob_size, sessions) != 0) {
                snprintf(error, error_size, "the checkpoint has no valid session table");
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
        u128 *table = calloc(h->chunk_count + 1u, sizeof(u128));
        c->blob = malloc(h->blob_size + 1);
        c->replies = malloc(h->replies_size + 1);
        if (table == NULL || c->blob == NULL || c->replies == NULL) {
                free(table);
                snprintf(error, error_size, "out of memory for a backup of %llu bytes",
                         (unsigned long long)h->blob_size);
                return -1;
        }
        int rc = -1;
        if (read_all(fd, table, (uint64_t)h->chunk_count * sizeof(u128)) != 0 ||
            read_all(fd, c->blob, h->blob_size) != 0 ||
            read_all(fd, c->replies, h->replies_size) != 0) {
                snprintf(error, error_size, "'%s' is truncated", path);
                goto done;
        }
        if (checksum(table, (size_t)h->chunk_count * sizeof(u128)) != h->chunk_table_checksum) {
                snprintf(error, error_size, "'%s': the chunk table fails its checksum", path);
                goto done;
        }
        for (uint32_t i = 0; i < h->chunk_count; i++) {
                uint64_t offset = (uint64_t)i * BACKUP_CHUNK_SIZE;
                uint64_t size = h->blob_size - offset < BACKUP_CHUNK_SIZE ? h->blob_size - offset
                                                                          : BACKUP_CHUNK_SIZE;
                if (checksum(c->blob + offset, size) != table[i]) {
                        snprintf(error, error_size,
                                 "'%s': chunk %u of %u (bytes %llu..%llu of the checkpoint) "
                                 "fails its checksum",
                                 path, i, h->chunk_count, (unsigned long long)offset,
                                 (unsigned long long)(offset + size));
                        goto done;
                }
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
        free(contents->blob);
        free(contents->replies);
        contents->blob = NULL;
        contents->replies = NULL;
}

int backup_verify_ledger(const struct backup_contents *contents, uint64_t accounts_max,
                         uint64_t transfers_max, char *summary, size_t summary_size)
{
        const uint8_t *part = NULL;
        uint64_t part_size = 0;
        if (replica_checkpoint_ledger(contents->blob, contents->header.blob_size, &part,
                                      &part_size) != 0) {
                snprintf(summary, summary_size, "the checkpoint's ledger part is malformed");
                return -1;
        }
        struct ledger_config config = {.accounts_max = accounts_max,
                                       .transfers_max = transfers_max};
        struct ledger *ledger = ledger_create(&config);
        if (ledger == NULL) {
                snprintf(summary, summary_size, "cannot reserve a ledger of accounts_max=%llu",
                         (unsigned long long)accounts_max);
                return -1;
        }
        struct ledger_memory_reader reader = {.data = part, .size = part_size};
        struct ledger_stream stream = {.read = ledger_memory_read, .context = &reader};
        int rc = -1;
        struct ledger_verify_report report;
        char reason[256];
        if (ledger_checkpoint_read(ledger, &stream) != 0) {
                snprintf(summary, summary_size,
                         "the ledger does not load (damaged, or larger than accounts_max=%llu "
                         "transfers_max=%llu: pass --accounts-max / --transfers-max)",
                         (unsigned long long)accounts_max, (unsigned long long)transfers_max);
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
        return rc;
}
