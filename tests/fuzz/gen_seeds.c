/* tests/fuzz/gen_seeds.c: writes the checkpoint and export seeds of the fuzz corpus
 * (tests/fuzz/corpus/{ckpt,export}) from the tiny config. Built with the harnesses
 * (make fuzz builds it; run it from the source tree as build-fuzz/tests/fuzz/fuzz_seeds).
 * Checkpoint seeds are files without their CRC (the harness appends it); export seeds are
 * a form byte 0 and the inflated payload (the harness wraps it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "daemon/daemon.h"

static unsigned char *slurp(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n + 1);
    if (b && fread(b, 1, *n, f) != *n) b = NULL;
    fclose(f);
    return b;
}

static int spit(const char *p, const void *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f) fclose(f);
    if (ok) printf("%s: %zu bytes\n", p, n);
    return ok ? 0 : -1;
}

/* A checkpoint file without its CRC. */
static int seed_ckpt(const char *from, const char *to)
{
    size_t n;
    unsigned char *b = slurp(from, &n);
    int rc = b && n > 4 ? spit(to, b, n - 4) : -1;
    free(b);
    return rc;
}

/* Form byte 0, then the inflated payload of an EVWZ file. */
static int seed_export(const char *from, const char *to)
{
    size_t n;
    unsigned char *b = slurp(from, &n);
    if (!b || n < 36) return -1;
    uint64_t raw;
    memcpy(&raw, b + 16, 8);
    unsigned char *p = malloc(raw + 1);
    uLongf got = (uLongf)raw;
    p[0] = 0;
    int rc = uncompress(p + 1, &got, b + 32, (uLong)(n - 36)) == Z_OK ? spit(to, p, (size_t)got + 1)
                                                                      : -1;
    free(p);
    free(b);
    return rc;
}

int main(void)
{
    struct dmn_config c;
    char err[512];
    if (cfg_load_file(&c, "configs/tiny.json", err, sizeof err) < 0)
        return fprintf(stderr, "%s\n", err), 1;
    c.synthetic.n_train = 256;
    c.synthetic.n_test = 64;
    c.data.val_split = 32;
    struct dmn_trainer *t = NULL;
    if (dmn_trainer_create(&t, &c, err, sizeof err) < 0) return fprintf(stderr, "%s\n", err), 1;
    while (t->step < 10)
        if (dmn_trainer_step(t) < 0) return 1;
    const char *tmp = "/tmp/ew_fuzz_seed.evow", *tz = "/tmp/ew_fuzz_seed.evwz";
    int bad = 0;
    bad |= dmn_trainer_save(t, tmp, err, sizeof err) < 0;
    // The current TRNR version (run_v2 is kept: written by the code before version 3).
    bad |= seed_ckpt(tmp, "tests/fuzz/corpus/ckpt/run_v3");
    bad |= ckpt_save(tmp, t->net, NULL, NULL, 0, err, sizeof err) < 0;
    bad |= seed_ckpt(tmp, "tests/fuzz/corpus/ckpt/model_only");
    bad |= seed_ckpt("tests/fixtures/trnr_v1.evow", "tests/fuzz/corpus/ckpt/run_v1");
    struct ckpt_blob blob = {"CONF", "{}", 2};
    bad |= net_export_save(tz, t->net, NULL, &blob, 1, NULL, err, sizeof err) < 0;
    bad |= seed_export(tz, "tests/fuzz/corpus/export/f32");
    struct net_export_opts xo = {.fp16 = 1, .kmeans = 4, .prune = 0.5};
    struct net_xplan *plan = NULL;
    bad |= net_xplan_create(&plan, t->net, &xo, err, sizeof err) < 0;
    bad |= net_xplan_cluster(plan, t->net) < 0;
    bad |= net_export_save(tz, t->net, plan, NULL, 0, NULL, err, sizeof err) < 0;
    bad |= seed_export(tz, "tests/fuzz/corpus/export/kmeans_pruned_f16");
    net_xplan_destroy(plan);
    dmn_trainer_destroy(t);
    remove(tmp);
    remove(tz);
    if (bad) fprintf(stderr, "failed: %s\n", err);
    return bad;
}
