/* net/conv_direct.c: direct kernels for stride-1 "same" convolutions (output size = input
 * size: S == 1, 2P == K - 1, K <= NET__DMAXK) on (C, B, H, W) activations, with AVX-512
 * (or AVX2 + FMA).
 *
 * A channel plane of a batch is N = B*H*W contiguous floats, so tap (ki, kj) of output pixel
 * p reads input pixel p + off(ki, kj) with off = (ki - P) * W + (kj - P): one unaligned vector
 * load per 16 pixels. Taps that fall outside the image (or wrap into the next row or sample)
 * are zeroed by a 16-bit mask; masked AVX-512 loads never fault on masked-off lanes, so the
 * borders need no padded copy. The masks depend only on p mod H*W, so one table of `period`
 * vectors (period = H*W / gcd(H*W, 16)) serves every sample.
 *
 *   forward     out[o][p]  = b[o] + sum_{c,t} W[o][c][t] in[c][p + off_t]     (tile: 8 o x 48 p)
 *   data grad   din[c][p] += sum_{o,t} W[o][c][K*K-1-t] dout[o][p + off_t]   (the same kernel)
 *   weight grad dW[o][c][t] += sum_p dout[o][p] in[c][p + off_t]     (8 o x one kernel row)
 *
 * No im2col matrix is written and nothing is packed per step except the weights (a few KiB).
 * Used by net__conv_fwd / net__conv_bwd (kernels.c) when net__conv_direct_ok says so; the
 * im2col + sgemm path stays for strided, valid-padding and 1x1 convolutions and for CPUs
 * with neither AVX-512 nor AVX2. The AVX2 + FMA versions (8 lanes, 16 registers) run the
 * same algorithms on smaller blocks (6 output channels x 16 pixels; 4 rows x one kernel row)
 * and mask with int32 vectors built from the same table. Owner: net/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define NET__DIRECT 1
#include <immintrin.h>
#define NET__AVX512 __attribute__((target("avx512f")))
#define NET__INLINE __attribute__((always_inline)) inline
#else
#define NET__DIRECT 0
#endif

#define NET__DMAXK 7  // largest kernel the direct path takes
#define NET__DPB 1024 // pixels per block of the weight-gradient reduction (L1-sized)
#define NET__DTILE 48 // output pixels per forward tile: 3 vectors of 16
#define NET__DMR 8    // output channels per forward tile

static size_t gcd_size(size_t a, size_t b)
{
    while (b) {
        size_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Per-call geometry: tap offsets and the mask table (borrowed from the caller's scratch). */
struct dconv {
    size_t N, KK, period;
    ptrdiff_t off[NET__DMAXK * NET__DMAXK];
    const uint16_t *mask; // [period][KK]
    const int32_t *mvec;  // AVX2 only: the same masks as int32 lanes, [period][KK][16]
};

/* Both answers are computed once; relaxed atomics keep the first calls from two threads
 * (trainer, daemon loop) race-free. */
int net__cpu_avx512(void)
{
#if NET__DIRECT
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") ? 1 : 0;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
#else
    return 0;
#endif
}

int net__cpu_avx2(void)
{
#if NET__DIRECT
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
#else
    return 0;
#endif
}

/* The CPU's best level (2 AVX-512, 1 AVX2 + FMA, 0 none), at most max. */
static int simd_best(int max)
{
    int v = net__cpu_avx512() ? 2 : net__cpu_avx2() ? 1 : 0;
    return v < max ? v : max;
}

int net__simd_level(int *cached, int max, const char *env, const char *off_word)
{
    int v = __atomic_load_n(cached, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv(env);
        v = simd_best(max);
        if (e && strcmp(e, off_word) == 0) v = 0;
        if (e && strcmp(e, "avx2") == 0 && v > 1) v = 1;
        __atomic_store_n(cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

int net__simd_force(int *cached, int max, const char *env, const char *off_word, int level)
{
    int old = net__simd_level(cached, max, env, off_word);
    int best = simd_best(max);
    __atomic_store_n(cached, level < best ? level : best, __ATOMIC_RELAXED);
    return old;
}

/* The direct kernels' instruction set: 2 AVX-512, 1 AVX2 + FMA, 0 none (im2col). From the
 * CPU, lowered by EVOWIDTH_CONV=avx2 or =im2col; tests override it. */
static int direct_level_cached = -1;

static int direct_level(void)
{
    return net__simd_level(&direct_level_cached, 2, "EVOWIDTH_CONV", "im2col");
}

int net__conv_direct_level(void)
{
    return NET__DIRECT ? direct_level() : 0;
}

int net__conv_direct_force(int level)
{
    return net__simd_force(&direct_level_cached, 2, "EVOWIDTH_CONV", "im2col", level);
}

static int direct_cpu(void)
{
    return direct_level() > 0;
}

int net__conv_direct_ok(const struct net__conv *g)
{
    return direct_cpu() && net__conv_direct_shape(g);
}

int net__conv_direct_shape(const struct net__conv *g)
{
    return g->S == 1 && g->K > 1 && g->K <= NET__DMAXK && 2 * g->P == g->K - 1 && g->OH == g->H &&
           g->OW == g->W;
}

static size_t direct_period(const struct net__conv *g)
{
    size_t HW = g->H * g->W;
    return HW / gcd_size(HW, 16);
}

/* Rows per weight-gradient block for kernel size K: MR*K accumulators + K inputs + 1 <= 32. */
static int dw_rows(size_t K)
{
    return K <= 3 ? 8 : K <= 5 ? 4 : 3;
}

/* Rows per AVX2 weight-gradient block: MR*K accumulators + K inputs + 1 below 16, a register
 * left for the masks (K 3 at 4 rows filled all 16 and GCC reloaded each gradient vector for
 * each FMA: ~12% slower on Zen 3). */
static int dw_rows2(size_t K)
{
    return K <= 3 ? 3 : K <= 5 ? 2 : 1;
}

/* Floats of vector partials the weight gradient keeps: one [MR][K][16] block per item, then
 * the bias gradient's [nob * MR][16]. */
static size_t dw_part_floats(size_t C, size_t OC, size_t K)
{
    size_t mr = (size_t)dw_rows(K), nob = (OC + mr - 1) / mr;
    size_t mr2 = (size_t)dw_rows2(K), nob2 = (OC + mr2 - 1) / mr2; // AVX2's blocks
    size_t rows = nob * mr > nob2 * mr2 ? nob * mr : nob2 * mr2;
    return rows * C * K * K * 16 + rows * 16;
}

size_t net__conv_direct_scratch(const struct net__conv *g)
{
    size_t KK = g->K * g->K, big = g->C > g->OC ? g->C : g->OC;
    size_t mask_floats = (direct_period(g) * KK + 1) / 2;
    size_t mvec = direct_period(g) * KK * 16; // AVX2: the masks as int32 vectors
    // Packed weights: 8-row blocks (AVX-512) or 6-row ones (AVX2); 24 rows cover both.
    size_t wpk = (big + 23) / 24 * 24 * KK * big, part = dw_part_floats(g->C, g->OC, g->K);
    return mask_floats + 16 + mvec + (wpk > part ? wpk : part);
}

/* Fills d and the mask table at the start of scratch; returns the float scratch after it
 * (16-float aligned offset) for packed weights. */
static float *direct_setup(struct dconv *d, float *scratch, const struct net__conv *g, size_t B)
{
    const size_t K = g->K, H = g->H, W = g->W, HW = H * W;
    const long P = (long)g->P;
    d->N = B * HW;
    d->KK = K * K;
    d->period = direct_period(g);
    for (size_t ki = 0; ki < K; ki++)
        for (size_t kj = 0; kj < K; kj++)
            d->off[ki * K + kj] = ((long)ki - P) * (long)W + ((long)kj - P);
    uint16_t *m = (uint16_t *)scratch;
    for (size_t v = 0; v < d->period; v++) {
        uint16_t r[NET__DMAXK] = {0}, c[NET__DMAXK] = {0};
        size_t s = (v * 16) % HW, y = s / W, x = s % W;
        for (unsigned l = 0; l < 16; l++) {
            for (size_t k = 0; k < K; k++) {
                long yy = (long)y + (long)k - P, xx = (long)x + (long)k - P;
                if (yy >= 0 && yy < (long)H) r[k] |= (uint16_t)(1u << l);
                if (xx >= 0 && xx < (long)W) c[k] |= (uint16_t)(1u << l);
            }
            if (++x == W) {
                x = 0;
                if (++y == H) y = 0;
            }
        }
        for (size_t ki = 0; ki < K; ki++)
            for (size_t kj = 0; kj < K; kj++)
                m[v * d->KK + ki * K + kj] = (uint16_t)(r[ki] & c[kj]);
    }
    d->mask = m;
    size_t used = (d->period * d->KK + 1) / 2;
    float *rest = scratch + (used + 15) / 16 * 16;
    d->mvec = NULL;
    if (direct_level() == 1) { // AVX2 masks its loads with vectors: lane l = -1 if bit l set
        int32_t *mv = (int32_t *)rest;
        for (size_t i = 0; i < d->period * d->KK; i++)
            for (unsigned l = 0; l < 16; l++) mv[i * 16 + l] = (m[i] >> l) & 1 ? -1 : 0;
        d->mvec = mv;
        rest += d->period * d->KK * 16;
    }
    return rest;
}

static uint16_t tail_mask(size_t p0, size_t N)
{
    if (p0 >= N) return 0;
    return N - p0 >= 16 ? 0xFFFF : (uint16_t)((1u << (N - p0)) - 1);
}

#if NET__DIRECT

/* The 16 lanes of v summed pairwise into 8 doubles (the low and high halves widened). */
NET__AVX512 static NET__INLINE __m512d lanes_pd(__m512 v)
{
    return _mm512_add_pd(
        _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

/* One forward tile: out rows [o0, o0 + rows) (rows <= 8) at pixels [p0, p0 + 48).
 * wp: this block's packed weights [Cin][KK][8]; km: the tile's masks [KK][3], tail included.
 * Channel-outer order: all taps of one input channel run while its few cache lines are hot
 * (the planes are N floats apart, often a multiple of 4 KiB, so the lines of many channels
 * would fight over the same L1 sets). */
NET__AVX512 static void direct_tile(float *out, const float *in, const float *wp, const float *bias,
                                    size_t Cin, size_t o0, size_t rows, size_t p0,
                                    const __mmask16 *km, const struct dconv *d,
                                    const struct net__epi *e, double *st)
{
    const size_t N = d->N, KK = d->KK;
    __m512 acc[NET__DMR][3];
#pragma GCC unroll 8
    for (int m = 0; m < NET__DMR; m++) acc[m][0] = acc[m][1] = acc[m][2] = _mm512_setzero_ps();
    const float *base = in + p0, *w = wp;
    for (size_t c = 0; c < Cin; c++, base += N) {
        for (size_t t = 0; t < KK; t++, w += NET__DMR) {
            const float *src = base + d->off[t];
            const __m512 a0 = _mm512_maskz_loadu_ps(km[3 * t], src);
            const __m512 a1 = _mm512_maskz_loadu_ps(km[3 * t + 1], src + 16);
            const __m512 a2 = _mm512_maskz_loadu_ps(km[3 * t + 2], src + 32);
#pragma GCC unroll 8
            for (int m = 0; m < NET__DMR; m++) {
                const __m512 wv = _mm512_set1_ps(w[m]);
                acc[m][0] = _mm512_fmadd_ps(wv, a0, acc[m][0]);
                acc[m][1] = _mm512_fmadd_ps(wv, a1, acc[m][1]);
                acc[m][2] = _mm512_fmadd_ps(wv, a2, acc[m][2]);
            }
        }
    }
    const uint16_t tm[3] = {tail_mask(p0, N), tail_mask(p0 + 16, N), tail_mask(p0 + 32, N)};
#pragma GCC unroll 8
    for (int m = 0; m < NET__DMR; m++) {
        if ((size_t)m >= rows) break;
        const size_t at = (o0 + (size_t)m) * N + p0;
        float *dst = out + at;
        const __m512 bv = _mm512_set1_ps(bias ? bias[o0 + (size_t)m] : 0.0f);
        for (int j = 0; j < 3; j++) {
            __m512 v = _mm512_add_ps(acc[m][j], bv);
            if (e->accum) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tm[j], dst + 16 * j));
            if (e->add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(tm[j], e->add + at + 16 * j));
            if (e->gate) {
                const __m512 gv = _mm512_maskz_loadu_ps(tm[j], e->gate + at + 16 * j);
                v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_GT_OQ), v);
            }
            if (e->relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
            _mm512_mask_storeu_ps(dst + 16 * j, tm[j], v);
            acc[m][j] = _mm512_maskz_mov_ps(tm[j], v); // what was stored, 0 past the end
        }
        if (st) { // the channel's sum and sum of squares: 3 vectors to 16 lanes, then double
            const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]), acc[m][2]);
            __m512 q = _mm512_mul_ps(acc[m][0], acc[m][0]);
            q = _mm512_fmadd_ps(acc[m][1], acc[m][1], q);
            q = _mm512_fmadd_ps(acc[m][2], acc[m][2], q);
            st[2 * (o0 + (size_t)m)] += _mm512_reduce_add_pd(lanes_pd(s));
            st[2 * (o0 + (size_t)m) + 1] += _mm512_reduce_add_pd(lanes_pd(q));
        }
    }
}

/* All output channels of the 48 pixels at tile ti. */
static void direct_column(float *out, const float *in, const float *wp, const float *bias,
                          size_t Cin, size_t Cout, size_t ti, const struct dconv *d,
                          const struct net__epi *e, double *st)
{
    const size_t N = d->N, KK = d->KK, nob = (Cout + 7) / 8, blk = KK * Cin * NET__DMR;
    const size_t p0 = ti * NET__DTILE;
    __mmask16 km[NET__DMAXK * NET__DMAXK * 3];
    for (size_t j = 0; j < 3; j++) {
        const uint16_t *mr = d->mask + ((p0 / 16 + j) % d->period) * KK;
        const uint16_t tm = tail_mask(p0 + 16 * j, N);
        for (size_t t = 0; t < KK; t++) km[3 * t + j] = (__mmask16)(mr[t] & tm);
    }
    for (size_t ob = 0; ob < nob; ob++) {
        size_t o0 = ob * NET__DMR, rows = Cout - o0 < NET__DMR ? Cout - o0 : NET__DMR;
        direct_tile(out, in, wp + ob * blk, bias, Cin, o0, rows, p0, km, d, e, st);
    }
}

/* out (Cout, N) (+)= direct conv of in (Cin, N) with packed weights wp [ob][Cin][KK][8];
 * e->stats (when not NULL) gets each channel's sum and sum of squares of what is stored, one
 * private copy per thread (an OpenMP array reduction) added into it at the end.
 * (No target attribute here: GCC's outlined OpenMP body would not inherit it.) */
static void direct_run(float *out, const float *in, const float *wp, const float *bias, size_t Cin,
                       size_t Cout, const struct dconv *d, const struct net__epi *e)
{
    const size_t tiles = (d->N + NET__DTILE - 1) / NET__DTILE;
    const int par = tiles * Cout * Cin * d->KK > 200000;
    double *st = e->stats;
    (void)par; // read by the pragmas only
    if (st) {
#pragma omp parallel for schedule(static) reduction(+ : st[:2 * Cout]) if (par)
        for (size_t ti = 0; ti < tiles; ti++)
            direct_column(out, in, wp, bias, Cin, Cout, ti, d, e, st);
    } else {
#pragma omp parallel for schedule(static) if (par)
        for (size_t ti = 0; ti < tiles; ti++)
            direct_column(out, in, wp, bias, Cin, Cout, ti, d, e, NULL);
    }
}

/* Weight-gradient block: for input channel c and kernel row ki, the K taps of MR output
 * rows summed over pixels [pb, pe) into the vector partials part[MR][K][16]. The output
 * gradient of those rows comes interleaved, dbuf[vector][MR][16] (zero past the batch end),
 * so its MR loads share one pointer. Per 16 pixels: K input loads (held), MR gradient loads
 * (streamed), MR*K FMAs. MR and K are constants after inlining. */
NET__AVX512 static NET__INLINE void dw_block(float *part, const float *dbuf, const float *in,
                                             size_t c, size_t ki, int MR, int K, size_t pb,
                                             size_t pe, const struct dconv *d)
{
    const size_t N = d->N, KK = d->KK, t0 = ki * (size_t)K;
    __m512 acc[8][NET__DMAXK];
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 7
        for (int t = 0; t < K; t++) acc[m][t] = _mm512_loadu_ps(part + (m * K + t) * 16);
    const float *src = in + c * N + d->off[t0]; // tap (ki, kj) reads src + p + kj
    size_t row = (pb / 16) % d->period;
    const uint16_t *mk = d->mask + row * KK + t0;
    const size_t pfull = pe == N ? pb + (pe - pb) / 16 * 16 : pe; // full vectors end here
    size_t p = pb;
    for (; p < pfull; p += 16, dbuf += MR * 16) {
        __m512 a[NET__DMAXK];
#pragma GCC unroll 7
        for (int t = 0; t < K; t++)
            a[t] = _mm512_maskz_loadu_ps(_load_mask16((__mmask16 *)(mk + t)), src + p + t);
        if (++row == d->period)
            row = 0, mk = d->mask + t0;
        else
            mk += KK;
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m512 dv = _mm512_load_ps(dbuf + m * 16);
            __asm__("" : "+v"(dv)); // one load, held for its K FMAs (not one load per FMA)
#pragma GCC unroll 7
            for (int t = 0; t < K; t++) acc[m][t] = _mm512_fmadd_ps(dv, a[t], acc[m][t]);
        }
    }
    if (p < pe) { // the batch's partial last vector: input taps masked to the tail too
        const uint16_t tm = tail_mask(p, N);
        __m512 a[NET__DMAXK];
#pragma GCC unroll 7
        for (int t = 0; t < K; t++)
            a[t] = _mm512_maskz_loadu_ps((__mmask16)(mk[t] & tm), src + p + t);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            const __m512 dv = _mm512_load_ps(dbuf + m * 16);
#pragma GCC unroll 7
            for (int t = 0; t < K; t++) acc[m][t] = _mm512_fmadd_ps(dv, a[t], acc[m][t]);
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 7
        for (int t = 0; t < K; t++) _mm512_storeu_ps(part + (m * K + t) * 16, acc[m][t]);
}

#define NET__DW(mr, k) dw_block(part, dbuf, in, c, ki, mr, k, pb, pe, d)

/* One item with mr (<= dw_rows(K)) rows; K is 3, 5 or 7 (same-size convolutions have odd
 * kernels). Each (mr, K) pair is its own unrolled kernel. */
NET__AVX512 static void dw_item(float *part, const float *dbuf, const float *in, size_t c,
                                size_t ki, size_t mr, size_t pb, size_t pe, const struct dconv *d,
                                size_t K)
{
    if (K == 3) {
        switch (mr) {
        case 8: NET__DW(8, 3); break;
        case 7: NET__DW(7, 3); break;
        case 6: NET__DW(6, 3); break;
        case 5: NET__DW(5, 3); break;
        case 4: NET__DW(4, 3); break;
        case 3: NET__DW(3, 3); break;
        case 2: NET__DW(2, 3); break;
        default: NET__DW(1, 3); break;
        }
    } else if (K == 5) {
        switch (mr) {
        case 4: NET__DW(4, 5); break;
        case 3: NET__DW(3, 5); break;
        case 2: NET__DW(2, 5); break;
        default: NET__DW(1, 5); break;
        }
    } else {
        switch (mr) {
        case 3: NET__DW(3, 7); break;
        case 2: NET__DW(2, 7); break;
        default: NET__DW(1, 7); break;
        }
    }
}
#undef NET__DW

/* dbuf[v][m][16] = dout[o0 + m][pb + 16 v + l] for m < rows, zero past N. */
NET__AVX512 static void dw_pack(float *dbuf, const float *dout, size_t o0, size_t rows, size_t pb,
                                size_t pe, size_t N)
{
    for (size_t p = pb; p < pe; p += 16) {
        const __mmask16 tm = (__mmask16)tail_mask(p, N);
        for (size_t m = 0; m < rows; m++, dbuf += 16)
            _mm512_store_ps(dbuf, _mm512_maskz_loadu_ps(tm, dout + (o0 + m) * N + p));
    }
}


// ---- AVX2 + FMA (8 lanes, 16 registers): the same algorithms, smaller blocks -------------

#define NET__AVX2 __attribute__((target("avx2,fma")))
#define NET__DMR2 6 // output channels per AVX2 forward tile (and packed block)

/* Lane mask of the first n (0..16) pixels of a 16-pixel unit, as two int32 vectors. */
NET__AVX2 static void tail_vec2(__m256i *lo, __m256i *hi, size_t p0, size_t N)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int n = p0 >= N ? 0 : N - p0 >= 16 ? 16 : (int)(N - p0);
    *lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
    *hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), idx);
}

NET__AVX2 static NET__INLINE double hsum4_pd(__m256d v)
{
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* Forward tile, AVX2: the rows [o0, o0 + rows) (rows <= 6) of a 6-row packed block
 * (wp: [Cin][KK][6]) at the 16 pixels of unit p0; km: [KK][2] mask vectors (tail included).
 * 12 accumulators; per tap and input channel 2 masked loads (and their 2 masks) and 6
 * broadcasts for 12 FMAs. (A 4-row tile, 8 accumulators, ran at ~60% of the FMA limit on
 * Zen 3: its 8 loads per 8 FMAs and FMA latency left the two pipes idle.) */
NET__AVX2 static void direct_tile2(float *out, const float *in, const float *wp, const float *bias,
                                   size_t Cin, size_t o0, size_t rows, size_t p0, const __m256i *km,
                                   const struct dconv *d, const struct net__epi *e, double *st)
{
    const size_t N = d->N, KK = d->KK;
    __m256 acc[NET__DMR2][2];
#pragma GCC unroll 6
    for (int m = 0; m < NET__DMR2; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    const float *base = in + p0, *w = wp;
    for (size_t c = 0; c < Cin; c++, base += N)
        for (size_t t = 0; t < KK; t++, w += NET__DMR2) {
            const float *src = base + d->off[t];
            const __m256 a0 = _mm256_maskload_ps(src, km[2 * t]);
            const __m256 a1 = _mm256_maskload_ps(src + 8, km[2 * t + 1]);
#pragma GCC unroll 6
            for (int m = 0; m < NET__DMR2; m++) {
                const __m256 wv = _mm256_broadcast_ss(w + m);
                acc[m][0] = _mm256_fmadd_ps(wv, a0, acc[m][0]);
                acc[m][1] = _mm256_fmadd_ps(wv, a1, acc[m][1]);
            }
        }
    __m256i tm[2];
    tail_vec2(&tm[0], &tm[1], p0, N);
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int m = 0; m < NET__DMR2; m++) {
        if ((size_t)m >= rows) break;
        const size_t o = o0 + (size_t)m, at = o * N + p0;
        float *dst = out + at;
        const __m256 bv = _mm256_set1_ps(bias ? bias[o] : 0.0f);
        for (int j = 0; j < 2; j++) {
            __m256 v = _mm256_add_ps(acc[m][j], bv);
            if (e->accum) v = _mm256_add_ps(v, _mm256_maskload_ps(dst + 8 * j, tm[j]));
            if (e->add) v = _mm256_add_ps(v, _mm256_maskload_ps(e->add + at + 8 * j, tm[j]));
            if (e->gate) {
                const __m256 gv = _mm256_maskload_ps(e->gate + at + 8 * j, tm[j]);
                v = _mm256_and_ps(v, _mm256_cmp_ps(gv, zero, _CMP_GT_OQ));
            }
            if (e->relu) v = _mm256_max_ps(v, zero);
            _mm256_maskstore_ps(dst + 8 * j, tm[j], v);
            acc[m][j] = _mm256_and_ps(v, _mm256_castsi256_ps(tm[j])); // 0 past the end
        }
        if (st) { // as direct_tile: 2 vectors to 8 lanes, then double
            const __m256 s = _mm256_add_ps(acc[m][0], acc[m][1]);
            const __m256 q =
                _mm256_fmadd_ps(acc[m][1], acc[m][1], _mm256_mul_ps(acc[m][0], acc[m][0]));
            st[2 * o] += hsum4_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(s)),
                                                _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1))));
            st[2 * o + 1] += hsum4_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(q)),
                                                    _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1))));
        }
    }
}

NET__AVX2 static void direct_unit2(float *out, const float *in, const float *wp, const float *bias,
                                   size_t Cin, size_t Cout, size_t p0, const struct dconv *d,
                                   const struct net__epi *e, double *st)
{
    const size_t N = d->N, KK = d->KK, nob = (Cout + NET__DMR2 - 1) / NET__DMR2;
    const size_t blk = KK * Cin * NET__DMR2;
    __m256i km[NET__DMAXK * NET__DMAXK * 2];
    __m256i tl, th;
    tail_vec2(&tl, &th, p0, N);
    const int32_t *mv = d->mvec + ((p0 / 16) % d->period) * KK * 16;
    for (size_t t = 0; t < KK; t++) {
        km[2 * t] = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(mv + t * 16)), tl);
        km[2 * t + 1] =
            _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(mv + t * 16 + 8)), th);
    }
    for (size_t ob = 0; ob < nob; ob++) {
        const size_t o0 = ob * NET__DMR2, rows = Cout - o0 < NET__DMR2 ? Cout - o0 : NET__DMR2;
        direct_tile2(out, in, wp + ob * blk, bias, Cin, o0, rows, p0, km, d, e, st);
    }
}

static void direct_run2(float *out, const float *in, const float *wp, const float *bias, size_t Cin,
                        size_t Cout, const struct dconv *d, const struct net__epi *e)
{
    const size_t units = (d->N + 15) / 16;
    const int par = units * Cout * Cin * d->KK > 200000;
    double *st = e->stats;
    (void)par; // read by the pragmas only
    if (st) {
#pragma omp parallel for schedule(static) reduction(+ : st[:2 * Cout]) if (par)
        for (size_t u = 0; u < units; u++)
            direct_unit2(out, in, wp, bias, Cin, Cout, u * 16, d, e, st);
    } else {
#pragma omp parallel for schedule(static) if (par)
        for (size_t u = 0; u < units; u++)
            direct_unit2(out, in, wp, bias, Cin, Cout, u * 16, d, e, NULL);
    }
}

/* Weight gradient, AVX2: MR rows x the K taps of kernel row ki of input channel c, over
 * pixels [pb, pe), into part[MR][K][16] (lanes 8..15 stay 0). dbuf as for AVX-512. (Whole
 * loads and an AND instead of the masked loads, where the taps lie inside the tensor, were
 * tried: 1.6x slower, GCC then kept the accumulators in memory.) */
NET__AVX2 static NET__INLINE void dw_block2(float *part, const float *dbuf, const float *in,
                                            size_t c, size_t ki, int MR, int K, size_t pb,
                                            size_t pe, const struct dconv *d)
{
    const size_t N = d->N, KK = d->KK, t0 = ki * (size_t)K;
    __m256 acc[4][NET__DMAXK];
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 7
        for (int t = 0; t < K; t++) acc[m][t] = _mm256_loadu_ps(part + (m * K + t) * 16);
    const float *src = in + c * N + d->off[t0];
    size_t row = (pb / 16) % d->period;
    const size_t pfull = pe == N ? pb + (pe - pb) / 16 * 16 : pe; // full vectors end here
    for (size_t p = pb; p < pe; p += 16, dbuf += MR * 16) {
        const int32_t *mv = d->mvec + (row * KK + t0) * 16;
        if (++row == d->period) row = 0;
        __m256i tl = _mm256_set1_epi32(-1), th = tl;
        if (p >= pfull) tail_vec2(&tl, &th, p, N); // the batch's partial last vector
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i tm = h ? th : tl;
            __m256 a[NET__DMAXK];
#pragma GCC unroll 7
            for (int t = 0; t < K; t++) {
                const __m256i mk = _mm256_and_si256(
                    _mm256_loadu_si256((const __m256i *)(mv + t * 16 + 8 * h)), tm);
                a[t] = _mm256_maskload_ps(src + p + 8 * h + t, mk);
            }
#pragma GCC unroll 4
            for (int m = 0; m < MR; m++) {
                __m256 dv = _mm256_loadu_ps(dbuf + m * 16 + 8 * h);
                // In a register: GCC otherwise folds dv into each of the K FMAs as a memory
                // operand (K loads of it instead of one).
                __asm__("" : "+x"(dv));
#pragma GCC unroll 7
                for (int t = 0; t < K; t++) acc[m][t] = _mm256_fmadd_ps(dv, a[t], acc[m][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++)
#pragma GCC unroll 7
        for (int t = 0; t < K; t++) _mm256_storeu_ps(part + (m * K + t) * 16, acc[m][t]);
}


#define NET__DW2(mr, k) dw_block2(part, dbuf, in, c, ki, mr, k, pb, pe, d)
NET__AVX2 static void dw_item2(float *part, const float *dbuf, const float *in, size_t c, size_t ki,
                               size_t mr, size_t pb, size_t pe, const struct dconv *d, size_t K)
{
    if (K == 3) {
        switch (mr) {
        case 3: NET__DW2(3, 3); break;
        case 2: NET__DW2(2, 3); break;
        default: NET__DW2(1, 3); break;
        }
    } else if (K == 5) {
        if (mr == 2)
            NET__DW2(2, 5);
        else
            NET__DW2(1, 5);
    } else {
        NET__DW2(1, 7);
    }
}
#undef NET__DW2

NET__AVX2 static void dw_pack2(float *dbuf, const float *dout, size_t o0, size_t rows, size_t pb,
                               size_t pe, size_t N)
{
    for (size_t p = pb; p < pe; p += 16) {
        __m256i tl, th;
        tail_vec2(&tl, &th, p, N);
        for (size_t m = 0; m < rows; m++, dbuf += 16) {
            const float *src = dout + (o0 + m) * N + p;
            _mm256_storeu_ps(dbuf, _mm256_maskload_ps(src, tl));
            _mm256_storeu_ps(dbuf + 8, _mm256_maskload_ps(src + 8, th));
        }
    }
}

/* dw (OC, C, KK) += sum_p dout (OC, N) x shifted in (C, N). An item is (row block, input
 * channel, kernel row); pixels go in blocks of NET__DPB, and each thread copies the block's
 * output gradient rows of its current row block into an L1-sized interleaved buffer, reused
 * by every (channel, kernel row) item of that block. Each item owns its partials and its dw
 * entries, and every pixel block splits the same items the same static way, so threads
 * never share an entry. */
static void direct_dw(float *dw, float *db, float *part, const float *dout, const float *in,
                      size_t C, size_t OC, size_t K, const struct dconv *d, int avx2)
{
    const size_t mr = (size_t)(avx2 ? dw_rows2(K) : dw_rows(K));
    const size_t nob = (OC + mr - 1) / mr, items = nob * C * K;
    const size_t N = d->N, blk = mr * K * 16;
    /* The bias gradient db[o] += sum_p dout[o][p] rides on the packing: item (ob, c 0, ki 0)
     * adds its packed rows into bpart[o][16]. Static schedules give that item the same thread
     * in every pixel block, so each lane has one writer. */
    float *bpart = part + items * blk;
    memset(part, 0, (items * blk + (db ? nob * mr * 16 : 0)) * sizeof(float));
#pragma omp parallel if (N * OC * C * d->KK > 200000)
    {
        _Alignas(64) float dbuf[8 * NET__DPB];
        for (size_t pb = 0; pb < N; pb += NET__DPB) {
            const size_t pe = pb + NET__DPB < N ? pb + NET__DPB : N;
            size_t packed = (size_t)-1;
#pragma omp for schedule(static) nowait
            for (size_t it = 0; it < items; it++) {
                size_t ki = it % K, c = (it / K) % C, ob = it / (K * C), o0 = ob * mr;
                size_t rows = OC - o0 < mr ? OC - o0 : mr;
                if (ob != packed) {
                    if (avx2)
                        dw_pack2(dbuf, dout, o0, rows, pb, pe, N);
                    else
                        dw_pack(dbuf, dout, o0, rows, pb, pe, N);
                    packed = ob;
                }
                if (db && c == 0 && ki == 0) { // dbuf: [vector][rows][16], 0 past the end
                    const float *v = dbuf;
                    for (size_t p = pb; p < pe; p += 16)
                        for (size_t m = 0; m < rows; m++, v += 16)
                            for (int l = 0; l < 16; l++) bpart[(o0 + m) * 16 + l] += v[l];
                }
                if (avx2)
                    dw_item2(part + it * blk, dbuf, in, c, ki, rows, pb, pe, d, K);
                else
                    dw_item(part + it * blk, dbuf, in, c, ki, rows, pb, pe, d, K);
            }
        }
#pragma omp for schedule(static)
        for (size_t it = 0; it < items; it++) {
            size_t ki = it % K, c = (it / K) % C, o0 = it / (K * C) * mr;
            const float *pp = part + it * blk;
            for (size_t m = 0; m < mr && o0 + m < OC; m++)
                for (size_t kj = 0; kj < K; kj++) {
                    const float *v = pp + (m * K + kj) * 16;
                    float s = 0.0f;
                    for (int l = 0; l < 16; l++) s += v[l];
                    dw[((o0 + m) * C + c) * d->KK + ki * K + kj] += s;
                }
        }
        if (db) { // bpart is complete: the loop above ended with a barrier
#pragma omp for schedule(static)
            for (size_t o = 0; o < OC; o++) {
                float s = 0.0f;
                for (int l = 0; l < 16; l++) s += bpart[o * 16 + l];
                db[o] += s;
            }
        }
    }
}

#endif // NET__DIRECT

/* Packs w (OC, C, KK) for direct_run (mr = 8) or direct_run2 (mr = 6), mr output rows at a
 * time, zero rows past the end:
 * forward      wp[ob][c][t][m] = w[o = ob*mr+m][c][t]
 * data grad    wp[ob][o][t][m] = w[o][c = ob*mr+m][KK-1-t]   (flip: transposed, taps flipped) */
static void pack_weights(float *wp, const float *w, size_t C, size_t OC, size_t KK, int flip,
                         size_t mr)
{
    const size_t rows = flip ? C : OC, inner = flip ? OC : C, nob = (rows + mr - 1) / mr;
    for (size_t ob = 0; ob < nob; ob++)
        for (size_t i = 0; i < inner; i++)
            for (size_t t = 0; t < KK; t++)
                for (size_t m = 0; m < mr; m++) {
                    size_t r = ob * mr + m;
                    *wp++ = r >= rows ? 0.0f
                            : flip    ? w[(i * C + r) * KK + (KK - 1 - t)]
                                      : w[(r * C + i) * KK + t];
                }
}

void net__conv_direct_fwd(float *out, float *scratch, const float *inp, const float *w,
                          const float *b, const struct net__conv *g, size_t B,
                          const struct net__epi *e)
{
#if NET__DIRECT
    static const struct net__epi plain = {0};
    struct dconv d;
    float *wp = direct_setup(&d, scratch, g, B);
    pack_weights(wp, w, g->C, g->OC, d.KK, 0, d.mvec ? NET__DMR2 : NET__DMR);
    if (d.mvec)
        direct_run2(out, inp, wp, b, g->C, g->OC, &d, e ? e : &plain);
    else
        direct_run(out, inp, wp, b, g->C, g->OC, &d, e ? e : &plain);
#else
    (void)out, (void)scratch, (void)inp, (void)w, (void)b, (void)g, (void)B, (void)e;
#endif
}

void net__conv_direct_bwd(float *dinp, float *dw, float *db, float *scratch, const float *dout,
                          const float *inp, const float *w, const struct net__conv *g, size_t B,
                          const struct net__epi *e)
{
#if NET__DIRECT
    static const struct net__epi plain = {0};
    struct dconv d;
    float *wp = direct_setup(&d, scratch, g, B);
    if (dw) direct_dw(dw, db, wp, dout, inp, g->C, g->OC, g->K, &d, d.mvec != NULL);
    if (dinp) {
        pack_weights(wp, w, g->C, g->OC, d.KK, 1, d.mvec ? NET__DMR2 : NET__DMR);
        if (d.mvec)
            direct_run2(dinp, dout, wp, NULL, g->OC, g->C, &d, e ? e : &plain);
        else
            direct_run(dinp, dout, wp, NULL, g->OC, g->C, &d, e ? e : &plain);
    }
#else
    (void)dinp, (void)dw, (void)db, (void)scratch, (void)dout, (void)inp, (void)w, (void)g, (void)B;
    (void)e;
#endif
}
