/* daemon/state.c: full-run checkpoints on top of net/ckpt.c.
 *
 * A run checkpoint is a model file (ARCH, PARM, STAT, OPTM) plus two blobs:
 *   CONF: the effective config as JSON text (model widths there are the *initial* ones; the
 *         ARCH chunk has the current ones), policy and runtime changes included;
 *   TRNR: the trainer's position: version, step, RNG, batcher (pos, epoch, rng, perm),
 *         timing and last metrics. Fixed little-endian layout, checked on load. Its
 *         adaptation part holds the policy state only: the event history lives in the
 *         state dir's events.jsonl (older checkpoints carried the texts; they still load);
 *   LSEQ: u64 version (1) | u64 events: the adaptation events this checkpoint includes,
 *         the last seq of events.jsonl that belongs to it (absent in older files: the
 *         number of texts TRNR carried).
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
    uint64_t lseq[2] = {1, dmn__adapt_n_events(t)};
    struct ckpt_blob blobs[3] = {
        {"TRNR", tr, tl}, {"CONF", conf, strlen(conf)}, {"LSEQ", lseq, sizeof(lseq)}};
    rc = ckpt_save(path, t->net, &t->opt, blobs, 3, err, errlen);
out:
    free(extra);
    free(tr);
    cJSON_free(conf);
    return rc;
}

/* The LSEQ blob's event count, or the legacy count (-1: take it from the TRNR texts). */
static int64_t dmn__lseq_events(const struct ckpt_blob *bl, size_t nbl)
{
    const struct ckpt_blob *b = ckpt_blob_find(bl, nbl, "LSEQ");
    uint64_t v[2];
    if (!b || b->len != sizeof(v)) return -1;
    memcpy(v, b->data, sizeof(v));
    return v[0] == 1 && v[1] < ((uint64_t)1 << 53) ? (int64_t)v[1] : -1;
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
    struct trnr_head h;
    char why[512];
    if (!conf || !trb || !has_opt) {
        snprintf(err, errlen, "%s: a model file, not a run checkpoint", path);
    } else if (cfg_load_json(&info->cfg, conf->data, conf->len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: stored config is invalid: %s", path, why);
    } else if (trb->len < sizeof(h) || (memcpy(&h, trb->data, sizeof(h)), h.version != TRNR_VERSION) ||
               h.b_n > trb->len / 4 || h.extra_len > trb->len ||
               trb->len != sizeof(h) + h.b_n * 4 + h.extra_len) {
        snprintf(err, errlen, "%s: TRNR chunk is malformed", path);
    } else {
        int64_t ev = dmn__lseq_events(bl, nbl);
        info->step = h.step;
        info->change_seq = h.change_seq;
        info->val_loss = h.val_loss;
        info->params = n->n_params;
        info->events = ev >= 0 ? (uint64_t)ev : (uint64_t)-1;
        rc = 0;
    }
    net_destroy(n);
    ckpt_blobs_free(bl, nbl);
    return rc;
}

int dmn_trainer_load(struct dmn_trainer **out, const char *path, char *err, size_t errlen)
{
    return dmn_trainer_load_as(out, path, NULL, err, errlen);
}

int dmn_trainer_load_as(struct dmn_trainer **out, const char *path, const struct dmn_config *as,
                        char *err, size_t errlen)
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
                 !conf ? "CONF" : !trb ? "TRNR" : "OPTM");
        goto fail;
    }
    char why[512];
    if (as)
        *cfg = *as;
    else if (cfg_load_json(cfg, conf->data, conf->len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: stored config is invalid: %s", path, why);
        goto fail;
    }
    struct trnr_head h;
    if (trb->len < sizeof(h)) goto bad_trnr;
    memcpy(&h, trb->data, sizeof(h));
    if (h.version != TRNR_VERSION || trb->len != sizeof(h) + h.b_n * 4 + h.extra_len)
        goto bad_trnr;
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
    int64_t ev = dmn__lseq_events(bl, nbl);
    if (ev >= 0) dmn__adapt_renumber(t, (uint64_t)ev);
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
