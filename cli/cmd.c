/* cli/cmd.c: the foreground subcommands of `evowidth`: train, eval, layers.
 *
 * train: builds a trainer from a config (or, with --resume, continues the run saved in
 *        MODEL), runs the trainer's tick (dmn_trainer_tick, the loop evowidthd runs too) to
 *        the end, evaluates on the test set, prints the summary, saves the model (a full run
 *        checkpoint, also every daemon.checkpoint_every_steps) and optionally writes the
 *        summary as JSON (--report). SIGTERM / SIGINT finish the step, save MODEL and return
 *        0; a second signal exits at once.
 * eval:  loads a saved model, reloads the test data its stored config names (or --config's),
 *        and prints / reports the same summary.
 * layers: prints each layer's width, parameters, MACs and top singular values. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"
#include "daemon/daemon_internal.h"
#include "daemon/dist.h"
#include "svd_adapt/svd_adapt.h"

// ---- report -----------------------------------------------------------------------------

static cJSON *dmn__layers_json(const struct net *n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        struct net_layer_info li;
        net_layer_info(n, i, &li);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", l->spec.name);
        cJSON_AddStringToObject(o, "kind", net_kind_name(l->spec.kind));
        cJSON_AddNumberToObject(o, "width", (double)li.width);
        if (l->spec.kind == NET_RES) cJSON_AddNumberToObject(o, "out", (double)l->spec.out);
        if (l->spec.rank) cJSON_AddNumberToObject(o, "rank", (double)l->spec.rank);
        cJSON_AddNumberToObject(o, "params", (double)li.params);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static cJSON *dmn__eval_json(const struct net_eval *ev)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "test_accuracy", ev->accuracy);
    cJSON_AddNumberToObject(o, "test_loss", ev->loss);
    cJSON_AddNumberToObject(o, "test_samples", (double)ev->n);
    cJSON *pc = cJSON_AddArrayToObject(o, "per_class");
    for (size_t k = 0; k < ev->n_classes; k++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "class", (double)k);
        cJSON_AddNumberToObject(c, "precision", ev->precision[k]);
        cJSON_AddNumberToObject(c, "recall", ev->recall[k]);
        cJSON_AddNumberToObject(c, "f1", ev->f1[k]);
        cJSON_AddItemToArray(pc, c);
    }
    cJSON *cm = cJSON_AddArrayToObject(o, "confusion");
    for (size_t i = 0; i < ev->n_classes; i++) {
        cJSON *row = cJSON_CreateArray();
        for (size_t j = 0; j < ev->n_classes; j++)
            cJSON_AddItemToArray(row,
                                 cJSON_CreateNumber((double)ev->confusion[i * ev->n_classes + j]));
        cJSON_AddItemToArray(cm, row);
    }
    return o;
}

static int dmn__write_json(const char *path, cJSON *o)
{
    char *s = cJSON_Print(o);
    if (!s) return -ENOMEM;
    FILE *f = fopen(path, "w");
    if (!f) {
        int e = errno;
        fprintf(stderr, "evowidth: cannot write report %s: %s\n", path, strerror(e));
        free(s);
        return -e;
    }
    int bad = fputs(s, f) < 0 || fputc('\n', f) < 0;
    bad |= fclose(f) != 0;
    free(s);
    if (bad) fprintf(stderr, "evowidth: error writing report %s\n", path);
    return bad ? -EIO : 0;
}

// ---- train ----------------------------------------------------------------------------

static void dmn__usage_train(FILE *f)
{
    fprintf(f,
            "usage: evowidth train CONFIG [--epochs N] [--threads T] [--report FILE]\n"
            "                      [-o MODEL] [--set section.key=value ...] [--resume] [--quiet]\n"
            "Trains in the foreground, prints progress, the test summary, and saves MODEL\n"
            "(default: model.evow) as a full checkpoint that eval/layers/evowidthd read,\n"
            "also every daemon.checkpoint_every_steps steps. SIGTERM / Ctrl-C finish the step,\n"
            "save MODEL and exit 0 (a second signal exits at once); --resume continues the\n"
            "run saved in MODEL (a new run when there is none). Every config knob with its\n"
            "default and range: evowidth train --help-config (or evowidthd --help-config).\n");
}

struct dmn_train_opts {
    const char *config, *report, *model_out;
    const char *sets[64];
    size_t n_sets;
    long epochs, threads;
    int quiet, resume;
};

/* Parses argv; returns -1 to go on, else the exit code. */
static int dmn__train_args(int argc, char **argv, struct dmn_train_opts *o)
{
    static const struct option opts[] = {
        {"epochs", required_argument, 0, 'e'}, {"threads", required_argument, 0, 't'},
        {"report", required_argument, 0, 'r'}, {"output", required_argument, 0, 'o'},
        {"set", required_argument, 0, 's'},    {"quiet", no_argument, 0, 'q'},
        {"resume", no_argument, 0, 'R'},       {"help", no_argument, 0, 'h'},
        {"help-config", no_argument, 0, 'H'},  {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof(*o));
    o->model_out = "model.evow";
    o->epochs = o->threads = -1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'e':
            o->epochs = strtol(optarg, &end, 10);
            if (*end || o->epochs < 1) {
                fprintf(stderr, "evowidth train: --epochs: \"%s\" is not a positive integer\n",
                        optarg);
                return 2;
            }
            break;
        case 't':
            o->threads = strtol(optarg, &end, 10);
            if (*end || o->threads < 1 || o->threads > 256) {
                fprintf(stderr, "evowidth train: --threads: \"%s\" is not in [1, 256]\n", optarg);
                return 2;
            }
            break;
        case 'r': o->report = optarg; break;
        case 'o': o->model_out = optarg; break;
        case 's':
            if (o->n_sets < 64) o->sets[o->n_sets++] = optarg;
            break;
        case 'q': o->quiet = 1; break;
        case 'R': o->resume = 1; break;
        case 'h': dmn__usage_train(stdout); return 0;
        case 'H': cfg_help(stdout); return 0;
        default: dmn__usage_train(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        dmn__usage_train(stderr);
        return 2;
    }
    if (o->resume && !o->model_out[0]) {
        fprintf(stderr, "evowidth train: --resume needs -o MODEL (the run to continue)\n");
        return 2;
    }
    o->config = argv[optind];
    return -1;
}

/* The run's config: CONFIG, then --set, --epochs, --threads. */
static int dmn__train_config(const struct dmn_train_opts *o, struct dmn_config *cfg, char *err,
                             size_t errlen)
{
    int rc = cfg_load_file(cfg, o->config, err, errlen);
    for (size_t i = 0; rc == 0 && i < o->n_sets; i++) {
        char key[128];
        const char *eq = strchr(o->sets[i], '=');
        if (!eq || (size_t)(eq - o->sets[i]) >= sizeof(key)) {
            snprintf(err, errlen, "--set %s: expected section.key=value", o->sets[i]);
            return -EINVAL;
        }
        memcpy(key, o->sets[i], (size_t)(eq - o->sets[i]));
        key[eq - o->sets[i]] = 0;
        rc = cfg_set(cfg, key, eq + 1, CFG_ANY, err, errlen);
    }
    if (rc == 0 && o->epochs > 0) cfg->train.epochs = (size_t)o->epochs;
    if (rc == 0 && o->threads > 0) cfg->train.threads = (int)o->threads;
    return rc;
}

/* Continues the run saved in path with cfg's runtime knobs (epochs, lr, policy, ...). The
 * settings that cannot change must equal the stored ones; the sections that differ are
 * named. */
static int dmn__train_resume(struct dmn_trainer **out, const char *path,
                             const struct dmn_config *cfg, char *err, size_t errlen)
{
    static const char *const sections[] = {"data",     "synthetic", "model", "optimizer",
                                           "schedule", "train",     "adapt", "daemon"};
    struct dmn_trainer *t = NULL;
    int rc = dmn_trainer_load(&t, path, err, errlen);
    if (rc < 0) return rc;
    struct dmn_config *chk = malloc(sizeof(*chk));
    if (!chk) {
        dmn_trainer_destroy(t);
        return -ENOMEM;
    }
    *chk = t->cfg;
    rc = cfg_copy_runtime(chk, cfg, err, errlen);
    if (rc == 0 && !cfg_equal(chk, cfg)) {
        size_t n = (size_t)snprintf(err, errlen,
                                    "%s was trained with other settings than "
                                    "these (they differ in",
                                    path);
        for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
            cJSON *a = cfg_section_to_json(chk, sections[i]),
                  *b = cfg_section_to_json(cfg, sections[i]);
            if (!cJSON_Compare(a, b, 1) && n < errlen)
                n += (size_t)snprintf(err + n, errlen - n, " %s", sections[i]);
            cJSON_Delete(a);
            cJSON_Delete(b);
        }
        if (n < errlen)
            snprintf(err + n, errlen - n,
                     "): pass the same CONFIG and --set options, or start "
                     "over without --resume");
        rc = -EINVAL;
    }
    if (rc == 0) rc = dmn_trainer_set_runtime(t, cfg, err, errlen);
    free(chk);
    if (rc < 0) {
        dmn_trainer_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

// SIGTERM / SIGINT: the loop finishes its step, saves and returns; a second one exits at
// once (_exit in the handler: the process is being killed, as in evowidthd). Any thread
// (OpenMP's too) may take a signal, so the flag is swapped atomically (lock-free, hence
// async-signal-safe).
static atomic_int dmn__train_signal;

static void dmn__train_on_signal(int sig)
{
    if (atomic_exchange(&dmn__train_signal, sig)) {
        static const char msg[] = "evowidth train: second signal, exiting now\n";
        if (write(2, msg, sizeof(msg) - 1) < 0) { /* nothing more to do */
        }
        _exit(128 + sig);
    }
}

/* Steps to the end or to a signal; saves MODEL when a checkpoint is due. Returns 0, or 1 if a
 * step failed. */
static int dmn__train_loop(struct dmn_trainer *t, const struct dmn_train_opts *o)
{
    char err[1024];
    t->last_log_time = dmn_now();
    while (!dmn_trainer_done(t)) {
        // Several ranks: a signal to any of them stops all at this step boundary.
        int sig = dmn_dist_max_int(atomic_load(&dmn__train_signal));
        if (sig) {
            int none = 0;
            atomic_compare_exchange_strong(&dmn__train_signal, &none, sig);
            break;
        }
        struct dmn_tick tk;
        int rc = dmn_trainer_tick(t, &tk);
        if (rc < 0) {
            fprintf(stderr, "evowidth train: step %zu failed: %s\n", t->step,
                    rc == -EDOM ? "the loss is not finite (diverged: lower optimizer.lr)"
                                : strerror(-rc));
            return 1;
        }
        if (tk.evaluated && t->log) {
            if (t->step % t->steps_per_epoch == 0)
                fprintf(t->log, "epoch %zu done: validation loss %.4f accuracy %.2f%%\n",
                        t->step / t->steps_per_epoch, t->val_loss, 100.0 * t->val_acc);
            else
                fprintf(t->log, "step %zu: validation loss %.4f accuracy %.2f%%\n", t->step,
                        t->val_loss, 100.0 * t->val_acc);
        }
        // The final save comes after the test summary; periodic ones keep a run resumable.
        if (tk.checkpoint_due && !dmn_trainer_done(t) && o->model_out[0] && dmn_dist_is_root() &&
            dmn_trainer_save(t, o->model_out, err, sizeof(err)) < 0)
            fprintf(stderr, "evowidth train: checkpoint failed: %s\n", err);
    }
    return 0;
}

/* After a signal: the run checkpoint in MODEL, to continue with --resume. */
static int dmn__train_interrupted(struct dmn_trainer *t, const struct dmn_train_opts *o)
{
    char err[1024];
    const char *sig = atomic_load(&dmn__train_signal) == SIGINT ? "SIGINT" : "SIGTERM";
    if (!dmn_dist_is_root()) return 0; // rank 0 saves the run
    dmn_trainer_progress(t, 1);
    if (!o->model_out[0]) {
        fprintf(stderr, "evowidth train: %s at step %zu; no -o MODEL, nothing saved\n", sig,
                t->step);
        return 1;
    }
    if (dmn_trainer_save(t, o->model_out, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth train: %s at step %zu; saving the checkpoint failed: %s\n", sig,
                t->step, err);
        return 1;
    }
    fprintf(stderr,
            "evowidth train: %s at step %zu of %zu; checkpoint %s (continue with --resume)\n", sig,
            t->step, t->total_steps, o->model_out);
    return 0;
}

/* The end of a run: test summary, MODEL, --report. */
static int dmn__train_finish(struct dmn_trainer *t, const struct dmn_train_opts *o, double wall)
{
    char err[1024];
    int status = 0;
    // Every rank's parameter checksum (equal when the ranks stayed identical); rank 0 reports.
    const int W = dmn_dist_size();
    uint32_t *sums = calloc((size_t)W, sizeof(uint32_t));
    if (!sums || dmn_dist_gather_u32(dmn_dist_param_crc(t->net), sums) < 0) {
        fprintf(stderr, "evowidth train: cannot gather the parameter checksums\n");
        free(sums);
        return 1;
    }
    if (!dmn_dist_is_root()) {
        free(sums);
        return 0;
    }
    struct net_eval ev;
    if (dmn_trainer_eval(t, &t->test, &ev) < 0) {
        free(sums);
        fprintf(stderr, "evowidth train: evaluation failed (out of memory)\n");
        return 1;
    }
    double sps =
        t->train_seconds > 0 ? (double)(t->step * t->cfg.train.batch_size) / t->train_seconds : 0;
    if (!o->quiet) {
        dmn_print_eval(stdout, "test", &ev);
        dmn_print_layers(stdout, t->net);
        printf("wall %.1f s, training %.1f s (%.0f samples/s), adaptation %.2f s (%.2f%%)\n", wall,
               t->train_seconds, sps, t->adapt_seconds,
               wall > 0 ? 100.0 * t->adapt_seconds / wall : 0.0);
    }
    if (o->model_out[0]) {
        if (dmn_trainer_save(t, o->model_out, err, sizeof(err)) < 0) {
            fprintf(stderr, "evowidth train: saving the model failed: %s\n", err);
            status = 1;
        } else if (!o->quiet) {
            printf("model saved to %s\n", o->model_out);
        }
    }
    if (o->report) {
        cJSON *r = dmn__eval_json(&ev);
        cJSON_AddNumberToObject(r, "params", (double)t->net->n_params);
        cJSON_AddNumberToObject(r, "initial_params", (double)t->initial_params);
        cJSON_AddNumberToObject(r, "macs_per_sample", (double)net_macs(t->net));
        cJSON_AddItemToObject(r, "layers", dmn__layers_json(t->net));
        cJSON_AddNumberToObject(r, "wall_seconds", wall);
        cJSON_AddNumberToObject(r, "train_seconds", t->train_seconds);
        cJSON_AddNumberToObject(r, "adapt_seconds", t->adapt_seconds);
        // CPU time of this process (since a --resume), its adaptation share: what a loaded
        // machine does not distort.
        cJSON_AddNumberToObject(r, "cpu_seconds", dmn_cpu_now());
        cJSON_AddNumberToObject(r, "adapt_cpu_seconds", t->adapt_cpu_seconds);
        cJSON_AddNumberToObject(r, "samples_per_second", sps);
        cJSON_AddNumberToObject(r, "steps", (double)t->step);
        cJSON_AddNumberToObject(r, "epochs", (double)t->cfg.train.epochs);
        // The validation split's figures, for model selection without touching the test set.
        struct net_eval vev;
        if (t->val.n && dmn_trainer_eval(t, &t->val, &vev) == 0) {
            cJSON_AddNumberToObject(r, "val_accuracy", vev.accuracy);
            cJSON_AddNumberToObject(r, "val_loss", vev.loss);
            net_eval_free(&vev);
        }
        cJSON *ad = dmn__adapt_events_json(t);
        cJSON_AddItemToObject(r, "adaptations", ad ? ad : cJSON_CreateArray());
        struct dmn_dist_stats ds;
        dmn_dist_stats(&ds);
        cJSON_AddNumberToObject(r, "world_size", W);
        cJSON *cs = cJSON_AddArrayToObject(r, "param_checksums");
        for (int i = 0; i < W; i++) cJSON_AddItemToArray(cs, cJSON_CreateNumber((double)sums[i]));
        cJSON_AddNumberToObject(r, "allreduce_seconds", ds.allreduce_seconds);
        cJSON_AddNumberToObject(r, "allreduce_bytes", (double)ds.allreduce_bytes);
        if (dmn__write_json(o->report, r) < 0) status = 1;
        cJSON_Delete(r);
    }
    net_eval_free(&ev);
    free(sums);
    return status;
}

int dmn_cmd_train(int argc, char **argv)
{
    struct dmn_train_opts o;
    int rc = dmn__train_args(argc, argv, &o);
    if (rc >= 0) return rc;
    char err[1024];
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    if (!cfg) return 1;
    if ((rc = dmn__train_config(&o, cfg, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidth train: %s\n", err);
        free(cfg);
        return 1;
    }
    // Signals are caught from here on: a stop during data loading saves the step-0 run.
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = dmn__train_on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    atomic_store(&dmn__train_signal, 0);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    struct dmn_trainer *t = NULL;
    double t0 = dmn_now();
    // Several ranks (daemon/dist.h): rank 0 builds or resumes the run, the others take it.
    const int root = dmn_dist_is_root();
    int resumed = root && o.resume && access(o.model_out, F_OK) == 0;
    rc = !root     ? 0
         : resumed ? dmn__train_resume(&t, o.model_out, cfg, err, sizeof(err))
                   : dmn_trainer_create(&t, cfg, err, sizeof(err));
    int own = rc < 0; // this rank's own failure (else, the others are told)
    rc = dmn_dist_share_trainer(&t, rc, NULL, 0, err, sizeof(err));
    free(cfg);
    int status = 1;
    if (rc < 0) {
        if (own || root || strncmp(err, "rank 0 could not", 16) != 0)
            fprintf(stderr, "evowidth train: %s\n", err);
        goto out;
    }
    t->log = o.quiet || !root ? NULL : stdout;
    t->events_in_checkpoint = 1; // MODEL is the whole run: no state dir holds its event log
    if (t->log) {
        if (resumed)
            fprintf(t->log, "evowidth train: resumed %s at step %zu of %zu\n", o.model_out, t->step,
                    t->total_steps);
        else if (o.resume)
            fprintf(t->log, "evowidth train: no %s yet, starting a new run\n", o.model_out);
        fprintf(t->log,
                "evowidth train: %zu training / %zu validation / %zu test samples, "
                "%zu parameters, %zu steps (%zu epochs of %zu)\n",
                t->train.n, t->val.n, t->test.n, t->net->n_params, t->total_steps,
                t->cfg.train.epochs, t->steps_per_epoch);
        dmn_print_layers(t->log, t->net);
    }
    status = dmn__train_loop(t, &o);
    if (atomic_load(&dmn__train_signal)) {
        status = dmn__train_interrupted(t, &o);
    } else { // done, or a failed step: the summary and the model as they are
        dmn_trainer_progress(t, 1);
        status |= dmn__train_finish(t, &o, dmn_now() - t0);
    }
out:
    dmn_trainer_destroy(t);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return status;
}

// ---- eval / layers ----------------------------------------------------------------------

/* Loads the model and the test set its config names. */
static int dmn__load_for_eval(const char *path, const char *config_path, struct net **n,
                              struct net_dataset *test, char *err, size_t errlen)
{
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    struct dmn_trainer *t = NULL;
    int rc = cfg ? net_load_any(path, n, NULL, NULL, &bl, &nbl, err, errlen) : -ENOMEM;
    if (rc < 0) goto out;
    const struct ckpt_blob *conf = ckpt_blob_find(bl, nbl, "CONF");
    if (config_path) {
        rc = cfg_load_file(cfg, config_path, err, errlen);
    } else if (conf) {
        rc = cfg_load_json(cfg, conf->data, conf->len, err, errlen);
    } else {
        snprintf(err, errlen, "%s has no stored config: pass --config CONFIG to name the data",
                 path);
        rc = -EINVAL;
    }
    if (rc < 0) goto out;
    // The trainer loads and splits data exactly as in training; keep only its test set.
    cfg->data.val_split = 0;
    cfg->adapt.enabled = 0;
    if ((rc = dmn_trainer_create(&t, cfg, err, errlen)) < 0) goto out;
    *test = t->test;
    memset(&t->test, 0, sizeof(t->test));
    // Re-normalise with the model's own statistics: undo the trainer's, apply the model's.
    for (size_t c = 0; c < test->shape.c && c < 4; c++) {
        size_t HW = test->shape.h * test->shape.w;
        float a = t->net->norm_std[c] / (*n)->norm_std[c];
        float b = (t->net->norm_mean[c] - (*n)->norm_mean[c]) / (*n)->norm_std[c];
        for (size_t i = 0; i < test->n; i++) {
            float *x = test->x + (i * test->shape.c + c) * HW;
            for (size_t k = 0; k < HW; k++) x[k] = x[k] * a + b;
        }
    }
    if (test->shape.c != (*n)->in_shape.c || test->shape.h != (*n)->in_shape.h ||
        test->shape.w != (*n)->in_shape.w) {
        snprintf(err, errlen, "%s expects %zux%zux%zu inputs but the data are %zux%zux%zu", path,
                 (*n)->in_shape.c, (*n)->in_shape.h, (*n)->in_shape.w, test->shape.c, test->shape.h,
                 test->shape.w);
        net_data_free(test);
        rc = -EINVAL;
    }
out:
    if (rc < 0) {
        net_destroy(*n);
        *n = NULL;
    }
    dmn_trainer_destroy(t);
    ckpt_blobs_free(bl, nbl);
    free(cfg);
    return rc;
}

int dmn_cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {{"report", required_argument, 0, 'r'},
                                         {"config", required_argument, 0, 'c'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *report = NULL, *config = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'r')
            report = optarg;
        else if (c == 'c')
            config = optarg;
        else {
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: evowidth eval MODEL [--config CONFIG] [--report FILE]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: evowidth eval MODEL [--config CONFIG] [--report FILE]\n");
        return 2;
    }
    char err[1024];
    struct net *n = NULL;
    struct net_dataset test = {0};
    if (dmn__load_for_eval(argv[optind], config, &n, &test, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth eval: %s\n", err);
        return 1;
    }
    struct net_eval ev;
    double t0 = dmn_now();
    int rc = net_evaluate(n, &test, 256, &ev);
    double wall = dmn_now() - t0;
    if (rc < 0) {
        fprintf(stderr, "evowidth eval: evaluation failed: %s\n", strerror(-rc));
        net_destroy(n);
        net_data_free(&test);
        return 1;
    }
    dmn_print_eval(stdout, "test", &ev);
    dmn_print_layers(stdout, n);
    int status = 0;
    if (report) {
        cJSON *o = dmn__eval_json(&ev);
        cJSON_AddNumberToObject(o, "params", (double)n->n_params);
        cJSON_AddItemToObject(o, "layers", dmn__layers_json(n));
        cJSON_AddNumberToObject(o, "wall_seconds", wall);
        cJSON_AddNumberToObject(o, "samples_per_second", wall > 0 ? (double)test.n / wall : 0);
        if (dmn__write_json(report, o) < 0) status = 1;
        cJSON_Delete(o);
    }
    net_eval_free(&ev);
    net_data_free(&test);
    net_destroy(n);
    return status;
}

int dmn_cmd_layers(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(argc == 2 ? stdout : stderr, "usage: evowidth layers CHECKPOINT\n");
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    char err[1024];
    struct net *n = NULL;
    if (net_load_any(argv[1], &n, NULL, NULL, NULL, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth layers: %s\n", err);
        return 1;
    }
    dmn_print_layers(stdout, n);
    dmn_print_spectra(stdout, n);
    net_destroy(n);
    return 0;
}
