/*
 * crash.h: a fatal signal (a segmentation fault, bus error, illegal instruction or arithmetic
 * fault) leaves a backtrace on stderr before the process dies as it would have.
 *
 * Why: a replica that crashes under a Kubernetes restart policy leaves only its log. Without a
 * backtrace, a crash seen once (CI's rolling upgrade once ended a replica with a segmentation
 * fault that twelve later runs did not repeat) cannot be traced. The addresses map to source
 * lines with `addr2line -f -e tally <offset>`.
 */
#ifndef TALLY_LIB_CRASH_H
#define TALLY_LIB_CRASH_H

/* Installs the handlers (on an alternate stack, so a stack overflow is reported too). */
void crash_handler_install(void);

#endif
