/* daemon/server.c: evowidthd, the training daemon.
 *
 * DESIGN (style.md R9). Two threads with one owner each:
 *   - the loop thread (the caller of dmn_server_run) owns the libuv loop, the API server,
 *     every use of cJSON, the effective config copy that PATCH requests edit, and the
 *     change log;
 *   - the trainer thread owns the struct dmn_trainer (model, arenas, data) and nothing else.
 * They share exactly two things, both under `mu`:
 *   1. a FIFO of commands (loop -> trainer), applied only between two optimizer steps. A
 *      command that needs an answer carries a plain-C result the trainer fills; the trainer
 *      moves it to the `done` list and wakes the loop with uv_async_send. Sends coalesce, so
 *      the async callback drains the whole list. The loop turns results into JSON responses.
 *   2. a status snapshot (plain struct, no pointers) the trainer republishes after steps,
 *      plus the metric history ring and the adaptation event texts, which the loop copies.
 *
 * Checkpoints are full run checkpoints (daemon/state.c) named ckpt-<step>.evow in the state
 * dir, written atomically; on start the newest one that loads is resumed, a corrupt one is
 * reported and skipped. Accepted changes to policy or training settings are appended to
 * changes.jsonl (time, step, sequence number, the change) and fsynced; a checkpoint records
 * the sequence number it includes, so on restart later changes are replayed.
 *
 * Shutdown: SIGTERM / SIGINT queue a stop; the trainer finishes its step, checkpoints and
 * ends; the loop then stops the API, closes every handle, and uv_loop_close must return 0.
 * A second signal exits at once (_exit: the one deliberate exception to "no exit outside
 * main", since the process is being killed). SIGHUP reloads the runtime knobs of the config
 * file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "api/api.h"
#include "daemon/daemon_internal.h"
#include "svd_adapt/svd_adapt.h"

#define DMN_HIST_CAP 65536
#define dmn__container_of(p, T, f) ((T *)((char *)(p) - offsetof(T, f)))
#define DMN_KEEP_CKPTS 3

// ---- commands -----------------------------------------------------------------------------

enum dmn_cmd_kind {
    DMN_CMD_PAUSE, DMN_CMD_RESUME, DMN_CMD_ADAPT, DMN_CMD_CHECKPOINT, DMN_CMD_EVAL,
    DMN_CMD_STOP, DMN_CMD_CONFIG, DMN_CMD_LAYERS, DMN_CMD_SPECTRUM,
};

struct dmn_layer_info {
    char name[NET_NAME_MAX];
    const char *kind;
    size_t width, out, rank, params, flops;
    size_t n_top;
    float top[8];
};

struct dmn_cmd {
    enum dmn_cmd_kind kind;
    struct dmn_config cfg;      // DMN_CMD_CONFIG: the new effective config ...
    uint64_t seq;               // ... which includes the changes up to this sequence number
    char name[NET_NAME_MAX + 8];// DMN_CMD_SPECTRUM: layer name
    struct api_async *reply;    // loop-owned; NULL for fire-and-forget
    // results, written by the trainer
    int rc;
    char err[256];
    size_t step;
    char path[1024];
    double loss, acc, val_loss, val_acc;
    int kept;
    size_t n_layers;
    struct dmn_layer_info *layers; // DMN_CMD_LAYERS (n_layers), malloc'ed by the trainer
    float *spectrum;               // DMN_CMD_SPECTRUM (n_spec)
    size_t n_spec;
    struct dmn_cmd *next;
};

/* One point of the metric history. */
struct dmn_hist {
    double time;
    size_t step, params;
    double loss, acc, lr, val_loss, val_acc, sps;
};

struct dmn_snapshot {
    char state[16];
    size_t step, total_steps, epoch, epochs, steps_per_epoch;
    double loss, acc, lr, sps, eta, val_loss, val_acc;
    size_t params, initial_params, flops;
    double train_seconds, adapt_seconds, uptime;
    size_t n_layers;
    struct dmn_layer_info layers[CFG_MAX_LAYERS];
    size_t last_ckpt_step;
    char last_ckpt[1024];
    size_t n_events;
};

struct dmn_server {
    struct dmn_server_opts opts;
    struct dmn_config cfg;     // loop thread: the effective config (PATCH edits this)
    uint64_t change_seq;       // loop thread: changes accepted so far
    char token[256];
    // Own copies of the start-up paths: s->cfg is rewritten by PATCH on the loop thread while
    // the trainer thread reads the state dir (a data race ThreadSanitizer caught).
    char state_dir[CFG_PATH_MAX], listen[CFG_ADDR_MAX], token_file[CFG_PATH_MAX];
    uv_loop_t loop;
    uv_async_t wake;
    uv_signal_t sig[3];
    struct api_server *api;
    int n_signals;
    int stopping;              // loop thread: the trainer was asked to stop
    int trainer_exited;        // loop thread: the trainer's final notice arrived
    pthread_t thread;
    int thread_started;
    int exit_code;
    double start_time;

    // ---- shared, under mu ----
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct dmn_cmd *q_head, *q_tail;   // loop -> trainer
    struct dmn_cmd *done;              // trainer -> loop (LIFO; order does not matter)
    int trainer_done;                  // the trainer thread has ended
    struct dmn_snapshot snap;
    struct dmn_hist *hist;             // ring of DMN_HIST_CAP
    size_t hist_n, hist_pos;
    char **events;                     // adaptation event texts (copied in)
    size_t n_events, cap_events;

    // ---- trainer thread only ----
    struct dmn_trainer *t;
    int paused;
    FILE *events_file;
};

// ---- small helpers ------------------------------------------------------------------------

static void dmn__log(struct dmn_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void dmn__log(struct dmn_server *s, const char *fmt, ...)
{
    if (s->opts.quiet) return;
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    localtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "evowidthd %s ", ts);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

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
        d->width = l->spec.kind == NET_RES ? l->spec.width : l->out.c;
        d->out = l->out.c;
        d->rank = l->spec.rank;
        for (size_t t = l->t0; t < l->t0 + l->n_t; t++)
            if (n->tensors[t].arena == NET_ARENA_PARAM) d->params += n->tensors[t].n;
        struct net one = *n;
        one.n_layers = 1;
        one.layers = (struct net_layer *)l;
        d->flops = net_flops(&one);
        if (s && (l->spec.kind == NET_DENSE || l->spec.kind == NET_CONV)) {
            long r = svd_layer_spectrum(n, i, s, 4096);
            for (long j = 0; j < r && j < 8; j++) d->top[d->n_top++] = s[j];
        }
    }
    *count = k;
    free(s);
}

// ---- trainer thread -------------------------------------------------------------------------

static void dmn__publish(struct dmn_server *s, int add_history)
{
    struct dmn_trainer *t = s->t;
    struct dmn_snapshot *sn = malloc(sizeof(*sn));
    if (!sn) return;
    memset(sn, 0, sizeof(*sn));
    snprintf(sn->state, sizeof(sn->state), "%s",
             dmn_trainer_done(t) ? "done" : s->paused ? "paused" : "training");
    sn->step = t->step;
    sn->total_steps = t->total_steps;
    sn->steps_per_epoch = t->steps_per_epoch;
    // 1-based and counting the epoch in progress, as the progress lines do.
    sn->epoch = (t->steps_per_epoch ? t->step / t->steps_per_epoch : 0) + (t->step < t->total_steps);
    sn->epochs = t->cfg.train.epochs;
    if (t->run_n) {
        t->last_loss = t->run_loss / (double)t->run_n;
        t->last_acc = (double)t->run_correct / (double)t->run_n;
        t->run_loss = 0;
        t->run_correct = t->run_n = 0;
    }
    sn->loss = t->last_loss;
    sn->acc = t->last_acc;
    sn->lr = t->lr;
    sn->sps = t->train_seconds > 0 ? (double)(t->step * t->cfg.train.batch_size) / t->train_seconds : 0;
    sn->eta = sn->sps > 0 ? (double)((t->total_steps > t->step ? t->total_steps - t->step : 0) *
                                     t->cfg.train.batch_size) / sn->sps
                          : 0;
    sn->val_loss = t->val_loss;
    sn->val_acc = t->val_acc;
    sn->params = t->net->n_params;
    sn->initial_params = t->initial_params;
    sn->flops = net_flops(t->net);
    sn->train_seconds = t->train_seconds;
    sn->adapt_seconds = t->adapt_seconds;
    sn->uptime = dmn_now() - s->start_time;
    dmn__layer_infos(t->net, sn->layers, CFG_MAX_LAYERS, &sn->n_layers, 0);
    pthread_mutex_lock(&s->mu);
    memcpy(sn->last_ckpt, s->snap.last_ckpt, sizeof(sn->last_ckpt));
    sn->last_ckpt_step = s->snap.last_ckpt_step;
    sn->n_events = s->n_events;
    s->snap = *sn;
    if (add_history) {
        struct dmn_hist *h = &s->hist[s->hist_pos];
        *h = (struct dmn_hist){dmn_now() - s->start_time, sn->step, sn->params, sn->loss,
                               sn->acc, sn->lr, sn->val_loss, sn->val_acc, sn->sps};
        s->hist_pos = (s->hist_pos + 1) % DMN_HIST_CAP;
        if (s->hist_n < DMN_HIST_CAP) s->hist_n++;
    }
    pthread_mutex_unlock(&s->mu);
    free(sn);
}

/* Copies event texts the trainer produced since the last call into the shared list. */
static void dmn__sync_events(struct dmn_server *s)
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

static int dmn__ckpt_path(const struct dmn_server *s, size_t step, char *out, size_t n)
{
    return snprintf(out, n, "%s/ckpt-%012zu.evow", s->opts.state_dir, step) >= (int)n ? -ENAMETOOLONG : 0;
}

/* Writes a checkpoint and prunes all but the newest DMN_KEEP_CKPTS. */
static int dmn__checkpoint(struct dmn_server *s, char *path, size_t pathlen, char *err,
                           size_t errlen)
{
    int rc = dmn__ckpt_path(s, s->t->step, path, pathlen);
    if (rc < 0) {
        snprintf(err, errlen, "state dir path too long");
        return rc;
    }
    if ((rc = dmn_trainer_save(s->t, path, err, errlen)) < 0) return rc;
    pthread_mutex_lock(&s->mu);
    snprintf(s->snap.last_ckpt, sizeof(s->snap.last_ckpt), "%s", path);
    s->snap.last_ckpt_step = s->t->step;
    pthread_mutex_unlock(&s->mu);
    // Prune older checkpoints: names sort by step.
    struct dirent **list = NULL;
    int nl = scandir(s->opts.state_dir, &list, NULL, alphasort);
    int kept = 0;
    for (int i = nl - 1; i >= 0; i--) {
        const char *nm = list[i]->d_name;
        size_t ln = strlen(nm);
        if (!strncmp(nm, "ckpt-", 5) && ln > 5 && !strcmp(nm + ln - 5, ".evow")) {
            if (++kept > DMN_KEEP_CKPTS) {
                char p[1024];
                snprintf(p, sizeof(p), "%s/%s", s->opts.state_dir, nm);
                unlink(p);
            }
        }
        free(list[i]);
    }
    free(list);
    return 0;
}

/* Applies one command between steps; returns 1 when the trainer must stop. */
static int dmn__apply(struct dmn_server *s, struct dmn_cmd *c)
{
    struct dmn_trainer *t = s->t;
    c->step = t->step;
    switch (c->kind) {
    case DMN_CMD_PAUSE:
        s->paused = 1;
        break;
    case DMN_CMD_RESUME:
        s->paused = 0;
        break;
    case DMN_CMD_ADAPT:
        c->n_spec = dmn__adapt_n_events(t); // events before this pass
        c->kept = dmn_trainer_adapt_now(t);
        c->rc = c->kept < 0 ? c->kept : 0;
        dmn__sync_events(s);
        break;
    case DMN_CMD_CHECKPOINT:
        c->rc = dmn__checkpoint(s, c->path, sizeof(c->path), c->err, sizeof(c->err));
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
            net_eval_free(&ev);
        }
        break;
    }
    case DMN_CMD_STOP:
        return 1;
    case DMN_CMD_CONFIG: {
        const struct dmn_config *n = &c->cfg;
        if (n->train.epochs != t->cfg.train.epochs) dmn_trainer_set_epochs(t, n->train.epochs);
        t->cfg.adapt = n->adapt;
        t->cfg.optimizer.lr = n->optimizer.lr;
        t->cfg.optimizer.group_lasso = n->optimizer.group_lasso;
        t->cfg.train.eval_every_steps = n->train.eval_every_steps;
        t->cfg.train.log_every_seconds = n->train.log_every_seconds;
        t->cfg.daemon.checkpoint_every_steps = n->daemon.checkpoint_every_steps;
        t->sched.lr = (float)n->optimizer.lr;
        if (t->sched.min_lr > t->sched.lr) t->sched.min_lr = t->sched.lr;
        t->change_seq = c->seq;
        break;
    }
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

static void *dmn__trainer_main(void *arg)
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
        while (q) {
            struct dmn_cmd *next = q->next;
            stop |= dmn__apply(s, q);
            if (q->kind == DMN_CMD_STOP) {
                // Answered after the final checkpoint below.
                q->next = NULL;
                if (!stop) dmn__finish(s, q);
                else {
                    struct dmn_cmd *rest = next;
                    while (rest) { // commands after STOP are answered as refused
                        struct dmn_cmd *nn = rest->next;
                        rest->rc = -ECANCELED;
                        snprintf(rest->err, sizeof(rest->err), "the trainer is stopping");
                        dmn__finish(s, rest);
                        rest = nn;
                    }
                    next = NULL;
                    dmn__finish(s, q);
                }
            } else {
                dmn__finish(s, q);
            }
            q = next;
        }
        if (stop) break;
        if (s->paused || dmn_trainer_done(t)) {
            if (last_pub_step != t->step || dmn_now() - last_pub > 1.0) {
                dmn__publish(s, 0);
                last_pub_step = t->step;
                last_pub = dmn_now();
            }
            pthread_mutex_lock(&s->mu);
            if (!s->q_head) {
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
        int rc = dmn_trainer_step(t);
        if (rc < 0) {
            dmn__log(s, "step %zu failed (%s); pausing", t->step,
                     rc == -EDOM ? "loss is not finite: lower the learning rate" : strerror(-rc));
            s->paused = 1;
        }
        dmn__sync_events(s);
        dmn_trainer_progress(t, 0);
        if (t->val.n && t->steps_per_epoch &&
            ((t->cfg.train.eval_every_steps && t->step % t->cfg.train.eval_every_steps == 0) ||
             (!t->cfg.train.eval_every_steps && t->step % t->steps_per_epoch == 0))) {
            struct net_eval ev;
            if (dmn_trainer_eval(t, &t->val, &ev) == 0) {
                t->val_loss = ev.loss;
                t->val_acc = ev.accuracy;
                net_eval_free(&ev);
            }
        }
        size_t every = t->cfg.daemon.checkpoint_every_steps;
        if ((every && t->step % every == 0) || dmn_trainer_done(t)) {
            char path[1024];
            if (dmn__checkpoint(s, path, sizeof(path), err, sizeof(err)) < 0)
                dmn__log(s, "checkpoint failed: %s", err);
            else if (dmn_trainer_done(t))
                dmn__log(s, "training done at step %zu; final checkpoint %s", t->step, path);
        }
        double now = dmn_now();
        if (now - last_pub > 0.1 || dmn_trainer_done(t)) {
            dmn__publish(s, 1);
            last_pub = now;
            last_pub_step = t->step;
        }
    }
    // Stop: the step in progress has finished; write the final checkpoint.
    char path[1024];
    if (dmn__checkpoint(s, path, sizeof(path), err, sizeof(err)) < 0)
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

static struct dmn_cmd *dmn__cmd_new(enum dmn_cmd_kind k)
{
    struct dmn_cmd *c = calloc(1, sizeof(*c));
    if (c) c->kind = k;
    return c;
}

static void dmn__enqueue(struct dmn_server *s, struct dmn_cmd *c)
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

/* Queues c with a deferred reply; returns API_ASYNC, or answers 503 itself. */
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
            cJSON *ev = s->n_events > c->n_spec ? cJSON_Parse(s->events[s->n_events - 1]) : NULL;
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

static void dmn__shutdown_handles(struct dmn_server *s);

static void dmn__wake_cb(uv_async_t *h)
{
    struct dmn_server *s = dmn__container_of(h, struct dmn_server, wake);
    pthread_mutex_lock(&s->mu);
    struct dmn_cmd *d = s->done;
    s->done = NULL;
    int ended = s->trainer_done;
    pthread_mutex_unlock(&s->mu);
    while (d) {
        struct dmn_cmd *next = d->next;
        dmn__reply(s, d);
        d = next;
    }
    if (ended && !s->trainer_exited) {
        s->trainer_exited = 1;
        dmn__shutdown_handles(s);
    }
}

// ---- loop thread: change log ----------------------------------------------------------------

/* Appends an accepted change to changes.jsonl and fsyncs it. */
static void dmn__log_change(struct dmn_server *s, const char *route, const cJSON *body)
{
    s->change_seq++;
    size_t step;
    pthread_mutex_lock(&s->mu);
    step = s->snap.step;
    pthread_mutex_unlock(&s->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)s->change_seq);
    cJSON_AddNumberToObject(o, "time", (double)time(NULL));
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddStringToObject(o, "route", route);
    cJSON_AddItemToObject(o, "change", cJSON_Duplicate(body, 1));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line) return;
    char path[1024];
    snprintf(path, sizeof(path), "%s/changes.jsonl", s->opts.state_dir);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        size_t n = strlen(line);
        line[n] = '\n';
        if (write(fd, line, n + 1) != (ssize_t)(n + 1)) dmn__log(s, "cannot append to %s", path);
        fsync(fd);
        close(fd);
    }
    dmn__log(s, "change %llu at step %zu via %s", (unsigned long long)s->change_seq, step, route);
    cJSON_free(line);
}

/* Sends the effective config to the trainer. */
static int dmn__push_config(struct dmn_server *s)
{
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_CONFIG);
    if (!c) return -ENOMEM;
    c->cfg = s->cfg;
    c->seq = s->change_seq;
    dmn__enqueue(s, c);
    return 0;
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
    for (size_t i = 0; arr && i < s->n_events; i++) {
        cJSON *e = cJSON_Parse(s->events[i]);
        if (e) cJSON_AddItemToArray(arr, e);
    }
    pthread_mutex_unlock(&s->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "events", arr);
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
    s->cfg = *tmp;
    free(tmp);
    dmn__log_change(s, route, body);
    cJSON_Delete(body);
    if (dmn__push_config(s) < 0) return api_resp_error(r, 503, NULL, "out of memory");
    cJSON *o = cfg_section_to_json(&s->cfg, section);
    if (!strcmp(section, "train")) {
        cJSON_AddNumberToObject(o, "lr", s->cfg.optimizer.lr);
        cJSON_AddNumberToObject(o, "group_lasso", s->cfg.optimizer.group_lasso);
        cJSON_AddNumberToObject(o, "checkpoint_every_steps",
                                (double)s->cfg.daemon.checkpoint_every_steps);
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

static const struct api_route DMN_ROUTES[] = {
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

// ---- loop thread: signals and shutdown ------------------------------------------------------

static void dmn__close_cb(uv_handle_t *h)
{
    (void)h;
}

static void dmn__walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, dmn__close_cb);
}

static void dmn__shutdown_handles(struct dmn_server *s)
{
    if (s->api) {
        api_server_stop(s->api);
        s->api = NULL;
    }
    uv_walk(&s->loop, dmn__walk_close, NULL);
}

static void dmn__request_stop(struct dmn_server *s, const char *why)
{
    if (s->stopping) return;
    s->stopping = 1;
    dmn__log(s, "%s: finishing the step, then checkpoint and exit", why);
    struct dmn_cmd *c = dmn__cmd_new(DMN_CMD_STOP);
    if (c) dmn__enqueue(s, c);
}

static void dmn__reload(struct dmn_server *s)
{
    struct dmn_config *n = malloc(sizeof(*n)), *tmp = malloc(sizeof(*tmp));
    char err[512];
    if (!n || !tmp) goto out;
    if (cfg_load_file(n, s->opts.config_path, err, sizeof(err)) < 0) {
        dmn__log(s, "SIGHUP: config not reloaded: %s", err);
        goto out;
    }
    *tmp = s->cfg;
    if (cfg_copy_runtime(tmp, n, err, sizeof(err)) < 0) {
        dmn__log(s, "SIGHUP: config not reloaded: %s", err);
        goto out;
    }
    s->cfg = *tmp;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddItemToObject(body, "adapt", cfg_section_to_json(&s->cfg, "adapt"));
    cJSON_AddItemToObject(body, "train", cfg_section_to_json(&s->cfg, "train"));
    cJSON_AddNumberToObject(body, "lr", s->cfg.optimizer.lr);
    dmn__log_change(s, "SIGHUP", body);
    cJSON_Delete(body);
    dmn__push_config(s);
    dmn__log(s, "SIGHUP: runtime settings reloaded from %s", s->opts.config_path);
out:
    free(n);
    free(tmp);
}

static void dmn__signal_cb(uv_signal_t *h, int signum)
{
    struct dmn_server *s = h->data;
    if (signum == SIGHUP) {
        dmn__reload(s);
        return;
    }
    if (++s->n_signals > 1) {
        // Second SIGINT / SIGTERM: leave at once, as promised to the operator.
        static const char msg[] = "evowidthd: second signal, exiting now\n";
        if (write(2, msg, sizeof(msg) - 1) < 0) { /* nothing more to do */ }
        _exit(128 + signum);
    }
    dmn__request_stop(s, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

// ---- start-up -----------------------------------------------------------------------------

static int dmn__mkdirs(const char *dir, char *err, size_t errlen)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s", dir);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(p, 0755) < 0 && errno != EEXIST) goto fail;
        *q = '/';
    }
    if (mkdir(p, 0755) < 0 && errno != EEXIST) goto fail;
    return 0;
fail:
    snprintf(err, errlen, "state dir %s: %s", dir, strerror(errno));
    return -errno;
}

/* Resumes from the newest checkpoint that loads; 1 if one did, 0 if none, <0 on error. */
static int dmn__resume(struct dmn_server *s, char *err, size_t errlen)
{
    struct dirent **list = NULL;
    int nl = scandir(s->opts.state_dir, &list, NULL, alphasort), found = 0;
    for (int i = nl - 1; i >= 0; i--) {
        const char *nm = list[i]->d_name;
        size_t ln = strlen(nm);
        if (!found && !strncmp(nm, "ckpt-", 5) && ln > 5 && !strcmp(nm + ln - 5, ".evow")) {
            char p[1024], why[512];
            snprintf(p, sizeof(p), "%s/%s", s->opts.state_dir, nm);
            if (dmn_trainer_load(&s->t, p, why, sizeof(why)) == 0) {
                dmn__log(s, "resumed from %s at step %zu (%zu parameters)", p, s->t->step,
                         s->t->net->n_params);
                snprintf(s->snap.last_ckpt, sizeof(s->snap.last_ckpt), "%s", p);
                s->snap.last_ckpt_step = s->t->step;
                found = 1;
            } else {
                dmn__log(s, "skipping unusable checkpoint: %s", why);
            }
        }
        free(list[i]);
    }
    free(list);
    return found;
}

/* Replays changes.jsonl entries newer than the checkpoint's sequence number. */
static void dmn__replay_changes(struct dmn_server *s)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/changes.jsonl", s->opts.state_dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        double seq = cJSON_GetNumberValue(cJSON_GetObjectItem(o, "seq"));
        // Only an integer in [0, 2^64) is a sequence number (casting 1e300 is undefined).
        if (o && seq >= 0 && seq < 0x1p64 && seq == floor(seq) && (uint64_t)seq > s->change_seq) {
            const char *route = cJSON_GetStringValue(cJSON_GetObjectItem(o, "route"));
            const cJSON *ch = cJSON_GetObjectItem(o, "change");
            char err[512];
            int rc = -EINVAL;
            if (route && !strcmp(route, "PATCH /v1/policy"))
                rc = cfg_patch(&s->cfg, "adapt", ch, CFG_RUNTIME, err, sizeof(err));
            else if (route && !strcmp(route, "PATCH /v1/train"))
                rc = cfg_patch(&s->cfg, "train", ch, CFG_RUNTIME, err, sizeof(err));
            else if (route && !strcmp(route, "SIGHUP"))
                rc = cfg_patch(&s->cfg, NULL, ch, CFG_RUNTIME, err, sizeof(err));
            if (rc == 0) dmn__log(s, "replayed change %.0f (%s)", seq, route);
            s->change_seq = (uint64_t)seq;
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
}

static int dmn__read_token(const char *path, char *out, size_t n, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "token file %s: %s", path, strerror(errno));
        return -errno;
    }
    size_t k = fread(out, 1, n - 1, f);
    fclose(f);
    out[k] = 0;
    while (k && (out[k - 1] == '\n' || out[k - 1] == '\r' || out[k - 1] == ' ')) out[--k] = 0;
    if (!k) {
        snprintf(err, errlen, "token file %s is empty", path);
        return -EINVAL;
    }
    return 0;
}

int dmn_server_run(const struct dmn_server_opts *o)
{
    struct dmn_server *s = calloc(1, sizeof(*s));
    char err[1024];
    int rc, loop_ok = 0, code = 1;
    if (!s) return 1;
    s->opts = *o;
    s->start_time = dmn_now();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->hist = calloc(DMN_HIST_CAP, sizeof(*s->hist));
    if (!s->hist) goto out;
    if ((rc = cfg_load_file(&s->cfg, o->config_path, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    snprintf(s->state_dir, sizeof(s->state_dir), "%s",
             s->opts.state_dir ? s->opts.state_dir : s->cfg.daemon.state_dir);
    snprintf(s->listen, sizeof(s->listen), "%s", s->opts.listen ? s->opts.listen : s->cfg.daemon.listen);
    snprintf(s->token_file, sizeof(s->token_file), "%s",
             s->opts.token_file ? s->opts.token_file : s->cfg.daemon.token_file);
    s->opts.state_dir = s->state_dir;
    s->opts.listen = s->listen;
    s->opts.token_file = s->token_file;
    if (s->opts.token_file[0] &&
        dmn__read_token(s->opts.token_file, s->token, sizeof(s->token), err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    if (dmn__mkdirs(s->opts.state_dir, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    // Resume, or start a new run from the config.
    int resumed = dmn__resume(s, err, sizeof(err));
    if (resumed) {
        // The checkpoint's config is the run's config; runtime changes after it are replayed.
        s->cfg = s->t->cfg;
        s->change_seq = s->t->change_seq;
        dmn__replay_changes(s);
        dmn_trainer_set_epochs(s->t, s->cfg.train.epochs);
    } else if ((rc = dmn_trainer_create(&s->t, &s->cfg, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidthd: %s\n", err);
        goto out;
    }
    s->t->log = s->opts.quiet ? NULL : stderr;
    char evp[1024];
    snprintf(evp, sizeof(evp), "%s/events.jsonl", s->opts.state_dir);
    s->events_file = fopen(evp, "a");
    s->t->events = s->events_file;
    dmn__sync_events(s);
    dmn__publish(s, 0);
    // Apply replayed settings through the same path as PATCH.
    {
        struct dmn_cmd c = {.kind = DMN_CMD_CONFIG, .cfg = s->cfg, .seq = s->change_seq};
        dmn__apply(s, &c);
    }

    if ((rc = uv_loop_init(&s->loop)) < 0) {
        fprintf(stderr, "evowidthd: uv_loop_init: %s\n", uv_strerror(rc));
        goto out;
    }
    loop_ok = 1;
    if ((rc = uv_async_init(&s->loop, &s->wake, dmn__wake_cb)) < 0) goto uverr;
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(&s->loop, &s->sig[i])) < 0) goto uverr;
        s->sig[i].data = s;
        if ((rc = uv_signal_start(&s->sig[i], dmn__signal_cb, sigs[i])) < 0) goto uverr;
    }
    struct api_opts ao;
    api_opts_default(&ao);
    ao.listen = s->opts.listen;
    ao.token = s->token[0] ? s->token : NULL;
    ao.limits.header_timeout_ms = s->cfg.daemon.header_timeout_ms;
    ao.limits.idle_timeout_ms = s->cfg.daemon.idle_timeout_ms;
    ao.limits.max_conns = s->cfg.daemon.max_connections;
    if ((rc = api_server_start(&s->api, &s->loop, &ao, DMN_ROUTES,
                               sizeof(DMN_ROUTES) / sizeof(DMN_ROUTES[0]), s, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidthd: cannot listen on %s: %s\n", s->opts.listen, err);
        s->api = NULL;
        goto close_loop;
    }
    if ((rc = pthread_create(&s->thread, NULL, dmn__trainer_main, s)) != 0) {
        fprintf(stderr, "evowidthd: cannot start the trainer thread: %s\n", strerror(rc));
        goto close_loop;
    }
    s->thread_started = 1;
    // The line scripts wait for: the address to poll.
    printf("evowidthd: training %s, state in %s, listening on http://%s:%d/v1/status\n",
           o->config_path, s->opts.state_dir,
           strncmp(s->opts.listen, "[::1]", 5) == 0 ? "[::1]" : "127.0.0.1",
           api_server_port(s->api));
    fflush(stdout);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
    code = 0;
    goto close_loop;
uverr:
    fprintf(stderr, "evowidthd: libuv: %s\n", uv_strerror(rc));
close_loop:
    if (s->thread_started) {
        dmn__request_stop(s, "start-up failure");
        pthread_join(s->thread, NULL);
    }
    dmn__shutdown_handles(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    // Replies still queued (the loop ended first) are dropped with their handles.
    while (s->done) {
        struct dmn_cmd *d = s->done;
        s->done = d->next;
        api_async_complete(d->reply, 503);
        free(d->layers);
        free(d->spectrum);
        free(d);
    }
    if (loop_ok && (rc = uv_loop_close(&s->loop)) != 0) {
        fprintf(stderr, "evowidthd: uv_loop_close: %s\n", uv_strerror(rc));
        code = 1;
    }
out:
    while (s->q_head) {
        struct dmn_cmd *c = s->q_head;
        s->q_head = c->next;
        free(c);
    }
    for (size_t i = 0; i < s->n_events; i++) free(s->events[i]);
    free(s->events);
    dmn_trainer_destroy(s->t);
    if (s->events_file) fclose(s->events_file);
    free(s->hist);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return code;
}
