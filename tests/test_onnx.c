/* tests/test_onnx.c: the ONNX / safetensors exporters and predict (cli/), in-process.
 *
 * 1. Every layer kind on two random nets (images: conv plain and factorized with strides
 *    and pads, BN, ReLU, max pool, residual blocks identity / projection / without BN, GAP,
 *    dense; features: flatten, factorized dense, BN, dense without bias, a flatten of
 *    features): the file, read back with protobuf-c, has the stated opset and IR version,
 *    the graph input "pixels" [N, C, H, W] and output "logits" [N, classes], exactly the
 *    expected operator sequence, the right Conv / MaxPool attributes, and every weight as an
 *    initializer bit-equal to the net's tensor.
 * 2. Batch-norm folding: the folded weights, loaded into the same net without its BN layers,
 *    give the original net's logits (variances near epsilon, so a wrong epsilon shows).
 * 3. The input normalisation constants are the model's; the graph's Div/Sub/Div on raw
 *    pixels gives bit for bit what net/data.c + net_data_normalize give.
 * 4. A layer that cannot be exported fails with its name, writes nothing and leaves an old
 *    file in place; atomic writes leave no temporary file behind on failure.
 * 5. safetensors: header layout, offsets, shapes and bytes against the net.
 * 6. predict: IDX images without labels (and with), CIFAR batches, batching over more than
 *    one batch, against net_forward; a wrong image size is refused naming both shapes.
 * The numerical check against ONNX Runtime itself is tests/ort_export.sh. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli/onnx.h"
#include "net/net.h"
#include "onnx.pb-c.h"
#include "tests/test.h"
#include "tests/util.h"

// ---- helpers -------------------------------------------------------------------------------

static void tmp_name(char *out, size_t n, const char *name)
{
    snprintf(out, n, "/tmp/ew_test_onnx_%ld_%s", (long)getpid(), name);
}

static struct net *mk(const struct net_shape *in, size_t classes, const struct net_layer_spec *s,
                      size_t ns, uint64_t seed)
{
    struct net *n = mk_jittered(in, classes, s, ns, seed, 0.5f, 1.0f, 0.3f);
    if (!n) return NULL;
    for (size_t c = 0; c < 4; c++) n->norm_mean[c] = 0.2f + 0.1f * (float)c, n->norm_std[c] = 0.3f;
    return n;
}

static Onnx__ModelProto *load_model(const char *path)
{
    size_t len = 0;
    unsigned char *b = read_all(path, &len);
    if (!b) return NULL;
    Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, b);
    free(b);
    return m;
}

/* n exported (no folding) as the temp file name (its path in path, 256 bytes) and read back;
 * NULL (reason printed) on failure. */
static Onnx__ModelProto *saved_model(const struct net *n, const char *name, char *path)
{
    char err[512] = "";
    tmp_name(path, 256, name);
    if (cli_onnx_save(path, n, NULL, err, sizeof(err)) < 0) {
        printf("    cli_onnx_save: %s\n", err);
        return NULL;
    }
    return load_model(path);
}

static const Onnx__TensorProto *find_init(const Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_initializer; i++)
        if (strcmp(g->initializer[i]->name, name) == 0) return g->initializer[i];
    return NULL;
}

static const Onnx__AttributeProto *find_attr(const Onnx__NodeProto *nd, const char *name)
{
    for (size_t i = 0; i < nd->n_attribute; i++)
        if (strcmp(nd->attribute[i]->name, name) == 0) return nd->attribute[i];
    return NULL;
}

/* The graph's op types joined by spaces. */
static void op_string(const Onnx__GraphProto *g, char *out, size_t n)
{
    out[0] = 0;
    for (size_t i = 0; i < g->n_node; i++) {
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%s%s", i ? " " : "", g->node[i]->op_type);
    }
}

/* A net built by mk, exported (no folding) as the temp file name and read back, with its
 * op string. */
struct exported {
    struct net *n;
    Onnx__ModelProto *m;
    char path[256], ops[2048];
};

static int exported_make(struct exported *x, const struct net_shape *in, size_t classes,
                         const struct net_layer_spec *s, size_t ns, uint64_t seed, const char *name)
{
    *x = (struct exported){0};
    if (!(x->n = mk(in, classes, s, ns, seed))) return -1;
    if (!(x->m = saved_model(x->n, name, x->path))) return -1;
    op_string(x->m->graph, x->ops, sizeof x->ops);
    return 0;
}

static void exported_free(struct exported *x)
{
    if (x->m) onnx__model_proto__free_unpacked(x->m, NULL);
    net_destroy(x->n);
    if (x->path[0]) unlink(x->path);
}

/* Every tensor of the net is an initializer of the same shape and bits (BN folding off). */
static int inits_match(const struct net *n, const Onnx__GraphProto *g, char *why, size_t wl)
{
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        const Onnx__TensorProto *p = find_init(g, t->name);
        if (!p) {
            snprintf(why, wl, "no initializer %s", t->name);
            return 0;
        }
        if (p->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || p->n_float_data != t->n ||
            p->n_dims != (size_t)t->nd) {
            snprintf(why, wl, "%s: type %d, %zu floats, %zu dims", t->name, p->data_type,
                     p->n_float_data, p->n_dims);
            return 0;
        }
        for (int d = 0; d < t->nd; d++)
            if (p->dims[d] != (int64_t)t->dims[d]) {
                snprintf(why, wl, "%s: dim %d is %lld, not %zu", t->name, d, (long long)p->dims[d],
                         t->dims[d]);
                return 0;
            }
        if (memcmp(p->float_data, net_tensor_data(n, t), t->n * sizeof(float)) != 0) {
            snprintf(why, wl, "%s: values differ", t->name);
            return 0;
        }
    }
    return 1;
}

static int64_t dim_of(const Onnx__ValueInfoProto *v, size_t i, const char **param)
{
    const Onnx__TensorShapeProto *s = v->type->tensor_type->shape;
    if (i >= s->n_dim) return -1;
    if (s->dim[i]->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM) {
        *param = s->dim[i]->dim_param;
        return 0;
    }
    return s->dim[i]->dim_value;
}

// ---- 1. every layer kind -------------------------------------------------------------------


TEST(every_kind_image_net)
{
    const struct net_layer_spec s[] = {
        S_CONV(4, 3, 1, 1, 1),
        {.kind = NET_BN},
        {.kind = NET_RELU},
        S_CONVR(6, 2, 3, 2, 1, 1),                  // factorized, stride 2: 12 -> 6
        S_RES(3, 6, 1, 1),                          // identity
        S_RES(4, 8, 2, 1),                          // projection, stride 2: 6 -> 3
        S_RES(4, 8, 1, 0),                          // identity, no BN (biases)
        {.kind = NET_MAXPOOL, .k = 2, .stride = 1}, // 3 -> 2
        {.kind = NET_GAP},
        {.kind = NET_DENSE, .out = 5, .bias = 1},
    };
    const struct net_shape in = {3, 12, 12, 1};
    struct exported x;
    ASSERT_EQ(exported_make(&x, &in, 5, s, N_OF(s), 7, "img.onnx"), 0);
    const struct net *n = x.n;
    const Onnx__ModelProto *m = x.m;
    const Onnx__GraphProto *g = m->graph;
    char why[256] = "";
    ASSERT_EQ(m->ir_version, CLI_ONNX_IR_VERSION);
    ASSERT_EQ(m->n_opset_import, 1);
    ASSERT_STR_EQ(m->opset_import[0]->domain, "");
    ASSERT_EQ(m->opset_import[0]->version, 13);
    ASSERT_STR_EQ(x.ops, "Div Sub Div Conv BatchNormalization Relu Conv Conv "
                         "Conv BatchNormalization Relu Conv BatchNormalization Add Relu "
                         "Conv BatchNormalization Relu Conv BatchNormalization Conv "
                         "BatchNormalization Add Relu "
                         "Conv Relu Conv Add Relu MaxPool GlobalAveragePool Flatten Gemm");
    ASSERT_EQ(g->n_input, 1);
    ASSERT_EQ(g->n_output, 1);
    ASSERT_STR_EQ(g->input[0]->name, "pixels");
    ASSERT_STR_EQ(g->output[0]->name, "logits");
    ASSERT_STR_EQ(g->node[g->n_node - 1]->output[0], "logits");
    const char *param = NULL;
    ASSERT_EQ(dim_of(g->input[0], 0, &param), 0);
    ASSERT_STR_EQ(param, "N");
    ASSERT_EQ(dim_of(g->input[0], 1, &param), 3);
    ASSERT_EQ(dim_of(g->input[0], 2, &param), 12);
    ASSERT_EQ(dim_of(g->input[0], 3, &param), 12);
    ASSERT_EQ(dim_of(g->output[0], 1, &param), 5);
    ASSERT(inits_match(n, g, why, sizeof(why)));
    // Conv attributes: the factorized conv's k x k part carries the layer's stride and pad,
    // its 1 x 1 part none; the projection is 1 x 1 at the block's stride.
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *nd = g->node[i];
        long want_k = -1, want_s = -1, want_p = -1;
        if (!strcmp(nd->name, "conv2/v")) want_k = 3, want_s = 2, want_p = 1;
        if (!strcmp(nd->name, "conv2")) want_k = 1, want_s = 1, want_p = 0;
        if (!strcmp(nd->name, "res2/p")) want_k = 1, want_s = 2, want_p = 0;
        if (!strcmp(nd->name, "res2/c1")) want_k = 3, want_s = 2, want_p = 1;
        if (!strcmp(nd->name, "res2/c2")) want_k = 3, want_s = 1, want_p = 1;
        if (!strcmp(nd->name, "maxpool1")) want_k = 2, want_s = 1, want_p = 0;
        if (want_k < 0) continue;
        const Onnx__AttributeProto *k = find_attr(nd, "kernel_shape"),
                                   *st = find_attr(nd, "strides"), *pd = find_attr(nd, "pads");
        ASSERT(k && st && pd);
        ASSERT_EQ(k->n_ints, 2);
        ASSERT_EQ(k->ints[0], want_k);
        ASSERT_EQ(st->ints[1], want_s);
        ASSERT_EQ(pd->n_ints, 4);
        ASSERT_EQ(pd->ints[3], want_p);
    }
    // The last Gemm reads W (OUT, IN) transposed; BN epsilon is net/'s.
    const Onnx__AttributeProto *tb = find_attr(g->node[g->n_node - 1], "transB");
    ASSERT(tb && tb->i == 1);
    ASSERT_NEAR(find_attr(g->node[4], "epsilon")->f, 1e-5, 1e-12);
    exported_free(&x);
}

TEST(every_kind_feature_net)
{
    const struct net_layer_spec s[] = {
        {.kind = NET_FLATTEN},
        {.kind = NET_DENSE, .out = 7, .rank = 3, .bias = 1},
        {.kind = NET_BN},
        {.kind = NET_RELU},
        {.kind = NET_DENSE, .out = 6, .bias = 0},
        {.kind = NET_FLATTEN}, // of features: no node
        {.kind = NET_DENSE, .out = 4, .bias = 1},
    };
    const struct net_shape in = {2, 5, 5, 1};
    struct exported x;
    ASSERT_EQ(exported_make(&x, &in, 4, s, N_OF(s), 11, "flat.onnx"), 0);
    const Onnx__GraphProto *g = x.m->graph;
    char why[256] = "";
    ASSERT_STR_EQ(x.ops, "Div Sub Div Flatten Gemm Gemm BatchNormalization Relu Gemm Gemm");
    ASSERT(inits_match(x.n, g, why, sizeof(why)));
    // dense2 has no bias: two inputs.
    for (size_t i = 0; i < g->n_node; i++)
        if (!strcmp(g->node[i]->name, "dense2")) ASSERT_EQ(g->node[i]->n_input, 2);
    exported_free(&x);
}

// ---- 2. batch-norm folding -----------------------------------------------------------------

/* Copies initializer `from` of g into tensor `to` of n. */
static int copy_init(struct net *n, const Onnx__GraphProto *g, const char *from, size_t layer,
                     const char *to)
{
    const Onnx__TensorProto *p = find_init(g, from);
    const struct net_tensor *t = net_tensor_get(n, layer, to);
    if (!p || !t || p->n_float_data != t->n) {
        printf("    %s -> %s: %s\n", from, to, !p ? "no initializer" : "wrong size");
        return -1;
    }
    memcpy(net_tensor_data(n, t), p->float_data, t->n * sizeof(float));
    return 0;
}

TEST(fold_bn_equals_the_net)
{
    const struct net_layer_spec s[] = {
        S_CONV(3, 3, 1, 1, 0),
        {.kind = NET_BN},
        {.kind = NET_RELU},
        {.kind = NET_FLATTEN},
        {.kind = NET_DENSE, .out = 4, .rank = 2, .bias = 1},
        {.kind = NET_BN},
        {.kind = NET_RELU},
        {.kind = NET_DENSE, .out = 3, .bias = 1},
    };
    const struct net_shape in = {2, 6, 6, 1};
    struct net *n = mk(&in, 3, s, N_OF(s), 5);
    ASSERT(n);
    // Variances of the order of epsilon: a wrong epsilon in the fold changes the scale a lot.
    for (size_t li = 1; li < n->n_layers; li += 4) {
        const struct net_tensor *v = net_tensor_get(n, li, "var");
        ASSERT(v);
        float *p = net_tensor_data(n, v);
        for (size_t i = 0; i < v->n; i++) p[i] = 1e-5f * (float)(1 + i % 3);
    }
    char path[256], err[512] = "";
    tmp_name(path, sizeof(path), "fold.onnx");
    struct cli_onnx_opts o = {.fold_bn = 1};
    ASSERT_EQ(cli_onnx_save(path, n, &o, err, sizeof(err)), 0);
    Onnx__ModelProto *m = load_model(path);
    ASSERT(m);
    char ops[512];
    op_string(m->graph, ops, sizeof(ops));
    ASSERT_STR_EQ(ops, "Div Sub Div Conv Relu Flatten Gemm Gemm Relu Gemm");
    // The same net without its BN layers, with the folded weights.
    const struct net_layer_spec s2[] = {
        S_CONV(3, 3, 1, 1, 1), {.kind = NET_RELU},
        {.kind = NET_FLATTEN}, {.kind = NET_DENSE, .out = 4, .rank = 2, .bias = 1},
        {.kind = NET_RELU},    {.kind = NET_DENSE, .out = 3, .bias = 1},
    };
    struct net *f = mk(&in, 3, s2, N_OF(s2), 99);
    ASSERT(f);
    const Onnx__GraphProto *g = m->graph;
    ASSERT_EQ(copy_init(f, g, "conv1.w+bn1", 0, "w"), 0);
    ASSERT_EQ(copy_init(f, g, "conv1.b+bn1", 0, "b"), 0);
    ASSERT_EQ(copy_init(f, g, "dense1.v", 3, "v"), 0);
    ASSERT_EQ(copy_init(f, g, "dense1.u+bn2", 3, "u"), 0);
    ASSERT_EQ(copy_init(f, g, "dense1.b+bn2", 3, "b"), 0);
    ASSERT_EQ(copy_init(f, g, "dense2.w", 5, "w"), 0);
    ASSERT_EQ(copy_init(f, g, "dense2.b", 5, "b"), 0);
    ASSERT(find_init(g, "bn1.gamma") == NULL); // the folded BN's tensors are not written
    const size_t B = 9, D = 2 * 6 * 6;
    float x[9 * 72];
    uint64_t r = 3;
    for (size_t i = 0; i < B * D; i++) x[i] = net_rand_normal(&r);
    ASSERT_EQ(net_reserve(n, B), 0);
    ASSERT_EQ(net_reserve(f, B), 0);
    net_forward(n, x, NULL, B, 0);
    net_forward(f, x, NULL, B, 0);
    double scale = 0, diff = 0;
    for (size_t i = 0; i < B * 3; i++) {
        scale = fmax(scale, fabs(n->acts[n->n_layers][i]));
        diff = fmax(diff, fabs(n->acts[n->n_layers][i] - f->acts[f->n_layers][i]));
    }
    ASSERT_GT(scale, 1.0);
    ASSERT_FLT_OP(diff, <=, 1e-5 * scale);
    onnx__model_proto__free_unpacked(m, NULL);
    net_destroy(f);
    net_destroy(n);

    // Residual blocks with BN: every conv gets its BN folded (c1, c2 and the projection).
    const struct net_layer_spec s3[] = {
        S_RES(3, 4, 2, 1), {.kind = NET_GAP}, {.kind = NET_DENSE, .out = 3, .bias = 1}};
    n = mk(&in, 3, s3, N_OF(s3), 8);
    ASSERT(n);
    ASSERT_EQ(cli_onnx_save(path, n, &o, err, sizeof(err)), 0);
    m = load_model(path);
    ASSERT(m);
    op_string(m->graph, ops, sizeof(ops));
    ASSERT_STR_EQ(ops, "Div Sub Div Conv Relu Conv Conv Add Relu GlobalAveragePool Flatten Gemm");
    ASSERT(find_init(m->graph, "res1.c1.w+res1.bn1") && find_init(m->graph, "res1.c1.b+res1.bn1"));
    ASSERT(find_init(m->graph, "res1.p.w+res1.bnp") && find_init(m->graph, "res1.p.b+res1.bnp"));
    onnx__model_proto__free_unpacked(m, NULL);
    net_destroy(n);
    unlink(path);
}

// ---- 3. input normalisation ----------------------------------------------------------------

TEST(input_normalisation_is_the_models)
{
    const struct net_layer_spec s[] = {{.kind = NET_FLATTEN},
                                       {.kind = NET_DENSE, .out = 2, .bias = 1}};
    const struct net_shape in = {3, 2, 2, 1};
    struct net *n = mk(&in, 2, s, N_OF(s), 1);
    ASSERT(n);
    n->norm_std[1] = 0.0f; // read as 1, as net_data_normalize does
    char path[256];
    Onnx__ModelProto *m = saved_model(n, "norm.onnx", path);
    ASSERT(m);
    const Onnx__GraphProto *g = m->graph;
    const Onnx__TensorProto *k = find_init(g, "input.255"), *mu = find_init(g, "input.mean"),
                            *sd = find_init(g, "input.std");
    ASSERT(k && mu && sd);
    ASSERT_EQ(k->n_dims, 0);
    ASSERT_EQ(mu->n_dims, 4);
    ASSERT_EQ(mu->dims[1], 3);
    // Div(pixels, 255), Sub(mean), Div(std) on every byte value, against net/data.c's
    // pixel / 255.0f followed by net_data_normalize: the same bits.
    struct net_dataset d = {.n = 256, .shape = {3, 1, 1, 1}};
    d.x = malloc(256 * 3 * sizeof(float));
    ASSERT(d.x);
    for (size_t i = 0; i < 256; i++)
        for (size_t c = 0; c < 3; c++) d.x[i * 3 + c] = (float)i / 255.0f;
    net_data_normalize(&d, n->norm_mean, n->norm_std);
    for (size_t i = 0; i < 256; i++)
        for (size_t c = 0; c < 3; c++) {
            float v = ((float)i / k->float_data[0] - mu->float_data[c]) / sd->float_data[c];
            if (memcmp(&v, &d.x[i * 3 + c], sizeof(v)) != 0)
                TEST_FAIL_("pixel %zu channel %zu: graph %.9g, net/data.c %.9g", i, c, (double)v,
                           (double)d.x[i * 3 + c]);
        }
    ASSERT_FLT_OP(sd->float_data[1], ==, 1.0f);
    free(d.x);
    onnx__model_proto__free_unpacked(m, NULL);
    net_destroy(n);
    unlink(path);
}

// ---- 4. errors -----------------------------------------------------------------------------

/* Number of entries in /tmp whose name starts with prefix. */
static int count_prefix(const char *prefix)
{
    DIR *d = opendir("/tmp");
    int k = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        k += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d) closedir(d);
    return k;
}

TEST(unexportable_layer_is_named_and_nothing_written)
{
    const struct net_layer_spec s[] = {{.kind = NET_FLATTEN},
                                       {.kind = NET_DENSE, .out = 3, .bias = 1},
                                       {.kind = NET_RELU, .name = "odd_one"},
                                       {.kind = NET_DENSE, .out = 2, .bias = 1}};
    const struct net_shape in = {1, 3, 3, 1};
    struct net *n = mk(&in, 2, s, N_OF(s), 2);
    ASSERT(n);
    char path[256], err[512] = "", prefix[64];
    tmp_name(path, sizeof(path), "keep.onnx");
    snprintf(prefix, sizeof(prefix), "ew_test_onnx_%ld_keep.onnx", (long)getpid());
    FILE *f = fopen(path, "w");
    ASSERT(f);
    fputs("old", f);
    fclose(f);
    // A kind the exporter does not know (as a newer net/ might add) stands for one it cannot
    // express.
    n->layers[2].spec.kind = NET_KIND_COUNT;
    int rc = cli_onnx_save(path, n, NULL, err, sizeof(err));
    n->layers[2].spec.kind = NET_RELU;
    ASSERT_EQ(rc, -ENOTSUP);
    ASSERT_CONTAINS(err, "layer 2 \"odd_one\"");
    ASSERT_CONTAINS(err, "cannot be exported to ONNX");
    size_t len = 0;
    unsigned char *b = read_all(path, &len);
    ASSERT(b && len == 3 && memcmp(b, "old", 3) == 0);
    free(b);
    ASSERT_EQ(count_prefix(prefix), 1); // no temporary file beside it
    // Writing into a missing directory fails naming the path; a target that is a directory
    // fails at the rename, and the temporary file is removed.
    char bad[300];
    snprintf(bad, sizeof(bad), "%s.missing/x.onnx", path);
    ASSERT_LT(cli_onnx_save(bad, n, NULL, err, sizeof(err)), 0);
    ASSERT_CONTAINS(err, bad);
    char dir[300];
    snprintf(dir, sizeof(dir), "%s.d", path);
    ASSERT_EQ(mkdir(dir, 0755), 0);
    char dprefix[80];
    snprintf(dprefix, sizeof(dprefix), "ew_test_onnx_%ld_keep.onnx.d", (long)getpid());
    ASSERT_LT(cli_onnx_save(dir, n, NULL, err, sizeof(err)), 0);
    ASSERT_CONTAINS(err, "rename");
    ASSERT_EQ(count_prefix(dprefix), 1);
    rmdir(dir);
    unlink(path);
    net_destroy(n);
}

// ---- 5. safetensors ------------------------------------------------------------------------

TEST(safetensors_layout)
{
    const struct net_layer_spec s[] = {S_CONVR(3, 2, 3, 1, 1, 1),
                                       {.kind = NET_BN},
                                       {.kind = NET_RELU},
                                       {.kind = NET_FLATTEN},
                                       {.kind = NET_DENSE, .out = 2, .bias = 0}};
    const struct net_shape in = {1, 4, 4, 1};
    struct net *n = mk(&in, 2, s, N_OF(s), 4);
    ASSERT(n);
    char path[256], err[512] = "";
    tmp_name(path, sizeof(path), "t.safetensors");
    ASSERT_EQ(cli_safetensors_save(path, n, err, sizeof(err)), 0);
    size_t len = 0;
    unsigned char *b = read_all(path, &len);
    ASSERT(b && len > 8);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)b[i] << (8 * i);
    ASSERT_EQ(hl % 8, 0);
    ASSERT_LE(8 + hl, len);
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, (size_t)hl);
    ASSERT(h);
    const unsigned char *data = b + 8 + hl;
    size_t total = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        cJSON *o = cJSON_GetObjectItemCaseSensitive(h, t->name);
        ASSERT(o);
        ASSERT_STR_EQ(cJSON_GetObjectItem(o, "dtype")->valuestring, "F32");
        cJSON *shape = cJSON_GetObjectItem(o, "shape"),
              *off = cJSON_GetObjectItem(o, "data_offsets");
        ASSERT_EQ(cJSON_GetArraySize(shape), t->nd);
        for (int d = 0; d < t->nd; d++)
            ASSERT_EQ((size_t)cJSON_GetArrayItem(shape, d)->valuedouble, t->dims[d]);
        size_t a = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble,
               e = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        ASSERT_EQ(e - a, 4 * t->n);
        ASSERT_LE(8 + hl + e, len);
        ASSERT(memcmp(data + a, net_tensor_data(n, t), 4 * t->n) == 0); // little-endian host
        total += e - a;
    }
    ASSERT_EQ(8 + hl + total, len);
    cJSON *meta = cJSON_GetObjectItem(h, "__metadata__");
    ASSERT(meta);
    ASSERT_STR_EQ(cJSON_GetObjectItem(meta, "input_shape")->valuestring, "[1,4,4]");
    ASSERT_STR_EQ(cJSON_GetObjectItem(meta, "classes")->valuestring, "2");
    cJSON *layers = cJSON_Parse(cJSON_GetObjectItem(meta, "layers")->valuestring);
    ASSERT(layers && cJSON_GetArraySize(layers) == 5);
    ASSERT_EQ((int)cJSON_GetObjectItem(cJSON_GetArrayItem(layers, 0), "rank")->valuedouble, 2);
    cJSON_Delete(layers);
    cJSON_Delete(h);
    free(b);
    net_destroy(n);
    unlink(path);
}

// ---- 6. predict ----------------------------------------------------------------------------

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

TEST(predict_idx_and_cifar)
{
    const struct net_layer_spec s[] = {
        S_CONV(3, 3, 1, 1, 1), {.kind = NET_BN},
        {.kind = NET_RELU},    {.kind = NET_MAXPOOL, .k = 2},
        {.kind = NET_FLATTEN}, {.kind = NET_DENSE, .out = 4, .bias = 1}};
    const struct net_shape in = {1, 6, 6, 1};
    struct net *n = mk(&in, 4, s, N_OF(s), 21);
    ASSERT(n);
    // 300 images (more than one predict batch) of random bytes, and their labels.
    const size_t N = 300, P = 36;
    unsigned char *img = malloc(16 + N * P), lab[8 + 300];
    ASSERT(img);
    be32(img, 0x803), be32(img + 4, (uint32_t)N), be32(img + 8, 6), be32(img + 12, 6);
    be32(lab, 0x801), be32(lab + 4, (uint32_t)N);
    uint64_t r = 9;
    for (size_t i = 0; i < N * P; i++) img[16 + i] = (unsigned char)net_rand_below(&r, 256);
    for (size_t i = 0; i < N; i++) lab[8 + i] = (unsigned char)(i % 4);
    char ip[256], lp[256], err[512] = "";
    tmp_name(ip, sizeof(ip), "img.idx");
    tmp_name(lp, sizeof(lp), "lab.idx");
    ASSERT_EQ(write_bytes(ip, img, 16 + N * P), 0);
    ASSERT_EQ(write_bytes(lp, lab, 8 + N), 0);
    struct net_dataset d = {0};
    int has = -1;
    ASSERT_EQ(cli_load_images(&d, &has, ip, NULL, err, sizeof(err)), 0);
    ASSERT_EQ(has, 0);
    ASSERT_EQ(d.n, N);
    ASSERT_EQ(d.n_classes, 0);
    float *lg = NULL, *pb = NULL;
    ASSERT_EQ(cli_predict(n, &d, &lg, &pb, err, sizeof(err)), 0);
    // Against one forward per image on (pixel / 255 - mean) / std, computed here.
    ASSERT_EQ(net_reserve(n, 1), 0);
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        float x[36];
        for (size_t k = 0; k < P; k++)
            x[k] = ((float)img[16 + i * P + k] / 255.0f - n->norm_mean[0]) / n->norm_std[0];
        net_forward(n, x, NULL, 1, 0);
        double psum = 0, scale = 0;
        for (size_t k = 0; k < 4; k++) {
            scale = fmax(scale, fabs(n->acts[n->n_layers][k]));
            worst = fmax(worst, fabs(n->acts[n->n_layers][k] - lg[i * 4 + k]) / fmax(scale, 1e-3));
            psum += pb[i * 4 + k];
        }
        ASSERT_NEAR(psum, 1.0, 1e-5);
    }
    ASSERT_FLT_OP(worst, <=, 1e-5);
    free(lg);
    free(pb);
    net_data_free(&d);
    // With labels.
    ASSERT_EQ(cli_load_images(&d, &has, ip, lp, err, sizeof(err)), 0);
    ASSERT_EQ(has, 1);
    ASSERT_EQ(d.y[7], 3);
    net_data_free(&d);
    // A CIFAR-10 batch (labels inside) is 3 x 32 x 32: the model's shape is refused, named.
    unsigned char *cf = calloc(2, 3073);
    ASSERT(cf);
    cf[0] = 3, cf[3073] = 7;
    char cp[256];
    tmp_name(cp, sizeof(cp), "batch.bin");
    ASSERT_EQ(write_bytes(cp, cf, 2 * 3073), 0);
    ASSERT_EQ(cli_load_images(&d, &has, cp, NULL, err, sizeof(err)), 0);
    ASSERT_EQ(has, 1);
    ASSERT_EQ(d.n, 2);
    ASSERT_EQ(d.shape.c, 3);
    ASSERT_EQ(d.y[1], 7);
    ASSERT_EQ(cli_predict(n, &d, &lg, &pb, err, sizeof(err)), -EINVAL);
    ASSERT_CONTAINS(err, "3x32x32");
    ASSERT_CONTAINS(err, "1x6x6");
    net_data_free(&d);
    ASSERT_EQ(cli_load_images(&d, &has, cp, lp, err, sizeof(err)), -EINVAL);
    ASSERT_CONTAINS(err, "--labels");
    free(cf);
    free(img);
    unlink(ip);
    unlink(lp);
    unlink(cp);
    net_destroy(n);
}

TEST_MAIN()
