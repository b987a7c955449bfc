/* tests/test_kernels.c: the fast kernels against the plain ones they replace.
 *
 * The direct convolution (net/conv_direct.c) must give the im2col + sgemm result for the
 * forward pass, the data gradient (accumulated into what dinp held) and the weight and bias
 * gradients (accumulated), on shapes that hit every edge: tails of the 48-pixel tile and of
 * the 16-lane vectors, output channels not a multiple of 8 or 3, one input channel, image
 * sizes whose H*W is not a multiple of 16, 5x5 kernels (taps in two blocks), batch 1.
 * The fused epilogues (bias, residual add, ReLU, ReLU-gated gradient) match the separate
 * passes. Each case runs once per instruction set the CPU has (AVX-512, AVX2); on a CPU with
 * neither the direct cases are skipped (printed), never faked. */
#include <stdint.h>

#include "net/net_internal.h"
#include "tests/test.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static float *rand_buf(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = urand();
    return p;
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *scale)
{
    double m = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
        if (fabs((double)b[i]) > s) s = fabs((double)b[i]);
    }
    *scale = s;
    return m;
}

/* Runs one geometry through both paths; returns 0 when they agree, else prints and 1. */
static int compare_conv(size_t C, size_t OC, size_t H, size_t W, size_t K, size_t B)
{
    struct net__conv g;
    net__conv_geom(&g, C, H, W, OC, K, 1, K / 2);
    if (!net__conv_direct_shape(&g)) {
        fprintf(stderr, "geometry not direct: C%zu OC%zu %zux%zu K%zu\n", C, OC, H, W, K);
        return 1;
    }
    const size_t N = B * H * W, KK = K * K;
    const size_t colsz = C * KK * N, dsz = net__conv_direct_scratch(&g);
    float *inp = rand_buf(C * N), *w = rand_buf(OC * C * KK), *b = rand_buf(OC);
    float *dout = rand_buf(OC * N), *dinp0 = rand_buf(C * N);
    float *col = malloc(colsz * sizeof(float)), *dcol = malloc(colsz * sizeof(float));
    float *scr = malloc(dsz * sizeof(float));
    float *o1 = malloc(OC * N * sizeof(float)), *o2 = malloc(OC * N * sizeof(float));
    float *di1 = malloc(C * N * sizeof(float)), *di2 = malloc(C * N * sizeof(float));
    float *dw1 = rand_buf(OC * C * KK), *dw2 = malloc(OC * C * KK * sizeof(float));
    float *db1 = rand_buf(OC), *db2 = malloc(OC * sizeof(float));
    memcpy(dw2, dw1, OC * C * KK * sizeof(float));
    memcpy(db2, db1, OC * sizeof(float));
    memcpy(di1, dinp0, C * N * sizeof(float));
    memcpy(di2, dinp0, C * N * sizeof(float));

    net__conv_fwd_im2col(o1, col, inp, w, b, &g, B);
    net__conv_direct_fwd(o2, scr, inp, w, b, &g, B, NULL);
    net__conv_bwd_im2col(di1, dw1, db1, col, dcol, dout, inp, w, &g, B);
    net__conv_bwd(di2, dw2, db2, scr, NULL, dout, inp, w, &g, B);

    int bad = 0;
    double s, d;
    // Sums of C*K*K (forward, data grad) or N (weight grad) products of numbers in [-1, 1]:
    // float rounding grows like sqrt(terms); 2e-5 relative to the largest value is loose
    // for that and far below any indexing error (which moves values by O(1)).
    if ((d = max_abs_diff(o2, o1, OC * N, &s)) > 2e-5 * (s + 1)) {
        fprintf(stderr, "forward differs by %g (scale %g)\n", d, s);
        bad = 1;
    }
    if ((d = max_abs_diff(di2, di1, C * N, &s)) > 2e-5 * (s + 1)) {
        fprintf(stderr, "data gradient differs by %g (scale %g)\n", d, s);
        bad = 1;
    }
    if ((d = max_abs_diff(dw2, dw1, OC * C * KK, &s)) > 2e-5 * (s + 1)) {
        fprintf(stderr, "weight gradient differs by %g (scale %g)\n", d, s);
        bad = 1;
    }
    if ((d = max_abs_diff(db2, db1, OC, &s)) > 2e-5 * (s + 1)) {
        fprintf(stderr, "bias gradient differs by %g (scale %g)\n", d, s);
        bad = 1;
    }
    if (bad) fprintf(stderr, "  geometry C%zu OC%zu %zux%zu K%zu B%zu\n", C, OC, H, W, K, B);
    free(inp), free(w), free(b), free(dout), free(dinp0), free(col), free(dcol), free(scr);
    free(o1), free(o2), free(di1), free(di2), free(dw1), free(dw2), free(db1), free(db2);
    return bad;
}

/* Sets the direct kernels' level (2 AVX-512, 1 AVX2, 0 off, capped by the CPU); returns the
 * level in effect. */
static int set_level(int want)
{
    net__conv_direct_force(want);
    return net__conv_direct_force(want);
}

/* Runs BODY once per instruction set this CPU has (AVX-512, AVX2), printing which; a CPU with
 * neither skips (printed), never fakes. Restores the best level after. */
#define FOR_EACH_LEVEL(BODY)                                                                       \
    do {                                                                                           \
        int ran_ = 0;                                                                              \
        for (int lv_ = 2; lv_ >= 1; lv_--) {                                                       \
            if (set_level(lv_) != lv_) continue;                                                   \
            printf("  (direct kernels: %s)\n", lv_ == 2 ? "AVX-512" : "AVX2");                     \
            ran_ = 1;                                                                              \
            BODY;                                                                                  \
        }                                                                                          \
        set_level(2);                                                                              \
        if (!ran_) printf("  (skipped: neither AVX-512 nor AVX2 on this CPU)\n");                  \
    } while (0)

TEST(conv_direct_matches_im2col_3x3)
{
    FOR_EACH_LEVEL({
        ASSERT_EQ(compare_conv(32, 32, 28, 28, 3, 2), 0); // the reference nets' shape
        ASSERT_EQ(compare_conv(1, 32, 28, 28, 3, 3), 0);  // first layer: one input channel
        ASSERT_EQ(compare_conv(32, 64, 14, 14, 3, 2), 0); // H*W = 196, not a multiple of 16
        ASSERT_EQ(compare_conv(13, 11, 7, 7, 3, 3), 0);   // 11 = 8 + 3 and 3 + 3 + 3 + 2 rows
        ASSERT_EQ(compare_conv(5, 1, 5, 3, 3, 1), 0);     // N = 15: one partial vector
        ASSERT_EQ(compare_conv(3, 2, 1, 1, 3, 4), 0);     // 1x1 images: only the centre tap
    });
}

TEST(conv_direct_matches_im2col_5x5_and_7x7)
{
    FOR_EACH_LEVEL({
        ASSERT_EQ(compare_conv(4, 10, 9, 11, 5, 2), 0); // 25 taps: blocks of 9, 9, 7
        ASSERT_EQ(compare_conv(3, 9, 8, 8, 7, 2), 0);   // 49 taps, kernel wider than half the image
        ASSERT_EQ(compare_conv(3, 5, 6, 7, 2 + 1, 3), 0);
    });
}

/* The fused epilogues against the unfused path: forward relu(conv + b + add), data gradient
 * overwritten and gated by a ReLU output (zeros, negatives and positives all present). */
static int compare_epilogues(size_t C, size_t OC, size_t H, size_t W, size_t B)
{
    struct net__conv g;
    net__conv_geom(&g, C, H, W, OC, 3, 1, 1);
    const size_t N = B * H * W, colsz = C * 9 * N, dsz = net__conv_direct_scratch(&g);
    float *inp = rand_buf(C * N), *w = rand_buf(OC * C * 9), *b = rand_buf(OC);
    float *add = rand_buf(OC * N), *gate = rand_buf(C * N), *dout = rand_buf(OC * N);
    for (size_t i = 0; i < C * N; i += 3) gate[i] = 0.0f; // exact zeros block too
    float *col = malloc(colsz * sizeof(float)), *dcol = malloc(colsz * sizeof(float));
    float *scr = malloc(dsz * sizeof(float)), *dw = calloc(OC * C * 9, sizeof(float));
    float *o1 = malloc(OC * N * sizeof(float)), *o2 = malloc(OC * N * sizeof(float));
    float *d1 = rand_buf(C * N), *d2 = rand_buf(C * N); // garbage: must be overwritten
    const struct net__epi fe = {.add = add, .relu = 1}, be = {.gate = gate};

    net__conv_fwd_im2col(o1, col, inp, w, b, &g, B);
    net__epi_apply(o1, &fe, OC * N);
    net__conv_direct_fwd(o2, scr, inp, w, b, &g, B, &fe);
    memset(d1, 0, C * N * sizeof(float));
    net__conv_bwd_im2col(d1, dw, NULL, col, dcol, dout, inp, w, &g, B);
    net__epi_apply(d1, &be, C * N);
    net__conv_direct_bwd(d2, dw, scr, dout, inp, w, &g, B, &be);

    int bad = 0;
    double s, d;
    size_t zeros = 0;
    for (size_t i = 0; i < OC * N; i++) zeros += o2[i] == 0.0f;
    if ((d = max_abs_diff(o2, o1, OC * N, &s)) > 2e-5 * (s + 1) || zeros == 0) {
        fprintf(stderr, "fused forward differs by %g (scale %g), %zu zeros\n", d, s, zeros);
        bad = 1;
    }
    if ((d = max_abs_diff(d2, d1, C * N, &s)) > 2e-5 * (s + 1)) {
        fprintf(stderr, "gated data gradient differs by %g (scale %g)\n", d, s);
        bad = 1;
    }
    for (size_t i = 0; i < C * N && !bad; i++)
        if (!(gate[i] > 0.0f) && d2[i] != 0.0f) {
            fprintf(stderr, "gradient %g passed a closed gate at %zu\n", d2[i], i);
            bad = 1;
        }
    free(inp), free(w), free(b), free(add), free(gate), free(dout), free(col), free(dcol);
    free(scr), free(dw), free(o1), free(o2), free(d1), free(d2);
    return bad;
}

TEST(conv_direct_fused_epilogues)
{
    FOR_EACH_LEVEL({
        ASSERT_EQ(compare_epilogues(32, 32, 28, 28, 2), 0);
        ASSERT_EQ(compare_epilogues(5, 11, 7, 5, 3), 0);
    });
}

TEST(conv_direct_rejects_other_geometries)
{
    struct net__conv g;
    net__conv_geom(&g, 4, 8, 8, 4, 3, 2, 1); // stride 2
    ASSERT(!net__conv_direct_shape(&g));
    net__conv_geom(&g, 4, 8, 8, 4, 3, 1, 0); // valid padding: output smaller
    ASSERT(!net__conv_direct_shape(&g));
    net__conv_geom(&g, 4, 8, 8, 4, 1, 1, 0); // 1x1: a plain sgemm
    ASSERT(!net__conv_direct_shape(&g));
    net__conv_geom(&g, 4, 16, 16, 4, 9, 1, 4); // larger than the direct path takes
    ASSERT(!net__conv_direct_shape(&g));
    net__conv_geom(&g, 4, 8, 8, 4, 3, 1, 1);
    ASSERT(net__conv_direct_shape(&g));
}

TEST_MAIN()
