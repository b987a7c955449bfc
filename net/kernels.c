/* net/kernels.c: convolution (im2col + sgemm) and batch-norm kernels shared by the conv,
 * bn and res layers. Activations are (C, B, H, W), so im2col of a whole batch is one
 * (C*K*K, B*OH*OW) matrix and the convolution one sgemm whose output is already (OC, B, OH, OW).
 *
 * OpenMP runs only the element-wise loops (over rows of col or over channels, so no two
 * threads write the same element); sgemm is always called outside a parallel region. */
#include <math.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "net/net_internal.h"

void net__sgemm_split(int split_rows, int transa, int transb, size_t M, size_t N, size_t K,
                      const float *A, size_t lda, const float *Bm, size_t ldb, float beta, float *C,
                      size_t ldc)
{
    const enum CBLAS_TRANSPOSE ta = transa ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = transb ? CblasTrans : CblasNoTrans;
    int T = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && M * N * K >= ((size_t)1 << 20)) T = omp_get_max_threads();
#endif
    const size_t D = split_rows ? M : N;
    size_t per = (D + (size_t)T - 1) / (size_t)T;
    per = (per + 15) / 16 * 16; // whole cache lines of C per thread
    if (T <= 1 || per >= D) {
        cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, Bm, (int)ldb,
                    beta, C, (int)ldc);
        return;
    }
    /* One block of C per thread, each a serial sgemm (OpenBLAS does not thread inside a
     * parallel region): no synchronisation inside the product. */
#pragma omp parallel for schedule(static) num_threads(T)
    for (int t = 0; t < T; t++) {
        const size_t d0 = (size_t)t * per;
        if (d0 >= D) continue;
        const size_t nb = D - d0 < per ? D - d0 : per;
        if (split_rows) {
            const float *Ab = transa ? A + d0 : A + d0 * lda;
            cblas_sgemm(CblasRowMajor, ta, tb, (int)nb, (int)N, (int)K, 1.0f, Ab, (int)lda, Bm,
                        (int)ldb, beta, C + d0 * ldc, (int)ldc);
        } else {
            const float *Bb = transb ? Bm + d0 * ldb : Bm + d0;
            cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)nb, (int)K, 1.0f, A, (int)lda, Bb,
                        (int)ldb, beta, C + d0, (int)ldc);
        }
    }
}

void net__conv_geom(struct net__conv *g, size_t C, size_t H, size_t W, size_t OC, size_t K,
                    size_t S, size_t P)
{
    g->C = C;
    g->H = H;
    g->W = W;
    g->OC = OC;
    g->K = K;
    g->S = S;
    g->P = P;
    g->OH = (H + 2 * P - K) / S + 1;
    g->OW = (W + 2 * P - K) / S + 1;
}

static int net__conv_is_pointwise(const struct net__conv *g)
{
    return g->K == 1 && g->S == 1 && g->P == 0;
}

static size_t conv_im2col_size(const struct net__conv *g, size_t B)
{
    return net__conv_is_pointwise(g) ? 0 : g->C * g->K * g->K * B * g->OH * g->OW;
}

static size_t net__conv_chunk(const struct net__conv *g, size_t B);

/* The direct path's scratch, then, at the AVX2 level only, one im2col chunk for its weight
 * gradient (net__conv_bwd_epi). The level is the one in effect now: a caller that switches
 * levels (net__conv_direct_force) reserves again. */
size_t net__conv_col_size(const struct net__conv *g, size_t B)
{
    if (!net__conv_direct_ok(g)) return conv_im2col_size(g, B);
    const size_t chunk = net__conv_direct_level() == 1
                             ? net__conv_chunk(g, B) * g->C * g->K * g->K * g->OH * g->OW
                             : 0;
    return net__conv_direct_scratch(g) + chunk;
}

/* col (C*K*K, (b1-b0)*OH*OW) from samples [b0, b1) of inp (C, B, H, W); out-of-image
 * taps are 0. */
static void net__im2col(float *col, const float *inp, const struct net__conv *g, size_t B,
                        size_t b0, size_t b1)
{
    const size_t K = g->K, H = g->H, W = g->W, OH = g->OH, OW = g->OW, S = g->S;
    const long P = (long)g->P;
    const size_t rows = g->C * K * K, N = (b1 - b0) * OH * OW;
#pragma omp parallel for schedule(static) if (rows * N > 32768)
    for (size_t r = 0; r < rows; r++) {
        const size_t c = r / (K * K), ki = (r / K) % K, kj = r % K;
        float *dst = col + r * N;
        for (size_t b = b0; b < b1; b++) {
            const float *src = inp + (c * B + b) * H * W;
            for (size_t oh = 0; oh < OH; oh++) {
                long ih = (long)(oh * S + ki) - P;
                float *d = dst + ((b - b0) * OH + oh) * OW;
                if (ih < 0 || ih >= (long)H) {
                    memset(d, 0, OW * sizeof(float));
                    continue;
                }
                const float *srow = src + (size_t)ih * W;
                if (S == 1) {
                    // Contiguous run: [lo, hi) of ow where iw = ow + kj - P is inside.
                    long off = (long)kj - P;
                    size_t lo = off < 0 ? (size_t)(-off) : 0;
                    long hi_l = (long)W - off;
                    size_t hi = hi_l < 0 ? 0 : ((size_t)hi_l < OW ? (size_t)hi_l : OW);
                    if (lo > hi) lo = hi;
                    for (size_t ow = 0; ow < lo; ow++) d[ow] = 0.0f;
                    if (hi > lo) memcpy(d + lo, srow + (long)lo + off, (hi - lo) * sizeof(float));
                    for (size_t ow = hi; ow < OW; ow++) d[ow] = 0.0f;
                } else {
                    for (size_t ow = 0; ow < OW; ow++) {
                        long iw = (long)(ow * S + kj) - P;
                        d[ow] = (iw >= 0 && iw < (long)W) ? srow[iw] : 0.0f;
                    }
                }
            }
        }
    }
}

/* Samples [b0, b1) of dinp (C, B, H, W) += col2im(dcol), dcol (C*K*K, (b1-b0)*OH*OW);
 * threads split over channels so writes never collide. */
static void net__col2im_add(float *dinp, const float *dcol, const struct net__conv *g, size_t B,
                            size_t b0, size_t b1)
{
    const size_t K = g->K, H = g->H, W = g->W, OH = g->OH, OW = g->OW, S = g->S;
    const long P = (long)g->P;
    const size_t N = (b1 - b0) * OH * OW;
#pragma omp parallel for schedule(static) if (g->C * K * K * N > 32768)
    for (size_t c = 0; c < g->C; c++) {
        for (size_t ki = 0; ki < K; ki++) {
            for (size_t kj = 0; kj < K; kj++) {
                const float *src = dcol + ((c * K + ki) * K + kj) * N;
                for (size_t b = b0; b < b1; b++) {
                    float *dst = dinp + (c * B + b) * H * W;
                    for (size_t oh = 0; oh < OH; oh++) {
                        long ih = (long)(oh * S + ki) - P;
                        if (ih < 0 || ih >= (long)H) continue;
                        const float *s = src + ((b - b0) * OH + oh) * OW;
                        float *drow = dst + (size_t)ih * W;
                        if (S == 1) {
                            // Contiguous run [lo, hi) of ow whose iw = ow + kj - P is inside.
                            long off = (long)kj - P;
                            long lo = off < 0 ? -off : 0, hi = (long)W - off;
                            if (hi > (long)OW) hi = (long)OW;
                            for (long ow = lo; ow < hi; ow++) drow[ow + off] += s[ow];
                            continue;
                        }
                        for (size_t ow = 0; ow < OW; ow++) {
                            long iw = (long)(ow * S + kj) - P;
                            if (iw >= 0 && iw < (long)W) drow[iw] += s[ow];
                        }
                    }
                }
            }
        }
    }
}

/* Samples per im2col chunk: the col block (C*K*K x chunk*OH*OW) stays near 4 MiB, inside
 * the last-level cache, instead of a whole-batch matrix streamed through memory several
 * times per step (58 MB for a 3x3 conv of 32 channels at 28x28 and batch 64). */
static size_t net__conv_chunk(const struct net__conv *g, size_t B)
{
    size_t per = g->C * g->K * g->K * g->OH * g->OW, c = per ? (1u << 20) / per : B;
    return c < 1 ? 1 : c > B ? B : c;
}

void net__epi_apply(float *x, const struct net__epi *e, size_t n)
{
    if (!e || (!e->add && !e->gate && !e->relu)) return;
    const float *add = e->add, *gate = e->gate;
    const int relu = e->relu;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (add) v += add[i];
        if (gate && !(gate[i] > 0.0f)) v = 0.0f;
        if (relu && !(v > 0.0f)) v = 0.0f;
        x[i] = v;
    }
}

void net__conv_fwd_epi(float *out, float *col, const float *inp, const float *w, const float *b,
                       const struct net__conv *g, size_t B, const struct net__epi *e)
{
    if (net__conv_direct_ok(g)) {
        net__conv_direct_fwd(out, col, inp, w, b, g, B, e);
        return;
    }
    net__conv_fwd_im2col(out, col, inp, w, b, g, B);
    const size_t N = B * g->OH * g->OW;
    net__epi_apply(out, e, g->OC * N);
    if (e && e->stats) net__chan_stats(e->stats, out, g->OC, N);
}

void net__conv_fwd(float *out, float *col, const float *inp, const float *w, const float *b,
                   const struct net__conv *g, size_t B)
{
    net__conv_fwd_epi(out, col, inp, w, b, g, B, NULL);
}

void net__conv_fwd_im2col(float *out, float *col, const float *inp, const float *w, const float *b,
                          const struct net__conv *g, size_t B)
{
    // out (OC, N) = w (OC, CKK) . col (CKK, N), computed chunk by chunk of samples.
    const size_t OHW = g->OH * g->OW, N = B * OHW, CKK = g->C * g->K * g->K;
    if (net__conv_is_pointwise(g)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->OC, (int)N, (int)CKK, 1.0f,
                    w, (int)CKK, inp, (int)N, 0.0f, out, (int)N);
    } else {
        const size_t cb = net__conv_chunk(g, B);
        for (size_t b0 = 0; b0 < B; b0 += cb) {
            const size_t b1 = b0 + cb < B ? b0 + cb : B, Nc = (b1 - b0) * OHW;
            net__im2col(col, inp, g, B, b0, b1);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->OC, (int)Nc, (int)CKK,
                        1.0f, w, (int)CKK, col, (int)Nc, 0.0f, out + b0 * OHW, (int)N);
        }
    }
    if (b) {
#pragma omp parallel for schedule(static) if (g->OC * N > 32768)
        for (size_t o = 0; o < g->OC; o++) {
            float *row = out + o * N;
            const float bo = b[o];
            for (size_t i = 0; i < N; i++) row[i] += bo;
        }
    }
}

static void conv_bias_grad(float *db, const float *dout, size_t OC, size_t N)
{
#pragma omp parallel for schedule(static) if (OC * N > 32768)
    for (size_t o = 0; o < OC; o++) {
        // 16 partial sums the compiler can keep in one vector (a single running float
        // would serialise the loop on the add latency).
        const float *row = dout + o * N;
        float part[16] = {0};
        size_t i = 0;
        for (; i + 16 <= N; i += 16)
            for (size_t j = 0; j < 16; j++) part[j] += row[i + j];
        float s = 0.0f;
        for (; i < N; i++) s += row[i];
        for (size_t j = 0; j < 16; j++) s += part[j];
        db[o] += s;
    }
}

void net__conv_bwd_epi(float *dinp, float *dw, float *db, float *col, float *dcol,
                       const float *dout, const float *inp, const float *w,
                       const struct net__conv *g, size_t B, const struct net__epi *e)
{
    if (!net__conv_direct_ok(g)) {
        const size_t n = g->C * B * g->H * g->W;
        if (dinp && !(e && e->accum)) memset(dinp, 0, n * sizeof(float));
        net__conv_bwd_im2col(dinp, dw, db, col, dcol, dout, inp, w, g, B);
        if (dinp) net__epi_apply(dinp, e, n);
        return;
    }
    if (net__conv_direct_level() == 1) {
        /* AVX2: im2col + sgemm computes the weight gradient faster than the direct kernel
         * (Zen 3, build/conv_kernels, 2 threads: 84-88 GFLOP/s direct against 88-119), so
         * the direct kernel keeps the data gradient only. */
        net__conv_bwd_im2col(NULL, dw, db, col + net__conv_direct_scratch(g), NULL, dout, inp, w, g,
                             B);
        net__conv_direct_bwd(dinp, NULL, NULL, col, dout, inp, w, g, B, e);
        return;
    }
    net__conv_direct_bwd(dinp, dw, db, col, dout, inp, w, g, B, e);
}

void net__conv_bwd(float *dinp, float *dw, float *db, float *col, float *dcol, const float *dout,
                   const float *inp, const float *w, const struct net__conv *g, size_t B)
{
    static const struct net__epi acc = {.accum = 1};
    net__conv_bwd_epi(dinp, dw, db, col, dcol, dout, inp, w, g, B, &acc);
}

void net__conv_bwd_im2col(float *dinp, float *dw, float *db, float *col, float *dcol,
                          const float *dout, const float *inp, const float *w,
                          const struct net__conv *g, size_t B)
{
    const size_t OHW = g->OH * g->OW, N = B * OHW, CKK = g->C * g->K * g->K;
    if (db) conv_bias_grad(db, dout, g->OC, N);
    if (net__conv_is_pointwise(g)) {
        /* dw (OC, C) += dout (OC, N) . inp^T; dinp (C, N) += w^T . dout (beta 1 adds). */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->OC, (int)CKK, (int)N, 1.0f,
                    dout, (int)N, inp, (int)N, 1.0f, dw, (int)CKK);
        if (dinp)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CKK, (int)N, (int)g->OC, 1.0f,
                        w, (int)CKK, dout, (int)N, 1.0f, dinp, (int)N);
        return;
    }
    // Chunk by chunk of samples: col recomputed (cheaper than keeping it per layer), then
    // dw (OC, CKK) += dout_chunk . col^T and dinp += col2im(w^T . dout_chunk).
    const size_t cb = net__conv_chunk(g, B);
    for (size_t b0 = 0; b0 < B; b0 += cb) {
        const size_t b1 = b0 + cb < B ? b0 + cb : B, Nc = (b1 - b0) * OHW;
        const float *dchunk = dout + b0 * OHW;
        net__im2col(col, inp, g, B, b0, b1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->OC, (int)CKK, (int)Nc, 1.0f,
                    dchunk, (int)N, col, (int)Nc, 1.0f, dw, (int)CKK);
        if (!dinp) continue;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CKK, (int)Nc, (int)g->OC, 1.0f, w,
                    (int)CKK, dchunk, (int)N, 0.0f, dcol, (int)Nc);
        net__col2im_add(dinp, dcol, g, B, b0, b1);
    }
}

// ---- batch norm ----------------------------------------------------------------------

/* *sa = sum d(i), *sab = sum d(i) * b[i * is], in double, for a term d(k) of a[k] (and
 * b[k]). For contiguous data (is == 1, a conv's channel plane) GCC vector types of 16 floats
 * (lowered to AVX-512, AVX2 or SSE as the build targets): blocks of up to 256 terms summed in
 * float lanes, then added into 16 double partials. A single running double serialised the loop
 * on the add latency (BN was a quarter of the main job's step with it), and the compiler kept
 * the gated term scalar when left to vectorise it. One body for the two functions below, which
 * differ only in the term: DV(av, bv) on vectors, D(k) on elements. */
typedef float bn_v16f __attribute__((vector_size(64)));
typedef int32_t bn_v16i __attribute__((vector_size(64)));
#define BN_SUMS_BODY(DV, D)                                                                        \
    double s = 0.0, s2 = 0.0;                                                                      \
    size_t i = 0;                                                                                  \
    if (is == 1) {                                                                                 \
        double pa[16] = {0}, pab[16] = {0};                                                        \
        while (i + 16 <= n) {                                                                      \
            const size_t e = i + 256 <= n ? i + 256 : n / 16 * 16;                                 \
            bn_v16f fa = {0}, fab = {0};                                                           \
            for (; i < e; i += 16) {                                                               \
                bn_v16f av, bv;                                                                    \
                memcpy(&av, a + i, sizeof av);                                                     \
                memcpy(&bv, b + i, sizeof bv);                                                     \
                const bn_v16f d = DV(av, bv);                                                      \
                fa += d;                                                                           \
                fab += d * bv;                                                                     \
            }                                                                                      \
            for (size_t j = 0; j < 16; j++) pa[j] += (double)fa[j], pab[j] += (double)fab[j];      \
        }                                                                                          \
        for (size_t j = 0; j < 16; j++) s += pa[j], s2 += pab[j];                                  \
    }                                                                                              \
    for (; i < n; i++) {                                                                           \
        const double d = D(i * is);                                                                \
        s += d;                                                                                    \
        s2 += d * (double)b[i * is];                                                               \
    }                                                                                              \
    *sa = s;                                                                                       \
    *sab = s2

/* sum a and sum a * b. */
static void bn_sums(const float *a, const float *b, size_t n, size_t is, double *sa, double *sab)
{
#define BN_PLAIN_V(av, bv) (av)
#define BN_PLAIN(k) (double)a[k]
    BN_SUMS_BODY(BN_PLAIN_V, BN_PLAIN);
#undef BN_PLAIN
#undef BN_PLAIN_V
}

void net__chan_stats(double *st, const float *x, size_t C, size_t N)
{
#pragma omp parallel for schedule(static) if (C * N > 32768)
    for (size_t c = 0; c < C; c++) {
        double s, s2;
        bn_sums(x + c * N, x + c * N, N, 1, &s, &s2);
        st[2 * c] += s, st[2 * c + 1] += s2;
    }
}

void net__bn_fwd(float *out, float *xhat, float *inv, float *rmean, float *rvar, const float *inp,
                 const float *gamma, const float *beta, size_t C, size_t N, size_t cs, size_t is,
                 int training)
{
    net__bn_fwd_relu(out, NULL, xhat, inv, rmean, rvar, inp, gamma, beta, C, N, cs, is, training,
                     NULL);
}

void net__bn_moments(float *mean, float *istd, float *inv, float *rmean, float *rvar,
                     const float *x, size_t N, size_t is, int training, const double *stats,
                     size_t c)
{
    if (training) {
        double s, s2;
        if (stats)
            s = stats[2 * c], s2 = stats[2 * c + 1];
        else
            bn_sums(x, x, N, is, &s, &s2);
        double mu = s / (double)N;
        double var = s2 / (double)N - mu * mu;
        if (var < 0.0) var = 0.0;
        *mean = (float)mu;
        *istd = (float)(1.0 / sqrt(var + NET__BN_EPS));
        inv[c] = *istd;
        // Running variance is unbiased, as in torch.
        double unb = N > 1 ? var * (double)N / (double)(N - 1) : var;
        rmean[c] = (1.0f - NET__BN_MOMENTUM) * rmean[c] + NET__BN_MOMENTUM * *mean;
        rvar[c] = (1.0f - NET__BN_MOMENTUM) * rvar[c] + NET__BN_MOMENTUM * (float)unb;
    } else {
        *mean = rmean[c];
        *istd = 1.0f / sqrtf(rvar[c] + NET__BN_EPS);
        if (inv) inv[c] = *istd;
    }
}

void net__bn_fwd_relu(float *out, float *out2, float *xhat, float *inv, float *rmean, float *rvar,
                      const float *inp, const float *gamma, const float *beta, size_t C, size_t N,
                      size_t cs, size_t is, int training, const double *stats)
{
#pragma omp parallel for schedule(static) if (C * N > 32768)
    for (size_t c = 0; c < C; c++) {
        const float *x = inp + c * cs;
        float mean, istd;
        net__bn_moments(&mean, &istd, inv, rmean, rvar, x, N, is, training, stats, c);
        const float gc = gamma[c], bc = beta[c];
        float *o = out + c * cs;
        float *xh = xhat ? xhat + c * cs : NULL;
        float *o2 = out2 ? out2 + c * cs : NULL;
        if (is == 1 && xh && o2) { // the common cases, written so that they vectorise
            for (size_t i = 0; i < N; i++) {
                const float h = (x[i] - mean) * istd, y = gc * h + bc;
                xh[i] = h;
                o[i] = y;
                o2[i] = y > 0.0f ? y : 0.0f;
            }
            continue;
        }
        if (is == 1 && xh) {
            for (size_t i = 0; i < N; i++) {
                const float h = (x[i] - mean) * istd;
                xh[i] = h;
                o[i] = gc * h + bc;
            }
            continue;
        }
        for (size_t i = 0; i < N; i++) {
            float h = (x[i * is] - mean) * istd, y = gc * h + bc;
            if (xh) xh[i * is] = h;
            o[i * is] = y;
            if (o2) o2[i * is] = y > 0.0f ? y : 0.0f;
        }
    }
}

/* bn_sums of (a = dy gated by the ReLU after the BN, gamma * xh + beta >= 0) and b = xh. */
static void bn_sums_relu(const float *a, const float *b, float gc, float bc, size_t n, size_t is,
                         double *sa, double *sab)
{
#define BN_GATED_V(av, bv) ((bn_v16f)((bn_v16i)(av) & (gc * (bv) + bc >= 0.0f)))
#define BN_GATED(k) (gc * b[k] + bc >= 0.0f ? (double)a[k] : 0.0)
    BN_SUMS_BODY(BN_GATED_V, BN_GATED);
#undef BN_GATED
#undef BN_GATED_V
}
#undef BN_SUMS_BODY

void net__bn_bwd_relu(float *dinp, float *dgamma, float *dbeta, const float *dout,
                      const float *xhat, const float *inv, const float *gamma, const float *beta,
                      size_t C, size_t N, size_t cs, size_t is, int training)
{
#pragma omp parallel for schedule(static) if (C * N > 32768)
    for (size_t c = 0; c < C; c++) {
        const float *dy = dout + c * cs, *xh = xhat + c * cs;
        const float gc = gamma[c], bc = beta[c];
        double sdy, sdyx;
        bn_sums_relu(dy, xh, gc, bc, N, is, &sdy, &sdyx);
        dgamma[c] += (float)sdyx;
        dbeta[c] += (float)sdy;
        if (!dinp) continue;
        float *dx = dinp + c * cs;
        if (!training) {
            const float k = gc * inv[c];
            for (size_t i = 0; i < N; i++)
                dx[i * is] = gc * xh[i * is] + bc >= 0.0f ? k * dy[i * is] : 0.0f;
            continue;
        }
        const float k = gc * inv[c] / (float)N;
        const float a = (float)sdy, bsum = (float)sdyx, fn = (float)N;
        if (is == 1) {
            for (size_t i = 0; i < N; i++) {
                const float d = gc * xh[i] + bc >= 0.0f ? dy[i] : 0.0f;
                dx[i] = k * (fn * d - a - xh[i] * bsum);
            }
            continue;
        }
        for (size_t i = 0; i < N; i++) {
            const float d = gc * xh[i * is] + bc >= 0.0f ? dy[i * is] : 0.0f;
            dx[i * is] = k * (fn * d - a - xh[i * is] * bsum);
        }
    }
}

void net__bn_bwd(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *xhat,
                 const float *inv, const float *gamma, size_t C, size_t N, size_t cs, size_t is,
                 int training)
{
    /* With y = g*xh + b, xh = (x - mu) * inv over N items:
     * training (mu, inv from the batch): dx = g*inv/N * (N*dy - sum(dy) - xh * sum(dy*xh));
     * eval (running mu, inv are constants): dx = g*inv*dy. */
#pragma omp parallel for schedule(static) if (C * N > 32768)
    for (size_t c = 0; c < C; c++) {
        const float *dy = dout + c * cs, *xh = xhat + c * cs;
        double sdy, sdyx;
        bn_sums(dy, xh, N, is, &sdy, &sdyx);
        dgamma[c] += (float)sdyx;
        dbeta[c] += (float)sdy;
        if (!dinp) continue;
        float *dx = dinp + c * cs;
        if (!training) {
            const float k = gamma[c] * inv[c];
            for (size_t i = 0; i < N; i++) dx[i * is] = k * dy[i * is];
            continue;
        }
        const float k = gamma[c] * inv[c] / (float)N;
        const float a = (float)sdy, bsum = (float)sdyx, fn = (float)N;
        if (is == 1) {
            for (size_t i = 0; i < N; i++) dx[i] = k * (fn * dy[i] - a - xh[i] * bsum);
            continue;
        }
        for (size_t i = 0; i < N; i++)
            dx[i * is] = k * ((float)N * dy[i * is] - a - xh[i * is] * bsum);
    }
}
