/* tests/test_net.c: numerical tests of the training engine (net/).
 *
 * Gradient checks: every layer kind is placed after a trainable layer (so its input
 * gradient dinp is exercised through that layer's weight gradient) and before a small dense
 * head; net_backward's gradient is compared with central differences of the mean
 * cross-entropy, which the check recomputes in double from the float logits so that the loss
 * itself is not rounded to float (step h = 1e-3). The verdict is per tensor,
 *     ||g_num - g_an||_2 <= 1e-2 (||g_num||_2 + ||g_an||_2) + 2e-4 sqrt(entries)
 * (the second term is the float32 forward's noise, which only matters for tensors whose
 * gradient is ~0, such as a bias in front of a BN), plus the largest entry of every tensor
 * and the five largest of the net within 2%. Entries whose perturbation crosses a ReLU or
 * max-pool kink are detected without looking at the analytic gradient (the one-sided slopes
 * f(p+h)-f(p) and f(p)-f(p-h) disagree by more than 1%) and left out; more than 10% of a
 * net's entries, or half of a tensor's, on kinks fails the check. Each check also proves it
 * has teeth: flipping the sign of a tensor's largest analytic entry, or scaling the tensor's
 * gradient by 0.9 (a "missing term"), must push that tensor over the tolerance, otherwise
 * the check itself fails. Against deliberately broken copies of net/ (a dropped BN term, a
 * 3% error in conv's dinp, a missing identity-shortcut gradient, ...) these checks fail.
 *
 * Forward golden values come from scripts/make_golden.py (numpy, float64) in tests/golden/;
 * the deterministic input and parameter fill is documented there and reproduced here.
 * The rest: BN running statistics and eval mode, net_create's validation messages, parameter
 * and FLOP counts (including the torch reference architectures), optimizers and schedules
 * against hand-computed values, the RNG, net_evaluate's metrics on a crafted net, and a
 * training run on synthetic data. Tests use 2 threads (the training run 1, see there). */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"
#include "net/net_internal.h"
#include "tests/test.h"
#include "tests/util.h"

#ifndef EW_SOURCE_DIR
#define EW_SOURCE_DIR "."
#endif

#define T_THREADS 2
#define T_PI 3.14159265358979323846


static struct net_shape shp(size_t c, size_t h, size_t w)
{
    return (struct net_shape){c, h, w, 1};
}

static size_t numel(const struct net_shape *s)
{
    return s->c * s->h * s->w;
}

/* Builds a net or prints why not; NULL on failure. */
static struct net *mk(const struct net_shape *in, size_t classes, const struct net_layer_spec *s,
                      size_t ns)
{
    struct net *n = NULL;
    char err[256] = "";
    int rc = net_create(&n, in, classes, s, ns, err, sizeof err);
    if (rc < 0) {
        printf("    net_create failed (%d): %s\n", rc, err);
        return NULL;
    }
    return n;
}

/* After net_init_params: biases and BN betas ~ N(0, 0.3), BN gammas ~ 1 + N(0, 0.3), so no
 * gradient term can hide behind a zero bias or a unit gamma. */
static void jitter_params(struct net *n, uint64_t *rng)
{
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena != NET_ARENA_PARAM || t->decay) continue;
        float *p = n->params + t->off;
        float base = strstr(t->name, "gamma") ? 1.0f : 0.0f;
        for (size_t i = 0; i < t->n; i++) p[i] = base + 0.3f * net_rand_normal(rng);
    }
}

/* mk, then net_init_params and jitter_params from *rng (which goes on for the caller). */
static struct net *mk_init(const struct net_shape *in, size_t classes,
                           const struct net_layer_spec *s, size_t ns, uint64_t *rng)
{
    struct net *n = mk(in, classes, s, ns);
    if (!n) return NULL;
    net_init_params(n, rng);
    jitter_params(n, rng);
    return n;
}

/* Mean cross-entropy of the last forward, in double from the float logits (B, K). */
static double ce_loss(const struct net *n, const uint8_t *y, size_t B)
{
    const size_t K = n->n_classes;
    const float *z = n->acts[n->n_layers];
    double L = 0.0;
    for (size_t b = 0; b < B; b++) {
        const float *zb = z + b * K;
        double mx = zb[0], s = 0.0;
        for (size_t k = 1; k < K; k++) mx = zb[k] > mx ? zb[k] : mx;
        for (size_t k = 0; k < K; k++) s += exp((double)zb[k] - mx);
        L += mx + log(s) - (double)zb[y[b]];
    }
    return L / (double)B;
}

// ---- gradient check ------------------------------------------------------------------------

#define GC_H 1e-3f            // central-difference step
#define GC_TOL 1e-2           // per-tensor relative error bound
#define GC_ENTRY_TOL 0.02     // largest entries: relative bound
#define GC_NOISE 2e-4         // absolute noise allowance per entry (float32 forward / 2h)
#define GC_MAX_PER_TENSOR 160 // larger tensors are checked at evenly strided entries
#define GC_KINK_REL 0.01      // one-sided slopes this far apart: a kink lies within +-h
#define GC_KINK_ABS 1e-3

static double gc_loss(struct net *n, const float *x, const uint8_t *y, size_t B)
{
    net_forward(n, x, y, B, 1);
    return ce_loss(n, y, B);
}

/* Compares net_backward with central differences for every trainable tensor. Prints one
 * summary line (and details on failure); returns 0 when every check holds. */
static int gradcheck(struct net *n, const float *x, const uint8_t *y, size_t B, const char *label)
{
    const size_t P = n->n_params;
    float *an = malloc(P * sizeof *an);
    double *num = calloc(P, sizeof *num);
    unsigned char *chk = calloc(P, 1);
    int bad = 0;
    if (!an || !num || !chk) {
        free(an), free(num), free(chk);
        return -1;
    }
    net_zero_grad(n);
    net_forward(n, x, y, B, 1);
    net_backward(n, y, B);
    memcpy(an, n->grads, P * sizeof *an);
    const double l0 = gc_loss(n, x, y, B);
    size_t n_kink = 0, n_chk = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena != NET_ARENA_PARAM) continue;
        size_t step = (t->n + GC_MAX_PER_TENSOR - 1) / GC_MAX_PER_TENSOR;
        for (size_t i = 0; i < t->n; i += step) {
            size_t k = t->off + i;
            float old = n->params[k], hi = old + GC_H, lo = old - GC_H;
            n->params[k] = hi;
            double lp = gc_loss(n, x, y, B);
            n->params[k] = lo;
            double lm = gc_loss(n, x, y, B);
            n->params[k] = old;
            num[k] = (lp - lm) / ((double)hi - (double)lo);
            double dp = (lp - l0) / ((double)hi - old), dm = (l0 - lm) / (old - (double)lo);
            int kink = fabs(dp - dm) > GC_KINK_REL * (fabs(dp) + fabs(dm)) + GC_KINK_ABS;
            chk[k] = kink ? 0 : 1;
            n_kink += (size_t)kink;
            n_chk++;
        }
    }

    double worst = 0.0, all_d = 0.0, all_n = 0.0, all_a = 0.0;
    size_t all_cnt = 0;
    const char *worst_name = "-";
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena != NET_ARENA_PARAM) continue;
        double d2 = 0.0, n2 = 0.0, a2 = 0.0, s2 = 0.0;
        size_t cnt = 0, tried = 0, jmax = t->off, jnum = t->off;
        size_t step = (t->n + GC_MAX_PER_TENSOR - 1) / GC_MAX_PER_TENSOR;
        for (size_t k = t->off; k < t->off + t->n; k += step) {
            tried++;
            if (!chk[k]) continue;
            double dn = num[k], da = an[k];
            d2 += (dn - da) * (dn - da);
            s2 += (dn - 0.9 * da) * (dn - 0.9 * da);
            n2 += dn * dn;
            a2 += da * da;
            cnt++;
            if (fabs(da) > fabs(an[jmax]) || !chk[jmax]) jmax = k;
            if (fabs(dn) > fabs(num[jnum]) || !chk[jnum]) jnum = k;
        }
        all_d += d2, all_n += n2, all_a += a2, all_cnt += cnt;
        // Pass: ||num - an|| <= tol * (||num|| + ||an||) + the float noise allowance.
        double den = sqrt(n2) + sqrt(a2), allow = GC_NOISE * sqrt((double)cnt);
        double rel = sqrt(d2) / (den + 1e-30);
        int fail = !(sqrt(d2) <= GC_TOL * den + allow);
        if (fail || (den > allow && rel > worst)) worst = rel, worst_name = t->name;
        if (2 * cnt < tried) {
            printf("    %s: %s: %zu of %zu entries sit on kinks\n", label, t->name, tried - cnt,
                   tried);
            bad = 1;
        }
        if (fail) {
            printf("    %s: %s relative error %.3e > %.0e (|num| %.3e, |an| %.3e)\n", label,
                   t->name, rel, GC_TOL, sqrt(n2), sqrt(a2));
            for (size_t k = t->off, shown = 0; k < t->off + t->n && shown < 8; k++)
                if (chk[k]) {
                    printf("      [%zu] num %+.6e an %+.6e\n", k - t->off, num[k], (double)an[k]);
                    shown++;
                }
            bad = 1;
        }
        if (cnt && sqrt(a2) > 20.0 * allow) {
            // Teeth: a sign error in one entry or a 10% missing term must be caught.
            double e = num[jmax] - an[jmax], f = num[jmax] + an[jmax];
            double flip = sqrt(d2 - e * e + f * f), scale = sqrt(s2);
            if (!(flip > GC_TOL * den + allow) || !(scale > GC_TOL * den + allow)) {
                printf("    %s: %s: check too weak (sign flip -> %.2e, x0.9 -> %.2e)\n", label,
                       t->name, flip / den, scale / den);
                bad = 1;
            }
            // The tensor's largest entry on its own.
            if (fabs(an[jnum] - num[jnum]) > GC_ENTRY_TOL * fabs(num[jnum]) + GC_NOISE) {
                printf("    %s: %s[%zu]: num %+.6e vs an %+.6e (> 2%%)\n", label, t->name,
                       jnum - t->off, num[jnum], (double)an[jnum]);
                bad = 1;
            }
        }
    }
    // The five largest numerical entries of the whole net.
    for (int r = 0; r < 5; r++) {
        size_t best = P;
        for (size_t k = 0; k < P; k++)
            if (chk[k] && (best == P || fabs(num[k]) > fabs(num[best]))) best = k;
        if (best == P) break;
        if (fabs(an[best] - num[best]) > GC_ENTRY_TOL * fabs(num[best]) + GC_NOISE) {
            printf("    %s: param %zu: num %+.6e vs an %+.6e (> 2%%)\n", label, best, num[best],
                   (double)an[best]);
            bad = 1;
        }
        chk[best] = 0;
    }
    double rel_all = sqrt(all_d) / (sqrt(all_n) + sqrt(all_a) + 1e-30);
    if (!(sqrt(all_d) <= GC_TOL * (sqrt(all_n) + sqrt(all_a)) + GC_NOISE * sqrt((double)all_cnt)))
        bad = 1;
    if (n_kink * 10 > n_chk) {
        printf("    %s: %zu of %zu entries sit on kinks (> 10%%): the check says little\n", label,
               n_kink, n_chk);
        bad = 1;
    }
    printf("  grad %-32s %5zu params %3zu/%-4zu kinks  net rel %.2e  worst %.2e (%s)%s\n", label, P,
           n_kink, n_chk, rel_all, worst, worst_name, bad ? "  FAILED" : "");
    free(an), free(num), free(chk);
    return bad ? -1 : 0;
}

/* Builds the net, jitters its parameters, draws x ~ N(0, 1) and labels, runs gradcheck. */
static int gc_run(const char *label, struct net_shape in, size_t K,
                  const struct net_layer_spec *specs, size_t ns, size_t B, uint64_t seed)
{
    uint64_t rng = seed;
    struct net *n = mk_init(&in, K, specs, ns, &rng);
    if (!n) return -1;
    size_t D = numel(&in);
    float *x = malloc(B * D * sizeof *x);
    uint8_t *y = malloc(B);
    int rc = -1;
    if (x && y) {
        for (size_t i = 0; i < B * D; i++) x[i] = net_rand_normal(&rng);
        for (size_t b = 0; b < B; b++) y[b] = (uint8_t)net_rand_below(&rng, K);
        rc = gradcheck(n, x, y, B, label);
    }
    free(x);
    free(y);
    net_destroy(n);
    return rc;
}

#define GC(label, in, K, B, seed, ...)                                                             \
    do {                                                                                           \
        const struct net_layer_spec gc__s[] = {__VA_ARGS__};                                       \
        ASSERT_EQ(gc_run(label, in, K, gc__s, N_OF(gc__s), B, seed), 0);                           \
    } while (0)

// ---- gradient checks, layer by layer --------------------------------------------------------

TEST(grad_dense)
{
    net_set_threads(T_THREADS);
    // The second dense's dinp reaches the first dense's weights.
    GC("dense+bias", shp(1, 2, 3), 3, 3, 11, S_FLAT(), S_DENSE(5, 1), S_DENSE(3, 1));
    GC("dense no bias", shp(2, 2, 2), 4, 3, 12, S_FLAT(), S_DENSE(6, 0), S_RELU(), S_DENSE(4, 0));
}

TEST(grad_dense_factorized)
{
    net_set_threads(T_THREADS);
    GC("dense factorized", shp(1, 3, 3), 3, 3, 13, S_FLAT(), S_DENSE(6, 1), S_DENSER(5, 2, 1),
       S_RELU(), S_DENSER(3, 2, 0));
}

TEST(grad_conv)
{
    net_set_threads(T_THREADS);
    // Every k in {1, 3, 5}, stride in {1, 2}, pad in {0, 1, 2}, after a trainable conv.
    const size_t ks[] = {1, 3, 5}, ss[] = {1, 2}, ps[] = {0, 1, 2};
    uint64_t seed = 100;
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++)
            for (size_t c = 0; c < 3; c++) {
                char label[64];
                snprintf(label, sizeof label, "conv k%zu s%zu p%zu", ks[a], ss[b], ps[c]);
                GC(label, shp(2, 7, 7), 3, 2, seed++, S_CONV(3, 3, 1, 1, 1),
                   S_CONV(4, ks[a], ss[b], ps[c], 1), S_FLAT(), S_DENSE(3, 1));
            }
    GC("conv no bias, first layer", shp(3, 6, 5), 3, 2, 7, S_CONV(4, 3, 2, 1, 0), S_FLAT(),
       S_DENSE(3, 1));
}

TEST(grad_conv_factorized)
{
    net_set_threads(T_THREADS);
    GC("conv factorized", shp(2, 6, 6), 3, 2, 21, S_CONV(3, 3, 1, 1, 1), S_CONVR(4, 2, 3, 1, 1, 1),
       S_RELU(), S_CONVR(3, 2, 3, 2, 1, 0), S_FLAT(), S_DENSE(3, 1));
}

TEST(grad_bn)
{
    net_set_threads(T_THREADS);
    GC("bn spatial", shp(2, 4, 4), 3, 3, 31, S_CONV(3, 3, 1, 1, 0), S_BN(), S_RELU(), S_FLAT(),
       S_DENSE(3, 1));
    GC("bn flat", shp(1, 2, 3), 3, 5, 32, S_FLAT(), S_DENSE(6, 1), S_BN(), S_RELU(), S_DENSE(3, 1));
    // BN -> ReLU -> (not a dense layer or a pool): the fused BN + ReLU backward, flat and spatial.
    GC("bn flat, relu, bn", shp(1, 2, 3), 3, 5, 33, S_FLAT(), S_DENSE(6, 1), S_BN(), S_RELU(),
       S_BN(), S_DENSE(3, 1));
    GC("bn spatial, relu, conv", shp(2, 5, 5), 3, 3, 34, S_CONV(3, 3, 1, 1, 1), S_BN(), S_RELU(),
       S_CONV(2, 3, 1, 1, 1), S_FLAT(), S_DENSE(3, 1));
}

TEST(grad_relu)
{
    net_set_threads(T_THREADS);
    GC("relu spatial", shp(2, 4, 4), 3, 2, 41, S_CONV(3, 3, 1, 1, 1), S_RELU(), S_FLAT(),
       S_DENSE(3, 1));
    GC("relu flat", shp(1, 2, 3), 3, 3, 42, S_FLAT(), S_DENSE(8, 1), S_RELU(), S_DENSE(3, 1));
}

/* Both levels of the 2x2 / stride-2 planes: AVX-512 where the CPU has it, and the plain loops
 * (which a CPU without AVX-512 runs) on every CPU. */
static const int pool_levels[] = {2, 0};

TEST(grad_maxpool)
{
    net_set_threads(T_THREADS);
    for (size_t lv = 0; lv < N_OF(pool_levels); lv++) {
        const int was = net__pool_force(pool_levels[lv]);
        printf("    pool level %d\n", pool_levels[lv]);
        GC("maxpool k2", shp(2, 6, 6), 3, 2, 51, S_CONV(3, 3, 1, 1, 1), S_POOL(2, 0), S_FLAT(),
           S_DENSE(3, 1));
        // Odd size: the last row and column are in no window and get no gradient; 34 columns
        // give 17 outputs per row, one full vector of 16 and a partial one.
        GC("maxpool k2 odd", shp(2, 5, 7), 3, 2, 53, S_CONV(3, 3, 1, 1, 1), S_POOL(2, 0), S_FLAT(),
           S_DENSE(3, 1));
        GC("maxpool k2 wide", shp(1, 4, 34), 3, 2, 54, S_CONV(2, 3, 1, 1, 1), S_POOL(2, 0),
           S_FLAT(), S_DENSE(3, 1));
        // ReLU -> max pool: net.c fuses the ReLU's backward into the pool's (net_internal.h);
        // the second pair has an odd 3x3 input, so its last row and column are uncovered.
        GC("relu then maxpool", shp(2, 6, 6), 3, 2, 55, S_CONV(3, 3, 1, 1, 1), S_RELU(),
           S_POOL(2, 0), S_CONV(4, 3, 1, 1, 1), S_RELU(), S_POOL(2, 0), S_FLAT(), S_DENSE(3, 1));
        // Overlapping windows: one input can be the max of several outputs.
        GC("maxpool k3 s2", shp(2, 7, 7), 3, 2, 52, S_CONV(3, 3, 1, 1, 1), S_POOL(3, 2), S_FLAT(),
           S_DENSE(3, 1));
        // Conv -> BN -> ReLU -> max pool: in training one fused pass (layer_pool.c) at the
        // AVX-512 level; the odd 5x7 input leaves a row and a column in no window, whose
        // gradient comes from the BN's batch terms alone. Then a BN first (its statistics from
        // a pass over the input, no input gradient), on 34 columns (a full vector and a part).
        GC("conv bn relu maxpool", shp(2, 5, 7), 3, 3, 56, S_CONV(3, 3, 1, 1, 1), S_BN(), S_RELU(),
           S_POOL(2, 0), S_FLAT(), S_DENSE(3, 1));
        GC("bn relu maxpool first", shp(2, 4, 34), 3, 3, 57, S_BN(), S_RELU(), S_POOL(2, 0),
           S_FLAT(), S_DENSE(3, 1));
        net__pool_force(was);
    }
}

TEST(grad_gap)
{
    net_set_threads(T_THREADS);
    GC("gap", shp(2, 5, 4), 3, 3, 61, S_CONV(4, 3, 1, 1, 1), S_GAP(), S_DENSE(3, 1));
}

TEST(grad_flatten)
{
    net_set_threads(T_THREADS);
    GC("flatten spatial", shp(2, 3, 4), 3, 3, 71, S_CONV(3, 3, 1, 1, 1), S_FLAT(), S_DENSE(3, 1));
    GC("flatten flat", shp(1, 2, 3), 3, 3, 72, S_FLAT(), S_DENSE(5, 1), S_FLAT(), S_DENSE(3, 1));
}

TEST(grad_res_identity)
{
    net_set_threads(T_THREADS);
    GC("res identity", shp(2, 5, 5), 3, 2, 81, S_CONV(3, 3, 1, 1, 1), S_RES(2, 3, 1, 0), S_FLAT(),
       S_DENSE(3, 1));
    GC("res identity bn", shp(2, 5, 5), 3, 2, 82, S_CONV(3, 3, 1, 1, 1), S_RES(2, 3, 1, 1),
       S_FLAT(), S_DENSE(3, 1));
}

TEST(grad_res_projection)
{
    net_set_threads(T_THREADS);
    GC("res proj channels", shp(2, 5, 5), 3, 2, 91, S_CONV(3, 3, 1, 1, 1), S_RES(3, 4, 1, 0),
       S_FLAT(), S_DENSE(3, 1));
    GC("res proj channels bn", shp(2, 5, 5), 3, 2, 92, S_CONV(3, 3, 1, 1, 1), S_RES(3, 4, 1, 1),
       S_FLAT(), S_DENSE(3, 1));
    GC("res proj stride 2", shp(2, 6, 6), 3, 2, 93, S_CONV(3, 3, 1, 1, 1), S_RES(2, 3, 2, 0),
       S_FLAT(), S_DENSE(3, 1));
    GC("res proj stride 2 bn", shp(2, 6, 6), 3, 2, 94, S_CONV(3, 3, 1, 1, 1), S_RES(2, 3, 2, 1),
       S_FLAT(), S_DENSE(3, 1));
    GC("res proj stride 2 + channels bn", shp(2, 7, 7), 3, 2, 95, S_CONV(3, 3, 1, 1, 1),
       S_RES(2, 5, 2, 1), S_FLAT(), S_DENSE(3, 1));
}

TEST(grad_whole_net)
{
    net_set_threads(T_THREADS);
    GC("whole net", shp(2, 6, 6), 3, 4, 99, S_CONV(3, 3, 1, 1, 0), S_BN(), S_RELU(),
       S_RES(3, 3, 1, 1), S_POOL(2, 0), S_RES(2, 4, 2, 0), S_CONVR(4, 2, 1, 1, 0, 1), S_GAP(),
       S_DENSE(6, 1), S_RELU(), S_DENSE(3, 1));
}

/* The metric separates a right gradient from a wrong one on a real case: BN's gamma
 * gradient matches its central differences, and the same gradient with its sign flipped is
 * far outside the tolerance. */
TEST(grad_check_detects_errors)
{
    net_set_threads(T_THREADS);
    const struct net_layer_spec s[] = {S_CONV(3, 3, 1, 1, 1), S_BN(), S_RELU(), S_FLAT(),
                                       S_DENSE(3, 1)};
    struct net_shape in = shp(1, 4, 4);
    uint64_t rng = 5;
    struct net *n = mk_init(&in, 3, s, N_OF(s), &rng);
    ASSERT(n);
    float x[2 * 16];
    uint8_t y[2] = {0, 2};
    for (size_t i = 0; i < 32; i++) x[i] = net_rand_normal(&rng);
    net_zero_grad(n);
    net_forward(n, x, y, 2, 1);
    net_backward(n, y, 2);
    // gamma of the BN: numerical vs analytic, then with the term through xhat dropped.
    const struct net_tensor *g = net_tensor_get(n, 1, "gamma");
    ASSERT(g);
    double d_ok = 0, d_bad = 0, nn = 0, na = 0;
    for (size_t c = 0; c < g->n; c++) {
        size_t k = g->off + c;
        float an = n->grads[k], old = n->params[k];
        n->params[k] = old + GC_H;
        double lp = gc_loss(n, x, y, 2);
        n->params[k] = old - GC_H;
        double lm = gc_loss(n, x, y, 2);
        n->params[k] = old;
        double num = (lp - lm) / ((double)(old + GC_H) - (double)(old - GC_H));
        d_ok += (num - an) * (num - an);
        d_bad += (num + an) * (num + an); // a sign error
        nn += num * num;
        na += (double)an * an;
    }
    double den = sqrt(nn) + sqrt(na);
    ASSERT_FLT_OP(sqrt(d_ok) / den, <, GC_TOL);
    ASSERT_FLT_OP(sqrt(d_bad) / den, >, 0.5);
    net_destroy(n);
}

// ---- forward behaviour -----------------------------------------------------------------------

/* Backward accumulates into grads and net_zero_grad clears them. */
TEST(backward_accumulates)
{
    net_set_threads(T_THREADS);
    const struct net_layer_spec s[] = {S_CONV(3, 3, 1, 1, 0), S_BN(),   S_RELU(),
                                       S_RES(3, 3, 1, 1),     S_FLAT(), S_DENSE(3, 1)};
    struct net_shape in = shp(1, 5, 5);
    uint64_t rng = 3;
    struct net *n = mk_init(&in, 3, s, N_OF(s), &rng);
    ASSERT(n);
    float x[3 * 25];
    uint8_t y[3] = {0, 1, 2};
    for (size_t i = 0; i < 75; i++) x[i] = net_rand_normal(&rng);
    net_zero_grad(n);
    net_forward(n, x, y, 3, 1);
    net_backward(n, y, 3);
    float *g1 = malloc(n->n_params * sizeof *g1);
    ASSERT(g1);
    memcpy(g1, n->grads, n->n_params * sizeof *g1);
    net_forward(n, x, y, 3, 1);
    net_backward(n, y, 3);
    double wd = 0.0, gmax = 0.0;
    for (size_t k = 0; k < n->n_params; k++) {
        double d = fabs((double)n->grads[k] - 2.0 * g1[k]);
        if (d > wd) wd = d;
        if (fabs(g1[k]) > gmax) gmax = fabs(g1[k]);
    }
    net_zero_grad(n);
    size_t nz = 0;
    for (size_t k = 0; k < n->n_params; k++) nz += n->grads[k] != 0.0f;
    free(g1);
    net_destroy(n);
    ASSERT_FLT_OP(gmax, >, 1e-3);
    ASSERT_FLT_OP(wd, <=, 1e-5 * gmax);
    ASSERT_EQ(nz, 0);
}

/* *out = the net, or NULL when net_create refuses it with a reason asking for a flatten (any
 * other refusal fails the test). */
static void create_or_flatten(int *test__failed, struct net **out, const struct net_shape *in,
                              const struct net_layer_spec *s, size_t ns)
{
    char err[256] = "";
    *out = NULL;
    if (net_create(out, in, 2, s, ns, err, sizeof err) != 0) {
        *out = NULL;
        ASSERT_CONTAINS(err, "flatten");
    }
}

/* A dense layer on an input that is spatial with H = W = 1 ((C, B, 1, 1) in memory) must
 * either be rejected (asking for a flatten) or compute W x + b per sample, exactly like
 * flatten + dense. Here: directly on a (3, 1, 1) input, B = 2, W = [[1 0 0] [0 1 0]]. */
TEST(dense_on_cx1x1_input)
{
    net_set_threads(T_THREADS);
    const struct net_layer_spec s[] = {S_DENSE(2, 1)};
    struct net_shape in = shp(3, 1, 1);
    struct net *n;
    create_or_flatten(test__failed, &n, &in, s, 1);
    if (!n) return;
    float *w = net_tensor_data(n, net_tensor_get(n, 0, "w"));
    float *b = net_tensor_data(n, net_tensor_get(n, 0, "b"));
    const float W[6] = {1, 0, 0, 0, 1, 0}, bb[2] = {0.5f, -0.5f};
    memcpy(w, W, sizeof W);
    memcpy(b, bb, sizeof bb);
    const float x[6] = {1, 2, 3, 4, 5, 6}; // (B=2, C=3, 1, 1)
    net_forward(n, x, NULL, 2, 0);
    float z[4];
    memcpy(z, n->acts[1], sizeof z);
    net_destroy(n);
    ASSERT_NEAR(z[0], 1.5, 1e-6); // sample 0: x0 + 0.5
    ASSERT_NEAR(z[1], 1.5, 1e-6); // sample 0: x1 - 0.5
    ASSERT_NEAR(z[2], 4.5, 1e-6); // sample 1: x0 + 0.5
    ASSERT_NEAR(z[3], 4.5, 1e-6); // sample 1: x1 - 0.5
}

/* The same after a conv that reduces the image to 1 x 1: the logits must equal those of the
 * same net with a flatten in between (the flatten has no parameters, so arenas line up). */
TEST(dense_after_conv_to_1x1)
{
    net_set_threads(T_THREADS);
    const struct net_layer_spec s1[] = {S_CONV(3, 3, 1, 0, 1), S_DENSE(2, 1)};
    const struct net_layer_spec s2[] = {S_CONV(3, 3, 1, 0, 1), S_FLAT(), S_DENSE(2, 1)};
    struct net_shape in = shp(1, 3, 3);
    struct net *a;
    create_or_flatten(test__failed, &a, &in, s1, 2);
    if (!a) return;
    struct net *f = mk(&in, 2, s2, 3);
    ASSERT(f);
    uint64_t rng = 9;
    net_init_params(f, &rng);
    jitter_params(f, &rng);
    ASSERT_EQ(a->n_params, f->n_params);
    memcpy(a->params, f->params, f->n_params * sizeof(float));
    float x[4 * 9];
    for (size_t i = 0; i < 36; i++) x[i] = net_rand_normal(&rng);
    net_forward(a, x, NULL, 4, 0);
    net_forward(f, x, NULL, 4, 0);
    double md = 0.0;
    for (size_t i = 0; i < 8; i++) {
        double d = fabs((double)a->acts[2][i] - (double)f->acts[3][i]);
        md = d > md ? d : md;
    }
    net_destroy(a);
    net_destroy(f);
    ASSERT_FLT_OP(md, <, 1e-5);
}

// ---- golden forward values ---------------------------------------------------------------

struct golden_case {
    const char *name;
    struct net_shape in;
    size_t B, classes, layer, n_specs;
    struct net_layer_spec specs[4];
};

/* Must match scripts/make_golden.py. */
static const struct golden_case GOLDEN[] = {
    {"conv_k3s1p1", {2, 5, 5, 1}, 2, 2, 0, 3, {S_CONV(3, 3, 1, 1, 1), S_FLAT(), S_DENSE(2, 1)}},
    {"conv_k3s2p1", {2, 5, 5, 1}, 2, 2, 0, 3, {S_CONV(3, 3, 2, 1, 1), S_FLAT(), S_DENSE(2, 1)}},
    {"conv_k5s1p2", {2, 5, 5, 1}, 2, 2, 0, 3, {S_CONV(2, 5, 1, 2, 1), S_FLAT(), S_DENSE(2, 1)}},
    {"conv_k1", {3, 4, 4, 1}, 2, 2, 0, 3, {S_CONV(2, 1, 1, 0, 0), S_FLAT(), S_DENSE(2, 1)}},
    {"conv_factorized",
     {2, 4, 4, 1},
     2,
     2,
     0,
     3,
     {S_CONVR(3, 2, 3, 1, 1, 1), S_FLAT(), S_DENSE(2, 1)}},
    {"maxpool_k2", {2, 4, 4, 1}, 2, 2, 0, 3, {S_POOL(2, 0), S_FLAT(), S_DENSE(2, 1)}},
    {"maxpool_k3s2", {2, 7, 7, 1}, 2, 2, 0, 3, {S_POOL(3, 2), S_FLAT(), S_DENSE(2, 1)}},
    {"gap", {3, 3, 4, 1}, 2, 2, 0, 2, {S_GAP(), S_DENSE(2, 1)}},
    {"bn_spatial", {2, 3, 3, 1}, 3, 2, 0, 3, {S_BN(), S_FLAT(), S_DENSE(2, 1)}},
    {"bn_flat", {1, 2, 3, 1}, 4, 2, 1, 3, {S_FLAT(), S_BN(), S_DENSE(2, 1)}},
    {"dense", {1, 3, 4, 1}, 2, 2, 1, 3, {S_FLAT(), S_DENSE(4, 1), S_DENSE(2, 1)}},
    {"dense_factorized", {1, 3, 4, 1}, 2, 2, 1, 3, {S_FLAT(), S_DENSER(4, 3, 1), S_DENSE(2, 1)}},
    {"res_identity", {3, 4, 4, 1}, 2, 2, 0, 3, {S_RES(2, 3, 1, 0), S_FLAT(), S_DENSE(2, 1)}},
    {"res_identity_bn", {3, 4, 4, 1}, 2, 2, 0, 3, {S_RES(2, 3, 1, 1), S_FLAT(), S_DENSE(2, 1)}},
    {"res_proj", {2, 4, 4, 1}, 2, 2, 0, 3, {S_RES(3, 3, 1, 0), S_FLAT(), S_DENSE(2, 1)}},
    {"res_proj_s2_bn", {2, 5, 5, 1}, 2, 2, 0, 3, {S_RES(2, 3, 2, 1), S_FLAT(), S_DENSE(2, 1)}},
    {"softmax_ce", {1, 2, 3, 1}, 3, 5, 1, 2, {S_FLAT(), S_DENSE(5, 1)}},
};

/* Reads every number after the '#' comment lines of tests/golden/<name>.txt. */
static double *golden_read(const char *name, size_t *count)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tests/golden/%s.txt", EW_SOURCE_DIR, name);
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("    cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 64, n = 0;
    double *v = malloc(cap * sizeof *v);
    char line[1024];
    while (v && fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char *p = line, *e;
        for (;;) {
            double d = strtod(p, &e);
            if (e == p) break;
            if (n == cap) {
                double *q = realloc(v, 2 * cap * sizeof *v);
                if (!q) {
                    free(v);
                    v = NULL;
                    break;
                }
                v = q, cap *= 2;
            }
            v[n++] = d;
            p = e;
        }
    }
    fclose(f);
    *count = n;
    return v;
}

/* Runs one golden case; returns the number of mismatching values (or -1 on setup errors). */
static long golden_run(const struct golden_case *gc)
{
    struct net *n = mk(&gc->in, gc->classes, gc->specs, gc->n_specs);
    if (!n) return -1;
    const struct net_layer *l = &n->layers[gc->layer];
    // t_j[i] = 0.5 sin(0.37 i + 0.7 (j + 1)) over the layer's trainable tensors.
    size_t j = 0;
    for (size_t t = l->t0; t < l->t0 + l->n_t; t++) {
        const struct net_tensor *te = &n->tensors[t];
        if (te->arena != NET_ARENA_PARAM) continue;
        float *p = n->params + te->off;
        for (size_t i = 0; i < te->n; i++)
            p[i] = (float)(0.5 * sin(0.37 * (double)i + 0.7 * (double)(j + 1)));
        j++;
    }
    const size_t D = numel(&gc->in), B = gc->B;
    float *x = malloc(B * D * sizeof *x);
    uint8_t y[8];
    for (size_t i = 0; i < B * D; i++) x[i] = (float)sin(0.37 * (double)i + 0.1);
    for (size_t b = 0; b < B; b++) y[b] = (uint8_t)(b % gc->classes);
    int is_ce = strcmp(gc->name, "softmax_ce") == 0;
    float loss = net_forward(n, x, is_ce ? y : NULL, B, 1);

    // Our values in the file's order: (B, C, H, W), (B, F), or loss + probs (B, K).
    const struct net_shape *o = &l->out;
    const size_t cnt = is_ce ? 1 + B * gc->classes : B * numel(o);
    double *got = malloc(cnt * sizeof *got);
    const float *a = n->acts[gc->layer + 1];
    if (is_ce) {
        got[0] = loss;
        for (size_t i = 0; i < B * gc->classes; i++) got[1 + i] = n->probs[i];
    } else if (o->spatial) {
        const size_t HW = o->h * o->w;
        for (size_t b = 0; b < B; b++)
            for (size_t c = 0; c < o->c; c++)
                for (size_t i = 0; i < HW; i++)
                    got[(b * o->c + c) * HW + i] = a[(c * B + b) * HW + i];
    } else {
        for (size_t i = 0; i < cnt; i++) got[i] = a[i];
    }
    size_t ng = 0;
    double *want = golden_read(gc->name, &ng);
    long bad = 0;
    if (!want || ng != cnt) {
        printf("    %s: golden file has %zu values, the layer produced %zu\n", gc->name, ng, cnt);
        bad = -1;
    } else {
        double mx = 0.0;
        for (size_t i = 0; i < cnt; i++) mx = fabs(want[i]) > mx ? fabs(want[i]) : mx;
        for (size_t i = 0; i < cnt; i++) {
            double ref = fabs(want[i]) > 1e-2 * mx ? fabs(want[i]) : 1e-2 * mx;
            if (!(fabs(got[i] - want[i]) <= 1e-4 * ref)) {
                if (bad < 5)
                    printf("    %s[%zu]: got %.9g, golden %.9g\n", gc->name, i, got[i], want[i]);
                bad++;
            }
        }
    }
    free(want);
    free(got);
    free(x);
    net_destroy(n);
    return bad;
}

TEST(golden_forward)
{
    net_set_threads(T_THREADS);
    long total = 0;
    for (size_t i = 0; i < N_OF(GOLDEN); i++) {
        long b = golden_run(&GOLDEN[i]);
        if (b != 0) printf("    golden %s: %ld mismatches\n", GOLDEN[i].name, b);
        total += b < 0 ? 1000 : b;
    }
    ASSERT_EQ(total, 0);
}

// ---- batch norm running statistics ---------------------------------------------------------

/* Three training forwards, then the running stats equal the momentum-0.1 EMA (from mean 0,
 * var 1) of the batch means and unbiased variances; an eval forward normalises with them and
 * leaves them alone. Checked for spatial BN (over B*H*W) and flat BN (over B). */
static int bn_eval_case(int flat)
{
    const struct net_layer_spec sp[] = {S_BN(), S_FLAT(), S_DENSE(2, 1)};
    const struct net_layer_spec sf[] = {S_FLAT(), S_BN(), S_DENSE(2, 1)};
    struct net_shape in = shp(2, 2, 3);
    struct net *n = mk(&in, 2, flat ? sf : sp, 3);
    if (!n) return -1;
    const size_t li = flat ? 1 : 0, B = 4, C = flat ? 12 : 2, HW = flat ? 1 : 6;
    uint64_t rng = 77;
    net_init_params(n, &rng);
    float *gamma = net_tensor_data(n, net_tensor_get(n, li, "gamma"));
    float *beta = net_tensor_data(n, net_tensor_get(n, li, "beta"));
    float *rm = net_tensor_data(n, net_tensor_get(n, li, "mean"));
    float *rv = net_tensor_data(n, net_tensor_get(n, li, "var"));
    double em[12], ev[12];
    for (size_t c = 0; c < C; c++) {
        gamma[c] = 1.5f - 0.25f * (float)c;
        beta[c] = 0.1f * (float)c - 0.2f;
        em[c] = 0.0, ev[c] = 1.0;
    }
    float x[4 * 12];
    int bad = 0;
    for (int it = 0; it < 3; it++) {
        for (size_t i = 0; i < B * 12; i++) x[i] = 2.0f * net_rand_normal(&rng) + (float)it;
        net_forward(n, x, NULL, B, 1);
        for (size_t c = 0; c < C; c++) {
            // element (b, c, i) of x (B, C, HW) for spatial, feature c of sample b for flat
            double s = 0, s2 = 0, cntd = (double)(B * HW);
            for (size_t b = 0; b < B; b++)
                for (size_t i = 0; i < HW; i++) s += x[(b * C + c) * HW + i];
            double mu = s / cntd;
            for (size_t b = 0; b < B; b++)
                for (size_t i = 0; i < HW; i++) {
                    double d = x[(b * C + c) * HW + i] - mu;
                    s2 += d * d;
                }
            double var_b = s2 / cntd, unb = s2 / (cntd - 1.0);
            em[c] = 0.9 * em[c] + 0.1 * mu;
            ev[c] = 0.9 * ev[c] + 0.1 * unb;
            // Training output uses the batch statistics.
            const float *o = n->acts[li + 1];
            for (size_t b = 0; b < B; b++)
                for (size_t i = 0; i < HW; i++) {
                    double want =
                        gamma[c] * (x[(b * C + c) * HW + i] - mu) / sqrt(var_b + 1e-5) + beta[c];
                    double got = flat ? o[b * C + c] : o[(c * B + b) * HW + i];
                    if (fabs(got - want) > 1e-4 * (1.0 + fabs(want))) {
                        if (bad++ < 5)
                            printf("    train out c%zu b%zu: %g vs %g\n", c, b, got, want);
                    }
                }
        }
        for (size_t c = 0; c < C; c++) {
            if (fabs(rm[c] - em[c]) > 1e-5 * (1.0 + fabs(em[c])) ||
                fabs(rv[c] - ev[c]) > 1e-5 * (1.0 + fabs(ev[c]))) {
                if (bad++ < 5)
                    printf("    step %d ch %zu: running (%g, %g), expected (%g, %g)\n", it, c,
                           rm[c], rv[c], em[c], ev[c]);
            }
        }
    }
    // Eval: running statistics, unchanged by the pass.
    for (size_t i = 0; i < B * 12; i++) x[i] = net_rand_normal(&rng);
    float rm0[12], rv0[12];
    memcpy(rm0, rm, C * sizeof(float));
    memcpy(rv0, rv, C * sizeof(float));
    net_forward(n, x, NULL, B, 0);
    const float *o = n->acts[li + 1];
    for (size_t c = 0; c < C; c++)
        for (size_t b = 0; b < B; b++)
            for (size_t i = 0; i < HW; i++) {
                double want =
                    gamma[c] * (x[(b * C + c) * HW + i] - em[c]) / sqrt(ev[c] + 1e-5) + beta[c];
                double got = flat ? o[b * C + c] : o[(c * B + b) * HW + i];
                if (fabs(got - want) > 1e-4 * (1.0 + fabs(want))) {
                    if (bad++ < 5) printf("    eval out c%zu b%zu: %g vs %g\n", c, b, got, want);
                }
            }
    if (memcmp(rm0, rm, C * sizeof(float)) || memcmp(rv0, rv, C * sizeof(float))) {
        printf("    eval forward changed the running statistics\n");
        bad++;
    }
    net_destroy(n);
    return bad;
}

TEST(bn_running_stats_and_eval)
{
    net_set_threads(T_THREADS);
    ASSERT_EQ(bn_eval_case(0), 0);
    ASSERT_EQ(bn_eval_case(1), 0);
}

// ---- net_create validation -----------------------------------------------------------------

/* Expects rejection with -EINVAL, *out untouched and a message containing each needle. */
static int expect_reject(const struct net_shape *in, size_t classes, const struct net_layer_spec *s,
                         size_t ns, const char *need1, const char *need2)
{
    static struct net dummy;
    struct net *sentinel = &dummy, *n = sentinel;
    char err[256] = "";
    int rc = net_create(&n, in, classes, s, ns, err, sizeof err);
    int bad = 0;
    if (rc != -EINVAL) printf("    expected -EINVAL, got %d (%s)\n", rc, err), bad = 1;
    if (n != sentinel) printf("    *out was written on failure\n"), bad = 1;
    if (need1 && !strstr(err, need1)) printf("    \"%s\" lacks \"%s\"\n", err, need1), bad = 1;
    if (need2 && !strstr(err, need2)) printf("    \"%s\" lacks \"%s\"\n", err, need2), bad = 1;
    if (rc == 0 && n != sentinel) net_destroy(n);
    return bad;
}

TEST(create_rejects_dense_after_conv)
{
    struct net_shape in = shp(1, 8, 8);
    struct net_layer_spec s[] = {S_CONV(4, 3, 1, 1, 1), S_DENSE(10, 1)};
    strcpy(s[1].name, "fc");
    ASSERT_EQ(expect_reject(&in, 10, s, 2, "\"fc\"", "flatten"), 0);
    struct net_layer_spec s2[] = {S_CONV(4, 3, 1, 1, 1), S_RELU(), S_DENSE(10, 1)};
    ASSERT_EQ(expect_reject(&in, 10, s2, 3, "dense1", "layer 2"), 0);
}

TEST(create_rejects_kernel_bigger_than_input)
{
    struct net_shape in = shp(1, 4, 4);
    struct net_layer_spec s[] = {S_CONV(4, 7, 1, 1, 1), S_FLAT(), S_DENSE(10, 1)};
    strcpy(s[0].name, "bigconv");
    ASSERT_EQ(expect_reject(&in, 10, s, 3, "\"bigconv\"", "kernel 7"), 0);
    struct net_layer_spec s2[] = {S_CONV(4, 3, 1, 1, 1), S_POOL(5, 0), S_FLAT(), S_DENSE(10, 1)};
    strcpy(s2[1].name, "pool_a");
    ASSERT_EQ(expect_reject(&in, 10, s2, 4, "\"pool_a\"", "window 5"), 0);
}

TEST(create_rejects_duplicate_names)
{
    struct net_shape in = shp(1, 4, 4);
    struct net_layer_spec s[] = {S_CONV(4, 3, 1, 1, 1), S_RELU(), S_FLAT(), S_DENSE(10, 1)};
    strcpy(s[0].name, "a");
    strcpy(s[1].name, "a");
    ASSERT_EQ(expect_reject(&in, 10, s, 4, "duplicate", "\"a\""), 0);
}

TEST(create_rejects_wrong_class_count)
{
    struct net_shape in = shp(1, 4, 4);
    struct net_layer_spec s[] = {S_FLAT(), S_DENSE(7, 1)};
    strcpy(s[1].name, "head");
    // The message must say what is wrong (10 classes, 7 outputs) and which layer it is.
    ASSERT_EQ(expect_reject(&in, 10, s, 2, "10", "7"), 0);
    ASSERT_EQ(expect_reject(&in, 10, s, 2, "head", NULL), 0);
    // A spatial last layer is not a classifier either.
    struct net_layer_spec s2[] = {S_CONV(10, 4, 1, 0, 1)};
    ASSERT_EQ(expect_reject(&in, 10, s2, 1, "10", NULL), 0);
    ASSERT_EQ(expect_reject(&in, 10, s, 0, NULL, NULL), 0);
}

// ---- parameter and FLOP counts ---------------------------------------------------------------

TEST(param_and_flop_counts)
{
    // Input 1x8x8. MACs of a conv = OH*OW * (C*K*K) * OUT; factorized: OH*OW * R * (CKK + OUT).
    //   conv 1->4 k3 p1 bias: w 36 + b 4 = 40 params; 64 * 9 * 4 = 2304 MACs
    //   maxpool 2 -> 4 x 4 x 4
    //   conv 4->rank 2->6 k3 p1, no bias: v 2*4*9 = 72, u 6*2 = 12; 16 * 2 * (36 + 6) = 1344
    //   res 6->width 3->5, stride 2, bn (-> 2 x 2): c1 3*6*9 = 162, bn1 6, c2 5*3*9 = 135,
    //     bn2 10, projection 5*6 = 30, bnp 10 = 353 params; 26 running stats;
    //     4 * (162 + 135 + 30) = 1308 MACs
    //   gap -> 5; dense 5->3 bias: 18 params, 15 MACs
    struct net_shape in = shp(1, 8, 8);
    const struct net_layer_spec s[] = {
        S_CONV(4, 3, 1, 1, 1), S_RELU(), S_POOL(2, 0), S_CONVR(6, 2, 3, 1, 1, 0),
        S_RES(3, 5, 2, 1),     S_GAP(),  S_DENSE(3, 1)};
    struct net *n = mk(&in, 3, s, N_OF(s));
    ASSERT(n);
    size_t p = 40 + (72 + 12) + (162 + 6 + 135 + 10 + 30 + 10) + 18;
    size_t f = 2304 + 16 * 2 * (36 + 6) + 4 * (3 * 6 * 9 + 5 * 3 * 9 + 5 * 6) + 15;
    size_t np = n->n_params, ns = n->n_state, nf = net_macs(n);
    struct net_tensor *v = net_tensor_get(n, 3, "v"), *u = net_tensor_get(n, 3, "u");
    struct net_tensor *pw = net_tensor_get(n, 4, "p.w"), *bv = net_tensor_get(n, 4, "bnp.var");
    ASSERT(v && u && pw && bv);
    ASSERT_EQ(v->dims[0], 2);
    ASSERT_EQ(v->dims[1], 4);
    ASSERT_EQ(v->dims[2], 3);
    ASSERT_EQ(u->dims[0], 6);
    ASSERT_EQ(u->dims[1], 2);
    ASSERT_EQ(pw->n, 30);
    ASSERT_EQ(bv->arena, NET_ARENA_STATE);
    ASSERT_EQ(net_tensor_get(n, 4, "c1.w")->decay, 1);
    ASSERT_EQ(net_tensor_get(n, 4, "bn1.gamma")->decay, 0);
    ASSERT_EQ(net_tensor_get(n, 0, "b")->decay, 0);
    ASSERT(net_tensor_get(n, 4, "c1.b") == NULL);
    ASSERT_EQ(net_layer_find(n, "res1"), 4);
    ASSERT_EQ(net_layer_find(n, "nope"), -1);
    net_destroy(n);
    ASSERT_EQ(np, p);
    ASSERT_EQ(ns, 26);
    ASSERT_EQ(nf, f);
}

/* net_layer_info: the per-layer parameters, MACs and widths of the net above, by hand. */
TEST(layer_info_counts)
{
    struct net_shape in = shp(1, 8, 8);
    const struct net_layer_spec s[] = {
        S_CONV(4, 3, 1, 1, 1), S_RELU(), S_POOL(2, 0), S_CONVR(6, 2, 3, 1, 1, 0),
        S_RES(3, 5, 2, 1),     S_GAP(),  S_DENSE(3, 1)};
    const size_t want[][3] = {{40, 2304, 4},  {0, 0, 4}, {0, 0, 4},  {72 + 12, 1344, 6},
                              {353, 1308, 3}, {0, 0, 5}, {18, 15, 3}};
    struct net *n = mk(&in, 3, s, N_OF(s));
    ASSERT(n);
    size_t sum_p = 0, sum_f = 0;
    for (size_t i = 0; i < n->n_layers; i++) {
        struct net_layer_info li;
        net_layer_info(n, i, &li);
        sum_p += li.params;
        sum_f += li.macs;
        if (li.params != want[i][0] || li.macs != want[i][1] || li.width != want[i][2])
            printf("    layer %zu: params %zu macs %zu width %zu\n", i, li.params, li.macs,
                   li.width);
        ASSERT_EQ(li.params, want[i][0]);
        ASSERT_EQ(li.width, want[i][2]);
        ASSERT_EQ(li.macs, want[i][1]);
    }
    ASSERT_EQ(sum_p, n->n_params);
    ASSERT_EQ(sum_f, net_macs(n));
    net_destroy(n);
}

/* net_clone: the same layers, values, moments and state, independent storage, and the same
 * forward pass to the bit. */
TEST(clone_is_deep_and_exact)
{
    struct net_shape in = shp(2, 6, 6);
    const struct net_layer_spec s[] = {S_CONV(4, 3, 1, 1, 1), S_BN(),   S_RELU(),
                                       S_RES(3, 4, 1, 1),     S_FLAT(), S_DENSE(3, 1)};
    struct net *a = mk(&in, 3, s, N_OF(s)), *b = NULL;
    ASSERT(a);
    uint64_t rng = 7;
    net_init_params(a, &rng);
    jitter_params(a, &rng);
    for (size_t i = 0; i < a->n_params; i++) {
        a->m[i] = net_rand_normal(&rng);
        a->v[i] = net_rand_normal(&rng);
    }
    for (size_t i = 0; i < a->n_state; i++) a->state[i] = 0.5f + 0.1f * (float)(i % 7);
    a->norm_mean[0] = 0.25f;
    a->norm_std[1] = 2.0f;
    ASSERT_EQ(net_clone(&b, a), 0);
    ASSERT(b && b != a && b->params != a->params);
    ASSERT_EQ(b->n_layers, a->n_layers);
    for (size_t i = 0; i < a->n_layers; i++)
        ASSERT_STR_EQ(b->layers[i].spec.name, a->layers[i].spec.name);
    ASSERT_EQ(b->n_params, a->n_params);
    ASSERT_EQ(b->n_state, a->n_state);
    ASSERT_EQ(memcmp(b->params, a->params, a->n_params * sizeof(float)), 0);
    ASSERT_EQ(memcmp(b->m, a->m, a->n_params * sizeof(float)), 0);
    ASSERT_EQ(memcmp(b->v, a->v, a->n_params * sizeof(float)), 0);
    ASSERT_EQ(memcmp(b->state, a->state, a->n_state * sizeof(float)), 0);
    ASSERT_EQ(memcmp(b->norm_mean, a->norm_mean, sizeof(a->norm_mean)), 0);
    ASSERT_EQ(memcmp(b->norm_std, a->norm_std, sizeof(a->norm_std)), 0);
    const size_t B = 3;
    float x[3 * 2 * 6 * 6];
    uint8_t y[3] = {0, 1, 2};
    for (size_t i = 0; i < N_OF(x); i++) x[i] = net_rand_normal(&rng);
    net_set_threads(T_THREADS);
    ASSERT_EQ(net_reserve(a, B), 0);
    ASSERT_EQ(net_reserve(b, B), 0);
    float la = net_forward(a, x, y, B, 0), lb = net_forward(b, x, y, B, 0);
    ASSERT_EQ(memcmp(&la, &lb, sizeof(la)), 0);
    ASSERT_EQ(memcmp(a->probs, b->probs, B * 3 * sizeof(float)), 0);
    b->params[0] += 1.0f; // independent storage
    ASSERT(a->params[0] != b->params[0]);
    net_destroy(a);
    net_destroy(b);
}

/* The architectures of the PyTorch reference (configs/ref_mlp.json, ref_cnn.json,
 * ref_resnet.json) have the same parameter counts here as in torch (sum of numel of
 * m.parameters(), the counts below). */
TEST(param_counts_match_torch_ref)
{
    struct net_shape in = shp(1, 28, 28);
    const struct net_layer_spec mlp[] = {S_FLAT(),        S_DENSE(512, 1), S_RELU(),
                                         S_DENSE(256, 1), S_RELU(),        S_DENSE(10, 1)};
    const struct net_layer_spec cnn[] = {S_CONV(32, 3, 1, 1, 1),
                                         S_RELU(),
                                         S_POOL(2, 0),
                                         S_CONV(64, 3, 1, 1, 1),
                                         S_RELU(),
                                         S_POOL(2, 0),
                                         S_FLAT(),
                                         S_DENSE(128, 1),
                                         S_RELU(),
                                         S_DENSE(10, 1)};
    const struct net_layer_spec res[] = {
        S_CONV(32, 3, 1, 1, 1), S_RELU(), S_RES(32, 32, 1, 0), S_POOL(2, 0), S_RES(32, 32, 1, 0),
        S_POOL(2, 0),           S_FLAT(), S_DENSE(128, 1),     S_RELU(),     S_DENSE(10, 1)};
    struct net *a = mk(&in, 10, mlp, N_OF(mlp)), *b = mk(&in, 10, cnn, N_OF(cnn));
    struct net *c = mk(&in, 10, res, N_OF(res));
    ASSERT(a && b && c);
    size_t pa = a->n_params, pb = b->n_params, pc = c->n_params;
    size_t fa = net_macs(a), fb = net_macs(b), fc = net_macs(c);
    net_destroy(a);
    net_destroy(b);
    net_destroy(c);
    ASSERT_EQ(pa, 535818);
    ASSERT_EQ(pb, 421642);
    // conv 320 + 2 res blocks of 2 * (32*32*9 + 32) + dense 1568*128 + 128 + 1290
    ASSERT_EQ(pc, 320 + 2 * 2 * (32 * 32 * 9 + 32) + 1568 * 128 + 128 + 1290);
    ASSERT_EQ(pc, 239434);
    ASSERT_EQ(fa, 784 * 512 + 512 * 256 + 256 * 10);
    ASSERT_EQ(fb, 784 * 9 * 32 + 196 * 288 * 64 + 3136 * 128 + 1280);
    ASSERT_EQ(fc, 784 * 9 * 32 + 2 * 784 * 288 * 32 + 2 * 196 * 288 * 32 + 1568 * 128 + 1280);
}

// ---- optimizers ----------------------------------------------------------------------------

/* flatten + dense 2->2 with bias: w (2, 2) decays, b (2) does not. */
static struct net *opt_net(void)
{
    struct net_shape in = shp(1, 1, 2);
    const struct net_layer_spec s[] = {S_FLAT(), S_DENSE(2, 1)};
    struct net *n = mk(&in, 2, s, 2);
    if (!n) return NULL;
    const float w[6] = {0.5f, -1.0f, 2.0f, 0.25f, 0.1f, -0.2f}; // w then b
    memcpy(n->params, w, sizeof w);
    return n;
}

static const float OPT_G[6] = {0.3f, -0.2f, 0.1f, 0.05f, -0.4f, 0.6f};

/* Independent double-precision reference of the same update rules (torch semantics). */
static void opt_ref(double *w, double g[3][6], int adam, double lr, double mu, int nest, double wd,
                    double b1, double b2, double eps)
{
    double m[6] = {0}, v[6] = {0};
    for (int t = 1; t <= 3; t++)
        for (int i = 0; i < 6; i++) {
            double d = i < 4 ? wd : 0.0, gi = g[t - 1][i];
            if (!adam) {
                gi += d * w[i];
                m[i] = mu * m[i] + gi;
                w[i] -= lr * (nest ? gi + mu * m[i] : m[i]);
            } else {
                m[i] = b1 * m[i] + (1 - b1) * gi;
                v[i] = b2 * v[i] + (1 - b2) * gi * gi;
                double mh = m[i] / (1 - pow(b1, t)), vh = v[i] / (1 - pow(b2, t));
                w[i] -= lr * (mh / (sqrt(vh) + eps) + d * w[i]);
            }
        }
}

/* Runs 3 steps with per-step gradients g, compares all 6 params with opt_ref. */
static int opt_case(struct net_optim o, float lr, double g[3][6], double *w_out)
{
    struct net *n = opt_net();
    if (!n) return -1;
    double ref[6];
    for (int i = 0; i < 6; i++) ref[i] = n->params[i];
    for (int t = 0; t < 3; t++) {
        for (int i = 0; i < 6; i++) n->grads[i] = (float)g[t][i];
        net_optim_step(n, &o, lr);
    }
    opt_ref(ref, g, o.kind == NET_ADAMW, lr, o.momentum, o.nesterov, o.weight_decay, o.beta1,
            o.beta2, o.eps);
    int bad = 0;
    for (int i = 0; i < 6; i++) {
        w_out[i] = n->params[i];
        if (fabs(n->params[i] - ref[i]) > 2e-6 * (1.0 + fabs(ref[i]))) {
            printf("    param %d: %.9g, reference %.9g\n", i, (double)n->params[i], ref[i]);
            bad = 1;
        }
    }
    if (o.t != 3) printf("    optimizer t %llu after 3 steps\n", (unsigned long long)o.t), bad = 1;
    net_destroy(n);
    return bad;
}

TEST(optim_sgd_momentum)
{
    double g[3][6], w[6];
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 6; i++) g[t][i] = OPT_G[i];
    struct net_optim o = {.kind = NET_SGD, .momentum = 0.9f};
    ASSERT_EQ(opt_case(o, 0.1f, g, w), 0);
    // By hand: m = 0.3, 0.57, 0.813; w = 0.5 - 0.1 * (0.3 + 0.57 + 0.813) = 0.3317.
    ASSERT_NEAR(w[0], 0.3317, 1e-6);
    ASSERT_NEAR(w[4], 0.3244, 1e-6); // b0: 0.1 + 0.1 * (0.4 + 0.76 + 1.084)
    // Weight decay 0.01: on w (0.3290413695 by hand), not on b (still 0.3244).
    o.weight_decay = 0.01f;
    ASSERT_EQ(opt_case(o, 0.1f, g, w), 0);
    ASSERT_NEAR(w[0], 0.3290413695, 1e-6);
    ASSERT_NEAR(w[4], 0.3244, 1e-6);
    // Varying gradients.
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 6; i++) g[t][i] = OPT_G[i] * (1.0 - 0.7 * t) + 0.05 * i;
    ASSERT_EQ(opt_case(o, 0.05f, g, w), 0);
}

TEST(optim_sgd_nesterov)
{
    double g[3][6], w[6];
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 6; i++) g[t][i] = OPT_G[i];
    struct net_optim o = {.kind = NET_SGD, .momentum = 0.9f, .nesterov = 1, .weight_decay = 0.01f};
    ASSERT_EQ(opt_case(o, 0.1f, g, w), 0);
    // By hand (torch's Nesterov: step = g' + mu * m).
    ASSERT_NEAR(w[0], 0.2549294848, 1e-6);
    ASSERT_NEAR(w[4], 0.42196, 1e-6);
}

TEST(optim_weight_decay_only_on_weights)
{
    // Zero gradients: only decay moves anything, and only weights.
    struct net *n = opt_net();
    ASSERT(n);
    struct net_optim o = {.kind = NET_SGD, .weight_decay = 0.5f};
    memset(n->grads, 0, 6 * sizeof(float));
    net_optim_step(n, &o, 0.1f);
    float sgd[6];
    memcpy(sgd, n->params, sizeof sgd);
    net_destroy(n);
    n = opt_net();
    ASSERT(n);
    struct net_optim a = {
        .kind = NET_ADAMW, .weight_decay = 0.5f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    memset(n->grads, 0, 6 * sizeof(float));
    net_optim_step(n, &a, 0.1f);
    float adam[6];
    memcpy(adam, n->params, sizeof adam);
    net_destroy(n);
    ASSERT_NEAR(sgd[0], 0.5 * 0.95, 1e-7);
    ASSERT_NEAR(sgd[2], 2.0 * 0.95, 1e-7);
    ASSERT_FLT_OP(sgd[4], ==, 0.1f);
    ASSERT_FLT_OP(sgd[5], ==, -0.2f);
    ASSERT_NEAR(adam[1], -1.0 * 0.95, 1e-7);
    ASSERT_FLT_OP(adam[4], ==, 0.1f);
    ASSERT_FLT_OP(adam[5], ==, -0.2f);
}

/* Batch norm layer bi of a net after a forward: its output is gamma * (x - mean) / sqrt(var +
 * eps) + beta of its input x (batch statistics in training, running ones in eval), within 1e-5;
 * in training the running statistics moved by 0.1 toward the batch's (unbiased variance) from
 * rm0 / rv0; a ReLU after it holds exactly max(output, 0). */
static int bn_known(const struct net *n, size_t bi, size_t B, int training, const float *rm0,
                    const float *rv0)
{
    const struct net_layer *l = &n->layers[bi];
    const size_t C = l->in.c, HW = l->in.h * l->in.w, M = B * HW;
    const float *x = n->acts[bi], *y = n->acts[bi + 1];
    const float *g = net_tensor_data(n, net_tensor_get(n, bi, "gamma"));
    const float *be = net_tensor_data(n, net_tensor_get(n, bi, "beta"));
    const float *rm = net_tensor_data(n, net_tensor_get(n, bi, "mean"));
    const float *rv = net_tensor_data(n, net_tensor_get(n, bi, "var"));
    const int relu = bi + 1 < n->n_layers && n->layers[bi + 1].spec.kind == NET_RELU;
    for (size_t c = 0; c < C; c++) {
        // Element i of channel c: (C, B, H, W) planes when spatial, (B, C) rows when flat.
#define AT(a, i) (l->in.spatial ? (a)[c * M + (i)] : (a)[(i)*C + c])
        double s = 0.0, s2 = 0.0;
        for (size_t i = 0; i < M; i++) s += AT(x, i);
        const double mu = s / (double)M;
        for (size_t i = 0; i < M; i++) s2 += (AT(x, i) - mu) * (AT(x, i) - mu);
        const double var = s2 / (double)M;
        const double mean = training ? mu : rm[c], v = training ? var : rv[c];
        if (training && (fabs(rm[c] - (0.9 * rm0[c] + 0.1 * mu)) > 1e-5 * (1 + fabs(mu)) ||
                         fabs(rv[c] - (0.9 * rv0[c] + 0.1 * var * M / (M - 1))) > 1e-5 * (1 + var)))
            return printf("    bn %zu channel %zu: running %g %g, batch %g %g\n", bi, c,
                          (double)rm[c], (double)rv[c], mu, var),
                   -1;
        for (size_t i = 0; i < M; i++) {
            const double want = g[c] * (AT(x, i) - mean) / sqrt(v + 1e-5) + be[c];
            if (fabs(AT(y, i) - want) > 1e-5 * (1 + fabs(want)))
                return printf("    bn %zu channel %zu item %zu: %g, want %g\n", bi, c, i,
                              (double)AT(y, i), want),
                       -1;
            if (relu && AT(n->acts[bi + 2], i) != (AT(y, i) > 0.0f ? AT(y, i) : 0.0f))
                return printf("    relu after bn %zu: %g at %zu\n", bi,
                              (double)AT(n->acts[bi + 2], i), i),
                       -1;
        }
#undef AT
    }
    return 0;
}

TEST(bn_forward_fusions_keep_the_known_answer)
{
    // Conv -> BN -> ReLU (statistics from the conv's store, the ReLU from the BN's), conv ->
    // BN without a ReLU, a flat BN -> ReLU; training twice (the running statistics move),
    // then eval (running statistics, the BN -> ReLU fusion only).
    const struct net_shape in = shp(2, 7, 5);
    const struct net_layer_spec s[] = {
        S_CONV(6, 3, 1, 1, 1), S_BN(), S_RELU(), S_CONV(5, 3, 1, 1, 1), S_BN(), S_FLAT(),
        S_DENSE(7, 1),         S_BN(), S_RELU(), S_DENSE(3, 1)};
    const size_t bns[] = {1, 4, 7}, B = 6;
    uint64_t rng = 21;
    struct net *n = mk_init(&in, 3, s, N_OF(s), &rng);
    ASSERT(n);
    ASSERT_EQ(net_reserve(n, B), 0);
    float x[6 * 70];
    uint8_t y[6] = {0, 1, 2, 0, 1, 2};
    for (int pass = 0; pass < 3; pass++) {
        const int training = pass < 2;
        float rm0[3][8], rv0[3][8];
        for (size_t k = 0; k < 3; k++) {
            const struct net_tensor *tm = net_tensor_get(n, bns[k], "mean");
            memcpy(rm0[k], net_tensor_data(n, tm), tm->n * sizeof(float));
            memcpy(rv0[k], net_tensor_data(n, net_tensor_get(n, bns[k], "var")),
                   tm->n * sizeof(float));
        }
        for (size_t i = 0; i < N_OF(x); i++) x[i] = 2.0f + 3.0f * net_rand_normal(&rng);
        ASSERT(isfinite(net_forward(n, x, y, B, training)));
        for (size_t k = 0; k < 3; k++)
            ASSERT_EQ(bn_known(n, bns[k], B, training, rm0[k], rv0[k]), 0);
    }
    net_destroy(n);
}

/* Conv -> ReLU -> max pool (k, s): the pool's output is exactly the window maxima of max(z, 0)
 * of the conv's output z (the ReLU is applied by the pool as it reads), on a plane with odd
 * sides, in training and in eval. */
static int relu_pool_known(size_t k, size_t st)
{
    const struct net_shape in = shp(2, 9, 7);
    const struct net_layer_spec s[] = {S_CONV(5, 3, 1, 1, 1), S_RELU(), S_POOL(k, st), S_FLAT(),
                                       S_DENSE(3, 1)};
    const size_t B = 3;
    uint64_t rng = 31;
    struct net *n = mk_init(&in, 3, s, N_OF(s), &rng);
    if (!n || net_reserve(n, B)) return -1;
    const struct net_tensor *cb = net_tensor_get(n, 0, "b");
    for (size_t c = 0; c < cb->n; c++) net_tensor_data(n, cb)[c] = -1.5f; // many windows <= 0
    float x[3 * 126];
    const uint8_t y[3] = {0, 1, 2};
    int bad = 0;
    for (int pass = 0; pass < 2 && !bad; pass++) {
        for (size_t i = 0; i < N_OF(x); i++) x[i] = net_rand_normal(&rng);
        net_forward(n, x, y, B, pass == 0);
        const struct net_shape *o = &n->layers[2].out;
        size_t zeros = 0, pos = 0;
        for (size_t p = 0; p < 5 * B && !bad; p++)
            for (size_t oh = 0; oh < o->h && !bad; oh++)
                for (size_t ow = 0; ow < o->w; ow++) {
                    float m = 0.0f;
                    for (size_t i = 0; i < k; i++)
                        for (size_t j = 0; j < k; j++) {
                            const float v = n->acts[1][p * 63 + (oh * st + i) * 7 + ow * st + j];
                            m = v > m ? v : m;
                        }
                    const float got = n->acts[3][p * o->h * o->w + oh * o->w + ow];
                    zeros += got == 0.0f, pos += got > 0.0f;
                    if (got != m) {
                        printf("    pool %zu/%zu plane %zu (%zu, %zu): %g, want %g\n", k, st, p, oh,
                               ow, (double)got, (double)m);
                        bad = 1;
                        break;
                    }
                }
        if (!bad && (zeros == 0 || pos == 0))
            printf("    pool %zu/%zu: %zu zero and %zu positive maxima\n", k, st, zeros, pos),
                bad = 1;
    }
    net_destroy(n);
    return bad ? -1 : 0;
}

/* The fused ReLU -> 2x2 max pool, forward and backward, called directly on inputs made of the
 * cases its codes must tell apart: all four inputs negative (no gradient), a top-left input
 * of exactly 0 or -0 with the rest negative (the gradient passes: the ReLU's derivative is 1
 * at 0), NaN inputs (ReLU'd to 0, no gradient through them), ties between positive inputs
 * (the first wins) and plain random windows; 5 x 34 planes, so the last row is in no window
 * and a row has 17 outputs (a full vector and a partial one). Against a scalar reference of
 * the same rules, exactly, at both pool levels. */
static int relu_pool_backward_known(void)
{
    const struct net_shape in = shp(2, 5, 34);
    const struct net_layer_spec s[] = {S_CONV(3, 3, 1, 1, 1), S_RELU(), S_POOL(2, 0), S_FLAT(),
                                       S_DENSE(3, 1)};
    const size_t B = 2;
    uint64_t rng = 77;
    struct net *n = mk_init(&in, 3, s, N_OF(s), &rng);
    if (!n || net_reserve(n, B)) return -1;
    struct net_layer *l = &n->layers[2];
    const size_t H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
    const size_t P = l->in.c * B, HW = H * W, OHW = OH * OW;
    float *z = malloc(P * HW * sizeof(float)), *dz = malloc(P * HW * sizeof(float));
    float *out = malloc(P * OHW * sizeof(float)), *g = malloc(P * OHW * sizeof(float));
    float *want = malloc(P * HW * sizeof(float));
    int bad = !z || !dz || !out || !g || !want;
    size_t cases[5] = {0};
    for (size_t i = 0; !bad && i < P * HW; i++) z[i] = net_rand_normal(&rng);
    for (size_t p = 0; !bad && p < P; p++)
        for (size_t o = 0; o < OHW; o++) {
            float *w0 = z + p * HW + 2 * (o / OW) * W + 2 * (o % OW), *w1 = w0 + W;
            const size_t kind = (p * OHW + o) % 7;
            if (kind == 0) w0[0] = -0.5f, w0[1] = -1.0f, w1[0] = -2.0f, w1[1] = -0.1f;
            if (kind == 1) w0[0] = 0.0f, w0[1] = -1.0f, w1[0] = -2.0f, w1[1] = -0.1f;
            if (kind == 2) w0[0] = -0.0f, w0[1] = -1.0f, w1[0] = -2.0f, w1[1] = -0.1f;
            if (kind == 3) w0[(o / OW) & 1] = NAN;
            if (kind == 4) w0[1] = 0.75f, w1[1] = 0.75f, w0[0] = 0.5f, w1[0] = -3.0f;
            if (kind < 5) cases[kind]++;
        }
    for (size_t i = 0; !bad && i < P * OHW; i++) g[i] = 1.0f + (float)(i % 13);
    // The reference: first maximum of max(z, 0) (NaN -> 0); the gradient to it where z >= 0.
    for (size_t i = 0; !bad && i < P * HW; i++) want[i] = 0.0f;
    for (size_t p = 0; !bad && p < P; p++)
        for (size_t o = 0; o < OHW; o++) {
            const size_t i0 = p * HW + 2 * (o / OW) * W + 2 * (o % OW);
            const size_t idx[4] = {i0, i0 + 1, i0 + W, i0 + W + 1};
            size_t at = idx[0];
            float m = z[at] > 0.0f ? z[at] : 0.0f;
            for (int t = 1; t < 4; t++) {
                const float v = z[idx[t]] > 0.0f ? z[idx[t]] : 0.0f;
                if (v > m) m = v, at = idx[t];
            }
            want[at] = z[at] >= 0.0f ? g[p * OHW + o] : 0.0f;
        }
    for (size_t lv = 0; !bad && lv < N_OF(pool_levels); lv++) {
        const int was = net__pool_force(pool_levels[lv]);
        for (size_t i = 0; i < P * HW; i++) dz[i] = 7.0f; // every entry must be overwritten
        net__mp_forward_relu(l, out, z, B);
        net__mp_backward_relu(l, dz, g, z, B);
        net__pool_force(was);
        for (size_t i = 0; i < P * HW && !bad; i++)
            if (!(dz[i] == want[i])) {
                printf("    level %d: dz[%zu] (plane %zu, row %zu, col %zu) = %g, want %g (z %g)\n",
                       pool_levels[lv], i, i / HW, i % HW / W, i % W, (double)dz[i],
                       (double)want[i], (double)z[i]);
                bad = 1;
            }
    }
    for (size_t k = 0; k < 5; k++)
        if (cases[k] == 0) printf("    case %zu never built\n", k), bad = 1;
    free(z), free(dz), free(out), free(g), free(want);
    net_destroy(n);
    return bad ? -1 : 0;
}

TEST(relu_pool_backward_keeps_the_known_answer)
{
    ASSERT_EQ(relu_pool_backward_known(), 0);
}

TEST(relu_pool_fusion_keeps_the_known_answer)
{
    for (size_t lv = 0; lv < N_OF(pool_levels); lv++) {
        const int was = net__pool_force(pool_levels[lv]);
        const int a = relu_pool_known(2, 2); // the AVX-512 plane, then the 2x2 loop
        const int b = relu_pool_known(3, 2); // the general window
        net__pool_force(was);
        ASSERT_EQ(a, 0);
        ASSERT_EQ(b, 0);
    }
}

/* Three steps of net_backward_update on one net and of net_backward + net_optim_step on its
 * twin: the weights (plain and factorized dense, biases, conv) and momenta agree within 1e-6
 * of their scale, every gradient is zero after, and no tensor stays marked as stepped. */
static int fused_case(struct net_optim o, int *fused_any)
{
    const struct net_shape in = shp(2, 5, 5);
    const struct net_layer_spec s[] = {
        S_CONV(3, 3, 1, 1, 1), S_RELU(), S_FLAT(),     S_DENSE(37, 1), S_RELU(),
        S_DENSER(19, 5, 1),    S_RELU(), S_DENSE(4, 0)};
    struct net *a[2];
    for (int k = 0; k < 2; k++) {
        uint64_t rng = 5;
        a[k] = mk_init(&in, 4, s, N_OF(s), &rng);
        if (!a[k] || net_reserve(a[k], 6)) return -1;
    }
    float x[6 * 50];
    uint8_t y[6];
    uint64_t rng = 11;
    struct net_optim oo[2] = {o, o};
    *fused_any = 0;
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < N_OF(x); i++) x[i] = net_rand_normal(&rng);
        for (int b = 0; b < 6; b++) y[b] = (uint8_t)((b + step) % 4);
        for (int k = 0; k < 2; k++) {
            net_zero_grad(a[k]);
            net_forward(a[k], x, y, 6, 1);
        }
        net_backward(a[0], y, 6);
        net_optim_step(a[0], &oo[0], 0.05f);
        *fused_any += (int)net_backward_update(a[1], y, 6, &oo[1], 0.05f);
        if (!a[1]->grads_zero) return printf("    grads_zero not set\n"), -1;
    }
    for (size_t ti = 0; ti < a[1]->n_tensors; ti++) {
        const struct net_tensor *t = &a[1]->tensors[ti];
        if (t->fused) return printf("    %s still marked stepped\n", t->name), -1;
    }
    double scale = 0.0, dw = 0.0, dm = 0.0;
    for (size_t i = 0; i < a[0]->n_params; i++) {
        scale = fmax(scale, fabs(a[0]->params[i]));
        dw = fmax(dw, fabs(a[0]->params[i] - a[1]->params[i]));
        dm = fmax(dm, fabs(a[0]->m[i] - a[1]->m[i]));
        if (a[1]->grads[i] != 0.0f) return printf("    gradient %zu left\n", i), -1;
    }
    net_destroy(a[0]);
    net_destroy(a[1]);
    if (dw > 1e-6 * scale || dm > 1e-6 * scale)
        return printf("    fused and separate steps differ: w by %g, m by %g (scale %g)\n", dw, dm,
                      scale),
               -1;
    return 0;
}

TEST(backward_update_matches_backward_then_step)
{
    // SGD fuses the four dense weight tensors (the factorized layer has two) on each of the
    // three steps; AdamW fuses nothing.
    int fz = 0;
    struct net_optim sgd = {.kind = NET_SGD, .momentum = 0.9f, .weight_decay = 0.01f};
    ASSERT_EQ(fused_case(sgd, &fz), 0);
    ASSERT_EQ(fz, 12);
    sgd.nesterov = 1;
    ASSERT_EQ(fused_case(sgd, &fz), 0);
    ASSERT_EQ(fz, 12);
    struct net_optim adam = {
        .kind = NET_ADAMW, .weight_decay = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    ASSERT_EQ(fused_case(adam, &fz), 0);
    ASSERT_EQ(fz, 0);
}

TEST(init_schemes)
{
    // He: normal weights (std sqrt(2 / fan_in)), zero biases, branch conv2 at 0.1x without
    // BN. Torch: uniform +-1/sqrt(fan_in) for weights and biases, no branch scaling.
    struct net_shape in = shp(2, 6, 6);
    const struct net_layer_spec s[] = {S_CONV(8, 3, 1, 1, 1), S_RES(8, 8, 1, 0), S_FLAT(),
                                       S_DENSE(400, 1), S_DENSE(3, 1)};
    for (int scheme = 0; scheme < 2; scheme++) {
        struct net *n = mk(&in, 3, s, N_OF(s));
        ASSERT(n);
        uint64_t rng = 7;
        net_init_params_with(n, &rng, scheme ? NET_INIT_TORCH : NET_INIT_HE);
        const struct net_tensor *w = net_tensor_get(n, 3, "w"), *b = net_tensor_get(n, 3, "b");
        const struct net_tensor *c2 = net_tensor_get(n, 1, "c2.w");
        ASSERT(w && b && c2);
        const float *wv = net_tensor_data(n, w), *bv = net_tensor_data(n, b);
        const float *c2v = net_tensor_data(n, c2);
        const double fan = 8.0 * 6 * 6, bound = 1.0 / sqrt(fan); // dense1: 288 inputs
        double ss = 0.0, mx = 0.0, bmax = 0.0, c2ss = 0.0;
        for (size_t i = 0; i < w->n; i++) ss += (double)wv[i] * wv[i], mx = fmax(mx, fabs(wv[i]));
        for (size_t i = 0; i < b->n; i++) bmax = fmax(bmax, fabs(bv[i]));
        for (size_t i = 0; i < c2->n; i++) c2ss += (double)c2v[i] * c2v[i];
        const double sd = sqrt(ss / (double)w->n), c2sd = sqrt(c2ss / (double)c2->n);
        if (!scheme) {
            ASSERT_NEAR(sd, sqrt(2.0 / fan), 0.03 * sqrt(2.0 / fan)); // 115k draws
            ASSERT_FLT_OP(bmax, ==, 0.0);
            ASSERT_NEAR(c2sd, 0.1 * sqrt(2.0 / 72.0), 0.15 * 0.1 * sqrt(2.0 / 72.0));
        } else {
            ASSERT_FLT_OP(mx, <=, bound);
            ASSERT_NEAR(sd, bound / sqrt(3.0), 0.03 * bound); // uniform: std = bound / sqrt(3)
            ASSERT_FLT_OP(bmax, >, 0.5 * bound);
            ASSERT_FLT_OP(bmax, <=, bound);
            ASSERT_NEAR(c2sd, 1.0 / sqrt(72.0) / sqrt(3.0), 0.15 / sqrt(72.0));
        }
        net_destroy(n);
    }
}

TEST(optim_step_leaves_gradients_zero)
{
    // The update zeroes what it reads, so net_zero_grad can skip its memset; a backward in
    // between must make it memset again (else gradients would add up across steps).
    struct net *n = opt_net();
    ASSERT(n);
    ASSERT_EQ(net_reserve(n, 2), 0);
    const float x[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    const uint8_t y[2] = {0, 1};
    struct net_optim o = {.kind = NET_SGD, .momentum = 0.9f};
    net_zero_grad(n);
    net_forward(n, x, y, 2, 1);
    net_backward(n, y, 2);
    ASSERT_EQ(n->grads_zero, 0);
    float g1[6];
    memcpy(g1, n->grads, sizeof g1);
    ASSERT_FLT_OP(fabsf(g1[0]) + fabsf(g1[4]), >, 0.0f);
    net_optim_step(n, &o, 0.1f);
    ASSERT_EQ(n->grads_zero, 1);
    for (int i = 0; i < 6; i++) ASSERT_FLT_OP(n->grads[i], ==, 0.0f);
    // Two backwards without zeroing accumulate; net_zero_grad then really clears.
    net_forward(n, x, y, 2, 1);
    net_backward(n, y, 2);
    memcpy(g1, n->grads, sizeof g1);
    net_backward(n, y, 2);
    for (int i = 0; i < 6; i++) ASSERT_NEAR(n->grads[i], 2.0f * g1[i], 1e-6);
    net_zero_grad(n);
    for (int i = 0; i < 6; i++) ASSERT_FLT_OP(n->grads[i], ==, 0.0f);
    net_destroy(n);
}

TEST(optim_adamw)
{
    double g[3][6], w[6];
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 6; i++) g[t][i] = OPT_G[i];
    struct net_optim o = {
        .kind = NET_ADAMW, .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    ASSERT_EQ(opt_case(o, 0.01f, g, w), 0);
    // Constant g: bias-corrected m/sqrt(v) = sign(g), so w -= lr * (1 + wd w) per step:
    // 0.5 -> 0.4895 -> 0.4790105 -> 0.4685314895 (eps shifts the 9th digit).
    ASSERT_NEAR(w[0], 0.4685314905, 2e-7);
    ASSERT_NEAR(w[4], 0.13, 2e-7); // bias: three steps of +lr, no decay
    // Without bias correction the first step alone would move w by lr * 0.1 / sqrt(0.001).
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 6; i++) g[t][i] = (t == 1 ? -0.4 : 1.0) * OPT_G[i] + 0.01 * i;
    ASSERT_EQ(opt_case(o, 0.01f, g, w), 0);
    // g = 0.3, -0.12, 0.3 on w[0]: reference value from an independent script.
    g[0][0] = 0.3, g[1][0] = -0.1, g[2][0] = 0.2;
    ASSERT_EQ(opt_case(o, 0.01f, g, w), 0);
    ASSERT_NEAR(w[0], 0.4784924418, 2e-7);
}

// ---- schedules ------------------------------------------------------------------------------

TEST(schedules)
{
    struct net_sched c = {.kind = NET_SCHED_CONST, .lr = 0.1f};
    ASSERT_FLT_OP(net_sched_lr(&c, 0), ==, 0.1f);
    ASSERT_FLT_OP(net_sched_lr(&c, 123456), ==, 0.1f);

    struct net_sched s = {.kind = NET_SCHED_STEP, .lr = 0.1f, .step_size = 10, .gamma = 0.5f};
    ASSERT_NEAR(net_sched_lr(&s, 0), 0.1, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 9), 0.1, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 10), 0.05, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 19), 0.05, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 20), 0.025, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 35), 0.0125, 1e-7);
    // With warmup: linear ramp lr * (step + 1) / warmup, then the steps count from its end.
    s.warmup_steps = 4;
    ASSERT_NEAR(net_sched_lr(&s, 0), 0.025, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 3), 0.1, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 4), 0.1, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 13), 0.1, 1e-7);
    ASSERT_NEAR(net_sched_lr(&s, 14), 0.05, 1e-7);

    struct net_sched k = {.kind = NET_SCHED_COSINE,
                          .lr = 0.1f,
                          .min_lr = 0.001f,
                          .warmup_steps = 10,
                          .total_steps = 110};
    ASSERT_NEAR(net_sched_lr(&k, 0), 0.01, 1e-7); // first warmup step
    ASSERT_NEAR(net_sched_lr(&k, 4), 0.05, 1e-7);
    ASSERT_NEAR(net_sched_lr(&k, 9), 0.1, 1e-7);     // warmup end
    ASSERT_NEAR(net_sched_lr(&k, 10), 0.1, 1e-7);    // cosine start = peak
    ASSERT_NEAR(net_sched_lr(&k, 60), 0.0505, 1e-7); // mid: (lr + min) / 2
    ASSERT_NEAR(net_sched_lr(&k, 35), 0.001 + 0.099 * 0.5 * (1 + cos(T_PI / 4)), 1e-7);
    ASSERT_NEAR(net_sched_lr(&k, 110), 0.001, 1e-7); // end = min_lr
    ASSERT_NEAR(net_sched_lr(&k, 1000), 0.001, 1e-7);
    float prev = net_sched_lr(&k, 10);
    for (size_t t = 11; t <= 110; t++) {
        float cur = net_sched_lr(&k, t);
        ASSERT_FLT_OP(cur, <=, prev);
        prev = cur;
    }
}

// ---- random numbers ---------------------------------------------------------------------------

TEST(rng_determinism)
{
    // splitmix64 from state 0 (the published reference sequence).
    uint64_t s = 0;
    ASSERT(net_rand_u64(&s) == 0xe220a8397b1dcdafULL);
    ASSERT(net_rand_u64(&s) == 0x6e789e6aa1b965f4ULL);
    ASSERT(net_rand_u64(&s) == 0x06c45d188009454fULL);
    uint64_t a = 42, b = 42, c = 43;
    int same = 1, differ = 0;
    for (int i = 0; i < 1000; i++) {
        float ua = net_rand_uniform(&a), ub = net_rand_uniform(&b);
        same &= ua == ub;
        differ |= ua != net_rand_uniform(&c);
        if (!(ua >= 0.0f && ua < 1.0f)) same = 0;
    }
    ASSERT(same);
    ASSERT(differ);
    // Moments and range of the normal and bounded draws.
    double m1 = 0, m2 = 0;
    size_t hist[7] = {0};
    const int N = 200000;
    for (int i = 0; i < N; i++) {
        double z = net_rand_normal(&a);
        m1 += z, m2 += z * z;
        size_t r = net_rand_below(&a, 7);
        if (r < 7) hist[r]++;
    }
    m1 /= N, m2 /= N;
    ASSERT_NEAR(m1, 0.0, 0.01);
    ASSERT_NEAR(m2, 1.0, 0.02);
    size_t tot = 0;
    for (int r = 0; r < 7; r++) {
        tot += hist[r];
        ASSERT_NEAR((double)hist[r] / N, 1.0 / 7, 0.005);
    }
    ASSERT_EQ(tot, (size_t)N);
    // net_init_params: same seed, same parameters; another seed, others.
    struct net_shape in = shp(1, 6, 6);
    const struct net_layer_spec sp[] = {S_CONV(4, 3, 1, 1, 1), S_BN(),
                                        S_RES(3, 4, 1, 1),     S_FLAT(),
                                        S_DENSER(5, 2, 1),     S_DENSE(3, 1)};
    struct net *n1 = mk(&in, 3, sp, N_OF(sp)), *n2 = mk(&in, 3, sp, N_OF(sp));
    ASSERT(n1 && n2);
    uint64_t r1 = 7, r2 = 7;
    net_init_params(n1, &r1);
    net_init_params(n2, &r2);
    int eq = memcmp(n1->params, n2->params, n1->n_params * sizeof(float)) == 0 && r1 == r2;
    r2 = 8;
    net_init_params(n2, &r2);
    int ne = memcmp(n1->params, n2->params, n1->n_params * sizeof(float)) != 0;
    // He init: conv1.w std sqrt(2 / 9) over 36 values, loosely.
    const struct net_tensor *w = net_tensor_get(n1, 0, "w");
    double ss = 0;
    for (size_t i = 0; i < w->n; i++) ss += (double)n1->params[w->off + i] * n1->params[w->off + i];
    float g0 = net_tensor_data(n1, net_tensor_get(n1, 1, "gamma"))[0];
    float v0 = net_tensor_data(n1, net_tensor_get(n1, 1, "var"))[0];
    net_destroy(n1);
    net_destroy(n2);
    ASSERT(eq);
    ASSERT(ne);
    ASSERT_NEAR(sqrt(ss / 36), sqrt(2.0 / 9), 0.2);
    ASSERT_FLT_OP(g0, ==, 1.0f);
    ASSERT_FLT_OP(v0, ==, 1.0f);
}

// ---- evaluation ---------------------------------------------------------------------------------

/* A data set of another shape, or with a label beyond the classes, is refused (the forward
 * pass would read outside the inputs or the logits). */
TEST(evaluate_refuses_mismatched_data)
{
    net_set_threads(T_THREADS);
    struct net_shape in = shp(1, 1, 3), other = shp(1, 1, 2);
    const struct net_layer_spec s[] = {S_FLAT(), S_DENSE(4, 0)};
    struct net *n = mk(&in, 4, s, 2);
    ASSERT(n);
    float x[4 * 3] = {0};
    uint8_t y[4] = {0, 1, 2, 3}, ybad[4] = {0, 1, 4, 3};
    struct net_dataset d = {.n = 4, .n_classes = 4, .shape = other, .x = x, .y = y};
    struct net_eval ev;
    int r_shape = net_evaluate(n, &d, 2, &ev);
    d.shape = in;
    d.y = ybad;
    int r_label = net_evaluate(n, &d, 2, &ev);
    d.y = y;
    int r_ok = net_evaluate(n, &d, 2, &ev);
    if (r_ok == 0) net_eval_free(&ev);
    net_destroy(n);
    ASSERT_EQ(r_shape, -EINVAL);
    ASSERT_EQ(r_label, -EINVAL);
    ASSERT_EQ(r_ok, 0);
}

/* Identity "classifier": logits = (x0, x1, x2, 0), so predictions are chosen by the inputs.
 * Labels and predictions (true -> pred): 0->0 0->1 0->2 1->1 1->0 2->2 2->2 2->1; class 3
 * never occurs. Confusion rows [1 1 1 0] [1 1 0 0] [0 1 2 0] [0 0 0 0]; precision 1/2, 1/3,
 * 2/3, 0; recall 1/3, 1/2, 2/3, 0; F1 0.4, 0.4, 2/3, 0; accuracy 1/2. */
TEST(evaluate_metrics)
{
    net_set_threads(T_THREADS);
    struct net_shape in = shp(1, 1, 3);
    const struct net_layer_spec s[] = {S_FLAT(), S_DENSE(4, 0)};
    struct net *n = mk(&in, 4, s, 2);
    ASSERT(n);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w")); // (4, 3)
    memset(w, 0, 12 * sizeof(float));
    w[0] = w[4] = w[8] = 1.0f;
    float x[8 * 3] = {2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0, 0, 1, 0, 0, 2, 0, 5, 0};
    uint8_t y[8] = {0, 0, 0, 1, 1, 2, 2, 2};
    struct net_dataset d = {.n = 8, .n_classes = 4, .shape = in, .x = x, .y = y};
    struct net_eval ev;
    ASSERT_EQ(net_evaluate(n, &d, 3, &ev), 0); // batches of 3, 3, 2
    net_destroy(n);
    double loss = 0;
    for (int i = 0; i < 8; i++) {
        double z[4] = {x[3 * i], x[3 * i + 1], x[3 * i + 2], 0.0}, se = 0;
        for (int k = 0; k < 4; k++) se += exp(z[k]);
        loss += log(se) - z[y[i]];
    }
    loss /= 8;
    const size_t conf[16] = {1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0};
    const double prec[4] = {0.5, 1.0 / 3, 2.0 / 3, 0}, rec[4] = {1.0 / 3, 0.5, 2.0 / 3, 0};
    const double f1[4] = {0.4, 0.4, 2.0 / 3, 0};
    int ok = ev.n == 8 && ev.n_classes == 4;
    for (int i = 0; i < 16; i++) ok &= ev.confusion[i] == conf[i];
    double acc = ev.accuracy, el = ev.loss, dp = 0, dr = 0, df = 0;
    for (int k = 0; k < 4; k++) {
        dp += fabs(ev.precision[k] - prec[k]);
        dr += fabs(ev.recall[k] - rec[k]);
        df += fabs(ev.f1[k] - f1[k]);
    }
    if (!ok)
        for (int i = 0; i < 4; i++)
            printf("    confusion row %d: %zu %zu %zu %zu\n", i, ev.confusion[4 * i],
                   ev.confusion[4 * i + 1], ev.confusion[4 * i + 2], ev.confusion[4 * i + 3]);
    net_eval_free(&ev);
    ASSERT(ok);
    ASSERT_NEAR(acc, 0.5, 1e-12);
    ASSERT_NEAR(el, loss, 1e-6);
    ASSERT_NEAR(dp, 0.0, 1e-12);
    ASSERT_NEAR(dr, 0.0, 1e-12);
    ASSERT_NEAR(df, 0.0, 1e-12);
}

// ---- training sanity ---------------------------------------------------------------------------

/* A small conv net learns net_data_synthetic's classes with SGD: the batch loss falls from
 * about ln 4 = 1.39 to under 0.3 and held-out accuracy exceeds 90%. */
TEST(train_synthetic)
{
    // One thread: on a loaded two-core machine OpenMP's spinning barriers can make these
    // 300 small steps take 30 s with two threads instead of 0.5 s (the result is the same).
    net_set_threads(1);
    struct net_shape in = shp(1, 12, 12);
    struct net_dataset all, tr, va;
    ASSERT_EQ(net_data_synthetic(&all, 1280, &in, 4, 0.3f, 2024), 0);
    uint64_t rng = 99;
    ASSERT_EQ(net_data_split(&all, &tr, &va, 256, &rng), 0);
    float mean[4], sd[4];
    net_data_stats(&tr, mean, sd);
    net_data_normalize(&tr, mean, sd);
    net_data_normalize(&va, mean, sd);
    const struct net_layer_spec s[] = {S_CONV(8, 3, 1, 1, 1),  S_RELU(), S_POOL(2, 0),
                                       S_CONV(16, 3, 1, 1, 1), S_RELU(), S_GAP(),
                                       S_DENSE(4, 1)};
    struct net *n = mk(&in, 4, s, N_OF(s));
    ASSERT(n);
    net_init_params(n, &rng);
    struct net_batcher bt;
    ASSERT_EQ(net_batcher_init(&bt, tr.n, 5, 0, 0), 0);
    struct net_optim o = {.kind = NET_SGD, .momentum = 0.9f};
    const size_t B = 32, steps = 300;
    float *x = malloc(B * numel(&in) * sizeof *x);
    uint8_t y[32];
    double first = 0, last = 0;
    for (size_t t = 0; t < steps; t++) {
        net_batcher_next(&bt, &tr, B, x, y);
        net_zero_grad(n);
        float L = net_forward(n, x, y, B, 1);
        net_backward(n, y, B);
        net_optim_step(n, &o, 0.05f);
        if (t < 5) first += L / 5.0;
        if (t >= steps - 20) last += L / 20.0;
    }
    struct net_eval ev;
    int rc = net_evaluate(n, &va, 64, &ev);
    double acc = ev.accuracy;
    printf("  train: loss %.3f -> %.3f, held-out accuracy %.3f, loss %.3f\n", first, last, acc,
           ev.loss);
    net_eval_free(&ev);
    free(x);
    net_batcher_free(&bt);
    net_destroy(n);
    net_data_free(&tr);
    net_data_free(&va);
    ASSERT_EQ(rc, 0);
    ASSERT_FLT_OP(first, >, 1.0);
    ASSERT_FLT_OP(last, <, 0.3);
    ASSERT_FLT_OP(acc, >, 0.9);
}

/* Big convolutions run im2col in chunks of samples (net__conv_chunk keeps the col block near
 * 4 MiB). conv2 below needs 16*25*32*32 floats per sample, so a batch of 5 runs as chunks of
 * 2, 2 and 1: its outputs must equal five single-sample passes and its weight gradient their
 * mean. */
TEST(conv_chunked_batch_equals_single_samples)
{
    struct net_layer_spec sp[] = {
        {.kind = NET_CONV, .out = 16, .k = 3, .stride = 1, .pad = 1, .bias = 1},
        {.kind = NET_CONV, .out = 8, .k = 5, .stride = 1, .pad = 2, .bias = 1},
        {.kind = NET_FLATTEN},
        {.kind = NET_DENSE, .out = 3, .bias = 1},
    };
    struct net_shape in = {4, 32, 32, 1};
    struct net *n = NULL;
    char err[256];
    ASSERT_EQ(net_create(&n, &in, 3, sp, 4, err, sizeof err), 0);
    uint64_t rng = 11;
    net_init_params(n, &rng);
    const size_t B = 5, D = 4 * 32 * 32, HW = 32 * 32, OC = 8;
    float *x = malloc(B * D * sizeof(float)), *one = malloc(B * OC * HW * sizeof(float));
    float *gsum = calloc(n->n_params, sizeof(float));
    uint8_t y[5] = {0, 1, 2, 1, 0};
    ASSERT(x && one && gsum);
    for (size_t i = 0; i < B * D; i++) x[i] = net_rand_normal(&rng);
    const struct net_tensor *tw = net_tensor_get(n, 1, "w");
    for (size_t b = 0; b < B; b++) {
        net_zero_grad(n);
        net_forward(n, x + b * D, y + b, 1, 0);
        net_backward(n, y + b, 1);
        memcpy(one + b * OC * HW, n->acts[2], OC * HW * sizeof(float));
        for (size_t i = 0; i < tw->n; i++) gsum[i] += n->grads[tw->off + i] / (float)B;
    }
    net_zero_grad(n);
    net_forward(n, x, y, B, 0);
    net_backward(n, y, B);
    double maxd = 0, maxv = 0, gd = 0, gv = 0;
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < OC; c++)
            for (size_t i = 0; i < HW; i++) {
                double a = n->acts[2][(c * B + b) * HW + i], e = one[(b * OC + c) * HW + i];
                maxd = fmax(maxd, fabs(a - e));
                maxv = fmax(maxv, fabs(e));
            }
    for (size_t i = 0; i < tw->n; i++) {
        gd = fmax(gd, fabs(n->grads[tw->off + i] - gsum[i]));
        gv = fmax(gv, fabs(gsum[i]));
    }
    ASSERT(maxv > 0 && gv > 0);
    ASSERT_FLT_OP(maxd / maxv, <, 1e-5);
    ASSERT_FLT_OP(gd / gv, <, 1e-4);
    free(x);
    free(one);
    free(gsum);
    net_destroy(n);
}

TEST_MAIN()
