/* tests/test_config.c: the configuration table (daemon/config.c).
 *
 * Every shipped config loads; defaults come from the table; every kind of bad input gives an
 * error that names the key, the value and what is allowed, and leaves the config untouched
 * (memcmp against a copy); PATCH is all-or-nothing and honours CFG_IMMUTABLE; and a config
 * survives cfg_to_json -> print -> cfg_load_json unchanged. */
#include <errno.h>

#include "daemon/config.h"
#include "tests/test.h"

#ifndef EW_SOURCE_DIR
#define EW_SOURCE_DIR "."
#endif

/* A valid minimal model for fashion-mnist, to which tests add the section under test. */
#define MODEL "\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", \"out\": 10}]"

static int load(struct dmn_config *c, const char *text, char *err, size_t errlen)
{
    return cfg_load_json(c, text, strlen(text), err, errlen);
}

/* Loads `text` into a config holding tiny.json, expects -EINVAL, an error containing every
 * given fragment, and the config unchanged byte for byte. */
static int expect_load_error(const char *text, const char *frag1, const char *frag2)
{
    struct dmn_config c, copy;
    char err[512] = "";
    if (cfg_load_file(&c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err) != 0) {
        fprintf(stderr, "tiny.json: %s\n", err);
        return 0;
    }
    memcpy(&copy, &c, sizeof c);
    int rc = load(&c, text, err, sizeof err);
    int ok = rc == -EINVAL && strstr(err, frag1) && (!frag2 || strstr(err, frag2)) &&
             memcmp(&c, &copy, sizeof c) == 0;
    if (!ok)
        fprintf(stderr, "rc %d, err \"%s\", want \"%s\" and \"%s\"\n", rc, err, frag1,
                frag2 ? frag2 : "");
    return ok;
}

TEST(shipped_configs_load)
{
    static const char *const files[] = {"default", "compact",    "ref_mlp",
                                        "ref_cnn", "ref_resnet", "tiny"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512], err[512] = "";
        struct dmn_config c;
        snprintf(path, sizeof path, "%s/configs/%s.json", EW_SOURCE_DIR, files[i]);
        int rc = cfg_load_file(&c, path, err, sizeof err);
        if (rc != 0) fprintf(stderr, "%s\n", err);
        ASSERT_EQ(rc, 0);
        ASSERT_EQ(cfg_validate(&c, err, sizeof err), 0);
    }
}

TEST(shipped_config_contents)
{
    struct dmn_config c;
    char err[512] = "";
    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/default.json", err, sizeof err), 0);
    ASSERT_EQ(c.n_layers, 16);
    ASSERT_EQ(c.model[0].kind, NET_CONV);
    ASSERT_GE(c.model[0].out, 16);
    ASSERT_EQ(c.model[0].stride, 1);
    {
        // The main job starts wide (issue: over 500k parameters) on 1x28x28 inputs.
        struct net *n = NULL;
        struct net_shape in = {1, 28, 28, 1};
        ASSERT_EQ(net_create(&n, &in, 10, c.model, c.n_layers, err, sizeof err), 0);
        size_t np = n->n_params;
        net_destroy(n);
        ASSERT_GT(np, 500000);
    }
    ASSERT_EQ(c.model[0].bias, 1);
    ASSERT_EQ(c.model[6].kind, NET_MAXPOOL);
    ASSERT_EQ(c.model[6].stride, 2); // defaults to k
    ASSERT_EQ(c.optimizer.nesterov, 1);
    ASSERT_EQ(c.data.crop_pad, 2);
    ASSERT(c.adapt.enabled);

    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/ref_resnet.json", err, sizeof err), 0);
    ASSERT_EQ(c.model[2].kind, NET_RES);
    ASSERT_EQ(c.model[2].width, 32);
    ASSERT_EQ(c.model[2].bn, 0);
    ASSERT_EQ(c.schedule.type, NET_SCHED_CONST);
    ASSERT_EQ(c.data.val_split, 0);
    ASSERT_EQ(c.adapt.enabled, 0);
    ASSERT_NEAR(c.optimizer.weight_decay, 0, 0);
    // torch_ref.py's set-up: torch's default init, pixels in [0, 1] (He init diverged to
    // chance on this no-BN resnet for 2 seeds of 3).
    ASSERT_EQ(c.train.init, NET_INIT_TORCH);
    ASSERT_EQ(c.data.normalize, CFG_NORM_UNIT);

    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err), 0);
    ASSERT_EQ(c.data.dataset, CFG_DATA_SYNTHETIC);
    ASSERT_EQ(cfg_n_classes(&c), 4);
    ASSERT_EQ(c.adapt.interval_steps, 8);
    ASSERT_EQ(c.daemon.checkpoint_every_steps, 10);
}

TEST(defaults_applied)
{
    struct dmn_config c, d;
    char err[256] = "";
    ASSERT_EQ(load(&c, "{" MODEL "}", err, sizeof err), 0);
    ASSERT_EQ(c.data.dataset, CFG_DATA_FASHION_MNIST);
    ASSERT_STR_EQ(c.data.dir, "/usr/share/datasets/fashion-mnist");
    ASSERT_EQ(c.data.val_split, 5000);
    ASSERT_EQ(c.optimizer.type, NET_SGD);
    ASSERT_NEAR(c.optimizer.lr, 0.05, 0);
    ASSERT_NEAR(c.optimizer.momentum, 0.9, 0);
    ASSERT_NEAR(c.optimizer.weight_decay, 5e-4, 0);
    ASSERT_NEAR(c.optimizer.beta2, 0.999, 0);
    ASSERT_EQ(c.schedule.type, NET_SCHED_COSINE);
    ASSERT_EQ(c.schedule.step_size, 1000);
    ASSERT_EQ(c.train.epochs, 10);
    ASSERT_EQ(c.train.batch_size, 64);
    ASSERT_EQ(c.train.threads, 2);
    ASSERT_EQ(c.train.seed, 1);
    ASSERT_NEAR(c.train.log_every_seconds, 2.0, 0);
    ASSERT_EQ(c.train.init, NET_INIT_HE);
    ASSERT_EQ(c.data.normalize, CFG_NORM_STANDARD);
    ASSERT_EQ(c.adapt.enabled, 1);
    ASSERT_EQ(c.adapt.mode, SVD_MODE_SELECT);
    ASSERT_EQ(c.adapt.source, SVD_SRC_ACTIVATIONS);
    ASSERT_EQ(c.adapt.rule, SVD_RULE_RELATIVE);
    ASSERT_EQ(c.adapt.grow_mode, SVD_GROW_MIRROR);
    ASSERT_NEAR(c.adapt.expand_threshold, 0.85, 0);
    ASSERT_NEAR(c.adapt.growth, 1.0, 0);
    ASSERT_EQ(c.adapt.target_params, 0);
    ASSERT_NEAR(c.adapt.shrink_threshold, 0.05, 0);
    ASSERT_NEAR(c.adapt.gap_threshold, 10, 0);
    ASSERT_EQ(c.adapt.interval_steps, 500);
    ASSERT_EQ(c.adapt.cooldown_steps, 1000);
    ASSERT_EQ(c.adapt.calibration_samples, 512);
    ASSERT_EQ(c.adapt.min_width, 4);
    ASSERT_EQ(c.adapt.max_width, 1024);
    ASSERT_EQ(c.adapt.enable_grow, 1);
    ASSERT_STR_EQ(c.daemon.listen, "127.0.0.1:7070");
    ASSERT_STR_EQ(c.daemon.state_dir, "state");
    ASSERT_STR_EQ(c.daemon.token_file, "");
    ASSERT_EQ(c.daemon.history_points, 1000);
    ASSERT_EQ(c.model[1].bias, 1);

    // cfg_defaults alone: the same values, no model.
    cfg_defaults(&d);
    ASSERT_EQ(d.n_layers, 0);
    ASSERT_EQ(d.adapt.warmup_steps, c.adapt.warmup_steps);
    ASSERT_NEAR(d.adapt.max_loss_jump, 0.1, 0);
}

TEST(unknown_key_named)
{
    ASSERT(expect_load_error("{" MODEL ", \"optimizer\": {\"lerning_rate\": 0.1}}",
                             "optimizer: unknown key \"lerning_rate\"", NULL));
    // A near miss gets a hint.
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": {\"shrink_treshold\": 0.1}}",
                             "unknown key \"shrink_treshold\"",
                             "did you mean \"shrink_threshold\""));
}

TEST(unknown_section_named)
{
    ASSERT(expect_load_error("{" MODEL ", \"trainer\": {}}", "unknown section \"trainer\"",
                             "did you mean \"train\""));
}

TEST(wrong_type_named)
{
    ASSERT(expect_load_error("{" MODEL ", \"train\": {\"batch_size\": \"64\"}}",
                             "train.batch_size: expected an integer", "string \"64\""));
    ASSERT(expect_load_error("{" MODEL ", \"data\": {\"flip\": 1}}",
                             "data.flip: expected true or false, got 1", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": []}", "adapt: expected an object", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"train\": {\"epochs\": 2.5}}",
                             "train.epochs: 2.5 is not an integer", NULL));
    ASSERT(expect_load_error("[1, 2]", "expected a JSON object of sections", NULL));
}

TEST(out_of_range_named)
{
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": {\"shrink_threshold\": 1.5}}",
                             "adapt.shrink_threshold: 1.5 is out of range [0, 1]", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": {\"growth\": 0}}",
                             "adapt.growth: 0 is out of range (0, 4]", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": {\"energy_eps\": 1}}",
                             "adapt.energy_eps: 1 is out of range [0, 1)", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": {\"calibration_samples\": 8}}",
                             "adapt.calibration_samples: 8 is out of range [16, 65536]", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"adapt\": {\"interval_steps\": -1}}",
                             "adapt.interval_steps: -1 is out of range [1, inf)", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"train\": {\"seed\": 1e300}}",
                             "train.seed: 1e+300 is too large", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"daemon\": {\"listen\": \"localhost\"}}",
                             "daemon.listen: \"localhost\" is not HOST:PORT", NULL));
}

TEST(bad_enum_lists_choices)
{
    ASSERT(expect_load_error(
        "{" MODEL ", \"adapt\": {\"mode\": \"prune\"}}",
        "adapt.mode: string \"prune\" is not one of: rotate, select, factorize", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"data\": {\"dataset\": \"imagenet\"}}",
                             "fashion-mnist, mnist, cifar10, synthetic", NULL));
}

TEST(malformed_json_reports_position)
{
    // The missing comma sits on line 3; cJSON stops there.
    ASSERT(expect_load_error("{\n  \"train\": {\"epochs\": 1}\n  \"adapt\": {}\n}",
                             "JSON syntax error at line 3", "column"));
    ASSERT(
        expect_load_error("{" MODEL "} trailing", "unexpected text after the document", "offset"));
    ASSERT(expect_load_error("", "empty document", NULL));
    // Not NUL-terminated: only the first len bytes count.
    struct dmn_config c;
    char err[256] = "";
    const char *text = "{" MODEL "}GARBAGE";
    ASSERT_EQ(cfg_load_json(&c, text, strlen(text) - 7, err, sizeof err), 0);
}

TEST(failure_leaves_config_unchanged)
{
    // Errors at every stage, each after some valid sections were already applied.
    ASSERT(expect_load_error("{\"train\": {\"epochs\": 3}, " MODEL ", \"adapt\": {\"mode\": 1}}",
                             "adapt.mode", NULL));
    ASSERT(expect_load_error("{\"train\": {\"epochs\": 3}}", "model: missing", NULL));
    ASSERT(expect_load_error("{\"train\": {\"epochs\": 3}, \"adapt\": {\"min_width\": 64, "
                             "\"max_width\": 32}, " MODEL "}",
                             "adapt.max_width (32) must be >= adapt.min_width (64)", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"train\": {\"epochs\": 3, \"epochs\": 4}}",
                             "duplicate key \"epochs\"", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"data\": {\"val_split\": 60000}}",
                             "data.val_split: 60000", NULL));
    ASSERT(expect_load_error("{" MODEL ", \"daemon\": {\"listen\": \"0.0.0.0:7070\"}}",
                             "not a loopback address", "token_file"));
    ASSERT(expect_load_error("{" MODEL ", \"schedule\": {\"min_lr\": 0.5}}",
                             "schedule.min_lr (0.5) must not exceed optimizer.lr (0.05)", NULL));
}

TEST(model_errors)
{
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"conv\", \"k\": 3}, {\"type\": \"flatten\"},"
                             " {\"type\": \"dense\", \"out\": 10}]}",
                             "model[0] (conv): missing required key \"out\"", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"res\", \"out\": 8}, {\"type\": \"gap\"},"
                             " {\"type\": \"dense\", \"out\": 10}]}",
                             "model[0] (res): missing required key \"width\"", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", "
                             "\"out\": 10, \"k\": 3}]}",
                             "model[1]: key \"k\" is not valid for a dense layer", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"relu\", \"out\": 3}, {\"type\": "
                             "\"dense\", \"out\": 10}]}",
                             "model[0]: key \"out\" is not valid for a relu layer", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", "
                             "\"out\": 12, \"name\": \"head\"}]}",
                             "model[1] (dense \"head\"): out 12 must equal the 10 classes", NULL));
    ASSERT(expect_load_error("{\"data\": {\"dataset\": \"synthetic\", \"val_split\": 0}, "
                             "\"synthetic\": {\"classes\": 3}, " MODEL "}",
                             "out 10 must equal the 3 classes of synthetic", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", "
                             "\"out\": 10}, {\"type\": \"relu\"}]}",
                             "model[2] (relu): the last layer must be dense", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", "
                             "\"out\": 32, \"name\": \"fc\"}, {\"type\": \"dense\", \"out\": 10, "
                             "\"name\": \"fc\"}]}",
                             "model[2]: duplicate layer name \"fc\" (also model[1])", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"lstm\"}]}",
                             "model[0]: unknown layer type string \"lstm\"", "dense, conv"));
    ASSERT(expect_load_error("{\"model\": [{\"out\": 3}]}", "model[0]: missing \"type\"", NULL));
    ASSERT(expect_load_error("{\"model\": []}", "model: 0 layers", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", "
                             "\"out\": 10, \"name\": \"a/b\"}]}",
                             "name string \"a/b\" may only hold", NULL));
    ASSERT(expect_load_error("{\"model\": [{\"type\": \"flatten\"}, {\"type\": \"dense\", "
                             "\"out\": 0}]}",
                             "model[1] (dense): out: 0 is not an integer in [1, 1048576]", NULL));
}

TEST(patch_all_or_nothing)
{
    struct dmn_config c, copy;
    char err[256] = "";
    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err), 0);
    memcpy(&copy, &c, sizeof c);

    cJSON *bad = cJSON_Parse("{\"shrink_threshold\": 0.08, \"expand_threshold\": 7}");
    ASSERT(bad);
    int rc = cfg_patch(&c, "adapt", bad, CFG_RUNTIME, err, sizeof err);
    cJSON_Delete(bad);
    ASSERT_EQ(rc, -EINVAL);
    ASSERT_CONTAINS(err, "adapt.expand_threshold: 7 is out of range [0, 1]");
    ASSERT(memcmp(&c, &copy, sizeof c) == 0);

    // A cross-key violation is rejected as a whole as well.
    cJSON *cross = cJSON_Parse("{\"min_width\": 2048}");
    rc = cfg_patch(&c, "adapt", cross, CFG_RUNTIME, err, sizeof err);
    cJSON_Delete(cross);
    ASSERT_EQ(rc, -EINVAL);
    ASSERT_CONTAINS(err, "adapt.max_width");
    ASSERT(memcmp(&c, &copy, sizeof c) == 0);

    cJSON *good = cJSON_Parse("{\"shrink_threshold\": 0.08, \"mode\": \"rotate\"}");
    ASSERT_EQ(cfg_patch(&c, "adapt", good, CFG_RUNTIME, err, sizeof err), 0);
    cJSON_Delete(good);
    ASSERT_NEAR(c.adapt.shrink_threshold, 0.08, 0);
    ASSERT_EQ(c.adapt.mode, SVD_MODE_ROTATE);

    // GET /v1/policy shows the change.
    cJSON *pol = cfg_section_to_json(&c, "adapt");
    ASSERT(pol);
    ASSERT_STR_EQ(cJSON_GetObjectItem(pol, "mode")->valuestring, "rotate");
    ASSERT_NEAR(cJSON_GetObjectItem(pol, "shrink_threshold")->valuedouble, 0.08, 0);
    cJSON_Delete(pol);
}

TEST(patch_immutable_rejected)
{
    struct dmn_config c, copy;
    char err[256] = "";
    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err), 0);
    memcpy(&copy, &c, sizeof c);
    cJSON *p = cJSON_Parse("{\"epochs\": 5, \"batch_size\": 128}");
    ASSERT_EQ(cfg_patch(&c, "train", p, CFG_RUNTIME, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "train.batch_size cannot be changed while running");
    ASSERT(memcmp(&c, &copy, sizeof c) == 0);
    // Before training starts every knob may change.
    ASSERT_EQ(cfg_patch(&c, "train", p, CFG_ANY, err, sizeof err), 0);
    cJSON_Delete(p);
    ASSERT_EQ(c.train.batch_size, 128);
    ASSERT_EQ(c.train.epochs, 5);
}

TEST(patch_train_aliases)
{
    struct dmn_config c;
    char err[256] = "";
    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err), 0);
    cJSON *p = cJSON_Parse("{\"lr\": 0.01, \"epochs\": 3, \"group_lasso\": 0.001}");
    ASSERT_EQ(cfg_patch(&c, "train", p, CFG_RUNTIME, err, sizeof err), 0);
    cJSON_Delete(p);
    ASSERT_NEAR(c.optimizer.lr, 0.01, 0);
    ASSERT_NEAR(c.optimizer.group_lasso, 0.001, 0);
    ASSERT_EQ(c.train.epochs, 3);

    p = cJSON_Parse("{\"lr\": -1}");
    ASSERT_EQ(cfg_patch(&c, "train", p, CFG_RUNTIME, err, sizeof err), -EINVAL);
    cJSON_Delete(p);
    ASSERT_CONTAINS(err, "optimizer.lr: -1 is out of range (0, 10]");

    // Aliases are for patches only: a config file must say optimizer.lr.
    ASSERT(expect_load_error("{" MODEL ", \"train\": {\"lr\": 0.1}}", "train: unknown key \"lr\"",
                             NULL));
    // Other patch errors: unknown key, model, whole-document form.
    p = cJSON_Parse("{\"foo\": 1}");
    ASSERT_EQ(cfg_patch(&c, "adapt", p, CFG_RUNTIME, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "adapt: unknown key \"foo\"");
    ASSERT_EQ(cfg_patch(&c, "model", p, CFG_ANY, err, sizeof err), -EINVAL);
    ASSERT_EQ(cfg_patch(&c, "nope", p, CFG_ANY, err, sizeof err), -EINVAL);
    cJSON_Delete(p);
    p = cJSON_Parse("{\"adapt\": {\"growth\": 0.5}, \"daemon\": {\"checkpoint_every_steps\": 7}}");
    ASSERT_EQ(cfg_patch(&c, NULL, p, CFG_RUNTIME, err, sizeof err), 0);
    cJSON_Delete(p);
    ASSERT_NEAR(c.adapt.growth, 0.5, 0);
    ASSERT_EQ(c.daemon.checkpoint_every_steps, 7);
}

TEST(set_from_text)
{
    struct dmn_config c;
    char err[256] = "";
    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/tiny.json", err, sizeof err), 0);
    ASSERT_EQ(cfg_set(&c, "daemon.listen", "127.0.0.1:9999", CFG_ANY, err, sizeof err), 0);
    ASSERT_STR_EQ(c.daemon.listen, "127.0.0.1:9999");
    ASSERT_EQ(cfg_set(&c, "adapt.enable_grow", "false", CFG_RUNTIME, err, sizeof err), 0);
    ASSERT_EQ(c.adapt.enable_grow, 0);
    ASSERT_EQ(cfg_set(&c, "adapt.expand_threshold", "0.6", CFG_RUNTIME, err, sizeof err), 0);
    ASSERT_NEAR(c.adapt.expand_threshold, 0.6, 0);
    ASSERT_EQ(cfg_set(&c, "train.lr", "0.2", CFG_RUNTIME, err, sizeof err), 0);
    ASSERT_NEAR(c.optimizer.lr, 0.2, 0);
    ASSERT_EQ(cfg_set(&c, "adapt.growth", "lots", CFG_RUNTIME, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "expected a number, got \"lots\"");
    ASSERT_EQ(cfg_set(&c, "adapt.enabled", "yes", CFG_RUNTIME, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "adapt.enabled: expected true or false");
    ASSERT_EQ(cfg_set(&c, "listen", "x", CFG_ANY, err, sizeof err), -EINVAL);
    ASSERT_EQ(cfg_set(&c, "daemon.state_dir", "/tmp/x", CFG_RUNTIME, err, sizeof err), -EINVAL);
    ASSERT_CONTAINS(err, "daemon.state_dir cannot be changed while running");
}

/* Prints c with cfg_to_string, reloads it, and checks the result is the same config under cfg_equal and memcmp. */
static int round_trip(const struct dmn_config *c)
{
    struct dmn_config back;
    char err[512] = "";
    char *text = cfg_to_string(c, 1);
    int rc = text ? cfg_load_json(&back, text, strlen(text), err, sizeof err) : -ENOMEM;
    if (rc) fprintf(stderr, "round trip: %s\n%s\n", err, text ? text : "");
    int ok = rc == 0 && cfg_equal(c, &back) && memcmp(c, &back, sizeof back) == 0;
    cJSON_free(text);
    return ok;
}

TEST(round_trip_identical)
{
    static const char *const files[] = {"default", "compact",    "ref_mlp",
                                        "ref_cnn", "ref_resnet", "tiny"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512], err[512] = "";
        struct dmn_config c;
        snprintf(path, sizeof path, "%s/configs/%s.json", EW_SOURCE_DIR, files[i]);
        ASSERT_EQ(cfg_load_file(&c, path, err, sizeof err), 0);
        ASSERT(round_trip(&c));
    }
    // Awkward values: non-terminating decimals, a large seed, names, factorized layers.
    struct dmn_config c, d;
    char err[512] = "";
    const char *text =
        "{\"model\": [{\"type\": \"conv\", \"out\": 7, \"k\": 5, \"stride\": 2, \"pad\": 2, "
        "\"bias\": false, \"rank\": 3, \"name\": \"stem\"}, {\"type\": \"res\", \"width\": 5, "
        "\"out\": 9, \"stride\": 2, \"name\": \"block-1\"}, {\"type\": \"gap\"}, "
        "{\"type\": \"dense\", \"out\": 10, \"name\": \"head\"}],"
        "\"optimizer\": {\"type\": \"adamw\", \"lr\": 0.1, \"eps\": 3e-9},"
        "\"train\": {\"seed\": 9007199254740991, \"log_every_seconds\": 0.3333333333333333},"
        "\"adapt\": {\"shrink_threshold\": 0.07000000000000001, \"rule\": \"gap\"},"
        "\"daemon\": {\"token_file\": \"/etc/evowidth/token\", \"listen\": \"0.0.0.0:80\"}}";
    ASSERT_EQ(load(&c, text, err, sizeof err), 0);
    ASSERT_EQ(c.train.seed, 9007199254740991ULL);
    ASSERT_STR_EQ(c.model[1].name, "block-1");
    ASSERT_EQ(c.model[1].bn, 1);
    ASSERT(round_trip(&c));
    // The cJSON tree of cfg_to_json holds the exact values, and its printed text loads.
    cJSON *j = cfg_to_json(&c);
    ASSERT(j);
    cJSON *train = cJSON_GetObjectItem(j, "train");
    ASSERT(cJSON_GetObjectItem(train, "seed")->valuedouble == 9007199254740991.0);
    ASSERT(cJSON_GetObjectItem(train, "log_every_seconds")->valuedouble ==
           c.train.log_every_seconds);
    char *printed = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    ASSERT(printed);
    int rc = cfg_load_json(&d, printed, strlen(printed), err, sizeof err);
    cJSON_free(printed);
    ASSERT_EQ(rc, 0);
    // cfg_equal notices a change in a layer and in a knob.
    memcpy(&d, &c, sizeof c);
    d.model[1].width = 6;
    ASSERT(!cfg_equal(&c, &d));
    memcpy(&d, &c, sizeof c);
    d.adapt.growth = 0.3;
    ASSERT(!cfg_equal(&c, &d));
}

TEST(help_and_engine_structs)
{
    struct dmn_config c;
    char err[256] = "", *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ASSERT(f);
    cfg_help(f);
    fclose(f);
    ASSERT_CONTAINS(buf, "adapt.shrink_threshold: number [0, 1], default 0.05, runtime");
    ASSERT_CONTAINS(buf, "train.batch_size: integer [1, 65536], default 64\n");
    ASSERT_CONTAINS(buf, "adapt.mode: one of rotate, select, factorize, default select");
    ASSERT_CONTAINS(buf, "{\"type\": \"maxpool\", k (2), stride (= k)");
    free(buf);

    ASSERT_EQ(cfg_load_file(&c, EW_SOURCE_DIR "/configs/default.json", err, sizeof err), 0);
    struct net_optim o = {0};
    o.t = 42;
    cfg_net_optim(&c, &o);
    ASSERT_EQ(o.kind, NET_SGD);
    ASSERT_EQ(o.nesterov, 1);
    ASSERT_NEAR(o.momentum, 0.9, 1e-7);
    ASSERT_NEAR(o.weight_decay, 5e-4, 1e-9);
    ASSERT_EQ(o.t, 42);
    struct net_sched s;
    cfg_net_sched(&c, 10000, &s);
    ASSERT_EQ(s.kind, NET_SCHED_COSINE);
    ASSERT_NEAR(s.lr, 0.05, 1e-7);
    ASSERT_EQ(s.warmup_steps, 200);
    ASSERT_EQ(s.total_steps, 10000);

    // Every section serialises; unknown ones give NULL.
    cJSON *m = cfg_section_to_json(&c, "model");
    ASSERT(cJSON_IsArray(m));
    ASSERT_EQ(cJSON_GetArraySize(m), 16);
    cJSON_Delete(m);
    ASSERT(cfg_section_to_json(&c, "nope") == NULL);
    ASSERT_EQ(cfg_load_file(&c, "/nonexistent/x.json", err, sizeof err), -ENOENT);
    ASSERT_CONTAINS(err, "/nonexistent/x.json: cannot open");
}

TEST_MAIN()
