/*
 * huge_pages.c: anonymous mappings aligned to 2 MiB and advised for transparent huge pages
 * (see huge_pages.h for why).
 */
#include "lib/huge_pages.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HUGE_PAGE_BYTES ((size_t)2 << 20)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* The regions huge_pages_populate_start fills in, noted since the process started. */
#define REGIONS_MAX 256u
struct region {
        uint8_t *start;
        size_t bytes;
};
static struct region regions[REGIONS_MAX];
static uint32_t region_count;

void huge_pages_note(void *memory, size_t bytes)
{
        if (memory != NULL && bytes >= HUGE_PAGE_BYTES && region_count < REGIONS_MAX)
                regions[region_count++] = (struct region){.start = memory, .bytes = bytes};
}

struct populate {
        struct region regions[REGIONS_MAX];
        uint32_t count;
};

static void *populate_main(void *arg)
{
        struct populate *p = arg;
        /* Behind the loop and the compaction worker: it only saves them first touches. */
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
        for (uint32_t i = 0; i < p->count; i++) {
                /* A huge page at a time, so the loop's own faults never wait long behind it. */
                for (size_t done = 0; done < p->regions[i].bytes; done += HUGE_PAGE_BYTES) {
                        size_t n = MIN(HUGE_PAGE_BYTES, p->regions[i].bytes - done);
                        if (madvise(p->regions[i].start + done, n, MADV_POPULATE_WRITE) != 0 &&
                            errno == EINVAL) {
                                free(p); /* a kernel without it: first touches stay */
                                return NULL;
                        }
                }
        }
        free(p);
        return NULL;
}

bool huge_pages_populate_start(void)
{
        struct populate *p = malloc(sizeof(*p));
        if (p == NULL)
                return false;
        memcpy(p->regions, regions, region_count * sizeof(regions[0]));
        p->count = region_count;
        sigset_t all, previous;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t thread;
        int rc = pthread_create(&thread, &attr, populate_main, p);
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
        if (rc != 0)
                free(p);
        return rc == 0;
}

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
        huge_pages_note((void *)start, size);
        return (void *)start;
}

void huge_pages_free(void *memory, size_t bytes)
{
        if (memory != NULL)
                munmap(memory, mapped_bytes(bytes));
}
