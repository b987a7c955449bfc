/* bench/core_latency.c: the round trip of one cache line between two CPUs.
 *
 * usage: build/core_latency [CPU_A CPU_B] [ROUNDS]   (default CPUs 0 and 1, 2,000,000 rounds)
 *
 * Two threads pinned to CPU_A and CPU_B hand a flag back and forth through one cache line
 * and the mean round trip is printed: two transfers of the line between the cores' caches.
 * On one CCX of a Zen core complex that is some 50 ns; across CCDs or sockets several
 * times more. Every line one thread writes and the other then reads pays half of it, which
 * is what a thread split that does not keep a tensor's rows on the thread that wrote them
 * costs (docs/BENCHMARKS.md, section 2b, session 15). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) _Atomic int flag;
static long rounds = 2000000;

static int pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *echo(void *arg)
{
    if (pin(*(const int *)arg) != 0) {
        fprintf(stderr, "core_latency: cannot run on CPU %d\n", *(const int *)arg);
        exit(1);
    }
    for (long i = 0; i < rounds; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) {
        }
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int a = 0, b = 1;
    if (argc >= 3) a = atoi(argv[1]), b = atoi(argv[2]);
    if (argc >= 4) rounds = atol(argv[3]);
    if (a < 0 || b < 0 || a == b || rounds < 1) {
        fprintf(stderr, "usage: core_latency [CPU_A CPU_B] [ROUNDS >= 1] (two different CPUs)\n");
        return 2;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, echo, &b) != 0) {
        fprintf(stderr, "core_latency: pthread_create failed\n");
        return 1;
    }
    if (pin(a) != 0) {
        fprintf(stderr, "core_latency: cannot run on CPU %d\n", a);
        return 1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        atomic_store_explicit(&flag, 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 0) {
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(t, NULL);
    const double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec));
    printf("CPU %d <-> CPU %d: cache-line round trip %.1f ns (mean of %ld)\n", a, b, ns / rounds,
           rounds);
    return 0;
}
