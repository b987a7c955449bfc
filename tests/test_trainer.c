/* tests/test_trainer.c: the trainer as a whole, on the tiny synthetic config.
 *
 * - A run checkpointed at step S and resumed continues bit-identically: after the same total
 *   number of steps the parameters, moments, widths and adaptation log equal those of an
 *   uninterrupted run (adaptations happen on both sides of S).
 * - Foreground training reaches a stated accuracy, and adaptation keeps it while shrinking.
 * - The run loop's tick validates and asks for checkpoints on schedule; runtime knobs are
 *   applied through the config table (dmn_trainer_set_runtime). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "daemon/daemon_internal.h"
#include "tests/test.h"
#include "tests/util.h"


/* A trainer on c; NULL (reason printed) on failure. */
static struct dmn_trainer *trainer_on(const struct dmn_config *c)
{
    char err[512];
    struct dmn_trainer *t = NULL;
    if (dmn_trainer_create(&t, c, err, sizeof err) < 0) fprintf(stderr, "%s\n", err);
    return t;
}

TEST(resume_is_bit_identical)
{
    struct dmn_config c;
    char err[512], ck[TMP_PATH_MAX];
    struct tmpd dir;
    ASSERT_EQ(load_tiny(&c), 0);
    ASSERT_EQ(tmp_make(&dir, "ew_test_trainer"), 0);
    tmp_path(&dir, "ckpt.evow", ck);

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
    // The checkpoint carries the event count, not the texts (they are the event log's).
    for (size_t i = 0; i < events_at_s; i++) ASSERT(dmn__adapt_event(b, i) == NULL);
    for (size_t i = events_at_s; i < dmn__adapt_n_events(a); i++) {
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
    tmp_remove(&dir);
}

TEST(adaptive_training_learns_and_shrinks)
{
    struct dmn_config c;
    ASSERT_EQ(load_tiny(&c), 0);
    struct dmn_trainer *t = trainer_on(&c);
    ASSERT(t);
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

/* A synthetic MLP (64 -> 48 -> 32 -> 4, 30 steps an epoch, 12 epochs) for the target tests. */
static const char target_mlp_cfg[] =
    "{\"data\": {\"dataset\": \"synthetic\", \"val_split\": 64},"
    " \"synthetic\": {\"n_train\": 1024, \"n_test\": 256, \"channels\": 1, \"height\": 8,"
    "   \"width\": 8, \"classes\": 4, \"noise\": 0.3},"
    " \"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", \"out\": 48}, {\"type\": \"relu\"},"
    "   {\"type\": \"dense\", \"out\": 32}, {\"type\": \"relu\"}, {\"type\": \"dense\", \"out\": 4}],"
    " \"train\": {\"epochs\": 12, \"batch_size\": 32},"
    " \"adapt\": {\"interval_steps\": 8, \"warmup_steps\": 8, \"cooldown_steps\": 16,"
    "   \"calibration_samples\": 64, \"min_width\": 1}}";

/* adapt.target_params from either side: a synthetic MLP started 4x above and 4x below the
 * target ends within [0.95, 1] x target, moving in one direction only (every pass's
 * params_after is on the same side of its params_before), and still learns. */
TEST(target_params_reached_from_above_and_below)
{
    for (int run = 0; run < 3; run++) { // above, below, above with target_value fisher
        const int below = run == 1;
        struct dmn_config c;
        char err[512];
        ASSERT_EQ(cfg_load_json(&c, target_mlp_cfg, sizeof target_mlp_cfg - 1, err, sizeof err), 0);
        struct dmn_trainer *t = NULL;
        ASSERT_EQ(dmn_trainer_create(&t, &c, err, sizeof err), 0);
        const size_t p0 = t->net->n_params, T = below ? 4 * p0 : p0 / 4;
        t->cfg.adapt.target_params = T;
        t->cfg.adapt.target_value = run == 2 ? SVD_VALUE_FISHER : SVD_VALUE_ENERGY;
        while (!dmn_trainer_done(t)) ASSERT_EQ(dmn_trainer_step(t), 0);
        const size_t p1 = t->net->n_params;
        printf("    start %zu, target %zu (%s): ended at %zu (%.1f%% of the target)\n", p0, T,
               run == 2 ? "fisher" : "energy", p1, 100.0 * (double)p1 / (double)T);
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
        ASSERT_GE(moves, below ? 1 : 2); // growth goes to the target at its first pass
        struct net_eval ev;
        ASSERT_EQ(dmn_trainer_eval(t, &t->test, &ev), 0);
        ASSERT_FLT_OP(ev.accuracy, >=, 0.9);
        net_eval_free(&ev);
        dmn_trainer_destroy(t);
    }
}

/* A net under its target grows at the end of the learning-rate warmup (schedule.warmup_steps
 * 4 here), not at adapt.warmup_steps (8); one above it is first cut at adapt.warmup_steps. */
TEST(target_from_below_grows_after_the_lr_warmup)
{
    for (int below = 0; below < 2; below++) {
        struct dmn_config c;
        char err[512];
        ASSERT_EQ(cfg_load_json(&c, target_mlp_cfg, sizeof target_mlp_cfg - 1, err, sizeof err), 0);
        c.schedule.warmup_steps = 4;
        struct dmn_trainer *t = NULL;
        ASSERT_EQ(dmn_trainer_create(&t, &c, err, sizeof err), 0);
        const size_t p0 = t->net->n_params, T = below ? 4 * p0 : p0 / 4;
        t->cfg.adapt.target_params = T;
        size_t first = 0;
        while (!first && !dmn_trainer_done(t)) {
            ASSERT_EQ(dmn_trainer_step(t), 0);
            if (dmn__adapt_n_events(t)) first = t->step;
        }
        cJSON *e = cJSON_Parse(dmn__adapt_event(t, 0));
        ASSERT(e != NULL);
        const double b = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "params_after"));
        const double step = cJSON_GetNumberValue(cJSON_GetObjectItem(e, "step"));
        cJSON_Delete(e);
        printf("    target %s: first pass at step %zu, %zu -> %.0f parameters\n",
               below ? "4x above the net" : "4x below the net", first, p0, b);
        ASSERT_EQ(first, below ? 4 : 8);
        ASSERT_FLT_OP(step, ==, (double)first);
        if (below) {
            ASSERT_FLT_OP(b, <=, (double)T);
            ASSERT_FLT_OP(b, >=, 0.95 * (double)T);
            // adapt.target_grow_mode orthogonal (the default): the new units of the first
            // group (48 -> more) have zero columns in its consumer's old rows (layer 3's first
            // 32; its new rows are the second group's new units, with full fan-in rows).
            const struct net_tensor *w = net_tensor_get(t->net, 3, "w");
            ASSERT(w != NULL);
            const size_t rows = 32, cols = w->dims[1];
            ASSERT_GT(w->dims[0], rows);
            ASSERT_GT(cols, 48);
            const float *wd = net_tensor_data(t->net, w);
            double old = 0.0, nw = 0.0;
            for (size_t o = 0; o < rows; o++)
                for (size_t j = 0; j < cols; j++)
                    *(j < 48 ? &old : &nw) += fabs((double)wd[o * cols + j]);
            ASSERT(old > 0.0);
            ASSERT_FLT_OP(nw, ==, 0.0);
        } else {
            ASSERT_FLT_OP(b, <, (double)p0);
        }
        dmn_trainer_destroy(t);
    }
}

/* adapt.target_by: with steps of 5% a target 4x below is far out of reach in the run
 * (at most 17 passes of 5%, one every 32 steps), so passes take the geometric steps that
 * reach it by the deadline; with the deadline off the same run ends above its target. From
 * 4x below with growth 0.1 (1.1 x the width a pass) the first pass grows to the band at once:
 * growth keeps the function, so it does not wait for a deadline. adapt.stop_fraction: no
 * periodic pass in the run's last stretch. */
TEST(target_reached_by_its_deadline_and_no_pass_after_stop_fraction)
{
    for (int k = 0; k < 3; k++) {
        const int deadline = k > 0, below = k == 2;
        struct dmn_config c;
        char err[512];
        ASSERT_EQ(cfg_load_json(&c, target_mlp_cfg, sizeof target_mlp_cfg - 1, err, sizeof err), 0);
        c.adapt.interval_steps = 16;
        c.adapt.cooldown_steps = 32;
        c.adapt.target_step = 0.05;
        c.adapt.growth = 0.1;
        c.adapt.max_loss_jump = 1e6;
        c.adapt.stop_fraction = 0.75;
        c.adapt.target_by = deadline ? 0.3 : 0.0;
        struct dmn_trainer *t = NULL;
        ASSERT_EQ(dmn_trainer_create(&t, &c, err, sizeof err), 0);
        const size_t p0 = t->net->n_params, T = below ? 4 * p0 : p0 / 4, total = t->total_steps;
        t->cfg.adapt.target_params = T;
        size_t reached = 0, last_event = 0;
        while (!dmn_trainer_done(t)) {
            const size_t ne = dmn__adapt_n_events(t);
            ASSERT_EQ(dmn_trainer_step(t), 0);
            if (dmn__adapt_n_events(t) > ne) last_event = t->step;
            const size_t P = t->net->n_params;
            if (!reached && (below ? (double)P >= 0.95 * (double)T : P <= T)) reached = t->step;
        }
        printf("    deadline %s: %zu -> %zu (target %zu) reached at step %zu of %zu, last pass "
               "at %zu\n",
               deadline ? "0.3" : "off", p0, t->net->n_params, T, reached, total, last_event);
        ASSERT_LE(last_event, (size_t)(0.75 * (double)total) + 1);
        if (deadline) {
            ASSERT(reached > 0);
            // Due by 0.3 of the run; the pass at the deadline may still be one step late.
            ASSERT_LE(reached, (size_t)(0.3 * (double)total) + 16 + 1);
            ASSERT_GE((double)t->net->n_params, 0.95 * (double)T);
            ASSERT_LE(t->net->n_params, T);
            if (below) ASSERT_LE(reached, c.adapt.warmup_steps + 1); // the first pass
        } else {
            ASSERT_GT(t->net->n_params, T);
        }
        dmn_trainer_destroy(t);
    }
}

/* The run loop's tick: validation every train.eval_every_steps (0: at each epoch's end) and a
 * checkpoint due every daemon.checkpoint_every_steps and at the end; tiny.json has 14 steps
 * an epoch and a validation set. */
TEST(tick_evaluates_and_checkpoints_on_schedule)
{
    struct dmn_config c;
    ASSERT_EQ(load_tiny(&c), 0);
    c.train.epochs = 2;
    c.adapt.enabled = 0;
    for (int every = 0; every <= 5; every += 5) {
        c.train.eval_every_steps = (size_t)every;
        struct dmn_trainer *t = trainer_on(&c);
        ASSERT(t);
        ASSERT_EQ(t->steps_per_epoch, 14);
        ASSERT_EQ(c.daemon.checkpoint_every_steps, 10);
        char evals[128] = "", ckpts[128] = "";
        while (!dmn_trainer_done(t)) {
            struct dmn_tick tk;
            ASSERT_EQ(dmn_trainer_tick(t, &tk), 0);
            if (tk.evaluated)
                snprintf(evals + strlen(evals), sizeof evals - strlen(evals), " %zu", t->step);
            if (tk.checkpoint_due)
                snprintf(ckpts + strlen(ckpts), sizeof ckpts - strlen(ckpts), " %zu", t->step);
        }
        ASSERT_STR_EQ(evals, every ? " 5 10 15 20 25" : " 14 28");
        ASSERT_STR_EQ(ckpts, " 10 20 28");
        ASSERT(isfinite(t->val_loss) && t->val_acc > 0.0);
        dmn_trainer_destroy(t);
    }
}


/* Runtime knobs go through the config table: every runtime one is taken, what depends on it
 * re-derived, immutable ones left alone; an invalid result changes nothing. */
TEST(set_runtime_applies_runtime_knobs_only)
{
    struct dmn_config c;
    char err[512];
    ASSERT_EQ(load_tiny(&c), 0);
    struct dmn_trainer *t = trainer_on(&c);
    ASSERT(t);
    struct dmn_config n = c;
    n.train.epochs = 9;
    n.optimizer.lr = 0.0125;
    n.adapt.shrink_threshold = 0.2;
    n.train.eval_every_steps = 7;
    n.daemon.checkpoint_every_steps = 3;
    n.train.batch_size = 16; // immutable: ignored
    ASSERT_EQ(dmn_trainer_set_runtime(t, &n, err, sizeof err), 0);
    ASSERT_EQ(t->total_steps, 9 * t->steps_per_epoch);
    ASSERT_FLT_OP(t->sched.lr, ==, 0.0125f);
    ASSERT_EQ(t->sched.total_steps, t->total_steps);
    ASSERT_FLT_OP(t->cfg.adapt.shrink_threshold, ==, 0.2);
    ASSERT_EQ(t->cfg.train.eval_every_steps, 7);
    ASSERT_EQ(t->cfg.daemon.checkpoint_every_steps, 3);
    ASSERT_EQ(t->cfg.train.batch_size, c.train.batch_size);
    n.optimizer.lr = -1;
    n.train.epochs = 20;
    ASSERT_EQ(dmn_trainer_set_runtime(t, &n, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "optimizer.lr");
    ASSERT_EQ(t->total_steps, 9 * t->steps_per_epoch);
    ASSERT_FLT_OP(t->cfg.optimizer.lr, ==, 0.0125);
    dmn_trainer_destroy(t);
}

TEST_MAIN()
