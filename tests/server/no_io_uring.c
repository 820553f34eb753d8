/*
 * no_io_uring <program> [args...]: runs the program with io_uring forbidden, as Docker's default
 * seccomp profile and Kubernetes' RuntimeDefault do on current runtimes.
 *
 * Installs a seccomp filter (PR_SET_NO_NEW_PRIVS, then SECCOMP_SET_MODE_FILTER: no capability
 * needed) that fails io_uring_setup, io_uring_enter and io_uring_register with EPERM and allows
 * every other system call, checks that io_uring_setup now fails so, then execs the program.
 * The filter is inherited by every child and kept across exec, so a server that a test or a
 * `tally benchmark` starts from here runs under it too. Exit status 2 if the filter cannot be
 * installed, 127 if the program cannot be run.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH_NATIVE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH_NATIVE AUDIT_ARCH_AARCH64
#else
#error "no_io_uring: add this architecture's AUDIT_ARCH_* value"
#endif

static int filter_install(void)
{
        struct sock_filter program[] = {
            /* Another ABI (x86's 32-bit one) has other numbers: fail all of it closed. */
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH_NATIVE, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        };
        struct sock_fprog fprog = {
            .len = (unsigned short)(sizeof(program) / sizeof(program[0])),
            .filter = program,
        };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
                fprintf(stderr, "no_io_uring: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
                return -1;
        }
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
                fprintf(stderr, "no_io_uring: seccomp: %s\n", strerror(errno));
                return -1;
        }
        return 0;
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                fprintf(stderr, "usage: no_io_uring <program> [args...]\n");
                return 2;
        }
        if (filter_install() != 0)
                return 2;
        struct io_uring_params params;
        memset(&params, 0, sizeof(params));
        long fd = syscall(__NR_io_uring_setup, 4, &params);
        if (fd >= 0 || errno != EPERM) {
                fprintf(stderr, "no_io_uring: io_uring_setup still works under the filter\n");
                return 2;
        }
        execvp(argv[1], argv + 1);
        fprintf(stderr, "no_io_uring: cannot run %s: %s\n", argv[1], strerror(errno));
        return 127;
}
