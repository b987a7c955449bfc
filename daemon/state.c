/* daemon/state.c: full-run checkpoints on top of net/ckpt.c.
 *
 * A run checkpoint is a model file (ARCH, PARM, STAT, OPTM) plus two blobs:
 *   CONF: the effective config as JSON text (model widths there are the *initial* ones; the
 *         ARCH chunk has the current ones), policy and runtime changes included;
 *   TRNR: the trainer's position, written field by field with net/codec.h:
 *         version 3: u32 version | u64 step | u64 rng | u64 batcher n | u64 pos | u64 epoch |
 *         u64 batcher rng | u32 perm[n] | f64 train_seconds, adapt_seconds, val_loss, val_acc,
 *         last_loss, last_acc | u64 initial_params | u64 change_seq | u64 events | u64 length
 *         | adaptation state (daemon/adapt.c). `events` is the event seq the checkpoint
 *         includes: the last line of the state dir's events.jsonl that belongs to it (the
 *         daemon's adaptation state carries no event texts; evowidth train's carries the
 *         newest ones, the last of them event `events`);
 *         version 2 (read only): version 3 without `events` (the event count is the number
 *         of texts the adaptation state carries);
 *         version 1 (read only): the same values as the image of a C struct, u32 version |
 *         u32 0 | u64 step, rng, n, pos, epoch, batcher rng | the six f64 | u64
 *         initial_params | u64 adaptation length | u64 change_seq, then perm, then the
 *         adaptation state.
 * A checkpoint is hostile input: every field is checked against every other (the data set,
 * the stored config, the model) before anything is used, and a bad one fails with a reason
 * naming the file and the field; the caller's trainer is never touched.
 * The same file is what `evowidth eval` and `evowidth layers` read. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon_internal.h"
#include "net/codec.h"

#define TRNR_VERSION 3u
#define TRNR_V1_HEAD 128 // bytes of version 1's struct image before perm

/* TRNR's f64 fields in file order, by their names in struct trnr and struct dmn_trainer: the
 * writer, the parser and the load walk this one list. */
#define TRNR_F64S(X)                                                                               \
    X(train_seconds) X(adapt_seconds) X(val_loss) X(val_acc) X(last_loss) X(last_acc)

/* TRNR's values, parsed from either version (never written as an image). */
struct trnr {
    uint32_t version;
    uint64_t step, rng, b_n, b_pos, b_epoch, b_rng;
    double train_seconds, adapt_seconds, val_loss, val_acc, last_loss, last_acc;
    uint64_t initial_params, change_seq;
    int has_events; // version 3: events is the event seq included
    uint64_t events;
    struct net_rd perm;  // (b_n) u32, borrowed from the blob
    struct net_rd extra; // the adaptation state, borrowed
};

int dmn_trainer_save(struct dmn_trainer *t, const char *path, char *err, size_t errlen)
{
    struct net_wr img = {0};
    int rc = dmn_trainer_encode(t, &img, path, err, errlen);
    if (rc == 0) rc = net_write_atomic(path, img.p, img.len, err, errlen);
    net_wr_free(&img);
    return rc;
}

int dmn_trainer_encode(struct dmn_trainer *t, struct net_wr *img, const char *path, char *err,
                       size_t errlen)
{
    int rc = -ENOMEM;
    char *conf = NULL;
    size_t extra_len = 0;
    void *extra = NULL;
    struct net_wr w = {0};
    if (!(conf = cfg_to_string(&t->cfg, 0))) {
        snprintf(err, errlen, "%s: out of memory serialising the config", path);
        goto out;
    }
    if ((rc = dmn__adapt_serialize(t, &extra, &extra_len)) < 0) {
        snprintf(err, errlen, "%s: out of memory serialising the adaptation state", path);
        goto out;
    }
    net_wr_u32(&w, TRNR_VERSION);
    net_wr_u64(&w, t->step);
    net_wr_u64(&w, t->rng);
    net_wr_u64(&w, t->batcher.n);
    net_wr_u64(&w, t->batcher.pos);
    net_wr_u64(&w, t->batcher.epoch);
    net_wr_u64(&w, t->batcher.rng);
    for (size_t i = 0; i < t->batcher.n; i++) net_wr_u32(&w, t->batcher.perm[i]);
#define TRNR_PUT(f) net_wr_f64(&w, t->f);
    TRNR_F64S(TRNR_PUT)
#undef TRNR_PUT
    net_wr_u64(&w, t->initial_params);
    net_wr_u64(&w, t->change_seq);
    net_wr_u64(&w, dmn__adapt_n_events(t));
    net_wr_u64(&w, extra_len);
    net_wr_bytes(&w, extra, extra_len);
    rc = -ENOMEM;
    if (w.oom) {
        snprintf(err, errlen, "%s: out of memory serialising the trainer state", path);
        goto out;
    }
    struct ckpt_blob blobs[2] = {{"TRNR", w.p, w.len}, {"CONF", conf, strlen(conf)}};
    rc = ckpt_encode(img, t->net, &t->opt, blobs, 2, path, err, errlen);
out:
    free(extra);
    net_wr_free(&w);
    cJSON_free(conf);
    return rc;
}

/* Parses TRNR (any version) into h; framing only, the values are checked by the caller.
 * Returns 0 or -EINVAL with the reason in why. */
static int dmn__trnr_parse(struct trnr *h, const struct ckpt_blob *b, char *why, size_t wn)
{
    struct net_rd r = net_rd_make(b->data, b->len);
    memset(h, 0, sizeof(*h));
    h->version = net_rd_u32(&r);
    if (r.bad || h->version < 1 || h->version > TRNR_VERSION) {
        snprintf(why, wn, "version %u (this build reads 1 to %u)", h->version, TRNR_VERSION);
        return -EINVAL;
    }
    uint64_t extra_len = 0;
    if (h->version == 1 && net_rd_u32(&r) != 0) {
        snprintf(why, wn, "version 1 padding is not zero");
        return -EINVAL;
    }
    h->step = net_rd_u64(&r);
    h->rng = net_rd_u64(&r);
    h->b_n = net_rd_u64(&r);
    h->b_pos = net_rd_u64(&r);
    h->b_epoch = net_rd_u64(&r);
    h->b_rng = net_rd_u64(&r);
    const void *perm = NULL;
    if (h->version >= 2) {
        // Counts are checked against the bytes left before any arithmetic on them.
        if (r.bad || h->b_n > net_rd_left(&r) / 4) goto trunc;
        perm = net_rd_view(&r, (size_t)h->b_n * 4);
    }
#define TRNR_GET(f) h->f = net_rd_f64(&r);
    TRNR_F64S(TRNR_GET)
#undef TRNR_GET
    h->initial_params = net_rd_u64(&r);
    if (h->version == 1) {
        extra_len = net_rd_u64(&r);
        h->change_seq = net_rd_u64(&r);
        if (r.bad || h->b_n > net_rd_left(&r) / 4) goto trunc;
        perm = net_rd_view(&r, (size_t)h->b_n * 4);
    } else {
        h->change_seq = net_rd_u64(&r);
        if (h->version >= 3) {
            h->has_events = 1;
            h->events = net_rd_u64(&r);
        }
        extra_len = net_rd_u64(&r);
    }
    if (r.bad || extra_len != net_rd_left(&r)) {
        snprintf(why, wn,
                 "length %zu does not match its fields (%llu bytes of adaptation state "
                 "stated, %zu left)",
                 b->len, (unsigned long long)extra_len, net_rd_left(&r));
        return -EINVAL;
    }
    h->perm = net_rd_make(perm, (size_t)h->b_n * 4);
    h->extra = net_rd_make(r.p + r.pos, (size_t)extra_len);
    return 0;
trunc:
    snprintf(why, wn, "truncated (%zu bytes; batcher size %llu)", b->len,
             (unsigned long long)h->b_n);
    return -EINVAL;
}

static int dmn__finite_nonneg(double x)
{
    return isfinite(x) && x >= 0.0;
}

/* Checks TRNR's values against the trainer built from the stored config (its data set and
 * batch size) and the stored model n; perm is copied into t's batcher on success. */
static int dmn__trnr_check(const struct trnr *h, struct dmn_trainer *t, const struct net *n,
                           char *why, size_t wn)
{
    const uint64_t N = t->batcher.n, B = t->cfg.train.batch_size;
    if (h->b_n != N) {
        snprintf(why, wn, "batcher holds %llu samples, the stored config's data set %zu",
                 (unsigned long long)h->b_n, t->batcher.n);
        return -EINVAL;
    }
    if (h->b_pos >= N) {
        snprintf(why, wn, "batcher position %llu is not below the %llu samples",
                 (unsigned long long)h->b_pos, (unsigned long long)N);
        return -EINVAL;
    }
    /* Every step draws B samples (a step that fails after drawing leaves the batcher ahead),
     * so the samples drawn, epoch * N + pos, are at least step * B. */
    if (h->step > UINT64_MAX / B || h->b_epoch > (UINT64_MAX - h->b_pos) / N ||
        h->b_epoch * N + h->b_pos < h->step * B) {
        snprintf(why, wn,
                 "step %llu does not fit the batcher (epoch %llu, position %llu, "
                 "%llu samples, batch %llu)",
                 (unsigned long long)h->step, (unsigned long long)h->b_epoch,
                 (unsigned long long)h->b_pos, (unsigned long long)N, (unsigned long long)B);
        return -EINVAL;
    }
    if (!dmn__finite_nonneg(h->train_seconds) || !dmn__finite_nonneg(h->adapt_seconds)) {
        snprintf(why, wn, "timings %g / %g s are not finite and non-negative", h->train_seconds,
                 h->adapt_seconds);
        return -EINVAL;
    }
    if ((!isnan(h->val_acc) && !(h->val_acc >= 0.0 && h->val_acc <= 1.0)) ||
        !(h->last_acc >= 0.0 && h->last_acc <= 1.0) || (!isnan(h->val_loss) && h->val_loss < 0) ||
        h->last_loss < 0) {
        snprintf(why, wn,
                 "metrics out of range (val loss %g, val accuracy %g, loss %g, "
                 "accuracy %g)",
                 h->val_loss, h->val_acc, h->last_loss, h->last_acc);
        return -EINVAL;
    }
    if (h->initial_params == 0) {
        snprintf(why, wn, "initial parameter count is 0");
        return -EINVAL;
    }
    // The stored model must be the stored config's architecture at other widths.
    const struct net *c = t->net;
    if (n->in_shape.c != c->in_shape.c || n->in_shape.h != c->in_shape.h ||
        n->in_shape.w != c->in_shape.w || n->n_classes != c->n_classes) {
        snprintf(why, wn,
                 "model input %zux%zux%zu with %zu classes, the stored config's data "
                 "%zux%zux%zu with %zu",
                 n->in_shape.c, n->in_shape.h, n->in_shape.w, n->n_classes, c->in_shape.c,
                 c->in_shape.h, c->in_shape.w, c->n_classes);
        return -EINVAL;
    }
    if (n->n_layers != c->n_layers) {
        snprintf(why, wn, "model has %zu layers, the stored config %zu", n->n_layers, c->n_layers);
        return -EINVAL;
    }
    for (size_t i = 0; i < n->n_layers; i++) {
        const struct net_layer_spec *a = &n->layers[i].spec, *b = &c->layers[i].spec;
        if (a->kind != b->kind || strcmp(a->name, b->name) != 0) {
            snprintf(why, wn, "model layer %zu is %s \"%s\", the stored config's %s \"%s\"", i,
                     net_kind_name(a->kind), a->name, net_kind_name(b->kind), b->name);
            return -EINVAL;
        }
    }
    // perm must be a permutation of 0 .. N-1 (the batcher indexes the data set with it).
    unsigned char *seen = calloc((size_t)N, 1);
    if (!seen) {
        snprintf(why, wn, "out of memory");
        return -ENOMEM;
    }
    struct net_rd p = h->perm;
    for (size_t i = 0; i < N; i++) {
        uint32_t v = net_rd_u32(&p);
        if (v >= N || seen[v]) {
            snprintf(why, wn, "batcher order is not a permutation (entry %zu is %u)", i, v);
            free(seen);
            return -EINVAL;
        }
        seen[v] = 1;
        t->batcher.perm[i] = v;
    }
    free(seen);
    return 0;
}

int dmn_trainer_peek(const char *path, struct dmn_ckpt_info *info, char *err, size_t errlen)
{
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    int has_opt = 0;
    struct net_optim opt = {0};
    int rc = ckpt_load(path, &n, &opt, &has_opt, &bl, &nbl, err, errlen);
    if (rc < 0) return rc;
    rc = -EINVAL;
    const struct ckpt_blob *conf = ckpt_blob_find(bl, nbl, "CONF");
    const struct ckpt_blob *trb = ckpt_blob_find(bl, nbl, "TRNR");
    struct trnr h;
    char why[512];
    if (!conf || !trb || !has_opt) {
        snprintf(err, errlen, "%s: a model file, not a run checkpoint", path);
    } else if (cfg_load_json(&info->cfg, conf->data, conf->len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: stored config is invalid: %s", path, why);
    } else if (dmn__trnr_parse(&h, trb, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: TRNR chunk: %s", path, why);
    } else {
        info->step = (size_t)h.step;
        info->change_seq = h.change_seq;
        info->val_loss = h.val_loss;
        info->params = n->n_params;
        info->events = h.has_events ? h.events : (uint64_t)-1;
        rc = 0;
    }
    net_destroy(n);
    ckpt_blobs_free(bl, nbl);
    return rc;
}

static int dmn__trainer_decode_as(struct dmn_trainer **out, const unsigned char *buf, size_t len,
                                  const char *path, const struct dmn_config *as, char *err,
                                  size_t errlen);

int dmn_trainer_load(struct dmn_trainer **out, const char *path, char *err, size_t errlen)
{
    return dmn_trainer_load_as(out, path, NULL, err, errlen);
}

int dmn_trainer_load_as(struct dmn_trainer **out, const char *path, const struct dmn_config *as,
                        char *err, size_t errlen)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = net_read_file(path, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    rc = dmn__trainer_decode_as(out, buf, len, path, as, err, errlen);
    free(buf);
    return rc;
}

int dmn_trainer_decode(struct dmn_trainer **out, const unsigned char *buf, size_t len,
                       const char *path, char *err, size_t errlen)
{
    return dmn__trainer_decode_as(out, buf, len, path, NULL, err, errlen);
}

/* The run image in buf, its config `as` when given (--resume-anyway), else the stored one. */
static int dmn__trainer_decode_as(struct dmn_trainer **out, const unsigned char *buf, size_t len,
                                  const char *path, const struct dmn_config *as, char *err,
                                  size_t errlen)
{
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct net_optim opt = {0};
    int has_opt = 0;
    struct dmn_trainer *t = NULL;
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    int rc =
        cfg ? ckpt_decode(buf, len, path, &n, &opt, &has_opt, &bl, &nbl, err, errlen) : -ENOMEM;
    if (rc < 0) goto fail;
    rc = -EINVAL;
    const struct ckpt_blob *conf = ckpt_blob_find(bl, nbl, "CONF");
    const struct ckpt_blob *trb = ckpt_blob_find(bl, nbl, "TRNR");
    if (!conf || !trb || !has_opt) {
        snprintf(err, errlen, "%s: a model file, not a run checkpoint (no %s)", path,
                 !conf  ? "CONF"
                 : !trb ? "TRNR"
                        : "OPTM");
        goto fail;
    }
    char why[512];
    if (as)
        *cfg = *as;
    else if (cfg_load_json(cfg, conf->data, conf->len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: stored config is invalid: %s", path, why);
        goto fail;
    }
    struct trnr h;
    if (dmn__trnr_parse(&h, trb, why, sizeof(why)) < 0) goto bad_trnr;
    if ((rc = dmn_trainer_create(&t, cfg, err, errlen)) < 0) goto fail;
    rc = -EINVAL;
    if (opt.kind != t->opt.kind) {
        snprintf(err, errlen, "%s: optimizer state is %s, the stored config's %s", path,
                 opt.kind == NET_ADAMW ? "adamw" : "sgd",
                 t->opt.kind == NET_ADAMW ? "adamw" : "sgd");
        goto fail;
    }
    if ((rc = dmn__trnr_check(&h, t, n, why, sizeof(why))) < 0) goto bad_trnr;
    rc = -EINVAL;
    // The optimizer's hyper-parameters are fixed when training starts: the stored ones must
    // be the stored config's. (Its step count t is not tied to the trainer's: evowidth
    // compress fine-tunes from a fresh optimizer and keeps the step.)
    const struct net_optim *co = &t->opt;
    if (opt.momentum != co->momentum || opt.nesterov != co->nesterov ||
        opt.weight_decay != co->weight_decay || opt.beta1 != co->beta1 || opt.beta2 != co->beta2 ||
        opt.eps != co->eps) {
        snprintf(err, errlen,
                 "%s: optimizer state (momentum %g, nesterov %d, weight decay %g, "
                 "betas %g %g, eps %g) is not the stored config's (%g, %d, %g, %g %g, %g)",
                 path, opt.momentum, opt.nesterov, opt.weight_decay, opt.beta1, opt.beta2, opt.eps,
                 co->momentum, co->nesterov, co->weight_decay, co->beta1, co->beta2, co->eps);
        goto fail;
    }
    // Swap in the stored model (its widths may differ from the config's initial ones).
    if (net_reserve(n, t->cfg.train.batch_size) < 0) {
        rc = -ENOMEM;
        goto fail;
    }
    net_destroy(t->net);
    t->net = n;
    n = NULL;
    t->opt = opt;
    t->step = h.step;
    t->rng = h.rng;
    t->batcher.pos = h.b_pos;
    t->batcher.epoch = h.b_epoch;
    t->batcher.rng = h.b_rng;
#define TRNR_SET(f) t->f = h.f;
    TRNR_F64S(TRNR_SET)
#undef TRNR_SET
    t->initial_params = h.initial_params;
    t->change_seq = h.change_seq;
    if ((rc = dmn__adapt_deserialize(t, h.extra.p, h.extra.len)) < 0) {
        snprintf(err, errlen, "%s: adaptation state is %s", path,
                 rc == -ENOMEM ? "too large for memory" : "corrupt");
        goto fail;
    }
    if (h.has_events && (rc = dmn__adapt_renumber(t, h.events)) < 0) {
        snprintf(err, errlen, "%s: TRNR chunk: event seq %llu is below the %zu event texts held",
                 path, (unsigned long long)h.events, dmn__adapt_n_events(t));
        goto fail;
    }
    ckpt_blobs_free(bl, nbl);
    free(cfg);
    *out = t;
    return 0;
bad_trnr:
    snprintf(err, errlen, "%s: TRNR chunk: %s", path, why);
    if (rc != -ENOMEM) rc = -EINVAL;
fail:
    dmn_trainer_destroy(t);
    net_destroy(n);
    ckpt_blobs_free(bl, nbl);
    free(cfg);
    return rc < 0 ? rc : -EINVAL; // a failure is never reported as success
}
