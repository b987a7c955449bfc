#!/usr/bin/env python3
"""Draws the frontier from bench/frontier.py's CSV with gnuplot, and prints its table.

Left: test accuracy against parameters (log x): fixed-width mean and spread per width, adaptive
runs from a wide and from a narrow start, each marked apart. Right: the same against training
time: CPU seconds when every row has them (one-thread runs: what a quiet machine's wall time
would be), else wall seconds. Never retrains: one command re-draws from the CSV.

usage: bench/frontier_plot.py [--csv docs/frontier.csv] [--out docs/frontier] [--md FILE]
"""
import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = [("fixed", "fixed width"), ("wide", "adaptive, wide start"),
         ("narrow", "adaptive, narrow start")]


def stats(v):
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def front_at(front, p):
    """The fixed-width front's mean test accuracy at p parameters: linear in log(parameters)
    between the two fixed widths around p. Under the smallest fixed width (a target run ends in
    [0.95, 1] x its target, so just under it) the smallest fixed net stands in: it has more
    parameters, so the comparison can only favour fixed width; marked with a '*'. None above
    the widths the sweep trained."""
    pts = sorted(front)
    if pts and p < pts[0][0]:
        return pts[0][1], "*"
    for (p0, a0), (p1, a1) in zip(pts, pts[1:]):
        if p0 <= p <= p1:
            w = (math.log(p) - math.log(p0)) / (math.log(p1) - math.log(p0)) if p1 > p0 else 0
            return a0 + w * (a1 - a0), ""
    if pts and p == pts[-1][0]:
        return pts[-1][1], ""
    return None, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default=os.path.join(TOP, "docs", "frontier.csv"))
    ap.add_argument("--out", default=os.path.join(TOP, "docs", "frontier"))
    ap.add_argument("--md", default=None, help="also write the table to this file")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    groups = {}
    for r in rows:
        groups.setdefault((r["kind"], float(r["mult"])), []).append(r)
    work = tempfile.mkdtemp(prefix="evowidth-plot-")
    table = ["| kind | width mult | target | runs | parameters (mean) | test accuracy % (mean +- sd) "
             "| fixed front at those parameters % | difference, points | validation % "
             "| wall s (mean) | CPU s (mean) | adaptation s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    front = []
    for (kk, m), rs in groups.items():
        if kk == "fixed":
            front.append((stats([float(r["params"]) for r in rs])[0],
                          stats([100 * float(r["test_accuracy"]) for r in rs])[0]))
    cpu = all(r.get("cpu_seconds") for r in rows)
    files = {}
    for k, _ in KINDS:
        path = os.path.join(work, k + ".dat")
        files[k] = path
        with open(path, "w") as f:
            for (kk, m), rs in sorted(groups.items()):
                if kk != k:
                    continue
                p, psd = stats([float(r["params"]) for r in rs])
                acc, asd = stats([100 * float(r["test_accuracy"]) for r in rs])
                val = [100 * float(r["val_accuracy"]) for r in rs if r["val_accuracy"]]
                vm = stats(val)[0] if val else float("nan")
                wall, wsd = stats([float(r["wall_seconds"]) for r in rs])
                cs = [float(r["cpu_seconds"]) for r in rs if r.get("cpu_seconds")]
                cm, csd = stats(cs) if cs else (float("nan"), 0.0)
                tm, tsd = (cm, csd) if cpu else (wall, wsd)
                ad = stats([float(r["adapt_seconds"]) for r in rs])[0]
                f.write("%g %g %g %g %g %g\n" % (p, psd, acc, asd, tm, tsd))
                fa, mark = front_at(front, p) if k != "fixed" else (None, "")
                fcol = ("%.2f%s" % (fa, mark) if fa is not None
                        else ("-" if k == "fixed" else "outside"))
                dcol = "%+.2f" % (acc - fa) if fa is not None else "-"
                table.append("| %s | %g | %s | %d | %.0f | %.2f +- %.2f | %s | %s | %.2f | %.0f | %.0f "
                             "| %.1f |" % (k, m, rs[0]["target"] or "-", len(rs), p, acc, asd, fcol,
                                           dcol, vm, wall, cm, ad))
    gp = """set terminal svg size 1100,450 dynamic enhanced font 'sans,11'
set output '{out}.svg'
call '{work}/body.gp'
set terminal png size 1100,450
set output '{out}.png'
call '{work}/body.gp'
""".format(out=a.out, work=work)
    body = """set multiplot layout 1,2 title 'Fashion-MNIST, compact family: test accuracy (mean and sd over seeds)'
set grid
set key bottom right
set logscale x
set xlabel 'parameters (log)'
set ylabel 'test accuracy %'
plot '{f}' u 1:3:2:4 w xyerrorlines lw 2 t 'fixed width', \\
     '{w}' u 1:3:2:4 w xyerrorbars pt 7 ps 1 t 'adaptive, wide start', \\
     '{n}' u 1:3:2:4 w xyerrorbars pt 5 ps 1 t 'adaptive, narrow start'
unset logscale x
set xlabel '{tl}'
plot '{f}' u 5:3:6:4 w xyerrorlines lw 2 t 'fixed width', \\
     '{w}' u 5:3:6:4 w xyerrorbars pt 7 ps 1 t 'adaptive, wide start', \\
     '{n}' u 5:3:6:4 w xyerrorbars pt 5 ps 1 t 'adaptive, narrow start'
unset multiplot
""".format(f=files["fixed"], w=files["wide"], n=files["narrow"],
           tl="training time, CPU s (one thread)" if cpu else "training wall time, s")
    open(os.path.join(work, "body.gp"), "w").write(body)
    open(os.path.join(work, "main.gp"), "w").write(gp)
    subprocess.run(["gnuplot", os.path.join(work, "main.gp")], check=True)
    text = "\n".join(table) + "\n"
    text += ("\n\\* under the smallest fixed width: compared with the smallest fixed net, which "
             "has more parameters.\n")
    print(text, end="")
    if a.md:
        open(a.md, "w").write(text)
    print("frontier: wrote %s.png and %s.svg" % (a.out, a.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
