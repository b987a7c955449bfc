/* cli/predict.c: images in, classes and probabilities out (`evowidth predict`), and the
 * `evowidth export --format onnx | safetensors` command.
 *
 * predict reads IDX images (optionally with IDX labels) or a CIFAR-10 batch through
 * net/data.c, normalises them with the model's own statistics (net_data_normalize, the
 * same float operations as training and as the exported ONNX graph), runs net_forward in
 * eval mode in batches and prints, per image, the predicted class, its probability, every
 * class's probability and (with --json / --csv) the logits, so that any exported model can
 * be checked against evowidth itself. Exit codes: 0 ok, 1 failure, 2 usage. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <zlib.h>

#include "cli/cli.h"
#include "cli/onnx.h"
#include "daemon/daemon.h"

#define PREDICT_BATCH 256

// ---- images ------------------------------------------------------------------------------

/* 1 when the file starts like an IDX file (0x00 0x00, type 0x08 = unsigned byte). */
static int pr_is_idx(const char *path, char *err, size_t errlen)
{
    gzFile g = gzopen(path, "rb");
    if (!g) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
        return -ENOENT;
    }
    unsigned char m[4] = {0};
    int got = gzread(g, m, 4);
    gzclose(g);
    return got == 4 && m[0] == 0 && m[1] == 0 && m[2] == 0x08;
}

int cli_load_images(struct net_dataset *d, int *has_labels, const char *images, const char *labels,
                    char *err, size_t errlen)
{
    int idx = pr_is_idx(images, err, errlen);
    if (idx < 0) return idx;
    if (idx) {
        *has_labels = labels != NULL;
        return net_data_load_idx(d, images, labels, err, errlen);
    }
    if (labels) {
        snprintf(err, errlen,
                 "%s is not an IDX image file (a CIFAR-10 batch has its labels "
                 "inside): drop --labels %s",
                 images, labels);
        return -EINVAL;
    }
    *has_labels = 1;
    const char *files[1] = {images};
    return net_data_load_cifar(d, files, 1, err, errlen);
}

int cli_predict(struct net *n, const struct net_dataset *d, float **logits, float **probs,
                char *err, size_t errlen)
{
    const size_t C = n->in_shape.c, H = n->in_shape.h, W = n->in_shape.w, K = n->n_classes;
    if (d->shape.c != C || d->shape.h != H || d->shape.w != W) {
        snprintf(err, errlen, "the images are %zux%zux%zu but the model expects %zux%zux%zu",
                 d->shape.c, d->shape.h, d->shape.w, C, H, W);
        return -EINVAL;
    }
    const size_t D = C * H * W;
    struct net_dataset x = *d;
    x.x = malloc(d->n * D * sizeof(float));
    float *lg = malloc(d->n * K * sizeof(float)), *pb = malloc(d->n * K * sizeof(float));
    if (!x.x || !lg || !pb || net_reserve(n, PREDICT_BATCH) < 0) {
        free(x.x);
        free(lg);
        free(pb);
        snprintf(err, errlen, "out of memory for %zu images", d->n);
        return -ENOMEM;
    }
    memcpy(x.x, d->x, d->n * D * sizeof(float));
    net_data_normalize(&x, n->norm_mean, n->norm_std);
    for (size_t i = 0; i < d->n; i += PREDICT_BATCH) {
        size_t B = d->n - i < PREDICT_BATCH ? d->n - i : PREDICT_BATCH;
        net_forward(n, x.x + i * D, NULL, B, 0);
        memcpy(lg + i * K, n->acts[n->n_layers], B * K * sizeof(float));
        memcpy(pb + i * K, n->probs, B * K * sizeof(float));
    }
    free(x.x);
    *logits = lg;
    *probs = pb;
    return 0;
}

// ---- output --------------------------------------------------------------------------------

enum pr_fmt { PR_TABLE, PR_JSON, PR_CSV };

static size_t pr_argmax(const float *p, size_t K)
{
    size_t best = 0;
    for (size_t k = 1; k < K; k++)
        if (p[k] > p[best]) best = k;
    return best;
}

static void pr_table(FILE *f, const struct net_dataset *d, int has_labels, const float *pb,
                     size_t K)
{
    fprintf(f, "%7s %5s %7s", "image", "class", "prob");
    if (has_labels) fprintf(f, " %5s", "label");
    for (size_t k = 0; k < K; k++) fprintf(f, " %6s%zu", "p", k);
    fputc('\n', f);
    for (size_t i = 0; i < d->n; i++) {
        const float *p = pb + i * K;
        size_t c = pr_argmax(p, K);
        fprintf(f, "%7zu %5zu %7.4f", i, c, (double)p[c]);
        if (has_labels) fprintf(f, " %5u", (unsigned)d->y[i]);
        for (size_t k = 0; k < K; k++) fprintf(f, " %7.4f", (double)p[k]);
        fputc('\n', f);
    }
}

static void pr_csv(FILE *f, const struct net_dataset *d, int has_labels, const float *lg,
                   const float *pb, size_t K)
{
    fprintf(f, "image,class,prob%s", has_labels ? ",label" : "");
    for (size_t k = 0; k < K; k++) fprintf(f, ",p%zu", k);
    for (size_t k = 0; k < K; k++) fprintf(f, ",logit%zu", k);
    fputc('\n', f);
    for (size_t i = 0; i < d->n; i++) {
        const float *p = pb + i * K, *l = lg + i * K;
        size_t c = pr_argmax(p, K);
        fprintf(f, "%zu,%zu,%.9g", i, c, (double)p[c]);
        if (has_labels) fprintf(f, ",%u", (unsigned)d->y[i]);
        for (size_t k = 0; k < K; k++) fprintf(f, ",%.9g", (double)p[k]);
        for (size_t k = 0; k < K; k++) fprintf(f, ",%.9g", (double)l[k]);
        fputc('\n', f);
    }
}

static int pr_json(FILE *f, const char *model, const char *input, const struct net_dataset *d,
                   int has_labels, const float *lg, const float *pb, size_t K, size_t correct)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return -ENOMEM;
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "input", input);
    cJSON_AddNumberToObject(o, "images", (double)d->n);
    cJSON_AddNumberToObject(o, "classes", (double)K);
    if (has_labels) {
        cJSON_AddNumberToObject(o, "correct", (double)correct);
        cJSON_AddNumberToObject(o, "accuracy", d->n ? (double)correct / (double)d->n : 0.0);
    }
    cJSON *arr = cJSON_AddArrayToObject(o, "predictions");
    for (size_t i = 0; arr && i < d->n; i++) {
        const float *p = pb + i * K, *l = lg + i * K;
        size_t c = pr_argmax(p, K);
        cJSON *e = cJSON_CreateObject(), *pa = cJSON_CreateArray(), *la = cJSON_CreateArray();
        for (size_t k = 0; k < K; k++) {
            cJSON_AddItemToArray(pa, cJSON_CreateNumber((double)p[k]));
            cJSON_AddItemToArray(la, cJSON_CreateNumber((double)l[k]));
        }
        cJSON_AddNumberToObject(e, "image", (double)i);
        cJSON_AddNumberToObject(e, "class", (double)c);
        cJSON_AddNumberToObject(e, "prob", (double)p[c]);
        if (has_labels) cJSON_AddNumberToObject(e, "label", (double)d->y[i]);
        cJSON_AddItemToObject(e, "probs", pa);
        cJSON_AddItemToObject(e, "logits", la);
        cJSON_AddItemToArray(arr, e);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return -ENOMEM;
    fputs(s, f);
    fputc('\n', f);
    free(s);
    return 0;
}

// ---- evowidth predict --------------------------------------------------------------------

static void pr_usage(FILE *f)
{
    fprintf(f, "usage: evowidth predict MODEL INPUT [--labels FILE] [--json | --csv] [-o FILE]\n"
               "                        [--limit N] [--threads T]\n"
               "The class and the probabilities of every class for each image of INPUT: an IDX\n"
               "image file (plain or .gz, as Fashion-MNIST ships) or a CIFAR-10 binary batch.\n"
               "Images are normalised with the model's own statistics, as in training.\n"
               "  --labels FILE   IDX labels for INPUT: adds a label column and the accuracy\n"
               "  --json          one JSON object: per image class, prob, probs, logits (, label)\n"
               "  --csv           image,class,prob[,label],p0..,logit0..\n"
               "  -o, --output F  write there (atomically) instead of stdout\n"
               "  --limit N       only the first N images\n"
               "  --threads T     OpenMP / BLAS threads\n");
}

int cli_cmd_predict(int argc, char **argv)
{
    static const struct option opts[] = {
        {"labels", required_argument, 0, 'l'}, {"json", no_argument, 0, 'j'},
        {"csv", no_argument, 0, 'c'},          {"output", required_argument, 0, 'o'},
        {"limit", required_argument, 0, 'n'},  {"threads", required_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *labels = NULL, *out = NULL;
    enum pr_fmt fmt = PR_TABLE;
    long limit = -1, threads = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'l': labels = optarg; break;
        case 'j': fmt = PR_JSON; break;
        case 'c': fmt = PR_CSV; break;
        case 'o': out = optarg; break;
        case 'n':
        case 't': {
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || (c == 't' && v > 256)) {
                fprintf(stderr, "evowidth predict: --%s: \"%s\" is not %s\n",
                        c == 'n' ? "limit" : "threads", optarg,
                        c == 'n' ? "a positive integer" : "in [1, 256]");
                return 2;
            }
            if (c == 'n')
                limit = v;
            else
                threads = v;
            break;
        }
        case 'h': pr_usage(stdout); return 0;
        default: pr_usage(stderr); return 2;
        }
    }
    if (optind != argc - 2) {
        fprintf(stderr, "evowidth predict: expected MODEL and INPUT\n");
        pr_usage(stderr);
        return 2;
    }
    const char *model = argv[optind], *input = argv[optind + 1];
    char err[1024];
    struct net *n = NULL;
    struct net_dataset d = {0};
    float *lg = NULL, *pb = NULL;
    char *text = NULL;
    size_t text_len = 0;
    int has_labels = 0, status = 1;
    if (threads > 0) net_set_threads((int)threads);
    if (net_load_any(model, &n, NULL, NULL, NULL, NULL, err, sizeof(err)) < 0 ||
        cli_load_images(&d, &has_labels, input, labels, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth predict: %s\n", err);
        goto out;
    }
    if (limit > 0 && (size_t)limit < d.n) d.n = (size_t)limit;
    if (has_labels && d.n_classes > n->n_classes) {
        for (size_t i = 0; i < d.n; i++)
            if (d.y[i] >= n->n_classes) {
                fprintf(stderr,
                        "evowidth predict: %s: image %zu has label %u but %s has %zu "
                        "classes\n",
                        labels ? labels : input, i, (unsigned)d.y[i], model, n->n_classes);
                goto out;
            }
    }
    if (cli_predict(n, &d, &lg, &pb, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth predict: %s: %s\n", input, err);
        goto out;
    }
    const size_t K = n->n_classes;
    size_t correct = 0;
    for (size_t i = 0; has_labels && i < d.n; i++) correct += pr_argmax(pb + i * K, K) == d.y[i];
    FILE *f = out ? open_memstream(&text, &text_len) : stdout;
    if (!f) {
        fprintf(stderr, "evowidth predict: out of memory\n");
        goto out;
    }
    int rc = 0;
    if (fmt == PR_JSON)
        rc = pr_json(f, model, input, &d, has_labels, lg, pb, K, correct);
    else if (fmt == PR_CSV)
        pr_csv(f, &d, has_labels, lg, pb, K);
    else
        pr_table(f, &d, has_labels, pb, K);
    if (fmt == PR_TABLE && has_labels)
        fprintf(f, "accuracy %.2f%% (%zu / %zu)\n",
                d.n ? 100.0 * (double)correct / (double)d.n : 0.0, correct, d.n);
    if (out) {
        if (fclose(f) != 0) rc = -ENOMEM;
        if (rc == 0)
            rc = cli_write_atomic(out, text, text_len, err, sizeof(err));
        else
            snprintf(err, sizeof(err), "out of memory");
    } else if (fflush(stdout) != 0) {
        rc = -EIO;
        snprintf(err, sizeof(err), "cannot write to stdout");
    } else if (rc < 0) {
        snprintf(err, sizeof(err), "out of memory");
    }
    if (rc < 0) {
        fprintf(stderr, "evowidth predict: %s\n", err);
        goto out;
    }
    if (out && has_labels)
        printf("%zu images, accuracy %.2f%% (%zu / %zu), written to %s\n", d.n,
               d.n ? 100.0 * (double)correct / (double)d.n : 0.0, correct, d.n, out);
    else if (out)
        printf("%zu images, written to %s\n", d.n, out);
    status = 0;
out:
    free(text);
    free(lg);
    free(pb);
    net_data_free(&d);
    net_destroy(n);
    return status;
}

// ---- evowidth export --format onnx | safetensors -------------------------------------------

static void ex_usage(FILE *f)
{
    fprintf(f,
            "usage: evowidth export MODEL --format onnx [--fold-bn] -o FILE.onnx\n"
            "       evowidth export MODEL --format safetensors -o FILE.safetensors\n"
            "--format onnx: an ONNX model (opset %d) of standard operators that takes raw\n"
            "pixels (float32 N x C x H x W in [0, 255], input \"pixels\"), normalises them as\n"
            "the model was trained and returns \"logits\" (N x classes); ONNX Runtime runs it.\n"
            "  --fold-bn       fold each batch norm into the conv / dense before it\n"
            "                  (default: BatchNormalization nodes, the same arithmetic as here)\n"
            "--format safetensors: every parameter and BN statistic as float32 arrays, the\n"
            "architecture and normalisation as metadata.\n"
            "--format evwz (the default): the compressed model file, options above.\n",
            CLI_ONNX_OPSET);
}

int cli_cmd_export(int argc, char **argv)
{
    const char *fmt = NULL;
    int help = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
            fmt = argv[i + 1];
        else if (strncmp(argv[i], "--format=", 9) == 0)
            fmt = argv[i] + 9;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            help = 1;
    }
    if (!fmt || strcmp(fmt, "evwz") == 0) {
        // The EVWZ path of daemon/compress.c, without our --format argument.
        char **av = malloc(((size_t)argc + 1) * sizeof(*av));
        int ac = 0;
        if (!av) return 1;
        for (int i = 0; i < argc; i++) {
            if (strcmp(argv[i], "--format") == 0 && i + 1 < argc) {
                i++;
                continue;
            }
            if (strncmp(argv[i], "--format=", 9) == 0) continue;
            av[ac++] = argv[i];
        }
        av[ac] = NULL;
        int rc = dmn_cmd_export(ac, av);
        free(av);
        if (help) {
            printf("\n");
            ex_usage(stdout);
        }
        return rc;
    }
    static const struct option opts[] = {{"format", required_argument, 0, 'f'},
                                         {"fold-bn", no_argument, 0, 'b'},
                                         {"output", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out = NULL;
    struct cli_onnx_opts o = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': break;
        case 'b': o.fold_bn = 1; break;
        case 'o': out = optarg; break;
        case 'h': ex_usage(stdout); return 0;
        default:
            fprintf(stderr, "evowidth export: with --format %s only --fold-bn and -o apply\n", fmt);
            ex_usage(stderr);
            return 2;
        }
    }
    int onnx = strcmp(fmt, "onnx") == 0, st = strcmp(fmt, "safetensors") == 0;
    if (!onnx && !st) {
        fprintf(stderr, "evowidth export: --format \"%s\": expected onnx, safetensors or evwz\n",
                fmt);
        return 2;
    }
    if (optind != argc - 1 || !out) {
        fprintf(stderr, "evowidth export: %s\n",
                optind != argc - 1 ? "expected one MODEL" : "-o FILE is required");
        ex_usage(stderr);
        return 2;
    }
    if (st && o.fold_bn) {
        fprintf(stderr, "evowidth export: --fold-bn applies to --format onnx only\n");
        return 2;
    }
    char err[1024];
    struct net *n = NULL;
    const char *in = argv[optind];
    if (net_load_any(in, &n, NULL, NULL, NULL, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "evowidth export: %s\n", err);
        return 1;
    }
    int rc = onnx ? cli_onnx_save(out, n, &o, err, sizeof(err))
                  : cli_safetensors_save(out, n, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "evowidth export: %s: %s\n", in, err);
        net_destroy(n);
        return 1;
    }
    struct stat sb;
    long long size = stat(out, &sb) == 0 ? (long long)sb.st_size : -1;
    if (onnx)
        printf("evowidth export %s: %s (ONNX opset %d, %zu layers%s, %zu parameters, %lld "
               "bytes): input \"pixels\" float32 [N, %zu, %zu, %zu] in [0, 255], output "
               "\"logits\" [N, %zu]\n",
               in, out, CLI_ONNX_OPSET, n->n_layers, o.fold_bn ? ", batch norm folded" : "",
               n->n_params, size, n->in_shape.c, n->in_shape.h, n->in_shape.w, n->n_classes);
    else
        printf("evowidth export %s: %s (safetensors, %zu tensors, %zu parameters + %zu BN "
               "statistics, %lld bytes)\n",
               in, out, n->n_tensors, n->n_params, n->n_state, size);
    net_destroy(n);
    return 0;
}
