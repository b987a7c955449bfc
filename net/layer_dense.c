/* net/layer_dense.c: fully connected layer on flat (B, IN) activations.
 *
 * Plain:      z = x W^T + b, W (OUT, IN).
 * Factorized: z = (x V^T) U^T + b, V (R, IN), U (OUT, R), nothing between the factors (the
 *             Caffe SVD trick); t = x V^T (B, R) is kept in the workspace for backward.
 * Tensors in order: plain "w", ["b"]; factorized "u", "v", ["b"]. */
#include <stdio.h>
#include <string.h>

#include <cblas.h>

#include "net/net_internal.h"

static int dense_shape(struct net_layer *l, char *err, size_t errlen)
{
    if (l->in.spatial) {
        // Spatial activations are (C, B, H, W) even at 1x1: a dense layer reads (B, F).
        snprintf(err, errlen, "input is %zux%zux%zu (spatial): add a flatten or gap before it",
                 l->in.c, l->in.h, l->in.w);
        return -1;
    }
    if (l->spec.out == 0) {
        snprintf(err, errlen, "\"out\" must be >= 1");
        return -1;
    }
    l->out = (struct net_shape){l->spec.out, 1, 1, 0};
    return 0;
}

static size_t dense_in(const struct net_layer *l)
{
    return l->in.c * l->in.h * l->in.w;
}

static size_t dense_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    size_t k = 0, IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    if (R) {
        t[k++] = (struct net__tdesc){"u", {OUT, R}, 2, 1, NET_ARENA_PARAM};
        t[k++] = (struct net__tdesc){"v", {R, IN}, 2, 1, NET_ARENA_PARAM};
    } else {
        t[k++] = (struct net__tdesc){"w", {OUT, IN}, 2, 1, NET_ARENA_PARAM};
    }
    if (l->spec.bias) t[k++] = (struct net__tdesc){"b", {OUT}, 1, 0, NET_ARENA_PARAM};
    return k;
}

static size_t dense_ws(const struct net_layer *l, size_t B)
{
    return B * l->spec.rank;
}

static size_t dense_scratch(const struct net_layer *l, size_t B)
{
    return B * l->spec.rank; // dt
}

static void dense_init(struct net *n, struct net_layer *l, uint64_t *rng)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    if (R) {
        net__he_fill(net__p(n, l, 0), OUT * R, R, rng);
        net__he_fill(net__p(n, l, 1), R * IN, IN, rng);
        // Scale so U V has the variance of a He matrix: var(UV) = R * (2/R) * (2/IN).
        float *u = net__p(n, l, 0);
        for (size_t i = 0; i < OUT * R; i++) u[i] *= 0.70710678f;
    } else {
        net__init_fill(n, net__p(n, l, 0), l->spec.bias ? net__p(n, l, 1) : NULL, OUT * IN, OUT, IN,
                       rng);
    }
}

/* out (B, NO) = inp (B, NI) . w^T */
static void dense_mm(float *out, const float *inp, const float *w, size_t B, size_t NI, size_t NO)
{
    net__sgemm_split(0, 0, 1, B, NO, NI, inp, NI, w, NI, 0.0f, out, NO);
}

static void dense_forward(struct net *n, struct net_layer *l, float *out, const float *inp,
                          size_t B, int training)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    if (R) {
        dense_mm(l->ws, inp, net__p(n, l, 1), B, IN, R);
        dense_mm(out, l->ws, net__p(n, l, 0), B, R, OUT);
    } else {
        dense_mm(out, inp, net__p(n, l, 0), B, IN, OUT);
    }
    if (l->spec.bias) {
        const float *b = net__p(n, l, R ? 2 : 1);
        for (size_t i = 0; i < B; i++)
            for (size_t o = 0; o < OUT; o++) out[i * OUT + o] += b[o];
    }
}

/* dw (NO, NI) += dout^T (NO, B) . inp (B, NI); dinp (B, NI) = dout (B, NO) . w (NO, NI) */
static void dense_mm_bwd(float *dinp, float *dw, const float *dout, const float *inp,
                         const float *w, size_t B, size_t NI, size_t NO)
{
    net__sgemm_split(1, 1, 0, NO, NI, B, dout, NO, inp, NI, 1.0f, dw, NI);
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, (int)NI, (int)NO, 1.0f, dout,
                    (int)NO, w, (int)NI, 0.0f, dinp, (int)NI);
}

static void dense_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                           const float *inp, const float *out, size_t B)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    if (l->spec.bias) {
        float *db = net__g(n, l, R ? 2 : 1);
        for (size_t i = 0; i < B; i++)
            for (size_t o = 0; o < OUT; o++) db[o] += dout[i * OUT + o];
    }
    if (R) {
        float *dt = n->scratch;
        dense_mm_bwd(dt, net__g(n, l, 0), dout, l->ws, net__p(n, l, 0), B, R, OUT);
        dense_mm_bwd(dinp, net__g(n, l, 1), dt, inp, net__p(n, l, 1), B, IN, R);
    } else {
        dense_mm_bwd(dinp, net__g(n, l, 0), dout, inp, net__p(n, l, 0), B, IN, OUT);
    }
}

static size_t dense_macs(const struct net_layer *l)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    return R ? R * (IN + OUT) : IN * OUT;
}

const struct net__ops net__dense_ops = {dense_shape, dense_tensors, dense_ws,       dense_scratch,
                                        dense_init,  dense_forward, dense_backward, dense_macs};
