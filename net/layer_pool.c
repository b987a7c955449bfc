/* net/layer_pool.c: the parameter-free reshaping layers.
 *   maxpool: (C, B, H, W) -> (C, B, OH, OW), window k, stride s; the argmax of every output is
 *            kept in the workspace for backward (uint32 indices into the input plane; the
 *            AVX-512 2x2 planes keep a byte code per output instead, MP2_PASS below).
 *   gap:     (C, B, H, W) -> (B, C), the mean of each plane.
 *   flatten: (C, B, H, W) -> (B, C*H*W) in torch's order, or a copy for a flat input. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "net/net_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define MP_AVX512 1
#include <immintrin.h>
#define MP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#else
#define MP_AVX512 0
#endif

static size_t pool_none(const struct net_layer *l, size_t B)
{
    return 0;
}

static size_t pool_no_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    return 0;
}

static size_t pool_no_macs(const struct net_layer *l)
{
    return 0;
}

// ---- maxpool ---------------------------------------------------------------------------

static size_t mp_stride(const struct net_layer *l)
{
    return l->spec.stride ? l->spec.stride : l->spec.k;
}

static int mp_shape(struct net_layer *l, char *err, size_t errlen)
{
    if (!l->in.spatial) {
        snprintf(err, errlen, "needs a spatial input");
        return -1;
    }
    if (l->spec.k == 0 || l->spec.k > l->in.h || l->spec.k > l->in.w) {
        snprintf(err, errlen, "window %zu does not fit the %zux%zu input", l->spec.k, l->in.h,
                 l->in.w);
        return -1;
    }
    size_t s = mp_stride(l);
    l->out = (struct net_shape){l->in.c, (l->in.h - l->spec.k) / s + 1,
                                (l->in.w - l->spec.k) / s + 1, 1};
    return 0;
}

static size_t mp_ws(const struct net_layer *l, size_t B)
{
    // uint32 argmax (or byte code) per output, then the winner's xhat for net__bn_pool_*
    return 2 * l->out.c * B * l->out.h * l->out.w;
}

#if MP_AVX512
/* The AVX-512 planes keep one byte per output instead of the uint32 index: bits 0-1 say
 * which input of the window won (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) and
 * bit 2 whether the gradient passes (always without a ReLU; with one, where the winner's input
 * z >= 0, the ReLU's backward of layer_act.c). So the backward reads neither the uint32
 * indices nor the ReLU's input: a quarter of the index traffic and none of z's. */
#define MP2_PASS 4
#define MP2_INLINE __attribute__((always_inline)) inline

/* The lane masks of the 16-output step at ow of a row of OW outputs: the outputs (mo) and
 * the low and high 16 of their 32 inputs (ml, mh). */
static MP2_INLINE void mp2_masks(size_t OW, size_t ow, __mmask16 *mo, __mmask16 *ml, __mmask16 *mh)
{
    const size_t nout = OW - ow < 16 ? OW - ow : 16, nin = 2 * nout;
    *mo = (__mmask16)((1u << nout) - 1);
    *ml = (__mmask16)(nin >= 16 ? 0xFFFF : (1u << nin) - 1);
    *mh = (__mmask16)(nin <= 16 ? 0 : (1u << (nin - 16)) - 1);
}

/* The even and odd columns of 32 inputs (lo, hi): out[0] even, out[1] odd. */
MP_TARGET static MP2_INLINE void mp2_split(__m512 out[2], __m512 lo, __m512 hi)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    out[0] = _mm512_permutex2var_ps(lo, ev, hi);
    out[1] = _mm512_permutex2var_ps(lo, _mm512_add_epi32(ev, _mm512_set1_epi32(1)), hi);
}

/* The first maximum of 16 windows v[0..3] (top-left, top-right, bottom-left, bottom-right,
 * the scalar code's order) into *m, its code returned; with h, *hv = h[winner]. With relu,
 * the maximum of the ReLU'd inputs: a positive maximum wins where the raw one did; otherwise
 * every ReLU'd input is 0, the top-left wins (no later one is greater) and the gradient passes
 * where its z >= 0; a NaN top-left starts as -inf (max returns its second operand for a NaN
 * first one), so a NaN never wins, as a ReLU'd NaN (0) would not; max(m, 0) gives +0. */
MP_TARGET static MP2_INLINE __m512i mp2_win(__m512 *m, __m512 *hv, const __m512 v[4],
                                            const __m512 *h, int relu)
{
    const __m512 zero = _mm512_setzero_ps();
    __m512 mx = relu ? _mm512_max_ps(v[0], _mm512_set1_ps(-INFINITY)) : v[0];
    __m512 hx = h ? h[0] : zero;
    __m512i at = _mm512_setzero_si512();
    for (int t = 1; t < 4; t++) {
        const __mmask16 k = _mm512_cmp_ps_mask(v[t], mx, _CMP_GT_OQ);
        at = _mm512_mask_mov_epi32(at, k, _mm512_set1_epi32(t));
        mx = _mm512_mask_mov_ps(mx, k, v[t]);
        if (h) hx = _mm512_mask_mov_ps(hx, k, h[t]);
    }
    __mmask16 pass = 0xFFFF;
    if (relu) {
        const __mmask16 posm = _mm512_cmp_ps_mask(mx, zero, _CMP_GT_OQ);
        at = _mm512_maskz_mov_epi32(posm, at);
        if (h) hx = _mm512_mask_mov_ps(h[0], posm, hx);
        pass = posm | _mm512_cmp_ps_mask(v[0], zero, _CMP_GE_OQ);
        mx = _mm512_max_ps(mx, zero);
    }
    *m = mx;
    if (hv) *hv = hx;
    return _mm512_mask_or_epi32(at, pass, at, _mm512_set1_epi32(MP2_PASS));
}

/* The 16 outputs' gradient g (lanes mo) put back at the winners that pass, 0 elsewhere, as
 * the window's two rows of 32 inputs: s[0], s[1] the top row's low and high 16, s[2], s[3]
 * the bottom row's. */
MP_TARGET static MP2_INLINE void mp2_spread(__m512 s[4], const uint8_t *code, const float *g,
                                            __mmask16 mo)
{
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const __m512 gv = _mm512_maskz_loadu_ps(mo, g);
    const __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mo, code));
    const __mmask16 pass = _mm512_test_epi32_mask(c, _mm512_set1_epi32(MP2_PASS));
    const __m512i at = _mm512_and_si512(c, _mm512_set1_epi32(3));
    __m512 t[4];
    for (int k = 0; k < 4; k++)
        t[k] = _mm512_maskz_mov_ps(
            (__mmask16)(pass & _mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(k))), gv);
    s[0] = _mm512_permutex2var_ps(t[0], lo, t[1]), s[1] = _mm512_permutex2var_ps(t[0], hi, t[1]);
    s[2] = _mm512_permutex2var_ps(t[2], lo, t[3]), s[3] = _mm512_permutex2var_ps(t[2], hi, t[3]);
}

/* 2x2 / stride 2 on one plane, 16 outputs per step: the 32 inputs of each row are split
 * into even and odd columns with one permute each, then mp2_win. */
MP_TARGET static void mp2_fwd_plane(float *dst, uint8_t *code, const float *src, size_t W,
                                    size_t OH, size_t OW, int relu)
{
    for (size_t oh = 0; oh < OH; oh++) {
        const float *r0 = src + 2 * oh * W, *r1 = r0 + W;
        for (size_t ow = 0; ow < OW; ow += 16) {
            __mmask16 mo, ml, mh;
            mp2_masks(OW, ow, &mo, &ml, &mh);
            const float *p0 = r0 + 2 * ow, *p1 = r1 + 2 * ow;
            __m512 v[4], m;
            mp2_split(v, _mm512_maskz_loadu_ps(ml, p0), _mm512_maskz_loadu_ps(mh, p0 + 16));
            mp2_split(v + 2, _mm512_maskz_loadu_ps(ml, p1), _mm512_maskz_loadu_ps(mh, p1 + 16));
            const __m512i at = mp2_win(&m, NULL, v, NULL, relu);
            _mm512_mask_storeu_ps(dst + oh * OW + ow, mo, m);
            _mm_mask_storeu_epi8(code + oh * OW + ow, mo, _mm512_cvtepi32_epi8(at));
        }
    }
}

/* Its backward: every covered input gets one store, the output gradient where it won and
 * passes, 0 elsewhere. */
MP_TARGET static void mp2_bwd_plane(float *d, const uint8_t *code, const float *g, size_t W,
                                    size_t OH, size_t OW)
{
    for (size_t oh = 0; oh < OH; oh++) {
        float *d0 = d + 2 * oh * W, *d1 = d0 + W;
        for (size_t ow = 0; ow < OW; ow += 16) {
            __mmask16 mo, ml, mh;
            mp2_masks(OW, ow, &mo, &ml, &mh);
            __m512 sv[4];
            mp2_spread(sv, code + oh * OW + ow, g + oh * OW + ow, mo);
            _mm512_mask_storeu_ps(d0 + 2 * ow, ml, sv[0]);
            _mm512_mask_storeu_ps(d0 + 2 * ow + 16, mh, sv[1]);
            _mm512_mask_storeu_ps(d1 + 2 * ow, ml, sv[2]);
            _mm512_mask_storeu_ps(d1 + 2 * ow + 16, mh, sv[3]);
        }
    }
}

/* BN -> ReLU -> pool, forward, on one plane of channel c (net__bn_pool_forward): from z, the
 * BN's xhat h = (z - mean) * istd and output y = gc * h + bc (neither stored: the backward
 * recomputes h from z), then the ReLU'd pool of y as mp2_fwd_plane's, its codes, and the
 * winner's h. */
MP_TARGET static void mp2_bn_fwd_plane(float *dst, uint8_t *code, float *hw, const float *z,
                                       size_t W, size_t OH, size_t OW, float mean, float istd,
                                       float gc, float bc)
{
    const __m512 vm = _mm512_set1_ps(mean), vi = _mm512_set1_ps(istd);
    const __m512 vg = _mm512_set1_ps(gc), vb = _mm512_set1_ps(bc);
    for (size_t oh = 0; oh < OH; oh++) {
        const float *r0 = z + 2 * oh * W, *r1 = r0 + W;
        for (size_t ow = 0; ow < OW; ow += 16) {
            __mmask16 mo, ml, mh;
            mp2_masks(OW, ow, &mo, &ml, &mh);
            const size_t j = 2 * ow;
#define MP2_H(r, off, k) _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, r + j + off), vm), vi)
            __m512 h[4], v[4], m, hv;
            mp2_split(h, MP2_H(r0, 0, ml), MP2_H(r0, 16, mh));
            mp2_split(h + 2, MP2_H(r1, 0, ml), MP2_H(r1, 16, mh));
#undef MP2_H
            // y = gc * h + bc as net__bn_fwd_relu computes it (a product, then a sum)
            for (int t = 0; t < 4; t++) v[t] = _mm512_add_ps(_mm512_mul_ps(vg, h[t]), vb);
            const __m512i at = mp2_win(&m, &hv, v, h, 1);
            _mm512_mask_storeu_ps(dst + oh * OW + ow, mo, m);
            _mm512_mask_storeu_ps(hw + oh * OW + ow, mo, hv);
            _mm_mask_storeu_epi8(code + oh * OW + ow, mo, _mm512_cvtepi32_epi8(at));
        }
    }
}

/* The 16 lanes of v summed in double (each half widened first). */
MP_TARGET static MP2_INLINE double mp2_sum_pd(__m512 v)
{
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return _mm512_reduce_add_pd(
        _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi)));
}

/* Its backward's sums over one plane: the gradient reaches the BN only at the windows'
 * winners that pass, so sum(dy) and sum(dy * xhat) come from the pool's output gradient g,
 * codes and winners' xhat alone. */
MP_TARGET static void mp2_bn_sums_plane(double *sdy, double *sdyx, const uint8_t *code,
                                        const float *g, const float *hw, size_t OHW)
{
    __m512 a = _mm512_setzero_ps(), ab = _mm512_setzero_ps();
    for (size_t o = 0; o < OHW; o += 16) {
        const __mmask16 mo = (__mmask16)(OHW - o >= 16 ? 0xFFFF : (1u << (OHW - o)) - 1);
        const __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mo, code + o));
        const __mmask16 pass = _mm512_test_epi32_mask(c, _mm512_set1_epi32(MP2_PASS));
        const __m512 d = _mm512_maskz_loadu_ps(pass, g + o);
        a = _mm512_add_ps(a, d);
        ab = _mm512_add_ps(ab, _mm512_mul_ps(d, _mm512_maskz_loadu_ps(pass, hw + o)));
    }
    *sdy += mp2_sum_pd(a);
    *sdyx += mp2_sum_pd(ab);
}

/* ... and its input gradient on one plane, net__bn_bwd's training formula
 * dx = k (N dy - a - xhat b) with dy the pool's gradient put back at the winners that pass
 * (mp2_bwd_plane's interleave) and 0 elsewhere, the pixels of an odd last row or column
 * included; xhat = (z - mean) * istd as the forward computed it. */
MP_TARGET static void mp2_bn_dx_plane(float *dx, const uint8_t *code, const float *g,
                                      const float *z, size_t H, size_t W, size_t OH, size_t OW,
                                      float mean, float istd, float k, float fn, float a,
                                      float bsum)
{
    const __m512 vk = _mm512_set1_ps(k), vn = _mm512_set1_ps(fn), va = _mm512_set1_ps(a),
                 vb = _mm512_set1_ps(bsum), vm = _mm512_set1_ps(mean), vi = _mm512_set1_ps(istd);
    for (size_t oh = 0; oh < OH; oh++) {
        float *d0 = dx + 2 * oh * W, *d1 = d0 + W;
        const float *x0 = z + 2 * oh * W, *x1 = x0 + W;
        for (size_t ow = 0; ow < OW; ow += 16) {
            __mmask16 mo, ml, mh;
            mp2_masks(OW, ow, &mo, &ml, &mh);
            __m512 sv[4];
            mp2_spread(sv, code + oh * OW + ow, g + oh * OW + ow, mo);
            const size_t j = 2 * ow;
            float *const dp[4] = {d0 + j, d0 + j + 16, d1 + j, d1 + j + 16};
            const float *const xp[4] = {x0 + j, x0 + j + 16, x1 + j, x1 + j + 16};
            for (int q = 0; q < 4; q++) {
                const __mmask16 km = q & 1 ? mh : ml;
                const __m512 h =
                    _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(km, xp[q]), vm), vi);
                const __m512 v =
                    _mm512_mul_ps(vk, _mm512_sub_ps(_mm512_sub_ps(_mm512_mul_ps(vn, sv[q]), va),
                                                    _mm512_mul_ps(h, vb)));
                _mm512_mask_storeu_ps(dp[q], km, v);
            }
        }
        for (size_t x = 2 * OW; x < W; x++) { // an odd last column: no gradient from the pool
            d0[x] = k * (fn * 0.0f - a - (x0[x] - mean) * istd * bsum);
            d1[x] = k * (fn * 0.0f - a - (x1[x] - mean) * istd * bsum);
        }
    }
    for (size_t i = 2 * OH * W; i < H * W; i++) // an odd last row
        dx[i] = k * (fn * 0.0f - a - (z[i] - mean) * istd * bsum);
}
#endif

static int pool_level_cached = -1;

/* 2 when this CPU can run the AVX-512 planes (their byte codes take AVX512BW and VL too). */
static int pool_max(void)
{
#if MP_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl")
               ? 2
               : 0;
#else
    return 0;
#endif
}

/* 1 when the 2x2 / stride-2 planes run in AVX-512 (EVOWIDTH_POOL=scalar: the plain loops). */
static int pool_simd(void)
{
    return net__simd_level(&pool_level_cached, pool_max(), "EVOWIDTH_POOL", "scalar") == 2;
}

int net__pool_force(int level)
{
    return net__simd_force(&pool_level_cached, pool_max(), "EVOWIDTH_POOL", "scalar", level);
}

/* The max pool of inp, or with relu of max(inp, 0) read on the fly (a ReLU before the pool,
 * whose output is then never written). */
static void mp_fwd(struct net_layer *l, float *out, const float *inp, size_t B, int relu)
{
    const size_t C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
    const size_t K = l->spec.k, S = mp_stride(l);
    uint32_t *arg = (uint32_t *)l->ws;
    const int simd = pool_simd();
    (void)simd;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < C * B; p++) {
        const float *src = inp + p * H * W;
        float *dst = out + p * OH * OW;
        uint32_t *a = arg + p * OH * OW;
#if MP_AVX512
        if (K == 2 && S == 2 && simd) { // one byte per output, not the uint32 index
            mp2_fwd_plane(dst, (uint8_t *)l->ws + p * OH * OW, src, W, OH, OW, relu);
            continue;
        }
#endif
#define MP_IN(idx) (relu ? (src[idx] > 0.0f ? src[idx] : 0.0f) : src[idx])
        if (K == 2 && S == 2) {
            /* The common 2x2 / 2 window, branch-free so the compiler vectorises it (random
             * data makes the comparisons unpredictable); same first-maximum tie rule. */
            for (size_t oh = 0; oh < OH; oh++) {
                const float *r0 = src + 2 * oh * W, *r1 = r0 + W;
                float *drow = dst + oh * OW;
                uint32_t *arow = a + oh * OW;
                const uint32_t base = (uint32_t)(2 * oh * W), w = (uint32_t)W;
                for (size_t ow = 0; ow < OW; ow++) {
                    const size_t j = 2 * ow;
                    float v0 = r0[j], v1 = r0[j + 1], v2 = r1[j], v3 = r1[j + 1];
                    if (relu) {
                        v0 = v0 > 0.0f ? v0 : 0.0f, v1 = v1 > 0.0f ? v1 : 0.0f;
                        v2 = v2 > 0.0f ? v2 : 0.0f, v3 = v3 > 0.0f ? v3 : 0.0f;
                    }
                    const uint32_t i0 = base + (uint32_t)j;
                    float m = v0;
                    uint32_t at = i0;
                    at = v1 > m ? i0 + 1 : at;
                    m = v1 > m ? v1 : m;
                    at = v2 > m ? i0 + w : at;
                    m = v2 > m ? v2 : m;
                    at = v3 > m ? i0 + w + 1 : at;
                    m = v3 > m ? v3 : m;
                    drow[ow] = m;
                    arow[ow] = at;
                }
            }
            continue;
        }
        for (size_t oh = 0; oh < OH; oh++) {
            for (size_t ow = 0; ow < OW; ow++) {
                size_t best = oh * S * W + ow * S;
                float bv = MP_IN(best);
                for (size_t i = 0; i < K; i++) {
                    for (size_t j = 0; j < K; j++) {
                        size_t idx = (oh * S + i) * W + ow * S + j;
                        if (MP_IN(idx) > bv) {
                            bv = MP_IN(idx);
                            best = idx;
                        }
                    }
                }
                dst[oh * OW + ow] = bv;
                a[oh * OW + ow] = (uint32_t)best;
            }
        }
#undef MP_IN
    }
}

static void mp_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                       int training)
{
    mp_fwd(l, out, inp, B, 0);
}

void net__mp_forward_relu(struct net_layer *l, float *out, const float *z, size_t B)
{
    mp_fwd(l, out, z, B, 1);
}

/* Plane p's input gradient d (overwritten) from its outputs' gradient g and argmaxes; with
 * z (a ReLU's input before the pool), also that ReLU's backward: 0 where z < 0 (the AVX-512
 * planes have it in their codes and do not read z). */
static void mp_backward_plane(const struct net_layer *l, float *d, size_t p, const float *g,
                              const float *z)
{
    const size_t H = l->in.h, W = l->in.w, HW = H * W;
    const size_t OH = l->out.h, OW = l->out.w, OHW = OH * OW;
    const uint32_t *ap = (const uint32_t *)l->ws + p * OHW;
    if (l->spec.k == 2 && mp_stride(l) == 2) {
        /* Disjoint 2x2 windows: each covered input gets exactly one store (no memset unless
         * an odd last row or column is left uncovered). */
        if ((H | W) & 1) memset(d, 0, HW * sizeof(float));
#if MP_AVX512
        if (pool_simd()) {
            mp2_bwd_plane(d, (const uint8_t *)l->ws + p * OHW, g, W, OH, OW);
            return;
        }
#endif
        for (size_t oh = 0; oh < OH; oh++) {
            float *d0 = d + 2 * oh * W, *d1 = d0 + W;
            const uint32_t base = (uint32_t)(2 * oh * W), w = (uint32_t)W;
            for (size_t ow = 0; ow < OW; ow++) {
                const uint32_t i0 = base + 2 * (uint32_t)ow, at = ap[oh * OW + ow];
                const float v = g[oh * OW + ow];
                d0[2 * ow] = at == i0 ? v : 0.0f;
                d0[2 * ow + 1] = at == i0 + 1 ? v : 0.0f;
                d1[2 * ow] = at == i0 + w ? v : 0.0f;
                d1[2 * ow + 1] = at == i0 + w + 1 ? v : 0.0f;
            }
        }
    } else {
        memset(d, 0, HW * sizeof(float));
        for (size_t o = 0; o < OHW; o++) d[ap[o]] += g[o];
    }
    if (z) // the ReLU's backward (derivative 1 at 0, as in layer_act.c) on the non-zeros
        for (size_t o = 0; o < OHW; o++)
            if (!(z[ap[o]] >= 0.0f)) d[ap[o]] = 0.0f;
}

static void mp_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                        const float *inp, const float *out, size_t B)
{
    if (!dinp) return;
    const size_t C = l->in.c, HW = l->in.h * l->in.w, OHW = l->out.h * l->out.w;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < C * B; p++) mp_backward_plane(l, dinp + p * HW, p, dout + p * OHW, NULL);
}

void net__mp_backward_relu(struct net_layer *l, float *dz, const float *dout, const float *z,
                           size_t B)
{
    const size_t C = l->in.c, HW = l->in.h * l->in.w, OHW = l->out.h * l->out.w;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < C * B; p++)
        mp_backward_plane(l, dz + p * HW, p, dout + p * OHW, z + p * HW);
}

int net__bn_pool_ok(const struct net_layer *pool)
{
    return MP_AVX512 && pool->spec.kind == NET_MAXPOOL && pool->spec.k == 2 &&
           mp_stride(pool) == 2 && pool_simd();
}

void net__bn_pool_forward(struct net *n, struct net_layer *bn, struct net_layer *pool, float *out,
                          const float *z, size_t B, const double *stats)
{
#if MP_AVX512
    const size_t C = bn->in.c, H = bn->in.h, W = bn->in.w, HW = H * W, N = B * HW;
    const size_t OH = pool->out.h, OW = pool->out.w, OHW = OH * OW;
    float *inv = bn->ws + C * N, *means = inv + C;
    const float *gamma = net__p(n, bn, 0), *beta = net__p(n, bn, 1);
    float *rmean = net__p(n, bn, 2), *rvar = net__p(n, bn, 3);
    uint8_t *codes = (uint8_t *)pool->ws;
    float *hw = pool->ws + C * B * OHW;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < C; c++) {
        float mean, istd;
        net__bn_moments(&mean, &istd, inv, rmean, rvar, z + c * N, N, 1, 1, stats, c);
        means[c] = mean;
        for (size_t b = 0; b < B; b++) {
            const size_t p = c * B + b;
            mp2_bn_fwd_plane(out + p * OHW, codes + p * OHW, hw + p * OHW, z + p * HW, W, OH, OW,
                             mean, istd, gamma[c], beta[c]);
        }
    }
#else
    (void)n, (void)bn, (void)pool, (void)out, (void)z, (void)B, (void)stats;
#endif
}

void net__bn_pool_backward(struct net *n, struct net_layer *bn, struct net_layer *pool, float *dinp,
                           const float *dout, const float *z, size_t B)
{
#if MP_AVX512
    const size_t C = bn->in.c, H = bn->in.h, W = bn->in.w, HW = H * W, N = B * HW;
    const size_t OH = pool->out.h, OW = pool->out.w, OHW = OH * OW;
    const float *inv = bn->ws + C * N, *means = inv + C, *gamma = net__p(n, bn, 0);
    float *dgamma = net__g(n, bn, 0), *dbeta = net__g(n, bn, 1);
    const uint8_t *codes = (const uint8_t *)pool->ws;
    const float *hw = pool->ws + C * B * OHW;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < C; c++) {
        double sdy = 0.0, sdyx = 0.0;
        for (size_t b = 0; b < B; b++) {
            const size_t p = c * B + b;
            mp2_bn_sums_plane(&sdy, &sdyx, codes + p * OHW, dout + p * OHW, hw + p * OHW, OHW);
        }
        dgamma[c] += (float)sdyx;
        dbeta[c] += (float)sdy;
        if (!dinp) continue;
        const float k = gamma[c] * inv[c] / (float)N, fn = (float)N;
        for (size_t b = 0; b < B; b++) {
            const size_t p = c * B + b;
            mp2_bn_dx_plane(dinp + p * HW, codes + p * OHW, dout + p * OHW, z + p * HW, H, W, OH,
                            OW, means[c], inv[c], k, fn, (float)sdy, (float)sdyx);
        }
    }
#else
    (void)n, (void)bn, (void)pool, (void)dinp, (void)dout, (void)z, (void)B;
#endif
}

const struct net__ops net__maxpool_ops = {mp_shape, pool_no_tensors, mp_ws,       pool_none,
                                          NULL,     mp_forward,      mp_backward, pool_no_macs};

// ---- global average pool ---------------------------------------------------------------

static int gap_shape(struct net_layer *l, char *err, size_t errlen)
{
    if (!l->in.spatial) {
        snprintf(err, errlen, "needs a spatial input");
        return -1;
    }
    l->out = (struct net_shape){l->in.c, 1, 1, 0};
    return 0;
}

static void gap_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                        int training)
{
    const size_t C = l->in.c, HW = l->in.h * l->in.w;
    for (size_t c = 0; c < C; c++) {
        for (size_t b = 0; b < B; b++) {
            const float *src = inp + (c * B + b) * HW;
            float s = 0.0f;
            for (size_t i = 0; i < HW; i++) s += src[i];
            out[b * C + c] = s / (float)HW;
        }
    }
}

static void gap_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                         const float *inp, const float *out, size_t B)
{
    if (!dinp) return;
    const size_t C = l->in.c, HW = l->in.h * l->in.w;
    for (size_t c = 0; c < C; c++) {
        for (size_t b = 0; b < B; b++) {
            float g = dout[b * C + c] / (float)HW;
            float *d = dinp + (c * B + b) * HW;
            for (size_t i = 0; i < HW; i++) d[i] = g;
        }
    }
}

const struct net__ops net__gap_ops = {gap_shape, pool_no_tensors, pool_none,    pool_none,
                                      NULL,      gap_forward,     gap_backward, pool_no_macs};

// ---- flatten ---------------------------------------------------------------------------

static int fl_shape(struct net_layer *l, char *err, size_t errlen)
{
    l->out = (struct net_shape){l->in.c * l->in.h * l->in.w, 1, 1, 0};
    return 0;
}

/* Spatial (C, B, H, W) to flat (B, C*H*W) when to_flat, else back; a flat input is copied. */
static void fl_copy(const struct net_layer *l, float *dst, const float *src, size_t B, int to_flat)
{
    const size_t C = l->in.c, HW = l->in.h * l->in.w;
    if (!l->in.spatial) {
        memcpy(dst, src, B * C * HW * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < C; c++) {
            const size_t fo = (b * C + c) * HW, so = (c * B + b) * HW;
            memcpy(dst + (to_flat ? fo : so), src + (to_flat ? so : fo), HW * sizeof(float));
        }
}

static void fl_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                       int training)
{
    fl_copy(l, out, inp, B, 1);
}

static void fl_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                        const float *inp, const float *out, size_t B)
{
    if (dinp) fl_copy(l, dinp, dout, B, 0);
}

const struct net__ops net__flatten_ops = {fl_shape, pool_no_tensors, pool_none,   pool_none,
                                          NULL,     fl_forward,      fl_backward, pool_no_macs};
