/* cli/onnx.h: models out of evowidth: ONNX and safetensors export, and `evowidth predict`
 * (owner: cli/, prefix cli_).
 *
 * ONNX: the graph takes raw pixels, float in [0, 255], NCHW ("pixels", batch dimension "N"),
 * applies the model's own input normalisation (x / 255, then (x - mean[c]) / std[c], the
 * same float operations net/data.c does) and returns "logits" (N, n_classes). Every layer
 * kind becomes standard operators of the default domain at opset CLI_ONNX_OPSET: dense ->
 * Gemm, conv -> Conv, batch norm -> BatchNormalization (or folded into the conv / dense
 * before it), relu -> Relu, maxpool -> MaxPool, gap -> GlobalAveragePool + Flatten,
 * flatten -> Flatten, a residual block -> Conv / BatchNormalization / Relu / Add, and a
 * factorized dense or conv layer -> two Gemm or two Conv. The protobuf is packed by
 * protobuf-c from Debian's onnx.proto (code generated at build time).
 *
 * Files are written to a temporary file beside the target, fsynced and renamed over it:
 * a failure never leaves a partial file and leaves an existing target untouched.
 * Errors: 0 or negative errno with a one-line reason in err. Nothing here exits. */
#ifndef CLI_ONNX_H
#define CLI_ONNX_H

#include <stddef.h>
#include <stdint.h>

#include "net/net.h"

#define CLI_ONNX_OPSET 13     // ai.onnx operator set the graph is written against
#define CLI_ONNX_IR_VERSION 7 // ONNX IR version of that opset (ONNX 1.8)

struct cli_onnx_opts {
    int fold_bn; // 1: a batch norm right after a conv / dense (or inside a residual block)
                 // is folded into that layer's weights and bias; 0: BatchNormalization
};

/* Writes n (borrowed, not changed) as an ONNX model to path. A layer the exporter cannot
 * express fails with -ENOTSUP and a reason naming the layer; nothing is written then. */
int cli_onnx_save(const char *path, const struct net *n, const struct cli_onnx_opts *o, char *err,
                  size_t errlen);

/* Writes every parameter and BN statistic of n as float32 safetensors (tensor names as in
 * the net: "conv1.w" (OUT, IN, K, K), "bn2.mean", ...), with the architecture, input shape,
 * class count and normalisation as string metadata. */
int cli_safetensors_save(const char *path, const struct net *n, char *err, size_t errlen);

/* Writes len bytes to path through a temporary file in the same directory (fsync, rename,
 * directory fsync). err names the path. */
int cli_write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen);

/* Images for predict: an IDX image file (plain or gzip; labels from an optional IDX label
 * file) or a CIFAR-10 binary batch (labels inside), told apart by the IDX magic number.
 * x is left in [0, 1] (not normalised); has_labels says whether d->y means anything. */
int cli_load_images(struct net_dataset *d, int *has_labels, const char *images, const char *labels,
                    char *err, size_t errlen);

/* Logits (n_images, n_classes) and softmax probabilities (same shape) of the model on d
 * (raw [0, 1] images, not changed): normalises a copy with the model's mean / std and runs
 * net_forward in eval mode in batches. Both outputs are malloc'ed; free them. -EINVAL (with
 * a reason naming the input) when the image shape is not the model's, -ENOMEM. */
int cli_predict(struct net *n, const struct net_dataset *d, float **logits, float **probs,
                char *err, size_t errlen);

/* `evowidth export MODEL --format onnx|safetensors [--fold-bn] -o FILE`; any other format
 * (or none: the EVWZ file) goes to cli/compress.c's dmn_cmd_export. */
int cli_cmd_export(int argc, char **argv);
/* `evowidth predict MODEL INPUT [--labels FILE] [--json | --csv] [-o FILE] [--limit N]`. */
int cli_cmd_predict(int argc, char **argv);

#endif
