/* svd_adapt/policy.c: when and how much to adapt, with hysteresis, a parameter target and
 * rollback.
 *
 * One pass (svd_adapt) looks at every adaptable group (select / rotate) or every dense and
 * conv layer's rank (factorize). It runs one forward pass on the calibration batch (again only
 * after a kept surgery), takes each group's spectrum (of the weight, or of the centred
 * activations its consumers read, through their Gram matrix) and applies the rank rule:
 *   kept    = directions the rank rule keeps (e.g. s_i >= shrink_threshold * s_1);
 *   strict  = directions the rule keeps at twice its cut (2 x shrink_threshold, 2 x energy_eps,
 *             gap_threshold / 2): the band between the two cuts is the hysteresis that stops a
 *             freshly shrunk layer from counting as saturated.
 * Without a target, per group:
 *   shrink to `kept` when kept < width (never below min_width) and it is not saturated;
 *   grow by ceil(growth * width) when the layer is saturated, strict / width >= expand_threshold
 *   (or kept / width, while it is protected after a growth), on grow_patience consecutive checks
 *   (up to max_width and param_budget); a growth for saturation counts as all but the last of
 *   the next growth's checks.
 * With target_params T, the net moves into [0.95 T, T] from either side, by value per
 * parameter across all groups (the rank rule's thresholds no longer decide):
 *   above T: the tail directions of all groups compete; direction i of a group is worth
 *            s_i^2 / mean(s^2) (its share of the layer's energy against an average direction)
 *            divided by what one unit costs (its row, BN entries and every consumer column);
 *            the cheapest value goes first until the net is at most T, skipping cuts that would
 *            land under 0.95 T, target_step of the parameters per pass, or the larger
 *            geometric step that reaches T by target_by of the run (svd_ctx.total_steps);
 *   under 0.95 T: groups grow, the most saturated per parameter first (s_min^2 / mean(s^2)
 *            over the unit cost), each by the larger of ceil(growth * width) and the width
 *            factor that reaches T (sqrt(T / P): parameters grow with the square of the
 *            widths), never past T: growth keeps the function, so it does not wait.
 * A group that changed is not examined again for cooldown_steps (the seed's grow / prune
 * oscillation); a target pass only shrinks above T and only grows below 0.95 T, so it never
 * undoes its own steps. Each surgery is judged on the validation loss: a rise over
 * max_loss_jump rolls it back (in a target pass the group's next cut is then halved, and
 * tried at the next pass: the group did not change, so it is not in a cool-down).
 * Every pass returns an event with one entry per group, changed or not, and why.
 * State per group (keyed by name, stable across surgeries) is kept for checkpoints. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/codec.h"
#include "svd_adapt/svd_internal.h"

#define SVD_MAX_GROUPS 128
#define SVD_SPEC_CAP 4096
#define SVD_TARGET_ROUNDS 5 // plans per target pass above T (each replans from the new widths)

struct svd_gstate {
    char name[NET_NAME_MAX + 8];
    uint64_t patience;       // consecutive saturated checks
    uint64_t cooldown_until; // step before which the group is left alone
    uint64_t backoff;        // target passes: rolled-back cuts (each halves the later ones)
    uint64_t protect_until;  // step before which a grown group is not shrunk
    uint64_t grown;          // 1 while the group's last kept change was a growth
    uint64_t grown_from;     // width before the last saturation growth, until it is judged
    uint64_t no_gain;        // 1: a growth did not pay (grow_gain), no more saturation growth
    uint64_t shrunk;         // 1: the rank rule has cut this group (the net is settled)
    uint64_t wish;           // consecutive looks at which the rank rule would cut it
};

struct svd_state {
    size_t n;
    struct svd_gstate g[SVD_MAX_GROUPS];
};

struct svd_state *svd_state_create(void)
{
    return calloc(1, sizeof(struct svd_state));
}

void svd_state_destroy(struct svd_state *s)
{
    free(s);
}

static struct svd_gstate *svd__gs(struct svd_state *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->g[i].name, name)) return &s->g[i];
    if (s->n == SVD_MAX_GROUPS) return &s->g[SVD_MAX_GROUPS - 1];
    struct svd_gstate *g = &s->g[s->n++];
    memset(g, 0, sizeof(*g));
    snprintf(g->name, sizeof(g->name), "%s", name);
    return g;
}

/* The adaptation state as bytes (net/codec.h), version 7: "SVST" | u32 version | u64 count |
 * per group: u64 name length | name | u64 patience | u64 cooldown_until | u64 backoff |
 * u64 protect_until | u64 grown | u64 grown_from | u64 no_gain | u64 shrunk | u64 wish.
 * Version 6 (read only) had no wish, version 5 none of the last four but grown, version 4
 * no grown, version 3 no
 * protect_until, version 2 no backoff either (read as 0). Version 1 (read
 * only) was the raw array: u64 count | per group char name[40] | u64 patience | u64
 * cooldown_until; its count is at most SVD_MAX_GROUPS, so its bytes 1..3 are zero and it
 * cannot start with "SVST". */
#define SVD_STATE_VERSION                                                                          \
    7u // 7: + wish; 6: + grown_from, no_gain, shrunk; 5: + grown; 4: + protect_until; ...
#define SVD_STATE_V1_ROW (NET_NAME_MAX + 8 + 16)

int svd_state_save(const struct svd_state *s, void **out, size_t *len)
{
    struct net_wr w = {0};
    net_wr_bytes(&w, "SVST", 4);
    net_wr_u32(&w, SVD_STATE_VERSION);
    net_wr_u64(&w, s->n);
    for (size_t i = 0; i < s->n; i++) {
        net_wr_str(&w, s->g[i].name);
        net_wr_u64(&w, s->g[i].patience);
        net_wr_u64(&w, s->g[i].cooldown_until);
        net_wr_u64(&w, s->g[i].backoff);
        net_wr_u64(&w, s->g[i].protect_until);
        net_wr_u64(&w, s->g[i].grown);
        net_wr_u64(&w, s->g[i].grown_from);
        net_wr_u64(&w, s->g[i].no_gain);
        net_wr_u64(&w, s->g[i].shrunk);
        net_wr_u64(&w, s->g[i].wish);
    }
    if (w.oom) {
        net_wr_free(&w);
        return -ENOMEM;
    }
    *out = w.p;
    *len = w.len;
    return 0;
}

int svd_state_load(struct svd_state *s, const void *data, size_t len)
{
    struct svd_state tmp;
    memset(&tmp, 0, sizeof(tmp));
    struct net_rd r = net_rd_make(data, len);
    const int v1 = len < 4 || memcmp(data, "SVST", 4) != 0;
    uint32_t version = 1;
    if (!v1) {
        r.pos = 4;
        version = net_rd_u32(&r);
        if (version < 2 || version > SVD_STATE_VERSION) return -EINVAL;
    }
    // A row is at least its name's length and its u64 fields: versions 2..5 have as many
    // fields as the version's number, versions 6 and 7 two more. Arithmetic, not a chain of
    // ternaries: GCC 12.2 at -O2 -march=native miscompiled one here (a cmov on stale flags).
    const size_t fields = version + 2 * (version >= 6);
    const uint64_t cnt = net_rd_count(&r, SVD_MAX_GROUPS, v1 ? SVD_STATE_V1_ROW : 8 * (1 + fields));
    if (r.bad) return -EINVAL;
    for (size_t i = 0; i < cnt; i++) {
        struct svd_gstate *g = &tmp.g[i];
        if (v1) {
            net_rd_bytes(&r, g->name, sizeof(g->name));
            if (!memchr(g->name, 0, sizeof(g->name))) return -EINVAL;
        } else {
            char *name = net_rd_str(&r, sizeof(g->name) - 1, NULL);
            if (!name) return -EINVAL;
            memcpy(g->name, name, strlen(name) + 1);
            free(name);
        }
        g->patience = net_rd_u64(&r);
        g->cooldown_until = net_rd_u64(&r);
        if (version >= 3) g->backoff = net_rd_u64(&r); // version 3: target-pass backoff
        if (version >= 4) g->protect_until = net_rd_u64(&r);
        if (version >= 5) g->grown = net_rd_u64(&r);
        if (version >= 6) {
            g->grown_from = net_rd_u64(&r);
            g->no_gain = net_rd_u64(&r);
            g->shrunk = net_rd_u64(&r);
        }
        if (version >= 7) g->wish = net_rd_u64(&r);
        if (g->grown > 1 || g->no_gain > 1 || g->shrunk > 1) return -EINVAL;
        if (r.bad || !g->name[0]) return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(tmp.g[j].name, g->name)) return -EINVAL;
    }
    if (!net_rd_done(&r)) return -EINVAL;
    tmp.n = (size_t)cnt;
    *s = tmp;
    return 0;
}

// ---- events ------------------------------------------------------------------------------

void svd_event_free(struct svd_event *e)
{
    if (!e) return;
    free(e->changes);
    free(e->widths);
    memset(e, 0, sizeof(*e));
}

size_t svd_event_kept(const struct svd_event *e)
{
    size_t k = 0;
    for (size_t i = 0; i < e->n_changes; i++) {
        const struct svd_change *c = &e->changes[i];
        if (c->action != SVD_ACT_KEEP && c->action != SVD_ACT_SKIP && !c->rolled_back &&
            !c->error[0])
            k++;
    }
    return k;
}

const char *svd_action_name(enum svd_action a)
{
    static const char *const names[] = {"keep",        "shrink",    "grow",
                                        "shrink_rank", "grow_rank", "skip"};
    return (unsigned)a < sizeof(names) / sizeof(names[0]) ? names[a] : "?";
}

const char *svd_reason_name(enum svd_reason r)
{
    static const char *const names[] = {"rank_rule", "saturated",  "target",    "fits",
                                        "patience",  "cooldown",   "min_width", "max_width",
                                        "budget",    "target_met", "disabled",  "error",
                                        "protected", "no_gain",    "settled"};
    return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "?";
}

/* The next change entry. The array is sized once per pass (svd_adapt), so the pointers the
 * pass keeps to its entries stay valid. */
static struct svd_change *svd__change(struct svd_event *e, const char *group, size_t from)
{
    if (!e || !e->changes || e->n_changes >= e->cap_changes) return NULL;
    struct svd_change *c = &e->changes[e->n_changes++];
    memset(c, 0, sizeof(*c));
    snprintf(c->group, sizeof(c->group), "%s", group);
    c->from = c->to = from;
    c->val_before = c->val_after = NAN;
    c->gain = NAN;
    return c;
}

static void svd__spec_summary(struct svd_change *c, const float *s, long r, size_t kept)
{
    if (!c || r <= 0) return;
    c->s_max = s[0];
    c->s_min = s[r - 1];
    c->kept = kept;
    c->n_top = (size_t)r < SVD_EV_TOP ? (size_t)r : SVD_EV_TOP;
    memcpy(c->top, s, c->n_top * sizeof(float));
}

/* Widths of every adaptable group (or dense / conv layer in factorize mode). */
static void svd__widths(struct svd_event *e, const struct net *n, int after)
{
    if (!e) return;
    struct svd_gref g[SVD_MAX_GROUPS];
    size_t ng = svd_groups(n, g, SVD_MAX_GROUPS);
    if (!after) {
        free(e->widths);
        e->widths = calloc(ng + 1, sizeof(*e->widths));
        e->n_widths = e->widths ? ng : 0;
    }
    for (size_t i = 0; i < ng; i++) {
        char name[SVD_EV_NAME];
        svd_group_name(n, &g[i], name, sizeof(name));
        size_t w = svd_group_width(n, &g[i]);
        for (size_t j = 0; j < e->n_widths; j++) {
            if (after && !strcmp(e->widths[j].name, name)) e->widths[j].after = w;
            if (!after && j == i) {
                snprintf(e->widths[j].name, sizeof(e->widths[j].name), "%s", name);
                e->widths[j].before = e->widths[j].after = w;
            }
        }
    }
}

// ---- one pass ----------------------------------------------------------------------------

/* Mean input of a dense / conv layer over the calibration batch, as fan-in values (a conv's
 * channel mean repeated over its K*K taps). n has run a forward pass on B samples. */
static float *svd__mean_input(const struct net *n, size_t layer, size_t B)
{
    const struct net_layer *l = &n->layers[layer];
    const size_t C = l->in.c, HW = l->in.h * l->in.w;
    const size_t KK = l->spec.kind == NET_CONV ? l->spec.k * l->spec.k : 1;
    float *mu = malloc(C * KK * sizeof(float) + 1);
    if (!mu) return NULL;
    const float *a = n->acts[layer];
    for (size_t c = 0; c < C; c++) {
        double s = 0.0;
        if (l->in.spatial)
            for (size_t i = 0; i < B * HW; i++) s += a[c * B * HW + i];
        else
            for (size_t b = 0; b < B; b++) s += a[b * C + c];
        float m = (float)(s / (double)(B * (l->in.spatial ? HW : 1)));
        for (size_t k = 0; k < KK; k++) mu[c * KK + k] = m;
    }
    return mu;
}

struct svd__pass {
    const struct svd_policy *p;
    const struct svd_ctx *ctx;
    struct net **n;
    double val; // validation loss of *n (NAN until needed)
    int kept;
    int oom; // an allocation failed somewhere in the pass
    struct svd_event *ev;
    int shrunk; // the rank rule has cut some group of this net (svd_gstate.shrunk)
    int over;   // ... or has asked to cut one (protected) on grow_patience looks in a row
};

/* Makes candidate c, of validation loss v, the pass's net. */
static void svd__adopt(struct svd__pass *ps, struct net *c, double v)
{
    net_destroy(*ps->n);
    *ps->n = c;
    ps->val = v;
    ps->kept++;
}

/* Judges candidate c against *n; adopts or discards it. Returns 1 if adopted. */
static int svd__judge(struct svd__pass *ps, struct net *c, struct svd_change *ch)
{
    if (isnan(ps->val)) ps->val = ps->ctx->val_loss(ps->ctx->user, *ps->n);
    double v = ps->ctx->val_loss(ps->ctx->user, c);
    int back = !(v - ps->val <= ps->p->max_loss_jump);
    if (ch) {
        ch->judged = 1;
        ch->val_before = ps->val;
        ch->val_after = v;
        ch->rolled_back = back;
    }
    if (back) {
        net_destroy(c);
        return 0;
    }
    svd__adopt(ps, c, v);
    return 1;
}

/* The factorize mode's decision for one layer's rank. */
static void svd__rank_step(struct svd__pass *ps, struct svd_state *st, size_t layer, size_t step,
                           float *s)
{
    const struct svd_policy *p = ps->p;
    struct net *n = *ps->n;
    const struct net_layer *l = &n->layers[layer];
    struct svd_gstate *gs = svd__gs(st, l->spec.name);
    const size_t R0 = l->spec.rank ? l->spec.rank : l->spec.out;
    struct svd_change *ch = svd__change(ps->ev, l->spec.name, R0);
    if (step < gs->cooldown_until) {
        if (ch) ch->action = SVD_ACT_SKIP, ch->reason = SVD_WHY_COOLDOWN;
        return;
    }
    long r = svd_layer_spectrum(n, layer, s, SVD_SPEC_CAP);
    if (r <= 0) {
        if (ch) {
            ch->action = SVD_ACT_SKIP;
            ch->reason = SVD_WHY_ERROR;
            snprintf(ch->error, sizeof(ch->error), "spectrum failed");
        }
        return;
    }
    const size_t m = l->spec.out;
    const struct net_tensor *tv = net_tensor_get(n, layer, l->spec.rank ? "v" : "w");
    const size_t fan = l->spec.rank ? tv->n / l->spec.rank : tv->n / m;
    const double breakeven = (double)m * (double)fan / (double)(m + fan);
    const size_t R = l->spec.rank ? l->spec.rank : (size_t)r;
    size_t k = svd_rank_rule(p, s, (size_t)r), target = R;
    if (k < p->min_width) k = p->min_width < (size_t)r ? p->min_width : (size_t)r;
    svd__spec_summary(ch, s, r, k);
    if (ch) ch->reason = SVD_WHY_FITS;
    enum svd_action action = SVD_ACT_KEEP;
    if (p->enable_shrink && k < R) {
        target = k;
        action = SVD_ACT_SHRINK_RANK;
    } else if (p->enable_grow && l->spec.rank && s[R - 1] / s[0] >= p->expand_threshold) {
        if (++gs->patience >= p->grow_patience) {
            target = R + (size_t)ceil(p->growth * (double)R);
            if (target > (size_t)r) target = (size_t)r;
            action = SVD_ACT_GROW_RANK;
        } else if (ch) {
            ch->reason = SVD_WHY_PATIENCE;
        }
    } else {
        gs->patience = 0;
    }
    if (action == SVD_ACT_KEEP || target == R) return;
    // Factorized only while it saves parameters; otherwise back to (or stay) plain.
    size_t new_rank = (double)target < breakeven ? target : 0;
    if (new_rank == l->spec.rank) return;
    if (action == SVD_ACT_GROW_RANK) {
        gs->cooldown_until = step + p->cooldown_steps;
        gs->patience = 0;
    }
    if (ch) {
        ch->action = action;
        ch->reason = action == SVD_ACT_GROW_RANK ? SVD_WHY_SATURATED : SVD_WHY_RANK_RULE;
        ch->from = R;
        ch->to = target;
        ch->factorized = new_rank != 0;
    }
    char err[256];
    struct net *c = NULL;
    net_forward(n, ps->ctx->x, NULL, ps->ctx->B, 0);
    float *mu = l->spec.rank ? NULL : svd__mean_input(n, layer, ps->ctx->B);
    int rc = !l->spec.rank && !mu
                 ? -ENOMEM
                 : svd_set_rank(&c, n, layer, new_rank, mu, ps->ctx->rng, err, sizeof(err));
    free(mu);
    if (rc == -ENOMEM) snprintf(err, sizeof(err), "out of memory");
    ps->oom |= rc == -ENOMEM;
    if (rc < 0) {
        if (ch) ch->reason = SVD_WHY_ERROR, snprintf(ch->error, sizeof(ch->error), "%s", err);
    } else {
        svd__judge(ps, c, ch);
    }
}

/* What the pass knows of one group before it decides. */
struct svd__gi {
    struct svd_gref ref;
    char name[SVD_EV_NAME];
    size_t m; // width
    long r;   // spectrum length (<= 0: none)
    float *s; // r values, descending
    size_t kept, strict;
    double cost;   // parameters one unit of this group costs
    double mean_e; // mean of s_i^2
    double *sal;   // target_value fisher: the m units' saliencies, ascending (else NULL)
    int cooling;
    struct svd_gstate *gs;
    struct svd_change *ch;
};

/* Parameters one channel of the group costs: its producing rows (params only) and the
 * columns every consumer spends on it. */
static double svd__unit_cost(const struct net *n, const struct svd_gref *ref)
{
    struct svd__group g;
    if (svd__group_build(n, ref, &g) < 0) return 0.0;
    double c = 0.0;
    for (size_t i = 0; i < g.n_rows; i++) {
        const struct net_tensor *t = &n->tensors[g.rows[i].t];
        if (t->arena == NET_ARENA_PARAM) c += (double)t->n / (double)g.m;
    }
    for (size_t i = 0; i < g.n_cols; i++) {
        const struct net_tensor *t = &n->tensors[g.cols[i].t];
        if (t->arena == NET_ARENA_PARAM) c += (double)t->n / (double)g.m;
    }
    return c;
}

/* The rank rule at twice its cut: the directions that clearly carry energy. */
static size_t svd__strict(const struct svd_policy *p, const float *s, size_t r)
{
    struct svd_policy q = *p;
    q.shrink_threshold = p->shrink_threshold * 2.0 < 1.0 ? p->shrink_threshold * 2.0 : 1.0;
    q.energy_eps = p->energy_eps * 2.0 < 0.5 ? p->energy_eps * 2.0 : 0.5;
    q.gap_threshold = p->gap_threshold / 2.0 > 1.0 ? p->gap_threshold / 2.0 : 1.0;
    return svd_rank_rule(&q, s, r);
}

/* Spectra of the groups gi[i] with want[i] set, under the policy's source: activation spectra
 * of all of them from one set of chunked forward passes on the calibration batch. */
static void svd__measure(struct svd__pass *ps, struct svd__gi *gi, size_t ng, const int *want,
                         float *s)
{
    struct net *n = *ps->n;
    struct svd_gref *refs = calloc(ng + 1, sizeof(*refs));
    long *r = malloc((ng + 1) * sizeof(long));
    size_t *idx = malloc((ng + 1) * sizeof(size_t)), k = 0;
    if (!refs || !r || !idx) {
        ps->oom = 1;
        for (size_t i = 0; i < ng; i++)
            if (want[i]) gi[i].r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < ng; i++)
        if (want[i]) refs[k] = gi[i].ref, idx[k++] = i;
    if (ps->p->source == SVD_SRC_ACTIVATIONS) {
        if (svd__spectra_acts(n, refs, k, ps->ctx->x, ps->ctx->B, s, SVD_SPEC_CAP, r) < 0)
            for (size_t j = 0; j < k; j++) r[j] = -ENOMEM;
        for (size_t j = 0; j < k; j++) ps->oom |= r[j] == -ENOMEM;
    } else {
        for (size_t j = 0; j < k; j++)
            r[j] = svd_spectrum_weights(n, &refs[j], s + j * SVD_SPEC_CAP, SVD_SPEC_CAP);
    }
    for (size_t j = 0; j < k; j++) {
        struct svd__gi *x = &gi[idx[j]];
        float *sj = x->s;
        memcpy(sj, s + j * SVD_SPEC_CAP, (r[j] > 0 ? (size_t)r[j] : 0) * sizeof(float));
        x->r = r[j];
        x->kept = x->strict = 0;
        if (x->r < 0) {
            if (x->ch) {
                x->ch->action = SVD_ACT_SKIP;
                x->ch->reason = SVD_WHY_ERROR;
                snprintf(x->ch->error, sizeof(x->ch->error), "%s",
                         x->r == SVD_ENOCONV ? "SVD did not converge" : "spectrum failed");
            }
            continue;
        }
        if (x->r == 0 || !(sj[0] > 0.0f)) {
            x->r = 0; // a dead layer: nothing to measure
            continue;
        }
        x->kept = svd_rank_rule(ps->p, sj, (size_t)x->r);
        x->strict = svd__strict(ps->p, sj, (size_t)x->r);
        double e = 0.0;
        for (long i = 0; i < x->r; i++) e += (double)sj[i] * sj[i];
        x->mean_e = e / (double)x->r;
        svd__spec_summary(x->ch, sj, x->r, x->kept);
    }
out:
    free(refs);
    free(r);
    free(idx);
}

/* Builds and judges one width change of group gi to `target`. Returns 1 if kept. */
static int svd__surgery(struct svd__pass *ps, struct svd__gi *gi, size_t target,
                        enum svd_reason why, size_t step)
{
    const struct svd_policy *p = ps->p;
    struct net *n = *ps->n;
    struct svd_change *ch = gi->ch;
    char err[256] = "";
    struct net *c = NULL;
    int rc;
    if (ch) {
        ch->action = target < gi->m ? SVD_ACT_SHRINK : SVD_ACT_GROW;
        ch->reason = why;
        ch->to = target;
    }
    if (target < gi->m) {
        rc = svd_shrink(&c, n, &gi->ref, target, p->mode, ps->ctx->x, ps->ctx->B, err, sizeof(err));
    } else {
        const enum svd_grow gm = why == SVD_WHY_TARGET ? p->target_grow_mode : p->grow_mode;
        rc = svd_grow(&c, n, &gi->ref, target - gi->m, gm, ps->ctx->x, ps->ctx->y, ps->ctx->B,
                      ps->ctx->rng, err, sizeof(err));
        if (rc == 0 && p->param_budget && c->n_params > p->param_budget) {
            snprintf(err, sizeof(err), "param_budget %zu reached (%zu)", p->param_budget,
                     c->n_params);
            net_destroy(c);
            rc = -ENOSPC;
        }
    }
    // Training has moved this group: leave it alone for the cool-down either way.
    gi->gs->patience = 0;
    gi->gs->cooldown_until = step + p->cooldown_steps;
    if (rc < 0) {
        ps->oom |= rc == -ENOMEM;
        if (ch) {
            ch->reason = SVD_WHY_ERROR;
            snprintf(ch->error, sizeof(ch->error), "%s", rc == -ENOMEM ? "out of memory" : err);
        }
        return 0;
    }
    const int grew = target > gi->m, kept = svd__judge(ps, c, ch);
    if (kept) gi->gs->grown = (uint64_t)grew, gi->gs->wish = 0;
    if (kept && why == SVD_WHY_RANK_RULE) gi->gs->shrunk = 1, ps->shrunk = 1;
    if (kept && grew) {
        gi->gs->protect_until = step + p->protect_steps;
        // It grew because it was saturated: if it still is at its first look after the
        // cool-down, that is the evidence patience asks for, so it grows again at once.
        if (why == SVD_WHY_SATURATED && p->grow_patience > 1)
            gi->gs->patience = p->grow_patience - 1;
        // Its units are judged when the protection ends (grow_gain); a target's are not.
        gi->gs->grown_from = why == SVD_WHY_SATURATED ? gi->m : 0;
    }
    return kept;
}

/* grow_gain: the trial that judges a saturation growth. The group is cut back to `from`, its
 * width before the growth (or to `k`, what the rank rule keeps, if less), by the shrink mode
 * (which refits the consumers), and the validation loss decides: a rise under grow_gain of
 * the loss (relative) says the net did not need what it grew, and the cut is kept. Returns
 * 1 when the cut was kept; the relative rise goes into ch->gain (NAN if the trial failed). */
static int svd__growth_trial(struct svd__pass *ps, struct svd__gi *gi, size_t from, size_t k)
{
    const struct svd_policy *p = ps->p;
    struct svd_change *ch = gi->ch;
    const size_t to = k < from ? k : from;
    if (to >= gi->m) return 0;
    char err[256] = "";
    struct net *c = NULL;
    int rc =
        svd_shrink(&c, *ps->n, &gi->ref, to, p->mode, ps->ctx->x, ps->ctx->B, err, sizeof(err));
    if (rc < 0) {
        ps->oom |= rc == -ENOMEM;
        return 0;
    }
    if (isnan(ps->val)) ps->val = ps->ctx->val_loss(ps->ctx->user, *ps->n);
    const double v = ps->ctx->val_loss(ps->ctx->user, c);
    const double rise = (v - ps->val) / (ps->val > 0 ? ps->val : 1.0);
    if (ch) ch->gain = rise;
    if (!(rise < p->grow_gain)) {
        net_destroy(c);
        return 0;
    }
    if (ch) {
        ch->action = SVD_ACT_SHRINK;
        ch->reason = SVD_WHY_NO_GAIN;
        ch->to = to;
        ch->judged = 1;
        ch->val_before = ps->val;
        ch->val_after = v;
    }
    svd__adopt(ps, c, v);
    gi->gs->grown = 0;
    gi->gs->patience = 0;
    gi->gs->cooldown_until = gi->gs->protect_until = 0;
    return 1;
}

/* Saturated: the rule keeps (nearly) every direction at twice its cut, or, for a group that
 * grew and is still protected, at the cut itself. The strict count is the hysteresis that
 * stops a freshly shrunk layer from growing back; a freshly grown layer has no such history,
 * and asking twice the cut of it would stop a layer whose spectrum is capped by its input (a
 * 1-channel 3x3 conv: 9 linear directions) from growing again. Once its protection has run
 * out the strict count decides again. */
static int svd__saturated(const struct svd_policy *p, const struct svd__gi *gi, size_t step)
{
    const double need = p->expand_threshold * (double)gi->m;
    return (size_t)gi->r == gi->m &&
           ((double)gi->strict >= need ||
            (gi->gs->grown && step < gi->gs->protect_until && (double)gi->kept >= need));
}

/* The rank rule would cut this measured group (whether or not it may yet). */
static int svd__wants_cut(const struct svd_policy *p, const struct svd__gi *gi, size_t step)
{
    const size_t k = gi->kept < p->min_width ? p->min_width : gi->kept;
    return gi->r > 0 && k < gi->m && !svd__saturated(p, gi, step);
}

/* Counts, for every measured group, the consecutive looks at which the rank rule would cut
 * it (svd_gstate.wish; a kept surgery resets it); a count at grow_patience settles the pass's
 * net as a kept cut does. Grow-only runs never settle. */
static void svd__count_wishes(struct svd__pass *ps, struct svd__gi *gi, size_t ng, const int *want,
                              size_t step)
{
    const struct svd_policy *p = ps->p;
    if (!p->enable_shrink) return;
    for (size_t j = 0; j < ng; j++) {
        if (!want[j]) continue;
        struct svd_gstate *gs = gi[j].gs;
        gs->wish = svd__wants_cut(p, &gi[j], step) ? gs->wish + 1 : 0;
        if (gs->wish >= p->grow_patience) ps->over = 1;
    }
}

/* Per-group thresholds (no target). */
static void svd__width_step(struct svd__pass *ps, struct svd__gi *gi, size_t step)
{
    const struct svd_policy *p = ps->p;
    struct svd_gstate *gs = gi->gs;
    struct svd_change *ch = gi->ch;
    if (gi->r <= 0) return;
    gi->cost = svd__unit_cost(*ps->n, &gi->ref);
    size_t k = gi->kept < p->min_width ? p->min_width : gi->kept;
    const int saturated = svd__saturated(p, gi, step);
    /* A saturation growth is judged once, at the first look after its protection or before
     * the group grows again, whichever comes first, by cutting it back (svd__growth_trial):
     * if the validation loss hardly notices, the net did not need it, and the group grows no
     * more for saturation. A spectral rule sees no end to a layer whose activations fill any
     * width (conv3 of configs/narrow.json); the loss does. */
    if (p->grow_gain > 0 && gs->grown && gs->grown_from &&
        (step >= gs->protect_until || saturated)) {
        const size_t from = (size_t)gs->grown_from;
        gs->grown_from = 0;
        if (p->enable_shrink && svd__growth_trial(ps, gi, from, k)) {
            gs->no_gain = 1;
            gs->cooldown_until = step + p->cooldown_steps;
            return;
        }
    }
    if (ch) ch->reason = SVD_WHY_FITS;
    if (k < gi->m && !saturated) {
        if (!p->enable_shrink) {
            if (ch) ch->reason = SVD_WHY_DISABLED;
            return;
        }
        if (step < gs->protect_until) {
            if (ch) ch->reason = SVD_WHY_PROTECTED;
            gs->patience = 0;
            return;
        }
        svd__surgery(ps, gi, k, SVD_WHY_RANK_RULE, step);
        return;
    }
    if (gi->kept < gi->m && !saturated && ch) ch->reason = SVD_WHY_MIN_WIDTH;
    if (!saturated) {
        gs->patience = 0;
        return;
    }
    if (!p->enable_grow) {
        if (ch) ch->reason = SVD_WHY_DISABLED;
        return;
    }
    if (p->grow_gain > 0 && gs->no_gain) {
        if (ch) ch->reason = SVD_WHY_NO_GAIN;
        return;
    }
    /* A net the rank rule has cut anywhere was found over-sized: growing another of its layers
     * would be the grow / prune oscillation in other clothes. Without this, the main job's
     * conv3 (64 channels, all of them clear of twice the cut) doubles twice after the first
     * pass has cut the net from 862k to 275k parameters, and the run ends at a million. The
     * same holds while the rule would cut a group it may not cut yet (a grown group still
     * protected): from 8-8-8-16, configs/narrow.json's conv1 grew past its need at step
     * 2,500, and conv2 and conv3 then doubled twice more before that cut could be made. */
    if ((ps->shrunk || ps->over) && !p->grow_after_shrink) {
        if (ch) ch->reason = SVD_WHY_SETTLED;
        return;
    }
    if (gi->m >= p->max_width) {
        if (ch) ch->reason = SVD_WHY_MAX_WIDTH;
        return;
    }
    if (++gs->patience < p->grow_patience) {
        if (ch) ch->reason = SVD_WHY_PATIENCE;
        return;
    }
    size_t target = gi->m + (size_t)ceil(p->growth * (double)gi->m);
    if (target > p->max_width) target = p->max_width;
    if (p->param_budget && (double)(*ps->n)->n_params + (double)(target - gi->m) * gi->cost >
                               (double)p->param_budget) {
        // Grow what still fits under the budget, or nothing.
        double room = ((double)p->param_budget - (double)(*ps->n)->n_params) / gi->cost;
        size_t fit = room > 0 ? (size_t)room : 0;
        if (fit == 0) {
            if (ch) ch->reason = SVD_WHY_BUDGET;
            return;
        }
        target = gi->m + fit;
    }
    svd__surgery(ps, gi, target, SVD_WHY_SATURATED, step);
}

struct svd__cand {
    double value; // energy share per parameter
    size_t g;     // group index
};

static int svd__cand_cmp(const void *a, const void *b)
{
    double x = ((const struct svd__cand *)a)->value, y = ((const struct svd__cand *)b)->value;
    return x < y ? -1 : x > y;
}

/* One round of the plan for a target above: how many tail directions each group gives up
 * (cut[i]) to bring P down to `goal`, lowest energy share per parameter first. */
static int svd__plan_cuts(const struct svd_policy *p, const struct svd__gi *gi, size_t ng,
                          const int *done, double P, double goal, size_t *cut)
{
    const double lo = 0.95 * (double)p->target_params;
    size_t nc = 0;
    for (size_t i = 0; i < ng; i++)
        if (!done[i] && gi[i].m > p->min_width) nc += gi[i].m;
    struct svd__cand *c = malloc((nc + 1) * sizeof(*c));
    if (!c) return -ENOMEM;
    nc = 0;
    for (size_t i = 0; i < ng; i++) {
        if (done[i] || gi[i].m <= p->min_width) continue;
        /* Each group may lose at most half its width per pass, or the share of it the
         * pass's goal asks of every width (1 - sqrt(goal / P): parameters go with the square
         * of the widths) when that is more; less after rolled-back cuts. Directions beyond
         * the spectrum (a layer wider than its fan-in) carry nothing. */
        const double keep = goal > 0 && goal < P ? sqrt(goal / P) : 1.0;
        size_t maxcut = gi[i].m - p->min_width, half = gi[i].m / 2;
        const size_t need = (size_t)ceil((1.0 - keep) * (double)gi[i].m - 1e-9);
        if (need > half) half = need;
        for (uint64_t b = 0; b < gi[i].gs->backoff && half > 1; b++) half /= 2;
        if (half < 1) half = 1;
        if (maxcut > half) maxcut = half;
        for (size_t j = 0; j < maxcut; j++) {
            size_t d = gi[i].m - 1 - j; // the (j+1)-th weakest direction
            double e = d < (size_t)gi[i].r ? (double)gi[i].s[d] * gi[i].s[d] : 0.0;
            c[nc].value = gi[i].sal ? gi[i].sal[j] / gi[i].cost
                                    : e / (gi[i].mean_e > 0 ? gi[i].mean_e : 1.0) / gi[i].cost;
            c[nc].g = i;
            nc++;
        }
    }
    /* Within a group the values grow from its tail, so one global sort by value takes every
     * group's directions tail first. */
    qsort(c, nc, sizeof(*c), svd__cand_cmp);
    for (size_t q = 0; q < nc && P > goal; q++) {
        const double cost = gi[c[q].g].cost;
        if (P - cost < lo) {
            // This cut would land under 0.95 T: take a cheaper one if there is any.
            int cheaper = 0;
            for (size_t q2 = q + 1; q2 < nc && !cheaper; q2++) cheaper = P - gi[c[q2].g].cost >= lo;
            if (cheaper) continue;
        }
        cut[c[q].g]++;
        P -= cost;
    }
    free(c);
    return 0;
}

/* The fraction of the parameters a target pass moves: target_step, or more when the passes
 * left before the deadline (target_by x the run) need bigger steps to reach T. A group is
 * examined again after max(interval, cool-down) steps, so that is one pass's period; the
 * steps are geometric, so each pass moves the same fraction. */
static double svd__target_frac(const struct svd_policy *p, const struct svd_ctx *ctx, size_t step,
                               double P, double T)
{
    double f = p->target_step;
    if (!ctx->total_steps || p->target_by <= 0 || P <= 0 || T <= 0) return f;
    const double due = p->target_by * (double)ctx->total_steps;
    const double period =
        (double)(p->interval_steps > p->cooldown_steps ? p->interval_steps : p->cooldown_steps);
    const double left =
        (double)step < due ? floor((due - (double)step) / (period > 0 ? period : 1)) + 1 : 1;
    const double need = T < P ? 1.0 - pow(T / P, 1.0 / left) : pow(T / P, 1.0 / left) - 1.0;
    return need > f ? need : f;
}

static int svd__dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* target_value fisher: the saliencies of the groups still to plan (not done), ascending,
 * into gi[i].sal (rows of sal). A failure ends the pass's planning (-ENOMEM marks it). */
static int svd__target_saliency(struct svd__pass *ps, struct svd__gi *gi, size_t ng,
                                const int *done, double *sal)
{
    struct svd_gref refs[SVD_MAX_GROUPS];
    size_t idx[SVD_MAX_GROUPS], k = 0;
    for (size_t i = 0; i < ng && k < SVD_MAX_GROUPS; i++) {
        gi[i].sal = NULL;
        if (!done[i]) refs[k] = gi[i].ref, idx[k++] = i;
    }
    if (!k) return 0;
    int rc = svd__saliency(*ps->n, refs, k, ps->ctx->x, ps->ctx->y, ps->ctx->B, sal, SVD_SPEC_CAP);
    if (rc < 0) {
        ps->oom |= rc == -ENOMEM;
        return rc;
    }
    for (size_t q = 0; q < k; q++) {
        struct svd__gi *x = &gi[idx[q]];
        x->sal = sal + q * SVD_SPEC_CAP;
        qsort(x->sal, x->m, sizeof(double), svd__dbl_cmp);
    }
    return 0;
}

/* Target above: cut the lowest-value tail directions across groups. Costs and spectra are
 * measured afresh before each round, since shrinking a group also shrinks its consumer's
 * columns and changes what its consumers see. */
static void svd__target_shrink(struct svd__pass *ps, struct svd__gi *gi, size_t ng, size_t step)
{
    const struct svd_policy *p = ps->p;
    const double T = (double)p->target_params, P0 = (double)(*ps->n)->n_params;
    const double f = svd__target_frac(p, ps->ctx, step, P0, T);
    const double goal = P0 * (1.0 - f) > T ? P0 * (1.0 - f) : T;
    const int kept0 = ps->kept;
    int *done = calloc(ng + 1, sizeof(int)), *cut_once = calloc(ng + 1, sizeof(int));
    int *want = calloc(ng + 1, sizeof(int));
    size_t *cut = calloc(ng + 1, sizeof(size_t));
    float *tmp = malloc((ng + 1) * SVD_SPEC_CAP * sizeof(float));
    struct svd_change *saved = malloc((ng + 1) * sizeof(*saved));
    double *sal = p->target_value == SVD_VALUE_FISHER
                      ? malloc((ng + 1) * SVD_SPEC_CAP * sizeof(double))
                      : NULL;
    if (!done || !cut_once || !want || !cut || !tmp || !saved ||
        (p->target_value == SVD_VALUE_FISHER && !sal)) {
        ps->oom = 1;
        goto out;
    }
    for (size_t i = 0; i < ng; i++) done[i] = gi[i].cooling || gi[i].r <= 0;
    /* A round's plan prices each direction at its group's unit cost, which counts the weights
     * two adjacent groups share once for each, and assumes the widths' square law, which the
     * first layer (fixed input) breaks, so a round lands above its goal. The next round plans
     * again from the new widths, costs and spectra, and a group cut in this pass may be cut
     * again (a wide start with a 34x target stopped at 159k of a pass's 79k goal when each
     * group could be cut once). A group whose cut is rolled back is done for the pass. */
    for (int round = 0; round < SVD_TARGET_ROUNDS && (double)(*ps->n)->n_params > goal; round++) {
        if (round) {
            // The spectra again (the event keeps the pass's first look at each group).
            for (size_t i = 0; i < ng; i++) {
                want[i] = !done[i];
                if (done[i]) continue;
                gi[i].m = svd_group_width(*ps->n, &gi[i].ref);
                if (gi[i].ch) saved[i] = *gi[i].ch;
            }
            svd__measure(ps, gi, ng, want, tmp);
            for (size_t i = 0; i < ng; i++) {
                if (!want[i]) continue;
                if (gi[i].ch) *gi[i].ch = saved[i];
                if (gi[i].r <= 0) done[i] = 1;
            }
        }
        for (size_t i = 0; i < ng; i++)
            if (!done[i]) gi[i].cost = svd__unit_cost(*ps->n, &gi[i].ref);
        if (sal && ps->ctx->y && svd__target_saliency(ps, gi, ng, done, sal) < 0) break;
        memset(cut, 0, (ng + 1) * sizeof(size_t));
        if (svd__plan_cuts(p, gi, ng, done, (double)(*ps->n)->n_params, goal, cut) < 0) {
            ps->oom = 1;
            break;
        }
        size_t any = 0;
        for (size_t i = 0; i < ng; i++) {
            if (!cut[i]) continue;
            any++;
            const uint64_t cool = gi[i].gs->cooldown_until;
            struct svd_change before;
            if (gi[i].ch) before = *gi[i].ch;
            if (svd__surgery(ps, &gi[i], gi[i].m - cut[i], SVD_WHY_TARGET, step)) {
                /* The backoff stays: a group that refused a cut once is cut in the smaller
                 * steps from then on (the main job at a 100k target took conv2 32 -> 24 after
                 * a refused 32 -> 16, and then 24 -> 12 at the next pass when a kept cut
                 * reset it), and once a pass: later rounds would add up its small steps. */
                cut_once[i] = 1;
                done[i] = gi[i].gs->backoff > 0;
                continue;
            }
            done[i] = 1;
            if (!(gi[i].ch && gi[i].ch->rolled_back)) continue;
            if (cut_once[i]) {
                // A deeper cut after one this pass kept: the event shows the kept one.
                *gi[i].ch = before;
            } else {
                // The group is as it was, so there is nothing to recover from: the next
                // pass tries half the cut instead of waiting out a cool-down.
                gi[i].gs->backoff++;
                gi[i].gs->cooldown_until = cool;
            }
        }
        if (!any) break;
    }
    /* A pass that cut the net puts every group in the cool-down, so the next pass weighs all
     * groups at once after training has recovered. Otherwise a pass at which the groups cut
     * last time still cool meets its goal from the others alone: the main job at a 100k
     * target cut conv3 and dense1 at step 1000, then conv1 32 -> 8 and conv2 64 -> 32 at
     * step 1500 while those two cooled. */
    if (ps->kept > kept0)
        for (size_t i = 0; i < ng; i++)
            if (gi[i].gs->cooldown_until < step + p->cooldown_steps)
                gi[i].gs->cooldown_until = step + p->cooldown_steps;
    for (size_t i = 0; i < ng; i++)
        if (gi[i].ch && gi[i].ch->action == SVD_ACT_KEEP && !gi[i].cooling && gi[i].r > 0)
            gi[i].ch->reason = gi[i].m <= p->min_width ? SVD_WHY_MIN_WIDTH : SVD_WHY_TARGET_MET;
out:
    free(done);
    free(cut_once);
    free(want);
    free(cut);
    free(tmp);
    free(saved);
    for (size_t i = 0; i < ng; i++) gi[i].sal = NULL;
    free(sal);
}

/* Target below: grow the most saturated groups per parameter, never past T. */
static void svd__target_grow(struct svd__pass *ps, struct svd__gi *gi, size_t ng, size_t step)
{
    const struct svd_policy *p = ps->p;
    const double T = (double)p->target_params;
    struct svd__cand *c = malloc((ng + 1) * sizeof(*c));
    if (!c) {
        ps->oom = 1;
        return;
    }
    size_t nc = 0;
    for (size_t i = 0; i < ng; i++) {
        if (gi[i].cooling || gi[i].r <= 0) continue;
        if (gi[i].m >= p->max_width) {
            if (gi[i].ch) gi[i].ch->reason = SVD_WHY_MAX_WIDTH;
            continue;
        }
        double smin = (double)gi[i].s[gi[i].r - 1];
        // Negated so the sort puts the most valuable first.
        c[nc].value = -(smin * smin / (gi[i].mean_e > 0 ? gi[i].mean_e : 1.0)) / gi[i].cost;
        c[nc].g = i;
        nc++;
    }
    qsort(c, nc, sizeof(*c), svd__cand_cmp);
    double P = (double)(*ps->n)->n_params;
    const double cap = p->param_budget && (double)p->param_budget < T ? (double)p->param_budget : T;
    // Growth keeps the function, so unlike a cut it has nothing to wait for: the pass grows
    // to the target at once and the new units get the most steps to learn (a narrow start
    // with a 200k target and 5 epochs: 90.64% grown at the first pass, 89.69% spread to half
    // the run). A net's parameters grow with about the square of its widths (a unit's cost
    // counts the consumers' columns, which grow too), so each group takes about
    // sqrt(goal / P) times its width; growth * width is the least a growing group takes.
    const double goal = cap;
    // Where the square overstates it (first layers, whose inputs do not grow), up to two
    // more rounds grow the groups that grew by what is still missing.
    int *grew = calloc(nc + 1, sizeof(int));
    if (!grew) {
        ps->oom = 1;
        free(c);
        return;
    }
    for (int round = 0; round < 3; round++) {
        const double scale = goal > P ? sqrt(goal / P) : 1.0;
        size_t any = 0;
        for (size_t q = 0; q < nc; q++) {
            struct svd__gi *g = &gi[c[q].g];
            if (round && !grew[q]) continue;
            grew[q] = 0;
            g->m = svd_group_width(*ps->n, &g->ref);
            g->cost = svd__unit_cost(*ps->n, &g->ref); // exact: earlier growth changed it
            size_t extra = round ? 0 : (size_t)ceil(p->growth * (double)g->m);
            const size_t want = (size_t)ceil((scale - 1.0) * (double)g->m - 1e-9);
            if (want > extra) extra = want;
            if (g->m + extra > p->max_width) extra = p->max_width - g->m;
            double room = (goal - P) / g->cost;
            if ((double)extra > room) extra = room > 0 ? (size_t)room : 0;
            if (extra == 0) {
                if (g->ch && !round) g->ch->reason = SVD_WHY_BUDGET;
                continue;
            }
            size_t before = (*ps->n)->n_params;
            if (svd__surgery(ps, g, g->m + extra, SVD_WHY_TARGET, step)) {
                P += (double)((*ps->n)->n_params - before);
                grew[q] = 1;
                any++;
            }
        }
        if (!any || P >= 0.97 * goal) break;
    }
    free(grew);
    for (size_t i = 0; i < ng; i++)
        if (gi[i].ch && gi[i].ch->action == SVD_ACT_KEEP && !gi[i].cooling && gi[i].r > 0 &&
            gi[i].ch->reason == SVD_WHY_RANK_RULE)
            gi[i].ch->reason = SVD_WHY_TARGET_MET;
    free(c);
}

static void svd__width_pass(struct svd__pass *ps, struct svd_state *st, size_t step)
{
    const struct svd_policy *p = ps->p;
    struct svd_gref g[SVD_MAX_GROUPS];
    const size_t ng = svd_groups(*ps->n, g, SVD_MAX_GROUPS);
    for (size_t i = 0; i < st->n; i++) ps->shrunk |= st->g[i].shrunk != 0;
    struct svd__gi *gi = calloc(ng + 1, sizeof(*gi));
    float *spec = malloc((ng + 1) * SVD_SPEC_CAP * sizeof(float));
    float *tmp = malloc((ng + 1) * SVD_SPEC_CAP * sizeof(float));
    int *want = calloc(ng + 1, sizeof(int));
    if (!gi || !spec || !tmp || !want) {
        ps->oom = 1;
        goto out;
    }
    const double P0 = (double)(*ps->n)->n_params, T = (double)p->target_params;
    const int target = p->target_params > 0;
    const int in_band = target && P0 <= T && P0 >= 0.95 * T;
    for (size_t i = 0; i < ng; i++) {
        struct svd__gi *x = &gi[i];
        x->ref = g[i];
        x->s = spec + i * SVD_SPEC_CAP;
        svd_group_name(*ps->n, &g[i], x->name, sizeof(x->name));
        x->m = svd_group_width(*ps->n, &g[i]);
        x->gs = svd__gs(st, x->name);
        x->ch = svd__change(ps->ev, x->name, x->m);
        x->cooling = step < x->gs->cooldown_until;
        x->cost = svd__unit_cost(*ps->n, &g[i]);
        if (x->cooling) {
            if (x->ch) x->ch->action = SVD_ACT_SKIP, x->ch->reason = SVD_WHY_COOLDOWN;
            continue;
        }
        if (in_band) {
            if (x->ch) x->ch->reason = SVD_WHY_TARGET_MET;
            continue; // nothing can change: no spectrum needed
        }
        if (!target && !p->enable_shrink && !p->enable_grow) {
            if (x->ch) x->ch->reason = SVD_WHY_DISABLED;
            continue;
        }
        if (x->ch) x->ch->reason = SVD_WHY_RANK_RULE;
        want[i] = 1;
    }
    if (target && !in_band) {
        const int up = P0 < 0.95 * T;
        svd__measure(ps, gi, ng, want, tmp);
        if (up && p->enable_grow)
            svd__target_grow(ps, gi, ng, step);
        else if (!up && p->enable_shrink)
            svd__target_shrink(ps, gi, ng, step);
        for (size_t i = 0; i < ng; i++)
            if (gi[i].ch && gi[i].ch->action == SVD_ACT_KEEP &&
                gi[i].ch->reason == SVD_WHY_RANK_RULE)
                gi[i].ch->reason = (up ? p->enable_grow : p->enable_shrink) ? SVD_WHY_TARGET_MET
                                                                            : SVD_WHY_DISABLED;
    } else if (!target) {
        /* Layers are never added or removed, so the references stay valid across surgeries.
         * All spectra come from one set of forward passes, measured again for the groups
         * still to come only after a surgery changed the net. */
        int any = 0, stale = 0, kept = ps->kept;
        for (size_t i = 0; i < ng; i++) any |= want[i];
        if (any) {
            svd__measure(ps, gi, ng, want, tmp);
            svd__count_wishes(ps, gi, ng, want, step);
        }
        for (size_t i = 0; i < ng; i++) {
            if (!want[i]) continue;
            if (stale) {
                svd__measure(ps, gi, ng, want, tmp);
                stale = 0;
            }
            want[i] = 0;
            svd__width_step(ps, &gi[i], step);
            if (ps->kept != kept) stale = 1, kept = ps->kept;
        }
    }
out:
    free(gi);
    free(spec);
    free(tmp);
    free(want);
}

static double svd__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int svd_adapt(struct svd_state *st, const struct svd_policy *p, struct net **n, size_t step,
              const struct svd_ctx *ctx, struct svd_event *ev)
{
    const double t0 = svd__now();
    float *s = malloc(SVD_SPEC_CAP * sizeof(float));
    if (ev) memset(ev, 0, sizeof(*ev));
    if (!s) return -ENOMEM;
    struct svd__pass ps = {p, ctx, n, NAN, 0, 0, ev, 0, 0};
    if (ev) {
        ev->step = step;
        ev->time = (double)time(NULL);
        ev->mode = p->mode;
        ev->params_before = (*n)->n_params;
        ev->target_params = p->target_params;
        ev->cap_changes = (*n)->n_layers > SVD_MAX_GROUPS ? (*n)->n_layers : SVD_MAX_GROUPS;
        ev->changes = calloc(ev->cap_changes, sizeof(*ev->changes));
        if (!ev->changes) {
            free(s);
            return -ENOMEM;
        }
        svd__widths(ev, *n, 0);
    }
    if (p->mode == SVD_MODE_FACTORIZE) {
        for (size_t i = 0; i < (*n)->n_layers; i++) {
            enum net_kind k = (*n)->layers[i].spec.kind;
            if (k == NET_DENSE || k == NET_CONV) svd__rank_step(&ps, st, i, step, s);
        }
    } else {
        svd__width_pass(&ps, st, step);
    }
    if (ev) {
        ev->params_after = (*n)->n_params;
        svd__widths(ev, *n, 1);
        ev->seconds = svd__now() - t0;
    }
    free(s);
    // An allocation that failed is an error, unless a surgery was kept (the net changed).
    return ps.oom && ps.kept == 0 ? -ENOMEM : ps.kept;
}
