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

#endif
