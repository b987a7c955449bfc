/* net/ckpt.c: the model / checkpoint file (R12).
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
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "net/net.h"
#include "net/net_internal.h"

#define CKPT_VERSION 1u
#define CKPT_PROBE 0x01020304u
#define CKPT_MAX_LAYERS 256

// ---- a growable byte buffer ------------------------------------------------------------

void net__buf_put(struct net__buf *b, const void *src, size_t n)
{
    if (b->oom || n == 0) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void cb_u32(struct net__buf *b, uint32_t v)
{
    net__buf_put(b, &v, 4);
}

static void cb_u64(struct net__buf *b, uint64_t v)
{
    net__buf_put(b, &v, 8);
}

static void cb_f32(struct net__buf *b, float v)
{
    net__buf_put(b, &v, 4);
}

/* Starts a chunk; returns the offset of its length field, patched by cb_end. */
static size_t cb_begin(struct net__buf *b, const char *tag)
{
    net__buf_put(b, tag, 4);
    size_t at = b->len;
    cb_u64(b, 0);
    return at;
}

static void cb_end(struct net__buf *b, size_t at)
{
    if (b->oom) return;
    uint64_t len = b->len - at - 8;
    memcpy(b->p + at, &len, 8);
}

uint32_t net__crc32(const unsigned char *p, size_t len)
{
    uint32_t crc = (uint32_t)crc32(0L, NULL, 0);
    for (size_t off = 0; off < len; off += 1u << 30) { // zlib's crc32 takes uInt lengths
        size_t k = len - off < (1u << 30) ? len - off : (1u << 30);
        crc = (uint32_t)crc32(crc, p + off, (uInt)k);
    }
    return crc;
}

// ---- save -----------------------------------------------------------------------------

static int sys_open(const char *p, int fl, unsigned m) { return open(p, fl, (mode_t)m); }
static long sys_write(int fd, const void *p, size_t n) { return (long)write(fd, p, n); }
static int sys_ftruncate(int fd, long long n) { return ftruncate(fd, (off_t)n); }
static const struct net_io NET_SYS_IO = {sys_open, sys_write, fsync, close, rename, unlink,
                                         link, sys_ftruncate};
static struct net_io net__io_now = NET_SYS_IO;

void net_set_io(const struct net_io *io)
{
    net__io_now = NET_SYS_IO;
    if (!io) return;
#define NET__IO_SET(f) if (io->f) net__io_now.f = io->f
    NET__IO_SET(open); NET__IO_SET(write); NET__IO_SET(fsync); NET__IO_SET(close);
    NET__IO_SET(rename); NET__IO_SET(unlink); NET__IO_SET(link); NET__IO_SET(ftruncate);
#undef NET__IO_SET
}

const struct net_io *net_io(void)
{
    return &net__io_now;
}

int net__write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        snprintf(err, errlen, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    const struct net_io *io = &net__io_now;
    int fd = io->open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(e));
        return -e;
    }
    const unsigned char *p = data;
    size_t left = len;
    while (left) {
        long w = io->write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(e));
            io->close(fd);
            io->unlink(tmp);
            return -e;
        }
        p += w;
        left -= (size_t)w;
    }
    int sync_rc = io->fsync(fd), sync_errno = errno;
    if (io->close(fd) < 0 && sync_rc == 0) sync_rc = -1, sync_errno = errno;
    if (sync_rc < 0) { // the fd is closed either way (an fsync error is not retried)
        int e = sync_errno;
        snprintf(err, errlen, "%s: fsync failed: %s", tmp, strerror(e));
        io->unlink(tmp);
        return -e;
    }
    if (io->rename(tmp, path) < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: rename failed: %s", path, strerror(e));
        io->unlink(tmp);
        return -e;
    }
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = io->open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dfd >= 0) {
        io->fsync(dfd); // best effort: some filesystems refuse fsync on directories
        io->close(dfd);
    }
    return 0;
}

int ckpt_save(const char *path, const struct net *n, const struct net_optim *opt,
              const struct ckpt_blob *blobs, size_t n_blobs, char *err, size_t errlen)
{
    static const char *const reserved[4] = {"ARCH", "PARM", "STAT", "OPTM"};
    for (size_t i = 0; i < n_blobs; i++) {
        for (int k = 0; k < 4; k++) {
            if (strncmp(blobs[i].tag, reserved[k], 4) == 0) {
                snprintf(err, errlen, "%s: blob tag \"%.4s\" is reserved for the model itself",
                         path, blobs[i].tag);
                return -EINVAL;
            }
        }
        if (strlen(blobs[i].tag) != 4) {
            snprintf(err, errlen, "%s: blob tags are four characters, got \"%s\"", path,
                     blobs[i].tag);
            return -EINVAL;
        }
    }
    struct net__buf b = {0};
    net__buf_put(&b, "EVOW", 4);
    cb_u32(&b, CKPT_VERSION);
    cb_u32(&b, (uint32_t)sizeof(float));
    cb_u32(&b, CKPT_PROBE);

    size_t at = cb_begin(&b, "ARCH");
    cb_u64(&b, n->in_shape.c);
    cb_u64(&b, n->in_shape.h);
    cb_u64(&b, n->in_shape.w);
    cb_u64(&b, n->n_classes);
    for (int c = 0; c < 4; c++) cb_f32(&b, n->norm_mean[c]);
    for (int c = 0; c < 4; c++) cb_f32(&b, n->norm_std[c]);
    cb_u64(&b, n->n_layers);
    for (size_t i = 0; i < n->n_layers; i++) {
        const struct net_layer_spec *s = &n->layers[i].spec;
        cb_u32(&b, (uint32_t)s->kind);
        net__buf_put(&b, s->name, NET_NAME_MAX);
        cb_u64(&b, s->out);
        cb_u64(&b, s->width);
        cb_u64(&b, s->rank);
        cb_u64(&b, s->k);
        cb_u64(&b, s->stride);
        cb_u64(&b, s->pad);
        cb_u32(&b, (uint32_t)s->bias);
        cb_u32(&b, (uint32_t)s->bn);
    }
    cb_u64(&b, n->n_params);
    cb_u64(&b, n->n_state);
    cb_end(&b, at);

    at = cb_begin(&b, "PARM");
    net__buf_put(&b, n->params, n->n_params * sizeof(float));
    cb_end(&b, at);
    at = cb_begin(&b, "STAT");
    net__buf_put(&b, n->state, n->n_state * sizeof(float));
    cb_end(&b, at);
    if (opt) {
        at = cb_begin(&b, "OPTM");
        cb_u32(&b, (uint32_t)opt->kind);
        cb_f32(&b, opt->momentum);
        cb_u32(&b, (uint32_t)opt->nesterov);
        cb_f32(&b, opt->weight_decay);
        cb_f32(&b, opt->beta1);
        cb_f32(&b, opt->beta2);
        cb_f32(&b, opt->eps);
        cb_u64(&b, opt->t);
        net__buf_put(&b, n->m, n->n_params * sizeof(float));
        net__buf_put(&b, n->v, n->n_params * sizeof(float));
        cb_end(&b, at);
    }
    for (size_t i = 0; i < n_blobs; i++) {
        at = cb_begin(&b, blobs[i].tag);
        net__buf_put(&b, blobs[i].data, blobs[i].len);
        cb_end(&b, at);
    }
    if (b.oom) {
        free(b.p);
        snprintf(err, errlen, "%s: out of memory building the checkpoint", path);
        return -ENOMEM;
    }
    cb_u32(&b, b.oom ? 0 : net__crc32(b.p, b.len));
    int rc = b.oom ? -ENOMEM : net__write_atomic(path, b.p, b.len, err, errlen);
    free(b.p);
    return rc;
}

// ---- load -----------------------------------------------------------------------------

void net__rd_get(struct net__rd *r, void *dst, size_t n)
{
    if (r->bad || r->len - r->pos < n) {
        r->bad = 1;
        memset(dst, 0, n);
        return;
    }
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
}

uint32_t net__rd_u32(struct net__rd *r)
{
    uint32_t v;
    net__rd_get(r, &v, 4);
    return v;
}

uint64_t net__rd_u64(struct net__rd *r)
{
    uint64_t v;
    net__rd_get(r, &v, 8);
    return v;
}

float net__rd_f32(struct net__rd *r)
{
    float v;
    net__rd_get(r, &v, 4);
    return v;
}

void ckpt_blobs_free(struct ckpt_blob *b, size_t n)
{
    if (!b) return;
    for (size_t i = 0; i < n; i++) free(b[i].data);
    free(b);
}

const struct ckpt_blob *ckpt_blob_find(const struct ckpt_blob *b, size_t n, const char *tag)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(b[i].tag, tag, 4) == 0) return &b[i];
    return NULL;
}

int net__read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return -EINVAL;
    }
    size_t n = (size_t)st.st_size;
    unsigned char *p = malloc(n + 1);
    if (!p) {
        fclose(f);
        snprintf(err, errlen, "%s: out of memory reading %zu bytes", path, n);
        return -ENOMEM;
    }
    if (fread(p, 1, n, f) != n) {
        snprintf(err, errlen, "%s: read failed", path);
        free(p);
        fclose(f);
        return -EIO;
    }
    fclose(f);
    *out = p;
    *len = n;
    return 0;
}

int ckpt_load(const char *path, struct net **out, struct net_optim *opt, int *has_opt,
              struct ckpt_blob **blobs, size_t *n_blobs, char *err, size_t errlen)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    struct net *n = NULL;
    struct net_layer_spec *specs = NULL;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    struct net_optim o = {0};
    int got_opt = 0, got_parm = 0, got_stat = 0;
    int rc = net__read_file(path, &buf, &len, err, errlen);
    if (rc < 0) return rc;
    rc = -EINVAL;
    if (len < 16 + 4) {
        snprintf(err, errlen, "%s: truncated (%zu bytes, not a checkpoint)", path, len);
        goto fail;
    }
    if (memcmp(buf, "EVOW", 4) != 0) {
        snprintf(err, errlen, "%s: bad magic (not an evowidth model or checkpoint)", path);
        goto fail;
    }
    struct net__rd r = {buf, len - 4, 4, 0};
    uint32_t ver = net__rd_u32(&r), fsz = net__rd_u32(&r), probe = net__rd_u32(&r);
    if (ver != CKPT_VERSION) {
        snprintf(err, errlen, "%s: unsupported format version %u (this build reads %u)", path,
                 ver, CKPT_VERSION);
        goto fail;
    }
    if (fsz != sizeof(float) || probe != CKPT_PROBE) {
        snprintf(err, errlen, "%s: written on a machine with another float size or byte order",
                 path);
        goto fail;
    }
    uint32_t want, crc = net__crc32(buf, len - 4);
    memcpy(&want, buf + len - 4, 4);
    if (crc != want) {
        snprintf(err, errlen, "%s: CRC mismatch (file is corrupt or truncated)", path);
        goto fail;
    }

    // ARCH must come first: it sizes everything else.
    char tag[5] = {0};
    net__rd_get(&r, tag, 4);
    uint64_t clen = net__rd_u64(&r);
    if (r.bad || strcmp(tag, "ARCH") != 0 || clen > r.len - r.pos) {
        snprintf(err, errlen, "%s: missing or truncated ARCH chunk", path);
        goto fail;
    }
    const size_t arch_end = r.pos + clen;
    struct net_shape in = {0};
    in.c = net__rd_u64(&r);
    in.h = net__rd_u64(&r);
    in.w = net__rd_u64(&r);
    in.spatial = 1;
    size_t classes = net__rd_u64(&r);
    float mean[4], sd[4];
    for (int c = 0; c < 4; c++) mean[c] = net__rd_f32(&r);
    for (int c = 0; c < 4; c++) sd[c] = net__rd_f32(&r);
    size_t nl = net__rd_u64(&r);
    if (r.bad || nl == 0 || nl > CKPT_MAX_LAYERS) {
        snprintf(err, errlen, "%s: ARCH chunk has an invalid layer count", path);
        goto fail;
    }
    specs = calloc(nl, sizeof(*specs));
    if (!specs) {
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < nl; i++) {
        specs[i].kind = (enum net_kind)net__rd_u32(&r);
        net__rd_get(&r, specs[i].name, NET_NAME_MAX);
        specs[i].name[NET_NAME_MAX - 1] = 0;
        specs[i].out = net__rd_u64(&r);
        specs[i].width = net__rd_u64(&r);
        specs[i].rank = net__rd_u64(&r);
        specs[i].k = net__rd_u64(&r);
        specs[i].stride = net__rd_u64(&r);
        specs[i].pad = net__rd_u64(&r);
        specs[i].bias = (int)net__rd_u32(&r);
        specs[i].bn = (int)net__rd_u32(&r);
        // Sizes beyond this would overflow arena arithmetic; no real layer is near.
        if (specs[i].out > (1u << 20) || specs[i].width > (1u << 20) ||
            specs[i].rank > (1u << 20) || specs[i].k > 64 || specs[i].pad > 64) {
            snprintf(err, errlen, "%s: layer %zu has implausible sizes", path, i);
            goto fail;
        }
    }
    size_t np = net__rd_u64(&r), ns = net__rd_u64(&r);
    if (r.bad || r.pos != arch_end || in.c > 4 || in.h > 4096 || in.w > 4096 || classes > 65536) {
        snprintf(err, errlen, "%s: ARCH chunk is malformed", path);
        goto fail;
    }
    char why[256];
    if ((rc = net_create(&n, &in, classes, specs, nl, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        goto fail;
    }
    rc = -EINVAL;
    if (np != n->n_params || ns != n->n_state) {
        snprintf(err, errlen, "%s: arena sizes (%zu, %zu) do not match the architecture (%zu, %zu)",
                 path, np, ns, n->n_params, n->n_state);
        goto fail;
    }
    memcpy(n->norm_mean, mean, sizeof(mean));
    memcpy(n->norm_std, sd, sizeof(sd));

    while (r.pos < r.len) {
        net__rd_get(&r, tag, 4);
        clen = net__rd_u64(&r);
        if (r.bad || clen > r.len - r.pos) {
            snprintf(err, errlen, "%s: truncated chunk \"%.4s\"", path, tag);
            goto fail;
        }
        size_t end = r.pos + clen;
        if (strcmp(tag, "PARM") == 0) {
            if (clen != np * sizeof(float)) goto badsize;
            net__rd_get(&r, n->params, clen);
            got_parm = 1;
        } else if (strcmp(tag, "STAT") == 0) {
            if (clen != ns * sizeof(float)) goto badsize;
            net__rd_get(&r, n->state, clen);
            got_stat = 1;
        } else if (strcmp(tag, "OPTM") == 0) {
            if (clen != 36 + 2 * np * sizeof(float)) goto badsize; // 7 x 4-byte fields + u64 t
            o.kind = (enum net_opt_kind)net__rd_u32(&r);
            o.momentum = net__rd_f32(&r);
            o.nesterov = (int)net__rd_u32(&r);
            o.weight_decay = net__rd_f32(&r);
            o.beta1 = net__rd_f32(&r);
            o.beta2 = net__rd_f32(&r);
            o.eps = net__rd_f32(&r);
            o.t = net__rd_u64(&r);
            net__rd_get(&r, n->m, np * sizeof(float));
            net__rd_get(&r, n->v, np * sizeof(float));
            if (o.kind != NET_SGD && o.kind != NET_ADAMW) {
                snprintf(err, errlen, "%s: unknown optimizer kind %d", path, (int)o.kind);
                goto fail;
            }
            got_opt = 1;
        } else {
            struct ckpt_blob *q = realloc(bl, (nbl + 1) * sizeof(*bl));
            if (!q) {
                rc = -ENOMEM;
                goto fail;
            }
            bl = q;
            memcpy(bl[nbl].tag, tag, 5);
            bl[nbl].len = clen;
            bl[nbl].data = malloc(clen + 1);
            if (!bl[nbl].data) {
                rc = -ENOMEM;
                goto fail;
            }
            net__rd_get(&r, bl[nbl].data, clen);
            ((char *)bl[nbl].data)[clen] = 0; // text blobs read as strings
            nbl++;
        }
        if (r.pos != end) goto badsize;
    }
    if (!got_parm || !got_stat) {
        snprintf(err, errlen, "%s: missing %s chunk", path, got_parm ? "STAT" : "PARM");
        goto fail;
    }
    if (opt && got_opt) *opt = o;
    if (has_opt) *has_opt = got_opt;
    if (blobs) {
        *blobs = bl;
        *n_blobs = nbl;
    } else {
        ckpt_blobs_free(bl, nbl);
    }
    free(specs);
    free(buf);
    *out = n;
    return 0;
badsize:
    snprintf(err, errlen, "%s: chunk \"%.4s\" has the wrong size for this architecture", path, tag);
    rc = -EINVAL;
fail:
    ckpt_blobs_free(bl, nbl);
    net_destroy(n);
    free(specs);
    free(buf);
    return rc;
}
