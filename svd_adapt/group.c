/* svd_adapt/group.c: width groups and the one routine that changes a group's width.
 *
 * A group is found by walking forward from its producer: channel-wise followers (BN, ReLU,
 * max pool) are carried along, flatten / gap set how many consumer columns one channel owns,
 * and the walk ends at the first consumer (dense or conv). A conv followed by a residual block
 * produces a residual *stream*: the walk continues through every identity-shortcut block
 * (each writes the stream with its second conv and reads it with its first) up to the first
 * block with a projection or a plain consumer. Everything a width change touches is then a
 * list of tensor rows (producers, BN) and tensor columns (consumers), and svd__group_apply
 * maps them all with the same matrices, so every layer kind shares one tested code path. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svd_adapt/svd_internal.h"

static long svd__tidx(const struct net *n, size_t layer, const char *suffix)
{
    struct net_tensor *t = net_tensor_get(n, layer, suffix);
    return t ? (long)(t - n->tensors) : -1;
}

static int svd__add_row(const struct net *n, struct svd__group *g, size_t layer, const char *suffix,
                        enum svd__rk kind)
{
    long t = svd__tidx(n, layer, suffix);
    if (t < 0) return 0;
    if (g->n_rows >= SVD__MAX_ENT) return -E2BIG;
    g->rows[g->n_rows++] = (struct svd__row){(size_t)t, kind};
    if (kind >= SVD_RK_GAMMA) g->has_bn = 1;
    return 0;
}

/* The four BN tensors under prefix ("bn1", or "" for a BN layer). */
static int svd__add_bn(const struct net *n, struct svd__group *g, size_t layer, const char *pfx)
{
    static const char *const sfx[4] = {"gamma", "beta", "mean", "var"};
    static const enum svd__rk kinds[4] = {SVD_RK_GAMMA, SVD_RK_BETA, SVD_RK_MEAN, SVD_RK_VAR};
    for (int i = 0; i < 4; i++) {
        char name[48];
        snprintf(name, sizeof(name), "%s%s%s", pfx, pfx[0] ? "." : "", sfx[i]);
        int rc = svd__add_row(n, g, layer, name, kinds[i]);
        if (rc < 0) return rc;
    }
    return 0;
}

static int svd__add_reader(struct svd__group *g, size_t act, long ws_res)
{
    if (g->n_readers >= SVD__MAX_ENT) return -E2BIG;
    g->readers[g->n_readers++] = (struct svd__reader){act, ws_res};
    return (int)g->n_readers - 1;
}

/* A consumer's columns: tensor `suffix` of layer, the leftover into `bias` or, failing that,
 * subtracted from the running mean of the BN right after (mean_layer / mean_pfx). */
static int svd__add_col(const struct net *n, struct svd__group *g, size_t layer, const char *w,
                        size_t block, const char *bias, long mean_layer, const char *mean_name,
                        int reader)
{
    long t = svd__tidx(n, layer, w);
    if (t < 0 || g->n_cols >= SVD__MAX_ENT || reader < 0) return -EINVAL;
    struct svd__col c = {(size_t)t, block, -1, 0, (size_t)reader};
    long b = bias ? svd__tidx(n, layer, bias) : -1;
    if (b >= 0) {
        c.off_t = b;
    } else if (mean_layer >= 0) {
        c.off_t = svd__tidx(n, (size_t)mean_layer, mean_name);
        c.off_sub = c.off_t >= 0;
    }
    g->cols[g->n_cols++] = c;
    return 0;
}

static int svd__spec(struct svd__group *g, size_t layer, int width)
{
    if (g->n_specs >= SVD__MAX_ENT) return -E2BIG;
    g->specs[g->n_specs].layer = layer;
    g->specs[g->n_specs].width = width;
    g->n_specs++;
    return 0;
}

static int res_has_proj(const struct net_layer *l)
{
    return l->in.c != l->spec.out || l->spec.stride != 1;
}

/* Walks from layer i (the first after the producer) to the consumer(s). stream: 1 when the
 * group is a residual stream (identity blocks are part of it). */
static int svd__walk(const struct net *n, struct svd__group *g, size_t i, int stream)
{
    size_t block = 1;
    long reader_act = -1;
    int rc;
    for (; i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        switch (l->spec.kind) {
        case NET_BN:
            if ((rc = svd__add_bn(n, g, i, "")) < 0) return rc;
            break;
        case NET_RELU:
        case NET_MAXPOOL: break;
        case NET_FLATTEN:
        case NET_GAP:
            if (!l->in.spatial) return -EINVAL;
            block = l->spec.kind == NET_FLATTEN ? l->in.h * l->in.w : 1;
            reader_act = (long)i;
            break;
        case NET_DENSE:
        case NET_CONV: {
            int r = svd__add_reader(g, reader_act >= 0 ? (size_t)reader_act : i, -1);
            int bn_next = i + 1 < n->n_layers && n->layers[i + 1].spec.kind == NET_BN;
            size_t blk = l->spec.kind == NET_CONV ? l->spec.k * l->spec.k : block;
            rc = svd__add_col(n, g, i, l->spec.rank ? "v" : "w", blk, "b",
                              bn_next ? (long)i + 1 : -1, "mean", r);
            if (rc < 0) return rc;
            if (l->spec.kind == NET_DENSE && !l->spec.rank && block == 1 && reader_act < 0)
                g->gradmax_ok = (long)i;
            return 0;
        }
        case NET_RES: {
            if (!stream || reader_act >= 0) return -EINVAL;
            int r = svd__add_reader(g, i, -1);
            const char *b1 = l->spec.bn ? NULL : "c1.b";
            if ((rc = svd__add_col(n, g, i, "c1.w", 9, b1, l->spec.bn ? (long)i : -1, "bn1.mean",
                                   r)) < 0)
                return rc;
            if (res_has_proj(l)) {
                const char *pb = l->spec.bn ? NULL : "p.b";
                return svd__add_col(n, g, i, "p.w", 1, pb, l->spec.bn ? (long)i : -1, "bnp.mean",
                                    r);
            }
            // Identity block: it also writes the stream.
            if ((rc = svd__add_row(n, g, i, "c2.w", SVD_RK_ZERO)) < 0) return rc;
            if ((rc = svd__add_row(n, g, i, "c2.b", SVD_RK_BIAS)) < 0) return rc;
            if (l->spec.bn && (rc = svd__add_bn(n, g, i, "bn2")) < 0) return rc;
            if ((rc = svd__spec(g, i, 0)) < 0) return rc;
            break;
        }
        default: return -EINVAL;
        }
    }
    return -EINVAL; // no consumer: the classifier, whose width is fixed
}

/* Does the walk from i meet a residual block before any consumer? */
static int svd__feeds_res(const struct net *n, size_t i)
{
    for (; i < n->n_layers; i++) {
        enum net_kind k = n->layers[i].spec.kind;
        if (k == NET_RES) return 1;
        if (k != NET_BN && k != NET_RELU && k != NET_MAXPOOL) return 0;
    }
    return 0;
}

int svd__group_build(const struct net *n, const struct svd_gref *ref, struct svd__group *g)
{
    memset(g, 0, sizeof(*g));
    g->ref = *ref;
    g->gradmax_ok = -1;
    if (ref->layer >= n->n_layers) return -EINVAL;
    const struct net_layer *l = &n->layers[ref->layer];
    size_t p = ref->layer;
    int rc;
    switch (ref->kind) {
    case SVD_G_RES_INNER:
        if (l->spec.kind != NET_RES) return -EINVAL;
        g->m = l->spec.width;
        if ((rc = svd__add_row(n, g, p, "c1.w", SVD_RK_W)) < 0) return rc;
        if ((rc = svd__add_row(n, g, p, "c1.b", SVD_RK_BIAS)) < 0) return rc;
        if (l->spec.bn && (rc = svd__add_bn(n, g, p, "bn1")) < 0) return rc;
        rc = svd__add_reader(g, 0, (long)p);
        if ((rc = svd__add_col(n, g, p, "c2.w", 9, l->spec.bn ? NULL : "c2.b",
                               l->spec.bn ? (long)p : -1, "bn2.mean", rc)) < 0)
            return rc;
        return svd__spec(g, p, 1);
    case SVD_G_UNITS:
        if (l->spec.kind != NET_DENSE && l->spec.kind != NET_CONV) return -EINVAL;
        if (svd__feeds_res(n, p + 1)) return -EINVAL;
        g->m = l->spec.out;
        if ((rc = svd__add_row(n, g, p, l->spec.rank ? "u" : "w", SVD_RK_W)) < 0) return rc;
        if ((rc = svd__add_row(n, g, p, "b", SVD_RK_BIAS)) < 0) return rc;
        if ((rc = svd__spec(g, p, 0)) < 0) return rc;
        return svd__walk(n, g, p + 1, 0);
    case SVD_G_STREAM:
        if (l->spec.kind == NET_CONV && !l->spec.rank) {
            if (!svd__feeds_res(n, p + 1)) return -EINVAL;
            if ((rc = svd__add_row(n, g, p, "w", SVD_RK_W)) < 0) return rc;
            if ((rc = svd__add_row(n, g, p, "b", SVD_RK_BIAS)) < 0) return rc;
        } else if (l->spec.kind == NET_RES && res_has_proj(l)) {
            if ((rc = svd__add_row(n, g, p, "c2.w", SVD_RK_W)) < 0) return rc;
            if ((rc = svd__add_row(n, g, p, "c2.b", SVD_RK_BIAS)) < 0) return rc;
            if (l->spec.bn && (rc = svd__add_bn(n, g, p, "bn2")) < 0) return rc;
            if ((rc = svd__add_row(n, g, p, "p.w", SVD_RK_ZERO)) < 0) return rc;
            if ((rc = svd__add_row(n, g, p, "p.b", SVD_RK_BIAS)) < 0) return rc;
            if (l->spec.bn && (rc = svd__add_bn(n, g, p, "bnp")) < 0) return rc;
        } else {
            return -EINVAL;
        }
        g->m = l->spec.out;
        if ((rc = svd__spec(g, p, 0)) < 0) return rc;
        return svd__walk(n, g, p + 1, 1);
    }
    return -EINVAL;
}

size_t svd_groups(const struct net *n, struct svd_gref *out, size_t max)
{
    size_t k = 0;
    struct svd__group *g = malloc(sizeof(*g));
    if (!g) return 0;
    for (size_t i = 0; i < n->n_layers && k < max; i++) {
        static const enum svd_gkind kinds[3] = {SVD_G_UNITS, SVD_G_RES_INNER, SVD_G_STREAM};
        for (int j = 0; j < 3 && k < max; j++) {
            struct svd_gref r = {kinds[j], i};
            if (svd__group_build(n, &r, g) == 0) out[k++] = r;
        }
    }
    free(g);
    return k;
}

size_t svd_group_width(const struct net *n, const struct svd_gref *g)
{
    const struct net_layer *l = &n->layers[g->layer];
    return g->kind == SVD_G_RES_INNER ? l->spec.width : l->spec.out;
}

void svd_group_name(const struct net *n, const struct svd_gref *g, char *out, size_t len)
{
    static const char *const sfx[3] = {"", ".inner", ".stream"};
    snprintf(out, len, "%s%s", n->layers[g->layer].spec.name, sfx[g->kind]);
}

// ---- activations -----------------------------------------------------------------------

/* Where reader r's activations live after a forward pass: src, as (C, B, H, W) planes of HW
 * when spatial, else (B, C). -EINVAL when the reader does not see the group's m channels. */
static int svd__reader_src(const struct net *n, const struct svd__group *g, size_t r,
                           const float **src, size_t *HW, int *spatial)
{
    const struct svd__reader *rd = &g->readers[r];
    if (rd->ws_res >= 0) {
        const struct net_layer *l = &n->layers[rd->ws_res];
        *src = l->ws;
        *HW = l->out.h * l->out.w;
        *spatial = 1;
        return 0;
    }
    const struct net_shape *s = rd->act == 0 ? &n->in_shape : &n->layers[rd->act - 1].out;
    *src = n->acts[rd->act];
    *HW = s->h * s->w;
    *spatial = s->spatial;
    return s->c == g->m ? 0 : -EINVAL;
}

int svd__calib_acts_many(struct net *n, const struct svd__group *const *g, const size_t *r,
                         size_t ng, const float *x, size_t B, size_t max_rows, float **h, size_t *N)
{
    const size_t D = n->in_shape.c * n->in_shape.h * n->in_shape.w;
    size_t chunk = n->ws_batch ? n->ws_batch : 64;
    if (chunk > B) chunk = B;
    size_t *per = calloc(ng + 1, sizeof(size_t)), *stride = calloc(ng + 1, sizeof(size_t));
    int rc = -ENOMEM;
    for (size_t k = 0; k < ng; k++) h[k] = NULL, N[k] = 0;
    // net_forward would run on a short workspace if it could not grow it.
    if (!per || !stride || net_reserve(n, chunk) < 0) goto fail;
    size_t upto = 0; // the layers the readers' inputs need: the forward stops after them
    for (size_t k = 0; k < ng; k++) {
        const struct svd__reader *rd = &g[k]->readers[r[k]];
        const size_t need = rd->ws_res >= 0 ? (size_t)rd->ws_res + 1 : rd->act;
        if (need > upto) upto = need;
    }
    for (size_t k = 0; k < ng; k++) {
        const float *src;
        size_t HW;
        int spatial;
        if ((rc = svd__reader_src(n, g[k], r[k], &src, &HW, &spatial)) < 0) goto fail;
        per[k] = spatial ? HW : 1;
        const size_t rows = B * per[k];
        stride[k] = (rows + max_rows - 1) / max_rows;
        rc = -ENOMEM;
        if (!(h[k] = malloc(((rows + stride[k] - 1) / stride[k]) * g[k]->m * sizeof(float) + 1)))
            goto fail;
    }
    for (size_t b0 = 0; b0 < B; b0 += chunk) {
        const size_t Bc = B - b0 < chunk ? B - b0 : chunk;
        net_forward_prefix(n, x + b0 * D, Bc, upto);
        for (size_t k = 0; k < ng; k++) {
            const float *src;
            size_t HW;
            int spatial;
            if ((rc = svd__reader_src(n, g[k], r[k], &src, &HW, &spatial)) < 0) goto fail;
            const size_t m = g[k]->m, lrows = Bc * per[k], g0 = b0 * per[k], st = stride[k];
            // The first global row of this chunk that is a multiple of the stride.
            size_t i = (g0 + st - 1) / st * st - g0, q = N[k];
            for (; i < lrows; i += st, q++)
                for (size_t j = 0; j < m; j++)
                    h[k][q * m + j] = spatial ? src[j * lrows + i] : src[i * m + j];
            N[k] = q;
        }
    }
    free(per);
    free(stride);
    return 0;
fail:
    for (size_t k = 0; k < ng; k++) free(h[k]), h[k] = NULL;
    free(per);
    free(stride);
    return rc;
}

int svd__calib_acts(struct net *n, const struct svd__group *g, size_t r, const float *x, size_t B,
                    size_t max_rows, float **h, size_t *N)
{
    return svd__calib_acts_many(n, &g, &r, 1, x, B, max_rows, h, N);
}

// ---- the width change ------------------------------------------------------------------

static const struct svd__row *svd__row_of(const struct svd__group *g, size_t t)
{
    for (size_t i = 0; i < g->n_rows; i++)
        if (g->rows[i].t == t) return &g->rows[i];
    return NULL;
}

static long svd__col_of(const struct svd__group *g, size_t t)
{
    for (size_t i = 0; i < g->n_cols; i++)
        if (g->cols[i].t == t) return (long)i;
    return -1;
}

/* dst (m2 x L) = P (m2 x m) src (m x L); squared coefficients when sq. */
static void svd__rows_map(float *dst, const float *src, const float *P, size_t m, size_t m2,
                          size_t L, int sq)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < m2; i++) {
        float *d = dst + i * L;
        memset(d, 0, L * sizeof(float));
        for (size_t j = 0; j < m; j++) {
            float p = P[i * m + j];
            if (sq) p *= p;
            if (p == 0.0f) continue;
            const float *s = src + j * L;
            for (size_t x = 0; x < L; x++) d[x] += p * s[x];
        }
    }
}

/* dst (D0 x m2*block) = src (D0 x m*block) with channels mapped by Q (m x m2). */
static void svd__cols_map(float *dst, const float *src, const float *Q, size_t D0, size_t m,
                          size_t m2, size_t block, int sq)
{
#pragma omp parallel for schedule(static)
    for (size_t o = 0; o < D0; o++) {
        const float *s = src + o * m * block;
        float *d = dst + o * m2 * block;
        memset(d, 0, m2 * block * sizeof(float));
        for (size_t j = 0; j < m; j++) {
            for (size_t j2 = 0; j2 < m2; j2++) {
                float q = Q[j * m2 + j2];
                if (sq) q *= q;
                if (q == 0.0f) continue;
                for (size_t b = 0; b < block; b++) d[j2 * block + b] += q * s[j * block + b];
            }
        }
    }
}

int svd__group_apply(struct net **out, const struct net *n, const struct svd__group *g, size_t m2,
                     const float *P, const float *Q, const float *c, const float *new_w,
                     const float *const *new_cols, char *err, size_t errlen)
{
    const size_t m = g->m;
    struct net_layer_spec *specs = malloc(n->n_layers * sizeof(*specs));
    struct net *nn = NULL;
    int rc = -ENOMEM;
    if (!specs) return rc;
    for (size_t i = 0; i < n->n_layers; i++) specs[i] = n->layers[i].spec;
    for (size_t i = 0; i < g->n_specs; i++) {
        struct net_layer_spec *s = &specs[g->specs[i].layer];
        if (g->specs[i].width)
            s->width = m2;
        else
            s->out = m2;
    }
    if ((rc = net_create(&nn, &n->in_shape, n->n_classes, specs, n->n_layers, err, errlen)) < 0)
        goto fail;
    memcpy(nn->norm_mean, n->norm_mean, sizeof(n->norm_mean));
    memcpy(nn->norm_std, n->norm_std, sizeof(n->norm_std));
    rc = -EINVAL;
    if (nn->n_tensors != n->n_tensors) goto mismatch;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *to = &n->tensors[ti];
        const struct net_tensor *tn = &nn->tensors[ti];
        if (strcmp(to->name, tn->name) != 0 || to->arena != tn->arena) goto mismatch;
        const int param = to->arena == NET_ARENA_PARAM;
        const float *so = net_tensor_data(n, to);
        float *sn = net_tensor_data(nn, tn);
        const struct svd__row *row = svd__row_of(g, ti);
        long ci = svd__col_of(g, ti);
        if (row) {
            const size_t L = to->n / m;
            if (tn->n != m2 * L) goto mismatch;
            svd__rows_map(sn, so, P, m, m2, L, 0);
            if (param) {
                svd__rows_map(nn->m + tn->off, n->m + to->off, P, m, m2, L, 0);
                svd__rows_map(nn->v + tn->off, n->v + to->off, P, m, m2, L, 1);
            }
            // New rows beyond the old width take their kind's defaults.
            for (size_t i = m; i < m2; i++) {
                float fill = row->kind == SVD_RK_GAMMA || row->kind == SVD_RK_VAR ? 1.0f : 0.0f;
                for (size_t x = 0; x < L; x++) sn[i * L + x] = fill;
                if (row->kind == SVD_RK_W && new_w)
                    memcpy(sn + i * L, new_w + (i - m) * L, L * sizeof(float));
            }
        } else if (ci >= 0) {
            const struct svd__col *col = &g->cols[ci];
            const size_t D0 = to->dims[0], B_ = col->block;
            if (to->n != D0 * m * B_ || tn->n != D0 * m2 * B_) goto mismatch;
            const float *Qr = Q + col->reader * m * m2;
            svd__cols_map(sn, so, Qr, D0, m, m2, B_, 0);
            if (param) {
                svd__cols_map(nn->m + tn->off, n->m + to->off, Qr, D0, m, m2, B_, 0);
                svd__cols_map(nn->v + tn->off, n->v + to->off, Qr, D0, m, m2, B_, 1);
            }
            if (new_cols && new_cols[ci] && m2 > m)
                for (size_t o = 0; o < D0; o++)
                    for (size_t j = m; j < m2; j++)
                        memcpy(sn + (o * m2 + j) * B_, new_cols[ci] + (o * (m2 - m) + j - m) * B_,
                               B_ * sizeof(float));
        } else {
            if (to->n != tn->n) goto mismatch;
            memcpy(sn, so, to->n * sizeof(float));
            if (param) {
                memcpy(nn->m + tn->off, n->m + to->off, to->n * sizeof(float));
                memcpy(nn->v + tn->off, n->v + to->off, to->n * sizeof(float));
            }
        }
    }
    /* Leftovers of the rewiring into consumer biases (or BN running means): the consumer's
     * pre-activation changes by W_old[:, j] c_j summed over channels j. A factorized consumer
     * reads the channels through V (R rows): its output change is U (V c). */
    for (size_t ci = 0; c && ci < g->n_cols; ci++) {
        const struct svd__col *col = &g->cols[ci];
        if (col->off_t < 0) continue;
        const struct net_tensor *to = &n->tensors[col->t];
        const float *w = net_tensor_data(n, to), *cr = c + col->reader * m;
        float *dst = net_tensor_data(nn, &nn->tensors[col->off_t]);
        const size_t D0 = to->dims[0], B_ = col->block;
        double *t = calloc(D0, sizeof(double));
        if (!t) {
            rc = -ENOMEM;
            goto fail;
        }
        for (size_t o = 0; o < D0; o++) {
            for (size_t j = 0; j < m; j++) {
                if (cr[j] == 0.0f) continue;
                double ws = 0.0;
                for (size_t b = 0; b < B_; b++) ws += w[(o * m + j) * B_ + b];
                t[o] += ws * cr[j];
            }
        }
        const struct net_layer *cl = &n->layers[to->layer];
        const size_t n_out = nn->tensors[col->off_t].n;
        const struct net_tensor *tu = cl->spec.rank ? net_tensor_get(n, to->layer, "u") : NULL;
        const float *u = tu && tu != to ? net_tensor_data(n, tu) : NULL;
        for (size_t o = 0; o < n_out; o++) {
            double s = 0.0;
            if (u)
                for (size_t r = 0; r < D0; r++) s += (double)u[o * D0 + r] * t[r];
            else
                s = o < D0 ? t[o] : 0.0;
            dst[o] += col->off_sub ? -(float)s : (float)s;
        }
        free(t);
    }
    free(specs);
    *out = nn;
    return 0;
mismatch:
    snprintf(err, errlen, "internal: tensor layout changed unexpectedly in surgery");
fail:
    net_destroy(nn);
    free(specs);
    return rc;
}
