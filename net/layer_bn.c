/* net/layer_bn.c: batch norm over channels of a spatial (C, B, H, W) input or features of
 * a flat (B, F) one. Training mode normalises with batch statistics and updates the running
 * ones (momentum 0.1, unbiased variance, as torch); eval mode uses the running ones.
 * Tensors: "gamma", "beta" (params), "mean", "var" (state). Workspace: xhat, inv std. */
#include <stdio.h>

#include "net/net_internal.h"

static int bn_shape(struct net_layer *l, char *err, size_t errlen)
{
    l->out = l->in;
    return 0;
}

static size_t bn_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    size_t C = l->in.c;
    t[0] = (struct net__tdesc){"gamma", {C}, 1, 0, NET_ARENA_PARAM};
    t[1] = (struct net__tdesc){"beta", {C}, 1, 0, NET_ARENA_PARAM};
    t[2] = (struct net__tdesc){"mean", {C}, 1, 0, NET_ARENA_STATE};
    t[3] = (struct net__tdesc){"var", {C}, 1, 0, NET_ARENA_STATE};
    return 4;
}

static size_t bn_ws(const struct net_layer *l, size_t B)
{
    // xhat, then inv [C], then the batch means [C] (read by net__bn_pool_backward)
    return B * l->in.c * l->in.h * l->in.w + 2 * l->in.c;
}

static size_t bn_scratch(const struct net_layer *l, size_t B)
{
    return 0;
}

static void bn_init(struct net *n, struct net_layer *l, uint64_t *rng)
{
    float *g = net__p(n, l, 0), *v = net__p(n, l, 3);
    for (size_t c = 0; c < l->in.c; c++) g[c] = v[c] = 1.0f;
}

/* Channel stride, item stride and item count of the layout. */
static void bn_layout(const struct net_layer *l, size_t B, size_t *N, size_t *cs, size_t *is)
{
    if (l->in.spatial) {
        *N = B * l->in.h * l->in.w;
        *cs = *N;
        *is = 1;
    } else {
        *N = B;
        *cs = 1;
        *is = l->in.c;
    }
}

void net__bn_forward_relu(struct net *n, struct net_layer *l, float *out, float *relu,
                          const float *inp, size_t B, int training, const double *stats)
{
    size_t N, cs, is;
    bn_layout(l, B, &N, &cs, &is);
    float *inv = l->ws + B * l->in.c * l->in.h * l->in.w;
    net__bn_fwd_relu(out, relu, l->ws, inv, net__p(n, l, 2), net__p(n, l, 3), inp, net__p(n, l, 0),
                     net__p(n, l, 1), l->in.c, N, cs, is, training, stats);
}

static void bn_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                       int training)
{
    net__bn_forward_relu(n, l, out, NULL, inp, B, training, NULL);
}

static void bn_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                        const float *inp, const float *out, size_t B)
{
    size_t N, cs, is;
    bn_layout(l, B, &N, &cs, &is);
    float *inv = l->ws + B * l->in.c * l->in.h * l->in.w;
    net__bn_bwd(dinp, net__g(n, l, 0), net__g(n, l, 1), dout, l->ws, inv, net__p(n, l, 0), l->in.c,
                N, cs, is, n->training);
}

void net__bn_backward_relu(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                           size_t B)
{
    size_t N, cs, is;
    bn_layout(l, B, &N, &cs, &is);
    float *inv = l->ws + B * l->in.c * l->in.h * l->in.w;
    net__bn_bwd_relu(dinp, net__g(n, l, 0), net__g(n, l, 1), dout, l->ws, inv, net__p(n, l, 0),
                     net__p(n, l, 1), l->in.c, N, cs, is, n->training);
}

static size_t bn_macs(const struct net_layer *l)
{
    return 0;
}

const struct net__ops net__bn_ops = {bn_shape, bn_tensors, bn_ws,       bn_scratch,
                                     bn_init,  bn_forward, bn_backward, bn_macs};
