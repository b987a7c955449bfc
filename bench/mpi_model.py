#!/usr/bin/env python3
"""bench/mpi_model.py SAMPLES_PER_S [PARAMS] [BATCH]: expected scaling efficiency of
evowidth's data-parallel step (daemon/dist.h) on M machines, on paper.

Per step each machine computes BATCH/M samples (global batch fixed, strong scaling; the
"weak" column keeps BATCH per machine) at the measured single-machine rate, then waits for
one ring allreduce of the gradient arena (4 * PARAMS bytes: 2 (M-1)/M of it through each
link, in 2 (M-1) messages) and two small latency-bound allreduces (BN statistics + loss,
the stop flag: 2 log2 M messages each). No overlap of communication with compute (the
arena is summed after the backward pass). Link latency per message: 30 us at 10 Gbit/s
(TCP), 10 us at 100 Gbit/s. Efficiency = T(1) / (M T(M))."""
import math
import sys

sps = float(sys.argv[1])
params = int(sys.argv[2]) if len(sys.argv) > 2 else 862218
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 64
size = 4.0 * params
print("gradient arena %d floats = %.2f MB, global batch %d, one machine %.0f samples/s "
      "(%.1f ms a step)" % (params, size / 1e6, batch, sps, 1e3 * batch / sps))
print("| machines | 10 Gbit/s: allreduce ms | strong | weak | 100 Gbit/s: allreduce ms | strong | weak |")
print("|---|---|---|---|---|---|---|")
for m in (2, 4, 8, 16):
    row = ["%d" % m]
    for gbit, lat in ((10, 30e-6), (100, 10e-6)):
        bw = gbit * 1e9 / 8
        ar = 2 * (m - 1) / m * size / bw + 2 * (m - 1) * lat + 2 * 2 * math.log2(m) * lat
        strong = (batch / sps) / (m * (batch / sps / m + ar))
        weak = (batch / sps) / (batch / sps + ar)
        row += ["%.2f" % (1e3 * ar), "%.0f%%" % (100 * strong), "%.0f%%" % (100 * weak)]
    print("| " + " | ".join(row) + " |")
