/* bench/sgemm_peak.c: measures this machine's single-precision GEMM throughput with OpenBLAS.
 *
 * usage: sgemm_peak [THREADS] [SIZE ...]     (defaults: 2 threads; sizes 512 1024 2048)
 *
 * For each square size n it times C = A * B (n x n, row-major, no transposes) repeatedly for at
 * least ~0.3 s after one warm-up call, keeps the best single-repeat time, and converts it to
 * GFLOP/s as 2 n^3 / t. It prints one JSON line, the best over the sizes being "gflops":
 *   {"threads":2,"gflops":123.4,"sizes":[{"n":512,"gflops":...},...]}
 * That figure is the "peak" bench/compare.sh divides a training step's GFLOP/s by.
 *
 * build: gcc -std=c11 -O2 bench/sgemm_peak.c $(pkg-config --cflags --libs openblas) -o sgemm_peak
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>

/* Declared by OpenBLAS's cblas.h; repeated so a cblas.h from another vendor still compiles. */
void openblas_set_num_threads(int num_threads);

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double bench_size(int n)
{
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)),
          *c = malloc(nn * sizeof(float));
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return -1;
    }
    unsigned s = 12345u;
    for (size_t i = 0; i < nn; i++) {
        s = s * 1664525u + 1013904223u;
        a[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
        s = s * 1664525u + 1013904223u;
        b[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
        c[i] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double best = 1e30, start = now();
    int reps = 0;
    while (reps < 3 || (now() - start < 0.3 && reps < 1000)) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        double dt = now() - t0;
        if (dt < best) best = dt;
        reps++;
    }
    volatile float sink = c[nn / 2]; // keep the result alive
    (void)sink;
    free(a), free(b), free(c);
    return 2.0 * (double)n * (double)n * (double)n / best / 1e9;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "sgemm_peak: THREADS must be in [1, 256]\n");
        return 2;
    }
    int def_sizes[] = {512, 1024, 2048};
    int nsz = argc > 2 ? argc - 2 : 3;
    openblas_set_num_threads(threads);
    double best = 0;
    printf("{\"threads\":%d,", threads);
    char sep = '[';
    double gf[64];
    int ns[64];
    if (nsz > 64) nsz = 64;
    for (int i = 0; i < nsz; i++) {
        ns[i] = argc > 2 ? atoi(argv[i + 2]) : def_sizes[i];
        if (ns[i] < 1 || ns[i] > 16384) {
            fprintf(stderr, "sgemm_peak: size %s is not in [1, 16384]\n", argv[i + 2]);
            return 2;
        }
        gf[i] = bench_size(ns[i]);
        if (gf[i] < 0) {
            fprintf(stderr, "sgemm_peak: out of memory at n=%d\n", ns[i]);
            return 1;
        }
        if (gf[i] > best) best = gf[i];
    }
    printf("\"gflops\":%.2f,\"sizes\":", best);
    for (int i = 0; i < nsz; i++) {
        printf("%c{\"n\":%d,\"gflops\":%.2f}", sep, ns[i], gf[i]);
        sep = ',';
    }
    printf("]}\n");
    return 0;
}
