#!/usr/bin/env python3
"""The accuracy-per-parameter frontier: adaptive against fixed width, over seeds (issue 10).

One model family (configs/compact.json scaled by one width multiplier for every layer):
  fixed     widths x MULT, adaptation off, for each multiplier;
  wide      compact x WIDE_MULT with adapt.target_params = each fixed net's size;
  narrow    configs/narrow.json with adapt.target_params = each fixed net's size.
Every run trains the same number of epochs (so the same step count) with a given seed; the
final model's validation accuracy is what selection may look at, the test set is evaluated once
at the end of each run (evowidth train's report). One CSV row per finished run; a run whose row
exists is skipped, so a half-done sweep resumes where it stopped (`--csv` again).

usage: bench/frontier.py [--csv FILE] [--epochs N] [--seeds 1,2,3] [--mults 0.5,1,...]
                         [--kinds fixed,wide,narrow] [--bin build/evowidth] [--threads N]
                         [--sizes-from CSV] [--dry-run]
"""
import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ["kind", "config", "mult", "seed", "target", "params", "macs_per_sample",
          "val_accuracy", "test_accuracy", "steps", "wall_seconds", "adapt_seconds",
          "initial_params", "epochs", "cpu_seconds"]


def scaled(cfg, mult):
    """compact's layers with every conv / hidden dense width times mult (at least 4)."""
    c = copy.deepcopy(cfg)
    dense = [l for l in c["model"] if l["type"] == "dense"]
    for l in c["model"]:
        if l["type"] == "conv" or (l["type"] == "dense" and l is not dense[-1]):
            l["out"] = max(4, int(round(l["out"] * mult)))
    return c


def run(bin_, cfg, seed, epochs, extra, workdir):
    """Trains cfg with evowidth train; returns its report (dict)."""
    path = os.path.join(workdir, "cfg.json")
    rep = os.path.join(workdir, "report.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    cmd = [bin_, "train", path, "--quiet", "--report", rep, "--epochs", str(epochs),
           "--set", "train.seed=%d" % seed] + extra
    # CPU seconds of the run: on a shared machine its wall time says more about the neighbours
    # than about the run; with one thread, CPU time is what a quiet machine's wall time would be.
    c0 = os.times()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    c1 = os.times()
    with open(rep) as f:
        r = json.load(f)
    r["cpu_seconds"] = (c1.children_user - c0.children_user) + (c1.children_system -
                                                                  c0.children_system)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default=os.path.join(TOP, "docs", "frontier.csv"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--mults", default="0.25,0.5,0.75,1,1.5")
    ap.add_argument("--wide-mult", type=float, default=1.5)
    ap.add_argument("--kinds", default="fixed,wide,narrow")
    ap.add_argument("--bin", default=os.path.join(TOP, "build", "evowidth"))
    ap.add_argument("--threads", type=int, default=0,
                    help="train.threads for every run (0: the config's own)")
    ap.add_argument("--sizes-from", default=None,
                    help="CSV whose fixed rows give the targets (default: --csv), so the "
                         "adaptive kinds can run beside the fixed ones into another CSV")
    ap.add_argument("--dry-run", action="store_true", help="list the runs still to do")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    mults = [float(m) for m in a.mults.split(",")]
    kinds = a.kinds.split(",")
    with open(os.path.join(TOP, "configs", "compact.json")) as f:
        compact = json.load(f)
    with open(os.path.join(TOP, "configs", "narrow.json")) as f:
        narrow = json.load(f)

    done = set()
    if os.path.exists(a.csv):
        with open(a.csv) as f:
            for r in csv.DictReader(f):
                done.add((r["kind"], r["mult"], r["seed"]))
    new = not os.path.exists(a.csv)
    out = open(a.csv, "a", newline="")
    w = csv.DictWriter(out, fieldnames=FIELDS)
    if new:
        w.writeheader()
        out.flush()

    # The fixed nets' sizes are the adaptive runs' targets, so the fixed runs of a seed go
    # before its adaptive ones; seed by seed, so a sweep cut short has whole seeds.
    work = tempfile.mkdtemp(prefix="evowidth-frontier-")
    order = {"fixed": 0, "wide": 1, "narrow": 2}
    plan = sorted(((k, m, s) for m in mults for s in seeds for k in kinds
                   if (k, "%g" % m, str(s)) not in done),
                  key=lambda p: (p[2], order.get(p[0], 3), p[1]))
    if a.dry_run:
        for p in plan:
            print("%s mult %g seed %d" % p)
        return 0
    for k, m, s in plan:
        if k == "fixed":
            cfg = scaled(compact, m)
            extra = ["--set", "adapt.enabled=false"]
            target = 0
        else:
            target = fixed_size(a.sizes_from or a.csv, m)
            if target is None:
                print("frontier: no fixed run of mult %g yet; add 'fixed' to --kinds" % m,
                      file=sys.stderr)
                continue
            cfg = scaled(compact, a.wide_mult) if k == "wide" else copy.deepcopy(narrow)
            extra = ["--set", "adapt.target_params=%d" % target]
        print("frontier: %s mult %g seed %d target %s" % (k, m, s, target or "-"),
              file=sys.stderr, flush=True)
        if a.threads > 0:
            extra += ["--set", "train.threads=%d" % a.threads]
        rep = run(a.bin, cfg, s, a.epochs, extra, work)
        # Each run's report (widths, every adaptation pass) beside the CSV, for the doc.
        traces = os.path.splitext(a.csv)[0] + ".runs"
        os.makedirs(traces, exist_ok=True)
        with open(os.path.join(traces, "%s-%g-%d.json" % (k, m, s)), "w") as f:
            json.dump(rep, f)
        w.writerow({
            "kind": k, "config": "compact" if k != "narrow" else "narrow", "mult": "%g" % m,
            "seed": s, "target": target, "params": rep["params"],
            "macs_per_sample": rep.get("macs_per_sample", rep.get("flops_per_sample")),
            "val_accuracy": rep.get("val_accuracy"), "test_accuracy": rep["test_accuracy"],
            "steps": rep["steps"], "wall_seconds": "%.1f" % rep["wall_seconds"],
            "adapt_seconds": "%.2f" % rep["adapt_seconds"],
            "initial_params": rep["initial_params"], "epochs": rep["epochs"],
            "cpu_seconds": "%.1f" % rep["cpu_seconds"]})
        out.flush()
    return 0


def fixed_size(path, m):
    """The parameter count of the fixed net of multiplier m, from the CSV."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["kind"] == "fixed" and float(r["mult"]) == m:
                return int(r["params"])
    return None


if __name__ == "__main__":
    sys.exit(main())
