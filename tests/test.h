/* tests/test.h: the tiny in-tree test harness (after libuv's task.h and Redis's testhelp.h).
 *
 * A test file defines cases with TEST(name) { ... } at the start of a line (the CMake glob
 * reads those lines to register one ctest case per TEST) and ends with TEST_MAIN(). The
 * binary runs every case, or only the one named in argv[1]. Assertions print file:line, the
 * expression and both values, mark the case failed and return from it. The summary ends with
 * the line "N passed, N failed"; the exit code is non-zero on any failure. */
#ifndef EW_TEST_H
#define EW_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct test_case {
    const char *name;
    void (*fn)(int *failed);
};

#define TEST_MAX_CASES 256
static struct test_case test__cases[TEST_MAX_CASES];
static int test__n_cases;

#define TEST(name)                                                                                 \
    static void test_##name(int *test__failed);                                                    \
    __attribute__((constructor)) static void test__reg_##name(void)                                \
    {                                                                                              \
        if (test__n_cases < TEST_MAX_CASES)                                                        \
            test__cases[test__n_cases++] = (struct test_case){#name, test_##name};                 \
    }                                                                                              \
    static void test_##name(int *test__failed)

#define TEST_FAIL_(...)                                                                            \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        *test__failed = 1;                                                                         \
        return;                                                                                    \
    } while (0)

/* Boolean condition. */
#define ASSERT(c)                                                                                  \
    do {                                                                                           \
        if (!(c)) TEST_FAIL_("assertion failed: %s", #c);                                          \
    } while (0)

/* Integer comparison (values printed as long long). */
#define ASSERT_INT_OP(a, op, b)                                                                    \
    do {                                                                                           \
        long long test__a = (long long)(a), test__b = (long long)(b);                              \
        if (!(test__a op test__b))                                                                 \
            TEST_FAIL_("%s %s %s  (%lld vs %lld)", #a, #op, #b, test__a, test__b);                 \
    } while (0)
#define ASSERT_EQ(a, b) ASSERT_INT_OP(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_OP(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_INT_OP(a, <, b)
#define ASSERT_LE(a, b) ASSERT_INT_OP(a, <=, b)
#define ASSERT_GT(a, b) ASSERT_INT_OP(a, >, b)
#define ASSERT_GE(a, b) ASSERT_INT_OP(a, >=, b)

/* |a - b| <= tol, both printed. NaN fails. */
#define ASSERT_NEAR(a, b, tol)                                                                     \
    do {                                                                                           \
        double test__a = (double)(a), test__b = (double)(b), test__t = (double)(tol);              \
        if (!(fabs(test__a - test__b) <= test__t))                                                 \
            TEST_FAIL_("%s ~ %s  (%.9g vs %.9g, |diff| %.3g > tol %.3g)", #a, #b, test__a,         \
                       test__b, fabs(test__a - test__b), test__t);                                 \
    } while (0)

/* Floating a op b. */
#define ASSERT_FLT_OP(a, op, b)                                                                    \
    do {                                                                                           \
        double test__a = (double)(a), test__b = (double)(b);                                       \
        if (!(test__a op test__b))                                                                 \
            TEST_FAIL_("%s %s %s  (%.9g vs %.9g)", #a, #op, #b, test__a, test__b);                 \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
    do {                                                                                           \
        const char *test__a = (a), *test__b = (b);                                                 \
        if (!test__a || !test__b || strcmp(test__a, test__b) != 0)                                 \
            TEST_FAIL_("%s == %s  (\"%s\" vs \"%s\")", #a, #b, test__a ? test__a : "(null)",       \
                       test__b ? test__b : "(null)");                                              \
    } while (0)

/* Substring check, for error messages that must name the bad input. */
#define ASSERT_CONTAINS(hay, needle)                                                               \
    do {                                                                                           \
        const char *test__h = (hay), *test__n = (needle);                                          \
        if (!test__h || !strstr(test__h, test__n))                                                 \
            TEST_FAIL_("\"%s\" does not contain \"%s\"", test__h ? test__h : "(null)", test__n);   \
    } while (0)

#define TEST_MAIN()                                                                                \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        int n_pass = 0, n_fail = 0, found = 0;                                                     \
        for (int i = 0; i < test__n_cases; i++) {                                                  \
            if (argc > 1 && strcmp(argv[1], test__cases[i].name) != 0) continue;                   \
            found = 1;                                                                             \
            int failed = 0;                                                                        \
            test__cases[i].fn(&failed);                                                            \
            printf("%s %s\n", failed ? "FAIL" : "ok  ", test__cases[i].name);                      \
            if (failed)                                                                            \
                n_fail++;                                                                          \
            else                                                                                   \
                n_pass++;                                                                          \
        }                                                                                          \
        if (argc > 1 && !found) {                                                                  \
            fprintf(stderr, "no test named %s\n", argv[1]);                                        \
            return 2;                                                                              \
        }                                                                                          \
        printf("%d passed, %d failed\n", n_pass, n_fail);                                          \
        return n_fail ? 1 : 0;                                                                     \
    }

#endif
