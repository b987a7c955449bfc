/* net/dense_gemm.c: the dense layer's three products at batch-sized shapes, in AVX-512 (or
 * AVX2 + FMA) kernels of our own, so a dense step does not depend on which core type
 * OpenBLAS picked (its Haswell kernels run AVX2 at half the AVX-512 rate). Owner: net/.
 *
 *   net__gemm_nt  C (M, N) = A (M, K) . B (N, K)^T + bias, [C2 = relu(C)]   forward
 *                 Both operands run along K in memory, so nothing is packed: a tile of
 *                 4 rows x 4 columns keeps 16 vector accumulators along K (8 loads per 16
 *                 FMAs; AVX2: 2 x 4, 6 loads per 8 FMAs), summed across lanes once at the
 *                 end by a transpose-and-add tree (45 instructions for the 16 sums).
 *   net__gemm_bc  C (M, N) (+)= A(m, k) . B (K, N), A at any strides, [gated]  gradients
 *                 Row-broadcast kernel: 8 rows x 48 columns (24 accumulators; 3 loads of B
 *                 and 8 broadcasts of A per 24 FMAs; AVX2: 6 x 16, 12 accumulators). The weight gradient
 *                 dW += dout^T x is A = dout read transposed; the data gradient
 *                 dx = dout W is A = dout, B = W, with the ReLU before the layer applied by
 *                 the store (gate >= 0 keeps, as layer_act.c's derivative at 0).
 *   net__gemm_bc_sgd  the weight gradient's tiles step the weights instead of being stored
 *                 (SGD fused into the backward: net_backward_update). (Prefetching the
 *                 tile's w and momentum rows during its FMAs was measured: no effect.)
 * Row and column tails reuse the last valid row / column of the operands (the spare results
 * are not stored); K tails are masked. Tiles are split over OpenMP threads by column strips
 * (each C element written by one thread). Level 0 (no x86 SIMD, or EVOWIDTH_DENSE=blas) uses
 * OpenBLAS plus plain loops: the reference path tests compare against. */
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "net/net_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define NET__GSIMD 1
#include <immintrin.h>
#define NET__G512 __attribute__((target("avx512f")))
#define NET__G256 __attribute__((target("avx2,fma")))
#else
#define NET__GSIMD 0
#endif

static int gemm_level_cached = -1;

static int gemm_level(void)
{
    return net__simd_level(&gemm_level_cached, NET__GSIMD ? 2 : 0, "EVOWIDTH_DENSE", "blas");
}

int net__gemm_force(int level)
{
    return net__simd_force(&gemm_level_cached, NET__GSIMD ? 2 : 0, "EVOWIDTH_DENSE", "blas", level);
}

/* Threads for a product of M*N*K multiply-adds (1 inside a parallel region). */
static int gemm_threads(size_t M, size_t N, size_t K)
{
#ifdef _OPENMP
    if (!omp_in_parallel() && M * N * K >= ((size_t)1 << 18)) return omp_get_max_threads();
#endif
    (void)M, (void)N, (void)K;
    return 1;
}

// ---- reference path (level 0) -------------------------------------------------------------

static void nt_ref(float *C, float *C2, const float *A, const float *Bm, const float *bias,
                   size_t M, size_t N, size_t K, size_t lda, size_t ldb, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, A, (int)lda,
                Bm, (int)ldb, 0.0f, C, (int)ldc);
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            float v = C[m * ldc + n] + (bias ? bias[n] : 0.0f);
            C[m * ldc + n] = v;
            if (C2) C2[m * ldc + n] = v > 0.0f ? v : 0.0f;
        }
}

static void bc_ref(float *C, const float *A, const float *Bm, const float *gate, size_t M, size_t N,
                   size_t K, size_t rsa, size_t csa, size_t ldb, size_t ldc, int accum)
{
    // A(m, k) = A[m * rsa + k * csa]: row-major when csa == 1, else transposed (rsa == 1).
    const int ta = csa != 1;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K,
                1.0f, A, (int)(ta ? csa : rsa), Bm, (int)ldb, accum ? 1.0f : 0.0f, C, (int)ldc);
    if (gate)
        for (size_t m = 0; m < M; m++)
            for (size_t n = 0; n < N; n++)
                if (!(gate[m * ldc + n] >= 0.0f)) C[m * ldc + n] = 0.0f;
}

/* Where a broadcast tile's results go: C[m * ldc + n] (+)= acc, zeroed where gate < 0; or,
 * with sgd, nowhere: each row of accumulators (the finished gradient) steps the weights and
 * momenta (net__sgd_span's arithmetic) straight from the registers, and C stays zero. */
struct bc_out {
    float *C;
    const float *gate;
    size_t ldc;
    int accum;
    const struct net__sgd *sgd;
};

#if NET__GSIMD

// ---- AVX-512 --------------------------------------------------------------------------------

static inline __mmask16 NET__G512 kmask16(size_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* Lane i of the result = sum of the 16 lanes of v[i]. */
static inline __m512 NET__G512 hsum16(const __m512 *v)
{
    __m512 r[8], q[4], s[2];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++)
        r[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 16
    for (int i = 0; i < 4; i++)
        q[i] = _mm512_add_ps(_mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0xEE));
#pragma GCC unroll 16
    for (int i = 0; i < 2; i++)
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * i], q[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(q[2 * i], q[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s[0], s[1], 0x88),
                         _mm512_shuffle_f32x4(s[0], s[1], 0xDD));
}

/* One 4 x 4 tile of net__gemm_nt at (m0, n0). */
static void NET__G512 nt_tile512(float *C, float *C2, const float *A, const float *Bm,
                                 const float *bias, size_t M, size_t N, size_t K, size_t lda,
                                 size_t ldb, size_t ldc, size_t m0, size_t n0)
{
    const float *a[4], *b[4];
#pragma GCC unroll 16
    for (size_t i = 0; i < 4; i++) {
        a[i] = A + (m0 + i < M ? m0 + i : M - 1) * lda;
        b[i] = Bm + (n0 + i < N ? n0 + i : N - 1) * ldb;
    }
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 av[4], bv[4];
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++) {
            av[i] = _mm512_loadu_ps(a[i] + k);
            bv[i] = _mm512_loadu_ps(b[i] + k);
        }
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++)
#pragma GCC unroll 16
            for (int j = 0; j < 4; j++)
                acc[4 * i + j] = _mm512_fmadd_ps(av[i], bv[j], acc[4 * i + j]);
    }
    if (k < K) {
        const __mmask16 km = kmask16(K - k);
        __m512 av[4], bv[4];
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++) {
            av[i] = _mm512_maskz_loadu_ps(km, a[i] + k);
            bv[i] = _mm512_maskz_loadu_ps(km, b[i] + k);
        }
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++)
#pragma GCC unroll 16
            for (int j = 0; j < 4; j++)
                acc[4 * i + j] = _mm512_fmadd_ps(av[i], bv[j], acc[4 * i + j]);
    }
    __m512 v = hsum16(acc); // lane 4 i + j: C[m0 + i][n0 + j]
    float bb[4] = {0, 0, 0, 0};
    if (bias)
        for (size_t j = 0; j < 4 && n0 + j < N; j++) bb[j] = bias[n0 + j];
    v = _mm512_add_ps(v, _mm512_broadcast_f32x4(_mm_loadu_ps(bb)));
    const __m512 r = _mm512_max_ps(v, _mm512_setzero_ps());
    if (m0 + 4 <= M && n0 + 4 <= N) {
        _mm_storeu_ps(C + m0 * ldc + n0, _mm512_extractf32x4_ps(v, 0));
        _mm_storeu_ps(C + (m0 + 1) * ldc + n0, _mm512_extractf32x4_ps(v, 1));
        _mm_storeu_ps(C + (m0 + 2) * ldc + n0, _mm512_extractf32x4_ps(v, 2));
        _mm_storeu_ps(C + (m0 + 3) * ldc + n0, _mm512_extractf32x4_ps(v, 3));
        if (C2) {
            _mm_storeu_ps(C2 + m0 * ldc + n0, _mm512_extractf32x4_ps(r, 0));
            _mm_storeu_ps(C2 + (m0 + 1) * ldc + n0, _mm512_extractf32x4_ps(r, 1));
            _mm_storeu_ps(C2 + (m0 + 2) * ldc + n0, _mm512_extractf32x4_ps(r, 2));
            _mm_storeu_ps(C2 + (m0 + 3) * ldc + n0, _mm512_extractf32x4_ps(r, 3));
        }
        return;
    }
    float t[16], t2[16];
    _mm512_storeu_ps(t, v);
    _mm512_storeu_ps(t2, r);
    for (size_t i = 0; i < 4 && m0 + i < M; i++)
        for (size_t j = 0; j < 4 && n0 + j < N; j++) {
            C[(m0 + i) * ldc + n0 + j] = t[4 * i + j];
            if (C2) C2[(m0 + i) * ldc + n0 + j] = t2[4 * i + j];
        }
}

/* One MR x (16 NV) tile of net__gemm_bc at (m0, n0); MR and NV are constants after inlining
 * (8 x 3 and 6 x 4: 24 accumulators either way). */
static inline __attribute__((always_inline)) NET__G512 void bc_tile512(
    const struct bc_out *o, const float *A, const float *Bm, size_t M, size_t N, size_t K,
    size_t rsa, size_t csa, size_t ldb, size_t m0, size_t n0, const int MR, const int NV)
{
    const float *a[8];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) a[i] = A + (m0 + (size_t)i < M ? m0 + (size_t)i : M - 1) * rsa;
    __mmask16 nm[4];
#pragma GCC unroll 16
    for (int j = 0; j < NV; j++)
        nm[j] = n0 + 16 * (size_t)j < N ? kmask16(N - n0 - 16 * (size_t)j) : 0;
    __m512 acc[8][4];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();
    const float *bp = Bm + n0;
    for (size_t k = 0; k < K; k++, bp += ldb) {
        __m512 bv[4];
#pragma GCC unroll 16
        for (int j = 0; j < NV; j++) bv[j] = _mm512_maskz_loadu_ps(nm[j], bp + 16 * j);
        const size_t ko = k * csa;
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            const __m512 av = _mm512_set1_ps(a[i][ko]);
#pragma GCC unroll 16
            for (int j = 0; j < NV; j++) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    const size_t ldc = o->ldc;
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (m0 + (size_t)i >= M) break;
        float *c = o->C + (m0 + (size_t)i) * ldc + n0;
        if (o->sgd) { // the step from the registers: C (zero) is not touched
            const struct net__sgd *sg = o->sgd;
            const __m512 lr = _mm512_set1_ps(sg->lr), mu = _mm512_set1_ps(sg->mu);
            const __m512 d = _mm512_set1_ps(sg->d);
            const size_t e = (m0 + (size_t)i) * ldc + n0;
#pragma GCC unroll 16
            for (int j = 0; j < NV; j++) {
                float *w = sg->w + e + 16 * j, *mo = sg->m + e + 16 * j;
                const __m512 wv = _mm512_maskz_loadu_ps(nm[j], w);
                const __m512 gi = _mm512_fmadd_ps(d, wv, acc[i][j]);
                const __m512 mv = _mm512_fmadd_ps(mu, _mm512_maskz_loadu_ps(nm[j], mo), gi);
                const __m512 st = sg->nest ? _mm512_fmadd_ps(mu, mv, gi) : mv;
                _mm512_mask_storeu_ps(mo, nm[j], mv);
                _mm512_mask_storeu_ps(w, nm[j], _mm512_fnmadd_ps(lr, st, wv));
            }
            continue;
        }
#pragma GCC unroll 16
        for (int j = 0; j < NV; j++) {
            __m512 v = acc[i][j];
            if (o->accum) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(nm[j], c + 16 * j));
            if (o->gate) {
                const __m512 g = _mm512_maskz_loadu_ps(nm[j], o->gate + (m0 + (size_t)i) * ldc +
                                                                  n0 + 16 * (size_t)j);
                v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_GE_OQ), v);
            }
            _mm512_mask_storeu_ps(c + 16 * j, nm[j], v);
        }
    }
}

static void NET__G512 bc_tile512_8x3(const struct bc_out *o, const float *A, const float *Bm,
                                     size_t M, size_t N, size_t K, size_t rsa, size_t csa,
                                     size_t ldb, size_t m0, size_t n0)
{
    bc_tile512(o, A, Bm, M, N, K, rsa, csa, ldb, m0, n0, 8, 3);
}

static void NET__G512 bc_tile512_6x4(const struct bc_out *o, const float *A, const float *Bm,
                                     size_t M, size_t N, size_t K, size_t rsa, size_t csa,
                                     size_t ldb, size_t m0, size_t n0)
{
    bc_tile512(o, A, Bm, M, N, K, rsa, csa, ldb, m0, n0, 6, 4);
}

// ---- AVX2 + FMA -----------------------------------------------------------------------------

static inline __m256i NET__G256 kmask8(size_t left)
{
    static const int32_t ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(ramp + 8 - (left >= 8 ? 8 : left)));
}

/* One 2 x 4 tile of net__gemm_nt at (m0, n0). */
static void NET__G256 nt_tile256(float *C, float *C2, const float *A, const float *Bm,
                                 const float *bias, size_t M, size_t N, size_t K, size_t lda,
                                 size_t ldb, size_t ldc, size_t m0, size_t n0)
{
    const float *a[2], *b[4];
#pragma GCC unroll 16
    for (size_t i = 0; i < 2; i++) a[i] = A + (m0 + i < M ? m0 + i : M - 1) * lda;
#pragma GCC unroll 16
    for (size_t j = 0; j < 4; j++) b[j] = Bm + (n0 + j < N ? n0 + j : N - 1) * ldb;
    __m256 acc[8];
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const __m256 a0 = _mm256_loadu_ps(a[0] + k), a1 = _mm256_loadu_ps(a[1] + k);
#pragma GCC unroll 16
        for (int j = 0; j < 4; j++) {
            const __m256 bv = _mm256_loadu_ps(b[j] + k);
            acc[j] = _mm256_fmadd_ps(a0, bv, acc[j]);
            acc[4 + j] = _mm256_fmadd_ps(a1, bv, acc[4 + j]);
        }
    }
    if (k < K) {
        const __m256i km = kmask8(K - k);
        const __m256 a0 = _mm256_maskload_ps(a[0] + k, km), a1 = _mm256_maskload_ps(a[1] + k, km);
#pragma GCC unroll 16
        for (int j = 0; j < 4; j++) {
            const __m256 bv = _mm256_maskload_ps(b[j] + k, km);
            acc[j] = _mm256_fmadd_ps(a0, bv, acc[j]);
            acc[4 + j] = _mm256_fmadd_ps(a1, bv, acc[4 + j]);
        }
    }
    const __m256 h01 =
        _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m256 h23 =
        _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    __m256 v = _mm256_add_ps(_mm256_permute2f128_ps(h01, h23, 0x20),
                             _mm256_permute2f128_ps(h01, h23, 0x31)); // lane 4 i + j
    float bb[8] = {0};
    if (bias)
        for (size_t j = 0; j < 4 && n0 + j < N; j++) bb[j] = bb[4 + j] = bias[n0 + j];
    v = _mm256_add_ps(v, _mm256_loadu_ps(bb));
    float t[8];
    _mm256_storeu_ps(t, v);
    for (size_t i = 0; i < 2 && m0 + i < M; i++)
        for (size_t j = 0; j < 4 && n0 + j < N; j++) {
            const float x = t[4 * i + j];
            C[(m0 + i) * ldc + n0 + j] = x;
            if (C2) C2[(m0 + i) * ldc + n0 + j] = x > 0.0f ? x : 0.0f;
        }
}

/* The k loop of an AVX2 tile: 6 rows x 16 columns, 12 accumulators. The empty asm keeps
 * the two B vectors in registers: left alone, GCC folds them into the FMAs as memory
 * operands, which loads each B vector once per row (14 loads per 12 FMAs; the kernel then
 * ran at ~45% of the FMA limit on Zen 3). FULL: no column tail, plain loads. */
static inline __attribute__((always_inline)) NET__G256 void bc_k256(
    __m256 acc[6][2], const float *const a[6], const float *bp, size_t K, size_t csa, size_t ldb,
    __m256i m0v, __m256i m1v, const int FULL)
{
    for (size_t k = 0; k < K; k++, bp += ldb) {
        __m256 b0, b1;
        if (FULL) {
            b0 = _mm256_loadu_ps(bp);
            b1 = _mm256_loadu_ps(bp + 8);
        } else {
            b0 = _mm256_maskload_ps(bp, m0v);
            b1 = _mm256_maskload_ps(bp + 8, m1v);
        }
        __asm__("" : "+x"(b0), "+x"(b1));
        const size_t ko = k * csa;
#pragma GCC unroll 16
        for (int i = 0; i < 6; i++) {
            const __m256 av = _mm256_broadcast_ss(a[i] + ko);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
}

/* One 6 x 16 tile of net__gemm_bc at (m0, n0): 2 loads of B and 6 broadcasts of A per 12
 * FMAs. */
static void NET__G256 bc_tile256(const struct bc_out *o, const float *A, const float *Bm, size_t M,
                                 size_t N, size_t K, size_t rsa, size_t csa, size_t ldb, size_t m0,
                                 size_t n0)
{
    float *C = o->C;
    const float *gate = o->gate;
    const size_t ldc = o->ldc;
    const int accum = o->accum;
    const float *a[6];
#pragma GCC unroll 16
    for (size_t i = 0; i < 6; i++) a[i] = A + (m0 + i < M ? m0 + i : M - 1) * rsa;
    const size_t l0 = N - n0, l1 = N > n0 + 8 ? N - n0 - 8 : 0;
    const __m256i m0v = kmask8(l0), m1v = kmask8(l1);
    __m256 acc[6][2];
#pragma GCC unroll 16
    for (int i = 0; i < 6; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    if (l0 >= 16)
        bc_k256(acc, a, Bm + n0, K, csa, ldb, m0v, m1v, 1);
    else
        bc_k256(acc, a, Bm + n0, K, csa, ldb, m0v, m1v, 0);
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 16
    for (size_t i = 0; i < 6; i++) {
        if (m0 + i >= M) break;
        float *c = C + (m0 + i) * ldc + n0;
        if (o->sgd) { // as bc_tile512's step: from the registers, C untouched
            const struct net__sgd *sg = o->sgd;
            const __m256 lr = _mm256_set1_ps(sg->lr), mu = _mm256_set1_ps(sg->mu);
            const __m256 d = _mm256_set1_ps(sg->d);
            const size_t e = (m0 + i) * ldc + n0;
#pragma GCC unroll 16
            for (int j = 0; j < 2; j++) {
                const __m256i mk = j ? m1v : m0v;
                float *w = sg->w + e + 8 * j, *mo = sg->m + e + 8 * j;
                const __m256 wv = _mm256_maskload_ps(w, mk);
                const __m256 gi = _mm256_fmadd_ps(d, wv, acc[i][j]);
                const __m256 mv = _mm256_fmadd_ps(mu, _mm256_maskload_ps(mo, mk), gi);
                const __m256 st = sg->nest ? _mm256_fmadd_ps(mu, mv, gi) : mv;
                _mm256_maskstore_ps(mo, mk, mv);
                _mm256_maskstore_ps(w, mk, _mm256_fnmadd_ps(lr, st, wv));
            }
            continue;
        }
#pragma GCC unroll 16
        for (int j = 0; j < 2; j++) {
            const __m256i mk = j ? m1v : m0v;
            __m256 v = acc[i][j];
            if (accum) v = _mm256_add_ps(v, _mm256_maskload_ps(c + 8 * j, mk));
            if (gate) {
                const __m256 g = _mm256_maskload_ps(gate + (m0 + i) * ldc + n0 + 8 * j, mk);
                v = _mm256_and_ps(v, _mm256_cmp_ps(g, zero, _CMP_GE_OQ));
            }
            _mm256_maskstore_ps(c + 8 * j, mk, v);
        }
    }
}

#endif // NET__GSIMD

// ---- drivers (no target attribute: GCC's outlined OpenMP body would not inherit it) ----------

/* dst (cols, rows) = src (rows, cols)^T, src row stride lds; 16 x 16 blocks. */
static void transpose(float *dst, const float *src, size_t rows, size_t cols, size_t lds, int T)
{
    (void)T; // read by the pragma only
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
    for (size_t c0 = 0; c0 < cols; c0 += 16)
        for (size_t r0 = 0; r0 < rows; r0 += 16) {
            const size_t r1 = r0 + 16 < rows ? r0 + 16 : rows, c1 = c0 + 16 < cols ? c0 + 16 : cols;
            for (size_t c = c0; c < c1; c++)
                for (size_t r = r0; r < r1; r++) dst[c * rows + r] = src[r * lds + c];
        }
}

#if NET__GSIMD
/* One tile of the broadcast kernel at (m0, n0), of the kind bc_run chose. */
static inline void bc_tile(const struct bc_out *o, int lvl, int wide, const float *A,
                           const float *Bm, size_t M, size_t N, size_t K, size_t rsa, size_t csa,
                           size_t ldb, size_t m0, size_t n0)
{
    if (lvl == 1)
        bc_tile256(o, A, Bm, M, N, K, rsa, csa, ldb, m0, n0);
    else if (wide)
        bc_tile512_6x4(o, A, Bm, M, N, K, rsa, csa, ldb, m0, n0);
    else
        bc_tile512_8x3(o, A, Bm, M, N, K, rsa, csa, ldb, m0, n0);
}
#endif

/* The broadcast kernel over all tiles of an M x N product (lvl 1 or 2). */
static void bc_run(const struct bc_out *o, int lvl, const float *A, const float *Bm, size_t M,
                   size_t N, size_t K, size_t rsa, size_t csa, size_t ldb)
{
#if NET__GSIMD
    // AVX-512: 6 x 64 tiles when they waste fewer columns than 8 x 48 ones (N = 64, 512).
    const int wide = lvl == 2 && (N + 63) / 64 * 64 - N <= (N + 47) / 48 * 48 - N;
    const size_t mr = lvl == 2 ? (wide ? 6 : 8) : 6, nr = lvl == 2 ? (wide ? 64 : 48) : 16;
    const size_t tm = (M + mr - 1) / mr, tn = (N + nr - 1) / nr;
    const int T = gemm_threads(M, N, K);
    (void)T; // read by the pragma only: a build without OpenMP (the fuzzers') ignores it
    if (o->sgd && T > 1) {
        /* The fused SGD step writes w and its momentum: each thread takes one range of row
         * tiles (all strips), the rows of w the next forward's row split reads on that
         * thread. Split by (strip, row tile) pairs as below, half of w's lines moved between
         * the cores' caches every step: the MLP's 2-thread step on a 2-core Zen 5 took a
         * median 863-906 us that way, 725-730 us this way (bench/train_step mlp). */
#pragma omp parallel for schedule(static, 1) num_threads(T)
        for (int q = 0; q < T; q++) {
            const size_t i0 = tm * (size_t)q / (size_t)T, i1 = tm * (size_t)(q + 1) / (size_t)T;
            for (size_t jn = 0; jn < tn; jn++)
                for (size_t im = i0; im < i1; im++)
                    bc_tile(o, lvl, wide, A, Bm, M, N, K, rsa, csa, ldb, im * mr, jn * nr);
        }
        return;
    }
    // Column strips outer (a strip of B stays in L1/L2 across the row tiles), split over
    // threads as one range of (strip, row tile) pairs.
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
    for (size_t t = 0; t < tn * tm; t++)
        bc_tile(o, lvl, wide, A, Bm, M, N, K, rsa, csa, ldb, t % tm * mr, t / tm * nr);
#else
    (void)o, (void)lvl, (void)A, (void)Bm, (void)M, (void)N, (void)K, (void)rsa, (void)csa,
        (void)ldb;
#endif
}

void net__gemm_nt(float *C, float *C2, const float *A, const float *Bm, const float *bias, size_t M,
                  size_t N, size_t K, size_t lda, size_t ldb, size_t ldc, float *scratch)
{
    if (!M || !N) return;
    const int lvl = K ? gemm_level() : 0;
    if (lvl == 0) {
        nt_ref(C, C2, A, Bm, bias, M, N, K, lda, ldb, ldc);
        return;
    }
    if (scratch) {
        /* C^T (N, M) = B (N, K) . A^T (K, M) by the broadcast kernel, which beats the dot
         * kernel's L2-bound A reads; A^T and C^T are the small batch-sized operands. */
        float *at = scratch, *ct = scratch + K * M;
        const int T = gemm_threads(M, N, 16);
        (void)T; // read by the pragma only
        transpose(at, A, M, K, lda, T);
        const struct bc_out o = {.C = ct, .ldc = M};
        bc_run(&o, lvl, Bm, at, N, M, K, ldb, 1, M);
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
        for (size_t m = 0; m < M; m++) {
            float *c = C + m * ldc, *c2 = C2 ? C2 + m * ldc : NULL;
            for (size_t n = 0; n < N; n++) {
                const float v = ct[n * M + m] + (bias ? bias[n] : 0.0f);
                c[n] = v;
                if (c2) c2[n] = v > 0.0f ? v : 0.0f;
            }
        }
        return;
    }
#if NET__GSIMD
    const size_t mr = lvl == 2 ? 4 : 2, nr = 4;
    const size_t tm = (M + mr - 1) / mr, tn = (N + nr - 1) / nr;
    const int T = gemm_threads(M, N, K);
    (void)T; // read by the pragma only: a build without OpenMP (the fuzzers') ignores it
    // Column tiles outer (their B rows stay in L1), row tiles inner.
#pragma omp parallel for schedule(static) num_threads(T) if (T > 1)
    for (size_t jn = 0; jn < tn; jn++)
        for (size_t im = 0; im < tm; im++) {
            if (lvl == 2)
                nt_tile512(C, C2, A, Bm, bias, M, N, K, lda, ldb, ldc, im * mr, jn * nr);
            else
                nt_tile256(C, C2, A, Bm, bias, M, N, K, lda, ldb, ldc, im * mr, jn * nr);
        }
#endif
}

static void gemm_bc(const struct bc_out *o, const float *A, const float *Bm, size_t M, size_t N,
                    size_t K, size_t rsa, size_t csa, size_t ldb)
{
    if (!M || !N) return;
    const int lvl = gemm_level();
    if (lvl == 0 || K == 0) {
        float *C = o->C;
        const float *gate = o->gate;
        const size_t ldc = o->ldc;
        if (K == 0) {
            for (size_t m = 0; m < M; m++)
                for (size_t n = 0; n < N; n++) {
                    float *c = C + m * ldc + n;
                    if (!o->accum || (gate && !(gate[m * ldc + n] >= 0.0f))) *c = 0.0f;
                }
        } else {
            bc_ref(C, A, Bm, gate, M, N, K, rsa, csa, ldb, ldc, o->accum);
        }
        if (o->sgd)
            for (size_t m = 0; m < M; m++) net__sgd_span(o->sgd, C + m * ldc, m * ldc, N);
        return;
    }
    bc_run(o, lvl, A, Bm, M, N, K, rsa, csa, ldb);
}

void net__gemm_bc(float *C, const float *A, const float *Bm, const float *gate, size_t M, size_t N,
                  size_t K, size_t rsa, size_t csa, size_t ldb, size_t ldc, int accum)
{
    const struct bc_out o = {.C = C, .gate = gate, .ldc = ldc, .accum = accum};
    gemm_bc(&o, A, Bm, M, N, K, rsa, csa, ldb);
}

void net__gemm_bc_sgd(float *C, const float *A, const float *Bm, size_t M, size_t N, size_t K,
                      size_t rsa, size_t csa, size_t ldb, size_t ldc, const struct net__sgd *s)
{
    const struct bc_out o = {.C = C, .ldc = ldc, .sgd = s};
    gemm_bc(&o, A, Bm, M, N, K, rsa, csa, ldb);
}
