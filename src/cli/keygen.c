/*
 * keygen.c: `tally keygen <path>` writes a new cluster key file for `--cluster-key-file`: 64
 * random hexadecimal digits (256 bits), readable by its owner only. It never overwrites a
 * file: replacing the key of a running cluster would cut its replicas off from each other.
 */
#include "cli/cli.h"
#include "net/peer_auth.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int cli_keygen(int argc, char **argv)
{
        if (argc != 1 || argv[0][0] == '-') {
                cli_error("keygen: usage: tally keygen <path> (writes a new cluster key file)");
                return 2;
        }
        const char *path = argv[0];
        char text[66];
        if (!peer_auth_key_generate(text)) {
                cli_error("keygen: the kernel gave no random bytes");
                return 1;
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
                cli_error("keygen: cannot create %s: %s%s", path, strerror(errno),
                          errno == EEXIST ? " (a key file is never overwritten)" : "");
                return 1;
        }
        size_t size = strlen(text);
        ssize_t written = write(fd, text, size);
        int sync_rc = fsync(fd);
        int close_rc = close(fd);
        memset(text, 0, sizeof(text));
        if (written != (ssize_t)size || sync_rc != 0 || close_rc != 0) {
                cli_error("keygen: cannot write %s: %s", path,
                          written < 0 || sync_rc != 0 || close_rc != 0 ? strerror(errno)
                                                                       : "short write");
                unlink(path);
                return 1;
        }
        return 0;
}
