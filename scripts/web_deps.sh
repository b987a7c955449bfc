#!/usr/bin/env bash
# Installs the npm packages of package.json (uPlot for the dashboard, playwright-core for its
# browser test) into node_modules, only when package-lock.json changed since the last install
# (idempotent: with node_modules in place it needs no network). The build runs it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
stamp=node_modules/.evowidth-lock.sha256
want=$(sha256sum package-lock.json package.json | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f node_modules/uplot/dist/uPlot.iife.min.js ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "evowidth: npm is missing; scripts/deps.sh installs it (Debian's nodejs and npm)" >&2
    exit 1
fi
echo "evowidth: npm install (package-lock.json changed or node_modules is missing)"
npm install --no-audit --no-fund --loglevel=error
echo "$want" >"$stamp"
