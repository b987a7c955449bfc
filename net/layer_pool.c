/* net/layer_pool.c: the parameter-free reshaping layers.
 *   maxpool: (C, B, H, W) -> (C, B, OH, OW), window k, stride s; the argmax of every output is
 *            kept in the workspace (as uint32 indices into the input plane) for backward.
 *   gap:     (C, B, H, W) -> (B, C), the mean of each plane.
 *   flatten: (C, B, H, W) -> (B, C*H*W) in torch's order, or a copy for a flat input. */
#include <stdio.h>
#include <string.h>

#include "net/net_internal.h"

static size_t pool_none(const struct net_layer *l, size_t B)
{
    return 0;
}

static size_t pool_no_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    return 0;
}

static size_t pool_no_flops(const struct net_layer *l)
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
    return l->out.c * B * l->out.h * l->out.w; // uint32 argmax per output
}

static void mp_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                       int training)
{
    const size_t C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
    const size_t K = l->spec.k, S = mp_stride(l);
    uint32_t *arg = (uint32_t *)l->ws;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < C * B; p++) {
        const float *src = inp + p * H * W;
        float *dst = out + p * OH * OW;
        uint32_t *a = arg + p * OH * OW;
        if (K == 2 && S == 2) {
            // The common 2x2 / 2 window, unrolled (same first-maximum tie rule as below).
            for (size_t oh = 0; oh < OH; oh++) {
                const float *r0 = src + 2 * oh * W, *r1 = r0 + W;
                for (size_t ow = 0; ow < OW; ow++) {
                    size_t j = 2 * ow, best = 2 * oh * W + j;
                    float bv = r0[j];
                    if (r0[j + 1] > bv) bv = r0[j + 1], best = 2 * oh * W + j + 1;
                    if (r1[j] > bv) bv = r1[j], best = (2 * oh + 1) * W + j;
                    if (r1[j + 1] > bv) bv = r1[j + 1], best = (2 * oh + 1) * W + j + 1;
                    dst[oh * OW + ow] = bv;
                    a[oh * OW + ow] = (uint32_t)best;
                }
            }
            continue;
        }
        for (size_t oh = 0; oh < OH; oh++) {
            for (size_t ow = 0; ow < OW; ow++) {
                size_t best = oh * S * W + ow * S;
                float bv = src[best];
                for (size_t i = 0; i < K; i++) {
                    for (size_t j = 0; j < K; j++) {
                        size_t idx = (oh * S + i) * W + ow * S + j;
                        if (src[idx] > bv) {
                            bv = src[idx];
                            best = idx;
                        }
                    }
                }
                dst[oh * OW + ow] = bv;
                a[oh * OW + ow] = (uint32_t)best;
            }
        }
    }
}

static void mp_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                        const float *inp, const float *out, size_t B)
{
    if (!dinp) return;
    const size_t C = l->in.c, HW = l->in.h * l->in.w, OHW = l->out.h * l->out.w;
    const uint32_t *arg = (const uint32_t *)l->ws;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < C * B; p++) {
        float *d = dinp + p * HW;
        memset(d, 0, HW * sizeof(float));
        for (size_t o = 0; o < OHW; o++) d[arg[p * OHW + o]] += dout[p * OHW + o];
    }
}

const struct net__ops net__maxpool_ops = {mp_shape,  pool_no_tensors, mp_ws,       pool_none,
                                          NULL,      mp_forward,      mp_backward, pool_no_flops};

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

static void gap_forward(struct net *n, struct net_layer *l, float *out, const float *inp,
                        size_t B, int training)
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
                                      NULL,      gap_forward,     gap_backward, pool_no_flops};

// ---- flatten ---------------------------------------------------------------------------

static int fl_shape(struct net_layer *l, char *err, size_t errlen)
{
    l->out = (struct net_shape){l->in.c * l->in.h * l->in.w, 1, 1, 0};
    return 0;
}

static void fl_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                       int training)
{
    const size_t C = l->in.c, HW = l->in.h * l->in.w;
    if (!l->in.spatial) {
        memcpy(out, inp, B * C * HW * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < C; c++)
            memcpy(out + (b * C + c) * HW, inp + (c * B + b) * HW, HW * sizeof(float));
}

static void fl_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                        const float *inp, const float *out, size_t B)
{
    if (!dinp) return;
    const size_t C = l->in.c, HW = l->in.h * l->in.w;
    if (!l->in.spatial) {
        memcpy(dinp, dout, B * C * HW * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < C; c++)
            memcpy(dinp + (c * B + b) * HW, dout + (b * C + c) * HW, HW * sizeof(float));
}

const struct net__ops net__flatten_ops = {fl_shape, pool_no_tensors, pool_none,   pool_none,
                                          NULL,     fl_forward,      fl_backward, pool_no_flops};
