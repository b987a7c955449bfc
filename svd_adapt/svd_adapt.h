/* svd_adapt/svd_adapt.h: width adaptation by spectra (owner: svd_adapt/).
 *
 * This header starts with the policy: the knobs of design.md section 4, every one settable
 * at runtime. Defaults and ranges live in daemon/config.c's table (R11), not here. */
#ifndef SVD_ADAPT_H
#define SVD_ADAPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "net/net.h"

enum svd_mode { SVD_MODE_ROTATE, SVD_MODE_SELECT, SVD_MODE_FACTORIZE };
enum svd_source { SVD_SRC_WEIGHTS, SVD_SRC_ACTIVATIONS };
enum svd_rule { SVD_RULE_RELATIVE, SVD_RULE_ENERGY, SVD_RULE_GAP };
enum svd_grow { SVD_GROW_ORTHOGONAL, SVD_GROW_GRADMAX };

struct svd_policy {
    int enabled;              // master switch for periodic adaptation
    enum svd_mode mode;
    enum svd_source source;
    enum svd_rule rule;
    enum svd_grow grow_mode;
    double shrink_threshold;  // relative rule: keep s_i >= shrink_threshold * s_1
    double energy_eps;        // energy rule: keep 1 - eps of sum s_i^2
    double gap_threshold;     // gap rule: cut at the first s_k / s_{k+1} > gap
    double expand_threshold;  // grow when s_k / s_1 >= expand_threshold
    double growth;            // grow by ceil(growth * width)
    size_t interval_steps;    // adapt every this many steps ...
    size_t warmup_steps;      // ... after this many
    size_t cooldown_steps;    // a grown layer is not re-examined for this long
    size_t grow_patience;     // consecutive flat checks needed before growing
    size_t calibration_samples;
    size_t min_width, max_width;
    size_t param_budget;      // growth stops at this many parameters (0 = no cap)
    double max_loss_jump;     // roll back a surgery whose val loss rises more than this
    int enable_shrink, enable_grow;
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
    size_t layer;   // the producing layer
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
/* Grows group g by extra channels: incoming rows random, orthogonal to the existing rows and
 * scaled to their median norm, zero bias, zero outgoing columns (orthogonal); or zero incoming
 * rows and outgoing columns from the top singular vectors of the gradient correlation on the
 * calibration batch (gradmax; needs labels y; dense -> dense groups only, others grow
 * orthogonally). The function is unchanged either way. gradmax runs a backward pass on n
 * and leaves its gradients zeroed. */
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

/* Hysteresis counters per group and the JSON-lines event log. Owned by the trainer. */
struct svd_state;
struct svd_state *svd_state_create(void);
void svd_state_destroy(struct svd_state *s);

/* What the policy needs from the trainer: a calibration batch and the validation loss. */
struct svd_ctx {
    const float *x;        // (B, C, H, W) normalised calibration inputs
    const uint8_t *y;      // (B) labels
    size_t B;
    double (*val_loss)(void *user, struct net *n); // validation loss of a candidate net
    void *user;
    uint64_t *rng;
    FILE *events;          // JSON-lines event log (appended, flushed), may be NULL
};

/* One adaptation pass at `step`: for each group, the spectrum, the rank rule, shrink or grow
 * within [min_width, max_width] and param_budget, cool-down and patience; a surgery whose
 * validation loss rises by more than max_loss_jump is rolled back. On change *n is replaced
 * (the old net freed) and optimizer moments follow. Returns the number of surgeries kept, or
 * a negative errno (the net is then unchanged). *event (may be NULL) receives a malloc'ed
 * JSON text of the event (step, widths and params before/after, spectra summary, losses). */
int svd_adapt(struct svd_state *s, const struct svd_policy *p, struct net **n, size_t step,
              const struct svd_ctx *ctx, char **event);

/* Serialises the hysteresis counters for checkpoints (malloc'ed), and restores them. */
int svd_state_save(const struct svd_state *s, void **out, size_t *len);
int svd_state_load(struct svd_state *s, const void *data, size_t len);

#endif
