#!/usr/bin/env bash
# bench/mpi.sh [BUILD_DIR] [EPOCHS]: 1 rank x 2 threads against 2 ranks x 1 thread (MPI,
# daemon/dist.h) on configs/ref_cnn.json and configs/default.json (adaptation off, so the
# steps are comparable), then MPI_Allreduce of the main job's gradient arena (862,218
# floats) over shared memory and over TCP on loopback. Prints one line per run:
# samples/s, the share of step time inside the gradient allreduce, the bytes it moved per
# second of allreduce time, and the test accuracy (same global batch, so close to equal).
# Results go in docs/BENCHMARKS.md ("Several machines"). Not a test: the machine is shared.
set -euo pipefail
BUILD=${1:-build}
EPOCHS=${2:-1}
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/evowidth-bench-mpi.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
MPI=(mpirun)
[ "$(id -u)" -eq 0 ] && MPI+=(--allow-run-as-root)
export OMP_WAIT_POLICY=passive
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
for cfg in ref_cnn default; do
    for mode in 1x2 2x1; do
        args=(train "$SRC/configs/$cfg.json" --epochs "$EPOCHS" --quiet -o "" --set adapt.enabled=false
              --report "$OUT/$cfg-$mode.json")
        if [ $mode = 1x2 ]; then
            "$BUILD/evowidth" "${args[@]}" --threads 2 >/dev/null
        else
            "${MPI[@]}" -np 2 --bind-to core "$BUILD/evowidth" "${args[@]}" --threads 1 >/dev/null
        fi
        python3 - "$OUT/$cfg-$mode.json" "$cfg" "$mode" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t, a, b = d["train_seconds"], d["allreduce_seconds"], d["allreduce_bytes"]
print("%-8s %s ranks x threads: %6.0f samples/s, allreduce %4.1f%% of step time, %s, "
      "test accuracy %.2f%%, %d params" % (
          sys.argv[2], sys.argv[3], d["samples_per_second"], 100 * a / t if t else 0,
          "%.2f GB/s of gradient per allreduce second" % (b / a / 1e9) if a else "no allreduce",
          100 * d["test_accuracy"], d["params"]))
PY
    done
done
for btl in vader tcp; do
    echo -n "allreduce of 862,218 floats, 2 ranks, btl self,$btl: "
    "${MPI[@]}" -np 2 --bind-to core --mca btl "self,$btl" "$BUILD/mpi_allreduce" 862218 50
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
