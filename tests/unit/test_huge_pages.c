/*
 * test_huge_pages.c: huge_pages_alloc hands out zeroed, writable memory aligned to 2 MiB, of any
 * size (not only whole huge pages), and huge_pages_free gives it back.
 */
#include "lib/huge_pages.h"
#include "test.h"

#include <stdint.h>
#include <string.h>

static bool all_zero(const uint8_t *p, size_t bytes)
{
        for (size_t i = 0; i < bytes; i++)
                if (p[i] != 0)
                        return false;
        return true;
}

static void test_sizes(void)
{
        CHECK(huge_pages_alloc(0) == NULL);
        huge_pages_free(NULL, 123); /* a no-op */
        const size_t sizes[] = {1, 4096, (2u << 20) - 1, 2u << 20, (3u << 20) + 17, 9u << 20};
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                size_t bytes = sizes[k];
                uint8_t *p = huge_pages_alloc(bytes);
                CHECK(p != NULL);
                if (p == NULL)
                        continue;
                CHECK_EQ_U64((uintptr_t)p % (2u << 20), 0);
                CHECK(all_zero(p, bytes));
                memset(p, 0xa5, bytes); /* every byte writable */
                CHECK(p[0] == 0xa5 && p[bytes - 1] == 0xa5);
                huge_pages_free(p, bytes);
        }
}

/* Freed memory is handed back: many large allocations in turn do not exhaust the address space. */
static void test_free_returns(void)
{
        for (int i = 0; i < 20000; i++) {
                size_t bytes = (size_t)8 << 30; /* 8 GiB, never touched: 160 TiB if leaked */
                uint8_t *p = huge_pages_alloc(bytes);
                CHECK(p != NULL);
                if (p == NULL)
                        return;
                huge_pages_free(p, bytes);
        }
}

int main(void)
{
        TEST_RUN(test_sizes);
        TEST_RUN(test_free_returns);
        TEST_MAIN_END();
}
