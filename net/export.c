/* net/export.c: the compressed model file ("EVWZ") and the Deep Compression steps it stores.
 *
 * Pipeline (Han, Mao, Dally 2016), driven by daemon/compress.c:
 *   1. magnitude pruning: per weight tensor, the given fraction of smallest |w| is set to 0 and
 *      stays 0 (a mask);
 *   2. weight sharing: per weight tensor, 1-D k-means on the surviving values (centroids
 *      initialised linearly over [min, max], then Lloyd iterations); each weight becomes an
 *      index into a codebook of K floats;
 *   3. codebook fine-tuning: after a backward pass on the quantized net, each centroid moves
 *      by the *sum* of its members' gradients (dL/dc = sum_i dL/dw_i since every member equals
 *      c); biases and batch norm train normally, pruned weights stay 0;
 *   4. storage: codes packed in ceil(log2 K) bits, or raw float16 / float32 values, with the
 *      pruned entries either as a reserved code 0 or as a bitmap of the kept ones (whichever
 *      is smaller for that tensor), and the whole payload deflated by zlib.
 * Only weights (tensors with weight decay: dense / conv "w", factors "u" "v", res convs) are
 * compressed; biases, batch-norm parameters and running statistics stay float32.
 *
 * A plan (struct net_xplan) is bound to one net layout: it keeps masks, codebooks and codes,
 * and after every change it writes the represented values back into the net's params, so
 * the in-memory net always computes exactly what the file will decode to.
 *
 * File layout (native little-endian, checked by a probe):
 *   "EVWZ" | u32 version | u32 0x01020304 | u32 flags (0) | u64 payload length |
 *   u64 deflated length | deflated payload | u32 CRC-32 (zlib) of every byte before it.
 * Payload: chunks `char tag[4] | u64 length | bytes`, in order ARCH (as in a checkpoint:
 * input shape, classes, normalisation, layer specs, arena sizes), TENS (every parameter
 * tensor in arena order), STAT (float32), then caller blobs (e.g. "CONF").
 * TENS: u32 count, then per tensor:
 *   u8 enc (0 f32, 1 f16, 2 k-means with f32 codebook, 3 k-means with f16 codebook) |
 *   u8 sparse (1: a bitmap of the stored entries follows the codebook) | u8 bits | u8 0 |
 *   u32 codebook length | u64 elements | u64 stored elements |
 *   codebook | bitmap (ceil(elements / 8) bytes, LSB first) | values or packed codes.
 * Entries not stored (sparse) are 0. Loading checks sizes, magic, version, probe and CRC
 * before inflating, then bounds-checks every field; a net is returned only if all is
 * consistent. Nothing here allocates in the tuning step, logs, or exits. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "net/net.h"
#include "net/net_internal.h"

#define XZ_VERSION 1u
#define XZ_PROBE 0x01020304u
#define XZ_HEAD 32                  // magic .. deflated length
#define XZ_MAX_RAW (1ull << 31)     // payloads above 2 GiB are refused
#define XZ_KMAX 4096                // codes fit in 12 bits; the format allows 16
#define XZ_ITERS 100                // Lloyd iterations at most
#define XZ_MOMENTUM 0.9f            // codebook fine-tuning

enum xz_enc { XZ_F32 = 0, XZ_F16 = 1, XZ_KM_F32 = 2, XZ_KM_F16 = 3 };

// ---- float16 (IEEE binary16), round to nearest even --------------------------------------

uint16_t net_f16_from_f32(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) // inf, or nan keeping its top payload bits (and staying a nan)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                                   // normal half: |f| >= 2^-14
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

struct xz_tensor {
    int weight;        // 1: compressed (a weight tensor); 0: stays f32
    int f16;           // raw values / codebook stored as float16
    size_t kmeans;     // centroids wanted (0: raw values)
    uint8_t *mask;     // (n) 1 = kept; NULL = nothing pruned
    size_t nnz;        // kept entries
    size_t k;          // centroids; 0 = not clustered (raw values)
    float *cent;       // (k) codebook, ascending after clustering
    float *vel;        // (k) momentum of the centroids
    double *acc;       // (k) gradient sums, scratch of the tuning step
    uint16_t *codes;   // (n) centroid of each kept entry (pruned: 0, unused)
};

struct net_xplan {
    struct net_export_opts o;
    size_t n_tensors, n_params;
    struct xz_tensor *t; // (n_tensors); entries of state tensors are unused
};

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
    const struct xz_tensor *xt = &p->t[ti];
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
        struct xz_tensor *xt = &p->t[ti];
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
        struct xz_tensor *xt = &p->t[m[i].t];
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
    if (o->kmeans == 1 || o->kmeans > XZ_KMAX || o->kmeans_conv == 1 || o->kmeans_conv > XZ_KMAX) {
        snprintf(err, errlen, "k-means with %zu centroids: use 0 (off) or 2..%d",
                 o->kmeans == 1 || o->kmeans > XZ_KMAX ? o->kmeans : o->kmeans_conv, XZ_KMAX);
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
        struct xz_tensor *xt = &p->t[ti];
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
static void xz_kmeans(struct xz_tensor *xt, const float *w, size_t N, double *sum, size_t *cnt,
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
    const size_t KM = XZ_KMAX;
    double *sum = malloc(KM * sizeof(double));
    size_t *cnt = malloc(KM * sizeof(size_t));
    float *next = malloc(KM * sizeof(float));
    int rc = -ENOMEM;
    if (!sum || !cnt || !next) goto out;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        struct xz_tensor *xt = &p->t[ti];
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
        struct xz_tensor *xt = &p->t[ti];
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

// ---- writing -------------------------------------------------------------------------------

/* The payload, plus a copy of each part's bytes so that sizes can be reported per part. */
struct xz_writer {
    struct net_wr all, part[NET_XPART_COUNT];
    unsigned bits_acc_n;  // packed codes: pending bits
    uint64_t bits_acc;
};

static void xw_put(struct xz_writer *w, int part, const void *src, size_t n)
{
    net_wr_bytes(&w->all, src, n);
    net_wr_bytes(&w->part[part], src, n);
}

static void xw_u8(struct xz_writer *w, int part, unsigned v)
{
    unsigned char c = (unsigned char)v;
    xw_put(w, part, &c, 1);
}

static void xw_u32(struct xz_writer *w, int part, uint32_t v)
{
    xw_put(w, part, &v, 4);
}

static void xw_u64(struct xz_writer *w, int part, uint64_t v)
{
    xw_put(w, part, &v, 8);
}

static void xw_f32(struct xz_writer *w, int part, float v)
{
    xw_put(w, part, &v, 4);
}

static void xw_f16(struct xz_writer *w, int part, float v)
{
    uint16_t h = net_f16_from_f32(v);
    xw_put(w, part, &h, 2);
}

/* Codes LSB first, `bits` each; xw_flush_bits pads the last byte with zeros. */
static void xw_code(struct xz_writer *w, unsigned code, unsigned bits)
{
    w->bits_acc |= (uint64_t)code << w->bits_acc_n;
    w->bits_acc_n += bits;
    while (w->bits_acc_n >= 8) {
        xw_u8(w, NET_XPART_CODES, (unsigned)(w->bits_acc & 0xffu));
        w->bits_acc >>= 8;
        w->bits_acc_n -= 8;
    }
}

static void xw_flush_bits(struct xz_writer *w)
{
    if (w->bits_acc_n) xw_u8(w, NET_XPART_CODES, (unsigned)(w->bits_acc & 0xffu));
    w->bits_acc = 0;
    w->bits_acc_n = 0;
}

/* Chunk framing (net/codec.h) on the payload; the 12 framing bytes count as metadata. */
static size_t xw_begin(struct xz_writer *w, const char *tag)
{
    net_wr_bytes(&w->part[NET_XPART_META], tag, 4);
    net_wr_u64(&w->part[NET_XPART_META], 0);
    return net_wr_begin(&w->all, tag);
}

static void xw_end(struct xz_writer *w, size_t at)
{
    net_wr_end(&w->all, at);
}

static unsigned xz_bits_for(size_t k)
{
    unsigned b = 1;
    while (((size_t)1 << b) < k) b++;
    return b;
}

static void xw_bitmap(struct xz_writer *w, const uint8_t *mask, size_t N)
{
    for (size_t i = 0; i < N; i += 8) {
        unsigned byte = 0;
        for (size_t j = 0; j < 8 && i + j < N; j++) byte |= (unsigned)(mask[i + j] != 0) << j;
        xw_u8(w, NET_XPART_MASKS, byte);
    }
}

/* One TENS record. xt may be NULL (plain float32). */
static void xw_tensor(struct xz_writer *w, const struct net_tensor *t, const float *v,
                      const struct xz_tensor *xt)
{
    const size_t N = t->n, nnz = xt ? xt->nnz : N;
    const int pruned = xt && xt->mask && nnz < N;
    const int part = xt && xt->weight ? NET_XPART_WEIGHTS : NET_XPART_OTHER;
    if (xt && xt->k) {
        // Dense codes need a code for 0 when pruned; sparse ones a bitmap. Take the smaller.
        const unsigned bd = xz_bits_for(xt->k + (size_t)pruned), bs = xz_bits_for(xt->k);
        const size_t cost_d = (N * bd + 7) / 8, cost_s = (N + 7) / 8 + (nnz * bs + 7) / 8;
        const int sparse = pruned && cost_s < cost_d, zero_code = pruned && !sparse;
        const unsigned bits = sparse ? bs : bd;
        xw_u8(w, NET_XPART_META, xt->f16 ? XZ_KM_F16 : XZ_KM_F32);
        xw_u8(w, NET_XPART_META, (unsigned)sparse);
        xw_u8(w, NET_XPART_META, bits);
        xw_u8(w, NET_XPART_META, 0);
        xw_u32(w, NET_XPART_META, (uint32_t)(xt->k + (size_t)zero_code));
        xw_u64(w, NET_XPART_META, N);
        xw_u64(w, NET_XPART_META, sparse ? nnz : N);
        for (size_t j = 0; j < xt->k + (size_t)zero_code; j++) {
            float c = zero_code ? (j ? xt->cent[j - 1] : 0.0f) : xt->cent[j];
            if (xt->f16)
                xw_f16(w, NET_XPART_CODEBOOKS, c);
            else
                xw_f32(w, NET_XPART_CODEBOOKS, c);
        }
        if (sparse) xw_bitmap(w, xt->mask, N);
        for (size_t i = 0; i < N; i++) {
            int kept = !xt->mask || xt->mask[i];
            if (sparse && !kept) continue;
            xw_code(w, kept ? xt->codes[i] + (unsigned)zero_code : 0u, bits);
        }
        xw_flush_bits(w);
        return;
    }
    const int f16 = xt && xt->weight && xt->f16;
    const size_t es = f16 ? 2 : 4;
    const int sparse = pruned && (N + 7) / 8 + nnz * es < N * es;
    xw_u8(w, NET_XPART_META, f16 ? XZ_F16 : XZ_F32);
    xw_u8(w, NET_XPART_META, (unsigned)sparse);
    xw_u8(w, NET_XPART_META, 0);
    xw_u8(w, NET_XPART_META, 0);
    xw_u32(w, NET_XPART_META, 0);
    xw_u64(w, NET_XPART_META, N);
    xw_u64(w, NET_XPART_META, sparse ? nnz : N);
    if (sparse) xw_bitmap(w, xt->mask, N);
    for (size_t i = 0; i < N; i++) {
        if (sparse && !xt->mask[i]) continue;
        if (f16)
            xw_f16(w, part, v[i]);
        else
            xw_f32(w, part, v[i]);
    }
}

/* ARCH as in a checkpoint (net__arch_write), counted as metadata. */
static void xw_arch(struct xz_writer *w, const struct net *n)
{
    struct net_wr a = {0};
    net__arch_write(&a, n);
    if (a.oom) w->all.oom = 1;
    xw_put(w, NET_XPART_META, a.p, a.len);
    net_wr_free(&a);
}

int net_export_save(const char *path, const struct net *n, const struct net_xplan *p,
                    const struct ckpt_blob *blobs, size_t n_blobs, struct net_export_sizes *sz,
                    char *err, size_t errlen)
{
    if (p && (p->n_tensors != n->n_tensors || p->n_params != n->n_params)) {
        snprintf(err, errlen, "%s: the compression plan belongs to another architecture", path);
        return -EINVAL;
    }
    static const char *const reserved[3] = {"ARCH", "TENS", "STAT"};
    int rc = net__blobs_check(blobs, n_blobs, reserved, 3, path, err, errlen);
    if (rc < 0) return rc;
    struct xz_writer w;
    memset(&w, 0, sizeof(w));
    unsigned char *file = NULL;
    rc = -ENOMEM;
    xw_arch(&w, n);
    size_t at = xw_begin(&w, "TENS"), n_par = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) n_par += n->tensors[ti].arena == NET_ARENA_PARAM;
    xw_u32(&w, NET_XPART_META, (uint32_t)n_par);
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena == NET_ARENA_PARAM)
            xw_tensor(&w, t, n->params + t->off, p ? &p->t[ti] : NULL);
    }
    xw_end(&w, at);
    at = xw_begin(&w, "STAT");
    xw_put(&w, NET_XPART_OTHER, n->state, n->n_state * sizeof(float));
    xw_end(&w, at);
    for (size_t i = 0; i < n_blobs; i++) {
        at = xw_begin(&w, blobs[i].tag);
        xw_put(&w, NET_XPART_META, blobs[i].data, blobs[i].len);
        xw_end(&w, at);
    }
    int oom = w.all.oom;
    for (int i = 0; i < NET_XPART_COUNT; i++) oom |= w.part[i].oom;
    if (oom) {
        snprintf(err, errlen, "%s: out of memory building the file", path);
        goto out;
    }
    if (w.all.len > XZ_MAX_RAW) {
        snprintf(err, errlen, "%s: model too large for the format (%zu bytes)", path, w.all.len);
        rc = -EFBIG;
        goto out;
    }
    uLongf zcap = compressBound((uLong)w.all.len);
    if (!(file = malloc(XZ_HEAD + zcap + 4))) {
        snprintf(err, errlen, "%s: out of memory for the deflated image", path);
        goto out;
    }
    if (compress2(file + XZ_HEAD, &zcap, w.all.p ? w.all.p : (const Bytef *)"", (uLong)w.all.len,
                  Z_BEST_COMPRESSION) != Z_OK) {
        snprintf(err, errlen, "%s: deflate failed", path);
        rc = -EIO;
        goto out;
    }
    const uint32_t ver = XZ_VERSION, probe = XZ_PROBE, flags = 0;
    const uint64_t raw_len = w.all.len, zlen = zcap;
    memcpy(file, "EVWZ", 4);
    memcpy(file + 4, &ver, 4);
    memcpy(file + 8, &probe, 4);
    memcpy(file + 12, &flags, 4);
    memcpy(file + 16, &raw_len, 8);
    memcpy(file + 24, &zlen, 8);
    const size_t flen = XZ_HEAD + (size_t)zcap + 4;
    uint32_t crc = net_crc32(file, flen - 4);
    memcpy(file + flen - 4, &crc, 4);
    if ((rc = net_write_atomic(path, file, flen, err, errlen)) < 0) goto out;
    if (sz) {
        memset(sz, 0, sizeof(*sz));
        sz->f32_bytes = (n->n_params + n->n_state) * sizeof(float);
        sz->payload = w.all.len;
        sz->file = flen;
        for (int i = 0; i < NET_XPART_COUNT; i++) {
            sz->part[i] = w.part[i].len;
            uLongf zl = compressBound((uLong)w.part[i].len);
            unsigned char *tmp = malloc(zl + 1);
            if (tmp && w.part[i].len &&
                compress2(tmp, &zl, w.part[i].p, (uLong)w.part[i].len, Z_BEST_COMPRESSION) == Z_OK)
                sz->part_z[i] = zl;
            free(tmp);
        }
    }
    rc = 0;
out:
    free(file);
    free(w.all.p);
    for (int i = 0; i < NET_XPART_COUNT; i++) free(w.part[i].p);
    return rc;
}

// ---- reading -------------------------------------------------------------------------------

static float rd_f16(struct net_rd *r)
{
    uint16_t h;
    net_rd_bytes(r, &h, 2);
    return net_f32_from_f16(h);
}

/* One TENS record into w (t->n floats). */
static int xz_read_tensor(struct net_rd *r, const char *path, const struct net_tensor *t,
                          float *w, float *cb, char *err, size_t errlen)
{
    const unsigned enc = net_rd_u8(r), sparse = net_rd_u8(r), bits = net_rd_u8(r),
                   zero = net_rd_u8(r);
    const uint32_t k = net_rd_u32(r);
    const uint64_t N = net_rd_u64(r), nnz = net_rd_u64(r);
    if (r->bad) goto trunc;
    if (enc > XZ_KM_F16 || sparse > 1 || zero != 0 || N != t->n || nnz > N ||
        (!sparse && nnz != N)) {
        snprintf(err, errlen, "%s: tensor %s: bad record header (encoding %u, %llu of %llu "
                 "elements, expected %zu)", path, t->name, enc, (unsigned long long)nnz,
                 (unsigned long long)N, t->n);
        return -EINVAL;
    }
    const int km = enc >= XZ_KM_F32;
    if (km ? (bits < 1 || bits > 16 || k > XZ_KMAX + 1 || (size_t)k > ((size_t)1 << bits) ||
              (k == 0 && nnz > 0))
           : (bits != 0 || k != 0)) {
        snprintf(err, errlen, "%s: tensor %s: bad codebook (%u entries, %u-bit codes)", path,
                 t->name, k, bits);
        return -EINVAL;
    }
    for (uint32_t j = 0; j < k; j++) cb[j] = enc == XZ_KM_F16 ? rd_f16(r) : net_rd_f32(r);
    const unsigned char *bitmap = NULL;
    if (sparse) {
        const size_t nb = (size_t)(N + 7) / 8;
        if (!(bitmap = net_rd_view(r, nb))) goto trunc;
        size_t ones = 0;
        for (size_t i = 0; i < N; i++) ones += (bitmap[i / 8] >> (i % 8)) & 1u;
        if (ones != nnz || (N % 8 && bitmap[nb - 1] >> (N % 8))) {
            snprintf(err, errlen, "%s: tensor %s: bitmap has %zu entries set, record says %llu",
                     path, t->name, ones, (unsigned long long)nnz);
            return -EINVAL;
        }
    }
    const size_t es = km ? 0 : enc == XZ_F16 ? 2 : 4;
    const size_t need = km ? (size_t)((nnz * bits + 7) / 8) : (size_t)nnz * es;
    const unsigned char *src = net_rd_view(r, need);
    if (!src) goto trunc;
    uint64_t acc = 0;
    unsigned have = 0;
    size_t s = 0;
    for (size_t i = 0; i < N; i++) {
        if (bitmap && !((bitmap[i / 8] >> (i % 8)) & 1u)) {
            w[i] = 0.0f;
            continue;
        }
        if (km) {
            while (have < bits) {
                acc |= (uint64_t)(*src++) << have;
                have += 8;
            }
            unsigned code = (unsigned)(acc & ((1u << bits) - 1u));
            acc >>= bits;
            have -= bits;
            if (code >= k) {
                snprintf(err, errlen, "%s: tensor %s: code %u out of range (codebook has %u "
                         "entries)", path, t->name, code, k);
                return -EINVAL;
            }
            w[i] = cb[code];
        } else if (es == 2) {
            uint16_t h;
            memcpy(&h, src + s * 2, 2);
            w[i] = net_f32_from_f16(h);
        } else {
            memcpy(&w[i], src + s * 4, 4);
        }
        s++;
    }
    return 0;
trunc:
    snprintf(err, errlen, "%s: tensor %s: record is truncated", path, t->name);
    return -EINVAL;
}

int net_export_load(const char *path, struct net **out, struct ckpt_blob **blobs, size_t *n_blobs,
                    char *err, size_t errlen)
{
    unsigned char *buf = NULL, *raw = NULL;
    size_t len = 0;
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    float *cb = NULL;
    int got_tens = 0, got_stat = 0;
    int rc = net_read_file(path, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    rc = -EINVAL;
    if (len < 4 || memcmp(buf, "EVWZ", 4) != 0) {
        snprintf(err, errlen, "%s: bad magic (not a compressed evowidth model)", path);
        goto fail;
    }
    if (len < XZ_HEAD + 4) {
        snprintf(err, errlen, "%s: truncated (%zu bytes, the header alone is %d)", path, len,
                 XZ_HEAD + 4);
        goto fail;
    }
    uint32_t ver, probe, flags;
    uint64_t raw_len, zlen;
    memcpy(&ver, buf + 4, 4);
    memcpy(&probe, buf + 8, 4);
    memcpy(&flags, buf + 12, 4);
    memcpy(&raw_len, buf + 16, 8);
    memcpy(&zlen, buf + 24, 8);
    if (probe != XZ_PROBE) {
        snprintf(err, errlen, "%s: written on a machine with another byte order", path);
        goto fail;
    }
    if (ver != XZ_VERSION || flags != 0) {
        snprintf(err, errlen, "%s: unsupported format version %u (flags %u; this build reads %u)",
                 path, ver, flags, XZ_VERSION);
        goto fail;
    }
    if (zlen > len - XZ_HEAD - 4) {
        snprintf(err, errlen, "%s: truncated (header promises %llu bytes of data, the file has "
                 "%zu)", path, (unsigned long long)zlen, len - XZ_HEAD - 4);
        goto fail;
    }
    if (zlen < len - XZ_HEAD - 4) {
        snprintf(err, errlen, "%s: %zu bytes of trailing data", path,
                 (size_t)(len - XZ_HEAD - 4 - zlen));
        goto fail;
    }
    if (!net_crc_ok(buf, len)) {
        snprintf(err, errlen, "%s: CRC mismatch (file is corrupt or truncated)", path);
        goto fail;
    }
    // Deflate expands at most ~1032x: a larger claim is corrupt, not a reason to allocate.
    if (raw_len == 0 || raw_len > XZ_MAX_RAW || raw_len > zlen * 1040 + 64) {
        snprintf(err, errlen, "%s: implausible payload length %llu", path,
                 (unsigned long long)raw_len);
        goto fail;
    }
    if (!(raw = malloc((size_t)raw_len))) {
        snprintf(err, errlen, "%s: out of memory for %llu bytes", path,
                 (unsigned long long)raw_len);
        rc = -ENOMEM;
        goto fail;
    }
    uLongf got = (uLongf)raw_len;
    int zrc = uncompress(raw, &got, buf + XZ_HEAD, (uLong)zlen);
    if (zrc != Z_OK || got != raw_len) {
        snprintf(err, errlen, "%s: deflated data is corrupt (%s)", path,
                 zrc == Z_OK ? "short payload" : zrc == Z_BUF_ERROR ? "payload longer than stated"
                                                                   : "bad stream");
        goto fail;
    }
    struct net_rd r = net_rd_make(raw, (size_t)raw_len);
    // Every element takes at least one bit of the payload (bitmap or 1-bit code), every
    // statistic four bytes: larger arena claims are corrupt, refused before allocating.
    if ((rc = net__arch_read(&r, path, 8 * (size_t)raw_len, (size_t)raw_len / 4, &n, err,
                             errlen)) < 0)
        goto fail;
    rc = -EINVAL;
    if (!(cb = malloc((XZ_KMAX + 1) * sizeof(float)))) {
        rc = -ENOMEM;
        goto fail;
    }
    char tag[5] = "";
    struct net_rd c;
    int more;
    while ((more = net_rd_chunk(&r, tag, &c)) == 1) {
        if (strcmp(tag, "ARCH") == 0 || (strcmp(tag, "TENS") == 0 && got_tens) ||
            (strcmp(tag, "STAT") == 0 && got_stat)) {
            snprintf(err, errlen, "%s: duplicate chunk \"%s\"", path, tag);
            goto fail;
        }
        if (strcmp(tag, "TENS") == 0) {
            size_t n_par = 0;
            for (size_t ti = 0; ti < n->n_tensors; ti++)
                n_par += n->tensors[ti].arena == NET_ARENA_PARAM;
            uint32_t cnt = net_rd_u32(&c);
            if (c.bad || cnt != n_par) {
                snprintf(err, errlen, "%s: TENS chunk lists %u tensors, the architecture has %zu",
                         path, cnt, n_par);
                goto fail;
            }
            for (size_t ti = 0; ti < n->n_tensors; ti++) {
                const struct net_tensor *t = &n->tensors[ti];
                if (t->arena != NET_ARENA_PARAM) continue;
                if ((rc = xz_read_tensor(&c, path, t, n->params + t->off, cb, err, errlen)) < 0)
                    goto fail;
            }
            rc = -EINVAL;
            if (!net_rd_done(&c)) {
                snprintf(err, errlen, "%s: TENS chunk has %zu bytes of trailing data", path,
                         net_rd_left(&c));
                goto fail;
            }
            got_tens = 1;
        } else if (strcmp(tag, "STAT") == 0) {
            if (net_rd_left(&c) != n->n_state * sizeof(float)) {
                snprintf(err, errlen, "%s: STAT chunk has the wrong size for this architecture",
                         path);
                goto fail;
            }
            net_rd_f32s(&c, n->state, n->n_state);
            got_stat = 1;
        } else {
            int brc = net__blobs_add(&bl, &nbl, tag, &c);
            if (brc == -EEXIST) {
                snprintf(err, errlen, "%s: duplicate chunk \"%s\"", path, tag);
                goto fail;
            }
            if (brc < 0) {
                snprintf(err, errlen, "%s: out of memory for chunk \"%s\"", path, tag);
                rc = brc;
                goto fail;
            }
        }
        if (!net_rd_done(&c)) {
            snprintf(err, errlen, "%s: chunk \"%.4s\" is malformed", path, tag);
            goto fail;
        }
    }
    if (more < 0) {
        snprintf(err, errlen, "%s: truncated chunk \"%.4s\"", path, tag);
        goto fail;
    }
    if (!got_tens || !got_stat) {
        snprintf(err, errlen, "%s: missing %s chunk", path, got_tens ? "STAT" : "TENS");
        goto fail;
    }
    if (blobs) {
        *blobs = bl;
        *n_blobs = nbl;
    } else {
        ckpt_blobs_free(bl, nbl);
    }
    free(cb);
    free(raw);
    free(buf);
    *out = n;
    return 0;
fail:
    ckpt_blobs_free(bl, nbl);
    net_destroy(n);
    free(cb);
    free(raw);
    free(buf);
    return rc;
}

int net_load_any(const char *path, struct net **out, struct net_optim *opt, int *has_opt,
                 struct ckpt_blob **blobs, size_t *n_blobs, char *err, size_t errlen)
{
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t got = fread(magic, 1, 4, f);
        fclose(f);
        if (got == 4 && memcmp(magic, "EVWZ", 4) == 0) {
            int rc = net_export_load(path, out, blobs, n_blobs, err, errlen);
            if (rc == 0 && has_opt) *has_opt = 0;
            return rc;
        }
    }
    // Not compressed (or unreadable): the checkpoint loader reports what is wrong.
    return ckpt_load(path, out, opt, has_opt, blobs, n_blobs, err, errlen);
}
