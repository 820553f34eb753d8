/*
 * huge_pages.c: anonymous mappings aligned to 2 MiB and advised for transparent huge pages
 * (see huge_pages.h for why).
 */
#include "lib/huge_pages.h"

#include <sys/mman.h>

#define HUGE_PAGE_BYTES ((size_t)2 << 20)

static size_t mapped_bytes(size_t bytes)
{
        return (bytes + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
}

void *huge_pages_alloc(size_t bytes)
{
        if (bytes == 0)
                return NULL;
        size_t size = mapped_bytes(bytes);
        /* Over-map by one huge page, then unmap what lies before and after the aligned part. */
        uint8_t *raw = mmap(NULL, size + HUGE_PAGE_BYTES, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED)
                return NULL;
        uintptr_t start = ((uintptr_t)raw + HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1);
        size_t head = start - (uintptr_t)raw;
        if (head > 0)
                munmap(raw, head);
        munmap((uint8_t *)start + size, HUGE_PAGE_BYTES - head); /* head < HUGE_PAGE_BYTES */
        (void)madvise((void *)start, size, MADV_HUGEPAGE);
        return (void *)start;
}

void huge_pages_free(void *memory, size_t bytes)
{
        if (memory != NULL)
                munmap(memory, mapped_bytes(bytes));
}
