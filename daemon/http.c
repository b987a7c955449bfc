/* daemon/http.c: evowidthd's HTTP handlers and /metrics (loop thread).
 *
 * Reads (status, history, events, policy, metrics) answer from the snapshot the trainer
 * publishes; PATCH validates a copy of the effective config, logs the change
 * (daemon/statedir.c) and sends the new config to the trainer; everything that needs the
 * model (layers, spectrum, adapt, checkpoint, eval) is queued and answered when the trainer
 * hands it back (dmn__wake_cb). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dist.h"
#include "daemon/server_internal.h"

// ---- loop thread: deferred commands and their answers ---------------------------------------

static int dmn__defer(struct dmn_server *s, struct dmn_cmd *c, struct api_resp *resp)
{
    if (!c) return api_resp_error(resp, 503, NULL, "out of memory");
    if (s->stopping) {
        free(c);
        return api_resp_error(resp, 409, NULL, "the trainer is stopping");
    }
    if (!(c->reply = api_resp_defer(resp))) {
        free(c);
        return api_resp_error(resp, 503, NULL, "out of memory");
    }
    dmn__enqueue(s, c);
    return API_ASYNC;
}

static cJSON *dmn__num_or_null(double v)
{
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static cJSON *dmn__layers_json(const struct dmn_layer_info *l, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", l[i].name);
        cJSON_AddStringToObject(o, "kind", l[i].kind);
        cJSON_AddNumberToObject(o, "width", (double)l[i].width);
        cJSON_AddNumberToObject(o, "out", (double)l[i].out);
        if (l[i].rank) cJSON_AddNumberToObject(o, "rank", (double)l[i].rank);
        cJSON_AddNumberToObject(o, "params", (double)l[i].params);
        cJSON_AddNumberToObject(o, "macs", (double)l[i].macs);
        if (l[i].n_top) {
            cJSON *top = cJSON_AddArrayToObject(o, "top_singular_values");
            for (size_t j = 0; j < l[i].n_top; j++)
                cJSON_AddItemToArray(top, cJSON_CreateNumber(l[i].top[j]));
        }
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* Answers a finished command on the loop thread. */
static void dmn__reply(struct dmn_server *s, struct dmn_cmd *c)
{
    struct api_resp *r = api_async_resp(c->reply);
    int status = 200;
    cJSON *o = cJSON_CreateObject();
    if (c->rc == -ECANCELED) {
        status = api_resp_error(r, 409, NULL, "%s", c->err);
    } else if (c->rc < 0 && c->kind == DMN_CMD_SPECTRUM && c->rc == -ENOENT) {
        status = api_resp_error(r, 404, NULL, "%s", c->err);
    } else if (c->rc < 0) {
        status = api_resp_error(r, 503, NULL, "%s", c->err[0] ? c->err : strerror(-c->rc));
    } else if (c->kind == DMN_CMD_CONFIG) {
        // The section as it now is (later PATCHes may already have moved it further).
        cJSON_Delete(o);
        o = cfg_section_to_json(&s->cfg, c->name);
        if (o && !strcmp(c->name, "train")) {
            cJSON_AddNumberToObject(o, "lr", s->cfg.optimizer.lr);
            cJSON_AddNumberToObject(o, "group_lasso", s->cfg.optimizer.group_lasso);
            cJSON_AddNumberToObject(o, "checkpoint_every_steps",
                                    (double)s->cfg.daemon.checkpoint_every_steps);
        }
        api_resp_json(r, o);
        o = NULL;
    } else {
        cJSON_AddNumberToObject(o, "step", (double)c->step);
        switch (c->kind) {
        case DMN_CMD_CHECKPOINT: cJSON_AddStringToObject(o, "path", c->path); break;
        case DMN_CMD_ADAPT: {
            cJSON_AddNumberToObject(o, "surgeries_kept", c->kept);
            pthread_mutex_lock(&s->mu);
            // This pass's event, if it logged one (events before it: c->n_spec).
            cJSON *ev = s->n_events > c->n_spec && s->ev_n
                            ? cJSON_Parse(s->events[(s->ev_head + s->ev_n - 1) % DMN_EVENT_RING])
                            : NULL;
            pthread_mutex_unlock(&s->mu);
            cJSON_AddItemToObject(o, "last_event", ev ? ev : cJSON_CreateNull());
            break;
        }
        case DMN_CMD_EVAL:
            cJSON_AddNumberToObject(o, "loss", c->loss);
            cJSON_AddNumberToObject(o, "accuracy", c->acc);
            break;
        case DMN_CMD_LAYERS:
            cJSON_AddItemToObject(o, "layers", dmn__layers_json(c->layers, c->n_layers));
            break;
        case DMN_CMD_SPECTRUM: {
            cJSON_AddStringToObject(o, "layer", c->name);
            cJSON *sv = cJSON_AddArrayToObject(o, "singular_values");
            for (size_t i = 0; i < c->n_spec; i++)
                cJSON_AddItemToArray(sv, cJSON_CreateNumber(c->spectrum[i]));
            break;
        }
        case DMN_CMD_STOP: cJSON_AddStringToObject(o, "state", "stopped"); break;
        case DMN_CMD_PAUSE:
        case DMN_CMD_RESUME: {
            char st[16];
            pthread_mutex_lock(&s->mu);
            memcpy(st, s->snap.state, sizeof(st)); // published before this answer
            pthread_mutex_unlock(&s->mu);
            cJSON_AddStringToObject(o, "state", st);
            break;
        }
        default: break;
        }
        api_resp_json(r, o);
        o = NULL;
    }
    cJSON_Delete(o);
    api_async_complete(c->reply, status);
    free(c->layers);
    free(c->spectrum);
    free(c);
}

/* The trainer rolled back with a lower learning rate: the effective config takes it and the
 * change log records it (route "rollback"), so a restart and later PATCHes keep it. */
static void dmn__on_rollback(struct dmn_server *s, struct dmn_cmd *c)
{
    char err[512];
    cJSON *body = cJSON_CreateObject(), *opt = cJSON_AddObjectToObject(body, "optimizer");
    cJSON_AddNumberToObject(opt, "lr", c->loss);
    struct dmn_config *tmp = malloc(sizeof(*tmp));
    if (tmp) {
        *tmp = s->cfg;
        if (cfg_patch(tmp, NULL, body, CFG_RUNTIME, err, sizeof(err)) == 0 &&
            dmn__log_change(s, "rollback", body, err, sizeof(err)) == 0) {
            dmn__stream_change(s, "rollback", body);
            s->cfg = *tmp;
            dmn__push_config(s);
        } else {
            dmn__log(s, "rollback: the lower learning rate is not recorded: %s", err);
        }
    }
    free(tmp);
    cJSON_Delete(body);
    free(c);
}

void dmn__wake_cb(uv_async_t *h)
{
    struct dmn_server *s = dmn__container_of(h, struct dmn_server, wake);
    pthread_mutex_lock(&s->mu);
    struct dmn_cmd *d = s->done;
    s->done = NULL;
    int ended = s->trainer_done;
    pthread_mutex_unlock(&s->mu);
    while (d) {
        struct dmn_cmd *next = d->next;
        if (d->kind == DMN_CMD_ROLLBACK)
            dmn__on_rollback(s, d);
        else
            dmn__reply(s, d);
        d = next;
    }
    if (ended && !s->trainer_exited) {
        s->trainer_exited = 1;
        dmn__shutdown_handles(s);
    }
}

// ---- loop thread: handlers ------------------------------------------------------------------

static int h_healthz(struct api_req *q, struct api_resp *r, void *ctx)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    api_resp_json(r, o);
    return 200;
}

cJSON *dmn__status_json(struct dmn_server *s)
{
    struct dmn_snapshot *sn = malloc(sizeof(*sn));
    if (!sn) return NULL;
    pthread_mutex_lock(&s->mu);
    *sn = s->snap;
    pthread_mutex_unlock(&s->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", sn->state);
    cJSON_AddNumberToObject(o, "epoch", (double)sn->epoch);
    cJSON_AddNumberToObject(o, "epochs", (double)sn->epochs);
    cJSON_AddNumberToObject(o, "step", (double)sn->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)sn->total_steps);
    cJSON_AddItemToObject(o, "loss", dmn__num_or_null(sn->loss));
    cJSON_AddItemToObject(o, "accuracy", dmn__num_or_null(sn->acc));
    cJSON_AddItemToObject(o, "val_loss", dmn__num_or_null(sn->val_loss));
    cJSON_AddItemToObject(o, "val_accuracy", dmn__num_or_null(sn->val_acc));
    cJSON_AddNumberToObject(o, "lr", sn->lr);
    cJSON_AddNumberToObject(o, "samples_per_second", sn->sps);
    cJSON_AddNumberToObject(o, "eta_seconds", sn->eta);
    cJSON_AddNumberToObject(o, "params", (double)sn->params);
    cJSON_AddNumberToObject(o, "initial_params", (double)sn->initial_params);
    cJSON_AddNumberToObject(o, "macs_per_sample", (double)sn->macs);
    cJSON_AddNumberToObject(o, "adaptations", (double)sn->n_events);
    cJSON_AddNumberToObject(o, "adapt_seconds", sn->adapt_seconds);
    cJSON_AddNumberToObject(o, "train_seconds", sn->train_seconds);
    cJSON *w = cJSON_AddObjectToObject(o, "widths");
    for (size_t i = 0; i < sn->n_layers; i++) {
        const struct dmn_layer_info *l = &sn->layers[i];
        if (!strcmp(l->kind, "dense") || !strcmp(l->kind, "conv") || !strcmp(l->kind, "res"))
            cJSON_AddNumberToObject(w, l->name, (double)l->width);
    }
    cJSON_AddItemToObject(o, "policy", cfg_section_to_json(&s->cfg, "adapt"));
    cJSON_AddNumberToObject(o, "last_checkpoint_step", (double)sn->last_ckpt_step);
    cJSON_AddStringToObject(o, "last_checkpoint", sn->last_ckpt);
    // For the dashboard: whether changes need the token, and who else is watching.
    cJSON_AddBoolToObject(o, "auth_required", s->token[0] != 0);
    cJSON_AddNumberToObject(o, "stream_clients", (double)s->n_clients);
    // Checkpoint faults (daemon.on_checkpoint_failure), rollbacks, and why the run paused.
    cJSON_AddNumberToObject(o, "checkpoint_failures", (double)sn->ckpt_failures);
    cJSON_AddNumberToObject(o, "checkpoint_failures_total", (double)sn->ckpt_failures_total);
    cJSON_AddItemToObject(o, "last_checkpoint_error",
                          sn->ckpt_error[0] ? cJSON_CreateString(sn->ckpt_error)
                                            : cJSON_CreateNull());
    cJSON_AddNumberToObject(o, "rollbacks", (double)sn->rollbacks);
    if (!strcmp(sn->state, "paused") && sn->pause_reason[0])
        cJSON_AddStringToObject(o, "pause_reason", sn->pause_reason);
    // Several MPI ranks (daemon/dist_server.c): each rank's checksum, step, settings.
    const int W = dmn_dist_size();
    cJSON_AddNumberToObject(o, "world_size", W);
    pthread_mutex_lock(&s->mu);
    if (W > 1 && s->dist_ranks) {
        cJSON *cs = cJSON_AddArrayToObject(o, "param_checksums");
        cJSON *rk = cJSON_AddArrayToObject(o, "ranks");
        for (int i = 0; i < W; i++) {
            const struct dmn_dist_rankinfo *d = &s->dist_ranks[i];
            cJSON_AddItemToArray(cs, cJSON_CreateNumber((double)d->param_crc));
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "rank", i);
            cJSON_AddNumberToObject(e, "param_checksum", (double)d->param_crc);
            cJSON_AddNumberToObject(e, "step", (double)d->step);
            cJSON_AddNumberToObject(e, "change_seq", (double)d->change_seq);
            cJSON_AddNumberToObject(e, "lr", d->lr);
            cJSON_AddItemToArray(rk, e);
        }
    }
    pthread_mutex_unlock(&s->mu);
    free(sn);
    return o;
}

static int h_status(struct api_req *q, struct api_resp *r, void *ctx)
{
    cJSON *o = dmn__status_json(ctx);
    if (!o) return api_resp_error(r, 503, NULL, "out of memory");
    api_resp_json(r, o);
    return 200;
}

/* POST /v1/auth: 200 when the token is right (the route needs it), so the page can check one. */
static int h_auth(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddBoolToObject(o, "auth_required", s->token[0] != 0);
    api_resp_json(r, o);
    return 200;
}

static int h_layers(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__defer(ctx, dmn__cmd_new(DMN_CMD_LAYERS), r);
}

static int h_spectrum(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_SPECTRUM);
    if (c && strlen(q->params[0]) >= sizeof(c->name)) {
        free(c);
        return api_resp_error(r, 404, NULL, "no layer named \"%.64s...\"", q->params[0]);
    }
    if (c) snprintf(c->name, sizeof(c->name), "%s", q->params[0]);
    return dmn__defer(ctx, c, r);
}

/* A non-negative integer query value, or dflt when absent; -2 when malformed or > max. */
static long dmn__query_long(struct api_req *q, const char *key, long dflt, long max)
{
    char buf[32], *end;
    int n = api_req_query(q, key, buf, sizeof(buf));
    if (n == -ENOENT) return dflt;
    if (n <= 0) return -2;
    long v = strtol(buf, &end, 10);
    return *end || v < 0 || v > max ? -2 : v;
}

/* GET /v1/history?points=N&since=STEP: the points after STEP (all when absent), downsampled to
 * N evenly spaced ones (the first and the newest included) plus up to N of the validation
 * points among them, evenly spaced too. */
static int h_history(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    long points = dmn__query_long(q, "points", (long)s->cfg.daemon.history_points, 100000);
    long since = dmn__query_long(q, "since", -1, LONG_MAX);
    if (points < 1)
        return api_resp_error(r, 400, NULL, "points: expected an integer in [1, 100000]");
    if (since < -1)
        return api_resp_error(r, 400, NULL, "since: expected a step (a non-negative integer)");
    pthread_mutex_lock(&s->mu);
    const struct dmn_history *hs = &s->hist;
    size_t first = 0, n_all = hs->n, n_layers = hs->n_layers;
    while (first < hs->n && since >= 0 && hs->pts[first].step <= (size_t)since) first++;
    size_t n = hs->n - first;
    struct dmn_hist *h = malloc((n + 1) * sizeof(*h));
    char(*names)[NET_NAME_MAX] = malloc(sizeof(hs->names));
    unsigned char *pick = calloc(n + 1, 1);
    if (h && names && pick) {
        memcpy(h, hs->pts + first, n * sizeof(*h));
        memcpy(names, hs->names, sizeof(hs->names));
    }
    pthread_mutex_unlock(&s->mu);
    if (!h || !names || !pick) {
        free(h);
        free(names);
        free(pick);
        return api_resp_error(r, 503, NULL, "out of memory");
    }
    // `want` evenly spaced points, the first and the newest included, and as many of the
    // validation points, evenly spaced among those.
    size_t want = n < (size_t)points ? n : (size_t)points, n_ev = 0;
    for (size_t k = 0; k < want; k++)
        pick[want == 1 ? n - 1 : (size_t)((double)k * (double)(n - 1) / (double)(want - 1) + 0.5)] =
            1;
    for (size_t i = 0; i < n; i++) n_ev += h[i].eval != 0;
    size_t want_ev = n_ev < (size_t)points ? n_ev : (size_t)points;
    for (size_t i = 0, j = 0, k = 0; i < n && k < want_ev; i++) {
        if (!h[i].eval) continue;
        size_t target =
            want_ev == 1 ? n_ev - 1
                         : (size_t)((double)k * (double)(n_ev - 1) / (double)(want_ev - 1) + 0.5);
        if (j++ == target) {
            pick[i] = 1;
            k++;
        }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "points_total", (double)n_all);
    cJSON *ln = cJSON_AddArrayToObject(o, "layers");
    for (size_t j = 0; j < n_layers; j++) cJSON_AddItemToArray(ln, cJSON_CreateString(names[j]));
    cJSON *arr = cJSON_AddArrayToObject(o, "history");
    for (size_t i = 0; i < n; i++) {
        if (!pick[i]) continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "time", h[i].time);
        cJSON_AddNumberToObject(e, "step", (double)h[i].step);
        cJSON_AddItemToObject(e, "loss", dmn__num_or_null(h[i].loss));
        cJSON_AddItemToObject(e, "accuracy", dmn__num_or_null(h[i].acc));
        cJSON_AddItemToObject(e, "val_loss", dmn__num_or_null(h[i].val_loss));
        cJSON_AddItemToObject(e, "val_accuracy", dmn__num_or_null(h[i].val_acc));
        if (h[i].eval) cJSON_AddBoolToObject(e, "eval", 1);
        cJSON_AddItemToObject(e, "lr", dmn__num_or_null(h[i].lr));
        cJSON_AddNumberToObject(e, "params", (double)h[i].params);
        cJSON_AddItemToObject(e, "samples_per_second", dmn__num_or_null(h[i].sps));
        cJSON *w = cJSON_AddObjectToObject(e, "widths");
        for (size_t j = 0; j < n_layers; j++) cJSON_AddNumberToObject(w, names[j], h[i].widths[j]);
        cJSON_AddItemToArray(arr, e);
    }
    free(h);
    free(names);
    free(pick);
    api_resp_json(r, o);
    return 200;
}

static int h_events(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    cJSON *arr = cJSON_CreateArray();
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr && i < s->ev_n; i++) {
        cJSON *e = cJSON_Parse(s->events[(s->ev_head + i) % DMN_EVENT_RING]);
        if (e) cJSON_AddItemToArray(arr, e);
    }
    size_t total = s->n_events;
    pthread_mutex_unlock(&s->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "events", arr);
    // The newest DMN_EVENT_RING are here; events.jsonl in the state dir has them all.
    cJSON_AddNumberToObject(o, "total", (double)total);
    api_resp_json(r, o);
    return 200;
}

static int h_policy_get(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    api_resp_json(r, cfg_section_to_json(&s->cfg, "adapt"));
    return 200;
}

/* PATCH of one section: validated as a whole on a copy, then committed and sent on. */
static int dmn__patch(struct dmn_server *s, struct api_req *q, struct api_resp *r,
                      const char *section, const char *route)
{
    cJSON *body = NULL;
    int rc = api_req_json(q, &body, r);
    if (rc) return rc;
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return api_resp_error(r, 422, NULL, "the body must be a JSON object of %s settings",
                              section);
    }
    if (!body->child) { // nothing to change: refused, so no empty change is logged
        cJSON_Delete(body);
        return api_resp_error(r, 422, NULL, "empty PATCH: name at least one %s setting", section);
    }
    if (s->stopping) {
        cJSON_Delete(body);
        return api_resp_error(r, 409, NULL, "the trainer is stopping");
    }
    struct dmn_config *tmp = malloc(sizeof(*tmp));
    char err[512];
    if (!tmp) {
        cJSON_Delete(body);
        return api_resp_error(r, 503, NULL, "out of memory");
    }
    *tmp = s->cfg;
    if (cfg_patch(tmp, section, body, CFG_RUNTIME, err, sizeof(err)) < 0) {
        cJSON_Delete(body);
        free(tmp);
        return api_resp_error(r, 422, NULL, "%s", err);
    }
    if (dmn__log_change(s, route, body, err, sizeof(err)) < 0) {
        cJSON_Delete(body);
        free(tmp);
        return api_resp_error(r, 503, NULL, "%s", err); // not recorded, so not applied
    }
    s->cfg = *tmp;
    free(tmp);
    dmn__stream_change(s, route, body);
    cJSON_Delete(body);
    // Answered once the trainer has applied it (dmn__reply), so /v1/status shows it then.
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_CONFIG);
    if (c) {
        c->cfg = s->cfg;
        c->seq = s->change_seq;
        snprintf(c->name, sizeof(c->name), "%s", section);
    }
    return dmn__defer(s, c, r);
}

static int h_policy_patch(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__patch(ctx, q, r, "adapt", "PATCH /v1/policy");
}

static int h_train_patch(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__patch(ctx, q, r, "train", "PATCH /v1/train");
}

static int h_pause(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__defer(ctx, dmn__cmd_new(DMN_CMD_PAUSE), r);
}

static int h_resume(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__defer(ctx, dmn__cmd_new(DMN_CMD_RESUME), r);
}

static int h_stop(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    if (s->stopping) return api_resp_error(r, 409, NULL, "the trainer is stopping");
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_STOP);
    if (!c) return api_resp_error(r, 503, NULL, "out of memory");
    dmn__enqueue(s, c);
    s->stopping = 1;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", "stopping");
    api_resp_json(r, o);
    return 202;
}

static int h_adapt(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__defer(ctx, dmn__cmd_new(DMN_CMD_ADAPT), r);
}

static int h_checkpoint(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__defer(ctx, dmn__cmd_new(DMN_CMD_CHECKPOINT), r);
}

static int h_eval(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__defer(ctx, dmn__cmd_new(DMN_CMD_EVAL), r);
}

// ---- /metrics ------------------------------------------------------------------------------

/* The Prometheus text format (version 0.0.4), in a growing buffer. Every family has HELP and
 * TYPE, counters end in _total, times are in seconds, ratios are in [0, 1] (_ratio), the HTTP
 * status is the `code` label: `promtool check metrics` accepts it silently (e2e_telemetry). */
struct dmn_pm {
    char *buf;
    size_t n, cap;
    int oom;
};

static void dmn__pm(struct dmn_pm *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void dmn__pm(struct dmn_pm *m, const char *fmt, ...)
{
    if (m->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(m->buf + m->n, m->cap - m->n, fmt, ap);
        va_end(ap);
        if (k < 0) {
            m->oom = 1;
            return;
        }
        if ((size_t)k < m->cap - m->n) {
            m->n += (size_t)k;
            return;
        }
        char *b = realloc(m->buf, 2 * m->cap + (size_t)k);
        if (!b) {
            m->oom = 1;
            return;
        }
        m->buf = b;
        m->cap = 2 * m->cap + (size_t)k;
    }
}

/* A family's head. */
static void dmn__pm_family(struct dmn_pm *m, const char *name, const char *type, const char *help)
{
    dmn__pm(m, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A sample value: integers exactly, NaN and infinities as Prometheus spells them. */
static void dmn__pm_value(struct dmn_pm *m, double v)
{
    if (isnan(v))
        dmn__pm(m, " NaN\n");
    else if (isinf(v))
        dmn__pm(m, v > 0 ? " +Inf\n" : " -Inf\n");
    else
        dmn__pm(m, " %.17g\n", v);
}

static void dmn__pm_one(struct dmn_pm *m, const char *name, const char *type, const char *help,
                        double v)
{
    dmn__pm_family(m, name, type, help);
    dmn__pm(m, "%s", name);
    dmn__pm_value(m, v);
}

/* name{label="value"} v, the value escaped as the format asks (\\, \", \n). */
static void dmn__pm_labelled(struct dmn_pm *m, const char *name, const char *label,
                             const char *value, double v)
{
    dmn__pm(m, "%s{%s=\"", name, label);
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            dmn__pm(m, "\\%c", *p);
        else if (*p == '\n')
            dmn__pm(m, "\\n");
        else
            dmn__pm(m, "%c", *p);
    }
    dmn__pm(m, "\"}");
    dmn__pm_value(m, v);
}

static int dmn__width_layer(const struct dmn_layer_info *l)
{
    return !strcmp(l->kind, "dense") || !strcmp(l->kind, "conv") || !strcmp(l->kind, "res");
}

static int h_metrics(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    struct dmn_snapshot *sn = malloc(sizeof(*sn));
    struct api_stats *st = malloc(sizeof(*st));
    struct dmn_pm m = {malloc(16384), 0, 16384, 0};
    if (!sn || !st || !m.buf) {
        free(sn);
        free(st);
        free(m.buf);
        return api_resp_error(r, 503, NULL, "out of memory");
    }
    dmn__ingest_events(s); // the surgery counters are up to date with the events
    pthread_mutex_lock(&s->mu);
    *sn = s->snap;
    size_t hist_n = s->hist.n;
    pthread_mutex_unlock(&s->mu);
    api_server_stats(s->api, st);
    const struct dmn_event_stats *e = &s->evs;
    size_t bs = s->cfg.train.batch_size;

    dmn__pm_one(&m, "evowidth_steps_total", "counter", "Optimizer steps the run has taken.",
                (double)sn->step);
    dmn__pm_one(&m, "evowidth_samples_total", "counter", "Training samples the run has seen.",
                (double)(sn->step * bs));
    dmn__pm_one(&m, "evowidth_total_steps", "gauge", "Optimizer steps the run is set to take.",
                (double)sn->total_steps);
    dmn__pm_one(&m, "evowidth_epoch", "gauge", "Epoch in progress (1-based).", (double)sn->epoch);
    dmn__pm_one(&m, "evowidth_train_loss", "gauge",
                "Mean training loss over the last reporting window.", sn->loss);
    dmn__pm_one(&m, "evowidth_train_accuracy_ratio", "gauge",
                "Training accuracy over the last reporting window (0 to 1).", sn->acc);
    dmn__pm_one(&m, "evowidth_validation_loss", "gauge",
                "Loss on the validation split at the last evaluation (NaN before the first).",
                sn->val_loss);
    dmn__pm_one(&m, "evowidth_validation_accuracy_ratio", "gauge",
                "Accuracy on the validation split at the last evaluation (0 to 1).", sn->val_acc);
    dmn__pm_one(&m, "evowidth_learning_rate", "gauge", "Learning rate in effect.", sn->lr);
    dmn__pm_one(&m, "evowidth_samples_per_second", "gauge",
                "Training throughput over the time spent in steps.", sn->sps);
    dmn__pm_one(&m, "evowidth_eta_seconds", "gauge", "Estimated time left to the last step.",
                sn->eta);
    dmn__pm_one(&m, "evowidth_parameters", "gauge", "Trainable parameters of the net now.",
                (double)sn->params);
    dmn__pm_one(&m, "evowidth_initial_parameters", "gauge",
                "Trainable parameters the run started with.", (double)sn->initial_params);
    dmn__pm_one(&m, "evowidth_macs_per_sample", "gauge",
                "Multiply-accumulates (MACs) of one forward pass for one sample.",
                (double)sn->macs);
    dmn__pm_one(&m, "evowidth_training_seconds_total", "counter", "Time spent in optimizer steps.",
                sn->train_seconds);
    dmn__pm_one(&m, "evowidth_adaptation_seconds_total", "counter",
                "Time spent in width adaptation passes.", sn->adapt_seconds);
    dmn__pm_one(&m, "evowidth_adaptations_total", "counter",
                "Width adaptation passes (every one is an event in /v1/events).",
                (double)sn->n_events);
    dmn__pm_family(&m, "evowidth_surgeries_total", "counter",
                   "Width changes kept, by action (rotate / select modes resize, factorize "
                   "changes ranks).");
    dmn__pm_labelled(&m, "evowidth_surgeries_total", "action", "shrink", (double)e->shrinks);
    dmn__pm_labelled(&m, "evowidth_surgeries_total", "action", "grow", (double)e->grows);
    dmn__pm_labelled(&m, "evowidth_surgeries_total", "action", "shrink_rank",
                     (double)e->rank_shrinks);
    dmn__pm_labelled(&m, "evowidth_surgeries_total", "action", "grow_rank", (double)e->rank_grows);
    dmn__pm_one(&m, "evowidth_surgeries_rolled_back_total", "counter",
                "Width changes undone because the validation loss rose too much.",
                (double)e->rolled_back);
    dmn__pm_one(&m, "evowidth_surgeries_failed_total", "counter",
                "Width changes that failed (decomposition or surgery error).", (double)e->failed);
    dmn__pm_family(&m, "evowidth_layer_width", "gauge",
                   "Width of each dense / conv layer (outputs) and residual block (inner).");
    for (size_t i = 0; i < sn->n_layers; i++)
        if (dmn__width_layer(&sn->layers[i]))
            dmn__pm_labelled(&m, "evowidth_layer_width", "layer", sn->layers[i].name,
                             (double)sn->layers[i].width);
    dmn__pm_family(&m, "evowidth_layer_parameters", "gauge", "Trainable parameters of each layer.");
    for (size_t i = 0; i < sn->n_layers; i++)
        if (dmn__width_layer(&sn->layers[i]))
            dmn__pm_labelled(&m, "evowidth_layer_parameters", "layer", sn->layers[i].name,
                             (double)sn->layers[i].params);
    dmn__pm_family(&m, "evowidth_layer_rank", "gauge",
                   "Directions the rank rule kept for each group at its last adaptation pass.");
    for (size_t i = 0; i < e->n_ranks; i++)
        dmn__pm_labelled(&m, "evowidth_layer_rank", "layer", e->rank_names[i], (double)e->ranks[i]);
    dmn__pm_one(&m, "evowidth_paused", "gauge", "1 while training is paused.",
                !strcmp(sn->state, "paused"));
    dmn__pm_one(&m, "evowidth_checkpoint_failures_total", "counter",
                "Checkpoints that failed to be written (daemon.on_checkpoint_failure).",
                (double)sn->ckpt_failures_total);
    dmn__pm_one(&m, "evowidth_checkpoint_failing", "gauge",
                "Checkpoints in a row that failed, up to now (0: the last one was written).",
                (double)sn->ckpt_failures);
    dmn__pm_one(&m, "evowidth_rollbacks_total", "counter",
                "Rollbacks to the last-known-good checkpoint after divergence.",
                (double)sn->rollbacks);
    dmn__pm_one(&m, "evowidth_last_checkpoint_step", "gauge",
                "Step of the newest checkpoint in the state dir.", (double)sn->last_ckpt_step);
    dmn__pm_one(&m, "evowidth_history_points", "gauge", "Points kept in the metric history.",
                (double)hist_n);
    dmn__pm_one(&m, "evowidth_start_time_seconds", "gauge",
                "When evowidthd started, in seconds since the Unix epoch.", s->start_unix);
    dmn__pm_family(&m, "evowidth_http_requests_total", "counter",
                   "HTTP responses sent, by status code (a stream counts when it opens).");
    for (int code = 100; code < 600; code++)
        if (st->requests_by_code[code]) {
            char c[8];
            snprintf(c, sizeof(c), "%d", code);
            dmn__pm_labelled(&m, "evowidth_http_requests_total", "code", c,
                             (double)st->requests_by_code[code]);
        }
    dmn__pm_one(&m, "evowidth_http_connections", "gauge", "HTTP connections open now.",
                (double)st->conns_current);
    dmn__pm_one(&m, "evowidth_http_connections_rejected_total", "counter",
                "Connections refused over daemon.max_connections.",
                (double)st->conns_rejected_total);
    dmn__pm_one(&m, "evowidth_stream_clients", "gauge", "GET /v1/stream clients connected.",
                (double)s->n_clients);
    dmn__pm_one(&m, "evowidth_stream_events_dropped_total", "counter",
                "Stream events not sent because a client's queue was full.",
                (double)s->stream_dropped);
    int rc =
        m.oom ? -ENOMEM : api_resp_text(r, "text/plain; version=0.0.4; charset=utf-8", m.buf, m.n);
    free(sn);
    free(st);
    free(m.buf);
    return rc < 0 ? api_resp_error(r, 503, NULL, "out of memory") : 200;
}

const struct api_route DMN_ROUTES[] = {
    {API_GET, "/v1/healthz", h_healthz, 0},
    {API_GET, "/v1/status", h_status, 0},
    {API_GET, "/v1/layers", h_layers, 0},
    {API_GET, "/v1/layers/{}/spectrum", h_spectrum, 0},
    {API_GET, "/v1/history", h_history, 0},
    {API_GET, "/v1/events", h_events, 0},
    {API_GET, "/v1/policy", h_policy_get, 0},
    {API_PATCH, "/v1/policy", h_policy_patch, API_MUTATING},
    {API_PATCH, "/v1/train", h_train_patch, API_MUTATING},
    {API_POST, "/v1/pause", h_pause, API_MUTATING},
    {API_POST, "/v1/resume", h_resume, API_MUTATING},
    {API_POST, "/v1/adapt", h_adapt, API_MUTATING},
    {API_POST, "/v1/checkpoint", h_checkpoint, API_MUTATING},
    {API_POST, "/v1/eval", h_eval, API_MUTATING},
    {API_POST, "/v1/stop", h_stop, API_MUTATING},
    {API_POST, "/v1/auth", h_auth, API_MUTATING},
    {API_GET, "/v1/stream", dmn__h_stream, 0},
    {API_GET, "/v1/metrics", h_metrics, 0},
    {API_GET, "/metrics", h_metrics, 0},
    {API_GET, "/healthz", h_healthz, 0},
    {API_GET, "/", dmn__h_page, 0},
    {API_GET, "/dashboard", dmn__h_page, 0},
    {API_GET, "/assets/{}", dmn__h_asset, 0},
};
const size_t DMN_N_ROUTES = sizeof(DMN_ROUTES) / sizeof(DMN_ROUTES[0]);
