/* tests/util.h: what the test files share besides the harness (tests/test.h): layer spec
 * shorthands, temp directories (and tmp_scratch, the fixture of tests that write files),
 * whole-file helpers, a jittered net (mk_jittered), configs/tiny.json (load_tiny, with
 * daemon/config.h), a hand-made EVWZ container (evwz_file, with zlib.h) and known-answer
 * matrices. Header-only (static inline), as every test file is its own binary. */
#ifndef EW_TEST_UTIL_H
#define EW_TEST_UTIL_H

#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "net/net.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

// ---- layer spec shorthands ---------------------------------------------------------------

// clang-format off
#define S_CONV(o, k_, s, p, b)                                                                 \
    {.kind = NET_CONV, .out = (o), .k = (k_), .stride = (s), .pad = (p), .bias = (b)}
#define S_CONVR(o, r, k_, s, p, b)                                                             \
    {.kind = NET_CONV, .out = (o), .rank = (r), .k = (k_), .stride = (s), .pad = (p), .bias = (b)}
#define S_DENSE(o, b) {.kind = NET_DENSE, .out = (o), .bias = (b)}
#define S_DENSER(o, r, b) {.kind = NET_DENSE, .out = (o), .rank = (r), .bias = (b)}
#define S_BN() {.kind = NET_BN}
#define S_RELU() {.kind = NET_RELU}
#define S_POOL(k_, s) {.kind = NET_MAXPOOL, .k = (k_), .stride = (s)}
#define S_GAP() {.kind = NET_GAP}
#define S_FLAT() {.kind = NET_FLATTEN}
#define S_RES(w, o, s, b) {.kind = NET_RES, .width = (w), .out = (o), .stride = (s), .bn = (b)}
// clang-format on

// ---- temp directories ----------------------------------------------------------------------

#define TMP_PATH_MAX 256 // the size of a tmp_path buffer

struct tmpd {
    char dir[64];
};

/* A fresh /tmp/PREFIX_XXXXXX; 0 or -1. */
static inline int tmp_make(struct tmpd *t, const char *prefix)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/%s_XXXXXX", prefix);
    return mkdtemp(t->dir) ? 0 : -1;
}

static inline int tmp__rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

/* Removes the directory and everything below it. */
static inline void tmp_remove(struct tmpd *t)
{
    nftw(t->dir, tmp__rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

struct tmp__reg {
    struct tmpd d[64];
    int n;
};

static inline struct tmp__reg *tmp__reg(void)
{
    static struct tmp__reg r;
    return &r;
}

static inline void tmp__remove_all(void)
{
    struct tmp__reg *r = tmp__reg();
    while (r->n > 0) tmp_remove(&r->d[--r->n]);
}

/* The fixture of the tests that write files: a fresh /tmp/PREFIX_XXXXXX that is removed
 * when the process exits, also after a failed case (an ASSERT returns from the case, so a
 * remove at its end would be skipped); NULL on error. */
static inline const struct tmpd *tmp_scratch(const char *prefix)
{
    struct tmp__reg *r = tmp__reg();
    if (r->n == (int)N_OF(r->d) || tmp_make(&r->d[r->n], prefix) < 0) return NULL;
    if (r->n == 0) atexit(tmp__remove_all);
    return &r->d[r->n++];
}

/* dir/name in buf (TMP_PATH_MAX bytes); returns buf. */
static inline const char *tmp_path(const struct tmpd *t, const char *name, char *buf)
{
    snprintf(buf, TMP_PATH_MAX, "%s/%s", t->dir, name);
    return buf;
}

// ---- files ---------------------------------------------------------------------------------

static inline int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* The whole file in a malloc'ed buffer (one spare byte); NULL on error. */
static inline unsigned char *read_all(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = b ? (size_t)n : 0;
    return b;
}

/* Writes len bytes (creating or truncating); 0 or -1. */
static inline int write_all(const char *p, const void *b, size_t len)
{
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    size_t w = len ? fwrite(b, 1, len, f) : 0;
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

// ---- nets --------------------------------------------------------------------------------

/* A net of specs s on input in, net_init_params(seed) weights, then every tensor without
 * weight decay (biases, BN parameters and statistics) drawn again so that nothing hides
 * behind a default: gamma / var entries one + spread |N(0, 1)|, the others scale N(0, 1).
 * NULL (reason printed) on failure. */
static inline struct net *mk_jittered(const struct net_shape *in, size_t classes,
                                      const struct net_layer_spec *s, size_t ns, uint64_t seed,
                                      float one, float spread, float scale)
{
    struct net *n = NULL;
    char err[256] = "";
    if (net_create(&n, in, classes, s, ns, err, sizeof(err)) < 0) {
        printf("    net_create: %s\n", err);
        return NULL;
    }
    uint64_t rng = seed;
    net_init_params(n, &rng);
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->decay) continue;
        float *p = net_tensor_data(n, t);
        int pos = strstr(t->name, "gamma") || strstr(t->name, "var");
        for (size_t i = 0; i < t->n; i++)
            p[i] =
                pos ? one + spread * fabsf(net_rand_normal(&rng)) : scale * net_rand_normal(&rng);
    }
    return n;
}

// ---- configs -------------------------------------------------------------------------------

#ifdef DMN_CONFIG_H // for tests that include daemon/config.h (or daemon/daemon.h) first
/* configs/tiny.json (synthetic data, a tiny net) with train.epochs = 6; 0 or -1 (reason on
 * stderr). */
static inline int load_tiny(struct dmn_config *c)
{
    char err[512];
    if (cfg_load_file(c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    c->train.epochs = 6;
    return 0;
}
#endif

#ifdef ZLIB_H // for tests that include <zlib.h> first
/* An EVWZ container (net/export.c) around any payload, laid out here independently of the
 * writer: "EVWZ", u32 version, u32 probe 0x01020304, u32 flags 0, u64 raw length, u64
 * deflated length (deflate level), the deflated raw bytes, CRC-32 of all before it.
 * malloc'ed, *flen bytes; NULL on error. */
static inline unsigned char *evwz_file(const void *raw, size_t raw_len, uint32_t version, int level,
                                       size_t *flen)
{
    uLongf zl = compressBound((uLong)raw_len);
    unsigned char *f = malloc(32 + zl + 4);
    if (!f ||
        compress2(f + 32, &zl, raw_len ? raw : (const Bytef *)"", (uLong)raw_len, level) != Z_OK) {
        free(f);
        return NULL;
    }
    const uint32_t head[3] = {version, 0x01020304u, 0};
    const uint64_t lens[2] = {raw_len, zl};
    memcpy(f, "EVWZ", 4);
    memcpy(f + 4, head, 12);
    memcpy(f + 16, lens, 16);
    uint32_t crc = (uint32_t)crc32(0L, f, (uInt)(32 + zl));
    memcpy(f + 32 + zl, &crc, 4);
    *flen = 32 + zl + 4;
    return f;
}
#endif

// ---- numbers -------------------------------------------------------------------------------

/* Random orthonormal columns: q (rows x cols, row-major), Gram-Schmidt twice in double. */
static inline void rand_orth(double *q, size_t rows, size_t cols, uint64_t *rng)
{
    for (size_t i = 0; i < rows * cols; i++) q[i] = net_rand_normal(rng);
    for (size_t j = 0; j < cols; j++) {
        for (int pass = 0; pass < 2; pass++)
            for (size_t k = 0; k < j; k++) {
                double d = 0.0;
                for (size_t i = 0; i < rows; i++) d += q[i * cols + j] * q[i * cols + k];
                for (size_t i = 0; i < rows; i++) q[i * cols + j] -= d * q[i * cols + k];
            }
        double nn = 0.0;
        for (size_t i = 0; i < rows; i++) nn += q[i * cols + j] * q[i * cols + j];
        nn = sqrt(nn);
        for (size_t i = 0; i < rows; i++) q[i * cols + j] /= nn;
    }
}

/* w (m x L, row-major, float) = U (m x r) diag(s) V (L x r)^T, summed in double. */
static inline void set_usv(float *w, size_t m, size_t L, const double *U, const double *s,
                           const double *V, size_t r)
{
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < L; j++) {
            double a = 0.0;
            for (size_t k = 0; k < r; k++) a += U[i * r + k] * s[k] * V[j * r + k];
            w[i * L + j] = (float)a;
        }
}

#endif
