/*
 * storage.c: format, open and journal writes of the data file (see storage.h).
 */
#include "storage/storage.h"
#include "lib/log.h"
#include "wire/checksum.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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
        case STORAGE_ERROR_IN_USE:
                return "in_use";
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
        /* The ops since the last durable checkpoint must always fit in the WAL, with room for
         * a checkpoint in progress and the pipeline (storage.h). */
        sb->checkpoint_interval = sb->wal_slot_count / STORAGE_CHECKPOINT_INTERVAL_DIVISOR;
        uint64_t offset = (uint64_t)SUPERBLOCK_COPIES * SUPERBLOCK_COPY_SIZE;
        sb->wal_headers_offset = offset;
        offset += round_up((uint64_t)sb->wal_slot_count * WIRE_HEADER_SIZE, 4096);
        sb->wal_prepares_offset = offset;
        offset += (uint64_t)sb->wal_slot_count * sb->message_size_max;
        sb->client_replies_offset = offset;
        offset += (uint64_t)STORAGE_REPLY_SLOTS * WIRE_MESSAGE_SIZE_MAX;
        sb->grid_offset = offset;
        sb->grid_size = 0; /* grows, a block at a time, as checkpoints need room */
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

/* ---- the lock: one process per data file ------------------------------------------------- */

/*
 * Two processes that both write one data file each acknowledge writes the other overwrites, so
 * `format` and a writing `open` hold an exclusive lock for as long as the file is open, and a
 * reading `open` a shared one. The kind of lock is a choice:
 *
 * - A classic POSIX record lock (F_SETLK), not an open file description lock (F_OFD_SETLK):
 *   F_GETLK names the holder of a classic lock in l_pid, so the error can say which process to
 *   look at; for an OFD lock the kernel reports l_pid = -1. A classic lock also goes away as
 *   soon as its process exits (SIGKILL too, before a supervisor can reap it), so a restart
 *   right after a crash finds the file free.
 * - Its well-known traps are closed off by Tally's design of one replica per single-threaded
 *   process that never forks while it holds the file. The one that remains: a process never
 *   conflicts with its own lock, and closing *any* descriptor of the file drops it. So this
 *   process keeps a table of the data files it has open and refuses a second open of one
 *   before it opens a descriptor (which it would have to close again), format probes a file
 *   only when this process does not hold it, and fd_direct is closed only together with fd.
 *
 * The lock is advisory: it keeps out every `tally` command, not `dd`.
 */
#define STORAGE_OPEN_FILES_MAX 8u   /* a server holds one data file; tests hold a few */
#define STORAGE_LOCK_ATTEMPTS_MAX 3u /* a holder may let go between our try and our question */

struct open_file {
        bool used;
        pid_t pid; /* a child after fork holds no lock: its copy of the table is stale */
        dev_t dev;
        ino_t ino;
};
static struct open_file open_files[STORAGE_OPEN_FILES_MAX];

static int32_t open_file_find(dev_t dev, ino_t ino)
{
        pid_t pid = getpid();
        for (uint32_t i = 0; i < STORAGE_OPEN_FILES_MAX; i++) {
                const struct open_file *f = &open_files[i];
                if (f->used && f->pid == pid && f->dev == dev && f->ino == ino)
                        return (int32_t)i;
        }
        return -1;
}

static int32_t open_file_add(const struct stat *st)
{
        tally_assert(open_file_find(st->st_dev, st->st_ino) < 0);
        pid_t pid = getpid();
        for (uint32_t i = 0; i < STORAGE_OPEN_FILES_MAX; i++) {
                struct open_file *f = &open_files[i];
                if (f->used && f->pid == pid)
                        continue;
                *f = (struct open_file){.used = true, .pid = pid, .dev = st->st_dev,
                                        .ino = st->st_ino};
                return (int32_t)i;
        }
        tally_assert(!"more data files open than STORAGE_OPEN_FILES_MAX");
        return -1;
}

/* "another process (pid N, writing it)" for a holder F_GETLK described. */
static void holder_describe(const struct flock *holder, char *into, size_t into_size)
{
        const char *how = holder->l_type == F_WRLCK ? "writing" : "reading";
        if (holder->l_pid > 0)
                snprintf(into, into_size, "another process (pid %d, %s it)", (int)holder->l_pid,
                         how);
        else /* an OFD lock, or a process in another pid namespace */
                snprintf(into, into_size, "another process (%s it)", how);
}

/* Takes the lock on `fd` without waiting: STORAGE_OK, STORAGE_ERROR_IN_USE or _IO. */
static enum storage_error storage_lock(int fd, const char *path, bool exclusive, char *error,
                                       size_t error_size)
{
        const struct flock want = {.l_type = exclusive ? F_WRLCK : F_RDLCK,
                                   .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        for (uint32_t attempt = 0; attempt < STORAGE_LOCK_ATTEMPTS_MAX; attempt++) {
                struct flock lock = want;
                if (fcntl(fd, F_SETLK, &lock) == 0)
                        return STORAGE_OK;
                if (errno != EAGAIN && errno != EACCES) {
                        snprintf(error, error_size, "cannot lock data file '%s': %s", path,
                                 strerror(errno));
                        return STORAGE_ERROR_IO;
                }
                struct flock holder = want;
                if (fcntl(fd, F_GETLK, &holder) != 0) {
                        snprintf(error, error_size, "cannot ask who holds data file '%s': %s",
                                 path, strerror(errno));
                        return STORAGE_ERROR_IO;
                }
                if (holder.l_type == F_UNLCK)
                        continue; /* gone since: try again */
                char who[64];
                holder_describe(&holder, who, sizeof(who));
                snprintf(error, error_size,
                         "data file '%s' is in use by %s; one process per data file", path, who);
                return STORAGE_ERROR_IN_USE;
        }
        snprintf(error, error_size, "data file '%s' is in use by other processes, taking and "
                 "releasing it; one process per data file",
                 path);
        return STORAGE_ERROR_IN_USE;
}

/*
 * Format refuses an existing file; when a process holds it, say which, since that is the
 * likelier mistake (formatting a running replica's file). Probes through a descriptor of its
 * own, so only when this process does not hold the file (closing it would drop our lock).
 */
static void exists_message(const char *path, char *error, size_t error_size)
{
        snprintf(error, error_size,
                 "cannot create data file '%s': it already exists (format never overwrites)",
                 path);
        struct stat st;
        if (stat(path, &st) != 0 || open_file_find(st.st_dev, st.st_ino) >= 0)
                return;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return;
        struct flock holder = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (fcntl(fd, F_GETLK, &holder) == 0 && holder.l_type != F_UNLCK) {
                char who[64];
                holder_describe(&holder, who, sizeof(who));
                snprintf(error, error_size,
                         "cannot create data file '%s': it already exists and is in use by %s "
                         "(format never overwrites)",
                         path, who);
        }
        close(fd);
}

enum storage_error storage_format(const char *path, const struct storage_format_options *options,
                                  char *error, size_t error_size)
{
        tally_assert(options->replica < options->replica_count);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
                int err = errno;
                if (err == EEXIST) {
                        exists_message(path, error, error_size);
                        return STORAGE_ERROR_EXISTS;
                }
                snprintf(error, error_size, "cannot create data file '%s': %s", path,
                         strerror(err));
                return STORAGE_ERROR_IO;
        }
        struct superblock sb;
        superblock_layout(&sb, options);
        /* Held until formatted: a `start` in the meantime fails clearly, not on half a file. */
        enum storage_error result = storage_lock(fd, path, true, error, error_size);
        if (result == STORAGE_OK) {
                int rc = posix_fallocate(fd, 0, (off_t)sb.file_size);
                if (rc != 0) {
                        snprintf(error, error_size, "cannot allocate %llu bytes for '%s': %s",
                                 (unsigned long long)sb.file_size, path, strerror(rc));
                        result = rc == ENOSPC ? STORAGE_ERROR_NO_SPACE : STORAGE_ERROR_IO;
                } else if (superblock_write_all(fd, &sb, error, error_size) != 0) {
                        result = errno == ENOSPC ? STORAGE_ERROR_NO_SPACE : STORAGE_ERROR_IO;
                }
        }
        if (result != STORAGE_OK) {
                unlink(path); /* we created it; leave nothing half-formatted behind */
                close(fd);
                return result;
        }
        close(fd);
        sync_directory(path);
        return STORAGE_OK;
}

static uint64_t grid_block_offset(const struct storage *storage, uint64_t address)
{
        return storage->superblock.grid_offset + (address - 1) * (uint64_t)GRID_BLOCK_SIZE;
}

enum storage_error storage_open(struct storage *storage, struct io *io,
                                struct message_pool *pool, const char *path,
                                enum storage_access access, char *error, size_t error_size)
{
        tally_assert(access == STORAGE_ACCESS_WRITE || access == STORAGE_ACCESS_READ ||
                     access == STORAGE_ACCESS_READ_LIVE);
        memset(storage, 0, sizeof(*storage));
        storage->fd = -1;
        storage->fd_direct = -1;
        storage->open_file = -1;
        storage->io = io;
        storage->pool = pool;
        struct stat st;
        /* Before opening a descriptor: closing one would drop this process's lock. */
        if (stat(path, &st) == 0 && open_file_find(st.st_dev, st.st_ino) >= 0) {
                snprintf(error, error_size, "data file '%s' is open in this process already "
                         "(pid %d); one process per data file, opened once",
                         path, (int)getpid());
                return STORAGE_ERROR_IN_USE;
        }
        bool writer = access == STORAGE_ACCESS_WRITE;
        int fd = open(path, (writer ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (fd < 0) {
                int err = errno;
                snprintf(error, error_size, "cannot open data file '%s': %s", path,
                         strerror(err));
                return err == ENOENT ? STORAGE_ERROR_NOT_FOUND : STORAGE_ERROR_IO;
        }
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
                snprintf(error, error_size, "'%s' is not a regular file", path);
                close(fd);
                return STORAGE_ERROR_NOT_TALLY;
        }
        /* First, so that nothing is read while another process may be writing. */
        if (access != STORAGE_ACCESS_READ_LIVE) {
                enum storage_error locked = storage_lock(fd, path, writer, error, error_size);
                if (locked != STORAGE_OK) {
                        close(fd);
                        return locked;
                }
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
        bool legacy = sb->format_version == STORAGE_FORMAT_VERSION_LEGACY && writer;
        bool readable = sb->format_version == STORAGE_FORMAT_VERSION ||
                        sb->format_version == STORAGE_FORMAT_VERSION_LISTED_MANIFEST;
        if (!readable && !legacy) {
                /* Name both versions and the way forward: an operator meets this in an
                 * upgrade or a downgrade, never by accident. */
                snprintf(error, error_size,
                         "'%s' has data file format version %u; this tally reads format versions "
                         "%u and %u (and converts version %u) (%s)",
                         path, sb->format_version, STORAGE_FORMAT_VERSION_LISTED_MANIFEST,
                         STORAGE_FORMAT_VERSION, STORAGE_FORMAT_VERSION_LEGACY,
                         sb->format_version > STORAGE_FORMAT_VERSION
                                 ? "the file was written by a newer tally: run that one"
                         : sb->format_version == STORAGE_FORMAT_VERSION_LEGACY
                                 ? "`tally start` with this tally converts it in place first"
                                 : "the file was written by an older tally: take a `tally "
                                   "backup` of its cluster with that tally, then `tally "
                                   "restore` it with this one");
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
        storage->legacy = legacy;
        storage->fd = fd;
        storage->open_file = open_file_add(&st);
        /* Bulk writes only; a reader has none. */
        storage->fd_direct = writer ? open(path, O_RDWR | O_CLOEXEC | O_DIRECT) : -1;
        storage->grid_block_count = sb->grid_size / GRID_BLOCK_SIZE;
        if (legacy)
                log_info("data file has format version %u: converting it to version %u path=%s",
                         STORAGE_FORMAT_VERSION_LEGACY, STORAGE_FORMAT_VERSION, path);
        return STORAGE_OK;
}

static void grid_writes_deinit(struct storage *storage);

void storage_close(struct storage *storage)
{
        grid_writes_deinit(storage);
        if (storage->open_file >= 0) {
                tally_assert((uint32_t)storage->open_file < STORAGE_OPEN_FILES_MAX);
                open_files[storage->open_file].used = false;
        }
        storage->open_file = -1;
        if (storage->fd >= 0)
                close(storage->fd);
        storage->fd = -1;
        if (storage->fd_direct >= 0)
                close(storage->fd_direct);
        storage->fd_direct = -1;
}

/*
 * How a journaled prepare becomes durable (storage.h): a small one is covered by the next
 * fdatasync, shared with every prepare written before it started (group commit); a large one
 * syncs itself, each of its two writes durable when it completes (RWF_DSYNC).
 */
static void prepare_durable(struct storage *storage, struct storage_write *w)
{
        w->used = false;
        struct message *m = w->message;
        w->message = NULL;
        if (!storage->failed && w->error == 0)
                w->callback(w->context, m);
        message_unref(storage->pool, m);
}

static void sync_maybe_start(struct storage *storage);

static void on_sync(struct io_completion *completion, int32_t result)
{
        struct storage *storage = completion->context;
        storage->sync_pending = false;
        storage->syncs++;
        histogram_observe(&storage->sync_latency, io_monotonic_ns() - storage->sync_started_ns);
        if (result < 0) {
                /* After a failed fdatasync the page cache state is unknown: never ack. */
                storage->failed = true;
                log_error("data file sync failed; no further writes are acknowledged error=%s",
                          strerror(-result));
        }
        for (uint32_t i = 0; i < STORAGE_WRITES_MAX; i++) {
                struct storage_write *w = &storage->writes[i];
                if (w->used && w->in_sync)
                        prepare_durable(storage, w);
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
        storage->sync_started_ns = io_monotonic_ns();
        storage->sync_completion.callback = on_sync;
        storage->sync_completion.context = storage;
        io_fsync(storage->io, &storage->sync_completion, storage->fd);
}

static void on_write(struct io_completion *completion, int32_t result)
{
        struct storage_write *w = completion->context;
        struct storage *storage = w->storage;
        if (result < 0 || (uint32_t)result != completion->size) {
                if (result > 0) {
                        /* A short write: carry on with the rest, synced as the first part was. */
                        uint8_t *rest = (uint8_t *)completion->buffer + result;
                        uint32_t size = completion->size - (uint32_t)result;
                        uint64_t offset = completion->offset + (uint64_t)result;
                        if (w->self_sync)
                                io_write_durable(storage->io, completion, storage->fd, rest, size,
                                                 offset);
                        else
                                io_write(storage->io, completion, storage->fd, rest, size, offset);
                        return;
                }
                /* After a failed write (or its own sync) the page cache state is unknown: never
                 * ack. */
                w->error = result < 0 ? result : -EIO;
                storage->failed = true;
                log_error("journal write failed; no further writes are acknowledged op=%llu "
                          "error=%s",
                          (unsigned long long)w->message->header->prepare.op,
                          strerror(-w->error));
        }
        tally_assert(w->writes_pending > 0);
        w->writes_pending--;
        if (w->writes_pending > 0)
                return;
        storage->prepares_written++;
        if (w->self_sync) {
                storage->syncs++;
                histogram_observe(&storage->sync_latency, io_monotonic_ns() - w->started_ns);
                prepare_durable(storage, w);
                return;
        }
        w->written = true;
        sync_maybe_start(storage);
}

uint32_t storage_journal_writes_in_flight(const struct storage *storage)
{
        uint32_t count = 0;
        for (uint32_t i = 0; i < STORAGE_WRITES_MAX; i++)
                count += storage->writes[i].used ? 1u : 0u;
        return count;
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
        w->started_ns = io_monotonic_ns();
        w->self_sync = prepare->header->size >= STORAGE_SELF_SYNC_MIN;
        w->headers_completion.callback = on_write;
        w->headers_completion.context = w;
        w->prepare_completion.callback = on_write;
        w->prepare_completion.context = w;
        void (*write)(struct io *, struct io_completion *, int, const void *, uint32_t,
                      uint64_t) = w->self_sync ? io_write_durable : io_write;
        write(storage->io, &w->prepare_completion, storage->fd, prepare->buffer,
              prepare->header->size, sb->wal_prepares_offset + slot * sb->message_size_max);
        write(storage->io, &w->headers_completion, storage->fd, prepare->buffer,
              WIRE_HEADER_SIZE, sb->wal_headers_offset + slot * WIRE_HEADER_SIZE);
        return true;
}

/* The grid grows by this much at a time (see grid_allocate), plus slack for the manifest. */
/* Room for one more growth step of the grid, and some slack. */
#define STORAGE_GROWTH_ROOM_BYTES (STORAGE_GRID_GROWTH_BYTES + (8ull << 20))

bool storage_has_room(struct storage *storage)
{
        struct statvfs fs;
        if (fstatvfs(storage->fd, &fs) != 0)
                return false;
        return (uint64_t)fs.f_bavail * fs.f_frsize >= STORAGE_GROWTH_ROOM_BYTES;
}

/* All of `size` bytes at `offset`: 0, or -errno (-EIO at the end of the file). */
static int read_exact(int fd, void *buffer, size_t size, uint64_t offset)
{
        uint8_t *p = buffer;
        while (size > 0) {
                ssize_t n = pread(fd, p, size, (off_t)offset);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -EIO;
                p += n;
                size -= (size_t)n;
                offset += (uint64_t)n;
        }
        return 0;
}

static int write_exact(int fd, const void *buffer, size_t size, uint64_t offset)
{
        const uint8_t *p = buffer;
        while (size > 0) {
                ssize_t n = pwrite(fd, p, size, (off_t)offset);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -EIO;
                p += n;
                size -= (size_t)n;
                offset += (uint64_t)n;
        }
        return 0;
}

/* ---- the grid ---------------------------------------------------------------------------- */

/* Grows the file to hold `blocks` grid blocks; 0, or the error of posix_fallocate. */
static int grid_grow(struct storage *storage, uint64_t blocks)
{
        if (blocks <= storage->grid_block_count)
                return 0;
        uint64_t step = STORAGE_GRID_GROWTH_BYTES / GRID_BLOCK_SIZE;
        blocks = MIN((blocks + step - 1) / step * step, (uint64_t)GRID_BLOCKS_MAX);
        int rc = posix_fallocate(storage->fd, (off_t)storage->superblock.grid_offset,
                                 (off_t)(blocks * GRID_BLOCK_SIZE));
        if (rc != 0) {
                log_error("cannot grow the grid blocks=%llu error=%s",
                          (unsigned long long)blocks, strerror(rc));
                return rc;
        }
        storage->grid_block_count = blocks;
        return 0;
}

/* The write holding `address` (open, in flight, or landed but not yet reaped), or NULL. */
static struct storage_grid_write *writer_find(struct grid_writer *g, uint64_t address)
{
        for (uint32_t i = 0; g->writes != NULL && i < STORAGE_GRID_WRITES_MAX; i++) {
                const struct storage_grid_write *w = &g->writes[i];
                if (w->address != 0 && address >= w->address && address - w->address < w->count)
                        return &g->writes[i];
        }
        return NULL;
}

/* Where the block at `address` is in the buffer of `w`, which holds it. */
static uint8_t *write_block(struct storage_grid_write *w, uint64_t address)
{
        return w->buffer + (size_t)(address - w->address) * GRID_BLOCK_SIZE;
}

static void on_grid_write(struct io_completion *completion, int32_t result)
{
        struct storage_grid_write *w = completion->context;
        struct grid_writer *g = w->writer;
        if (result > 0 && (uint32_t)result < completion->size) {
                /* A short write: carry on with the rest, through the page cache (the rest need
                 * not be aligned as O_DIRECT requires; the checkpoint's sync covers both). */
                io_write(g->io, completion, g->storage->fd,
                         (uint8_t *)completion->buffer + result,
                         completion->size - (uint32_t)result,
                         completion->offset + (uint64_t)result);
                io_submit(g->io);
                return;
        }
        if (result <= 0 && g->error == 0) {
                g->error = result < 0 ? result : -EIO;
                log_error("grid block write failed address=%llu blocks=%u error=%s",
                          (unsigned long long)w->address, w->count, strerror(-g->error));
        }
        w->address = 0;
        w->count = 0;
        tally_assert(g->in_flight > 0);
        g->in_flight--;
}

/* Runs write completions for up to a second, returning once some ran; 0 or -errno. */
static int writer_wait(struct grid_writer *g)
{
        int rc = io_run(g->io, 1000000000ull, true);
        if (rc < 0 && g->error == 0) {
                /* The ring itself failed: what is in flight may never be reported. */
                g->error = rc;
                log_error("grid writes: the ring failed error=%s", strerror(-rc));
        }
        return rc;
}

/* The ring and buffers, at the first write: 0, or -errno (then writes block). */
static int writer_init(struct grid_writer *g, struct storage *storage)
{
        g->storage = storage;
        if (g->io != NULL)
                return 0;
        struct io *io = calloc(1, sizeof(*io));
        struct storage_grid_write *writes = calloc(STORAGE_GRID_WRITES_MAX, sizeof(*writes));
        const size_t run_bytes = (size_t)STORAGE_GRID_WRITE_RUN_MAX * GRID_BLOCK_SIZE;
        uint8_t *memory = aligned_alloc(4096, STORAGE_GRID_WRITES_MAX * run_bytes);
        int rc = io != NULL && writes != NULL && memory != NULL ? io_init(io, STORAGE_GRID_WRITES_MAX)
                                                                : -ENOMEM;
        if (rc != 0) {
                log_warn("grid writes stay synchronous error=%s", strerror(-rc));
                free(io);
                free(writes);
                free(memory);
                return rc;
        }
        for (uint32_t i = 0; i < STORAGE_GRID_WRITES_MAX; i++) {
                writes[i].writer = g;
                writes[i].buffer = memory + i * run_bytes;
        }
        g->io = io;
        g->writes = writes;
        g->memory = memory;
        return 0;
}

/* Issues the open write, if any and no write failed (O_DIRECT when it can: bulk writes that
 * bypass the page cache do not make the journal's next fdatasync wait for them; the
 * checkpoint's sync covers both). */
static void writer_issue(struct grid_writer *g)
{
        struct storage_grid_write *w = g->open;
        if (w == NULL || g->error != 0)
                return;
        g->open = NULL;
        struct storage *storage = g->storage;
        memset(&w->completion, 0, sizeof(w->completion));
        w->completion.callback = on_grid_write;
        w->completion.context = w;
        /* In a kernel worker: the submitting thread neither copies nor waits for the device. */
        w->completion.background = true;
        io_write(g->io, &w->completion, storage->fd_direct >= 0 ? storage->fd_direct : storage->fd,
                 w->buffer, w->count * GRID_BLOCK_SIZE, grid_block_offset(storage, w->address));
        io_submit(g->io);
        g->in_flight++;
        g->writes_issued++;
}

/* Waits for every write made so far: 0, or the first write's error. */
static int writer_flush(struct grid_writer *g)
{
        writer_issue(g);
        while (g->in_flight > 0) {
                if (writer_wait(g) < 0)
                        break;
        }
        return g->error;
}

static void writer_deinit(struct grid_writer *g)
{
        if (g->io == NULL)
                return;
        (void)writer_flush(g);
        if (g->in_flight > 0)
                return; /* the kernel may still use the buffers: leave them */
        io_deinit(g->io);
        free(g->io);
        free(g->writes);
        free(g->memory);
        g->io = NULL;
        g->writes = NULL;
        g->memory = NULL;
}

/* A write of a block the file already holds room for: copied and issued, or blocking. */
static int writer_write(struct grid_writer *g, struct storage *storage, uint64_t address,
                        const uint8_t *block)
{
        if (g->error != 0)
                return g->error;
        uint64_t offset = grid_block_offset(storage, address);
        if (writer_init(g, storage) != 0) {
                bool direct = storage->fd_direct >= 0 && ((uintptr_t)block % 4096) == 0;
                int rc = write_exact(direct ? storage->fd_direct : storage->fd, block,
                                     GRID_BLOCK_SIZE, offset);
                if (rc == 0)
                        g->blocks_written++;
                return rc;
        }
        struct storage_grid_write *open = g->open, *holder = writer_find(g, address);
        if (open != NULL && holder == open) {
                /* Written again before it was issued: the newest bytes go. */
                memcpy(write_block(open, address), block, GRID_BLOCK_SIZE);
                g->blocks_written++;
                return 0;
        }
        if (open != NULL && holder == NULL && address == open->address + open->count &&
            open->count < STORAGE_GRID_WRITE_RUN_MAX) {
                memcpy(write_block(open, address), block, GRID_BLOCK_SIZE);
                open->count++;
                g->blocks_written++;
                if (open->count == STORAGE_GRID_WRITE_RUN_MAX)
                        writer_issue(g);
                return 0;
        }
        writer_issue(g);
        /* Two writes of one address in flight could land in either order: the first goes first. */
        while (writer_find(g, address) != NULL && writer_wait(g) >= 0)
                ;
        struct storage_grid_write *w = NULL;
        while (g->error == 0) {
                for (uint32_t i = 0; i < STORAGE_GRID_WRITES_MAX && w == NULL; i++) {
                        if (g->writes[i].address == 0)
                                w = &g->writes[i];
                }
                if (w != NULL || writer_wait(g) < 0)
                        break;
        }
        if (g->error != 0)
                return g->error;
        memcpy(w->buffer, block, GRID_BLOCK_SIZE);
        w->address = address;
        w->count = 1;
        g->open = w;
        g->blocks_written++;
        return 0;
}

int storage_grid_flush(struct storage *storage)
{
        return writer_flush(&storage->grid_writer);
}

static void reader_deinit(struct grid_reader *g);

static void grid_writes_deinit(struct storage *storage)
{
        reader_deinit(&storage->grid_reader);
        writer_deinit(&storage->worker_writer);
        writer_deinit(&storage->grid_writer);
}

/*
 * The reads that need no device read: a bad address or range, a block whose write is held or
 * still in flight (from its buffer), a block past the file (zeros). Of the whole block, or of
 * `length` bytes at `offset` (a filter page). True with *rc set, else false.
 */
static bool grid_read_without_device(struct storage *storage, uint64_t address, uint32_t offset,
                                     uint32_t length, uint8_t *out, int *rc)
{
        *rc = 0;
        if (address == 0 || address > GRID_BLOCKS_MAX || offset > GRID_BLOCK_SIZE ||
            length > GRID_BLOCK_SIZE - offset) {
                *rc = -EINVAL;
                return true;
        }
        struct storage_grid_write *pending = writer_find(&storage->grid_writer, address);
        if (pending != NULL) {
                memcpy(out, write_block(pending, address) + offset, length);
                storage->grid_blocks_read++;
                return true;
        }
        if (address > storage->grid_block_count) {
                memset(out, 0, length); /* never written: fails its check */
                return true;
        }
        return false;
}

int storage_grid_read(struct storage *storage, uint64_t address, uint8_t *block)
{
        int rc;
        if (grid_read_without_device(storage, address, 0, GRID_BLOCK_SIZE, block, &rc))
                return rc;
        rc = read_exact(storage->fd, block, GRID_BLOCK_SIZE, grid_block_offset(storage, address));
        if (rc != 0)
                return rc;
        storage->grid_blocks_read++;
        return 0;
}

int storage_grid_write(struct storage *storage, uint64_t address, const uint8_t *block)
{
        if (address == 0 || address > GRID_BLOCKS_MAX)
                return -EINVAL;
        if (storage->grid_writer.error != 0)
                return storage->grid_writer.error;
        int rc = grid_grow(storage, address);
        if (rc != 0)
                return -rc;
        return writer_write(&storage->grid_writer, storage, address, block);
}

static int device_read(void *context, uint64_t address, uint8_t *block)
{
        return storage_grid_read(context, address, block);
}

/* Part of a block (a filter page), served from a write's buffer as a whole read is. */
static int device_read_range(void *context, uint64_t address, uint32_t offset, uint32_t length,
                             uint8_t *out)
{
        struct storage *storage = context;
        int rc;
        if (grid_read_without_device(storage, address, offset, length, out, &rc))
                return rc;
        return read_exact(storage->fd, out, length,
                          grid_block_offset(storage, address) + offset);
}

static void on_grid_read(struct io_completion *completion, int32_t result)
{
        struct storage_grid_read *r = completion->context;
        r->result = result;
        r->landed = true;
        tally_assert(r->reader->in_flight > 0);
        r->reader->in_flight--;
}

/* The ring, at the first use: true, or false for good (then reads go one at a time). */
static bool reader_init(struct grid_reader *g)
{
        if (g->io != NULL)
                return true;
        if (g->unavailable)
                return false;
        g->unavailable = true;
        struct io *io = calloc(1, sizeof(*io));
        struct storage_grid_read *reads = calloc(STORAGE_GRID_READS_MAX, sizeof(*reads));
        if (io == NULL || reads == NULL || io_init(io, STORAGE_GRID_READS_MAX) != 0) {
                log_warn("grid reads of many blocks go one at a time (no ring for them)");
                free(io);
                free(reads);
                return false;
        }
        for (uint32_t i = 0; i < STORAGE_GRID_READS_MAX; i++)
                reads[i].reader = g;
        g->io = io;
        g->reads = reads;
        g->unavailable = false;
        return true;
}

static void reader_deinit(struct grid_reader *g)
{
        if (g->io == NULL)
                return;
        /* The grid waits for every read it started; if it did not, they land first. */
        while (g->in_flight > 0 && io_run(g->io, 1000000000ull, true) >= 0)
                ;
        if (g->in_flight > 0)
                return; /* the kernel may still use the buffers: leave the ring */
        io_deinit(g->io);
        free(g->io);
        free(g->reads);
        g->io = NULL;
        g->reads = NULL;
}

/*
 * Reads through the page cache, all in flight at once (io_uring hands the ones that must wait
 * for the disk to its workers; the epoll backend to its threads); device_read_many_wait
 * waits for one. A block whose write is in flight, or past the file, is read at once
 * (grid_read_without_device).
 */
static uint32_t device_read_many_start(void *context, const uint64_t *addresses,
                                       uint8_t *const *blocks, uint32_t count)
{
        struct storage *storage = context;
        struct grid_reader *g = &storage->grid_reader;
        tally_assert(g->in_flight == 0); /* every read of the last start was waited for */
        if (!reader_init(g))
                return 0;
        uint32_t n = MIN(count, STORAGE_GRID_READS_MAX);
        for (uint32_t k = 0; k < n; k++) {
                uint64_t address = addresses[k];
                struct storage_grid_read *r = &g->reads[k];
                memset(&r->completion, 0, sizeof(r->completion));
                r->completion.callback = on_grid_read;
                r->completion.context = r;
                r->landed = false;
                r->result = 0;
                int rc;
                if (grid_read_without_device(storage, address, 0, GRID_BLOCK_SIZE, blocks[k], &rc)) {
                        r->result = rc == 0 ? (int32_t)GRID_BLOCK_SIZE : rc;
                        r->landed = true;
                        continue;
                }
                io_read(g->io, &r->completion, storage->fd, blocks[k], GRID_BLOCK_SIZE,
                        grid_block_offset(storage, address));
                g->in_flight++;
        }
        io_submit(g->io);
        return n;
}

static int device_read_many_wait(void *context, uint32_t index)
{
        struct storage *storage = context;
        struct grid_reader *g = &storage->grid_reader;
        tally_assert(g->io != NULL && index < STORAGE_GRID_READS_MAX);
        struct storage_grid_read *r = &g->reads[index];
        while (!r->landed) {
                /* A failed ring may never report its reads, whose buffers are the cache's:
                 * nothing safe is left but to stop (the journal has every op; a restart
                 * recovers). */
                int rc = io_run(g->io, 1000000000ull, true);
                if (rc < 0)
                        log_error("grid reads: the ring failed error=%s", strerror(-rc));
                tally_assert(rc >= 0);
        }
        if (r->result == (int32_t)GRID_BLOCK_SIZE) {
                if (r->completion.opcode != 0)
                        storage->grid_blocks_read++;
                return 0;
        }
        return r->result < 0 ? r->result : -EIO;
}

static int device_write(void *context, uint64_t address, const uint8_t *block)
{
        return storage_grid_write(context, address, block);
}

static int device_flush(void *context)
{
        return storage_grid_flush(context);
}

static void device_issue(void *context)
{
        struct storage *storage = context;
        writer_issue(&storage->grid_writer);
}

static int device_grow(void *context, uint64_t address)
{
        struct storage *storage = context;
        if (address == 0 || address > GRID_BLOCKS_MAX)
                return -EINVAL;
        return -grid_grow(storage, address);
}

struct lsm_device storage_grid_device(struct storage *storage)
{
        return (struct lsm_device){
                .context = storage,
                .read = device_read,
                .read_many_start = device_read_many_start,
                .read_many_wait = device_read_many_wait,
                .read_range = device_read_range,
                .write = device_write,
                .flush = device_flush,
                .issue = device_issue,
                .grow = device_grow,
        };
}

static int worker_read(void *context, uint64_t address, uint8_t *block)
{
        const struct storage *storage = context;
        if (address == 0 || address > GRID_BLOCKS_MAX)
                return -EINVAL;
        return read_exact(storage->fd, block, GRID_BLOCK_SIZE, grid_block_offset(storage, address));
}

/* Only the worker's thread uses worker_writer (its job's blocks were flushed when it ended). */
static int worker_write(void *context, uint64_t address, const uint8_t *block)
{
        struct storage *storage = context;
        if (address == 0 || address > GRID_BLOCKS_MAX)
                return -EINVAL;
        return writer_write(&storage->worker_writer, storage, address, block);
}

/*
 * The kernel reads the blocks into the page cache meanwhile (the worker's reads go through it),
 * blocks at consecutive addresses (a job's output, a table's data blocks, mostly are) in one
 * request of up to STORAGE_PREFETCH_RUN_MAX blocks: this disk reads 64 KiB requests at half the
 * rate of 1 MiB ones.
 */
#define STORAGE_PREFETCH_RUN_MAX 32u
static void worker_prefetch(void *context, const uint64_t *addresses, uint32_t count)
{
        const struct storage *storage = context;
        uint32_t i = 0;
        while (i < count) {
                uint64_t first = addresses[i];
                uint32_t run = 1;
                while (i + run < count && run < STORAGE_PREFETCH_RUN_MAX &&
                       addresses[i + run] == first + run)
                        run++;
                i += run;
                if (first == 0 || first + run - 1 > GRID_BLOCKS_MAX)
                        continue;
                (void)readahead(storage->fd, (off64_t)grid_block_offset(storage, first),
                                (size_t)run * GRID_BLOCK_SIZE);
        }
}

static int worker_flush(void *context)
{
        struct storage *storage = context;
        return writer_flush(&storage->worker_writer);
}

struct lsm_device storage_grid_device_worker(struct storage *storage)
{
        return (struct lsm_device){
                .context = storage,
                .read = worker_read,
                .write = worker_write,
                .flush = worker_flush,
                .prefetch = worker_prefetch,
        };
}

/* ---- checkpoints ------------------------------------------------------------------------- */

static void checkpoint_step(struct storage *storage);

static void on_checkpoint_io(struct io_completion *completion, int32_t result)
{
        struct storage *storage = completion->context;
        struct storage_checkpoint *cp = &storage->checkpoint;
        if (result > 0 && (uint32_t)result < completion->size) {
                /* A short write: carry on with the rest. */
                io_write(storage->io, completion, completion->fd,
                         (uint8_t *)completion->buffer + result,
                         completion->size - (uint32_t)result,
                         completion->offset + (uint64_t)result);
                return;
        }
        if (result < 0 || (completion->size > 0 && (uint32_t)result != completion->size)) {
                cp->failed = true;
                cp->io_failed = true;
                log_error("checkpoint write failed op=%llu error=%s",
                          (unsigned long long)cp->request.op,
                          strerror(result < 0 ? -result : EIO));
        }
        tally_assert(cp->writes_pending > 0);
        cp->writes_pending--;
        if (cp->writes_pending == 0)
                checkpoint_step(storage);
}

static struct io_completion *checkpoint_completion(struct storage *storage)
{
        struct storage_checkpoint *cp = &storage->checkpoint;
        tally_assert(cp->completion_count < ARRAY_LEN(cp->completions));
        struct io_completion *c = &cp->completions[cp->completion_count++];
        memset(c, 0, sizeof(*c));
        c->callback = on_checkpoint_io;
        c->context = storage;
        cp->writes_pending++;
        return c;
}

/* A reply write: O_DIRECT when available (message buffers are page aligned with room up to
 * the next 4 KiB, so the length is rounded up inside the slot's own space). */
static void checkpoint_write(struct storage *storage, const void *data, uint32_t size,
                             uint64_t offset)
{
        struct io_completion *c = checkpoint_completion(storage);
        c->fd = storage->fd;
        if (storage->fd_direct >= 0 && ((uintptr_t)data % 4096) == 0 && offset % 4096 == 0) {
                c->fd = storage->fd_direct;
                size = (size + 4095u) & ~4095u;
        }
        io_write(storage->io, c, c->fd, (void *)data, size, offset);
}

static void checkpoint_finish(struct storage *storage, bool ok)
{
        struct storage_checkpoint *cp = &storage->checkpoint;
        if (ok) {
                storage->superblock = cp->superblock_next;
                storage->checkpoints++;
                storage->no_space = false;
                log_debug("checkpoint written op=%llu blocks=%llu replies_written=%u "
                          "grid_blocks=%llu",
                          (unsigned long long)cp->request.op,
                          (unsigned long long)cp->request.blocks, cp->request.reply_count,
                          (unsigned long long)storage->grid_block_count);
        } else if (cp->no_space && !cp->io_failed) {
                /* Out of space only: the durable checkpoint is untouched. */
                storage->no_space = true;
                log_warn("checkpoint postponed: the data file cannot grow (no space left on its "
                         "file system) op=%llu grid_blocks=%llu",
                         (unsigned long long)cp->request.op,
                         (unsigned long long)storage->grid_block_count);
        } else {
                storage->failed = true;
                log_error("checkpoint failed; no further writes are acknowledged op=%llu",
                          (unsigned long long)cp->request.op);
        }
        cp->active = false;
        struct storage_checkpoint_request request = cp->request;
        for (uint32_t i = 0; i < request.reply_count; i++)
                message_unref(storage->pool, request.replies[i].reply);
        request.done(request.context, ok);
}

/* Advances the checkpoint to its next stage once the previous stage's I/O completed. */
static void checkpoint_step(struct storage *storage)
{
        struct storage_checkpoint *cp = &storage->checkpoint;
        if (cp->failed) {
                checkpoint_finish(storage, false);
                return;
        }
        cp->completion_count = 0;
        if (cp->stage == 1 || cp->stage == 3) {
                cp->stage++;
                struct io_completion *c = checkpoint_completion(storage);
                io_fsync(storage->io, c, storage->fd);
                return;
        }
        if (cp->stage == 2) {
                cp->stage = 3;
                for (uint32_t copy = 0; copy < SUPERBLOCK_COPIES; copy++) {
                        cp->copies[copy] = cp->superblock_next;
                        cp->copies[copy].copy = copy;
                        cp->copies[copy].checksum = superblock_checksum(&cp->copies[copy]);
                        struct io_completion *c = checkpoint_completion(storage);
                        io_write(storage->io, c, storage->fd, &cp->copies[copy],
                                 sizeof(struct superblock), (uint64_t)copy * SUPERBLOCK_COPY_SIZE);
                }
                return;
        }
        tally_assert(cp->stage == 4);
        checkpoint_finish(storage, true);
}

bool storage_checkpoint_start(struct storage *storage,
                              const struct storage_checkpoint_request *request)
{
        struct storage_checkpoint *cp = &storage->checkpoint;
        if (cp->active || storage->failed || storage->view_write_active)
                return false;
        cp->active = true;
        cp->failed = false;
        cp->no_space = false;
        cp->io_failed = false;
        cp->stage = 1;
        cp->request = *request;
        cp->completion_count = 0;
        cp->writes_pending = 0;
        for (uint32_t i = 0; i < request->reply_count; i++)
                message_ref(request->replies[i].reply);
        /*
         * Room ahead of the ledger's blocks for the flushes and compactions until the next
         * checkpoint; without it the replica refuses writes until there is space again.
         */
        uint64_t ahead = request->grid_address_max + STORAGE_GRID_GROWTH_BYTES / GRID_BLOCK_SIZE;
        int rc = grid_grow(storage, MIN(ahead, (uint64_t)GRID_BLOCKS_MAX));
        /* The sync below covers the grid blocks only once their writes have landed. A failed
         * one means a block the checkpoint names is not on disk: never write its superblock. */
        if (rc == 0 && storage_grid_flush(storage) != 0) {
                storage->failed = true;
                cp->failed = true;
                cp->io_failed = true;
                checkpoint_step(storage);
                return true;
        }
        if (rc != 0) {
                cp->failed = true;
                cp->no_space = rc == ENOSPC || rc == EDQUOT;
                cp->io_failed = !cp->no_space;
                checkpoint_step(storage);
                return true;
        }
        /* One pending count for the set-up itself, so callbacks cannot finish the stage early. */
        cp->writes_pending++;
        for (uint32_t i = 0; i < request->reply_count; i++) {
                const struct storage_reply_write *r = &request->replies[i];
                tally_assert(r->slot < STORAGE_REPLY_SLOTS);
                checkpoint_write(storage, r->reply->buffer, r->reply->header->size,
                                 storage->superblock.client_replies_offset +
                                         (uint64_t)r->slot * WIRE_MESSAGE_SIZE_MAX);
        }
        struct superblock *next = &cp->superblock_next;
        *next = storage->superblock;
        next->format_version = STORAGE_FORMAT_VERSION; /* its root is the ledger's of today */
        next->sequence++;
        next->commit = request->op;
        next->checkpoint_op = request->op;
        next->checkpoint_prepare_checksum = request->prepare_checksum;
        next->checkpoint_timestamp = request->timestamp;
        next->checkpoint_blocks = request->blocks;
        next->root_address = request->root_address;
        next->root_checksum = request->root_checksum;
        next->grid_syncing = 0;
        next->grid_size = storage->grid_block_count * GRID_BLOCK_SIZE;
        next->file_size = next->grid_offset + next->grid_size;
        /* Drop the set-up count; if nothing was queued, step now. */
        cp->writes_pending--;
        if (cp->writes_pending == 0)
                checkpoint_step(storage);
        return true;
}

/* ---- recovery reads ---------------------------------------------------------------------- */

int storage_read_reply(struct storage *storage, uint32_t slot, struct message *message,
                       u128 reply_checksum, char *error, size_t error_size)
{
        uint64_t offset = storage->superblock.client_replies_offset +
                          (uint64_t)slot * WIRE_MESSAGE_SIZE_MAX;
        if (slot >= STORAGE_REPLY_SLOTS ||
            read_exact(storage->fd, message->buffer, WIRE_HEADER_SIZE, offset) != 0 ||
            message->header->checksum != reply_checksum ||
            !wire_header_checksum_valid(message->header) ||
            message->header->size < WIRE_HEADER_SIZE ||
            message->header->size > WIRE_MESSAGE_SIZE_MAX ||
            read_exact(storage->fd, message->buffer + WIRE_HEADER_SIZE,
                       message->header->size - WIRE_HEADER_SIZE, offset + WIRE_HEADER_SIZE) != 0 ||
            !wire_body_checksum_valid(message->header, message->buffer + WIRE_HEADER_SIZE)) {
                snprintf(error, error_size, "client reply in slot %u is corrupt (zone client "
                         "replies)",
                         slot);
                return -1;
        }
        return 0;
}

bool storage_read_wal_header(struct storage *storage, uint32_t slot, struct wire_header *header)
{
        const struct superblock *sb = &storage->superblock;
        tally_assert(slot < sb->wal_slot_count);
        if (read_exact(storage->fd, header, WIRE_HEADER_SIZE,
                       sb->wal_headers_offset + (uint64_t)slot * WIRE_HEADER_SIZE) != 0)
                return false;
        return header->command == COMMAND_PREPARE && header->cluster == sb->cluster &&
               wire_header_checksum_valid(header) && header->size >= WIRE_HEADER_SIZE &&
               header->size <= sb->message_size_max;
}

bool storage_read_prepare(struct storage *storage, uint32_t slot, const struct wire_header *header,
                          struct message *message)
{
        const struct superblock *sb = &storage->superblock;
        tally_assert(slot < sb->wal_slot_count);
        if (header == NULL) {
                /* Whatever intact prepare the slot holds (its header zone copy is damaged). */
                uint64_t offset = sb->wal_prepares_offset + (uint64_t)slot * sb->message_size_max;
                if (read_exact(storage->fd, message->buffer, WIRE_HEADER_SIZE, offset) != 0)
                        return false;
                const struct wire_header *h = message->header;
                if (!wire_header_checksum_valid(h) || h->command != COMMAND_PREPARE ||
                    h->cluster != sb->cluster || h->size < WIRE_HEADER_SIZE ||
                    h->size > sb->message_size_max)
                        return false;
                return read_exact(storage->fd, message->buffer + WIRE_HEADER_SIZE,
                                  h->size - WIRE_HEADER_SIZE, offset + WIRE_HEADER_SIZE) == 0 &&
                       wire_body_checksum_valid(h, message->buffer + WIRE_HEADER_SIZE);
        }
        if (read_exact(storage->fd, message->buffer, header->size,
                       sb->wal_prepares_offset + (uint64_t)slot * sb->message_size_max) != 0)
                return false;
        return memcmp(message->header, header, WIRE_HEADER_SIZE) == 0 &&
               wire_body_checksum_valid(message->header, message->buffer + WIRE_HEADER_SIZE);
}

/* ---- view state ---------------------------------------------------------------------------- */

static void on_view_io(struct io_completion *completion, int32_t result)
{
        struct storage *storage = completion->context;
        if (result < 0 || (completion->size > 0 && (uint32_t)result != completion->size)) {
                storage->view_write_failed = true;
                log_error("superblock write failed (view state) error=%s",
                          strerror(result < 0 ? -result : EIO));
        }
        tally_assert(storage->view_write_pending > 0);
        if (--storage->view_write_pending > 0)
                return;
        if (storage->view_write_failed) {
                /* Nothing that depends on this view may be promised: stop acknowledging. */
                storage->failed = true;
                storage->view_write_active = false;
                return;
        }
        if (completion->opcode != IORING_OP_FSYNC) {
                struct io_completion *c = &storage->view_completions[SUPERBLOCK_COPIES];
                memset(c, 0, sizeof(*c));
                c->callback = on_view_io;
                c->context = storage;
                storage->view_write_pending = 1;
                io_fsync(storage->io, c, storage->fd);
                return;
        }
        storage->superblock = storage->view_copies[0];
        storage->superblock.copy = 0;
        storage->view_write_active = false;
        storage->view_done(storage->view_context);
}

bool storage_write_view(struct storage *storage, const struct storage_view *state,
                        void (*done)(void *context), void *context)
{
        if (storage->failed || storage->view_write_active || storage->checkpoint.active)
                return false;
        storage->view_write_active = true;
        storage->view_write_failed = false;
        storage->view_done = done;
        storage->view_context = context;
        struct superblock next = storage->superblock;
        next.sequence++;
        next.view = state->view;
        next.log_view = state->log_view;
        next.view_anchor_op = state->anchor_op;
        next.view_anchor_checksum = state->anchor_checksum;
        next.caught_up = state->fresh ? 0 : 1;
        next.fresh_joined = state->fresh_joined ? 1 : 0;
        next.fresh_joined_op = state->fresh_joined_op;
        memcpy(next.view_prefixes, state->view_prefixes, sizeof(next.view_prefixes));
        next.grid_syncing = state->grid_syncing ? 1 : 0;
        next.grid_size = storage->grid_block_count * GRID_BLOCK_SIZE;
        next.file_size = next.grid_offset + next.grid_size;
        storage->view_write_pending = SUPERBLOCK_COPIES;
        for (uint32_t copy = 0; copy < SUPERBLOCK_COPIES; copy++) {
                storage->view_copies[copy] = next;
                storage->view_copies[copy].copy = copy;
                storage->view_copies[copy].checksum = superblock_checksum(&storage->view_copies[copy]);
                struct io_completion *c = &storage->view_completions[copy];
                memset(c, 0, sizeof(*c));
                c->callback = on_view_io;
                c->context = storage;
                io_write(storage->io, c, storage->fd, &storage->view_copies[copy],
                         sizeof(struct superblock), (uint64_t)copy * SUPERBLOCK_COPY_SIZE);
        }
        return true;
}


/* ---- format 1 ------------------------------------------------------------------------------ */

struct legacy_manifest_header {
        char magic[8];
        uint32_t entry_count;
        uint32_t reserved;
        uint64_t blob_size;
        uint64_t checkpoint_op;
};

struct legacy_manifest_entry {
        uint64_t address; /* 1-based, in 1 MiB blocks */
        uint32_t size;
        uint32_t reserved;
        u128 checksum;
};

uint64_t storage_legacy_grid_blocks(const struct storage *storage)
{
        return storage->superblock.grid_size / GRID_BLOCK_SIZE;
}

int storage_legacy_read_checkpoint(struct storage *storage, uint8_t **blob_out, uint64_t *size_out,
                                   char *error, size_t error_size)
{
        const struct superblock *sb = &storage->superblock;
        *blob_out = NULL;
        *size_out = 0;
        if (sb->root_address == 0)
                return 0;
        uint64_t legacy_blocks = sb->grid_size / STORAGE_LEGACY_BLOCK_SIZE;
        uint32_t manifest_size = sb->grid_syncing;
        uint64_t blob_size = sb->checkpoint_blocks;
        if (sb->root_address > legacy_blocks || manifest_size < sizeof(struct legacy_manifest_header) ||
            manifest_size > STORAGE_LEGACY_BLOCK_SIZE) {
                snprintf(error, error_size, "format 1 superblock names an impossible manifest "
                         "(zone grid)");
                return -1;
        }
        uint8_t *manifest = malloc(manifest_size);
        uint8_t *blob = malloc(blob_size + 1);
        int result = -1;
        if (manifest == NULL || blob == NULL) {
                snprintf(error, error_size, "out of memory for a format 1 checkpoint of %llu "
                         "bytes", (unsigned long long)blob_size);
                goto done;
        }
        uint64_t base = sb->grid_offset;
        if (read_exact(storage->fd, manifest, manifest_size,
                       base + (sb->root_address - 1) * STORAGE_LEGACY_BLOCK_SIZE) != 0 ||
            checksum(manifest, manifest_size) != sb->root_checksum) {
                snprintf(error, error_size, "format 1 checkpoint manifest is corrupt (zone grid)");
                goto done;
        }
        struct legacy_manifest_header header;
        memcpy(&header, manifest, sizeof(header));
        if (sizeof(header) + (uint64_t)header.entry_count * sizeof(struct legacy_manifest_entry) !=
            manifest_size) {
                snprintf(error, error_size, "format 1 checkpoint manifest has an impossible size");
                goto done;
        }
        uint64_t offset = 0;
        for (uint32_t i = 0; i < header.entry_count; i++) {
                struct legacy_manifest_entry e;
                memcpy(&e, manifest + sizeof(header) + i * sizeof(e), sizeof(e));
                if (e.address == 0 || e.address > legacy_blocks ||
                    e.size > STORAGE_LEGACY_BLOCK_SIZE || offset + e.size > blob_size ||
                    read_exact(storage->fd, blob + offset, e.size,
                               base + (e.address - 1) * STORAGE_LEGACY_BLOCK_SIZE) != 0 ||
                    checksum(blob + offset, e.size) != e.checksum) {
                        snprintf(error, error_size, "format 1 checkpoint block %u is corrupt "
                                 "(zone grid)", i);
                        goto done;
                }
                offset += e.size;
        }
        if (offset != blob_size) {
                snprintf(error, error_size, "format 1 checkpoint is %llu bytes, its manifest "
                         "covers %llu (zone grid)",
                         (unsigned long long)blob_size, (unsigned long long)offset);
                goto done;
        }
        *blob_out = blob;
        *size_out = blob_size;
        blob = NULL;
        result = 0;
done:
        free(manifest);
        free(blob);
        return result;
}

int storage_legacy_convert(struct storage *storage,
                           const struct storage_checkpoint_request *request, char *error,
                           size_t error_size)
{
        tally_assert(storage->legacy && request->reply_count == 0);
        uint64_t ahead = request->grid_address_max + STORAGE_GRID_GROWTH_BYTES / GRID_BLOCK_SIZE;
        int rc = grid_grow(storage, MIN(ahead, (uint64_t)GRID_BLOCKS_MAX));
        if (rc != 0) {
                snprintf(error, error_size, "cannot grow the grid to convert it: %s",
                         strerror(rc));
                return -1;
        }
        rc = storage_grid_flush(storage);
        if (rc != 0) {
                snprintf(error, error_size, "cannot write the converted grid: %s", strerror(-rc));
                return -1;
        }
        if (fdatasync(storage->fd) != 0) {
                snprintf(error, error_size, "cannot sync the data file: %s", strerror(errno));
                return -1;
        }
        struct superblock next = storage->superblock;
        next.format_version = STORAGE_FORMAT_VERSION;
        next.sequence++;
        next.checkpoint_op = request->op;
        next.checkpoint_prepare_checksum = request->prepare_checksum;
        next.checkpoint_timestamp = request->timestamp;
        next.checkpoint_blocks = request->blocks;
        next.root_address = request->root_address;
        next.root_checksum = request->root_checksum;
        next.grid_syncing = 0;
        next.grid_size = storage->grid_block_count * GRID_BLOCK_SIZE;
        next.file_size = next.grid_offset + next.grid_size;
        if (superblock_write_all(storage->fd, &next, error, error_size) != 0)
                return -1;
        next.copy = 0;
        next.checksum = superblock_checksum(&next);
        storage->superblock = next;
        storage->legacy = false;
        log_info("data file converted to format version %u checkpoint_op=%llu root=%llu",
                 STORAGE_FORMAT_VERSION, (unsigned long long)request->op,
                 (unsigned long long)request->root_address);
        return 0;
}
