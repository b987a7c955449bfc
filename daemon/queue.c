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

/* Copies event texts the trainer produced since the last call into the shared list. */
void dmn__sync_events(struct dmn_server *s)
{
    size_t have;
    pthread_mutex_lock(&s->mu);
    have = s->n_events;
    pthread_mutex_unlock(&s->mu);
    size_t total = dmn__adapt_n_events(s->t);
    for (size_t i = have; i < total; i++) {
        char *e = strdup(dmn__adapt_event(s->t, i));
        if (!e) return;
        pthread_mutex_lock(&s->mu);
        if (s->n_events == s->cap_events) {
            size_t cap = s->cap_events ? 2 * s->cap_events : 16;
            char **q = realloc(s->events, cap * sizeof(char *));
            if (!q) {
                pthread_mutex_unlock(&s->mu);
                free(e);
                return;
            }
            s->events = q;
            s->cap_events = cap;
        }
        s->events[s->n_events++] = e;
        pthread_mutex_unlock(&s->mu);
    }
}


/* Applies one command between steps; returns 1 when the trainer must stop. */
int dmn__apply(struct dmn_server *s, struct dmn_cmd *c)
{
    struct dmn_trainer *t = s->t;
    c->step = t->step;
    switch (c->kind) {
    case DMN_CMD_PAUSE: s->paused = 1; break;
    case DMN_CMD_RESUME: s->paused = 0; break;
    case DMN_CMD_ADAPT:
        c->n_spec = dmn__adapt_n_events(t); // events before this pass
        c->kept = dmn_trainer_adapt_now(t);
        c->rc = c->kept < 0 ? c->kept : 0;
        dmn__sync_events(s);
        break;
    case DMN_CMD_CHECKPOINT:
        c->rc = dmn__checkpoint_all(s, c->path, sizeof(c->path), c->err, sizeof(c->err));
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
        if (rc < 0) {
            dmn__log(s, "step %zu failed (%s); pausing", t->step,
                     rc == -EDOM ? "loss is not finite: lower the learning rate" : strerror(-rc));
            s->paused = 1;
        }
        dmn__sync_events(s);
        if (tk.checkpoint_due) {
            char path[1024];
            if (dmn__checkpoint_all(s, path, sizeof(path), err, sizeof(err)) < 0)
                dmn__log(s, "checkpoint failed: %s", err);
            else if (dmn_trainer_done(t))
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
    if (dmn__checkpoint_all(s, path, sizeof(path), err, sizeof(err)) < 0)
        dmn__log(s, "final checkpoint failed: %s", err);
    else
        dmn__log(s, "stopped at step %zu; checkpoint %s", t->step, path);
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
