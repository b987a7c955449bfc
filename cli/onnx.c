/* cli/onnx.c: a net as an ONNX model (opset 13), packed by protobuf-c, and atomic writes.
 *
 * Design: one pass over the layers builds protobuf-c messages (nodes, initializers, the
 * graph, the model) whose memory all comes from one pool freed at the end; the weights are
 * not copied (initializers point into the net's arenas, float_data, so protobuf-c writes
 * them little-endian whatever the host), except the ones batch-norm folding creates.
 * The whole message is packed into one buffer and written atomically.
 *
 * Activations in the graph are NCHW (images) or (N, F) (features), as ONNX's operators
 * expect; the net's own (C, B, H, W) layout is internal to it, and its flatten uses torch's
 * order, which is ONNX Flatten's order on NCHW. Value names: each layer's output is the
 * layer's name, intermediate values "layer/part", the graph's output "logits". */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/onnx.h"
#include "onnx.pb-c.h"

/* net/'s batch-norm epsilon (NET__BN_EPS in net/net_internal.h, private to net/);
 * tests/test_onnx.c checks the exported graph against the net with a variance near it. */
#define CLI_BN_EPS 1e-5f

// ---- a pool of protobuf-c messages -------------------------------------------------------

/* Every allocation of one export, freed together. A failed allocation sets oom; the
 * builders return NULL from then on and the caller checks once. */
struct ox {
    void **blocks;
    size_t n_blocks, cap_blocks;
    Onnx__NodeProto **nodes;
    size_t n_nodes, cap_nodes;
    Onnx__TensorProto **inits;
    size_t n_inits, cap_inits;
    int oom;
};

static int ox_grow(void ***arr, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t nc = *cap ? 2 * *cap : 32;
    while (nc < need) nc *= 2;
    void **p = realloc(*arr, nc * sizeof(*p));
    if (!p) return -ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

static void *ox_alloc(struct ox *x, size_t size)
{
    if (x->oom || ox_grow(&x->blocks, &x->cap_blocks, x->n_blocks + 1) < 0) {
        x->oom = 1;
        return NULL;
    }
    void *p = calloc(1, size ? size : 1);
    if (!p) {
        x->oom = 1;
        return NULL;
    }
    x->blocks[x->n_blocks++] = p;
    return p;
}

static char *ox_fmt(struct ox *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = len < 0 ? NULL : ox_alloc(x, (size_t)len + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return s;
}

static void ox_free(struct ox *x)
{
    for (size_t i = 0; i < x->n_blocks; i++) free(x->blocks[i]);
    free(x->blocks);
    free(x->nodes);
    free(x->inits);
    memset(x, 0, sizeof(*x));
}

/* A float initializer named name with dims (nd of them); data is borrowed and must outlive
 * the packing. Returns its name (pool-owned) or NULL. */
static const char *ox_init(struct ox *x, const char *name, const size_t *dims, int nd,
                           const float *data)
{
    Onnx__TensorProto *t = ox_alloc(x, sizeof(*t));
    int64_t *d = ox_alloc(x, (size_t)(nd > 0 ? nd : 1) * sizeof(*d));
    char *nm = ox_fmt(x, "%s", name);
    if (!t || !d || !nm || ox_grow((void ***)&x->inits, &x->cap_inits, x->n_inits + 1) < 0) {
        x->oom = 1;
        return NULL;
    }
    onnx__tensor_proto__init(t);
    size_t count = 1;
    for (int i = 0; i < nd; i++) d[i] = (int64_t)dims[i], count *= dims[i];
    t->name = nm;
    t->n_dims = (size_t)nd;
    t->dims = d;
    t->has_data_type = 1;
    t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->n_float_data = count;
    t->float_data = (float *)data; // packing only reads it
    x->inits[x->n_inits++] = t;
    return nm;
}

/* A copy of n floats in the pool (for initializers the export computes). */
static float *ox_floats(struct ox *x, size_t n)
{
    return ox_alloc(x, n * sizeof(float));
}

/* A node op(in[0..n_in-1]) -> out; an input may be "" (absent optional input). The node is
 * named after its output. Returns the node (for attributes) or NULL. */
static Onnx__NodeProto *ox_node(struct ox *x, const char *op, const char *const *in, size_t n_in,
                                const char *out)
{
    Onnx__NodeProto *nd = ox_alloc(x, sizeof(*nd));
    char **ins = ox_alloc(x, (n_in ? n_in : 1) * sizeof(*ins));
    char **outs = ox_alloc(x, sizeof(*outs));
    Onnx__AttributeProto **attrs = ox_alloc(x, 8 * sizeof(*attrs));
    if (!nd || !ins || !outs || !attrs || !out ||
        ox_grow((void ***)&x->nodes, &x->cap_nodes, x->n_nodes + 1) < 0) {
        x->oom = 1;
        return NULL;
    }
    for (size_t i = 0; i < n_in; i++) {
        if (!in[i]) {
            x->oom = 1;
            return NULL;
        }
        ins[i] = (char *)in[i];
    }
    onnx__node_proto__init(nd);
    outs[0] = (char *)out;
    nd->n_input = n_in;
    nd->input = ins;
    nd->n_output = 1;
    nd->output = outs;
    nd->name = (char *)out;
    nd->op_type = ox_fmt(x, "%s", op);
    nd->attribute = attrs; // n_attribute grows up to 8 (ox_attr)
    x->nodes[x->n_nodes++] = nd;
    return nd;
}

static Onnx__AttributeProto *ox_attr(struct ox *x, Onnx__NodeProto *nd, const char *name,
                                     Onnx__AttributeProto__AttributeType type)
{
    if (!nd || nd->n_attribute >= 8) {
        x->oom = 1;
        return NULL;
    }
    Onnx__AttributeProto *a = ox_alloc(x, sizeof(*a));
    if (!a) return NULL;
    onnx__attribute_proto__init(a);
    a->name = ox_fmt(x, "%s", name);
    a->has_type = 1;
    a->type = type;
    nd->attribute[nd->n_attribute++] = a;
    return a;
}

static void ox_attr_int(struct ox *x, Onnx__NodeProto *nd, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = ox_attr(x, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (!a) return;
    a->has_i = 1;
    a->i = v;
}

static void ox_attr_float(struct ox *x, Onnx__NodeProto *nd, const char *name, float v)
{
    Onnx__AttributeProto *a = ox_attr(x, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (!a) return;
    a->has_f = 1;
    a->f = v;
}

static void ox_attr_ints(struct ox *x, Onnx__NodeProto *nd, const char *name, size_t n, ...)
{
    Onnx__AttributeProto *a = ox_attr(x, nd, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    int64_t *v = ox_alloc(x, n * sizeof(*v));
    if (!a || !v) return;
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) v[i] = (int64_t)va_arg(ap, size_t);
    va_end(ap);
    a->n_ints = n;
    a->ints = v;
}

// ---- operators -----------------------------------------------------------------------------

/* A weight and its optional bias as the graph's Conv / Gemm read them. */
struct ox_wb {
    const char *w, *b; // initializer names; b NULL = no bias
};

/* Initializers for tensor t of layer li (borrowed data), or NULL when t is absent. */
static const char *ox_tensor(struct ox *x, const struct net *n, const struct net_tensor *t)
{
    if (!t) return NULL;
    return ox_init(x, t->name, t->dims, t->nd, net_tensor_data(n, t));
}

static const char *ox_conv(struct ox *x, const char *in, const char *out, struct ox_wb wb, size_t k,
                           size_t stride, size_t pad)
{
    const char *ins[3] = {in, wb.w, wb.b};
    Onnx__NodeProto *nd = ox_node(x, "Conv", ins, wb.b ? 3 : 2, out);
    ox_attr_ints(x, nd, "kernel_shape", 2, k, k);
    ox_attr_ints(x, nd, "strides", 2, stride, stride);
    ox_attr_ints(x, nd, "pads", 4, pad, pad, pad, pad);
    ox_attr_ints(x, nd, "dilations", 2, (size_t)1, (size_t)1);
    ox_attr_int(x, nd, "group", 1);
    return out;
}

/* out = in W^T (+ b), W (OUT, IN). */
static const char *ox_gemm(struct ox *x, const char *in, const char *out, struct ox_wb wb)
{
    const char *ins[3] = {in, wb.w, wb.b};
    Onnx__NodeProto *nd = ox_node(x, "Gemm", ins, wb.b ? 3 : 2, out);
    ox_attr_float(x, nd, "alpha", 1.0f);
    ox_attr_float(x, nd, "beta", 1.0f);
    ox_attr_int(x, nd, "transA", 0);
    ox_attr_int(x, nd, "transB", 1);
    return out;
}

static const char *ox_unary(struct ox *x, const char *op, const char *in, const char *out)
{
    ox_node(x, op, &in, 1, out);
    return out;
}

/* The four BN tensors of a layer, by prefix ("" for a bn layer, "bn1." etc. in a block). */
struct ox_bn {
    const struct net_tensor *gamma, *beta, *mean, *var;
};

static int ox_bn_get(const struct net *n, size_t li, const char *pfx, struct ox_bn *bn)
{
    char s[4][32];
    snprintf(s[0], sizeof(s[0]), "%sgamma", pfx);
    snprintf(s[1], sizeof(s[1]), "%sbeta", pfx);
    snprintf(s[2], sizeof(s[2]), "%smean", pfx);
    snprintf(s[3], sizeof(s[3]), "%svar", pfx);
    bn->gamma = net_tensor_get(n, li, s[0]);
    bn->beta = net_tensor_get(n, li, s[1]);
    bn->mean = net_tensor_get(n, li, s[2]);
    bn->var = net_tensor_get(n, li, s[3]);
    return bn->gamma && bn->beta && bn->mean && bn->var ? 0 : -1;
}

static const char *ox_batchnorm(struct ox *x, const struct net *n, const char *in, const char *out,
                                const struct ox_bn *bn)
{
    const char *ins[5] = {in, ox_tensor(x, n, bn->gamma), ox_tensor(x, n, bn->beta),
                          ox_tensor(x, n, bn->mean), ox_tensor(x, n, bn->var)};
    Onnx__NodeProto *nd = ox_node(x, "BatchNormalization", ins, 5, out);
    ox_attr_float(x, nd, "epsilon", CLI_BN_EPS);
    ox_attr_float(x, nd, "momentum", 0.9f); // unused in inference
    return out;
}

/* Folds an eval-mode batch norm into the layer before it: with s_c = gamma_c /
 * sqrt(var_c + eps), row c of W (rows of row_len floats) becomes s_c W_c and the bias
 * (b_c - mean_c) s_c + beta_c (b absent: 0). New initializers "<w>+<bn layer>". */
static struct ox_wb ox_fold(struct ox *x, const struct net *n, const struct net_tensor *w,
                            const struct net_tensor *b, const struct ox_bn *bn, const char *bn_name)
{
    struct ox_wb r = {NULL, NULL};
    size_t rows = w->dims[0], row_len = w->n / rows;
    float *w2 = ox_floats(x, w->n), *b2 = ox_floats(x, rows);
    if (!w2 || !b2) return r;
    const float *wv = net_tensor_data(n, w), *bv = b ? net_tensor_data(n, b) : NULL;
    const float *g = net_tensor_data(n, bn->gamma), *be = net_tensor_data(n, bn->beta);
    const float *mu = net_tensor_data(n, bn->mean), *var = net_tensor_data(n, bn->var);
    for (size_t c = 0; c < rows; c++) {
        double s = (double)g[c] / sqrt((double)var[c] + (double)CLI_BN_EPS);
        for (size_t j = 0; j < row_len; j++) w2[c * row_len + j] = (float)(s * wv[c * row_len + j]);
        b2[c] = (float)(((bv ? (double)bv[c] : 0.0) - mu[c]) * s + be[c]);
    }
    char name[160];
    snprintf(name, sizeof(name), "%s+%s", w->name, bn_name);
    r.w = ox_init(x, name, w->dims, w->nd, w2);
    // The bias is named as the weight with its last letter ("w" or "u") made "b".
    size_t bd[1] = {rows};
    snprintf(name, sizeof(name), "%.*sb+%s", (int)(strlen(w->name) - 1), w->name, bn_name);
    r.b = ox_init(x, name, bd, 1, b2);
    return r;
}

// ---- layers --------------------------------------------------------------------------------

struct ox_ctx {
    struct ox *x;
    const struct net *n;
    const struct cli_onnx_opts *o;
    char *err;
    size_t errlen;
};

/* A plain or factorized dense / conv layer li reading in, with the batch norm of layer
 * bn_li folded in when bn_li >= 0. Returns the output value's name. */
static const char *ox_linear(struct ox_ctx *c, size_t li, const char *in, long bn_li)
{
    struct ox *x = c->x;
    const struct net *n = c->n;
    const struct net_layer *l = &n->layers[li];
    const char *name = l->spec.name;
    int conv = l->spec.kind == NET_CONV;
    const struct net_tensor *b = net_tensor_get(n, li, "b");
    // The tensor the bias belongs with: w, or u (the second factor) when factorized.
    const struct net_tensor *w = net_tensor_get(n, li, l->spec.rank ? "u" : "w");
    struct ox_wb last;
    if (bn_li >= 0) {
        struct ox_bn bn;
        if (ox_bn_get(n, (size_t)bn_li, "", &bn) < 0) return NULL;
        last = ox_fold(x, n, w, b, &bn, n->layers[bn_li].spec.name);
    } else {
        last = (struct ox_wb){ox_tensor(x, n, w), ox_tensor(x, n, b)};
    }
    if (l->spec.rank) {
        // t = V x (R units / channels, k x k for a conv), then out = U t + b.
        struct ox_wb first = {ox_tensor(x, n, net_tensor_get(n, li, "v")), NULL};
        const char *t = ox_fmt(x, "%s/v", name);
        if (conv) {
            ox_conv(x, in, t, first, l->spec.k, l->spec.stride, l->spec.pad);
            return ox_conv(x, t, name, last, 1, 1, 0);
        }
        ox_gemm(x, in, t, first);
        return ox_gemm(x, t, name, last);
    }
    if (conv) return ox_conv(x, in, name, last, l->spec.k, l->spec.stride, l->spec.pad);
    return ox_gemm(x, in, name, last);
}

/* One conv of a residual block ("c1", "c2", "p") with its BN ("bn1", ...) folded or as a
 * node when the block has batch norm. */
static const char *ox_res_conv(struct ox_ctx *c, size_t li, const char *in, const char *conv,
                               const char *bnp, size_t k, size_t stride, size_t pad)
{
    struct ox *x = c->x;
    const struct net *n = c->n;
    const char *name = n->layers[li].spec.name;
    char sfx[16];
    snprintf(sfx, sizeof(sfx), "%s.w", conv);
    const struct net_tensor *w = net_tensor_get(n, li, sfx);
    snprintf(sfx, sizeof(sfx), "%s.b", conv);
    const struct net_tensor *b = net_tensor_get(n, li, sfx);
    const char *out = ox_fmt(x, "%s/%s", name, conv);
    if (!w) return NULL;
    if (!n->layers[li].spec.bn)
        return ox_conv(x, in, out, (struct ox_wb){ox_tensor(x, n, w), ox_tensor(x, n, b)}, k,
                       stride, pad);
    struct ox_bn bn;
    char pfx[16];
    snprintf(pfx, sizeof(pfx), "%s.", bnp);
    if (ox_bn_get(n, li, pfx, &bn) < 0) return NULL;
    if (c->o->fold_bn) {
        char bn_name[NET_NAME_MAX + 16];
        snprintf(bn_name, sizeof(bn_name), "%s.%s", name, bnp);
        return ox_conv(x, in, out, ox_fold(x, n, w, b, &bn, bn_name), k, stride, pad);
    }
    ox_conv(x, in, out, (struct ox_wb){ox_tensor(x, n, w), ox_tensor(x, n, b)}, k, stride, pad);
    return ox_batchnorm(x, n, out, ox_fmt(x, "%s/%s", name, bnp), &bn);
}

/* relu(BN2(conv2(relu(BN1(conv1(x))))) + shortcut(x)), as net/layer_res.c. */
static const char *ox_res(struct ox_ctx *c, size_t li, const char *in)
{
    struct ox *x = c->x;
    const struct net_layer *l = &c->n->layers[li];
    const char *name = l->spec.name;
    const char *h = ox_res_conv(c, li, in, "c1", "bn1", 3, l->spec.stride, 1);
    h = ox_unary(x, "Relu", h, ox_fmt(x, "%s/relu1", name));
    h = ox_res_conv(c, li, h, "c2", "bn2", 3, 1, 1);
    const char *sc = in;
    if (net_tensor_get(c->n, li, "p.w"))
        sc = ox_res_conv(c, li, in, "p", "bnp", 1, l->spec.stride, 0);
    const char *ins[2] = {h, sc};
    const char *sum = ox_fmt(x, "%s/add", name);
    ox_node(x, "Add", ins, 2, sum);
    return ox_unary(x, "Relu", sum, name);
}

/* x / 255 -> (x - mean_c) / std_c, exactly the float operations of net/data.c's IDX / CIFAR
 * loading (pixel / 255.0f) and net_data_normalize ((x - m) / s, s <= 0 read as 1, channels
 * past 4 left alone). */
static const char *ox_input(struct ox_ctx *c, float *consts)
{
    struct ox *x = c->x;
    const struct net *n = c->n;
    size_t C = n->in_shape.c;
    float *k255 = consts, *mean = consts + 1, *sd = consts + 1 + C;
    *k255 = 255.0f;
    for (size_t ch = 0; ch < C; ch++) {
        mean[ch] = ch < 4 ? n->norm_mean[ch] : 0.0f;
        sd[ch] = ch < 4 && n->norm_std[ch] > 0.0f ? n->norm_std[ch] : 1.0f;
    }
    size_t dims[4] = {1, C, 1, 1};
    const char *ins[2] = {"pixels", ox_init(x, "input.255", dims, 0, k255)};
    ox_node(x, "Div", ins, 2, "input/unit");
    ins[0] = "input/unit";
    ins[1] = ox_init(x, "input.mean", dims, 4, mean);
    ox_node(x, "Sub", ins, 2, "input/centred");
    ins[0] = "input/centred";
    ins[1] = ox_init(x, "input.std", dims, 4, sd);
    ox_node(x, "Div", ins, 2, "input");
    return "input";
}

/* The graph's nodes and initializers; NULL with err set when a layer cannot be exported. */
static const char *ox_layers(struct ox_ctx *c, const char *cur)
{
    struct ox *x = c->x;
    const struct net *n = c->n;
    for (size_t i = 0; i < n->n_layers && cur; i++) {
        const struct net_layer *l = &n->layers[i];
        const char *name = l->spec.name;
        switch (l->spec.kind) {
        case NET_DENSE:
        case NET_CONV: {
            // With folding, a batch norm right after is absorbed and skipped.
            long bn = -1;
            if (c->o->fold_bn && i + 1 < n->n_layers && n->layers[i + 1].spec.kind == NET_BN)
                bn = (long)(i + 1);
            cur = ox_linear(c, i, cur, bn);
            if (bn >= 0) i++;
            break;
        }
        case NET_BN: {
            struct ox_bn bn;
            if (ox_bn_get(n, i, "", &bn) < 0) goto unsupported;
            cur = ox_batchnorm(x, n, cur, name, &bn);
            break;
        }
        case NET_RELU: cur = ox_unary(x, "Relu", cur, name); break;
        case NET_MAXPOOL: {
            Onnx__NodeProto *nd = ox_node(x, "MaxPool", &cur, 1, name);
            size_t k = l->spec.k, s = l->spec.stride ? l->spec.stride : l->spec.k;
            ox_attr_ints(x, nd, "kernel_shape", 2, k, k);
            ox_attr_ints(x, nd, "strides", 2, s, s);
            ox_attr_ints(x, nd, "pads", 4, (size_t)0, (size_t)0, (size_t)0, (size_t)0);
            ox_attr_int(x, nd, "ceil_mode", 0);
            cur = name;
            break;
        }
        case NET_GAP: {
            // GlobalAveragePool keeps N x C x 1 x 1; the net's gap yields (N, C).
            const char *p = ox_unary(x, "GlobalAveragePool", cur, ox_fmt(x, "%s/pool", name));
            Onnx__NodeProto *nd = ox_node(x, "Flatten", &p, 1, name);
            ox_attr_int(x, nd, "axis", 1);
            cur = name;
            break;
        }
        case NET_FLATTEN:
            if (l->in.spatial) {
                Onnx__NodeProto *nd = ox_node(x, "Flatten", &cur, 1, name);
                ox_attr_int(x, nd, "axis", 1);
                cur = name;
            } // a flatten of features is the identity: no node
            break;
        case NET_RES: cur = ox_res(c, i, cur); break;
        default: goto unsupported;
        }
        continue;
    unsupported:
        snprintf(c->err, c->errlen, "layer %zu \"%s\" (kind %s) cannot be exported to ONNX", i,
                 name,
                 (unsigned)l->spec.kind < NET_KIND_COUNT ? net_kind_name(l->spec.kind) : "unknown");
        return NULL;
    }
    return cur;
}

static Onnx__ValueInfoProto *ox_value_info(struct ox *x, const char *name, size_t nd,
                                           const size_t *dims)
{
    Onnx__ValueInfoProto *v = ox_alloc(x, sizeof(*v));
    Onnx__TypeProto *tp = ox_alloc(x, sizeof(*tp));
    Onnx__TypeProto__Tensor *tt = ox_alloc(x, sizeof(*tt));
    Onnx__TensorShapeProto *sh = ox_alloc(x, sizeof(*sh));
    Onnx__TensorShapeProto__Dimension **dd = ox_alloc(x, (nd + 1) * sizeof(*dd));
    if (!v || !tp || !tt || !sh || !dd) return NULL;
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(tp);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    for (size_t i = 0; i <= nd; i++) {
        dd[i] = ox_alloc(x, sizeof(**dd));
        if (!dd[i]) return NULL;
        onnx__tensor_shape_proto__dimension__init(dd[i]);
        if (i == 0) {
            dd[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            dd[i]->dim_param = ox_fmt(x, "N");
        } else {
            dd[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            dd[i]->dim_value = (int64_t)dims[i - 1];
        }
    }
    sh->n_dim = nd + 1;
    sh->dim = dd;
    tt->has_elem_type = 1;
    tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    v->name = ox_fmt(x, "%s", name);
    v->type = tp;
    return v;
}

static Onnx__StringStringEntryProto *ox_meta(struct ox *x, const char *key, const char *value)
{
    Onnx__StringStringEntryProto *e = ox_alloc(x, sizeof(*e));
    if (!e) return NULL;
    onnx__string_string_entry_proto__init(e);
    e->key = ox_fmt(x, "%s", key);
    e->value = ox_fmt(x, "%s", value);
    return e;
}

int cli_onnx_save(const char *path, const struct net *n, const struct cli_onnx_opts *o, char *err,
                  size_t errlen)
{
    static const struct cli_onnx_opts defaults = {0};
    struct ox x = {0};
    struct ox_ctx c = {&x, n, o ? o : &defaults, err, errlen};
    uint8_t *buf = NULL;
    int rc = -ENOMEM;
    err[0] = 0;
    float *consts = ox_floats(&x, 1 + 2 * n->in_shape.c);
    const char *cur = consts ? ox_input(&c, consts) : NULL;
    cur = cur ? ox_layers(&c, cur) : NULL;
    if (!cur) {
        if (err[0]) rc = -ENOTSUP;
        goto out;
    }
    // The last value becomes "logits": rename the node that makes it (every net ends in a
    // layer that adds a node; an Identity covers one that would not).
    if (x.n_nodes && strcmp(x.nodes[x.n_nodes - 1]->output[0], cur) == 0) {
        x.nodes[x.n_nodes - 1]->output[0] = "logits";
        x.nodes[x.n_nodes - 1]->name = "logits";
    } else {
        ox_unary(&x, "Identity", cur, "logits");
    }
    size_t in_dims[3] = {n->in_shape.c, n->in_shape.h, n->in_shape.w};
    size_t out_dims[1] = {n->n_classes};
    Onnx__ValueInfoProto **vin = ox_alloc(&x, sizeof(*vin)), **vout = ox_alloc(&x, sizeof(*vout));
    Onnx__GraphProto *g = ox_alloc(&x, sizeof(*g));
    Onnx__ModelProto *m = ox_alloc(&x, sizeof(*m));
    Onnx__OperatorSetIdProto *ops = ox_alloc(&x, sizeof(*ops));
    Onnx__OperatorSetIdProto **opsv = ox_alloc(&x, sizeof(*opsv));
    Onnx__StringStringEntryProto **meta = ox_alloc(&x, 4 * sizeof(*meta));
    if (!vin || !vout || !g || !m || !ops || !opsv || !meta) goto out;
    vin[0] = ox_value_info(&x, "pixels", 3, in_dims);
    vout[0] = ox_value_info(&x, "logits", 1, out_dims);
    char mean[160] = "", sd[160] = "";
    for (size_t ch = 0; ch < n->in_shape.c && ch < 4; ch++) {
        size_t lm = strlen(mean), ls = strlen(sd);
        snprintf(mean + lm, sizeof(mean) - lm, "%s%.9g", ch ? "," : "", (double)n->norm_mean[ch]);
        snprintf(sd + ls, sizeof(sd) - ls, "%s%.9g", ch ? "," : "", (double)n->norm_std[ch]);
    }
    meta[0] = ox_meta(&x, "input", "pixels: float32 N x C x H x W, raw values in [0, 255]");
    meta[1] = ox_meta(&x, "output", "logits: float32 N x classes (softmax gives probabilities)");
    meta[2] = ox_meta(&x, "normalize_mean", mean);
    meta[3] = ox_meta(&x, "normalize_std", sd);
    onnx__graph_proto__init(g);
    g->name = ox_fmt(&x, "evowidth");
    g->doc_string = ox_fmt(&x, "x = (pixels / 255 - mean[c]) / std[c], then %zu layers%s",
                           n->n_layers, c.o->fold_bn ? " (batch norm folded)" : "");
    g->n_node = x.n_nodes;
    g->node = x.nodes;
    g->n_initializer = x.n_inits;
    g->initializer = x.inits;
    g->n_input = 1;
    g->input = vin;
    g->n_output = 1;
    g->output = vout;
    onnx__operator_set_id_proto__init(ops);
    ops->domain = ox_fmt(&x, "");
    ops->has_version = 1;
    ops->version = CLI_ONNX_OPSET;
    opsv[0] = ops;
    onnx__model_proto__init(m);
    m->has_ir_version = 1;
    m->ir_version = CLI_ONNX_IR_VERSION;
    m->n_opset_import = 1;
    m->opset_import = opsv;
    m->producer_name = ox_fmt(&x, "evowidth");
    m->producer_version = ox_fmt(&x, "1");
    m->graph = g;
    m->n_metadata_props = 4;
    m->metadata_props = meta;
    if (x.oom) goto out;
    size_t len = protobuf_c_message_get_packed_size(&m->base);
    if (len > (size_t)INT32_MAX) {
        snprintf(err, errlen, "%s: the model is %zu bytes, over protobuf's 2 GiB limit", path, len);
        rc = -EFBIG;
        goto out;
    }
    if (!(buf = malloc(len ? len : 1))) goto out;
    if (protobuf_c_message_pack(&m->base, buf) != len) {
        snprintf(err, errlen, "%s: protobuf-c packed a different size than it computed", path);
        rc = -EIO;
        goto out;
    }
    rc = cli_write_atomic(path, buf, len, err, errlen);
out:
    if (rc == -ENOMEM && !err[0]) snprintf(err, errlen, "%s: out of memory", path);
    free(buf);
    ox_free(&x);
    return rc;
}

// ---- atomic files --------------------------------------------------------------------------

int cli_write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 32), *dir = malloc(pl + 2);
    int fd = -1, rc = 0;
    if (!tmp || !dir) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = -ENOMEM;
        goto out;
    }
    snprintf(tmp, pl + 32, "%s.tmp.%ld", path, (long)getpid());
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666)) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot create %s: %s", path, tmp, strerror(-rc));
        goto out;
    }
    const unsigned char *p = data;
    for (size_t done = 0; done < len;) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = w < 0 ? -errno : -EIO;
            snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(-rc));
            goto out;
        }
        done += (size_t)w;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        rc = -errno;
        fd = -1;
        snprintf(err, errlen, "%s: cannot flush %s: %s", path, tmp, strerror(-rc));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot rename %s over it: %s", path, tmp, strerror(-rc));
        goto out;
    }
    // The rename is durable once the directory is synced (best effort: some file systems
    // refuse fsync on a directory).
    memcpy(dir, path, pl + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
out:
    if (fd >= 0) close(fd);
    if (rc < 0 && tmp) unlink(tmp);
    free(tmp);
    free(dir);
    return rc;
}
