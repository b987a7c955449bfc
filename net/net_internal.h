/* net/net_internal.h: what the net/ sources share and nobody else sees (owner: net/).
 *
 * Each layer kind fills one `struct net__ops`; net.c dispatches through NET__OPS[kind].
 * Kernels take outputs first, then inputs, then weights, then dimensions; they never
 * allocate, log or fail; weight-gradient outputs accumulate (+=). */
#ifndef NET_INTERNAL_H
#define NET_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "net/codec.h"
#include "net/net.h"

#define NET__MAX_T 16 // most tensors a layer declares (res block with BN: 13)

/* A tensor a layer asks for; net.c turns these into arena offsets. */
struct net__tdesc {
    const char *suffix;
    size_t dims[4];
    int nd;
    int decay;
    enum net_arena arena;
};

struct net__ops {
    /* Sets l->out from l->in and l->spec, or -EINVAL with a reason. */
    int (*shape)(struct net_layer *l, char *err, size_t errlen);
    /* Declares the layer's tensors in order; returns how many (<= NET__MAX_T). */
    size_t (*tensors)(const struct net_layer *l, struct net__tdesc *t);
    /* Floats of private workspace kept from forward to backward, for batch B. */
    size_t (*ws_size)(const struct net_layer *l, size_t B);
    /* Floats of shared transient scratch needed during forward or backward. */
    size_t (*scratch_size)(const struct net_layer *l, size_t B);
    void (*init)(struct net *n, struct net_layer *l, uint64_t *rng);
    /* out = f(inp). */
    void (*forward)(struct net *n, struct net_layer *l, float *out, const float *inp, size_t B,
                    int training);
    /* Writes dinp (if not NULL) and accumulates parameter gradients. */
    void (*backward)(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                     const float *inp, const float *out, size_t B);
    /* Multiply-adds per sample. */
    size_t (*macs)(const struct net_layer *l);
};

/* A cross-layer fusion net.c applies (same results as the separate layers): a max pool
 * after a ReLU writes the ReLU's input gradient dz directly, gated by the ReLU's input
 * z >= 0, and the ReLU's backward is skipped; the gradient between the two (dacts of the
 * pool's input) is then not computed. (A conv writing its ReLU's output from its own store
 * was measured slower than the separate pass: two store streams.) */
void net__mp_backward_relu(struct net_layer *l, float *dz, const float *dout, const float *z,
                           size_t B);
/* ReLU -> max pool forward: the pool reads max(z, 0) of the ReLU's input z (the same maxima
 * and argmaxes as over the ReLU's output) and the ReLU's forward is skipped: its output
 * activations are not written (nothing reads them: the backward above gates on z). */
void net__mp_forward_relu(struct net_layer *l, float *out, const float *z, size_t B);

/* Dense -> ReLU: the dense layer writes its output out and relu = max(out, 0) from one
 * store, and the ReLU's forward is skipped. ReLU -> dense: the dense layer's data gradient
 * is written gated by the ReLU's input (gate >= 0), i.e. straight into the ReLU's input
 * gradient, and the ReLU's backward is skipped (dacts of the dense layer's input is then not
 * computed). gate NULL: the plain data gradient. */
void net__dense_fwd_relu(struct net *n, struct net_layer *l, float *out, float *relu,
                         const float *inp, size_t B);
void net__dense_bwd_gate(struct net *n, struct net_layer *l, float *dinp, const float *gate,
                         const float *dout, const float *inp, size_t B);

extern const struct net__ops net__dense_ops, net__conv_ops, net__bn_ops, net__relu_ops,
    net__maxpool_ops, net__gap_ops, net__flatten_ops, net__res_ops;

/* Parameter / state pointers of a layer's k-th tensor (in declaration order). */
float *net__p(const struct net *n, const struct net_layer *l, size_t k);
float *net__g(const struct net *n, const struct net_layer *l, size_t k);

/* He-normal fill: std = sqrt(2 / fan_in). */
void net__he_fill(float *w, size_t count, size_t fan_in, uint64_t *rng);
/* A layer's weights (count) and bias (n_bias, b may be NULL) by n->init: He-normal and zero
 * bias, or torch's uniform +-1/sqrt(fan_in) for both. */
void net__init_fill(const struct net *n, float *w, float *b, size_t count, size_t n_bias,
                    size_t fan_in, uint64_t *rng);

/* Row-major C (M, N) = op(A) op(B) + beta C (alpha 1; trans* != 0: that operand transposed).
 * A large product is cut into one block of C's rows (split_rows) or columns per OpenMP
 * thread, each a serial sgemm. At batch-64 shapes this beats OpenBLAS's own threading, whose
 * threads synchronise inside the product: measured on the MLP's 784x512 layer (2 threads),
 * the weight gradient (K = 64) 209 -> 142 us cut by rows; the forward 212 -> 201 us by
 * columns. */
void net__sgemm_split(int split_rows, int transa, int transb, size_t M, size_t N, size_t K,
                      const float *A, size_t lda, const float *Bm, size_t ldb, float beta, float *C,
                      size_t ldc);

/* The dense layer's products (dense_gemm.c): AVX-512 or AVX2 + FMA kernels chosen by cpuid
 * (EVOWIDTH_DENSE=avx2 keeps them to AVX2, =blas uses OpenBLAS and plain loops, the
 * reference), whatever core type OpenBLAS runs. Row-major; threads by OpenMP.
 * C (M, N) = A (M, K) . B (N, K)^T + bias[n] (bias may be NULL); C2 (same ldc), when not
 * NULL, also gets max(C, 0). scratch: NULL (dot-product kernel) or NET__GEMM_NT_SCRATCH
 * floats (C^T by the broadcast kernel of net__gemm_bc, faster at batch-sized M). */
void net__gemm_nt(float *C, float *C2, const float *A, const float *Bm, const float *bias, size_t M,
                  size_t N, size_t K, size_t lda, size_t ldb, size_t ldc, float *scratch);
#define NET__GEMM_NT_SCRATCH(M, N, K) ((size_t)(K) * (M) + (size_t)(N) * (M))
/* C (M, N) = [C +] sum_k A[m * rsa + k * csa] B[k * ldb + n] (accum 1: add to C), then, when
 * gate is not NULL (layout of C), C = gate >= 0 ? C : 0. rsa == 1 or csa == 1. */
void net__gemm_bc(float *C, const float *A, const float *Bm, const float *gate, size_t M, size_t N,
                  size_t K, size_t rsa, size_t csa, size_t ldb, size_t ldc, int accum);
/* One SGD step on n elements (net_optim_step's arithmetic; the gradient is zeroed as read):
 * g' = g + d w; m = mu m + g'; w -= lr (nesterov ? g' + mu m : m). Inline, so each caller's
 * ISA vectorizes it. */
struct net__sgd {
    float *w, *m; // the tensor's weights and momentum, laid out as its gradient
    float lr, mu, d;
    int nest;
};
static inline __attribute__((always_inline)) void net__sgd_span(const struct net__sgd *s, float *g,
                                                                size_t off, size_t n)
{
    float *w = s->w + off, *m = s->m + off;
    const float lr = s->lr, mu = s->mu, d = s->d;
    const int nest = s->nest;
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i] + d * w[i];
        g[i] = 0.0f;
        m[i] = mu * m[i] + gi;
        w[i] -= lr * (nest ? gi + mu * m[i] : m[i]);
    }
}
/* The weight gradient A . B of net__gemm_bc (no accumulation, no gate) spent on s's step of
 * s->w, s->m (laid out as C) as each tile is finished, so the gradient never goes through
 * memory. C must be zero (a zero gradient arena) and is zero on return: the SIMD levels never
 * write it, the reference level computes into it and clears it as it steps. */
void net__gemm_bc_sgd(float *C, const float *A, const float *Bm, size_t M, size_t N, size_t K,
                      size_t rsa, size_t csa, size_t ldb, size_t ldc, const struct net__sgd *s);
/* Tests: use level 2 (AVX-512), 1 (AVX2) or 0 (reference) from now on, capped by the CPU;
 * returns the previous level. */
int net__gemm_force(int level);

// ---- convolution on (C, B, H, W) activations -----------------------------------------

struct net__conv {
    size_t C, H, W;    // input channels and size
    size_t OC, OH, OW; // output
    size_t K, S, P;    // kernel, stride, padding
};
void net__conv_geom(struct net__conv *g, size_t C, size_t H, size_t W, size_t OC, size_t K,
                    size_t S, size_t P);
/* Floats of scratch the conv needs: col, (CKK, B*OH*OW), 0 for a plain 1x1. */
size_t net__conv_col_size(const struct net__conv *g, size_t B);
/* What a convolution does to its output after the sum (fused into the direct kernels'
 * store, a separate pass on the im2col path), in this order:
 *   v = sum (+ b) (+ old out if accum) (+ add) ; v = gate > 0 ? v : 0 ; v = relu ? max(v, 0)
 * add and gate have the output's layout. An all-zero struct is a plain store. */
struct net__epi {
    const float *add;  // residual input, or NULL
    const float *gate; // a ReLU output whose zeros block the gradient, or NULL
    int accum;         // add to what the output holds
    int relu;          // ReLU forward
    double *stats;     // forward only, or NULL: stats[2 o] += sum over the stored channel o,
                       // stats[2 o + 1] += its sum of squares (a following BN's batch stats)
};

/* out (OC, B, OH, OW) = w (OC, C*K*K) * im2col(inp) + b. b may be NULL. */
void net__conv_fwd(float *out, float *col, const float *inp, const float *w, const float *b,
                   const struct net__conv *g, size_t B);
/* The same with an epilogue (e->accum must be 0). */
void net__conv_fwd_epi(float *out, float *col, const float *inp, const float *w, const float *b,
                       const struct net__conv *g, size_t B, const struct net__epi *e);
/* dw += dout * col^T; db += row sums of dout; dinp += col2im(w^T dout) when dinp != NULL.
 * col and dcol are scratch of net__conv_col_size floats each. */
void net__conv_bwd(float *dinp, float *dw, float *db, float *col, float *dcol, const float *dout,
                   const float *inp, const float *w, const struct net__conv *g, size_t B);
/* The same, the data gradient through epilogue e (accum 0: dinp is overwritten; no add or
 * relu; gate allowed). */
void net__conv_bwd_epi(float *dinp, float *dw, float *db, float *col, float *dcol,
                       const float *dout, const float *inp, const float *w,
                       const struct net__conv *g, size_t B, const struct net__epi *e);

/* 1 when this CPU runs AVX-512F, resp. AVX2 + FMA (checked once). */
int net__cpu_avx512(void);
int net__cpu_avx2(void);
/* A kernel family's level (2 AVX-512, 1 AVX2 + FMA, 0 none), worked out once into *cached
 * (-1 before): the CPU's best, at most max; 0 when the environment variable env is off_word,
 * at most 1 when it is "avx2". _force (tests) sets it to level, capped the same way, and
 * returns the level before. */
int net__simd_level(int *cached, int max, const char *env, const char *off_word);
int net__simd_force(int *cached, int max, const char *env, const char *off_word, int level);

/* Direct kernels (conv_direct.c) for stride-1 same-size convolutions with 1 < K <= 7 on a
 * CPU with AVX-512 or AVX2 + FMA; EVOWIDTH_CONV=avx2 keeps them to AVX2, =im2col turns
 * them off. _shape says whether the geometry qualifies, _ok also checks the CPU. _scratch:
 * floats they need (at any level). _force (tests): use level 2 (AVX-512), 1 (AVX2) or 0
 * (none) from now on, capped by the CPU; returns the previous level. */
int net__conv_direct_force(int level);
int net__conv_direct_level(void); // the level in use: 2, 1 or 0
/* The max pool's 2x2 / stride-2 planes in AVX-512 (level 2) or plain loops (below 2;
 * EVOWIDTH_POOL=scalar): _force (tests) as above, returns the previous level. */
int net__pool_force(int level);
int net__conv_direct_shape(const struct net__conv *g);
int net__conv_direct_ok(const struct net__conv *g);
size_t net__conv_direct_scratch(const struct net__conv *g);
/* out (OC, B, H, W) = epilogue(conv(inp; w) + b) (b may be NULL). */
void net__conv_direct_fwd(float *out, float *scratch, const float *inp, const float *w,
                          const float *b, const struct net__conv *g, size_t B,
                          const struct net__epi *e);
/* dw += weight gradient; db += bias gradient (row sums of dout, taken while the weight
 * gradient packs dout) when db != NULL; dinp = epilogue(data gradient) when dinp != NULL. */
/* dw NULL: the data gradient only (db is then ignored). */
void net__conv_direct_bwd(float *dinp, float *dw, float *db, float *scratch, const float *dout,
                          const float *inp, const float *w, const struct net__conv *g, size_t B,
                          const struct net__epi *e);
/* The im2col + sgemm path whatever the CPU (tests compare the two); plain epilogues. */
void net__conv_fwd_im2col(float *out, float *col, const float *inp, const float *w, const float *b,
                          const struct net__conv *g, size_t B);
void net__conv_bwd_im2col(float *dinp, float *dw, float *db, float *col, float *dcol,
                          const float *dout, const float *inp, const float *w,
                          const struct net__conv *g, size_t B);
/* Applies e's add / gate / relu to x (n floats) in place (the non-fused path). */
void net__epi_apply(float *x, const struct net__epi *e, size_t n);

// ---- batch norm over channels: element (c, i) lives at x[c * cs + i * is] -------------

#define NET__BN_EPS 1e-5f
#define NET__BN_MOMENTUM 0.1f
/* Training forward (batch statistics, running stats updated) or eval forward (running
 * statistics). xhat (C*N in the same layout) and inv (C) are saved for backward in both
 * modes, so a backward pass after an eval forward is the eval-mode function's gradient. */
void net__bn_fwd(float *out, float *xhat, float *inv, float *rmean, float *rvar, const float *inp,
                 const float *gamma, const float *beta, size_t C, size_t N, size_t cs, size_t is,
                 int training);
/* The same, and when out2 is not NULL out2 = relu(out) (a BN -> ReLU pair in one pass); in
 * training, stats (when not NULL) are the channels' sums and sums of squares over the N items
 * ([C][2], from the conv's store: net__epi.stats) instead of a pass over inp. */
void net__bn_fwd_relu(float *out, float *out2, float *xhat, float *inv, float *rmean, float *rvar,
                      const float *inp, const float *gamma, const float *beta, size_t C, size_t N,
                      size_t cs, size_t is, int training, const double *stats);
/* Buffers of 2 MiB or more (sample sets, activations, workspace, parameter arenas): 2 MiB-
 * aligned, rounded up to whole 2 MiB pages and marked for transparent huge pages, a hint that
 * changes nothing where the kernel has them off. Every pass over a big buffer otherwise pays
 * a TLB miss per 4 KiB page (a walk of two page tables under a hypervisor) and loses the
 * hardware prefetch at each page end; a random read of the training set paid one per sample.
 * Smaller buffers come from malloc / calloc; free() releases either. calloc_big zeroes. */
void *net__alloc_big(size_t bytes);
void *net__calloc_big(size_t n, size_t size);
/* Channel c's normalisation: training, the batch's mean and 1 / std from stats[2 c],
 * stats[2 c + 1] (sum, sum of squares) or, with stats NULL, a pass over x (channel c's N
 * items at stride is), inv[c] and the running statistics updated; eval, the running ones
 * (inv[c] set when inv is not NULL). */
void net__bn_moments(float *mean, float *istd, float *inv, float *rmean, float *rvar,
                     const float *x, size_t N, size_t is, int training, const double *stats,
                     size_t c);
/* st[2 c] += sum of x[c * N + i] over i < N, st[2 c + 1] += sum of its squares. */
void net__chan_stats(double *st, const float *x, size_t C, size_t N);
/* dinp = BN backward (overwrites); dgamma, dbeta accumulate. dinp may alias dout.
 * training says which forward it follows. */
void net__bn_bwd(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *xhat,
                 const float *inv, const float *gamma, size_t C, size_t N, size_t cs, size_t is,
                 int training);

/* BN -> ReLU backward in one: net__bn_bwd of dout gated by the ReLU, whose input
 * gamma * xhat + beta is recomputed from xhat (read anyway) instead of read from the
 * activations: three of the eight passes over the activation go. dinp may alias dout. */
void net__bn_bwd_relu(float *dinp, float *dgamma, float *dbeta, const float *dout,
                      const float *xhat, const float *inv, const float *gamma, const float *beta,
                      size_t C, size_t N, size_t cs, size_t is, int training);
/* Conv -> BN (training): the conv adds its channels' sums and sums of squares into stats
 * ([C][2], zeroed by the caller) as it stores (net__epi.stats), and the BN takes its batch
 * statistics from them instead of a pass over its input. BN -> ReLU: the BN also writes the
 * ReLU's output (relu, when not NULL) and the ReLU's forward is skipped. */
void net__conv_forward_stats(struct net *n, struct net_layer *l, float *out, const float *inp,
                             size_t B, double *stats);
void net__bn_forward_relu(struct net *n, struct net_layer *l, float *out, float *relu,
                          const float *inp, size_t B, int training, const double *stats);
/* The layer's half of it (layer_bn.c): BN layer l, dout = the ReLU's output gradient. */
void net__bn_backward_relu(struct net *n, struct net_layer *l, float *dinp, const float *dout,
                           size_t B);
/* BN -> ReLU -> 2x2 / stride-2 max pool in training (layer_pool.c), when
 * net__bn_pool_ok(pool layer): one pass from the BN's input z (C, B, H, W) writes the BN's
 * inv and batch means (its workspace; not xhat), the pool's output and its per-output codes
 * plus the winner's xhat (the pool's workspace); neither the BN's output nor the ReLU's is
 * written. stats as net__bn_forward_relu's (NULL: a pass over z). The backward takes the
 * pool's output gradient to the BN's input gradient (dinp; NULL: the BN's parameter
 * gradients only) without writing the two in between: the BN's sums come from the winners
 * alone, and xhat is recomputed from z (the same z, still in the activations). */
int net__bn_pool_ok(const struct net_layer *pool);
void net__bn_pool_forward(struct net *n, struct net_layer *bn, struct net_layer *pool, float *out,
                          const float *z, size_t B, const double *stats);
void net__bn_pool_backward(struct net *n, struct net_layer *bn, struct net_layer *pool, float *dinp,
                           const float *dout, const float *z, size_t B);

// ---- files: the shared pieces of the checkpoint and the compressed export (codec.c) -----

#define NET__ARCH_MAX_LAYERS 256

/* net_create, refused with -EINVAL before any arena is allocated when the layers need more
 * than max_params parameters or max_state statistics (a file's claim bounded by its size). */
int net__create_bounded(struct net **out, const struct net_shape *in, size_t n_classes,
                        const struct net_layer_spec *specs, size_t n_specs, size_t max_params,
                        size_t max_state, char *err, size_t errlen);
/* The ARCH chunk: input shape (u64 c, h, w), u64 classes, f32 mean[4], f32 std[4], u64 layer
 * count, per layer u32 kind | char name[NET_NAME_MAX] | u64 out, width, rank, k, stride,
 * pad | u32 bias | u32 bn, then u64 n_params, u64 n_state. */
void net__arch_write(struct net_wr *w, const struct net *n);
/* Reads the next chunk of r, which must be ARCH, checks every field (kinds, sizes, layer
 * count, arena sizes at most max_params / max_state and equal to what the layers need) and
 * builds the net with zero tensors. -EINVAL / -ENOMEM with a reason naming path. */
int net__arch_read(struct net_rd *r, const char *path, size_t max_params, size_t max_state,
                   struct net **out, char *err, size_t errlen);
/* Caller blobs: tags of four characters, none reserved, none twice. */
int net__blobs_check(const struct ckpt_blob *blobs, size_t n_blobs, const char *const *reserved,
                     size_t n_reserved, const char *path, char *err, size_t errlen);
/* Each blob as a chunk of its own. */
void net__blobs_write(struct net_wr *w, const struct ckpt_blob *blobs, size_t n_blobs);
/* Appends a copy of what is left of body as blob tag (NUL-terminated copy; -EEXIST when the
 * tag is already there, -ENOMEM). */
int net__blobs_add(struct ckpt_blob **bl, size_t *nbl, const char *tag, struct net_rd *body);
/* net__blobs_add for a file's chunk loop: on failure err names path and the chunk
 * ("duplicate chunk", -EINVAL; "out of memory for chunk", -ENOMEM). */
int net__blobs_take(struct ckpt_blob **bl, size_t *nbl, const char *tag, struct net_rd *body,
                    const char *path, char *err, size_t errlen);
/* After a file's chunk loop (more: net_rd_chunk's last answer, tag: its last tag): -EINVAL
 * with err naming path when the framing was truncated or when either of the two chunks
 * every such file holds (first, second) was not seen; 0 otherwise. */
int net__chunks_end(int more, const char *tag, const char *first, int got_first, const char *second,
                    int got_second, const char *path, char *err, size_t errlen);
/* The end of a loaded file's blobs: handed to the caller (*out, *n_out) when out is not
 * NULL, freed otherwise. */
void net__blobs_hand(struct ckpt_blob *bl, size_t nbl, struct ckpt_blob **out, size_t *n_out);

// ---- compression (compress.c), stored by the compressed export (export.c) --------------

#define NET__XZ_KMAX 4096 // k-means centroids at most: codes fit in 12 bits (the format: 16)

/* One tensor of a Deep Compression plan. */
struct net__xtensor {
    int weight;      // 1: compressed (a weight tensor); 0: stays f32
    int f16;         // raw values / codebook stored as float16
    size_t kmeans;   // centroids wanted (0: raw values)
    uint8_t *mask;   // (n) 1 = kept; NULL = nothing pruned
    size_t nnz;      // kept entries
    size_t k;        // centroids; 0 = not clustered (raw values)
    float *cent;     // (k) codebook, ascending after clustering
    float *vel;      // (k) momentum of the centroids
    double *acc;     // (k) gradient sums, scratch of the tuning step
    uint16_t *codes; // (n) centroid of each kept entry (pruned: 0, unused)
};

struct net_xplan {
    struct net_export_opts o;
    size_t n_tensors, n_params;
    struct net__xtensor *t; // (n_tensors); entries of state tensors are unused
};

#endif
