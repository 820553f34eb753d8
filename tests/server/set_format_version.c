/*
 * set_format_version.c: rewrites the format version of every superblock copy of a stopped
 * data file (with valid checksums), to test what a tally does with a file of another version.
 * Usage: set_format_version <data file> <version>
 */
#include "storage/storage.h"
#include "wire/checksum.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
        if (argc != 3) {
                fprintf(stderr, "usage: set_format_version <data file> <version>\n");
                return 2;
        }
        int fd = open(argv[1], O_RDWR);
        if (fd < 0) {
                perror("open");
                return 1;
        }
        for (uint32_t copy = 0; copy < SUPERBLOCK_COPIES; copy++) {
                static struct superblock sb;
                off_t at = (off_t)copy * SUPERBLOCK_COPY_SIZE;
                if (pread(fd, &sb, sizeof(sb), at) != (ssize_t)sizeof(sb))
                        return 1;
                sb.format_version = (uint32_t)strtoul(argv[2], NULL, 10);
                sb.checksum = checksum((const uint8_t *)&sb + 16, sizeof(sb) - 16);
                if (pwrite(fd, &sb, sizeof(sb), at) != (ssize_t)sizeof(sb))
                        return 1;
        }
        return fsync(fd) == 0 && close(fd) == 0 ? 0 : 1;
}
