#!/usr/bin/env bash
# scripts/dashboard_screenshot.sh [MINUTES] [OUT.png]: regenerates docs/dashboard.png, the
# dashboard on the main job (configs/default.json) after MINUTES (default 5) of training.
# Runs a fresh evowidthd under nice on an ephemeral port with a temporary state dir, then
# takes a full-page screenshot in Debian's headless Chromium (tests/dashboard.mjs, through
# playwright-core), stops the daemon and removes the state. Needs `make build` and
# `scripts/deps.sh --test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-5}
out=${2:-$root/docs/dashboard.png}
build=${BUILD:-$root/build}
[ -x "$build/evowidthd" ] || { echo "build first: make build" >&2; exit 1; }
bash "$root/scripts/web_deps.sh" >/dev/null
tmp=$(mktemp -d "${TMPDIR:-/tmp}/evowidth-shot.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
nice -n 10 "$build/evowidthd" --config "$root/configs/default.json" --listen 127.0.0.1:0 \
    --state-dir "$tmp/state" >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 300); do grep -qs 'listening on http://' "$tmp/out" && break; sleep 0.2; done
port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$tmp/out")
[ -n "$port" ] || { echo "evowidthd did not start:"; cat "$tmp/err"; exit 1; } >&2
echo "evowidthd on port $port; screenshot in $minutes min"
sleep $((minutes * 60))
tail -n 2 "$tmp/err"
NODE_PATH="$root/node_modules" nice -n 10 node "$root/tests/dashboard.mjs" screenshot \
    "http://127.0.0.1:$port" "$out" 1500
