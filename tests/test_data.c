/* tests/test_data.c: loaders, synthetic sets, split, statistics and the batcher (net/data.c).
 *
 * File tests write their own IDX / CIFAR files into a fresh mkdtemp directory under /tmp and
 * remove it afterwards; the body of such a test is a separate function so the directory is
 * removed even when an assertion returns early. The real Fashion-MNIST test runs only when
 * /usr/share/datasets/fashion-mnist is installed and prints a note otherwise. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "net/net.h"
#include "tests/test.h"
#include "tests/util.h"

static int write_gz(const char *path, const void *data, size_t len)
{
    gzFile g = gzopen(path, "wb");
    if (!g) return -1;
    int w = gzwrite(g, data, (unsigned)len);
    return (gzclose(g) == Z_OK && (size_t)w == len) ? 0 : -1;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* An IDX image file image in memory: header (magic, n, h, w) then n*h*w pixel bytes taken
 * from pix (which must hold that many). Returns the byte count; buf must be large enough. */
static size_t idx_images(uint8_t *buf, uint32_t magic, uint32_t n, uint32_t h, uint32_t w,
                         const uint8_t *pix, size_t n_pix)
{
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    put_be32(buf + 8, h);
    put_be32(buf + 12, w);
    if (n_pix) memcpy(buf + 16, pix, n_pix);
    return 16 + n_pix;
}

static size_t idx_labels(uint8_t *buf, uint32_t magic, uint32_t n, const uint8_t *lab, size_t n_lab)
{
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    if (n_lab) memcpy(buf + 8, lab, n_lab);
    return 8 + n_lab;
}

static int is_zeroed(const struct net_dataset *d)
{
    return d->n == 0 && d->n_classes == 0 && d->shape.c == 0 && d->shape.h == 0 &&
           d->shape.w == 0 && d->shape.spatial == 0 && d->x == NULL && d->y == NULL;
}

/* Three 2 x 3 images with known bytes, and labels 0, 12, 3 (so 13 classes). */
static const uint8_t PIX3[18] = {0,  255, 51, 102, 204, 1,   10, 20, 30,
                                 40, 50,  60, 255, 254, 253, 0,  0,  128};
static const uint8_t LAB3[3] = {0, 12, 3};

/* Writes images and labels (plain or gzip) and checks the loaded set against them. */
static void check_roundtrip(int *test__failed, const struct tmpd *t, int gz)
{
    uint8_t ib[64], lb[16];
    char ip[256], lp[256], err[512] = "";
    size_t ni = idx_images(ib, 0x803, 3, 2, 3, PIX3, sizeof PIX3);
    size_t nl = idx_labels(lb, 0x801, 3, LAB3, sizeof LAB3);
    // Names say nothing about compression: gzip must be found by its magic bytes.
    tmp_path(t, gz ? "images.idx" : "images.gz", ip);
    tmp_path(t, gz ? "labels.idx" : "labels.gz", lp);
    ASSERT_EQ(gz ? write_gz(ip, ib, ni) : write_all(ip, ib, ni), 0);
    ASSERT_EQ(gz ? write_gz(lp, lb, nl) : write_all(lp, lb, nl), 0);

    struct net_dataset d = {0};
    int rc = net_data_load_idx(&d, ip, lp, err, sizeof err);
    if (rc != 0) fprintf(stderr, "load error: %s\n", err);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(d.n, 3);
    ASSERT_EQ(d.shape.c, 1);
    ASSERT_EQ(d.shape.h, 2);
    ASSERT_EQ(d.shape.w, 3);
    ASSERT_EQ(d.shape.spatial, 1);
    ASSERT_EQ(d.n_classes, 13);
    for (size_t i = 0; i < 18; i++) ASSERT_NEAR(d.x[i], PIX3[i] / 255.0, 1e-7);
    ASSERT_FLT_OP(d.x[1], ==, 1.0f);
    ASSERT_FLT_OP(d.x[0], ==, 0.0f);
    for (size_t i = 0; i < 3; i++) ASSERT_EQ(d.y[i], LAB3[i]);
    net_data_free(&d);
    ASSERT(is_zeroed(&d));
}

/* Writes the given image bytes and valid labels for `n_lab` samples, loads, expects failure
 * with rc and a message containing the images path and `needle`; d must stay zeroed. */
/* Writes an image and a label file; loading them must fail with want_rc and a reason that
 * names the image file (or the label file, with blame_labels) and contains needle. */
static void check_pair_fails(int *test__failed, const struct tmpd *t, const uint8_t *ib, size_t ni,
                             const uint8_t *lb, size_t nl, int want_rc, int blame_labels,
                             const char *needle)
{
    char ip[256], lp[256], err[512] = "";
    ASSERT_EQ(write_all(tmp_path(t, "img", ip), ib, ni), 0);
    ASSERT_EQ(write_all(tmp_path(t, "lab", lp), lb, nl), 0);
    struct net_dataset d = {0};
    int rc = net_data_load_idx(&d, ip, lp, err, sizeof err);
    ASSERT_EQ(rc, want_rc);
    ASSERT_CONTAINS(err, blame_labels ? lp : ip);
    ASSERT_CONTAINS(err, needle);
    ASSERT(is_zeroed(&d));
}

static void check_idx_fails(int *test__failed, const struct tmpd *t, const uint8_t *ib, size_t ni,
                            size_t n_lab, int want_rc, const char *needle)
{
    uint8_t lb[64] = {0};
    ASSERT_LE(n_lab, 56);
    size_t nl = idx_labels(lb, 0x801, (uint32_t)n_lab, LAB3, 0);
    nl += n_lab; // labels are zero bytes
    check_pair_fails(test__failed, t, ib, ni, lb, nl, want_rc, 0, needle);
}

// ---- IDX -------------------------------------------------------------------------------

TEST(idx_plain_roundtrip)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    check_roundtrip(test__failed, t, 0);
}

TEST(idx_gz_roundtrip)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    check_roundtrip(test__failed, t, 1);
}

/* Images alone (labels NULL, for evowidth predict): the same pixels, labels all 0, no class
 * count; a truncated image file still fails. */
TEST(idx_images_without_labels)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    uint8_t ib[64];
    char ip[256], err[512] = "";
    size_t ni = idx_images(ib, 0x803, 3, 2, 3, PIX3, sizeof PIX3);
    ASSERT_EQ(write_gz(tmp_path(t, "images", ip), ib, ni), 0);
    struct net_dataset d = {0};
    ASSERT_EQ(net_data_load_idx(&d, ip, NULL, err, sizeof err), 0);
    ASSERT_EQ(d.n, 3);
    ASSERT_EQ(d.shape.h, 2);
    ASSERT_EQ(d.n_classes, 0);
    for (size_t i = 0; i < 18; i++) ASSERT_FLT_OP(d.x[i], ==, (float)PIX3[i] / 255.0f);
    for (size_t i = 0; i < 3; i++) ASSERT_EQ(d.y[i], 0);
    net_data_free(&d);
    ASSERT_EQ(write_all(ip, ib, ni - 1), 0);
    ASSERT_EQ(net_data_load_idx(&d, ip, NULL, err, sizeof err), -EIO);
    ASSERT_CONTAINS(err, "truncated");
    ASSERT(is_zeroed(&d));
}

TEST(idx_truncated_gzip)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    // 2000 incompressible-ish pixels gzipped, then the gzip file cut in half.
    enum { N = 20, H = 10, W = 10 };
    static uint8_t ib[16 + N * H * W], pix[N * H * W], lab[N];
    uint64_t r = 7;
    for (size_t i = 0; i < sizeof pix; i++) pix[i] = (uint8_t)net_rand_u64(&r);
    size_t ni = idx_images(ib, 0x803, N, H, W, pix, sizeof pix);
    uint8_t lb[8 + N];
    size_t nl = idx_labels(lb, 0x801, N, lab, N);
    char ip[256], lp[256], err[512] = "";
    tmp_path(t, "img.gz", ip);
    ASSERT_EQ(write_gz(ip, ib, ni), 0);
    ASSERT_EQ(write_all(tmp_path(t, "lab", lp), lb, nl), 0);
    FILE *f = fopen(ip, "rb");
    ASSERT(f != NULL);
    static uint8_t gzb[8192];
    size_t gzlen = fread(gzb, 1, sizeof gzb, f);
    fclose(f);
    ASSERT_GT(gzlen, 100);
    ASSERT_EQ(write_all(ip, gzb, gzlen / 2), 0);

    struct net_dataset d = {0};
    int rc = net_data_load_idx(&d, ip, lp, err, sizeof err);
    ASSERT_LT(rc, 0);
    ASSERT_CONTAINS(err, ip);
    ASSERT_CONTAINS(err, "truncated");
    ASSERT(is_zeroed(&d));

    // Flipping a byte inside the deflate stream is a corrupt file, not a crash.
    gzb[gzlen / 2] ^= 0xff;
    gzb[gzlen / 2 + 1] ^= 0x5a;
    ASSERT_EQ(write_all(ip, gzb, gzlen), 0);
    rc = net_data_load_idx(&d, ip, lp, err, sizeof err);
    ASSERT_LT(rc, 0);
    ASSERT_CONTAINS(err, ip);
    ASSERT(is_zeroed(&d));
}

/* Image files the loader must refuse, each with the label count it is paired with, the
 * error and a word of the message. len cuts the file short (0: as built). */
TEST(idx_bad_images)
{
    static const struct {
        uint32_t magic, n, h, w;
        size_t pix, len, n_lab;
        int want_rc;
        const char *needle;
    } cases[] = {
        // The header promises 3 x 2 x 3 = 18 pixels; only 10 follow.
        {0x803, 3, 2, 3, 10, 0, 3, -EIO, "truncated"},
        {0x803, 3, 2, 3, 10, 0, 3, -EIO, "expected 34 bytes, got 26"},
        {0x803, 3, 2, 3, 10, 9, 3, -EIO, "truncated"}, // a header cut short is truncated too
        {0x12345678, 3, 2, 3, sizeof PIX3, 0, 3, -EINVAL, "bad magic 0x12345678"},
        {0x803, 3, 2, 3, sizeof PIX3, 0, 4, -EINVAL, "count mismatch"},
        {0x803, 3, 0, 3, 0, 0, 3, -EINVAL, "zero dimension"},
        {0x803, 0, 28, 28, 0, 0, 0, -EINVAL, "zero dimension"},
        {0x803, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0, 0, 3, -EOVERFLOW, "overflow"},
    };
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t ib[64];
        size_t ni =
            idx_images(ib, cases[i].magic, cases[i].n, cases[i].h, cases[i].w, PIX3, cases[i].pix);
        check_idx_fails(test__failed, t, ib, cases[i].len ? cases[i].len : ni, cases[i].n_lab,
                        cases[i].want_rc, cases[i].needle);
        if (*test__failed) return;
    }
}

/* A label file passed as images gets a hint. */
TEST(idx_labels_passed_as_images)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    uint8_t ib[64];
    size_t ni = idx_labels(ib, 0x801, 3, LAB3, 3);
    check_idx_fails(test__failed, t, ib, ni, 3, -EINVAL, "swapped");
}

/* A header claiming 2^40 pixels over a tiny file must fail as truncated without allocating
 * what the header claims. */
TEST(idx_huge_claim_over_a_tiny_file)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    uint8_t ib[64];
    size_t ni = idx_images(ib, 0x803, 1u << 20, 1u << 10, 1u << 10, PIX3, sizeof PIX3);
    uint8_t lb[8];
    idx_labels(lb, 0x801, 1u << 20, NULL, 0);
    check_pair_fails(test__failed, t, ib, ni, lb, 8, -EIO, 0, "truncated");
}

TEST(idx_trailing_data_and_short_labels)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    uint8_t ib[64];
    size_t ni = idx_images(ib, 0x803, 3, 2, 3, PIX3, sizeof PIX3);
    ib[ni] = 7; // one byte more than the header implies
    check_idx_fails(test__failed, t, ib, ni + 1, 3, -EINVAL, "trailing data");
    if (*test__failed) return;
    // Truncated labels name the label file.
    uint8_t lb[16];
    size_t nl = idx_labels(lb, 0x801, 3, LAB3, 2);
    check_pair_fails(test__failed, t, ib, ni, lb, nl, -EIO, 1, "truncated");
}

TEST(idx_missing_file)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    uint8_t lb[16];
    char ip[256], lp[256], err[512] = "";
    size_t nl = idx_labels(lb, 0x801, 3, LAB3, 3);
    ASSERT_EQ(write_all(tmp_path(t, "lab", lp), lb, nl), 0);
    tmp_path(t, "no-such-images", ip);
    struct net_dataset d = {0};
    ASSERT_EQ(net_data_load_idx(&d, ip, lp, err, sizeof err), -ENOENT);
    ASSERT_CONTAINS(err, ip);
    ASSERT_CONTAINS(err, strerror(ENOENT));
    ASSERT(is_zeroed(&d));
    // The labels path is named when it is the missing one; a directory is refused.
    uint8_t ib[64];
    char ip2[256];
    size_t ni = idx_images(ib, 0x803, 3, 2, 3, PIX3, sizeof PIX3);
    ASSERT_EQ(write_all(tmp_path(t, "img", ip2), ib, ni), 0);
    ASSERT_EQ(net_data_load_idx(&d, ip2, ip, err, sizeof err), -ENOENT);
    ASSERT_CONTAINS(err, ip);
    ASSERT(is_zeroed(&d));
    ASSERT_EQ(net_data_load_idx(&d, t->dir, lp, err, sizeof err), -EISDIR);
    ASSERT_CONTAINS(err, t->dir);
    // NULL err buffer is allowed.
    ASSERT_EQ(net_data_load_idx(&d, ip, lp, NULL, 0), -ENOENT);
    ASSERT(is_zeroed(&d));
}

TEST(fashion_mnist_t10k)
{
    const char *ip = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    const char *lp = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
    if (access("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz", R_OK) != 0 ||
        access(ip, R_OK) != 0 || access(lp, R_OK) != 0) {
        printf("note: Fashion-MNIST not installed under /usr/share/datasets; skipped\n");
        return;
    }
    struct net_dataset d = {0};
    char err[512] = "";
    int rc = net_data_load_idx(&d, ip, lp, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(d.n, 10000);
    ASSERT_EQ(d.shape.c, 1);
    ASSERT_EQ(d.shape.h, 28);
    ASSERT_EQ(d.shape.w, 28);
    ASSERT_EQ(d.n_classes, 10);
    size_t count[10] = {0};
    for (size_t i = 0; i < d.n; i++) {
        ASSERT_LT(d.y[i], 10);
        count[d.y[i]]++;
    }
    for (size_t k = 0; k < 10; k++) ASSERT_EQ(count[k], 1000);
    float lo = 1, hi = 0;
    for (size_t i = 0; i < d.n * 784; i++) {
        if (d.x[i] < lo) lo = d.x[i];
        if (d.x[i] > hi) hi = d.x[i];
    }
    ASSERT_FLT_OP(lo, ==, 0.0f);
    ASSERT_FLT_OP(hi, ==, 1.0f);
    net_data_free(&d);
}

// ---- CIFAR-10 --------------------------------------------------------------------------

/* One record: label, then R plane = r, G plane = g, B plane = b, except pixel (y=1, x=2)
 * of each plane which is r+1, g+1, b+1 (so row-major order is checked too). */
static void cifar_record(uint8_t *rec, uint8_t label, uint8_t r, uint8_t g, uint8_t b)
{
    rec[0] = label;
    memset(rec + 1, r, 1024);
    memset(rec + 1 + 1024, g, 1024);
    memset(rec + 1 + 2048, b, 1024);
    rec[1 + 0 * 1024 + 1 * 32 + 2] = (uint8_t)(r + 1);
    rec[1 + 1 * 1024 + 1 * 32 + 2] = (uint8_t)(g + 1);
    rec[1 + 2 * 1024 + 1 * 32 + 2] = (uint8_t)(b + 1);
}

TEST(cifar_values_and_channel_order)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    static uint8_t f1[2 * 3073], f2[3073];
    cifar_record(f1, 3, 10, 20, 30);
    cifar_record(f1 + 3073, 9, 255, 0, 128);
    cifar_record(f2, 0, 1, 2, 3);
    char p1[256], p2[256], err[512] = "";
    ASSERT_EQ(write_all(tmp_path(t, "data_batch_1.bin", p1), f1, sizeof f1), 0);
    ASSERT_EQ(write_gz(tmp_path(t, "data_batch_2.bin", p2), f2, sizeof f2), 0);
    const char *files[2] = {p1, p2};
    struct net_dataset d = {0};
    int rc = net_data_load_cifar(&d, files, 2, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(d.n, 3);
    ASSERT_EQ(d.n_classes, 10);
    ASSERT_EQ(d.shape.c, 3);
    ASSERT_EQ(d.shape.h, 32);
    ASSERT_EQ(d.shape.w, 32);
    ASSERT_EQ(d.shape.spatial, 1);
    ASSERT_EQ(d.y[0], 3);
    ASSERT_EQ(d.y[1], 9);
    ASSERT_EQ(d.y[2], 0);
    const uint8_t want[3][3] = {{10, 20, 30}, {255, 0, 128}, {1, 2, 3}};
    for (size_t i = 0; i < 3; i++)
        for (size_t c = 0; c < 3; c++) {
            const float *plane = d.x + (i * 3 + c) * 1024;
            ASSERT_NEAR(plane[0], want[i][c] / 255.0, 1e-7);
            ASSERT_NEAR(plane[1023], want[i][c] / 255.0, 1e-7);
            ASSERT_NEAR(plane[1 * 32 + 2], (uint8_t)(want[i][c] + 1) / 255.0, 1e-7);
            ASSERT_NEAR(plane[2 * 32 + 1], want[i][c] / 255.0, 1e-7);
        }
    net_data_free(&d);
}

TEST(cifar_bad_files)
{
    const struct tmpd *t = tmp_scratch("test_data");
    ASSERT(t);
    static uint8_t buf[2 * 3073];
    char p1[256], p2[256], err[512] = "";
    struct net_dataset d = {0};
    cifar_record(buf, 1, 1, 2, 3);
    cifar_record(buf + 3073, 10, 1, 2, 3); // label 10 is out of range
    ASSERT_EQ(write_all(tmp_path(t, "good.bin", p1), buf, 3073), 0);
    ASSERT_EQ(write_all(tmp_path(t, "bad_label.bin", p2), buf, sizeof buf), 0);
    const char *files[2] = {p1, p2};
    ASSERT_EQ(net_data_load_cifar(&d, files, 2, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, p2);
    ASSERT_CONTAINS(err, "label 10");
    ASSERT(is_zeroed(&d));

    // Size not a multiple of 3073.
    ASSERT_EQ(write_all(tmp_path(t, "short.bin", p2), buf, 3073 + 100), 0);
    ASSERT_EQ(net_data_load_cifar(&d, files, 2, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, p2);
    ASSERT_CONTAINS(err, "multiple of 3073");
    ASSERT(is_zeroed(&d));

    // Empty file.
    ASSERT_EQ(write_all(tmp_path(t, "empty.bin", p2), buf, 0), 0);
    ASSERT_EQ(net_data_load_cifar(&d, files, 2, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, p2);
    ASSERT(is_zeroed(&d));

    // Missing file and no files.
    tmp_path(t, "missing.bin", p2);
    ASSERT_EQ(net_data_load_cifar(&d, files, 2, err, sizeof err), -ENOENT);
    ASSERT_CONTAINS(err, p2);
    ASSERT_EQ(net_data_load_cifar(&d, files, 0, err, sizeof err), -EINVAL);
    ASSERT(is_zeroed(&d));
}

// ---- synthetic -------------------------------------------------------------------------

TEST(synthetic_determinism)
{
    struct net_shape s = {.c = 3, .h = 8, .w = 8, .spatial = 1};
    struct net_dataset a = {0}, b = {0}, c = {0};
    ASSERT_EQ(net_data_synthetic(&a, 50, &s, 5, 0.4f, 42), 0);
    ASSERT_EQ(net_data_synthetic(&b, 50, &s, 5, 0.4f, 42), 0);
    ASSERT_EQ(net_data_synthetic(&c, 50, &s, 5, 0.4f, 43), 0);
    ASSERT_EQ(a.n, 50);
    ASSERT_EQ(a.n_classes, 5);
    ASSERT_EQ(a.shape.c, 3);
    ASSERT_EQ(a.shape.spatial, 1);
    size_t total = 50 * 3 * 64;
    ASSERT(memcmp(a.x, b.x, total * sizeof(float)) == 0);
    ASSERT(memcmp(a.y, b.y, 50) == 0);
    ASSERT(memcmp(a.x, c.x, total * sizeof(float)) != 0);
    size_t count[5] = {0};
    for (size_t i = 0; i < total; i++) {
        ASSERT_FLT_OP(a.x[i], >=, 0.0);
        ASSERT_FLT_OP(a.x[i], <=, 1.0);
    }
    for (size_t i = 0; i < 50; i++) count[a.y[i]]++;
    for (size_t k = 0; k < 5; k++) ASSERT_EQ(count[k], 10);
    net_data_free(&a);
    net_data_free(&b);
    net_data_free(&c);
}

/* Nearest class mean fitted on half the set classifies the other half: a cheap stand-in for
 * "a small net can learn it", for image-shaped and flat sets. */
static double nearest_mean_accuracy(const struct net_dataset *d)
{
    size_t per = d->shape.c * d->shape.h * d->shape.w, K = d->n_classes, half = d->n / 2;
    double *mu = calloc(K * per, sizeof *mu);
    size_t *cnt = calloc(K, sizeof *cnt), right = 0;
    if (!mu || !cnt) return -1;
    for (size_t i = 0; i < half; i++) {
        cnt[d->y[i]]++;
        for (size_t j = 0; j < per; j++) mu[d->y[i] * per + j] += d->x[i * per + j];
    }
    for (size_t k = 0; k < K; k++)
        for (size_t j = 0; j < per; j++) mu[k * per + j] /= (double)(cnt[k] ? cnt[k] : 1);
    for (size_t i = half; i < d->n; i++) {
        size_t best = 0;
        double bd = 1e300;
        for (size_t k = 0; k < K; k++) {
            double s = 0;
            for (size_t j = 0; j < per; j++) {
                double e = d->x[i * per + j] - mu[k * per + j];
                s += e * e;
            }
            if (s < bd) bd = s, best = k;
        }
        right += best == d->y[i];
    }
    free(mu);
    free(cnt);
    return (double)right / (double)(d->n - half);
}

TEST(synthetic_learnable)
{
    struct net_shape img = {.c = 1, .h = 28, .w = 28, .spatial = 1};
    struct net_shape flat = {.c = 64, .h = 1, .w = 1, .spatial = 0};
    struct net_dataset d = {0};
    ASSERT_EQ(net_data_synthetic(&d, 2000, &img, 10, 0.5f, 1), 0);
    double acc = nearest_mean_accuracy(&d);
    ASSERT_FLT_OP(acc, >, 0.95);
    net_data_free(&d);
    ASSERT_EQ(net_data_synthetic(&d, 2000, &flat, 10, 0.3f, 2), 0);
    ASSERT_EQ(d.shape.spatial, 0);
    acc = nearest_mean_accuracy(&d);
    ASSERT_FLT_OP(acc, >, 0.95);
    net_data_free(&d);
}

TEST(synthetic_bad_args)
{
    struct net_shape s = {.c = 1, .h = 4, .w = 4, .spatial = 1}, z = {.c = 0, .h = 4, .w = 4};
    struct net_dataset d = {0};
    ASSERT_EQ(net_data_synthetic(&d, 0, &s, 10, 0.1f, 1), -EINVAL);
    ASSERT_EQ(net_data_synthetic(&d, 10, &s, 0, 0.1f, 1), -EINVAL);
    ASSERT_EQ(net_data_synthetic(&d, 10, &s, 257, 0.1f, 1), -EINVAL);
    ASSERT_EQ(net_data_synthetic(&d, 10, &z, 10, 0.1f, 1), -EINVAL);
    ASSERT_EQ(net_data_synthetic(&d, 10, &s, 10, -1.0f, 1), -EINVAL);
    ASSERT_EQ(net_data_synthetic(&d, 10, &s, 10, NAN, 1), -EINVAL);
    ASSERT(is_zeroed(&d));
}

// ---- split, stats ----------------------------------------------------------------------

TEST(split_sizes_and_multiset)
{
    struct net_shape s = {.c = 2, .h = 3, .w = 3, .spatial = 1};
    struct net_dataset all = {0}, tr = {0}, va = {0};
    const size_t n = 103, per = 18;
    ASSERT_EQ(net_data_synthetic(&all, n, &s, 7, 0.3f, 5), 0);
    // Tag every sample so the split's copies can be traced back: x[0] = i / 1000.
    for (size_t i = 0; i < n; i++) all.x[i * per] = (float)i / 1000.0f;
    size_t label_count[256] = {0};
    static float orig[103 * 18];
    uint8_t orig_y[103];
    memcpy(orig, all.x, sizeof orig);
    memcpy(orig_y, all.y, n);
    for (size_t i = 0; i < n; i++) label_count[all.y[i]]++;

    uint64_t rng = 99, rng0 = rng;
    ASSERT_EQ(net_data_split(&all, &tr, &va, n, &rng), -EINVAL); // n_val >= n
    ASSERT_EQ(rng, rng0);
    ASSERT_EQ(all.n, n);
    ASSERT(all.x != NULL);
    ASSERT(is_zeroed(&tr) && is_zeroed(&va));

    ASSERT_EQ(net_data_split(&all, &tr, &va, 20, &rng), 0);
    ASSERT_NE(rng, rng0);
    ASSERT(is_zeroed(&all)); // freed
    ASSERT_EQ(tr.n, 83);
    ASSERT_EQ(va.n, 20);
    ASSERT_EQ(tr.n_classes, 7);
    ASSERT_EQ(va.shape.c, 2);
    ASSERT_EQ(va.shape.w, 3);
    int seen[103] = {0};
    int moved = 0;
    for (size_t i = 0; i < n; i++) {
        const struct net_dataset *d = i < 83 ? &tr : &va;
        size_t k = i < 83 ? i : i - 83;
        size_t src = (size_t)(d->x[k * per] * 1000.0f + 0.5f);
        ASSERT_LT(src, n);
        ASSERT_EQ(seen[src], 0);
        seen[src] = 1;
        moved += src != i;
        // The whole sample and its label travel together.
        ASSERT(memcmp(d->x + k * per, orig + src * per, per * sizeof(float)) == 0);
        ASSERT_EQ(d->y[k], orig_y[src]);
        label_count[d->y[k]]--;
    }
    ASSERT_GT(moved, 50); // really shuffled
    for (size_t k = 0; k < 256; k++) ASSERT_EQ(label_count[k], 0);
    net_data_free(&tr);
    net_data_free(&va);

    // train may be the same struct as all; n_val = 0 gives an empty validation set.
    ASSERT_EQ(net_data_synthetic(&all, 10, &s, 2, 0.3f, 5), 0);
    ASSERT_EQ(net_data_split(&all, &all, &va, 0, &rng), 0);
    ASSERT_EQ(all.n, 10);
    ASSERT(all.x != NULL);
    ASSERT_EQ(va.n, 0);
    net_data_free(&all);
    net_data_free(&va);
}

TEST(stats_normalize)
{
    struct net_shape s = {.c = 3, .h = 6, .w = 5, .spatial = 1};
    struct net_dataset d = {0};
    ASSERT_EQ(net_data_synthetic(&d, 200, &s, 4, 0.3f, 11), 0);
    // Give each channel a different scale and offset.
    for (size_t i = 0; i < d.n; i++)
        for (size_t c = 0; c < 3; c++)
            for (size_t k = 0; k < 30; k++) {
                float *p = d.x + (i * 3 + c) * 30 + k;
                *p = *p * (float)(c + 1) + (float)c * 5.0f;
            }
    float mean[4] = {0}, std[4] = {0};
    net_data_stats(&d, mean, std);
    ASSERT_FLT_OP(mean[2], >, 9.0);
    ASSERT_FLT_OP(std[2], >, std[0] * 2.0);
    net_data_normalize(&d, mean, std);
    float m2[4] = {0}, s2[4] = {0};
    net_data_stats(&d, m2, s2);
    for (size_t c = 0; c < 3; c++) {
        ASSERT_NEAR(m2[c], 0.0, 1e-5);
        ASSERT_NEAR(s2[c], 1.0, 1e-5);
    }
    ASSERT_FLT_OP(m2[3], ==, 0.0f); // untouched: only C entries are written
    net_data_free(&d);

    // Known values: one channel holding 1, 2, 3, 4 -> mean 2.5, std sqrt(1.25);
    // a constant channel gets the 1e-6 floor.
    float xs[8] = {1, 2, 3, 4, 7, 7, 7, 7};
    struct net_dataset k = {.n = 1, .n_classes = 1, .shape = {2, 2, 2, 1}, .x = xs};
    net_data_stats(&k, mean, std);
    ASSERT_NEAR(mean[0], 2.5, 1e-6);
    ASSERT_NEAR(std[0], sqrt(1.25), 1e-6);
    ASSERT_NEAR(mean[1], 7.0, 1e-6);
    ASSERT_FLT_OP(std[1], ==, 1e-6f);
}

TEST(data_free_null_and_zeroed)
{
    struct net_dataset d = {0};
    net_data_free(NULL);
    net_data_free(&d);
    net_data_free(&d);
    ASSERT(is_zeroed(&d));
    struct net_batcher b = {0};
    net_batcher_free(NULL);
    net_batcher_free(&b);
    net_batcher_free(&b);
    ASSERT(b.perm == NULL);
}

// ---- batcher ---------------------------------------------------------------------------

/* n samples of shape (1, 1, 1) holding their own index, labels i % 7. */
static int index_set(struct net_dataset *d, size_t n)
{
    *d = (struct net_dataset){.n = n, .n_classes = 7, .shape = {1, 1, 1, 0}};
    d->x = malloc(n * sizeof *d->x);
    d->y = malloc(n);
    if (!d->x || !d->y) return -1;
    for (size_t i = 0; i < n; i++) {
        d->x[i] = (float)i;
        d->y[i] = (uint8_t)(i % 7);
    }
    return 0;
}

TEST(batcher_epochs_visit_every_index_once)
{
    enum { N = 37, B = 5, EPOCHS = 4 };
    struct net_dataset d = {0};
    struct net_batcher b = {0};
    ASSERT_EQ(index_set(&d, N), 0);
    ASSERT_EQ(net_batcher_init(&b, N, 123, 0, 0), 0);
    // 4 epochs = 148 samples: batches of 5 straddle epoch boundaries (37 is prime).
    size_t order[N * EPOCHS + B], got = 0;
    float x[B];
    uint8_t y[B];
    while (got < N * EPOCHS) {
        ASSERT_EQ(net_batcher_next(&b, &d, B, x, y), B);
        for (size_t s = 0; s < B; s++) {
            size_t i = (size_t)x[s];
            ASSERT_EQ(y[s], i % 7);
            order[got++] = i;
        }
    }
    ASSERT_EQ(b.epoch, got / N);
    ASSERT_EQ(b.pos, got % N);
    for (size_t e = 0; e < EPOCHS; e++) {
        int seen[N] = {0};
        for (size_t k = 0; k < N; k++) seen[order[e * N + k]]++;
        for (size_t i = 0; i < N; i++) ASSERT_EQ(seen[i], 1);
    }
    // Each epoch has its own order.
    for (size_t e = 1; e < EPOCHS; e++)
        ASSERT(memcmp(order, order + e * N, N * sizeof *order) != 0);
    // The first epoch is shuffled, not 0, 1, 2, ...
    size_t in_place = 0;
    for (size_t k = 0; k < N; k++) in_place += order[k] == k;
    ASSERT_LT(in_place, N / 2);
    net_batcher_free(&b);
    net_data_free(&d);
}

TEST(batcher_determinism_and_resume)
{
    enum { N = 50, B = 8, STEPS = 30 };
    struct net_dataset d = {0};
    struct net_batcher a = {0}, b = {0}, c = {0};
    ASSERT_EQ(index_set(&d, N), 0);
    ASSERT_EQ(net_batcher_init(&a, N, 7, 0, 1), 0);
    ASSERT_EQ(net_batcher_init(&b, N, 7, 0, 1), 0);
    ASSERT_EQ(net_batcher_init(&c, N, 8, 0, 1), 0);
    float xa[B], xb[B], xc[B];
    uint8_t ya[B], yb[B], yc[B];
    int differ = 0;
    for (int s = 0; s < STEPS; s++) {
        net_batcher_next(&a, &d, B, xa, ya);
        net_batcher_next(&b, &d, B, xb, yb);
        net_batcher_next(&c, &d, B, xc, yc);
        ASSERT(memcmp(xa, xb, sizeof xa) == 0);
        ASSERT(memcmp(ya, yb, sizeof ya) == 0);
        differ |= memcmp(xa, xc, sizeof xa) != 0;
    }
    ASSERT(differ);
    // Resume: a copy of (pos, epoch, perm, rng) continues exactly like the original.
    struct net_batcher r = a;
    r.perm = malloc(N * sizeof *r.perm);
    ASSERT(r.perm != NULL);
    memcpy(r.perm, a.perm, N * sizeof *r.perm);
    for (int s = 0; s < STEPS; s++) {
        net_batcher_next(&a, &d, B, xa, ya);
        net_batcher_next(&r, &d, B, xb, yb);
        ASSERT(memcmp(xa, xb, sizeof xa) == 0);
        ASSERT(memcmp(ya, yb, sizeof ya) == 0);
    }
    net_batcher_free(&r);
    net_batcher_free(&a);
    net_batcher_free(&b);
    net_batcher_free(&c);
    net_data_free(&d);
}

/* One 2-channel 4 x 5 image whose values are all distinct and non-zero. */
static float img_val(size_t c, size_t i, size_t j)
{
    return (float)(100 * c + 10 * i + j + 1);
}

/* A one-sample set of that image (xs: C H W floats) with label *ys. */
static struct net_dataset img_set(float *xs, uint8_t *ys, size_t C, size_t H, size_t W,
                                  size_t n_classes)
{
    for (size_t c = 0; c < C; c++)
        for (size_t i = 0; i < H; i++)
            for (size_t j = 0; j < W; j++) xs[(c * H + i) * W + j] = img_val(c, i, j);
    struct net_dataset d = {
        .n = 1, .n_classes = n_classes, .shape = {C, H, W, 1}, .x = xs, .y = ys};
    return d;
}

TEST(batcher_flip_follows_the_draw)
{
    enum { C = 2, H = 4, W = 5, B = 64, PER = C * H * W };
    float xs[PER];
    uint8_t ys[1] = {3};
    struct net_dataset d = img_set(xs, ys, C, H, W, 4);
    struct net_batcher b = {0};
    ASSERT_EQ(net_batcher_init(&b, 1, 2024, 0, 1), 0);
    // With one sample the shuffle draws nothing, so the stream is one flip bit per sample:
    // the top bit of the next 64-bit draw (documented in net_batcher_next).
    uint64_t r = b.rng;
    static float x[B * PER];
    uint8_t y[B];
    ASSERT_EQ(net_batcher_next(&b, &d, B, x, y), B);
    size_t n_flip = 0;
    for (size_t s = 0; s < B; s++) {
        int flip = (int)(net_rand_u64(&r) >> 63);
        n_flip += (size_t)flip;
        ASSERT_EQ(y[s], 3);
        for (size_t c = 0; c < C; c++)
            for (size_t i = 0; i < H; i++)
                for (size_t j = 0; j < W; j++)
                    ASSERT_FLT_OP(x[s * PER + (c * H + i) * W + j], ==,
                                  img_val(c, i, flip ? W - 1 - j : j));
    }
    ASSERT_EQ(b.rng, r);
    ASSERT_GT(n_flip, 8);
    ASSERT_LT(n_flip, B - 8);
    ASSERT_EQ(b.epoch, B);
    net_batcher_free(&b);
}

/* Finds (dy, dx, flip) with |dy|, |dx| <= pad explaining out (C, H, W) as a shifted and
 * possibly mirrored copy of the image, zeros outside. Returns the index of the match in
 * [0, 2 (2 pad + 1)^2) or -1. */
static int explain_crop(const float *out, size_t C, size_t H, size_t W, int pad)
{
    int idx = 0;
    for (int flip = 0; flip < 2; flip++)
        for (int dy = -pad; dy <= pad; dy++)
            for (int dx = -pad; dx <= pad; dx++, idx++) {
                int ok = 1;
                for (size_t c = 0; c < C && ok; c++)
                    for (size_t i = 0; i < H && ok; i++)
                        for (size_t j = 0; j < W && ok; j++) {
                            long si = (long)i + dy;
                            long sj = (long)(flip ? W - 1 - j : j) + dx;
                            float want = (si >= 0 && si < (long)H && sj >= 0 && sj < (long)W)
                                             ? img_val(c, (size_t)si, (size_t)sj)
                                             : 0.0f;
                            ok = out[(c * H + i) * W + j] == want;
                        }
                if (ok) return idx;
            }
    return -1;
}

static void check_crop(int *test__failed, int flip)
{
    enum { C = 2, H = 4, W = 5, B = 1000, PER = C * H * W, PAD = 2 };
    const int n_pos = (2 * PAD + 1) * (2 * PAD + 1);
    float xs[PER];
    uint8_t ys[1] = {1};
    struct net_dataset d = img_set(xs, ys, C, H, W, 2);
    struct net_batcher b = {0};
    ASSERT_EQ(net_batcher_init(&b, 1, 77, PAD, flip), 0);
    static float x[B * PER];
    uint8_t y[B];
    ASSERT_EQ(net_batcher_next(&b, &d, B, x, y), B);
    net_batcher_free(&b);
    int seen[2 * 25] = {0};
    for (size_t s = 0; s < B; s++) {
        int m = explain_crop(x + s * PER, C, H, W, PAD);
        ASSERT_GE(m, 0);
        seen[m]++;
    }
    // Every offset (and, with flip, every mirrored offset) shows up in 1000 draws.
    for (int k = 0; k < n_pos * (flip ? 2 : 1); k++) ASSERT_GT(seen[k], 0);
}

TEST(batcher_crop_keeps_shifted_pixels)
{
    check_crop(test__failed, 0);
    if (*test__failed) return;
    check_crop(test__failed, 1);
}

TEST(batcher_bad_args)
{
    struct net_batcher b = {0};
    ASSERT_EQ(net_batcher_init(&b, 0, 1, 0, 0), -EINVAL);
    ASSERT_EQ(net_batcher_init(&b, (size_t)UINT32_MAX + 1, 1, 0, 0), -EINVAL);
    ASSERT(b.perm == NULL);
    struct net_dataset d = {0};
    ASSERT_EQ(index_set(&d, 5), 0);
    ASSERT_EQ(net_batcher_init(&b, 6, 1, 0, 0), 0);
    float x[4];
    uint8_t y[4];
    // A batcher over more samples than the set holds produces nothing.
    ASSERT_EQ(net_batcher_next(&b, &d, 4, x, y), 0);
    ASSERT_EQ(b.pos, 0);
    net_batcher_free(&b);
    net_data_free(&d);
}

TEST_MAIN()
