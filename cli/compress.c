/* cli/compress.c: `evowidth compress | sweep | thin | export`, tools on saved models.
 *
 * compress: the SVD trick on one or all dense / conv layers (svd_set_rank: W ~ U_r (S_r V_r^T),
 *           the dropped part's effect on the mean input folded into the bias), a fixed rank
 *           or one chosen from the spectrum (svd_rank_rule: spectral gap and / or energy),
 *           optional fine-tuning, and a smaller model that eval and the daemon load.
 * sweep:    the CaffeSVD experiment on one layer: for each rank, accuracy, mean precision,
 *           recall and F1, MACs, parameters and compression rate, before and after an
 *           optional short fine-tune; a readable table and CSV.
 * thin:     a thin network from a wide one, group by group from the input: the units kept
 *           are chosen by pivoted QR on calibration activations of every reader at once (the
 *           simultaneous selection of SOMP, svd_shrink's select mode) and the readers are
 *           rewired by least squares; optional fine-tuning.
 * export:   Deep Compression into the "EVWZ" file of net/export.c (pruning, per-layer k-means
 *           with codebook fine-tuning, float16, deflate), with the size of each part and the
 *           accuracy of the file as reloaded.
 *
 * Every command opens the model the same way: a run checkpoint (what `evowidth train` and the
 * daemon write) becomes a full trainer through dmn_trainer_load, so the output is again a run
 * checkpoint at the same step that the daemon can resume; any other model (a plain model
 * file, an EVWZ file) gets a trainer built from its stored config with the model swapped in,
 * its data re-normalised with the model's own statistics. Fine-tuning runs the trainer's own
 * steps at a constant learning rate with adaptation and group lasso off and a fresh
 * optimizer; the step counter and the schedule are restored afterwards, so tuning steps do not
 * count against the run's schedule. Calibration batches come from the training set through a
 * private seeded stream (the run's RNG is not advanced). Errors print one line naming the
 * file or option; exit codes are 0 ok, 1 failure, 2 usage. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "svd_adapt/svd_adapt.h"

#define CMP_MAX_LAYERS 64
#define CMP_MAX_RANKS 4096
#define CMP_CALIB_SEED 0xc0a1b5eedULL

// ---- opening and saving a model ---------------------------------------------------------

struct cmp_ctx {
    struct dmn_trainer *t; // owns the data and the current net
    struct dmn_config cfg; // the model's own config, restored before saving
    int from_run;          // opened as a run checkpoint
};

/* Re-normalises d from the statistics of net a to those of net b (in place). */
static void cmp__renorm(struct net_dataset *d, const struct net *a, const struct net *b)
{
    const size_t HW = d->shape.h * d->shape.w;
    for (size_t c = 0; c < d->shape.c && c < 4; c++) {
        float s = a->norm_std[c] / b->norm_std[c];
        float o = (a->norm_mean[c] - b->norm_mean[c]) / b->norm_std[c];
        if (s == 1.0f && o == 0.0f) continue;
        for (size_t i = 0; i < d->n; i++) {
            float *x = d->x + (i * d->shape.c + c) * HW;
            for (size_t k = 0; k < HW; k++) x[k] = x[k] * s + o;
        }
    }
}

/* A model that is not a run checkpoint: a trainer from its stored (or --config) config. */
static int cmp__open_model(struct cmp_ctx *c, const char *path, const char *config, char *err,
                           size_t errlen)
{
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    int rc = cfg ? net_load_any(path, &n, NULL, NULL, &bl, &nbl, err, errlen) : -ENOMEM;
    if (rc < 0) goto out;
    const struct ckpt_blob *conf = ckpt_blob_find(bl, nbl, "CONF");
    char why[512];
    if (config) {
        rc = cfg_load_file(cfg, config, err, errlen);
    } else if (!conf) {
        snprintf(err, errlen, "%s has no stored config: pass --config CONFIG to name the data",
                 path);
        rc = -EINVAL;
    } else if ((rc = cfg_load_json(cfg, conf->data, conf->len, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "%s: stored config is invalid: %s", path, why);
    }
    if (rc < 0) goto out;
    c->cfg = *cfg;
    cfg->adapt.enabled = 0;
    if ((rc = dmn_trainer_create(&c->t, cfg, err, errlen)) < 0) goto out;
    struct dmn_trainer *t = c->t;
    if (n->in_shape.c != t->net->in_shape.c || n->in_shape.h != t->net->in_shape.h ||
        n->in_shape.w != t->net->in_shape.w || n->n_classes != t->net->n_classes) {
        snprintf(err, errlen,
                 "%s expects %zux%zux%zu inputs and %zu classes but its data are "
                 "%zux%zux%zu with %zu classes",
                 path, n->in_shape.c, n->in_shape.h, n->in_shape.w, n->n_classes,
                 t->net->in_shape.c, t->net->in_shape.h, t->net->in_shape.w, t->net->n_classes);
        rc = -EINVAL;
        goto out;
    }
    cmp__renorm(&t->train, t->net, n);
    cmp__renorm(&t->val, t->net, n);
    cmp__renorm(&t->test, t->net, n);
    if ((rc = net_reserve(n, t->cfg.train.batch_size)) < 0) {
        snprintf(err, errlen, "out of memory for the model's workspace");
        goto out;
    }
    net_destroy(t->net);
    t->net = n;
    n = NULL;
    rc = 0;
out:
    if (rc < 0) {
        dmn_trainer_destroy(c->t);
        c->t = NULL;
    }
    net_destroy(n);
    ckpt_blobs_free(bl, nbl);
    free(cfg);
    return rc;
}

static int cmp__open(struct cmp_ctx *c, const char *path, const char *config, int threads,
                     char *err, size_t errlen)
{
    int rc = -1;
    if (!config) rc = dmn_trainer_load(&c->t, path, err, errlen);
    if (rc == 0) {
        c->from_run = 1;
        c->cfg = c->t->cfg;
    } else if ((rc = cmp__open_model(c, path, config, err, errlen)) < 0) {
        return rc;
    }
    // Working settings; c->cfg keeps the model's own for the saved file.
    c->t->cfg.adapt.enabled = 0;
    c->t->cfg.optimizer.group_lasso = 0.0;
    if (threads > 0) c->t->cfg.train.threads = threads;
    net_set_threads(c->t->cfg.train.threads);
    return 0;
}

static void cmp__close(struct cmp_ctx *c)
{
    dmn_trainer_destroy(c->t);
    c->t = NULL;
}

/* Saves the current net as a run checkpoint (eval, layers and evowidthd read it). */
static int cmp__save(struct cmp_ctx *c, const char *path, char *err, size_t errlen)
{
    struct dmn_config work = c->t->cfg;
    c->t->cfg = c->cfg;
    int rc = dmn_trainer_save(c->t, path, err, errlen);
    c->t->cfg = work;
    return rc;
}

static long cmp__file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Replaces the trainer's net (old one freed). */
static int cmp__swap(struct dmn_trainer *t, struct net *nn)
{
    if (net_reserve(nn, t->cfg.train.batch_size) < 0) {
        net_destroy(nn);
        return -ENOMEM;
    }
    net_destroy(t->net);
    t->net = nn;
    return 0;
}

// ---- evaluation, fine-tuning, calibration -----------------------------------------------

struct cmp_metrics {
    double acc, loss, prec, rec, f1; // test set; precision etc. are means over classes
};

static int cmp__eval(struct dmn_trainer *t, struct cmp_metrics *m)
{
    struct net_eval ev;
    int rc = dmn_trainer_eval(t, &t->test, &ev);
    if (rc < 0) return rc;
    m->acc = ev.accuracy;
    m->loss = ev.loss;
    m->prec = m->rec = m->f1 = 0.0;
    for (size_t k = 0; k < ev.n_classes; k++) {
        m->prec += ev.precision[k] / (double)ev.n_classes;
        m->rec += ev.recall[k] / (double)ev.n_classes;
        m->f1 += ev.f1[k] / (double)ev.n_classes;
    }
    net_eval_free(&ev);
    return 0;
}

static void cmp__print_metrics(const char *what, const struct cmp_metrics *m)
{
    printf("  %-34s accuracy %6.2f%%  loss %.4f  mean P/R/F1 %.4f/%.4f/%.4f\n", what,
           100.0 * m->acc, m->loss, m->prec, m->rec, m->f1);
}

/* steps trainer steps at constant lr from a fresh optimizer; step count and schedule kept. */
static int cmp__finetune(struct dmn_trainer *t, size_t steps, double lr)
{
    struct net_optim o = {0};
    cfg_net_optim(&t->cfg, &o);
    t->opt = o;
    memset(t->net->m, 0, t->net->n_params * sizeof(float));
    memset(t->net->v, 0, t->net->n_params * sizeof(float));
    const struct net_sched saved = t->sched;
    const size_t step0 = t->step;
    t->sched = (struct net_sched){.kind = NET_SCHED_CONST, .lr = (float)lr, .min_lr = 0.0f};
    int rc = 0;
    for (size_t i = 0; i < steps && rc == 0; i++) rc = dmn_trainer_step(t);
    t->sched = saved;
    t->step = step0;
    return rc;
}

/* Batcher position and order, to give several fine-tunes the same batches. */
struct cmp_bstate {
    size_t pos, epoch;
    uint64_t rng;
    uint32_t *perm;
};

static int cmp__bsave(const struct net_batcher *b, struct cmp_bstate *s)
{
    s->pos = b->pos;
    s->epoch = b->epoch;
    s->rng = b->rng;
    if (!(s->perm = malloc(b->n * sizeof(uint32_t) + 1))) return -ENOMEM;
    memcpy(s->perm, b->perm, b->n * sizeof(uint32_t));
    return 0;
}

static void cmp__brestore(struct net_batcher *b, const struct cmp_bstate *s)
{
    b->pos = s->pos;
    b->epoch = s->epoch;
    b->rng = s->rng;
    memcpy(b->perm, s->perm, b->n * sizeof(uint32_t));
}

/* B training samples drawn without replacement from a private seeded stream (malloc'ed). */
static int cmp__calib(const struct dmn_trainer *t, size_t B, float **x, uint8_t **y)
{
    const struct net_dataset *d = &t->train;
    const size_t D = d->shape.c * d->shape.h * d->shape.w;
    if (B > d->n) B = d->n;
    float *xb = malloc(B * D * sizeof(float) + 1);
    uint8_t *yb = malloc(B + 1);
    uint32_t *idx = malloc(d->n * sizeof(uint32_t) + 1);
    if (!xb || !yb || !idx) {
        free(xb);
        free(yb);
        free(idx);
        return -ENOMEM;
    }
    uint64_t rng = t->cfg.train.seed ^ CMP_CALIB_SEED;
    for (size_t i = 0; i < d->n; i++) idx[i] = (uint32_t)i;
    for (size_t i = 0; i < B; i++) { // partial Fisher-Yates
        size_t j = i + net_rand_below(&rng, d->n - i);
        uint32_t tmp = idx[i];
        idx[i] = idx[j];
        idx[j] = tmp;
        memcpy(xb + i * D, d->x + (size_t)idx[i] * D, D * sizeof(float));
        yb[i] = d->y[idx[i]];
    }
    free(idx);
    *x = xb;
    if (y)
        *y = yb;
    else
        free(yb);
    return (int)B;
}

/* Mean input of layer li in its fan-in layout (dense: IN; conv: C*K*K im2col order), over the
 * calibration batch, by chunks of at most 256 samples in eval mode. out is malloc'ed. */
static int cmp__mean_in(struct net *n, size_t li, const float *x, size_t B, float **out)
{
    const struct net_layer *l = &n->layers[li];
    const size_t D = n->in_shape.c * n->in_shape.h * n->in_shape.w;
    const int conv = l->spec.kind == NET_CONV;
    const size_t C = l->in.c, H = l->in.h, W = l->in.w, K = conv ? l->spec.k : 1;
    const size_t S = conv ? (l->spec.stride ? l->spec.stride : 1) : 1, P = conv ? l->spec.pad : 0;
    const size_t OH = l->out.h, OW = l->out.w, L = conv ? C * K * K : C * H * W;
    double *acc = calloc(L, sizeof(double));
    float *mean = malloc(L * sizeof(float));
    if (!acc || !mean) {
        free(acc);
        free(mean);
        return -ENOMEM;
    }
    for (size_t i0 = 0; i0 < B; i0 += 256) {
        const size_t Bc = B - i0 < 256 ? B - i0 : 256;
        net_forward(n, x + i0 * D, NULL, Bc, 0);
        const float *a = n->acts[li];
        if (!conv) { // (Bc, L)
            for (size_t b = 0; b < Bc; b++)
                for (size_t j = 0; j < L; j++) acc[j] += a[b * L + j];
            continue;
        }
        // (C, Bc, H, W): tap (ki, kj) of output (oy, ox) reads row oy*S - P + ki.
        for (size_t c = 0; c < C; c++)
            for (size_t ki = 0; ki < K; ki++)
                for (size_t kj = 0; kj < K; kj++) {
                    double s = 0.0;
                    for (size_t b = 0; b < Bc; b++) {
                        const float *img = a + (c * Bc + b) * H * W;
                        for (size_t oy = 0; oy < OH; oy++) {
                            long iy = (long)(oy * S + ki) - (long)P;
                            if (iy < 0 || iy >= (long)H) continue;
                            for (size_t ox = 0; ox < OW; ox++) {
                                long ix = (long)(ox * S + kj) - (long)P;
                                if (ix >= 0 && ix < (long)W) s += img[iy * (long)W + ix];
                            }
                        }
                    }
                    acc[(c * K + ki) * K + kj] += s;
                }
    }
    const double cnt = (double)B * (conv ? (double)(OH * OW) : 1.0);
    for (size_t j = 0; j < L; j++) mean[j] = (float)(acc[j] / cnt);
    free(acc);
    *out = mean;
    return 0;
}

// ---- small helpers ----------------------------------------------------------------------

/* Parameters and multiply-adds of one layer. */
static size_t cmp__layer_params(const struct net *n, size_t li)
{
    struct net_layer_info info;
    net_layer_info(n, li, &info);
    return info.params;
}

static size_t cmp__layer_macs(const struct net *n, size_t li)
{
    struct net_layer_info info;
    net_layer_info(n, li, &info);
    return info.macs;
}

/* Weights of a dense / conv layer as an m x L matrix (rank r: m r + r L). */
static void cmp__dims(const struct net *n, size_t li, size_t *m, size_t *L)
{
    const struct net_layer *l = &n->layers[li];
    *m = l->spec.out;
    *L = l->spec.kind == NET_CONV ? l->in.c * l->spec.k * l->spec.k : l->in.c * l->in.h * l->in.w;
}

static int cmp__parse_size(const char *cmd, const char *opt, const char *s, size_t lo, size_t hi,
                           size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "evowidth %s: %s: \"%s\" is not an integer in [%zu, %zu]\n", cmd, opt, s,
                lo, hi);
        return -EINVAL;
    }
    *out = (size_t)v;
    return 0;
}

static int cmp__parse_dbl(const char *cmd, const char *opt, const char *s, double lo, double hi,
                          int lo_open, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v > hi || v < lo || (lo_open && v == lo)) {
        fprintf(stderr, "evowidth %s: %s: \"%s\" is not a number in %c%g, %g]\n", cmd, opt, s,
                lo_open ? '(' : '[', lo, hi);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* Options shared by the four commands. */
struct cmp_common {
    const char *out, *config;
    size_t ft_steps, calib;
    double lr; // 0: a tenth of the model's optimizer.lr
    long threads;
};

/* Handles a shared option; 1 if c was one, 0 if not, -1 on a bad value. */
static int cmp__common_opt(const char *cmd, int c, struct cmp_common *o)
{
    size_t v;
    switch (c) {
    case 'o': o->out = optarg; return 1;
    case 'C': o->config = optarg; return 1;
    case 'F':
        return cmp__parse_size(cmd, "--finetune-steps", optarg, 0, 10000000, &o->ft_steps) < 0 ? -1
                                                                                               : 1;
    case 'K': return cmp__parse_size(cmd, "--calib", optarg, 16, 65536, &o->calib) < 0 ? -1 : 1;
    case 'L': return cmp__parse_dbl(cmd, "--lr", optarg, 0, 10, 1, &o->lr) < 0 ? -1 : 1;
    case 'T':
        if (cmp__parse_size(cmd, "--threads", optarg, 1, 256, &v) < 0) return -1;
        o->threads = (long)v;
        return 1;
    default: return 0;
    }
}

/* Every option of the four tools, with the tools that take it (getopt_long sees only those). */
enum {
    CMP_COMPRESS_BIT = 1,
    CMP_SWEEP_BIT = 2,
    CMP_THIN_BIT = 4,
    CMP_EXPORT_BIT = 8,
    CMP_ALL = 15
};
static const struct {
    struct option o;
    unsigned in;
} CMP_OPTIONS[] = {
    // shared (cmp__common_opt); sweep has no -o but knows --output, as a usage error
    {{"output", required_argument, 0, 'o'}, CMP_ALL},
    {{"config", required_argument, 0, 'C'}, CMP_ALL},
    {{"finetune-steps", required_argument, 0, 'F'}, CMP_ALL},
    {{"calib", required_argument, 0, 'K'}, CMP_ALL},
    {{"lr", required_argument, 0, 'L'}, CMP_ALL},
    {{"threads", required_argument, 0, 'T'}, CMP_ALL},
    {{"help", no_argument, 0, 'h'}, CMP_ALL},
    // each tool's own
    {{"layer", required_argument, 0, 'l'}, CMP_COMPRESS_BIT | CMP_SWEEP_BIT},
    {{"no-bias-fix", no_argument, 0, 'b'}, CMP_COMPRESS_BIT | CMP_SWEEP_BIT},
    {{"rank", required_argument, 0, 'r'}, CMP_COMPRESS_BIT},
    {{"gap", required_argument, 0, 'g'}, CMP_COMPRESS_BIT},
    {{"energy", required_argument, 0, 'e'}, CMP_COMPRESS_BIT},
    {{"ranks", required_argument, 0, 'r'}, CMP_SWEEP_BIT},
    {{"csv", required_argument, 0, 'c'}, CMP_SWEEP_BIT},
    {{"ratio", required_argument, 0, 'p'}, CMP_THIN_BIT},
    {{"widths", required_argument, 0, 'w'}, CMP_THIN_BIT},
    {{"fp16", no_argument, 0, 'f'}, CMP_EXPORT_BIT},
    {{"kmeans", required_argument, 0, 'k'}, CMP_EXPORT_BIT},
    {{"prune", required_argument, 0, 'p'}, CMP_EXPORT_BIT},
    {{"kmeans-lr", required_argument, 0, 'q'}, CMP_EXPORT_BIT},
    {{"kmeans-conv", required_argument, 0, 'c'}, CMP_EXPORT_BIT},
};

#define CMP_COMMON_HELP                                                                            \
    "  --finetune-steps N  SGD steps on the training data afterwards (default 0)\n"                \
    "  --lr LR             fine-tuning learning rate (default: the model's optimizer.lr / 50)\n"   \
    "  --calib N           calibration samples from the training set (default 1024)\n"             \
    "  --threads T         OpenMP / BLAS threads (default: the model's train.threads)\n"           \
    "  --config CONFIG     the data and settings to use instead of the model's stored config\n"

static double cmp__lr(const struct cmp_ctx *c, const struct cmp_common *o)
{
    return o->lr > 0 ? o->lr : c->cfg.optimizer.lr / 50.0;
}

/* A subcommand's front end: its own options (the shared ones are added to them), its usage
 * text, how one of its options goes into its argument struct (1 taken, 0 not its option, -1
 * a bad value, already told), and what it requires once all are read (why not, or NULL;
 * *usage = 0: without the usage text after it). */
struct cmp_cli {
    const char *cmd;
    unsigned bit; // its CMP_*_BIT in CMP_OPTIONS
    const char *usage;
    int (*opt)(void *args, const char *cmd, int c);
    const char *(*check)(void *args, const struct cmp_common *co, int *usage);
    int no_output; // -o / --output is not one of its options
    // The command on the opened model (closed afterwards); the exit code.
    int (*run)(void *args, struct cmp_ctx *cx, const struct cmp_common *co, const char *model);
};

/* The command line of cl: its options into *args and *co, then exactly one MODEL
 * (argv[optind]) and cl->check. Returns the exit code when the command ends here (0 after
 * --help, 2 on a usage error, told on stderr), or -1 to go on. */
static int cmp__args(const struct cmp_cli *cl, int argc, char **argv, void *args,
                     struct cmp_common *co)
{
    struct option opts[sizeof(CMP_OPTIONS) / sizeof(CMP_OPTIONS[0]) + 1];
    size_t n = 0;
    for (size_t i = 0; i < sizeof(CMP_OPTIONS) / sizeof(CMP_OPTIONS[0]); i++)
        if (CMP_OPTIONS[i].in & cl->bit) opts[n++] = CMP_OPTIONS[i].o;
    opts[n] = (struct option){0, 0, 0, 0};
    *co = (struct cmp_common){.calib = 1024};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, cl->no_output ? "h" : "o:h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(cl->usage, stdout);
            return 0;
        }
        int rv = c == 'o' && cl->no_output ? 0 : cmp__common_opt(cl->cmd, c, co);
        if (rv == 0) rv = cl->opt(args, cl->cmd, c);
        if (rv < 0) return 2;
        if (rv == 0) {
            fputs(cl->usage, stderr);
            return 2;
        }
    }
    int usage = 1;
    const char *why = optind != argc - 1 ? "expected one MODEL" : cl->check(args, co, &usage);
    if (why) {
        fprintf(stderr, "evowidth %s: %s\n", cl->cmd, why);
        if (usage) fputs(cl->usage, stderr);
        return 2;
    }
    return -1;
}

/* A tool from its command line to its exit code: the options (into *args), the model opened,
 * cl->run on it, the model closed. */
static int cmp__main(const struct cmp_cli *cl, void *args, int argc, char **argv)
{
    struct cmp_common co;
    int ex = cmp__args(cl, argc, argv, args, &co);
    if (ex >= 0) return ex;
    char err[1024];
    struct cmp_ctx cx = {0};
    if (cmp__open(&cx, argv[optind], co.config, (int)co.threads, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth %s: %s\n", cl->cmd, err);
        return 1;
    }
    ex = cl->run(args, &cx, &co, argv[optind]);
    cmp__close(&cx);
    return ex;
}

/* The optional fine-tuning of compress and thin: steps, evaluation into *m, a report line.
 * Returns 0 (also when there is nothing to do), -ENOMEM, or another negative errno after
 * printing why under the command's name. */
static int cmp__finetune_report(const char *cmd, struct dmn_trainer *t, const struct cmp_ctx *cx,
                                const struct cmp_common *co, struct cmp_metrics *m)
{
    if (!co->ft_steps) return 0;
    double t0 = dmn_now();
    int rc = cmp__finetune(t, co->ft_steps, cmp__lr(cx, co));
    if (rc < 0) {
        fprintf(stderr, "evowidth %s: fine-tuning failed: %s\n", cmd,
                rc == -EDOM ? "the loss is not finite (lower --lr)" : strerror(-rc));
        return rc == -ENOMEM ? -EIO : rc;
    }
    if (cmp__eval(t, m) < 0) return -ENOMEM;
    char what[64];
    snprintf(what, sizeof(what), "fine-tuned (%zu steps, lr %g)", co->ft_steps, cmp__lr(cx, co));
    cmp__print_metrics(what, m);
    printf("  fine-tuning took %.1f s\n", dmn_now() - t0);
    return 0;
}

/* The end of compress and thin: the changed model's metrics (labelled what), the optional
 * fine-tuning and the saved file. 0; -ENOMEM (not yet told); or another negative errno
 * after telling why. */
static int cmp__finish(const char *cmd, const char *what, struct cmp_ctx *cx,
                       const struct cmp_common *co)
{
    struct cmp_metrics m, mt;
    char err[1024];
    if (cmp__eval(cx->t, &m) < 0) return -ENOMEM;
    cmp__print_metrics(what, &m);
    int rc = cmp__finetune_report(cmd, cx->t, cx, co, &mt);
    if (rc < 0) return rc;
    if (cmp__save(cx, co->out, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth %s: %s\n", cmd, err);
        return -EIO;
    }
    return 0;
}

static int cmp__layer_by_name(const struct net *n, const char *cmd, const char *name, size_t *li)
{
    long i = net_layer_find(n, name);
    if (i < 0 || (n->layers[i].spec.kind != NET_DENSE && n->layers[i].spec.kind != NET_CONV)) {
        fprintf(stderr, "evowidth %s: --layer %s: %s; dense / conv layers are:", cmd, name,
                i < 0 ? "no such layer" : "not a dense or conv layer");
        for (size_t k = 0; k < n->n_layers; k++)
            if (n->layers[k].spec.kind == NET_DENSE || n->layers[k].spec.kind == NET_CONV)
                fprintf(stderr, " %s", n->layers[k].spec.name);
        fputc('\n', stderr);
        return -EINVAL;
    }
    *li = (size_t)i;
    return 0;
}

/* svd_set_rank on layer li of t->net with mean-input bias correction, swapped in. */
static int cmp__factorize(struct dmn_trainer *t, size_t li, size_t r, const float *x, size_t B,
                          int bias_fix, char *err, size_t errlen)
{
    float *mean = NULL;
    struct net *nn = NULL;
    uint64_t rng = t->cfg.train.seed ^ CMP_CALIB_SEED;
    int rc = bias_fix && x ? cmp__mean_in(t->net, li, x, B, &mean) : 0;
    if (rc < 0) {
        snprintf(err, errlen, "out of memory for the mean input");
        return rc;
    }
    rc = svd_set_rank(&nn, t->net, li, r, mean, &rng, err, errlen);
    free(mean);
    if (rc < 0) return rc;
    if ((rc = cmp__swap(t, nn)) < 0) snprintf(err, errlen, "out of memory for the new model");
    return rc;
}

// ---- compress ---------------------------------------------------------------------------

static const char CMP_USAGE_COMPRESS[] =
    "usage: evowidth compress MODEL [--layer NAME ...] (--rank R | --rank auto [--gap G]\n"
    "                         [--energy E]) [--finetune-steps N] -o OUT\n"
    "Factorizes dense / conv layers W (m x fan-in) into U (m x r) V (r x fan-in), the\n"
    "SVD trick, and saves the smaller model (a run checkpoint: eval, layers and\n"
    "evowidthd load it).\n"
    "  --layer NAME        a layer to factorize (repeatable; default: every dense / conv\n"
    "                      layer whose rank actually saves parameters)\n"
    "  --rank R | auto     the rank (capped at min(m, fan-in)), or from the spectrum:\n"
    "  --gap G             auto: cut at the first s_i / s_i+1 > G (CaffeSVD's rule) ...\n"
    "  --energy E          auto: ... or keep the fewest values holding E of sum s_i^2\n"
    "                      (default 0.9; with --gap, the fallback when no gap exceeds G)\n"
    "  --no-bias-fix       do not fold (W - W_r) E[x] into the bias\n"
    "  -o, --output OUT    where to write the model\n" CMP_COMMON_HELP;

struct cmp_compress {
    const char *names[CMP_MAX_LAYERS];
    size_t n_names, rank;
    int autorank, bias_fix; // autorank: -1 until --rank is given
    double gap, energy;
};

static int cmp__opt_compress(void *args, const char *cmd, int c)
{
    struct cmp_compress *a = args;
    switch (c) {
    case 'l':
        if (a->n_names == CMP_MAX_LAYERS) {
            fprintf(stderr, "evowidth compress: at most %d --layer options\n", CMP_MAX_LAYERS);
            return -1;
        }
        a->names[a->n_names++] = optarg;
        return 1;
    case 'r':
        a->autorank = strcmp(optarg, "auto") == 0;
        if (!a->autorank && cmp__parse_size(cmd, "--rank", optarg, 1, 1u << 20, &a->rank) < 0)
            return -1;
        return 1;
    case 'g': return cmp__parse_dbl(cmd, "--gap", optarg, 1, 1e12, 1, &a->gap) < 0 ? -1 : 1;
    case 'e': return cmp__parse_dbl(cmd, "--energy", optarg, 0, 1, 1, &a->energy) < 0 ? -1 : 1;
    case 'b': a->bias_fix = 0; return 1;
    default: return 0;
    }
}

static const char *cmp__check_compress(void *args, const struct cmp_common *co, int *usage)
{
    struct cmp_compress *a = args;
    if (a->autorank < 0) return "--rank R or --rank auto is required";
    if (!co->out) return "-o OUT is required";
    *usage = 0;
    if (!a->autorank && (a->gap > 0 || a->energy > 0))
        return "--gap / --energy go with --rank auto";
    if (a->autorank && a->gap == 0 && a->energy == 0) a->energy = 0.9;
    return NULL;
}

static int cmp__compress(void *args, struct cmp_ctx *cx, const struct cmp_common *co,
                         const char *model)
{
    const struct cmp_compress a = *(const struct cmp_compress *)args;
    const char *cmd = "compress", *const *names = a.names;
    const size_t n_names = a.n_names, rank = a.rank;
    const int autorank = a.autorank, bias_fix = a.bias_fix;
    const double gap = a.gap, energy = a.energy;
    char err[1024];
    struct dmn_trainer *t = cx->t;
    int status = 1;
    float *x = NULL, *s = NULL;
    size_t layers[CMP_MAX_LAYERS], n_layers = 0;
    const size_t p0 = t->net->n_params, f0 = net_macs(t->net);
    for (size_t i = 0; i < n_names; i++)
        if (cmp__layer_by_name(t->net, cmd, names[i], &layers[n_layers++]) < 0) goto out;
    if (!n_names)
        for (size_t i = 0; i < t->net->n_layers && n_layers < CMP_MAX_LAYERS; i++)
            if (t->net->layers[i].spec.kind == NET_DENSE || t->net->layers[i].spec.kind == NET_CONV)
                layers[n_layers++] = i;
    struct cmp_metrics m0;
    if (cmp__eval(t, &m0) < 0) goto oom;
    printf("evowidth compress %s: %zu parameters, %zu MACs/sample\n", model, p0, f0);
    cmp__print_metrics("original", &m0);
    int nb = cmp__calib(t, co->calib, &x, NULL);
    if (nb < 0) goto oom;
    struct svd_policy pol = {0};
    pol.rule = gap > 0 ? SVD_RULE_GAP : SVD_RULE_ENERGY;
    pol.gap_threshold = gap;
    pol.energy_eps = 1.0 - energy;
    size_t changed = 0;
    printf("  %-12s %12s %6s %6s %9s %10s %10s\n", "layer", "m x fan-in", "full", "rank", "energy",
           "params", "->");
    for (size_t k = 0; k < n_layers; k++) {
        const size_t li = layers[k];
        size_t m, L;
        cmp__dims(t->net, li, &m, &L);
        const size_t full = m < L ? m : L;
        free(s);
        if (!(s = malloc(full * sizeof(float) + 4))) goto oom;
        long ns = svd_layer_spectrum(t->net, li, s, full);
        if (ns < 0) {
            fprintf(stderr, "evowidth compress: SVD of %s failed (%ld)\n",
                    t->net->layers[li].spec.name, ns);
            goto out;
        }
        size_t r = autorank ? svd_rank_rule(&pol, s, (size_t)ns) : rank < full ? rank : full;
        const char *how = "";
        if (autorank && gap > 0 && energy > 0 && r == (size_t)ns) { // no gap: energy fallback
            pol.rule = SVD_RULE_ENERGY;
            r = svd_rank_rule(&pol, s, (size_t)ns);
            pol.rule = SVD_RULE_GAP;
            how = " (no gap > G: energy rule)";
        }
        double tot = 0, kept = 0;
        for (long i = 0; i < ns; i++) {
            tot += (double)s[i] * s[i];
            if ((size_t)i < r) kept += (double)s[i] * s[i];
        }
        const size_t before = cmp__layer_params(t->net, li);
        // Unnamed layers are only factorized where the rank saves parameters: m r + r L < m L.
        if (!n_names && m * r + r * L >= m * L) {
            printf("  %-12s %5zu x %-5zu %6zu %6zu %8.2f%% %10zu  kept plain (rank %zu does not "
                   "save)%s\n",
                   t->net->layers[li].spec.name, m, L, full, r, 100.0 * kept / (tot > 0 ? tot : 1),
                   before, r, how);
            continue;
        }
        if (cmp__factorize(t, li, r, x, (size_t)nb, bias_fix, err, sizeof(err)) < 0) {
            fprintf(stderr, "evowidth compress: %s: %s\n", t->net->layers[li].spec.name, err);
            goto out;
        }
        changed++;
        printf("  %-12s %5zu x %-5zu %6zu %6zu %8.2f%% %10zu %10zu%s\n",
               t->net->layers[li].spec.name, m, L, full, r, 100.0 * kept / (tot > 0 ? tot : 1),
               before, cmp__layer_params(t->net, li), how);
    }
    int frc = cmp__finish(cmd, "factorized", cx, co);
    if (frc == -ENOMEM) goto oom;
    if (frc < 0) goto out;
    printf("  %zu layer(s) factorized: parameters %zu -> %zu (%.2fx), MACs/sample %zu -> %zu\n",
           changed, p0, t->net->n_params, (double)p0 / (double)t->net->n_params, f0,
           net_macs(t->net));
    printf("  saved %s (%ld bytes)\n", co->out, cmp__file_size(co->out));
    status = 0;
    goto out;
oom:
    fprintf(stderr, "evowidth compress: out of memory\n");
out:
    free(x);
    free(s);
    return status;
}

// ---- sweep ------------------------------------------------------------------------------

/* "A..B[:S]" and single ranks, comma-separated, into a descending unique list. */
static int cmp__parse_ranks(const char *spec, size_t full, size_t *out, size_t *n_out)
{
    char flag[CMP_MAX_RANKS + 1];
    memset(flag, 0, sizeof(flag));
    const char *p = spec;
    while (*p) {
        char *end;
        unsigned long a = strtoul(p, &end, 10), b, st = 1;
        if (end == p) return -EINVAL;
        p = end;
        b = a;
        if (p[0] == '.' && p[1] == '.') {
            b = strtoul(p + 2, &end, 10);
            if (end == p + 2) return -EINVAL;
            p = end;
            if (*p == ':') {
                st = strtoul(p + 1, &end, 10);
                if (end == p + 1 || st == 0) return -EINVAL;
                p = end;
            }
        }
        if (*p == ',')
            p++;
        else if (*p)
            return -EINVAL;
        if (a == 0 || b < a || b > CMP_MAX_RANKS) return -EINVAL;
        for (unsigned long r = a; r <= b; r += st)
            if (r <= full) flag[r] = 1;
        if (b <= full && (b - a) % st) flag[b] = 1; // always include the end point
    }
    *n_out = 0;
    for (size_t r = CMP_MAX_RANKS; r >= 1; r--)
        if (flag[r]) out[(*n_out)++] = r;
    return *n_out ? 0 : -ERANGE;
}

static const char CMP_USAGE_SWEEP[] =
    "usage: evowidth sweep MODEL --layer NAME --ranks A..B[:STEP][,R...]\n"
    "                      [--finetune-steps N] [--csv FILE]\n"
    "The CaffeSVD table for one layer: for each rank, test accuracy, mean precision,\n"
    "recall and F1, the layer's MACs and parameters, the net's, and the compression rate\n"
    "(m r + r fan-in) / (m fan-in); with --finetune-steps, the same after a short\n"
    "fine-tune of every factorized model (all start from the same batches).\n"
    "  --csv FILE          also write the rows as CSV\n"
    "  --no-bias-fix       do not fold (W - W_r) E[x] into the bias\n" CMP_COMMON_HELP;

struct cmp_row {
    char label[32];
    size_t rank, layer_params, layer_macs, net_params, net_macs;
    double rate;
    struct cmp_metrics m, ft;
    int has_ft;
};

static void cmp__print_row(FILE *f, const struct cmp_row *r, int ft)
{
    fprintf(f, "%-14s %8.4f %8.4f %8.4f %8.4f %10zu %10zu %9zu %10zu %7.2f%%", r->label, r->m.acc,
            r->m.prec, r->m.rec, r->m.f1, r->layer_macs, r->layer_params, r->net_params,
            r->net_macs, 100.0 * r->rate);
    if (ft && r->has_ft)
        fprintf(f, " | %8.4f %8.4f %8.4f %8.4f", r->ft.acc, r->ft.prec, r->ft.rec, r->ft.f1);
    fputc('\n', f);
}

static void cmp__csv_row(FILE *f, const struct cmp_row *r, int ft)
{
    fprintf(f, "%s,%zu,%.6f,%.6f,%.6f,%.6f,%zu,%zu,%zu,%zu,%.6f", r->label, r->rank, r->m.acc,
            r->m.prec, r->m.rec, r->m.f1, r->layer_macs, r->layer_params, r->net_params,
            r->net_macs, r->rate);
    if (ft) fprintf(f, ",%.6f,%.6f,%.6f,%.6f", r->ft.acc, r->ft.prec, r->ft.rec, r->ft.f1);
    fputc('\n', f);
}

struct cmp_sweep {
    const char *layer, *ranks, *csv;
    int bias_fix;
};

static int cmp__opt_sweep(void *args, const char *cmd, int c)
{
    struct cmp_sweep *a = args;
    (void)cmd;
    switch (c) {
    case 'l': a->layer = optarg; return 1;
    case 'r': a->ranks = optarg; return 1;
    case 'c': a->csv = optarg; return 1;
    case 'b': a->bias_fix = 0; return 1;
    default: return 0;
    }
}

static const char *cmp__check_sweep(void *args, const struct cmp_common *co, int *usage)
{
    const struct cmp_sweep *a = args;
    (void)co, (void)usage;
    return !a->layer || !a->ranks ? "--layer and --ranks are required" : NULL;
}

static int cmp__sweep(void *args, struct cmp_ctx *cx, const struct cmp_common *co,
                      const char *model)
{
    const struct cmp_sweep a = *(const struct cmp_sweep *)args;
    const char *cmd = "sweep", *layer = a.layer, *ranks_s = a.ranks, *csv = a.csv;
    const int bias_fix = a.bias_fix;
    char err[1024];
    struct dmn_trainer *t = cx->t;
    int status = 1;
    float *x = NULL;
    struct net *base = NULL;
    struct cmp_row *rows = NULL;
    size_t *ranks = malloc(CMP_MAX_RANKS * sizeof(size_t)), n_ranks = 0, li, m, L;
    struct cmp_bstate bs = {0};
    FILE *fc = NULL;
    if (!ranks) goto oom;
    if (cmp__layer_by_name(t->net, cmd, layer, &li) < 0) goto out;
    cmp__dims(t->net, li, &m, &L);
    const size_t full = m < L ? m : L;
    if (cmp__parse_ranks(ranks_s, full, ranks, &n_ranks) < 0) {
        fprintf(stderr,
                "evowidth sweep: --ranks %s: expected A..B[:STEP] or R items, comma-"
                "separated, with 1 <= A <= B <= %d and some rank <= %zu (min(%zu, %zu))\n",
                ranks_s, CMP_MAX_RANKS, full, m, L);
        goto out;
    }
    if (csv && !(fc = fopen(csv, "w"))) {
        fprintf(stderr, "evowidth sweep: cannot write %s: %s\n", csv, strerror(errno));
        goto out;
    }
    const int ft = co->ft_steps > 0;
    if (!(rows = calloc(n_ranks + 1, sizeof(*rows)))) goto oom;
    int nb = cmp__calib(t, co->calib, &x, NULL);
    if (nb < 0 || net_clone(&base, t->net) < 0 || (ft && cmp__bsave(&t->batcher, &bs) < 0))
        goto oom;
    const double lr = cmp__lr(cx, co);
    printf("evowidth sweep %s: layer %s (%zu x %zu, full rank %zu, break-even rank %.1f), %zu "
           "test samples%s\n",
           model, layer, m, L, full, (double)(m * L) / (double)(m + L), t->test.n,
           ft ? "" : ", no fine-tuning");
    if (ft)
        printf("fine-tuning: %zu steps at lr %g from the same batches for every row\n",
               co->ft_steps, lr);
    printf("%-14s %8s %8s %8s %8s %10s %10s %9s %10s %8s%s\n", "rank", "accuracy", "mean_P",
           "mean_R", "mean_F1", "layer_MACs", "layer_par", "net_par", "net_MACs", "rate",
           ft ? " | acc_ft   P_ft     R_ft     F1_ft" : "");
    if (fc)
        fprintf(fc,
                "rank,rank_value,accuracy,mean_precision,mean_recall,mean_f1,layer_macs,"
                "layer_params,net_params,net_macs,compression_rate%s\n",
                ft ? ",accuracy_ft,mean_precision_ft,mean_recall_ft,mean_f1_ft" : "");
    const double w0 = (double)(m * L);
    for (size_t i = 0; i <= n_ranks; i++) {
        struct cmp_row *r = &rows[i];
        struct net *nn = NULL;
        if (i == 0) {
            snprintf(r->label, sizeof(r->label), "uncompressed");
            if (net_clone(&nn, base) < 0) goto oom;
        } else {
            r->rank = ranks[i - 1];
            snprintf(r->label, sizeof(r->label), "%zu", r->rank);
            if (net_clone(&nn, base) < 0) goto oom;
        }
        if (cmp__swap(t, nn) < 0) goto oom;
        if (i > 0 &&
            cmp__factorize(t, li, r->rank, x, (size_t)nb, bias_fix, err, sizeof(err)) < 0) {
            fprintf(stderr, "evowidth sweep: rank %zu: %s\n", r->rank, err);
            goto out;
        }
        r->layer_params = cmp__layer_params(t->net, li);
        r->layer_macs = cmp__layer_macs(t->net, li);
        r->net_params = t->net->n_params;
        r->net_macs = net_macs(t->net);
        r->rate = i == 0 ? 1.0 : (double)(m * r->rank + r->rank * L) / w0;
        if (cmp__eval(t, &r->m) < 0) goto oom;
        if (ft) {
            cmp__brestore(&t->batcher, &bs);
            int rc = cmp__finetune(t, co->ft_steps, lr);
            if (rc < 0) {
                fprintf(stderr, "evowidth sweep: rank %s: fine-tuning failed: %s\n", r->label,
                        rc == -EDOM ? "the loss is not finite (lower --lr)" : strerror(-rc));
                goto out;
            }
            if (cmp__eval(t, &r->ft) < 0) goto oom;
            r->has_ft = 1;
        }
        cmp__print_row(stdout, r, ft);
        fflush(stdout);
        if (fc) cmp__csv_row(fc, r, ft);
    }
    if (fc && fclose(fc) != 0) {
        fc = NULL;
        fprintf(stderr, "evowidth sweep: error writing %s\n", csv);
        goto out;
    }
    fc = NULL;
    if (csv) printf("CSV written to %s\n", csv);
    status = 0;
    goto out;
oom:
    fprintf(stderr, "evowidth sweep: out of memory\n");
out:
    if (fc) fclose(fc);
    free(bs.perm);
    free(rows);
    free(ranks);
    free(x);
    net_destroy(base);
    return status;
}

// ---- thin -------------------------------------------------------------------------------

static const char CMP_USAGE_THIN[] =
    "usage: evowidth thin MODEL (--ratio P | --widths W1,W2,... | --widths NAME=W,...)\n"
    "                     [--finetune-steps N] -o OUT\n"
    "A thin network from a wide one, group by group from the input: the units kept are\n"
    "the ones pivoted QR picks on calibration activations of all readers at once (the\n"
    "simultaneous selection of SOMP, the adaptation's select mode); readers are rewired\n"
    "by least squares, leftovers into their bias.\n"
    "  --ratio P           keep round(P x width) units of every group, P in (0, 1]\n"
    "  --widths ...        target widths, in group order or by group name\n"
    "  -o, --output OUT    where to write the model\n" CMP_COMMON_HELP;

/* --widths: either all positional ("16,32,64") or all NAME=W. */
static int cmp__thin_targets(const struct net *n, const struct svd_gref *g, size_t ng,
                             const char *spec, size_t *want)
{
    char buf[1024];
    if (strlen(spec) >= sizeof(buf)) return -EINVAL;
    memcpy(buf, spec, strlen(spec) + 1);
    for (size_t i = 0; i < ng; i++) want[i] = 0;
    size_t pos = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '='), *end;
        const char *num = eq ? eq + 1 : tok;
        unsigned long v = strtoul(num, &end, 10);
        if (end == num || *end || v == 0) return -EINVAL;
        size_t gi = pos;
        if (eq) {
            *eq = 0;
            for (gi = 0; gi < ng; gi++) {
                char name[64];
                svd_group_name(n, &g[gi], name, sizeof(name));
                if (!strcmp(name, tok)) break;
            }
        }
        if (gi >= ng) return -ENOENT;
        want[gi] = v;
        pos++;
    }
    return 0;
}

struct cmp_thin {
    const char *widths;
    double ratio;
};

static int cmp__opt_thin(void *args, const char *cmd, int c)
{
    struct cmp_thin *a = args;
    switch (c) {
    case 'p': return cmp__parse_dbl(cmd, "--ratio", optarg, 0, 1, 1, &a->ratio) < 0 ? -1 : 1;
    case 'w': a->widths = optarg; return 1;
    default: return 0;
    }
}

static const char *cmp__check_thin(void *args, const struct cmp_common *co, int *usage)
{
    const struct cmp_thin *a = args;
    (void)usage;
    return (a->ratio > 0) == (a->widths != NULL) ? "give exactly one of --ratio and --widths"
           : !co->out                            ? "-o OUT is required"
                                                 : NULL;
}

static int cmp__thin(void *args, struct cmp_ctx *cx, const struct cmp_common *co, const char *model)
{
    const struct cmp_thin a = *(const struct cmp_thin *)args;
    const char *cmd = "thin", *widths = a.widths;
    const double ratio = a.ratio;
    char err[1024];
    struct dmn_trainer *t = cx->t;
    int status = 1;
    float *x = NULL;
    struct svd_gref g[CMP_MAX_LAYERS * 2];
    size_t want[CMP_MAX_LAYERS * 2];
    const size_t ng = svd_groups(t->net, g, CMP_MAX_LAYERS * 2), p0 = t->net->n_params;
    const size_t f0 = net_macs(t->net);
    if (widths) {
        int rc = cmp__thin_targets(t->net, g, ng, widths, want);
        if (rc < 0) {
            fprintf(stderr, "evowidth thin: --widths %s: %s; the groups are:", widths,
                    rc == -ENOENT ? "unknown group name or too many widths"
                                  : "expected W1,W2,... or NAME=W,... with positive widths");
            for (size_t i = 0; i < ng; i++) {
                char name[64];
                svd_group_name(t->net, &g[i], name, sizeof(name));
                fprintf(stderr, " %s(%zu)", name, svd_group_width(t->net, &g[i]));
            }
            fputc('\n', stderr);
            goto out;
        }
    }
    struct cmp_metrics m0;
    if (cmp__eval(t, &m0) < 0) goto oom;
    printf("evowidth thin %s: %zu parameters, %zu MACs/sample, %zu width groups\n", model, p0, f0,
           ng);
    cmp__print_metrics("original", &m0);
    int nb = cmp__calib(t, co->calib, &x, NULL);
    if (nb < 0) goto oom;
    double t0 = dmn_now();
    for (size_t i = 0; i < ng; i++) {
        char name[64];
        svd_group_name(t->net, &g[i], name, sizeof(name));
        const size_t w = svd_group_width(t->net, &g[i]);
        size_t k = widths ? want[i] : (size_t)floor(ratio * (double)w + 0.5);
        if (k == 0) k = widths ? w : 1;
        if (k >= w) {
            printf("  %-16s %5zu          kept\n", name, w);
            continue;
        }
        struct net *nn = NULL;
        if (svd_shrink(&nn, t->net, &g[i], k, SVD_MODE_SELECT, x, (size_t)nb, err, sizeof(err)) <
            0) {
            fprintf(stderr, "evowidth thin: %s: %s\n", name, err);
            goto out;
        }
        if (cmp__swap(t, nn) < 0) goto oom;
        printf("  %-16s %5zu -> %-5zu  parameters %zu\n", name, w, k, t->net->n_params);
    }
    printf("  selection took %.1f s\n", dmn_now() - t0);
    int frc = cmp__finish(cmd, "thin (selection + LS rewiring)", cx, co);
    if (frc == -ENOMEM) goto oom;
    if (frc < 0) goto out;
    printf("  parameters %zu -> %zu (%.2fx), MACs/sample %zu -> %zu; saved %s (%ld bytes)\n", p0,
           t->net->n_params, (double)p0 / (double)t->net->n_params, f0, net_macs(t->net), co->out,
           cmp__file_size(co->out));
    status = 0;
    goto out;
oom:
    fprintf(stderr, "evowidth thin: out of memory\n");
out:
    free(x);
    return status;
}

// ---- export -----------------------------------------------------------------------------

static const char CMP_USAGE_EXPORT[] =
    "usage: evowidth export MODEL [--fp16] [--kmeans K] [--prune P] [--finetune-steps N]\n"
    "                       -o FILE\n"
    "Deep Compression into a compressed model file that `evowidth eval` reads: magnitude\n"
    "pruning (then N masked fine-tuning steps), per-layer k-means weight sharing (then N\n"
    "codebook fine-tuning steps: a centroid moves by the sum of its members' gradients),\n"
    "float16 storage, deflate. Biases and batch norm stay float32. With neither --prune\n"
    "nor --kmeans, --finetune-steps retrains the model itself (a control).\n"
    "  --prune P           zero the fraction P of all weights, smallest |w| over the net\n"
    "  --kmeans K          K shared values per weight tensor (2..4096), ceil(log2 K)-bit\n"
    "                      codes\n"
    "  --kmeans-conv K     the same for convolution weights only (default: --kmeans)\n"
    "  --fp16              raw weights and codebooks as float16\n"
    "  --kmeans-lr LR      codebook fine-tuning rate (default: --lr / 10)\n"
    "  -o, --output FILE   the compressed file\n" CMP_COMMON_HELP;

/* steps of forward / backward / net_xplan_tune on training batches. */
static int cmp__xtune(struct dmn_trainer *t, struct net_xplan *p, size_t steps, double lr)
{
    const size_t B = t->cfg.train.batch_size;
    for (size_t i = 0; i < steps; i++) {
        net_batcher_next(&t->batcher, &t->train, B, t->xb, t->yb);
        net_zero_grad(t->net);
        float loss = net_forward(t->net, t->xb, t->yb, B, 1);
        if (!isfinite(loss)) return -EDOM;
        net_backward(t->net, t->yb, B);
        net_xplan_tune(p, t->net, (float)lr);
    }
    return 0;
}

struct cmp_export {
    struct net_export_opts xo;
    double klr;
};

static int cmp__opt_export(void *args, const char *cmd, int c)
{
    struct cmp_export *a = args;
    struct net_export_opts *xo = &a->xo;
    switch (c) {
    case 'f': xo->fp16 = 1; return 1;
    case 'k': return cmp__parse_size(cmd, "--kmeans", optarg, 2, 4096, &xo->kmeans) < 0 ? -1 : 1;
    case 'c':
        return cmp__parse_size(cmd, "--kmeans-conv", optarg, 2, 4096, &xo->kmeans_conv) < 0 ? -1
                                                                                            : 1;
    case 'p': return cmp__parse_dbl(cmd, "--prune", optarg, 0, 0.999, 0, &xo->prune) < 0 ? -1 : 1;
    case 'q': return cmp__parse_dbl(cmd, "--kmeans-lr", optarg, 0, 10, 1, &a->klr) < 0 ? -1 : 1;
    default: return 0;
    }
}

static const char *cmp__check_export(void *args, const struct cmp_common *co, int *usage)
{
    (void)args, (void)usage;
    return co->out ? NULL : "-o FILE is required";
}

static int cmp__export(void *args, struct cmp_ctx *cx, const struct cmp_common *co,
                       const char *model)
{
    const struct cmp_export a = *(const struct cmp_export *)args;
    struct net_export_opts xo = a.xo;
    const double klr = a.klr;
    char err[1024];
    const char *in = model;
    struct dmn_trainer *t = cx->t;
    struct net_xplan *plan = NULL;
    struct net *back = NULL;
    char *conf = NULL;
    int status = 1, rc;
    const double lr = cmp__lr(cx, co), kl = klr > 0 ? klr : lr / 10.0;
    struct cmp_metrics m;
    if (cmp__eval(t, &m) < 0) goto oom;
    printf("evowidth export %s: %zu parameters (%zu bytes as float32)\n", in, t->net->n_params,
           (t->net->n_params + t->net->n_state) * sizeof(float));
    cmp__print_metrics("original", &m);
    if ((rc = net_xplan_create(&plan, t->net, &xo, err, sizeof(err))) < 0) {
        fprintf(stderr, "evowidth export: %s\n", err);
        goto out;
    }
    const int quant = xo.kmeans || xo.kmeans_conv;
    if (xo.prune > 0) {
        char what[64];
        snprintf(what, sizeof(what), "pruned %.1f%%", 100.0 * xo.prune);
        if (cmp__eval(t, &m) < 0) goto oom;
        cmp__print_metrics(what, &m);
    }
    // Retraining of the surviving weights; without pruning or k-means it is the control:
    // the same steps on the uncompressed (or float16) model.
    if (co->ft_steps && (xo.prune > 0 || !quant)) {
        char what[64];
        if ((rc = cmp__xtune(t, plan, co->ft_steps, lr)) < 0) goto tune_fail;
        snprintf(what, sizeof(what), "%sretrained (%zu, lr %g)", xo.prune > 0 ? "pruned, " : "",
                 co->ft_steps, lr);
        if (cmp__eval(t, &m) < 0) goto oom;
        cmp__print_metrics(what, &m);
    }
    if (quant) {
        char what[64];
        if (net_xplan_cluster(plan, t->net) < 0) goto oom;
        snprintf(what, sizeof(what), "k-means %zu / conv %zu%s", xo.kmeans,
                 xo.kmeans_conv ? xo.kmeans_conv : xo.kmeans, xo.fp16 ? " (f16 codebooks)" : "");
        if (cmp__eval(t, &m) < 0) goto oom;
        cmp__print_metrics(what, &m);
        if (co->ft_steps) {
            if ((rc = cmp__xtune(t, plan, co->ft_steps, kl)) < 0) goto tune_fail;
            snprintf(what, sizeof(what), "codebooks tuned (%zu, lr %g)", co->ft_steps, kl);
            if (cmp__eval(t, &m) < 0) goto oom;
            cmp__print_metrics(what, &m);
        }
    } else if (xo.fp16 && !co->ft_steps) {
        if (cmp__eval(t, &m) < 0) goto oom;
        cmp__print_metrics("float16", &m);
    }
    printf("  %-14s %9s %8s %9s\n", "weight", "entries", "kept", "values");
    for (size_t ti = 0; ti < t->net->n_tensors; ti++) {
        const struct net_tensor *tt = &t->net->tensors[ti];
        if (tt->arena != NET_ARENA_PARAM || !tt->decay) continue;
        const float *w = t->net->params + tt->off;
        size_t nz = 0;
        for (size_t i = 0; i < tt->n; i++) nz += w[i] != 0.0f;
        const size_t K = tt->nd == 4 && xo.kmeans_conv ? xo.kmeans_conv : xo.kmeans;
        char vals[32] = "f32";
        if (K && nz > K)
            snprintf(vals, sizeof(vals), "k=%zu%s", K, xo.fp16 ? ",f16" : "");
        else if (xo.fp16)
            snprintf(vals, sizeof(vals), "f16");
        printf("  %-14s %9zu %7.2f%% %9s\n", tt->name, tt->n, 100.0 * (double)nz / (double)tt->n,
               vals);
    }
    if (!(conf = cfg_to_string(&cx->cfg, 0))) goto oom;
    struct ckpt_blob blob = {"CONF", conf, strlen(conf)};
    struct net_export_sizes sz;
    if (net_export_save(co->out, t->net, plan, &blob, 1, &sz, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth export: %s\n", err);
        goto out;
    }
    static const char *const part_names[NET_XPART_COUNT] = {"architecture, config, headers",
                                                            "raw weights",
                                                            "codebooks",
                                                            "codes (packed)",
                                                            "pruning bitmaps",
                                                            "biases, batch norm (f32)"};
    printf("  %-30s %12s %16s\n", "part", "bytes", "deflated alone");
    for (int i = 0; i < NET_XPART_COUNT; i++)
        if (sz.part[i]) printf("  %-30s %12zu %16zu\n", part_names[i], sz.part[i], sz.part_z[i]);
    printf("  %-30s %12zu %16zu\n", "total", sz.payload, sz.file);
    long in_size = cmp__file_size(in);
    printf("  %s: %zu bytes; float32 model %zu bytes: %.1fx smaller", co->out, sz.file,
           sz.f32_bytes, (double)sz.f32_bytes / (double)sz.file);
    if (in_size > 0)
        printf(" (%s is %ld bytes: %.1fx)", in, in_size, (double)in_size / (double)sz.file);
    printf("\n");
    // The file as eval will see it: the same accuracy, or something is wrong.
    if (net_export_load(co->out, &back, NULL, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth export: reading back: %s\n", err);
        goto out;
    }
    struct cmp_metrics mb;
    struct net *mem = t->net;
    t->net = back;
    rc = cmp__eval(t, &mb);
    t->net = mem;
    if (rc < 0) goto oom;
    cmp__print_metrics("reloaded from the file", &mb);
    if (mb.acc != m.acc) {
        fprintf(stderr, "evowidth export: the reloaded model's accuracy differs (%.4f vs %.4f)\n",
                mb.acc, m.acc);
        goto out;
    }
    status = 0;
    goto out;
tune_fail:
    fprintf(stderr, "evowidth export: fine-tuning failed: %s\n",
            rc == -EDOM ? "the loss is not finite (lower --lr / --kmeans-lr)" : strerror(-rc));
    goto out;
oom:
    fprintf(stderr, "evowidth export: out of memory\n");
out:
    cJSON_free(conf);
    net_destroy(back);
    net_xplan_destroy(plan);
    return status;
}

// ---- the four entry points ----------------------------------------------------------------

/* int dmn_cmd_NAME(argc, argv): the tool NAME (its bit in CMP_OPTIONS, whether it lacks -o,
 * then the defaults of its struct cmp_NAME) through cmp__main. */
#define CMP_TOOL(name, usage, bit, no_output, ...)                                                 \
    int dmn_cmd_##name(int argc, char **argv)                                                      \
    {                                                                                              \
        static const struct cmp_cli cl = {                                                         \
            #name, bit, usage, cmp__opt_##name, cmp__check_##name, no_output, cmp__##name};        \
        return cmp__main(&cl, &(struct cmp_##name)__VA_ARGS__, argc, argv);                        \
    }
CMP_TOOL(compress, CMP_USAGE_COMPRESS, CMP_COMPRESS_BIT, 0, {.autorank = -1, .bias_fix = 1})
CMP_TOOL(sweep, CMP_USAGE_SWEEP, CMP_SWEEP_BIT, 1, {.bias_fix = 1})
CMP_TOOL(thin, CMP_USAGE_THIN, CMP_THIN_BIT, 0, {0})
CMP_TOOL(export, CMP_USAGE_EXPORT, CMP_EXPORT_BIT, 0, {0})
