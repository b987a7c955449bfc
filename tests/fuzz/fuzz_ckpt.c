/* tests/fuzz/fuzz_ckpt.c: the checkpoint loader (net/ckpt.c) and the run-checkpoint loader
 * on top of it (daemon/state.c: TRNR, CONF, the adaptation state).
 *
 * Input: a checkpoint without its trailing CRC; the harness appends the right CRC so the
 * fuzzer reaches the parsers instead of the checksum. Properties: never a crash, leak or
 * undefined behaviour; a failure always has a reason; a loaded net is consistent (arena
 * sizes, tensors inside their arenas) and, if small, runs a forward pass. When the stored
 * config is a small synthetic run, the whole run checkpoint is loaded too. */
#include <errno.h>
#include <string.h>

#include "daemon/daemon.h"
#include "net/codec.h"
#include "svd_adapt/svd_adapt.h"
#include "tests/fuzz/fuzz_common.h"

/* A config small enough to build a trainer from in a fuzzing iteration. */
static int small_run(const struct ckpt_blob *conf)
{
    static struct dmn_config c;
    char err[256];
    if (!conf || cfg_load_json(&c, conf->data, conf->len, err, sizeof err) < 0) return 0;
    if (c.data.dataset != CFG_DATA_SYNTHETIC) return 0;
    const struct cfg_synthetic *s = &c.synthetic;
    if (s->n_train + s->n_test > 2048 || s->channels * s->height * s->width > 256) return 0;
    for (size_t i = 0; i < c.n_layers; i++)
        if (c.model[i].out > 64 || c.model[i].width > 64) return 0;
    return c.train.batch_size <= 64;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char *buf;
    static size_t cap;
    if (size + 4 > cap) {
        cap = size + 4;
        buf = realloc(buf, cap);
        FUZZ_CHECK(buf);
    }
    memcpy(buf, data, size);
    uint32_t crc = net_crc32(buf, size);
    memcpy(buf + size, &crc, 4);
    const char *path = fuzz_file(buf, size + 4);

    struct net *n = NULL;
    struct net_optim o;
    int has_opt = 0;
    struct ckpt_blob *bl = NULL;
    size_t nbl = 0;
    char err[1024] = "";
    int rc = ckpt_load(path, &n, &o, &has_opt, &bl, &nbl, err, sizeof err);
    if (rc < 0) {
        FUZZ_CHECK(err[0] && n == NULL);
        return 0;
    }
    fuzz_check_net(n);
    // Any blob may be an svd state: its parser must refuse garbage cleanly.
    struct svd_state *st = svd_state_create();
    for (size_t i = 0; st && i < nbl; i++) svd_state_load(st, bl[i].data, bl[i].len);
    svd_state_destroy(st);
    const int run = has_opt && small_run(ckpt_blob_find(bl, nbl, "CONF"));
    ckpt_blobs_free(bl, nbl);
    net_destroy(n);
    if (run) {
        struct dmn_trainer *t = NULL;
        err[0] = 0;
        if (dmn_trainer_load(&t, path, err, sizeof err) == 0) {
            // A loaded run takes a step without touching memory it does not own.
            FUZZ_CHECK(t->batcher.pos < t->batcher.n);
            dmn_trainer_step(t);
            dmn_trainer_destroy(t);
        } else {
            FUZZ_CHECK(err[0] && t == NULL);
        }
    }
    return 0;
}
