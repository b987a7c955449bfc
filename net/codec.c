/* net/codec.c: the binary codec every evowidth file is built from (see net/codec.h), and
 * the two pieces of it only net/ uses: the ARCH section and the caller-blob list.
 *
 * The writer grows its buffer by doubling; after the first failed allocation every put is
 * a no-op and `oom` stays set. The reader never reads outside [p, p + len): every get checks
 * the bytes left first, in a form that cannot overflow (n > len - pos). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "net/codec.h"
#include "net/net_internal.h"

// ---- writer ---------------------------------------------------------------------------

void net_wr_bytes(struct net_wr *w, const void *src, size_t n)
{
    if (w->oom || n == 0) return;
    if (n > SIZE_MAX / 2 - w->len) {
        w->oom = 1;
        return;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n) cap *= 2;
        unsigned char *q = realloc(w->p, cap);
        if (!q) {
            w->oom = 1;
            return;
        }
        w->p = q;
        w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

void net_wr_u8(struct net_wr *w, unsigned v)
{
    unsigned char c = (unsigned char)v;
    net_wr_bytes(w, &c, 1);
}

void net_wr_u32(struct net_wr *w, uint32_t v)
{
    net_wr_bytes(w, &v, 4);
}

void net_wr_u64(struct net_wr *w, uint64_t v)
{
    net_wr_bytes(w, &v, 8);
}

void net_wr_f32(struct net_wr *w, float v)
{
    net_wr_bytes(w, &v, 4);
}

void net_wr_f64(struct net_wr *w, double v)
{
    net_wr_bytes(w, &v, 8);
}

void net_wr_f32s(struct net_wr *w, const float *v, size_t n)
{
    if (n > SIZE_MAX / sizeof(float)) {
        w->oom = 1;
        return;
    }
    net_wr_bytes(w, v, n * sizeof(float));
}

void net_wr_str(struct net_wr *w, const char *s)
{
    size_t n = strlen(s);
    net_wr_u64(w, n);
    net_wr_bytes(w, s, n);
}

size_t net_wr_begin(struct net_wr *w, const char *tag)
{
    net_wr_bytes(w, tag, 4);
    size_t at = w->len;
    net_wr_u64(w, 0);
    return at;
}

void net_wr_end(struct net_wr *w, size_t at)
{
    if (w->oom) return;
    uint64_t len = w->len - at - 8;
    memcpy(w->p + at, &len, 8);
}

void net_wr_free(struct net_wr *w)
{
    if (!w) return;
    free(w->p);
    memset(w, 0, sizeof(*w));
}

// ---- reader ---------------------------------------------------------------------------

struct net_rd net_rd_make(const void *p, size_t len)
{
    struct net_rd r = {p, len, 0, 0};
    return r;
}

size_t net_rd_left(const struct net_rd *r)
{
    return r->bad ? 0 : r->len - r->pos;
}

int net_rd_done(const struct net_rd *r)
{
    return !r->bad && r->pos == r->len;
}

void net_rd_bytes(struct net_rd *r, void *dst, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        if (n) memset(dst, 0, n);
        return;
    }
    if (n) memcpy(dst, r->p + r->pos, n);
    r->pos += n;
}

const void *net_rd_view(struct net_rd *r, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    const void *v = r->p + r->pos;
    r->pos += n;
    return v;
}

unsigned net_rd_u8(struct net_rd *r)
{
    unsigned char c;
    net_rd_bytes(r, &c, 1);
    return c;
}

// The fixed-size readers: the bytes as the writers store them (native little-endian, codec.h).
#define NET__RD_SCALAR(name, type)                                                                 \
    type name(struct net_rd *r)                                                                    \
    {                                                                                              \
        type v;                                                                                    \
        net_rd_bytes(r, &v, sizeof v);                                                             \
        return v;                                                                                  \
    }
NET__RD_SCALAR(net_rd_u32, uint32_t)
NET__RD_SCALAR(net_rd_u64, uint64_t)
NET__RD_SCALAR(net_rd_f32, float)
NET__RD_SCALAR(net_rd_f64, double)
#undef NET__RD_SCALAR

void net_rd_f32s(struct net_rd *r, float *dst, size_t n)
{
    if (n > (r->len - r->pos) / sizeof(float)) {
        r->bad = 1;
        memset(dst, 0, n * sizeof(float));
        return;
    }
    net_rd_bytes(r, dst, n * sizeof(float));
}

uint64_t net_rd_count(struct net_rd *r, uint64_t max, size_t elem_bytes)
{
    uint64_t n = net_rd_u64(r);
    if (r->bad || n > max || (elem_bytes && n > net_rd_left(r) / elem_bytes)) {
        r->bad = 1;
        return 0;
    }
    return n;
}

char *net_rd_str(struct net_rd *r, size_t max, int *oom)
{
    uint64_t n = net_rd_count(r, max, 1);
    if (r->bad) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) {
        if (oom) *oom = 1;
        return NULL;
    }
    net_rd_bytes(r, s, (size_t)n);
    s[n] = 0;
    return s;
}

int net_rd_chunk(struct net_rd *r, char tag[5], struct net_rd *body)
{
    if (!r->bad && r->pos == r->len) return 0;
    memset(tag, 0, 5);
    net_rd_bytes(r, tag, 4);
    uint64_t n = net_rd_u64(r);
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return -1;
    }
    *body = net_rd_make(r->p + r->pos, (size_t)n);
    r->pos += (size_t)n;
    return 1;
}

// ---- whole files ----------------------------------------------------------------------

uint32_t net_crc32(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint32_t crc = (uint32_t)crc32(0L, NULL, 0);
    for (size_t off = 0; off < len; off += 1u << 30) { // zlib's crc32 takes uInt lengths
        size_t k = len - off < (1u << 30) ? len - off : (1u << 30);
        crc = (uint32_t)crc32(crc, b + off, (uInt)k);
    }
    return crc;
}

int net_crc_ok(const unsigned char *buf, size_t len)
{
    if (len < 4) return 0;
    uint32_t want;
    memcpy(&want, buf + len - 4, 4);
    return net_crc32(buf, len - 4) == want;
}

// ---- the write layer ----------------------------------------------------------------

static int sys_open(const char *p, int fl, unsigned m)
{
    return open(p, fl, (mode_t)m);
}
static long sys_write(int fd, const void *p, size_t n)
{
    return (long)write(fd, p, n);
}
static int sys_ftruncate(int fd, long long n)
{
    return ftruncate(fd, (off_t)n);
}
static const struct net_io NET_SYS_IO = {sys_open, sys_write, fsync, close,
                                         rename,   unlink,    link,  sys_ftruncate};
static struct net_io net__io_now = {sys_open, sys_write, fsync, close,
                                    rename,   unlink,    link,  sys_ftruncate};

void net_set_io(const struct net_io *io)
{
    net__io_now = NET_SYS_IO;
    if (!io) return;
    if (io->open) net__io_now.open = io->open;
    if (io->write) net__io_now.write = io->write;
    if (io->fsync) net__io_now.fsync = io->fsync;
    if (io->close) net__io_now.close = io->close;
    if (io->rename) net__io_now.rename = io->rename;
    if (io->unlink) net__io_now.unlink = io->unlink;
    if (io->link) net__io_now.link = io->link;
    if (io->ftruncate) net__io_now.ftruncate = io->ftruncate;
}

const struct net_io *net_io(void)
{
    return &net__io_now;
}

int net_write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
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
        snprintf(err, errlen, "%s: fsync failed: %s", tmp, strerror(sync_errno));
        io->unlink(tmp);
        return -sync_errno;
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

int net_read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen)
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

// ---- the ARCH section (checkpoints and exports) ----------------------------------------

void net__arch_write(struct net_wr *w, const struct net *n)
{
    size_t at = net_wr_begin(w, "ARCH");
    net_wr_u64(w, n->in_shape.c);
    net_wr_u64(w, n->in_shape.h);
    net_wr_u64(w, n->in_shape.w);
    net_wr_u64(w, n->n_classes);
    for (int c = 0; c < 4; c++) net_wr_f32(w, n->norm_mean[c]);
    for (int c = 0; c < 4; c++) net_wr_f32(w, n->norm_std[c]);
    net_wr_u64(w, n->n_layers);
    for (size_t i = 0; i < n->n_layers; i++) {
        const struct net_layer_spec *s = &n->layers[i].spec;
        char name[NET_NAME_MAX] = {0}; // fixed width, zero padded (no stack bytes in files)
        snprintf(name, sizeof(name), "%s", s->name);
        net_wr_u32(w, (uint32_t)s->kind);
        net_wr_bytes(w, name, NET_NAME_MAX);
        net_wr_u64(w, s->out);
        net_wr_u64(w, s->width);
        net_wr_u64(w, s->rank);
        net_wr_u64(w, s->k);
        net_wr_u64(w, s->stride);
        net_wr_u64(w, s->pad);
        net_wr_u32(w, (uint32_t)s->bias);
        net_wr_u32(w, (uint32_t)s->bn);
    }
    net_wr_u64(w, n->n_params);
    net_wr_u64(w, n->n_state);
    net_wr_end(w, at);
}

/* Bytes of one layer row in ARCH: kind, name, six u64 sizes, bias, bn. */
#define ARCH_ROW (4 + NET_NAME_MAX + 6 * 8 + 4 + 4)

int net__arch_read(struct net_rd *r, const char *path, size_t max_params, size_t max_state,
                   struct net **out, char *err, size_t errlen)
{
    char tag[5];
    struct net_rd a;
    if (net_rd_chunk(r, tag, &a) != 1 || strcmp(tag, "ARCH") != 0) {
        snprintf(err, errlen, "%s: missing or truncated ARCH chunk", path);
        return -EINVAL;
    }
    struct net_shape in = {0, 0, 0, 1};
    in.c = (size_t)net_rd_u64(&a);
    in.h = (size_t)net_rd_u64(&a);
    in.w = (size_t)net_rd_u64(&a);
    const uint64_t classes = net_rd_u64(&a);
    float mean[4], sd[4];
    for (int c = 0; c < 4; c++) mean[c] = net_rd_f32(&a);
    for (int c = 0; c < 4; c++) sd[c] = net_rd_f32(&a);
    const uint64_t nl = net_rd_count(&a, NET__ARCH_MAX_LAYERS, ARCH_ROW);
    if (a.bad || nl == 0) {
        snprintf(err, errlen, "%s: ARCH chunk has an invalid layer count", path);
        return -EINVAL;
    }
    struct net_layer_spec *specs = calloc((size_t)nl, sizeof(*specs));
    if (!specs) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    int rc = -EINVAL;
    for (size_t i = 0; i < nl; i++) {
        struct net_layer_spec *s = &specs[i];
        const uint32_t kind = net_rd_u32(&a);
        net_rd_bytes(&a, s->name, NET_NAME_MAX);
        const uint64_t v[6] = {net_rd_u64(&a), net_rd_u64(&a), net_rd_u64(&a),
                               net_rd_u64(&a), net_rd_u64(&a), net_rd_u64(&a)};
        const uint32_t bias = net_rd_u32(&a), bn = net_rd_u32(&a);
        // Sizes beyond these would overflow arena arithmetic; no real layer is near.
        if (kind >= NET_KIND_COUNT || v[0] > (1u << 20) || v[1] > (1u << 20) || v[2] > (1u << 20) ||
            v[3] > 64 || v[4] > 64 || v[5] > 64 || bias > 1 || bn > 1 ||
            memchr(s->name, 0, NET_NAME_MAX) == NULL) {
            snprintf(err, errlen, "%s: ARCH layer %zu has an unknown kind or implausible sizes",
                     path, i);
            goto out;
        }
        s->kind = (enum net_kind)kind;
        s->out = (size_t)v[0];
        s->width = (size_t)v[1];
        s->rank = (size_t)v[2];
        s->k = (size_t)v[3];
        s->stride = (size_t)v[4];
        s->pad = (size_t)v[5];
        s->bias = (int)bias;
        s->bn = (int)bn;
    }
    const uint64_t np = net_rd_u64(&a), ns = net_rd_u64(&a);
    if (!net_rd_done(&a) || in.c == 0 || in.c > 4 || in.h == 0 || in.h > 4096 || in.w == 0 ||
        in.w > 4096 || classes < 2 || classes > 65536) {
        snprintf(err, errlen, "%s: ARCH chunk is malformed", path);
        goto out;
    }
    // The arenas the file claims must fit in what it holds: checked before anything is
    // allocated, and again against the layers (net__create_bounded) before their arenas are.
    if (np > max_params || ns > max_state) {
        snprintf(err, errlen,
                 "%s: ARCH claims %llu parameters and %llu statistics, more than "
                 "the file holds",
                 path, (unsigned long long)np, (unsigned long long)ns);
        goto out;
    }
    char why[256];
    struct net *n = NULL;
    if ((rc = net__create_bounded(&n, &in, (size_t)classes, specs, (size_t)nl, (size_t)np,
                                  (size_t)ns, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        goto out;
    }
    if (np != n->n_params || ns != n->n_state) {
        snprintf(err, errlen, "%s: arena sizes (%zu, %zu) do not match the architecture (%zu, %zu)",
                 path, (size_t)np, (size_t)ns, n->n_params, n->n_state);
        net_destroy(n);
        rc = -EINVAL;
        goto out;
    }
    memcpy(n->norm_mean, mean, sizeof(mean));
    memcpy(n->norm_std, sd, sizeof(sd));
    *out = n;
    rc = 0;
out:
    free(specs);
    return rc;
}

// ---- caller blobs ---------------------------------------------------------------------

int net__blobs_check(const struct ckpt_blob *blobs, size_t n_blobs, const char *const *reserved,
                     size_t n_reserved, const char *path, char *err, size_t errlen)
{
    for (size_t i = 0; i < n_blobs; i++) {
        if (strnlen(blobs[i].tag, sizeof(blobs[i].tag)) != 4) {
            snprintf(err, errlen, "%s: blob tags are four characters, got \"%.4s\"", path,
                     blobs[i].tag);
            return -EINVAL;
        }
        for (size_t k = 0; k < n_reserved; k++) {
            if (strncmp(blobs[i].tag, reserved[k], 4) == 0) {
                snprintf(err, errlen, "%s: blob tag \"%.4s\" is reserved for the model itself",
                         path, blobs[i].tag);
                return -EINVAL;
            }
        }
        for (size_t j = 0; j < i; j++) {
            if (strncmp(blobs[i].tag, blobs[j].tag, 4) == 0) {
                snprintf(err, errlen, "%s: two blobs tagged \"%.4s\"", path, blobs[i].tag);
                return -EINVAL;
            }
        }
    }
    return 0;
}

void net__blobs_write(struct net_wr *w, const struct ckpt_blob *blobs, size_t n_blobs)
{
    for (size_t i = 0; i < n_blobs; i++) {
        size_t at = net_wr_begin(w, blobs[i].tag);
        net_wr_bytes(w, blobs[i].data, blobs[i].len);
        net_wr_end(w, at);
    }
}

int net__blobs_add(struct ckpt_blob **bl, size_t *nbl, const char *tag, struct net_rd *body)
{
    if (ckpt_blob_find(*bl, *nbl, tag)) return -EEXIST;
    struct ckpt_blob *q = realloc(*bl, (*nbl + 1) * sizeof(*q));
    if (!q) return -ENOMEM;
    *bl = q;
    const size_t n = net_rd_left(body);
    struct ckpt_blob *b = &q[*nbl];
    if (!(b->data = malloc(n + 1))) return -ENOMEM;
    memcpy(b->tag, tag, 5);
    b->len = n;
    net_rd_bytes(body, b->data, n);
    ((char *)b->data)[n] = 0; // text blobs read as strings
    (*nbl)++;
    return 0;
}

int net__blobs_take(struct ckpt_blob **bl, size_t *nbl, const char *tag, struct net_rd *body,
                    const char *path, char *err, size_t errlen)
{
    int rc = net__blobs_add(bl, nbl, tag, body);
    if (rc == -EEXIST) {
        snprintf(err, errlen, "%s: duplicate chunk \"%.4s\"", path, tag);
        return -EINVAL;
    }
    if (rc < 0) snprintf(err, errlen, "%s: out of memory for chunk \"%.4s\"", path, tag);
    return rc;
}

int net__chunks_end(int more, const char *tag, const char *first, int got_first, const char *second,
                    int got_second, const char *path, char *err, size_t errlen)
{
    if (more < 0) {
        snprintf(err, errlen, "%s: truncated chunk \"%.4s\"", path, tag);
        return -EINVAL;
    }
    if (!got_first || !got_second) {
        snprintf(err, errlen, "%s: missing %s chunk", path, got_first ? second : first);
        return -EINVAL;
    }
    return 0;
}

void net__blobs_hand(struct ckpt_blob *bl, size_t nbl, struct ckpt_blob **out, size_t *n_out)
{
    if (out) {
        *out = bl;
        *n_out = nbl;
    } else {
        ckpt_blobs_free(bl, nbl);
    }
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
