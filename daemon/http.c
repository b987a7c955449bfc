/* daemon/http.c: evowidthd's HTTP handlers and /metrics (loop thread).
 *
 * Reads (status, history, events, policy, metrics) answer from the snapshot the trainer
 * publishes; PATCH validates a copy of the effective config, logs the change
 * (daemon/statedir.c) and sends the new config to the trainer; everything that needs the
 * model (layers, spectrum, adapt, checkpoint, eval) is queued and answered when the trainer
 * hands it back (dmn__wake_cb). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

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
        cJSON_AddNumberToObject(o, "flops", (double)l[i].flops);
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
    } else {
        cJSON_AddNumberToObject(o, "step", (double)c->step);
        switch (c->kind) {
        case DMN_CMD_CHECKPOINT:
            cJSON_AddStringToObject(o, "path", c->path);
            break;
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
        case DMN_CMD_STOP:
            cJSON_AddStringToObject(o, "state", "stopped");
            break;
        default:
            break;
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

static int h_status(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    struct dmn_snapshot *sn = malloc(sizeof(*sn));
    if (!sn) return api_resp_error(r, 503, NULL, "out of memory");
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
    cJSON_AddNumberToObject(o, "flops_per_sample", (double)sn->flops);
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
    cJSON_AddNumberToObject(o, "checkpoint_failures", (double)sn->ckpt_failures);
    cJSON_AddNumberToObject(o, "checkpoint_failures_total", (double)sn->ckpt_failures_total);
    cJSON_AddItemToObject(o, "last_checkpoint_error", sn->ckpt_error[0]
                                                          ? cJSON_CreateString(sn->ckpt_error)
                                                          : cJSON_CreateNull());
    cJSON_AddNumberToObject(o, "rollbacks", (double)sn->rollbacks);
    if (!strcmp(sn->state, "paused") && sn->pause_reason[0])
        cJSON_AddStringToObject(o, "pause_reason", sn->pause_reason);
    free(sn);
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

static int h_history(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    char buf[32];
    long points = (long)s->cfg.daemon.history_points;
    if (api_req_query(q, "points", buf, sizeof(buf)) >= 0) {
        char *end;
        points = strtol(buf, &end, 10);
        if (*end || points < 1 || points > 100000)
            return api_resp_error(r, 400, NULL, "points: \"%s\" is not an integer in [1, 100000]", buf);
    }
    pthread_mutex_lock(&s->mu);
    size_t n = s->hist_n;
    struct dmn_hist *h = malloc((n + 1) * sizeof(*h));
    if (h)
        for (size_t i = 0; i < n; i++)
            h[i] = s->hist[(s->hist_pos + DMN_HIST_CAP - n + i) % DMN_HIST_CAP];
    pthread_mutex_unlock(&s->mu);
    if (!h) return api_resp_error(r, 503, NULL, "out of memory");
    // Downsample to min(n, points) entries evenly spaced over the series, the last included.
    size_t want = n < (size_t)points ? n : (size_t)points;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "points_total", (double)n);
    cJSON *arr = cJSON_AddArrayToObject(o, "history");
    for (size_t k = 0; k < want; k++) {
        size_t i = want == 1 ? n - 1 : (size_t)((double)k * (double)(n - 1) / (double)(want - 1) + 0.5);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "time", h[i].time);
        cJSON_AddNumberToObject(e, "step", (double)h[i].step);
        cJSON_AddItemToObject(e, "loss", dmn__num_or_null(h[i].loss));
        cJSON_AddItemToObject(e, "accuracy", dmn__num_or_null(h[i].acc));
        cJSON_AddItemToObject(e, "val_loss", dmn__num_or_null(h[i].val_loss));
        cJSON_AddNumberToObject(e, "lr", h[i].lr);
        cJSON_AddNumberToObject(e, "params", (double)h[i].params);
        cJSON_AddNumberToObject(e, "samples_per_second", h[i].sps);
        cJSON_AddItemToArray(arr, e);
    }
    free(h);
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
        return api_resp_error(r, 422, NULL, "the body must be a JSON object of %s settings", section);
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
    cJSON_Delete(body);
    if (dmn__push_config(s) < 0) return api_resp_error(r, 503, NULL, "out of memory");
    cJSON *o = cfg_section_to_json(&s->cfg, section);
    if (!strcmp(section, "train")) {
        cJSON_AddNumberToObject(o, "lr", s->cfg.optimizer.lr);
        cJSON_AddNumberToObject(o, "group_lasso", s->cfg.optimizer.group_lasso);
    }
    api_resp_json(r, o);
    return 200;
}

static int h_policy_patch(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__patch(ctx, q, r, "adapt", "PATCH /v1/policy");
}

static int h_train_patch(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__patch(ctx, q, r, "train", "PATCH /v1/train");
}

static int dmn__simple(struct dmn_server *s, struct api_resp *r, enum dmn_cmd_kind k,
                       const char *state)
{
    if (s->stopping) return api_resp_error(r, 409, NULL, "the trainer is stopping");
    struct dmn_cmd *c = dmn__cmd_new(k);
    if (!c) return api_resp_error(r, 503, NULL, "out of memory");
    dmn__enqueue(s, c);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", state);
    api_resp_json(r, o);
    return k == DMN_CMD_STOP ? 202 : 200;
}

static int h_pause(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__simple(ctx, r, DMN_CMD_PAUSE, "paused");
}

static int h_resume(struct api_req *q, struct api_resp *r, void *ctx)
{
    return dmn__simple(ctx, r, DMN_CMD_RESUME, "training");
}

static int h_stop(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    int rc = dmn__simple(s, r, DMN_CMD_STOP, "stopping");
    if (rc == 202) s->stopping = 1;
    return rc;
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

static int h_metrics(struct api_req *q, struct api_resp *r, void *ctx)
{
    struct dmn_server *s = ctx;
    struct dmn_snapshot *sn = malloc(sizeof(*sn));
    char *buf = malloc(16384);
    if (!sn || !buf) {
        free(sn);
        free(buf);
        return api_resp_error(r, 503, NULL, "out of memory");
    }
    pthread_mutex_lock(&s->mu);
    *sn = s->snap;
    pthread_mutex_unlock(&s->mu);
    struct api_stats st;
    api_server_stats(s->api, &st);
    size_t n = 0, cap = 16384;
#define PM(...) n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__)
    PM("# HELP evowidth_step Optimizer steps taken.\n# TYPE evowidth_step counter\n"
       "evowidth_step %zu\n", sn->step);
    PM("# HELP evowidth_loss Mean training loss of the last window.\n# TYPE evowidth_loss gauge\n"
       "evowidth_loss %.6g\n", sn->loss);
    PM("# TYPE evowidth_accuracy gauge\nevowidth_accuracy %.6g\n", sn->acc);
    PM("# TYPE evowidth_val_loss gauge\nevowidth_val_loss %.6g\n", sn->val_loss);
    PM("# TYPE evowidth_learning_rate gauge\nevowidth_learning_rate %.6g\n", sn->lr);
    PM("# TYPE evowidth_samples_per_second gauge\nevowidth_samples_per_second %.6g\n", sn->sps);
    PM("# TYPE evowidth_params gauge\nevowidth_params %zu\n", sn->params);
    PM("# TYPE evowidth_adaptations_total counter\nevowidth_adaptations_total %zu\n", sn->n_events);
    PM("# TYPE evowidth_paused gauge\nevowidth_paused %d\n", !strcmp(sn->state, "paused"));
    PM("# HELP evowidth_checkpoint_failures_total Checkpoints that failed.\n"
       "# TYPE evowidth_checkpoint_failures_total counter\nevowidth_checkpoint_failures_total %zu\n",
       sn->ckpt_failures_total);
    PM("# TYPE evowidth_checkpoint_failing gauge\nevowidth_checkpoint_failing %zu\n",
       sn->ckpt_failures);
    PM("# TYPE evowidth_rollbacks_total counter\nevowidth_rollbacks_total %zu\n", sn->rollbacks);
    PM("# TYPE evowidth_layer_width gauge\n");
    for (size_t i = 0; i < sn->n_layers; i++)
        if (!strcmp(sn->layers[i].kind, "dense") || !strcmp(sn->layers[i].kind, "conv") ||
            !strcmp(sn->layers[i].kind, "res"))
            PM("evowidth_layer_width{layer=\"%s\"} %zu\n", sn->layers[i].name, sn->layers[i].width);
    PM("# TYPE evowidth_http_requests_total counter\n");
    for (int k = 1; k <= 5; k++)
        PM("evowidth_http_requests_total{class=\"%dxx\"} %llu\n", k,
           (unsigned long long)st.requests_by_class[k]);
    PM("# TYPE evowidth_http_connections gauge\nevowidth_http_connections %llu\n",
       (unsigned long long)st.conns_current);
    PM("# TYPE evowidth_http_rejected_total counter\nevowidth_http_rejected_total %llu\n",
       (unsigned long long)st.conns_rejected_total);
#undef PM
    int rc = api_resp_text(r, "text/plain; version=0.0.4; charset=utf-8", buf, n < cap ? n : cap - 1);
    free(sn);
    free(buf);
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
    {API_GET, "/v1/metrics", h_metrics, 0},
    {API_GET, "/metrics", h_metrics, 0},
    {API_GET, "/healthz", h_healthz, 0},
};
const size_t DMN_N_ROUTES = sizeof(DMN_ROUTES) / sizeof(DMN_ROUTES[0]);
