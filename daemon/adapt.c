/* daemon/adapt.c: the trainer's side of width adaptation and regularisation.
 *
 * Every interval_steps after warmup_steps (and on demand) the trainer draws a calibration
 * batch from the training set (no augmentation, from the run's own RNG so a resumed run
 * draws the same), hands it to svd_adapt with a validation-loss callback, swaps in the new
 * net, and keeps the event texts for reports, the API and checkpoints. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon_internal.h"
#include "svd_adapt/svd_adapt.h"

#define DMN_VAL_SAMPLES 512 // validation samples judged around a surgery

struct dmn_adapt {
    struct svd_state *st;
    char **events; // JSON texts, owned
    size_t n_events, cap_events;
};

void dmn__group_lasso(struct dmn_trainer *t)
{
    if (t->cfg.optimizer.group_lasso > 0.0)
        net_group_lasso(t->net, (float)t->cfg.optimizer.group_lasso);
}

int dmn__adapt_init(struct dmn_trainer *t, char *err, size_t errlen)
{
    t->adapt = calloc(1, sizeof(*t->adapt));
    if (!t->adapt || !(t->adapt->st = svd_state_create())) {
        free(t->adapt);
        t->adapt = NULL;
        snprintf(err, errlen, "out of memory for the adaptation state");
        return -ENOMEM;
    }
    return 0;
}

void dmn__adapt_free(struct dmn_trainer *t)
{
    if (!t->adapt) return;
    svd_state_destroy(t->adapt->st);
    for (size_t i = 0; i < t->adapt->n_events; i++) free(t->adapt->events[i]);
    free(t->adapt->events);
    free(t->adapt);
    t->adapt = NULL;
}

static double dmn__val_cb(void *user, struct net *n)
{
    struct dmn_trainer *t = user;
    const struct net_dataset *d = t->val.n ? &t->val : &t->test;
    struct net_dataset part = *d;
    if (part.n > DMN_VAL_SAMPLES) part.n = DMN_VAL_SAMPLES;
    struct net_eval ev;
    if (net_evaluate(n, &part, t->cfg.train.batch_size, &ev) < 0) return INFINITY;
    double l = ev.loss;
    net_eval_free(&ev);
    return l;
}

static void dmn__print_event(struct dmn_trainer *t, const char *text)
{
    if (!t->log) return;
    cJSON *e = cJSON_Parse(text);
    if (!e) return;
    fprintf(t->log, "adapt step %zu:", t->step);
    cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(e, "changes"))
    {
        const cJSON *rb = cJSON_GetObjectItem(c, "rolled_back"),
                    *er = cJSON_GetObjectItem(c, "error");
        fprintf(t->log, " %s %d->%d%s", cJSON_GetStringValue(cJSON_GetObjectItem(c, "group")),
                (int)cJSON_GetNumberValue(cJSON_GetObjectItem(c, "from")),
                (int)cJSON_GetNumberValue(cJSON_GetObjectItem(c, "to")),
                er                 ? " (failed)"
                : cJSON_IsTrue(rb) ? " (rolled back)"
                                   : "");
    }
    fprintf(t->log, "; params %.0f -> %.0f\n",
            cJSON_GetNumberValue(cJSON_GetObjectItem(e, "params_before")),
            cJSON_GetNumberValue(cJSON_GetObjectItem(e, "params_after")));
    fflush(t->log);
    cJSON_Delete(e);
}

int dmn_trainer_adapt_now(struct dmn_trainer *t)
{
    const struct svd_policy *p = &t->cfg.adapt;
    const size_t D = t->train.shape.c * t->train.shape.h * t->train.shape.w;
    size_t B = p->calibration_samples < t->train.n ? p->calibration_samples : t->train.n;
    float *x = malloc(B * D * sizeof(float));
    uint8_t *y = malloc(B);
    double t0 = dmn_now();
    int rc = -ENOMEM;
    if (!x || !y) goto out;
    for (size_t i = 0; i < B; i++) {
        size_t k = net_rand_below(&t->rng, t->train.n);
        memcpy(x + i * D, t->train.x + k * D, D * sizeof(float));
        y[i] = t->train.y[k];
    }
    struct svd_ctx ctx = {x, y, B, dmn__val_cb, t, &t->rng, t->events};
    char *event = NULL;
    rc = svd_adapt(t->adapt->st, p, &t->net, t->step, &ctx, &event);
    net_reserve(t->net, t->cfg.train.batch_size);
    if (event) {
        struct dmn_adapt *a = t->adapt;
        if (a->n_events == a->cap_events) {
            size_t cap = a->cap_events ? 2 * a->cap_events : 16;
            char **q = realloc(a->events, cap * sizeof(char *));
            if (q) {
                a->events = q;
                a->cap_events = cap;
            }
        }
        dmn__print_event(t, event);
        if (a->n_events < a->cap_events)
            a->events[a->n_events++] = event;
        else
            free(event);
    }
out:
    free(x);
    free(y);
    t->adapt_seconds += dmn_now() - t0;
    return rc;
}

int dmn__adapt_maybe(struct dmn_trainer *t)
{
    const struct svd_policy *p = &t->cfg.adapt;
    if (!p->enabled || !p->interval_steps || t->step < p->warmup_steps ||
        (t->step - p->warmup_steps) % p->interval_steps != 0 || t->step >= t->total_steps)
        return 0;
    int rc = dmn_trainer_adapt_now(t);
    return rc == -ENOMEM ? rc : 0; // a failed decomposition is logged in the event, not fatal
}

cJSON *dmn__adapt_events_json(struct dmn_trainer *t)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && t->adapt && i < t->adapt->n_events; i++) {
        cJSON *e = cJSON_Parse(t->adapt->events[i]);
        if (e) cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

/* TRNR extra: u64 state_len | svd state | u64 n_events | (u64 len | text)... */
int dmn__adapt_serialize(struct dmn_trainer *t, void **out, size_t *len)
{
    void *st = NULL;
    size_t sl = 0, total;
    int rc = svd_state_save(t->adapt->st, &st, &sl);
    if (rc < 0) return rc;
    total = 16 + sl;
    for (size_t i = 0; i < t->adapt->n_events; i++) total += 8 + strlen(t->adapt->events[i]);
    unsigned char *p = malloc(total), *q = p;
    if (!p) {
        free(st);
        return -ENOMEM;
    }
    uint64_t v = sl;
    memcpy(q, &v, 8), q += 8;
    memcpy(q, st, sl), q += sl;
    v = t->adapt->n_events;
    memcpy(q, &v, 8), q += 8;
    for (size_t i = 0; i < t->adapt->n_events; i++) {
        v = strlen(t->adapt->events[i]);
        memcpy(q, &v, 8), q += 8;
        memcpy(q, t->adapt->events[i], v), q += v;
    }
    free(st);
    *out = p;
    *len = total;
    return 0;
}

int dmn__adapt_deserialize(struct dmn_trainer *t, const void *data, size_t len)
{
    const unsigned char *p = data, *end = p + len;
    uint64_t v;
    if (len == 0) return 0;
    if (len < 16) return -EINVAL;
    memcpy(&v, p, 8), p += 8;
    if (v > (uint64_t)(end - p) || svd_state_load(t->adapt->st, p, (size_t)v) < 0) return -EINVAL;
    p += v;
    if (end - p < 8) return -EINVAL;
    uint64_t ne;
    memcpy(&ne, p, 8), p += 8;
    for (uint64_t i = 0; i < ne; i++) {
        if (end - p < 8) return -EINVAL;
        memcpy(&v, p, 8), p += 8;
        if (v > (uint64_t)(end - p)) return -EINVAL;
        char *s = malloc(v + 1);
        char **q = realloc(t->adapt->events, (t->adapt->n_events + 1) * sizeof(char *));
        if (!s || !q) {
            free(s);
            if (q) t->adapt->events = q;
            return -ENOMEM;
        }
        t->adapt->events = q;
        t->adapt->cap_events = t->adapt->n_events + 1;
        memcpy(s, p, v);
        s[v] = 0;
        p += v;
        t->adapt->events[t->adapt->n_events++] = s;
    }
    return p == end ? 0 : -EINVAL;
}

size_t dmn__adapt_n_events(const struct dmn_trainer *t)
{
    return t->adapt ? t->adapt->n_events : 0;
}

const char *dmn__adapt_event(const struct dmn_trainer *t, size_t i)
{
    return t->adapt->events[i];
}
