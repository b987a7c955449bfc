/* bench/batch_gather.c: times net_batcher_next on the Fashion-MNIST training set, the random
 * gather of one batch that the trainer does before every step.
 *
 * usage: build/batch_gather [CALLS] [BATCH]   (default 3000 calls of batch 64; threads:
 *        OMP_NUM_THREADS; data from /usr/share/datasets/fashion-mnist)
 *
 * Prints the fastest call and the mean over the calls after the first 100 (the mean is what a
 * run pays: with 4 KiB pages nearly every sample is a TLB miss, which the fastest call hides). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "bench_time.h" // next to this file: builds against an older tree too
#include "net/net.h"

#define DIR "/usr/share/datasets/fashion-mnist/"

int main(int argc, char **argv)
{
    const long calls = argc > 1 ? atol(argv[1]) : 3000, B = argc > 2 ? atol(argv[2]) : 64;
    if (calls <= 100 || B <= 0) {
        fprintf(stderr, "usage: %s [CALLS > 100] [BATCH > 0]\n", argv[0]);
        return 2;
    }
    struct net_dataset d = {0};
    char err[256];
    if (net_data_load_idx(&d, DIR "train-images-idx3-ubyte.gz", DIR "train-labels-idx1-ubyte.gz",
                          err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const size_t per = d.shape.c * d.shape.h * d.shape.w;
    struct net_batcher b;
    float *x = malloc((size_t)B * per * sizeof(float));
    uint8_t *y = malloc((size_t)B);
    if (!x || !y || net_batcher_init(&b, d.n, 7, 0, 0) < 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    double sum = 0.0, best = 1e9;
    for (long k = 0; k < calls; k++) {
        const double t0 = now();
        net_batcher_next(&b, &d, (size_t)B, x, y);
        const double t = now() - t0;
        if (k < 100) continue;
        sum += t;
        if (t < best) best = t;
    }
    printf("net_batcher_next, %zu samples, batch %ld: fastest %.1f us, mean %.1f us of %ld calls\n",
           d.n, B, best * 1e6, sum / (double)(calls - 100) * 1e6, calls - 100);
    net_batcher_free(&b);
    net_data_free(&d);
    free(x);
    free(y);
    return 0;
}
