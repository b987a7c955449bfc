/* tests/test_ckpt.c: the model / checkpoint file (net/ckpt.c, R12).
 *
 * Round trip: every arena bit-identical, specs, shapes, tensor table and normalisation
 * identical, optimizer state and caller blobs returned. Resume: one more training step from
 * the loaded net and optimizer gives bit-identical parameters, moments and BN statistics to
 * the same step from the original (R12/R15). Corrupt files (flipped byte, truncations with
 * and without a recomputed CRC, wrong magic, unsupported version, foreign float size or
 * byte order, empty file, missing file, a directory) are rejected with a message naming the
 * file, and nothing is returned: the caller's out-parameters keep their sentinel values. A
 * successful save leaves no .tmp behind; a failed one leaves nothing at all.
 *
 * Every case works in its own mkdtemp directory under /tmp, removed afterwards; the body
 * of such a case is a separate function so the directory goes even when an assertion
 * returns early. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE // mkdtemp, nftw
#endif
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "net/net.h"
#include "tests/test.h"
#include "tests/util.h"

#define T_THREADS 2

/* Rewrites the trailing CRC-32 so that only the intended field is wrong. */
static void fix_crc(unsigned char *b, size_t len)
{
    uint32_t c = (uint32_t)crc32(0L, b, (uInt)(len - 4));
    memcpy(b + len - 4, &c, 4);
}

// ---- a small trained net -------------------------------------------------------------------

static const struct net_layer_spec SPECS[] = {
    {.kind = NET_CONV, .name = "stem", .out = 4, .k = 3, .stride = 1, .pad = 1, .bias = 0},
    {.kind = NET_BN},
    {.kind = NET_RELU},
    {.kind = NET_RES, .name = "block", .width = 4, .out = 6, .stride = 2, .bn = 1},
    S_CONVR(6, 2, 3, 1, 1, 1),
    {.kind = NET_MAXPOOL, .k = 2},
    {.kind = NET_FLATTEN},
    {.kind = NET_DENSE, .out = 8, .rank = 3, .bias = 1},
    {.kind = NET_RELU},
    {.kind = NET_DENSE, .name = "head", .out = 5, .bias = 1},
};
#define N_SPECS (sizeof(SPECS) / sizeof(SPECS[0]))
#define IN_C 3
#define IN_HW 8
#define CLASSES 5
#define BATCH 6

static void make_batch(float *x, uint8_t *y, uint64_t seed)
{
    uint64_t r = seed;
    for (size_t i = 0; i < BATCH * IN_C * IN_HW * IN_HW; i++) x[i] = net_rand_normal(&r);
    for (size_t b = 0; b < BATCH; b++) y[b] = (uint8_t)net_rand_below(&r, CLASSES);
}

static void train_step(struct net *n, struct net_optim *o, uint64_t seed)
{
    float x[BATCH * IN_C * IN_HW * IN_HW];
    uint8_t y[BATCH];
    make_batch(x, y, seed);
    net_zero_grad(n);
    net_forward(n, x, y, BATCH, 1);
    net_backward(n, y, BATCH);
    net_optim_step(n, o, 0.01f);
}

static struct net_optim opt_of(int adam)
{
    if (adam)
        return (struct net_optim){
            .kind = NET_ADAMW, .weight_decay = 0.05f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-7f};
    return (struct net_optim){
        .kind = NET_SGD, .momentum = 0.9f, .nesterov = 1, .weight_decay = 5e-4f};
}

/* A net after three training steps: params, m, v and BN statistics all non-trivial. */
static struct net *make_trained(struct net_optim *o, int adam)
{
    struct net_shape in = {IN_C, IN_HW, IN_HW, 1};
    struct net *n = NULL;
    char err[256];
    if (net_create(&n, &in, CLASSES, SPECS, N_SPECS, err, sizeof err) < 0) {
        printf("    net_create: %s\n", err);
        return NULL;
    }
    uint64_t rng = 1234;
    net_init_params(n, &rng);
    for (int c = 0; c < 3; c++) {
        n->norm_mean[c] = 0.25f + 0.125f * (float)c;
        n->norm_std[c] = 0.5f - 0.0625f * (float)c;
    }
    *o = opt_of(adam);
    for (uint64_t s = 0; s < 3; s++) train_step(n, o, 100 + s);
    return n;
}

static int same_shape(const struct net_shape *a, const struct net_shape *b)
{
    return a->c == b->c && a->h == b->h && a->w == b->w && a->spatial == b->spatial;
}

static int same_spec(const struct net_layer_spec *a, const struct net_layer_spec *b)
{
    return a->kind == b->kind && strcmp(a->name, b->name) == 0 && a->out == b->out &&
           a->width == b->width && a->rank == b->rank && a->k == b->k && a->stride == b->stride &&
           a->pad == b->pad && a->bias == b->bias && a->bn == b->bn;
}

/* Everything a checkpoint must carry, compared exactly; prints the first difference. */
static int same_net(const struct net *a, const struct net *b)
{
    if (!same_shape(&a->in_shape, &b->in_shape) || a->n_classes != b->n_classes) {
        printf("    input shape or classes differ\n");
        return 0;
    }
    if (memcmp(a->norm_mean, b->norm_mean, sizeof a->norm_mean) ||
        memcmp(a->norm_std, b->norm_std, sizeof a->norm_std)) {
        printf("    normalisation differs\n");
        return 0;
    }
    if (a->n_layers != b->n_layers || a->n_tensors != b->n_tensors || a->n_params != b->n_params ||
        a->n_state != b->n_state) {
        printf("    counts differ\n");
        return 0;
    }
    for (size_t i = 0; i < a->n_layers; i++) {
        const struct net_layer *x = &a->layers[i], *y = &b->layers[i];
        if (!same_spec(&x->spec, &y->spec) || !same_shape(&x->in, &y->in) ||
            !same_shape(&x->out, &y->out) || x->t0 != y->t0 || x->n_t != y->n_t) {
            printf("    layer %zu (%s) differs\n", i, x->spec.name);
            return 0;
        }
    }
    for (size_t i = 0; i < a->n_tensors; i++) {
        const struct net_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        if (strcmp(x->name, y->name) || x->arena != y->arena || x->off != y->off || x->n != y->n ||
            memcmp(x->dims, y->dims, sizeof x->dims) || x->nd != y->nd || x->decay != y->decay ||
            x->layer != y->layer) {
            printf("    tensor %zu (%s) differs\n", i, x->name);
            return 0;
        }
    }
    const size_t P = a->n_params * sizeof(float);
    if (memcmp(a->params, b->params, P)) return printf("    params differ\n"), 0;
    if (memcmp(a->state, b->state, a->n_state * sizeof(float)))
        return printf("    state differs\n"), 0;
    if (memcmp(a->m, b->m, P)) return printf("    m differs\n"), 0;
    if (memcmp(a->v, b->v, P)) return printf("    v differs\n"), 0;
    return 1;
}

static int same_opt(const struct net_optim *a, const struct net_optim *b)
{
    return a->kind == b->kind && a->momentum == b->momentum && a->nesterov == b->nesterov &&
           a->weight_decay == b->weight_decay && a->beta1 == b->beta1 && a->beta2 == b->beta2 &&
           a->eps == b->eps && a->t == b->t;
}

/* A valid checkpoint (AdamW state, two blobs) at dir/name; returns 0 on success. */
static int save_sample(const struct tmpd *t, const char *name, char *path, size_t pn)
{
    struct net_optim o;
    struct net *n = make_trained(&o, 1);
    if (!n) return -1;
    tmp_path(t, name, path);
    char trnr[24] = "step=3 epoch=0 rng=77";
    struct ckpt_blob bl[2] = {{"TRNR", trnr, sizeof trnr}, {"PLCY", "{}", 2}};
    char err[256] = "";
    int rc = ckpt_save(path, n, &o, bl, 2, err, sizeof err);
    if (rc < 0) printf("    ckpt_save: %s\n", err);
    net_destroy(n);
    return rc;
}

/* The fixture of the corruption cases: T_THREADS threads, a scratch directory in *t and
 * save_sample's good.ckpt there (path: TMP_PATH_MAX bytes); its bytes (malloc'ed) or NULL. */
static unsigned char *sample_bytes(const struct tmpd **t, char *path, size_t *len)
{
    net_set_threads(T_THREADS);
    *t = tmp_scratch("test_ckpt");
    if (!*t || save_sample(*t, "good.ckpt", path, TMP_PATH_MAX) < 0) return NULL;
    return read_all(path, len);
}

// ---- round trip -------------------------------------------------------------------------------

TEST(round_trip)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    struct net_optim o;
    struct net *n = make_trained(&o, 1);
    ASSERT(n);
    char path[256], tmp[300];
    tmp_path(t, "model.ckpt", path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unsigned char bin[300];
    for (size_t i = 0; i < sizeof bin; i++) bin[i] = (unsigned char)(i * 7 + 3); // includes 0s
    char empty[1] = {0};
    struct ckpt_blob bl[3] = {
        {"TRNR", bin, sizeof bin}, {"PLCY", "{\"mode\":\"rotate\"}", 17}, {"EMPT", empty, 0}};
    char err[256] = "";
    int rc = ckpt_save(path, n, &o, bl, 3, err, sizeof err);
    if (rc) net_destroy(n);
    ASSERT_EQ(rc, 0);
    ASSERT(file_exists(path));
    ASSERT(!file_exists(tmp)); // atomic write: the temporary is renamed away

    struct net *m = NULL;
    struct net_optim o2;
    memset(&o2, 0xA5, sizeof o2);
    int has_opt = -1;
    struct ckpt_blob *rb = NULL;
    size_t nrb = 0;
    rc = ckpt_load(path, &m, &o2, &has_opt, &rb, &nrb, err, sizeof err);
    if (rc) printf("    ckpt_load: %s\n", err);
    int same = rc == 0 && same_net(n, m);
    net_destroy(n);
    net_destroy(m);
    ASSERT_EQ(rc, 0);
    ASSERT(same);
    ASSERT_EQ(has_opt, 1);
    ASSERT(same_opt(&o, &o2));
    ASSERT_EQ(o2.t, 3);
    int blobs_ok = nrb == 3 && strcmp(rb[0].tag, "TRNR") == 0 && rb[0].len == sizeof bin &&
                   memcmp(rb[0].data, bin, sizeof bin) == 0 && strcmp(rb[1].tag, "PLCY") == 0 &&
                   rb[1].len == 17 && strcmp(rb[1].data, "{\"mode\":\"rotate\"}") == 0 &&
                   strcmp(rb[2].tag, "EMPT") == 0 && rb[2].len == 0;
    const struct ckpt_blob *f = nrb ? ckpt_blob_find(rb, nrb, "PLCY") : NULL;
    int found = f == &rb[1] && (nrb == 0 || ckpt_blob_find(rb, nrb, "NOPE") == NULL);
    ckpt_blobs_free(rb, nrb);
    ASSERT(blobs_ok);
    ASSERT(found);
}

/* Without optimizer state: has_opt = 0 and the caller's optimizer is left alone; blobs may
 * be declined (NULL), the file still loads. */
TEST(round_trip_without_optimizer)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    struct net_optim o;
    struct net *n = make_trained(&o, 0);
    ASSERT(n);
    char path[256], err[256] = "";
    tmp_path(t, "weights.ckpt", path);
    int rc = ckpt_save(path, n, NULL, NULL, 0, err, sizeof err);
    if (rc) net_destroy(n);
    ASSERT_EQ(rc, 0);
    struct net *m = NULL;
    struct net_optim o2, keep;
    memset(&o2, 0x5A, sizeof o2);
    keep = o2;
    int has_opt = -1;
    rc = ckpt_load(path, &m, &o2, &has_opt, NULL, NULL, err, sizeof err);
    int ok = rc == 0 && memcmp(n->params, m->params, n->n_params * sizeof(float)) == 0 &&
             memcmp(n->state, m->state, n->n_state * sizeof(float)) == 0;
    net_destroy(n);
    net_destroy(m);
    ASSERT_EQ(rc, 0);
    ASSERT(ok);
    ASSERT_EQ(has_opt, 0);
    ASSERT(memcmp(&o2, &keep, sizeof o2) == 0);
}

// ---- resume: bit-identical next steps ------------------------------------------------------

static void body_resume(const struct tmpd *t, int adam, int *test__failed)
{
    struct net_optim o;
    struct net *n = make_trained(&o, adam);
    ASSERT(n);
    char path[256], err[256] = "";
    tmp_path(t, adam ? "adam.ckpt" : "sgd.ckpt", path);
    int rc = ckpt_save(path, n, &o, NULL, 0, err, sizeof err);
    struct net *m = NULL;
    struct net_optim o2 = {0};
    int has_opt = 0;
    if (rc == 0) rc = ckpt_load(path, &m, &o2, &has_opt, NULL, NULL, err, sizeof err);
    if (rc) {
        printf("    %s\n", err);
        net_destroy(n);
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(has_opt, 1);
    // The same three steps on both: identical to the last bit after each.
    int same = 1;
    for (uint64_t s = 0; s < 3 && same; s++) {
        train_step(n, &o, 500 + s);
        train_step(m, &o2, 500 + s);
        same = same_net(n, m) && same_opt(&o, &o2);
        if (!same) printf("    diverged at step %llu after resume\n", (unsigned long long)s + 1);
    }
    // And the step did move the parameters (the comparison is not vacuous).
    struct net_optim o3;
    struct net *fresh = make_trained(&o3, adam);
    int moved = fresh && memcmp(fresh->params, n->params, n->n_params * sizeof(float)) != 0;
    net_destroy(fresh);
    net_destroy(n);
    net_destroy(m);
    ASSERT(same);
    ASSERT(moved);
}

TEST(resume_bit_identical_sgd)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    body_resume(t, 0, test__failed);
}

TEST(resume_bit_identical_adamw)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    body_resume(t, 1, test__failed);
}

/* Saving over an existing checkpoint replaces it whole and leaves no temporary. */
TEST(overwrite_replaces_whole_file)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    struct net_optim o;
    struct net *n = make_trained(&o, 1);
    ASSERT(n);
    char path[256], tmp[300], err[256] = "";
    tmp_path(t, "m.ckpt", path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc1 = ckpt_save(path, n, &o, NULL, 0, err, sizeof err);
    train_step(n, &o, 999);
    int rc2 = ckpt_save(path, n, NULL, NULL, 0, err, sizeof err);
    struct net *m = NULL;
    int has_opt = -1;
    int rc3 = ckpt_load(path, &m, NULL, &has_opt, NULL, NULL, err, sizeof err);
    int same = rc3 == 0 && memcmp(n->params, m->params, n->n_params * sizeof(float)) == 0;
    net_destroy(n);
    net_destroy(m);
    ASSERT_EQ(rc1, 0);
    ASSERT_EQ(rc2, 0);
    ASSERT_EQ(rc3, 0);
    ASSERT(same);
    ASSERT_EQ(has_opt, 0);
    ASSERT(!file_exists(tmp));
}

// ---- rejected files -----------------------------------------------------------------------

/* ckpt_load must fail, name the file (and `need` if given) in err, and write none of its
 * out-parameters. Returns 0 when all of that holds. */
static int expect_load_fail(const char *path, const char *need, int want_rc)
{
    static struct net dummy_net;
    static struct ckpt_blob dummy_blob;
    struct net *out = &dummy_net;
    struct net_optim o, keep;
    memset(&o, 0x3C, sizeof o);
    keep = o;
    int has_opt = 12345;
    struct ckpt_blob *bl = &dummy_blob;
    size_t nbl = 777;
    char err[512] = "";
    int rc = ckpt_load(path, &out, &o, &has_opt, &bl, &nbl, err, sizeof err);
    int bad = 0;
    if (rc >= 0) {
        printf("    %s: loaded (rc %d) but should have been rejected\n", path, rc);
        if (rc == 0 && out != &dummy_net) net_destroy(out);
        if (rc == 0 && bl != &dummy_blob) ckpt_blobs_free(bl, nbl);
        return 1;
    }
    if (want_rc && rc != want_rc) printf("    rc %d, expected %d\n", rc, want_rc), bad = 1;
    if (out != &dummy_net || has_opt != 12345 || bl != &dummy_blob || nbl != 777 ||
        memcmp(&o, &keep, sizeof o) != 0)
        printf("    %s: an out-parameter was written on failure\n", path), bad = 1;
    if (!strstr(err, path)) printf("    message \"%s\" does not name the file\n", err), bad = 1;
    if (need && !strstr(err, need)) printf("    message \"%s\" lacks \"%s\"\n", err, need), bad = 1;
    return bad;
}

/* Writes buf[0 .. len) to dir/name and expects the load to fail. */
static int reject_bytes(const struct tmpd *t, const char *name, const unsigned char *buf,
                        size_t len, const char *need)
{
    char p[256];
    tmp_path(t, name, p);
    if (write_all(p, buf, len) < 0) return 1;
    int bad = expect_load_fail(p, need, -EINVAL);
    if (bad) printf("    (case %s, %zu bytes)\n", name, len);
    return bad;
}

TEST(rejects_flipped_byte)
{
    const struct tmpd *t = NULL;
    char path[256];
    size_t len = 0;
    unsigned char *b = sample_bytes(&t, path, &len);
    ASSERT(b && len > 100);
    b[len / 2] ^= 0x55; // inside the parameter arena
    int bad = reject_bytes(t, "flip_mid.ckpt", b, len, "CRC");
    b[len / 2] ^= 0x55;
    b[len - 2] ^= 0x01; // the CRC itself
    bad += reject_bytes(t, "flip_crc.ckpt", b, len, "CRC");
    b[len - 2] ^= 0x01;
    b[30] ^= 0x80; // inside ARCH
    bad += reject_bytes(t, "flip_arch.ckpt", b, len, "CRC");
    free(b);
    ASSERT_EQ(bad, 0);
}

TEST(rejects_truncated)
{
    const struct tmpd *t = NULL;
    char path[256];
    size_t len = 0;
    unsigned char *b = sample_bytes(&t, path, &len);
    ASSERT(b && len > 200);
    // Header is 16 bytes, then ARCH's tag and length, ...; a file under 20 bytes cannot even
    // hold a header and a CRC.
    const size_t cuts[] = {0,  1,  3,  4,   10,      15,      16,      19,     20,
                           24, 28, 40, 100, len / 2, len - 5, len - 4, len - 1};
    int bad = 0;
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "cut_%zu.ckpt", cuts[i]);
        bad += reject_bytes(t, name, b, cuts[i], cuts[i] < 20 ? "truncated" : NULL);
    }
    free(b);
    ASSERT_EQ(bad, 0);
}

/* Truncated inside a chunk but with a valid CRC over what is left: the chunk-level bounds
 * checks, not the CRC, must reject it. */
TEST(rejects_truncated_chunk_with_valid_crc)
{
    const struct tmpd *t = NULL;
    char path[256];
    size_t len = 0;
    unsigned char *b = sample_bytes(&t, path, &len);
    ASSERT(b && len > 200);
    // Chunk layout: walk tags to find the middle of ARCH, PARM, STAT and OPTM.
    size_t pos = 16, mids[8], n_mid = 0;
    while (pos + 12 <= len - 4 && n_mid < 8) {
        uint64_t cl;
        memcpy(&cl, b + pos + 4, 8);
        if (memcmp(b + pos, "TRNR", 4) == 0 || memcmp(b + pos, "PLCY", 4) == 0) break;
        mids[n_mid++] = pos + 12 + cl / 2; // half-way through the payload
        mids[n_mid++] = pos + 6;           // inside the length field
        pos += 12 + cl;
    }
    ASSERT_EQ(n_mid, 8); // ARCH, PARM, STAT, OPTM
    unsigned char *c = malloc(len);
    ASSERT(c);
    int bad = 0;
    for (size_t i = 0; i < n_mid; i++) {
        size_t cut = mids[i] + 4; // keep 4 more bytes for the recomputed CRC
        memcpy(c, b, cut);
        fix_crc(c, cut);
        char name[64];
        snprintf(name, sizeof name, "cutcrc_%zu.ckpt", cut);
        bad += reject_bytes(t, name, c, cut, NULL);
    }
    free(c);
    free(b);
    ASSERT_EQ(bad, 0);
}

TEST(rejects_bad_header)
{
    const struct tmpd *t = NULL;
    char path[256];
    size_t len = 0;
    unsigned char *b = sample_bytes(&t, path, &len);
    ASSERT(b && len > 100);
    int bad = 0;
    // Wrong magic.
    unsigned char *c = malloc(len);
    ASSERT(c);
    memcpy(c, b, len);
    c[3] = 'X';
    fix_crc(c, len);
    bad += reject_bytes(t, "magic.ckpt", c, len, "magic");
    memcpy(c, "GIF8", 4);
    bad += reject_bytes(t, "gif.ckpt", c, len, "magic");
    // Unsupported version, with the CRC recomputed so the version check is what fires.
    memcpy(c, b, len);
    uint32_t v = 2;
    memcpy(c + 4, &v, 4);
    fix_crc(c, len);
    bad += reject_bytes(t, "version2.ckpt", c, len, "version 2");
    v = 0;
    memcpy(c + 4, &v, 4);
    fix_crc(c, len);
    bad += reject_bytes(t, "version0.ckpt", c, len, "version 0");
    // Another float size, another byte order.
    memcpy(c, b, len);
    v = 8;
    memcpy(c + 8, &v, 4);
    fix_crc(c, len);
    bad += reject_bytes(t, "float8.ckpt", c, len, "float size");
    memcpy(c, b, len);
    v = 0x04030201u;
    memcpy(c + 12, &v, 4);
    fix_crc(c, len);
    bad += reject_bytes(t, "bigendian.ckpt", c, len, "byte order");
    free(c);
    free(b);
    ASSERT_EQ(bad, 0);
}

TEST(rejects_empty_missing_directory)
{
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    char p[256];
    // Empty file.
    ASSERT_EQ(reject_bytes(t, "empty.ckpt", (const unsigned char *)"", 0, "truncated"), 0);
    // Missing file: -ENOENT and the path in the message.
    tmp_path(t, "no_such.ckpt", p);
    ASSERT_EQ(expect_load_fail(p, "no_such.ckpt", -ENOENT), 0);
    // A directory.
    tmp_path(t, "adir", p);
    ASSERT_EQ(mkdir(p, 0755), 0);
    ASSERT_EQ(expect_load_fail(p, NULL, 0), 0);
    // Not a checkpoint at all.
    const char *txt = "this is a text file and not a model checkpoint at all\n";
    ASSERT_EQ(reject_bytes(t, "text.ckpt", (const unsigned char *)txt, strlen(txt), "magic"), 0);
}

/* Well-formed CRC, inconsistent content: the parser's own checks must hold. */
TEST(rejects_inconsistent_content)
{
    const struct tmpd *t = NULL;
    char path[256];
    size_t len = 0;
    unsigned char *b = sample_bytes(&t, path, &len);
    ASSERT(b && len > 200);
    unsigned char *c = malloc(len + 64);
    ASSERT(c);
    int bad = 0;
    uint64_t u;
    // ARCH: input c, h, w, classes, norm (32), n_layers at 16 + 12 + 24 + 8 + 32.
    const size_t o_layers = 16 + 12 + 24 + 8 + 32;
    memcpy(c, b, len);
    u = 100000;
    memcpy(c + o_layers, &u, 8);
    fix_crc(c, len);
    bad += reject_bytes(t, "layers_huge.ckpt", c, len, NULL);
    memcpy(c, b, len);
    u = 0;
    memcpy(c + o_layers, &u, 8);
    fix_crc(c, len);
    bad += reject_bytes(t, "layers_zero.ckpt", c, len, NULL);
    // Classes changed: the head no longer matches, net_create's reason is passed on.
    memcpy(c, b, len);
    u = 7;
    memcpy(c + 16 + 12 + 24, &u, 8);
    fix_crc(c, len);
    bad += reject_bytes(t, "classes.ckpt", c, len, "class");
    // PARM chunk length one float short (the following chunk shifts): size mismatch.
    size_t arch_len;
    memcpy(&u, b + 20, 8);
    arch_len = (size_t)u;
    size_t parm = 16 + 12 + arch_len;
    ASSERT(memcmp(b + parm, "PARM", 4) == 0);
    memcpy(c, b, len);
    memcpy(&u, c + parm + 4, 8);
    u -= 4;
    memcpy(c + parm + 4, &u, 8);
    fix_crc(c, len);
    bad += reject_bytes(t, "parm_short.ckpt", c, len, NULL);
    // A chunk length far past the end of the file.
    memcpy(c, b, len);
    u = (uint64_t)1 << 40;
    memcpy(c + parm + 4, &u, 8);
    fix_crc(c, len);
    bad += reject_bytes(t, "parm_huge.ckpt", c, len, NULL);
    // PARM renamed: the parameters are missing.
    memcpy(c, b, len);
    memcpy(c + parm, "PARX", 4);
    fix_crc(c, len);
    bad += reject_bytes(t, "no_parm.ckpt", c, len, "PARM");
    free(c);
    free(b);
    ASSERT_EQ(bad, 0);
}

/* The ARCH chunk's declared length must match what it holds; a reader that ignores it
 * would misparse any future ARCH with extra fields instead of refusing it. */
TEST(rejects_arch_length_mismatch)
{
    const struct tmpd *t = NULL;
    char path[256];
    size_t len = 0;
    unsigned char *b = sample_bytes(&t, path, &len);
    ASSERT(b && len > 200);
    uint64_t u;
    memcpy(&u, b + 20, 8);
    int bad = 0;
    const int64_t deltas[] = {-8, -1, 8};
    for (size_t i = 0; i < 3; i++) {
        uint64_t w = u + (uint64_t)deltas[i];
        memcpy(b + 20, &w, 8);
        fix_crc(b, len);
        char name[64];
        snprintf(name, sizeof name, "archlen_%+d.ckpt", (int)deltas[i]);
        bad += reject_bytes(t, name, b, len, NULL);
    }
    free(b);
    ASSERT_EQ(bad, 0);
}

/* Every single-bit change (low and high bit of each byte) of the header and ARCH chunk,
 * with the CRC recomputed, is either rejected or yields a net that is consistent and runs;
 * nothing crashes or leaks (under ASan). */
TEST(fuzz_header_and_arch)
{
    // One thread: a thousand tiny forwards are all fork/join overhead, and OpenMP's spinning
    // barriers crawl on a loaded two-core machine.
    net_set_threads(1);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    char path[256], p2[256];
    ASSERT_EQ(save_sample(t, "good.ckpt", path, sizeof path), 0);
    tmp_path(t, "fuzz.ckpt", p2);
    size_t len = 0;
    unsigned char *b = read_all(path, &len);
    ASSERT(b && len > 200);
    uint64_t arch_len;
    memcpy(&arch_len, b + 20, 8);
    size_t end = 28 + (size_t)arch_len, accepted = 0, rejected = 0, broken = 0;
    float x[2 * IN_C * IN_HW * IN_HW];
    for (size_t i = 0; i < 2 * IN_C * IN_HW * IN_HW; i++) x[i] = 0.01f * (float)(i % 97);
    for (size_t pos = 0; pos < end; pos++) {
        for (int bit = 0; bit < 8; bit += 7) {
            b[pos] ^= (unsigned char)(1u << bit);
            fix_crc(b, len);
            int wr = write_all(p2, b, len);
            b[pos] ^= (unsigned char)(1u << bit);
            if (wr < 0) continue;
            struct net *m = NULL;
            struct ckpt_blob *bl = NULL;
            size_t nbl = 0;
            char err[512] = "";
            int rc = ckpt_load(p2, &m, NULL, NULL, &bl, &nbl, err, sizeof err);
            if (rc == 0) {
                accepted++;
                // A forward on whatever loaded (if it is not huge) must run cleanly.
                if (m->in_shape.c == IN_C && m->in_shape.h == IN_HW && m->in_shape.w == IN_HW &&
                    net_macs(m) < 2000000) {
                    float L = net_forward(m, x, NULL, 2, 0);
                    (void)L;
                }
                net_destroy(m);
                ckpt_blobs_free(bl, nbl);
            } else {
                rejected++;
                if (!err[0]) broken++;
            }
        }
    }
    fix_crc(b, len);
    free(b);
    printf("  fuzz: %zu header/ARCH bytes, %zu variants accepted, %zu rejected\n", end, accepted,
           rejected);
    ASSERT_EQ(broken, 0);
    ASSERT_GT(rejected, 0);
}

// ---- failed saves ---------------------------------------------------------------------------

TEST(save_failures_leave_nothing)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    struct net_optim o;
    struct net *n = make_trained(&o, 0);
    ASSERT(n);
    char dir[256], path[300], tmp[320], err[512] = "";
    tmp_path(t, "missing_dir", dir);
    snprintf(path, sizeof path, "%s/m.ckpt", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = ckpt_save(path, n, &o, NULL, 0, err, sizeof err);
    // A directory in the way of the final name: the rename fails, the temporary is removed.
    char dpath[256], dtmp[300], err2[512] = "";
    tmp_path(t, "is_a_dir", dpath);
    snprintf(dtmp, sizeof dtmp, "%s.tmp", dpath);
    int mk = mkdir(dpath, 0755);
    int rc2 = ckpt_save(dpath, n, &o, NULL, 0, err2, sizeof err2);
    net_destroy(n);
    ASSERT_LT(rc, 0);
    ASSERT_CONTAINS(err, "missing_dir");
    ASSERT(!file_exists(dir));
    ASSERT(!file_exists(path));
    ASSERT(!file_exists(tmp));
    ASSERT_EQ(mk, 0);
    ASSERT_LT(rc2, 0);
    ASSERT_CONTAINS(err2, "is_a_dir");
    ASSERT(!file_exists(dtmp));
}

/* A caller blob may not use a tag the format itself uses: either the save refuses it, or
 * the file loads with the blob returned and the parameters intact. */
TEST(save_rejects_reserved_blob_tags)
{
    net_set_threads(T_THREADS);
    const struct tmpd *t = tmp_scratch("test_ckpt");
    ASSERT(t);
    struct net_optim o;
    struct net *n = make_trained(&o, 0);
    ASSERT(n);
    const char *tags[] = {"ARCH", "PARM", "STAT", "OPTM"};
    int bad = 0;
    for (size_t i = 0; i < 4; i++) {
        char path[256], err[512] = "";
        snprintf(path, sizeof path, "%s/reserved_%s.ckpt", t->dir, tags[i]);
        char data[8] = "payload";
        struct ckpt_blob bl = {"", data, 7};
        memcpy(bl.tag, tags[i], 5);
        if (ckpt_save(path, n, &o, &bl, 1, err, sizeof err) < 0) continue; // refused: fine
        struct net *m = NULL;
        struct ckpt_blob *rb = NULL;
        size_t nrb = 0;
        int rc = ckpt_load(path, &m, NULL, NULL, &rb, &nrb, err, sizeof err);
        int ok = rc == 0 && memcmp(m->params, n->params, n->n_params * sizeof(float)) == 0 &&
                 memcmp(m->state, n->state, n->n_state * sizeof(float)) == 0 &&
                 ckpt_blob_find(rb, nrb, tags[i]) != NULL;
        if (!ok) {
            printf("    blob tagged %s was saved but %s\n", tags[i],
                   rc ? err : "the loaded file is not the saved one");
            bad++;
        }
        if (rc == 0) {
            net_destroy(m);
            ckpt_blobs_free(rb, nrb);
        }
    }
    net_destroy(n);
    ASSERT_EQ(bad, 0);
}

TEST_MAIN()
