/* cli/cmd.c: the foreground subcommands of `evowidth`: train, eval, layers.
 *
 * train: builds a trainer from a config, steps it to the end printing progress at a steady
 *        rate, evaluates on the test set, prints the summary, saves the model (a full run
 *        checkpoint) and optionally writes the summary as JSON (--report).
 * eval:  loads a saved model, reloads the test data its stored config names (or --config's),
 *        and prints / reports the same summary.
 * layers: prints each layer's width, parameters, MACs and top singular values. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"
#include "daemon/daemon_internal.h"
#include "svd_adapt/svd_adapt.h"

// ---- report -----------------------------------------------------------------------------

static cJSON *dmn__layers_json(const struct net *n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        size_t np = 0;
        for (size_t k = l->t0; k < l->t0 + l->n_t; k++)
            if (n->tensors[k].arena == NET_ARENA_PARAM) np += n->tensors[k].n;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", l->spec.name);
        cJSON_AddStringToObject(o, "kind", net_kind_name(l->spec.kind));
        cJSON_AddNumberToObject(o, "width",
                                (double)(l->spec.kind == NET_RES ? l->spec.width : l->out.c));
        if (l->spec.kind == NET_RES) cJSON_AddNumberToObject(o, "out", (double)l->spec.out);
        if (l->spec.rank) cJSON_AddNumberToObject(o, "rank", (double)l->spec.rank);
        cJSON_AddNumberToObject(o, "params", (double)np);
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
            cJSON_AddItemToArray(row, cJSON_CreateNumber((double)ev->confusion[i * ev->n_classes + j]));
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

// ---- train ------------------------------------------------------------------------------

static void dmn__usage_train(FILE *f)
{
    fprintf(f, "usage: evowidth train CONFIG [--epochs N] [--threads T] [--report FILE]\n"
               "                      [-o MODEL] [--set section.key=value ...] [--quiet]\n"
               "Trains in the foreground, prints progress, the test summary, and saves MODEL\n"
               "(default: model.evow) as a full checkpoint that eval/layers/evowidthd read.\n");
}

int dmn_cmd_train(int argc, char **argv)
{
    static const struct option opts[] = {
        {"epochs", required_argument, 0, 'e'}, {"threads", required_argument, 0, 't'},
        {"report", required_argument, 0, 'r'}, {"output", required_argument, 0, 'o'},
        {"set", required_argument, 0, 's'},    {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *report = NULL, *model_out = "model.evow";
    const char *sets[64];
    size_t n_sets = 0;
    long epochs = -1, threads = -1;
    int quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'e':
            epochs = strtol(optarg, &end, 10);
            if (*end || epochs < 1) {
                fprintf(stderr, "evowidth train: --epochs: \"%s\" is not a positive integer\n", optarg);
                return 2;
            }
            break;
        case 't':
            threads = strtol(optarg, &end, 10);
            if (*end || threads < 1 || threads > 256) {
                fprintf(stderr, "evowidth train: --threads: \"%s\" is not in [1, 256]\n", optarg);
                return 2;
            }
            break;
        case 'r': report = optarg; break;
        case 'o': model_out = optarg; break;
        case 's':
            if (n_sets < 64) sets[n_sets++] = optarg;
            break;
        case 'q': quiet = 1; break;
        case 'h': dmn__usage_train(stdout); return 0;
        default: dmn__usage_train(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        dmn__usage_train(stderr);
        return 2;
    }
    char err[1024];
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    if (!cfg) return 1;
    int rc = cfg_load_file(cfg, argv[optind], err, sizeof(err));
    for (size_t i = 0; rc == 0 && i < n_sets; i++) {
        char key[128];
        const char *eq = strchr(sets[i], '=');
        if (!eq || (size_t)(eq - sets[i]) >= sizeof(key)) {
            snprintf(err, sizeof(err), "--set %s: expected section.key=value", sets[i]);
            rc = -EINVAL;
            break;
        }
        memcpy(key, sets[i], (size_t)(eq - sets[i]));
        key[eq - sets[i]] = 0;
        rc = cfg_set(cfg, key, eq + 1, CFG_ANY, err, sizeof(err));
    }
    if (rc == 0 && epochs > 0) cfg->train.epochs = (size_t)epochs;
    if (rc == 0 && threads > 0) cfg->train.threads = (int)threads;
    if (rc < 0) {
        fprintf(stderr, "evowidth train: %s\n", err);
        free(cfg);
        return 1;
    }
    struct dmn_trainer *t = NULL;
    double t0 = dmn_now();
    if ((rc = dmn_trainer_create(&t, cfg, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidth train: %s\n", err);
        free(cfg);
        return 1;
    }
    free(cfg);
    t->log = quiet ? NULL : stdout;
    if (t->log) {
        fprintf(t->log, "evowidth train: %zu training / %zu validation / %zu test samples, "
                        "%zu parameters, %zu steps (%zu epochs of %zu)\n",
                t->train.n, t->val.n, t->test.n, t->net->n_params, t->total_steps,
                t->cfg.train.epochs, t->steps_per_epoch);
        dmn_print_layers(t->log, t->net);
    }
    t->last_log_time = dmn_now();
    int status = 0;
    while (!dmn_trainer_done(t)) {
        if ((rc = dmn_trainer_step(t)) < 0) {
            fprintf(stderr, "evowidth train: step %zu failed: %s\n", t->step,
                    rc == -EDOM ? "the loss is not finite (diverged: lower optimizer.lr)"
                                : strerror(-rc));
            status = 1;
            break;
        }
        dmn_trainer_progress(t, 0);
        if (t->val.n && t->step % t->steps_per_epoch == 0) {
            struct net_eval ev;
            if (dmn_trainer_eval(t, &t->val, &ev) == 0) {
                t->val_loss = ev.loss;
                t->val_acc = ev.accuracy;
                if (t->log)
                    fprintf(t->log, "epoch %zu done: validation loss %.4f accuracy %.2f%%\n",
                            t->step / t->steps_per_epoch, ev.loss, 100.0 * ev.accuracy);
                net_eval_free(&ev);
            }
        }
    }
    dmn_trainer_progress(t, 1);
    double wall = dmn_now() - t0;
    struct net_eval ev;
    if (dmn_trainer_eval(t, &t->test, &ev) < 0) {
        fprintf(stderr, "evowidth train: evaluation failed (out of memory)\n");
        dmn_trainer_destroy(t);
        return 1;
    }
    double sps = t->train_seconds > 0 ? (double)(t->step * t->cfg.train.batch_size) / t->train_seconds : 0;
    if (!quiet) {
        dmn_print_eval(stdout, "test", &ev);
        dmn_print_layers(stdout, t->net);
        printf("wall %.1f s, training %.1f s (%.0f samples/s), adaptation %.2f s (%.2f%%)\n", wall,
               t->train_seconds, sps, t->adapt_seconds,
               wall > 0 ? 100.0 * t->adapt_seconds / wall : 0.0);
    }
    if (model_out && model_out[0]) {
        if (dmn_trainer_save(t, model_out, err, sizeof(err)) < 0) {
            fprintf(stderr, "evowidth train: saving the model failed: %s\n", err);
            status = 1;
        } else if (!quiet) {
            printf("model saved to %s\n", model_out);
        }
    }
    if (report) {
        cJSON *o = dmn__eval_json(&ev);
        cJSON_AddNumberToObject(o, "params", (double)t->net->n_params);
        cJSON_AddNumberToObject(o, "initial_params", (double)t->initial_params);
        cJSON_AddNumberToObject(o, "flops_per_sample", (double)net_flops(t->net));
        cJSON_AddItemToObject(o, "layers", dmn__layers_json(t->net));
        cJSON_AddNumberToObject(o, "wall_seconds", wall);
        cJSON_AddNumberToObject(o, "train_seconds", t->train_seconds);
        cJSON_AddNumberToObject(o, "adapt_seconds", t->adapt_seconds);
        cJSON_AddNumberToObject(o, "samples_per_second", sps);
        cJSON_AddNumberToObject(o, "steps", (double)t->step);
        cJSON_AddNumberToObject(o, "epochs", (double)t->cfg.train.epochs);
        cJSON *ad = dmn__adapt_events_json(t);
        cJSON_AddItemToObject(o, "adaptations", ad ? ad : cJSON_CreateArray());
        if (dmn__write_json(report, o) < 0) status = 1;
        cJSON_Delete(o);
    }
    net_eval_free(&ev);
    dmn_trainer_destroy(t);
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
        snprintf(err, errlen, "%s has no stored config: pass --config CONFIG to name the data", path);
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
                 (*n)->in_shape.c, (*n)->in_shape.h, (*n)->in_shape.w, test->shape.c,
                 test->shape.h, test->shape.w);
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
        if (c == 'r') report = optarg;
        else if (c == 'c') config = optarg;
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
