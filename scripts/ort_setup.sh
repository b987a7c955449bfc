#!/usr/bin/env bash
# Installs ONNX Runtime's Node.js binding (onnxruntime-node, pinned in
# scripts/onnxruntime/package-lock.json) into DIR/node_modules for the ONNX export tests.
# Idempotent: nothing happens when DIR already holds the locked versions. The package's
# install script only downloads optional GPU libraries, so it is skipped (--ignore-scripts):
# the CPU runtime ships inside the package.
# Usage: scripts/ort_setup.sh DIR      (the tests use BUILD_DIR/ort)
set -euo pipefail
dir=${1:?usage: scripts/ort_setup.sh DIR}
src=$(cd "$(dirname "$0")/onnxruntime" && pwd)
command -v node >/dev/null && command -v npm >/dev/null ||
  { echo "ort_setup: node and npm are needed: run scripts/deps.sh" >&2; exit 1; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/node_modules/.evowidth-lock" ] && cmp -s "$src/package-lock.json" "$dir/node_modules/.evowidth-lock" &&
   node -e "require('$dir/node_modules/onnxruntime-node')" 2>/dev/null; then
  exit 0
fi
cp "$src/package.json" "$src/package-lock.json" "$dir/"
echo "ort_setup: npm ci --ignore-scripts onnxruntime-node into $dir"
# Two tries: the registry is sometimes slow to answer.
(cd "$dir" && { npm ci --ignore-scripts --no-audit --no-fund --loglevel=error ||
                { sleep 5; npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; }; })
node -e "require('$dir/node_modules/onnxruntime-node')"
cp "$src/package-lock.json" "$dir/node_modules/.evowidth-lock"
