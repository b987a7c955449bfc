/* svd_adapt/svd_internal.h: what svd_adapt/ sources share (owner: svd_adapt/). */
#ifndef SVD_INTERNAL_H
#define SVD_INTERNAL_H

#include "svd_adapt/svd_adapt.h"

// ---- dense linear algebra (linalg.c); matrices are row-major -----------------------------

/* Singular values of a (m x n), descending, into s (min(m, n)). 0 or SVD_ENOCONV / -ENOMEM. */
int svd__svals(const float *a, size_t m, size_t n, float *s);
/* Thin SVD a = u diag(s) vt: u (m x r), s (r), vt (r x n), r = min(m, n). */
int svd__svd(const float *a, size_t m, size_t n, float *u, float *s, float *vt);
/* Singular values of h / sqrt(N) (h: N x m), descending, min(N, m) of them, from the
 * eigenvalues of the Gram matrix h^T h / N (float syrk, double eigen-solver). */
int svd__gram_svals(const float *h, size_t N, size_t m, float *s);
/* Eigen-decomposition of h^T h / N: ev (m, descending), vt (m x m, row i the i-th
 * eigenvector, unit norm). */
int svd__gram_eig(const float *h, size_t N, size_t m, float *ev, float *vt);
/* Column order of h (N x m) by pivoted QR (LAPACK sgeqp3): the most independent first. */
int svd__pivot_order(const float *h, size_t N, size_t m, int *order);
/* Least squares with a small ridge: t (k x d) minimising ||b - a t||, a (N x k), b (N x d),
 * solved in double through the normal equations; the ridge grows until the system is well
 * conditioned (reciprocal condition > 1e-10). */
int svd__lstsq(const float *a, const float *b, size_t N, size_t k, size_t d, float *t);

// ---- width groups (group.c) ------------------------------------------------------------

/* How a producing row is treated when the group changes. */
enum svd__rk {
    SVD_RK_W,     // the main producing weight: rotated / selected; grows orthogonal rows
    SVD_RK_ZERO,  // another writer (residual stream): selected; grows zero rows
    SVD_RK_BIAS,  // bias: selected / rotated; grows zeros
    SVD_RK_GAMMA, // BN scale: grows 1
    SVD_RK_BETA,  // BN shift: grows 0
    SVD_RK_MEAN,  // BN running mean (state): grows 0
    SVD_RK_VAR,   // BN running var (state): grows 1
};

struct svd__row {
    size_t t; // tensor index
    enum svd__rk kind;
};

/* A reader of the group: tensor t's columns, `block` consecutive columns per channel
 * (1 dense, K*K conv, H*W dense after flatten). The leftover of a least-squares rewiring
 * goes into bias tensor `off_t` (added) or, for a consumer without bias followed by BN, that
 * BN's running mean (`off_sub` = 1: subtracted); off_t < 0: nowhere. */
struct svd__col {
    size_t t, block;
    long off_t;
    int off_sub;
    size_t reader; // index into readers: whose activations this consumer reads
};

/* Where the activations a consumer reads live after a forward pass. */
struct svd__reader {
    size_t act;  // n->acts[act] ...
    long ws_res; // ... or, if >= 0, the h1 workspace of this res layer
};

#define SVD__MAX_ENT 64
struct svd__group {
    struct svd_gref ref;
    size_t m;
    struct svd__row rows[SVD__MAX_ENT];
    size_t n_rows;
    struct svd__col cols[SVD__MAX_ENT];
    size_t n_cols;
    struct {
        size_t layer;
        int width; // 1: spec.width, 0: spec.out
    } specs[SVD__MAX_ENT];
    size_t n_specs;
    struct svd__reader readers[SVD__MAX_ENT];
    size_t n_readers;
    int has_bn;      // some row is a BN tensor
    long gradmax_ok; // consumer layer index when producer and consumer are plain dense
};

/* Builds the description of group g of net n. -EINVAL if g is not adaptable. */
int svd__group_build(const struct net *n, const struct svd_gref *g, struct svd__group *out);
/* The activations reader r of group g reads, as a row-major (N x m) matrix into h (malloc'ed):
 * N rows (samples, or samples x positions) subsampled to at most max_rows, every stride-th
 * row of the whole batch. Runs the forward passes itself (eval mode) on the B calibration
 * samples x, in chunks of the net's workspace batch, so no workspace for B samples is built. */
int svd__calib_acts(struct net *n, const struct svd__group *g, size_t r, const float *x, size_t B,
                    size_t max_rows, float **h, size_t *N);
/* The same for ng (group, reader) pairs in one set of forward passes: h[k], N[k]. */
int svd__calib_acts_many(struct net *n, const struct svd__group *const *g, const size_t *r,
                         size_t ng, const float *x, size_t B, size_t max_rows, float **h,
                         size_t *N);

/* Applies a linear change of width m -> m2 to every tensor of the group:
 *   producing rows:  new = P old         (P: m2 x m; v moments by P squared)
 *   consumer cols:   new = old Q_r       (Q: per reader r, m x m2, stacked n_readers times)
 *   consumer bias:   += W_old[:, j] c_r[j] summed over j (c: per reader, m; may be NULL)
 * For growth (m2 > m, P = [I; 0], Q = [I 0]) new rows take the defaults of their kind, and
 * new_w (m2 - m rows of the main weight) / new_cols (per consumer column entry ci, laid out
 * (D0 x (m2 - m) x block) like the tensor's own columns; an entry or the array may be NULL)
 * fill the new parts. */
int svd__group_apply(struct net **out, const struct net *n, const struct svd__group *g, size_t m2,
                     const float *P, const float *Q, const float *c, const float *new_w,
                     const float *const *new_cols, char *err, size_t errlen);

/* extra rows (extra x L) orthogonal to the row space of w (m x L, through its SVD) and to
 * each other, each of norm `norm` (<= 0: the median row norm of w). When the rows of w
 * already span R^L the new rows are only random. 0 or a negative errno. */
int svd__orth_rows(float *nw, const float *w, size_t m, size_t L, size_t extra, float norm,
                   uint64_t *rng);

/* svd_spectrum_acts for ng groups in one set of (chunked) forward passes: the spectrum of
 * refs[i] into s + i * cap, its length (or a negative errno) into r[i]. 0 or -ENOMEM. */
int svd__spectra_acts(struct net *n, const struct svd_gref *refs, size_t ng, const float *x,
                      size_t B, float *s, size_t cap, long *r);

/* Fisher saliency of every unit of ng groups (enum svd_value): sal + i * cap gets group i's m
 * values, in unit order, from forward / backward passes over the B labelled calibration
 * samples in chunks of at most 32 (n's gradients are zero again after). 0 or a negative
 * errno (-ENOSPC: a group wider than cap). */
int svd__saliency(struct net *n, const struct svd_gref *refs, size_t ng, const float *x,
                  const uint8_t *y, size_t B, double *sal, size_t cap);

#endif
