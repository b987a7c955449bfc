/* tests/test_svd.c: width adaptation (svd_adapt/) against the maths it claims.
 *
 * 1. Growth (orthogonal and GradMax) leaves the function unchanged for every group kind, in
 *    eval and training forward; new units receive gradient; new rows are orthogonal to the
 *    old ones; factorized rank growth likewise.
 * 2. rotate / factorize change a linear composite by exactly the dropped spectrum (2-norm).
 * 3. select keeps the kept units bit for bit, and its least-squares rewiring beats plain
 *    deletion on a known redundant layer and keeps exactly the independent units.
 * 4. After any surgery one SGD step runs, arenas agree, moments follow the same maps, and a
 *    checkpoint round trip preserves the new widths.
 *    rotate with a BN after the producer folds it first (the folded spectrum's tail).
 * 5. The policy loop: thresholds that keep everything change nothing; a forced shrink keeps
 *    the function and min_width; a forced rollback leaves the net as it was; growth waits
 *    for grow_patience, honours the cool-down, max_width and param_budget; factorize mode
 *    sets and grows ranks; the JSON-lines event log is written.
 * 6. Rank rules on known spectra. 7. Group discovery on a residual net.
 * Small nets throughout; every test uses 2 threads. On a machine with more runnable threads
 * than cores, libgomp's active waiting makes this binary ~10x slower: run it with
 * OMP_WAIT_POLICY=passive there. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <lapacke.h>

#include "net/codec.h"
#include "net/net.h"
#include "daemon/daemon_internal.h"
#include "svd_adapt/svd_adapt.h"
#include "svd_adapt/svd_internal.h"
#include "tests/test.h"
#include "tests/util.h"

#define T_THREADS 2


/* A test architecture: input c x h x w, classes, layers, and how many groups it has. */
struct ndef {
    const char *name;
    size_t c, h, w, classes, n_groups, ns;
    struct net_layer_spec s[12];
};

static const struct ndef NETS[] = {
    {"mlp",
     1,
     6,
     6,
     5,
     2,
     6,
     {S_FLAT(), S_DENSE(12, 1), S_RELU(), S_DENSE(10, 1), S_RELU(), S_DENSE(5, 1)}},
    {"mlp_bn",
     1,
     6,
     6,
     5,
     2,
     8,
     {S_FLAT(), S_DENSE(12, 0), S_BN(), S_RELU(), S_DENSE(8, 0), S_BN(), S_RELU(), S_DENSE(5, 1)}},
    {"dense_linear",
     1,
     6,
     6,
     5,
     2,
     5,
     {S_FLAT(), S_DENSE(12, 1), S_DENSE(10, 1), S_RELU(), S_DENSE(5, 1)}},
    {"conv_bn",
     3,
     8,
     8,
     5,
     2,
     8,
     {S_CONV(8, 3, 1, 1, 0), S_BN(), S_RELU(), S_CONV(8, 3, 1, 1, 0), S_BN(), S_RELU(), S_GAP(),
      S_DENSE(5, 1)}},
    {"conv_gap", 3, 8, 8, 5, 1, 4, {S_CONV(6, 3, 1, 1, 1), S_RELU(), S_GAP(), S_DENSE(5, 1)}},
    {"conv_flat",
     3,
     8,
     8,
     5,
     2,
     7,
     {S_CONV(6, 3, 1, 1, 1), S_RELU(), S_POOL(2, 2), S_FLAT(), S_DENSE(8, 1), S_RELU(),
      S_DENSE(5, 1)}},
    {"res_inner",
     3,
     8,
     8,
     5,
     2,
     5,
     {S_CONV(8, 3, 1, 1, 1), S_RELU(), S_RES(6, 8, 1, 0), S_GAP(), S_DENSE(5, 1)}},
    {"res_inner_bn",
     3,
     8,
     8,
     5,
     2,
     5,
     {S_CONV(8, 3, 1, 1, 1), S_RELU(), S_RES(6, 8, 1, 1), S_GAP(), S_DENSE(5, 1)}},
    {"stream",
     3,
     8,
     8,
     5,
     5,
     7,
     {S_CONV(6, 3, 1, 1, 1), S_RELU(), S_RES(4, 6, 1, 0), S_RES(4, 6, 1, 0), S_RES(4, 8, 2, 0),
      S_GAP(), S_DENSE(5, 1)}},
    {"stream_bn",
     3,
     8,
     8,
     5,
     5,
     8,
     {S_CONV(6, 3, 1, 1, 0), S_BN(), S_RELU(), S_RES(4, 6, 1, 1), S_RES(4, 6, 1, 1),
      S_RES(4, 8, 2, 1), S_GAP(), S_DENSE(5, 1)}},
    {"stream_flat",
     3,
     6,
     6,
     5,
     3,
     6,
     {S_CONV(6, 3, 1, 1, 1), S_RELU(), S_RES(4, 6, 1, 0), S_RES(4, 6, 1, 0), S_FLAT(),
      S_DENSE(5, 1)}},
    {"stream_flat_bn",
     3,
     6,
     6,
     5,
     3,
     6,
     {S_CONV(6, 3, 1, 1, 0), S_BN(), S_RES(4, 6, 1, 1), S_RES(4, 6, 1, 1), S_FLAT(),
      S_DENSE(5, 1)}},
    {"factorized",
     3,
     6,
     6,
     5,
     3,
     8,
     {S_CONVR(8, 3, 3, 1, 1, 1), S_RELU(), S_CONVR(6, 2, 3, 1, 1, 1), S_RELU(), S_GAP(),
      S_DENSER(8, 3, 1), S_RELU(), S_DENSE(5, 1)}},
};

static void setup(void)
{
    net_set_threads(T_THREADS);
}

static struct net *mk(const struct ndef *d)
{
    struct net *n = NULL;
    char err[256] = "";
    struct net_shape in = {d->c, d->h, d->w, 1};
    int rc = net_create(&n, &in, d->classes, d->s, d->ns, err, sizeof err);
    if (rc < 0) {
        printf("    net_create(%s) failed (%d): %s\n", d->name, rc, err);
        return NULL;
    }
    return n;
}

static const char *sfx_of(const char *name)
{
    const char *p = strrchr(name, '.');
    return p ? p + 1 : name;
}

static void moments_from_params(struct net *n)
{
    for (size_t i = 0; i < n->n_params; i++) {
        n->m[i] = n->params[i];
        n->v[i] = n->params[i] * n->params[i];
    }
}

/* He weights, then biases / BN betas ~ N(0, 0.2), gammas in [0.8, 1.2], running means
 * N(0, 0.2), running vars in [0.5, 1.5], so nothing hides behind a default. The moments are
 * set to m = params and v = params^2, so that "moments follow the same maps" is checkable:
 * a linear map applied to both keeps them equal. */
static void init_net(struct net *n, uint64_t seed)
{
    uint64_t rng = seed;
    net_init_params(n, &rng);
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        const char *s = sfx_of(t->name);
        float *d = net_tensor_data(n, t);
        for (size_t i = 0; i < t->n; i++) {
            if (!strcmp(s, "b") || !strcmp(s, "beta"))
                d[i] = 0.2f * net_rand_normal(&rng);
            else if (!strcmp(s, "gamma"))
                d[i] = 0.8f + 0.4f * net_rand_uniform(&rng);
            else if (!strcmp(s, "mean"))
                d[i] = 0.2f * net_rand_normal(&rng);
            else if (!strcmp(s, "var"))
                d[i] = 0.5f + net_rand_uniform(&rng);
        }
    }
    moments_from_params(n);
}

static float *rand_x(size_t count, uint64_t seed)
{
    uint64_t rng = seed;
    float *x = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) x[i] = net_rand_normal(&rng);
    return x;
}

static uint8_t *rand_y(size_t B, size_t classes, uint64_t seed)
{
    uint64_t rng = seed;
    uint8_t *y = malloc(B);
    for (size_t i = 0; i < B; i++) y[i] = (uint8_t)net_rand_below(&rng, classes);
    return y;
}

static size_t in_numel(const struct net *n)
{
    return n->in_shape.c * n->in_shape.h * n->in_shape.w;
}

/* Logits of a forward pass (malloc'ed copy). */
static float *logits(struct net *n, const float *x, size_t B, int training)
{
    net_forward(n, x, NULL, B, training);
    size_t k = B * n->n_classes;
    float *o = malloc(k * sizeof(float));
    memcpy(o, n->acts[n->n_layers], k * sizeof(float));
    return o;
}

/* max |a - b| / max |a|. */
static double rel_change(const float *a, const float *b, size_t N)
{
    double d = 0.0, s = 0.0;
    for (size_t i = 0; i < N; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e; // NaN propagates
        if (fabs(a[i]) > s) s = fabs(a[i]);
    }
    return d / (s > 0 ? s : 1.0);
}

/* The output change between two nets on x, in eval or training mode. */
static double fn_change(struct net *a, struct net *b, const float *x, size_t B, int training)
{
    float *la = logits(a, x, B, training), *lb = logits(b, x, B, training);
    double r = rel_change(la, lb, B * a->n_classes);
    free(la);
    free(lb);
    return r;
}

/* The producing weight of a group (the one surgery rotates / selects / grows orthogonally). */
static const struct net_tensor *main_w(const struct net *n, const struct svd_gref *g)
{
    const struct net_layer *l = &n->layers[g->layer];
    switch (g->kind) {
    case SVD_G_UNITS: return net_tensor_get(n, g->layer, l->spec.rank ? "u" : "w");
    case SVD_G_RES_INNER: return net_tensor_get(n, g->layer, "c1.w");
    case SVD_G_STREAM: return net_tensor_get(n, g->layer, l->spec.kind == NET_RES ? "c2.w" : "w");
    }
    return NULL;
}

static double dot(const float *a, const float *b, size_t L)
{
    double s = 0.0;
    for (size_t i = 0; i < L; i++) s += (double)a[i] * b[i];
    return s;
}

/* Index of each row of `nw` (k x L) among the rows of `ow` (m x L), matched bit for bit;
 * -1 when absent. Returns how many rows matched distinct old rows. */
static size_t match_rows(const float *ow, size_t m, const float *nw, size_t k, size_t L, long *idx)
{
    size_t ok = 0;
    char *used = calloc(m, 1);
    for (size_t i = 0; i < k; i++) {
        idx[i] = -1;
        for (size_t j = 0; j < m; j++)
            if (!used[j] && !memcmp(ow + j * L, nw + i * L, L * sizeof(float))) {
                idx[i] = (long)j;
                used[j] = 1;
                ok++;
                break;
            }
    }
    free(used);
    return ok;
}

/* Elements per channel in one row of a consumer tensor (dims[1] holds m channels). */
static size_t chan_elems(const struct net_tensor *t, size_t m)
{
    return (t->dims[1] / m) * t->dims[2] * t->dims[3];
}

/* Max |value| over the columns of channels [c0, c1) of a (dims[0] x m*pc) tensor. */
static double cols_absmax(const float *a, const struct net_tensor *t, size_t m, size_t c0,
                          size_t c1)
{
    const size_t pc = chan_elems(t, m), row = m * pc;
    double mx = 0.0;
    for (size_t o = 0; o < t->dims[0]; o++)
        for (size_t j = c0 * pc; j < c1 * pc; j++) {
            double v = fabs(a[o * row + j]);
            if (!(v <= mx)) mx = v;
        }
    return mx;
}

// ---- 1. growth preserves the function ------------------------------------------------------

/* Is g a dense producer whose (single) consumer is a plain dense read directly (GradMax)? */
static int gradmax_applicable(const struct net *n, const struct svd_gref *g)
{
    if (g->kind != SVD_G_UNITS || n->layers[g->layer].spec.kind != NET_DENSE) return 0;
    for (size_t i = g->layer + 1; i < n->n_layers; i++) {
        const struct net_layer_spec *s = &n->layers[i].spec;
        if (s->kind == NET_BN || s->kind == NET_RELU) continue;
        return s->kind == NET_DENSE && !s->rank;
    }
    return 0;
}

/* Grows g by `extra` and checks everything test 1 asks for. */
static void check_grow(int *test__failed, const char *label, struct net *n,
                       const struct svd_gref *g, size_t extra, enum svd_grow mode, const float *x,
                       const uint8_t *y, size_t B)
{
    char err[256] = "", gname[64];
    svd_group_name(n, g, gname, sizeof gname);
    const size_t m = svd_group_width(n, g), m2 = m + extra;
    const int gm = mode == SVD_GROW_GRADMAX && gradmax_applicable(n, g);
    uint64_t rng = 77;
    struct net *gn = NULL;
    int rc = svd_grow(&gn, n, g, extra, mode, x, y, B, &rng, err, sizeof err);
    if (rc != 0) printf("    %s %s: svd_grow: %s\n", label, gname, err);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(svd_group_width(gn, g), m2);

    // Tensor by tensor (before any forward pass): unchanged shapes are bit-identical, grown
    // rows take their defaults, grown columns are zero (GradMax: the dense consumer's not).
    ASSERT_EQ(gn->n_tensors, n->n_tensors);
    const struct net_tensor *tw = main_w(gn, g);
    ASSERT(tw != NULL);
    const size_t Lw = tw->n / m2;
    size_t n_cols = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *to = &n->tensors[ti], *tn = &gn->tensors[ti];
        ASSERT_STR_EQ(to->name, tn->name);
        const float *po = net_tensor_data(n, to), *pn = net_tensor_data(gn, tn);
        const int param = to->arena == NET_ARENA_PARAM;
        const char *s = sfx_of(tn->name);
        if (to->n == tn->n) {
            ASSERT(!memcmp(po, pn, to->n * sizeof(float)));
            continue;
        }
        if (to->dims[0] != tn->dims[0]) { // producing rows
            ASSERT_EQ(to->dims[0], m);
            ASSERT_EQ(tn->dims[0], m2);
            const size_t L = to->n / m;
            ASSERT_EQ(tn->n, m2 * L);
            ASSERT(!memcmp(po, pn, m * L * sizeof(float)));
            if (param) {
                ASSERT(!memcmp(n->m + to->off, gn->m + tn->off, m * L * sizeof(float)));
                for (size_t i = m * L; i < m2 * L; i++) {
                    ASSERT(gn->m[tn->off + i] == 0.0f);
                    ASSERT(gn->v[tn->off + i] == 0.0f);
                }
            }
            if (tn == tw) continue;
            float want = !strcmp(s, "gamma") || !strcmp(s, "var") ? 1.0f : 0.0f;
            for (size_t i = m * L; i < m2 * L; i++) {
                if (pn[i] != want)
                    printf("    %s %s (%s): new row entry %s[%zu] = %g, want %g\n", label, gname,
                           gm ? "gradmax" : "orthogonal", tn->name, i, pn[i], want);
                ASSERT(pn[i] == want);
            }
            if (gm && !strcmp(s, "b")) ASSERT(pn[m] == 0.0f);
        } else { // consumer columns
            ASSERT(to->nd >= 2);
            ASSERT_EQ(to->dims[1] / m * m2, tn->dims[1]);
            n_cols++;
            const size_t pco = chan_elems(to, m), pcn = chan_elems(tn, m2);
            ASSERT_EQ(pco, pcn);
            for (size_t o = 0; o < to->dims[0]; o++) {
                ASSERT(!memcmp(po + o * m * pco, pn + o * m2 * pcn, m * pco * sizeof(float)));
                if (param)
                    ASSERT(!memcmp(n->m + to->off + o * m * pco, gn->m + tn->off + o * m2 * pcn,
                                   m * pco * sizeof(float)));
            }
            double newmax = cols_absmax(pn, tn, m2, m, m2);
            if (param) ASSERT_FLT_OP(cols_absmax(gn->m + tn->off, tn, m2, m, m2), ==, 0.0);
            if (!gm) {
                ASSERT_FLT_OP(newmax, ==, 0.0);
                continue;
            }
            // GradMax: each new outgoing column has half the mean norm of the old ones.
            const size_t D0 = tn->dims[0];
            double mean = 0.0;
            for (size_t j = 0; j < m; j++) {
                double sq = 0.0;
                for (size_t o = 0; o < D0; o++) sq += (double)pn[o * m2 + j] * pn[o * m2 + j];
                mean += sqrt(sq) / (double)m;
            }
            for (size_t e = 0; e < extra && e < D0; e++) {
                double sq = 0.0;
                for (size_t o = 0; o < D0; o++)
                    sq += (double)pn[o * m2 + m + e] * pn[o * m2 + m + e];
                ASSERT_NEAR(sqrt(sq), 0.5 * mean, 1e-4 * mean);
            }
        }
    }
    ASSERT_GE(n_cols, 1);

    // The producing weight's new rows.
    const float *w = net_tensor_data(gn, tw);
    if (gm) {
        for (size_t i = m * Lw; i < m2 * Lw; i++) ASSERT(w[i] == 0.0f);
    } else {
        double norms[64];
        ASSERT(m < 64);
        for (size_t i = 0; i < m; i++) norms[i] = sqrt(dot(w + i * Lw, w + i * Lw, Lw));
        for (size_t i = 0; i <= m / 2; i++) // median as the code defines it: sorted[m / 2]
            for (size_t j = i + 1; j < m; j++)
                if (norms[j] < norms[i]) {
                    double t = norms[i];
                    norms[i] = norms[j];
                    norms[j] = t;
                }
        const double med = norms[m / 2];
        for (size_t e = m; e < m2; e++) {
            const double ne = sqrt(dot(w + e * Lw, w + e * Lw, Lw));
            ASSERT_NEAR(ne, med, 1e-3 * med);
            if (Lw <= m2) continue; // orthogonality only possible when fan-in exceeds width
            for (size_t i = 0; i < e; i++) {
                double c = dot(w + e * Lw, w + i * Lw, Lw) /
                           (ne * sqrt(dot(w + i * Lw, w + i * Lw, Lw)) + 1e-30);
                if (!(fabs(c) < 1e-4))
                    printf("    %s %s: new row %zu vs row %zu: cos %.3g\n", label, gname, e, i, c);
                ASSERT_FLT_OP(fabs(c), <, 1e-4);
            }
        }
    }

    // The function, in eval mode, then in training mode (each pair from the same BN state;
    // training mode moves the running statistics, so this comes after the tensor checks).
    double de = fn_change(n, gn, x, B, 0), dt = fn_change(n, gn, x, B, 1);
    if (!(de < 1e-5 && dt < 1e-5))
        printf("    %s %s (%s): output change eval %.3g train %.3g\n", label, gname,
               gm ? "gradmax" : "orthogonal", de, dt);
    ASSERT_FLT_OP(de, <, 1e-5);
    ASSERT_FLT_OP(dt, <, 1e-5);

    // Gradients reach the new units after one labelled forward / backward.
    net_zero_grad(gn);
    float loss = net_forward(gn, x, y, B, 1);
    ASSERT(isfinite(loss));
    net_backward(gn, y, B);
    if (gm) {
        double mx = 0.0;
        for (size_t i = m * Lw; i < m2 * Lw; i++)
            if (fabs(gn->grads[tw->off + i]) > mx) mx = fabs(gn->grads[tw->off + i]);
        if (!(mx > 1e-7)) printf("    %s %s: gradmax new rows get no gradient\n", label, gname);
        ASSERT_FLT_OP(mx, >, 1e-7);
    } else {
        for (size_t ti = 0; ti < n->n_tensors; ti++) {
            const struct net_tensor *to = &n->tensors[ti], *tn = &gn->tensors[ti];
            if (to->arena != NET_ARENA_PARAM || to->dims[0] != tn->dims[0] || to->n == tn->n)
                continue;
            double gmax = cols_absmax(gn->grads + tn->off, tn, m2, m, m2);
            if (!(gmax > 1e-7))
                printf("    %s %s: consumer %s new columns get no gradient\n", label, gname,
                       tn->name);
            ASSERT_FLT_OP(gmax, >, 1e-7);
        }
    }
    net_destroy(gn);
}

/* Every group of every test architecture, grown by 3, orthogonally and by GradMax. */
TEST(grow_preserves_function_every_group_kind)
{
    setup();
    const size_t B = 24;
    for (size_t d = 0; d < N_OF(NETS); d++) {
        struct net *n = mk(&NETS[d]);
        ASSERT(n != NULL);
        init_net(n, 1000 + d);
        float *x = rand_x(B * in_numel(n), 2000 + d);
        uint8_t *y = rand_y(B, n->n_classes, 3000 + d);
        struct svd_gref g[16];
        size_t ng = svd_groups(n, g, 16);
        ASSERT_EQ(ng, NETS[d].n_groups);
        for (size_t i = 0; i < ng; i++) {
            check_grow(test__failed, NETS[d].name, n, &g[i], 3, SVD_GROW_ORTHOGONAL, x, y, B);
            if (*test__failed) return;
            check_grow(test__failed, NETS[d].name, n, &g[i], 2, SVD_GROW_GRADMAX, x, y, B);
            if (*test__failed) return;
        }
        free(x);
        free(y);
        net_destroy(n);
    }
}

/* GradMax's outgoing columns are the top left singular vectors of M = sum_b dz_b h_b^T:
 * the gradient on new unit e's (zero) incoming row is scale * u_e^T M, of norm scale * s_e,
 * so the new rows' gradient norms are the top singular values of M times the scale. */
TEST(grow_gradmax_follows_gradient_correlation)
{
    setup();
    const size_t B = 32, extra = 3;
    for (size_t d = 0; d < 3; d++) { // mlp (relu between), mlp_bn (bn + relu), dense_linear
        struct net *n = mk(&NETS[d]);
        ASSERT(n != NULL);
        init_net(n, 40 + d);
        float *x = rand_x(B * in_numel(n), 41 + d);
        uint8_t *y = rand_y(B, n->n_classes, 42 + d);
        const size_t p = 1;                                      // dense1
        const size_t cons = NETS[d].s[2].kind == NET_DENSE ? 2 : // dense_linear
                                NETS[d].s[3].kind == NET_DENSE ? 3
                                                               : 4;
        const size_t L = n->layers[p].in.c, nc = n->layers[cons].out.c, m = n->layers[p].spec.out;
        // M from the original net, eval mode (what svd_grow uses), in double.
        net_zero_grad(n);
        net_forward(n, x, y, B, 0);
        net_backward(n, y, B);
        double *M = calloc(nc * L, sizeof(double)), sv[64];
        for (size_t b = 0; b < B; b++)
            for (size_t o = 0; o < nc; o++)
                for (size_t i = 0; i < L; i++)
                    M[o * L + i] += (double)n->dacts[cons + 1][b * nc + o] * n->acts[p][b * L + i];
        ASSERT_EQ(LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', (lapack_int)nc, (lapack_int)L, M,
                                 (lapack_int)L, sv, NULL, (lapack_int)nc, NULL, (lapack_int)L),
                  0);
        free(M);
        const float *w2 = net_tensor_data(n, net_tensor_get(n, cons, "w"));
        double scale = 0.0;
        for (size_t j = 0; j < m; j++) {
            double sq = 0.0;
            for (size_t o = 0; o < nc; o++) sq += (double)w2[o * m + j] * w2[o * m + j];
            scale += 0.5 * sqrt(sq) / (double)m;
        }
        struct svd_gref g = {SVD_G_UNITS, p};
        struct net *gn = NULL;
        char err[256];
        uint64_t rng = 5;
        ASSERT_EQ(svd_grow(&gn, n, &g, extra, SVD_GROW_GRADMAX, x, y, B, &rng, err, sizeof err), 0);
        net_zero_grad(gn);
        net_forward(gn, x, y, B, 0);
        net_backward(gn, y, B);
        const struct net_tensor *tw = net_tensor_get(gn, p, "w");
        for (size_t e = 0; e < extra; e++) {
            const float *ge = gn->grads + tw->off + (m + e) * L;
            double gnorm = sqrt(dot(ge, ge, L));
            // The second half of a BN'd unit's gradient is the BN backward's, not u^T M: only
            // the nets without BN between have this closed form.
            if (d != 1)
                ASSERT_NEAR(gnorm, scale * sv[e], 2e-3 * scale * sv[0]);
            else
                ASSERT_FLT_OP(gnorm, >, 0.0);
        }
        net_destroy(gn);
        net_destroy(n);
        free(x);
        free(y);
    }
}

/* svd_set_rank r -> r + 2 on a factorized dense and conv: function unchanged, new U columns
 * zero and trained, new V rows orthonormal (to each other and to the old rows). */
static void check_rank_grow(int *test__failed, const char *label, struct net *n, size_t layer,
                            const float *x, const uint8_t *y, size_t B)
{
    const size_t R = n->layers[layer].spec.rank, r = R + 2, m = n->layers[layer].spec.out;
    struct net *gn = NULL;
    char err[256] = "";
    uint64_t rng = 9;
    int rc = svd_set_rank(&gn, n, layer, r, NULL, &rng, err, sizeof err);
    if (rc) printf("    %s: %s\n", label, err);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(gn->layers[layer].spec.rank, r);
    double de = fn_change(n, gn, x, B, 0), dt = fn_change(n, gn, x, B, 1);
    ASSERT_FLT_OP(de, <, 1e-5);
    ASSERT_FLT_OP(dt, <, 1e-5);
    const struct net_tensor *uo = net_tensor_get(n, layer, "u");
    const struct net_tensor *vo = net_tensor_get(n, layer, "v");
    const struct net_tensor *un = net_tensor_get(gn, layer, "u");
    const struct net_tensor *vn = net_tensor_get(gn, layer, "v");
    ASSERT(uo && vo && un && vn);
    const size_t L = vo->n / R;
    ASSERT_EQ(un->n, m * r);
    ASSERT_EQ(vn->n, r * L);
    const float *pu = net_tensor_data(gn, un), *pv = net_tensor_data(gn, vn);
    const float *ou = net_tensor_data(n, uo), *ov = net_tensor_data(n, vo);
    for (size_t i = 0; i < m; i++) {
        ASSERT(!memcmp(pu + i * r, ou + i * R, R * sizeof(float)));
        for (size_t j = R; j < r; j++) ASSERT(pu[i * r + j] == 0.0f);
    }
    ASSERT(!memcmp(pv, ov, R * L * sizeof(float)));
    double worst_cos = 0.0;
    for (size_t e = R; e < r; e++) {
        ASSERT_NEAR(sqrt(dot(pv + e * L, pv + e * L, L)), 1.0, 1e-5);
        for (size_t i = 0; i < e; i++) {
            double c = dot(pv + e * L, pv + i * L, L) / sqrt(dot(pv + i * L, pv + i * L, L));
            if (!(fabs(c) < 1e-4))
                printf("    %s: new V row %zu vs row %zu: cos %.3g\n", label, e, i, c);
            worst_cos = fmax(worst_cos, fabs(c));
        }
    }
    net_zero_grad(gn);
    net_forward(gn, x, y, B, 1);
    net_backward(gn, y, B);
    double gmax = 0.0;
    for (size_t i = 0; i < m; i++)
        for (size_t j = R; j < r; j++) gmax = fmax(gmax, fabs(gn->grads[un->off + i * r + j]));
    net_destroy(gn);
    ASSERT_FLT_OP(gmax, >, 1e-7);
    ASSERT_FLT_OP(worst_cos, <, 1e-4);
}

TEST(grow_rank_factorized_dense_and_conv)
{
    setup();
    static const struct ndef defs[2] = {
        {"fact_dense", 1, 6, 6, 5, 1, 4, {S_FLAT(), S_DENSER(12, 4, 1), S_RELU(), S_DENSE(5, 1)}},
        {"fact_conv",
         3,
         6,
         6,
         5,
         1,
         4,
         {S_CONVR(8, 3, 3, 1, 1, 1), S_RELU(), S_GAP(), S_DENSE(5, 1)}},
    };
    const size_t B = 16, layer[2] = {1, 0};
    for (int d = 0; d < 2; d++) {
        // Two starting points: the He-initialised factors as built from a config, and the
        // orthonormal V an SVD (plain -> rank) leaves.
        for (int from_svd = 0; from_svd < 2; from_svd++) {
            struct net *n = mk(&defs[d]);
            ASSERT(n != NULL);
            init_net(n, 60 + d);
            if (from_svd) {
                struct net_layer_spec s[4];
                memcpy(s, defs[d].s, sizeof s);
                s[layer[d]].rank = 0;
                struct ndef plain = defs[d];
                memcpy(plain.s, s, sizeof s);
                struct net *p = mk(&plain), *f = NULL;
                ASSERT(p != NULL);
                init_net(p, 70 + d);
                char err[256];
                uint64_t rng = 1;
                ASSERT_EQ(svd_set_rank(&f, p, layer[d], defs[d].s[layer[d]].rank, NULL, &rng, err,
                                       sizeof err),
                          0);
                net_destroy(p);
                net_destroy(n);
                n = f;
            }
            float *x = rand_x(B * in_numel(n), 61 + d);
            uint8_t *y = rand_y(B, n->n_classes, 62 + d);
            char label[64];
            snprintf(label, sizeof label, "%s%s", defs[d].name, from_svd ? " (from svd)" : " (he)");
            check_rank_grow(test__failed, label, n, layer[d], x, y, B);
            net_destroy(n);
            free(x);
            free(y);
        }
    }
}

// ---- 2. rotate / factorize drop exactly the tail of the spectrum --------------------------

#define LIN_N 20 // inputs (1 x 4 x 5)
#define LIN_M 8  // hidden = classes
static const double LIN_S[LIN_M] = {10.0, 8.0, 6.5, 5.0, 3.5, 2.0, 1.0, 0.5};

/* flatten -> dense(8, no bias) -> dense(8, no bias) with W1 = U diag(LIN_S) V^T, W2 = I. */
static struct net *lin_net(void)
{
    static const struct ndef d = {"lin", 1, 4, 5,
                                  LIN_M, 1, 3, {S_FLAT(), S_DENSE(LIN_M, 0), S_DENSE(LIN_M, 0)}};
    struct net *n = mk(&d);
    if (!n) return NULL;
    uint64_t rng = 123;
    double U[LIN_M * LIN_M], V[LIN_N * LIN_M];
    rand_orth(U, LIN_M, LIN_M, &rng);
    rand_orth(V, LIN_N, LIN_M, &rng);
    float *w1 = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    float *w2 = net_tensor_data(n, net_tensor_get(n, 2, "w"));
    set_usv(w1, LIN_M, LIN_N, U, LIN_S, V, LIN_M);
    for (size_t i = 0; i < LIN_M; i++) w2[i * LIN_M + i] = 1.0f;
    return n;
}

/* The composite map, transposed (LIN_N x LIN_M): forward of the basis vectors e_i. */
static void composite(struct net *n, double *c)
{
    float x[LIN_N * LIN_N] = {0};
    for (size_t i = 0; i < LIN_N; i++) x[i * LIN_N + i] = 1.0f;
    net_forward(n, x, NULL, LIN_N, 0);
    for (size_t i = 0; i < LIN_N * LIN_M; i++) c[i] = n->acts[n->n_layers][i];
}

/* Singular values (descending) of a - b, both LIN_N x LIN_M. */
static void diff_svals(const double *a, const double *b, double *s)
{
    double d[LIN_N * LIN_M];
    for (size_t i = 0; i < LIN_N * LIN_M; i++) d[i] = a[i] - b[i];
    LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', LIN_N, LIN_M, d, LIN_M, s, NULL, LIN_N, NULL, LIN_M);
}

TEST(rotate_drops_exactly_the_tail_spectrum)
{
    setup();
    struct net *n = lin_net();
    ASSERT(n != NULL);
    double c0[LIN_N * LIN_M], c1[LIN_N * LIN_M], s[LIN_M], zero[LIN_N * LIN_M] = {0};
    composite(n, c0);
    diff_svals(c0, zero, s); // sanity: the constructed spectrum
    for (size_t i = 0; i < LIN_M; i++) ASSERT_NEAR(s[i], LIN_S[i], 1e-5 * LIN_S[0]);
    struct svd_gref g = {SVD_G_UNITS, 1};
    for (size_t k = 1; k < LIN_M; k++) {
        struct net *r = NULL;
        char err[256];
        ASSERT_EQ(svd_shrink(&r, n, &g, k, SVD_MODE_ROTATE, NULL, 0, err, sizeof err), 0);
        ASSERT_EQ(r->layers[1].spec.out, k);
        composite(r, c1);
        diff_svals(c1, c0, s);
        ASSERT_NEAR(s[0], LIN_S[k], 1e-4 * LIN_S[k]);
        diff_svals(c1, zero, s); // the new map has rank k: its (k+1)-th value vanishes
        ASSERT_FLT_OP(s[k], <, 1e-5 * LIN_S[0]);
        net_destroy(r);
    }
    net_destroy(n);
}

/* rotate with a BN layer after the producer folds the BN (eval form) into the weight first:
 * the eval-mode linear map then changes by exactly s_{k+1} of diag(gamma / sigma) W1. */
TEST(rotate_with_bn_folds_and_drops_exactly_the_tail_spectrum)
{
    setup();
    static const struct ndef d = {
        "lin_bn", 1, 4, 5, LIN_M, 1, 4, {S_FLAT(), S_DENSE(LIN_M, 1), S_BN(), S_DENSE(LIN_M, 0)}};
    struct net *n = mk(&d);
    ASSERT(n != NULL);
    init_net(n, 17); // random bias, gamma, beta, running mean and var
    struct net *lin = lin_net();
    ASSERT(lin != NULL);
    memcpy(net_tensor_data(n, net_tensor_get(n, 1, "w")),
           net_tensor_data(lin, net_tensor_get(lin, 1, "w")), LIN_M * LIN_N * sizeof(float));
    float *w2 = net_tensor_data(n, net_tensor_get(n, 3, "w"));
    memset(w2, 0, LIN_M * LIN_M * sizeof(float));
    for (size_t i = 0; i < LIN_M; i++) w2[i * LIN_M + i] = 1.0f;
    net_destroy(lin);
    // Spectrum of the folded weight A W1.
    const float *w1 = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    const float *gam = net_tensor_data(n, net_tensor_get(n, 2, "gamma"));
    const float *var = net_tensor_data(n, net_tensor_get(n, 2, "var"));
    double f[LIN_M * LIN_N], sf[LIN_M];
    for (size_t i = 0; i < LIN_M; i++)
        for (size_t j = 0; j < LIN_N; j++)
            f[i * LIN_N + j] = (double)gam[i] / sqrt((double)var[i] + 1e-5) * w1[i * LIN_N + j];
    ASSERT_EQ(
        LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', LIN_M, LIN_N, f, LIN_N, sf, NULL, LIN_M, NULL, LIN_N),
        0);
    const size_t Bc = 64;
    float *xc = rand_x(Bc * LIN_N, 18);
    float zero_in[LIN_N] = {0};
    double c0[LIN_N * LIN_M], c1[LIN_N * LIN_M], s[LIN_M];
    composite(n, c0);
    float *o0 = logits(n, zero_in, 1, 0);
    for (size_t i = 0; i < LIN_N; i++)
        for (size_t j = 0; j < LIN_M; j++) c0[i * LIN_M + j] -= o0[j];
    struct svd_gref g = {SVD_G_UNITS, 1};
    char err[256] = "";
    struct net *r = NULL;
    ASSERT_EQ(svd_shrink(&r, n, &g, 3, SVD_MODE_ROTATE, NULL, 0, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "calibration");
    for (size_t k = 1; k < LIN_M; k++) {
        int rc = svd_shrink(&r, n, &g, k, SVD_MODE_ROTATE, xc, Bc, err, sizeof err);
        if (rc) printf("    %s\n", err);
        ASSERT_EQ(rc, 0);
        ASSERT_EQ(r->layers[1].spec.out, k);
        composite(r, c1);
        float *o1 = logits(r, zero_in, 1, 0);
        for (size_t i = 0; i < LIN_N; i++)
            for (size_t j = 0; j < LIN_M; j++) c1[i * LIN_M + j] -= o1[j];
        free(o1);
        diff_svals(c1, c0, s);
        if (!(fabs(s[0] - sf[k]) <= 1e-4 * sf[k]))
            printf("    k %zu: ||change||_2 %.6g, s_{k+1} of the folded weight %.6g\n", k, s[0],
                   sf[k]);
        ASSERT_NEAR(s[0], sf[k], 1e-4 * sf[k]);
        net_destroy(r);
    }
    free(o0);
    free(xc);
    net_destroy(n);
}

TEST(factorize_drops_exactly_the_tail_spectrum)
{
    setup();
    struct net *n = lin_net();
    ASSERT(n != NULL);
    double c0[LIN_N * LIN_M], c1[LIN_N * LIN_M], c2[LIN_N * LIN_M], s[LIN_M];
    composite(n, c0);
    for (size_t k = 1; k < LIN_M; k++) {
        struct net *f = NULL, *f2 = NULL, *back = NULL;
        char err[256];
        uint64_t rng = 3;
        // plain -> rank k: error s_{k+1}.
        ASSERT_EQ(svd_set_rank(&f, n, 1, k, NULL, &rng, err, sizeof err), 0);
        ASSERT_EQ(f->layers[1].spec.rank, k);
        ASSERT(net_tensor_get(f, 1, "w") == NULL);
        composite(f, c1);
        diff_svals(c1, c0, s);
        ASSERT_NEAR(s[0], LIN_S[k], 1e-4 * LIN_S[k]);
        // rank k -> 0 (plain again): exactly U V, so the same map.
        ASSERT_EQ(svd_set_rank(&back, f, 1, 0, NULL, &rng, err, sizeof err), 0);
        composite(back, c2);
        diff_svals(c2, c1, s);
        ASSERT_FLT_OP(s[0], <, 1e-5 * LIN_S[0]);
        // rank k -> k' < k: error s_{k'+1} of the original.
        for (size_t k2 = 1; k2 < k; k2++) {
            ASSERT_EQ(svd_set_rank(&f2, f, 1, k2, NULL, &rng, err, sizeof err), 0);
            composite(f2, c2);
            diff_svals(c2, c0, s);
            ASSERT_NEAR(s[0], LIN_S[k2], 1e-4 * LIN_S[k2]);
            net_destroy(f2);
            f2 = NULL;
        }
        net_destroy(back);
        net_destroy(f);
    }
    // A rank above min(m, fan-in) is refused.
    struct net *bad = NULL;
    char err[256] = "";
    uint64_t rng = 3;
    ASSERT_EQ(svd_set_rank(&bad, n, 1, LIN_M + 1, NULL, &rng, err, sizeof err), -EINVAL);
    ASSERT(bad == NULL);
    net_destroy(n);
}

/* plain -> rank with the mean input: the dropped part's effect on the mean moves into the
 * bias, so the batch-mean output of a linear layer is unchanged. */
TEST(factorize_mean_input_keeps_mean_output)
{
    setup();
    static const struct ndef d = {"lin_b", 1, 4, 5, 6, 1, 2, {S_FLAT(), S_DENSE(6, 1)}};
    struct net *n = mk(&d);
    ASSERT(n != NULL);
    init_net(n, 8);
    const size_t B = 64;
    float *x = rand_x(B * LIN_N, 9), mu[LIN_N] = {0};
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < LIN_N; i++) x[b * LIN_N + i] += 1.0f + 0.1f * (float)i; // mean != 0
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < LIN_N; i++) mu[i] += x[b * LIN_N + i] / (float)B;
    struct net *f = NULL, *f0 = NULL;
    char err[256];
    uint64_t rng = 1;
    ASSERT_EQ(svd_set_rank(&f, n, 1, 2, mu, &rng, err, sizeof err), 0);
    ASSERT_EQ(svd_set_rank(&f0, n, 1, 2, NULL, &rng, err, sizeof err), 0);
    float *l0 = logits(n, x, B, 0), *l1 = logits(f, x, B, 0), *l2 = logits(f0, x, B, 0);
    double worst = 0.0, without = 0.0, scale = 0.0;
    for (size_t k = 0; k < 6; k++) {
        double a = 0, b = 0, c = 0;
        for (size_t i = 0; i < B; i++) a += l0[i * 6 + k], b += l1[i * 6 + k], c += l2[i * 6 + k];
        a /= B, b /= B, c /= B;
        worst = fmax(worst, fabs(a - b));
        without = fmax(without, fabs(a - c));
        scale = fmax(scale, fabs(a));
    }
    free(l0), free(l1), free(l2), free(x);
    net_destroy(n), net_destroy(f), net_destroy(f0);
    ASSERT_FLT_OP(worst, <, 1e-4 * scale);
    ASSERT_FLT_OP(without, >, 1e-2 * scale); // the test has teeth: without mean_in it moves
}

// ---- 3. select ----------------------------------------------------------------------------

/* Where the producer's channels live after a forward: pointer, channels, per-channel size. */
static const float *prod_out(const struct net *n, const struct svd_gref *g, size_t B, size_t *C,
                             size_t *HW, int *spatial)
{
    const struct net_layer *l = &n->layers[g->layer];
    if (g->kind == SVD_G_RES_INNER) {
        *C = l->spec.width;
        *HW = l->out.h * l->out.w;
        *spatial = 1;
        return l->ws; // h1 is the first block of a res workspace
    }
    *C = l->out.c;
    *HW = l->out.h * l->out.w;
    *spatial = l->out.spatial;
    return n->acts[g->layer + 1];
}

/* Kept channels agree: a (old, C channels) channel idx[i] vs b (new) channel i, each value
 * within a few ulps of the channel's scale. Bit equality is not promised: a BLAS may pick a
 * different kernel (and summation order) for a different matrix width (OPENBLAS_CORETYPE). */
static int channels_identical(const float *a, size_t Ca, const float *b, size_t Cb, const long *idx,
                              size_t B, size_t HW, int spatial)
{
    const size_t per = spatial ? B * HW : B;
    for (size_t i = 0; i < Cb; i++) {
        size_t j = (size_t)idx[i];
        float scale = 0.0f;
        for (size_t s = 0; s < per; s++) {
            float v = spatial ? a[j * B * HW + s] : a[s * Ca + j];
            if (fabsf(v) > scale) scale = fabsf(v);
        }
        const float tol = 16.0f * FLT_EPSILON * (scale > 1e-30f ? scale : 1e-30f);
        for (size_t s = 0; s < per; s++) {
            float va = spatial ? a[j * B * HW + s] : a[s * Ca + j];
            float vb = spatial ? b[i * B * HW + s] : b[s * Cb + i];
            if (!(fabsf(va - vb) <= tol)) return 0;
        }
    }
    return 1;
}

/* After select, the producer's kept channels (and the channel-wise layers after it) equal
 * the old net's to a few ulps (bit for bit where the same kernels run), in eval and in training mode. */
TEST(select_keeps_kept_units_to_rounding)
{
    setup();
    const size_t B = 16;
    for (size_t d = 0; d < N_OF(NETS); d++) {
        struct net *n = mk(&NETS[d]);
        ASSERT(n != NULL);
        init_net(n, 500 + d);
        float *x = rand_x(B * in_numel(n), 600 + d);
        struct svd_gref g[16];
        size_t ng = svd_groups(n, g, 16);
        for (size_t gi = 0; gi < ng; gi++) {
            char name[64], err[256] = "";
            svd_group_name(n, &g[gi], name, sizeof name);
            const size_t m = svd_group_width(n, &g[gi]), k = m - 2;
            struct net *s = NULL;
            int rc = svd_shrink(&s, n, &g[gi], k, SVD_MODE_SELECT, x, B, err, sizeof err);
            if (rc) printf("    %s %s: %s\n", NETS[d].name, name, err);
            ASSERT_EQ(rc, 0);
            ASSERT_EQ(svd_group_width(s, &g[gi]), k);
            const struct net_tensor *to = main_w(n, &g[gi]), *tn = main_w(s, &g[gi]);
            const size_t L = to->n / m;
            ASSERT_EQ(tn->n, k * L);
            long idx[64];
            ASSERT_EQ(match_rows(net_tensor_data(n, to), m, net_tensor_data(s, tn), k, L, idx), k);
            for (int training = 0; training < 2; training++) {
                net_forward(n, x, NULL, B, training);
                net_forward(s, x, NULL, B, training);
                size_t Ca, Cb, HW, HW2;
                int sp, sp2;
                const float *a = prod_out(n, &g[gi], B, &Ca, &HW, &sp);
                const float *b = prod_out(s, &g[gi], B, &Cb, &HW2, &sp2);
                ASSERT_EQ(Ca, m);
                ASSERT_EQ(Cb, k);
                int same = channels_identical(a, Ca, b, Cb, idx, B, HW, sp);
                if (!same)
                    printf("    %s %s (%s): kept channels differ at the producer\n", NETS[d].name,
                           name, training ? "train" : "eval");
                ASSERT(same);
                // ... and through the channel-wise layers that follow a units / stream producer.
                for (size_t a_i = g[gi].layer + 1;
                     g[gi].kind != SVD_G_RES_INNER && a_i < n->n_layers &&
                     (n->layers[a_i].spec.kind == NET_BN || n->layers[a_i].spec.kind == NET_RELU ||
                      n->layers[a_i].spec.kind == NET_MAXPOOL);
                     a_i++) {
                    if (n->layers[a_i].spec.kind == NET_RELU && a_i + 1 < n->n_layers &&
                        n->layers[a_i + 1].spec.kind == NET_MAXPOOL)
                        continue; // its output is not written: the pool applies it (net.h)
                    const struct net_shape *sh = &n->layers[a_i].out;
                    same = channels_identical(n->acts[a_i + 1], m, s->acts[a_i + 1], k, idx, B,
                                              sh->h * sh->w, sh->spatial);
                    if (!same)
                        printf("    %s %s: kept channels differ after layer %zu\n", NETS[d].name,
                               name, a_i);
                    ASSERT(same);
                }
            }
            net_destroy(s);
        }
        free(x);
        net_destroy(n);
    }
}

/* flatten -> dense(12) -> relu -> dense(5): units in `dup` are alpha * (row, bias) of `src`
 * (positively scaled duplicates: exact combinations after a ReLU). */
static struct net *dup_net(size_t m, const size_t *dup, const size_t *src, size_t nd, float alpha,
                           uint64_t seed, int factorized_consumer)
{
    struct ndef d = {"dup", 1, 6, 6, 5, 1, 4, {S_FLAT(), S_DENSE(m, 1), S_RELU(), S_DENSE(5, 1)}};
    if (factorized_consumer) d.s[3].rank = 3;
    struct net *n = mk(&d);
    if (!n) return NULL;
    init_net(n, seed);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    float *b = net_tensor_data(n, net_tensor_get(n, 1, "b"));
    const size_t L = 36;
    for (size_t e = 0; e < nd; e++) {
        for (size_t i = 0; i < L; i++) w[dup[e] * L + i] = alpha * w[src[e] * L + i];
        b[dup[e]] = alpha * b[src[e]];
    }
    moments_from_params(n);
    return n;
}

/* The dup net with the units `drop` deleted: rows and consumer columns removed, no rewiring. */
static struct net *delete_units(const struct net *n, const char *drop, size_t m)
{
    size_t k = 0;
    for (size_t i = 0; i < m; i++) k += !drop[i];
    struct ndef d = {"del", 1, 6, 6, 5, 1, 4, {S_FLAT(), S_DENSE(k, 1), S_RELU(), S_DENSE(5, 1)}};
    struct net *o = mk(&d);
    if (!o) return NULL;
    const float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    const float *b = net_tensor_data(n, net_tensor_get(n, 1, "b"));
    const float *w2 = net_tensor_data(n, net_tensor_get(n, 3, "w"));
    const float *b2 = net_tensor_data(n, net_tensor_get(n, 3, "b"));
    float *ow = net_tensor_data(o, net_tensor_get(o, 1, "w"));
    float *ob = net_tensor_data(o, net_tensor_get(o, 1, "b"));
    float *ow2 = net_tensor_data(o, net_tensor_get(o, 3, "w"));
    float *ob2 = net_tensor_data(o, net_tensor_get(o, 3, "b"));
    for (size_t i = 0, j = 0; i < m; i++) {
        if (drop[i]) continue;
        memcpy(ow + j * 36, w + i * 36, 36 * sizeof(float));
        ob[j] = b[i];
        for (size_t c = 0; c < 5; c++) ow2[c * k + j] = w2[c * m + i];
        j++;
    }
    memcpy(ob2, b2, 5 * sizeof(float));
    return o;
}

TEST(select_rewiring_beats_deletion_on_duplicates)
{
    setup();
    const size_t m = 12, B = 64;
    const size_t dup[4] = {2, 5, 9, 11}, src[4] = {0, 7, 3, 6};
    const float alphas[3] = {0.5f, 1.0f, 2.5f};
    for (int a = 0; a < 3; a++) {
        struct net *n = dup_net(m, dup, src, 4, alphas[a], 31 + a, 0);
        ASSERT(n != NULL);
        float *x = rand_x(B * 36, 32);
        struct svd_gref g = {SVD_G_UNITS, 1};
        struct net *s = NULL;
        char err[256];
        ASSERT_EQ(svd_shrink(&s, n, &g, m - 4, SVD_MODE_SELECT, x, B, err, sizeof err), 0);
        long idx[12];
        ASSERT_EQ(match_rows(net_tensor_data(n, net_tensor_get(n, 1, "w")), m,
                             net_tensor_data(s, net_tensor_get(s, 1, "w")), m - 4, 36, idx),
                  m - 4);
        char drop[12];
        memset(drop, 1, sizeof drop);
        for (size_t i = 0; i < m - 4; i++) drop[idx[i]] = 0;
        // One of each duplicate pair goes (which one is free when alpha = 1).
        for (int e = 0; e < 4; e++) ASSERT_EQ(drop[dup[e]] + drop[src[e]], 1);
        struct net *del = delete_units(n, drop, m);
        ASSERT(del != NULL);
        double e_sel = fn_change(n, s, x, B, 0), e_del = fn_change(n, del, x, B, 0);
        printf("    alpha %.1f: select %.3g, deletion %.3g\n", alphas[a], e_sel, e_del);
        ASSERT_FLT_OP(e_sel, <, 1e-4);
        ASSERT_FLT_OP(e_del, >, 100.0 * e_sel);
        ASSERT_FLT_OP(e_del, >, 1e-2);
        net_destroy(del);
        net_destroy(s);
        net_destroy(n);
        free(x);
    }
}

/* Units 0..k-1 independent, the rest half-scaled duplicates (and one dead unit) at random
 * indices: select keeps exactly the independent ones. */
TEST(select_keeps_exactly_the_independent_units)
{
    setup();
    const size_t m = 16, B = 64;
    for (uint64_t trial = 0; trial < 4; trial++) {
        uint64_t rng = 100 + trial;
        // A random permutation places the 5 redundant units.
        size_t perm[16];
        for (size_t i = 0; i < m; i++) perm[i] = i;
        for (size_t i = m - 1; i > 0; i--) {
            size_t j = net_rand_below(&rng, i + 1), t = perm[i];
            perm[i] = perm[j], perm[j] = t;
        }
        size_t dup[4], src[4];
        for (int e = 0; e < 4; e++) dup[e] = perm[e], src[e] = perm[5 + e];
        const size_t dead = perm[4];
        struct net *n = dup_net(m, dup, src, 4, 0.5f, 200 + trial, 0);
        ASSERT(n != NULL);
        float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
        float *b = net_tensor_data(n, net_tensor_get(n, 1, "b"));
        memset(w + dead * 36, 0, 36 * sizeof(float));
        b[dead] = -1.0f;
        float *x = rand_x(B * 36, 300 + trial);
        struct svd_gref g = {SVD_G_UNITS, 1};
        struct net *s = NULL;
        char err[256];
        ASSERT_EQ(svd_shrink(&s, n, &g, m - 5, SVD_MODE_SELECT, x, B, err, sizeof err), 0);
        long idx[16];
        ASSERT_EQ(match_rows(w, m, net_tensor_data(s, net_tensor_get(s, 1, "w")), m - 5, 36, idx),
                  m - 5);
        char kept[16] = {0};
        for (size_t i = 0; i < m - 5; i++) kept[idx[i]] = 1;
        for (int e = 0; e < 4; e++) ASSERT(!kept[dup[e]]);
        ASSERT(!kept[dead]);
        // Kept units stay in their original order.
        for (size_t i = 1; i < m - 5; i++) ASSERT_LT(idx[i - 1], idx[i]);
        ASSERT_FLT_OP(fn_change(n, s, x, B, 0), <, 1e-4);
        net_destroy(s);
        net_destroy(n);
        free(x);
    }
}

/* A constant unit (zero weights, bias 1, so its ReLU output is always 1) is an exact affine
 * function of the others: select drops it and carries its effect, W'[:, d] * 1, into the
 * consumer's bias. For a factorized consumer (z = U (V h) + b) that effect is U V[:, d]. */
TEST(select_constant_unit_leftover_into_consumer_bias)
{
    setup();
    const size_t m = 10, B = 64;
    for (int fact = 0; fact < 2; fact++) {
        struct net *n = dup_net(m, NULL, NULL, 0, 1.0f, 400 + fact, fact);
        ASSERT(n != NULL);
        float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
        float *b = net_tensor_data(n, net_tensor_get(n, 1, "b"));
        memset(w + 4 * 36, 0, 36 * sizeof(float));
        b[4] = 1.0f;
        float *x = rand_x(B * 36, 401);
        struct svd_gref g = {SVD_G_UNITS, 1};
        struct net *s = NULL;
        char err[256];
        ASSERT_EQ(svd_shrink(&s, n, &g, m - 1, SVD_MODE_SELECT, x, B, err, sizeof err), 0);
        long idx[16];
        size_t matched =
            match_rows(w, m, net_tensor_data(s, net_tensor_get(s, 1, "w")), m - 1, 36, idx);
        int dropped_const = 1;
        for (size_t i = 0; i < m - 1; i++) dropped_const &= idx[i] != 4;
        double e = fn_change(n, s, x, B, 0);
        printf("    %s consumer: output change %.3g\n", fact ? "factorized" : "plain", e);
        net_destroy(s);
        net_destroy(n);
        free(x);
        ASSERT_EQ(matched, m - 1);
        ASSERT(dropped_const);
        ASSERT_FLT_OP(e, <, 1e-4);
    }
}

// ---- 4. after any surgery: a training step, arenas, moments, checkpoint ---------------------

enum op { OP_GROW, OP_GRADMAX, OP_ROTATE, OP_SELECT, OP_RANK };
static const char *const OP_NAME[] = {"grow", "gradmax", "rotate", "select", "rank"};

static char tmp_dir[64];
static int ckpt_opt_failures; // checkpoint round trips with optimizer state that failed to load

static void tmpdir_remove(void)
{
    if (tmp_dir[0]) rmdir(tmp_dir);
    tmp_dir[0] = 0;
}

static const char *tmpdir(void)
{
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_svd_XXXXXX");
        if (!mkdtemp(tmp_dir)) tmp_dir[0] = 0;
    }
    return tmp_dir;
}

/* nn is the result of `op` on n (group g, or layer `layer` for OP_RANK). */
static void check_after(int *test__failed, const char *label, const struct net *n, struct net *nn,
                        enum op op, const struct svd_gref *g, size_t layer, const float *x,
                        const uint8_t *y, size_t B)
{
    // Arenas: the tensor table tiles each arena exactly.
    size_t off[2] = {0, 0};
    for (size_t ti = 0; ti < nn->n_tensors; ti++) {
        const struct net_tensor *t = &nn->tensors[ti];
        size_t prod = 1;
        for (int d = 0; d < 4; d++) prod *= t->dims[d];
        ASSERT_EQ(prod, t->n);
        ASSERT_EQ(t->off, off[t->arena]);
        off[t->arena] += t->n;
    }
    ASSERT_EQ(off[NET_ARENA_PARAM], nn->n_params);
    ASSERT_EQ(off[NET_ARENA_STATE], nn->n_state);
    // Each arena holds n_params entries (ASan reports a short one here).
    float *ar[4] = {nn->params, nn->grads, nn->m, nn->v};
    for (int a = 0; a < 4; a++) {
        volatile float *p = ar[a];
        float keep = p[nn->n_params - 1];
        p[nn->n_params - 1] = 12345.0f;
        ASSERT(p[nn->n_params - 1] == 12345.0f);
        p[nn->n_params - 1] = keep;
    }
    if (nn->n_state) {
        volatile float *p = nn->state;
        float keep = p[nn->n_state - 1];
        p[nn->n_state - 1] = 1.0f;
        p[nn->n_state - 1] = keep;
    }

    // Moments follow the same maps. Before surgery m == params, so any linear map applied
    // to both keeps them equal; only leftovers added to biases, and new entries (moments
    // zero, parameters not) may differ. rotate computes the producing weight P W with a
    // GEMM (m with the generic row map): equal to rounding. With a BN layer after a units
    // producer, rotate folds the BN into the weight and rebuilds the BN, so that weight and
    // the BN's gamma / beta have no moment counterpart to compare with.
    const int folded = op == OP_ROTATE && g->kind == SVD_G_UNITS && g->layer + 1 < nn->n_layers &&
                       nn->layers[g->layer + 1].spec.kind == NET_BN;
    const struct net_tensor *mw = g ? main_w(nn, g) : NULL;
    for (size_t ti = 0; ti < nn->n_tensors; ti++) {
        const struct net_tensor *t = &nn->tensors[ti];
        if (t->arena != NET_ARENA_PARAM) continue;
        const float *p = nn->params + t->off, *mm = nn->m + t->off;
        const char *s = sfx_of(t->name);
        int rank_t = op == OP_RANK && t->layer == layer &&
                     (!strcmp(s, "u") || !strcmp(s, "v") || !strcmp(s, "w"));
        int fold_t =
            folded &&
            (t == mw || (t->layer == g->layer + 1 && (!strcmp(s, "gamma") || !strcmp(s, "beta"))));
        double tmax = 0.0;
        for (size_t i = 0; i < t->n; i++) tmax = fmax(tmax, fabs(p[i]));
        for (size_t i = 0; i < t->n; i++) {
            int ok;
            if (rank_t)
                ok = mm[i] == 0.0f; // the factors' bases rotate: moments reset
            else if (op == OP_GROW || op == OP_GRADMAX)
                ok = mm[i] == p[i] || mm[i] == 0.0f;
            else if (!strcmp(s, "b") || fold_t)
                ok = 1; // a consumer bias may take a least-squares leftover
            else if (op == OP_ROTATE && t == mw)
                ok = fabs(mm[i] - p[i]) <= 1e-5 * tmax;
            else
                ok = mm[i] == p[i];
            if (!ok) {
                printf("    %s: moment m of %s[%zu] = %a does not follow the parameter %a\n", label,
                       t->name, i, mm[i], p[i]);
                ASSERT(ok);
            }
        }
    }
    if (op == OP_SELECT) { // kept units' rows of m equal the old rows, v too
        const struct net_tensor *to = main_w(n, g), *tn = main_w(nn, g);
        const size_t m = svd_group_width(n, g), k = svd_group_width(nn, g), L = to->n / m;
        long idx[64];
        ASSERT(k < 64);
        ASSERT_EQ(match_rows(net_tensor_data(n, to), m, net_tensor_data(nn, tn), k, L, idx), k);
        for (size_t i = 0; i < k; i++) {
            const size_t on = tn->off + i * L, oo = to->off + (size_t)idx[i] * L;
            ASSERT(!memcmp(nn->m + on, n->m + oo, L * sizeof(float)));
            ASSERT(!memcmp(nn->v + on, n->v + oo, L * sizeof(float)));
        }
    }

    // One SGD step.
    struct net_optim opt = {.kind = NET_SGD, .momentum = 0.9f, .weight_decay = 5e-4f};
    net_zero_grad(nn);
    float loss = net_forward(nn, x, y, B, 1);
    if (!isfinite(loss)) printf("    %s: loss %g\n", label, loss);
    ASSERT(isfinite(loss));
    net_backward(nn, y, B);
    for (size_t i = 0; i < nn->n_params; i++) ASSERT(isfinite(nn->grads[i]));
    net_optim_step(nn, &opt, 0.01f);
    for (size_t i = 0; i < nn->n_params; i++) ASSERT(isfinite(nn->params[i]));
    loss = net_forward(nn, x, y, B, 1);
    ASSERT(isfinite(loss));

    // Checkpoint round trip keeps the new widths and every value: first the model alone
    // (specs, params, BN state), then with the optimizer (m, v). A failure of the second is
    // counted, not fatal here, so the rest of the matrix still runs; the caller asserts the
    // count is zero.
    char path[128], err[256] = "";
    snprintf(path, sizeof path, "%s/surgery.ckpt", tmpdir());
    for (int with_opt = 0; with_opt < 2; with_opt++) {
        int rc = ckpt_save(path, nn, with_opt ? &opt : NULL, NULL, 0, err, sizeof err);
        if (rc) printf("    %s: ckpt_save: %s\n", label, err);
        ASSERT_EQ(rc, 0);
        struct net *ld = NULL;
        struct net_optim o2 = {0};
        int has_opt = -1;
        rc = ckpt_load(path, &ld, with_opt ? &o2 : NULL, &has_opt, NULL, NULL, err, sizeof err);
        unlink(path);
        if (rc && with_opt) {
            if (!ckpt_opt_failures++) printf("    %s: ckpt_load with optimizer: %s\n", label, err);
            return;
        }
        if (rc) printf("    %s: ckpt_load: %s\n", label, err);
        ASSERT_EQ(rc, 0);
        ASSERT_EQ(has_opt, with_opt);
        ASSERT_EQ(ld->n_layers, nn->n_layers);
        for (size_t i = 0; i < nn->n_layers; i++) {
            const struct net_layer_spec *a = &nn->layers[i].spec, *b = &ld->layers[i].spec;
            ASSERT_STR_EQ(a->name, b->name);
            ASSERT_EQ(a->kind, b->kind);
            ASSERT_EQ(a->out, b->out);
            ASSERT_EQ(a->width, b->width);
            ASSERT_EQ(a->rank, b->rank);
            ASSERT_EQ(a->k, b->k);
            ASSERT_EQ(a->stride, b->stride);
            ASSERT_EQ(a->pad, b->pad);
            ASSERT_EQ(a->bias, b->bias);
            ASSERT_EQ(a->bn, b->bn);
        }
        ASSERT_EQ(ld->n_params, nn->n_params);
        ASSERT_EQ(ld->n_state, nn->n_state);
        ASSERT(!memcmp(ld->params, nn->params, nn->n_params * sizeof(float)));
        ASSERT(!nn->n_state || !memcmp(ld->state, nn->state, nn->n_state * sizeof(float)));
        if (with_opt) {
            ASSERT_EQ(o2.t, opt.t);
            ASSERT(!memcmp(ld->m, nn->m, nn->n_params * sizeof(float)));
            ASSERT(!memcmp(ld->v, nn->v, nn->n_params * sizeof(float)));
        }
        double d = fn_change(nn, ld, x, B, 0);
        net_destroy(ld);
        ASSERT_FLT_OP(d, ==, 0.0);
    }
}

static void surgery_matrix(int *test__failed, const struct ndef *def, size_t B)
{
    struct net *n = mk(def);
    ASSERT(n != NULL);
    init_net(n, 900);
    float *x = rand_x(B * in_numel(n), 901);
    uint8_t *y = rand_y(B, n->n_classes, 902);
    struct svd_gref g[16];
    size_t ng = svd_groups(n, g, 16);
    ASSERT_EQ(ng, def->n_groups);
    char err[256], label[128], gname[64];
    for (size_t gi = 0; gi < ng; gi++) {
        svd_group_name(n, &g[gi], gname, sizeof gname);
        const size_t m = svd_group_width(n, &g[gi]);
        for (int op = OP_GROW; op <= OP_SELECT; op++) {
            struct net *nn = NULL;
            uint64_t rng = 5;
            int rc;
            err[0] = 0;
            if (op == OP_GROW || op == OP_GRADMAX)
                rc = svd_grow(&nn, n, &g[gi], 2,
                              op == OP_GROW ? SVD_GROW_ORTHOGONAL : SVD_GROW_GRADMAX, x, y, B, &rng,
                              err, sizeof err);
            else
                rc = svd_shrink(&nn, n, &g[gi], m - 2,
                                op == OP_ROTATE ? SVD_MODE_ROTATE : SVD_MODE_SELECT, x, B, err,
                                sizeof err);
            snprintf(label, sizeof label, "%s %s %s", def->name, gname, OP_NAME[op]);
            if (rc) printf("    %s: %s\n", label, err);
            ASSERT_EQ(rc, 0);
            ASSERT_EQ(svd_group_width(nn, &g[gi]), op <= OP_GRADMAX ? m + 2 : m - 2);
            check_after(test__failed, label, n, nn, (enum op)op, &g[gi], 0, x, y, B);
            net_destroy(nn);
            if (*test__failed) return;
        }
    }
    // The factorize mode: every dense / conv layer's rank, plain -> r -> r - 1, r + 1, 0.
    for (size_t li = 0; li < n->n_layers; li++) {
        const struct net_layer *l = &n->layers[li];
        if (l->spec.kind != NET_DENSE && l->spec.kind != NET_CONV) continue;
        const size_t R0 = l->spec.rank;
        const struct net_tensor *t = net_tensor_get(n, li, R0 ? "v" : "w");
        const size_t fan = R0 ? t->n / R0 : t->n / l->spec.out;
        const size_t full = l->spec.out < fan ? l->spec.out : fan;
        const size_t r0 = R0 ? R0 : (full / 2 ? full / 2 : 1);
        const size_t targets[3] = {r0 > 1 ? r0 - 1 : 1, r0 + 1 <= full ? r0 + 1 : full, 0};
        struct net *first = NULL;
        if (!R0) { // plain -> r0 first
            uint64_t rng = 11;
            snprintf(label, sizeof label, "%s %s rank 0 -> %zu", def->name, l->spec.name, r0);
            int rc = svd_set_rank(&first, n, li, r0, NULL, &rng, err, sizeof err);
            if (rc) printf("    %s: %s\n", label, err);
            ASSERT_EQ(rc, 0);
            ASSERT_EQ(first->layers[li].spec.rank, r0);
            check_after(test__failed, label, n, first, OP_RANK, NULL, li, x, y, B);
            if (*test__failed) return;
            moments_from_params(first); // check_after trained it; restart m = params
        }
        const struct net *from = first ? first : n;
        for (int s = 0; s < 3; s++) {
            uint64_t rng = 11;
            struct net *nn = NULL;
            snprintf(label, sizeof label, "%s %s rank %zu -> %zu", def->name, l->spec.name,
                     from->layers[li].spec.rank, targets[s]);
            int rc = svd_set_rank(&nn, from, li, targets[s], NULL, &rng, err, sizeof err);
            if (rc) printf("    %s: %s\n", label, err);
            ASSERT_EQ(rc, 0);
            ASSERT_EQ(nn->layers[li].spec.rank, targets[s]);
            check_after(test__failed, label, from, nn, OP_RANK, NULL, li, x, y, B);
            net_destroy(nn);
            if (*test__failed) return;
        }
        net_destroy(first);
    }
    free(x);
    free(y);
    net_destroy(n);
}

TEST(after_surgery_dense_nets_train_and_checkpoint)
{
    setup();
    ckpt_opt_failures = 0;
    for (size_t d = 0; d < 3; d++) {
        surgery_matrix(test__failed, &NETS[d], 16);
        if (*test__failed) return;
    }
    tmpdir_remove();
    ASSERT_EQ(ckpt_opt_failures, 0);
}

TEST(after_surgery_conv_nets_train_and_checkpoint)
{
    setup();
    ckpt_opt_failures = 0;
    for (size_t d = 3; d < 6; d++) {
        surgery_matrix(test__failed, &NETS[d], 16);
        if (*test__failed) return;
    }
    tmpdir_remove();
    ASSERT_EQ(ckpt_opt_failures, 0);
}

TEST(after_surgery_residual_nets_train_and_checkpoint)
{
    setup();
    ckpt_opt_failures = 0;
    for (size_t d = 6; d < 12; d++) {
        surgery_matrix(test__failed, &NETS[d], 16);
        if (*test__failed) return;
    }
    tmpdir_remove();
    ASSERT_EQ(ckpt_opt_failures, 0);
}

TEST(after_surgery_factorized_net_trains_and_checkpoints)
{
    setup();
    ckpt_opt_failures = 0;
    surgery_matrix(test__failed, &NETS[12], 16);
    tmpdir_remove();
    ASSERT_EQ(ckpt_opt_failures, 0);
}

// ---- 5. the policy loop ---------------------------------------------------------------------

struct vctx {
    const float *x;
    const uint8_t *y;
    size_t B;
    int calls;
};

static double val_loss_cb(void *user, struct net *n)
{
    struct vctx *v = user;
    v->calls++;
    return net_forward(n, v->x, v->y, v->B, 0);
}

/* One svd_adapt call with the event as the daemon logs it: *text is its JSON when the pass
 * tried a surgery (a change other than keep / skip), else NULL. */
static int adapt_text(struct svd_state *st, const struct svd_policy *p, struct net **n, size_t step,
                      const struct svd_ctx *ctx, char **text)
{
    struct svd_event e;
    int rc = svd_adapt(st, p, n, step, ctx, &e);
    *text = NULL;
    int tried = 0;
    for (size_t i = 0; rc >= 0 && i < e.n_changes; i++)
        tried |= e.changes[i].action != SVD_ACT_KEEP && e.changes[i].action != SVD_ACT_SKIP;
    if (tried) {
        cJSON *j = dmn_event_json(&e);
        *text = j ? cJSON_PrintUnformatted(j) : NULL;
        cJSON_Delete(j);
    }
    svd_event_free(&e);
    return rc;
}

static struct svd_policy base_policy(void)
{
    struct svd_policy p = {0};
    p.enabled = 1;
    p.mode = SVD_MODE_SELECT;
    p.source = SVD_SRC_WEIGHTS;
    p.rule = SVD_RULE_ENERGY;
    p.grow_mode = SVD_GROW_ORTHOGONAL;
    p.shrink_threshold = 0.0;
    p.energy_eps = 0.0;
    p.gap_threshold = 1e30;
    p.expand_threshold = 2.0;
    p.growth = 0.25;
    p.interval_steps = 1;
    p.grow_patience = 1;
    p.calibration_samples = 32;
    p.min_width = 1;
    p.max_width = 64;
    p.max_loss_jump = 10.0;
    p.enable_shrink = 1;
    p.enable_grow = 0;
    return p;
}

/* Thresholds that keep every direction change nothing: same pointer, same values. */
TEST(adapt_keep_everything_is_identity)
{
    setup();
    // Nets whose every group has width <= fan-in (a full spectrum of `width` values).
    static const struct ndef defs[2] = {
        {"mlp",
         1,
         6,
         6,
         5,
         2,
         6,
         {S_FLAT(), S_DENSE(12, 1), S_RELU(), S_DENSE(10, 1), S_RELU(), S_DENSE(5, 1)}},
        {"conv",
         3,
         6,
         6,
         5,
         2,
         7,
         {S_CONV(8, 3, 1, 1, 1), S_BN(), S_RELU(), S_RES(6, 8, 1, 1), S_GAP(), S_DENSE(6, 1),
          S_DENSE(5, 1)}},
    };
    const size_t B = 32;
    struct {
        enum svd_mode mode;
        enum svd_source src;
        enum svd_rule rule;
    } cfg[] = {
        {SVD_MODE_SELECT, SVD_SRC_WEIGHTS, SVD_RULE_ENERGY},
        {SVD_MODE_ROTATE, SVD_SRC_WEIGHTS, SVD_RULE_RELATIVE},
        {SVD_MODE_SELECT, SVD_SRC_ACTIVATIONS, SVD_RULE_RELATIVE},
        {SVD_MODE_FACTORIZE, SVD_SRC_WEIGHTS, SVD_RULE_ENERGY},
        {SVD_MODE_SELECT, SVD_SRC_WEIGHTS, SVD_RULE_GAP},
    };
    for (int d = 0; d < 2; d++) {
        for (size_t c = 0; c < N_OF(cfg); c++) {
            struct net *n = mk(&defs[d]);
            ASSERT(n != NULL);
            init_net(n, 70 + d);
            float *x = rand_x(B * in_numel(n), 71);
            uint8_t *y = rand_y(B, 5, 72);
            struct vctx vc = {x, y, B, 0};
            uint64_t rng = 1;
            struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
            struct svd_policy p = base_policy();
            p.mode = cfg[c].mode;
            p.source = cfg[c].src;
            p.rule = cfg[c].rule;
            float *params = malloc(n->n_params * sizeof(float));
            float *state = malloc(n->n_state * sizeof(float) + 1);
            memcpy(params, n->params, n->n_params * sizeof(float));
            memcpy(state, n->state, n->n_state * sizeof(float));
            const size_t np = n->n_params;
            struct net *before = n;
            struct svd_state *st = svd_state_create();
            char *ev = NULL;
            int rc = adapt_text(st, &p, &n, 100, &ctx, &ev);
            if (rc != 0 || ev)
                printf("    %s cfg %zu: rc %d event %s\n", defs[d].name, c, rc, ev ? ev : "-");
            ASSERT_EQ(rc, 0);
            ASSERT(n == before);
            ASSERT(ev == NULL);
            ASSERT_EQ(n->n_params, np);
            ASSERT(!memcmp(params, n->params, np * sizeof(float)));
            ASSERT(!memcmp(state, n->state, n->n_state * sizeof(float)));
            ASSERT_EQ(vc.calls, 0);
            svd_state_destroy(st);
            free(params);
            free(state);
            free(x);
            free(y);
            net_destroy(n);
        }
    }
}

/* The first change of an event that is a surgery (not keep / skip). */
static cJSON *first_change(cJSON *ev)
{
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ev, "changes"))
    {
        const char *a = cJSON_GetStringValue(cJSON_GetObjectItem(c, "action"));
        if (a && strcmp(a, "keep") && strcmp(a, "skip")) return c;
    }
    return NULL;
}

/* 12 units of which 3 are half-scaled duplicates: the energy rule must shrink to 9 (or to
 * min_width), select keeps the function, and max_loss_jump can force a rollback. */
TEST(adapt_shrinks_duplicates_respects_min_width_and_rolls_back)
{
    setup();
    const size_t m = 12, B = 64, dup[3] = {1, 6, 10}, src[3] = {3, 0, 8};
    struct {
        size_t min_width;
        double jump;
        size_t want;
        int rolled;
    } cases[] = {{1, 0.05, 9, 0}, {11, 0.05, 11, 0}, {1, -1e30, 12, 1}};
    for (size_t c = 0; c < N_OF(cases); c++) {
        struct net *n = dup_net(m, dup, src, 3, 0.5f, 77, 0);
        ASSERT(n != NULL);
        float *x = rand_x(B * 36, 78);
        uint8_t *y = rand_y(B, 5, 79);
        float *l0 = logits(n, x, B, 0);
        float *params = malloc(n->n_params * sizeof(float));
        memcpy(params, n->params, n->n_params * sizeof(float));
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 1;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        struct svd_policy p = base_policy();
        p.energy_eps = 1e-6;
        p.min_width = cases[c].min_width;
        p.max_loss_jump = cases[c].jump;
        struct svd_state *st = svd_state_create();
        char *ev = NULL;
        struct net *before = n;
        int rc = adapt_text(st, &p, &n, 10, &ctx, &ev);
        ASSERT_EQ(rc, cases[c].rolled ? 0 : 1);
        ASSERT(ev != NULL);
        cJSON *j = cJSON_Parse(ev);
        ASSERT(j != NULL);
        cJSON *ch = first_change(j);
        ASSERT(ch != NULL);
        ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "action")), "shrink");
        ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "group")), "dense1");
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "from")), 12);
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "to")),
                  cases[c].rolled ? 9 : cases[c].want);
        ASSERT_EQ(cJSON_IsTrue(cJSON_GetObjectItem(ch, "rolled_back")), cases[c].rolled);
        ASSERT(isfinite(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "val_loss_after"))));
        cJSON *wa = cJSON_GetObjectItem(j, "widths_after");
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(wa, "dense1")), cases[c].want);
        ASSERT_EQ(n->layers[1].spec.out, cases[c].want);
        if (cases[c].rolled) {
            ASSERT(n == before);
            ASSERT(!memcmp(params, n->params, n->n_params * sizeof(float)));
        }
        float *l1 = logits(n, x, B, 0);
        double e = rel_change(l0, l1, B * 5);
        ASSERT_FLT_OP(e, <, 1e-4);
        cJSON_Delete(j);
        free(ev);
        free(l0);
        free(l1);
        free(params);
        free(x);
        free(y);
        svd_state_destroy(st);
        net_destroy(n);
    }
}

/* flatten -> dense(8) -> relu -> dense(5); dense1's rows are orthogonal with equal norms, so
 * its spectrum is perfectly flat. */
static struct net *flat_net(uint64_t seed)
{
    static const struct ndef d = {"flat", 1, 6, 6,
                                  5,      1, 4, {S_FLAT(), S_DENSE(8, 1), S_RELU(), S_DENSE(5, 1)}};
    struct net *n = mk(&d);
    if (!n) return NULL;
    init_net(n, seed);
    double q[36 * 8];
    uint64_t rng = seed;
    rand_orth(q, 36, 8, &rng);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    for (size_t i = 0; i < 8; i++)
        for (size_t j = 0; j < 36; j++) w[i * 36 + j] = (float)(0.5 * q[j * 8 + i]);
    moments_from_params(n);
    return n;
}

/* One svd_adapt call; returns its result, the event parsed (NULL if none) in *ev. */
static int adapt_once(struct svd_state *st, const struct svd_policy *p, struct net **n, size_t step,
                      const float *x, const uint8_t *y, size_t B, cJSON **ev)
{
    struct vctx vc = {x, y, B, 0};
    uint64_t rng = step;
    struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
    char *text = NULL;
    int rc = adapt_text(st, p, n, step, &ctx, &text);
    *ev = text ? cJSON_Parse(text) : NULL;
    free(text);
    return rc;
}

/* A flat spectrum grows after grow_patience checks, by ceil(growth * width), not again during
 * the cool-down, never past max_width; the hysteresis counters survive save / load; a
 * param_budget refuses the growth. */
TEST(adapt_grows_flat_layer_with_patience_cooldown_and_limits)
{
    setup();
    const size_t B = 32;
    struct net *n = flat_net(5);
    ASSERT(n != NULL);
    float *x = rand_x(B * 36, 6);
    uint8_t *y = rand_y(B, 5, 7);
    float *l0 = logits(n, x, B, 0);
    struct svd_policy p = base_policy();
    p.energy_eps = 1e-6;
    p.enable_grow = 1;
    p.expand_threshold = 0.9;
    p.growth = 0.25;
    p.grow_patience = 2;
    p.cooldown_steps = 10;
    p.max_width = 11;
    p.max_loss_jump = 1e-3;
    struct svd_state *st = svd_state_create(), *st2 = svd_state_create();
    cJSON *ev = NULL;
    ASSERT_EQ(adapt_once(st, &p, &n, 100, x, y, B, &ev), 0); // patience 1 of 2
    ASSERT(ev == NULL);
    ASSERT_EQ(n->layers[1].spec.out, 8);
    // The counters go through save / load.
    void *blob = NULL;
    size_t len = 0;
    ASSERT_EQ(svd_state_save(st, &blob, &len), 0);
    ASSERT_EQ(svd_state_load(st2, blob, len - 1), -EINVAL);
    ASSERT_EQ(svd_state_load(st2, blob, len), 0);
    free(blob);
    ASSERT_EQ(adapt_once(st2, &p, &n, 101, x, y, B, &ev), 1); // patience 2: grow 8 -> 10
    ASSERT(ev != NULL);
    cJSON *ch = first_change(ev);
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "action")), "grow");
    ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "to")), 10);
    ASSERT(!cJSON_IsTrue(cJSON_GetObjectItem(ch, "rolled_back")));
    ASSERT_NEAR(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "val_loss_after")),
                cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "val_loss_before")), 1e-5);
    ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "params_after")), n->n_params);
    cJSON_Delete(ev);
    ASSERT_EQ(n->layers[1].spec.out, 10);
    float *l1 = logits(n, x, B, 0);
    ASSERT_FLT_OP(rel_change(l0, l1, B * 5), <, 1e-5);
    free(l1);
    // Cool-down: nothing happens before step 111, even on a flat spectrum.
    for (size_t step = 102; step < 111; step++) {
        ASSERT_EQ(adapt_once(st2, &p, &n, step, x, y, B, &ev), 0);
        ASSERT(ev == NULL);
    }
    // Still saturated at its first look after the cool-down: the growth counted as the
    // first of grow_patience checks, so it grows at once, 10 + 3 capped at 11.
    ASSERT_EQ(adapt_once(st2, &p, &n, 111, x, y, B, &ev), 1);
    ch = first_change(ev);
    ASSERT(ch != NULL);
    ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "to")), 11);
    cJSON_Delete(ev);
    ASSERT_EQ(n->layers[1].spec.out, 11);
    for (size_t step = 200; step < 204; step++) { // at max_width: no more growth
        ASSERT_EQ(adapt_once(st2, &p, &n, step, x, y, B, &ev), 0);
        ASSERT(ev == NULL);
    }
    ASSERT_EQ(n->layers[1].spec.out, 11);
    l1 = logits(n, x, B, 0);
    ASSERT_FLT_OP(rel_change(l0, l1, B * 5), <, 1e-5);
    free(l1);
    net_destroy(n);

    // param_budget: the growth is refused and recorded, the net stays.
    n = flat_net(5);
    ASSERT(n != NULL);
    struct svd_state *st3 = svd_state_create();
    p.grow_patience = 1;
    p.param_budget = n->n_params + 1;
    struct net *before = n;
    {
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 3;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        struct svd_event e;
        ASSERT_EQ(svd_adapt(st3, &p, &n, 100, &ctx, &e), 0);
        ASSERT(n == before);
        ASSERT_EQ(n->layers[1].spec.out, 8);
        ASSERT_EQ(e.n_changes, 1);
        ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
        ASSERT_EQ(e.changes[0].reason, SVD_WHY_BUDGET);
        ASSERT_EQ(vc.calls, 0); // refused before any surgery was built
        svd_event_free(&e);
    }
    net_destroy(n);
    svd_state_destroy(st);
    svd_state_destroy(st2);
    svd_state_destroy(st3);
    free(l0);
    free(x);
    free(y);
}

/* factorize mode: a dense layer of exact rank 3 becomes U V of rank 3 (function kept, the
 * classifier untouched); with growth allowed the rank then grows by ceil(growth * rank). */
TEST(adapt_factorize_mode_sets_and_grows_rank)
{
    setup();
    static const struct ndef d = {
        "lowrank", 1, 6, 6, 5, 1, 4, {S_FLAT(), S_DENSE(12, 1), S_RELU(), S_DENSE(5, 1)}};
    struct net *n = mk(&d);
    ASSERT(n != NULL);
    init_net(n, 90);
    uint64_t rng = 91;
    float A[12 * 3], Bf[3 * 36];
    for (size_t i = 0; i < 36; i++) A[i] = net_rand_normal(&rng);
    for (size_t i = 0; i < 108; i++) Bf[i] = 0.2f * net_rand_normal(&rng);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    for (size_t i = 0; i < 12; i++)
        for (size_t j = 0; j < 36; j++) {
            double s = 0.0;
            for (size_t q = 0; q < 3; q++) s += (double)A[i * 3 + q] * Bf[q * 36 + j];
            w[i * 36 + j] = (float)s;
        }
    moments_from_params(n);
    const size_t B = 32;
    float *x = rand_x(B * 36, 92);
    uint8_t *y = rand_y(B, 5, 93);
    float *l0 = logits(n, x, B, 0);
    struct svd_policy p = base_policy();
    p.mode = SVD_MODE_FACTORIZE;
    p.energy_eps = 1e-6;
    p.max_loss_jump = 1e-3;
    struct svd_state *st = svd_state_create();
    cJSON *ev = NULL;
    ASSERT_EQ(adapt_once(st, &p, &n, 10, x, y, B, &ev), 1);
    ASSERT(ev != NULL);
    cJSON *ch = first_change(ev);
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "group")), "dense1");
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "action")), "shrink_rank");
    ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ch, "to")), 3);
    ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(ch, "factorized")));
    ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "kept")), 1); // one surgery
    cJSON_Delete(ev);
    ASSERT_EQ(n->layers[1].spec.rank, 3);
    ASSERT_EQ(n->layers[1].spec.out, 12);
    ASSERT_EQ(n->layers[3].spec.rank, 0);
    float *l1 = logits(n, x, B, 0);
    ASSERT_FLT_OP(rel_change(l0, l1, B * 5), <, 1e-5);
    free(l1);
    // Growth: any spectrum counts as flat; rank 3 -> 3 + ceil(0.5 * 3) = 5 (< 12*36/48).
    p.enable_grow = 1;
    p.expand_threshold = 0.0;
    p.growth = 0.5;
    ASSERT_EQ(adapt_once(st, &p, &n, 20, x, y, B, &ev), 1);
    ch = first_change(ev);
    ASSERT(ch != NULL);
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "action")), "grow_rank");
    cJSON_Delete(ev);
    ASSERT_EQ(n->layers[1].spec.rank, 5);
    l1 = logits(n, x, B, 0);
    ASSERT_FLT_OP(rel_change(l0, l1, B * 5), <, 1e-5);
    free(l1);
    free(l0);
    free(x);
    free(y);
    svd_state_destroy(st);
    net_destroy(n);
}

/* Every pass leaves a trace: one entry per group, with the reason when nothing changed. */
TEST(adapt_every_pass_is_an_event_with_reasons)
{
    setup();
    const size_t m = 12, B = 64, dup[3] = {1, 6, 10}, src[3] = {3, 0, 8};
    struct net *n = dup_net(m, dup, src, 3, 0.5f, 77, 0);
    ASSERT(n != NULL);
    float *x = rand_x(B * 36, 78);
    uint8_t *y = rand_y(B, 5, 79);
    struct vctx vc = {x, y, B, 0};
    uint64_t rng = 1;
    struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
    struct svd_policy p = base_policy();
    p.energy_eps = 1e-6;
    p.max_loss_jump = 0.05;
    p.cooldown_steps = 100;
    struct svd_state *st = svd_state_create();
    struct svd_event e;
    ASSERT_EQ(svd_adapt(st, &p, &n, 10, &ctx, &e), 1);
    ASSERT_EQ(e.n_changes, 1);
    ASSERT_STR_EQ(e.changes[0].group, "dense1");
    ASSERT_EQ(e.changes[0].action, SVD_ACT_SHRINK);
    ASSERT_EQ(e.changes[0].reason, SVD_WHY_RANK_RULE);
    ASSERT_EQ(e.changes[0].to, 9);
    ASSERT_EQ(svd_event_kept(&e), 1);
    ASSERT_EQ(e.params_before - e.params_after, 3 * (36 + 1 + 5));
    svd_event_free(&e);
    // In the cool-down: skipped, and said so.
    ASSERT_EQ(svd_adapt(st, &p, &n, 20, &ctx, &e), 0);
    ASSERT_EQ(e.n_changes, 1);
    ASSERT_EQ(e.changes[0].action, SVD_ACT_SKIP);
    ASSERT_EQ(e.changes[0].reason, SVD_WHY_COOLDOWN);
    svd_event_free(&e);
    // After it: nothing redundant is left, nothing saturated (growth off): kept, "disabled"
    // since it would not grow anyway; with growth on and a high bar: "fits".
    ASSERT_EQ(svd_adapt(st, &p, &n, 200, &ctx, &e), 0);
    ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
    ASSERT_EQ(e.changes[0].kept, 9);
    svd_event_free(&e);
    p.enable_grow = 1;
    p.expand_threshold = 1.0;
    p.energy_eps = 0.2; // strict rule at 2 x eps keeps fewer than all 9
    p.enable_shrink = 0;
    ASSERT_EQ(svd_adapt(st, &p, &n, 300, &ctx, &e), 0);
    ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
    ASSERT(e.changes[0].reason == SVD_WHY_FITS || e.changes[0].reason == SVD_WHY_DISABLED);
    cJSON *j = dmn_event_json(&e);
    ASSERT(j != NULL);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "changes"), 0);
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(c0, "action")), "keep");
    ASSERT(cJSON_GetStringValue(cJSON_GetObjectItem(c0, "reason")) != NULL);
    cJSON_Delete(j);
    svd_event_free(&e);
    svd_state_destroy(st);
    net_destroy(n);
    free(x);
    free(y);
}

// ---- 7. two-way adaptation: mirror growth, saturation, rotate through ReLU -----------------

/* Mean fan-in gradient norm of rows [r0, r1) of the group's producing weight. */
static double row_grad_norm(const struct net *n, const struct svd_gref *g, size_t r0, size_t r1)
{
    const struct net_tensor *t = main_w(n, g);
    const size_t m = svd_group_width(n, g), L = t->n / m;
    double acc = 0.0;
    for (size_t i = r0; i < r1; i++) {
        double sq = 0.0;
        for (size_t j = 0; j < L; j++) {
            double v = n->grads[t->off + i * L + j];
            sq += v * v;
        }
        acc += sqrt(sq);
    }
    return acc / (double)(r1 - r0);
}

/* Mirror growth of every group kind: the function is unchanged to rounding (eval and
 * training mode), and the new units' fan-in rows get gradient of the same order as the old
 * units' at once and after a few SGD steps (zero fan-out growth starves them: checked too). */
/* The Fisher saliency of a unit (target_value fisher) is B tau_j^2 for one chunk of B <= 32
 * samples, tau_j = sum of W . dL/dW over the unit's consumer columns = dL/d(eps) when those
 * columns are scaled by 1 + eps. Checked against central differences of the loss for every
 * group of every test net (dense, BN, conv, flatten, GAP, residual inner widths and streams,
 * a factorized consumer); the gradients are zero again after. */
TEST(saliency_matches_finite_differences_of_the_loss)
{
    setup();
    const size_t B = 32;
    for (size_t d = 0; d < N_OF(NETS); d++) {
        struct net *n = mk(&NETS[d]);
        ASSERT(n != NULL);
        init_net(n, 940 + d);
        float *x = rand_x(B * in_numel(n), 950 + d);
        uint8_t *y = rand_y(B, n->n_classes, 960 + d);
        struct svd_gref g[16];
        const size_t ng = svd_groups(n, g, 16), cap = 64;
        double *sal = calloc(ng * cap + 1, sizeof(double));
        ASSERT(sal != NULL);
        ASSERT_EQ(svd__saliency(n, g, ng, x, y, B, sal, cap), 0);
        for (size_t i = 0; i < n->n_params; i++) ASSERT(n->grads[i] == 0.0f);
        for (size_t gi = 0; gi < ng; gi++) {
            struct svd__group G;
            ASSERT_EQ(svd__group_build(n, &g[gi], &G), 0);
            double worst = 0.0, top = 0.0;
            for (size_t j = 0; j < G.m; j++) {
                double L[2];
                for (int sgn = 0; sgn < 2; sgn++) {
                    const float f = sgn ? 1.01f : 0.99f;
                    for (size_t ci = 0; ci < G.n_cols; ci++) {
                        const struct net_tensor *t = &n->tensors[G.cols[ci].t];
                        if (t->arena != NET_ARENA_PARAM) continue;
                        float *w = n->params + t->off;
                        for (size_t o = 0; o < t->dims[0]; o++)
                            for (size_t b = 0; b < G.cols[ci].block; b++)
                                w[(o * G.m + j) * G.cols[ci].block + b] *= f;
                    }
                    L[sgn] = net_forward(n, x, y, B, 0);
                    for (size_t ci = 0; ci < G.n_cols; ci++) {
                        const struct net_tensor *t = &n->tensors[G.cols[ci].t];
                        if (t->arena != NET_ARENA_PARAM) continue;
                        float *w = n->params + t->off;
                        for (size_t o = 0; o < t->dims[0]; o++)
                            for (size_t b = 0; b < G.cols[ci].block; b++)
                                w[(o * G.m + j) * G.cols[ci].block + b] /= f;
                    }
                }
                const double tau_fd = (L[1] - L[0]) / 0.02;
                const double tau = sqrt(sal[gi * cap + j] / (double)B);
                if (fabs(tau_fd) > top) top = fabs(tau_fd);
                if (fabs(fabs(tau_fd) - tau) > worst) worst = fabs(fabs(tau_fd) - tau);
            }
            char name[64];
            svd_group_name(n, &g[gi], name, sizeof name);
            printf("    %s %s: max |tau| %.3g, worst difference %.2g\n", NETS[d].name, name, top,
                   worst);
            ASSERT(top > 0.0);
            ASSERT_FLT_OP(worst, <=, 0.03 * top + 1e-4); // ReLU kinks and float loss
        }
        free(sal);
        free(x);
        free(y);
        net_destroy(n);
    }
}

TEST(grow_mirror_every_group_kind_keeps_function_and_feeds_new_units)
{
    setup();
    const size_t B = 32;
    struct net_optim opt = {.kind = NET_SGD, .momentum = 0.9f};
    for (size_t d = 0; d < N_OF(NETS); d++) {
        struct net *n = mk(&NETS[d]);
        ASSERT(n != NULL);
        init_net(n, 900 + d);
        memset(n->m, 0, n->n_params * sizeof(float));
        memset(n->v, 0, n->n_params * sizeof(float));
        float *x = rand_x(B * in_numel(n), 910 + d);
        uint8_t *y = rand_y(B, n->n_classes, 920 + d);
        struct svd_gref g[16];
        const size_t ng = svd_groups(n, g, 16);
        for (size_t gi = 0; gi < ng; gi++) {
            char name[64], err[256] = "";
            svd_group_name(n, &g[gi], name, sizeof name);
            const size_t m = svd_group_width(n, &g[gi]), extra = 3;
            for (int mode = 0; mode < 2; mode++) {
                struct net *gn = NULL;
                uint64_t rng = 930 + gi;
                enum svd_grow gm = mode ? SVD_GROW_MIRROR : SVD_GROW_ORTHOGONAL;
                int rc = svd_grow(&gn, n, &g[gi], extra, gm, x, y, B, &rng, err, sizeof err);
                if (rc) printf("    %s %s: %s\n", NETS[d].name, name, err);
                ASSERT_EQ(rc, 0);
                ASSERT_EQ(svd_group_width(gn, &g[gi]), m + extra);
                for (int tr = 0; tr < 2; tr++) {
                    double e = fn_change(n, gn, x, B, tr);
                    if (!(e < 1e-5))
                        printf("    %s %s (%s, %s): output moved by %g\n", NETS[d].name, name,
                               mode ? "mirror" : "orthogonal", tr ? "train" : "eval", e);
                    ASSERT_FLT_OP(e, <, 1e-5);
                }
                /* Gradient of the fan-in rows: new pairs (m .. m + 1) against the old units,
                 * at the moment of growth and after 3 steps. */
                double ratio[2];
                for (int k = 0; k < 2; k++) {
                    if (k)
                        for (int st = 0; st < 3; st++) {
                            net_zero_grad(gn);
                            net_forward(gn, x, y, B, 1);
                            net_backward(gn, y, B);
                            net_optim_step(gn, &opt, 0.05f);
                        }
                    net_zero_grad(gn);
                    net_forward(gn, x, y, B, 1);
                    net_backward(gn, y, B);
                    double old = row_grad_norm(gn, &g[gi], 0, m);
                    double nw = row_grad_norm(gn, &g[gi], m, m + 2);
                    ratio[k] = old > 0 ? nw / old : 0.0;
                    net_zero_grad(gn);
                }
                if (mode) {
                    if (!(ratio[0] > 0.05 && ratio[0] < 20 && ratio[1] > 0.05 && ratio[1] < 20))
                        printf("    %s %s: new / old fan-in gradient %g at growth, %g after 3 "
                               "steps\n",
                               NETS[d].name, name, ratio[0], ratio[1]);
                    ASSERT_FLT_OP(ratio[0], >, 0.05);
                    ASSERT_FLT_OP(ratio[0], <, 20.0);
                    ASSERT_FLT_OP(ratio[1], >, 0.05);
                    ASSERT_FLT_OP(ratio[1], <, 20.0);
                } else {
                    ASSERT_FLT_OP(ratio[0], ==, 0.0); // zero fan-out: starved at growth ...
                    printf("    %s %s orthogonal: new / old fan-in gradient %g after 3 steps\n",
                           NETS[d].name, name, ratio[1]);
                    ASSERT_FLT_OP(ratio[1], >, 1e-3); // ... fed once the fan-out moved (0.002-4)
                    ASSERT_FLT_OP(ratio[1], <, 20.0);
                }
                net_destroy(gn);
            }
        }
        free(x);
        free(y);
        net_destroy(n);
    }
}

/* The default policy's rules on activations: relative cut 0.05, saturation at 0.85 of the
 * width, mirror growth by half the width. */
static struct svd_policy saturation_policy(void)
{
    struct svd_policy p = base_policy();
    p.source = SVD_SRC_ACTIVATIONS;
    p.rule = SVD_RULE_RELATIVE;
    p.shrink_threshold = 0.05;
    p.expand_threshold = 0.85;
    p.enable_grow = 1;
    p.grow_mode = SVD_GROW_MIRROR;
    p.growth = 0.5;
    p.min_width = 1;
    return p;
}

/* The growth rule: a saturated layer (every direction carries energy) grows after
 * grow_patience checks; a redundant one (duplicated units) never does, it shrinks. */
TEST(adapt_saturation_grows_saturated_and_not_redundant_layers)
{
    setup();
    const size_t B = 64, dup[4] = {1, 6, 10, 11}, src[4] = {3, 0, 8, 2};
    struct svd_policy p = saturation_policy();
    p.grow_patience = 2;
    for (int redundant = 0; redundant < 2; redundant++) {
        struct net *n = redundant ? dup_net(12, dup, src, 4, 0.5f, 61, 0) : flat_net(61);
        ASSERT(n != NULL);
        const size_t m0 = n->layers[1].spec.out;
        float *x = rand_x(B * 36, 62);
        uint8_t *y = rand_y(B, 5, 63);
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 4;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        struct svd_state *st = svd_state_create();
        struct svd_event e;
        ASSERT_EQ(svd_adapt(st, &p, &n, 10, &ctx, &e), redundant ? 1 : 0);
        ASSERT_EQ(e.changes[0].action, redundant ? SVD_ACT_SHRINK : SVD_ACT_KEEP);
        if (!redundant) ASSERT_EQ(e.changes[0].reason, SVD_WHY_PATIENCE);
        svd_event_free(&e);
        if (redundant) {
            ASSERT_EQ(n->layers[1].spec.out, 8);
            // The growth rule alone (no shrinking) on the redundant layer: it never grows.
            struct net *r = dup_net(12, dup, src, 4, 0.5f, 61, 0);
            struct svd_policy q = p;
            q.enable_shrink = 0;
            for (size_t step = 20; step < 25; step++) {
                ASSERT_EQ(svd_adapt(st, &q, &r, step, &ctx, &e), 0);
                ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
                ASSERT(e.changes[0].reason != SVD_WHY_PATIENCE);
                ASSERT_LT(e.changes[0].kept, 12);
                svd_event_free(&e);
            }
            ASSERT_EQ(r->layers[1].spec.out, 12);
            net_destroy(r);
        } else {
            float *l0 = logits(n, x, B, 0);
            ASSERT_EQ(svd_adapt(st, &p, &n, 11, &ctx, &e), 1);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_GROW);
            ASSERT_EQ(e.changes[0].reason, SVD_WHY_SATURATED);
            ASSERT_EQ(n->layers[1].spec.out, m0 + 4);
            svd_event_free(&e);
            float *l1 = logits(n, x, B, 0);
            ASSERT_FLT_OP(rel_change(l0, l1, B * 5), <, 1e-5);
            free(l0);
            free(l1);
        }
        svd_state_destroy(st);
        free(x);
        free(y);
        net_destroy(n);
    }
}

/* A net the rank rule has cut is settled: no group of it grows for saturation any more (reason
 * "settled"), across a save / load of the state, unless grow_after_shrink. The redundant layer
 * (4 duplicated units) is cut to 8; the state then meets a saturated layer of the same name. */
TEST(adapt_net_cut_by_the_rank_rule_grows_no_more)
{
    setup();
    const size_t B = 64, dup[4] = {1, 6, 10, 11}, src[4] = {3, 0, 8, 2};
    struct svd_policy p = saturation_policy();
    float *x = rand_x(B * 36, 62);
    uint8_t *y = rand_y(B, 5, 63);
    struct vctx vc = {x, y, B, 0};
    uint64_t rng = 4;
    struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
    struct net *r = dup_net(12, dup, src, 4, 0.5f, 61, 0), *n = flat_net(61);
    ASSERT(r && n);
    struct svd_state *st = svd_state_create(), *st2 = svd_state_create();
    struct svd_event e;
    ASSERT_EQ(svd_adapt(st, &p, &r, 10, &ctx, &e), 1);
    ASSERT_EQ(e.changes[0].action, SVD_ACT_SHRINK);
    ASSERT_EQ(e.changes[0].reason, SVD_WHY_RANK_RULE);
    svd_event_free(&e);
    void *blob = NULL;
    size_t len = 0;
    ASSERT_EQ(svd_state_save(st, &blob, &len), 0);
    ASSERT_EQ(svd_state_load(st2, blob, len), 0);
    free(blob);
    for (int after = 0; after < 2; after++) {
        p.grow_after_shrink = after;
        ASSERT_EQ(svd_adapt(st2, &p, &n, 30, &ctx, &e), after);
        printf("    grow_after_shrink %d: %s (%s), width %zu\n", after,
               svd_action_name(e.changes[0].action), svd_reason_name(e.changes[0].reason),
               n->layers[1].spec.out);
        ASSERT_EQ(e.changes[0].action, after ? SVD_ACT_GROW : SVD_ACT_KEEP);
        ASSERT_EQ(e.changes[0].reason, after ? SVD_WHY_SATURATED : SVD_WHY_SETTLED);
        ASSERT_EQ(n->layers[1].spec.out, after ? 12 : 8);
        svd_event_free(&e);
    }
    // A fresh state: the same saturated layer grows (nothing was cut).
    struct svd_state *st3 = svd_state_create();
    struct net *n2 = flat_net(61);
    p.grow_after_shrink = 0;
    ASSERT_EQ(svd_adapt(st3, &p, &n2, 30, &ctx, &e), 1);
    ASSERT_EQ(e.changes[0].action, SVD_ACT_GROW);
    svd_event_free(&e);
    svd_state_destroy(st);
    svd_state_destroy(st2);
    svd_state_destroy(st3);
    net_destroy(r);
    net_destroy(n);
    net_destroy(n2);
    free(x);
    free(y);
}

/* Two dense groups, 36 -> 12 -> 8 -> 5, each with orthogonal weights (scale 0.5), so the rank
 * rule keeps every direction of both. */
static struct net *two_net(uint64_t seed)
{
    static const struct ndef d = {
        "two", 1, 6, 6,
        5,     2, 6, {S_FLAT(), S_DENSE(12, 1), S_RELU(), S_DENSE(8, 1), S_RELU(), S_DENSE(5, 1)}};
    struct net *n = mk(&d);
    if (!n) return NULL;
    init_net(n, seed);
    const size_t li[2] = {1, 3}, in[2] = {36, 12}, out[2] = {12, 8};
    uint64_t rng = seed;
    for (int g = 0; g < 2; g++) {
        double q[36 * 12];
        rand_orth(q, in[g], out[g], &rng);
        float *w = net_tensor_data(n, net_tensor_get(n, li[g], "w"));
        for (size_t i = 0; i < out[g]; i++)
            for (size_t j = 0; j < in[g]; j++) w[i * in[g] + j] = (float)(0.5 * q[j * out[g] + i]);
    }
    moments_from_params(n);
    return n;
}

/* A grown group the rank rule would cut but may not yet (it is protected) settles the net
 * as a kept cut does, once the rule has asked for the cut at grow_patience looks in a row:
 * the other, saturated group then does not grow. Group 2 grows first while group 1 sits at
 * max_width; then, with max_width raised, group 1 is saturated and group 2's mirror pairs
 * are duplicates the rule would cut. The count of those looks survives a save and load. */
TEST(adapt_net_with_a_protected_cut_waiting_grows_no_more)
{
    setup();
    const size_t B = 64;
    float *x = rand_x(B * 36, 62);
    uint8_t *y = rand_y(B, 5, 63);
    struct vctx vc = {x, y, B, 0};
    uint64_t rng = 4;
    struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
    for (int after = 0; after < 2; after++) {
        struct svd_policy p = saturation_policy();
        p.grow_patience = 2;
        p.cooldown_steps = 0;
        p.protect_steps = 100;
        p.max_width = 12;
        p.grow_after_shrink = after;
        struct net *n = two_net(71);
        ASSERT(n != NULL);
        struct svd_state *st = svd_state_create(), *st2 = svd_state_create();
        struct svd_event e;
        ASSERT_EQ(svd_adapt(st, &p, &n, 9, &ctx, &e), 0);
        ASSERT_EQ(e.n_changes, 2);
        ASSERT_EQ(e.changes[0].reason, SVD_WHY_MAX_WIDTH);
        ASSERT_EQ(e.changes[1].reason, SVD_WHY_PATIENCE);
        svd_event_free(&e);
        ASSERT_EQ(svd_adapt(st, &p, &n, 10, &ctx, &e), 1);
        ASSERT_EQ(e.changes[1].action, SVD_ACT_GROW);
        ASSERT_EQ(n->layers[3].spec.out, 12);
        svd_event_free(&e);
        p.max_width = 64;
        for (size_t step = 11; step <= 12; step++) {
            // The first look that wants the cut does not settle the net; the second does.
            const int settle = step == 12;
            ASSERT_EQ(svd_adapt(step == 12 ? st2 : st, &p, &n, step, &ctx, &e), settle && after);
            printf("    grow_after_shrink %d, step %zu: %s %s (%s) kept %zu; %s %s (%s) kept %zu\n",
                   after, step, e.changes[0].group, svd_action_name(e.changes[0].action),
                   svd_reason_name(e.changes[0].reason), e.changes[0].kept, e.changes[1].group,
                   svd_action_name(e.changes[1].action), svd_reason_name(e.changes[1].reason),
                   e.changes[1].kept);
            ASSERT_EQ(e.changes[1].action, SVD_ACT_KEEP);
            ASSERT_EQ(e.changes[1].reason, SVD_WHY_PROTECTED);
            ASSERT_LT(e.changes[1].kept, 12);
            const enum svd_reason why = !settle ? SVD_WHY_PATIENCE
                                        : after ? SVD_WHY_SATURATED
                                                : SVD_WHY_SETTLED;
            ASSERT_EQ(e.changes[0].reason, why);
            ASSERT_EQ(e.changes[0].action, settle && after ? SVD_ACT_GROW : SVD_ACT_KEEP);
            ASSERT_EQ(n->layers[1].spec.out, settle && after ? 18 : 12);
            svd_event_free(&e);
            if (step == 11) { // a resume between the two looks
                void *blob = NULL;
                size_t len = 0;
                ASSERT_EQ(svd_state_save(st, &blob, &len), 0);
                ASSERT_EQ(svd_state_load(st2, blob, len), 0);
                free(blob);
            }
        }
        svd_state_destroy(st);
        svd_state_destroy(st2);
        net_destroy(n);
    }
    free(x);
    free(y);
}

/* A grown layer's mirror pairs start as duplicates in the activation spectrum, so the rank
 * rule would cut them on the next look; protect_steps keeps them (reason "protected") and
 * lets the rule act again once it has passed. Without it the next pass shrinks. */
TEST(adapt_grown_layer_is_protected_from_the_rank_rule)
{
    setup();
    const size_t B = 64;
    struct svd_policy p = saturation_policy();
    p.grow_patience = 1;
    p.cooldown_steps = 0;
    for (int protect = 0; protect < 2; protect++) {
        p.protect_steps = protect ? 5 : 0;
        struct net *n = flat_net(61);
        ASSERT(n != NULL);
        const size_t m0 = n->layers[1].spec.out;
        float *x = rand_x(B * 36, 62);
        uint8_t *y = rand_y(B, 5, 63);
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 4;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        struct svd_state *st = svd_state_create();
        struct svd_event e;
        ASSERT_EQ(svd_adapt(st, &p, &n, 10, &ctx, &e), 1);
        ASSERT_EQ(e.changes[0].action, SVD_ACT_GROW);
        svd_event_free(&e);
        const size_t m1 = n->layers[1].spec.out;
        ASSERT_EQ(m1, m0 + 4);
        // The pairs are duplicates: the rank rule keeps fewer than the width.
        ASSERT_EQ(svd_adapt(st, &p, &n, 11, &ctx, &e), protect ? 0 : 1);
        printf("    protect_steps %zu: step 11 %s (%s), width %zu\n", p.protect_steps,
               svd_action_name(e.changes[0].action), svd_reason_name(e.changes[0].reason),
               n->layers[1].spec.out);
        ASSERT_LT(e.changes[0].kept, m1);
        if (protect) {
            ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
            ASSERT_EQ(e.changes[0].reason, SVD_WHY_PROTECTED);
            ASSERT_EQ(n->layers[1].spec.out, m1);
            svd_event_free(&e);
            // Step 15 = 10 + protect_steps: the rule decides again.
            ASSERT_EQ(svd_adapt(st, &p, &n, 15, &ctx, &e), 1);
        }
        ASSERT_EQ(e.changes[0].action, SVD_ACT_SHRINK);
        ASSERT_EQ(e.changes[0].reason, SVD_WHY_RANK_RULE);
        svd_event_free(&e);
        svd_state_destroy(st);
        free(x);
        free(y);
        net_destroy(n);
    }
}

/* A rolled-back target cut leaves the group as it was: the next pass tries half the cut at
 * once (no cool-down), and the one after half again. Every surgery is refused here
 * (max_loss_jump below zero). The first cut is half the width, or what the goal asks of
 * every width when that is more: a target of 0.3 x P keeps sqrt(0.3) = 55% of the widths
 * (cut 4 of 8, the half), one of 0.1 x P keeps 32% (cut 6 of 8). The backoff outlives a kept
 * cut: a group that refused cuts is cut in the smaller steps from then on. */
TEST(target_cut_rolled_back_is_halved_at_the_next_pass)
{
    setup();
    const size_t B = 32;
    float *x = rand_x(B * 36, 6);
    uint8_t *y = rand_y(B, 5, 7);
    static const double ratio[2] = {0.3, 0.1};
    static const size_t want[2][3] = {{4, 2, 1}, {6, 3, 1}};
    for (int k = 0; k < 2; k++) {
        struct net *n = flat_net(5);
        ASSERT(n != NULL);
        struct svd_policy p = base_policy();
        p.target_params = (size_t)(ratio[k] * (double)n->n_params);
        p.target_step = 0.95;
        p.cooldown_steps = 100;
        p.max_loss_jump = -1.0;
        struct svd_state *st = svd_state_create();
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 4;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        size_t cuts[3];
        for (size_t j = 0; j < 3; j++) {
            struct svd_event e;
            ASSERT_EQ(svd_adapt(st, &p, &n, 10 + j, &ctx, &e), 0);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_SHRINK);
            ASSERT(e.changes[0].rolled_back);
            cuts[j] = e.changes[0].from - e.changes[0].to;
            svd_event_free(&e);
            ASSERT_EQ(n->layers[1].spec.out, 8);
        }
        printf("    target %.1f x P: cuts tried at steps 10, 11, 12: %zu, %zu, %zu\n", ratio[k],
               cuts[0], cuts[1], cuts[2]);
        for (size_t j = 0; j < 3; j++) ASSERT_EQ(cuts[j], want[k][j]);
        // Accepted from now on: the kept cuts stay at the backed-off size (one unit), pass
        // after pass; reset by the first kept one, the next would be 3 or 5 again.
        p.max_loss_jump = 10.0;
        for (size_t j = 0; j < 2; j++) {
            struct svd_event e;
            const size_t m = n->layers[1].spec.out;
            ASSERT_EQ(svd_adapt(st, &p, &n, 13 + 100 * j, &ctx, &e), 1);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_SHRINK);
            ASSERT(!e.changes[0].rolled_back);
            ASSERT_EQ(e.changes[0].from - e.changes[0].to, 1);
            ASSERT_EQ(n->layers[1].spec.out, m - 1);
            svd_event_free(&e);
        }
        svd_state_destroy(st);
        net_destroy(n);
    }
    free(x);
    free(y);
}

/* Three adjacent dense groups of 48 on an 8 x 8 input, for the target-pass tests. */
static const struct ndef DEEP = {"deep",
                                 1,
                                 8,
                                 8,
                                 5,
                                 3,
                                 8,
                                 {S_FLAT(), S_DENSE(48, 1), S_RELU(), S_DENSE(48, 1), S_RELU(),
                                  S_DENSE(48, 1), S_RELU(), S_DENSE(5, 1)}};

/* A target pass far above its target replans after each round: three adjacent dense groups
 * (every cut also shrinks the next group's columns, so a plan that prices each direction at
 * its own group's unit cost counts those weights twice) and a first layer whose input does not
 * shrink. With the pass's goal at the target (target_step 0.95 > 1 - 0.1), one pass lands
 * within 10% of it; when a group could be cut once a pass, the same pass stopped at 2.8x it. */
TEST(target_pass_far_above_replans_until_its_goal)
{
    setup();
    const size_t B = 64;
    float *x = rand_x(B * 64, 11);
    uint8_t *y = rand_y(B, 5, 12);
    struct net *n = mk(&DEEP);
    ASSERT(n != NULL);
    init_net(n, 13);
    const size_t P0 = n->n_params;
    struct svd_policy p = base_policy();
    p.target_params = P0 / 10;
    p.target_step = 0.95;
    p.cooldown_steps = 100;
    struct svd_state *st = svd_state_create();
    struct vctx vc = {x, y, B, 0};
    uint64_t rng = 14;
    struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
    struct svd_event e;
    ASSERT(svd_adapt(st, &p, &n, 10, &ctx, &e) >= 3);
    const size_t P1 = n->n_params;
    printf("    one pass: %zu -> %zu parameters (target %zu, %.2f x)\n", P0, P1, p.target_params,
           (double)P1 / (double)p.target_params);
    ASSERT_LE((double)P1, 1.1 * (double)p.target_params);
    ASSERT_GE((double)P1, 0.9 * (double)p.target_params);
    // One entry per group, each a kept cut from its width at the pass's start.
    for (size_t i = 0; i < 3; i++) {
        ASSERT_EQ(e.changes[i].action, SVD_ACT_SHRINK);
        ASSERT_EQ(e.changes[i].from, 48);
        ASSERT_EQ(e.changes[i].to, n->layers[1 + 2 * i].spec.out);
        ASSERT(!e.changes[i].rolled_back);
    }
    ASSERT_EQ(e.params_after, P1);
    svd_event_free(&e);
    svd_state_destroy(st);
    net_destroy(n);
    free(x);
    free(y);
}

/* A target pass that cut the net puts every group in the cool-down, the ones it did not cut
 * too: at a pass that moves a tenth of the parameters (target_step 0.1) only some of the three
 * groups are cut, and the next pass, one step later, looks at none; one cool-down later the
 * pass cuts again. */
TEST(target_pass_that_cut_cools_every_group)
{
    setup();
    const size_t B = 64;
    float *x = rand_x(B * 64, 21);
    uint8_t *y = rand_y(B, 5, 22);
    struct net *n = mk(&DEEP);
    ASSERT(n != NULL);
    init_net(n, 23);
    struct svd_policy p = base_policy();
    p.target_params = n->n_params / 10;
    p.target_step = 0.1;
    p.cooldown_steps = 100;
    struct svd_state *st = svd_state_create();
    struct vctx vc = {x, y, B, 0};
    uint64_t rng = 24;
    struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
    static const size_t steps[3] = {10, 11, 110};
    for (size_t k = 0; k < 3; k++) {
        struct svd_event e;
        const int kept = svd_adapt(st, &p, &n, steps[k], &ctx, &e);
        size_t cut = 0, cooling = 0;
        for (size_t i = 0; i < 3; i++) {
            cut += e.changes[i].action == SVD_ACT_SHRINK && !e.changes[i].rolled_back;
            cooling += e.changes[i].reason == SVD_WHY_COOLDOWN;
        }
        printf("    step %zu: %d kept, %zu groups cut, %zu cooling\n", steps[k], kept, cut,
               cooling);
        if (k == 1) {
            ASSERT_EQ(kept, 0);
            ASSERT_EQ(cooling, 3);
        } else {
            ASSERT_GE(kept, 1);
            ASSERT_EQ(cooling, 0);
        }
        if (k == 0) ASSERT_LT(cut, 3); // the point: a group the pass did not cut cools too
        svd_event_free(&e);
    }
    svd_state_destroy(st);
    net_destroy(n);
    free(x);
    free(y);
}

/* The saturation test after a growth: a spectrum whose every direction but one clears the
 * cut, but only three quarters clear twice the cut (s = 1 x 6, 0.07, 0.01 against a cut of
 * 0.05). A layer with no growth behind it shrinks to the 7 directions the rule keeps; the
 * same layer, grown and still protected, counts as saturated (kept 7 of 8 >= 0.85) and grows
 * instead; once its protection has run out it shrinks again. A shrink ends it too: a grown
 * layer cut to 5 by the rule, given the spectrum 1 x 4, 0.07 (kept 5 of 5, strict 4 of 5),
 * fits and does not grow back. */
static void set_spectrum(struct net *n, size_t m, const double *sv, uint64_t seed)
{
    double q[36 * 8];
    rand_orth(q, 36, m, &seed);
    float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < 36; j++) w[i * 36 + j] = (float)(sv[i] * q[j * m + i]);
    moments_from_params(n);
}

TEST(adapt_grown_layer_saturates_on_the_kept_count)
{
    setup();
    const size_t B = 32;
    float *x = rand_x(B * 36, 6);
    uint8_t *y = rand_y(B, 5, 7);
    struct svd_policy p = base_policy();
    p.rule = SVD_RULE_RELATIVE;
    p.shrink_threshold = 0.05;
    p.expand_threshold = 0.85;
    p.enable_grow = 1;
    p.growth = 0.25;
    static const double near_full[8] = {1, 1, 1, 1, 1, 1, 0.07, 0.01};
    static const double five[8] = {1, 1, 1, 1, 1, 0.01, 0.01, 0.01};
    static const double five_full[5] = {1, 1, 1, 1, 0.07};
    // 0: never changed, 1: grown (protected), 2: grown, then shrunk, 3: grown, protection over
    for (int c = 0; c < 4; c++) {
        struct net *n = flat_net(5);
        ASSERT(n != NULL);
        set_spectrum(n, 8, c == 2 ? five : near_full, 9);
        p.protect_steps = 0;
        struct svd_state *st = svd_state_create();
        if (c) {
            // The state a growth of this group leaves: "SVST" v5, one group, protected up
            // to step 100 (cases 2 and 3: to step 10, over at the pass), grown = 1.
            struct net_wr wr = {0};
            net_wr_bytes(&wr, "SVST", 4);
            net_wr_u32(&wr, 5);
            net_wr_u64(&wr, 1);
            net_wr_str(&wr, "dense1");
            for (int f = 0; f < 3; f++) net_wr_u64(&wr, 0);
            net_wr_u64(&wr, c == 1 ? 100 : 10);
            net_wr_u64(&wr, 1);
            ASSERT(!wr.oom);
            ASSERT_EQ(svd_state_load(st, wr.p, wr.len), 0);
            net_wr_free(&wr);
        }
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 4;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        struct svd_event e;
        ASSERT_EQ(svd_adapt(st, &p, &n, 10, &ctx, &e), 1);
        ASSERT_STR_EQ(e.changes[0].group, "dense1");
        ASSERT_EQ(e.changes[0].kept, c == 2 ? 5 : 7);
        ASSERT_EQ(e.changes[0].action, c == 1 ? SVD_ACT_GROW : SVD_ACT_SHRINK);
        ASSERT_EQ(e.changes[0].reason, c == 1 ? SVD_WHY_SATURATED : SVD_WHY_RANK_RULE);
        ASSERT_EQ(n->layers[1].spec.out, c == 1 ? 10 : c == 2 ? 5 : 7);
        svd_event_free(&e);
        if (c == 2) {
            set_spectrum(n, 5, five_full, 10);
            ASSERT_EQ(svd_adapt(st, &p, &n, 11, &ctx, &e), 0);
            ASSERT_EQ(e.changes[0].kept, 5);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
            ASSERT_EQ(e.changes[0].reason, SVD_WHY_FITS);
            ASSERT_EQ(n->layers[1].spec.out, 5);
            svd_event_free(&e);
        }
        svd_state_destroy(st);
        net_destroy(n);
    }
    free(x);
    free(y);
}

static double batch_loss(struct net *n, const float *x, const uint8_t *y, size_t B);

/* grow_gain, the loss-aware end of saturation growth: when a growth's protection runs out
 * (or before the group grows again), the group is cut back to its width before the growth
 * and the validation loss judges. Orthogonal growth gives the new units zero consumer
 * columns, so untrained they carry nothing: the cut costs no loss (select's refit even
 * lowers it here), is kept, and the group
 * stays at its old width though still saturated, across a save / load of the state. When
 * the labels need all 12 units (made from them, with columns that read them), the cut would
 * raise the loss by more than grow_gain: it is undone, and the group goes on as before. */
TEST(adapt_growth_that_does_not_pay_is_cut_back)
{
    setup();
    const size_t B = 64;
    float *x = rand_x(B * 36, 71);
    uint8_t *y0 = rand_y(B, 5, 72), *y = y0;
    struct svd_policy p = saturation_policy();
    p.grow_mode = SVD_GROW_ORTHOGONAL;
    p.grow_patience = 1;
    p.cooldown_steps = p.protect_steps = 5;
    p.grow_gain = 0.01;
    for (int pays = 0; pays < 2; pays++) {
        struct net *n = flat_net(73);
        ASSERT(n != NULL);
        struct vctx vc = {x, y, B, 0};
        uint64_t rng = 5;
        struct svd_ctx ctx = {x, y, B, val_loss_cb, &vc, &rng, 0};
        struct svd_state *st = svd_state_create();
        struct svd_event e;
        ASSERT_EQ(svd_adapt(st, &p, &n, 10, &ctx, &e), 1);
        ASSERT_EQ(e.changes[0].action, SVD_ACT_GROW);
        ASSERT_EQ(e.changes[0].reason, SVD_WHY_SATURATED);
        ASSERT(isnan(e.changes[0].gain));
        svd_event_free(&e);
        ASSERT_EQ(n->layers[1].spec.out, 12);
        const double grown = batch_loss(n, x, y, B);
        uint8_t *y2 = malloc(B);
        ASSERT(y2 != NULL);
        if (pays) {
            /* Labels that need all 12 units: class = argmax of V h (V fixed, h the ReLU
             * outputs; the new units' fan-in rows are orthogonal to the old ones'), and
             * consumer columns that read them: 4 V. No 8 of the 12 can stand in for all. */
            const float *w = net_tensor_data(n, net_tensor_get(n, 1, "w"));
            const float *bias = net_tensor_data(n, net_tensor_get(n, 1, "b"));
            float *w2 = net_tensor_data(n, net_tensor_get(n, 3, "w"));
            double V[5][12];
            uint64_t vs = 74;
            for (size_t o = 0; o < 5; o++)
                for (size_t q = 0; q < 12; q++) V[o][q] = net_rand_normal(&vs);
            for (size_t b = 0; b < B; b++) {
                double h[12], best = -1e300;
                for (size_t q = 0; q < 12; q++) {
                    double a = bias[q];
                    for (size_t i = 0; i < 36; i++) a += (double)w[q * 36 + i] * x[b * 36 + i];
                    h[q] = a > 0 ? a : 0;
                }
                for (size_t o = 0; o < 5; o++) {
                    double z = 0;
                    for (size_t q = 0; q < 12; q++) z += V[o][q] * h[q];
                    if (z > best) best = z, y2[b] = (uint8_t)o;
                }
            }
            for (size_t o = 0; o < 5; o++)
                for (size_t q = 0; q < 12; q++) w2[o * 12 + q] = (float)(4.0 * V[o][q]);
            vc.y = ctx.y = y = y2;
        }
        const double before = batch_loss(n, x, y, B);
        printf("    %s: loss %.5f (at the growth %.5f)\n", pays ? "trained" : "untrained", before,
               grown);
        if (pays) ASSERT_FLT_OP(before, <, 0.5 * batch_loss(n, x, y0, B));
        // Step 12: cooling down and protected. Step 15: the judgement.
        ASSERT_EQ(svd_adapt(st, &p, &n, 12, &ctx, &e), 0);
        ASSERT_EQ(e.changes[0].reason, SVD_WHY_COOLDOWN);
        svd_event_free(&e);
        int r = svd_adapt(st, &p, &n, 15, &ctx, &e);
        printf("    val %.5f -> %.5f\n", e.changes[0].val_before, e.changes[0].val_after);
        printf("    step 15: %s (%s), width %zu, cut-back loss rise %.3g\n",
               svd_action_name(e.changes[0].action), svd_reason_name(e.changes[0].reason),
               n->layers[1].spec.out, e.changes[0].gain);
        ASSERT(isfinite(e.changes[0].gain));
        if (!pays) {
            ASSERT_EQ(r, 1);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_SHRINK);
            ASSERT_EQ(e.changes[0].reason, SVD_WHY_NO_GAIN);
            ASSERT_EQ(n->layers[1].spec.out, 8);
            // The rise is the kept cut's, relative (select's refit moves it a little).
            ASSERT_FLT_OP(e.changes[0].gain, <, p.grow_gain);
            ASSERT_NEAR(e.changes[0].gain, (batch_loss(n, x, y, B) - before) / before, 1e-6);
        } else {
            ASSERT_FLT_OP(e.changes[0].gain, >=, p.grow_gain);
            ASSERT(e.changes[0].reason != SVD_WHY_NO_GAIN);
            ASSERT_EQ(n->layers[1].spec.out == 12 || e.changes[0].action != SVD_ACT_KEEP, 1);
        }
        svd_event_free(&e);
        if (!pays) {
            // Still saturated (8 orthogonal units), it grows no more, after a save / load too;
            // with grow_gain off it would.
            void *blob = NULL;
            size_t len = 0;
            struct svd_state *st2 = svd_state_create();
            ASSERT_EQ(svd_state_save(st, &blob, &len), 0);
            ASSERT_EQ(svd_state_load(st2, blob, len), 0);
            free(blob);
            ASSERT_EQ(svd_adapt(st2, &p, &n, 30, &ctx, &e), 0);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_KEEP);
            ASSERT_EQ(e.changes[0].reason, SVD_WHY_NO_GAIN);
            svd_event_free(&e);
            ASSERT_EQ(n->layers[1].spec.out, 8);
            struct svd_policy off = p;
            off.grow_gain = 0;
            ASSERT_EQ(svd_adapt(st2, &off, &n, 31, &ctx, &e), 1);
            ASSERT_EQ(e.changes[0].action, SVD_ACT_GROW);
            svd_event_free(&e);
            svd_state_destroy(st2);
        }
        svd_state_destroy(st);
        net_destroy(n);
        free(y2);
        y = y0;
    }
    free(x);
    free(y0);
}

/* Mean cross-entropy of n on (x, y). */
static double batch_loss(struct net *n, const float *x, const uint8_t *y, size_t B)
{
    return net_forward(n, x, y, B, 0);
}

/* rotate through a ReLU (pre-activation PCA, consumers refitted by least squares) changes the
 * loss and the output less than deleting the same number of units by index. */
TEST(rotate_through_relu_beats_deletion_by_index)
{
    setup();
    static const struct ndef d = {
        "relu", 1, 6, 6, 5, 1, 4, {S_FLAT(), S_DENSE(16, 1), S_RELU(), S_DENSE(5, 1)}};
    const size_t B = 256, k = 10;
    struct net *n = mk(&d);
    ASSERT(n != NULL);
    init_net(n, 71);
    float *x = rand_x(B * 36, 72), *xv = rand_x(B * 36, 73);
    uint8_t *yv = rand_y(B, 5, 74);
    // Labels from the net itself, so the loss is low and a damaged net shows it.
    net_forward(n, xv, NULL, B, 0);
    for (size_t i = 0; i < B; i++) {
        const float *o = n->acts[n->n_layers] + i * 5;
        size_t a = 0;
        for (size_t c = 1; c < 5; c++)
            if (o[c] > o[a]) a = c;
        yv[i] = (uint8_t)a;
    }
    struct svd_gref g = {SVD_G_UNITS, 1};
    char err[256] = "";
    struct net *r = NULL;
    ASSERT_EQ(svd_shrink(&r, n, &g, k, SVD_MODE_ROTATE, x, B, err, sizeof err), 0);
    ASSERT_EQ(r->layers[1].spec.out, k);
    // Deletion by index: keep units 0 .. k-1, drop the others' columns.
    static struct ndef dk = {"relu_k", 1, 6, 6,
                             5,        1, 4, {S_FLAT(), S_DENSE(10, 1), S_RELU(), S_DENSE(5, 1)}};
    struct net *del = mk(&dk);
    ASSERT(del != NULL);
    const float *w1 = net_tensor_data(n, net_tensor_get(n, 1, "w"));
    const float *b1 = net_tensor_data(n, net_tensor_get(n, 1, "b"));
    const float *w2 = net_tensor_data(n, net_tensor_get(n, 3, "w"));
    const float *b2 = net_tensor_data(n, net_tensor_get(n, 3, "b"));
    float *dw1 = net_tensor_data(del, net_tensor_get(del, 1, "w"));
    float *db1 = net_tensor_data(del, net_tensor_get(del, 1, "b"));
    float *dw2 = net_tensor_data(del, net_tensor_get(del, 3, "w"));
    float *db2 = net_tensor_data(del, net_tensor_get(del, 3, "b"));
    memcpy(dw1, w1, k * 36 * sizeof(float));
    memcpy(db1, b1, k * sizeof(float));
    for (size_t o = 0; o < 5; o++)
        for (size_t j = 0; j < k; j++) dw2[o * k + j] = w2[o * 16 + j];
    memcpy(db2, b2, 5 * sizeof(float));
    const double l0 = batch_loss(n, xv, yv, B);
    const double lr = batch_loss(r, xv, yv, B), ld = batch_loss(del, xv, yv, B);
    const double er = fn_change(n, r, xv, B, 0), ed = fn_change(n, del, xv, B, 0);
    printf("    loss %.4f: rotate %+.4f, delete by index %+.4f; output change %.3f vs %.3f\n", l0,
           lr - l0, ld - l0, er, ed);
    ASSERT_FLT_OP(fabs(lr - l0), <, fabs(ld - l0));
    ASSERT_FLT_OP(er, <, ed);
    net_destroy(r);
    net_destroy(del);
    net_destroy(n);
    free(x);
    free(xv);
    free(yv);
}

// ---- 6. rank rules --------------------------------------------------------------------------

TEST(rank_rules_on_known_spectra)
{
    const float s[5] = {10.0f, 9.0f, 8.0f, 0.1f, 0.05f};
    struct svd_policy p = base_policy();
    p.rule = SVD_RULE_GAP;
    p.gap_threshold = 10.0;
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 3);
    p.gap_threshold = 1.5; // 10/9, 9/8 below; 8/0.1 above
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 3);
    p.gap_threshold = 100.0; // no gap that large: keep everything
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 5);
    p.gap_threshold = 1.05; // 10/9 = 1.11 is the first gap above 1.05
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 1);

    p.rule = SVD_RULE_ENERGY;
    p.energy_eps = 0.01;
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 3);
    p.energy_eps = 0.0;
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 5);
    p.energy_eps = 0.5; // 100 < 122.5 <= 181
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 2);
    p.energy_eps = 1e-5; // 0.0025 / 245.0125 = 1.02e-5 > eps: keep all 5
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 5);
    p.energy_eps = 2e-5; // the last one (1.02e-5 of the energy) may go
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 4);

    p.rule = SVD_RULE_RELATIVE;
    p.shrink_threshold = 0.05;
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 3);
    p.shrink_threshold = 0.0;
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 5);
    p.shrink_threshold = 0.85; // 10, 9 >= 8.5
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 2);
    p.shrink_threshold = 2.0; // nothing passes, at least one is kept
    ASSERT_EQ(svd_rank_rule(&p, s, 5), 1);

    // Zeros in the spectrum: the gap rule cuts before them, k = 0 keeps one.
    const float z[4] = {3.0f, 2.0f, 0.0f, 0.0f};
    p.rule = SVD_RULE_GAP;
    p.gap_threshold = 10.0;
    ASSERT_EQ(svd_rank_rule(&p, z, 4), 2);
    p.rule = SVD_RULE_ENERGY;
    p.energy_eps = 0.0;
    ASSERT_EQ(svd_rank_rule(&p, z, 4), 2);
    ASSERT_EQ(svd_rank_rule(&p, z, 0), 1);
}

// ---- 7. group discovery ---------------------------------------------------------------------

TEST(groups_of_a_residual_net)
{
    setup();
    static const struct ndef d = {"resnet",
                                  3,
                                  8,
                                  8,
                                  10,
                                  6,
                                  11,
                                  {S_CONV(8, 3, 1, 1, 0), S_BN(), S_RELU(), S_RES(6, 8, 1, 1),
                                   S_RES(6, 8, 1, 1), S_POOL(2, 2), S_RES(6, 12, 1, 1), S_GAP(),
                                   S_DENSE(16, 1), S_RELU(), S_DENSE(10, 1)}};
    struct net *n = mk(&d);
    ASSERT(n != NULL);
    struct svd_gref g[16];
    size_t ng = svd_groups(n, g, 16);
    static const struct {
        enum svd_gkind kind;
        size_t layer, width;
        const char *name;
    } want[] = {
        {SVD_G_STREAM, 0, 8, "conv1.stream"},  {SVD_G_RES_INNER, 3, 6, "res1.inner"},
        {SVD_G_RES_INNER, 4, 6, "res2.inner"}, {SVD_G_RES_INNER, 6, 6, "res3.inner"},
        {SVD_G_STREAM, 6, 12, "res3.stream"},  {SVD_G_UNITS, 8, 16, "dense1"},
    };
    ASSERT_EQ(ng, N_OF(want));
    for (size_t i = 0; i < ng; i++) {
        char name[64];
        svd_group_name(n, &g[i], name, sizeof name);
        ASSERT_EQ(g[i].kind, want[i].kind);
        ASSERT_EQ(g[i].layer, want[i].layer);
        ASSERT_EQ(svd_group_width(n, &g[i]), want[i].width);
        ASSERT_STR_EQ(name, want[i].name);
        ASSERT_NE(g[i].layer, 10); // never the classifier
    }
    ASSERT_EQ(svd_groups(n, g, 2), 2); // max is respected

    // What is not a group is refused by the surgery, with a reason.
    struct net *o = NULL;
    char err[256] = "";
    uint64_t rng = 1;
    struct svd_gref cls = {SVD_G_UNITS, 10}, conv_units = {SVD_G_UNITS, 0};
    struct svd_gref id_stream = {SVD_G_STREAM, 3};
    ASSERT_EQ(svd_shrink(&o, n, &cls, 5, SVD_MODE_ROTATE, NULL, 0, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "not an adaptable group");
    ASSERT_EQ(svd_grow(&o, n, &cls, 1, SVD_GROW_ORTHOGONAL, NULL, NULL, 0, &rng, err, sizeof err),
              -EINVAL);
    ASSERT_EQ(
        svd_grow(&o, n, &conv_units, 1, SVD_GROW_ORTHOGONAL, NULL, NULL, 0, &rng, err, sizeof err),
        -EINVAL);
    ASSERT_EQ(
        svd_grow(&o, n, &id_stream, 1, SVD_GROW_ORTHOGONAL, NULL, NULL, 0, &rng, err, sizeof err),
        -EINVAL);
    ASSERT(o == NULL);
    // Bad target widths.
    struct svd_gref d1 = {SVD_G_UNITS, 8};
    ASSERT_EQ(svd_shrink(&o, n, &d1, 0, SVD_MODE_ROTATE, NULL, 0, err, sizeof err), -EINVAL);
    ASSERT_EQ(svd_shrink(&o, n, &d1, 17, SVD_MODE_ROTATE, NULL, 0, err, sizeof err), -EINVAL);
    ASSERT(o == NULL);
    net_destroy(n);
}

TEST_MAIN()
