/* net/layer_dense.c: fully connected layer on flat (B, IN) activations.
 *
 * Plain:      z = x W^T + b, W (OUT, IN).
 * Factorized: z = (x V^T) U^T + b, V (R, IN), U (OUT, R), nothing between the factors (the
 *             Caffe SVD trick); t = x V^T (B, R) is kept in the workspace for backward.
 * The products are net__gemm_nt / net__gemm_bc (dense_gemm.c), the bias in the forward's
 * store; net.c fuses a following ReLU into the forward and a preceding ReLU's backward into
 * the data gradient (net__dense_fwd_relu, net__dense_bwd_gate).
 * Tensors in order: plain "w", ["b"]; factorized "u", "v", ["b"]. */
#include <stdio.h>
#include <string.h>

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
    // dt (backward) or the transposed operands of the forward products (dense_mm)
    const size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    size_t s = NET__GEMM_NT_SCRATCH(B, R ? R : OUT, IN);
    if (R && NET__GEMM_NT_SCRATCH(B, OUT, R) > s) s = NET__GEMM_NT_SCRATCH(B, OUT, R);
    return s > B * R ? s : B * R;
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

/* out (B, NO) = inp (B, NI) . w^T + b; relu (if not NULL) = max(out, 0). */
static void dense_mm(struct net *n, float *out, float *relu, const float *inp, const float *w,
                     const float *b, size_t B, size_t NI, size_t NO)
{
    net__gemm_nt(out, relu, inp, w, b, B, NO, NI, NI, NI, NO, n->scratch);
}

void net__dense_fwd_relu(struct net *n, struct net_layer *l, float *out, float *relu,
                         const float *inp, size_t B)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    const float *b = l->spec.bias ? net__p(n, l, R ? 2 : 1) : NULL;
    if (R) {
        dense_mm(n, l->ws, NULL, inp, net__p(n, l, 1), NULL, B, IN, R);
        dense_mm(n, out, relu, l->ws, net__p(n, l, 0), b, B, R, OUT);
    } else {
        dense_mm(n, out, relu, inp, net__p(n, l, 0), b, B, IN, OUT);
    }
}

static void dense_forward(struct net *n, struct net_layer *l, float *out, const float *inp,
                          size_t B, int training)
{
    net__dense_fwd_relu(n, l, out, NULL, inp, B);
}

/* For the layer's k-th tensor w (NO, NI): dinp (B, NI) = dout (B, NO) . w, gated by gate
 * (B, NI) >= 0 when gate is not NULL; then dw (NO, NI) += dout^T (NO, B) . inp (B, NI), or =
 * on a zero arena (n->bwd_store), or, in net_backward_update, w's SGD step fused into that
 * store (dinp comes first: it needs w before the step). */
static void dense_mm_bwd(struct net *n, const struct net_layer *l, size_t k, float *dinp,
                         const float *dout, const float *inp, const float *gate, size_t B,
                         size_t NI, size_t NO)
{
    struct net_tensor *t = &n->tensors[l->t0 + k];
    float *w = net__p(n, l, k), *dw = net__g(n, l, k);
    if (dinp) net__gemm_bc(dinp, dout, w, gate, B, NI, NO, NO, 1, NI, NI, 0);
    if (n->fuse && n->bwd_store) {
        const struct net_optim *o = n->fuse;
        const struct net__sgd s = {
            w,          n->m + t->off, n->fuse_lr, o->momentum, t->decay ? o->weight_decay : 0.0f,
            o->nesterov};
        net__gemm_bc_sgd(dw, dout, inp, NO, NI, B, 1, NO, NI, NI, &s);
        t->fused = 1;
    } else {
        net__gemm_bc(dw, dout, inp, NULL, NO, NI, B, 1, NO, NI, NI, !n->bwd_store);
    }
}

/* db (NO) += column sums of dout (B, NO). */
static void dense_bias_grad(float *db, const float *dout, size_t B, size_t NO)
{
    for (size_t i = 0; i < B; i++) {
        const float *d = dout + i * NO;
        for (size_t o = 0; o < NO; o++) db[o] += d[o];
    }
}

void net__dense_bwd_gate(struct net *n, struct net_layer *l, float *dinp, const float *gate,
                         const float *dout, const float *inp, size_t B)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    if (l->spec.bias) dense_bias_grad(net__g(n, l, R ? 2 : 1), dout, B, OUT);
    if (R) {
        float *dt = n->scratch;
        dense_mm_bwd(n, l, 0, dt, dout, l->ws, NULL, B, R, OUT);
        dense_mm_bwd(n, l, 1, dinp, dt, inp, gate, B, IN, R);
    } else {
        dense_mm_bwd(n, l, 0, dinp, dout, inp, gate, B, IN, OUT);
    }
}

static void dense_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                           const float *inp, const float *out, size_t B)
{
    net__dense_bwd_gate(n, l, dinp, NULL, dout, inp, B);
}

static size_t dense_macs(const struct net_layer *l)
{
    size_t IN = dense_in(l), OUT = l->spec.out, R = l->spec.rank;
    return R ? R * (IN + OUT) : IN * OUT;
}

const struct net__ops net__dense_ops = {dense_shape, dense_tensors, dense_ws,       dense_scratch,
                                        dense_init,  dense_forward, dense_backward, dense_macs};
