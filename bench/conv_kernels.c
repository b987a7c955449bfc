/* bench/conv_kernels.c: times the convolution kernels on the reference nets' shapes.
 *
 * usage: build/conv_kernels [REPEATS]      (threads: OMP_NUM_THREADS, default all cores)
 *
 * For each shape (input channels, output channels, image size, batch 64, 3x3, pad 1) it runs
 * forward and backward (weight + bias + data gradient) through the direct kernels
 * (net/conv_direct.c: AVX-512, and AVX2 too on a CPU that has both) and through im2col + sgemm, keeps the best of REPEATS (default 20)
 * after a warm-up, and prints milliseconds and GFLOP/s (2 x multiply-adds / time; backward
 * counts the weight and the data gradient, or only the weight gradient when C = 1, as for a
 * first layer; dW alone is timed too). Divide by bench/sgemm_peak's figure for the fraction of peak. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "bench_time.h" // next to this file: builds against an older tree too
#include "net/net_internal.h"

static float *buf(size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "conv_kernels: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    return p;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (reps < 1) reps = 1;
    static const size_t shapes[][4] = {
        {1, 32, 28, 28}, {32, 32, 28, 28}, {32, 32, 14, 14}, {32, 64, 14, 14}, {64, 64, 7, 7}};
    const size_t B = getenv("CK_B") ? (size_t)atoi(getenv("CK_B")) : 64;
    printf("%-18s %-7s %9s %9s %9s %9s %9s %9s\n", "C->OC HxW (B 64)", "path", "fwd ms", "fwd GF/s",
           "bwd ms", "bwd GF/s", "dW ms", "dW GF/s");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        struct net__conv g;
        net__conv_geom(&g, shapes[s][0], shapes[s][2], shapes[s][3], shapes[s][1], 3, 1, 1);
        const size_t N = B * g.H * g.W, KK = 9, col = g.C * KK * N;
        float *inp = buf(g.C * N), *out = buf(g.OC * N), *dout = buf(g.OC * N);
        float *dinp = buf(g.C * N), *w = buf(g.OC * g.C * KK), *dw = buf(g.OC * g.C * KK);
        float *db = buf(g.OC), *b = buf(g.OC), *c2 = buf(col);
        // c1 is scratch for both paths: im2col's matrix, or the direct scratch and (at AVX2)
        // one im2col chunk after it (net__conv_col_size).
        float *c1 = buf(col + net__conv_direct_scratch(&g));
        double macs = (double)N * g.OC * g.C * KK;
        // path 0: direct at the CPU's best level, 1: direct AVX2 (when the best is AVX-512),
        // 2: im2col + sgemm
        for (int path = 0; path < 3; path++) {
            const int best = net__conv_direct_force(2);
            if (path == 0 && !net__conv_direct_ok(&g)) continue;
            if (path == 1 && (best != 2 || !net__cpu_avx2())) continue;
            net__conv_direct_force(path == 1 ? 1 : 2);
            double bf = 1e30, bb = 1e30, bw = 1e30;
            for (int r = 0; r <= reps; r++) {
                double t0 = now();
                if (path < 2)
                    net__conv_direct_fwd(out, c1, inp, w, b, &g, B, NULL);
                else
                    net__conv_fwd_im2col(out, c1, inp, w, b, &g, B);
                double t1 = now();
                if (path < 2)
                    net__conv_bwd(g.C > 1 ? dinp : NULL, dw, db, c1, c2, dout, inp, w, &g, B);
                else
                    net__conv_bwd_im2col(g.C > 1 ? dinp : NULL, dw, db, c1, c2, dout, inp, w, &g,
                                         B);
                double t2 = now();
                if (path < 2)
                    net__conv_bwd(NULL, dw, NULL, c1, c2, dout, inp, w, &g, B);
                else
                    net__conv_bwd_im2col(NULL, dw, NULL, c1, c2, dout, inp, w, &g, B);
                double t3 = now();
                if (r > 0 && t1 - t0 < bf) bf = t1 - t0;
                if (r > 0 && t2 - t1 < bb) bb = t2 - t1;
                if (r > 0 && t3 - t2 < bw) bw = t3 - t2;
            }
            double bmacs = macs * (g.C > 1 ? 2 : 1);
            char name[32];
            snprintf(name, sizeof name, "%zu->%zu %zux%zu", g.C, g.OC, g.H, g.W);
            net__conv_direct_force(2);
            printf("%-18s %-7s %9.3f %9.1f %9.3f %9.1f %9.3f %9.1f\n", name,
                   path == 2   ? "im2col"
                   : path == 1 ? "avx2"
                   : best == 2 ? "avx512"
                               : "avx2",
                   bf * 1e3, 2 * macs / bf * 1e-9, bb * 1e3, 2 * bmacs / bb * 1e-9, bw * 1e3,
                   2 * macs / bw * 1e-9);
        }
        free(inp), free(out), free(dout), free(dinp), free(w), free(dw), free(db), free(b);
        free(c1), free(c2);
    }
    return 0;
}
