/* tests/test_oom.c: out of memory during surgery is an error, never a silent success (D7).
 *
 * This binary is linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc (see
 * tests/CMakeLists.txt), so every allocation made by our static libraries goes through the
 * counters below; shared libraries (OpenBLAS, LAPACKE, cJSON) allocate normally. Each case
 * runs one operation with the k-th allocation failing, for k = 1, 2, ... until the
 * operation no longer reaches its k-th allocation, and checks each time that it returned
 * -ENOMEM, left its output untouched, and left the input net bit-identical (parameters,
 * moments, statistics and a forward pass); a success must not have swallowed a failure. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"
#include "svd_adapt/svd_adapt.h"
#include "tests/test.h"

// ---- the failing allocator --------------------------------------------------------------

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t s);
void *__real_realloc(void *p, size_t n);

static long oom_fail_at = 0; // 0: never fail
static long oom_calls = 0;

static int oom_fail_now(void)
{
    return oom_fail_at > 0 && ++oom_calls == oom_fail_at;
}

void *__wrap_malloc(size_t n)
{
    return oom_fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t s)
{
    return oom_fail_now() ? NULL : __real_calloc(n, s);
}

void *__wrap_realloc(void *p, size_t n)
{
    return oom_fail_now() ? NULL : __real_realloc(p, n);
}

// ---- a small trained CNN ----------------------------------------------------------------

#define IN_C 2
#define IN_HW 6
#define CLASSES 4
#define BATCH 24

static const struct net_layer_spec SPECS[] = {
    {.kind = NET_CONV, .out = 6, .k = 3, .stride = 1, .pad = 1, .bias = 1},
    {.kind = NET_BN},
    {.kind = NET_RELU},
    {.kind = NET_MAXPOOL, .k = 2},
    {.kind = NET_FLATTEN},
    {.kind = NET_DENSE, .out = 12, .bias = 1},
    {.kind = NET_RELU},
    {.kind = NET_DENSE, .out = CLASSES, .bias = 1},
};
#define N_SPECS (sizeof(SPECS) / sizeof(SPECS[0]))

struct fixture {
    struct net *n;
    float x[BATCH * IN_C * IN_HW * IN_HW];
    uint8_t y[BATCH];
    float *params, *m, *v, *state, logits[BATCH * CLASSES];
};

static int fx_make(struct fixture *f)
{
    struct net_shape in = {IN_C, IN_HW, IN_HW, 1};
    char err[256];
    if (net_create(&f->n, &in, CLASSES, SPECS, N_SPECS, err, sizeof err) < 0) return -1;
    uint64_t rng = 99;
    net_init_params(f->n, &rng);
    for (size_t i = 0; i < sizeof f->x / sizeof f->x[0]; i++) f->x[i] = net_rand_normal(&rng);
    for (size_t b = 0; b < BATCH; b++) f->y[b] = (uint8_t)net_rand_below(&rng, CLASSES);
    struct net_optim o = {.kind = NET_ADAMW, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f};
    for (int s = 0; s < 3; s++) {
        net_zero_grad(f->n);
        net_forward(f->n, f->x, f->y, BATCH, 1);
        net_backward(f->n, f->y, BATCH);
        net_optim_step(f->n, &o, 0.01f);
    }
    const size_t P = f->n->n_params * sizeof(float), S = f->n->n_state * sizeof(float);
    f->params = malloc(P);
    f->m = malloc(P);
    f->v = malloc(P);
    f->state = malloc(S + 1);
    memcpy(f->params, f->n->params, P);
    memcpy(f->m, f->n->m, P);
    memcpy(f->v, f->n->v, P);
    memcpy(f->state, f->n->state, S);
    net_forward(f->n, f->x, NULL, BATCH, 0);
    memcpy(f->logits, f->n->acts[f->n->n_layers], sizeof f->logits);
    return 0;
}

static void fx_free(struct fixture *f)
{
    net_destroy(f->n);
    free(f->params);
    free(f->m);
    free(f->v);
    free(f->state);
}

/* 1 when the net is exactly what fx_make left. */
static int fx_untouched(struct fixture *f)
{
    const struct net *n = f->n;
    const size_t P = n->n_params * sizeof(float);
    if (memcmp(f->params, n->params, P) || memcmp(f->m, n->m, P) || memcmp(f->v, n->v, P) ||
        memcmp(f->state, n->state, n->n_state * sizeof(float)))
        return 0;
    net_forward(f->n, f->x, NULL, BATCH, 0);
    return memcmp(f->logits, n->acts[n->n_layers], sizeof f->logits) == 0;
}

enum op { OP_SELECT_DENSE, OP_SELECT_CONV, OP_ROTATE_BN, OP_GROW, OP_GRADMAX, OP_RANK };

static int run_op(enum op op, struct fixture *f, struct net **out, char *err, size_t el)
{
    struct svd_gref gd = {SVD_G_UNITS, 5}, gc = {SVD_G_UNITS, 0};
    uint64_t rng = 5;
    switch (op) {
    case OP_SELECT_DENSE:
        return svd_shrink(out, f->n, &gd, 7, SVD_MODE_SELECT, f->x, BATCH, err, el);
    case OP_SELECT_CONV:
        return svd_shrink(out, f->n, &gc, 4, SVD_MODE_SELECT, f->x, BATCH, err, el);
    case OP_ROTATE_BN: return svd_shrink(out, f->n, &gc, 4, SVD_MODE_ROTATE, f->x, BATCH, err, el);
    case OP_GROW:
        return svd_grow(out, f->n, &gd, 3, SVD_GROW_ORTHOGONAL, f->x, f->y, BATCH, &rng, err, el);
    case OP_GRADMAX:
        return svd_grow(out, f->n, &gd, 3, SVD_GROW_GRADMAX, f->x, f->y, BATCH, &rng, err, el);
    case OP_RANK: return svd_set_rank(out, f->n, 5, 4, NULL, &rng, err, el);
    }
    return -EINVAL;
}

/* Runs op with the k-th allocation failing for k = 1, 2, ...; returns the number of failure
 * points checked, or -1 after printing what went wrong. */
static long oom_sweep(enum op op, const char *name)
{
    struct fixture f;
    if (fx_make(&f) < 0) return -1;
    static struct net sentinel;
    long k;
    for (k = 1; k < 100000; k++) {
        struct net *out = &sentinel;
        char err[256] = "";
        oom_calls = 0;
        oom_fail_at = k;
        int rc = run_op(op, &f, &out, err, sizeof err);
        const long calls = oom_calls;
        oom_fail_at = 0;
        if (rc == 0) {
            int swallowed = calls >= k, valid = out != &sentinel && out != NULL;
            if (valid) net_destroy(out);
            if (swallowed || !valid) {
                printf("    %s: allocation %ld failed, the operation returned success%s\n", name, k,
                       valid ? "" : " without a net");
                fx_free(&f);
                return -1;
            }
            break;
        }
        if (rc != -ENOMEM || out != &sentinel || !fx_untouched(&f)) {
            printf("    %s: allocation %ld failed: rc %d (%s)%s%s\n", name, k, rc, err,
                   out != &sentinel ? ", output written" : "",
                   fx_untouched(&f) ? "" : ", input net changed");
            if (out != &sentinel) net_destroy(out);
            fx_free(&f);
            return -1;
        }
    }
    fx_free(&f);
    printf("  %s: %ld allocation failures, each -ENOMEM with the net untouched\n", name, k - 1);
    return k - 1;
}

/* Every surgery operation, one sweep each; each must reach more than three allocations. */
TEST(surgery_ops_fail_cleanly)
{
    static const struct {
        enum op op;
        const char *name;
    } ops[] = {
        {OP_SELECT_DENSE, "select dense1"},  {OP_SELECT_CONV, "select conv1"},
        {OP_ROTATE_BN, "rotate conv1 + bn"}, {OP_GROW, "grow dense1"},
        {OP_GRADMAX, "gradmax dense1"},      {OP_RANK, "rank dense1 -> 4"},
    };
    net_set_threads(1);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        ASSERT_GT(oom_sweep(ops[i].op, ops[i].name), 3);
}

/* Validation loss of a candidate: its loss on the calibration batch. */
static double val_cb(void *user, struct net *n)
{
    struct fixture *f = user;
    return net_forward(n, f->x, f->y, BATCH, 0);
}

/* A whole adaptation pass with the k-th allocation failing: never a crash (the pass judged
 * a NULL net when a shrink reported success after a failed allocation), and the net it
 * leaves is one that runs. */
TEST(adapt_pass_survives_every_allocation_failure)
{
    net_set_threads(1);
    struct fixture f;
    ASSERT_EQ(fx_make(&f), 0);
    struct svd_policy p = {.enabled = 1,
                           .mode = SVD_MODE_SELECT,
                           .rule = SVD_RULE_ENERGY,
                           .energy_eps = 0.2,
                           .expand_threshold = 0.99,
                           .growth = 0.25,
                           .grow_patience = 1,
                           .min_width = 2,
                           .max_width = 64,
                           .max_loss_jump = 1e9,
                           .enable_shrink = 1,
                           .enable_grow = 1};
    long k;
    int done = 0;
    for (k = 1; k < 100000 && !done; k++) {
        struct net *n = NULL;
        char err[256];
        struct net_shape in = {IN_C, IN_HW, IN_HW, 1};
        ASSERT_EQ(net_create(&n, &in, CLASSES, SPECS, N_SPECS, err, sizeof err), 0);
        memcpy(n->params, f.n->params, n->n_params * sizeof(float));
        memcpy(n->state, f.n->state, n->n_state * sizeof(float));
        struct svd_state *st = svd_state_create();
        ASSERT(st);
        uint64_t rng = 7;
        struct svd_ctx ctx = {f.x, f.y, BATCH, val_cb, &f, &rng, 0};
        struct svd_event event;
        oom_calls = 0;
        oom_fail_at = k;
        int rc = svd_adapt(st, &p, &n, 100, &ctx, &event);
        const long calls = oom_calls;
        oom_fail_at = 0;
        ASSERT(rc >= 0 || rc == -ENOMEM);
        ASSERT(n != NULL);
        net_forward(n, f.x, NULL, BATCH, 0);
        const float *z = n->acts[n->n_layers];
        for (size_t i = 0; i < BATCH * CLASSES; i++) ASSERT(isfinite(z[i]));
        done = calls < k;
        svd_event_free(&event);
        svd_state_destroy(st);
        net_destroy(n);
    }
    fx_free(&f);
    ASSERT(done);
    printf("  adaptation pass: %ld allocation failures survived\n", k - 2);
}

TEST_MAIN()
