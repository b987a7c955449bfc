/* daemon/config.c: the configuration table and everything it drives.
 *
 * Design. CFG_ROWS below is the only place a knob exists: its section, JSON key, type,
 * offset into struct dmn_config, range, default, flags, optional check hook and help text.
 * Defaults, loading, patching, validation, serialisation, equality and --help are loops over
 * that table. Layers of the "model" array get the same treatment from a second, smaller
 * table (CFG_LKEYS), whose rows say for which layer kinds a key is valid or required.
 *
 * Invariants. A struct dmn_config is a plain value without pointers. Every writer works on a
 * copy and commits with one memcpy only after the whole input parsed and cfg_validate
 * passed, so a failing call changes nothing. cfg_defaults zeroes the struct first and
 * strings are copied with zero fill, so two equal configs are also equal under memcmp.
 * Integers travel through JSON doubles, so integer knobs are capped at 2^53 and round-trip
 * exactly; doubles round-trip because cJSON prints 17 significant digits when needed.
 *
 * Threads: none of our own; cJSON keeps its last error position in a global, so callers keep
 * all cJSON use on one thread. */
#include "daemon/config.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

// ---- table types ------------------------------------------------------------------------

enum cfg_type { T_BOOL, T_INT, T_SIZE, T_U64, T_DOUBLE, T_STRING, T_ENUM };

/* Private flags next to CFG_IMMUTABLE / CFG_RUNTIME: open interval ends. */
#define CFG_MIN_OPEN 4u
#define CFG_MAX_OPEN 8u

/* Integers go through JSON doubles; above this they would not round-trip. */
#define CFG_INT_LIMIT 9007199254740992.0 // 2^53
#define NOMAX ((double)INFINITY)

struct cfg_row {
    const char *section, *name;
    enum cfg_type type;
    size_t off, size;         // offsetof / sizeof the field in struct dmn_config
    double min, max;          // numeric range (max NOMAX = unbounded); ENUM/STRING unused
    double def;               // default of numeric, BOOL and ENUM (index) knobs
    const char *def_s;        // default of STRING knobs
    const char *const *names; // ENUM choices, NULL-terminated; index = enum value
    unsigned flags;           // CFG_IMMUTABLE | CFG_RUNTIME, CFG_MIN_OPEN, CFG_MAX_OPEN
    const char *(*check)(const char *s); // STRING: NULL if fine, else why not
    const char *help;
};

/* Offsets that fail to compile when the field's type does not match the row's type. */
// The row macros stay as written (clang-format would read them as blocks).
// clang-format off
#define FLD(f) (((struct dmn_config *)0)->f)
#define OFFT(f, T) (offsetof(struct dmn_config, f) + 0 * sizeof(_Generic(FLD(f), T : 1)))

#define R_BOOL(s, k, f, d, fl, h) \
    {s, k, T_BOOL, OFFT(f, int), sizeof(int), 0, 1, d, NULL, NULL, fl, NULL, h}
#define R_INT(s, k, f, lo, hi, d, fl, h) \
    {s, k, T_INT, OFFT(f, int), sizeof(int), lo, hi, d, NULL, NULL, fl, NULL, h}
#define R_SIZE(s, k, f, lo, hi, d, fl, h) \
    {s, k, T_SIZE, OFFT(f, size_t), sizeof(size_t), lo, hi, d, NULL, NULL, fl, NULL, h}
#define R_U64(s, k, f, lo, hi, d, fl, h) \
    {s, k, T_U64, OFFT(f, uint64_t), sizeof(uint64_t), lo, hi, d, NULL, NULL, fl, NULL, h}
#define R_DBL(s, k, f, lo, hi, d, fl, h) \
    {s, k, T_DOUBLE, OFFT(f, double), sizeof(double), lo, hi, d, NULL, NULL, fl, NULL, h}
#define R_STR(s, k, f, d, chk, fl, h) \
    {s, k, T_STRING, OFFT(f, char *), sizeof(FLD(f)), 0, 0, 0, d, NULL, fl, chk, h}
#define R_ENUM(s, k, f, names, d, fl, h) \
    {s, k, T_ENUM, offsetof(struct dmn_config, f), sizeof(FLD(f)), 0, 0, d, NULL, names, fl, \
     NULL, h}
// clang-format on

/* ENUM knobs are read and written as int. */
static_assert(sizeof(enum cfg_dataset) == sizeof(int), "enum size");
static_assert(sizeof(enum net_opt_kind) == sizeof(int), "enum size");
static_assert(sizeof(enum net_sched_kind) == sizeof(int), "enum size");
static_assert(sizeof(enum svd_mode) == sizeof(int), "enum size");
static_assert(sizeof(enum svd_source) == sizeof(int), "enum size");
static_assert(sizeof(enum svd_rule) == sizeof(int), "enum size");
static_assert(sizeof(enum svd_grow) == sizeof(int), "enum size");

// ---- enum names (index = enum value) ----------------------------------------------------

static const char *const DATASET_NAMES[] = {"fashion-mnist", "mnist", "cifar10", "synthetic", NULL};
static const char *const OPT_NAMES[] = {"sgd", "adamw", NULL};
static const char *const NORM_NAMES[] = {"standard", "unit", NULL};
static const char *const INIT_NAMES[] = {"he", "torch", NULL};
static const char *const SCHED_NAMES[] = {"const", "step", "cosine", NULL};
static const char *const MODE_NAMES[] = {"rotate", "select", "factorize", NULL};
static const char *const SOURCE_NAMES[] = {"weights", "activations", NULL};
static const char *const RULE_NAMES[] = {"relative", "energy", "gap", NULL};
static const char *const GROW_NAMES[] = {"orthogonal", "gradmax", "mirror", NULL};
static const char *const VALUE_NAMES[] = {"energy", "fisher", NULL};
static const char *const CKFAIL_NAMES[] = {"pause", "stop", NULL};

// ---- string checks ----------------------------------------------------------------------

static const char *check_nonempty(const char *s)
{
    return s[0] ? NULL : "must not be empty";
}

/* HOST:PORT with a non-empty host and a port in 1..65535 ("[::1]:7070" works too). */
static const char *check_listen(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1]) return "is not HOST:PORT (e.g. 127.0.0.1:7070)";
    long port = 0;
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9' || port > 65535)
            return "has a port that is not 0..65535 (0 = any free port)";
        port = port * 10 + (*p - '0');
    }
    return port <= 65535 ? NULL : "has a port that is not 0..65535 (0 = any free port)";
}

// ---- the table --------------------------------------------------------------------------

#define IMM CFG_IMMUTABLE
#define RT CFG_RUNTIME
#define LO_OPEN CFG_MIN_OPEN
#define HI_OPEN CFG_MAX_OPEN

static const struct cfg_row CFG_ROWS[] = {
    R_ENUM("data", "dataset", data.dataset, DATASET_NAMES, CFG_DATA_FASHION_MNIST, IMM,
           "which data set to train on"),
    R_STR("data", "dir", data.dir, "/usr/share/datasets/fashion-mnist", check_nonempty, IMM,
          "directory of the IDX files (mnist, fashion-mnist; plain or .gz) or CIFAR-10 batches"),
    R_SIZE("data", "val_split", data.val_split, 0, 1e7, 5000, IMM,
           "training samples held out for validation"),
    R_SIZE("data", "crop_pad", data.crop_pad, 0, 16, 0, IMM,
           "random crop after zero padding by this many pixels (0 = off)"),
    R_BOOL("data", "flip", data.flip, 0, IMM, "random horizontal flip"),
    R_ENUM("data", "normalize", data.normalize, NORM_NAMES, CFG_NORM_STANDARD, IMM,
           "standard: per-channel mean / std of the training set; unit: pixels in [0, 1] as is"),

    R_SIZE("synthetic", "n_train", synthetic.n_train, 1, 1e7, 1024, IMM, "training samples"),
    R_SIZE("synthetic", "n_test", synthetic.n_test, 1, 1e7, 256, IMM, "test samples"),
    R_SIZE("synthetic", "channels", synthetic.channels, 1, 4, 1, IMM, "image channels"),
    R_SIZE("synthetic", "height", synthetic.height, 1, 512, 8, IMM, "image height"),
    R_SIZE("synthetic", "width", synthetic.width, 1, 512, 8, IMM, "image width"),
    R_SIZE("synthetic", "classes", synthetic.classes, 2, 256, 4, IMM, "number of classes"),
    R_DBL("synthetic", "noise", synthetic.noise, 0, 10, 0.3, IMM,
          "std of the noise added to each class template"),

    R_ENUM("optimizer", "type", optimizer.type, OPT_NAMES, NET_SGD, IMM, "optimizer"),
    R_DBL("optimizer", "lr", optimizer.lr, 0, 10, 0.05, RT | LO_OPEN,
          "base learning rate (PATCH /v1/train \"lr\")"),
    R_DBL("optimizer", "momentum", optimizer.momentum, 0, 1, 0.9, IMM | HI_OPEN, "SGD momentum"),
    R_BOOL("optimizer", "nesterov", optimizer.nesterov, 0, IMM, "SGD Nesterov momentum"),
    R_DBL("optimizer", "weight_decay", optimizer.weight_decay, 0, 1, 5e-4, IMM,
          "SGD: L2 added to the gradient; AdamW: decoupled decay"),
    R_DBL("optimizer", "beta1", optimizer.beta1, 0, 1, 0.9, IMM | HI_OPEN, "AdamW beta1"),
    R_DBL("optimizer", "beta2", optimizer.beta2, 0, 1, 0.999, IMM | HI_OPEN, "AdamW beta2"),
    R_DBL("optimizer", "eps", optimizer.eps, 0, 1, 1e-8, IMM | LO_OPEN, "AdamW epsilon"),
    R_DBL("optimizer", "group_lasso", optimizer.group_lasso, 0, 1, 0, RT,
          "group-lasso penalty coefficient on unit norms (PATCH /v1/train \"group_lasso\")"),

    R_ENUM("schedule", "type", schedule.type, SCHED_NAMES, NET_SCHED_COSINE, IMM,
           "learning-rate schedule"),
    R_SIZE("schedule", "warmup_steps", schedule.warmup_steps, 0, NOMAX, 0, IMM,
           "linear warm-up from 0 over this many steps"),
    R_DBL("schedule", "min_lr", schedule.min_lr, 0, 10, 0, IMM, "floor of the cosine schedule"),
    R_SIZE("schedule", "step_size", schedule.step_size, 1, NOMAX, 1000, IMM,
           "step schedule: multiply by gamma every this many steps"),
    R_DBL("schedule", "gamma", schedule.gamma, 0, 1, 0.1, IMM | LO_OPEN, "step schedule factor"),

    R_SIZE("train", "epochs", train.epochs, 1, 1e6, 10, RT, "epochs to train"),
    R_SIZE("train", "batch_size", train.batch_size, 1, 65536, 64, IMM, "mini-batch size"),
    R_INT("train", "threads", train.threads, 1, 256, 2, IMM, "OpenMP / OpenBLAS threads"),
    R_U64("train", "seed", train.seed, 0, NOMAX, 1, IMM,
          "seed of initialisation, data order and augmentation"),
    R_SIZE("train", "eval_every_steps", train.eval_every_steps, 0, NOMAX, 0, RT,
           "validate every this many steps (0 = once per epoch)"),
    R_DBL("train", "log_every_seconds", train.log_every_seconds, 0, 86400, 2.0, RT | LO_OPEN,
          "progress log interval"),
    R_ENUM("train", "init", train.init, INIT_NAMES, NET_INIT_HE, IMM,
           "he: He-normal weights, zero biases; torch: PyTorch's default uniform weights and "
           "biases"),

    R_BOOL("adapt", "enabled", adapt.enabled, 1, RT, "periodic width adaptation"),
    R_ENUM("adapt", "mode", adapt.mode, MODE_NAMES, SVD_MODE_SELECT, RT,
           "shrink surgery: rotate (U_k^T W), select (SOMP units), factorize (A B rank)"),
    R_ENUM("adapt", "source", adapt.source, SOURCE_NAMES, SVD_SRC_ACTIVATIONS, RT,
           "spectrum of the weights or of centred activations on a calibration batch"),
    R_ENUM("adapt", "rule", adapt.rule, RULE_NAMES, SVD_RULE_RELATIVE, RT,
           "rank rule: relative value, kept energy, or spectral gap"),
    R_ENUM("adapt", "grow_mode", adapt.grow_mode, GROW_NAMES, SVD_GROW_MIRROR, RT,
           "new units: orthogonal fan-in and zero fan-out, GradMax fan-out and zero fan-in, or "
           "mirror pairs (orthogonal fan-in, cancelling fan-out +v / -v)"),
    R_ENUM("adapt", "target_grow_mode", adapt.target_grow_mode, GROW_NAMES, SVD_GROW_ORTHOGONAL, RT,
           "new units of a growth toward adapt.target_params (grow_mode's choices; orthogonal: "
           "a narrow start grown 77x at step 200 reached 92.0%, mirror pairs 91.4%)"),
    R_DBL("adapt", "shrink_threshold", adapt.shrink_threshold, 0, 1, 0.05, RT,
          "relative rule: keep s_i >= shrink_threshold * s_1"),
    R_DBL("adapt", "energy_eps", adapt.energy_eps, 0, 1, 0.01, RT | HI_OPEN,
          "energy rule: keep 1 - energy_eps of sum s_i^2"),
    R_DBL("adapt", "gap_threshold", adapt.gap_threshold, 1, 1e6, 10, RT | LO_OPEN,
          "gap rule: cut at the first s_k / s_k+1 above this"),
    R_DBL("adapt", "expand_threshold", adapt.expand_threshold, 0, 1, 0.85, RT,
          "saturated (grows) when the rank rule at twice its cut keeps this fraction of the "
          "width"),
    R_DBL("adapt", "growth", adapt.growth, 0, 4, 1.0, RT | LO_OPEN,
          "grow by ceil(growth * width) units"),
    R_SIZE("adapt", "interval_steps", adapt.interval_steps, 1, NOMAX, 500, RT,
           "adapt every this many steps"),
    R_SIZE("adapt", "warmup_steps", adapt.warmup_steps, 0, NOMAX, 1000, RT,
           "no adaptation before this step"),
    R_SIZE("adapt", "cooldown_steps", adapt.cooldown_steps, 0, NOMAX, 1000, RT,
           "a layer that changed is not re-examined for this many steps"),
    R_SIZE("adapt", "protect_steps", adapt.protect_steps, 0, NOMAX, 3000, RT,
           "a layer that grew is not shrunk by the rank rule for this many steps (its new "
           "mirror pairs need time to separate)"),
    R_SIZE("adapt", "grow_patience", adapt.grow_patience, 1, 1e6, 2, RT,
           "consecutive saturated checks needed before growing"),
    R_DBL("adapt", "grow_gain", adapt.grow_gain, 0, 10, 0, RT,
          "a saturation growth is judged at its protection's end (or before the layer grows "
          "again) by cutting it back: a validation loss rise under this fraction keeps the cut "
          "and the layer grows no more (0 = off)"),
    R_SIZE("adapt", "calibration_samples", adapt.calibration_samples, 16, 65536, 512, RT,
           "samples in the calibration batch for activation spectra"),
    R_SIZE("adapt", "min_width", adapt.min_width, 1, 1 << 20, 4, RT, "no layer shrinks below"),
    R_SIZE("adapt", "max_width", adapt.max_width, 1, 1 << 20, 1024, RT, "no layer grows above"),
    R_SIZE("adapt", "param_budget", adapt.param_budget, 0, NOMAX, 0, RT,
           "growth stops at this many parameters (0 = no cap)"),
    R_SIZE("adapt", "target_params", adapt.target_params, 0, NOMAX, 0, RT,
           "steer the whole net into [0.95, 1] x this many parameters, from either side "
           "(0 = off: per-layer thresholds decide)"),
    R_DBL("adapt", "target_step", adapt.target_step, 0, 1, 0.5, RT | LO_OPEN,
          "a target pass changes this fraction of the parameters, more when adapt.target_by "
          "needs it"),
    R_DBL("adapt", "target_by", adapt.target_by, 0, 1, 0.5, RT,
          "the target is due by this fraction of the run: passes take the steps that reach it "
          "(0 = no deadline, steps of target_step)"),
    R_ENUM("adapt", "target_value", adapt.target_value, VALUE_NAMES, SVD_VALUE_FISHER, RT,
           "what a target pass weighs a unit it may cut by, per parameter: its direction's "
           "share of the activation energy, or the loss it carries (Fisher saliency)"),
    R_DBL("adapt", "stop_fraction", adapt.stop_fraction, 0, 1, 0.9, RT | LO_OPEN,
          "no periodic adaptation after this fraction of the run, so the last stretch trains "
          "the final widths (POST /v1/adapt still runs)"),
    R_DBL("adapt", "max_loss_jump", adapt.max_loss_jump, 0, 1e6, 0.1, RT,
          "roll back a surgery whose validation loss rises by more than this"),
    R_BOOL("adapt", "enable_shrink", adapt.enable_shrink, 1, RT, "allow shrinking"),
    R_BOOL("adapt", "enable_grow", adapt.enable_grow, 1, RT, "allow growing"),
    R_BOOL("adapt", "grow_after_shrink", adapt.grow_after_shrink, 0, RT,
           "saturated layers may still grow once the rank rule has cut the net, or has asked "
           "for a cut on grow_patience looks in a row (off: a net found over-sized is not "
           "grown back elsewhere)"),

    R_STR("daemon", "listen", daemon.listen, "127.0.0.1:7070", check_listen, IMM,
          "HTTP address; off loopback a token_file is required"),
    R_STR("daemon", "state_dir", daemon.state_dir, "state", check_nonempty, IMM,
          "checkpoints, logs and history live here"),
    R_SIZE("daemon", "checkpoint_every_steps", daemon.checkpoint_every_steps, 0, NOMAX, 1000, RT,
           "periodic checkpoint interval (0 = only on demand and at exit)"),
    R_STR("daemon", "token_file", daemon.token_file, "", NULL, IMM,
          "file holding the bearer token for mutating routes (\"\" = none)"),
    R_SIZE("daemon", "history_points", daemon.history_points, 10, 1e6, 1000, IMM,
           "points GET /v1/history answers with unless ?points= says otherwise"),
    R_SIZE("daemon", "header_timeout_ms", daemon.header_timeout_ms, 50, 600000, 10000, IMM,
           "a request must arrive whole within this (else 408)"),
    R_SIZE("daemon", "idle_timeout_ms", daemon.idle_timeout_ms, 50, 3600000, 30000, IMM,
           "an idle keep-alive connection is closed after this"),
    R_SIZE("daemon", "max_connections", daemon.max_connections, 1, 100000, 256, IMM,
           "connections served at once (more get 503)"),
    R_SIZE("daemon", "stream_queue_bytes", daemon.stream_queue_bytes, 1024, 64 << 20, 262144, IMM,
           "bytes waiting for one GET /v1/stream client before its events are dropped"),
    R_SIZE("daemon", "checkpoint_failure_limit", daemon.checkpoint_failure_limit, 1, 1e6, 3, RT,
           "consecutive failed checkpoints before on_checkpoint_failure applies"),
    R_ENUM("daemon", "on_checkpoint_failure", daemon.on_checkpoint_failure, CKFAIL_NAMES,
           CFG_CKFAIL_PAUSE, RT,
           "after checkpoint_failure_limit failures: pause (POST /v1/resume or a good "
           "checkpoint goes on) or stop (exit non-zero)"),
    R_DBL("daemon", "rollback_lr_factor", daemon.rollback_lr_factor, 0, 1, 0.5, RT | HI_OPEN,
          "on divergence roll back to the last-known-good checkpoint with the learning rate "
          "times this (0 = no rollback: pause)"),
    R_DBL("daemon", "divergence_ratio", daemon.divergence_ratio, 1, 1e12, 10, RT | LO_OPEN,
          "diverged: a non-finite loss, or a validation loss above this times the best one "
          "(and above ln(classes)); good: finite and not above that"),
    R_SIZE("daemon", "max_rollbacks", daemon.max_rollbacks, 0, 1000, 5, RT,
           "rollbacks in a row without a new good checkpoint before the run pauses instead"),
};
#define N_ROWS (sizeof CFG_ROWS / sizeof CFG_ROWS[0])

static const struct {
    const char *name, *help;
} CFG_SECTIONS[] = {
    {"data", "the training data"},
    {"synthetic", "the generated data set (data.dataset \"synthetic\")"},
    {"model", "the network: an array of layers, the last one the dense classifier"},
    {"optimizer", "the optimizer"},
    {"schedule", "the learning-rate schedule"},
    {"train", "the training loop"},
    {"adapt", "SVD width adaptation (GET/PATCH /v1/policy), all runtime"},
    {"daemon", "the daemon process"},
};
#define N_SECTIONS (sizeof CFG_SECTIONS / sizeof CFG_SECTIONS[0])

/* Keys a patch of one section may use for a knob of another (PATCH /v1/train "lr"). */
static const struct {
    const char *section, *name, *target_section, *target_name;
} CFG_ALIASES[] = {
    {"train", "lr", "optimizer", "lr"},
    {"train", "group_lasso", "optimizer", "group_lasso"},
    {"train", "checkpoint_every_steps", "daemon", "checkpoint_every_steps"},
};
#define N_ALIASES (sizeof CFG_ALIASES / sizeof CFG_ALIASES[0])

// ---- the layer-key table ----------------------------------------------------------------

struct cfg_lkey {
    const char *name;
    enum cfg_type type; // T_SIZE, T_BOOL or T_STRING
    size_t off;         // offsetof(struct net_layer_spec, ...)
    unsigned kinds;     // bit (1 << kind) set: the key is valid for that kind
    unsigned required;  // bit set: the key must be given for that kind
    double min, max, def;
    const char *help;
};

#define KB(k) (1u << (k))
#define ALL_KINDS ((1u << NET_KIND_COUNT) - 1u)
// clang-format off
#define LOFF(f, T)                                 \
    (offsetof(struct net_layer_spec, f) +          \
     0 * sizeof(_Generic(((struct net_layer_spec *)0)->f, T: 1)))
// clang-format on

static const struct cfg_lkey CFG_LKEYS[] = {
    {"out", T_SIZE, LOFF(out, size_t), KB(NET_DENSE) | KB(NET_CONV) | KB(NET_RES),
     KB(NET_DENSE) | KB(NET_CONV) | KB(NET_RES), 1, 1 << 20, 0, "output units or channels"},
    {"width", T_SIZE, LOFF(width, size_t), KB(NET_RES), KB(NET_RES), 1, 1 << 20, 0,
     "inner width (channels of the first conv)"},
    {"k", T_SIZE, LOFF(k, size_t), KB(NET_CONV) | KB(NET_MAXPOOL), KB(NET_CONV), 1, 31, 2,
     "kernel size"},
    {"stride", T_SIZE, LOFF(stride, size_t), KB(NET_CONV) | KB(NET_MAXPOOL) | KB(NET_RES), 0, 1, 31,
     1, "stride (maxpool: defaults to k)"},
    {"pad", T_SIZE, LOFF(pad, size_t), KB(NET_CONV), 0, 0, 31, 0, "zero padding"},
    {"bias", T_BOOL, LOFF(bias, int), KB(NET_DENSE) | KB(NET_CONV), 0, 0, 1, 1, "learned bias"},
    {"rank", T_SIZE, LOFF(rank, size_t), KB(NET_DENSE) | KB(NET_CONV), 0, 0, 1 << 20, 0,
     "factorized rank (0 = plain)"},
    {"bn", T_BOOL, LOFF(bn, int), KB(NET_RES), 0, 0, 1, 1, "batch norm after each conv"},
    {"name", T_STRING, LOFF(name, char *), ALL_KINDS, 0, 0, 0, 0,
     "unique name of [A-Za-z0-9_-], under 32 bytes (default: the engine's)"},
};
#define N_LKEYS (sizeof CFG_LKEYS / sizeof CFG_LKEYS[0])

// ---- small helpers ----------------------------------------------------------------------

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Shortest text that reads back as v: integers plainly, else %.15g or %.17g. */
static const char *fmt_num(char *buf, size_t n, double v)
{
    if (isinf(v))
        snprintf(buf, n, v > 0 ? "inf" : "-inf");
    else if (isnan(v))
        snprintf(buf, n, "nan");
    else if (v == floor(v) && fabs(v) < 1e18)
        snprintf(buf, n, "%.0f", v);
    else {
        snprintf(buf, n, "%.15g", v);
        if (strtod(buf, NULL) != v) snprintf(buf, n, "%.17g", v);
    }
    return buf;
}

static const char *range_str(char *buf, size_t n, const struct cfg_row *r)
{
    char lo[32], hi[32];
    snprintf(buf, n, "%c%s, %s%c", (r->flags & CFG_MIN_OPEN) ? '(' : '[',
             fmt_num(lo, sizeof lo, r->min), fmt_num(hi, sizeof hi, r->max),
             ((r->flags & CFG_MAX_OPEN) || isinf(r->max)) ? ')' : ']');
    return buf;
}

static const char *join_names(char *buf, size_t n, const char *const *names)
{
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; names[i] && len < n; i++) {
        int w = snprintf(buf + len, n - len, "%s%s", i ? ", " : "", names[i]);
        if (w < 0) break;
        len += (size_t)w;
    }
    return buf;
}

/* A JSON value for a message: `string "abc"`, `1.5`, `true`, `null`, `an object`. */
static const char *describe(char *buf, size_t n, const cJSON *j)
{
    if (cJSON_IsString(j)) {
        const char *s = j->valuestring;
        size_t len = strlen(s);
        snprintf(buf, n, "string \"%.40s%s\"", s, len > 40 ? "..." : "");
    } else if (cJSON_IsNumber(j))
        fmt_num(buf, n, j->valuedouble);
    else if (cJSON_IsTrue(j))
        snprintf(buf, n, "true");
    else if (cJSON_IsFalse(j))
        snprintf(buf, n, "false");
    else if (cJSON_IsNull(j))
        snprintf(buf, n, "null");
    else if (cJSON_IsArray(j))
        snprintf(buf, n, "an array");
    else if (cJSON_IsObject(j))
        snprintf(buf, n, "an object");
    else
        snprintf(buf, n, "an invalid value");
    return buf;
}

/* Levenshtein distance for "did you mean" hints; SIZE_MAX for long strings. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];
    if (la >= 64 || lb >= 64) return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Keeps the closest candidate seen so far (close enough to be a typo). */
static void suggest(const char **best, size_t *best_d, const char *key, const char *cand)
{
    size_t d = edit_distance(key, cand), len = strlen(key);
    size_t limit = len / 3 > 2 ? len / 3 : 2;
    if (d <= limit && d < len && d < *best_d) {
        *best = cand;
        *best_d = d;
    }
}

/* First key that appears twice in an object, or NULL (cJSON keeps both silently). */
static const char *duplicate_key(const cJSON *obj)
{
    for (const cJSON *a = obj->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0) return a->string;
    return NULL;
}

/* 0 when o is an object without a repeated key; else -EINVAL with "WHERE: ..." in err. */
static int check_object(const cJSON *o, const char *where, char *err, size_t errlen)
{
    char vb[80];
    if (!cJSON_IsObject(o)) {
        seterr(err, errlen, "%s: expected an object, got %s", where, describe(vb, sizeof vb, o));
        return -EINVAL;
    }
    const char *dup = duplicate_key(o);
    if (dup) {
        seterr(err, errlen, "%s: duplicate key \"%s\"", where, dup);
        return -EINVAL;
    }
    return 0;
}

static int section_index(const char *name)
{
    for (size_t i = 0; i < N_SECTIONS; i++)
        if (strcmp(CFG_SECTIONS[i].name, name) == 0) return (int)i;
    return -1;
}

static const struct cfg_row *find_row(const char *section, const char *name)
{
    for (size_t i = 0; i < N_ROWS; i++)
        if (strcmp(CFG_ROWS[i].section, section) == 0 && strcmp(CFG_ROWS[i].name, name) == 0)
            return &CFG_ROWS[i];
    return NULL;
}

static const struct cfg_row *find_alias(const char *section, const char *name)
{
    for (size_t i = 0; i < N_ALIASES; i++)
        if (strcmp(CFG_ALIASES[i].section, section) == 0 && strcmp(CFG_ALIASES[i].name, name) == 0)
            return find_row(CFG_ALIASES[i].target_section, CFG_ALIASES[i].target_name);
    return NULL;
}

static int is_integer_type(enum cfg_type t)
{
    return t == T_INT || t == T_SIZE || t == T_U64;
}

// ---- reading and writing one knob -------------------------------------------------------

static void *field(struct dmn_config *c, const struct cfg_row *r)
{
    return (char *)c + r->off;
}

static const void *cfield(const struct dmn_config *c, const struct cfg_row *r)
{
    return (const char *)c + r->off;
}

/* Numeric value of a BOOL, INT, SIZE, U64, DOUBLE or ENUM knob. */
static double get_num(const struct dmn_config *c, const struct cfg_row *r)
{
    const void *p = cfield(c, r);
    switch (r->type) {
    case T_BOOL:
    case T_INT:
    case T_ENUM: return (double)*(const int *)p;
    case T_SIZE: return (double)*(const size_t *)p;
    case T_U64: return (double)*(const uint64_t *)p;
    case T_DOUBLE: return *(const double *)p;
    case T_STRING: break;
    }
    return 0;
}

static void set_num(struct dmn_config *c, const struct cfg_row *r, double v)
{
    void *p = field(c, r);
    switch (r->type) {
    case T_BOOL:
    case T_INT:
    case T_ENUM: *(int *)p = (int)v; break;
    case T_SIZE: *(size_t *)p = (size_t)v; break;
    case T_U64: *(uint64_t *)p = (uint64_t)v; break;
    case T_DOUBLE: *(double *)p = v; break;
    case T_STRING: break;
    }
}

/* Copies s into a fixed buffer of cap bytes with zero fill (memcmp-stable). */
static void set_str(char *dst, size_t cap, const char *s)
{
    memset(dst, 0, cap);
    memcpy(dst, s, strlen(s) < cap ? strlen(s) : cap - 1);
}

/* Range check of a numeric value for key (already formatted "section.name"). */
static int check_range(const struct cfg_row *r, const char *key, double v, char *err, size_t errlen)
{
    char vb[32], rb[80];
    if (!isfinite(v)) {
        seterr(err, errlen, "%s: %s is not a finite number", key, fmt_num(vb, sizeof vb, v));
        return -EINVAL;
    }
    if (is_integer_type(r->type) && v != floor(v)) {
        seterr(err, errlen, "%s: %s is not an integer", key, fmt_num(vb, sizeof vb, v));
        return -EINVAL;
    }
    if (is_integer_type(r->type) && v > CFG_INT_LIMIT) {
        seterr(err, errlen, "%s: %s is too large (integers stop at 2^53 = 9007199254740992)", key,
               fmt_num(vb, sizeof vb, v));
        return -EINVAL;
    }
    int low = (r->flags & CFG_MIN_OPEN) ? v <= r->min : v < r->min;
    int high = (r->flags & CFG_MAX_OPEN) ? v >= r->max : v > r->max;
    if (low || high) {
        seterr(err, errlen, "%s: %s is out of range %s", key, fmt_num(vb, sizeof vb, v),
               range_str(rb, sizeof rb, r));
        return -EINVAL;
    }
    return 0;
}

static size_t enum_count(const struct cfg_row *r)
{
    size_t n = 0;
    while (r->names[n]) n++;
    return n;
}

/* Sets one knob from a JSON value after checking type, range, choices and hook. */
static int apply_value(struct dmn_config *c, const struct cfg_row *r, const cJSON *v, char *err,
                       size_t errlen)
{
    char key[96], vb[80], nb[256];
    snprintf(key, sizeof key, "%s.%s", r->section, r->name);
    switch (r->type) {
    case T_BOOL:
        if (!cJSON_IsBool(v)) {
            seterr(err, errlen, "%s: expected true or false, got %s", key,
                   describe(vb, sizeof vb, v));
            return -EINVAL;
        }
        set_num(c, r, cJSON_IsTrue(v) ? 1 : 0);
        return 0;
    case T_INT:
    case T_SIZE:
    case T_U64:
    case T_DOUBLE: {
        if (!cJSON_IsNumber(v)) {
            seterr(err, errlen, "%s: expected %s, got %s", key,
                   is_integer_type(r->type) ? "an integer" : "a number",
                   describe(vb, sizeof vb, v));
            return -EINVAL;
        }
        int rc = check_range(r, key, v->valuedouble, err, errlen);
        if (rc < 0) return rc;
        set_num(c, r, v->valuedouble);
        return 0;
    }
    case T_STRING: {
        if (!cJSON_IsString(v)) {
            seterr(err, errlen, "%s: expected a string, got %s", key, describe(vb, sizeof vb, v));
            return -EINVAL;
        }
        size_t len = strlen(v->valuestring);
        if (len >= r->size) {
            seterr(err, errlen, "%s: a string of %zu bytes is too long (at most %zu)", key, len,
                   r->size - 1);
            return -EINVAL;
        }
        const char *why = r->check ? r->check(v->valuestring) : NULL;
        if (why) {
            seterr(err, errlen, "%s: \"%s\" %s", key, v->valuestring, why);
            return -EINVAL;
        }
        set_str(field(c, r), r->size, v->valuestring);
        return 0;
    }
    case T_ENUM:
        if (cJSON_IsString(v)) {
            for (size_t i = 0; r->names[i]; i++)
                if (strcmp(r->names[i], v->valuestring) == 0) {
                    set_num(c, r, (double)i);
                    return 0;
                }
        }
        seterr(err, errlen, "%s: %s is not one of: %s", key, describe(vb, sizeof vb, v),
               join_names(nb, sizeof nb, r->names));
        return -EINVAL;
    }
    return -EINVAL;
}

// ---- sections ---------------------------------------------------------------------------

/* Applies the members of one section's object. aliases: also accept CFG_ALIASES keys. */
static int apply_section(struct dmn_config *c, const char *section, const cJSON *obj,
                         unsigned allow, int aliases, char *err, size_t errlen)
{
    if (check_object(obj, section, err, errlen) < 0) return -EINVAL;
    for (const cJSON *it = obj->child; it; it = it->next) {
        const struct cfg_row *r = find_row(section, it->string);
        if (!r && aliases) r = find_alias(section, it->string);
        if (!r) {
            const char *best = NULL;
            size_t best_d = SIZE_MAX;
            for (size_t i = 0; i < N_ROWS; i++)
                if (strcmp(CFG_ROWS[i].section, section) == 0)
                    suggest(&best, &best_d, it->string, CFG_ROWS[i].name);
            for (size_t i = 0; aliases && i < N_ALIASES; i++)
                if (strcmp(CFG_ALIASES[i].section, section) == 0)
                    suggest(&best, &best_d, it->string, CFG_ALIASES[i].name);
            seterr(err, errlen, "%s: unknown key \"%s\"%s%s%s", section, it->string,
                   best ? " (did you mean \"" : "", best ? best : "", best ? "\"?)" : "");
            return -EINVAL;
        }
        if (!(r->flags & allow & CFG_ANY)) {
            seterr(err, errlen, "%s.%s cannot be changed while running", r->section, r->name);
            return -EINVAL;
        }
        int rc = apply_value(c, r, it, err, errlen);
        if (rc < 0) return rc;
    }
    return 0;
}

// ---- model ------------------------------------------------------------------------------

static const char *kind_name(enum net_kind k)
{
    const char *s = (unsigned)k < NET_KIND_COUNT ? net_kind_name(k) : NULL;
    return s ? s : "?";
}

static const char *kind_list(char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (int k = 0; k < NET_KIND_COUNT && len < n; k++) {
        int w = snprintf(buf + len, n - len, "%s%s", k ? ", " : "", kind_name((enum net_kind)k));
        if (w < 0) break;
        len += (size_t)w;
    }
    return buf;
}

/* "model[3] (conv \"c2\")" or "model[3] (conv)". */
static const char *layer_label(char *buf, size_t n, size_t i, const struct net_layer_spec *s)
{
    if (s->name[0])
        snprintf(buf, n, "model[%zu] (%s \"%s\")", i, kind_name(s->kind), s->name);
    else
        snprintf(buf, n, "model[%zu] (%s)", i, kind_name(s->kind));
    return buf;
}

static const char *name_problem(const char *s)
{
    if (!s[0]) return "must not be empty";
    if (strlen(s) >= NET_NAME_MAX) return "is too long (at most 31 bytes)";
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return "may only hold letters, digits, '_' and '-'";
    return NULL;
}

static size_t lkey_get(const struct net_layer_spec *s, const struct cfg_lkey *k)
{
    const char *p = (const char *)s + k->off;
    return k->type == T_BOOL ? (size_t) * (const int *)p : *(const size_t *)p;
}

static void lkey_set(struct net_layer_spec *s, const struct cfg_lkey *k, size_t v)
{
    char *p = (char *)s + k->off;
    if (k->type == T_BOOL)
        *(int *)p = (int)v;
    else
        *(size_t *)p = v;
}

static const char *valid_keys(char *buf, size_t n, enum net_kind kind)
{
    size_t len = (size_t)snprintf(buf, n, "type");
    for (size_t i = 0; i < N_LKEYS && len < n; i++)
        if (CFG_LKEYS[i].kinds & KB(kind)) {
            int w = snprintf(buf + len, n - len, ", %s", CFG_LKEYS[i].name);
            if (w < 0) break;
            len += (size_t)w;
        }
    return buf;
}

/* One element of "model" into *s (zeroed first, so fields the kind ignores stay 0). */
static int parse_layer(struct net_layer_spec *s, size_t i, const cJSON *el, char *err,
                       size_t errlen)
{
    char vb[80], lb[96], kb[160];
    snprintf(lb, sizeof lb, "model[%zu]", i);
    if (check_object(el, lb, err, errlen) < 0) return -EINVAL;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(el, "type");
    int kind = cJSON_IsString(type) ? net_kind_from_name(type->valuestring) : -1;
    if (kind < 0 || kind >= NET_KIND_COUNT) {
        if (!type)
            seterr(err, errlen, "model[%zu]: missing \"type\" (one of: %s)", i,
                   kind_list(kb, sizeof kb));
        else
            seterr(err, errlen, "model[%zu]: unknown layer type %s (one of: %s)", i,
                   describe(vb, sizeof vb, type), kind_list(kb, sizeof kb));
        return -EINVAL;
    }
    memset(s, 0, sizeof *s);
    s->kind = (enum net_kind)kind;
    unsigned seen = 0;
    for (size_t k = 0; k < N_LKEYS; k++)
        if ((CFG_LKEYS[k].kinds & KB(kind)) && CFG_LKEYS[k].type != T_STRING)
            lkey_set(s, &CFG_LKEYS[k], (size_t)CFG_LKEYS[k].def);

    for (const cJSON *it = el->child; it; it = it->next) {
        if (strcmp(it->string, "type") == 0) continue;
        size_t k = 0;
        while (k < N_LKEYS && strcmp(CFG_LKEYS[k].name, it->string) != 0) k++;
        const struct cfg_lkey *lk = k < N_LKEYS ? &CFG_LKEYS[k] : NULL;
        if (!lk || !(lk->kinds & KB(kind))) {
            seterr(err, errlen, "model[%zu]: key \"%s\" is not valid for a %s layer (valid: %s)", i,
                   it->string, kind_name(s->kind), valid_keys(kb, sizeof kb, s->kind));
            return -EINVAL;
        }
        seen |= 1u << k;
        if (lk->type == T_STRING) {
            const char *why =
                cJSON_IsString(it) ? name_problem(it->valuestring) : "must be a string";
            if (why) {
                seterr(err, errlen, "model[%zu] (%s): name %s %s", i, kind_name(s->kind),
                       describe(vb, sizeof vb, it), why);
                return -EINVAL;
            }
            set_str(s->name, sizeof s->name, it->valuestring);
        } else if (lk->type == T_BOOL) {
            if (!cJSON_IsBool(it)) {
                seterr(err, errlen, "%s: %s: expected true or false, got %s",
                       layer_label(lb, sizeof lb, i, s), lk->name, describe(vb, sizeof vb, it));
                return -EINVAL;
            }
            lkey_set(s, lk, cJSON_IsTrue(it) ? 1 : 0);
        } else {
            double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
            if (!cJSON_IsNumber(it) || v != floor(v) || v < lk->min || v > lk->max) {
                char mn[32], mx[32];
                seterr(err, errlen, "%s: %s: %s is not an integer in [%s, %s]",
                       layer_label(lb, sizeof lb, i, s), lk->name, describe(vb, sizeof vb, it),
                       fmt_num(mn, sizeof mn, lk->min), fmt_num(mx, sizeof mx, lk->max));
                return -EINVAL;
            }
            lkey_set(s, lk, (size_t)v);
        }
    }
    for (size_t k = 0; k < N_LKEYS; k++)
        if ((CFG_LKEYS[k].required & KB(kind)) && !(seen & (1u << k))) {
            seterr(err, errlen, "%s: missing required key \"%s\"", layer_label(lb, sizeof lb, i, s),
                   CFG_LKEYS[k].name);
            return -EINVAL;
        }
    // A maxpool's stride defaults to its window; store it explicitly so it round-trips.
    if (s->kind == NET_MAXPOOL) {
        size_t k = 0;
        while (strcmp(CFG_LKEYS[k].name, "stride") != 0) k++;
        if (!(seen & (1u << k))) s->stride = s->k;
    }
    return 0;
}

static int parse_model(struct dmn_config *c, const cJSON *arr, char *err, size_t errlen)
{
    char vb[80];
    if (!cJSON_IsArray(arr)) {
        seterr(err, errlen, "model: expected an array of layers, got %s",
               describe(vb, sizeof vb, arr));
        return -EINVAL;
    }
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    if (n == 0 || n > CFG_MAX_LAYERS) {
        seterr(err, errlen, "model: %zu layers; a model has 1 to %d", n, CFG_MAX_LAYERS);
        return -EINVAL;
    }
    memset(c->model, 0, sizeof c->model);
    for (const cJSON *el = arr->child; el; el = el->next, i++) {
        int rc = parse_layer(&c->model[i], i, el, err, errlen);
        if (rc < 0) return rc;
    }
    c->n_layers = n;
    return 0;
}

// ---- whole documents --------------------------------------------------------------------

/* Applies {"section": {...}, ...}. model_ok: "model" replaces the model (loading only). */
static int apply_root(struct dmn_config *c, const cJSON *root, unsigned allow, int model_ok,
                      int aliases, char *err, size_t errlen)
{
    char vb[80];
    if (!cJSON_IsObject(root)) {
        seterr(err, errlen, "expected a JSON object of sections, got %s",
               describe(vb, sizeof vb, root));
        return -EINVAL;
    }
    const char *dup = duplicate_key(root);
    if (dup) {
        seterr(err, errlen, "duplicate section \"%s\"", dup);
        return -EINVAL;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        int rc;
        if (section_index(it->string) < 0) {
            const char *best = NULL;
            size_t best_d = SIZE_MAX;
            char names[160];
            size_t len = 0;
            names[0] = 0;
            for (size_t i = 0; i < N_SECTIONS; i++) {
                suggest(&best, &best_d, it->string, CFG_SECTIONS[i].name);
                len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "",
                                        CFG_SECTIONS[i].name);
            }
            seterr(err, errlen, "unknown section \"%s\"%s%s%s (sections: %s)", it->string,
                   best ? " (did you mean \"" : "", best ? best : "", best ? "\"?)" : "", names);
            return -EINVAL;
        }
        if (strcmp(it->string, "model") == 0) {
            if (!model_ok) {
                seterr(err, errlen, "model cannot be patched; load a new config instead");
                return -EINVAL;
            }
            rc = parse_model(c, it, err, errlen);
        } else {
            rc = apply_section(c, it->string, it, allow, aliases, err, errlen);
        }
        if (rc < 0) return rc;
    }
    return 0;
}

void cfg_defaults(struct dmn_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_ROWS; i++) {
        const struct cfg_row *r = &CFG_ROWS[i];
        if (r->type == T_STRING)
            set_str(field(c, r), r->size, r->def_s);
        else
            set_num(c, r, r->def);
    }
}

int cfg_load_json(struct dmn_config *c, const char *text, size_t len, char *err, size_t errlen)
{
    struct dmn_config tmp;
    const char *end = NULL;
    int rc = -EINVAL;
    cJSON *root = NULL;

    if (!text || !len) {
        seterr(err, errlen, "empty document (expected a JSON object)");
        return -EINVAL;
    }
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    // cJSON stops after the first value; anything but white space after it is an error too.
    if (root && end) {
        while (end < text + len &&
               (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r' || *end == '\0'))
            end++;
    }
    if (!root || (end && end < text + len)) {
        size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        size_t line = 1, col = 1;
        char near[24];
        size_t k = 0;
        for (size_t i = 0; i < off; i++) {
            if (text[i] == '\n')
                line++, col = 1;
            else
                col++;
        }
        for (size_t i = off; i < len && k + 1 < sizeof near && text[i] != '\n'; i++)
            near[k++] = (text[i] >= 32 && text[i] < 127) ? text[i] : ' ';
        near[k] = 0;
        seterr(err, errlen, "JSON syntax error at line %zu, column %zu (offset %zu)%s%s%s", line,
               col, off, root ? ": unexpected text after the document" : "", k ? " near: " : "",
               near);
        goto fail;
    }
    cfg_defaults(&tmp);
    if ((rc = apply_root(&tmp, root, CFG_ANY, 1, 0, err, errlen)) < 0) goto fail;
    if (!cJSON_GetObjectItemCaseSensitive(root, "model")) {
        seterr(err, errlen, "model: missing (an array of layers is required)");
        rc = -EINVAL;
        goto fail;
    }
    if ((rc = cfg_validate(&tmp, err, errlen)) < 0) goto fail;
    memcpy(c, &tmp, sizeof tmp);
    rc = 0;
fail:
    cJSON_Delete(root);
    return rc;
}

#define CFG_FILE_MAX (1u << 20)

int cfg_load_file(struct dmn_config *c, const char *path, char *err, size_t errlen)
{
    char msg[512];
    char *buf = NULL;
    size_t n = 0;
    int rc;
    FILE *f = fopen(path, "rb");

    if (!f) {
        rc = -errno;
        seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return rc;
    }
    if (!(buf = malloc(CFG_FILE_MAX + 1))) {
        rc = -ENOMEM;
        seterr(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    n = fread(buf, 1, CFG_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = -EIO;
        seterr(err, errlen, "%s: read error", path);
        goto fail;
    }
    if (n > CFG_FILE_MAX) {
        rc = -EFBIG;
        seterr(err, errlen, "%s: larger than %u bytes", path, CFG_FILE_MAX);
        goto fail;
    }
    msg[0] = 0;
    rc = cfg_load_json(c, buf, n, msg, sizeof msg);
    if (rc < 0) seterr(err, errlen, "%s: %s", path, msg);
fail:
    free(buf);
    fclose(f);
    return rc;
}

int cfg_patch(struct dmn_config *c, const char *section, const cJSON *obj, unsigned allow_flags,
              char *err, size_t errlen)
{
    struct dmn_config tmp;
    int rc;

    memcpy(&tmp, c, sizeof tmp);
    if (!section) {
        rc = apply_root(&tmp, obj, allow_flags, 0, 1, err, errlen);
    } else if (section_index(section) < 0) {
        seterr(err, errlen, "unknown section \"%s\"", section);
        return -EINVAL;
    } else if (strcmp(section, "model") == 0) {
        seterr(err, errlen, "model cannot be patched; load a new config instead");
        return -EINVAL;
    } else {
        rc = apply_section(&tmp, section, obj, allow_flags, 1, err, errlen);
    }
    if (rc < 0) return rc;
    if ((rc = cfg_validate(&tmp, err, errlen)) < 0) return rc;
    memcpy(c, &tmp, sizeof tmp);
    return 0;
}

int cfg_set(struct dmn_config *c, const char *key, const char *value, unsigned allow_flags,
            char *err, size_t errlen)
{
    char section[32];
    const char *dot = strchr(key, '.');
    const struct cfg_row *r;
    cJSON *obj = NULL, *item = NULL;
    int rc = -EINVAL;

    if (!dot || (size_t)(dot - key) >= sizeof section) {
        seterr(err, errlen, "%s: expected SECTION.KEY (e.g. adapt.shrink_threshold)", key);
        return -EINVAL;
    }
    memcpy(section, key, (size_t)(dot - key));
    section[dot - key] = 0;
    r = find_row(section, dot + 1);
    if (!r) r = find_alias(section, dot + 1);
    if (r && r->type == T_BOOL && (!strcmp(value, "true") || !strcmp(value, "false"))) {
        item = cJSON_CreateBool(strcmp(value, "true") == 0);
    } else if (r && r->type != T_STRING && r->type != T_ENUM && r->type != T_BOOL) {
        char *end = NULL;
        double v = strtod(value, &end);
        if (!value[0] || *end) {
            seterr(err, errlen, "%s: expected a number, got \"%s\"", key, value);
            return -EINVAL;
        }
        item = cJSON_CreateNumber(v);
    } else {
        // Strings, enums, unknown keys and bad booleans: apply_value reports the problem.
        item = cJSON_CreateString(value);
    }
    if (!item || !(obj = cJSON_CreateObject())) {
        cJSON_Delete(item);
        seterr(err, errlen, "out of memory");
        return -ENOMEM;
    }
    cJSON_AddItemToObject(obj, dot + 1, item);
    rc = cfg_patch(c, section, obj, allow_flags, err, errlen);
    cJSON_Delete(obj);
    return rc;
}

// ---- validation -------------------------------------------------------------------------

static size_t dataset_train_size(const struct dmn_config *c)
{
    switch (c->data.dataset) {
    case CFG_DATA_FASHION_MNIST:
    case CFG_DATA_MNIST: return 60000;
    case CFG_DATA_CIFAR10: return 50000;
    case CFG_DATA_SYNTHETIC: return c->synthetic.n_train;
    }
    return 0;
}

static int is_loopback(const char *listen)
{
    const char *colon = strrchr(listen, ':');
    size_t n = colon ? (size_t)(colon - listen) : strlen(listen);
    return strncmp(listen, "127.", 4) == 0 || (n == 9 && !strncmp(listen, "localhost", 9)) ||
           (n == 5 && !strncmp(listen, "[::1]", 5));
}

static int validate_model(const struct dmn_config *c, char *err, size_t errlen)
{
    char lb[96], vb[32], mn[32], mx[32];
    if (c->n_layers == 0 || c->n_layers > CFG_MAX_LAYERS) {
        seterr(err, errlen, "model: %zu layers; a model has 1 to %d", c->n_layers, CFG_MAX_LAYERS);
        return -EINVAL;
    }
    for (size_t i = 0; i < c->n_layers; i++) {
        const struct net_layer_spec *s = &c->model[i];
        if ((unsigned)s->kind >= NET_KIND_COUNT) {
            seterr(err, errlen, "model[%zu]: invalid layer kind %d", i, (int)s->kind);
            return -EINVAL;
        }
        for (size_t k = 0; k < N_LKEYS; k++) {
            const struct cfg_lkey *lk = &CFG_LKEYS[k];
            if (!(lk->kinds & KB(s->kind)) || lk->type == T_STRING) continue;
            double v = (double)lkey_get(s, lk);
            if (v < lk->min || v > lk->max) {
                seterr(err, errlen, "%s: %s %s is out of range [%s, %s]",
                       layer_label(lb, sizeof lb, i, s), lk->name, fmt_num(vb, sizeof vb, v),
                       fmt_num(mn, sizeof mn, lk->min), fmt_num(mx, sizeof mx, lk->max));
                return -EINVAL;
            }
        }
        if (!memchr(s->name, 0, sizeof s->name)) {
            seterr(err, errlen, "model[%zu]: name is not terminated", i);
            return -EINVAL;
        }
        if (!s->name[0]) continue;
        const char *why = name_problem(s->name);
        if (why) {
            seterr(err, errlen, "%s: name %s", layer_label(lb, sizeof lb, i, s), why);
            return -EINVAL;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->model[j].name, s->name) == 0) {
                seterr(err, errlen, "model[%zu]: duplicate layer name \"%s\" (also model[%zu])", i,
                       s->name, j);
                return -EINVAL;
            }
    }
    size_t last = c->n_layers - 1, classes = cfg_n_classes(c);
    const struct net_layer_spec *s = &c->model[last];
    if (s->kind != NET_DENSE) {
        seterr(err, errlen, "%s: the last layer must be dense (the classifier with %zu outputs)",
               layer_label(lb, sizeof lb, last, s), classes);
        return -EINVAL;
    }
    if (s->out != classes) {
        seterr(err, errlen, "%s: out %zu must equal the %zu classes of %s",
               layer_label(lb, sizeof lb, last, s), s->out, classes,
               DATASET_NAMES[c->data.dataset]);
        return -EINVAL;
    }
    return 0;
}

int cfg_validate(const struct dmn_config *c, char *err, size_t errlen)
{
    char key[96], vb[32], wb[32];
    int rc;

    for (size_t i = 0; i < N_ROWS; i++) {
        const struct cfg_row *r = &CFG_ROWS[i];
        snprintf(key, sizeof key, "%s.%s", r->section, r->name);
        if (r->type == T_STRING) {
            const char *s = cfield(c, r);
            const char *why = !memchr(s, 0, r->size) ? "is not terminated"
                              : r->check             ? r->check(s)
                                                     : NULL;
            if (why) {
                seterr(err, errlen, "%s: \"%.*s\" %s", key, (int)strnlen(s, r->size), s, why);
                return -EINVAL;
            }
        } else if (r->type == T_ENUM || r->type == T_BOOL) {
            double v = get_num(c, r);
            double n = r->type == T_BOOL ? 2 : (double)enum_count(r);
            if (v < 0 || v >= n) {
                seterr(err, errlen, "%s: invalid value %s", key, fmt_num(vb, sizeof vb, v));
                return -EINVAL;
            }
        } else if ((rc = check_range(r, key, get_num(c, r), err, errlen)) < 0) {
            return rc;
        }
    }
    if ((rc = validate_model(c, err, errlen)) < 0) return rc;
    if (c->adapt.max_width < c->adapt.min_width) {
        seterr(err, errlen, "adapt.max_width (%zu) must be >= adapt.min_width (%zu)",
               c->adapt.max_width, c->adapt.min_width);
        return -EINVAL;
    }
    if (c->schedule.min_lr > c->optimizer.lr) {
        seterr(err, errlen, "schedule.min_lr (%s) must not exceed optimizer.lr (%s)",
               fmt_num(vb, sizeof vb, c->schedule.min_lr), fmt_num(wb, sizeof wb, c->optimizer.lr));
        return -EINVAL;
    }
    size_t n_train = dataset_train_size(c);
    if (c->data.val_split >= n_train || n_train - c->data.val_split < c->train.batch_size) {
        seterr(err, errlen,
               "data.val_split: %zu leaves less than one batch (train.batch_size %zu) of the "
               "%zu training samples of %s",
               c->data.val_split, c->train.batch_size, n_train, DATASET_NAMES[c->data.dataset]);
        return -EINVAL;
    }
    if (!is_loopback(c->daemon.listen) && !c->daemon.token_file[0]) {
        seterr(err, errlen,
               "daemon.listen: \"%s\" is not a loopback address; set daemon.token_file",
               c->daemon.listen);
        return -EINVAL;
    }
    return 0;
}

// ---- serialisation and comparison -------------------------------------------------------

/* A number item. exact: a raw item holding fmt_num's text, because cJSON's printer accepts
 * 15 significant digits when they match within an ulp, which loses the last bit. */
static cJSON *num_item(double v, int exact)
{
    char buf[40];
    return exact ? cJSON_CreateRaw(fmt_num(buf, sizeof buf, v)) : cJSON_CreateNumber(v);
}

static cJSON *model_to_json(const struct dmn_config *c, int exact)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < c->n_layers; i++) {
        const struct net_layer_spec *s = &c->model[i];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o) ||
            !cJSON_AddStringToObject(o, "type", kind_name(s->kind)))
            goto oom;
        for (size_t k = 0; k < N_LKEYS; k++) {
            const struct cfg_lkey *lk = &CFG_LKEYS[k];
            if (!(lk->kinds & KB(s->kind))) continue;
            cJSON *v = lk->type == T_STRING ? (s->name[0] ? cJSON_CreateString(s->name) : NULL)
                       : lk->type == T_BOOL ? cJSON_CreateBool(lkey_get(s, lk) != 0)
                                            : num_item((double)lkey_get(s, lk), exact);
            if (lk->type == T_STRING && !s->name[0]) continue;
            if (!v || !cJSON_AddItemToObject(o, lk->name, v)) {
                cJSON_Delete(v);
                goto oom;
            }
        }
    }
    return arr;
oom:
    cJSON_Delete(arr);
    return NULL;
}

static cJSON *section_to_json(const struct dmn_config *c, const char *section, int exact)
{
    if (section_index(section) < 0) return NULL;
    if (strcmp(section, "model") == 0) return model_to_json(c, exact);
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < N_ROWS; i++) {
        const struct cfg_row *r = &CFG_ROWS[i];
        if (strcmp(r->section, section) != 0) continue;
        cJSON *v = NULL;
        double x = get_num(c, r);
        switch (r->type) {
        case T_BOOL: v = cJSON_CreateBool(x != 0); break;
        case T_STRING: v = cJSON_CreateString(cfield(c, r)); break;
        case T_ENUM:
            v = x >= 0 && x < (double)enum_count(r) ? cJSON_CreateString(r->names[(size_t)x])
                                                    : cJSON_CreateNull();
            break;
        default: v = num_item(x, exact); break;
        }
        if (!v || !cJSON_AddItemToObject(o, r->name, v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            return NULL;
        }
    }
    return o;
}

static cJSON *to_json(const struct dmn_config *c, int exact)
{
    cJSON *root = cJSON_CreateObject();
    for (size_t i = 0; root && i < N_SECTIONS; i++) {
        cJSON *s = section_to_json(c, CFG_SECTIONS[i].name, exact);
        if (!s || !cJSON_AddItemToObject(root, CFG_SECTIONS[i].name, s)) {
            cJSON_Delete(s);
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

cJSON *cfg_section_to_json(const struct dmn_config *c, const char *section)
{
    return section_to_json(c, section, 0);
}

cJSON *cfg_to_json(const struct dmn_config *c)
{
    return to_json(c, 0);
}

char *cfg_to_string(const struct dmn_config *c, int pretty)
{
    cJSON *j = to_json(c, 1);
    char *text = !j ? NULL : pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

/* One knob's value as text. */
static void fmt_knob(const struct dmn_config *c, const struct cfg_row *r, char *out, size_t n)
{
    if (r->type == T_STRING)
        snprintf(out, n, "\"%.*s\"", (int)r->size, (const char *)cfield(c, r));
    else if (r->type == T_ENUM) {
        int v = (int)get_num(c, r), k = 0;
        while (r->names[k] && k < v) k++;
        snprintf(out, n, "%s", r->names[k] ? r->names[k] : "?");
    } else if (r->type == T_BOOL)
        snprintf(out, n, "%s", get_num(c, r) ? "true" : "false");
    else
        snprintf(out, n, "%.17g", get_num(c, r));
}

int cfg_diff(const struct dmn_config *a, const struct dmn_config *b, unsigned flags,
             const char *skip_section, char *out, size_t n)
{
    int count = 0;
    size_t used = 0;
    if (n) out[0] = 0;
#define CFG__ADD(...)                                                                              \
    do {                                                                                           \
        if (used < n) used += (size_t)snprintf(out + used, n - used, "%s", count ? "; " : "");     \
        if (used < n) used += (size_t)snprintf(out + used, n - used, __VA_ARGS__);                 \
        count++;                                                                                   \
    } while (0)
    for (size_t i = 0; i < N_ROWS; i++) {
        const struct cfg_row *r = &CFG_ROWS[i];
        if (!(r->flags & flags) || (skip_section && !strcmp(r->section, skip_section))) continue;
        if (r->type == T_STRING ? strncmp(cfield(a, r), cfield(b, r), r->size) == 0
                                : get_num(a, r) == get_num(b, r))
            continue;
        char va[CFG_PATH_MAX + 4], vb[CFG_PATH_MAX + 4];
        fmt_knob(a, r, va, sizeof va);
        fmt_knob(b, r, vb, sizeof vb);
        CFG__ADD("%s.%s: %s vs %s", r->section, r->name, va, vb);
    }
    if (a->n_layers != b->n_layers) {
        CFG__ADD("model: %zu layers vs %zu", a->n_layers, b->n_layers);
    } else {
        for (size_t i = 0; i < a->n_layers && i < CFG_MAX_LAYERS; i++) {
            const struct net_layer_spec *x = &a->model[i], *y = &b->model[i];
            if (x->kind != y->kind) {
                CFG__ADD("model[%zu].type: %s vs %s", i, net_kind_name(x->kind),
                         net_kind_name(y->kind));
                continue;
            }
            if ((unsigned)x->kind >= NET_KIND_COUNT) continue;
            for (size_t k = 0; k < N_LKEYS; k++) {
                const struct cfg_lkey *lk = &CFG_LKEYS[k];
                if (!(lk->kinds & KB(x->kind))) continue;
                if (lk->type == T_STRING) {
                    if (strncmp(x->name, y->name, sizeof x->name))
                        CFG__ADD("model[%zu].%s: \"%s\" vs \"%s\"", i, lk->name, x->name, y->name);
                } else if (lkey_get(x, lk) != lkey_get(y, lk)) {
                    CFG__ADD("model[%zu].%s: %zu vs %zu", i, lk->name, lkey_get(x, lk),
                             lkey_get(y, lk));
                }
            }
        }
    }
#undef CFG__ADD
    return count;
}

int cfg_equal(const struct dmn_config *a, const struct dmn_config *b)
{
    for (size_t i = 0; i < N_ROWS; i++) {
        const struct cfg_row *r = &CFG_ROWS[i];
        if (r->type == T_STRING ? strncmp(cfield(a, r), cfield(b, r), r->size) != 0
                                : get_num(a, r) != get_num(b, r))
            return 0;
    }
    if (a->n_layers != b->n_layers) return 0;
    for (size_t i = 0; i < a->n_layers && i < CFG_MAX_LAYERS; i++) {
        const struct net_layer_spec *x = &a->model[i], *y = &b->model[i];
        if (x->kind != y->kind) return 0;
        if ((unsigned)x->kind >= NET_KIND_COUNT) continue;
        for (size_t k = 0; k < N_LKEYS; k++) {
            const struct cfg_lkey *lk = &CFG_LKEYS[k];
            if (!(lk->kinds & KB(x->kind))) continue;
            if (lk->type == T_STRING ? strncmp(x->name, y->name, sizeof x->name) != 0
                                     : lkey_get(x, lk) != lkey_get(y, lk))
                return 0;
        }
    }
    return 1;
}

// ---- help -------------------------------------------------------------------------------

static const char *type_name(const struct cfg_row *r)
{
    switch (r->type) {
    case T_BOOL: return "bool";
    case T_INT:
    case T_SIZE:
    case T_U64: return "integer";
    case T_DOUBLE: return "number";
    case T_STRING: return "string";
    case T_ENUM: return "one of";
    }
    return "?";
}

void cfg_help(FILE *out)
{
    char buf[256], db[64];
    fprintf(out, "Configuration: a JSON object of sections; every key is optional except "
                 "\"model\".\n\"runtime\" knobs may change while training "
                 "(PATCH /v1/policy for adapt, PATCH /v1/train for train and \"lr\",\n"
                 "\"group_lasso\"); the others are fixed when training starts.\n");
    for (size_t s = 0; s < N_SECTIONS; s++) {
        const char *sec = CFG_SECTIONS[s].name;
        fprintf(out, "\n%s: %s\n", sec, CFG_SECTIONS[s].help);
        if (strcmp(sec, "model") == 0) {
            for (int k = 0; k < NET_KIND_COUNT; k++) {
                fprintf(out, "  {\"type\": \"%s\"", kind_name((enum net_kind)k));
                for (size_t i = 0; i < N_LKEYS; i++) {
                    const struct cfg_lkey *lk = &CFG_LKEYS[i];
                    if (!(lk->kinds & KB(k))) continue;
                    if (lk->required & KB(k))
                        fprintf(out, ", %s (required)", lk->name);
                    else if (lk->type == T_STRING)
                        fprintf(out, ", %s", lk->name);
                    else if (lk->type == T_BOOL)
                        fprintf(out, ", %s (%s)", lk->name, lk->def ? "true" : "false");
                    else if (k == NET_MAXPOOL && strcmp(lk->name, "stride") == 0)
                        fprintf(out, ", %s (= k)", lk->name);
                    else
                        fprintf(out, ", %s (%s)", lk->name, fmt_num(db, sizeof db, lk->def));
                }
                fprintf(out, "}\n");
            }
            for (size_t i = 0; i < N_LKEYS; i++) {
                const struct cfg_lkey *lk = &CFG_LKEYS[i];
                if (lk->type == T_SIZE)
                    fprintf(out, "    %-8s integer in [%s, %s]: %s\n", lk->name,
                            fmt_num(buf, 32, lk->min), fmt_num(db, 32, lk->max), lk->help);
                else
                    fprintf(out, "    %-8s %s: %s\n", lk->name,
                            lk->type == T_BOOL ? "bool" : "string", lk->help);
            }
            continue;
        }
        for (size_t i = 0; i < N_ROWS; i++) {
            const struct cfg_row *r = &CFG_ROWS[i];
            if (strcmp(r->section, sec) != 0) continue;
            if (r->type == T_ENUM)
                join_names(buf, sizeof buf, r->names);
            else if (r->type == T_BOOL || r->type == T_STRING)
                buf[0] = 0;
            else
                range_str(buf, sizeof buf, r);
            if (r->type == T_STRING)
                snprintf(db, sizeof db, "\"%s\"", r->def_s);
            else if (r->type == T_ENUM)
                snprintf(db, sizeof db, "%s", r->names[(size_t)r->def]);
            else if (r->type == T_BOOL)
                snprintf(db, sizeof db, r->def ? "true" : "false");
            else
                fmt_num(db, sizeof db, r->def);
            fprintf(out, "  %s.%s: %s%s%s, default %s%s\n      %s\n", sec, r->name, type_name(r),
                    buf[0] ? " " : "", buf, db, (r->flags & CFG_RUNTIME) ? ", runtime" : "",
                    r->help);
        }
    }
}

// ---- engine structs ---------------------------------------------------------------------

size_t cfg_n_classes(const struct dmn_config *c)
{
    return c->data.dataset == CFG_DATA_SYNTHETIC ? c->synthetic.classes : 10;
}

void cfg_net_optim(const struct dmn_config *c, struct net_optim *o)
{
    o->kind = c->optimizer.type;
    o->momentum = (float)c->optimizer.momentum;
    o->nesterov = c->optimizer.nesterov;
    o->weight_decay = (float)c->optimizer.weight_decay;
    o->beta1 = (float)c->optimizer.beta1;
    o->beta2 = (float)c->optimizer.beta2;
    o->eps = (float)c->optimizer.eps;
}

void cfg_net_sched(const struct dmn_config *c, size_t total_steps, struct net_sched *s)
{
    s->kind = c->schedule.type;
    s->lr = (float)c->optimizer.lr;
    s->min_lr = (float)c->schedule.min_lr;
    s->warmup_steps = c->schedule.warmup_steps;
    s->step_size = c->schedule.step_size;
    s->gamma = (float)c->schedule.gamma;
    s->total_steps = total_steps;
}

// ---- runtime reload ---------------------------------------------------------------------

int cfg_copy_runtime(struct dmn_config *dst, const struct dmn_config *src, char *err, size_t errlen)
{
    struct dmn_config tmp = *dst;
    for (size_t i = 0; i < N_ROWS; i++) {
        const struct cfg_row *r = &CFG_ROWS[i];
        if (!(r->flags & CFG_RUNTIME)) continue;
        memcpy((char *)&tmp + r->off, (const char *)src + r->off, r->size);
    }
    int rc = cfg_validate(&tmp, err, errlen);
    if (rc == 0) *dst = tmp;
    return rc;
}
