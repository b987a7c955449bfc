/* daemon/adapt.c: the trainer's side of width adaptation and regularisation.
 *
 * Every interval_steps after warmup_steps (and on demand) the trainer draws a calibration
 * batch from the training set (no augmentation, from the run's own RNG so a resumed run
 * draws the same), hands it to svd_adapt with a validation-loss callback, swaps in the new
 * net, and records the pass as an event: a JSON line with a sequence number (seq 1, 2, ...)
 * appended to the event log (t->events, the daemon's events.jsonl). Memory holds only the
 * newest DMN_EVENT_RING texts and checkpoints only the count (TRNR version 3), so neither
 * grows with the history; the log file is the history. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon_internal.h"
#include "daemon/dist.h"
#include "net/codec.h"
#include "svd_adapt/svd_adapt.h"

#define DMN_VAL_SAMPLES 512 // validation samples judged around a surgery

struct dmn_adapt {
    struct svd_state *st;
    uint64_t n_events; // events so far = the seq of the newest
    struct {
        uint64_t seq;
        char *text;
    } ring[DMN_EVENT_RING];   // newest texts, seq order
    size_t ring_n, ring_head; // held, index of the oldest
};

/* Holds text (owned from now on) as event seq; seqs arrive in increasing order. */
static void dmn__ring_push(struct dmn_adapt *a, uint64_t seq, char *text)
{
    size_t at = (a->ring_head + a->ring_n) % DMN_EVENT_RING;
    if (a->ring_n == DMN_EVENT_RING) {
        free(a->ring[a->ring_head].text);
        a->ring_head = (a->ring_head + 1) % DMN_EVENT_RING;
        at = (a->ring_head + a->ring_n - 1) % DMN_EVENT_RING;
    } else {
        a->ring_n++;
    }
    a->ring[at].seq = seq;
    a->ring[at].text = text;
}

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
    for (size_t i = 0; i < t->adapt->ring_n; i++)
        free(t->adapt->ring[(t->adapt->ring_head + i) % DMN_EVENT_RING].text);
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

cJSON *dmn_event_json(const struct svd_event *e)
{
    static const char *const modes[3] = {"rotate", "select", "factorize"};
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "step", (double)e->step);
    cJSON_AddNumberToObject(o, "time", e->time);
    cJSON_AddNumberToObject(o, "seconds", e->seconds);
    cJSON_AddStringToObject(o, "mode", (unsigned)e->mode < 3 ? modes[e->mode] : "?");
    cJSON_AddNumberToObject(o, "params_before", (double)e->params_before);
    cJSON_AddNumberToObject(o, "params_after", (double)e->params_after);
    if (e->target_params) cJSON_AddNumberToObject(o, "target_params", (double)e->target_params);
    cJSON_AddNumberToObject(o, "kept", (double)svd_event_kept(e));
    cJSON *wb = cJSON_AddObjectToObject(o, "widths_before");
    cJSON *wa = cJSON_AddObjectToObject(o, "widths_after");
    for (size_t i = 0; i < e->n_widths; i++) {
        cJSON_AddNumberToObject(wb, e->widths[i].name, (double)e->widths[i].before);
        cJSON_AddNumberToObject(wa, e->widths[i].name, (double)e->widths[i].after);
    }
    cJSON *arr = cJSON_AddArrayToObject(o, "changes");
    for (size_t i = 0; i < e->n_changes; i++) {
        const struct svd_change *c = &e->changes[i];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddStringToObject(ch, "group", c->group);
        cJSON_AddStringToObject(ch, "action", svd_action_name(c->action));
        cJSON_AddStringToObject(ch, "reason", svd_reason_name(c->reason));
        cJSON_AddNumberToObject(ch, "from", (double)c->from);
        cJSON_AddNumberToObject(ch, "to", (double)c->to);
        if (c->n_top) {
            cJSON_AddNumberToObject(ch, "kept", (double)c->kept);
            cJSON_AddNumberToObject(ch, "s_max", c->s_max);
            cJSON_AddNumberToObject(ch, "s_min", c->s_min);
            cJSON *top = cJSON_AddArrayToObject(ch, "top");
            for (size_t j = 0; j < c->n_top; j++)
                cJSON_AddItemToArray(top, cJSON_CreateNumber(c->top[j]));
        }
        if (c->judged) {
            cJSON_AddNumberToObject(ch, "val_loss_before", c->val_before);
            cJSON_AddNumberToObject(ch, "val_loss_after", c->val_after);
            cJSON_AddBoolToObject(ch, "rolled_back", c->rolled_back);
        }
        if (isfinite(c->gain)) cJSON_AddNumberToObject(ch, "growth_gain", c->gain);
        if (c->action == SVD_ACT_SHRINK_RANK || c->action == SVD_ACT_GROW_RANK)
            cJSON_AddBoolToObject(ch, "factorized", c->factorized);
        if (c->error[0]) cJSON_AddStringToObject(ch, "error", c->error);
        cJSON_AddItemToArray(arr, ch);
    }
    return o;
}

/* One line per pass that changed something: "adapt step N: conv1 32->24 ...; params a -> b". */
static void dmn__print_event(struct dmn_trainer *t, const struct svd_event *e)
{
    if (!t->log) return;
    int any = 0;
    for (size_t i = 0; i < e->n_changes; i++) {
        const struct svd_change *c = &e->changes[i];
        if (c->action == SVD_ACT_KEEP || c->action == SVD_ACT_SKIP) continue;
        if (!any++) fprintf(t->log, "adapt step %zu:", t->step);
        fprintf(t->log, " %s %zu->%zu%s", c->group, c->from, c->to,
                c->error[0]      ? " (failed)"
                : c->rolled_back ? " (rolled back)"
                                 : "");
    }
    if (!any) return;
    fprintf(t->log, "; params %zu -> %zu\n", e->params_before, e->params_after);
    fflush(t->log);
}

uint64_t dmn__adapt_record(struct dmn_trainer *t, cJSON *j)
{
    struct dmn_adapt *a = t->adapt;
    uint64_t seq = ++a->n_events;
    if (j) cJSON_AddNumberToObject(j, "seq", (double)seq);
    char *event = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!event) return seq; // out of memory: the count still moves, the text is lost
    if (t->events) {
        fprintf(t->events, "%s\n", event);
        fflush(t->events);
    }
    dmn__ring_push(a, seq, event);
    return seq;
}

int dmn__adapt_hold(struct dmn_trainer *t, uint64_t seq, const char *text)
{
    struct dmn_adapt *a = t->adapt;
    if (seq == 0 || seq > a->n_events ||
        (a->ring_n && a->ring[(a->ring_head + a->ring_n - 1) % DMN_EVENT_RING].seq >= seq))
        return -EINVAL;
    char *c = strdup(text);
    if (!c) return -ENOMEM;
    dmn__ring_push(a, seq, c);
    return 0;
}

int dmn__adapt_renumber(struct dmn_trainer *t, uint64_t n)
{
    struct dmn_adapt *a = t->adapt;
    if (n < a->n_events) return -EINVAL; // n counts at least the texts stored
    const uint64_t shift = n - a->n_events;
    for (size_t i = 0; i < a->ring_n; i++)
        a->ring[(a->ring_head + i) % DMN_EVENT_RING].seq += shift;
    a->n_events = n;
    return 0;
}

void dmn__adapt_set_count(struct dmn_trainer *t, uint64_t n)
{
    struct dmn_adapt *a = t->adapt;
    while (a->ring_n && a->ring[(a->ring_head + a->ring_n - 1) % DMN_EVENT_RING].seq > n)
        free(a->ring[(a->ring_head + --a->ring_n) % DMN_EVENT_RING].text);
    a->n_events = n;
}

/* The pass itself, on this process's net. */
static int dmn__adapt_local(struct dmn_trainer *t)
{
    const struct svd_policy *p = &t->cfg.adapt;
    const size_t D = t->train.shape.c * t->train.shape.h * t->train.shape.w;
    size_t B = p->calibration_samples < t->train.n ? p->calibration_samples : t->train.n;
    float *x = malloc(B * D * sizeof(float));
    uint8_t *y = malloc(B);
    double t0 = dmn_now(), c0 = dmn_cpu_now();
    int rc = -ENOMEM;
    if (!x || !y) goto out;
    for (size_t i = 0; i < B; i++) {
        size_t k = net_rand_below(&t->rng, t->train.n);
        memcpy(x + i * D, t->train.x + k * D, D * sizeof(float));
        y[i] = t->train.y[k];
    }
    struct svd_ctx ctx = {x, y, B, dmn__val_cb, t, &t->rng, t->total_steps};
    struct svd_event ev;
    rc = svd_adapt(t->adapt->st, p, &t->net, t->step, &ctx, &ev);
    net_reserve(t->net, t->cfg.train.batch_size);
    if (rc >= 0) {
        // Every pass is an event, so a user can see why a layer did not change.
        dmn__print_event(t, &ev);
        cJSON *j = dmn_event_json(&ev);
        dmn__dist_event_fields(j); // several ranks: their checksums before the pass
        dmn__adapt_record(t, j);
    }
    svd_event_free(&ev);
out:
    free(x);
    free(y);
    t->adapt_seconds += dmn_now() - t0;
    t->adapt_cpu_seconds += dmn_cpu_now() - c0;
    return rc;
}

/* Several MPI ranks: rank 0 runs the pass and the others take its result (daemon/dist.h). */
int dmn_trainer_adapt_now(struct dmn_trainer *t)
{
    if (dmn_dist_size() == 1) return dmn__adapt_local(t);
    dmn__dist_presurgery(t);
    return dmn__dist_surgery(t, dmn_dist_is_root() ? dmn__adapt_local(t) : 0);
}

/* The step of the early pass that grows a net under its target: the end of the learning-rate
 * warmup (step 1 without one), when that comes before adapt.warmup_steps. Growth to a target
 * needs no settled spectra, and the new units learn best from early on: a narrow start
 * grown to a 207k target with mirror pairs at step 200 of a 5-epoch run reached 91.36% test
 * accuracy, at step 1000 (adapt.warmup_steps) 90.06% (seed 1; a fixed net of that shape,
 * 92.29%). */
static size_t dmn__early_grow_step(const struct dmn_trainer *t)
{
    const struct svd_policy *p = &t->cfg.adapt;
    const size_t s = t->cfg.schedule.warmup_steps ? t->cfg.schedule.warmup_steps : 1;
    if (!p->target_params || !p->enable_grow || s >= p->warmup_steps) return 0;
    if ((double)t->net->n_params >= 0.95 * (double)p->target_params) return 0;
    return s;
}

int dmn__adapt_maybe(struct dmn_trainer *t)
{
    const struct svd_policy *p = &t->cfg.adapt;
    const size_t early = dmn__early_grow_step(t);
    if (p->enabled && early && t->step == early && t->step < t->total_steps) {
        int rc = dmn_trainer_adapt_now(t);
        return rc == -ENOMEM ? rc : 0;
    }
    if (!p->enabled || !p->interval_steps || t->step < p->warmup_steps ||
        (t->step - p->warmup_steps) % p->interval_steps != 0 || t->step >= t->total_steps ||
        (double)t->step >= p->stop_fraction * (double)t->total_steps)
        return 0;
    int rc = dmn_trainer_adapt_now(t);
    return rc == -ENOMEM ? rc : 0; // a failed decomposition is logged in the event, not fatal
}

cJSON *dmn__adapt_events_json(struct dmn_trainer *t)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && t->adapt && i < t->adapt->ring_n; i++) {
        cJSON *e = cJSON_Parse(t->adapt->ring[(t->adapt->ring_head + i) % DMN_EVENT_RING].text);
        if (e) cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

/* The policy state in TRNR (net/codec.h): u64 length | svd state (svd_state_save) |
 * u64 n_texts | per text: u64 length | JSON text. The texts are the newest held events, in
 * seq order (TRNR's event seq is the last one's), and only with t->events_in_checkpoint:
 * the daemon's history is its events.jsonl, so its checkpoints do not grow with it. An
 * empty blob is no state. */
#define DMN_MAX_EVENT_TEXT (1u << 24)

int dmn__adapt_serialize(struct dmn_trainer *t, void **out, size_t *len)
{
    void *st = NULL;
    size_t sl = 0;
    int rc = svd_state_save(t->adapt->st, &st, &sl);
    if (rc < 0) return rc;
    const struct dmn_adapt *a = t->adapt;
    const size_t nt = t->events_in_checkpoint ? a->ring_n : 0;
    struct net_wr w = {0};
    net_wr_u64(&w, sl);
    net_wr_bytes(&w, st, sl);
    net_wr_u64(&w, nt);
    for (size_t i = 0; i < nt; i++)
        net_wr_str(&w, a->ring[(a->ring_head + i) % DMN_EVENT_RING].text);
    free(st);
    if (w.oom) {
        net_wr_free(&w);
        return -ENOMEM;
    }
    *out = w.p;
    *len = w.len;
    return 0;
}

/* Drops every held text and sets the count to 0. */
static void dmn__ring_clear(struct dmn_adapt *a)
{
    for (size_t i = 0; i < a->ring_n; i++) free(a->ring[(a->ring_head + i) % DMN_EVENT_RING].text);
    a->ring_n = a->ring_head = 0;
    a->n_events = 0;
}

int dmn__adapt_deserialize(struct dmn_trainer *t, const void *data, size_t len)
{
    if (len == 0) return 0;
    struct net_rd r = net_rd_make(data, len);
    const uint64_t sl = net_rd_count(&r, SIZE_MAX, 1);
    const void *st = net_rd_view(&r, (size_t)sl);
    if (r.bad || svd_state_load(t->adapt->st, st, (size_t)sl) < 0) return -EINVAL;
    // Each event takes at least its 8-byte length: the count cannot outgrow the blob.
    const uint64_t ne = net_rd_count(&r, SIZE_MAX, 8);
    if (r.bad) return -EINVAL;
    struct dmn_adapt *a = t->adapt;
    dmn__ring_clear(a);
    int oom = 0;
    for (uint64_t i = 0; i < ne; i++) {
        char *text = net_rd_str(&r, DMN_MAX_EVENT_TEXT, &oom);
        if (!text) {
            dmn__ring_clear(a);
            return oom ? -ENOMEM : -EINVAL;
        }
        dmn__ring_push(a, ++a->n_events, text); // the ring keeps the newest DMN_EVENT_RING
    }
    if (!net_rd_done(&r)) {
        dmn__ring_clear(a);
        return -EINVAL;
    }
    return 0;
}

size_t dmn__adapt_n_events(const struct dmn_trainer *t)
{
    return t->adapt ? (size_t)t->adapt->n_events : 0;
}

const char *dmn__adapt_event(const struct dmn_trainer *t, size_t i)
{
    const struct dmn_adapt *a = t->adapt;
    for (size_t k = a->ring_n; k-- > 0;) {
        const uint64_t seq = a->ring[(a->ring_head + k) % DMN_EVENT_RING].seq;
        if (seq == (uint64_t)i + 1) return a->ring[(a->ring_head + k) % DMN_EVENT_RING].text;
        if (seq <= (uint64_t)i) break;
    }
    return NULL;
}
