/* daemon/state.c: full-run checkpoints on top of net/ckpt.c.
 *
 * A run checkpoint is a model file (ARCH, PARM, STAT, OPTM) plus two blobs:
 *   CONF: the effective config as JSON text (model widths there are the *initial* ones; the
 *         ARCH chunk has the current ones), policy and runtime changes included;
 *   TRNR: the trainer's position: version, step, RNG, batcher (pos, epoch, rng, perm),
 *         timing and last metrics. Fixed little-endian layout, checked on load.
 * The same file is what `evowidth eval` and `evowidth layers` read. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon_internal.h"

#define TRNR_VERSION 1u

struct trnr_head {
    uint32_t version, pad;
    uint64_t step, rng, b_n, b_pos, b_epoch, b_rng;
    double train_seconds, adapt_seconds, val_loss, val_acc, last_loss, last_acc;
    uint64_t initial_params, extra_len, change_seq;
};

int dmn_trainer_save(struct dmn_trainer *t, const char *path, char *err, size_t errlen)
{
    int rc = -ENOMEM;
    char *conf = NULL;
    unsigned char *tr = NULL;
    size_t extra_len = 0;
    void *extra = NULL;
    if (!(conf = cfg_to_string(&t->cfg, 0))) {
        snprintf(err, errlen, "%s: out of memory serialising the config", path);
        goto out;
    }
    if ((rc = dmn__adapt_serialize(t, &extra, &extra_len)) < 0) {
        snprintf(err, errlen, "%s: out of memory serialising the adaptation state", path);
        goto out;
    }
    struct trnr_head h = {
        .version = TRNR_VERSION,
        .step = t->step,
        .rng = t->rng,
        .b_n = t->batcher.n,
        .b_pos = t->batcher.pos,
        .b_epoch = t->batcher.epoch,
        .b_rng = t->batcher.rng,
        .train_seconds = t->train_seconds,
        .adapt_seconds = t->adapt_seconds,
        .val_loss = t->val_loss,
        .val_acc = t->val_acc,
        .last_loss = t->last_loss,
        .last_acc = t->last_acc,
        .initial_params = t->initial_params,
        .extra_len = extra_len,
        .change_seq = t->change_seq,
    };
    size_t tl = sizeof(h) + t->batcher.n * sizeof(uint32_t) + extra_len;
    rc = -ENOMEM;
    if (!(tr = malloc(tl))) goto out;
    memcpy(tr, &h, sizeof(h));
    memcpy(tr + sizeof(h), t->batcher.perm, t->batcher.n * sizeof(uint32_t));
    if (extra_len) memcpy(tr + sizeof(h) + t->batcher.n * sizeof(uint32_t), extra, extra_len);
    struct ckpt_blob blobs[2] = {{"TRNR", tr, tl}, {"CONF", conf, strlen(conf)}};
    rc = ckpt_save(path, t->net, &t->opt, blobs, 2, err, errlen);
out:
    free(extra);
    free(tr);
    cJSON_free(conf);
    return rc;
}

int dmn_trainer_load(struct dmn_trainer **out, const char *path, char *err, size_t errlen)
{
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct net_optim opt = {0};
    int has_opt = 0;
    struct dmn_trainer *t = NULL;
    struct dmn_config *cfg = malloc(sizeof(*cfg));
    int rc = cfg ? ckpt_load(path, &n, &opt, &has_opt, &bl, &nbl, err, errlen) : -ENOMEM;
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
    if (cfg_load_json(cfg, conf->data, conf->len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: stored config is invalid: %s", path, why);
        goto fail;
    }
    struct trnr_head h;
    if (trb->len < sizeof(h)) goto bad_trnr;
    memcpy(&h, trb->data, sizeof(h));
    if (h.version != TRNR_VERSION || trb->len != sizeof(h) + h.b_n * 4 + h.extra_len) goto bad_trnr;
    if ((rc = dmn_trainer_create(&t, cfg, err, errlen)) < 0) goto fail;
    rc = -EINVAL;
    if (h.b_n != t->batcher.n || n->in_shape.c != t->net->in_shape.c ||
        n->n_classes != t->net->n_classes) {
        snprintf(err, errlen, "%s: checkpoint does not match its data set (%zu vs %zu samples)",
                 path, (size_t)h.b_n, t->batcher.n);
        goto fail;
    }
    const uint32_t *perm = (const uint32_t *)((const unsigned char *)trb->data + sizeof(h));
    for (size_t i = 0; i < h.b_n; i++) {
        if (perm[i] >= h.b_n) goto bad_trnr;
        t->batcher.perm[i] = perm[i];
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
    t->train_seconds = h.train_seconds;
    t->adapt_seconds = h.adapt_seconds;
    t->val_loss = h.val_loss;
    t->val_acc = h.val_acc;
    t->last_loss = h.last_loss;
    t->last_acc = h.last_acc;
    t->initial_params = h.initial_params;
    t->change_seq = h.change_seq;
    const unsigned char *extra = (const unsigned char *)trb->data + sizeof(h) + h.b_n * 4;
    if ((rc = dmn__adapt_deserialize(t, extra, h.extra_len)) < 0) {
        snprintf(err, errlen, "%s: adaptation state is corrupt", path);
        goto fail;
    }
    ckpt_blobs_free(bl, nbl);
    free(cfg);
    *out = t;
    return 0;
bad_trnr:
    snprintf(err, errlen, "%s: TRNR chunk is malformed", path);
    rc = -EINVAL;
fail:
    dmn_trainer_destroy(t);
    net_destroy(n);
    ckpt_blobs_free(bl, nbl);
    free(cfg);
    return rc;
}
