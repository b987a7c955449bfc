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

/* The sum of a register's lanes, for the sink. */
__attribute__((target("avx512f"))) static float hsum512(__m512 s)
{
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float hsum256(__m256 s)
{
    float v[8];
    _mm256_storeu_ps(v, s);
    return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}

/* The twelve chains: M(vector type, intrinsic prefix, name, initial value) for each (not
 * formatted: clang-format re-wraps this list differently on every run). */
// clang-format off
#define FMA_CHAINS(M, V, P)                                                                        \
    M(V, P, a0, 0) M(V, P, a1, 1) M(V, P, a2, 2) M(V, P, a3, 3) M(V, P, a4, 4) M(V, P, a5, 5)      \
    M(V, P, a6, 6) M(V, P, a7, 7) M(V, P, a8, 8) M(V, P, a9, 9) M(V, P, a10, 10) M(V, P, a11, 11)
// clang-format on
#define FMA_DECL(V, P, a, k) V a = P##_set1_ps((float)k);
#define FMA_STEP(V, P, a, k) a = P##_fmadd_ps(a, x, y);
#define FMA_SUM(V, P, a, k) s = P##_add_ps(s, a);

/* One kernel per ISA level (name, target, vector type, intrinsic prefix, asm constraint, lane
 * sum). Twelve named chains stay in registers: an empty asm naming them after each round stops
 * the compiler from merging or removing them. Returns the number of FMA instructions issued. */
#define FMA_KERNEL(name, isa, V, P, R, hsum)                                                       \
    __attribute__((target(isa))) static long name(long rounds, float *sink)                        \
    {                                                                                              \
        const V x = P##_set1_ps(0.999999f), y = P##_set1_ps(1e-7f);                                \
        FMA_CHAINS(FMA_DECL, V, P)                                                                 \
        for (long r = 0; r < rounds; r++)                                                          \
            for (long i = 0; i < ITERS; i++) {                                                     \
                FMA_CHAINS(FMA_STEP, V, P)                                                         \
                __asm__ volatile(""                                                                \
                                 : R(a0), R(a1), R(a2), R(a3), R(a4), R(a5), R(a6), R(a7), R(a8),  \
                                   R(a9), R(a10), R(a11));                                         \
            }                                                                                      \
        V s = P##_setzero_ps();                                                                    \
        FMA_CHAINS(FMA_SUM, V, P)                                                                  \
        *sink = hsum(s);                                                                           \
        return rounds * ITERS * NACC;                                                              \
    }
#define ZMM(a) "+v"(a) // any of the 32 vector registers
#define YMM(a) "+x"(a)
FMA_KERNEL(run512, "avx512f", __m512, _mm512, ZMM, hsum512)
FMA_KERNEL(run256, "avx2,fma", __m256, _mm256, YMM, hsum256)
#undef FMA_KERNEL

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
