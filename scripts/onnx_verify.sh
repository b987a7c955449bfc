#!/usr/bin/env bash
# scripts/onnx_verify.sh MODEL [OUT.onnx]: exports a saved model to ONNX and checks it the
# way a user would trust it: onnx.checker (Debian's python3-onnx) on the file, then ONNX
# Runtime (onnxruntime-node, installed into build/ort by scripts/ort_setup.sh) on the whole
# Fashion-MNIST test set, raw pixels in: its logits must match `evowidth predict`'s within
# 1e-4 relative on every image and its test accuracy must equal `evowidth eval`'s to the last
# image. Both the BatchNormalization and the --fold-bn export are checked.
# Environment: BUILD (default build), IMAGES / LABELS (default Debian's Fashion-MNIST test set).
# Example (the main job's final model, after `make train`):
#   scripts/onnx_verify.sh build/default.evow build/default.onnx
set -euo pipefail
S=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "${BUILD:-$S/build}" && pwd)
model=${1:?usage: scripts/onnx_verify.sh MODEL [OUT.onnx]}
out=${2:-${model%.*}.onnx}
IMAGES=${IMAGES:-/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz}
LABELS=${LABELS:-/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz}
E=$B/evowidth
"$S/scripts/ort_setup.sh" "$B/ort"
export NODE_PATH=$B/ort/node_modules
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$E" export "$model" --format onnx -o "$out"
"$E" export "$model" --format onnx --fold-bn -o "$tmp/fold.onnx"
/usr/bin/python3 "$S/tests/onnx/onnx_check.py" "$out"
/usr/bin/python3 "$S/tests/onnx/onnx_check.py" "$tmp/fold.onnx"
"$E" eval "$model" --report "$tmp/eval.json" | head -1
"$E" predict "$model" "$IMAGES" --labels "$LABELS" --json -o "$tmp/pred.json"
node "$S/tests/onnx/ort_check.js" "$out" "$IMAGES" "$LABELS" --predict "$tmp/pred.json" \
  --eval "$tmp/eval.json" --tol 1e-4 --same-accuracy
node "$S/tests/onnx/ort_check.js" "$tmp/fold.onnx" "$IMAGES" "$LABELS" --predict "$tmp/pred.json" \
  --eval "$tmp/eval.json" --tol 1e-4
echo "onnx_verify: $out: ONNX Runtime agrees with evowidth (accuracy equal to the last image)"
