/* tests/test_compress.c: the compression tools (cli/compress.c, net/compress.c,
 * net/export.c) against the claims of the compression issue.
 *
 * 1. SVD factorization: a rank equal to the full rank reproduces the model's outputs (dense and
 *    conv, with the mean-input bias fix on); the auto-rank rules pick the known rank on a
 *    weight built with a known spectrum, whose singular values svd_layer_spectrum recovers.
 * 2. Thin networks: on a layer whose units are combinations of a known subset, the select
 *    mode (pivoted QR on all readers' activations, the simultaneous selection of SOMP) keeps
 *    exactly that subset and the least-squares rewiring keeps the outputs.
 * 3. Group lasso: net_group_lasso's gradient matches central differences of its penalty;
 *    rows at zero get no gradient; rows driven to zero are found by the spectrum rule and
 *    removed with unchanged outputs; a trainer with optimizer.group_lasso set (also through
 *    cfg_set, the runtime path) ends with smaller unit norms than without.
 * 4. Export: float16 conversion against an independent nearest-even reference (and gcc's
 *    _Float16 when available); k-means export and re-import gives outputs bit-equal to the
 *    quantized in-memory net (pruned, f32 and f16 codebooks, conv and dense); codebook tuning
 *    moves each centroid by the sum of its members' gradients; corrupt and truncated files
 *    (header, CRC, and payload damage behind a valid CRC) are rejected with a clear reason.
 * 5. The four subcommands end to end on a tiny synthetic model, and `evowidth eval` reading
 *    the compressed file. Every test runs single-threaded. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "cli/cli.h"
#include "net/net.h"
#include "svd_adapt/svd_adapt.h"
#include "tests/test.h"
#include "tests/util.h"

#ifndef EW_SOURCE_DIR
#define EW_SOURCE_DIR "."
#endif


// ---- helpers -------------------------------------------------------------------------------

static struct net *mk(size_t c, size_t h, size_t w, size_t classes, const struct net_layer_spec *s,
                      size_t ns, uint64_t seed)
{
    struct net_shape in = {c, h, w, 1};
    return mk_jittered(&in, classes, s, ns, seed, 1.0f, 0.2f, 0.2f);
}

static float *rand_x(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof(float));
    uint64_t r = seed;
    for (size_t i = 0; x && i < n; i++) x[i] = net_rand_normal(&r);
    return x;
}

/* Logits of an eval-mode forward, copied (B x classes). */
static float *logits(struct net *n, const float *x, size_t B)
{
    net_forward(n, x, NULL, B, 0);
    float *z = malloc(B * n->n_classes * sizeof(float));
    if (z) memcpy(z, n->acts[n->n_layers], B * n->n_classes * sizeof(float));
    return z;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

static double max_abs(const float *a, size_t n)
{
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i]));
    return d;
}

/* How far t's logits on x (B samples) are from z0: max |z1 - z0| / (1 + max |z0|). */
static double logits_change(struct net *t, const float *x, size_t B, const float *z0)
{
    const size_t n = B * t->n_classes;
    float *z1 = logits(t, x, B);
    double d = z1 ? max_abs_diff(z0, z1, n) / (1.0 + max_abs(z0, n)) : INFINITY;
    free(z1);
    return d;
}

static void pid_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "/tmp/ew_test_compress_%ld_%s", (long)getpid(), name);
}

// ---- 1. SVD factorization -------------------------------------------------------------------

/* Factorizes layer li at full rank (mean-input bias fix on) and compares the logits. */
static void full_rank_case(int *test__failed, struct net *n, size_t li, const float *x, size_t B)
{
    const size_t K = n->n_classes;
    float *z0 = logits(n, x, B);
    ASSERT(z0);
    float s[512];
    long full = svd_layer_spectrum(n, li, s, 512);
    ASSERT_GT(full, 0);
    // A mean input of ones: its correction term must vanish at full rank.
    const struct net_tensor *w = net_tensor_get(n, li, "w");
    size_t L = w->n / n->layers[li].spec.out;
    float *mean = malloc(L * sizeof(float));
    for (size_t i = 0; i < L; i++) mean[i] = 1.0f;
    struct net *f = NULL;
    char err[256];
    uint64_t rng = 7;
    int rc = svd_set_rank(&f, n, li, (size_t)full, mean, &rng, err, sizeof(err));
    free(mean);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(f->layers[li].spec.rank, (size_t)full);
    float *z1 = logits(f, x, B);
    double d = max_abs_diff(z0, z1, B * K), scale = max_abs(z0, B * K);
    free(z0);
    free(z1);
    net_destroy(f);
    if (!(d <= 1e-5 * (1.0 + scale))) TEST_FAIL_("full rank changed the logits by %g", d);
}

TEST(full_rank_reproduces_outputs)
{
    net_set_threads(1);
    const struct net_layer_spec s[] = {
        S_CONV(6, 3, 1, 1, 1), S_BN(),   S_RELU(),     S_POOL(2, 2), S_FLAT(),
        S_DENSE(12, 1),        S_RELU(), S_DENSE(5, 1)};
    struct net *n = mk(2, 8, 8, 5, s, N_OF(s), 11);
    ASSERT(n);
    const size_t B = 16;
    float *x = rand_x(B * 2 * 8 * 8, 3);
    // conv (6 x 18), the hidden dense (12 x 96) and the classifier (5 x 12).
    full_rank_case(test__failed, n, 0, x, B);
    if (!*test__failed) full_rank_case(test__failed, n, 5, x, B);
    if (!*test__failed) full_rank_case(test__failed, n, 7, x, B);
    free(x);
    net_destroy(n);
}

TEST(auto_rank_picks_known_rank)
{
    net_set_threads(1);
    // A 24 x 40 dense weight W = U diag(s) V^T with a gap after 6 values.
    const size_t m = 24, L = 40, r = 24;
    const struct net_layer_spec sp[] = {S_FLAT(), S_DENSE(m, 1), S_RELU(), S_DENSE(3, 1)};
    struct net *n = mk(1, 5, 8, 3, sp, N_OF(sp), 5); // 40 inputs
    ASSERT(n);
    double sv[24], *U = malloc(m * r * sizeof(double)), *V = malloc(L * r * sizeof(double));
    uint64_t rng = 99;
    rand_orth(U, m, r, &rng);
    rand_orth(V, L, r, &rng);
    for (size_t i = 0; i < r; i++) sv[i] = i < 6 ? 10.0 - (double)i : 0.5 * pow(0.9, (double)i);
    set_usv(net_tensor_data(n, net_tensor_get(n, 1, "w")), m, L, U, sv, V, r);
    free(U);
    free(V);
    float s[64];
    long k = svd_layer_spectrum(n, 1, s, 64);
    ASSERT_EQ(k, 24);
    for (size_t i = 0; i < r; i++) ASSERT_NEAR(s[i], sv[i], 1e-4 * sv[0]);
    struct svd_policy p = {0};
    p.rule = SVD_RULE_GAP; // s_6 / s_7 = 5 / 0.27 = 18.8; every other ratio is below 1.25
    p.gap_threshold = 3.0;
    ASSERT_EQ(svd_rank_rule(&p, s, (size_t)k), 6);
    p.gap_threshold = 30.0; // no gap that large: keep everything
    ASSERT_EQ(svd_rank_rule(&p, s, (size_t)k), 24);
    // Energy: the first 6 hold 355 of the total; any eps between the 6- and 5-value tails.
    double tot = 0, head5 = 0, head6 = 0;
    for (size_t i = 0; i < r; i++) {
        tot += sv[i] * sv[i];
        if (i < 5) head5 += sv[i] * sv[i];
        if (i < 6) head6 += sv[i] * sv[i];
    }
    p.rule = SVD_RULE_ENERGY;
    p.energy_eps = 0.5 * ((1.0 - head6 / tot) + (1.0 - head5 / tot));
    ASSERT_EQ(svd_rank_rule(&p, s, (size_t)k), 6);
    p.rule = SVD_RULE_RELATIVE;
    p.shrink_threshold = 0.2;
    ASSERT_EQ(svd_rank_rule(&p, s, (size_t)k), 6);
    // And the factorization at the chosen rank keeps the head: its spectrum is the first 6.
    struct net *f = NULL;
    char err[256];
    ASSERT_EQ(svd_set_rank(&f, n, 1, 6, NULL, &rng, err, sizeof(err)), 0);
    float s2[64];
    long k2 = svd_layer_spectrum(f, 1, s2, 64);
    ASSERT_EQ(k2, 24);
    for (size_t i = 0; i < 6; i++) ASSERT_NEAR(s2[i], sv[i], 1e-4 * sv[0]);
    ASSERT_FLT_OP(s2[6], <, 1e-4 * sv[0]);
    net_destroy(f);
    net_destroy(n);
}

// ---- 2. thin networks (SOMP-style selection) ------------------------------------------------

TEST(somp_selects_known_subset)
{
    net_set_threads(1);
    // Hidden units h = W x + b (no activation before the reader): units outside S are
    // combinations of at most two S units with coefficients |c| <= 0.45, bias included.
    const size_t IN = 20, m = 14, k = 6, B = 200;
    const size_t S[6] = {1, 4, 5, 8, 11, 13};
    const struct net_layer_spec sp[] = {S_FLAT(), S_DENSE(m, 1), S_DENSE(4, 1)};
    struct net *n = mk(1, 4, 5, 4, sp, N_OF(sp), 21); // 20 inputs
    ASSERT(n);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    float *b = net_tensor_data(n, net_tensor_get(n, 1, "b"));
    uint64_t rng = 1234;
    char in_s[14] = {0};
    for (size_t i = 0; i < k; i++) in_s[S[i]] = 1;
    for (size_t j = 0; j < m; j++) {
        if (in_s[j]) continue;
        size_t a = S[net_rand_below(&rng, k)], c = S[net_rand_below(&rng, k)];
        float ca = 0.45f * (2.0f * net_rand_uniform(&rng) - 1.0f);
        float cc = a == c ? 0.0f : 0.45f * (2.0f * net_rand_uniform(&rng) - 1.0f);
        for (size_t i = 0; i < IN; i++) w[j * IN + i] = ca * w[a * IN + i] + cc * w[c * IN + i];
        b[j] = ca * b[a] + cc * b[c];
    }
    float w_s[6 * 20], b_s[6];
    for (size_t i = 0; i < k; i++) {
        memcpy(w_s + i * IN, w + S[i] * IN, IN * sizeof(float));
        b_s[i] = b[S[i]];
    }
    float *x = rand_x(B * IN, 77);
    float *z0 = logits(n, x, B);
    struct svd_gref g = {SVD_G_UNITS, 1};
    struct net *t = NULL;
    char err[256];
    ASSERT_EQ(svd_shrink(&t, n, &g, k, SVD_MODE_SELECT, x, B, err, sizeof(err)), 0);
    ASSERT_EQ(t->layers[1].spec.out, k);
    // The kept rows are exactly the subset's rows, in their original order.
    const float *tw = net_tensor_data(t, net_tensor_get(t, 1, "w"));
    const float *tb = net_tensor_data(t, net_tensor_get(t, 1, "b"));
    ASSERT_EQ(memcmp(tw, w_s, sizeof(w_s)), 0);
    ASSERT_EQ(memcmp(tb, b_s, sizeof(b_s)), 0);
    // Exact dependence: the rewired reader reproduces the outputs.
    ASSERT_FLT_OP(logits_change(t, x, B, z0), <, 1e-3);
    free(x);
    free(z0);
    net_destroy(t);
    net_destroy(n);
}

// ---- 3. group lasso ---------------------------------------------------------------------------

TEST(group_lasso_gradient_matches_finite_differences)
{
    net_set_threads(1);
    const struct net_layer_spec sp[] = {S_CONV(4, 3, 1, 1, 1), S_RELU(), S_FLAT(),
                                        S_DENSE(6, 1),         S_RELU(), S_DENSE(3, 1)};
    struct net *n = mk(2, 4, 4, 3, sp, N_OF(sp), 31);
    ASSERT(n);
    // One dense row entirely zero: its row group has no gradient (0 is the subgradient taken).
    float *w3 = net_tensor_data(n, net_tensor_get(n, 3, "w"));
    const size_t IN3 = 4 * 16;
    memset(w3 + 2 * IN3, 0, IN3 * sizeof(float));
    const float lam = 0.37f;
    net_zero_grad(n);
    double pen = net_group_lasso(n, lam);
    ASSERT_FLT_OP(pen, >, 0.0);
    float *g = malloc(n->n_params * sizeof(float));
    memcpy(g, n->grads, n->n_params * sizeof(float));
    size_t checked = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena != NET_ARENA_PARAM) continue;
        float *p = n->params + t->off;
        for (size_t i = 0; i < t->n; i++) {
            if (!t->decay) { // biases are not in any group
                ASSERT_EQ(g[t->off + i], 0.0f);
                continue;
            }
            if (p[i] == 0.0f) continue; // the kink: no derivative there
            const float h = 1e-3f, v = p[i];
            p[i] = v + h;
            net_zero_grad(n);
            double up = net_group_lasso(n, lam);
            p[i] = v - h;
            net_zero_grad(n);
            double dn = net_group_lasso(n, lam);
            p[i] = v;
            double fd = (up - dn) / (2.0 * (double)h);
            double an = g[t->off + i];
            if (!(fabs(fd - an) <= 2e-3 * (fabs(fd) + fabs(an)) + 2e-4))
                TEST_FAIL_("%s[%zu]: analytic %.6g vs finite differences %.6g", t->name, i, an, fd);
            checked++;
        }
    }
    ASSERT_GT(checked, 300);
    // The zero row: only its column groups contribute, each lam * w / ||col|| = 0 there.
    for (size_t i = 0; i < IN3; i++)
        ASSERT_EQ(g[net_tensor_get(n, 3, "w")->off + 2 * IN3 + i], 0.0f);
    free(g);
    net_destroy(n);
}

TEST(group_lasso_zero_rows_removed_exactly)
{
    net_set_threads(1);
    // Dense 30 -> 16 (ReLU) -> 5; rows 2, 7, 8, 13 driven to zero (bias kept: the unit is
    // the constant relu(b), which the least-squares rewiring absorbs into the reader's bias).
    const size_t IN = 30, m = 16, B = 256;
    const size_t Z[4] = {2, 7, 8, 13};
    const struct net_layer_spec sp[] = {S_FLAT(), S_DENSE(m, 1), S_RELU(), S_DENSE(5, 1)};
    struct net *n = mk(1, 5, 6, 5, sp, N_OF(sp), 41); // 30 inputs
    ASSERT(n);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    for (size_t i = 0; i < 4; i++) memset(w + Z[i] * IN, 0, IN * sizeof(float));
    float *x = rand_x(B * IN, 5);
    float *z0 = logits(n, x, B);
    // The next adaptation's spectrum shows 4 zero directions; the rule keeps 12.
    struct svd_gref g = {SVD_G_UNITS, 1};
    float s[16];
    long k = svd_spectrum_acts(n, &g, x, B, s, 16);
    ASSERT_EQ(k, 16);
    struct svd_policy p = {0};
    p.rule = SVD_RULE_RELATIVE;
    p.shrink_threshold = 1e-3;
    size_t keep = svd_rank_rule(&p, s, (size_t)k);
    ASSERT_EQ(keep, 12);
    struct net *t = NULL;
    char err[256];
    ASSERT_EQ(svd_shrink(&t, n, &g, keep, SVD_MODE_SELECT, x, B, err, sizeof(err)), 0);
    // The zero rows are the ones removed: every kept row is non-zero and matches a live row.
    const float *tw = net_tensor_data(t, net_tensor_get(t, 1, "w"));
    for (size_t j = 0, live = 0; j < m; j++) {
        int zero = j == 2 || j == 7 || j == 8 || j == 13;
        if (zero) continue;
        ASSERT_EQ(memcmp(tw + live * IN, w + j * IN, IN * sizeof(float)), 0);
        live++;
    }
    ASSERT_FLT_OP(logits_change(t, x, B, z0), <, 1e-4);
    free(x);
    free(z0);
    net_destroy(t);
    net_destroy(n);
}

/* Sum over dense / conv layers of the row norms of a trainer's net. */
static double sum_row_norms(const struct net *n)
{
    double tot = 0;
    for (size_t li = 0; li < n->n_layers; li++) {
        const struct net_tensor *t = net_tensor_get(n, li, "w");
        if (!t || !t->decay) continue;
        const float *w = net_tensor_data(n, t);
        size_t rows = t->dims[0], len = t->n / rows;
        for (size_t r = 0; r < rows; r++) {
            double s = 0;
            for (size_t i = 0; i < len; i++) s += (double)w[r * len + i] * w[r * len + i];
            tot += sqrt(s);
        }
    }
    return tot;
}

TEST(group_lasso_trainer_shrinks_units)
{
    net_set_threads(1);
    double norms[2];
    for (int with = 0; with < 2; with++) {
        struct dmn_config cfg;
        char err[512];
        ASSERT_EQ(cfg_load_file(&cfg, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof(err)), 0);
        cfg.adapt.enabled = 0;
        cfg.train.threads = 1;
        cfg.train.epochs = 20; // a constant rate that outlasts the 100 steps below
        cfg.schedule.type = NET_SCHED_CONST;
        struct dmn_trainer *t = NULL;
        ASSERT_EQ(dmn_trainer_create(&t, &cfg, err, sizeof(err)), 0);
        t->log = NULL;
        for (int s = 0; s < 40; s++) ASSERT_EQ(dmn_trainer_step(t), 0);
        // Switched on at runtime, as PATCH /v1/train {"group_lasso": ...} does.
        if (with)
            ASSERT_EQ(cfg_set(&t->cfg, "train.group_lasso", "0.02", CFG_RUNTIME, err, sizeof(err)),
                      0);
        ASSERT_NEAR(t->cfg.optimizer.group_lasso, with ? 0.02 : 0.0, 1e-12);
        for (int s = 0; s < 60; s++) ASSERT_EQ(dmn_trainer_step(t), 0);
        norms[with] = sum_row_norms(t->net);
        dmn_trainer_destroy(t);
    }
    printf("    sum of unit norms: %.4f without, %.4f with group lasso\n", norms[0], norms[1]);
    ASSERT_FLT_OP(norms[1], <, 0.9 * norms[0]);
}

// ---- 4. export ------------------------------------------------------------------------------

/* Nearest half by search over every finite half, ties to the even mantissa (independent of
 * the bit manipulation under test). */
static uint16_t ref_f16(float f, const double *pos, size_t npos)
{
    if (isnan(f)) return 0x7e00;
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a >= 65520.0) return sign | 0x7c00;
    size_t lo = 0, hi = npos - 1; // pos[i] is the value of half bits i, ascending
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (pos[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - pos[lo], dh = pos[hi] - a;
    size_t pick = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
    return (uint16_t)(sign | pick);
}

TEST(f16_round_to_nearest_even)
{
    // Every half converts to float and back to itself (nans stay nans).
    for (uint32_t h = 0; h < 65536; h++) {
        float f = net_f32_from_f16((uint16_t)h);
        if (((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff)) {
            ASSERT(isnan(f));
            ASSERT(isnan(net_f32_from_f16(net_f16_from_f32(f))));
            continue;
        }
        ASSERT_EQ(net_f16_from_f32(f), h);
    }
    double *pos = malloc(0x7c00 * sizeof(double));
    for (uint32_t h = 0; h < 0x7c00; h++) pos[h] = (double)net_f32_from_f16((uint16_t)h);
    ASSERT_NEAR(pos[1], ldexp(1.0, -24), 0); // smallest subnormal
    ASSERT_NEAR(pos[0x7bff], 65504.0, 0);    // largest finite
    ASSERT_NEAR(pos[0x3c00], 1.0, 0);
    uint64_t rng = 5;
    const float edge[] = {0.0f,          -0.0f,         1.0f,           65504.0f,
                          65519.99f,     65520.0f,      1e9f,           -1e9f,
                          5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f,  6.1035156e-5f,
                          6.1035152e-5f, 1.0009766f,    1.00048828125f, 1.00146484375f,
                          -3.14159f,     INFINITY,      -INFINITY,      1e-30f};
    for (size_t i = 0; i < N_OF(edge); i++) {
        uint16_t got = net_f16_from_f32(edge[i]);
        if (isinf(edge[i])) {
            ASSERT_EQ(got, edge[i] > 0 ? 0x7c00 : 0xfc00);
            continue;
        }
        if (got != ref_f16(edge[i], pos, 0x7c00))
            TEST_FAIL_("f16(%.9g) = 0x%04x, reference 0x%04x", edge[i], got,
                       ref_f16(edge[i], pos, 0x7c00));
    }
    for (int i = 0; i < 200000; i++) {
        // Random bit patterns over the whole half range and just outside it.
        uint32_t bits = (uint32_t)net_rand_u64(&rng);
        uint32_t e = 100 + (uint32_t)net_rand_below(&rng, 45); // 2^-27 .. 2^17
        bits = (bits & 0x807fffffu) | (e << 23);
        float f;
        memcpy(&f, &bits, 4);
        uint16_t got = net_f16_from_f32(f), want = ref_f16(f, pos, 0x7c00);
        if (got != want) TEST_FAIL_("f16(%.9g) = 0x%04x, reference 0x%04x", f, got, want);
#ifdef __FLT16_MAX__
        __extension__ _Float16 hf = (_Float16)f; // gcc >= 12 on x86-64
        uint16_t hb;
        memcpy(&hb, &hf, 2);
        if (got != hb) TEST_FAIL_("f16(%.9g) = 0x%04x, _Float16 0x%04x", f, got, hb);
#endif
    }
    free(pos);
}

static const struct net_layer_spec XNET[] = {
    S_CONV(8, 3, 1, 1, 1), S_BN(),   S_RELU(),     S_POOL(2, 2), S_FLAT(),
    S_DENSE(40, 1),        S_RELU(), S_DENSE(4, 1)};

/* Distinct non-zero values of a tensor (up to cap). */
static size_t n_distinct(const float *w, size_t n, size_t cap)
{
    float seen[64];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] == 0.0f) continue;
        size_t j = 0;
        while (j < k && seen[j] != w[i]) j++;
        if (j == k) {
            if (k == cap || k == 64) return cap + 1;
            seen[k++] = w[i];
        }
    }
    return k;
}

static void kmeans_roundtrip_case(int *test__failed, const struct net_export_opts *o)
{
    struct net *n = mk(1, 8, 8, 4, XNET, N_OF(XNET), 51);
    ASSERT(n);
    const size_t B = 32;
    float *x = rand_x(B * 64, 9);
    struct net_xplan *p = NULL;
    char err[512], path[256];
    ASSERT_EQ(net_xplan_create(&p, n, o, err, sizeof(err)), 0);
    ASSERT_EQ(net_xplan_cluster(p, n), 0);
    // The quantized net: each weight tensor holds at most K distinct non-zero values, and
    // the pruned fraction of all weights is zero.
    size_t total = 0, zeros = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (!t->decay) continue;
        const float *w = net_tensor_data(n, t);
        const size_t K = t->nd == 4 && o->kmeans_conv ? o->kmeans_conv : o->kmeans;
        for (size_t i = 0; i < t->n; i++) zeros += w[i] == 0.0f;
        total += t->n;
        if (K && t->n > 2 * K) ASSERT_LE(n_distinct(w, t->n, K), K);
        if (o->fp16)
            for (size_t i = 0; i < t->n; i++)
                ASSERT_EQ(net_f32_from_f16(net_f16_from_f32(w[i])), w[i]);
    }
    ASSERT_GE(zeros, (size_t)(o->prune * (double)total));
    float *zq = logits(n, x, B);
    pid_path(path, sizeof(path), "rt.evwz");
    const char conf[] = "{\"hello\": 1}";
    struct ckpt_blob blob = {"CONF", (void *)conf, sizeof(conf) - 1};
    struct net_export_sizes sz;
    ASSERT_EQ(net_export_save(path, n, p, &blob, 1, &sz, err, sizeof(err)), 0);
    ASSERT_GT(sz.file, 36);
    struct net *r = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    int rc = net_export_load(path, &r, &bl, &nbl, err, sizeof(err));
    if (rc < 0) TEST_FAIL_("reload: %s", err);
    // Bit-equal parameters and state, hence bit-equal outputs.
    ASSERT_EQ(r->n_params, n->n_params);
    ASSERT_EQ(memcmp(r->params, n->params, n->n_params * sizeof(float)), 0);
    ASSERT_EQ(memcmp(r->state, n->state, n->n_state * sizeof(float)), 0);
    float *zr = logits(r, x, B);
    ASSERT_EQ(memcmp(zq, zr, B * 4 * sizeof(float)), 0);
    ASSERT_EQ(nbl, 1);
    ASSERT_STR_EQ((const char *)bl[0].data, conf);
    // net_load_any reads both formats.
    struct net *a = NULL;
    int has_opt = 1;
    ASSERT_EQ(net_load_any(path, &a, NULL, &has_opt, NULL, NULL, err, sizeof(err)), 0);
    ASSERT_EQ(has_opt, 0);
    ASSERT_EQ(memcmp(a->params, n->params, n->n_params * sizeof(float)), 0);
    net_destroy(a);
    unlink(path);
    ckpt_blobs_free(bl, nbl);
    free(zq);
    free(zr);
    free(x);
    net_destroy(r);
    net_xplan_destroy(p);
    net_destroy(n);
}

TEST(kmeans_export_reimport_equals_quantized)
{
    net_set_threads(1);
    const struct net_export_opts cases[] = {
        {.kmeans = 8},                                  // dense codes, no pruning
        {.kmeans = 16, .kmeans_conv = 4, .prune = 0.6}, // pruned: sparse or zero-code
        {.kmeans = 5, .prune = 0.2, .fp16 = 1},         // f16 codebooks, 3-bit codes
        {.kmeans = 2, .prune = 0.95},                   // 1-bit codes and a bitmap
        {.fp16 = 1, .prune = 0.5},                      // raw f16 values, pruned
        {0},                                            // plain float32
    };
    for (size_t i = 0; i < N_OF(cases) && !*test__failed; i++) {
        kmeans_roundtrip_case(test__failed, &cases[i]);
        if (*test__failed) printf("    in case %zu\n", i);
    }
}

/* One thread, XNET from seed, and its plan of k-means K after pruning half the weights,
 * clustered; NULL (reason printed) on failure. */
static struct net_xplan *clustered_xnet(struct net **n, uint64_t seed, size_t K)
{
    net_set_threads(1);
    struct net_export_opts o = {.kmeans = K, .prune = 0.5};
    struct net_xplan *p = NULL;
    char err[256] = "";
    if (!(*n = mk(1, 8, 8, 4, XNET, N_OF(XNET), seed)) ||
        net_xplan_create(&p, *n, &o, err, sizeof(err)) < 0 || net_xplan_cluster(p, *n) < 0) {
        printf("    plan: %s\n", err);
        net_xplan_destroy(p);
        return NULL;
    }
    return p;
}

TEST(kmeans_tuning_sums_member_gradients)
{
    struct net *n = NULL;
    struct net_xplan *p = clustered_xnet(&n, 61, 4);
    ASSERT(p);
    const size_t B = 16;
    float *x = rand_x(B * 64, 4);
    uint8_t y[16];
    for (size_t i = 0; i < B; i++) y[i] = (uint8_t)(i % 4);
    const struct net_tensor *t = net_tensor_get(n, 5, "w"); // dense 40 x 128
    float *w = net_tensor_data(n, t);
    float *before = malloc(t->n * sizeof(float));
    memcpy(before, w, t->n * sizeof(float));
    net_zero_grad(n);
    net_forward(n, x, y, B, 1);
    net_backward(n, y, B);
    const float *g = n->grads + t->off;
    // Expected new value of every member of a centroid: c - lr * sum of its members' grads.
    const float lr = 0.01f;
    float cval[4] = {0}, gsum_f[4] = {0};
    double gsum[4] = {0};
    size_t nc = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (before[i] == 0.0f) continue;
        size_t j = 0;
        while (j < nc && cval[j] != before[i]) j++;
        if (j == nc) cval[nc++] = before[i];
        gsum[j] += g[i];
    }
    ASSERT_EQ(nc, 4);
    for (size_t j = 0; j < 4; j++) gsum_f[j] = (float)gsum[j];
    net_xplan_tune(p, n, lr);
    for (size_t i = 0; i < t->n; i++) {
        if (before[i] == 0.0f) {
            ASSERT_EQ(w[i], 0.0f); // pruned stays pruned
            continue;
        }
        size_t j = 0;
        while (cval[j] != before[i]) j++;
        ASSERT_NEAR(w[i], cval[j] - lr * gsum_f[j], 1e-6);
    }
    free(before);
    free(x);
    net_xplan_destroy(p);
    net_destroy(n);
}

// Writing a container around any payload, to damage the payload behind a valid CRC.
static int write_container(const char *path, const unsigned char *raw, size_t raw_len,
                           uint32_t version)
{
    size_t flen = 0;
    unsigned char *f = evwz_file(raw, raw_len, version, 6, &flen);
    int rc = f ? write_all(path, f, flen) : -1;
    free(f);
    return rc;
}

/* Loading must fail with -EINVAL and a reason naming the file and containing `why`. */
static void expect_reject(int *test__failed, const char *path, const char *why)
{
    struct net *n = NULL;
    char err[512] = "";
    int rc = net_export_load(path, &n, NULL, NULL, err, sizeof(err));
    if (rc == 0) {
        net_destroy(n);
        TEST_FAIL_("a damaged file loaded (expected \"%s\")", why);
    }
    ASSERT(n == NULL);
    ASSERT_EQ(rc, -EINVAL);
    ASSERT_CONTAINS(err, path);
    if (why) ASSERT_CONTAINS(err, why);
}

TEST(export_rejects_corrupt_and_truncated)
{
    struct net *n = NULL;
    struct net_xplan *p = clustered_xnet(&n, 71, 16);
    ASSERT(p);
    char err[512], path[256], bad[256];
    pid_path(path, sizeof(path), "good.evwz");
    pid_path(bad, sizeof(bad), "bad.evwz");
    ASSERT_EQ(net_export_save(path, n, p, NULL, 0, NULL, err, sizeof(err)), 0);
    size_t len;
    unsigned char *f = read_all(path, &len);
    ASSERT(f);
    // Truncations anywhere.
    const size_t cuts[] = {0, 2, 4, 20, 35, 36, 37, len / 2, len - 5, len - 1};
    for (size_t i = 0; i < N_OF(cuts); i++) {
        ASSERT_EQ(write_all(bad, f, cuts[i]), 0);
        expect_reject(test__failed, bad, cuts[i] < 4 ? "bad magic" : "truncated");
        if (*test__failed) {
            printf("    truncated to %zu of %zu bytes\n", cuts[i], len);
            return;
        }
    }
    // Trailing garbage.
    unsigned char *g = malloc(len + 3);
    memcpy(g, f, len);
    memcpy(g + len, "xyz", 3);
    ASSERT_EQ(write_all(bad, g, len + 3), 0);
    expect_reject(test__failed, bad, "trailing");
    free(g);
    // Every single-byte flip is caught (magic, version, probe, lengths, CRC, data).
    for (size_t pos = 0; pos < len; pos += (pos < 40 ? 1 : 97)) {
        f[pos] ^= 0x5a;
        ASSERT_EQ(write_all(bad, f, len), 0);
        expect_reject(test__failed, bad, NULL);
        f[pos] ^= 0x5a;
        if (*test__failed) {
            printf("    flipped byte %zu of %zu\n", pos, len);
            return;
        }
    }
    // Payload damage behind a valid CRC: reach the reader's own checks.
    unsigned char *raw = malloc(2u << 20);
    uLongf rl = 2u << 20;
    uint64_t zl;
    memcpy(&zl, f + 24, 8);
    ASSERT_EQ(uncompress(raw, &rl, f + 32, (uLong)zl), Z_OK);
    ASSERT_EQ(write_container(bad, raw, rl, 2), 0);
    expect_reject(test__failed, bad, "unsupported format version 2");
    ASSERT_EQ(write_container(bad, raw, rl, 1), 0); // the same payload re-wrapped loads
    struct net *ok = NULL;
    ASSERT_EQ(net_export_load(bad, &ok, NULL, NULL, err, sizeof(err)), 0);
    ASSERT_EQ(memcmp(ok->params, n->params, n->n_params * sizeof(float)), 0);
    net_destroy(ok);
    ASSERT_EQ(write_container(bad, raw, rl - 7, 1), 0);
    expect_reject(test__failed, bad, NULL);
    // Find the TENS chunk; its first record (conv1.w, k-means) has a u32 codebook length at
    // +4..+8 of the record: shrinking the codebook puts codes out of range.
    size_t at = 0;
    while (at + 4 < rl && memcmp(raw + at, "TENS", 4) != 0) at++;
    ASSERT_LT(at + 4, rl);
    unsigned char *rec = raw + at + 12 + 4; // tag, u64 length, u32 count
    ASSERT_EQ(rec[0], 2);                   // k-means, f32 codebook
    uint32_t k0;
    memcpy(&k0, rec + 4, 4);
    ASSERT_GE(k0, 3);
    uint32_t k1 = 1;
    memcpy(rec + 4, &k1, 4);
    ASSERT_EQ(write_container(bad, raw, rl, 1), 0);
    struct net *nn = NULL;
    ASSERT_EQ(net_export_load(bad, &nn, NULL, NULL, err, sizeof(err)), -EINVAL);
    if (!strstr(err, "out of range") && !strstr(err, "bitmap") && !strstr(err, "truncated") &&
        !strstr(err, "malformed"))
        TEST_FAIL_("unexpected reason for a shrunk codebook: %s", err);
    memcpy(rec + 4, &k0, 4);
    rec[0] = 9; // unknown encoding
    ASSERT_EQ(write_container(bad, raw, rl, 1), 0);
    expect_reject(test__failed, bad, "bad record header");
    rec[0] = 2;
    // Random damage behind a valid CRC: never a crash (run under ASan), and either a clean
    // error or a net of the right size.
    // (Damage is kept out of ARCH, whose layer sizes would make net_create allocate whatever
    // they say before the arena sizes are compared: the CRC is what guards those.)
    uint64_t rng = 3;
    unsigned char *m = malloc(rl);
    for (int it = 0; it < 300; it++) {
        memcpy(m, raw, rl);
        int nflips = 1 + (int)net_rand_below(&rng, 4);
        for (int j = 0; j < nflips; j++)
            m[at + net_rand_below(&rng, rl - at)] ^=
                (unsigned char)(1u + net_rand_below(&rng, 255));
        ASSERT_EQ(write_container(bad, m, rl, 1), 0);
        struct net *q = NULL;
        err[0] = 0;
        int rc = net_export_load(bad, &q, NULL, NULL, err, sizeof(err));
        if (rc == 0) {
            ASSERT_EQ(q->n_params, n->n_params);
            net_destroy(q);
        } else {
            ASSERT_EQ(rc, -EINVAL);
            ASSERT_CONTAINS(err, bad);
        }
    }
    free(m);
    // Missing file, and a checkpoint given to the export reader.
    unlink(bad);
    struct net *q = NULL;
    ASSERT_EQ(net_export_load(bad, &q, NULL, NULL, err, sizeof(err)), -ENOENT);
    ASSERT_CONTAINS(err, "cannot open");
    ASSERT_EQ(ckpt_save(bad, n, NULL, NULL, 0, err, sizeof(err)), 0);
    expect_reject(test__failed, bad, "bad magic");
    ASSERT_EQ(net_load_any(bad, &q, NULL, NULL, NULL, NULL, err, sizeof(err)), 0); // dispatch
    net_destroy(q);
    unlink(bad);
    unlink(path);
    free(raw);
    free(f);
    net_xplan_destroy(p);
    net_destroy(n);
}

// ---- 5. the subcommands ---------------------------------------------------------------------

static int run(int (*fn)(int, char **), const char *const *args, int argc)
{
    char *argv[32];
    for (int i = 0; i < argc; i++) argv[i] = (char *)args[i];
    argv[argc] = NULL;
    fflush(stdout);
    int rc = fn(argc, argv);
    fflush(stdout);
    return rc;
}

TEST(slow_subcommands_on_a_tiny_model)
{
    net_set_threads(1);
    struct dmn_config cfg;
    char err[512], model[256], out[256], xz[256], csv[256];
    ASSERT_EQ(cfg_load_file(&cfg, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof(err)), 0);
    cfg.adapt.enabled = 0;
    cfg.train.threads = 1;
    struct dmn_trainer *t = NULL;
    ASSERT_EQ(dmn_trainer_create(&t, &cfg, err, sizeof(err)), 0);
    t->log = NULL;
    while (!dmn_trainer_done(t)) ASSERT_EQ(dmn_trainer_step(t), 0);
    pid_path(model, sizeof(model), "tiny.evow");
    pid_path(out, sizeof(out), "tiny_out.evow");
    pid_path(xz, sizeof(xz), "tiny.evwz");
    pid_path(csv, sizeof(csv), "sweep.csv");
    ASSERT_EQ(dmn_trainer_save(t, model, err, sizeof(err)), 0);
    const size_t p0 = t->net->n_params;
    dmn_trainer_destroy(t);

    // compress: dense1 (16 x 64) to rank 4, fine-tuned; the result is a run checkpoint.
    const char *a1[] = {"compress",         model, "--layer",   "dense1", "--rank", "4",
                        "--finetune-steps", "5",   "--threads", "1",      "-o",     out};
    ASSERT_EQ(run(dmn_cmd_compress, a1, (int)N_OF(a1)), 0);
    struct dmn_trainer *r = NULL;
    ASSERT_EQ(dmn_trainer_load(&r, out, err, sizeof(err)), 0);
    long li = net_layer_find(r->net, "dense1");
    ASSERT_GE(li, 0);
    ASSERT_EQ(r->net->layers[li].spec.rank, 4);
    ASSERT_LT(r->net->n_params, p0);
    ASSERT_EQ(r->cfg.adapt.enabled, cfg.adapt.enabled); // the model's own config is kept
    dmn_trainer_destroy(r);
    const char *a1b[] = {"compress", model,      "--rank", "auto", "--gap",
                         "1.5",      "--energy", "0.9",    "-o",   out};
    ASSERT_EQ(run(dmn_cmd_compress, a1b, (int)N_OF(a1b)), 0);
    const char *a1c[] = {"compress", model, "--layer", "nosuch", "--rank", "2", "-o", out};
    ASSERT_EQ(run(dmn_cmd_compress, a1c, (int)N_OF(a1c)), 1);
    const char *a1d[] = {"compress", model, "--rank", "x", "-o", out};
    ASSERT_EQ(run(dmn_cmd_compress, a1d, (int)N_OF(a1d)), 2);

    // sweep: a CSV with a header, the uncompressed row and one row per rank.
    const char *a2[] = {"sweep",   model,     "--layer",          "dense1",
                        "--ranks", "2..16:7", "--finetune-steps", "3",
                        "--csv",   csv};
    ASSERT_EQ(run(dmn_cmd_sweep, a2, (int)N_OF(a2)), 0);
    size_t clen;
    unsigned char *c = read_all(csv, &clen);
    ASSERT(c);
    c[clen] = 0;
    size_t lines = 0;
    for (size_t i = 0; i < clen; i++) lines += c[i] == '\n';
    ASSERT_EQ(lines, 1 + 1 + 3); // ranks 16, 9, 2
    ASSERT_CONTAINS((char *)c, "uncompressed,0,");
    ASSERT_CONTAINS((char *)c, "\n16,16,");
    ASSERT_CONTAINS((char *)c, "accuracy_ft");
    free(c);
    unlink(csv);

    // thin: every group to half; then by name.
    const char *a3[] = {"thin", model, "--ratio", "0.5", "--finetune-steps", "5", "-o", out};
    ASSERT_EQ(run(dmn_cmd_thin, a3, (int)N_OF(a3)), 0);
    ASSERT_EQ(dmn_trainer_load(&r, out, err, sizeof(err)), 0);
    ASSERT_EQ(r->net->layers[0].spec.out, 2); // conv1 4 -> 2
    ASSERT_EQ(r->net->layers[net_layer_find(r->net, "dense1")].spec.out, 8);
    dmn_trainer_destroy(r);
    const char *a3b[] = {"thin", model, "--widths", "dense1=5", "-o", out};
    ASSERT_EQ(run(dmn_cmd_thin, a3b, (int)N_OF(a3b)), 0);
    const char *a3c[] = {"thin", model, "--widths", "bogus=5", "-o", out};
    ASSERT_EQ(run(dmn_cmd_thin, a3c, (int)N_OF(a3c)), 1);

    // export, then eval reads the compressed file directly.
    const char *a4[] = {"export",           model, "--kmeans", "8", "--prune", "0.3", "--fp16",
                        "--finetune-steps", "5",   "-o",       xz};
    ASSERT_EQ(run(dmn_cmd_export, a4, (int)N_OF(a4)), 0);
    const char *a5[] = {"eval", xz};
    ASSERT_EQ(run(dmn_cmd_eval, a5, (int)N_OF(a5)), 0);
    const char *a6[] = {"layers", xz};
    ASSERT_EQ(run(dmn_cmd_layers, a6, (int)N_OF(a6)), 0);
    // A damaged compressed file: eval fails cleanly.
    size_t len;
    unsigned char *f = read_all(xz, &len);
    ASSERT(f);
    ASSERT_EQ(write_all(xz, f, len - 9), 0);
    ASSERT_EQ(run(dmn_cmd_eval, a5, (int)N_OF(a5)), 1);
    free(f);
    // export from the compressed (factorized) model works too.
    ASSERT_EQ(run(dmn_cmd_compress, a1, (int)N_OF(a1)), 0);
    const char *a7[] = {"export", out, "--kmeans", "4", "-o", xz};
    ASSERT_EQ(run(dmn_cmd_export, a7, (int)N_OF(a7)), 0);
    unlink(model);
    unlink(out);
    unlink(xz);
}

TEST_MAIN()
