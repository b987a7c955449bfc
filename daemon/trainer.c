/* daemon/trainer.c: one training run, driven a step at a time.
 *
 * dmn_trainer_create loads the data named by the config (IDX for MNIST / Fashion-MNIST,
 * CIFAR-10 batches, or synthetic), carves the validation split with the run's seeded RNG,
 * normalises everything with the training set's per-channel statistics (stored in the net so
 * a saved model evaluates the same way), builds the net and initialises it.
 *
 * Determinism: every random draw comes from t->rng (init, split, adaptation) or the batcher's
 * own stream (order, augmentation); both are saved in checkpoints, so a resumed run takes the
 * same steps as an uninterrupted one. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "daemon/daemon_internal.h"
#include "daemon/dist.h"

double dmn_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double dmn_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dmn_omp_passive(char **argv)
{
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv); // on failure, go on with the default policy
}

// ---- data -------------------------------------------------------------------------------

/* dir/name, or dir/name.gz when only that exists. */
static void dmn__data_path(char *out, size_t n, const char *dir, const char *name)
{
    struct stat st;
    snprintf(out, n, "%s/%s", dir, name);
    if (stat(out, &st) == 0) return;
    snprintf(out, n, "%s/%s.gz", dir, name);
    if (stat(out, &st) == 0) return;
    snprintf(out, n, "%s/%s", dir, name); // neither: report the plain name
}

static int dmn__load_data(struct dmn_trainer *t, struct net_dataset *all, char *err, size_t errlen)
{
    const struct dmn_config *c = &t->cfg;
    char a[CFG_PATH_MAX + 64], b[CFG_PATH_MAX + 64];
    int rc;
    switch (c->data.dataset) {
    case CFG_DATA_FASHION_MNIST:
    case CFG_DATA_MNIST:
        dmn__data_path(a, sizeof(a), c->data.dir, "train-images-idx3-ubyte");
        dmn__data_path(b, sizeof(b), c->data.dir, "train-labels-idx1-ubyte");
        if ((rc = net_data_load_idx(all, a, b, err, errlen)) < 0) return rc;
        dmn__data_path(a, sizeof(a), c->data.dir, "t10k-images-idx3-ubyte");
        dmn__data_path(b, sizeof(b), c->data.dir, "t10k-labels-idx1-ubyte");
        if ((rc = net_data_load_idx(&t->test, a, b, err, errlen)) < 0) return rc;
        break;
    case CFG_DATA_CIFAR10: {
        char files[5][CFG_PATH_MAX + 64];
        const char *fp[5];
        for (int i = 0; i < 5; i++) {
            snprintf(files[i], sizeof(files[i]), "%s/data_batch_%d.bin", c->data.dir, i + 1);
            fp[i] = files[i];
        }
        if ((rc = net_data_load_cifar(all, fp, 5, err, errlen)) < 0) return rc;
        snprintf(a, sizeof(a), "%s/test_batch.bin", c->data.dir);
        fp[0] = a;
        if ((rc = net_data_load_cifar(&t->test, fp, 1, err, errlen)) < 0) return rc;
        break;
    }
    case CFG_DATA_SYNTHETIC: {
        // One draw for train and test so both share the class templates.
        const struct cfg_synthetic *s = &c->synthetic;
        struct net_shape sh = {s->channels, s->height, s->width, 1};
        struct net_dataset whole = {0};
        if ((rc = net_data_synthetic(&whole, s->n_train + s->n_test, &sh, s->classes,
                                     (float)s->noise, c->train.seed)) < 0) {
            snprintf(err, errlen, "synthetic data: cannot generate (%d)", rc);
            return rc;
        }
        uint64_t r = c->train.seed ^ 0x5eedULL;
        if ((rc = net_data_split(&whole, all, &t->test, s->n_test, &r)) < 0) {
            net_data_free(&whole);
            snprintf(err, errlen, "synthetic data: cannot split off %zu test samples", s->n_test);
            return rc;
        }
        break;
    }
    }
    return 0;
}

// ---- create / destroy -------------------------------------------------------------------

void dmn_trainer_destroy(struct dmn_trainer *t)
{
    if (!t) return;
    dmn__adapt_free(t);
    net_destroy(t->net);
    net_data_free(&t->train);
    net_data_free(&t->val);
    net_data_free(&t->test);
    net_batcher_free(&t->batcher);
    free(t->xb);
    free(t->yb);
    free(t);
}

void dmn_trainer_set_epochs(struct dmn_trainer *t, size_t epochs)
{
    t->cfg.train.epochs = epochs;
    t->total_steps = epochs * t->steps_per_epoch;
    cfg_net_sched(&t->cfg, t->total_steps, &t->sched);
}

int dmn_trainer_set_runtime(struct dmn_trainer *t, const struct dmn_config *cfg, char *err,
                            size_t errlen)
{
    int rc = cfg_copy_runtime(&t->cfg, cfg, err, errlen);
    if (rc < 0) return rc;
    dmn_trainer_set_epochs(t, t->cfg.train.epochs); // the schedule takes lr from t->cfg
    return 0;
}

int dmn_trainer_create(struct dmn_trainer **out, const struct dmn_config *cfg, char *err,
                       size_t errlen)
{
    int rc;
    struct net_dataset all = {0};
    struct dmn_trainer *t = calloc(1, sizeof(*t));
    if (!t) return -ENOMEM;
    t->cfg = *cfg;
    t->rng = cfg->train.seed * 0x9e3779b97f4a7c15ULL + 1;
    t->val_loss = t->val_acc = NAN;
    net_set_threads(cfg->train.threads);
    if ((rc = dmn__load_data(t, &all, err, errlen)) < 0) goto fail;
    if (cfg->data.val_split > 0) {
        if (cfg->data.val_split + cfg->train.batch_size > all.n) {
            snprintf(err, errlen,
                     "data.val_split: %zu leaves less than one batch of the %zu "
                     "training samples",
                     cfg->data.val_split, all.n);
            rc = -EINVAL;
            goto fail;
        }
        if ((rc = net_data_split(&all, &t->train, &t->val, cfg->data.val_split, &t->rng)) < 0) {
            snprintf(err, errlen, "data: cannot split the validation set");
            goto fail;
        }
    } else {
        t->train = all;
        memset(&all, 0, sizeof(all));
    }
    if (t->train.n < cfg->train.batch_size) {
        snprintf(err, errlen, "train.batch_size: %zu is larger than the %zu training samples",
                 cfg->train.batch_size, t->train.n);
        rc = -EINVAL;
        goto fail;
    }
    size_t K = cfg_n_classes(cfg);
    if (t->train.n_classes > K) {
        snprintf(err, errlen, "data: labels go up to %zu but the model has %zu classes",
                 t->train.n_classes - 1, K);
        rc = -EINVAL;
        goto fail;
    }
    if ((rc = net_create(&t->net, &t->train.shape, K, cfg->model, cfg->n_layers, err, errlen)) < 0)
        goto fail;
    if (cfg->data.normalize == CFG_NORM_UNIT) {
        for (size_t c = 0; c < 4; c++) t->net->norm_mean[c] = 0.0f, t->net->norm_std[c] = 1.0f;
    } else {
        net_data_stats(&t->train, t->net->norm_mean, t->net->norm_std);
        net_data_normalize(&t->train, t->net->norm_mean, t->net->norm_std);
        if (t->val.n) net_data_normalize(&t->val, t->net->norm_mean, t->net->norm_std);
        net_data_normalize(&t->test, t->net->norm_mean, t->net->norm_std);
    }
    net_init_params_with(t->net, &t->rng, cfg->train.init);
    t->initial_params = t->net->n_params;

    const size_t B = cfg->train.batch_size,
                 D = t->train.shape.c * t->train.shape.h * t->train.shape.w;
    t->xb = malloc(B * D * sizeof(float));
    t->yb = malloc(B);
    if (!t->xb || !t->yb || net_reserve(t->net, B) < 0) {
        snprintf(err, errlen, "out of memory for batch %zu", B);
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = net_batcher_init(&t->batcher, t->train.n, cfg->train.seed ^ 0xba7c4e5ULL,
                               cfg->data.crop_pad, cfg->data.flip)) < 0) {
        snprintf(err, errlen, "out of memory for the batcher");
        goto fail;
    }
    cfg_net_optim(cfg, &t->opt);
    t->steps_per_epoch = t->train.n / B;
    dmn_trainer_set_epochs(t, cfg->train.epochs);
    if ((rc = dmn__adapt_init(t, err, errlen)) < 0) goto fail;
    *out = t;
    return 0;
fail:
    net_data_free(&all);
    dmn_trainer_destroy(t);
    return rc;
}

// ---- stepping ---------------------------------------------------------------------------

int dmn_trainer_done(const struct dmn_trainer *t)
{
    return t->step >= t->total_steps;
}

int dmn_trainer_step(struct dmn_trainer *t)
{
    const size_t B = t->cfg.train.batch_size, K = t->net->n_classes;
    double t0 = dmn_now();
    net_batcher_next(&t->batcher, &t->train, B, t->xb, t->yb);
    // Every rank draws the whole global batch and trains on its shard (daemon/dist.h); one
    // process's shard is the batch.
    size_t lo, nb;
    dmn_dist_shard(B, &lo, &nb);
    const float *xs = t->xb + lo * (t->train.shape.c * t->train.shape.h * t->train.shape.w);
    const uint8_t *ys = t->yb + lo;
    net_zero_grad(t->net);
    float loss = net_forward(t->net, xs, ys, nb, 1);
    const int oom = isnan(loss) && t->net->ws_batch < nb;
    size_t correct = 0;
    for (size_t b = 0; isfinite(loss) && b < nb; b++) {
        const float *p = t->net->probs + b * K;
        size_t best = 0;
        for (size_t k = 1; k < K; k++)
            if (p[k] > p[best]) best = k;
        correct += best == ys[b];
    }
    dmn__dist_step(t->net, &loss, &correct, nb, B); // global loss, BN statistics averaged
    if (!isfinite(loss)) return oom ? -ENOMEM : -EDOM;
    t->lr = net_sched_lr(&t->sched, t->step);
    if (dmn_dist_size() == 1 && !(t->cfg.optimizer.group_lasso > 0.0)) {
        // Nothing reads the gradient before the step: dense weights step as it is stored.
        net_backward_update(t->net, ys, nb, &t->opt, (float)t->lr);
    } else {
        net_backward(t->net, ys, nb);
        dmn__dist_grads(t->net, nb, B); // the global mean gradient on every rank
        dmn__group_lasso(t);
        net_optim_step(t->net, &t->opt, (float)t->lr);
    }
    t->step++;

    t->run_loss += (double)loss * (double)B;
    t->run_correct += correct;
    t->run_n += B;
    t->train_seconds += dmn_now() - t0;
    return dmn__adapt_maybe(t);
}

int dmn_trainer_eval(struct dmn_trainer *t, const struct net_dataset *d, struct net_eval *ev)
{
    return net_evaluate(t->net, d, t->cfg.train.batch_size, ev);
}

/* A validation pass is due every eval_every_steps steps, or at the end of each epoch. */
static int dmn__eval_due(const struct dmn_trainer *t)
{
    size_t every = t->cfg.train.eval_every_steps;
    if (!t->val.n || !t->steps_per_epoch) return 0;
    return every ? t->step % every == 0 : t->step % t->steps_per_epoch == 0;
}

int dmn_trainer_tick(struct dmn_trainer *t, struct dmn_tick *tk)
{
    const size_t before = t->step;
    memset(tk, 0, sizeof(*tk));
    int rc = dmn_trainer_step(t);
    if (t->step == before) return rc;
    dmn_trainer_progress(t, 0);
    if (dmn__eval_due(t) && dmn_dist_is_root()) { // rank 0 reports (ranks are identical)
        struct net_eval ev;
        if (dmn_trainer_eval(t, &t->val, &ev) == 0) {
            t->val_loss = ev.loss;
            t->val_acc = ev.accuracy;
            tk->evaluated = 1;
            net_eval_free(&ev);
        }
    }
    size_t every = t->cfg.daemon.checkpoint_every_steps;
    tk->checkpoint_due = (every && t->step % every == 0) || dmn_trainer_done(t);
    return rc;
}

// ---- progress ---------------------------------------------------------------------------

static void dmn__fmt_eta(char *out, size_t n, double s)
{
    if (!isfinite(s) || s < 0) s = 0;
    unsigned long x = (unsigned long)(s + 0.5);
    if (x >= 3600)
        snprintf(out, n, "%luh%02lum", x / 3600, (x / 60) % 60);
    else
        snprintf(out, n, "%lum%02lus", x / 60, x % 60);
}

void dmn_trainer_progress(struct dmn_trainer *t, int force)
{
    double now = dmn_now();
    if (!force && now - t->last_log_time < t->cfg.train.log_every_seconds) return;
    if (t->run_n) {
        t->last_loss = t->run_loss / (double)t->run_n;
        t->last_acc = (double)t->run_correct / (double)t->run_n;
    }
    double sps =
        t->train_seconds > 0 ? (double)(t->step * t->cfg.train.batch_size) / t->train_seconds : 0.0;
    char eta[32];
    dmn__fmt_eta(eta, sizeof(eta),
                 sps > 0 ? (double)((t->total_steps - t->step) * t->cfg.train.batch_size) / sps
                         : 0.0);
    if (t->log) {
        size_t epoch = t->steps_per_epoch ? t->step / t->steps_per_epoch : 0;
        fprintf(t->log,
                "epoch %zu/%zu  step %zu/%zu  loss %.4f  acc %5.2f%%  lr %.4g  %.0f samples/s  "
                "params %zu  ETA %s",
                epoch + (t->step < t->total_steps), t->cfg.train.epochs, t->step, t->total_steps,
                t->last_loss, 100.0 * t->last_acc, t->lr, sps, t->net->n_params, eta);
        if (isfinite(t->val_loss)) // the last validation pass (every epoch end by default)
            fprintf(t->log, "  val %.4f %5.2f%%", t->val_loss, 100.0 * t->val_acc);
        fputc('\n', t->log);
        fflush(t->log);
    }
    t->run_loss = 0;
    t->run_correct = t->run_n = 0;
    t->last_log_time = now;
}
