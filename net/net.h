/* net/net.h: the training engine's public interface (owner: net/).
 *
 * net/ owns the numerics of a network and nothing above them: layers, arenas, forward /
 * backward, optimizers, schedules, data sets, evaluation, model files, checkpoints, the
 * compressed export with Deep Compression's prune / k-means (compress.c, export.c) and the
 * one binary codec every file format uses (codec.h). No cJSON, no threads of its own beyond OpenMP.
 *
 * A `struct net` is a chain of layers described by `struct net_layer_spec` rows. Its
 * trainable tensors live in four float arenas of identical layout (params, grads, Adam m,
 * Adam v) built from one table of shapes; batch-norm running statistics live in a fifth
 * arena (`state`). A width change never edits a net in place: build a new net from new
 * specs, fill its tensors from the old one, swap (svd_adapt/ does this).
 *
 * Activation layouts: images travel as (C, B, H, W) ("spatial"), feature vectors as (B, F)
 * ("flat"). net_forward takes input as (B, C, H, W) and converts. `flatten` turns spatial
 * into flat in torch's order (channel c owns columns c*H*W .. (c+1)*H*W-1).
 *
 * Errors: 0 on success, negative errno on failure; functions that take `err, errlen` write
 * a one-line reason there. Nothing here exits, logs, or touches global state; threads are
 * OpenMP inside kernels plus OpenBLAS, sized by net_set_threads. */
#ifndef NET_NET_H
#define NET_NET_H

#include <stddef.h>
#include <stdint.h>

// ---- layers ---------------------------------------------------------------------------

enum net_kind {
    NET_DENSE, // z = W x + b, or z = A (B x) + b when rank > 0 (factorized)
    NET_CONV,  // 2-D convolution, any k/stride/pad; factorized: k x k to rank, 1 x 1 to out
    NET_BN,    // batch norm over channels (spatial) or features (flat)
    NET_RELU,
    NET_MAXPOOL, // k x k window, stride
    NET_GAP,     // global average pool: spatial (C,B,H,W) -> flat (B,C)
    NET_FLATTEN, // spatial -> flat
    NET_RES,     // conv-[BN]-ReLU-conv-[BN] + (identity | 1x1 conv-[BN]) shortcut, ReLU
    NET_KIND_COUNT
};

#define NET_NAME_MAX 32

/* One row of a model description (config or checkpoint); also what surgery rewrites. */
struct net_layer_spec {
    enum net_kind kind;
    char name[NET_NAME_MAX]; // unique; "" gets a default like "conv1"
    size_t out;              // dense units / conv or res output channels
    size_t width;            // res: inner width (channels of the first conv)
    size_t rank;             // dense/conv: factorized rank, 0 = plain
    size_t k, stride, pad;   // conv, maxpool (stride 0 = k); res: stride of first conv
    int bias;                // dense/conv: 1 = has bias
    int bn;                  // res: 1 = batch norm after each conv (and the projection)
};

/* Per-sample shape. Flat tensors have h = w = 1 and spatial = 0. */
struct net_shape {
    size_t c, h, w;
    int spatial;
};

/* A named tensor in an arena: "conv1.w" (OUT, IN, K, K), "conv1.b", "bn2.gamma", ... */
enum net_arena { NET_ARENA_PARAM, NET_ARENA_STATE };
struct net_tensor {
    char name[NET_NAME_MAX + 16];
    enum net_arena arena;
    size_t off, n;  // offset and element count in that arena
    size_t dims[4]; // unused trailing dims are 1
    int nd;
    int decay;    // 1 = weight decay applies (weights, not biases / BN)
    int fused;    // 1 = the last net_backward_update already stepped it: net_optim_step skips
    size_t layer; // owning layer index
};

struct net_layer {
    struct net_layer_spec spec;
    struct net_shape in, out;
    size_t t0, n_t; // this layer's tensors: net->tensors[t0 .. t0+n_t-1]
    float *ws;      // private saved activations (size from the kind's ws_size), borrowed
};

/* Initialisation schemes (net_init_params_with). */
enum net_init { NET_INIT_HE, NET_INIT_TORCH };

struct net_optim;

struct net {
    struct net_shape in_shape;
    size_t n_classes;
    float norm_mean[4], norm_std[4]; // input normalisation the model was trained with
    size_t n_layers;
    struct net_layer *layers; // (n_layers)
    size_t n_tensors;
    struct net_tensor *tensors; // (n_tensors)
    size_t n_params, n_state;
    float *params, *grads, *m, *v; // (n_params) each, identical layout
    float *state;                  // (n_state) BN running mean / var
    /* workspace, sized for ws_batch samples; acts[i] is the input of layer i, acts[n_layers]
     * the logits; dacts likewise for gradients. The output of a ReLU followed by a max pool
     * is not written (the pool reads the ReLU's input: net_internal.h). */
    size_t ws_batch;
    float **acts, **dacts;
    float *ws_pool, *scratch;
    size_t scratch_n;
    float *probs;       // (ws_batch, n_classes) softmax of the last forward
    int training;       // 1 after a training forward (BN used batch stats)
    double *chan_stats; // n_state + 2: a conv's channel sums for the BN after it (net.c)
    int grads_zero;     // 1 while the gradient arena is known to be all zero
    int bwd_store;      // 1 in a backward that began on a zero arena: dense layers store dW
    const struct net_optim *fuse; // set during net_backward_update (SGD): dense weights step
    float fuse_lr;                //   as their gradient is stored, at this learning rate
    enum net_init init;           // the scheme of the running net_init_params_with
};

/* Builds a net (no parameter values yet: all zero). Validates every spec against its input
 * shape; a bad one fails with -EINVAL and a reason naming the layer. */
int net_create(struct net **out, const struct net_shape *in, size_t n_classes,
               const struct net_layer_spec *specs, size_t n_specs, char *err, size_t errlen);
/* Frees everything; NULL is a no-op. */
void net_destroy(struct net *n);
/* Initial weights. NET_INIT_HE: He-normal weights (a residual branch's second conv at 0.1x
 * when the block has no BN), zero biases. NET_INIT_TORCH: what PyTorch's Linear / Conv2d do
 * by default, weights and biases uniform in +-1/sqrt(fan_in), no branch scaling (for
 * like-for-like comparisons with torch). Both: BN gamma 1 beta 0, running var 1. */
void net_init_params_with(struct net *n, uint64_t *rng, enum net_init scheme);
/* net_init_params_with(n, rng, NET_INIT_HE). */
void net_init_params(struct net *n, uint64_t *rng);
/* Finds a tensor by layer index and suffix ("w", "b", "a", "gamma", "c1.w", ...); NULL if
 * absent. Borrowed, valid until the net is destroyed. */
struct net_tensor *net_tensor_get(const struct net *n, size_t layer, const char *suffix);
/* Pointer to a tensor's values in its arena (params or state). */
float *net_tensor_data(const struct net *n, const struct net_tensor *t);
/* Sum of squares, in double, of slice j of the middle axis of w laid out (D0, m, B): the
 * fan-in column j of a dense / conv weight (m inputs, B = k * k taps), all outputs. */
double net_mid_sqnorm(const float *w, size_t D0, size_t m, size_t B, size_t j);
/* Layer index by name, or -1. */
long net_layer_find(const struct net *n, const char *name);
/* Multiply-adds of one forward pass for one sample. */
size_t net_macs(const struct net *n);
/* The size of one layer (li < n_layers): trainable parameters, multiply-adds per sample and
 * width (output channels or features; a residual block's inner width). */
struct net_layer_info {
    size_t params, macs, width;
};
void net_layer_info(const struct net *n, size_t li, struct net_layer_info *out);
/* A deep copy of n: layers, normalisation, parameters, Adam / momentum moments (m, v) and
 * batch-norm state; no workspace (net_reserve it). 0, -ENOMEM or net_create's error. */
int net_clone(struct net **out, const struct net *n);
const char *net_kind_name(enum net_kind k);
/* Kind from its config name ("dense", "conv", "bn", "relu", "maxpool", "gap", "flatten",
 * "res"); -1 if unknown. */
int net_kind_from_name(const char *s);

// ---- forward / backward ---------------------------------------------------------------

/* OpenMP and OpenBLAS threads (process-wide setting of those libraries). */
void net_set_threads(int n_threads);
/* Sizes the workspace for batches up to `batch`. -ENOMEM leaves the old one in place. */
int net_reserve(struct net *n, size_t batch);
/* Forward pass on x (B, C, H, W), already normalised. training = 1 uses batch statistics
 * in BN and updates running stats. If y is given returns mean cross-entropy, else 0.
 * Logits stay in n->acts[n_layers] (B, n_classes), softmax in n->probs. */
float net_forward(struct net *n, const float *x, const uint8_t *y, size_t B, int training);
/* The first `upto` layers of an eval-mode forward (acts[0..upto] filled exactly as net_forward
 * fills them; no loss, no softmax): what reads one layer's activations needs no more. */
void net_forward_prefix(struct net *n, const float *x, size_t B, size_t upto);
/* Backward of the last forward (which must have had labels): accumulates into grads.
 * dacts[i] is filled for every layer input after the first layer with tensors (the
 * gradients before it feed nothing and are skipped), except the input of a max pool or a
 * dense layer that follows a ReLU, and of a ReLU that follows a batch norm: those write the
 * earlier layer's input gradient directly. */
void net_backward(struct net *n, const uint8_t *y, size_t B);
/* Zeroes the gradient arena; free when it is known to be zero already (grads_zero: set at
 * creation and by net_optim_step, cleared by net_backward and net_group_lasso). Code that
 * writes n->grads any other way clears grads_zero. */
void net_zero_grad(struct net *n);

// ---- optimisation ---------------------------------------------------------------------

enum net_opt_kind { NET_SGD, NET_ADAMW };
struct net_optim {
    enum net_opt_kind kind;
    float momentum;     // SGD
    int nesterov;       // SGD
    float weight_decay; // SGD: L2 added to the gradient; AdamW: decoupled
    float beta1, beta2, eps;
    uint64_t t; // steps taken (Adam bias correction)
};
/* One update with learning rate lr, using n->grads and the m/v arenas; each gradient is
 * zeroed as it is read (grads_zero = 1 after). */
void net_optim_step(struct net *n, struct net_optim *o, float lr);
/* net_backward then net_optim_step, with the step of every dense weight fused into the store
 * of its gradient (SGD on a zero gradient arena: each tile of dW updates w and its momentum
 * while it is in cache, and the gradient is never written). The same arithmetic as the two
 * calls, so the same result to rounding; AdamW, or a gradient arena not known to be zero,
 * takes the two calls as they are. Use it when nothing reads the gradient between them
 * (no group lasso, no allreduce). Returns how many tensors were stepped in the store. */
size_t net_backward_update(struct net *n, const uint8_t *y, size_t B, struct net_optim *o,
                           float lr);

/* Group lasso (structured sparsity, Wen et al. 2016): adds lambda * sum_g ||w_g||_2 over the
 * rows (output units / filters) and the columns (input features / input-channel slices) of
 * every plain dense and conv weight, so whole units fall to zero. Adds its gradient
 * lambda * w / ||w_g|| (0 for an all-zero group) to n->grads and returns the penalty. */
double net_group_lasso(struct net *n, float lambda);

enum net_sched_kind { NET_SCHED_CONST, NET_SCHED_STEP, NET_SCHED_COSINE };
struct net_sched {
    enum net_sched_kind kind;
    float lr, min_lr;    // base and floor (cosine end)
    size_t warmup_steps; // linear ramp from 0 (cosine and step)
    size_t step_size;    // step: multiply by gamma every step_size steps
    float gamma;
    size_t total_steps; // cosine horizon
};
float net_sched_lr(const struct net_sched *s, size_t step);

// ---- random numbers (state is the caller's) -------------------------------------------

uint64_t net_rand_u64(uint64_t *s);
float net_rand_uniform(uint64_t *s); // [0, 1)
float net_rand_normal(uint64_t *s);  // N(0, 1)
/* Uniform integer in [0, n). */
size_t net_rand_below(uint64_t *s, size_t n);

// ---- data (net/data.c) ----------------------------------------------------------------

/* A labelled image set held as floats (n, C*H*W) in [0, 1] before normalisation. */
struct net_dataset {
    size_t n, n_classes;
    struct net_shape shape;
    float *x;   // (n, C, H, W), owned
    uint8_t *y; // (n), owned
};
/* IDX image + label files, plain or gzip (detected by magic bytes, not the name). Errors name
 * the file and what is wrong (missing, truncated, bad magic, count mismatch, bad label).
 * labels may be NULL (images alone): y is then all 0 and n_classes 0. */
int net_data_load_idx(struct net_dataset *d, const char *images, const char *labels, char *err,
                      size_t errlen);
/* CIFAR-10 binary batches (each record: 1 label byte + 3072 pixel bytes). */
int net_data_load_cifar(struct net_dataset *d, const char *const *files, size_t n_files, char *err,
                        size_t errlen);
/* Synthetic, learnable classes: each class is a fixed random template plus noise. */
int net_data_synthetic(struct net_dataset *d, size_t n, const struct net_shape *shape,
                       size_t n_classes, float noise, uint64_t seed);
/* Moves the last n_val samples of a shuffled order of `all` into `val`, the rest into
 * `train` (both newly allocated; `all` is freed). */
int net_data_split(struct net_dataset *all, struct net_dataset *train, struct net_dataset *val,
                   size_t n_val, uint64_t *rng);
/* Per-channel mean and std of a set (to store in the net), and applying them in place. */
void net_data_stats(const struct net_dataset *d, float *mean, float *std);
void net_data_normalize(struct net_dataset *d, const float *mean, const float *std);
void net_data_free(struct net_dataset *d);

/* Epoch-wise shuffled mini-batches with optional augmentation. All state is in the struct
 * so a checkpoint can store and restore it. */
struct net_batcher {
    size_t n, pos, epoch;
    uint32_t *perm;  // (n), owned
    uint64_t rng;    // shuffle and augmentation stream
    size_t crop_pad; // random crop after zero padding by this many pixels (0 = off)
    int flip;        // random horizontal flip
};
int net_batcher_init(struct net_batcher *b, size_t n, uint64_t seed, size_t crop_pad, int flip);
void net_batcher_free(struct net_batcher *b);
/* Fills x (B, C, H, W) and y (B) with the next B samples, reshuffling at epoch end.
 * Returns the number of samples written (always B). */
size_t net_batcher_next(struct net_batcher *b, const struct net_dataset *d, size_t B, float *x,
                        uint8_t *y);

// ---- evaluation -----------------------------------------------------------------------

struct net_eval {
    size_t n, n_classes;
    double loss, accuracy;
    size_t *confusion;               // (n_classes, n_classes): [true][pred], owned
    double *precision, *recall, *f1; // (n_classes), owned
};
int net_evaluate(struct net *n, const struct net_dataset *d, size_t batch, struct net_eval *ev);
void net_eval_free(struct net_eval *ev);

// ---- checkpoints (net/ckpt.c) ---------------------------------------------------------

/* A file is: header (magic "EVOW", version, sizeof(float), endianness probe), then tagged
 * chunks, then a CRC32 of everything before it. Chunks: ARCH (shapes, specs, normalisation),
 * PARM, STAT, and optionally OPTM (optimizer and m, v) and any caller blobs (tags of four
 * characters, e.g. "TRNR", "PLCY"). Written to path.tmp, fsynced, renamed, dir fsynced. */
struct ckpt_blob {
    char tag[5];
    void *data;
    size_t len;
};
int ckpt_save(const char *path, const struct net *n, const struct net_optim *opt,
              const struct ckpt_blob *blobs, size_t n_blobs, char *err, size_t errlen);
/* Loads and checks every field; on failure nothing is returned. If opt is given and the file
 * has optimizer state it is restored (m, v included) and *has_opt set. Extra blobs are
 * returned in a malloc'ed array the caller frees with ckpt_blobs_free. */
int ckpt_load(const char *path, struct net **out, struct net_optim *opt, int *has_opt,
              struct ckpt_blob **blobs, size_t *n_blobs, char *err, size_t errlen);
void ckpt_blobs_free(struct ckpt_blob *b, size_t n);
/* The same file image in memory (daemon/dist.c broadcasts it between MPI ranks): ckpt_encode
 * fills *out (a zeroed writer, its buffer then the caller's) with exactly the bytes ckpt_save
 * writes; ckpt_decode parses such bytes (borrowed) with ckpt_load's checks. path only names
 * the image in err. */
struct net_wr;
int ckpt_encode(struct net_wr *out, const struct net *n, const struct net_optim *opt,
                const struct ckpt_blob *blobs, size_t n_blobs, const char *path, char *err,
                size_t errlen);
int ckpt_decode(const unsigned char *buf, size_t len, const char *path, struct net **out,
                struct net_optim *opt, int *has_opt, struct ckpt_blob **blobs, size_t *n_blobs,
                char *err, size_t errlen);
/* Finds a blob by tag, NULL if absent (borrowed). */
const struct ckpt_blob *ckpt_blob_find(const struct ckpt_blob *b, size_t n, const char *tag);

// ---- compressed export (net/compress.c, net/export.c) ------------------------------

/* A compressed model file ("EVWZ"): versioned, CRC-checked, the payload deflated by zlib. It
 * holds the architecture, every parameter tensor as float32, float16 or k-means codes (a
 * codebook of K floats plus packed ceil(log2 K)-bit indices, pruned zeros as a code or a
 * bitmap), the BN statistics and caller blobs. Weights only are compressed: biases and batch
 * norm stay float32. No optimizer state: it is a model for evaluation. */
struct net_export_opts {
    int fp16;           // raw weights and codebooks as IEEE half (round to nearest even)
    size_t kmeans;      // 0 = off, else 2..4096 shared values per weight tensor
    size_t kmeans_conv; // the same for 4-D (conv) weights; 0 = as kmeans
    double prune;       // fraction of all weights, smallest |w| over the net, set to 0, [0, 1)
};
/* A plan (net/compress.c: Deep Compression's pruning, k-means and codebook tuning) binds
 * masks, codebooks and codes to one net's layout (opaque). Every plan call leaves the net's
 * params equal to what the file will decode to. */
struct net_xplan;
/* Chooses each tensor's encoding and prunes n's weights in place; zeroes n->m (the momentum
 * of net_xplan_tune). -EINVAL with a reason for bad options, -ENOMEM. */
int net_xplan_create(struct net_xplan **out, struct net *n, const struct net_export_opts *o,
                     char *err, size_t errlen);
void net_xplan_destroy(struct net_xplan *p); // NULL is a no-op
/* Per-layer 1-D k-means of the surviving weights (linear init over [min, max], Lloyd);
 * tensors with at most K survivors stay raw. 0, -EINVAL (other layout) or -ENOMEM. */
int net_xplan_cluster(struct net_xplan *p, struct net *n);
/* One fine-tuning update from n->grads (after net_backward), SGD with momentum 0.9: a
 * centroid moves by the sum of its members' gradients, other parameters by their own,
 * pruned weights stay 0. Never fails, never allocates. */
void net_xplan_tune(struct net_xplan *p, struct net *n, float lr);

/* Byte counts of one save: parts alone before and after deflate, the payload, the file. */
enum {
    NET_XPART_META,
    NET_XPART_WEIGHTS,
    NET_XPART_CODEBOOKS,
    NET_XPART_CODES,
    NET_XPART_MASKS,
    NET_XPART_OTHER,
    NET_XPART_COUNT
};
struct net_export_sizes {
    size_t f32_bytes; // (n_params + n_state) * 4: the float32 model
    size_t part[NET_XPART_COUNT], part_z[NET_XPART_COUNT];
    size_t payload, file;
};
/* Writes n as plan p encodes it (p NULL: all float32) plus blobs (copied), atomically as
 * ckpt_save does. sz may be NULL. */
int net_export_save(const char *path, const struct net *n, const struct net_xplan *p,
                    const struct ckpt_blob *blobs, size_t n_blobs, struct net_export_sizes *sz,
                    char *err, size_t errlen);
/* Loads an EVWZ file; corrupt or truncated files fail with -EINVAL and a reason naming the
 * file. Blobs as in ckpt_load (blobs may be NULL). */
int net_export_load(const char *path, struct net **out, struct ckpt_blob **blobs, size_t *n_blobs,
                    char *err, size_t errlen);
/* ckpt_load or net_export_load by the file's magic; an EVWZ file sets *has_opt = 0. */
int net_load_any(const char *path, struct net **out, struct net_optim *opt, int *has_opt,
                 struct ckpt_blob **blobs, size_t *n_blobs, char *err, size_t errlen);
/* IEEE binary16 conversions (round to nearest even; inf and nan kept). */
uint16_t net_f16_from_f32(float f);
float net_f32_from_f16(uint16_t h);

#endif
