/* svd_adapt/surgery.c: spectra, the rank rules, and the shrink / grow / rank operations.
 *
 * Every operation builds the matrices of a width change and hands them to svd__group_apply
 * (group.c), which maps parameters, optimizer moments and BN state alike:
 *   rotate  P = U_k^T (k x m), Q = U_k, from the SVD of the producing weight W = U S V^T.
 *   select  P = rows of I for the kept units S (pivoted QR on the centred activations of all
 *           readers stacked: one subset for every reader, the "simultaneous" of SOMP);
 *           per reader r, Q_r = [I; T_r] from the least squares h_D ~ T_r h_S + c_r, and c_r
 *           goes into the consumer's bias.
 *   grow    P = [I; 0], Q = [I 0]; new producing rows random orthogonal to the old ones,
 *           or, for GradMax, zero rows and new consumer columns from the gradient correlation.
 * The factorized form (rank of a single layer) is handled separately by svd_set_rank. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "svd_adapt/svd_internal.h"

#define SVD_MAX_ROWS 8192 // calibration rows kept per reader (samples x positions, strided)

// ---- spectra -----------------------------------------------------------------------------

/* The producing weight of a group as (m x L). */
static const struct net_tensor *svd__main_w(const struct net *n, const struct svd__group *g)
{
    for (size_t i = 0; i < g->n_rows; i++)
        if (g->rows[i].kind == SVD_RK_W) return &n->tensors[g->rows[i].t];
    return NULL;
}

long svd_spectrum_weights(const struct net *n, const struct svd_gref *ref, float *s, size_t cap)
{
    struct svd__group g;
    int rc = svd__group_build(n, ref, &g);
    if (rc < 0) return rc;
    const struct net_tensor *t = svd__main_w(n, &g);
    if (!t) return -EINVAL;
    size_t L = t->n / g.m, r = g.m < L ? g.m : L;
    if (r > cap) return -ENOSPC;
    rc = svd__svals(net_tensor_data(n, t), g.m, L, s);
    return rc < 0 ? rc : (long)r;
}

/* Centres the columns of h (N x m) in place; writes the means to mu (may be NULL). */
static void svd__centre(float *h, size_t N, size_t m, float *mu)
{
    for (size_t j = 0; j < m; j++) {
        double s = 0.0;
        for (size_t i = 0; i < N; i++) s += h[i * m + j];
        float mj = (float)(s / (double)N);
        for (size_t i = 0; i < N; i++) h[i * m + j] -= mj;
        if (mu) mu[j] = mj;
    }
}

int svd__spectra_acts(struct net *n, const struct svd_gref *refs, size_t ng, const float *x,
                      size_t B, float *s, size_t cap, long *r)
{
    struct svd__group *g = calloc(ng + 1, sizeof(*g));
    const struct svd__group **gp = calloc(ng + 1, sizeof(*gp));
    size_t *rd = calloc(ng + 1, sizeof(size_t)), *N = calloc(ng + 1, sizeof(size_t)), k = 0;
    float **h = calloc(ng + 1, sizeof(float *));
    long *map = malloc((ng + 1) * sizeof(long));
    int rc = -ENOMEM;
    if (!g || !gp || !rd || !N || !h || !map) goto out;
    for (size_t i = 0; i < ng; i++) {
        map[i] = -1;
        if ((r[i] = svd__group_build(n, &refs[i], &g[k])) < 0) continue;
        if (g[k].m > cap) {
            r[i] = -ENOSPC;
            continue;
        }
        gp[k] = &g[k];
        map[i] = (long)k++;
    }
    if ((rc = svd__calib_acts_many(n, gp, rd, k, x, B, SVD_MAX_ROWS, h, N)) < 0) goto out;
    for (size_t i = 0; i < ng; i++) {
        if (map[i] < 0) continue;
        const size_t j = (size_t)map[i], m = g[j].m;
        svd__centre(h[j], N[j], m, NULL);
        // Singular values of H / sqrt(N) from the eigenvalues of the m x m Gram matrix
        // H^T H / N: one syrk, O(N m^2), instead of an SVD of the N x m matrix.
        int e = svd__gram_svals(h[j], N[j], m, s + i * cap);
        r[i] = e < 0 ? e : (long)(m < N[j] ? m : N[j]);
    }
    rc = 0;
out:
    for (size_t i = 0; h && i < k; i++) free(h[i]);
    free(g);
    free(gp);
    free(rd);
    free(N);
    free(h);
    free(map);
    return rc;
}

int svd__saliency(struct net *n, const struct svd_gref *refs, size_t ng, const float *x,
                  const uint8_t *y, size_t B, double *sal, size_t cap)
{
    struct svd__group *g = calloc(ng + 1, sizeof(*g));
    double *tau = NULL;
    int rc = -ENOMEM;
    if (!g) return rc;
    size_t mmax = 0;
    for (size_t i = 0; i < ng; i++) {
        if ((rc = svd__group_build(n, &refs[i], &g[i])) < 0) goto out;
        if (g[i].m > cap) {
            rc = -ENOSPC;
            goto out;
        }
        if (g[i].m > mmax) mmax = g[i].m;
        memset(sal + i * cap, 0, g[i].m * sizeof(double));
    }
    rc = -ENOMEM;
    const size_t D = n->in_shape.c * n->in_shape.h * n->in_shape.w;
    size_t chunk = n->ws_batch && n->ws_batch < 32 ? n->ws_batch : 32;
    if (chunk > B) chunk = B;
    if (!(tau = malloc((mmax + 1) * sizeof(double))) || !chunk || net_reserve(n, chunk) < 0)
        goto out;
    size_t K = 0;
    for (size_t b0 = 0; b0 < B; b0 += chunk, K++) {
        const size_t Bc = B - b0 < chunk ? B - b0 : chunk;
        net_zero_grad(n);
        net_forward(n, x + b0 * D, y + b0, Bc, 0);
        net_backward(n, y + b0, Bc);
        for (size_t i = 0; i < ng; i++) {
            const size_t m = g[i].m;
            memset(tau, 0, m * sizeof(double));
            // Removing unit j zeroes its columns in every consumer: the loss changes by
            // -sum W . dL/dW over them, to first order.
            for (size_t ci = 0; ci < g[i].n_cols; ci++) {
                const struct net_tensor *t = &n->tensors[g[i].cols[ci].t];
                if (t->arena != NET_ARENA_PARAM) continue;
                const size_t bl = g[i].cols[ci].block, D0 = t->dims[0];
                const float *w = n->params + t->off, *gr = n->grads + t->off;
                for (size_t o = 0; o < D0; o++)
                    for (size_t j = 0; j < m; j++)
                        for (size_t b = 0; b < bl; b++) {
                            const size_t e = (o * m + j) * bl + b;
                            tau[j] += (double)w[e] * gr[e];
                        }
            }
            // The chunk's mean gradient has 1/Bc of a sample's variance: weigh by Bc.
            for (size_t j = 0; j < m; j++) sal[i * cap + j] += (double)Bc * tau[j] * tau[j];
        }
    }
    for (size_t i = 0; i < ng; i++)
        for (size_t j = 0; j < g[i].m; j++) sal[i * cap + j] /= (double)(K ? K : 1);
    rc = 0;
out:
    net_zero_grad(n);
    free(tau);
    free(g);
    return rc;
}

long svd_spectrum_acts(struct net *n, const struct svd_gref *ref, const float *x, size_t B,
                       float *s, size_t cap)
{
    long r;
    int rc = svd__spectra_acts(n, ref, 1, x, B, s, cap, &r);
    return rc < 0 ? rc : r;
}

size_t svd_rank_rule(const struct svd_policy *p, const float *s, size_t k)
{
    if (k == 0) return 1;
    size_t keep = k;
    switch (p->rule) {
    case SVD_RULE_RELATIVE:
        keep = 0;
        while (keep < k && s[keep] >= p->shrink_threshold * s[0]) keep++;
        break;
    case SVD_RULE_ENERGY: {
        double tot = 0.0, acc = 0.0;
        for (size_t i = 0; i < k; i++) tot += (double)s[i] * s[i];
        keep = 0;
        while (keep < k && acc < (1.0 - p->energy_eps) * tot) {
            acc += (double)s[keep] * s[keep];
            keep++;
        }
        break;
    }
    case SVD_RULE_GAP:
        // CaffeSVD: cut at the first large gap; with no such gap keep everything.
        for (size_t i = 0; i + 1 < k; i++) {
            if (s[i + 1] <= 0.0f || s[i] / s[i + 1] > p->gap_threshold) {
                keep = i + 1;
                break;
            }
        }
        break;
    }
    return keep ? keep : 1;
}

// ---- shrink ------------------------------------------------------------------------------

/* Tensor index of the group's first row of a kind, or -1. */
static long svd__row_t(const struct svd__group *g, enum svd__rk kind)
{
    for (size_t i = 0; i < g->n_rows; i++)
        if (g->rows[i].kind == kind) return (long)g->rows[i].t;
    return -1;
}

/* rotate: P = U_k^T, Q = U_k from the SVD of the producing weight. With a BN after the
 * producer (a dense or conv layer followed by a BN layer), the BN is first folded into the
 * weight in its eval form, W_f = diag(gamma / sigma) W, b_f = gamma (b - mu) / sigma + beta,
 * the SVD is that of W_f, and the new BN is set to pass the rotated channels through: with
 * y = P W_f x and its calibration mean m and variance v, gamma' = sqrt(v + eps),
 * beta' = m + P b_f, running mean = m (+ P b_f when the producer keeps a bias), running
 * var = v. In eval mode that BN is then exactly the identity on P (W_f x + b_f). */
static int svd__rotate_build(struct net **out, struct net *n, const struct svd__group *g, size_t k,
                             const float *Pin, const float *Qin, const float *cin, const float *x,
                             size_t Bc, char *err, size_t errlen)
{
    const struct net_tensor *t = svd__main_w(n, g);
    const size_t m = g->m, L = t->n / m, r = m < L ? m : L;
    const long tg = svd__row_t(g, SVD_RK_GAMMA), tb = svd__row_t(g, SVD_RK_BIAS);
    float *wf = malloc(m * L * sizeof(float)), *bf = calloc(m, sizeof(float));
    float *u = malloc(m * r * sizeof(float)), *s = malloc(r * sizeof(float));
    float *vt = malloc(r * L * sizeof(float)), *P = calloc(k * m, sizeof(float));
    float *Q = calloc(g->n_readers * m * k, sizeof(float)), *h = NULL;
    struct net *nn = NULL;
    int rc = -ENOMEM;
    if (!wf || !bf || !u || !s || !vt || !P || !Q) goto out;
    memcpy(wf, net_tensor_data(n, t), m * L * sizeof(float));
    if (tb >= 0) memcpy(bf, net_tensor_data(n, &n->tensors[tb]), m * sizeof(float));
    const float *gam = NULL, *bet = NULL, *mu = NULL, *var = NULL;
    if (tg >= 0) {
        gam = net_tensor_data(n, &n->tensors[tg]);
        bet = net_tensor_data(n, &n->tensors[svd__row_t(g, SVD_RK_BETA)]);
        mu = net_tensor_data(n, &n->tensors[svd__row_t(g, SVD_RK_MEAN)]);
        var = net_tensor_data(n, &n->tensors[svd__row_t(g, SVD_RK_VAR)]);
        for (size_t i = 0; i < m; i++) {
            float a = gam[i] / sqrtf(var[i] + 1e-5f);
            for (size_t j = 0; j < L; j++) wf[i * L + j] *= a;
            bf[i] = a * (bf[i] - mu[i]) + bet[i];
        }
    }
    if (Pin) {
        memcpy(P, Pin, k * m * sizeof(float));
    } else {
        if ((rc = svd__svd(wf, m, L, u, s, vt)) < 0) {
            snprintf(err, errlen, "SVD did not converge");
            goto out;
        }
        for (size_t i = 0; i < k && i < r; i++)
            for (size_t j = 0; j < m; j++) P[i * m + j] = u[j * r + i];
    }
    if (Qin)
        memcpy(Q, Qin, g->n_readers * m * k * sizeof(float));
    else
        for (size_t rd = 0; rd < g->n_readers; rd++)
            for (size_t j = 0; j < m; j++)
                for (size_t i = 0; i < k; i++) Q[(rd * m + j) * k + i] = P[i * m + j];
    if ((rc = svd__group_apply(&nn, n, g, k, P, Q, cin, NULL, NULL, err, errlen)) < 0) goto out;
    // The folded weight and bias, rotated, replace what the generic map produced.
    float *nw = net_tensor_data(nn, &nn->tensors[t - n->tensors]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)k, (int)L, (int)m, 1.0f, P, (int)m,
                wf, (int)L, 0.0f, nw, (int)L);
    if (tg >= 0) {
        // Moments follow the weight's map, fold included: m' = P diag(a) m, v' = P^2 diag(a^2) v.
        const size_t off_o = t->off, off_n = nn->tensors[t - n->tensors].off;
        for (size_t i = 0; i < k; i++) {
            for (size_t x2 = 0; x2 < L; x2++) {
                double sm = 0.0, sv = 0.0;
                for (size_t j = 0; j < m; j++) {
                    double a = gam[j] / sqrt(var[j] + 1e-5), p = P[i * m + j];
                    sm += p * a * n->m[off_o + j * L + x2];
                    sv += p * p * a * a * n->v[off_o + j * L + x2];
                }
                nn->m[off_n + i * L + x2] = (float)sm;
                nn->v[off_n + i * L + x2] = (float)sv;
            }
        }
    }
    float *pb = calloc(k, sizeof(float));
    if (!pb) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < k; i++)
        for (size_t j = 0; j < m; j++) pb[i] += P[i * m + j] * bf[j];
    if (tb >= 0) memcpy(net_tensor_data(nn, &nn->tensors[tb]), pb, k * sizeof(float));
    if (tg >= 0) {
        // Statistics of y = P W_f x: from the BN layer's input z on the calibration batch,
        // W_f x = a (z - b) where a = gamma / sigma.
        const size_t bn_layer = n->tensors[tg].layer;
        struct svd__group gz = *g;
        gz.n_readers = 1;
        gz.readers[0] = (struct svd__reader){bn_layer, -1};
        size_t N;
        if ((rc = svd__calib_acts(n, &gz, 0, x, Bc, SVD_MAX_ROWS, &h, &N)) < 0) {
            free(pb);
            goto out;
        }
        const float *b0 = tb >= 0 ? net_tensor_data(n, &n->tensors[tb]) : NULL;
        float *G = net_tensor_data(nn, &nn->tensors[tg]);
        float *Bt = net_tensor_data(nn, &nn->tensors[svd__row_t(g, SVD_RK_BETA)]);
        float *M = net_tensor_data(nn, &nn->tensors[svd__row_t(g, SVD_RK_MEAN)]);
        float *V = net_tensor_data(nn, &nn->tensors[svd__row_t(g, SVD_RK_VAR)]);
        for (size_t i = 0; i < k; i++) {
            double s1 = 0.0, s2 = 0.0;
            for (size_t q = 0; q < N; q++) {
                double y = 0.0;
                for (size_t j = 0; j < m; j++) {
                    float a = gam[j] / sqrtf(var[j] + 1e-5f);
                    y += (double)P[i * m + j] * a * (h[q * m + j] - (b0 ? b0[j] : 0.0f));
                }
                s1 += y;
                s2 += y * y;
            }
            double mean = s1 / (double)N, v = s2 / (double)N - mean * mean;
            if (v < 0.0) v = 0.0;
            G[i] = (float)sqrt(v + 1e-5);
            Bt[i] = (float)mean + pb[i];
            M[i] = (float)mean + (tb >= 0 ? pb[i] : 0.0f);
            V[i] = (float)v;
        }
    }
    free(pb);
    *out = nn;
    nn = NULL;
    rc = 0;
out:
    net_destroy(nn);
    free(wf);
    free(bf);
    free(u);
    free(s);
    free(vt);
    free(P);
    free(Q);
    free(h);
    return rc;
}

/* Is there a nonlinearity (ReLU, max pool) between a units group's producer and its
 * consumers? Then rotating the producer's rows does not rotate what the consumers read. */
static int svd__nonlinear(const struct net *n, const struct svd__group *g)
{
    if (g->ref.kind != SVD_G_UNITS) return 0;
    for (size_t i = g->ref.layer + 1; i < n->n_layers; i++) {
        enum net_kind k = n->layers[i].spec.kind;
        if (k == NET_RELU || k == NET_MAXPOOL) return 1;
        if (k == NET_DENSE || k == NET_CONV || k == NET_RES) return 0;
    }
    return 0;
}

/* rotate through a nonlinearity: the rotation is that of the pre-activations (the producer's
 * output, BN folded in: the BN layer's output in eval form) on the calibration batch, the top
 * k principal directions P (k x m); then every consumer is refitted by least squares to read
 * the new k channels in place of the old m, h_old ~ T^T h_new + c (as select does), with the
 * leftover c into the consumer's bias. */
static int svd__shrink_rotate_nl(struct net **out, struct net *n, const struct svd__group *g,
                                 size_t k, const float *x, size_t Bc, char *err, size_t errlen)
{
    const size_t m = g->m, nr = g->n_readers;
    const long tg = svd__row_t(g, SVD_RK_GAMMA);
    size_t pre = g->ref.layer + 1; // acts index of the pre-activation
    if (tg >= 0 && n->tensors[tg].layer == g->ref.layer + 1) pre = g->ref.layer + 2;
    struct svd__group gz = *g;
    gz.n_readers = 1;
    gz.readers[0] = (struct svd__reader){pre, -1};
    float *z = NULL, *ev = malloc(m * sizeof(float)), *V = malloc(m * m * sizeof(float));
    float *P = malloc(k * m * sizeof(float)), *Q = calloc(nr * m * k, sizeof(float));
    float *c = calloc(nr * m, sizeof(float)), *T = malloc(k * m * sizeof(float));
    float *mo = malloc(m * sizeof(float)), *mn = malloc(k * sizeof(float));
    float *ho = NULL, *hn = NULL;
    struct net *nn = NULL;
    size_t N;
    int rc = -ENOMEM;
    if (!ev || !V || !P || !Q || !c || !T || !mo || !mn) goto out;
    if ((rc = svd__calib_acts(n, &gz, 0, x, Bc, SVD_MAX_ROWS, &z, &N)) < 0) goto out;
    svd__centre(z, N, m, NULL);
    if ((rc = svd__gram_eig(z, N, m, ev, V)) < 0) {
        snprintf(err, errlen, "eigen-decomposition of the pre-activations failed");
        goto out;
    }
    memcpy(P, V, k * m * sizeof(float)); // rows: the top k principal directions
    if ((rc = svd__rotate_build(&nn, n, g, k, P, NULL, NULL, x, Bc, err, errlen)) < 0) goto out;
    // What every reader sees before (n, m channels) and after (nn, k channels).
    struct svd__group gn = *g;
    gn.m = k;
    for (size_t r = 0; r < nr; r++) {
        size_t No, Nn;
        free(ho);
        free(hn);
        ho = hn = NULL;
        if ((rc = svd__calib_acts(n, g, r, x, Bc, SVD_MAX_ROWS, &ho, &No)) < 0) goto out;
        if ((rc = svd__calib_acts(nn, &gn, r, x, Bc, SVD_MAX_ROWS, &hn, &Nn)) < 0) goto out;
        if (No != Nn) {
            rc = -EINVAL;
            snprintf(err, errlen, "internal: reader rows differ after rotation");
            goto out;
        }
        svd__centre(ho, No, m, mo);
        svd__centre(hn, Nn, k, mn);
        if ((rc = svd__lstsq(hn, ho, No, k, m, T)) < 0) {
            snprintf(err, errlen, "least-squares refit after rotation is ill-conditioned");
            goto out;
        }
        // h_old_j ~ mo_j + sum_i T[i][j] (h_new_i - mn_i)
        float *Qr = Q + r * m * k, *cr = c + r * m;
        for (size_t j = 0; j < m; j++) {
            double cj = mo[j];
            for (size_t i = 0; i < k; i++) {
                Qr[j * k + i] = T[i * m + j];
                cj -= (double)T[i * m + j] * mn[i];
            }
            cr[j] = (float)cj;
        }
    }
    net_destroy(nn);
    nn = NULL;
    rc = svd__rotate_build(out, n, g, k, P, Q, c, x, Bc, err, errlen);
out:
    net_destroy(nn);
    free(z);
    free(ev);
    free(V);
    free(P);
    free(Q);
    free(c);
    free(T);
    free(mo);
    free(mn);
    free(ho);
    free(hn);
    return rc;
}

static int svd__shrink_select(struct net **out, struct net *n, const struct svd__group *g, size_t k,
                              const float *x, size_t B, char *err, size_t errlen)
{
    const size_t m = g->m, nr = g->n_readers;
    float **H = calloc(nr, sizeof(float *)), *mu = malloc(nr * m * sizeof(float));
    size_t *N = calloc(nr, sizeof(size_t)), Ntot = 0;
    int *order = malloc(m * sizeof(int));
    float *stack = NULL, *P = calloc(k * m, sizeof(float));
    float *Q = calloc(nr * m * k, sizeof(float)), *c = calloc(nr * m, sizeof(float));
    float *A = NULL, *Bm = NULL, *T = NULL;
    int rc = -ENOMEM;
    if (!H || !mu || !N || !order || !P || !Q || !c) goto out;
    {
        const struct svd__group **gp = malloc(nr * sizeof(*gp));
        size_t *rd = malloc(nr * sizeof(size_t));
        if (!gp || !rd) {
            free(gp);
            free(rd);
            goto out;
        }
        for (size_t r = 0; r < nr; r++) gp[r] = g, rd[r] = r;
        rc = svd__calib_acts_many(n, gp, rd, nr, x, B, SVD_MAX_ROWS / nr + 1, H, N);
        free(gp);
        free(rd);
        if (rc < 0) goto out;
    }
    for (size_t r = 0; r < nr; r++) {
        svd__centre(H[r], N[r], m, mu + r * m);
        Ntot += N[r];
    }
    rc = -ENOMEM;
    if (!(stack = malloc(Ntot * m * sizeof(float)))) goto out;
    for (size_t r = 0, off = 0; r < nr; off += N[r], r++)
        memcpy(stack + off * m, H[r], N[r] * m * sizeof(float));
    if ((rc = svd__pivot_order(stack, Ntot, m, order)) < 0) {
        snprintf(err, errlen, "pivoted QR failed");
        goto out;
    }
    // Kept units in their original order (stable layout), dropped ones after.
    rc = -ENOMEM; // every failed allocation below is an error, never a silent success
    char *keep = calloc(m, 1);
    if (!keep) goto out;
    for (size_t i = 0; i < k; i++) keep[order[i]] = 1;
    size_t *S = malloc(m * sizeof(size_t)), *D = S ? S + k : NULL;
    if (!S) {
        free(keep);
        goto out;
    }
    for (size_t j = 0, a = 0, b = 0; j < m; j++) {
        if (keep[j])
            S[a++] = j;
        else
            D[b++] = j;
    }
    free(keep);
    const size_t d = m - k;
    for (size_t i = 0; i < k; i++) P[i * m + S[i]] = 1.0f;
    A = malloc(SVD_MAX_ROWS * k * sizeof(float) + k * sizeof(float));
    Bm = malloc(SVD_MAX_ROWS * (d + 1) * sizeof(float));
    T = malloc(k * (d + 1) * sizeof(float));
    if (!A || !Bm || !T) {
        free(S);
        goto out;
    }
    for (size_t r = 0; r < nr; r++) {
        float *Qr = Q + r * m * k, *cr = c + r * m, *mr = mu + r * m;
        for (size_t i = 0; i < k; i++) Qr[S[i] * k + i] = 1.0f;
        if (d == 0) continue;
        for (size_t q = 0; q < N[r]; q++) {
            for (size_t i = 0; i < k; i++) A[q * k + i] = H[r][q * m + S[i]];
            for (size_t e = 0; e < d; e++) Bm[q * d + e] = H[r][q * m + D[e]];
        }
        if ((rc = svd__lstsq(A, Bm, N[r], k, d, T)) < 0) {
            snprintf(err, errlen, "least-squares rewiring is ill-conditioned");
            free(S);
            goto out;
        }
        // h_D ~ mu_D + T^T (h_S - mu_S): channel D[e] = sum_i T[i][e] h_S[i] + c[D[e]].
        for (size_t e = 0; e < d; e++) {
            double ce = mr[D[e]];
            for (size_t i = 0; i < k; i++) {
                Qr[D[e] * k + i] = T[i * d + e];
                ce -= (double)T[i * d + e] * mr[S[i]];
            }
            cr[D[e]] = (float)ce;
        }
    }
    free(S);
    rc = svd__group_apply(out, n, g, k, P, Q, c, NULL, NULL, err, errlen);
out:
    for (size_t r = 0; H && r < nr; r++) free(H[r]);
    free(H);
    free(mu);
    free(N);
    free(order);
    free(stack);
    free(P);
    free(Q);
    free(c);
    free(A);
    free(Bm);
    free(T);
    return rc;
}

int svd_shrink(struct net **out, const struct net *n, const struct svd_gref *ref, size_t k,
               enum svd_mode mode, const float *x, size_t B, char *err, size_t errlen)
{
    struct svd__group g;
    int rc = svd__group_build(n, ref, &g);
    if (rc < 0) {
        snprintf(err, errlen, "layer %zu is not an adaptable group", ref->layer);
        return rc;
    }
    if (k == 0 || k > g.m) {
        snprintf(err, errlen, "cannot shrink width %zu to %zu", g.m, k);
        return -EINVAL;
    }
    /* rotate mixes channels. A residual stream's identity shortcuts cannot follow a rotation,
     * and a residual block's inner BN has no saved input to fold with: those use select. */
    int bn_layer_after = g.has_bn && ref->kind == SVD_G_UNITS;
    if (mode == SVD_MODE_ROTATE && ref->kind != SVD_G_STREAM && (!g.has_bn || bn_layer_after)) {
        if (g.has_bn && (!x || !B)) {
            snprintf(err, errlen, "rotate with batch norm needs a calibration batch");
            return -EINVAL;
        }
        if (x && B && svd__nonlinear(n, &g))
            return svd__shrink_rotate_nl(out, (struct net *)n, &g, k, x, B, err, errlen);
        return svd__rotate_build(out, (struct net *)n, &g, k, NULL, NULL, NULL, x, B, err, errlen);
    }
    if (!x || !B) {
        snprintf(err, errlen, "select needs a calibration batch");
        return -EINVAL;
    }
    return svd__shrink_select(out, (struct net *)n, &g, k, x, B, err, errlen);
}

// ---- grow ------------------------------------------------------------------------------

int svd__orth_rows(float *nw, const float *w, size_t m, size_t L, size_t extra, float norm,
                   uint64_t *rng)
{
    size_t r = m < L ? m : L;
    float *u = malloc(m * r * sizeof(float)), *s = malloc(r * sizeof(float));
    float *vt = malloc(r * L * sizeof(float)), *norms = malloc(m * sizeof(float));
    int rc = -ENOMEM;
    if (!u || !s || !vt || !norms) goto out;
    for (size_t i = 0; i < m; i++) norms[i] = cblas_snrm2((int)L, w + i * L, 1);
    // Median by partial selection sort (m is small).
    for (size_t i = 0; i <= m / 2; i++)
        for (size_t j = i + 1; j < m; j++)
            if (norms[j] < norms[i]) {
                float tmp = norms[i];
                norms[i] = norms[j];
                norms[j] = tmp;
            }
    float scale = norm > 0.0f ? norm : m ? norms[m / 2] : 1.0f;
    if (!(scale > 0.0f)) scale = 1.0f;
    rc = svd__svd(w, m, L, u, s, vt);
    if (rc == -ENOMEM) goto out;
    size_t rank = 0;
    while (rc == 0 && rank < r && s[rank] > 1e-6f * s[0]) rank++;
    for (size_t e = 0; e < extra; e++) {
        float *v = nw + e * L;
        for (size_t x = 0; x < L; x++) v[x] = net_rand_normal(rng);
        // Two passes of Gram-Schmidt against the old row space and the new rows.
        for (int pass = 0; pass < 2; pass++) {
            for (size_t i = 0; rc == 0 && i < rank && rank + e < L; i++) {
                float d = cblas_sdot((int)L, v, 1, vt + i * L, 1);
                cblas_saxpy((int)L, -d, vt + i * L, 1, v, 1);
            }
            for (size_t i = 0; i < e && rank + e < L; i++) {
                float d = cblas_sdot((int)L, v, 1, nw + i * L, 1);
                float nn = cblas_sdot((int)L, nw + i * L, 1, nw + i * L, 1);
                if (nn > 0) cblas_saxpy((int)L, -d / nn, nw + i * L, 1, v, 1);
            }
        }
        float nv = cblas_snrm2((int)L, v, 1);
        cblas_sscal((int)L, nv > 0 ? scale / nv : 0.0f, v, 1);
    }
    rc = 0;
out:
    free(u);
    free(s);
    free(vt);
    free(norms);
    return rc;
}

/* GradMax (dense -> dense): M = sum_b g_b h_b^T, g = dL/dz of the consumer (n_c), h = the
 * producer's input (L). New units: zero incoming rows; outgoing columns = top left singular
 * vectors of M, each scaled to half the mean norm of the existing outgoing columns. */
static int svd__gradmax_cols(float *cols, struct net *n, const struct svd__group *g, size_t extra,
                             const float *x, const uint8_t *y, size_t B)
{
    const size_t p = g->ref.layer, cons = (size_t)g->gradmax_ok;
    const size_t L = n->layers[p].in.c, nc = n->layers[cons].out.c, m = g->m;
    float *M = calloc(nc * L, sizeof(float)), *u = NULL, *s = NULL, *vt = NULL;
    int rc = -ENOMEM;
    const size_t D = n->in_shape.c * n->in_shape.h * n->in_shape.w;
    size_t chunk = n->ws_batch ? n->ws_batch : 64;
    if (chunk > B) chunk = B;
    if (!M || net_reserve(n, chunk) < 0) { // net_forward would run on a short workspace
        free(M);
        return rc;
    }
    /* M (nc x L) = dz^T (nc x B) . h (B x L), accumulated over chunks of the workspace batch
     * (no workspace for all B samples is built). */
    for (size_t b0 = 0; b0 < B; b0 += chunk) {
        const size_t Bc = B - b0 < chunk ? B - b0 : chunk;
        net_zero_grad(n);
        net_forward(n, x + b0 * D, y + b0, Bc, 0);
        net_backward(n, y + b0, Bc);
        // The loss is a mean over the chunk: weigh each chunk by its share of the batch.
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)L, (int)Bc,
                    (float)Bc / (float)B, n->dacts[cons + 1], (int)nc, n->acts[p], (int)L, 1.0f, M,
                    (int)L);
    }
    net_zero_grad(n);
    size_t r = nc < L ? nc : L;
    u = malloc(nc * r * sizeof(float));
    s = malloc(r * sizeof(float));
    vt = malloc(r * L * sizeof(float));
    if (!u || !s || !vt) goto out;
    if ((rc = svd__svd(M, nc, L, u, s, vt)) < 0) goto out;
    const float *w = net_tensor_data(n, net_tensor_get(n, cons, "w")); // (nc, m)
    double mean = 0.0;
    for (size_t j = 0; j < m; j++) {
        double sq = 0.0;
        for (size_t o = 0; o < nc; o++) sq += (double)w[o * m + j] * w[o * m + j];
        mean += sqrt(sq) / (double)m;
    }
    for (size_t e = 0; e < extra; e++)
        for (size_t o = 0; o < nc; o++)
            cols[o * extra + e] = e < r ? (float)(0.5 * mean) * u[o * r + e] : 0.0f;
out:
    free(M);
    free(u);
    free(s);
    free(vt);
    return rc;
}

/* Mirror pairs: units 2q and 2q+1 (of the extra ones) share incoming row q of nw_pairs and
 * read +v_q and -v_q in every consumer, so their contributions cancel (to rounding) and the
 * function is unchanged, while both the rows and the columns get gradient at once. v_q is,
 * per consumer column entry, random with the norm of half the existing columns' mean norm;
 * for the dense consumer of a dense -> dense group in gradmax mode, the q-th top left singular
 * vector of the gradient correlation (gm, (nc x extra) from svd__gradmax_cols). With an odd
 * count the last unit keeps a zero fan-out (plain orthogonal growth). */
static int svd__mirror_cols(float **cols, const struct net *n, const struct svd__group *g,
                            size_t extra, const float *gm, uint64_t *rng)
{
    const size_t m = g->m, pairs = extra / 2;
    for (size_t ci = 0; ci < g->n_cols; ci++) {
        const struct net_tensor *t = &n->tensors[g->cols[ci].t];
        const size_t B_ = g->cols[ci].block, D0 = t->dims[0];
        const float *w = net_tensor_data(n, t);
        if (!(cols[ci] = calloc(D0 * extra * B_ + 1, sizeof(float)))) return -ENOMEM;
        double mean = 0.0;
        for (size_t j = 0; j < m; j++) mean += sqrt(net_mid_sqnorm(w, D0, m, B_, j)) / (double)m;
        if (!(mean > 0.0)) mean = 1.0 / sqrt((double)(D0 * B_));
        for (size_t q = 0; q < pairs; q++) {
            double nv = 0.0;
            for (size_t o = 0; o < D0; o++)
                for (size_t b = 0; b < B_; b++) {
                    float v = gm && ci == 0 ? gm[o * extra + q] : net_rand_normal(rng);
                    cols[ci][(o * extra + 2 * q) * B_ + b] = v;
                    nv += (double)v * v;
                }
            const float sc = nv > 0.0 ? (float)(0.5 * mean / sqrt(nv)) : 0.0f;
            for (size_t o = 0; o < D0; o++)
                for (size_t b = 0; b < B_; b++) {
                    float *a = &cols[ci][(o * extra + 2 * q) * B_ + b];
                    *a *= sc;
                    a[B_] = -*a; // unit 2q + 1
                }
        }
    }
    return 0;
}

int svd_grow(struct net **out, const struct net *n, const struct svd_gref *ref, size_t extra,
             enum svd_grow mode, const float *x, const uint8_t *y, size_t B, uint64_t *rng,
             char *err, size_t errlen)
{
    struct svd__group g;
    int rc = svd__group_build(n, ref, &g);
    if (rc < 0) {
        snprintf(err, errlen, "layer %zu is not an adaptable group", ref->layer);
        return rc;
    }
    const size_t m = g.m, m2 = m + extra;
    const struct net_tensor *t = svd__main_w(n, &g);
    const size_t L = t->n / m;
    float *P = calloc(m2 * m, sizeof(float)), *Q = calloc(g.n_readers * m * m2, sizeof(float));
    float *nw = calloc((extra + 1) * L + 1, sizeof(float));
    float *gcols[SVD__MAX_ENT] = {0};
    rc = -ENOMEM;
    if (!P || !Q || !nw) goto out;
    for (size_t i = 0; i < m; i++) P[i * m + i] = 1.0f;
    for (size_t r = 0; r < g.n_readers; r++)
        for (size_t i = 0; i < m; i++) Q[(r * m + i) * m2 + i] = 1.0f;
    const int mirror = mode == SVD_GROW_MIRROR;
    if (mirror) {
        // One orthogonal row per pair (and one for an odd last unit), each used twice.
        const size_t rows = (extra + 1) / 2;
        float *gm = NULL;
        if ((rc = svd__orth_rows(nw, net_tensor_data(n, t), m, L, rows, 0.0f, rng)) < 0) {
            snprintf(err, errlen, "mirror growth: SVD failed");
            goto out;
        }
        for (size_t q = rows; q-- > 0;) {
            memcpy(nw + 2 * q * L, nw + q * L, L * sizeof(float));
            if (2 * q + 1 < extra) memcpy(nw + (2 * q + 1) * L, nw + q * L, L * sizeof(float));
        }
        if (g.gradmax_ok >= 0 && x && y && B) {
            const size_t nc = n->layers[g.gradmax_ok].out.c;
            if (!(gm = calloc(nc * extra + 1, sizeof(float)))) goto out;
            if ((rc = svd__gradmax_cols(gm, (struct net *)n, &g, extra, x, y, B)) < 0) {
                free(gm);
                snprintf(err, errlen, "gradmax: SVD of the gradient correlation failed");
                goto out;
            }
        }
        rc = svd__mirror_cols(gcols, n, &g, extra, gm, rng);
        free(gm);
        if (rc < 0) goto out;
    } else if (mode == SVD_GROW_GRADMAX && g.gradmax_ok >= 0 && x && y && B) {
        // Zero incoming rows (nw stays 0); outgoing columns of the one dense consumer.
        const size_t nc = n->layers[g.gradmax_ok].out.c;
        if (!(gcols[0] = calloc(nc * extra, sizeof(float)))) goto out;
        if ((rc = svd__gradmax_cols(gcols[0], (struct net *)n, &g, extra, x, y, B)) < 0) {
            snprintf(err, errlen, "gradmax: SVD of the gradient correlation failed");
            goto out;
        }
    } else if ((rc = svd__orth_rows(nw, net_tensor_data(n, t), m, L, extra, 0.0f, rng)) < 0) {
        snprintf(err, errlen, "orthogonal growth: SVD failed");
        goto out;
    }
    rc = svd__group_apply(out, n, &g, m2, P, Q, NULL, nw, (const float *const *)gcols, err, errlen);
out:
    free(P);
    free(Q);
    free(nw);
    for (size_t i = 0; i < SVD__MAX_ENT; i++) free(gcols[i]);
    return rc;
}
