/* net/compress.c: the numerics of model compression, Deep Compression (Han, Mao, Dally 2016)
 * as a plan bound to one net layout (struct net_xplan), which net/export.c stores:
 *   1. magnitude pruning: over all weight tensors, the given fraction of smallest |w| is set
 *      to 0 and stays 0 (a mask);
 *   2. weight sharing: per weight tensor, 1-D k-means on the surviving values (centroids
 *      initialised linearly over [min, max], then Lloyd iterations); each weight becomes an
 *      index into a codebook of K floats;
 *   3. codebook fine-tuning: after a backward pass on the quantized net, each centroid moves
 *      by the *sum* of its members' gradients (dL/dc = sum_i dL/dw_i since every member equals
 *      c); biases and batch norm train normally, pruned weights stay 0;
 * and float16 rounding (IEEE binary16, round to nearest even) of raw values or codebooks.
 * Only weights (tensors with weight decay) are compressed. The plan keeps masks, codebooks
 * and codes, and after every change it writes the represented values back into the net's
 * params, so the in-memory net always computes exactly what the file will decode to. Nothing
 * here allocates in the tuning step, logs, or exits. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"
#include "net/net_internal.h"

#define XZ_ITERS 100     // Lloyd iterations at most
#define XZ_MOMENTUM 0.9f // codebook fine-tuning

// ---- float16 (IEEE binary16), round to nearest even --------------------------------------

uint16_t net_f16_from_f32(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) // inf, or nan keeping its top payload bits (and staying a nan)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                                  // normal half: |f| >= 2^-14
        uint32_t h = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13));
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; // a carry moves the exponent
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) return (uint16_t)sign; // <= 2^-25: the tie goes to even zero
    /* Subnormal half: units of 2^-24. With the implicit bit, the value is
     * mant * 2^(e - 150) = (mant >> (126 - e)) units, e in [102, 112]. */
    const uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u, sh = 126u - e;
    uint32_t h = mant >> sh, rem = mant & ((1u << sh) - 1u), half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float net_f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0 && m == 0) {
        x = sign;
    } else if (e == 0) { // subnormal: normalise
        e = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        x = sign | (e << 23) | ((m & 0x3ffu) << 13);
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static float xz_round16(float f)
{
    return net_f32_from_f16(net_f16_from_f32(f));
}

// ---- the plan ------------------------------------------------------------------------------

void net_xplan_destroy(struct net_xplan *p)
{
    if (!p) return;
    for (size_t i = 0; p->t && i < p->n_tensors; i++) {
        free(p->t[i].mask);
        free(p->t[i].cent);
        free(p->t[i].vel);
        free(p->t[i].acc);
        free(p->t[i].codes);
    }
    free(p->t);
    free(p);
}

/* Writes what tensor ti represents into the net's params: pruned entries 0, clustered ones
 * their centroid, float16 ones rounded. Idempotent. */
static void xz_project(const struct net_xplan *p, struct net *n, size_t ti)
{
    const struct net__xtensor *xt = &p->t[ti];
    float *w = n->params + n->tensors[ti].off;
    const size_t N = n->tensors[ti].n;
    if (!xt->weight) return;
    for (size_t i = 0; i < N; i++) {
        if (xt->mask && !xt->mask[i])
            w[i] = 0.0f;
        else if (xt->k)
            w[i] = xt->cent[xt->codes[i]];
        else if (xt->f16)
            w[i] = xz_round16(w[i]);
    }
}

struct xz_mag {
    float a;
    uint32_t t, i; // tensor, entry
};

static int xz_cmp_mag(const void *pa, const void *pb)
{
    const struct xz_mag *a = pa, *b = pb;
    if (a->a != b->a) return a->a < b->a ? -1 : 1;
    if (a->t != b->t) return a->t < b->t ? -1 : 1; // ties: a fixed order (deterministic)
    return a->i < b->i ? -1 : a->i > b->i;
}

/* Global magnitude pruning: the floor(frac * total) smallest |w| over all weight tensors are
 * set to 0 and masked. One threshold for the whole net lets each layer lose what it can
 * spare: wide layers (small weights, large fan-in) lose most, narrow convs little. */
static int xz_prune(struct net_xplan *p, struct net *n, double frac)
{
    size_t total = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) total += p->t[ti].weight ? n->tensors[ti].n : 0;
    const size_t cut = (size_t)(frac * (double)total);
    if (cut == 0) return 0;
    struct xz_mag *m = malloc(total * sizeof(*m));
    if (!m) return -ENOMEM;
    size_t k = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        struct net__xtensor *xt = &p->t[ti];
        if (!xt->weight) continue;
        const float *w = n->params + n->tensors[ti].off;
        if (!(xt->mask = malloc(n->tensors[ti].n))) {
            free(m);
            return -ENOMEM;
        }
        memset(xt->mask, 1, n->tensors[ti].n);
        for (size_t i = 0; i < n->tensors[ti].n; i++)
            m[k++] = (struct xz_mag){fabsf(w[i]), (uint32_t)ti, (uint32_t)i};
    }
    qsort(m, total, sizeof(*m), xz_cmp_mag);
    for (size_t i = 0; i < cut; i++) {
        struct net__xtensor *xt = &p->t[m[i].t];
        xt->mask[m[i].i] = 0;
        n->params[n->tensors[m[i].t].off + m[i].i] = 0.0f;
        xt->nnz--;
    }
    free(m);
    return 0;
}

int net_xplan_create(struct net_xplan **out, struct net *n, const struct net_export_opts *o,
                     char *err, size_t errlen)
{
    if (!(o->prune >= 0.0 && o->prune < 1.0)) {
        snprintf(err, errlen, "prune fraction %g is not in [0, 1)", o->prune);
        return -EINVAL;
    }
    if (o->kmeans == 1 || o->kmeans > NET__XZ_KMAX || o->kmeans_conv == 1 ||
        o->kmeans_conv > NET__XZ_KMAX) {
        snprintf(err, errlen, "k-means with %zu centroids: use 0 (off) or 2..%d",
                 o->kmeans == 1 || o->kmeans > NET__XZ_KMAX ? o->kmeans : o->kmeans_conv,
                 NET__XZ_KMAX);
        return -EINVAL;
    }
    struct net_xplan *p = calloc(1, sizeof(*p));
    if (!p || !(p->t = calloc(n->n_tensors, sizeof(*p->t)))) {
        free(p);
        snprintf(err, errlen, "out of memory for the compression plan");
        return -ENOMEM;
    }
    p->o = *o;
    p->n_tensors = n->n_tensors;
    p->n_params = n->n_params;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        struct net__xtensor *xt = &p->t[ti];
        xt->nnz = t->n;
        if (t->arena != NET_ARENA_PARAM || !t->decay) continue;
        xt->weight = 1;
        xt->f16 = o->fp16;
        xt->kmeans = t->nd == 4 && o->kmeans_conv ? o->kmeans_conv : o->kmeans;
    }
    if (o->prune > 0.0 && xz_prune(p, n, o->prune) < 0) {
        net_xplan_destroy(p);
        snprintf(err, errlen, "out of memory for pruning");
        return -ENOMEM;
    }
    for (size_t ti = 0; ti < n->n_tensors; ti++) xz_project(p, n, ti);
    // Fine-tuning starts from rest: the m arena is the momentum of uncompressed parameters.
    memset(n->m, 0, n->n_params * sizeof(float));
    *out = p;
    return 0;
}

// ---- k-means in one dimension ---------------------------------------------------------------

static int xz_cmp_f(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return a < b ? -1 : a > b;
}

/* Index of the centroid of c (k, ascending) nearest to v (ties: the lower one). */
static size_t xz_nearest(const float *c, size_t k, float v)
{
    size_t lo = 0, hi = k; // first index with c >= v
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == k) return k - 1;
    if (lo > 0 && v - c[lo - 1] <= c[lo] - v) return lo - 1;
    return lo;
}

/* Clusters the kept values of w (N) into xt->k centroids; writes cent and codes. Clusters are
 * intervals of the sorted values, so each Lloyd step is an assignment by binary search and a
 * mean; it stops when no centroid moves by more than 1e-7 of the value range. */
static void xz_kmeans(struct net__xtensor *xt, const float *w, size_t N, double *sum, size_t *cnt,
                      float *next)
{
    const size_t k = xt->k;
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < N; i++) {
        if (xt->mask && !xt->mask[i]) continue;
        lo = w[i] < lo ? w[i] : lo;
        hi = w[i] > hi ? w[i] : hi;
    }
    for (size_t j = 0; j < k; j++) // linear initialisation (Deep Compression's best)
        xt->cent[j] = lo + (hi - lo) * (float)j / (float)(k - 1);
    const float tol = 1e-7f * (hi - lo);
    for (int it = 0; it < XZ_ITERS; it++) {
        qsort(xt->cent, k, sizeof(float), xz_cmp_f); // empty clusters may fall out of order
        memset(sum, 0, k * sizeof(double));
        memset(cnt, 0, k * sizeof(size_t));
        for (size_t i = 0; i < N; i++) {
            if (xt->mask && !xt->mask[i]) {
                xt->codes[i] = 0;
                continue;
            }
            size_t c = xz_nearest(xt->cent, k, w[i]);
            xt->codes[i] = (uint16_t)c;
            sum[c] += w[i];
            cnt[c]++;
        }
        float moved = 0.0f;
        for (size_t j = 0; j < k; j++) {
            next[j] = cnt[j] ? (float)(sum[j] / (double)cnt[j]) : xt->cent[j];
            float d = fabsf(next[j] - xt->cent[j]);
            moved = d > moved ? d : moved;
        }
        memcpy(xt->cent, next, k * sizeof(float)); // codes still index these clusters
        if (moved <= tol) break;
    }
}

int net_xplan_cluster(struct net_xplan *p, struct net *n)
{
    if (p->n_tensors != n->n_tensors || p->n_params != n->n_params) return -EINVAL;
    const size_t KM = NET__XZ_KMAX;
    double *sum = malloc(KM * sizeof(double));
    size_t *cnt = malloc(KM * sizeof(size_t));
    float *next = malloc(KM * sizeof(float));
    int rc = -ENOMEM;
    if (!sum || !cnt || !next) goto out;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        struct net__xtensor *xt = &p->t[ti];
        const struct net_tensor *t = &n->tensors[ti];
        const size_t K = xt->kmeans;
        // Too few values to share: they stay raw (a codebook would be as large).
        if (!xt->weight || xt->k || K < 2 || xt->nnz <= K) continue;
        xt->cent = malloc(K * sizeof(float));
        xt->vel = calloc(K, sizeof(float));
        xt->acc = malloc(K * sizeof(double));
        xt->codes = malloc(t->n * sizeof(uint16_t));
        if (!xt->cent || !xt->vel || !xt->acc || !xt->codes) goto out;
        xt->k = K;
        xz_kmeans(xt, n->params + t->off, t->n, sum, cnt, next);
        if (p->o.fp16)
            for (size_t j = 0; j < K; j++) xt->cent[j] = xz_round16(xt->cent[j]);
        xz_project(p, n, ti);
    }
    rc = 0;
out:
    free(sum);
    free(cnt);
    free(next);
    return rc;
}

void net_xplan_tune(struct net_xplan *p, struct net *n, float lr)
{
    const float mu = XZ_MOMENTUM;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena != NET_ARENA_PARAM) continue;
        struct net__xtensor *xt = &p->t[ti];
        float *w = n->params + t->off, *m = n->m + t->off;
        const float *g = n->grads + t->off;
        if (xt->k) {
            /* dL/dc_j = sum over members i of dL/dw_i. */
            memset(xt->acc, 0, xt->k * sizeof(double));
            for (size_t i = 0; i < t->n; i++)
                if (!xt->mask || xt->mask[i]) xt->acc[xt->codes[i]] += g[i];
            for (size_t j = 0; j < xt->k; j++) {
                xt->vel[j] = mu * xt->vel[j] + (float)xt->acc[j];
                xt->cent[j] -= lr * xt->vel[j];
                if (xt->f16) xt->cent[j] = xz_round16(xt->cent[j]);
            }
        } else {
            for (size_t i = 0; i < t->n; i++) {
                if (xt->mask && !xt->mask[i]) continue;
                m[i] = mu * m[i] + g[i];
                w[i] -= lr * m[i];
            }
        }
        xz_project(p, n, ti);
    }
}
