/*
 * test.h: the smallest test harness that does what we need.
 *
 * A test file defines functions `static void test_xxx(void)` and lists them in main() with
 * TEST_RUN(test_xxx). CHECK records a failure with file, line and expression and carries on, so
 * one run shows every broken case. TEST_MAIN_END prints the closing line "N passed, N failed"
 * (counting test functions) and returns non-zero if anything failed.
 */
#ifndef TALLY_TEST_H
#define TALLY_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_checks_failed_in_current;
static int test_functions_passed;
static int test_functions_failed;

#define CHECK(cond)                                                                               \
        do {                                                                                      \
                if (!(cond)) {                                                                    \
                        fprintf(stderr, "  CHECK failed: %s (%s:%d)\n", #cond, __FILE__,         \
                                __LINE__);                                                        \
                        test_checks_failed_in_current++;                                          \
                }                                                                                 \
        } while (0)

#define CHECK_EQ_U64(a, b)                                                                        \
        do {                                                                                      \
                unsigned long long check_a_ = (unsigned long long)(a);                            \
                unsigned long long check_b_ = (unsigned long long)(b);                            \
                if (check_a_ != check_b_) {                                                       \
                        fprintf(stderr, "  CHECK failed: %s == %s (%llu != %llu) (%s:%d)\n", #a,  \
                                #b, check_a_, check_b_, __FILE__, __LINE__);                      \
                        test_checks_failed_in_current++;                                          \
                }                                                                                 \
        } while (0)

#define TEST_RUN(fn)                                                                              \
        do {                                                                                      \
                test_checks_failed_in_current = 0;                                                \
                fn();                                                                             \
                if (test_checks_failed_in_current == 0) {                                         \
                        test_functions_passed++;                                                  \
                } else {                                                                          \
                        test_functions_failed++;                                                  \
                        fprintf(stderr, "FAIL %s\n", #fn);                                        \
                }                                                                                 \
        } while (0)

#define TEST_MAIN_END()                                                                           \
        do {                                                                                      \
                printf("%d passed, %d failed\n", test_functions_passed, test_functions_failed);   \
                return test_functions_failed == 0 ? 0 : 1;                                        \
        } while (0)

#endif
