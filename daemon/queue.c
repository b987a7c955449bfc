/* daemon/queue.c: evowidthd's command queue and trainer thread.
 *
 * The loop thread queues commands (dmn__enqueue); the trainer thread takes the whole FIFO
 * between two optimizer steps, applies each command, hands the ones that need an answer
 * back on the `done` list (daemon/http.c answers them), steps, evaluates, checkpoints
 * (daemon/statedir.c) and republishes the status snapshot. See daemon/server_internal.h for
 * what the two threads share. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "daemon/dist.h"
#include "daemon/server_internal.h"
#include "svd_adapt/svd_adapt.h"

static void dmn__layer_infos(const struct net *n, struct dmn_layer_info *out, size_t cap,
                             size_t *count, int with_spectra)
{
    float *s = with_spectra ? malloc(4096 * sizeof(float)) : NULL;
    size_t k = 0;
    for (size_t i = 0; i < n->n_layers && k < cap; i++) {
        const struct net_layer *l = &n->layers[i];
        struct dmn_layer_info *d = &out[k++];
        memset(d, 0, sizeof(*d));
        snprintf(d->name, sizeof(d->name), "%s", l->spec.name);
        d->kind = net_kind_name(l->spec.kind);
        struct net_layer_info li;
        net_layer_info(n, i, &li);
        d->width = li.width;
        d->out = l->out.c;
        d->rank = l->spec.rank;
        d->params = li.params;
        d->macs = li.macs;
        if (s && (l->spec.kind == NET_DENSE || l->spec.kind == NET_CONV)) {
            long r = svd_layer_spectrum(n, i, s, 4096);
            for (long j = 0; j < r && j < 8; j++) d->top[d->n_top++] = s[j];
        }
    }
    *count = k;
    free(s);
}

// ---- trainer thread -------------------------------------------------------------------------

/* Seconds since the Unix epoch (history points and evaluations outlive the process). */
static double dmn__unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A checkpoint, then the history that goes with it (daemon/history.c). */
static int dmn__checkpoint_all(struct dmn_server *s, char *path, size_t pathlen, char *err,
                               size_t errlen)
{
    if (!dmn_dist_is_root()) return 0; // rank 0 writes the run's checkpoints
    int rc = dmn__checkpoint(s, path, pathlen, err, errlen);
    char herr[256];
    if (rc == 0 && dmn__hist_save(s, herr, sizeof(herr)) < 0)
        dmn__log(s, "history not saved: %s", herr);
    return rc;
}

void dmn__publish(struct dmn_server *s, int add_history)
{
    struct dmn_trainer *t = s->t;
    struct dmn_snapshot *sn = malloc(sizeof(*sn));
    if (!sn) return;
    memset(sn, 0, sizeof(*sn));
    snprintf(sn->state, sizeof(sn->state), "%s",
             dmn_trainer_done(t) ? "done"
             : s->paused         ? "paused"
                                 : "training");
    sn->step = t->step;
    sn->total_steps = t->total_steps;
    sn->steps_per_epoch = t->steps_per_epoch;
    // 1-based and counting the epoch in progress, as the progress lines do.
    sn->epoch =
        (t->steps_per_epoch ? t->step / t->steps_per_epoch : 0) + (t->step < t->total_steps);
    sn->epochs = t->cfg.train.epochs;
    if (t->run_n) {
        t->last_loss = t->run_loss / (double)t->run_n;
        t->last_acc = (double)t->run_correct / (double)t->run_n;
        t->run_loss = 0;
        t->run_correct = t->run_n = 0;
        s->have_window = 1;
    }
    // Nothing measured yet (a new run, or just resumed): unknown, not zero.
    sn->loss = s->have_window ? t->last_loss : NAN;
    sn->acc = s->have_window ? t->last_acc : NAN;
    sn->lr = net_sched_lr(&t->sched, t->step); // in effect now, so PATCH /v1/train shows at once
    sn->sps =
        t->train_seconds > 0 ? (double)(t->step * t->cfg.train.batch_size) / t->train_seconds : 0;
    sn->eta = sn->sps > 0 ? (double)((t->total_steps > t->step ? t->total_steps - t->step : 0) *
                                     t->cfg.train.batch_size) /
                                sn->sps
                          : 0;
    sn->val_loss = t->val_loss;
    sn->val_acc = t->val_acc;
    sn->params = t->net->n_params;
    sn->initial_params = t->initial_params;
    sn->macs = net_macs(t->net);
    sn->train_seconds = t->train_seconds;
    sn->adapt_seconds = t->adapt_seconds;
    sn->uptime = dmn_now() - s->start_time;
    dmn__layer_infos(t->net, sn->layers, CFG_MAX_LAYERS, &sn->n_layers, 0);
    pthread_mutex_lock(&s->mu);
    memcpy(sn->last_ckpt, s->snap.last_ckpt, sizeof(sn->last_ckpt));
    sn->last_ckpt_step = s->snap.last_ckpt_step;
    sn->ckpt_failures = s->snap.ckpt_failures;
    sn->ckpt_failures_total = s->snap.ckpt_failures_total;
    sn->rollbacks = s->snap.rollbacks;
    memcpy(sn->ckpt_error, s->snap.ckpt_error, sizeof(sn->ckpt_error));
    if (s->paused) memcpy(sn->pause_reason, s->snap.pause_reason, sizeof(sn->pause_reason));
    sn->n_events = s->n_events;
    s->snap = *sn;
    int eval = s->eval_new;
    s->eval_new = 0;
    if (eval) {
        s->evals[s->n_evals % DMN_EVAL_RING] =
            (struct dmn_evalrec){t->step, dmn__unix_now(), t->val_loss, t->val_acc};
        s->n_evals++;
    }
    if (add_history || eval) {
        struct dmn_hist p = {dmn__unix_now(), sn->step,    sn->params, sn->loss, sn->acc, sn->lr,
                             sn->val_loss,    sn->val_acc, sn->sps,    {0},      eval};
        size_t nl = dmn__hist_layer_names(sn, NULL, p.widths);
        struct dmn_history *h = &s->hist;
        // A width change always makes a point, so the widths chart shows every step it took.
        int moved = h->n && nl == h->n_layers &&
                    memcmp(p.widths, h->pts[h->n - 1].widths, nl * sizeof(p.widths[0])) != 0;
        dmn__hist_add(h, &p, eval || moved);
    }
    pthread_mutex_unlock(&s->mu);
    free(sn);
}

/* Copies event texts the trainer produced since the last call into the shared ring. */
void dmn__sync_events(struct dmn_server *s)
{
    size_t have;
    pthread_mutex_lock(&s->mu);
    have = s->n_events;
    pthread_mutex_unlock(&s->mu);
    size_t total = dmn__adapt_n_events(s->t);
    if (total < have) have = total; // (cannot happen: a rollback keeps the count)
    for (size_t i = total - have > DMN_EVENT_RING ? total - DMN_EVENT_RING : have; i < total; i++) {
        const char *t = dmn__adapt_event(s->t, i);
        char *e = t ? strdup(t) : NULL;
        pthread_mutex_lock(&s->mu);
        if (e) {
            if (s->ev_n == DMN_EVENT_RING) {
                free(s->events[s->ev_head]);
                s->events[s->ev_head] = e;
                s->ev_head = (s->ev_head + 1) % DMN_EVENT_RING;
            } else {
                s->events[(s->ev_head + s->ev_n++) % DMN_EVENT_RING] = e;
            }
        }
        s->n_events = i + 1;
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    s->n_events = total;
    pthread_mutex_unlock(&s->mu);
}

/* Pauses the run for a reason shown in /v1/status (trainer thread). */
static void dmn__pause(struct dmn_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void dmn__pause(struct dmn_server *s, const char *fmt, ...)
{
    char why[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    s->paused = 1;
    pthread_mutex_lock(&s->mu);
    snprintf(s->snap.pause_reason, sizeof(s->snap.pause_reason), "%s", why);
    pthread_mutex_unlock(&s->mu);
    dmn__log(s, "pausing: %s", why);
}

/* Writes a checkpoint and keeps the failure accounting: counts, the last error (status,
 * metrics), a log line at most once a minute, and after checkpoint_failure_limit failures
 * in a row pauses the run or asks it to stop (*stop). Trainer thread. */
static int dmn__checkpoint_counted(struct dmn_server *s, char *path, size_t pathlen, int *stop)
{
    char err[512];
    int rc = dmn__checkpoint_all(s, path, pathlen, err, sizeof(err));
    struct dmn_trainer *t = s->t;
    pthread_mutex_lock(&s->mu);
    size_t before = s->snap.ckpt_failures;
    if (rc == 0) {
        s->snap.ckpt_failures = 0;
        s->snap.ckpt_error[0] = 0;
    } else {
        s->snap.ckpt_failures++;
        s->snap.ckpt_failures_total++;
        snprintf(s->snap.ckpt_error, sizeof(s->snap.ckpt_error), "%s", err);
    }
    size_t now_failing = s->snap.ckpt_failures;
    pthread_mutex_unlock(&s->mu);
    if (rc == 0) {
        if (before) dmn__log(s, "checkpoint written again (%s) after %zu failure(s)", path, before);
        s->ckpt_unlogged = 0;
        return 0;
    }
    double now = dmn_now();
    if (before == 0 || now - s->ckpt_last_log >= 60.0) {
        if (s->ckpt_unlogged)
            dmn__log(s,
                     "checkpoint failed: %s (%zu more failure(s) not logged; next report in "
                     "60 s)",
                     err, s->ckpt_unlogged);
        else
            dmn__log(s, "checkpoint failed: %s", err);
        s->ckpt_last_log = now;
        s->ckpt_unlogged = 0;
    } else {
        s->ckpt_unlogged++;
    }
    if (stop && now_failing >= t->cfg.daemon.checkpoint_failure_limit && !s->paused) {
        if (t->cfg.daemon.on_checkpoint_failure == CFG_CKFAIL_STOP) {
            dmn__log(s, "%zu checkpoints in a row failed: stopping (daemon.on_checkpoint_failure)",
                     now_failing);
            *stop = 1;
            pthread_mutex_lock(&s->mu);
            s->final_ckpt_failed = 1; // the exit code says so even if the last one works
            pthread_mutex_unlock(&s->mu);
        } else {
            dmn__pause(s,
                       "%zu checkpoints in a row failed (%s): fix the state dir, then POST "
                       "/v1/resume",
                       now_failing, err);
        }
    }
    return rc;
}

/* The limit above which a validation loss means divergence: divergence_ratio x the best,
 * and never below ln(classes) (a uniform guess), so a tiny best loss does not make an
 * ordinary bump look like divergence. */
static double dmn__val_limit(const struct dmn_server *s)
{
    const struct dmn_trainer *t = s->t;
    double floor_ = log((double)(t->net->n_classes > 1 ? t->net->n_classes : 2));
    double r = t->cfg.daemon.divergence_ratio * s->best_val;
    return isfinite(s->best_val) && r > floor_ ? r : isfinite(s->best_val) ? floor_ : INFINITY;
}

/* After a validation pass: a finite, non-exploding loss is a good point (a checkpoint is
 * taken and kept as good-*.evow, at most every checkpoint_every_steps); a loss beyond the
 * limit is divergence (1). Trainer thread. */
static int dmn__judge_val(struct dmn_server *s, int *stop)
{
    struct dmn_trainer *t = s->t;
    double v = t->val_loss;
    if (!isfinite(v) || v > dmn__val_limit(s)) return 1;
    if (!isfinite(s->best_val) || v < s->best_val) s->best_val = v;
    size_t every = t->cfg.daemon.checkpoint_every_steps;
    if (s->good_valid && t->step >= s->good_step && every && t->step - s->good_step < every)
        return 0;
    char path[1024], err[512];
    if (dmn__checkpoint_counted(s, path, sizeof(path), stop) == 0) {
        if (dmn__mark_good(s, path, t->step, err, sizeof(err)) < 0)
            dmn__log(s, "last-known-good checkpoint not kept: %s", err);
        else
            s->rollbacks_in_row = 0;
    }
    return 0;
}

/* Divergence: back to the last-known-good checkpoint with a lower learning rate, or pause
 * when there is none, the rate cannot go lower or max_rollbacks in a row did not help.
 * Trainer thread: nothing here parses JSON (the live config is reused). */
static void dmn__diverged(struct dmn_server *s, const char *why, int *stop)
{
    struct dmn_trainer *t = s->t;
    const struct cfg_daemon *dc = &t->cfg.daemon;
    double lr = t->cfg.optimizer.lr, lr2 = lr * dc->rollback_lr_factor;
    if (lr2 < t->cfg.schedule.min_lr) lr2 = t->cfg.schedule.min_lr;
    if (dc->rollback_lr_factor <= 0) {
        dmn__pause(s,
                   "diverged at step %zu (%s); daemon.rollback_lr_factor is 0: lower the "
                   "learning rate",
                   t->step, why);
        return;
    }
    if (!s->good_valid) {
        dmn__pause(s,
                   "diverged at step %zu (%s) before any good checkpoint: lower the "
                   "learning rate",
                   t->step, why);
        return;
    }
    if (s->rollbacks_in_row >= dc->max_rollbacks || !(lr2 > 0 && lr2 < lr)) {
        dmn__pause(s,
                   "diverged at step %zu (%s) after %zu rollback(s) in a row: lower the "
                   "learning rate",
                   t->step, why, s->rollbacks_in_row);
        return;
    }
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    char good[1024], err[512];
    dmn__good_path(s, good, sizeof(good));
    struct dmn_trainer *n = NULL;
    int rc = cfg ? 0 : -ENOMEM;
    if (cfg) {
        *cfg = t->cfg;
        cfg->optimizer.lr = lr2;
        rc = dmn_trainer_load_as(&n, good, cfg, err, sizeof(err));
    } else {
        snprintf(err, sizeof(err), "out of memory");
    }
    free(cfg);
    if (rc < 0) {
        dmn__pause(s, "diverged at step %zu (%s); rolling back failed: %s", t->step, why, err);
        return;
    }
    const size_t from = t->step;
    n->log = t->log;
    n->events = t->events;
    n->change_seq = t->change_seq;
    n->last_log_time = dmn_now();
    dmn__adapt_set_count(n, dmn__adapt_n_events(t)); // one event history, seq goes on
    net_set_threads(n->cfg.train.threads);
    s->t = n;
    dmn_trainer_destroy(t);
    char gone[512];
    dmn__discard_after(s, n->step, gone, sizeof(gone));
    s->rollbacks_in_row++;
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "kind", "rollback");
    cJSON_AddNumberToObject(ev, "step", (double)n->step);
    cJSON_AddNumberToObject(ev, "from_step", (double)from);
    cJSON_AddStringToObject(ev, "reason", why);
    cJSON_AddNumberToObject(ev, "lr_before", lr);
    cJSON_AddNumberToObject(ev, "lr_after", lr2);
    if (isfinite(n->val_loss)) cJSON_AddNumberToObject(ev, "good_val_loss", n->val_loss);
    cJSON_AddStringToObject(ev, "checkpoint", good);
    cJSON_AddStringToObject(ev, "discarded_steps", gone);
    dmn__adapt_record(n, ev);
    dmn__sync_events(s);
    dmn__log(s,
             "diverged at step %zu (%s): rolled back to the last-known-good checkpoint at "
             "step %zu, lr %g -> %g",
             from, why, n->step, lr, lr2);
    pthread_mutex_lock(&s->mu);
    s->snap.rollbacks++;
    pthread_mutex_unlock(&s->mu);
    char path[1024];
    dmn__checkpoint_counted(s, path, sizeof(path), stop); // the new timeline's first one
    // The loop thread records the lower rate as a change, so PATCHes build on it.
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_ROLLBACK);
    if (c) {
        c->loss = lr2;
        c->step = n->step;
        pthread_mutex_lock(&s->mu);
        c->next = s->done;
        s->done = c;
        pthread_mutex_unlock(&s->mu);
        uv_async_send(&s->wake);
    }
}

/* Applies one command between steps; returns 1 when the trainer must stop. */
int dmn__apply(struct dmn_server *s, struct dmn_cmd *c)
{
    struct dmn_trainer *t = s->t;
    c->step = t->step;
    switch (c->kind) {
    case DMN_CMD_PAUSE:
        s->paused = 1;
        pthread_mutex_lock(&s->mu);
        snprintf(s->snap.pause_reason, sizeof(s->snap.pause_reason), "POST /v1/pause");
        pthread_mutex_unlock(&s->mu);
        break;
    case DMN_CMD_RESUME: s->paused = 0; break;
    case DMN_CMD_ADAPT:
        c->n_spec = dmn__adapt_n_events(t); // events before this pass
        c->kept = dmn_trainer_adapt_now(t);
        c->rc = c->kept < 0 ? c->kept : 0;
        dmn__sync_events(s);
        break;
    case DMN_CMD_CHECKPOINT:
        c->rc = dmn__checkpoint_counted(s, c->path, sizeof(c->path), NULL);
        if (c->rc < 0) {
            pthread_mutex_lock(&s->mu);
            snprintf(c->err, sizeof(c->err), "%.*s", (int)sizeof(c->err) - 1, s->snap.ckpt_error);
            pthread_mutex_unlock(&s->mu);
        }
        break;
    case DMN_CMD_EVAL: {
        struct net_eval ev;
        const struct net_dataset *d = t->val.n ? &t->val : &t->test;
        c->rc = dmn_trainer_eval(t, d, &ev);
        if (c->rc == 0) {
            c->loss = ev.loss;
            c->acc = ev.accuracy;
            t->val_loss = ev.loss;
            t->val_acc = ev.accuracy;
            s->eval_new = 1;
            net_eval_free(&ev);
        }
        break;
    }
    case DMN_CMD_STOP: return 1;
    case DMN_CMD_ROLLBACK: // a notice to the loop, never queued to the trainer
        break;
    case DMN_CMD_CONFIG:
        // Validated on the loop thread already; the table copies every runtime knob.
        c->rc = dmn_trainer_set_runtime(t, &c->cfg, c->err, sizeof(c->err));
        if (c->rc == 0)
            t->change_seq = c->seq;
        else
            dmn__log(s, "runtime settings not applied: %s", c->err);
        break;
    case DMN_CMD_LAYERS:
        c->layers = calloc(CFG_MAX_LAYERS, sizeof(*c->layers));
        if (!c->layers) {
            c->rc = -ENOMEM;
            break;
        }
        dmn__layer_infos(t->net, c->layers, CFG_MAX_LAYERS, &c->n_layers, 1);
        break;
    case DMN_CMD_SPECTRUM: {
        long li = net_layer_find(t->net, c->name);
        if (li < 0 || (t->net->layers[li].spec.kind != NET_DENSE &&
                       t->net->layers[li].spec.kind != NET_CONV)) {
            c->rc = -ENOENT;
            snprintf(c->err, sizeof(c->err), "no dense or conv layer named \"%s\"", c->name);
            break;
        }
        c->spectrum = malloc(4096 * sizeof(float));
        long r = c->spectrum ? svd_layer_spectrum(t->net, (size_t)li, c->spectrum, 4096) : -ENOMEM;
        c->rc = r < 0 ? (int)r : 0;
        c->n_spec = r < 0 ? 0 : (size_t)r;
        if (r < 0) snprintf(c->err, sizeof(c->err), "SVD failed");
        break;
    }
    }
    return 0;
}

static void dmn__finish(struct dmn_server *s, struct dmn_cmd *c)
{
    if (!c->reply) {
        free(c);
        return;
    }
    pthread_mutex_lock(&s->mu);
    c->next = s->done;
    s->done = c;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
}

void *dmn__trainer_main(void *arg)
{
    struct dmn_server *s = arg;
    struct dmn_trainer *t = s->t;
    char err[512];
    int stop = 0;
    size_t last_pub_step = (size_t)-1;
    double last_pub = 0;
    t->last_log_time = dmn_now();
    net_set_threads(t->cfg.train.threads); // this thread's OpenMP pool and FP mode
    while (!stop) {
        t = s->t; // a rollback replaces the trainer
        pthread_mutex_lock(&s->mu);
        struct dmn_cmd *q = s->q_head;
        s->q_head = s->q_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        q = dmn__dist_commands(s, q); // several MPI ranks: the same batch on every rank
        // Apply the whole batch, republish the snapshot, then answer: a reader who got the
        // answer sees the command's effect in /v1/status (and commands after a stop are
        // refused).
        struct dmn_cmd *fin = NULL, **fin_tail = &fin;
        int applied = q != NULL;
        while (q) {
            struct dmn_cmd *next = q->next;
            q->next = NULL;
            if (stop) {
                q->rc = -ECANCELED;
                snprintf(q->err, sizeof(q->err), "the trainer is stopping");
            } else {
                stop |= dmn__apply(s, q);
            }
            *fin_tail = q;
            fin_tail = &q->next;
            q = next;
        }
        if (applied) {
            dmn__publish(s, 0);
            last_pub_step = t->step;
            last_pub = dmn_now();
        }
        while (fin) {
            struct dmn_cmd *next = fin->next;
            dmn__finish(s, fin);
            fin = next;
        }
        if (stop) break;
        if (s->paused || dmn_trainer_done(t)) {
            if (last_pub_step != t->step || dmn_now() - last_pub > 1.0) {
                dmn__publish(s, 0);
                last_pub_step = t->step;
                last_pub = dmn_now();
            }
            pthread_mutex_lock(&s->mu);
            if (!s->q_head && dmn_dist_is_root()) { // other ranks wait for rank 0's batch
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 200 * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            }
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        struct dmn_tick tk;
        int rc = dmn_trainer_tick(t, &tk);
        dmn__sync_events(s);
        if (rc == -EDOM) {
            dmn__diverged(s, "the training loss is not finite", &stop);
            t = s->t;
            continue;
        }
        if (rc < 0) dmn__pause(s, "step %zu failed: %s", t->step, strerror(-rc));
        if (tk.evaluated && dmn__judge_val(s, &stop)) {
            char why[96];
            snprintf(why, sizeof(why), "validation loss %g", t->val_loss);
            dmn__diverged(s, why, &stop);
            t = s->t;
            continue;
        }
        if (tk.checkpoint_due && !stop &&
            !(s->snap.last_ckpt_step == t->step && s->snap.last_ckpt[0])) { // (not twice)
            char path[1024];
            if (dmn__checkpoint_counted(s, path, sizeof(path), &stop) == 0 && dmn_trainer_done(t))
                dmn__log(s, "training done at step %zu; final checkpoint %s", t->step, path);
        }
        if (tk.evaluated) s->eval_new = 1;
        double now = dmn_now();
        if (now - last_pub > 0.1 || dmn_trainer_done(t) || s->eval_new) {
            dmn__publish(s, 1);
            last_pub = now;
            last_pub_step = t->step;
        }
    }
    // Stop: the step in progress has finished; write the final checkpoint.
    char path[1024];
    t = s->t;
    if (dmn__checkpoint_all(s, path, sizeof(path), err, sizeof(err)) < 0) {
        dmn__log(s, "final checkpoint failed: %s", err);
        pthread_mutex_lock(&s->mu);
        s->final_ckpt_failed = 1;
        pthread_mutex_unlock(&s->mu);
    } else {
        dmn__log(s, "stopped at step %zu; checkpoint %s", t->step, path);
    }
    dmn__publish(s, 0);
    pthread_mutex_lock(&s->mu);
    s->trainer_done = 1;
    snprintf(s->snap.state, sizeof(s->snap.state), "stopped");
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
    return NULL;
}

// ---- loop thread: commands ------------------------------------------------------------------

struct dmn_cmd *dmn__cmd_new(enum dmn_cmd_kind k)
{
    struct dmn_cmd *c = calloc(1, sizeof(*c));
    if (c) c->kind = k;
    return c;
}

void dmn__enqueue(struct dmn_server *s, struct dmn_cmd *c)
{
    pthread_mutex_lock(&s->mu);
    if (s->q_tail)
        s->q_tail->next = c;
    else
        s->q_head = c;
    s->q_tail = c;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}


int dmn__push_config(struct dmn_server *s)
{
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_CONFIG);
    if (!c) return -ENOMEM;
    c->cfg = s->cfg;
    c->seq = s->change_seq;
    dmn__enqueue(s, c);
    return 0;
}
