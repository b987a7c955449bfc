/* bench/train_step.c: times one training step of the reference nets, phase by phase, on
 * synthetic data (no data loading, no batcher: the engine alone).
 *
 * usage: build/train_step [ARCH] [STEPS] [fused|separate]
 *        (ARCH mlp | cnn | resnet | main, default mlp; STEPS default 300; threads:
 *        OMP_NUM_THREADS)
 *
 * Builds the net of configs/ref_ARCH.json (main: configs/default.json's model) with
 * net_create, runs 20 warm-up steps, then STEPS steps of net_forward and, as the trainer does,
 * net_backward_update (SGD, momentum 0.9: the dense weights step as their gradient is stored)
 * at batch 64; "separate" runs net_backward then net_optim_step instead. Prints the fastest
 * step and the fastest time of each phase (what the code costs when nothing preempts it;
 * fused, "backward" is the whole net_backward_update and "optimizer" 0), then the median
 * step and samples/s. Only the public net.h interface is used, so the same file builds
 * against an older tree (for A B A B comparisons; -DTS_NO_FUSED before net_backward_update):
 *   gcc -std=c11 -O3 -march=native -fopenmp -I. bench/train_step.c build/libnet.a \
 *       $(pkg-config --libs openblas) -llapacke -lm */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_time.h" // next to this file: builds against an older tree too
#include "net/net.h"

/* The reference nets, one letter a layer (a number after it is its width): F flatten, D dense
 * (with bias), R relu, C 3 x 3 conv (stride 1, pad 1, bias), P 2 x 2 max-pool, N batch norm,
 * B residual block (3 x 3, bias). */
static const char *layers_of(const char *arch)
{
    if (strcmp(arch, "mlp") == 0) return "F D512 R D256 R D10";
    if (strcmp(arch, "cnn") == 0) return "C32 R P C64 R P F D128 R D10";
    if (strcmp(arch, "resnet") == 0) return "C32 R B32 P B32 P F D128 R D10";
    if (strcmp(arch, "main") == 0) return "C32 N R C64 N R P C64 N R P F D256 N R D10";
    return NULL;
}

/* The specs of arch into s (at most 32); 0 for an unknown arch. */
static size_t specs_of(const char *arch, struct net_layer_spec *s)
{
    const char *p = layers_of(arch);
    size_t n = 0;
    while (p && *p && n < 32) {
        char *end;
        const char c = *p++;
        const size_t w = (size_t)strtoul(p, &end, 10);
        p = end + (*end == ' ');
        struct net_layer_spec l = {.out = w, .bias = c == 'D' || c == 'C' || c == 'B'};
        switch (c) {
        case 'F': l.kind = NET_FLATTEN; break;
        case 'D': l.kind = NET_DENSE; break;
        case 'R': l.kind = NET_RELU; break;
        case 'N': l.kind = NET_BN; break;
        case 'P': l.kind = NET_MAXPOOL, l.k = 2; break;
        case 'C': l.kind = NET_CONV, l.k = 3, l.stride = 1, l.pad = 1; break;
        case 'B': l.kind = NET_RES, l.width = w, l.k = 3, l.stride = 1; break;
        default: return 0;
        }
        s[n++] = l;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *arch = argc > 1 ? argv[1] : "mlp";
    const int steps = argc > 2 ? atoi(argv[2]) : 300;
    const char *mode = argc > 3 ? argv[3] : "fused";
    struct net_layer_spec specs[32];
    const size_t ns = specs_of(arch, specs);
    int fused = strcmp(mode, "fused") == 0;
    if (!ns || steps < 1 || (!fused && strcmp(mode, "separate") != 0)) {
        fprintf(stderr, "usage: train_step [mlp|cnn|resnet|main] [STEPS >= 1] [fused|separate]\n");
        return 2;
    }
#ifdef TS_NO_FUSED
    fused = 0;
#endif
    const char *th = getenv("OMP_NUM_THREADS");
    net_set_threads(th ? atoi(th) : 2);
    const size_t B = 64;
    struct net_shape in = {1, 28, 28, 1};
    struct net *n;
    char err[256];
    if (net_create(&n, &in, 10, specs, ns, err, sizeof err) < 0 || net_reserve(n, B) < 0) {
        fprintf(stderr, "train_step: %s\n", err);
        return 1;
    }
    uint64_t rng = 42;
    net_init_params_with(n, &rng, NET_INIT_TORCH);
    float *x = malloc(B * 784 * sizeof(float));
    uint8_t y[64];
    for (size_t i = 0; i < B * 784; i++) x[i] = net_rand_uniform(&rng);
    for (size_t i = 0; i < B; i++) y[i] = (uint8_t)net_rand_below(&rng, 10);
    struct net_optim o = {.kind = NET_SGD, .momentum = 0.9f};
    double *tf = malloc((size_t)steps * sizeof(double)),
           *tb = malloc((size_t)steps * sizeof(double));
    double *to = malloc((size_t)steps * sizeof(double)),
           *ts = malloc((size_t)steps * sizeof(double));
    float loss = 0.0f;
    for (int s = -20; s < steps; s++) {
        double t0 = now();
        loss = net_forward(n, x, y, B, 1);
        double t1 = now();
        double t2, t3;
#ifndef TS_NO_FUSED
        if (fused) {
            // The backward with the dense weights' update, then net_optim_step for the rest
            // (timed as net_backward_update does it: one call; the split is not observable).
            net_backward_update(n, y, B, &o, 0.01f);
            t2 = t3 = now();
        } else
#endif
        {
            net_backward(n, y, B);
            t2 = now();
            net_optim_step(n, &o, 0.01f);
            t3 = now();
        }
        if (s < 0) continue;
        tf[s] = t1 - t0, tb[s] = t2 - t1, to[s] = t3 - t2, ts[s] = t3 - t0;
    }
    qsort(tf, (size_t)steps, sizeof(double), cmp_d);
    qsort(tb, (size_t)steps, sizeof(double), cmp_d);
    qsort(to, (size_t)steps, sizeof(double), cmp_d);
    qsort(ts, (size_t)steps, sizeof(double), cmp_d);
    const int m = steps / 2;
    const double gf = 6.0 * (double)net_macs(n) * (double)B / ts[m] / 1e9;
    // The minimum is the step undisturbed by other processes (a shared machine preempts).
    const double gfm = 6.0 * (double)net_macs(n) * (double)B / ts[0] / 1e9;
    printf("%s (%s): best step %.1f us (forward %.1f, backward %.1f, optimizer %.1f), %.1f "
           "GFLOP/s; "
           "median step %.1f us (%.0f samples/s, %.1f GFLOP/s) of %d; GFLOP/s = 3 x 2 x fwd "
           "MACs / time; final loss %.4f\n",
           arch, fused ? "fused update" : "separate update", 1e6 * ts[0], 1e6 * tf[0], 1e6 * tb[0],
           1e6 * to[0], gfm, 1e6 * ts[m], (double)B / ts[m], gf, steps, (double)loss);
    // The spread: a 2-vCPU guest's steps are not all alike (Zen 3, session 11: best 1.6 ms,
    // median 2.6 ms), so the deciles show whether the median is the common case.
    printf("step deciles (us):");
    for (int q = 1; q < 10; q++) printf(" %.0f", 1e6 * ts[(size_t)steps * (size_t)q / 10]);
    printf("\n");
    free(tf), free(tb), free(to), free(ts), free(x);
    net_destroy(n);
    return 0;
}
