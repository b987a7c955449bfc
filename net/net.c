/* net/net.c: building a net from specs, its arenas, and the forward/backward driver.
 *
 * Design (llm.c's fill_in_parameter_sizes + malloc_and_point_parameters): each layer's
 * ops->tensors declares its tensors; we lay them out back to back, one arena each for params,
 * grads, Adam m and Adam v (identical layout) plus one for BN running statistics. Layers keep
 * only the index of their first tensor, so a new net with other widths is a new table.
 *
 * Activations: acts[i] is layer i's input, acts[n_layers] the logits, dacts likewise. The
 * workspace is sized for `ws_batch` samples and grows on demand (net_reserve).
 * Thread-safety: a net is used by one thread at a time; kernels use OpenMP inside. */
#include <errno.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cblas.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "net/net_internal.h"

static const struct net__ops *const NET__OPS[NET_KIND_COUNT] = {
    [NET_DENSE] = &net__dense_ops,     [NET_CONV] = &net__conv_ops,       [NET_BN] = &net__bn_ops,
    [NET_RELU] = &net__relu_ops,       [NET_MAXPOOL] = &net__maxpool_ops, [NET_GAP] = &net__gap_ops,
    [NET_FLATTEN] = &net__flatten_ops, [NET_RES] = &net__res_ops,
};
static const char *const NET__KIND_NAME[NET_KIND_COUNT] = {
    [NET_DENSE] = "dense",     [NET_CONV] = "conv", [NET_BN] = "bn",           [NET_RELU] = "relu",
    [NET_MAXPOOL] = "maxpool", [NET_GAP] = "gap",   [NET_FLATTEN] = "flatten", [NET_RES] = "res",
};

const char *net_kind_name(enum net_kind k)
{
    return (unsigned)k < NET_KIND_COUNT ? NET__KIND_NAME[k] : "?";
}

int net_kind_from_name(const char *s)
{
    for (int k = 0; k < NET_KIND_COUNT; k++)
        if (strcmp(s, NET__KIND_NAME[k]) == 0) return k;
    return -1;
}

void net_set_threads(int n_threads)
{
    if (n_threads < 1) n_threads = 1;
#if defined(__x86_64__) || defined(__i386__)
    /* Flush denormals to zero (FTZ | DAZ). Tiny weights and gradients otherwise fall into
     * the microcode-assisted path and steps slow down several times as training goes on.
     * Threads created later (OpenMP's pool) inherit this thread's MXCSR. */
    _mm_setcsr(_mm_getcsr() | 0x8040);
#endif
#ifdef _OPENMP
    omp_set_num_threads(n_threads);
    openblas_set_num_threads(n_threads);
#else
    openblas_set_num_threads(1); // serial build (ThreadSanitizer): BLAS serial too
#endif
}

// ---- tensors --------------------------------------------------------------------------

float *net__p(const struct net *n, const struct net_layer *l, size_t k)
{
    return net_tensor_data(n, &n->tensors[l->t0 + k]);
}

float *net__g(const struct net *n, const struct net_layer *l, size_t k)
{
    const struct net_tensor *t = &n->tensors[l->t0 + k];
    return t->arena == NET_ARENA_PARAM ? n->grads + t->off : NULL;
}

float *net_tensor_data(const struct net *n, const struct net_tensor *t)
{
    return (t->arena == NET_ARENA_PARAM ? n->params : n->state) + t->off;
}

double net_mid_sqnorm(const float *w, size_t D0, size_t m, size_t B, size_t j)
{
    double s = 0.0;
    for (size_t o = 0; o < D0; o++)
        for (size_t b = 0; b < B; b++) {
            double v = w[(o * m + j) * B + b];
            s += v * v;
        }
    return s;
}

struct net_tensor *net_tensor_get(const struct net *n, size_t layer, const char *suffix)
{
    if (layer >= n->n_layers) return NULL;
    const struct net_layer *l = &n->layers[layer];
    size_t pre = strlen(l->spec.name) + 1;
    for (size_t i = l->t0; i < l->t0 + l->n_t; i++)
        if (strcmp(n->tensors[i].name + pre, suffix) == 0) return &n->tensors[i];
    return NULL;
}

long net_layer_find(const struct net *n, const char *name)
{
    for (size_t i = 0; i < n->n_layers; i++)
        if (strcmp(n->layers[i].spec.name, name) == 0) return (long)i;
    return -1;
}

void net__he_fill(float *w, size_t count, size_t fan_in, uint64_t *rng)
{
    float sd = sqrtf(2.0f / (float)(fan_in ? fan_in : 1));
    for (size_t i = 0; i < count; i++) w[i] = sd * net_rand_normal(rng);
}

void net__init_fill(const struct net *n, float *w, float *b, size_t count, size_t n_bias,
                    size_t fan_in, uint64_t *rng)
{
    if (n->init == NET_INIT_HE) {
        net__he_fill(w, count, fan_in, rng);
        return; // biases stay 0
    }
    const float bound = 1.0f / sqrtf((float)(fan_in ? fan_in : 1));
    for (size_t i = 0; i < count; i++) w[i] = bound * (2.0f * net_rand_uniform(rng) - 1.0f);
    if (b)
        for (size_t i = 0; i < n_bias; i++) b[i] = bound * (2.0f * net_rand_uniform(rng) - 1.0f);
}

// ---- create / destroy -----------------------------------------------------------------

static void net__free_ws(struct net *n)
{
    // Either table may be missing when net_reserve ran out of memory half way.
    for (size_t i = 0; i <= n->n_layers; i++) {
        if (n->acts) free(n->acts[i]);
        if (n->dacts) free(n->dacts[i]);
    }
    free(n->acts);
    free(n->dacts);
    free(n->ws_pool);
    free(n->scratch);
    free(n->probs);
    n->acts = n->dacts = NULL;
    n->ws_pool = n->scratch = n->probs = NULL;
    n->ws_batch = 0;
    n->scratch_n = 0;
}

void net_destroy(struct net *n)
{
    if (!n) return;
    net__free_ws(n);
    free(n->layers);
    free(n->tensors);
    free(n->params);
    free(n->grads);
    free(n->m);
    free(n->chan_stats);
    free(n->v);
    free(n->state);
    free(n);
}

int net_create(struct net **out, const struct net_shape *in, size_t n_classes,
               const struct net_layer_spec *specs, size_t n_specs, char *err, size_t errlen)
{
    return net__create_bounded(out, in, n_classes, specs, n_specs, SIZE_MAX, SIZE_MAX, err, errlen);
}

int net__create_bounded(struct net **out, const struct net_shape *in, size_t n_classes,
                        const struct net_layer_spec *specs, size_t n_specs, size_t max_params,
                        size_t max_state, char *err, size_t errlen)
{
    int rc = -EINVAL;
    struct net *n = calloc(1, sizeof(*n));
    if (!n) return -ENOMEM;
    if (n_specs == 0 || !in->c || !in->h || !in->w || in->c > 4 || n_classes < 2) {
        snprintf(err, errlen,
                 "model: need at least one layer, 1-4 input channels and >= 2 classes");
        goto fail;
    }
    n->in_shape = *in;
    n->in_shape.spatial = 1;
    n->n_classes = n_classes;
    for (size_t c = 0; c < 4; c++) {
        n->norm_mean[c] = 0.0f;
        n->norm_std[c] = 1.0f;
    }
    n->n_layers = n_specs;
    n->layers = calloc(n_specs, sizeof(*n->layers));
    n->tensors = calloc(n_specs * NET__MAX_T, sizeof(*n->tensors));
    if (!n->layers || !n->tensors) {
        rc = -ENOMEM;
        goto fail;
    }

    // Shapes and names, layer by layer.
    struct net_shape cur = n->in_shape;
    size_t kind_count[NET_KIND_COUNT] = {0};
    for (size_t i = 0; i < n_specs; i++) {
        struct net_layer *l = &n->layers[i];
        l->spec = specs[i];
        if ((unsigned)l->spec.kind >= NET_KIND_COUNT) {
            snprintf(err, errlen, "model layer %zu: unknown kind %d", i, (int)l->spec.kind);
            goto fail;
        }
        kind_count[l->spec.kind]++;
        if (!l->spec.name[0])
            snprintf(l->spec.name, sizeof(l->spec.name), "%s%zu", NET__KIND_NAME[l->spec.kind],
                     kind_count[l->spec.kind]);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(n->layers[j].spec.name, l->spec.name) == 0) {
                snprintf(err, errlen, "model layer %zu: duplicate name \"%s\"", i, l->spec.name);
                goto fail;
            }
        }
        l->in = cur;
        char why[160] = "";
        if (NET__OPS[l->spec.kind]->shape(l, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "model layer %zu (%s \"%s\"): %s", i,
                     NET__KIND_NAME[l->spec.kind], l->spec.name, why);
            goto fail;
        }
        cur = l->out;
    }
    if (cur.spatial || cur.c != n_classes) {
        const struct net_layer *last = &n->layers[n_specs - 1];
        snprintf(err, errlen,
                 "model layer %zu (%s \"%s\"): the last layer must output %zu class scores "
                 "(flat), got %zux%zux%zu",
                 n_specs - 1, NET__KIND_NAME[last->spec.kind], last->spec.name, n_classes, cur.c,
                 cur.h, cur.w);
        goto fail;
    }

    // Tensor table and arena offsets.
    size_t off[2] = {0, 0};
    for (size_t i = 0; i < n_specs; i++) {
        struct net_layer *l = &n->layers[i];
        struct net__tdesc td[NET__MAX_T];
        l->t0 = n->n_tensors;
        l->n_t = NET__OPS[l->spec.kind]->tensors(l, td);
        for (size_t k = 0; k < l->n_t; k++) {
            struct net_tensor *t = &n->tensors[n->n_tensors++];
            snprintf(t->name, sizeof(t->name), "%s.%s", l->spec.name, td[k].suffix);
            t->arena = td[k].arena;
            t->nd = td[k].nd;
            t->n = 1;
            for (int d = 0; d < 4; d++) {
                t->dims[d] = d < td[k].nd ? td[k].dims[d] : 1;
                t->n *= t->dims[d];
            }
            t->decay = td[k].decay;
            t->layer = i;
            t->off = off[t->arena];
            off[t->arena] += t->n;
        }
    }
    n->n_params = off[NET_ARENA_PARAM];
    n->n_state = off[NET_ARENA_STATE];
    if (n->n_params > max_params || n->n_state > max_state) {
        snprintf(err, errlen,
                 "model: %zu parameters and %zu statistics, more than the %zu and "
                 "%zu allowed",
                 n->n_params, n->n_state, max_params, max_state);
        goto fail;
    }
    n->params = net__calloc_big(n->n_params + 1, sizeof(float));
    n->grads = net__calloc_big(n->n_params + 1, sizeof(float));
    n->grads_zero = 1;
    n->m = net__calloc_big(n->n_params + 1, sizeof(float));
    n->v = net__calloc_big(n->n_params + 1, sizeof(float));
    n->state = calloc(n->n_state + 1, sizeof(float));
    n->chan_stats = calloc(n->n_state + 2, sizeof(double)); // a BN's 2 C <= n_state
    if (!n->params || !n->grads || !n->m || !n->v || !n->state || !n->chan_stats) {
        snprintf(err, errlen, "model: out of memory for %zu parameters", n->n_params);
        rc = -ENOMEM;
        goto fail;
    }
    *out = n;
    return 0;
fail:
    net_destroy(n);
    return rc;
}

void net_init_params(struct net *n, uint64_t *rng)
{
    net_init_params_with(n, rng, NET_INIT_HE);
}

void net_init_params_with(struct net *n, uint64_t *rng, enum net_init scheme)
{
    n->init = scheme;
    memset(n->params, 0, n->n_params * sizeof(float));
    memset(n->m, 0, n->n_params * sizeof(float));
    memset(n->v, 0, n->n_params * sizeof(float));
    memset(n->state, 0, n->n_state * sizeof(float));
    for (size_t i = 0; i < n->n_layers; i++) {
        struct net_layer *l = &n->layers[i];
        if (NET__OPS[l->spec.kind]->init) NET__OPS[l->spec.kind]->init(n, l, rng);
    }
}

size_t net_macs(const struct net *n)
{
    size_t f = 0;
    for (size_t i = 0; i < n->n_layers; i++)
        f += NET__OPS[n->layers[i].spec.kind]->macs(&n->layers[i]);
    return f;
}

void net_layer_info(const struct net *n, size_t li, struct net_layer_info *out)
{
    const struct net_layer *l = &n->layers[li];
    out->params = 0;
    for (size_t t = l->t0; t < l->t0 + l->n_t; t++)
        if (n->tensors[t].arena == NET_ARENA_PARAM) out->params += n->tensors[t].n;
    out->macs = NET__OPS[l->spec.kind]->macs(l);
    out->width = l->spec.kind == NET_RES ? l->spec.width : l->out.c;
}

int net_clone(struct net **out, const struct net *n)
{
    struct net_layer_spec *specs = malloc((n->n_layers + 1) * sizeof(*specs));
    if (!specs) return -ENOMEM;
    for (size_t i = 0; i < n->n_layers; i++) specs[i] = n->layers[i].spec;
    char why[256];
    struct net *c = NULL;
    int rc = net_create(&c, &n->in_shape, n->n_classes, specs, n->n_layers, why, sizeof(why));
    free(specs);
    if (rc < 0) return rc;
    memcpy(c->norm_mean, n->norm_mean, sizeof(n->norm_mean));
    memcpy(c->norm_std, n->norm_std, sizeof(n->norm_std));
    memcpy(c->params, n->params, n->n_params * sizeof(float));
    memcpy(c->m, n->m, n->n_params * sizeof(float));
    memcpy(c->v, n->v, n->n_params * sizeof(float));
    memcpy(c->state, n->state, n->n_state * sizeof(float));
    *out = c;
    return 0;
}

// ---- workspace ------------------------------------------------------------------------

#define NET__HUGE ((size_t)2 << 20)

void *net__alloc_big(size_t bytes)
{
    if (bytes < NET__HUGE || bytes > SIZE_MAX - NET__HUGE) return malloc(bytes);
    const size_t whole = (bytes + NET__HUGE - 1) / NET__HUGE * NET__HUGE;
    void *p = aligned_alloc(NET__HUGE, whole);
    if (p) (void)madvise(p, whole, MADV_HUGEPAGE);
    return p;
}

void *net__calloc_big(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    if (n * size < NET__HUGE) return calloc(n, size);
    void *p = net__alloc_big(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

static size_t net__numel(const struct net_shape *s)
{
    return s->c * s->h * s->w;
}

int net_reserve(struct net *n, size_t batch)
{
    if (batch <= n->ws_batch) return 0;
    struct net tmp = *n; // build the new workspace in tmp, swap on success
    tmp.acts = calloc(n->n_layers + 1, sizeof(float *));
    tmp.dacts = calloc(n->n_layers + 1, sizeof(float *));
    tmp.ws_pool = tmp.scratch = tmp.probs = NULL;
    tmp.ws_batch = batch;
    if (!tmp.acts || !tmp.dacts) goto nomem;
    size_t ws_total = 0, scratch = 0;
    for (size_t i = 0; i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        const struct net__ops *ops = NET__OPS[l->spec.kind];
        ws_total += ops->ws_size(l, batch);
        size_t s = ops->scratch_size(l, batch);
        if (s > scratch) scratch = s;
    }
    for (size_t i = 0; i <= n->n_layers; i++) {
        size_t sz = batch * net__numel(i == 0 ? &n->in_shape : &n->layers[i - 1].out);
        tmp.acts[i] = net__alloc_big((sz + 1) * sizeof(float));
        tmp.dacts[i] = net__alloc_big((sz + 1) * sizeof(float));
        if (!tmp.acts[i] || !tmp.dacts[i]) goto nomem;
    }
    tmp.ws_pool = net__alloc_big((ws_total + 1) * sizeof(float));
    tmp.scratch = net__alloc_big((scratch + 1) * sizeof(float));
    tmp.probs = malloc((batch * n->n_classes + 1) * sizeof(float));
    if (!tmp.ws_pool || !tmp.scratch || !tmp.probs) goto nomem;
    tmp.scratch_n = scratch;
    net__free_ws(n);
    n->acts = tmp.acts;
    n->dacts = tmp.dacts;
    n->ws_pool = tmp.ws_pool;
    n->scratch = tmp.scratch;
    n->scratch_n = tmp.scratch_n;
    n->probs = tmp.probs;
    n->ws_batch = batch;
    float *p = n->ws_pool;
    for (size_t i = 0; i < n->n_layers; i++) {
        struct net_layer *l = &n->layers[i];
        l->ws = p;
        p += NET__OPS[l->spec.kind]->ws_size(l, batch);
    }
    return 0;
nomem:
    net__free_ws(&tmp); // only tmp's new buffers; n keeps its old workspace
    return -ENOMEM;
}

// ---- forward / backward ---------------------------------------------------------------

/* Layers [0, upto) on x (B, C, H, W): the input converted to (C, B, H, W) in acts[0]. */
static void net__forward_layers(struct net *n, const float *x, size_t B, int training, size_t upto)
{
    const size_t C = n->in_shape.c, HW = n->in_shape.h * n->in_shape.w;
    float *a0 = n->acts[0];
    if (C == 1) {
        memcpy(a0, x, B * HW * sizeof(float));
    } else {
        for (size_t b = 0; b < B; b++)
            for (size_t c = 0; c < C; c++)
                memcpy(a0 + (c * B + b) * HW, x + (b * C + c) * HW, HW * sizeof(float));
    }
    const size_t end = upto < n->n_layers ? upto : n->n_layers;
    for (size_t i = 0; i < end; i++) {
        struct net_layer *l = &n->layers[i];
        if (l->spec.kind == NET_DENSE && i + 1 < n->n_layers &&
            n->layers[i + 1].spec.kind == NET_RELU) {
            // Dense -> ReLU: one store writes both (net_internal.h).
            net__dense_fwd_relu(n, l, n->acts[i + 1], n->acts[i + 2], n->acts[i], B);
            i++;
            continue;
        }
        // BN at j, then a ReLU and a max pool the fused pass takes (training only).
#define BN_POOL(j)                                                                                 \
    (j + 2 < end && n->layers[j].spec.kind == NET_BN && n->layers[j + 1].spec.kind == NET_RELU &&  \
     net__bn_pool_ok(&n->layers[j + 2]))
        // A ReLU followed by a max pool is left to the pool (below).
#define RELU_ALONE(j)                                                                              \
    (j < end && n->layers[j].spec.kind == NET_RELU &&                                              \
     !(j + 1 < end && n->layers[j + 1].spec.kind == NET_MAXPOOL))
        const int bn_next = i + 1 < end && n->layers[i + 1].spec.kind == NET_BN;
        const size_t bn_at = l->spec.kind == NET_BN ? i : i + 1; // a BN here or next
        if (training && (l->spec.kind == NET_BN || (l->spec.kind == NET_CONV && bn_next)) &&
            BN_POOL(bn_at)) {
            /* [Conv ->] BN -> ReLU -> 2x2 max pool: one pass from the BN's input to the
             * pool's output (net_internal.h); the conv's store gives the BN's statistics. */
            double *st = NULL;
            if (bn_at == i + 1) {
                st = n->chan_stats;
                memset(st, 0, 2 * l->out.c * sizeof(double));
                net__conv_forward_stats(n, l, n->acts[i + 1], n->acts[i], B, st);
            }
            net__bn_pool_forward(n, &n->layers[bn_at], &n->layers[bn_at + 2], n->acts[bn_at + 3],
                                 n->acts[bn_at], B, st);
            i = bn_at + 2;
            continue;
        }
        if (l->spec.kind == NET_CONV && bn_next && training) {
            // Conv -> BN [-> ReLU]: the BN's batch statistics from the conv's store, the
            // ReLU's output from the BN's (net_internal.h).
            double *st = n->chan_stats;
            memset(st, 0, 2 * l->out.c * sizeof(double));
            net__conv_forward_stats(n, l, n->acts[i + 1], n->acts[i], B, st);
            const int relu = RELU_ALONE(i + 2);
            net__bn_forward_relu(n, &n->layers[i + 1], n->acts[i + 2], relu ? n->acts[i + 3] : NULL,
                                 n->acts[i + 1], B, training, st);
            i += 1 + (size_t)relu;
            continue;
        }
        if (l->spec.kind == NET_BN && RELU_ALONE(i + 1)) {
            net__bn_forward_relu(n, l, n->acts[i + 1], n->acts[i + 2], n->acts[i], B, training,
                                 NULL);
            i++;
            continue;
        }
#undef RELU_ALONE
#undef BN_POOL
        if (l->spec.kind == NET_RELU && i + 1 < end && n->layers[i + 1].spec.kind == NET_MAXPOOL) {
            // ReLU -> max pool: the pool applies the ReLU as it reads (net_internal.h).
            net__mp_forward_relu(&n->layers[i + 1], n->acts[i + 2], n->acts[i], B);
            i++;
            continue;
        }
        NET__OPS[l->spec.kind]->forward(n, l, n->acts[i + 1], n->acts[i], B, training);
    }
    n->training = training;
}

void net_forward_prefix(struct net *n, const float *x, size_t B, size_t upto)
{
    if (net_reserve(n, B) < 0) return;
    net__forward_layers(n, x, B, 0, upto);
}

float net_forward(struct net *n, const float *x, const uint8_t *y, size_t B, int training)
{
    if (net_reserve(n, B) < 0) return NAN;
    net__forward_layers(n, x, B, training, n->n_layers);

    // Softmax and mean cross-entropy, computed in double for the sum.
    const size_t K = n->n_classes;
    const float *z = n->acts[n->n_layers];
    double loss = 0.0;
    for (size_t b = 0; b < B; b++) {
        const float *zb = z + b * K;
        float *pb = n->probs + b * K;
        float mx = zb[0];
        for (size_t k = 1; k < K; k++) mx = zb[k] > mx ? zb[k] : mx;
        double sum = 0.0;
        for (size_t k = 0; k < K; k++) {
            pb[k] = expf(zb[k] - mx);
            sum += pb[k];
        }
        for (size_t k = 0; k < K; k++) pb[k] = (float)(pb[k] / sum);
        if (y) loss += -(zb[y[b]] - mx - log(sum));
    }
    return y ? (float)(loss / (double)B) : 0.0f;
}

void net_backward(struct net *n, const uint8_t *y, size_t B)
{
    n->bwd_store = n->grads_zero; // each weight gradient is written once: no need to add
    n->grads_zero = 0;
    const size_t K = n->n_classes, L = n->n_layers;
    float *dz = n->dacts[L];
    const float inv_b = 1.0f / (float)B;
    for (size_t b = 0; b < B; b++)
        for (size_t k = 0; k < K; k++)
            dz[b * K + k] = (n->probs[b * K + k] - (k == y[b] ? 1.0f : 0.0f)) * inv_b;
    // Layers before the first one with tensors need no gradient: their input's gradient is
    // not computed (for an MLP after a flatten, the widest GEMM of the step).
    size_t first = 0;
    while (first < L && n->layers[first].n_t == 0) first++;
    for (size_t i = L; i-- > first;) {
        struct net_layer *l = &n->layers[i];
        if (n->training && l->spec.kind == NET_MAXPOOL && i >= first + 2 &&
            n->layers[i - 1].spec.kind == NET_RELU && n->layers[i - 2].spec.kind == NET_BN &&
            net__bn_pool_ok(l)) {
            // BN -> ReLU -> max pool, as its forward ran (net_internal.h).
            net__bn_pool_backward(n, &n->layers[i - 2], l, i - 2 > first ? n->dacts[i - 2] : NULL,
                                  n->dacts[i + 1], n->acts[i - 2], B);
            i -= 2;
            continue;
        }
        if (l->spec.kind == NET_MAXPOOL && i > first + 1 &&
            n->layers[i - 1].spec.kind == NET_RELU) {
            // ReLU -> max pool: the pool writes the ReLU's input gradient (net_internal.h).
            net__mp_backward_relu(l, n->dacts[i - 1], n->dacts[i + 1], n->acts[i - 1], B);
            i--;
            continue;
        }
        if (l->spec.kind == NET_RELU && i > first && n->layers[i - 1].spec.kind == NET_BN) {
            // BN -> ReLU: one backward for both (net_internal.h).
            net__bn_backward_relu(n, &n->layers[i - 1], i - 1 > first ? n->dacts[i - 1] : NULL,
                                  n->dacts[i + 1], B);
            i--;
            continue;
        }
        if (l->spec.kind == NET_DENSE && i > first + 1 && n->layers[i - 1].spec.kind == NET_RELU) {
            // ReLU -> dense: the dense layer writes the ReLU's input gradient (net_internal.h).
            net__dense_bwd_gate(n, l, n->dacts[i - 1], n->acts[i - 1], n->dacts[i + 1], n->acts[i],
                                B);
            i--;
            continue;
        }
        NET__OPS[l->spec.kind]->backward(n, l, i > first ? n->dacts[i] : NULL, n->dacts[i + 1],
                                         n->acts[i], n->acts[i + 1], B);
    }
}

void net_zero_grad(struct net *n)
{
    if (!n->grads_zero) memset(n->grads, 0, n->n_params * sizeof(float));
    n->grads_zero = 1;
}
