/* daemon/config.h: the run configuration (owner: daemon/, prefix cfg_).
 *
 * One static const table in config.c lists every knob: section, key, type, offset
 * into struct dmn_config, range, default, flags and help. That table alone fills defaults,
 * loads JSON files, validates PATCH bodies, serialises the config and prints --help.
 *
 * struct dmn_config is a plain value: no pointers, no ownership; copy it by assignment. JSON
 * schema (every section and key optional except "model"):
 *   { "data": {...}, "synthetic": {...}, "model": [ {"type": "conv", ...}, ... ],
 *     "optimizer": {...}, "schedule": {...}, "train": {...}, "adapt": {...}, "daemon": {...} }
 * Run `evowidthd --help-config` (cfg_help) for every key, type, default and range.
 *
 * Threads: these functions use cJSON, whose error position is a process global; call them on
 * one thread (the loop thread, or main before threads start). Errors: 0 or -EINVAL / -ENOMEM
 * / -errno; a one-line reason naming the key, the value and what is allowed goes to err. A
 * failing call leaves its outputs unchanged. */
#ifndef DMN_CONFIG_H
#define DMN_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "net/net.h"
#include "svd_adapt/svd_adapt.h"

#define CFG_MAX_LAYERS 64
#define CFG_PATH_MAX 256
#define CFG_ADDR_MAX 64

/* Row flags: every knob has exactly one. RUNTIME knobs may change while training. */
#define CFG_IMMUTABLE 1u
#define CFG_RUNTIME 2u
#define CFG_ANY (CFG_IMMUTABLE | CFG_RUNTIME)

enum cfg_dataset { CFG_DATA_FASHION_MNIST, CFG_DATA_MNIST, CFG_DATA_CIFAR10, CFG_DATA_SYNTHETIC };
/* data.normalize: per-channel mean / std of the training set, or the [0, 1] values as they are
 * (what torch_ref.py does). */
enum cfg_normalize { CFG_NORM_STANDARD, CFG_NORM_UNIT };
/* daemon.on_checkpoint_failure. */
enum cfg_ckfail { CFG_CKFAIL_PAUSE, CFG_CKFAIL_STOP };

struct dmn_config {
    struct cfg_data {
        enum cfg_dataset dataset;
        char dir[CFG_PATH_MAX]; // IDX files (plain or .gz) or CIFAR-10 batches
        size_t val_split;       // training samples held out for validation
        size_t crop_pad;        // random crop after zero padding (0 = off)
        int flip;               // random horizontal flip
        int normalize;          // CFG_NORM_*: how pixel values in [0, 1] are scaled
    } data;
    struct cfg_synthetic { // used when data.dataset is "synthetic"
        size_t n_train, n_test, channels, height, width, classes;
        double noise;
    } synthetic;
    size_t n_layers;
    struct net_layer_spec model[CFG_MAX_LAYERS]; // (n_layers); fields a kind ignores are 0
    struct cfg_optimizer {
        enum net_opt_kind type;
        double lr, momentum;
        int nesterov;
        double weight_decay, beta1, beta2, eps;
        double group_lasso; // group-lasso penalty coefficient (the trainer applies it)
    } optimizer;
    struct cfg_schedule {
        enum net_sched_kind type;
        size_t warmup_steps;
        double min_lr;
        size_t step_size;
        double gamma;
    } schedule;
    struct cfg_train {
        size_t epochs, batch_size;
        int threads;
        uint64_t seed;
        size_t eval_every_steps; // 0 = once per epoch
        double log_every_seconds;
        enum net_init init; // initialisation scheme
    } train;
    struct svd_policy adapt;
    struct cfg_daemon {
        char listen[CFG_ADDR_MAX]; // HOST:PORT
        char state_dir[CFG_PATH_MAX];
        size_t checkpoint_every_steps; // 0 = only on demand and at exit
        char token_file[CFG_PATH_MAX]; // "" = no token (loopback only)
        size_t history_points;
        size_t header_timeout_ms, idle_timeout_ms, max_connections; // HTTP limits
        size_t stream_queue_bytes;       // per GET /v1/stream client (daemon/stream.c)
        size_t checkpoint_failure_limit; // consecutive failures before ...
        int on_checkpoint_failure;       // ... CFG_CKFAIL_*
        double rollback_lr_factor;       // divergence: back to good-*.evow, lr times this
        double divergence_ratio;         // val loss above ratio x best = diverged
        size_t max_rollbacks;            // in a row, then pause
    } daemon;
};

/* Zeroes *c (padding and string tails included, so memcmp works) and fills every default from
 * the table. The model stays empty (n_layers 0): it has no default. */
void cfg_defaults(struct dmn_config *c);

/* Parses JSON text (len bytes, need not be NUL-terminated), starting from cfg_defaults, and
 * on success replaces *c. Syntax errors report line, column and offset. Unknown sections or
 * keys, wrong types, out-of-range values, duplicate keys, a missing/invalid model and
 * cross-key violations (see cfg_validate) are errors. The text is not retained. */
int cfg_load_json(struct dmn_config *c, const char *text, size_t len, char *err, size_t errlen);
/* cfg_load_json on a file's contents (at most 1 MiB); err starts with the path. -errno if the
 * file cannot be read. */
int cfg_load_file(struct dmn_config *c, const char *path, char *err, size_t errlen);

/* Applies a JSON object of changes, all or nothing. section names the section obj belongs to
 * ("adapt" for PATCH /v1/policy), or NULL if obj is {"section": {...}, ...}. A key whose flag
 * is not in allow_flags is rejected ("train.batch_size cannot be changed while running"):
 * pass CFG_RUNTIME while training, CFG_ANY before. "model" cannot be patched.
 * Aliases for PATCH /v1/train: section "train" also accepts "lr" and "group_lasso", which
 * set optimizer.lr and optimizer.group_lasso. obj is borrowed and not modified. On success
 * the whole config passes cfg_validate. Returns 0 or -EINVAL (the API maps it to 422). */
int cfg_patch(struct dmn_config *c, const char *section, const cJSON *obj, unsigned allow_flags,
              char *err, size_t errlen);
/* One knob from text, for command-line overrides: key is "section.name" (or an alias such as
 * "train.lr"); value is parsed by the knob's type ("true", "0.08", "127.0.0.1:8080").
 * Same rules and all-or-nothing behaviour as cfg_patch. */
int cfg_set(struct dmn_config *c, const char *key, const char *value, unsigned allow_flags,
            char *err, size_t errlen);

/* Copies every runtime knob (CFG_RUNTIME) of src into dst, all or nothing (SIGHUP reload:
 * immutable knobs of a re-read file are ignored). 0 or -EINVAL if the result is invalid. */
int cfg_copy_runtime(struct dmn_config *dst, const struct dmn_config *src, char *err,
                     size_t errlen);

/* Checks a config built or changed in code: every knob in range, the model non-empty with
 * valid, uniquely named layers ending in a dense layer with one output per class,
 * adapt.max_width >= adapt.min_width, schedule.min_lr <= optimizer.lr, a full batch of
 * training data left after data.val_split, and a token file when listening off loopback. */
int cfg_validate(const struct dmn_config *c, char *err, size_t errlen);

/* One section as a new JSON object ("model": a JSON array), or NULL for an unknown section
 * or on OOM. Aliases are not included. The caller owns the result (cJSON_Delete). */
cJSON *cfg_section_to_json(const struct dmn_config *c, const char *section);
/* The whole config, model included, as a new JSON object the caller owns; NULL on OOM.
 * The tree holds exact values, but cJSON's printer may round a double by one ulp: to store
 * a config (checkpoints) use cfg_to_string. */
cJSON *cfg_to_json(const struct dmn_config *c);
/* The whole config as JSON text (pretty: indented) that cfg_load_json turns back into a
 * config equal to c under cfg_equal and memcmp. The caller frees it with cJSON_free; NULL on
 * OOM. */
char *cfg_to_string(const struct dmn_config *c, int pretty);
/* The knobs (with a flag in flags; none of section skip_section, if given) and layer fields
 * in which a and b differ, as "optimizer.type: sgd vs adamw; model[0].out: 4 vs 6" in out
 * (truncated to n). Returns how many differ (0: none). */
int cfg_diff(const struct dmn_config *a, const struct dmn_config *b, unsigned flags,
             const char *skip_section, char *out, size_t n);
/* 1 if every knob and every meaningful layer field are equal, else 0. */
int cfg_equal(const struct dmn_config *a, const struct dmn_config *b);

/* Prints every knob (type, default, range or choices, runtime flag, help) and the layer keys
 * to out, which is not closed. */
void cfg_help(FILE *out);

/* Classes the data set has: 10 for the real ones, synthetic.classes otherwise. */
size_t cfg_n_classes(const struct dmn_config *c);
/* Fills the optimizer's hyper-parameters from the config; o->t (steps taken, restored from a
 * checkpoint on resume) is left unchanged, so zero-initialise a new struct. */
void cfg_net_optim(const struct dmn_config *c, struct net_optim *o);
/* Fills a schedule with base lr optimizer.lr and the horizon total_steps. */
void cfg_net_sched(const struct dmn_config *c, size_t total_steps, struct net_sched *s);

#endif
