/* bench/fma_peak.c: this machine's FP32 FMA limit, the ceiling a training step is measured
 * against.
 *
 * usage: fma_peak [THREADS]     (default 2)
 *
 * Each thread runs NACC independent chains of vfmadd (acc = acc * x + y on registers only:
 * no loads, no stores), enough chains to cover the FMA latency on every port of a modern
 * core, for ~0.2 s per measurement, best of three. It measures AVX-512 (16 lanes) and AVX2
 * (8 lanes) each with 1 thread and with THREADS threads (one pthread each, started together)
 * and prints one JSON line:
 *   {"threads":2,"avx512_1t":..,"avx512":..,"avx2_1t":..,"avx2":..,"gflops":..}
 * in GFLOP/s (an FMA is 2 flops per lane); "gflops" is the best ISA at THREADS threads, the
 * figure bench/compare.sh divides a step's GFLOP/s by. An ISA the CPU lacks reports 0.
 *
 * build: gcc -std=c11 -O2 -pthread bench/fma_peak.c -o fma_peak
 * (no -march needed: the kernels carry their own target attributes and are chosen by cpuid). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <immintrin.h>

#define NACC 12 // independent accumulators per thread (latency 4 x 2 ports needs 8; 12 is safe)
#define ITERS 4096L

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Twelve named chains stay in registers: an empty asm naming them after each round stops the compiler
 * from merging or removing them. Returns the number of FMA instructions issued. */
__attribute__((target("avx512f"))) static long run512(long rounds, float *sink)
{
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0.0f), a1 = _mm512_set1_ps(1.0f), a2 = _mm512_set1_ps(2.0f),
           a3 = _mm512_set1_ps(3.0f), a4 = _mm512_set1_ps(4.0f), a5 = _mm512_set1_ps(5.0f),
           a6 = _mm512_set1_ps(6.0f), a7 = _mm512_set1_ps(7.0f), a8 = _mm512_set1_ps(8.0f),
           a9 = _mm512_set1_ps(9.0f), a10 = _mm512_set1_ps(10.0f), a11 = _mm512_set1_ps(11.0f);
    for (long r = 0; r < rounds; r++)
        for (long i = 0; i < ITERS; i++) {
            a0 = _mm512_fmadd_ps(a0, x, y);
            a1 = _mm512_fmadd_ps(a1, x, y);
            a2 = _mm512_fmadd_ps(a2, x, y);
            a3 = _mm512_fmadd_ps(a3, x, y);
            a4 = _mm512_fmadd_ps(a4, x, y);
            a5 = _mm512_fmadd_ps(a5, x, y);
            a6 = _mm512_fmadd_ps(a6, x, y);
            a7 = _mm512_fmadd_ps(a7, x, y);
            a8 = _mm512_fmadd_ps(a8, x, y);
            a9 = _mm512_fmadd_ps(a9, x, y);
            a10 = _mm512_fmadd_ps(a10, x, y);
            a11 = _mm512_fmadd_ps(a11, x, y);
            __asm__ volatile(""
                             : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),
                               "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
        }
    __m512 s = a0;
    s = _mm512_add_ps(s, a1);
    s = _mm512_add_ps(s, a2);
    s = _mm512_add_ps(s, a3);
    s = _mm512_add_ps(s, a4);
    s = _mm512_add_ps(s, a5);
    s = _mm512_add_ps(s, a6);
    s = _mm512_add_ps(s, a7);
    s = _mm512_add_ps(s, a8);
    s = _mm512_add_ps(s, a9);
    s = _mm512_add_ps(s, a10);
    s = _mm512_add_ps(s, a11);
    *sink = _mm512_reduce_add_ps(s);
    return rounds * ITERS * NACC;
}

__attribute__((target("avx2,fma"))) static long run256(long rounds, float *sink)
{
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0.0f), a1 = _mm256_set1_ps(1.0f), a2 = _mm256_set1_ps(2.0f),
           a3 = _mm256_set1_ps(3.0f), a4 = _mm256_set1_ps(4.0f), a5 = _mm256_set1_ps(5.0f),
           a6 = _mm256_set1_ps(6.0f), a7 = _mm256_set1_ps(7.0f), a8 = _mm256_set1_ps(8.0f),
           a9 = _mm256_set1_ps(9.0f), a10 = _mm256_set1_ps(10.0f), a11 = _mm256_set1_ps(11.0f);
    for (long r = 0; r < rounds; r++)
        for (long i = 0; i < ITERS; i++) {
            a0 = _mm256_fmadd_ps(a0, x, y);
            a1 = _mm256_fmadd_ps(a1, x, y);
            a2 = _mm256_fmadd_ps(a2, x, y);
            a3 = _mm256_fmadd_ps(a3, x, y);
            a4 = _mm256_fmadd_ps(a4, x, y);
            a5 = _mm256_fmadd_ps(a5, x, y);
            a6 = _mm256_fmadd_ps(a6, x, y);
            a7 = _mm256_fmadd_ps(a7, x, y);
            a8 = _mm256_fmadd_ps(a8, x, y);
            a9 = _mm256_fmadd_ps(a9, x, y);
            a10 = _mm256_fmadd_ps(a10, x, y);
            a11 = _mm256_fmadd_ps(a11, x, y);
            __asm__ volatile(""
                             : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6),
                               "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
        }
    __m256 s = a0;
    s = _mm256_add_ps(s, a1);
    s = _mm256_add_ps(s, a2);
    s = _mm256_add_ps(s, a3);
    s = _mm256_add_ps(s, a4);
    s = _mm256_add_ps(s, a5);
    s = _mm256_add_ps(s, a6);
    s = _mm256_add_ps(s, a7);
    s = _mm256_add_ps(s, a8);
    s = _mm256_add_ps(s, a9);
    s = _mm256_add_ps(s, a10);
    s = _mm256_add_ps(s, a11);
    float v[8];
    _mm256_storeu_ps(v, s);
    *sink = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    return rounds * ITERS * NACC;
}

struct job {
    int wide; // 1: AVX-512, 0: AVX2
    long rounds;
    pthread_barrier_t *bar;
    double secs;
    float sink;
};

static void *worker(void *arg)
{
    struct job *j = arg;
    pthread_barrier_wait(j->bar);
    double t0 = now();
    if (j->wide)
        run512(j->rounds, &j->sink);
    else
        run256(j->rounds, &j->sink);
    j->secs = now() - t0;
    return NULL;
}

/* GFLOP/s of T threads, each running `rounds`; the slowest thread's time counts. */
static double measure(int wide, int T, long rounds)
{
    pthread_t th[256];
    struct job jobs[256];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)T);
    for (int t = 0; t < T; t++) {
        jobs[t] = (struct job){wide, rounds, &bar, 0.0, 0.0f};
        if (pthread_create(&th[t], NULL, worker, &jobs[t]) != 0) {
            fprintf(stderr, "fma_peak: pthread_create failed\n");
            exit(1);
        }
    }
    double worst = 0.0;
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        if (jobs[t].secs > worst) worst = jobs[t].secs;
    }
    pthread_barrier_destroy(&bar);
    const double lanes = wide ? 16.0 : 8.0;
    return (double)T * (double)rounds * ITERS * NACC * lanes * 2.0 / worst / 1e9;
}

static double best_of(int wide, int T)
{
    // Calibrate to ~0.2 s on one thread, then best of three.
    long rounds = 1;
    for (;;) {
        double t0 = now();
        float s;
        if (wide)
            run512(rounds, &s);
        else
            run256(rounds, &s);
        double dt = now() - t0;
        if (dt > 0.05 || rounds > (1L << 20)) {
            rounds = (long)((double)rounds * 0.2 / (dt > 1e-6 ? dt : 1e-6)) + 1;
            break;
        }
        rounds *= 4;
    }
    double best = 0.0;
    for (int r = 0; r < 3; r++) {
        double g = measure(wide, T, rounds);
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "fma_peak: THREADS must be in [1, 256]\n");
        return 2;
    }
    __builtin_cpu_init();
    const int has512 = __builtin_cpu_supports("avx512f");
    const int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    double a512_1 = 0, a512 = 0, a2_1 = 0, a2 = 0;
    if (has512) {
        a512_1 = best_of(1, 1);
        a512 = threads == 1 ? a512_1 : best_of(1, threads);
    }
    if (has2) {
        a2_1 = best_of(0, 1);
        a2 = threads == 1 ? a2_1 : best_of(0, threads);
    }
    double best = a512 > a2 ? a512 : a2;
    printf("{\"threads\":%d,\"avx512_1t\":%.2f,\"avx512\":%.2f,\"avx2_1t\":%.2f,\"avx2\":%.2f,"
           "\"gflops\":%.2f}\n",
           threads, a512_1, a512, a2_1, a2, best);
    return best > 0 ? 0 : 1;
}
