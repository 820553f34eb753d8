/*
 * huge_pages.h: memory for large arrays read at random places (object caches, the working set).
 *
 * Why: such an array spread over 4 KiB pages costs a TLB miss, on top of the cache miss, at
 * nearly every access: the accounts' object cache holds 10,000 hot accounts scattered by hash
 * over tens of MiB, one page each. Aligned to 2 MiB and advised for transparent huge pages,
 * the same array takes a handful of TLB entries. Memory comes from an anonymous mapping, so it
 * reads as zero and is only resident once touched, like calloc's; the advice is a hint only.
 */
#ifndef TALLY_LIB_HUGE_PAGES_H
#define TALLY_LIB_HUGE_PAGES_H

#include "lib/common.h"

/* `bytes` of zeroed memory, 2 MiB aligned; NULL if the mapping fails. Maps whole 2 MiB pages. */
void *huge_pages_alloc(size_t bytes);
/* Frees what huge_pages_alloc(bytes) returned (NULL is fine). */
void huge_pages_free(void *memory, size_t bytes);

/*
 * Faulting memory in for the first time costs the thread that touches it: on this VM a 2 MiB
 * page took ~4 ms to zero (the host backs it lazily), and a replica's caches and memtables
 * (~0.5 GiB) were first touched by the loop over its first seconds of load, 5 % of its time then,
 * after every restart. huge_pages_note records a region (huge_pages_alloc's are noted already);
 * huge_pages_populate_start starts a low-priority detached thread that faults in every region
 * noted so far (MADV_POPULATE_WRITE: contents unchanged; a region freed since is harmless).
 * The server calls it once its ledger exists; memory is then resident from the start, as
 * TigerBeetle's is. False if the thread could not start (nothing else changes).
 */
void huge_pages_note(void *memory, size_t bytes);
bool huge_pages_populate_start(void);

#endif
