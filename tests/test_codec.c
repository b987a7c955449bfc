/* tests/test_codec.c: the binary codec (net/codec.h).
 *
 * Known answers for the writer's bytes (field order, little-endian, chunk lengths patched),
 * the reader's bounds (every read past the end is refused, yields zeros and sticks; counts
 * whose byte size would wrap are refused), strings, chunk iteration, and the svd state's
 * two versions (the old raw array is still read; anything malformed leaves the state as it
 * was); net_write_atomic goes through the write layer (net_set_io). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/codec.h"
#include "svd_adapt/svd_adapt.h"
#include "tests/test.h"
#include "tests/util.h"

TEST(writer_known_bytes)
{
    struct net_wr w = {0};
    size_t at = net_wr_begin(&w, "ABCD");
    net_wr_u8(&w, 0x7f);
    net_wr_u32(&w, 0x01020304u);
    net_wr_u64(&w, 0x1122334455667788ull);
    net_wr_f32(&w, 1.0f);
    net_wr_str(&w, "hi");
    net_wr_end(&w, at);
    ASSERT(!w.oom);
    static const unsigned char want[] = {
        'A',  'B', 'C',  'D',  27, 0,    0,    0,    0,    0,    0,    0, // tag, u64 length 27
        0x7f, 4,   3,    2,    1,  0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // u8, u32, u64
        0,    0,   0x80, 0x3f,                                                     // 1.0f
        2,    0,   0,    0,    0,  0,    0,    0,    'h',  'i'};                   // string
    ASSERT_EQ(w.len, sizeof want);
    ASSERT_EQ(memcmp(w.p, want, sizeof want), 0);
    // Read back through the chunk iterator.
    struct net_rd r = net_rd_make(w.p, w.len), c;
    char tag[5];
    ASSERT_EQ(net_rd_chunk(&r, tag, &c), 1);
    ASSERT_STR_EQ(tag, "ABCD");
    ASSERT_EQ(net_rd_u8(&c), 0x7f);
    ASSERT_EQ(net_rd_u32(&c), 0x01020304u);
    ASSERT(net_rd_u64(&c) == 0x1122334455667788ull);
    ASSERT_FLT_OP(net_rd_f32(&c), ==, 1.0f);
    char *s = net_rd_str(&c, 16, NULL);
    ASSERT(s);
    ASSERT_STR_EQ(s, "hi");
    free(s);
    ASSERT(net_rd_done(&c));
    ASSERT_EQ(net_rd_chunk(&r, tag, &c), 0);
    net_wr_free(&w);
}

TEST(reader_refuses_reads_past_the_end)
{
    const unsigned char b[6] = {1, 2, 3, 4, 5, 6};
    struct net_rd r = net_rd_make(b, sizeof b);
    ASSERT_EQ(net_rd_u32(&r), 0x04030201u);
    ASSERT_EQ(net_rd_u32(&r), 0); // two bytes left: refused, zero
    ASSERT(r.bad);
    ASSERT_EQ(net_rd_u8(&r), 0); // sticky
    ASSERT_EQ(net_rd_left(&r), 0);
    ASSERT(!net_rd_done(&r));
    ASSERT(net_rd_view(&r, 0) == NULL);
    // A count whose byte size wraps size_t, and one larger than the bytes left.
    unsigned char c[16] = {0};
    uint64_t huge = (1ull << 62) + 1;
    memcpy(c, &huge, 8);
    r = net_rd_make(c, sizeof c);
    ASSERT_EQ(net_rd_count(&r, UINT64_MAX, 4), 0);
    ASSERT(r.bad);
    uint64_t three = 3;
    memcpy(c, &three, 8);
    r = net_rd_make(c, sizeof c);
    ASSERT_EQ(net_rd_count(&r, UINT64_MAX, 4), 0); // 12 bytes needed, 8 left
    ASSERT(r.bad);
    r = net_rd_make(c, sizeof c);
    ASSERT_EQ(net_rd_count(&r, 2, 1), 0); // over max
    ASSERT(r.bad);
    r = net_rd_make(c, sizeof c);
    ASSERT_EQ(net_rd_count(&r, 3, 2), 3);
    ASSERT(!r.bad);
    // Floats: all or nothing.
    float f[4] = {9, 9, 9, 9};
    r = net_rd_make(c, 12);
    net_rd_f32s(&r, f, 4);
    ASSERT(r.bad);
    ASSERT_FLT_OP(f[0], ==, 0.0f);
    // A string longer than its buffer, and one over the caller's limit.
    memcpy(c, &three, 8);
    r = net_rd_make(c, 10);
    ASSERT(net_rd_str(&r, 100, NULL) == NULL);
    r = net_rd_make(c, 16);
    ASSERT(net_rd_str(&r, 2, NULL) == NULL);
    // A chunk whose length runs past the buffer.
    unsigned char k[14] = {'T', 'A', 'G', 'X', 3, 0, 0, 0, 0, 0, 0, 0, 1, 2};
    struct net_rd body;
    char tag[5];
    r = net_rd_make(k, sizeof k);
    ASSERT_EQ(net_rd_chunk(&r, tag, &body), -1);
    ASSERT(r.bad);
    r = net_rd_make(k, 7); // not even the framing
    ASSERT_EQ(net_rd_chunk(&r, tag, &body), -1);
}

TEST(crc_known_answer)
{
    // CRC-32 of "123456789" is 0xCBF43926.
    ASSERT_EQ(net_crc32("123456789", 9), 0xCBF43926u);
    unsigned char b[13];
    memcpy(b, "123456789", 9);
    uint32_t c = 0xCBF43926u;
    memcpy(b + 9, &c, 4);
    ASSERT(net_crc_ok(b, 13));
    b[0] ^= 1;
    ASSERT(!net_crc_ok(b, 13));
    ASSERT(!net_crc_ok(b, 3));
}

/* Version 1 of the svd state: u64 count | per group char name[40] | u64 | u64. */
static size_t svd_v1(unsigned char *p, const char *const *names, const uint64_t *pat,
                     const uint64_t *cool, size_t n)
{
    uint64_t cnt = n;
    memcpy(p, &cnt, 8);
    for (size_t i = 0; i < n; i++) {
        unsigned char *g = p + 8 + 56 * i;
        memset(g, 0, 40);
        memcpy(g, names[i], strlen(names[i]));
        memcpy(g + 40, &pat[i], 8);
        memcpy(g + 48, &cool[i], 8);
    }
    return 8 + 56 * n;
}

/* 1 when s saves to exactly the len bytes at p. */
static int saves_as(const struct svd_state *s, const void *p, size_t len)
{
    void *q = NULL;
    size_t lq = 0;
    int same = svd_state_save(s, &q, &lq) == 0 && lq == len && memcmp(q, p, len) == 0;
    free(q);
    return same;
}

TEST(svd_state_reads_both_versions)
{
    static const char *const names[3] = {"conv1", "res1.inner", "dense1"};
    const uint64_t pat[3] = {1, 0, 2}, cool[3] = {0, 250, 9};
    unsigned char v1[8 + 3 * 56];
    size_t l1 = svd_v1(v1, names, pat, cool, 3);
    struct svd_state *a = svd_state_create(), *b = svd_state_create();
    ASSERT(a && b);
    ASSERT_EQ(svd_state_load(a, v1, l1), 0);
    void *p = NULL;
    size_t len = 0;
    ASSERT_EQ(svd_state_save(a, &p, &len), 0);
    // Version 7: "SVST", version, count, then name / patience / cooldown / backoff /
    // protect_until / grown / grown_from / no_gain / shrunk / wish per group.
    struct net_rd r = net_rd_make(p, len);
    char magic[5] = {0};
    net_rd_bytes(&r, magic, 4);
    ASSERT_STR_EQ(magic, "SVST");
    ASSERT_EQ(net_rd_u32(&r), 7);
    ASSERT_EQ(net_rd_u64(&r), 3);
    for (size_t i = 0; i < 3; i++) {
        char *s = net_rd_str(&r, 64, NULL);
        ASSERT(s);
        int same = strcmp(s, names[i]) == 0;
        free(s);
        ASSERT(same);
        ASSERT_EQ(net_rd_u64(&r), pat[i]);
        ASSERT_EQ(net_rd_u64(&r), cool[i]);
        ASSERT_EQ(net_rd_u64(&r), 0); // no backoff in a version 1 state
        ASSERT_EQ(net_rd_u64(&r), 0); // nor a protection
        ASSERT_EQ(net_rd_u64(&r), 0); // nor a growth
        ASSERT_EQ(net_rd_u64(&r), 0); // nor one to judge
        ASSERT_EQ(net_rd_u64(&r), 0); // nor one judged
        ASSERT_EQ(net_rd_u64(&r), 0); // nor a cut by the rank rule
        ASSERT_EQ(net_rd_u64(&r), 0); // nor one waiting
    }
    ASSERT(net_rd_done(&r));
    for (uint32_t ver = 2; ver <= 6; ver++) {
        // Versions 2 (no backoff), 3 (no protect_until), 4 (no grown), 5 (no grown_from,
        // no_gain, shrunk) and 6 (no wish) still read, and save again as version 7.
        struct net_wr w = {0};
        net_wr_bytes(&w, "SVST", 4);
        net_wr_u32(&w, ver);
        net_wr_u64(&w, 3);
        for (size_t i = 0; i < 3; i++) {
            net_wr_str(&w, names[i]);
            net_wr_u64(&w, pat[i]);
            net_wr_u64(&w, cool[i]);
            if (ver >= 3) net_wr_u64(&w, 0);
            if (ver >= 4) net_wr_u64(&w, 0);
            if (ver >= 5) net_wr_u64(&w, 0);
            if (ver >= 6) net_wr_u64(&w, 0), net_wr_u64(&w, 0), net_wr_u64(&w, 0);
        }
        ASSERT(!w.oom);
        struct svd_state *c2 = svd_state_create();
        ASSERT_EQ(svd_state_load(c2, w.p, w.len), 0);
        ASSERT(saves_as(c2, p, len));
        net_wr_free(&w);
        svd_state_destroy(c2);
    }
    ASSERT_EQ(svd_state_load(b, p, len), 0);
    ASSERT(saves_as(b, p, len));
    // Malformed inputs are refused and leave b as it was.
    unsigned char *m = malloc(len + 8);
    int bad = 0;
    for (size_t cut = 0; cut < len; cut++) bad += svd_state_load(b, p, cut) != -EINVAL;
    memcpy(m, p, len);
    m[4] = 8; // version 8: unknown
    bad += svd_state_load(b, m, len) != -EINVAL;
    memcpy(m, p, len);
    m[len - 16] = 2; // shrunk is a flag
    bad += svd_state_load(b, m, len) != -EINVAL;
    memcpy(m, p, len);
    m[len - 24] = 2; // so is no_gain
    bad += svd_state_load(b, m, len) != -EINVAL;
    memcpy(m, p, len);
    m[len - 40] = 2; // and grown
    bad += svd_state_load(b, m, len) != -EINVAL;
    memcpy(m, p, len);
    uint64_t big = 129;
    memcpy(m + 8, &big, 8); // over the group limit
    bad += svd_state_load(b, m, len) != -EINVAL;
    memcpy(m, p, len);
    memset(m + len, 0, 8); // trailing bytes
    bad += svd_state_load(b, m, len + 8) != -EINVAL;
    unsigned char d1[8 + 2 * 56];
    static const char *const dup[2] = {"conv1", "conv1"};
    bad += svd_state_load(b, d1, svd_v1(d1, dup, pat, cool, 2)) != -EINVAL; // duplicate
    memset(v1 + 8, 'x', 40); // version 1 name without its terminator
    bad += svd_state_load(b, v1, l1) != -EINVAL;
    ASSERT_EQ(bad, 0);
    ASSERT(saves_as(b, p, len));
    free(m);
    free(p);
    svd_state_destroy(a);
    svd_state_destroy(b);
}

// ---- the write layer under net_write_atomic -------------------------------------------------

static struct {
    int writes, fsyncs, renames, fail_write; // calls seen; fail_write: ENOSPC from then on
} W;

static long w_write(int fd, const void *p, size_t n)
{
    W.writes++;
    if (W.fail_write) {
        errno = ENOSPC;
        return -1;
    }
    return (long)write(fd, p, n);
}

static int w_fsync(int fd)
{
    W.fsyncs++;
    return fsync(fd);
}

static int w_rename(const char *a, const char *b)
{
    W.renames++;
    return rename(a, b);
}

/* Every durable write of every format goes through net_io(): a layer that counts the calls
 * sees the file's write, its fsync, the rename and the directory's fsync; one that fails
 * writes (a full disk) fails the write with the errno, and leaves the old file whole and no
 * .tmp behind. NULL restores the system calls. */
TEST(write_atomic_goes_through_the_write_layer)
{
    struct tmpd d;
    ASSERT_EQ(tmp_make(&d, "ew_wio"), 0);
    char p[TMP_PATH_MAX], tmp[TMP_PATH_MAX + 8], err[512];
    tmp_path(&d, "f.bin", p);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    const struct net_io L = {.write = w_write, .fsync = w_fsync, .rename = w_rename};
    memset(&W, 0, sizeof W);
    net_set_io(&L);
    ASSERT(net_io()->open != NULL && net_io()->unlink != NULL); // NULL members: the system's
    ASSERT_EQ(net_write_atomic(p, "first", 5, err, sizeof err), 0);
    ASSERT_GE(W.writes, 1);
    ASSERT_EQ(W.fsyncs, 2); // the file, then its directory
    ASSERT_EQ(W.renames, 1);
    W.fail_write = 1;
    ASSERT_EQ(net_write_atomic(p, "second!", 7, err, sizeof err), -ENOSPC);
    ASSERT_CONTAINS(err, "f.bin.tmp");
    ASSERT_EQ(file_exists(tmp), 0);
    size_t n = 0;
    unsigned char *b = read_all(p, &n);
    ASSERT(b != NULL);
    ASSERT_EQ(n, 5);
    ASSERT_EQ(memcmp(b, "first", 5), 0);
    free(b);
    net_set_io(NULL);
    memset(&W, 0, sizeof W);
    ASSERT_EQ(net_write_atomic(p, "third", 5, err, sizeof err), 0);
    ASSERT_EQ(W.writes + W.fsyncs + W.renames, 0); // the system calls again
    tmp_remove(&d);
}

TEST_MAIN()
