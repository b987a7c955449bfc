/* svd_adapt/policy.c: when and how much to adapt, with hysteresis and rollback.
 *
 * One pass (svd_adapt) looks at every adaptable group (select / rotate) or every dense and
 * conv layer's rank (factorize). Per group it takes the spectrum, applies the rank rule and:
 *   shrinks when fewer directions than the width carry the energy (never below min_width);
 *   grows by ceil(growth * width) when the spectrum is flat (s_min / s_1 >= expand_threshold)
 *   on grow_patience consecutive checks, up to max_width and param_budget.
 * A grown group is not examined again for cooldown_steps, so a new direction with a small
 * singular value is not pruned straight away (the seed's grow / prune oscillation). Each
 * surgery is judged on the validation loss: a rise over max_loss_jump rolls it back.
 * State per group (keyed by name, stable across surgeries) is kept for checkpoints. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "net/codec.h"
#include "svd_adapt/svd_internal.h"

#define SVD_MAX_GROUPS 128

struct svd_gstate {
    char name[NET_NAME_MAX + 8];
    uint64_t patience;       // consecutive flat checks
    uint64_t cooldown_until; // step before which the group is left alone
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

/* The adaptation state as bytes (net/codec.h), version 2: "SVST" | u32 version | u64 count |
 * per group: u64 name length | name | u64 patience | u64 cooldown_until. Version 1 (read
 * only) was the raw array: u64 count | per group char name[40] | u64 patience | u64
 * cooldown_until; its count is at most SVD_MAX_GROUPS, so its bytes 1..3 are zero and it
 * cannot start with "SVST". */
#define SVD_STATE_VERSION 2u
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
    if (!v1) {
        r.pos = 4;
        if (net_rd_u32(&r) != SVD_STATE_VERSION) return -EINVAL;
    }
    const uint64_t cnt = net_rd_count(&r, SVD_MAX_GROUPS, v1 ? SVD_STATE_V1_ROW : 24);
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
        if (r.bad || !g->name[0]) return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(tmp.g[j].name, g->name)) return -EINVAL;
    }
    if (!net_rd_done(&r)) return -EINVAL;
    tmp.n = (size_t)cnt;
    *s = tmp;
    return 0;
}

// ---- one pass --------------------------------------------------------------------------

/* Per-layer parameter counts of the layers that have any. */
static cJSON *svd__layer_params(const struct net *n)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        size_t np = 0;
        for (size_t t = l->t0; t < l->t0 + l->n_t; t++)
            if (n->tensors[t].arena == NET_ARENA_PARAM) np += n->tensors[t].n;
        if (np) cJSON_AddNumberToObject(o, l->spec.name, (double)np);
    }
    return o;
}

static cJSON *svd__widths(const struct net *n)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        if (l->spec.kind == NET_DENSE || l->spec.kind == NET_CONV)
            cJSON_AddNumberToObject(o, l->spec.name, (double)l->spec.out);
        else if (l->spec.kind == NET_RES) {
            char k[NET_NAME_MAX + 8];
            snprintf(k, sizeof(k), "%s.inner", l->spec.name);
            cJSON_AddNumberToObject(o, k, (double)l->spec.width);
            snprintf(k, sizeof(k), "%s.out", l->spec.name);
            cJSON_AddNumberToObject(o, k, (double)l->spec.out);
        }
    }
    return o;
}

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
    double val;        // validation loss of *n (NAN until needed)
    int kept;
    cJSON *changes;
};

/* Judges candidate c against *n; adopts or discards it. */
static void svd__judge(struct svd__pass *ps, struct net *c, cJSON *ch)
{
    if (isnan(ps->val)) ps->val = ps->ctx->val_loss(ps->ctx->user, *ps->n);
    double v = ps->ctx->val_loss(ps->ctx->user, c);
    int back = !(v - ps->val <= ps->p->max_loss_jump);
    cJSON_AddNumberToObject(ch, "val_loss_before", ps->val);
    cJSON_AddNumberToObject(ch, "val_loss_after", v);
    cJSON_AddBoolToObject(ch, "rolled_back", back);
    if (back) {
        net_destroy(c);
        return;
    }
    net_destroy(*ps->n);
    *ps->n = c;
    ps->val = v;
    ps->kept++;
}

static void svd__spec_json(cJSON *ch, const float *s, long r)
{
    cJSON_AddNumberToObject(ch, "s_max", r > 0 ? s[0] : 0);
    cJSON_AddNumberToObject(ch, "s_min", r > 0 ? s[r - 1] : 0);
    cJSON *top = cJSON_AddArrayToObject(ch, "top");
    for (long i = 0; i < r && i < 8; i++) cJSON_AddItemToArray(top, cJSON_CreateNumber(s[i]));
}

/* The factorize mode's decision for one layer's rank. */
static void svd__rank_step(struct svd__pass *ps, struct svd_state *st, size_t layer, size_t step,
                           float *s)
{
    const struct svd_policy *p = ps->p;
    struct net *n = *ps->n;
    const struct net_layer *l = &n->layers[layer];
    struct svd_gstate *gs = svd__gs(st, l->spec.name);
    if (step < gs->cooldown_until) return;
    long r = svd_layer_spectrum(n, layer, s, 4096);
    if (r <= 0) return;
    const size_t m = l->spec.out;
    const struct net_tensor *tv = net_tensor_get(n, layer, l->spec.rank ? "v" : "w");
    const size_t fan = l->spec.rank ? tv->n / l->spec.rank : tv->n / m;
    const double breakeven = (double)m * (double)fan / (double)(m + fan);
    const size_t R = l->spec.rank ? l->spec.rank : (size_t)r;
    size_t k = svd_rank_rule(p, s, (size_t)r), target = R;
    if (k < p->min_width) k = p->min_width < (size_t)r ? p->min_width : (size_t)r;
    const char *action = NULL;
    if (p->enable_shrink && k < R) {
        target = k;
        action = "shrink_rank";
    } else if (p->enable_grow && l->spec.rank && s[R - 1] / s[0] >= p->expand_threshold) {
        if (++gs->patience >= p->grow_patience) {
            target = R + (size_t)ceil(p->growth * (double)R);
            if (target > (size_t)r) target = (size_t)r;
            action = "grow_rank";
        }
    } else {
        gs->patience = 0;
    }
    if (!action || target == R) return;
    // Factorized only while it saves parameters; otherwise back to (or stay) plain.
    size_t new_rank = (double)target < breakeven ? target : 0;
    if (new_rank == l->spec.rank) return;
    if (!strcmp(action, "grow_rank")) {
        gs->cooldown_until = step + p->cooldown_steps;
        gs->patience = 0;
    }
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddStringToObject(ch, "group", l->spec.name);
    cJSON_AddStringToObject(ch, "action", action);
    cJSON_AddNumberToObject(ch, "from", (double)R);
    cJSON_AddNumberToObject(ch, "to", (double)target);
    cJSON_AddBoolToObject(ch, "factorized", new_rank != 0);
    svd__spec_json(ch, s, r);
    char err[256];
    struct net *c = NULL;
    net_forward(n, ps->ctx->x, NULL, ps->ctx->B, 0);
    float *mu = l->spec.rank ? NULL : svd__mean_input(n, layer, ps->ctx->B);
    int rc = svd_set_rank(&c, n, layer, new_rank, mu, ps->ctx->rng, err, sizeof(err));
    free(mu);
    if (rc < 0) {
        cJSON_AddStringToObject(ch, "error", err);
    } else {
        svd__judge(ps, c, ch);
    }
    cJSON_AddItemToArray(ps->changes, ch);
}

/* The select / rotate modes' decision for one group's width. */
static void svd__width_step(struct svd__pass *ps, struct svd_state *st, const struct svd_gref *g,
                            size_t step, float *s)
{
    const struct svd_policy *p = ps->p;
    struct net *n = *ps->n;
    char name[NET_NAME_MAX + 8];
    svd_group_name(n, g, name, sizeof(name));
    struct svd_gstate *gs = svd__gs(st, name);
    if (step < gs->cooldown_until) return;
    const size_t m = svd_group_width(n, g);
    long r = p->source == SVD_SRC_ACTIVATIONS
                 ? svd_spectrum_acts(n, g, ps->ctx->x, ps->ctx->B, s, 4096)
                 : svd_spectrum_weights(n, g, s, 4096);
    if (r < 0) {
        // A failed decomposition skips this group's adaptation, and says so in the event.
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddStringToObject(ch, "group", name);
        cJSON_AddStringToObject(ch, "action", "skip");
        cJSON_AddStringToObject(ch, "error", r == SVD_ENOCONV ? "SVD did not converge"
                                                             : "spectrum failed");
        cJSON_AddItemToArray(ps->changes, ch);
        return;
    }
    if (r == 0 || !(s[0] > 0.0f)) return; // a dead layer: nothing to measure
    size_t k = svd_rank_rule(p, s, (size_t)r);
    if (k < p->min_width) k = p->min_width;
    size_t target = m;
    const char *action = NULL;
    if (p->enable_shrink && k < m) {
        target = k;
        action = "shrink";
        gs->patience = 0;
    } else if (p->enable_grow && (size_t)r == m && s[r - 1] / s[0] >= p->expand_threshold &&
               m < p->max_width) {
        if (++gs->patience >= p->grow_patience) {
            target = m + (size_t)ceil(p->growth * (double)m);
            if (target > p->max_width) target = p->max_width;
            action = "grow";
        }
    } else {
        gs->patience = 0;
    }
    if (!action) return;
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddStringToObject(ch, "group", name);
    cJSON_AddStringToObject(ch, "action", action);
    cJSON_AddNumberToObject(ch, "from", (double)m);
    cJSON_AddNumberToObject(ch, "to", (double)target);
    svd__spec_json(ch, s, r);
    char err[256];
    struct net *c = NULL;
    int rc;
    if (target < m) {
        rc = svd_shrink(&c, n, g, target, p->mode, ps->ctx->x, ps->ctx->B, err, sizeof(err));
    } else {
        gs->patience = 0;
        gs->cooldown_until = step + p->cooldown_steps;
        rc = svd_grow(&c, n, g, target - m, p->grow_mode, ps->ctx->x, ps->ctx->y, ps->ctx->B,
                      ps->ctx->rng, err, sizeof(err));
        if (rc == 0 && p->param_budget && c->n_params > p->param_budget) {
            snprintf(err, sizeof(err), "param_budget %zu reached (%zu)", p->param_budget,
                     c->n_params);
            net_destroy(c);
            rc = -ENOSPC;
        }
    }
    if (rc < 0)
        cJSON_AddStringToObject(ch, "error", err);
    else
        svd__judge(ps, c, ch);
    cJSON_AddItemToArray(ps->changes, ch);
}

int svd_adapt(struct svd_state *st, const struct svd_policy *p, struct net **n, size_t step,
              const struct svd_ctx *ctx, char **event)
{
    if (event) *event = NULL;
    float *s = malloc(4096 * sizeof(float));
    cJSON *ev = cJSON_CreateObject();
    struct svd__pass ps = {p, ctx, n, NAN, 0, NULL};
    if (!s || !ev) {
        free(s);
        cJSON_Delete(ev);
        return -ENOMEM;
    }
    static const char *const modes[3] = {"rotate", "select", "factorize"};
    cJSON_AddNumberToObject(ev, "step", (double)step);
    cJSON_AddNumberToObject(ev, "time", (double)time(NULL));
    cJSON_AddStringToObject(ev, "mode", modes[p->mode]);
    cJSON_AddNumberToObject(ev, "params_before", (double)(*n)->n_params);
    cJSON_AddItemToObject(ev, "widths_before", svd__widths(*n));
    cJSON_AddItemToObject(ev, "layer_params_before", svd__layer_params(*n));
    ps.changes = cJSON_CreateArray();
    if (p->mode == SVD_MODE_FACTORIZE) {
        for (size_t i = 0; i < (*n)->n_layers; i++) {
            enum net_kind k = (*n)->layers[i].spec.kind;
            if (k == NET_DENSE || k == NET_CONV) svd__rank_step(&ps, st, i, step, s);
        }
    } else {
        struct svd_gref g[SVD_MAX_GROUPS];
        size_t ng = svd_groups(*n, g, SVD_MAX_GROUPS);
        // Layers are never added or removed, so the references stay valid across surgeries.
        for (size_t i = 0; i < ng; i++) svd__width_step(&ps, st, &g[i], step, s);
    }
    int n_changes = cJSON_GetArraySize(ps.changes);
    cJSON_AddItemToObject(ev, "changes", ps.changes);
    cJSON_AddNumberToObject(ev, "params_after", (double)(*n)->n_params);
    cJSON_AddItemToObject(ev, "widths_after", svd__widths(*n));
    cJSON_AddItemToObject(ev, "layer_params_after", svd__layer_params(*n));
    char *text = n_changes > 0 ? cJSON_PrintUnformatted(ev) : NULL;
    if (ctx->events && text) {
        fprintf(ctx->events, "%s\n", text);
        fflush(ctx->events);
    }
    if (event)
        *event = text;
    else
        cJSON_free(text);
    cJSON_Delete(ev);
    free(s);
    return ps.kept;
}
