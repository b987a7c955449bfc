/* net/data.c: datasets on disk and in memory, and the mini-batch iterator.
 *
 * Loaders turn files into a `struct net_dataset`: floats (n, C, H, W) in [0, 1] and one
 * uint8 label per sample. IDX (MNIST / Fashion-MNIST) and CIFAR-10 binary files are read
 * through zlib's gz* interface, which inflates gzip input and passes plain files through
 * unchanged; zlib tells the two apart by the magic bytes 1f 8b, never by the file name.
 *
 * Invariants:
 *  - A header's sizes are never trusted for allocation. Byte buffers grow with what the
 *    file actually delivers, capped at what the header promised, so a lying header costs a
 *    "truncated" error instead of a huge malloc. All size arithmetic is overflow-checked.
 *  - Every function that can fail builds its result in locals and writes the caller's
 *    struct only on success: on failure outputs are untouched and everything acquired is
 *    released on the single `fail:` path.
 *  - No globals: randomness comes from caller-owned uint64_t states (net/rand.c). The
 *    batcher keeps all of its state (pos, epoch, perm, rng) in its struct, so a checkpoint
 *    that copies those fields resumes the exact same stream of batches.
 *  - No OpenMP here: loading is I/O bound, statistics run once, and a batch copy is a few
 *    hundred kilobytes. Serial code keeps every result independent of the thread count. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "net/net.h"
#include "net/net_internal.h"

#define IDX_MAGIC_IMAGES 0x00000803u // unsigned bytes, 3 dims (n, h, w)
#define IDX_MAGIC_LABELS 0x00000801u // unsigned bytes, 1 dim (n)
#define CIFAR_PIXELS 3072u           // 3 x 32 x 32, planes R, G, B
#define CIFAR_RECORD (1u + CIFAR_PIXELS)
#define BATCHER_MAX_PAD 65536u // keeps 2 * pad + 1 and the offsets far from overflow

// ---- small helpers ---------------------------------------------------------------------

__attribute__((format(printf, 3, 4))) static void data_err(char *err, size_t errlen,
                                                           const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* realloc(p, bytes); on failure NULL (p is kept) and err says "path: out of memory <what>",
 * what formatted from fmt. */
__attribute__((format(printf, 6, 7))) static void *data_grow(void *p, size_t bytes, char *err,
                                                             size_t errlen, const char *path,
                                                             const char *fmt, ...)
{
    void *q = realloc(p, bytes);
    if (q) return q;
    char what[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    data_err(err, errlen, "%s: out of memory %s", path, what);
    return NULL;
}

/* *r = a * b; returns 0 if that overflows size_t. */
static int mul_ok(size_t a, size_t b, size_t *r)
{
    if (b != 0 && a > SIZE_MAX / b) return 0;
    *r = a * b;
    return 1;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

// ---- reading through zlib --------------------------------------------------------------

/* Opens `path` for reading (plain or gzip). On success *out is the reader; the caller
 * gzclose()s it. open() is called directly so a failure reports the real errno. */
static int data_open(gzFile *out, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        data_err(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        data_err(err, errlen, "%s: cannot stat: %s", path, strerror(e));
        return -e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        data_err(err, errlen, "%s: is a directory, not a data file", path);
        return -EISDIR;
    }
    gzFile gz = gzdopen(fd, "rb"); // owns fd from here on
    if (!gz) {
        close(fd);
        data_err(err, errlen, "%s: cannot allocate a zlib reader", path);
        return -ENOMEM;
    }
    gzbuffer(gz, 128u * 1024u);
    *out = gz;
    return 0;
}

/* Reads up to len bytes into dst, stopping early only at end of input; *got says how many
 * arrived. A truncated gzip stream reads as an early end (zlib reports Z_BUF_ERROR, which
 * gzread does not turn into -1), so the caller's "truncated" check covers it. */
static int data_gzread(gzFile gz, const char *path, uint8_t *dst, size_t len, size_t *got,
                       char *err, size_t errlen)
{
    size_t done = 0;
    while (done < len) {
        size_t want = len - done;
        if (want > (1u << 30)) want = 1u << 30; // gzread takes an unsigned int
        int r = gzread(gz, dst + done, (unsigned)want);
        if (r < 0) {
            int e = errno, zerr = 0;
            const char *msg = gzerror(gz, &zerr);
            if (zerr == Z_ERRNO) {
                data_err(err, errlen, "%s: read error: %s", path, strerror(e));
                return e ? -e : -EIO;
            }
            data_err(err, errlen, "%s: corrupt gzip data: %s", path, msg ? msg : "?");
            return -EIO;
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

/* Reads up to `max` bytes into a new buffer that grows with the data actually delivered
 * (so a header that lies about its size cannot make us allocate more than the file holds).
 * On success *out (owned by the caller, may be NULL when nothing was read) and *got. */
static int data_read(gzFile gz, const char *path, size_t max, uint8_t **out, size_t *got, char *err,
                     size_t errlen)
{
    uint8_t *buf = NULL;
    size_t cap = 0, len = 0;
    int rc;
    while (len < max) {
        if (len == cap) {
            size_t ncap = cap == 0 ? (size_t)1 << 20 : (cap > SIZE_MAX / 2 ? max : cap * 2);
            if (ncap > max) ncap = max;
            uint8_t *nb = data_grow(buf, ncap, err, errlen, path, "reading %zu bytes", ncap);
            if (!nb) {
                rc = -ENOMEM;
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = 0;
        if ((rc = data_gzread(gz, path, buf + len, cap - len, &n, err, errlen)) < 0) goto fail;
        len += n;
        if (len < cap) break; // end of input
    }
    *out = buf;
    *got = len;
    return 0;
fail:
    free(buf);
    return rc;
}

/* Fails if the reader still has data: the file is longer than its header says. */
static int data_expect_eof(gzFile gz, const char *path, size_t expected, int is_gz, char *err,
                           size_t errlen)
{
    uint8_t extra;
    size_t got = 0;
    int rc = data_gzread(gz, path, &extra, 1, &got, err, errlen);
    if (rc < 0) return rc;
    if (got) {
        data_err(err, errlen, "%s: trailing data: longer than the %zu bytes its header implies%s",
                 path, expected, is_gz ? " (after gunzip)" : "");
        return -EINVAL;
    }
    return 0;
}

// ---- IDX -------------------------------------------------------------------------------

/* Reads an IDX header of 4 + 4 * n_dims bytes, checks its magic, returns the dims. */
static int idx_header(gzFile gz, const char *path, uint32_t want_magic, uint32_t *dims,
                      size_t n_dims, char *err, size_t errlen)
{
    uint8_t h[16];
    size_t hlen = 4 + 4 * n_dims, got = 0, more = 0;
    // The magic first, so a short file of the wrong kind is reported as the wrong kind.
    int rc = data_gzread(gz, path, h, 4, &got, err, errlen);
    if (rc < 0) return rc;
    if (got == 4 && be32(h) == want_magic) {
        if ((rc = data_gzread(gz, path, h + 4, hlen - 4, &more, err, errlen)) < 0) return rc;
        got += more;
    }
    uint32_t magic = got >= 4 ? be32(h) : 0;
    if (got < 4 || (magic == want_magic && got < hlen)) {
        data_err(err, errlen, "%s: truncated: expected a %zu-byte IDX header, got %zu bytes%s",
                 path, hlen, got, gzdirect(gz) ? "" : " (after gunzip)");
        return -EIO;
    }
    if (magic != want_magic) {
        const char *what = want_magic == IDX_MAGIC_IMAGES ? "unsigned-byte images, 3 dims"
                                                          : "unsigned-byte labels, 1 dim";
        const char *hint = "";
        if (want_magic == IDX_MAGIC_IMAGES && magic == IDX_MAGIC_LABELS)
            hint = "; this is a label file, are images and labels swapped?";
        else if (want_magic == IDX_MAGIC_LABELS && magic == IDX_MAGIC_IMAGES)
            hint = "; this is an image file, are images and labels swapped?";
        data_err(err, errlen, "%s: bad magic 0x%08x, expected 0x%08x (IDX %s)%s", path,
                 (unsigned)magic, (unsigned)want_magic, what, hint);
        return -EINVAL;
    }
    for (size_t i = 0; i < n_dims; i++) dims[i] = be32(h + 4 + 4 * i);
    return 0;
}

int net_data_load_idx(struct net_dataset *d, const char *images, const char *labels, char *err,
                      size_t errlen)
{
    gzFile gi = NULL, gl = NULL;
    uint8_t *pix = NULL, *lab = NULL; // raw bytes: (n, h, w) and (n)
    float *x = NULL;                  // (n, 1, h, w)
    uint32_t idim[3], ldim[1];
    size_t n, h, w, per, n_pix, got = 0;
    int rc;

    if (!d || !images) {
        data_err(err, errlen, "net_data_load_idx: NULL argument");
        return -EINVAL;
    }
    if ((rc = data_open(&gi, images, err, errlen)) < 0) goto fail;
    if ((rc = idx_header(gi, images, IDX_MAGIC_IMAGES, idim, 3, err, errlen)) < 0) goto fail;
    n = idim[0];
    h = idim[1];
    w = idim[2];
    if (n == 0 || h == 0 || w == 0) {
        data_err(err, errlen, "%s: zero dimension in header (%zu images of %zu x %zu)", images, n,
                 h, w);
        rc = -EINVAL;
        goto fail;
    }
    // Pixel count, its float size and the full file size must all fit in size_t.
    if (!mul_ok(h, w, &per) || !mul_ok(per, n, &n_pix) || n_pix > SIZE_MAX / sizeof(float) ||
        n_pix > SIZE_MAX - 16) {
        data_err(err, errlen, "%s: image size overflows (%zu images of %zu x %zu)", images, n, h,
                 w);
        rc = -EOVERFLOW;
        goto fail;
    }
    if (labels && (rc = data_open(&gl, labels, err, errlen)) < 0) goto fail;
    if (labels && (rc = idx_header(gl, labels, IDX_MAGIC_LABELS, ldim, 1, err, errlen)) < 0)
        goto fail;
    if (labels && ldim[0] != n) {
        data_err(err, errlen, "image/label count mismatch: %s has %zu images, %s has %zu labels",
                 images, n, labels, (size_t)ldim[0]);
        rc = -EINVAL;
        goto fail;
    }

    // Payloads, each checked for truncation and for trailing bytes.
    if ((rc = data_read(gi, images, n_pix, &pix, &got, err, errlen)) < 0) goto fail;
    if (got < n_pix) {
        data_err(err, errlen, "%s: truncated: expected %zu bytes, got %zu%s", images, 16 + n_pix,
                 16 + got, gzdirect(gi) ? "" : " (after gunzip)");
        rc = -EIO;
        goto fail;
    }
    if ((rc = data_expect_eof(gi, images, 16 + n_pix, !gzdirect(gi), err, errlen)) < 0) goto fail;
    if (!labels) {
        // Images alone (evowidth predict): labels all 0, n_classes 0 (unknown).
        if (!(lab = calloc(n, 1))) {
            data_err(err, errlen, "%s: out of memory for %zu labels", images, n);
            rc = -ENOMEM;
            goto fail;
        }
    } else if ((rc = data_read(gl, labels, n, &lab, &got, err, errlen)) < 0) {
        goto fail;
    } else if (got < n) {
        data_err(err, errlen, "%s: truncated: expected %zu bytes, got %zu%s", labels, 8 + n,
                 8 + got, gzdirect(gl) ? "" : " (after gunzip)");
        rc = -EIO;
        goto fail;
    }
    if (labels && (rc = data_expect_eof(gl, labels, 8 + n, !gzdirect(gl), err, errlen)) < 0)
        goto fail;

    x = net__alloc_big(n_pix * sizeof *x);
    if (!x) {
        data_err(err, errlen, "%s: out of memory for %zu pixels", images, n_pix);
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < n_pix; i++) x[i] = (float)pix[i] / 255.0f;
    // Labels are bytes, so at most 256 classes; sets whose labels fit in 0..9 count as 10.
    uint8_t max_label = 0;
    for (size_t i = 0; i < n; i++)
        if (lab[i] > max_label) max_label = lab[i];

    *d = (struct net_dataset){
        .n = n,
        .n_classes = !labels          ? 0
                     : max_label < 10 ? 10
                                      : (size_t)max_label + 1,
        .shape = {.c = 1, .h = h, .w = w, .spatial = 1},
        .x = x,
        .y = lab,
    };
    free(pix);
    gzclose(gl);
    gzclose(gi);
    return 0;
fail:
    free(x);
    free(lab);
    free(pix);
    if (gl) gzclose(gl);
    if (gi) gzclose(gi);
    return rc;
}

// ---- CIFAR-10 --------------------------------------------------------------------------

int net_data_load_cifar(struct net_dataset *d, const char *const *files, size_t n_files, char *err,
                        size_t errlen)
{
    gzFile gz = NULL;
    uint8_t *buf = NULL; // one file's records
    float *x = NULL;     // (n, 3, 32, 32)
    uint8_t *y = NULL;   // (n)
    size_t n = 0;
    int rc;

    if (!d || !files || n_files == 0) {
        data_err(err, errlen, "net_data_load_cifar: no files given");
        return -EINVAL;
    }
    for (size_t f = 0; f < n_files; f++) {
        const char *path = files[f];
        size_t len = 0;
        if (!path) {
            data_err(err, errlen, "net_data_load_cifar: file %zu is NULL", f);
            rc = -EINVAL;
            goto fail;
        }
        if ((rc = data_open(&gz, path, err, errlen)) < 0) goto fail;
        if ((rc = data_read(gz, path, SIZE_MAX / 8, &buf, &len, err, errlen)) < 0) goto fail;
        gzclose(gz);
        gz = NULL;
        if (len == 0 || len % CIFAR_RECORD != 0) {
            data_err(err, errlen,
                     "%s: size %zu bytes is not a non-zero multiple of %u (a CIFAR-10 record is "
                     "1 label byte + %u pixel bytes); truncated or not CIFAR-10?",
                     path, len, CIFAR_RECORD, CIFAR_PIXELS);
            rc = -EINVAL;
            goto fail;
        }
        size_t m = len / CIFAR_RECORD, total, n_pix;
        for (size_t r = 0; r < m; r++) {
            if (buf[r * CIFAR_RECORD] >= 10) {
                data_err(err, errlen, "%s: record %zu has label %u; CIFAR-10 labels are 0..9", path,
                         r, (unsigned)buf[r * CIFAR_RECORD]);
                rc = -EINVAL;
                goto fail;
            }
        }
        total = n + m;
        if (total < n || !mul_ok(total, CIFAR_PIXELS, &n_pix) || n_pix > SIZE_MAX / sizeof(float)) {
            data_err(err, errlen, "%s: total sample count overflows", path);
            rc = -EOVERFLOW;
            goto fail;
        }
        float *nx = data_grow(x, n_pix * sizeof *x, err, errlen, path, "for %zu samples", total);
        if (nx) x = nx;
        uint8_t *ny = nx ? data_grow(y, total, err, errlen, path, "for %zu labels", total) : NULL;
        if (!ny) {
            rc = -ENOMEM;
            goto fail;
        }
        y = ny;
        // A record's pixel bytes are already in (C, H, W) order: R plane, G plane, B plane.
        for (size_t r = 0; r < m; r++) {
            const uint8_t *rec = buf + r * CIFAR_RECORD;
            float *dst = x + (n + r) * CIFAR_PIXELS;
            y[n + r] = rec[0];
            for (size_t k = 0; k < CIFAR_PIXELS; k++) dst[k] = (float)rec[1 + k] / 255.0f;
        }
        n = total;
        free(buf);
        buf = NULL;
    }
    *d = (struct net_dataset){
        .n = n,
        .n_classes = 10,
        .shape = {.c = 3, .h = 32, .w = 32, .spatial = 1},
        .x = x,
        .y = y,
    };
    return 0;
fail:
    if (gz) gzclose(gz);
    free(buf);
    free(y);
    free(x);
    return rc;
}

// ---- synthetic -------------------------------------------------------------------------

/* One class template channel (h, w): a coarse grid of at most 4 x 4 uniform values in
 * [0, 1), bilinearly upsampled. Smooth blobs give conv nets local structure to find while a
 * dense net separates classes just as well; convex combinations stay inside [0, 1]. */
static void synth_template(float *t, size_t h, size_t w, uint64_t *rng)
{
    float g[4][4];
    size_t gh = h < 4 ? h : 4, gw = w < 4 ? w : 4;
    for (size_t i = 0; i < gh; i++)
        for (size_t j = 0; j < gw; j++) g[i][j] = net_rand_uniform(rng);
    for (size_t i = 0; i < h; i++) {
        float py = h > 1 ? (float)i * (float)(gh - 1) / (float)(h - 1) : 0.0f;
        size_t i0 = (size_t)py, i1 = i0 + 1 < gh ? i0 + 1 : i0;
        float ty = py - (float)i0;
        for (size_t j = 0; j < w; j++) {
            float px = w > 1 ? (float)j * (float)(gw - 1) / (float)(w - 1) : 0.0f;
            size_t j0 = (size_t)px, j1 = j0 + 1 < gw ? j0 + 1 : j0;
            float tx = px - (float)j0;
            float top = g[i0][j0] + tx * (g[i0][j1] - g[i0][j0]);
            float bot = g[i1][j0] + tx * (g[i1][j1] - g[i1][j0]);
            t[i * w + j] = top + ty * (bot - top);
        }
    }
}

int net_data_synthetic(struct net_dataset *d, size_t n, const struct net_shape *shape,
                       size_t n_classes, float noise, uint64_t seed)
{
    float *tmpl = NULL; // (n_classes, C, H, W)
    float *x = NULL;    // (n, C, H, W)
    uint8_t *y = NULL;  // (n)
    size_t hw, per, n_tmpl, n_pix;
    uint64_t rng = seed;
    int rc;

    if (!d || !shape || n == 0 || n_classes == 0 || n_classes > 256 || shape->c == 0 ||
        shape->h == 0 || shape->w == 0 || !(noise >= 0.0f) || !isfinite(noise))
        return -EINVAL;
    if (!mul_ok(shape->h, shape->w, &hw) || !mul_ok(hw, shape->c, &per) ||
        !mul_ok(per, n_classes, &n_tmpl) || n_tmpl > SIZE_MAX / sizeof(float) ||
        !mul_ok(per, n, &n_pix) || n_pix > SIZE_MAX / sizeof(float))
        return -EOVERFLOW;

    tmpl = malloc(n_tmpl * sizeof *tmpl);
    x = net__alloc_big(n_pix * sizeof *x);
    y = malloc(n);
    if (!tmpl || !x || !y) {
        rc = -ENOMEM;
        goto fail;
    }
    // Templates first, then samples, all from one stream: the set depends only on the seed.
    for (size_t k = 0; k < n_classes; k++)
        for (size_t c = 0; c < shape->c; c++)
            synth_template(tmpl + k * per + c * hw, shape->h, shape->w, &rng);
    // Labels cycle 0, 1, ..., n_classes-1, so every prefix is balanced to within one.
    for (size_t i = 0; i < n; i++) {
        size_t k = i % n_classes;
        const float *t = tmpl + k * per;
        float *xi = x + i * per;
        y[i] = (uint8_t)k;
        for (size_t j = 0; j < per; j++) {
            float v = t[j];
            if (noise > 0.0f) v += noise * net_rand_normal(&rng);
            xi[j] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        }
    }
    free(tmpl);
    *d = (struct net_dataset){.n = n, .n_classes = n_classes, .shape = *shape, .x = x, .y = y};
    return 0;
fail:
    free(y);
    free(x);
    free(tmpl);
    return rc;
}

// ---- split, statistics -----------------------------------------------------------------

int net_data_split(struct net_dataset *all, struct net_dataset *train, struct net_dataset *val,
                   size_t n_val, uint64_t *rng)
{
    size_t *order = NULL; // (n) shuffled sample indices
    struct net_dataset t = {0}, v = {0};
    size_t hw, per, n_tr;
    uint64_t r;
    int rc;

    if (!all || !train || !val || train == val || !rng || !all->x || !all->y || n_val >= all->n)
        return -EINVAL;
    if (!mul_ok(all->shape.h, all->shape.w, &hw) || !mul_ok(hw, all->shape.c, &per))
        return -EOVERFLOW;
    n_tr = all->n - n_val;
    t = (struct net_dataset){.n = n_tr, .n_classes = all->n_classes, .shape = all->shape};
    v = (struct net_dataset){.n = n_val, .n_classes = all->n_classes, .shape = all->shape};

    order = malloc(all->n * sizeof *order);
    t.x = net__alloc_big(n_tr * per * sizeof *t.x);
    t.y = malloc(n_tr);
    if (!order || !t.x || !t.y) {
        rc = -ENOMEM;
        goto fail;
    }
    if (n_val > 0) { // an empty validation set has NULL buffers
        v.x = net__alloc_big(n_val * per * sizeof *v.x);
        v.y = malloc(n_val);
        if (!v.x || !v.y) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    // Fisher-Yates on a copy of the stream, committed only on success.
    r = *rng;
    for (size_t i = 0; i < all->n; i++) order[i] = i;
    for (size_t i = all->n; i > 1; i--) {
        size_t j = net_rand_below(&r, i), tmp = order[i - 1];
        order[i - 1] = order[j];
        order[j] = tmp;
    }
    for (size_t i = 0; i < all->n; i++) {
        struct net_dataset *dst = i < n_tr ? &t : &v;
        size_t k = i < n_tr ? i : i - n_tr, s = order[i];
        memcpy(dst->x + k * per, all->x + s * per, per * sizeof *all->x);
        dst->y[k] = all->y[s];
    }
    free(order);
    *rng = r;
    net_data_free(all); // before the stores: `all` may be the same struct as train or val
    *train = t;
    *val = v;
    return 0;
fail:
    free(v.y);
    free(v.x);
    free(t.y);
    free(t.x);
    free(order);
    return rc;
}

/* Two passes in double (mean, then squared deviations) so 10^8 values stay accurate. Only
 * the first min(C, 4) entries of mean and std are written; channels past 4 are ignored
 * here and by net_data_normalize (struct net stores 4). */
void net_data_stats(const struct net_dataset *d, float *mean, float *std)
{
    size_t C = d->shape.c, hw = d->shape.h * d->shape.w, nc = C < 4 ? C : 4;
    for (size_t c = 0; c < nc; c++) {
        double s = 0.0, ss = 0.0, m, cnt = (double)d->n * (double)hw;
        if (d->n == 0 || hw == 0 || !d->x) {
            mean[c] = 0.0f;
            std[c] = 1.0f;
            continue;
        }
        for (size_t i = 0; i < d->n; i++) {
            const float *p = d->x + (i * C + c) * hw;
            for (size_t k = 0; k < hw; k++) s += p[k];
        }
        m = s / cnt;
        for (size_t i = 0; i < d->n; i++) {
            const float *p = d->x + (i * C + c) * hw;
            for (size_t k = 0; k < hw; k++) ss += ((double)p[k] - m) * ((double)p[k] - m);
        }
        double sd = sqrt(ss / cnt);
        mean[c] = (float)m;
        std[c] = sd < 1e-6 ? 1e-6f : (float)sd;
    }
}

/* x = (x - mean[c]) / std[c] for channels c < min(C, 4). A std that is not positive (not
 * from net_data_stats, which floors it) is treated as 1 rather than dividing by it. */
void net_data_normalize(struct net_dataset *d, const float *mean, const float *std)
{
    size_t C = d->shape.c, hw = d->shape.h * d->shape.w, nc = C < 4 ? C : 4;
    if (!d->x) return;
    for (size_t i = 0; i < d->n; i++)
        for (size_t c = 0; c < nc; c++) {
            float *p = d->x + (i * C + c) * hw, m = mean[c], s = std[c] > 0.0f ? std[c] : 1.0f;
            for (size_t k = 0; k < hw; k++) p[k] = (p[k] - m) / s;
        }
}

void net_data_free(struct net_dataset *d)
{
    if (!d) return;
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}

// ---- batcher ---------------------------------------------------------------------------

static void batcher_shuffle(uint32_t *perm, size_t n, uint64_t *rng)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = net_rand_below(rng, i);
        uint32_t tmp = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = tmp;
    }
}

int net_batcher_init(struct net_batcher *b, size_t n, uint64_t seed, size_t crop_pad, int flip)
{
    if (!b || n == 0 || n > UINT32_MAX || crop_pad > BATCHER_MAX_PAD) return -EINVAL;
    uint32_t *perm = malloc(n * sizeof *perm);
    if (!perm) return -ENOMEM;
    uint64_t rng = seed;
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    batcher_shuffle(perm, n, &rng);
    *b = (struct net_batcher){
        .n = n, .perm = perm, .rng = rng, .crop_pad = crop_pad, .flip = flip != 0};
    return 0;
}

void net_batcher_free(struct net_batcher *b)
{
    if (!b) return;
    free(b->perm);
    memset(b, 0, sizeof *b);
}

/* out (C, H, W) = src (C, H, W) shifted by (dy, dx) with zeros outside, then mirrored:
 *   out[c][i][j] = src[c][i + dy][j' + dx],  j' = flip ? W-1-j : j.
 * A crop window at offset (oy, ox) in [0, 2 pad] of the zero-padded image is dy = oy - pad. */
static void augment_copy(float *out, const float *src, size_t C, size_t H, size_t W, ptrdiff_t dy,
                         ptrdiff_t dx, int flip)
{
    if (dy == 0 && dx == 0 && !flip) {
        memcpy(out, src, C * H * W * sizeof *out);
        return;
    }
    for (size_t c = 0; c < C; c++)
        for (size_t i = 0; i < H; i++) {
            float *o = out + (c * H + i) * W;
            ptrdiff_t si = (ptrdiff_t)i + dy;
            if (si < 0 || si >= (ptrdiff_t)H) {
                memset(o, 0, W * sizeof *o);
                continue;
            }
            const float *row = src + (c * H + (size_t)si) * W;
            for (size_t j = 0; j < W; j++) {
                ptrdiff_t sj = (ptrdiff_t)(flip ? W - 1 - j : j) + dx;
                o[j] = sj >= 0 && sj < (ptrdiff_t)W ? row[sj] : 0.0f;
            }
        }
}

/* Per sample, in this order: take perm[pos]; advance pos, and at the end of the permutation
 * count the epoch and reshuffle; then draw the crop offsets (y, x) and the flip bit from
 * b->rng. Everything is sequential, so the stream depends only on the struct's state.
 * Returns 0 without touching anything if the batcher does not fit the dataset. */
size_t net_batcher_next(struct net_batcher *b, const struct net_dataset *d, size_t B, float *x,
                        uint8_t *y)
{
    if (!b || !b->perm || !d || !d->x || !d->y || !x || !y || b->n > d->n ||
        b->crop_pad > BATCHER_MAX_PAD)
        return 0;
    size_t C = d->shape.c, H = d->shape.h, W = d->shape.w, per = C * H * W;
    ptrdiff_t pad = (ptrdiff_t)b->crop_pad;
    for (size_t s = 0; s < B; s++) {
        size_t i = b->perm[b->pos];
        if (++b->pos == b->n) {
            b->epoch++;
            b->pos = 0;
            batcher_shuffle(b->perm, b->n, &b->rng);
        }
        ptrdiff_t dy = 0, dx = 0;
        int flip = 0;
        if (pad > 0) {
            dy = (ptrdiff_t)net_rand_below(&b->rng, 2 * b->crop_pad + 1) - pad;
            dx = (ptrdiff_t)net_rand_below(&b->rng, 2 * b->crop_pad + 1) - pad;
        }
        if (b->flip) flip = (int)(net_rand_u64(&b->rng) >> 63);
        y[s] = d->y[i];
        augment_copy(x + s * per, d->x + i * per, C, H, W, dy, dx, flip);
    }
    return B;
}
