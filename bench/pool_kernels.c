/* bench/pool_kernels.c: times the fused ReLU -> 2x2 max pool (net__mp_forward_relu and
 * net__mp_backward_relu, net/layer_pool.c) on the reference nets' pooled shapes.
 *
 * usage: build/pool_kernels [REPEATS]      (threads: OMP_NUM_THREADS; default 300 repeats)
 *
 * For C channels of H x H at batch 64 (32 x 28 x 28 and 64 x 14 x 14, the cnn's two pools)
 * it runs forward then backward REPEATS times after 10 warm-ups on inputs uniform in
 * [-1, 1] and prints the median of each in microseconds. The layer comes from a net (conv,
 * relu, maxpool, flatten, dense) that is built but never run, so the pool is timed alone.
 * It uses net/net_internal.h; it builds against an older tree whose internal pool interface
 * is the same (for A B A B runs):
 *   gcc -std=c11 -O2 -fopenmp -I. bench/pool_kernels.c build/libnet.a \
 *       $(pkg-config --libs openblas) -llapacke -lm */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "bench_time.h" // next to this file: builds against an older tree too
#include "net/net.h"
#include "net/net_internal.h"

static float *buf(size_t n)
{
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "pool_kernels: out of memory\n");
        exit(1);
    }
    return p;
}

static int run(size_t C, size_t H, int reps)
{
    const size_t B = 64;
    const struct net_shape in = {1, H, H, 1};
    const struct net_layer_spec s[] = {
        {.kind = NET_CONV, .out = C, .k = 3, .stride = 1, .pad = 1, .bias = 1},
        {.kind = NET_RELU},
        {.kind = NET_MAXPOOL, .k = 2},
        {.kind = NET_FLATTEN},
        {.kind = NET_DENSE, .out = 10, .bias = 1}};
    struct net *n = NULL;
    char err[256];
    if (net_create(&n, &in, 10, s, sizeof s / sizeof s[0], err, sizeof err) || net_reserve(n, B)) {
        fprintf(stderr, "pool_kernels: %s\n", err);
        return -1;
    }
    struct net_layer *l = &n->layers[2];
    const size_t N = C * B * H * H, M = C * B * l->out.h * l->out.w;
    float *z = buf(N), *dz = buf(N), *out = buf(M), *g = buf(M);
    uint64_t r = 1;
    for (size_t i = 0; i < N; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        z[i] = (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    for (size_t i = 0; i < M; i++) g[i] = 1.0f;
    double *tf = malloc((size_t)reps * sizeof(double)), *tb = malloc((size_t)reps * sizeof(double));
    if (!tf || !tb) return -1;
    for (int i = 0; i < reps + 10; i++) {
        const double t0 = now();
        net__mp_forward_relu(l, out, z, B);
        const double t1 = now();
        net__mp_backward_relu(l, dz, g, z, B);
        const double t2 = now();
        if (i >= 10) tf[i - 10] = t1 - t0, tb[i - 10] = t2 - t1;
    }
    qsort(tf, (size_t)reps, sizeof(double), cmp_d);
    qsort(tb, (size_t)reps, sizeof(double), cmp_d);
    printf("relu + maxpool 2x2, %3zu x %2zux%-2zu x 64: forward median %7.1f us, backward median "
           "%7.1f us\n",
           C, H, H, 1e6 * tf[reps / 2], 1e6 * tb[reps / 2]);
    free(tf), free(tb), free(z), free(dz), free(out), free(g);
    net_destroy(n);
    return 0;
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 300;
    if (reps < 1) {
        fprintf(stderr, "usage: pool_kernels [REPEATS >= 1]\n");
        return 2;
    }
    return run(32, 28, reps) || run(64, 14, reps) ? 1 : 0;
}
