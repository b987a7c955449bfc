/* bench/bench_time.h: the clock and the sort order the micro-benchmarks share (header-only,
 * so a bench still builds alone with gcc against an older tree's libnet.a). Include it after
 * defining _POSIX_C_SOURCE. */
#ifndef EW_BENCH_TIME_H
#define EW_BENCH_TIME_H

#include <time.h>

/* Monotonic seconds. */
static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort order of doubles, ascending. */
static inline int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#endif
