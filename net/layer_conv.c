/* net/layer_conv.c: 2-D convolution on (C, B, H, W) activations, im2col + sgemm.
 *
 * Plain:      z = conv_KxK(x; W) + b, W (OUT, C, K, K).
 * Factorized: t = conv_KxK(x; V) to R channels, z = conv_1x1(t; U) + b, V (R, C, K, K),
 *             U (OUT, R): the factorized form of W = U V (reshaped), no nonlinearity between.
 *             t (R, B, OH, OW) is kept in the workspace for backward.
 * Tensors in order: plain "w", ["b"]; factorized "u", "v", ["b"]. */
#include <stdio.h>
#include <string.h>

#include "net/net_internal.h"

static void conv_geoms(const struct net_layer *l, struct net__conv *gk, struct net__conv *g1)
{
    size_t R = l->spec.rank, OUT = l->spec.out;
    net__conv_geom(gk, l->in.c, l->in.h, l->in.w, R ? R : OUT, l->spec.k, l->spec.stride,
                   l->spec.pad);
    net__conv_geom(g1, R, gk->OH, gk->OW, OUT, 1, 1, 0);
}

static int conv_shape(struct net_layer *l, char *err, size_t errlen)
{
    const struct net_layer_spec *s = &l->spec;
    if (!l->in.spatial) {
        snprintf(err, errlen, "needs a spatial (image) input, got a flat one of %zu features",
                 l->in.c);
        return -1;
    }
    if (s->out == 0 || s->k == 0 || s->stride == 0) {
        snprintf(err, errlen, "\"out\", \"k\" and \"stride\" must be >= 1");
        return -1;
    }
    if (l->in.h + 2 * s->pad < s->k || l->in.w + 2 * s->pad < s->k) {
        snprintf(err, errlen, "kernel %zu larger than the padded input %zux%zu", s->k,
                 l->in.h + 2 * s->pad, l->in.w + 2 * s->pad);
        return -1;
    }
    struct net__conv g, g1;
    conv_geoms(l, &g, &g1);
    l->out = (struct net_shape){s->out, g.OH, g.OW, 1};
    return 0;
}

static size_t conv_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    size_t k = 0, C = l->in.c, K = l->spec.k, OUT = l->spec.out, R = l->spec.rank;
    if (R) {
        t[k++] = (struct net__tdesc){"u", {OUT, R, 1, 1}, 4, 1, NET_ARENA_PARAM};
        t[k++] = (struct net__tdesc){"v", {R, C, K, K}, 4, 1, NET_ARENA_PARAM};
    } else {
        t[k++] = (struct net__tdesc){"w", {OUT, C, K, K}, 4, 1, NET_ARENA_PARAM};
    }
    if (l->spec.bias) t[k++] = (struct net__tdesc){"b", {OUT}, 1, 0, NET_ARENA_PARAM};
    return k;
}

static size_t conv_ws(const struct net_layer *l, size_t B)
{
    return l->spec.rank * B * l->out.h * l->out.w;
}

static size_t conv_scratch(const struct net_layer *l, size_t B)
{
    struct net__conv g, g1;
    conv_geoms(l, &g, &g1);
    // col + dcol for the k x k part, plus dt (R, B, OH, OW) when factorized.
    return 2 * net__conv_col_size(&g, B) + l->spec.rank * B * g.OH * g.OW;
}

static void conv_init(struct net *n, struct net_layer *l, uint64_t *rng)
{
    size_t C = l->in.c, K = l->spec.k, OUT = l->spec.out, R = l->spec.rank;
    if (R) {
        net__he_fill(net__p(n, l, 0), OUT * R, R, rng);
        net__he_fill(net__p(n, l, 1), R * C * K * K, C * K * K, rng);
        float *u = net__p(n, l, 0);
        for (size_t i = 0; i < OUT * R; i++) u[i] *= 0.70710678f;
    } else {
        net__init_fill(n, net__p(n, l, 0), l->spec.bias ? net__p(n, l, 1) : NULL, OUT * C * K * K,
                       OUT, C * K * K, rng);
    }
}

void net__conv_forward_stats(struct net *n, struct net_layer *l, float *out, const float *inp,
                             size_t B, double *stats)
{
    struct net__conv g, g1;
    conv_geoms(l, &g, &g1);
    size_t R = l->spec.rank;
    const float *b = l->spec.bias ? net__p(n, l, R ? 2 : 1) : NULL;
    const struct net__epi e = {.stats = stats};
    if (R) {
        net__conv_fwd(l->ws, n->scratch, inp, net__p(n, l, 1), NULL, &g, B);
        net__conv_fwd_epi(out, NULL, l->ws, net__p(n, l, 0), b, &g1, B, &e);
    } else {
        net__conv_fwd_epi(out, n->scratch, inp, net__p(n, l, 0), b, &g, B, &e);
    }
}

static void conv_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                         int training)
{
    net__conv_forward_stats(n, l, out, inp, B, NULL);
}

static void conv_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                          const float *inp, const float *out, size_t B)
{
    struct net__conv g, g1;
    conv_geoms(l, &g, &g1);
    size_t R = l->spec.rank, colsz = net__conv_col_size(&g, B);
    float *col = n->scratch, *dcol = n->scratch + colsz;
    float *db = l->spec.bias ? net__g(n, l, R ? 2 : 1) : NULL;
    const struct net__epi set = {0}; // dinp and dt are overwritten
    if (R) {
        float *dt = n->scratch + 2 * colsz;
        net__conv_bwd_epi(dt, net__g(n, l, 0), db, NULL, NULL, dout, l->ws, net__p(n, l, 0), &g1, B,
                          &set);
        net__conv_bwd_epi(dinp, net__g(n, l, 1), NULL, col, dcol, dt, inp, net__p(n, l, 1), &g, B,
                          &set);
    } else {
        net__conv_bwd_epi(dinp, net__g(n, l, 0), db, col, dcol, dout, inp, net__p(n, l, 0), &g, B,
                          &set);
    }
}

static size_t conv_macs(const struct net_layer *l)
{
    size_t CKK = l->in.c * l->spec.k * l->spec.k, HW = l->out.h * l->out.w, R = l->spec.rank;
    return HW * (R ? R * (CKK + l->spec.out) : CKK * l->spec.out);
}

const struct net__ops net__conv_ops = {conv_shape, conv_tensors, conv_ws,       conv_scratch,
                                       conv_init,  conv_forward, conv_backward, conv_macs};
