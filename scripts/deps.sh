#!/usr/bin/env bash
# Installs what evowidth needs from Debian, only when something is missing (idempotent).
# Usage: scripts/deps.sh [--test] [extra-package ...]
#   --test  also what the test suite drives: Debian's chromium (the dashboard's browser test)
#           and prometheus (its promtool checks /metrics).
# Node.js and npm (the build bundles the dashboard's chart library from npm, scripts/
# web_deps.sh) come from Debian unless an npm is already on the PATH.
set -euo pipefail
extra=()
if [ "${1:-}" = --test ]; then
    shift
    extra=(chromium prometheus)
fi
pkgs=(build-essential cmake pkg-config libopenblas-openmp-dev liblapacke-dev libuv1-dev
      libcjson-dev zlib1g-dev libhttp-parser-dev dataset-fashion-mnist curl
      libcurl4-openssl-dev python3 libprotobuf-c-dev protobuf-c-compiler python3-onnx
      libopenmpi-dev openmpi-bin "${extra[@]}" "$@")
# The ONNX tests run ONNX Runtime under Node.js (scripts/ort_setup.sh installs it from npm) and
# the build bundles the dashboard's chart library from npm: a node / npm that did not come from
# Debian (e.g. nodesource's nodejs, which bundles npm and conflicts with Debian's npm) is kept.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then pkgs+=(nodejs npm); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "evowidth: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
