/* net/layer_res.c: the residual block on (C, B, H, W) activations.
 *
 *   h1  = relu(BN1(conv1_3x3,stride s(x)))            conv1: C -> m  (m = spec.width)
 *   a2  = BN2(conv2_3x3(h1))                          conv2: m -> O  (O = spec.out)
 *   sc  = x                      if C == O and s == 1 (identity)
 *         BNp(convp_1x1,stride s(x))  otherwise       (projection)
 *   out = relu(a2 + sc)
 * With bn = 0 the BNs are absent and each conv has a bias (torch_ref's Res block).
 *
 * Tensors, in order (bn = 1): c1.w, bn1.gamma, bn1.beta, bn1.mean*, bn1.var*, c2.w, bn2.gamma,
 * bn2.beta, bn2.mean*, bn2.var*, [p.w, bnp.gamma, bnp.beta, bnp.mean*, bnp.var*] (* = state);
 * (bn = 0): c1.w, c1.b, c2.w, c2.b, [p.w, p.b].
 * Workspace: h1 (m, N1), and with bn the xhat / inv of each BN; N1 = B * OH * OW. */
#include <stdio.h>
#include <string.h>

#include "net/net_internal.h"

#define RES_BRANCH_SCALE 0.1f

/* Tensor indices within the layer; -1 when absent. */
struct res_ix {
    int c1w, c1b, g1, b1, m1, v1;
    int c2w, c2b, g2, b2, m2, v2;
    int pw, pb, gp, bp, mp, vp;
};

static int res_has_proj(const struct net_layer *l)
{
    return l->in.c != l->spec.out || l->spec.stride != 1;
}

static struct res_ix res_index(const struct net_layer *l)
{
    struct res_ix x;
    memset(&x, -1, sizeof(x));
    int k = 0;
    x.c1w = k++;
    if (l->spec.bn) {
        x.g1 = k++, x.b1 = k++, x.m1 = k++, x.v1 = k++;
    } else {
        x.c1b = k++;
    }
    x.c2w = k++;
    if (l->spec.bn) {
        x.g2 = k++, x.b2 = k++, x.m2 = k++, x.v2 = k++;
    } else {
        x.c2b = k++;
    }
    if (res_has_proj(l)) {
        x.pw = k++;
        if (l->spec.bn) {
            x.gp = k++, x.bp = k++, x.mp = k++, x.vp = k++;
        } else {
            x.pb = k++;
        }
    }
    return x;
}

static void res_geoms(const struct net_layer *l, struct net__conv *g1, struct net__conv *g2,
                      struct net__conv *gp)
{
    size_t s = l->spec.stride;
    net__conv_geom(g1, l->in.c, l->in.h, l->in.w, l->spec.width, 3, s, 1);
    net__conv_geom(g2, l->spec.width, g1->OH, g1->OW, l->spec.out, 3, 1, 1);
    net__conv_geom(gp, l->in.c, l->in.h, l->in.w, l->spec.out, 1, s, 0);
}

static int res_shape(struct net_layer *l, char *err, size_t errlen)
{
    if (!l->in.spatial) {
        snprintf(err, errlen, "needs a spatial input");
        return -1;
    }
    if (l->spec.out == 0 || l->spec.width == 0 || l->spec.stride == 0) {
        snprintf(err, errlen, "\"out\", \"width\" and \"stride\" must be >= 1");
        return -1;
    }
    struct net__conv g1, g2, gp;
    res_geoms(l, &g1, &g2, &gp);
    l->out = (struct net_shape){l->spec.out, g1.OH, g1.OW, 1};
    return 0;
}

static size_t res_tensors(const struct net_layer *l, struct net__tdesc *t)
{
    size_t k = 0, C = l->in.c, m = l->spec.width, O = l->spec.out;
    int bn = l->spec.bn;
#define RES_BN(pfx, n)                                                                             \
    do {                                                                                           \
        t[k++] = (struct net__tdesc){pfx ".gamma", {n}, 1, 0, NET_ARENA_PARAM};                    \
        t[k++] = (struct net__tdesc){pfx ".beta", {n}, 1, 0, NET_ARENA_PARAM};                     \
        t[k++] = (struct net__tdesc){pfx ".mean", {n}, 1, 0, NET_ARENA_STATE};                     \
        t[k++] = (struct net__tdesc){pfx ".var", {n}, 1, 0, NET_ARENA_STATE};                      \
    } while (0)
    t[k++] = (struct net__tdesc){"c1.w", {m, C, 3, 3}, 4, 1, NET_ARENA_PARAM};
    if (bn)
        RES_BN("bn1", m);
    else
        t[k++] = (struct net__tdesc){"c1.b", {m}, 1, 0, NET_ARENA_PARAM};
    t[k++] = (struct net__tdesc){"c2.w", {O, m, 3, 3}, 4, 1, NET_ARENA_PARAM};
    if (bn)
        RES_BN("bn2", O);
    else
        t[k++] = (struct net__tdesc){"c2.b", {O}, 1, 0, NET_ARENA_PARAM};
    if (res_has_proj(l)) {
        t[k++] = (struct net__tdesc){"p.w", {O, C, 1, 1}, 4, 1, NET_ARENA_PARAM};
        if (bn)
            RES_BN("bnp", O);
        else
            t[k++] = (struct net__tdesc){"p.b", {O}, 1, 0, NET_ARENA_PARAM};
    }
#undef RES_BN
    return k;
}

static size_t res_n1(const struct net_layer *l, size_t B)
{
    return B * l->out.h * l->out.w;
}

static size_t res_ws(const struct net_layer *l, size_t B)
{
    size_t N1 = res_n1(l, B), m = l->spec.width, O = l->spec.out;
    size_t s = m * N1; // h1
    if (l->spec.bn) {
        s += m * N1 + m + O * N1 + O;
        if (res_has_proj(l)) s += O * N1 + O;
    }
    return s;
}

static size_t res_colmax(const struct net_layer *l, size_t B)
{
    struct net__conv g1, g2, gp;
    res_geoms(l, &g1, &g2, &gp);
    size_t c = net__conv_col_size(&g1, B), c2 = net__conv_col_size(&g2, B);
    size_t cp = net__conv_col_size(&gp, B);
    if (c2 > c) c = c2;
    return cp > c ? cp : c;
}

static size_t res_scratch(const struct net_layer *l, size_t B)
{
    size_t N1 = res_n1(l, B), m = l->spec.width, O = l->spec.out;
    size_t mo = m > O ? m : O;
    // forward: col + tmpA + tmpB; backward: G + D + E + col + dcol
    return 2 * res_colmax(l, B) + 2 * O * N1 + mo * N1 + m * N1;
}

/* Workspace views. */
struct res_ws {
    float *h1, *xh1, *inv1, *xh2, *inv2, *xhp, *invp;
};

static struct res_ws res_views(const struct net_layer *l, size_t B)
{
    struct res_ws w = {0};
    size_t N1 = res_n1(l, B), m = l->spec.width, O = l->spec.out;
    float *p = l->ws;
    w.h1 = p, p += m * N1;
    if (l->spec.bn) {
        w.xh1 = p, p += m * N1;
        w.inv1 = p, p += m;
        w.xh2 = p, p += O * N1;
        w.inv2 = p, p += O;
        if (res_has_proj(l)) {
            w.xhp = p, p += O * N1;
            w.invp = p;
        }
    }
    return w;
}

/* Parameter pointer or NULL for an absent tensor. */
static float *res_p(struct net *n, struct net_layer *l, int k)
{
    return k < 0 ? NULL : net__p(n, l, (size_t)k);
}

static void res_init(struct net *n, struct net_layer *l, uint64_t *rng)
{
    struct res_ix x = res_index(l);
    size_t C = l->in.c, m = l->spec.width, O = l->spec.out;
    net__init_fill(n, net__p(n, l, (size_t)x.c1w), res_p(n, l, x.c1b), m * C * 9, m, C * 9, rng);
    net__init_fill(n, net__p(n, l, (size_t)x.c2w), res_p(n, l, x.c2b), O * m * 9, O, m * 9, rng);
    /* With He init the branch starts small (Fixup-style, Zhang et al. 2019): with
     * He-initialised branches and no BN, each block multiplies the stream's variance by about
     * 3 and a few blocks in the logits blow up and the ReLUs die in the first steps. (Torch's
     * default init is about 2.4x smaller than He and needs no scaling.) */
    if (!l->spec.bn && n->init == NET_INIT_HE) {
        float *w2 = net__p(n, l, (size_t)x.c2w);
        for (size_t i = 0; i < O * m * 9; i++) w2[i] *= RES_BRANCH_SCALE;
    }
    if (x.pw >= 0)
        net__init_fill(n, net__p(n, l, (size_t)x.pw), res_p(n, l, x.pb), O * C, O, C, rng);
    int gs[3] = {x.g1, x.g2, x.gp}, vs[3] = {x.v1, x.v2, x.vp};
    size_t ns[3] = {m, O, O};
    for (int i = 0; i < 3; i++) {
        if (gs[i] < 0) continue;
        float *g = net__p(n, l, (size_t)gs[i]), *v = net__p(n, l, (size_t)vs[i]);
        for (size_t c = 0; c < ns[i]; c++) g[c] = v[c] = 1.0f;
    }
}

static float *res_g(struct net *n, struct net_layer *l, int k)
{
    return k < 0 ? NULL : net__g(n, l, (size_t)k);
}

/* What forward and backward both start from: the tensor indices, the workspace views, the
 * three convolutions' geometries and the sizes. */
struct res_run {
    struct res_ix x;
    struct res_ws w;
    struct net__conv g1, g2, gp;
    size_t N1, m, O, colmax;
};

static struct res_run res_run(const struct net_layer *l, size_t B)
{
    struct res_run r = {.x = res_index(l),
                        .w = res_views(l, B),
                        .N1 = res_n1(l, B),
                        .m = l->spec.width,
                        .O = l->spec.out,
                        .colmax = res_colmax(l, B)};
    res_geoms(l, &r.g1, &r.g2, &r.gp);
    return r;
}

static void res_forward(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                        int training)
{
    const struct res_run r = res_run(l, B);
    float *col = n->scratch, *tmpA = col + r.colmax, *tmpB = tmpA + (r.m > r.O ? r.m : r.O) * r.N1;
    const int bn = l->spec.bn;

    // Shortcut first, so that without BN conv2's store can add it and apply the ReLU.
    const float *sc = inp;
    if (r.x.pw >= 0) {
        net__conv_fwd(bn ? tmpA : tmpB, col, inp, res_p(n, l, r.x.pw), res_p(n, l, r.x.pb), &r.gp,
                      B);
        if (bn)
            net__bn_fwd(tmpB, r.w.xhp, r.w.invp, res_p(n, l, r.x.mp), res_p(n, l, r.x.vp), tmpA,
                        res_p(n, l, r.x.gp), res_p(n, l, r.x.bp), r.O, r.N1, r.N1, 1, training);
        sc = tmpB;
    }

    // Main branch, first half: h1 = relu(BN1(conv1 x)); without BN the conv applies the ReLU.
    if (bn) {
        net__conv_fwd(tmpA, col, inp, res_p(n, l, r.x.c1w), NULL, &r.g1, B);
        net__bn_fwd(r.w.h1, r.w.xh1, r.w.inv1, res_p(n, l, r.x.m1), res_p(n, l, r.x.v1), tmpA,
                    res_p(n, l, r.x.g1), res_p(n, l, r.x.b1), r.m, r.N1, r.N1, 1, training);
        net__epi_apply(r.w.h1, &(struct net__epi){.relu = 1}, r.m * r.N1);
    } else {
        net__conv_fwd_epi(r.w.h1, col, inp, res_p(n, l, r.x.c1w), res_p(n, l, r.x.c1b), &r.g1, B,
                          &(struct net__epi){.relu = 1});
    }

    // Second half: out = relu(BN2(conv2 h1) + sc), fused into conv2 without BN.
    if (bn) {
        net__conv_fwd(tmpA, col, r.w.h1, res_p(n, l, r.x.c2w), NULL, &r.g2, B);
        net__bn_fwd(out, r.w.xh2, r.w.inv2, res_p(n, l, r.x.m2), res_p(n, l, r.x.v2), tmpA,
                    res_p(n, l, r.x.g2), res_p(n, l, r.x.b2), r.O, r.N1, r.N1, 1, training);
        net__epi_apply(out, &(struct net__epi){.add = sc, .relu = 1}, r.O * r.N1);
    } else {
        net__conv_fwd_epi(out, col, r.w.h1, res_p(n, l, r.x.c2w), res_p(n, l, r.x.c2b), &r.g2, B,
                          &(struct net__epi){.add = sc, .relu = 1});
    }
}

static void res_backward(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                         const float *inp, const float *out, size_t B)
{
    const struct res_run r = res_run(l, B);
    float *col = n->scratch, *dcol = col + r.colmax, *G = dcol + r.colmax, *D = G + r.O * r.N1;
    float *E = D + r.O * r.N1;
    const int bn = l->spec.bn;

    // G = dL/d(a2 + sc) through the final ReLU.
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < r.O * r.N1; i++) G[i] = out[i] > 0.0f ? dout[i] : 0.0f;

    // Shortcut: it sets dinp, conv1's data gradient adds to it below.
    if (r.x.pw >= 0) {
        const float *dzp = G;
        if (bn) {
            net__bn_bwd(D, res_g(n, l, r.x.gp), res_g(n, l, r.x.bp), G, r.w.xhp, r.w.invp,
                        res_p(n, l, r.x.gp), r.O, r.N1, r.N1, 1, n->training);
            dzp = D;
        }
        net__conv_bwd_epi(dinp, res_g(n, l, r.x.pw), res_g(n, l, r.x.pb), col, dcol, dzp, inp,
                          res_p(n, l, r.x.pw), &r.gp, B, &(struct net__epi){0});
    } else if (dinp) {
        memcpy(dinp, G, r.O * r.N1 * sizeof(float));
    }

    // Main branch.
    const float *dz2 = G;
    if (bn) {
        net__bn_bwd(D, res_g(n, l, r.x.g2), res_g(n, l, r.x.b2), G, r.w.xh2, r.w.inv2,
                    res_p(n, l, r.x.g2), r.O, r.N1, r.N1, 1, n->training);
        dz2 = D;
    }
    // E = conv2's data gradient through h1's ReLU (zero where h1 is), in one store.
    net__conv_bwd_epi(E, res_g(n, l, r.x.c2w), res_g(n, l, r.x.c2b), col, dcol, dz2, r.w.h1,
                      res_p(n, l, r.x.c2w), &r.g2, B, &(struct net__epi){.gate = r.w.h1});
    if (bn)
        net__bn_bwd(E, res_g(n, l, r.x.g1), res_g(n, l, r.x.b1), E, r.w.xh1, r.w.inv1,
                    res_p(n, l, r.x.g1), r.m, r.N1, r.N1, 1, n->training);
    net__conv_bwd(dinp, res_g(n, l, r.x.c1w), res_g(n, l, r.x.c1b), col, dcol, E, inp,
                  res_p(n, l, r.x.c1w), &r.g1, B);
}

static size_t res_macs(const struct net_layer *l)
{
    size_t HW = l->out.h * l->out.w, C = l->in.c, m = l->spec.width, O = l->spec.out;
    size_t f = HW * (m * C * 9 + O * m * 9);
    if (res_has_proj(l)) f += HW * O * C;
    return f;
}

const struct net__ops net__res_ops = {res_shape, res_tensors, res_ws,       res_scratch,
                                      res_init,  res_forward, res_backward, res_macs};
