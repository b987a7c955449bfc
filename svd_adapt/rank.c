/* svd_adapt/rank.c: the factorized form of one dense / conv layer (the Caffe SVD trick).
 *
 * A layer W (m x L, L = fan-in) is held as U (m x r) V (r x L) with nothing between them.
 * Plain -> rank r: W = U_W S V_W^T truncated, U = U_W,r S_r, V = V_W,r^T; the dropped part's
 * effect on the mean input, (W - W_r) E[x], moves into the bias (the useful form of CaffeSVD's
 * bias correction: on the input side it is identically zero). Rank changes go through an exact
 * SVD of U V, so shrinking drops the smallest triplets (2-norm error s_{r+1}); growing adds
 * triplets with a zero column in U and new orthonormal rows in V (function unchanged).
 * The moments of U and V are reset on a rank change (the bases rotate), others are kept. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "svd_adapt/svd_internal.h"

/* Effective weight (m x L) of a dense / conv layer into w (malloc'ed). */
static int svd__eff_weight(const struct net *n, size_t layer, float **w, size_t *m, size_t *L)
{
    const struct net_layer *l = &n->layers[layer];
    if (l->spec.kind != NET_DENSE && l->spec.kind != NET_CONV) return -EINVAL;
    *m = l->spec.out;
    if (!l->spec.rank) {
        const struct net_tensor *t = net_tensor_get(n, layer, "w");
        *L = t->n / *m;
        if (!(*w = malloc(t->n * sizeof(float)))) return -ENOMEM;
        memcpy(*w, net_tensor_data(n, t), t->n * sizeof(float));
        return 0;
    }
    const struct net_tensor *tu = net_tensor_get(n, layer, "u"),
                            *tv = net_tensor_get(n, layer, "v");
    const size_t r = l->spec.rank;
    *L = tv->n / r;
    if (!(*w = malloc(*m * *L * sizeof(float)))) return -ENOMEM;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)*m, (int)*L, (int)r, 1.0f,
                net_tensor_data(n, tu), (int)r, net_tensor_data(n, tv), (int)*L, 0.0f, *w, (int)*L);
    return 0;
}

long svd_layer_spectrum(const struct net *n, size_t layer, float *s, size_t cap)
{
    float *w;
    size_t m, L;
    int rc = svd__eff_weight(n, layer, &w, &m, &L);
    if (rc < 0) return rc;
    size_t r = m < L ? m : L;
    rc = r > cap ? -ENOSPC : svd__svals(w, m, L, s);
    free(w);
    return rc < 0 ? rc : (long)r;
}

int svd_set_rank(struct net **out, const struct net *n, size_t layer, size_t r,
                 const float *mean_in, uint64_t *rng, char *err, size_t errlen)
{
    if (layer >= n->n_layers) return -EINVAL;
    const struct net_layer *l = &n->layers[layer];
    float *w = NULL, *u = NULL, *s = NULL, *vt = NULL;
    size_t m, L;
    struct net_layer_spec *specs = NULL;
    struct net *nn = NULL;
    int rc = svd__eff_weight(n, layer, &w, &m, &L);
    if (rc < 0) {
        snprintf(err, errlen, "layer \"%s\" is not a dense or conv layer", l->spec.name);
        return rc;
    }
    const size_t full = m < L ? m : L, R = l->spec.rank;
    if (r > full) {
        snprintf(err, errlen, "rank %zu exceeds min(%zu, %zu)", r, m, L);
        rc = -EINVAL;
        goto out;
    }
    rc = -ENOMEM;
    if (!(specs = malloc(n->n_layers * sizeof(*specs)))) goto out;
    for (size_t i = 0; i < n->n_layers; i++) specs[i] = n->layers[i].spec;
    specs[layer].rank = r;
    if ((rc = net_create(&nn, &n->in_shape, n->n_classes, specs, n->n_layers, err, errlen)) < 0)
        goto out;
    memcpy(nn->norm_mean, n->norm_mean, sizeof(n->norm_mean));
    memcpy(nn->norm_std, n->norm_std, sizeof(n->norm_std));
    // Everything but this layer's weights is copied tensor by tensor (names match).
    for (size_t ti = 0; ti < nn->n_tensors; ti++) {
        const struct net_tensor *tn = &nn->tensors[ti];
        if (tn->layer == layer && (!strcmp(tn->name + strlen(l->spec.name) + 1, "w") ||
                                   !strcmp(tn->name + strlen(l->spec.name) + 1, "u") ||
                                   !strcmp(tn->name + strlen(l->spec.name) + 1, "v")))
            continue;
        const struct net_tensor *to = NULL;
        for (size_t k = 0; k < n->n_tensors && !to; k++)
            if (!strcmp(n->tensors[k].name, tn->name)) to = &n->tensors[k];
        if (!to || to->n != tn->n) {
            snprintf(err, errlen, "internal: tensor %s changed shape", tn->name);
            rc = -EINVAL;
            goto out;
        }
        memcpy(net_tensor_data(nn, tn), net_tensor_data(n, to), to->n * sizeof(float));
        if (tn->arena == NET_ARENA_PARAM) {
            memcpy(nn->m + tn->off, n->m + to->off, to->n * sizeof(float));
            memcpy(nn->v + tn->off, n->v + to->off, to->n * sizeof(float));
        }
    }
    if (r == 0) {
        memcpy(net_tensor_data(nn, net_tensor_get(nn, layer, "w")), w, m * L * sizeof(float));
        rc = 0;
        goto out;
    }
    float *nu = net_tensor_data(nn, net_tensor_get(nn, layer, "u"));
    float *nv = net_tensor_data(nn, net_tensor_get(nn, layer, "v"));
    if (R && r > R) {
        // Growth: old triplets kept as they are, new ones with zero U columns.
        const float *ou = net_tensor_data(n, net_tensor_get(n, layer, "u"));
        const float *ov = net_tensor_data(n, net_tensor_get(n, layer, "v"));
        for (size_t i = 0; i < m; i++) {
            memcpy(nu + i * r, ou + i * R, R * sizeof(float));
            memset(nu + i * r + R, 0, (r - R) * sizeof(float));
        }
        memcpy(nv, ov, R * L * sizeof(float));
        // New V rows: unit norm, orthogonal to the old rows' span and to each other.
        if ((rc = svd__orth_rows(nv + R * L, ov, R, L, r - R, 1.0f, rng)) < 0) {
            snprintf(err, errlen, "rank growth of \"%s\": SVD failed", l->spec.name);
            goto out;
        }
        rc = 0;
        goto out;
    }
    rc = -ENOMEM;
    u = malloc(m * full * sizeof(float));
    s = malloc(full * sizeof(float));
    vt = malloc(full * L * sizeof(float));
    if (!u || !s || !vt) goto out;
    if ((rc = svd__svd(w, m, L, u, s, vt)) < 0) {
        snprintf(err, errlen, "SVD of \"%s\" did not converge", l->spec.name);
        goto out;
    }
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < r; j++) nu[i * r + j] = u[i * full + j] * s[j];
    memcpy(nv, vt, r * L * sizeof(float));
    // (W - W_r) E[x] into the bias: D = sum_{j >= r} s_j u_j v_j^T.
    struct net_tensor *tb = net_tensor_get(nn, layer, "b");
    if (mean_in && tb) {
        float *b = net_tensor_data(nn, tb);
        for (size_t j = r; j < full; j++) {
            float vx = cblas_sdot((int)L, vt + j * L, 1, mean_in, 1) * s[j];
            for (size_t i = 0; i < m; i++) b[i] += u[i * full + j] * vx;
        }
    }
    rc = 0;
out:
    free(w);
    free(u);
    free(s);
    free(vt);
    free(specs);
    if (rc < 0) {
        net_destroy(nn);
        return rc;
    }
    *out = nn;
    return 0;
}
