/* net/ckpt.c: the model / checkpoint file.
 *
 * Layout (native little-endian, checked by a probe):
 *   "EVOW" | u32 version | u32 sizeof(float) | u32 0x01020304
 *   chunks: char tag[4] | u64 length | payload
 *   u32 CRC-32 (zlib) of every byte before it.
 * Chunks: ARCH (input shape, classes, normalisation, layer specs, arena sizes), PARM (params),
 * STAT (BN running stats), OPTM (optimizer hyper-state, m, v; optional), then caller blobs.
 * The whole image is built in memory, written to path.tmp, fsynced, renamed over path, and
 * the directory fsynced, so a crash leaves either the old file or the new one.
 * Loading reads the whole file, checks size, magic, version, probe and CRC before parsing,
 * then bounds-checks every chunk; a net is returned only if everything is consistent. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/codec.h"
#include "net/net.h"
#include "net/net_internal.h"

#define CKPT_VERSION 1u
#define CKPT_PROBE 0x01020304u

static const char *const CKPT_RESERVED[4] = {"ARCH", "PARM", "STAT", "OPTM"};

/* OPTM: u32 kind | f32 momentum | u32 nesterov | f32 weight_decay, beta1, beta2, eps | u64 t |
 * f32 m[n_params] | f32 v[n_params]. */
#define OPTM_HEAD (7 * 4 + 8)

int ckpt_encode(struct net_wr *out, const struct net *n, const struct net_optim *opt,
                const struct ckpt_blob *blobs, size_t n_blobs, const char *path, char *err,
                size_t errlen)
{
    int rc = net__blobs_check(blobs, n_blobs, CKPT_RESERVED, 4, path, err, errlen);
    if (rc < 0) return rc;
    struct net_wr w = {0};
    net_wr_bytes(&w, "EVOW", 4);
    net_wr_u32(&w, CKPT_VERSION);
    net_wr_u32(&w, (uint32_t)sizeof(float));
    net_wr_u32(&w, CKPT_PROBE);
    net__arch_write(&w, n);
    size_t at = net_wr_begin(&w, "PARM");
    net_wr_f32s(&w, n->params, n->n_params);
    net_wr_end(&w, at);
    at = net_wr_begin(&w, "STAT");
    net_wr_f32s(&w, n->state, n->n_state);
    net_wr_end(&w, at);
    if (opt) {
        at = net_wr_begin(&w, "OPTM");
        net_wr_u32(&w, (uint32_t)opt->kind);
        net_wr_f32(&w, opt->momentum);
        net_wr_u32(&w, (uint32_t)opt->nesterov);
        net_wr_f32(&w, opt->weight_decay);
        net_wr_f32(&w, opt->beta1);
        net_wr_f32(&w, opt->beta2);
        net_wr_f32(&w, opt->eps);
        net_wr_u64(&w, opt->t);
        net_wr_f32s(&w, n->m, n->n_params);
        net_wr_f32s(&w, n->v, n->n_params);
        net_wr_end(&w, at);
    }
    net__blobs_write(&w, blobs, n_blobs);
    net_wr_u32(&w, w.oom ? 0 : net_crc32(w.p, w.len));
    if (w.oom) {
        net_wr_free(&w);
        snprintf(err, errlen, "%s: out of memory building the checkpoint", path);
        return -ENOMEM;
    }
    *out = w;
    return 0;
}

int ckpt_save(const char *path, const struct net *n, const struct net_optim *opt,
              const struct ckpt_blob *blobs, size_t n_blobs, char *err, size_t errlen)
{
    struct net_wr w = {0};
    int rc = ckpt_encode(&w, n, opt, blobs, n_blobs, path, err, errlen);
    if (rc == 0) rc = net_write_atomic(path, w.p, w.len, err, errlen);
    net_wr_free(&w);
    return rc;
}

// ---- load -----------------------------------------------------------------------------

int ckpt_load(const char *path, struct net **out, struct net_optim *opt, int *has_opt,
              struct ckpt_blob **blobs, size_t *n_blobs, char *err, size_t errlen)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = net_read_file(path, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    rc = ckpt_decode(buf, len, path, out, opt, has_opt, blobs, n_blobs, err, errlen);
    free(buf);
    return rc;
}

int ckpt_decode(const unsigned char *buf, size_t len, const char *path, struct net **out,
                struct net_optim *opt, int *has_opt, struct ckpt_blob **blobs, size_t *n_blobs,
                char *err, size_t errlen)
{
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct net_optim o = {0};
    int got_opt = 0, got_parm = 0, got_stat = 0;
    int rc = -EINVAL;
    if (len < 16 + 4) {
        snprintf(err, errlen, "%s: truncated (%zu bytes, not a checkpoint)", path, len);
        goto fail;
    }
    if (memcmp(buf, "EVOW", 4) != 0) {
        snprintf(err, errlen, "%s: bad magic (not an evowidth model or checkpoint)", path);
        goto fail;
    }
    struct net_rd r = net_rd_make(buf, len - 4);
    r.pos = 4;
    uint32_t ver = net_rd_u32(&r), fsz = net_rd_u32(&r), probe = net_rd_u32(&r);
    if (ver != CKPT_VERSION) {
        snprintf(err, errlen, "%s: unsupported format version %u (this build reads %u)", path, ver,
                 CKPT_VERSION);
        goto fail;
    }
    if (fsz != sizeof(float) || probe != CKPT_PROBE) {
        snprintf(err, errlen, "%s: written on a machine with another float size or byte order",
                 path);
        goto fail;
    }
    if (!net_crc_ok(buf, len)) {
        snprintf(err, errlen, "%s: CRC mismatch (file is corrupt or truncated)", path);
        goto fail;
    }
    // ARCH comes first: it sizes everything else. PARM holds every parameter as a float.
    if ((rc = net__arch_read(&r, path, len / sizeof(float), len / sizeof(float), &n, err, errlen)) <
        0)
        goto fail;
    rc = -EINVAL;
    const size_t np = n->n_params, ns = n->n_state;
    char tag[5] = "";
    struct net_rd c;
    int got;
    while ((got = net_rd_chunk(&r, tag, &c)) == 1) {
        int *seen = strcmp(tag, "PARM") == 0   ? &got_parm
                    : strcmp(tag, "STAT") == 0 ? &got_stat
                    : strcmp(tag, "OPTM") == 0 ? &got_opt
                                               : NULL;
        if ((seen && *seen) || strcmp(tag, "ARCH") == 0) {
            snprintf(err, errlen, "%s: duplicate chunk \"%.4s\"", path, tag);
            goto fail;
        }
        if (seen == &got_parm) {
            if (net_rd_left(&c) != np * sizeof(float)) goto badsize;
            net_rd_f32s(&c, n->params, np);
        } else if (seen == &got_stat) {
            if (net_rd_left(&c) != ns * sizeof(float)) goto badsize;
            net_rd_f32s(&c, n->state, ns);
        } else if (seen == &got_opt) {
            if (net_rd_left(&c) != OPTM_HEAD + 2 * np * sizeof(float)) goto badsize;
            uint32_t kind = net_rd_u32(&c);
            o.momentum = net_rd_f32(&c);
            uint32_t nesterov = net_rd_u32(&c);
            o.weight_decay = net_rd_f32(&c);
            o.beta1 = net_rd_f32(&c);
            o.beta2 = net_rd_f32(&c);
            o.eps = net_rd_f32(&c);
            o.t = net_rd_u64(&c);
            net_rd_f32s(&c, n->m, np);
            net_rd_f32s(&c, n->v, np);
            if (kind != NET_SGD && kind != NET_ADAMW) {
                snprintf(err, errlen, "%s: unknown optimizer kind %u", path, kind);
                goto fail;
            }
            if (nesterov > 1) {
                snprintf(err, errlen, "%s: OPTM nesterov flag is %u (0 or 1)", path, nesterov);
                goto fail;
            }
            o.kind = (enum net_opt_kind)kind;
            o.nesterov = (int)nesterov;
        } else {
            int brc = net__blobs_take(&bl, &nbl, tag, &c, path, err, errlen);
            if (brc < 0) {
                rc = brc;
                goto fail;
            }
        }
        if (!net_rd_done(&c)) goto badsize;
        if (seen) *seen = 1;
    }
    if ((rc = net__chunks_end(got, tag, "PARM", got_parm, "STAT", got_stat, path, err, errlen)) < 0)
        goto fail;
    if (opt && got_opt) *opt = o;
    if (has_opt) *has_opt = got_opt;
    net__blobs_hand(bl, nbl, blobs, n_blobs);
    *out = n;
    return 0;
badsize:
    snprintf(err, errlen, "%s: chunk \"%.4s\" has the wrong size for this architecture", path, tag);
    rc = -EINVAL;
fail:
    ckpt_blobs_free(bl, nbl);
    net_destroy(n);
    return rc;
}
