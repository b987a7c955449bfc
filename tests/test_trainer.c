/* tests/test_trainer.c: the trainer as a whole, on the tiny synthetic config.
 *
 * - A run checkpointed at step S and resumed continues bit-identically: after the same total
 *   number of steps the parameters, moments, widths and adaptation log equal those of an
 *   uninterrupted run (adaptations happen on both sides of S).
 * - Foreground training reaches a stated accuracy, and adaptation keeps it while shrinking. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "daemon/daemon_internal.h"
#include "tests/test.h"

static int load_tiny(struct dmn_config *c)
{
    char err[512];
    if (cfg_load_file(c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    c->train.epochs = 6;
    return 0;
}

TEST(resume_is_bit_identical)
{
    struct dmn_config c;
    char err[512], path[] = "/tmp/ew_test_trainer_XXXXXX";
    ASSERT_EQ(load_tiny(&c), 0);
    ASSERT(mkdtemp(path) != NULL);
    char ck[600];
    snprintf(ck, sizeof ck, "%s/ckpt.evow", path);

    struct dmn_trainer *a = NULL, *b = NULL;
    ASSERT_EQ(dmn_trainer_create(&a, &c, err, sizeof err), 0);
    // Stop after the second adaptation, so that surgeries happen on both sides of S.
    const size_t S = c.adapt.warmup_steps + c.adapt.interval_steps + 3;
    while (a->step < S) ASSERT_EQ(dmn_trainer_step(a), 0);
    const size_t events_at_s = dmn__adapt_n_events(a);
    ASSERT_GE(events_at_s, 1);
    ASSERT_EQ(dmn_trainer_save(a, ck, err, sizeof err), 0);
    while (!dmn_trainer_done(a)) ASSERT_EQ(dmn_trainer_step(a), 0);

    ASSERT_EQ(dmn_trainer_load(&b, ck, err, sizeof err), 0);
    ASSERT_EQ(b->step, S);
    while (!dmn_trainer_done(b)) ASSERT_EQ(dmn_trainer_step(b), 0);

    ASSERT_GT(dmn__adapt_n_events(a), events_at_s);
    ASSERT_EQ(dmn__adapt_n_events(a), dmn__adapt_n_events(b));
    for (size_t i = 0; i < dmn__adapt_n_events(a); i++) {
        // The event texts carry wall-clock times; compare from the step on, less "time".
        const char *ea = strstr(dmn__adapt_event(a, i), "\"mode\""),
                   *eb = strstr(dmn__adapt_event(b, i), "\"mode\"");
        ASSERT(ea && eb);
        ASSERT_STR_EQ(ea, eb);
    }
    ASSERT_EQ(a->net->n_layers, b->net->n_layers);
    for (size_t i = 0; i < a->net->n_layers; i++) {
        ASSERT_EQ(a->net->layers[i].spec.out, b->net->layers[i].spec.out);
        ASSERT_EQ(a->net->layers[i].spec.width, b->net->layers[i].spec.width);
    }
    ASSERT_EQ(a->net->n_params, b->net->n_params);
    ASSERT_EQ(memcmp(a->net->params, b->net->params, a->net->n_params * sizeof(float)), 0);
    ASSERT_EQ(memcmp(a->net->m, b->net->m, a->net->n_params * sizeof(float)), 0);
    ASSERT_EQ(memcmp(a->net->state, b->net->state, a->net->n_state * sizeof(float)), 0);
    ASSERT_EQ(a->opt.t, b->opt.t);
    dmn_trainer_destroy(a);
    dmn_trainer_destroy(b);
    unlink(ck);
    rmdir(path);
}

TEST(adaptive_training_learns_and_shrinks)
{
    struct dmn_config c;
    char err[512];
    ASSERT_EQ(load_tiny(&c), 0);
    struct dmn_trainer *t = NULL;
    ASSERT_EQ(dmn_trainer_create(&t, &c, err, sizeof err), 0);
    size_t p0 = t->net->n_params;
    while (!dmn_trainer_done(t)) ASSERT_EQ(dmn_trainer_step(t), 0);
    struct net_eval ev;
    ASSERT_EQ(dmn_trainer_eval(t, &t->test, &ev), 0);
    // Synthetic 4-class data at noise 0.3: a tiny CNN gets nearly all of it.
    ASSERT_FLT_OP(ev.accuracy, >=, 0.95);
    ASSERT_LT(t->net->n_params, p0);
    net_eval_free(&ev);
    dmn_trainer_destroy(t);
}

/* adapt.target_params from either side: a synthetic MLP started 4x above and 4x below the
 * target ends within [0.95, 1] x target, moving in one direction only (every pass's
 * params_after is on the same side of its params_before), and still learns. */
TEST(target_params_reached_from_above_and_below)
{
    static const char cfg[] =
        "{\"data\": {\"dataset\": \"synthetic\", \"val_split\": 64},"
        " \"synthetic\": {\"n_train\": 1024, \"n_test\": 256, \"channels\": 1, \"height\": 8,"
        "   \"width\": 8, \"classes\": 4, \"noise\": 0.3},"
        " \"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", \"out\": 48}, {\"type\": \"relu\"},"
        "   {\"type\": \"dense\", \"out\": 32}, {\"type\": \"relu\"}, {\"type\": \"dense\", \"out\": 4}],"
        " \"train\": {\"epochs\": 12, \"batch_size\": 32},"
        " \"adapt\": {\"interval_steps\": 8, \"warmup_steps\": 8, \"cooldown_steps\": 16,"
        "   \"calibration_samples\": 64, \"min_width\": 1}}";
    for (int below = 0; below < 2; below++) {
        struct dmn_config c;
        char err[512];
        ASSERT_EQ(cfg_load_json(&c, cfg, sizeof cfg - 1, err, sizeof err), 0);
        struct dmn_trainer *t = NULL;
        ASSERT_EQ(dmn_trainer_create(&t, &c, err, sizeof err), 0);
        const size_t p0 = t->net->n_params, T = below ? 4 * p0 : p0 / 4;
        t->cfg.adapt.target_params = T;
        while (!dmn_trainer_done(t)) ASSERT_EQ(dmn_trainer_step(t), 0);
        const size_t p1 = t->net->n_params;
        printf("    start %zu, target %zu: ended at %zu (%.1f%% of the target)\n", p0, T, p1,
               100.0 * (double)p1 / (double)T);
        ASSERT_LE(p1, T);
        ASSERT_GE((double)p1, 0.95 * (double)T);
        // One direction only.
        size_t moves = 0;
        for (size_t i = 0; i < dmn__adapt_n_events(t); i++) {
            cJSON *e = cJSON_Parse(dmn__adapt_event(t, i));
            ASSERT(e != NULL);
            double a = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "params_before"));
            double b = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "params_after"));
            if (below)
                ASSERT_FLT_OP(b, >=, a);
            else
                ASSERT_FLT_OP(b, <=, a);
            moves += a != b;
            cJSON_Delete(e);
        }
        ASSERT_GE(moves, 2);
        struct net_eval ev;
        ASSERT_EQ(dmn_trainer_eval(t, &t->test, &ev), 0);
        ASSERT_FLT_OP(ev.accuracy, >=, 0.9);
        net_eval_free(&ev);
        dmn_trainer_destroy(t);
    }
}

TEST_MAIN()
