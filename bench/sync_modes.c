/*
 * sync_modes.c: how to make a journal write durable on this machine, measured: buffered
 * pwrite + fdatasync per group of writes (what the server does) against O_DIRECT | O_DSYNC
 * writes, for full 1 MiB prepares and for small 4 KiB ones.
 *
 * Usage: sync_modes <file in the target file system> [seconds per case]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 256u
#define SLOT_SIZE (1u << 20)

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes `size`-byte prepares into consecutive slots for `seconds`; syncs every `group`. */
static void run(const char *path, int flags, uint32_t size, uint32_t group, double seconds,
                const char *name)
{
        int fd = open(path, O_RDWR | flags);
        if (fd < 0) {
                perror(name);
                return;
        }
        void *buffer;
        if (posix_memalign(&buffer, 4096, SLOT_SIZE) != 0)
                return;
        memset(buffer, 0x5A, SLOT_SIZE);
        uint64_t writes = 0;
        double start = now_s(), end = start + seconds;
        while (now_s() < end) {
                for (uint32_t i = 0; i < group; i++) {
                        uint64_t slot = writes % SLOTS;
                        if (pwrite(fd, buffer, size, (off_t)(slot * SLOT_SIZE)) != (ssize_t)size) {
                                perror("pwrite");
                                return;
                        }
                        writes++;
                }
                if (!(flags & O_DSYNC))
                        fdatasync(fd);
        }
        double elapsed = now_s() - start;
        printf("%-44s %9.0f writes/s %8.1f MB/s %8.3f ms/write\n", name, (double)writes / elapsed,
               (double)writes * size / elapsed / 1e6, elapsed * 1e3 / (double)writes);
        free(buffer);
        close(fd);
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                fprintf(stderr, "usage: sync_modes <file> [seconds]\n");
                return 2;
        }
        const char *path = argv[1];
        double seconds = argc > 2 ? atof(argv[2]) : 2.0;
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || posix_fallocate(fd, 0, (off_t)SLOTS * SLOT_SIZE) != 0) {
                perror("create");
                return 1;
        }
        close(fd);
        run(path, 0, SLOT_SIZE, 1, seconds, "1 MiB, pwrite + fdatasync each");
        run(path, 0, SLOT_SIZE, 8, seconds, "1 MiB, pwrite x8 + one fdatasync (grouped)");
        run(path, O_DIRECT | O_DSYNC, SLOT_SIZE, 1, seconds, "1 MiB, O_DIRECT|O_DSYNC");
        run(path, 0, 4096, 1, seconds, "4 KiB, pwrite + fdatasync each");
        run(path, 0, 4096, 8, seconds, "4 KiB, pwrite x8 + one fdatasync (grouped)");
        run(path, O_DIRECT | O_DSYNC, 4096, 1, seconds, "4 KiB, O_DIRECT|O_DSYNC");
        unlink(path);
        return 0;
}
