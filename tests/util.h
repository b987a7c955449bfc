/* tests/util.h: what the test files share besides the harness (tests/test.h): layer spec
 * shorthands, temp directories and whole-file helpers. Header-only (static inline), as every
 * test file is its own binary. */
#ifndef EW_TEST_UTIL_H
#define EW_TEST_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "net/net.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

// ---- layer spec shorthands ---------------------------------------------------------------

#define S_CONV(o, k_, s, p, b)                                                                     \
    {                                                                                              \
        .kind = NET_CONV, .out = (o), .k = (k_), .stride = (s), .pad = (p), .bias = (b)            \
    }
#define S_CONVR(o, r, k_, s, p, b)                                                                 \
    {                                                                                              \
        .kind = NET_CONV, .out = (o), .rank = (r), .k = (k_), .stride = (s), .pad = (p),           \
        .bias = (b)                                                                                \
    }
#define S_DENSE(o, b)                                                                              \
    {                                                                                              \
        .kind = NET_DENSE, .out = (o), .bias = (b)                                                 \
    }
#define S_DENSER(o, r, b)                                                                          \
    {                                                                                              \
        .kind = NET_DENSE, .out = (o), .rank = (r), .bias = (b)                                    \
    }
#define S_BN()                                                                                     \
    {                                                                                              \
        .kind = NET_BN                                                                             \
    }
#define S_RELU()                                                                                   \
    {                                                                                              \
        .kind = NET_RELU                                                                           \
    }
#define S_POOL(k_, s)                                                                              \
    {                                                                                              \
        .kind = NET_MAXPOOL, .k = (k_), .stride = (s)                                              \
    }
#define S_GAP()                                                                                    \
    {                                                                                              \
        .kind = NET_GAP                                                                            \
    }
#define S_FLAT()                                                                                   \
    {                                                                                              \
        .kind = NET_FLATTEN                                                                        \
    }
#define S_RES(w, o, s, b)                                                                          \
    {                                                                                              \
        .kind = NET_RES, .width = (w), .out = (o), .stride = (s), .bn = (b)                        \
    }

// ---- temp directories ----------------------------------------------------------------------

#define TMP_PATH_MAX 256 // the size of a tmp_path buffer

struct tmpd {
    char dir[64];
};

/* A fresh /tmp/PREFIX_XXXXXX; 0 or -1. */
static inline int tmp_make(struct tmpd *t, const char *prefix)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/%s_XXXXXX", prefix);
    return mkdtemp(t->dir) ? 0 : -1;
}

static inline int tmp__rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

/* Removes the directory and everything below it. */
static inline void tmp_remove(struct tmpd *t)
{
    nftw(t->dir, tmp__rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* dir/name in buf (TMP_PATH_MAX bytes); returns buf. */
static inline const char *tmp_path(const struct tmpd *t, const char *name, char *buf)
{
    snprintf(buf, TMP_PATH_MAX, "%s/%s", t->dir, name);
    return buf;
}

// ---- files ---------------------------------------------------------------------------------

static inline int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* The whole file in a malloc'ed buffer (one spare byte); NULL on error. */
static inline unsigned char *read_all(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = b ? (size_t)n : 0;
    return b;
}

/* Writes len bytes (creating or truncating); 0 or -1. */
static inline int write_all(const char *p, const void *b, size_t len)
{
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    size_t w = len ? fwrite(b, 1, len, f) : 0;
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

#endif
