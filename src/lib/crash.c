/*
 * crash.c: the fatal-signal backtrace of crash.h. The handler uses only what is safe in a
 * signal handler (write, backtrace_symbols_fd, raise); backtrace() itself is called once at
 * install so that its lazy loading happens outside the handler.
 */
#include "lib/crash.h"

#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define CRASH_FRAMES_MAX 64
#define CRASH_STACK_SIZE (64u * 1024u)

static uint8_t crash_stack[CRASH_STACK_SIZE];

static void write_text(const char *text)
{
        ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
        (void)ignored;
}

static const char *signal_name(int signal)
{
        switch (signal) {
        case SIGSEGV:
                return "SIGSEGV";
        case SIGBUS:
                return "SIGBUS";
        case SIGILL:
                return "SIGILL";
        case SIGFPE:
                return "SIGFPE";
        default:
                return "fatal signal";
        }
}

static void on_fatal_signal(int signal)
{
        void *frames[CRASH_FRAMES_MAX];
        write_text("fatal: ");
        write_text(signal_name(signal));
        write_text("; backtrace (addr2line -f -e <tally> <offset> names each line):\n");
        int count = backtrace(frames, CRASH_FRAMES_MAX);
        backtrace_symbols_fd(frames, count, STDERR_FILENO);
        /* The handler was reset on entry (SA_RESETHAND): die of the signal as before. */
        raise(signal);
}

void crash_handler_install(void)
{
#ifdef __SANITIZE_ADDRESS__
        return; /* the sanitizer's own report says more */
#endif
        void *warm[1];
        (void)backtrace(warm, 1);
        stack_t stack = {.ss_sp = crash_stack, .ss_size = sizeof(crash_stack), .ss_flags = 0};
        sigaltstack(&stack, NULL);
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_fatal_signal;
        sa.sa_flags = SA_RESETHAND | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
        for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
                sigaction(signals[i], &sa, NULL);
}
