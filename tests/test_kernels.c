/* tests/test_kernels.c: the fast kernels against the plain ones they replace.
 *
 * The direct convolution (net/conv_direct.c) must give the im2col + sgemm result for the
 * forward pass, the data gradient (accumulated into what dinp held) and the weight and bias
 * gradients (accumulated), on shapes that hit every edge: tails of the 48-pixel tile and of
 * the 16-lane vectors, output channels not a multiple of 8 or 3, one input channel, image
 * sizes whose H*W is not a multiple of 16, 5x5 kernels (taps in two blocks), batch 1.
 * The fused epilogues (bias, residual add, ReLU, ReLU-gated gradient) match the separate
 * passes. Each case runs once per instruction set the CPU has (AVX-512, AVX2); on a CPU with
 * neither the direct cases are skipped (printed), never faked.
 *
 * The dense products (net/dense_gemm.c: net__gemm_nt with and without scratch, net__gemm_bc
 * with row-major and transposed A, accumulating or overwriting, gated) must match a
 * double-precision loop within 2e-6 x sum_k |a_k b_k| + 1e-6 per element (float rounding of K
 * products is far below that, a wrong index far above), on random shapes with tails of every
 * tile (rows not a multiple of 4, 6 or 8, columns of 48, 64 or 16, K of 16 or 8), at AVX-512,
 * at AVX2 (forced, on an AVX-512 CPU too) and on the OpenBLAS reference path. */
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
    float *dw3 = malloc(OC * C * KK * sizeof(float)), *db3 = malloc(OC * sizeof(float));
    float *di3 = malloc(C * N * sizeof(float));
    float *scr3 = malloc(net__conv_col_size(&g, B) * sizeof(float));
    memcpy(dw3, dw1, OC * C * KK * sizeof(float));
    memcpy(db3, db1, OC * sizeof(float));
    memcpy(di3, dinp0, C * N * sizeof(float));

    net__conv_fwd_im2col(o1, col, inp, w, b, &g, B);
    net__conv_direct_fwd(o2, scr, inp, w, b, &g, B, NULL);
    net__conv_bwd_im2col(di1, dw1, db1, col, dcol, dout, inp, w, &g, B);
    // The direct kernels themselves (net__conv_bwd on AVX2 takes the weight gradient from
    // im2col + sgemm, kernels.c), with net__conv_bwd's accumulating epilogue.
    const struct net__epi acc = {.accum = 1};
    net__conv_direct_bwd(di2, dw2, db2, scr, dout, inp, w, &g, B, &acc);
    net__conv_bwd(di3, dw3, db3, scr3, NULL, dout, inp, w, &g, B);

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
    // The dispatcher as the layers call it, with the scratch they reserve (at AVX2 its
    // weight gradient comes from im2col + sgemm after the direct scratch).
    if ((d = max_abs_diff(dw3, dw1, OC * C * KK, &s)) > 2e-5 * (s + 1) ||
        max_abs_diff(db3, db1, OC, &s) > 2e-5 * (s + 1) ||
        max_abs_diff(di3, di1, C * N, &s) > 2e-5 * (s + 1)) {
        fprintf(stderr, "net__conv_bwd differs from im2col (weight gradient by %g)\n", d);
        bad = 1;
    }
    free(dw3), free(db3), free(di3), free(scr3);
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
 * overwritten and gated by a ReLU output (zeros, negatives and positives all present); the
 * forward's channel sums and sums of squares (added to what stats held) against a double loop
 * over the unfused output, within 1e-6 of the sums of magnitudes. */
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
    double *st = malloc(2 * OC * sizeof(double));
    for (size_t i = 0; i < 2 * OC; i++) st[i] = 1.0; // the kernel adds to it
    const struct net__epi fe = {.add = add, .relu = 1, .stats = st}, be = {.gate = gate};

    net__conv_fwd_im2col(o1, col, inp, w, b, &g, B);
    net__epi_apply(o1, &fe, OC * N);
    net__conv_direct_fwd(o2, scr, inp, w, b, &g, B, &fe);
    memset(d1, 0, C * N * sizeof(float));
    net__conv_bwd_im2col(d1, dw, NULL, col, dcol, dout, inp, w, &g, B);
    net__epi_apply(d1, &be, C * N);
    net__conv_direct_bwd(d2, dw, NULL, scr, dout, inp, w, &g, B, &be);

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
    for (size_t o = 0; o < OC && !bad; o++) {
        double s1 = 1.0, s2 = 1.0, m1 = 1.0, m2 = 1.0;
        for (size_t i = 0; i < N; i++) {
            const double v = o1[o * N + i];
            s1 += v, s2 += v * v, m1 += fabs(v), m2 += v * v;
        }
        if (fabs(st[2 * o] - s1) > 1e-6 * m1 || fabs(st[2 * o + 1] - s2) > 1e-6 * m2) {
            fprintf(stderr, "channel %zu: sums %.9g %.9g, want %.9g %.9g\n", o, st[2 * o],
                    st[2 * o + 1], s1, s2);
            bad = 1;
        }
    }
    free(st);
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

// ---- dense products ----------------------------------------------------------------------

static int set_gemm_level(int want)
{
    net__gemm_force(want);
    return net__gemm_force(want);
}

/* Runs BODY at AVX-512, AVX2 and the reference level, those the CPU has. */
#define FOR_EACH_GEMM_LEVEL(BODY)                                                                  \
    do {                                                                                           \
        for (int lv_ = 2; lv_ >= 0; lv_--) {                                                       \
            if (set_gemm_level(lv_) != lv_) {                                                      \
                printf("  (dense level %d skipped: not on this CPU)\n", lv_);                      \
                continue;                                                                          \
            }                                                                                      \
            printf("  (dense level: %s)\n", lv_ == 2 ? "AVX-512" : lv_ ? "AVX2" : "reference");    \
            BODY;                                                                                  \
        }                                                                                          \
        set_gemm_level(2);                                                                         \
    } while (0)

static int close_to(float got, double want, double mag, const char *what, size_t m, size_t n)
{
    const double tol = 2e-6 * mag + 1e-6;
    if (fabs((double)got - want) <= tol) return 1;
    fprintf(stderr, "%s: C[%zu][%zu] = %.9g, want %.9g (tolerance %.3g)\n", what, m, n, got, want,
            tol);
    return 0;
}

/* net__gemm_nt against the double loop: C = A B^T + bias, C2 = relu(C), with lda, ldb, ldc
 * wider than the rows. */
static int check_nt(size_t M, size_t N, size_t K, int use_scratch, int lv)
{
    const size_t lda = K + 3, ldb = K + 1, ldc = N + 2;
    float *A = rand_buf(M * lda), *Bm = rand_buf(N * ldb), *bias = rand_buf(N);
    float *C = rand_buf(M * ldc), *C2 = rand_buf(M * ldc);
    float *scr = use_scratch ? malloc(NET__GEMM_NT_SCRATCH(M, N, K) * sizeof(float)) : NULL;
    net__gemm_nt(C, C2, A, Bm, bias, M, N, K, lda, ldb, ldc, scr);
    int ok = 1;
    size_t pos = 0, neg = 0;
    char what[96];
    snprintf(what, sizeof what, "gemm_nt M%zu N%zu K%zu scratch %d level %d", M, N, K, use_scratch,
             lv);
    for (size_t m = 0; m < M && ok; m++)
        for (size_t n = 0; n < N && ok; n++) {
            double s = bias[n], mag = fabs(bias[n]);
            for (size_t k = 0; k < K; k++) {
                s += (double)A[m * lda + k] * Bm[n * ldb + k];
                mag += fabs((double)A[m * lda + k] * Bm[n * ldb + k]);
            }
            ok = close_to(C[m * ldc + n], s, mag, what, m, n) &&
                 close_to(C2[m * ldc + n], s > 0 ? s : 0.0, mag, what, m, n);
            if (ok && C2[m * ldc + n] != (C[m * ldc + n] > 0.0f ? C[m * ldc + n] : 0.0f)) {
                fprintf(stderr, "%s: C2 != relu(C) at %zu %zu\n", what, m, n);
                ok = 0;
            }
            pos += s > 0, neg += s < 0;
        }
    if (ok && M * N > 8 && (pos == 0 || neg == 0)) ok = 0; // both signs must be exercised
    free(A), free(Bm), free(bias), free(C), free(C2), free(scr);
    return ok;
}

/* net__gemm_bc against the double loop, A row-major (trans 0) or read transposed (trans 1). */
static int check_bc(size_t M, size_t N, size_t K, int trans, int accum, int gated, int lv)
{
    const size_t ldb = N + 5, ldc = N + 1;
    const size_t rsa = trans ? 1 : K + 2, csa = trans ? M + 3 : 1;
    float *A = rand_buf(trans ? K * csa : M * rsa), *Bm = rand_buf(K * ldb);
    float *C = rand_buf(M * ldc), *C0 = malloc(M * ldc * sizeof(float));
    float *gate = gated ? rand_buf(M * ldc) : NULL;
    if (gate)
        for (size_t i = 0; i < M * ldc; i += 4) gate[i] = 0.0f; // exactly 0 passes (relu1)
    memcpy(C0, C, M * ldc * sizeof(float));
    net__gemm_bc(C, A, Bm, gate, M, N, K, rsa, csa, ldb, ldc, accum);
    int ok = 1;
    char what[112];
    snprintf(what, sizeof what, "gemm_bc M%zu N%zu K%zu trans %d accum %d gate %d level %d", M, N,
             K, trans, accum, gated, lv);
    for (size_t m = 0; m < M && ok; m++) {
        for (size_t n = 0; n < N && ok; n++) {
            double s = accum ? C0[m * ldc + n] : 0.0, mag = fabs(s);
            for (size_t k = 0; k < K; k++) {
                const double p = (double)A[m * rsa + k * csa] * Bm[k * ldb + n];
                s += p, mag += fabs(p);
            }
            if (gate && !(gate[m * ldc + n] >= 0.0f)) s = 0.0, mag = 0.0;
            ok = close_to(C[m * ldc + n], s, mag, what, m, n);
        }
        for (size_t n = N; n < ldc && ok; n++) // the padding past N is not touched
            if (C[m * ldc + n] != C0[m * ldc + n]) {
                fprintf(stderr, "%s: wrote past N at row %zu\n", what, m);
                ok = 0;
            }
    }
    free(A), free(Bm), free(C), free(C0), free(gate);
    return ok;
}

TEST(dense_gemm_nt_matches_reference)
{
    static const size_t shapes[][3] = {{64, 512, 784}, {64, 10, 256}, {1, 1, 1},
                                       {3, 5, 7},      {5, 17, 16},   {7, 4, 33},
                                       {67, 65, 100},  {2, 130, 15},  {13, 3, 129}};
    FOR_EACH_GEMM_LEVEL({
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            for (int sc = 0; sc < 2; sc++)
                ASSERT(check_nt(shapes[i][0], shapes[i][1], shapes[i][2], sc, lv_));
    });
}

TEST(dense_gemm_bc_matches_reference)
{
    // (M, N, K): the MLP's weight gradients (K = batch) and data gradients, then tails of the
    // 8 x 48, 6 x 64 and 4 x 16 tiles.
    static const size_t shapes[][3] = {{512, 784, 64}, {64, 512, 256}, {10, 256, 64}, {1, 1, 1},
                                       {9, 49, 3},     {7, 64, 5},     {13, 65, 17},  {6, 128, 2},
                                       {3, 15, 40},    {17, 100, 1},   {8, 47, 9}};
    FOR_EACH_GEMM_LEVEL({
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            for (int v = 0; v < 4; v++)
                ASSERT(check_bc(shapes[i][0], shapes[i][1], shapes[i][2], v & 1, v >> 1,
                                v == 0 || v == 3, lv_));
    });
}

/* net__gemm_bc_sgd against the double loop: the gradient g = A B (never left in C: C must be
 * zero after) steps w and the momentum m by net_optim_step's SGD, with or without Nesterov. */
static int check_bc_sgd(size_t M, size_t N, size_t K, int trans, int nest, int lv)
{
    const size_t ldb = N + 5, ldc = N + 1;
    const size_t rsa = trans ? 1 : K + 2, csa = trans ? M + 3 : 1;
    const float lr = 0.1f, mu = 0.9f, d = 0.01f;
    float *A = rand_buf(trans ? K * csa : M * rsa), *Bm = rand_buf(K * ldb);
    float *C = calloc(M * ldc, sizeof(float)), *w = rand_buf(M * ldc), *m = rand_buf(M * ldc);
    float *w0 = malloc(M * ldc * sizeof(float)), *m0 = malloc(M * ldc * sizeof(float));
    memcpy(w0, w, M * ldc * sizeof(float));
    memcpy(m0, m, M * ldc * sizeof(float));
    const struct net__sgd s = {w, m, lr, mu, d, nest};
    net__gemm_bc_sgd(C, A, Bm, M, N, K, rsa, csa, ldb, ldc, &s);
    int ok = 1;
    char what[112];
    snprintf(what, sizeof what, "gemm_bc_sgd M%zu N%zu K%zu trans %d nesterov %d level %d", M, N, K,
             trans, nest, lv);
    for (size_t i = 0; i < M && ok; i++)
        for (size_t j = 0; j < ldc && ok; j++) {
            const size_t e = i * ldc + j;
            if (C[e] != 0.0f) {
                fprintf(stderr, "%s: gradient left in C[%zu][%zu]\n", what, i, j);
                ok = 0;
            } else if (j >= N) { // the padding past N is not touched
                ok = w[e] == w0[e] && m[e] == m0[e];
                if (!ok) fprintf(stderr, "%s: stepped past N at row %zu\n", what, i);
            } else {
                double g = 0.0, mag = 0.0;
                for (size_t k = 0; k < K; k++) {
                    const double p = (double)A[i * rsa + k * csa] * Bm[k * ldb + j];
                    g += p, mag += fabs(p);
                }
                const double gi = g + d * (double)w0[e], mi = mu * (double)m0[e] + gi;
                const double wi = w0[e] - lr * (nest ? gi + mu * mi : mi);
                ok = close_to(m[e], mi, mag + 2.0, what, i, j) &&
                     close_to(w[e], wi, lr * 2.0 * (mag + 2.0) + 1.0, what, i, j);
            }
        }
    free(A), free(Bm), free(C), free(w), free(m), free(w0), free(m0);
    return ok;
}

TEST(dense_gemm_bc_sgd_steps_as_the_optimizer)
{
    // The MLP's weight gradients (K = batch), then the tails of every tile; the last two are
    // big enough for the threads' split by row tiles (M * N * K >= 2^18), with a row tail
    // and an odd count of row tiles to split.
    static const size_t shapes[][3] = {{512, 784, 64}, {10, 256, 64}, {1, 1, 1},   {9, 49, 3},
                                       {7, 64, 5},     {13, 65, 17},  {3, 15, 40}, {8, 47, 9},
                                       {517, 101, 64}, {37, 777, 13}};
    FOR_EACH_GEMM_LEVEL({
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            for (int v = 0; v < 4; v++)
                ASSERT(check_bc_sgd(shapes[i][0], shapes[i][1], shapes[i][2], v & 1, v >> 1, lv_));
    });
}

/* The fused BN + ReLU backward against net__bn_bwd of the ReLU-gated gradient (the gate
 * recomputed from the forward's output), per channel layout and mode, within 1e-5 of the
 * scale; dinp aliasing dout is allowed. */
static int check_bn_relu(size_t C, size_t N, int spatial, int training)
{
    const size_t cs = spatial ? N : 1, is = spatial ? 1 : C, T = C * N;
    float *x = rand_buf(T), *g = rand_buf(C), *b = rand_buf(C), *dout = rand_buf(T);
    float *rm = calloc(C, sizeof(float)), *rv = malloc(C * sizeof(float));
    for (size_t c = 0; c < C; c++) rv[c] = 1.0f;
    float *out = malloc(T * sizeof(float)), *xh = malloc(T * sizeof(float));
    float *inv = malloc(C * sizeof(float)), *dy = malloc(T * sizeof(float));
    float *d1 = malloc(T * sizeof(float)), *d2 = malloc(T * sizeof(float));
    float *g1 = calloc(2 * C, sizeof(float)), *g2 = calloc(2 * C, sizeof(float));
    net__bn_fwd(out, xh, inv, rm, rv, x, g, b, C, N, cs, is, training);
    size_t closed = 0;
    for (size_t i = 0; i < T; i++) {
        dy[i] = out[i] >= 0.0f ? dout[i] : 0.0f; // the ReLU's backward
        closed += out[i] < 0.0f;
    }
    net__bn_bwd(d1, g1, g1 + C, dy, xh, inv, g, C, N, cs, is, training);
    memcpy(d2, dout, T * sizeof(float));
    net__bn_bwd_relu(d2, g2, g2 + C, d2, xh, inv, g, b, C, N, cs, is, training); // aliased
    double sc, dd, sg, dg;
    dd = max_abs_diff(d2, d1, T, &sc);
    dg = max_abs_diff(g2, g1, 2 * C, &sg);
    const int ok = closed > 0 && closed < T && dd <= 1e-5 * (sc + 1) && dg <= 1e-5 * (sg + 1);
    if (!ok)
        fprintf(stderr,
                "bn_bwd_relu C%zu N%zu spatial %d training %d: dx off by %g (scale %g), "
                "dgamma/dbeta by %g (scale %g), %zu of %zu gated\n",
                C, N, spatial, training, dd, sc, dg, sg, closed, T);
    free(x), free(g), free(b), free(dout), free(rm), free(rv), free(out), free(xh), free(inv);
    free(dy), free(d1), free(d2), free(g1), free(g2);
    return ok;
}

TEST(bn_relu_backward_matches_separate_passes)
{
    for (int tr = 0; tr < 2; tr++) {
        ASSERT(check_bn_relu(5, 3 * 49 + 7, 1, tr)); // spatial: tails of the 16-wide partial sums
        ASSERT(check_bn_relu(32, 64 * 28 * 28 / 16, 1, tr));
        ASSERT(check_bn_relu(7, 13, 0, tr)); // flat (B, F): items strided by the features
    }
}

/* The levels a CPU lacks are refused: forcing never claims an instruction set. */
TEST(dense_gemm_force_is_capped_by_the_cpu)
{
    const int best = net__cpu_avx512() ? 2 : net__cpu_avx2() ? 1 : 0;
    ASSERT_EQ(set_gemm_level(2), best);
    ASSERT_EQ(set_gemm_level(0), 0);
    set_gemm_level(2);
}

TEST_MAIN()
