/* tests/test_state.c: run checkpoints as hostile input (daemon/state.c, issue 15 D4-D6).
 *
 * - tests/fixtures/trnr_v1.evow is a run checkpoint written by the code before the binary
 *   codec (TRNR version 1, the raw struct image; svd state version 1, the raw group array):
 *   the tiny config checkpointed at step 19, after two adaptations. It must still load, with
 *   every value in place, and a version-3 save of it must load to the same trainer; a
 *   version-2 image (made from a version-3 one) must load too.
 * - Crafted checkpoints with a valid CRC (built from the fixture, so in the layout the old
 *   reader accepted, and from a fresh version-3 save) are refused with a reason naming the
 *   field, the out-parameter keeps its sentinel, the file on disk and a running trainer
 *   stay as they were: a batcher position past the data set (D4), a TRNR whose length
 *   arithmetic wraps (D5), a stored config whose input shape disagrees with the model (D6),
 *   and every other field checked against the others. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE // mkdtemp
#endif
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "daemon/daemon.h"
#include "daemon/daemon_internal.h"
#include "net/codec.h"
#include "tests/test.h"
#include "tests/util.h"

#define FIXTURE EW_SOURCE_DIR "/tests/fixtures/trnr_v1.evow"

// ---- files -----------------------------------------------------------------------------

/* A checkpoint split into its chunks (header 16 bytes, CRC 4). */
struct ck {
    unsigned char *b;
    size_t len;
};

/* Offset of chunk tag's payload and its length; 0 when absent. */
static size_t ck_find(const struct ck *c, const char *tag, size_t *plen)
{
    size_t pos = 16;
    while (pos + 12 <= c->len - 4) {
        uint64_t l;
        memcpy(&l, c->b + pos + 4, 8);
        if (memcmp(c->b + pos, tag, 4) == 0) {
            *plen = (size_t)l;
            return pos + 12;
        }
        pos += 12 + (size_t)l;
    }
    return 0;
}

/* A copy of c with chunk tag's payload replaced by p (n bytes) and the CRC recomputed. */
static struct ck ck_replace(const struct ck *c, const char *tag, const void *p, size_t n)
{
    struct ck o = {NULL, 0};
    size_t old = 0, at = ck_find(c, tag, &old);
    if (!at) return o;
    o.len = c->len - old + n;
    o.b = malloc(o.len);
    memcpy(o.b, c->b, at);
    uint64_t l = n;
    memcpy(o.b + at - 8, &l, 8);
    memcpy(o.b + at, p, n);
    memcpy(o.b + at + n, c->b + at + old, c->len - at - old);
    uint32_t crc = (uint32_t)crc32(0L, o.b, (uInt)(o.len - 4));
    memcpy(o.b + o.len - 4, &crc, 4);
    return o;
}

/* A copy of chunk tag's payload (malloc'ed, one spare byte). */
static unsigned char *ck_payload(const struct ck *c, const char *tag, size_t *n)
{
    size_t at = ck_find(c, tag, n);
    if (!at) return NULL;
    unsigned char *p = malloc(*n + 1);
    memcpy(p, c->b + at, *n);
    p[*n] = 0;
    return p;
}

static void put_u64(unsigned char *p, size_t off, uint64_t v)
{
    memcpy(p + off, &v, 8);
}

static void put_f64(unsigned char *p, size_t off, double v)
{
    memcpy(p + off, &v, 8);
}

/* A scratch directory and a running trainer that must never be touched by a failed load. */
struct env {
    char dir[64];
    struct dmn_trainer *run;
    float *params; // copy of run's params
    size_t step;
};

static int env_open(struct env *e)
{
    snprintf(e->dir, sizeof e->dir, "/tmp/ew_test_state_XXXXXX");
    if (!mkdtemp(e->dir)) return -1;
    struct dmn_config c;
    char err[512];
    if (load_tiny(&c) < 0 || dmn_trainer_create(&e->run, &c, err, sizeof err) < 0) return -1;
    for (int i = 0; i < 3; i++)
        if (dmn_trainer_step(e->run) < 0) return -1;
    e->step = e->run->step;
    e->params = malloc(e->run->net->n_params * sizeof(float));
    memcpy(e->params, e->run->net->params, e->run->net->n_params * sizeof(float));
    return 0;
}

static int env_untouched(const struct env *e)
{
    return e->run->step == e->step &&
           memcmp(e->params, e->run->net->params, e->run->net->n_params * sizeof(float)) == 0;
}

static void env_close(struct env *e)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", e->dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", e->dir);
    dmn_trainer_destroy(e->run);
    free(e->params);
}

/* Writes c as dir/name and expects dmn_trainer_load to refuse it with -EINVAL and a reason
 * containing why (and the path), leaving the out-parameter, the file and the running
 * trainer as they were. Returns 0 when all of that holds. */
static int expect_refused(const struct env *e, const char *name, const struct ck *c,
                          const char *why)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", e->dir, name);
    if (!c->b || write_all(path, c->b, c->len) < 0) {
        printf("    %s: cannot craft\n", name);
        return 1;
    }
    static struct dmn_trainer sentinel;
    struct dmn_trainer *t = &sentinel;
    char err[1024] = "";
    int rc = dmn_trainer_load(&t, path, err, sizeof err);
    size_t l2 = 0;
    unsigned char *after = read_all(path, &l2);
    int same_file = after && l2 == c->len && memcmp(after, c->b, l2) == 0;
    free(after);
    int ok = rc == -EINVAL && t == &sentinel && strstr(err, path) && strstr(err, why) &&
             same_file && env_untouched(e);
    if (!ok)
        printf("    %s: rc %d, err \"%s\" (wanted \"%s\")%s%s\n", name, rc, err, why,
               t == &sentinel ? "" : ", out-parameter written", same_file ? "" : ", file changed");
    if (rc == 0 && t != &sentinel) dmn_trainer_destroy(t);
    return !ok;
}

/* expect_refused for a crafted checkpoint it then frees. */
static int refused(const struct env *e, const char *name, struct ck c, const char *why)
{
    int r = expect_refused(e, name, &c, why);
    free(c.b);
    return r;
}

/* A fresh checkpoint (TRNR version 3) of the tiny run at step 12 (one adaptation behind it),
 * as the daemon writes it: the event count, no event texts. */
static int save_v3(const struct env *e, struct ck *c)
{
    struct dmn_config cf;
    char err[512], path[128];
    struct dmn_trainer *t = NULL;
    if (load_tiny(&cf) < 0 || dmn_trainer_create(&t, &cf, err, sizeof err) < 0) return -1;
    while (t->step < 12)
        if (dmn_trainer_step(t) < 0) return -1;
    snprintf(path, sizeof path, "%s/v3.evow", e->dir);
    int rc = dmn_trainer_save(t, path, err, sizeof err);
    dmn_trainer_destroy(t);
    if (rc < 0) return printf("    save: %s\n", err), -1;
    c->b = read_all(path, &c->len);
    return c->b ? 0 : -1;
}

/* The two checkpoints the D4 / D5 tests edit, in the environment they are refused in: the
 * fixture (TRNR version 1) and a fresh version-2 save, each with a copy of its TRNR payload
 * (t1, n1 and t2, n2); bad counts the crafted files that were not refused. */
struct both {
    struct env e;
    struct ck f, v2;
    unsigned char *t1, *t2;
    size_t n1, n2;
    int bad;
};

static int both_open(struct both *p)
{
    *p = (struct both){0};
    if (env_open(&p->e) < 0) return -1;
    p->f.b = read_all(FIXTURE, &p->f.len);
    if (!p->f.b || save_v3(&p->e, &p->v2) < 0) return -1;
    p->t1 = ck_payload(&p->f, "TRNR", &p->n1);
    p->t2 = ck_payload(&p->v2, "TRNR", &p->n2);
    return p->t1 && p->t2 ? 0 : -1;
}

/* The checkpoint (version 1 or 2) with its TRNR replaced by the first len bytes of the
 * edited copy must be refused for why. */
static void both_try(struct both *p, int v2, size_t len, const char *name, const char *why)
{
    p->bad +=
        refused(&p->e, name, ck_replace(v2 ? &p->v2 : &p->f, "TRNR", v2 ? p->t2 : p->t1, len), why);
}

/* Frees everything; returns the count of crafted files that were not refused. */
static int both_close(struct both *p)
{
    free(p->t1);
    free(p->t2);
    free(p->f.b);
    free(p->v2.b);
    env_close(&p->e);
    return p->bad;
}

// Offsets in TRNR version 1 (struct image) and versions 2 and 3 (fields; the same up to
// change_seq, after which version 3 has the event seq, then the adaptation length).
#define V1_STEP 8
#define V1_POS 32
#define V1_EPOCH 40
#define V1_TRAIN_S 56
#define V1_EXTRA_LEN 112
#define V1_HEAD 128
#define V2_N 20
#define V2_POS 28
#define V2_EPOCH 36
#define V2_PERM 52

// ---- the old version still loads ---------------------------------------------------------

/* The group names of a trainer's svd state, from its policy-state bytes. */
static int svd_groups_of(struct dmn_trainer *t, char names[][48], size_t max, size_t *n)
{
    void *p = NULL;
    size_t len = 0;
    if (dmn__adapt_serialize(t, &p, &len) < 0) return -1;
    struct net_rd r = net_rd_make(p, len);
    uint64_t sl = net_rd_u64(&r);
    struct net_rd s = net_rd_make(net_rd_view(&r, (size_t)sl), (size_t)sl);
    char magic[4];
    net_rd_bytes(&s, magic, 4);
    uint32_t ver = net_rd_u32(&s);
    uint64_t cnt = net_rd_u64(&s);
    int rc = (!s.bad && memcmp(magic, "SVST", 4) == 0 && ver == 7 && cnt <= max) ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < cnt; i++) {
        char *nm = net_rd_str(&s, 47, NULL);
        if (!nm)
            rc = -1;
        else
            snprintf(names[i], 48, "%s", nm);
        free(nm);
        net_rd_u64(&s); // patience
        net_rd_u64(&s); // cooldown_until
        net_rd_u64(&s); // backoff
        net_rd_u64(&s); // protect_until
        net_rd_u64(&s); // grown
        net_rd_u64(&s); // grown_from
        net_rd_u64(&s); // no_gain
        net_rd_u64(&s); // shrunk
        net_rd_u64(&s); // wish
    }
    *n = (size_t)cnt;
    free(p);
    return rc == 0 && net_rd_done(&s) ? 0 : -1;
}

TEST(old_trnr_version_1_still_loads)
{
    struct env e;
    ASSERT_EQ(env_open(&e), 0);
    char err[1024] = "", p2[128];
    struct dmn_trainer *a = NULL, *b = NULL;
    int rc = dmn_trainer_load(&a, FIXTURE, err, sizeof err);
    if (rc) printf("    %s\n", err);
    ASSERT_EQ(rc, 0);
    // The values the fixture was written with (see its generator in tests/fixtures/README).
    ASSERT_EQ(a->step, 19);
    ASSERT_EQ(a->batcher.n, 448);
    ASSERT_EQ(a->batcher.pos, 160);
    ASSERT_EQ(a->batcher.epoch, 1);
    ASSERT_EQ(a->initial_params, 1156);
    ASSERT_EQ(a->net->n_params, 604);
    ASSERT_EQ(a->net->layers[5].spec.out, 8); // dense1 shrunk from 16
    ASSERT_EQ(dmn__adapt_n_events(a), 2);
    ASSERT(strstr(dmn__adapt_event(a, 0), "\"changes\""));
    char names[8][48];
    size_t ng = 0;
    ASSERT_EQ(svd_groups_of(a, names, 8, &ng), 0);
    ASSERT_EQ(ng, 2);
    ASSERT_STR_EQ(names[0], "conv1");
    ASSERT_STR_EQ(names[1], "dense1");
    // Saved again (version 3, with the texts, as evowidth train saves) it loads to the same
    // trainer, and both continue identically.
    a->events_in_checkpoint = 1;
    snprintf(p2, sizeof p2, "%s/again.evow", e.dir);
    ASSERT_EQ(dmn_trainer_save(a, p2, err, sizeof err), 0);
    ASSERT_EQ(dmn_trainer_load(&b, p2, err, sizeof err), 0);
    ASSERT_EQ(b->step, a->step);
    ASSERT_EQ(b->rng, a->rng);
    ASSERT_EQ(b->batcher.pos, a->batcher.pos);
    ASSERT_EQ(b->batcher.epoch, a->batcher.epoch);
    ASSERT_EQ(b->batcher.rng, a->batcher.rng);
    ASSERT_EQ(memcmp(b->batcher.perm, a->batcher.perm, a->batcher.n * 4), 0);
    ASSERT_EQ(b->change_seq, a->change_seq);
    ASSERT_EQ(dmn__adapt_n_events(b), 2);
    for (size_t i = 0; i < 2; i++) ASSERT_STR_EQ(dmn__adapt_event(a, i), dmn__adapt_event(b, i));
    for (int s = 0; s < 10; s++) {
        ASSERT_EQ(dmn_trainer_step(a), 0);
        ASSERT_EQ(dmn_trainer_step(b), 0);
    }
    ASSERT_EQ(a->net->n_params, b->net->n_params);
    ASSERT_EQ(memcmp(a->net->params, b->net->params, a->net->n_params * sizeof(float)), 0);
    dmn_trainer_destroy(a);
    dmn_trainer_destroy(b);
    env_close(&e);
}

/* TRNR version 2 (before the event seq): written here from a version 3 image by dropping
 * the field, as the code before it wrote it. The event count is then the number of texts
 * the adaptation state carries (evowidth train's MODEL files carry them). */
TEST(old_trnr_version_2_still_loads)
{
    struct env e;
    ASSERT_EQ(env_open(&e), 0);
    struct dmn_config cf;
    char err[512], p3[128], p2[128];
    struct dmn_trainer *a = NULL, *b = NULL;
    ASSERT_EQ(load_tiny(&cf), 0);
    ASSERT_EQ(dmn_trainer_create(&a, &cf, err, sizeof err), 0);
    while (a->step < 12) ASSERT_EQ(dmn_trainer_step(a), 0);
    const size_t ne = dmn__adapt_n_events(a);
    ASSERT_GT(ne, 0);
    a->events_in_checkpoint = 1;
    snprintf(p3, sizeof p3, "%s/three.evow", e.dir);
    ASSERT_EQ(dmn_trainer_save(a, p3, err, sizeof err), 0);
    struct ck v3 = {0};
    v3.b = read_all(p3, &v3.len);
    ASSERT(v3.b);
    size_t n3 = 0;
    unsigned char *t3 = ck_payload(&v3, "TRNR", &n3), *t2 = malloc(n3);
    ASSERT(t3 && t2);
    const size_t ev_at = V2_PERM + 448 * 4 + 64; // after the six f64, initial_params, change_seq
    uint64_t seq;
    memcpy(&seq, t3 + ev_at, 8);
    ASSERT_EQ(seq, ne); // version 3 stores the count
    memcpy(t2, t3, ev_at);
    memcpy(t2 + ev_at, t3 + ev_at + 8, n3 - ev_at - 8);
    t2[0] = 2;
    struct ck c2 = ck_replace(&v3, "TRNR", t2, n3 - 8);
    snprintf(p2, sizeof p2, "%s/two.evow", e.dir);
    ASSERT_EQ(write_all(p2, c2.b, c2.len), 0);
    int rc = dmn_trainer_load(&b, p2, err, sizeof err);
    if (rc) printf("    %s\n", err);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(b->step, a->step);
    ASSERT_EQ(b->change_seq, a->change_seq);
    ASSERT_EQ(dmn__adapt_n_events(b), ne);
    for (size_t i = 0; i < ne; i++) ASSERT_STR_EQ(dmn__adapt_event(b, i), dmn__adapt_event(a, i));
    for (int k = 0; k < 10; k++) {
        ASSERT_EQ(dmn_trainer_step(a), 0);
        ASSERT_EQ(dmn_trainer_step(b), 0);
    }
    ASSERT_EQ(a->net->n_params, b->net->n_params);
    ASSERT_EQ(memcmp(a->net->params, b->net->params, a->net->n_params * sizeof(float)), 0);
    // Version 3 from the daemon (no texts): the count survives without them.
    a->events_in_checkpoint = 0;
    dmn_trainer_destroy(b);
    b = NULL;
    ASSERT_EQ(dmn_trainer_save(a, p3, err, sizeof err), 0);
    ASSERT_EQ(dmn_trainer_load(&b, p3, err, sizeof err), 0);
    ASSERT_EQ(dmn__adapt_n_events(b), dmn__adapt_n_events(a));
    ASSERT(dmn__adapt_event(b, 0) == NULL);
    free(t3);
    free(t2);
    free(c2.b);
    free(v3.b);
    dmn_trainer_destroy(a);
    dmn_trainer_destroy(b);
    env_close(&e);
}

// ---- D4: batcher position ------------------------------------------------------------------

TEST(refuses_batcher_position_past_the_data)
{
    struct both p;
    ASSERT_EQ(both_open(&p), 0);
    const uint64_t pos[2] = {100000000, 448}; // the 1e8, and one past the last sample
    for (int i = 0; i < 2; i++) {
        put_u64(p.t1, V1_POS, pos[i]);
        both_try(&p, 0, p.n1, "pos_v1.evow", "batcher position");
        put_u64(p.t2, V2_POS, pos[i]);
        both_try(&p, 1, p.n2, "pos_v2.evow", "batcher position");
    }
    ASSERT_EQ(both_close(&p), 0);
}

// ---- D5: TRNR length arithmetic ------------------------------------------------------------

TEST(refuses_trnr_lengths_that_wrap)
{
    struct both p;
    ASSERT_EQ(both_open(&p), 0);
    // Version 1: the order cut to 100 bytes, the stated adaptation length wrapped so that
    // 128 + 4 * 448 + extra_len == 228 modulo 2^64 (the old check passed, perm was read
    // past the blob).
    put_u64(p.t1, V1_EXTRA_LEN, (uint64_t)100 - 4 * 448);
    both_try(&p, 0, V1_HEAD + 100, "wrap_v1.evow", "TRNR");
    // Version 2: a batcher size whose byte count wraps (2^62 + 448).
    put_u64(p.t2, V2_N, ((uint64_t)1 << 62) + 448);
    both_try(&p, 1, p.n2, "wrap_v2.evow", "TRNR");
    // Cut anywhere: always refused, never read past.
    for (size_t cut = 0; cut < p.n2; cut += p.n2 / 37 + 1) {
        memcpy(p.t2, p.v2.b + ck_find(&p.v2, "TRNR", &p.n2), p.n2);
        both_try(&p, 1, cut, "cut_v2.evow", "TRNR");
    }
    ASSERT_EQ(both_close(&p), 0);
}

// ---- D6: the stored config's input shape ---------------------------------------------------

/* CONF with from replaced by to. */
static struct ck with_conf(const struct ck *c, const char *from, const char *to)
{
    size_t n = 0;
    unsigned char *p = ck_payload(c, "CONF", &n);
    struct ck o = {NULL, 0};
    char *at = p ? strstr((char *)p, from) : NULL;
    if (!at) {
        free(p);
        return o;
    }
    size_t pre = (size_t)(at - (char *)p), fl = strlen(from), tl = strlen(to);
    unsigned char *q = malloc(n - fl + tl);
    memcpy(q, p, pre);
    memcpy(q + pre, to, tl);
    memcpy(q + pre + tl, p + pre + fl, n - pre - fl);
    o = ck_replace(c, "CONF", q, n - fl + tl);
    free(p);
    free(q);
    return o;
}

TEST(refuses_stored_config_with_another_input_shape)
{
    struct env e;
    ASSERT_EQ(env_open(&e), 0);
    struct ck f = {0}, v2 = {0};
    f.b = read_all(FIXTURE, &f.len);
    ASSERT(f.b);
    ASSERT_EQ(save_v3(&e, &v2), 0);
    int bad = 0;
    // 4x4 images: the stored 8x8 model would read 64 floats per sample of 16.
    bad += refused(&e, "shape_v1.evow",
                   with_conf(&f, "\"height\":8,\"width\":8", "\"height\":4,\"width\":4"),
                   "input 1x8x8");
    bad += refused(&e, "shape_v2.evow",
                   with_conf(&v2, "\"height\":8,\"width\":8", "\"height\":4,\"width\":4"),
                   "input 1x8x8");
    // 16x4: the same number of features after the pool, so the arenas would match too.
    bad += refused(&e, "shape16_v2.evow",
                   with_conf(&v2, "\"height\":8,\"width\":8", "\"height\":16,\"width\":4"),
                   "input 1x8x8");
    free(f.b);
    free(v2.b);
    ASSERT_EQ(bad, 0);
    env_close(&e);
}

// ---- every other field against the others --------------------------------------------------

TEST(refuses_inconsistent_trainer_fields)
{
    struct env e;
    ASSERT_EQ(env_open(&e), 0);
    struct ck v2 = {0};
    ASSERT_EQ(save_v3(&e, &v2), 0);
    size_t n2 = 0;
    unsigned char *orig = ck_payload(&v2, "TRNR", &n2), *t = malloc(n2 + 1);
    ASSERT(orig && t);
    const size_t after_perm = V2_PERM + 448 * 4; // f64 train_seconds ...
    ASSERT_EQ(orig[0], 3);
    ASSERT_GT(n2, after_perm + 96);
    int bad = 0;
#define CRAFT(name, edit, why)                                                                     \
    do {                                                                                           \
        memcpy(t, orig, n2);                                                                       \
        edit;                                                                                      \
        bad += refused(&e, name, ck_replace(&v2, "TRNR", t, n2), why);                             \
    } while (0)
    CRAFT("version.evow", t[0] = 4, "version 4");
    CRAFT("version0.evow", t[0] = 0, "version 0");
    CRAFT("n.evow", put_u64(t, V2_N, 447), "TRNR"); // a sample short: lengths disagree
    CRAFT("perm_dup.evow", memcpy(t + V2_PERM + 4, orig + V2_PERM, 4), "permutation");
    CRAFT("perm_range.evow", memset(t + V2_PERM, 0xff, 4), "permutation");
    CRAFT("step_ahead.evow", put_u64(t, 4, 13), "does not fit the batcher");
    CRAFT("epoch_wrap.evow", put_u64(t, V2_EPOCH, UINT64_MAX / 4), "does not fit the batcher");
    CRAFT("time_neg.evow", put_f64(t, after_perm, -1.0), "timings");
    CRAFT("time_inf.evow", put_f64(t, after_perm + 8, INFINITY), "timings");
    CRAFT("acc.evow", put_f64(t, after_perm + 40, 2.0), "metrics");
    CRAFT("params0.evow", put_u64(t, after_perm + 48, 0), "initial parameter");
    CRAFT("extra.evow", put_u64(t, after_perm + 72, 5), "length");
    // The adaptation state: its svd part's count, and an event count beyond the bytes.
    CRAFT("svd_count.evow", put_u64(t, after_perm + 80 + 8 + 8, 1000), "adaptation state");
    {
        uint64_t sl;
        memcpy(&sl, orig + after_perm + 80, 8);
        ASSERT_LT(after_perm + 88 + sl, n2); // version 3 layout, as documented in state.c
        CRAFT("events.evow", put_u64(t, after_perm + 80 + 8 + (size_t)sl, (uint64_t)1 << 61),
              "adaptation state");
    }
#undef CRAFT
    // The optimizer state must be the stored config's optimizer.
    bad += refused(
        &e, "optim.evow",
        with_conf(&v2, "\"optimizer\":{\"type\":\"sgd\"", "\"optimizer\":{\"type\":\"adamw\""),
        "optimizer state is sgd");
    // Its hyper-parameters too.
    bad += refused(&e, "momentum.evow", with_conf(&v2, "\"momentum\":0.9,", "\"momentum\":0.8,"),
                   "is not the stored config's");
    // A model layer renamed: not the stored config's architecture.
    size_t na = 0;
    unsigned char *arch = ck_payload(&v2, "ARCH", &na);
    ASSERT(arch);
    unsigned char *nm = memmem(arch, na, "dense1", 6);
    ASSERT(nm);
    nm[5] = '9';
    bad += refused(&e, "renamed.evow", ck_replace(&v2, "ARCH", arch, na),
                   "model layer 5 is dense \"dense9\"");
    free(arch);
    free(orig);
    free(t);
    free(v2.b);
    ASSERT_EQ(bad, 0);
    env_close(&e);
}

TEST_MAIN()
