/* net/export.c: the compressed model file ("EVWZ").
 *
 * It stores what a Deep Compression plan (net/compress.c: pruning masks, per-layer k-means
 * codebooks and codes, float16) represents:
 *   codes packed in ceil(log2 K) bits, or raw float16 / float32 values, with the pruned
 *   entries either as a reserved code 0 or as a bitmap of the kept ones (whichever is
 *   smaller for that tensor), and the whole payload deflated by zlib.
 * Only weights (tensors with weight decay: dense / conv "w", factors "u" "v", res convs) are
 * compressed; biases, batch-norm parameters and running statistics stay float32.
 *
 * File layout (native little-endian, checked by a probe):
 *   "EVWZ" | u32 version | u32 0x01020304 | u32 flags (0) | u64 payload length |
 *   u64 deflated length | deflated payload | u32 CRC-32 (zlib) of every byte before it.
 * Payload: chunks `char tag[4] | u64 length | bytes`, in order ARCH (as in a checkpoint:
 * input shape, classes, normalisation, layer specs, arena sizes), TENS (every parameter
 * tensor in arena order), STAT (float32), then caller blobs (e.g. "CONF").
 * TENS: u32 count, then per tensor:
 *   u8 enc (0 f32, 1 f16, 2 k-means with f32 codebook, 3 k-means with f16 codebook) |
 *   u8 sparse (1: a bitmap of the stored entries follows the codebook) | u8 bits | u8 0 |
 *   u32 codebook length | u64 elements | u64 stored elements |
 *   codebook | bitmap (ceil(elements / 8) bytes, LSB first) | values or packed codes.
 * Entries not stored (sparse) are 0. Loading checks sizes, magic, version, probe and CRC
 * before inflating, then bounds-checks every field; a net is returned only if all is
 * consistent. Nothing here logs or exits. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "net/net.h"
#include "net/net_internal.h"

#define XZ_VERSION 1u
#define XZ_PROBE 0x01020304u
#define XZ_HEAD 32              // magic .. deflated length
#define XZ_MAX_RAW (1ull << 31) // payloads above 2 GiB are refused
#define XZ_KMAX NET__XZ_KMAX

enum xz_enc { XZ_F32 = 0, XZ_F16 = 1, XZ_KM_F32 = 2, XZ_KM_F16 = 3 };

// ---- writing -------------------------------------------------------------------------------

/* The payload, plus a copy of each part's bytes so that sizes can be reported per part. */
struct xz_writer {
    struct net_wr all, part[NET_XPART_COUNT];
    unsigned bits_acc_n; // packed codes: pending bits
    uint64_t bits_acc;
};

static void xw_put(struct xz_writer *w, int part, const void *src, size_t n)
{
    net_wr_bytes(&w->all, src, n);
    net_wr_bytes(&w->part[part], src, n);
}

static void xw_u8(struct xz_writer *w, int part, unsigned v)
{
    unsigned char c = (unsigned char)v;
    xw_put(w, part, &c, 1);
}

static void xw_u32(struct xz_writer *w, int part, uint32_t v)
{
    xw_put(w, part, &v, 4);
}

static void xw_u64(struct xz_writer *w, int part, uint64_t v)
{
    xw_put(w, part, &v, 8);
}

static void xw_f32(struct xz_writer *w, int part, float v)
{
    xw_put(w, part, &v, 4);
}

static void xw_f16(struct xz_writer *w, int part, float v)
{
    uint16_t h = net_f16_from_f32(v);
    xw_put(w, part, &h, 2);
}

/* Codes LSB first, `bits` each; xw_flush_bits pads the last byte with zeros. */
static void xw_code(struct xz_writer *w, unsigned code, unsigned bits)
{
    w->bits_acc |= (uint64_t)code << w->bits_acc_n;
    w->bits_acc_n += bits;
    while (w->bits_acc_n >= 8) {
        xw_u8(w, NET_XPART_CODES, (unsigned)(w->bits_acc & 0xffu));
        w->bits_acc >>= 8;
        w->bits_acc_n -= 8;
    }
}

static void xw_flush_bits(struct xz_writer *w)
{
    if (w->bits_acc_n) xw_u8(w, NET_XPART_CODES, (unsigned)(w->bits_acc & 0xffu));
    w->bits_acc = 0;
    w->bits_acc_n = 0;
}

/* Chunk framing (net/codec.h) on the payload; the 12 framing bytes count as metadata. */
static size_t xw_begin(struct xz_writer *w, const char *tag)
{
    net_wr_bytes(&w->part[NET_XPART_META], tag, 4);
    net_wr_u64(&w->part[NET_XPART_META], 0);
    return net_wr_begin(&w->all, tag);
}

static void xw_end(struct xz_writer *w, size_t at)
{
    net_wr_end(&w->all, at);
}

static unsigned xz_bits_for(size_t k)
{
    unsigned b = 1;
    while (((size_t)1 << b) < k) b++;
    return b;
}

static void xw_bitmap(struct xz_writer *w, const uint8_t *mask, size_t N)
{
    for (size_t i = 0; i < N; i += 8) {
        unsigned byte = 0;
        for (size_t j = 0; j < 8 && i + j < N; j++) byte |= (unsigned)(mask[i + j] != 0) << j;
        xw_u8(w, NET_XPART_MASKS, byte);
    }
}

/* One TENS record. xt may be NULL (plain float32). */
static void xw_tensor(struct xz_writer *w, const struct net_tensor *t, const float *v,
                      const struct net__xtensor *xt)
{
    const size_t N = t->n, nnz = xt ? xt->nnz : N;
    const int pruned = xt && xt->mask && nnz < N;
    const int part = xt && xt->weight ? NET_XPART_WEIGHTS : NET_XPART_OTHER;
    if (xt && xt->k) {
        // Dense codes need a code for 0 when pruned; sparse ones a bitmap. Take the smaller.
        const unsigned bd = xz_bits_for(xt->k + (size_t)pruned), bs = xz_bits_for(xt->k);
        const size_t cost_d = (N * bd + 7) / 8, cost_s = (N + 7) / 8 + (nnz * bs + 7) / 8;
        const int sparse = pruned && cost_s < cost_d, zero_code = pruned && !sparse;
        const unsigned bits = sparse ? bs : bd;
        xw_u8(w, NET_XPART_META, xt->f16 ? XZ_KM_F16 : XZ_KM_F32);
        xw_u8(w, NET_XPART_META, (unsigned)sparse);
        xw_u8(w, NET_XPART_META, bits);
        xw_u8(w, NET_XPART_META, 0);
        xw_u32(w, NET_XPART_META, (uint32_t)(xt->k + (size_t)zero_code));
        xw_u64(w, NET_XPART_META, N);
        xw_u64(w, NET_XPART_META, sparse ? nnz : N);
        for (size_t j = 0; j < xt->k + (size_t)zero_code; j++) {
            float c = zero_code ? (j ? xt->cent[j - 1] : 0.0f) : xt->cent[j];
            if (xt->f16)
                xw_f16(w, NET_XPART_CODEBOOKS, c);
            else
                xw_f32(w, NET_XPART_CODEBOOKS, c);
        }
        if (sparse) xw_bitmap(w, xt->mask, N);
        for (size_t i = 0; i < N; i++) {
            int kept = !xt->mask || xt->mask[i];
            if (sparse && !kept) continue;
            xw_code(w, kept ? xt->codes[i] + (unsigned)zero_code : 0u, bits);
        }
        xw_flush_bits(w);
        return;
    }
    const int f16 = xt && xt->weight && xt->f16;
    const size_t es = f16 ? 2 : 4;
    const int sparse = pruned && (N + 7) / 8 + nnz * es < N * es;
    xw_u8(w, NET_XPART_META, f16 ? XZ_F16 : XZ_F32);
    xw_u8(w, NET_XPART_META, (unsigned)sparse);
    xw_u8(w, NET_XPART_META, 0);
    xw_u8(w, NET_XPART_META, 0);
    xw_u32(w, NET_XPART_META, 0);
    xw_u64(w, NET_XPART_META, N);
    xw_u64(w, NET_XPART_META, sparse ? nnz : N);
    if (sparse) xw_bitmap(w, xt->mask, N);
    for (size_t i = 0; i < N; i++) {
        if (sparse && !xt->mask[i]) continue;
        if (f16)
            xw_f16(w, part, v[i]);
        else
            xw_f32(w, part, v[i]);
    }
}

/* ARCH as in a checkpoint (net__arch_write), counted as metadata. */
static void xw_arch(struct xz_writer *w, const struct net *n)
{
    struct net_wr a = {0};
    net__arch_write(&a, n);
    if (a.oom) w->all.oom = 1;
    xw_put(w, NET_XPART_META, a.p, a.len);
    net_wr_free(&a);
}

int net_export_save(const char *path, const struct net *n, const struct net_xplan *p,
                    const struct ckpt_blob *blobs, size_t n_blobs, struct net_export_sizes *sz,
                    char *err, size_t errlen)
{
    if (p && (p->n_tensors != n->n_tensors || p->n_params != n->n_params)) {
        snprintf(err, errlen, "%s: the compression plan belongs to another architecture", path);
        return -EINVAL;
    }
    static const char *const reserved[3] = {"ARCH", "TENS", "STAT"};
    int rc = net__blobs_check(blobs, n_blobs, reserved, 3, path, err, errlen);
    if (rc < 0) return rc;
    struct xz_writer w;
    memset(&w, 0, sizeof(w));
    unsigned char *file = NULL;
    rc = -ENOMEM;
    xw_arch(&w, n);
    size_t at = xw_begin(&w, "TENS"), n_par = 0;
    for (size_t ti = 0; ti < n->n_tensors; ti++) n_par += n->tensors[ti].arena == NET_ARENA_PARAM;
    xw_u32(&w, NET_XPART_META, (uint32_t)n_par);
    for (size_t ti = 0; ti < n->n_tensors; ti++) {
        const struct net_tensor *t = &n->tensors[ti];
        if (t->arena == NET_ARENA_PARAM) xw_tensor(&w, t, n->params + t->off, p ? &p->t[ti] : NULL);
    }
    xw_end(&w, at);
    at = xw_begin(&w, "STAT");
    xw_put(&w, NET_XPART_OTHER, n->state, n->n_state * sizeof(float));
    xw_end(&w, at);
    for (size_t i = 0; i < n_blobs; i++) {
        at = xw_begin(&w, blobs[i].tag);
        xw_put(&w, NET_XPART_META, blobs[i].data, blobs[i].len);
        xw_end(&w, at);
    }
    int oom = w.all.oom;
    for (int i = 0; i < NET_XPART_COUNT; i++) oom |= w.part[i].oom;
    if (oom) {
        snprintf(err, errlen, "%s: out of memory building the file", path);
        goto out;
    }
    if (w.all.len > XZ_MAX_RAW) {
        snprintf(err, errlen, "%s: model too large for the format (%zu bytes)", path, w.all.len);
        rc = -EFBIG;
        goto out;
    }
    uLongf zcap = compressBound((uLong)w.all.len);
    if (!(file = malloc(XZ_HEAD + zcap + 4))) {
        snprintf(err, errlen, "%s: out of memory for the deflated image", path);
        goto out;
    }
    if (compress2(file + XZ_HEAD, &zcap, w.all.p ? w.all.p : (const Bytef *)"", (uLong)w.all.len,
                  Z_BEST_COMPRESSION) != Z_OK) {
        snprintf(err, errlen, "%s: deflate failed", path);
        rc = -EIO;
        goto out;
    }
    // The header: magic, version, byte-order probe, flags, inflated and deflated lengths.
    struct net_wr h = {0};
    net_wr_bytes(&h, "EVWZ", 4);
    net_wr_u32(&h, XZ_VERSION);
    net_wr_u32(&h, XZ_PROBE);
    net_wr_u32(&h, 0);
    net_wr_u64(&h, w.all.len);
    net_wr_u64(&h, zcap);
    if (!h.oom) memcpy(file, h.p, XZ_HEAD);
    net_wr_free(&h);
    if (h.oom) {
        snprintf(err, errlen, "%s: out of memory for the file header", path);
        goto out;
    }
    const size_t flen = XZ_HEAD + (size_t)zcap + 4;
    uint32_t crc = net_crc32(file, flen - 4);
    memcpy(file + flen - 4, &crc, 4);
    if ((rc = net_write_atomic(path, file, flen, err, errlen)) < 0) goto out;
    if (sz) {
        memset(sz, 0, sizeof(*sz));
        sz->f32_bytes = (n->n_params + n->n_state) * sizeof(float);
        sz->payload = w.all.len;
        sz->file = flen;
        for (int i = 0; i < NET_XPART_COUNT; i++) {
            sz->part[i] = w.part[i].len;
            uLongf zl = compressBound((uLong)w.part[i].len);
            unsigned char *tmp = malloc(zl + 1);
            if (tmp && w.part[i].len &&
                compress2(tmp, &zl, w.part[i].p, (uLong)w.part[i].len, Z_BEST_COMPRESSION) == Z_OK)
                sz->part_z[i] = zl;
            free(tmp);
        }
    }
    rc = 0;
out:
    free(file);
    free(w.all.p);
    for (int i = 0; i < NET_XPART_COUNT; i++) free(w.part[i].p);
    return rc;
}

// ---- reading -------------------------------------------------------------------------------

static float rd_f16(struct net_rd *r)
{
    uint16_t h;
    net_rd_bytes(r, &h, 2);
    return net_f32_from_f16(h);
}

/* One TENS record into w (t->n floats). */
static int xz_read_tensor(struct net_rd *r, const char *path, const struct net_tensor *t, float *w,
                          float *cb, char *err, size_t errlen)
{
    const unsigned enc = net_rd_u8(r), sparse = net_rd_u8(r), bits = net_rd_u8(r),
                   zero = net_rd_u8(r);
    const uint32_t k = net_rd_u32(r);
    const uint64_t N = net_rd_u64(r), nnz = net_rd_u64(r);
    if (r->bad) goto trunc;
    if (enc > XZ_KM_F16 || sparse > 1 || zero != 0 || N != t->n || nnz > N ||
        (!sparse && nnz != N)) {
        snprintf(err, errlen,
                 "%s: tensor %s: bad record header (encoding %u, %llu of %llu "
                 "elements, expected %zu)",
                 path, t->name, enc, (unsigned long long)nnz, (unsigned long long)N, t->n);
        return -EINVAL;
    }
    const int km = enc >= XZ_KM_F32;
    if (km ? (bits < 1 || bits > 16 || k > XZ_KMAX + 1 || (size_t)k > ((size_t)1 << bits) ||
              (k == 0 && nnz > 0))
           : (bits != 0 || k != 0)) {
        snprintf(err, errlen, "%s: tensor %s: bad codebook (%u entries, %u-bit codes)", path,
                 t->name, k, bits);
        return -EINVAL;
    }
    for (uint32_t j = 0; j < k; j++) cb[j] = enc == XZ_KM_F16 ? rd_f16(r) : net_rd_f32(r);
    const unsigned char *bitmap = NULL;
    if (sparse) {
        const size_t nb = (size_t)(N + 7) / 8;
        if (!(bitmap = net_rd_view(r, nb))) goto trunc;
        size_t ones = 0;
        for (size_t i = 0; i < N; i++) ones += (bitmap[i / 8] >> (i % 8)) & 1u;
        if (ones != nnz || (N % 8 && bitmap[nb - 1] >> (N % 8))) {
            snprintf(err, errlen, "%s: tensor %s: bitmap has %zu entries set, record says %llu",
                     path, t->name, ones, (unsigned long long)nnz);
            return -EINVAL;
        }
    }
    const size_t es = km ? 0 : enc == XZ_F16 ? 2 : 4;
    const size_t need = km ? (size_t)((nnz * bits + 7) / 8) : (size_t)nnz * es;
    const unsigned char *src = net_rd_view(r, need);
    if (!src) goto trunc;
    uint64_t acc = 0;
    unsigned have = 0;
    size_t s = 0;
    for (size_t i = 0; i < N; i++) {
        if (bitmap && !((bitmap[i / 8] >> (i % 8)) & 1u)) {
            w[i] = 0.0f;
            continue;
        }
        if (km) {
            while (have < bits) {
                acc |= (uint64_t)(*src++) << have;
                have += 8;
            }
            unsigned code = (unsigned)(acc & ((1u << bits) - 1u));
            acc >>= bits;
            have -= bits;
            if (code >= k) {
                snprintf(err, errlen,
                         "%s: tensor %s: code %u out of range (codebook has %u "
                         "entries)",
                         path, t->name, code, k);
                return -EINVAL;
            }
            w[i] = cb[code];
        } else if (es == 2) {
            uint16_t h;
            memcpy(&h, src + s * 2, 2);
            w[i] = net_f32_from_f16(h);
        } else {
            memcpy(&w[i], src + s * 4, 4);
        }
        s++;
    }
    return 0;
trunc:
    snprintf(err, errlen, "%s: tensor %s: record is truncated", path, t->name);
    return -EINVAL;
}

int net_export_load(const char *path, struct net **out, struct ckpt_blob **blobs, size_t *n_blobs,
                    char *err, size_t errlen)
{
    unsigned char *buf = NULL, *raw = NULL;
    size_t len = 0;
    struct net *n = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    float *cb = NULL;
    int got_tens = 0, got_stat = 0;
    int rc = net_read_file(path, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    rc = -EINVAL;
    if (len < 4 || memcmp(buf, "EVWZ", 4) != 0) {
        snprintf(err, errlen, "%s: bad magic (not a compressed evowidth model)", path);
        goto fail;
    }
    if (len < XZ_HEAD + 4) {
        snprintf(err, errlen, "%s: truncated (%zu bytes, the header alone is %d)", path, len,
                 XZ_HEAD + 4);
        goto fail;
    }
    uint32_t ver, probe, flags;
    uint64_t raw_len, zlen;
    memcpy(&ver, buf + 4, 4);
    memcpy(&probe, buf + 8, 4);
    memcpy(&flags, buf + 12, 4);
    memcpy(&raw_len, buf + 16, 8);
    memcpy(&zlen, buf + 24, 8);
    if (probe != XZ_PROBE) {
        snprintf(err, errlen, "%s: written on a machine with another byte order", path);
        goto fail;
    }
    if (ver != XZ_VERSION || flags != 0) {
        snprintf(err, errlen, "%s: unsupported format version %u (flags %u; this build reads %u)",
                 path, ver, flags, XZ_VERSION);
        goto fail;
    }
    if (zlen > len - XZ_HEAD - 4) {
        snprintf(err, errlen,
                 "%s: truncated (header promises %llu bytes of data, the file has "
                 "%zu)",
                 path, (unsigned long long)zlen, len - XZ_HEAD - 4);
        goto fail;
    }
    if (zlen < len - XZ_HEAD - 4) {
        snprintf(err, errlen, "%s: %zu bytes of trailing data", path,
                 (size_t)(len - XZ_HEAD - 4 - zlen));
        goto fail;
    }
    if (!net_crc_ok(buf, len)) {
        snprintf(err, errlen, "%s: CRC mismatch (file is corrupt or truncated)", path);
        goto fail;
    }
    // Deflate expands at most ~1032x: a larger claim is corrupt, not a reason to allocate.
    if (raw_len == 0 || raw_len > XZ_MAX_RAW || raw_len > zlen * 1040 + 64) {
        snprintf(err, errlen, "%s: implausible payload length %llu", path,
                 (unsigned long long)raw_len);
        goto fail;
    }
    if (!(raw = malloc((size_t)raw_len))) {
        snprintf(err, errlen, "%s: out of memory for %llu bytes", path,
                 (unsigned long long)raw_len);
        rc = -ENOMEM;
        goto fail;
    }
    uLongf got = (uLongf)raw_len;
    int zrc = uncompress(raw, &got, buf + XZ_HEAD, (uLong)zlen);
    if (zrc != Z_OK || got != raw_len) {
        snprintf(err, errlen, "%s: deflated data is corrupt (%s)", path,
                 zrc == Z_OK          ? "short payload"
                 : zrc == Z_BUF_ERROR ? "payload longer than stated"
                                      : "bad stream");
        goto fail;
    }
    struct net_rd r = net_rd_make(raw, (size_t)raw_len);
    // Every element takes at least one bit of the payload (bitmap or 1-bit code), every
    // statistic four bytes: larger arena claims are corrupt, refused before allocating.
    if ((rc = net__arch_read(&r, path, 8 * (size_t)raw_len, (size_t)raw_len / 4, &n, err, errlen)) <
        0)
        goto fail;
    rc = -EINVAL;
    if (!(cb = malloc((XZ_KMAX + 1) * sizeof(float)))) {
        rc = -ENOMEM;
        goto fail;
    }
    char tag[5] = "";
    struct net_rd c;
    int more;
    while ((more = net_rd_chunk(&r, tag, &c)) == 1) {
        if (strcmp(tag, "ARCH") == 0 || (strcmp(tag, "TENS") == 0 && got_tens) ||
            (strcmp(tag, "STAT") == 0 && got_stat)) {
            snprintf(err, errlen, "%s: duplicate chunk \"%s\"", path, tag);
            goto fail;
        }
        if (strcmp(tag, "TENS") == 0) {
            size_t n_par = 0;
            for (size_t ti = 0; ti < n->n_tensors; ti++)
                n_par += n->tensors[ti].arena == NET_ARENA_PARAM;
            uint32_t cnt = net_rd_u32(&c);
            if (c.bad || cnt != n_par) {
                snprintf(err, errlen, "%s: TENS chunk lists %u tensors, the architecture has %zu",
                         path, cnt, n_par);
                goto fail;
            }
            for (size_t ti = 0; ti < n->n_tensors; ti++) {
                const struct net_tensor *t = &n->tensors[ti];
                if (t->arena != NET_ARENA_PARAM) continue;
                if ((rc = xz_read_tensor(&c, path, t, n->params + t->off, cb, err, errlen)) < 0)
                    goto fail;
            }
            rc = -EINVAL;
            if (!net_rd_done(&c)) {
                snprintf(err, errlen, "%s: TENS chunk has %zu bytes of trailing data", path,
                         net_rd_left(&c));
                goto fail;
            }
            got_tens = 1;
        } else if (strcmp(tag, "STAT") == 0) {
            if (net_rd_left(&c) != n->n_state * sizeof(float)) {
                snprintf(err, errlen, "%s: STAT chunk has the wrong size for this architecture",
                         path);
                goto fail;
            }
            net_rd_f32s(&c, n->state, n->n_state);
            got_stat = 1;
        } else {
            int brc = net__blobs_take(&bl, &nbl, tag, &c, path, err, errlen);
            if (brc < 0) {
                rc = brc;
                goto fail;
            }
        }
        if (!net_rd_done(&c)) {
            snprintf(err, errlen, "%s: chunk \"%.4s\" is malformed", path, tag);
            goto fail;
        }
    }
    if ((rc = net__chunks_end(more, tag, "TENS", got_tens, "STAT", got_stat, path, err, errlen)) <
        0)
        goto fail;
    net__blobs_hand(bl, nbl, blobs, n_blobs);
    free(cb);
    free(raw);
    free(buf);
    *out = n;
    return 0;
fail:
    ckpt_blobs_free(bl, nbl);
    net_destroy(n);
    free(cb);
    free(raw);
    free(buf);
    return rc;
}

int net_load_any(const char *path, struct net **out, struct net_optim *opt, int *has_opt,
                 struct ckpt_blob **blobs, size_t *n_blobs, char *err, size_t errlen)
{
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t got = fread(magic, 1, 4, f);
        fclose(f);
        if (got == 4 && memcmp(magic, "EVWZ", 4) == 0) {
            int rc = net_export_load(path, out, blobs, n_blobs, err, errlen);
            if (rc == 0 && has_opt) *has_opt = 0;
            return rc;
        }
    }
    // Not compressed (or unreadable): the checkpoint loader reports what is wrong.
    return ckpt_load(path, out, opt, has_opt, blobs, n_blobs, err, errlen);
}
