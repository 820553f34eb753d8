/*
 * storage.c: format, open and journal writes of the data file (see storage.h).
 */
#include "storage/storage.h"
#include "lib/log.h"
#include "wire/checksum.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char superblock_magic[16] = "TALLY DATA FILE";

const char *storage_error_name(enum storage_error error)
{
        switch (error) {
        case STORAGE_OK:
                return "ok";
        case STORAGE_ERROR_IO:
                return "io_error";
        case STORAGE_ERROR_EXISTS:
                return "file_exists";
        case STORAGE_ERROR_NOT_FOUND:
                return "file_not_found";
        case STORAGE_ERROR_NOT_TALLY:
                return "not_a_tally_data_file";
        case STORAGE_ERROR_CORRUPT:
                return "superblock_corrupt";
        case STORAGE_ERROR_VERSION:
                return "format_version_mismatch";
        case STORAGE_ERROR_TRUNCATED:
                return "file_truncated";
        case STORAGE_ERROR_NO_SPACE:
                return "no_space";
        }
        return "unknown";
}

static uint64_t round_up(uint64_t value, uint64_t multiple)
{
        return (value + multiple - 1) / multiple * multiple;
}

static u128 superblock_checksum(const struct superblock *copy)
{
        return checksum((const uint8_t *)copy + 16, sizeof(*copy) - 16);
}

bool superblock_copy_valid(const struct superblock *copy)
{
        return memcmp(copy->magic, superblock_magic, sizeof(superblock_magic)) == 0 &&
               copy->checksum == superblock_checksum(copy);
}

static void superblock_layout(struct superblock *sb, const struct storage_format_options *o)
{
        memset(sb, 0, sizeof(*sb));
        memcpy(sb->magic, superblock_magic, sizeof(superblock_magic));
        sb->format_version = STORAGE_FORMAT_VERSION;
        sb->cluster = o->cluster;
        sb->replica = o->replica;
        sb->replica_count = o->replica_count;
        sb->development = o->development ? 1 : 0;
        sb->sequence = 1;
        sb->wal_slot_count =
                o->development ? STORAGE_WAL_SLOTS_DEVELOPMENT : STORAGE_WAL_SLOTS_DEFAULT;
        sb->message_size_max =
                o->development ? WIRE_MESSAGE_SIZE_MAX_DEVELOPMENT : WIRE_MESSAGE_SIZE_MAX;
        sb->clients_max = STORAGE_CLIENTS_MAX;
        uint64_t offset = (uint64_t)SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE;
        sb->wal_headers_offset = offset;
        offset += round_up((uint64_t)sb->wal_slot_count * WIRE_HEADER_SIZE, 4096);
        sb->wal_prepares_offset = offset;
        offset += (uint64_t)sb->wal_slot_count * sb->message_size_max;
        sb->client_replies_offset = offset;
        offset += (uint64_t)sb->clients_max * WIRE_MESSAGE_SIZE_MAX;
        sb->grid_offset = offset;
        sb->grid_size = 0; /* checkpoints arrive with the durability work (issue 4) */
        sb->file_size = offset + sb->grid_size;
}

/* Writes every superblock copy with the given sequence, then syncs. */
static int superblock_write_all(int fd, struct superblock *sb, char *error, size_t error_size)
{
        for (uint32_t copy = 0; copy < SUPERBLOCK_COPIES; copy++) {
                sb->copy = copy;
                sb->checksum = superblock_checksum(sb);
                ssize_t n = pwrite(fd, sb, sizeof(*sb), (off_t)copy * SUPERBLOCK_COPY_SIZE);
                if (n != (ssize_t)sizeof(*sb)) {
                        snprintf(error, error_size, "cannot write superblock copy %u: %s", copy,
                                 n < 0 ? strerror(errno) : "short write");
                        return -1;
                }
        }
        if (fdatasync(fd) != 0) {
                snprintf(error, error_size, "cannot sync the data file: %s", strerror(errno));
                return -1;
        }
        return 0;
}

static void sync_directory(const char *path)
{
        char copy[4096];
        snprintf(copy, sizeof(copy), "%s", path);
        int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                fsync(fd);
                close(fd);
        }
}

enum storage_error storage_format(const char *path, const struct storage_format_options *options,
                                  char *error, size_t error_size)
{
        tally_assert(options->replica < options->replica_count);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
                int err = errno;
                snprintf(error, error_size, "cannot create data file '%s': %s", path,
                         err == EEXIST ? "it already exists (format never overwrites)"
                                       : strerror(err));
                return err == EEXIST ? STORAGE_ERROR_EXISTS : STORAGE_ERROR_IO;
        }
        struct superblock sb;
        superblock_layout(&sb, options);
        enum storage_error result = STORAGE_OK;
        int rc = posix_fallocate(fd, 0, (off_t)sb.file_size);
        if (rc != 0) {
                snprintf(error, error_size, "cannot allocate %llu bytes for '%s': %s",
                         (unsigned long long)sb.file_size, path, strerror(rc));
                result = rc == ENOSPC ? STORAGE_ERROR_NO_SPACE : STORAGE_ERROR_IO;
        } else if (superblock_write_all(fd, &sb, error, error_size) != 0) {
                result = errno == ENOSPC ? STORAGE_ERROR_NO_SPACE : STORAGE_ERROR_IO;
        }
        close(fd);
        if (result != STORAGE_OK) {
                unlink(path); /* we created it; leave nothing half-formatted behind */
                return result;
        }
        sync_directory(path);
        return STORAGE_OK;
}

enum storage_error storage_open(struct storage *storage, struct io *io,
                                struct message_pool *pool, const char *path, char *error,
                                size_t error_size)
{
        memset(storage, 0, sizeof(*storage));
        storage->fd = -1;
        storage->io = io;
        storage->pool = pool;
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                int err = errno;
                snprintf(error, error_size, "cannot open data file '%s': %s", path,
                         strerror(err));
                return err == ENOENT ? STORAGE_ERROR_NOT_FOUND : STORAGE_ERROR_IO;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
                snprintf(error, error_size, "'%s' is not a regular file", path);
                close(fd);
                return STORAGE_ERROR_NOT_TALLY;
        }
        static struct superblock copies[SUPERBLOCK_COPIES];
        memset(copies, 0, sizeof(copies));
        ssize_t n = pread(fd, copies, sizeof(copies), 0);
        if (n < 0) {
                snprintf(error, error_size, "cannot read '%s': %s", path, strerror(errno));
                close(fd);
                return STORAGE_ERROR_IO;
        }
        int best = -1;
        bool any_magic = false;
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++) {
                if ((size_t)n < (i + 1) * sizeof(struct superblock))
                        break;
                if (memcmp(copies[i].magic, superblock_magic, sizeof(superblock_magic)) == 0)
                        any_magic = true;
                if (!superblock_copy_valid(&copies[i]))
                        continue;
                if (best < 0 || copies[i].sequence > copies[best].sequence)
                        best = (int)i;
        }
        if (best < 0) {
                close(fd);
                if (!any_magic) {
                        snprintf(error, error_size, "'%s' is not a Tally data file", path);
                        return STORAGE_ERROR_NOT_TALLY;
                }
                snprintf(error, error_size,
                         "'%s': every superblock copy fails its checksum (zone superblock)",
                         path);
                return STORAGE_ERROR_CORRUPT;
        }
        const struct superblock *sb = &copies[best];
        if (sb->format_version != STORAGE_FORMAT_VERSION) {
                snprintf(error, error_size,
                         "'%s' has format version %u; this tally reads version %u", path,
                         sb->format_version, STORAGE_FORMAT_VERSION);
                close(fd);
                return STORAGE_ERROR_VERSION;
        }
        if ((uint64_t)st.st_size < sb->file_size) {
                snprintf(error, error_size, "'%s' is truncated: %llu bytes, expected %llu",
                         path, (unsigned long long)st.st_size,
                         (unsigned long long)sb->file_size);
                close(fd);
                return STORAGE_ERROR_TRUNCATED;
        }
        for (uint32_t i = 0; i < SUPERBLOCK_COPIES; i++) {
                if (!superblock_copy_valid(&copies[i]))
                        log_warn("superblock copy invalid; using another copy=%u path=%s", i,
                                 path);
        }
        storage->superblock = *sb;
        storage->fd = fd;
        return STORAGE_OK;
}

void storage_close(struct storage *storage)
{
        if (storage->fd >= 0)
                close(storage->fd);
        storage->fd = -1;
}

static void sync_maybe_start(struct storage *storage);

static void on_sync(struct io_completion *completion, int32_t result)
{
        struct storage *storage = completion->context;
        storage->sync_pending = false;
        storage->syncs++;
        if (result < 0) {
                /* After a failed fdatasync the page cache state is unknown: never ack. */
                storage->failed = true;
                log_error("data file sync failed; no further writes are acknowledged error=%s",
                          strerror(-result));
        }
        for (uint32_t i = 0; i < STORAGE_WRITES_MAX; i++) {
                struct storage_write *w = &storage->writes[i];
                if (!w->used || !w->in_sync)
                        continue;
                w->used = false;
                struct message *m = w->message;
                w->message = NULL;
                if (!storage->failed && w->error == 0)
                        w->callback(w->context, m);
                message_unref(storage->pool, m);
        }
        sync_maybe_start(storage);
}

static void sync_maybe_start(struct storage *storage)
{
        if (storage->sync_pending || storage->failed)
                return;
        bool any = false;
        for (uint32_t i = 0; i < STORAGE_WRITES_MAX; i++) {
                struct storage_write *w = &storage->writes[i];
                if (w->used && w->written && !w->in_sync) {
                        w->in_sync = true;
                        any = true;
                }
        }
        if (!any)
                return;
        storage->sync_pending = true;
        storage->sync_completion.callback = on_sync;
        storage->sync_completion.context = storage;
        io_fsync(storage->io, &storage->sync_completion, storage->fd);
}

static void on_write(struct io_completion *completion, int32_t result)
{
        struct storage_write *w = completion->context;
        struct storage *storage = w->storage;
        if (result < 0 || (uint32_t)result != completion->size) {
                if (result >= 0 && result > 0) {
                        /* A short write: carry on with the rest. */
                        io_write(storage->io, completion, storage->fd,
                                 (uint8_t *)completion->buffer + result,
                                 completion->size - (uint32_t)result,
                                 completion->offset + (uint64_t)result);
                        return;
                }
                w->error = result < 0 ? result : -EIO;
                storage->failed = true;
                log_error("journal write failed; no further writes are acknowledged op=%llu "
                          "error=%s",
                          (unsigned long long)w->message->header->prepare.op,
                          strerror(-w->error));
        }
        tally_assert(w->writes_pending > 0);
        w->writes_pending--;
        if (w->writes_pending == 0) {
                w->written = true;
                storage->prepares_written++;
                sync_maybe_start(storage);
        }
}

bool storage_write_prepare(struct storage *storage, struct message *prepare,
                           void (*callback)(void *context, struct message *prepare),
                           void *context)
{
        if (storage->failed)
                return false;
        struct storage_write *w = NULL;
        for (uint32_t i = 0; i < STORAGE_WRITES_MAX; i++) {
                if (!storage->writes[i].used) {
                        w = &storage->writes[i];
                        break;
                }
        }
        if (w == NULL)
                return false;
        const struct superblock *sb = &storage->superblock;
        tally_assert(prepare->header->command == COMMAND_PREPARE);
        tally_assert(prepare->header->size <= sb->message_size_max);
        uint64_t slot = prepare->header->prepare.op % sb->wal_slot_count;
        memset(w, 0, sizeof(*w));
        w->used = true;
        w->storage = storage;
        w->message = message_ref(prepare);
        w->callback = callback;
        w->context = context;
        w->writes_pending = 2;
        w->headers_completion.callback = on_write;
        w->headers_completion.context = w;
        w->prepare_completion.callback = on_write;
        w->prepare_completion.context = w;
        io_write(storage->io, &w->prepare_completion, storage->fd, prepare->buffer,
                 prepare->header->size, sb->wal_prepares_offset + slot * sb->message_size_max);
        io_write(storage->io, &w->headers_completion, storage->fd, prepare->buffer,
                 WIRE_HEADER_SIZE, sb->wal_headers_offset + slot * WIRE_HEADER_SIZE);
        return true;
}
