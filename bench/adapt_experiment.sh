#!/usr/bin/env bash
# Issue 3's measurements on Fashion-MNIST, with the foreground trainer:
#   1. each adaptation mode (rotate, select, factorize) on the same config and seed;
#   2. a fixed-width network of the widths the adaptive run ended with, trained for the
#      same number of steps, adaptation off.
# Prints a markdown table (and writes it to --md FILE). Numbers come from --report JSON.
#
# usage: bench/adapt_experiment.sh [--config FILE] [--epochs N] [--modes "select rotate ..."]
#                                  [--bin PATH] [--out DIR] [--md FILE] [--no-fixed]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
config=$top/configs/default.json
epochs=""
modes="select rotate factorize"
bin=$top/build/evowidth
out=/tmp/evowidth-adapt
md=""
fixed=1
while [ $# -gt 0 ]; do
  case $1 in
    --config) config=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --md) md=$2; shift 2 ;;
    --no-fixed) fixed=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no evowidth at $bin: run 'make build' first" >&2; exit 1; }
mkdir -p "$out"
ep=()
[ -n "$epochs" ] && ep=(--epochs "$epochs")

run() { # name, extra args...
  local name=$1; shift
  echo "== $name" >&2
  "$bin" train "$config" "${ep[@]}" --quiet --report "$out/$name.json" -o "$out/$name.evow" "$@" >&2
}

for m in $modes; do
  run "adapt-$m" --set adapt.mode="$m"
  [ "$fixed" = 1 ] || continue
  # The fixed-width twin: the same config with the final widths and adaptation off.
  python3 - "$config" "$out/adapt-$m.json" "$out/fixed-$m.config.json" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1])); rep = json.load(open(sys.argv[2]))
widths = {l["name"]: l for l in rep["layers"]}
counts = {}
for layer in cfg["model"]:
    t = layer["type"]; counts[t] = counts.get(t, 0) + 1
    name = layer.get("name", f"{t}{counts[t]}")
    if t in ("dense", "conv") and name in widths:
        layer["out"] = widths[name]["width"]
        if widths[name].get("rank"): layer["rank"] = widths[name]["rank"]
    elif t == "res" and name in widths:
        layer["width"] = widths[name]["width"]; layer["out"] = widths[name]["out"]
cfg.setdefault("adapt", {})["enabled"] = False
json.dump(cfg, open(sys.argv[3], "w"), indent=1)
EOF
  "$bin" train "$out/fixed-$m.config.json" "${ep[@]}" --quiet --report "$out/fixed-$m.json" \
      -o "$out/fixed-$m.evow" >&2
done

python3 - "$out" "$fixed" $modes <<'EOF' | tee ${md:+"$md"}
import json, os, sys
out, fixed, modes = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
print("| run | test acc | params (start -> end) | wall s | adaptation s (% of wall) | surgeries kept / rolled back | mean val-loss jump at a surgery |")
print("|---|---|---|---|---|---|---|")
for m in modes:
    for kind in ("adapt", "fixed") if fixed else ("adapt",):
        r = json.load(open(f"{out}/{kind}-{m}.json"))
        ev = r.get("adaptations", [])
        kept = back = 0; jumps = []
        for e in ev:
            for c in e.get("changes", []):
                if "val_loss_after" in c:
                    jumps.append(c["val_loss_after"] - c["val_loss_before"])
                    if c.get("rolled_back"): back += 1
                    else: kept += 1
        mj = sum(jumps) / len(jumps) if jumps else 0.0
        name = f"{m} (adaptive)" if kind == "adapt" else f"fixed width of {m}'s final widths"
        adapt = f"{r['adapt_seconds']:.1f} ({100*r['adapt_seconds']/r['wall_seconds']:.1f}%)" if kind == "adapt" else "-"
        surg = f"{kept} / {back}" if kind == "adapt" else "-"
        mjs = f"{mj:+.4f}" if kind == "adapt" else "-"
        print(f"| {name} | {100*r['test_accuracy']:.2f}% | {r['initial_params']} -> {r['params']} | {r['wall_seconds']:.0f} | {adapt} | {surg} | {mjs} |")
EOF
