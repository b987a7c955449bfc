/* svd_adapt/svd_adapt.h: width adaptation by spectra (owner: svd_adapt/, prefix svd_).
 *
 * svd_adapt/ owns the maths of changing a width and nothing above it: the few LAPACK
 * decompositions (linalg.c), width groups (group.c), spectra, the rank rules and shrink /
 * grow surgery with the rewiring of every reader (surgery.c), the factorized form of a
 * layer (rank.c), and the adaptation policy with its saved state and its events as C
 * structs (policy.c). No cJSON, no files of its own.
 *
 * This header starts with the policy: the knobs of the config's `adapt` section (README,
 * "Configs"), every one settable at runtime. Defaults and ranges live in daemon/config.c's
 * table, not here. */
#ifndef SVD_ADAPT_H
#define SVD_ADAPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "net/net.h"

enum svd_mode { SVD_MODE_ROTATE, SVD_MODE_SELECT, SVD_MODE_FACTORIZE };
enum svd_source { SVD_SRC_WEIGHTS, SVD_SRC_ACTIVATIONS };
enum svd_rule { SVD_RULE_RELATIVE, SVD_RULE_ENERGY, SVD_RULE_GAP };
/* How new units are made (function unchanged in every mode):
 *   orthogonal: incoming rows random, orthogonal to the old rows; outgoing columns zero
 *               (forward-active, but the incoming rows get no gradient until the outgoing
 *               columns have moved);
 *   gradmax:    zero incoming rows; outgoing columns from the gradient correlation (dense ->
 *               dense only; other groups grow orthogonally);
 *   mirror:     units in pairs with the same random orthogonal incoming row and outgoing
 *               columns +v and -v, which cancel: both sides get gradient from the first step.
 *               v is random (scaled to half the existing columns' mean norm), or, for a dense
 *               -> dense group, the top left singular vectors of the gradient correlation. */
enum svd_grow { SVD_GROW_ORTHOGONAL, SVD_GROW_GRADMAX, SVD_GROW_MIRROR };
/* What a unit is worth when a target pass chooses where to cut (divided by its parameters):
 *   energy: its tail direction's share of the group's activation energy, s_i^2 / mean(s^2);
 *   fisher: the loss it carries, to second order: F_j = mean over calibration chunks of
 *           B_c (sum of W . dL/dW over the unit's consumer columns)^2 (Theis et al.'s Fisher
 *           pruning with chunk gradients standing in for per-sample ones). */
enum svd_value { SVD_VALUE_ENERGY, SVD_VALUE_FISHER };

struct svd_policy {
    int enabled; // master switch for periodic adaptation
    enum svd_mode mode;
    enum svd_source source;
    enum svd_rule rule;
    enum svd_grow grow_mode;
    enum svd_grow target_grow_mode; // growth toward target_params (one big step, early)
    double shrink_threshold;        // relative rule: keep s_i >= shrink_threshold * s_1
    double energy_eps;              // energy rule: keep 1 - eps of sum s_i^2
    double gap_threshold;           // gap rule: cut at the first s_k / s_{k+1} > gap
    double expand_threshold;        // saturated when kept / width >= expand_threshold, where kept
                                    // counts directions above twice the shrink cut (see policy.c)
    double growth;                  // grow by ceil(growth * width)
    size_t interval_steps;          // adapt every this many steps ...
    size_t warmup_steps;            // ... after this many
    size_t cooldown_steps;          // a grown layer is not re-examined for this long
    size_t protect_steps;           // ... and a grown layer is not shrunk for this long (its new
                                    // mirror pairs start as duplicates in the spectrum)
    size_t grow_patience;           // consecutive flat checks needed before growing
    double grow_gain; // a saturation growth is judged (at its protection's end, or before the
                      // group grows again) by cutting it back: a validation loss rise under
                      // this fraction keeps the cut, and the group grows no more (0 = off)
    size_t calibration_samples;
    size_t min_width, max_width;
    size_t param_budget;  // growth stops at this many parameters (0 = no cap)
    size_t target_params; // steer the whole net to [0.95, 1] x this (0 = off)
    double target_step;   // a target pass moves this fraction of the parameters, or more
                          // when the deadline needs it:
    double target_by;     // ... the target is due by this fraction of the run (0: no deadline)
    enum svd_value target_value; // how a target pass prices a unit it may cut
    double stop_fraction; // no periodic pass after this fraction of the run (the caller's rule)
    double max_loss_jump; // roll back a surgery whose val loss rises more than this
    int enable_shrink, enable_grow;
    int grow_after_shrink; // 0: once the rank rule has cut any group, no group grows for
                           // saturation (a net found over-sized is not grown back elsewhere)
};


// ---- width groups ---------------------------------------------------------------------

/* A width group is one set of m channels: the rows that produce them (a dense / conv layer,
 * a residual block's first conv, or every writer of a residual stream), what follows them
 * channel-wise (BN, ReLU, pooling), and the columns that read them (the next dense / conv,
 * the H*W columns of each channel after a flatten, every reader of a residual stream).
 * Groups are named after their producing layer: "conv2", "res1.inner", "conv1.stream". */
enum svd_gkind { SVD_G_UNITS, SVD_G_RES_INNER, SVD_G_STREAM };
struct svd_gref {
    enum svd_gkind kind;
    size_t layer; // the producing layer
};

/* Lists the adaptable groups of a net (the classifier's outputs and the input never change).
 * Returns the count written to out (at most max). */
size_t svd_groups(const struct net *n, struct svd_gref *out, size_t max);
/* Current width and a printable name of a group. */
size_t svd_group_width(const struct net *n, const struct svd_gref *g);
void svd_group_name(const struct net *n, const struct svd_gref *g, char *out, size_t len);

// ---- spectra and rank rules -----------------------------------------------------------

/* Singular values (descending) of the producing weight, reshaped m x (fan-in), into s
 * (capacity m). Returns the count, or a negative errno (LAPACK failure: SVD_ENOCONV). */
#define SVD_ENOCONV (-1001)
long svd_spectrum_weights(const struct net *n, const struct svd_gref *g, float *s, size_t cap);
/* Singular values of the centred activations the group's consumers read, on a calibration
 * batch x (B, C, H, W) already normalised. Runs a forward pass in eval mode. */
long svd_spectrum_acts(struct net *n, const struct svd_gref *g, const float *x, size_t B, float *s,
                       size_t cap);
/* Number of directions to keep under the policy's rule (at least 1). */
size_t svd_rank_rule(const struct svd_policy *p, const float *s, size_t k);

// ---- surgery (each returns a new net in *out; the input net is not modified) -------------

/* Shrinks group g to k channels. rotate: producer rows become U_k^T W, consumers W' U_k
 * (exact for a linear f; a BN layer right after the producer is folded in first; residual
 * streams and residual inner widths with BN use select instead); select: keeps the k units chosen by pivoted QR on the calibration
 * activations and rewires every consumer by least squares, leftovers into the consumer bias.
 * Optimizer moments follow (m by the same map, v by its squares). */
/* mode SVD_MODE_FACTORIZE is not a width change: it shrinks with select (factorized ranks
 * change through svd_set_rank). */
int svd_shrink(struct net **out, const struct net *n, const struct svd_gref *g, size_t k,
               enum svd_mode mode, const float *x, size_t B, char *err, size_t errlen);
/* Grows group g by extra channels (see enum svd_grow): orthogonal (incoming rows random,
 * orthogonal to the existing rows and scaled to their median norm, zero bias, zero outgoing
 * columns), gradmax (zero incoming rows, outgoing columns from the top singular vectors of the
 * gradient correlation on the calibration batch; needs labels y; dense -> dense groups only,
 * others grow orthogonally) or mirror (pairs with one orthogonal incoming row and outgoing
 * columns +v / -v; v from the gradient correlation for dense -> dense groups when x and y are
 * given). The function is unchanged to rounding. gradmax / mirror with a dense consumer run a
 * backward pass on n and leave its gradients zeroed. */
int svd_grow(struct net **out, const struct net *n, const struct svd_gref *g, size_t extra,
             enum svd_grow mode, const float *x, const uint8_t *y, size_t B, uint64_t *rng,
             char *err, size_t errlen);
/* Factorized form of a dense / conv layer: sets its rank to r (0 = plain). Plain -> rank r:
 * truncated SVD W ~ U_r S_r V_r^T, U = U_r S_r, V = V_r^T, and when mean_in (the layer's mean
 * input, fan-in values, may be NULL) is given the dropped part's effect (W - W_r) E[x] goes
 * into the bias. Rank r -> r' < r: exact SVD of U V via QR of both factors, smallest triplets
 * dropped. r' > r: new triplets with a zero column in U and orthonormal new rows in V.
 * Rank r -> 0: W = U V. */
int svd_set_rank(struct net **out, const struct net *n, size_t layer, size_t r,
                 const float *mean_in, uint64_t *rng, char *err, size_t errlen);
/* Singular values of a layer's effective weight (W, or U V when factorized); count or <0. */
long svd_layer_spectrum(const struct net *n, size_t layer, float *s, size_t cap);

// ---- the policy loop ------------------------------------------------------------------

/* Hysteresis counters per group. Owned by the trainer. */
struct svd_state;
struct svd_state *svd_state_create(void);
void svd_state_destroy(struct svd_state *s);

/* What the policy needs from the trainer: a calibration batch and the validation loss. */
struct svd_ctx {
    const float *x;   // (B, C, H, W) normalised calibration inputs
    const uint8_t *y; // (B) labels
    size_t B;
    double (*val_loss)(void *user, struct net *n); // validation loss of a candidate net
    void *user;
    uint64_t *rng;
    size_t total_steps; // the run's length in steps (0: unknown, so no target deadline)
};

// ---- events: what a pass did, as data (JSON is made where it is served or logged) ----------

enum svd_action {
    SVD_ACT_KEEP, // looked at, unchanged (reason says why)
    SVD_ACT_SHRINK,
    SVD_ACT_GROW,
    SVD_ACT_SHRINK_RANK, // factorize mode
    SVD_ACT_GROW_RANK,
    SVD_ACT_SKIP, // not looked at, or the spectrum failed (error)
};
enum svd_reason {
    SVD_WHY_RANK_RULE,  // shrink: the rank rule keeps fewer directions than the width
    SVD_WHY_SATURATED,  // grow: saturated on grow_patience consecutive checks
    SVD_WHY_TARGET,     // moved by target_params (value per parameter across groups)
    SVD_WHY_FITS,       // keep: neither redundant nor saturated
    SVD_WHY_PATIENCE,   // keep: saturated, waiting for grow_patience checks
    SVD_WHY_COOLDOWN,   // skip: changed recently
    SVD_WHY_MIN_WIDTH,  // keep: redundant but at min_width
    SVD_WHY_MAX_WIDTH,  // keep: saturated but at max_width
    SVD_WHY_BUDGET,     // keep: saturated but growth would pass param_budget / target
    SVD_WHY_TARGET_MET, // keep: target_params reached, or this group not chosen
    SVD_WHY_DISABLED,   // keep: enable_shrink / enable_grow off
    SVD_WHY_ERROR,      // the decomposition or the surgery failed (error says which)
    SVD_WHY_PROTECTED,  // keep: redundant, but grown less than protect_steps ago
    SVD_WHY_NO_GAIN,    // cut back to its width before its last growth, which the validation
                        // loss did not need (grow_gain); no more saturation growth
    SVD_WHY_SETTLED,    // keep: saturated, but the rank rule has cut this net (or asked for a
                        // cut on grow_patience looks in a row), which therefore grows no
                        // more for saturation (unless grow_after_shrink)
};
#define SVD_EV_NAME 48
#define SVD_EV_TOP 8
struct svd_change {
    char group[SVD_EV_NAME];
    enum svd_action action;
    enum svd_reason reason;
    size_t from, to; // width (or rank) before and after (to == from when kept)
    size_t kept;     // directions the rank rule keeps (0 if no spectrum)
    size_t n_top;    // spectrum summary: s_max, s_min and the top values
    float s_max, s_min, top[SVD_EV_TOP];
    int judged; // a surgery was tried and judged on the validation loss
    double val_before, val_after;
    int rolled_back;
    int factorized; // rank actions: the layer is held as two factors afterwards
    double gain;    // a growth judged (grow_gain): the relative rise of the validation loss
                    // when the group is cut back to its width before it (NAN: not judged)
    char error[256];
};
struct svd_width {
    char name[SVD_EV_NAME];
    size_t before, after;
};
struct svd_event {
    size_t step;
    double time;    // seconds since the epoch, when the pass began
    double seconds; // how long the pass took
    enum svd_mode mode;
    size_t params_before, params_after, target_params;
    struct svd_change *changes;
    size_t n_changes, cap_changes;
    struct svd_width *widths; // every adaptable group (or dense / conv layer in factorize)
    size_t n_widths;
};
void svd_event_free(struct svd_event *e);
/* Surgeries kept in the event (shrinks and grows that were not rolled back). */
size_t svd_event_kept(const struct svd_event *e);
const char *svd_action_name(enum svd_action a);
const char *svd_reason_name(enum svd_reason r);

/* One adaptation pass at `step`: for each group, the spectrum, the rank rule, shrink or grow
 * within [min_width, max_width] and param_budget, cool-down and patience; with target_params,
 * the net moves toward the target by value per parameter across groups instead. A surgery
 * whose validation loss rises by more than max_loss_jump is rolled back. On change *n is
 * replaced (the old net freed) and optimizer moments follow. Returns the number of surgeries
 * kept, or a negative errno (the net is then unchanged). *ev (may be NULL) receives the pass,
 * with one change entry per group looked at; free it with svd_event_free. */
int svd_adapt(struct svd_state *s, const struct svd_policy *p, struct net **n, size_t step,
              const struct svd_ctx *ctx, struct svd_event *ev);

/* Serialises the hysteresis counters for checkpoints (malloc'ed), and restores them. */
int svd_state_save(const struct svd_state *s, void **out, size_t *len);
int svd_state_load(struct svd_state *s, const void *data, size_t len);

#endif
