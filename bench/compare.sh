#!/usr/bin/env bash
# bench/compare.sh: training throughput of evowidth against PyTorch on the reference architectures.
#
# For each arch in mlp cnn resnet main it runs, REPEATS times and alternating (ours, [base,]
# torch, ours, ...), our trainer on configs/ref_<arch>.json (main: configs/default.json with
# adaptation off, i.e. fixed width) and the PyTorch reference (torch_ref.py, same model, batch
# size, thread count, optimizer and epochs), then prints samples/s of every run, the ratio
# median(ours) / median(torch) against the target, test accuracies, parameter counts and the
# fraction of this machine's measured FMA limit (bench/fma_peak.c) and sgemm GFLOP/s a training
# step reaches. --base PATH adds a second evowidth binary (an older build) to every round and
# the ratio ours / base; --no-torch leaves PyTorch out (a machine without it). The same table is
# printed as markdown (and written to --md FILE) for docs/BENCHMARKS.md. See bench/README.md.
#
# usage: bench/compare.sh [--epochs E] [--repeats R] [--threads T] [--batch B]
#                         [--archs "mlp cnn resnet main"] [--build DIR | --bin PATH] [--no-build]
#                         [--base PATH] [--no-torch]
#                         [--torch-epochs F] [--torch-ref PATH] [--python PATH]
#                         [--md FILE] [--keep DIR] [--strict]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EPOCHS=1
TORCH_EPOCHS=""
REPEATS=2
THREADS=2
BATCH=64
ARCHS="mlp cnn resnet main"
BASE=""
NO_TORCH=0
BUILD_DIR="build"
BIN=""
NO_BUILD=0
TORCH_REF="${TORCH_REF:-}" # not in this repository: --torch-ref PATH or TORCH_REF=PATH
PYTHON="/usr/bin/python3" # Debian's python3 with python3-torch, not a pyenv/venv python3 on PATH
MD_FILE=""
KEEP=""
STRICT=0
DATA_DIR="/usr/share/datasets/fashion-mnist"

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --epochs E        epochs for both trainers (positive integer: ours takes whole epochs;
                    default 1 = 60000 samples; --steps-epochs is an alias)
  --repeats R       runs of each implementation per arch, alternating (default 2)
  --threads T       threads for both (default 2); --batch B: batch size for both (default 64)
  --archs LIST      space-separated subset of "mlp cnn resnet main" (main = configs/default.json,
                    adaptation off)
  --base PATH       also run this evowidth binary (e.g. main's build) in every round: ratio ours / base
  --no-torch        do not run PyTorch (when it is not installed; compare with --base instead)
  --build DIR       build directory for `make build BUILD=DIR` (default build)
  --bin PATH        use this evowidth binary instead of building (implies --no-build)
  --no-build        use DIR/evowidth as it is
  --torch-epochs F  epochs for torch_ref only (float; default: --epochs). For quick checks only:
                    the comparison is meant to use the same epochs for both.
  --torch-ref PATH  the PyTorch reference script (required; not in this repository;
                    the environment's TORCH_REF is the default)
  --python PATH     python with torch (default /usr/bin/python3)
  --md FILE         also write the markdown table to FILE
  --keep DIR        keep run logs and reports in DIR (default: a temporary directory, removed)
  --strict          exit 1 if a target is missed (default: exit 0 when all runs succeed)
EOF
}

die() { echo "compare.sh: $*" >&2; exit 2; }

CMDLINE="bench/compare.sh"
for a in "$@"; do
    case "$a" in *[[:space:]]*) CMDLINE+=" '$a'" ;; *) CMDLINE+=" $a" ;; esac
done

while [ $# -gt 0 ]; do
    case "$1" in
    --epochs | --steps-epochs) EPOCHS="${2:?$1 needs a value}"; shift 2 ;;
    --torch-epochs) TORCH_EPOCHS="${2:?$1 needs a value}"; shift 2 ;;
    --repeats) REPEATS="${2:?$1 needs a value}"; shift 2 ;;
    --threads) THREADS="${2:?$1 needs a value}"; shift 2 ;;
    --batch) BATCH="${2:?$1 needs a value}"; shift 2 ;;
    --archs) ARCHS="${2:?$1 needs a value}"; shift 2 ;;
    --build) BUILD_DIR="${2:?$1 needs a value}"; shift 2 ;;
    --bin) BIN="${2:?$1 needs a value}"; NO_BUILD=1; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --base) BASE="${2:?$1 needs a value}"; shift 2 ;;
    --no-torch) NO_TORCH=1; shift ;;
    --torch-ref) TORCH_REF="${2:?$1 needs a value}"; shift 2 ;;
    --python) PYTHON="${2:?$1 needs a value}"; shift 2 ;;
    --md) MD_FILE="${2:?$1 needs a value}"; shift 2 ;;
    --keep) KEEP="${2:?$1 needs a value}"; shift 2 ;;
    --strict) STRICT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || die "--epochs must be a positive integer (our trainer runs whole epochs), got '$EPOCHS'"
[ -n "$TORCH_EPOCHS" ] || TORCH_EPOCHS="$EPOCHS"
[[ "$TORCH_EPOCHS" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || die "--torch-epochs must be a number, got '$TORCH_EPOCHS'"
[[ "$REPEATS" =~ ^[1-9][0-9]*$ ]] || die "--repeats must be a positive integer"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "--batch must be a positive integer"
# The config of an arch and the --set options that make it the reference model.
arch_config() { if [ "$1" = main ]; then echo "$ROOT/configs/default.json"; else echo "$ROOT/configs/ref_$1.json"; fi; }
arch_sets() { [ "$1" = main ] && echo "--set adapt.enabled=false"; }
for arch in $ARCHS; do
    case "$arch" in mlp | cnn | resnet | main) ;; *) die "unknown arch '$arch' (mlp, cnn, resnet, main)" ;; esac
    [ -f "$(arch_config "$arch")" ] || die "missing $(arch_config "$arch")"
done
if [ -n "$BASE" ]; then [ -x "$BASE" ] || die "--base $BASE is not an executable"; fi
[ -n "$ARCHS" ] || die "--archs is empty"

# ---- prerequisites ------------------------------------------------------------------------

for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -f "$DATA_DIR/$f.gz" ] && [ ! -f "$DATA_DIR/$f" ]; then
        die "Fashion-MNIST is missing ($DATA_DIR/$f[.gz]). Install it with:
    sudo apt-get install dataset-fashion-mnist"
    fi
done
[ -x "$PYTHON" ] || die "$PYTHON not found. Install Debian's python and PyTorch with:
    sudo apt-get install python3 python3-torch python3-numpy"
if [ "$NO_TORCH" = 0 ]; then
    # PyTorch is Debian's (python3-torch), installed like every other dependency.
    if ! "$PYTHON" -c 'import torch, numpy' >/dev/null 2>&1 && [ "$PYTHON" = /usr/bin/python3 ]; then
        "$(dirname "$0")/../scripts/deps.sh" python3-torch python3-numpy
    fi
    if ! "$PYTHON" -c 'import torch, numpy' >/dev/null 2>&1; then
        die "$PYTHON cannot import torch/numpy. Install them with:
    sudo apt-get install python3-torch python3-numpy
(use Debian's /usr/bin/python3; a pyenv/venv python3 on PATH will not see them), or run with
--no-torch (and --base PATH to compare two builds of ours)"
    fi
    [ -n "$TORCH_REF" ] || die "name the PyTorch reference script torch_ref.py (not in this repository) with --torch-ref PATH or TORCH_REF=PATH"
    [ -f "$TORCH_REF" ] || die "the PyTorch reference $TORCH_REF is missing (see --torch-ref)"
fi
command -v gcc >/dev/null || die "gcc not found: sudo apt-get install build-essential"
pkg-config --exists openblas 2>/dev/null || die "OpenBLAS (openmp) not found: sudo apt-get install libopenblas-openmp-dev pkg-config"

# ---- work directory -----------------------------------------------------------------------

if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP" || die "cannot create $KEEP"
    WORK="$(cd "$KEEP" && pwd)"
else
    WORK="$(mktemp -d /tmp/evowidth-bench.XXXXXX)" || die "mktemp failed"
    trap 'rm -rf "$WORK"' EXIT
fi

# ---- evowidth binary ----------------------------------------------------------------------

case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
if [ -z "$BIN" ]; then
    BIN="$BUILD_DIR/evowidth"
    if [ "$NO_BUILD" = 0 ]; then
        echo "== building evowidth: make build BUILD=$BUILD_DIR" >&2
        if ! make -C "$ROOT" build BUILD="$BUILD_DIR" >"$WORK/build.log" 2>&1; then
            tail -n 25 "$WORK/build.log" >&2
            cp "$WORK/build.log" /tmp/evowidth-bench-build.log 2>/dev/null
            die "'make build' failed (full log: /tmp/evowidth-bench-build.log).
Another engineer's code may be in progress. Either retry later, run with --no-build to use
the existing $BIN as it is, or build a private binary of the trainer and pass it with --bin:
    cd $ROOT && gcc -std=c11 -D_GNU_SOURCE -DNDEBUG -O3 -march=native -fno-math-errno -fopenmp -I. \\
      \$(pkg-config --cflags openblas) cli/*.c net/*.c svd_adapt/*.c daemon/adapt.c \\
      daemon/config.c daemon/state.c daemon/trainer.c \\
      -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -llapacke -lcjson -lcurl -lz -lm -o /tmp/ew
    bench/compare.sh --bin /tmp/ew ..."
        fi
    fi
fi
[ -x "$BIN" ] || die "no evowidth binary at $BIN (build it with 'make build' or pass --bin PATH)"

# ---- FMA limit and sgemm peak -------------------------------------------------------------

SGEMM="$WORK/sgemm_peak"
gcc -std=c11 -O2 "$ROOT/bench/sgemm_peak.c" $(pkg-config --cflags --libs openblas) -o "$SGEMM" \
    2>"$WORK/sgemm_build.log" || { cat "$WORK/sgemm_build.log" >&2; die "building bench/sgemm_peak.c failed"; }
FMA="$WORK/fma_peak"
gcc -std=c11 -O2 -pthread "$ROOT/bench/fma_peak.c" -o "$FMA" \
    2>"$WORK/fma_build.log" || { cat "$WORK/fma_build.log" >&2; die "building bench/fma_peak.c failed"; }

measure_peak() { # best of two measurements (start, end): the machine is shared and noisy
    "$SGEMM" "$THREADS" >"$WORK/sgemm_$1.json" 2>&1 || { cat "$WORK/sgemm_$1.json" >&2; die "sgemm_peak failed"; }
    "$FMA" "$THREADS" >"$WORK/fma_$1.json" 2>&1 || { cat "$WORK/fma_$1.json" >&2; die "fma_peak failed"; }
}

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
echo "== load average at start: $LOAD_START (nproc $(nproc)); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}" >&2
echo "== measuring the FMA limit and the sgemm peak with $THREADS threads" >&2
measure_peak a

# ---- runs ---------------------------------------------------------------------------------

RUNS="$WORK/runs.tsv" # arch impl rep status path
: >"$RUNS"
per_round=$(( 1 + (NO_TORCH == 0 ? 1 : 0) + (${#BASE} > 0 ? 1 : 0) ))
n_total=$(( $(wc -w <<<"$ARCHS") * REPEATS * per_round ))
i=0
for arch in $ARCHS; do
    for rep in $(seq 1 "$REPEATS"); do
        # A: ours (and the base build, if any)
        for impl in ours base; do
            if [ "$impl" = ours ]; then bin="$BIN"; else bin="$BASE"; [ -n "$bin" ] || continue; fi
            i=$((i + 1))
            rpt="$WORK/${impl}_${arch}_$rep.json"
            cfg="$(arch_config "$arch")"
            echo "== [$i/$n_total] $impl  $arch run $rep: $bin train ${cfg#"$ROOT"/} $(arch_sets "$arch") --epochs $EPOCHS --threads $THREADS" >&2
            # shellcheck disable=SC2046 # arch_sets is a list of words on purpose
            "$bin" train "$cfg" $(arch_sets "$arch") --epochs "$EPOCHS" --threads "$THREADS" \
                --set "train.batch_size=$BATCH" --report "$rpt" -o "$WORK/${impl}_${arch}_$rep.evow" --quiet \
                >"$WORK/${impl}_${arch}_$rep.log" 2>&1
            st=$?
            [ $st -ne 0 ] || [ -s "$rpt" ] || st=1 # no report: count as a failure
            [ $st -eq 0 ] || { echo "   FAILED (exit $st):" >&2; tail -n 5 "$WORK/${impl}_${arch}_$rep.log" >&2; }
            rm -f "$WORK/${impl}_${arch}_$rep.evow"
            printf '%s\t%s\t%s\t%s\t%s\n' "$arch" "$impl" "$rep" "$st" "$rpt" >>"$RUNS"
        done
        [ "$NO_TORCH" = 0 ] || continue
        # B: torch
        i=$((i + 1))
        out="$WORK/torch_${arch}_$rep.out"
        echo "== [$i/$n_total] torch $arch run $rep: torch_ref.py $arch --epochs $TORCH_EPOCHS --threads $THREADS --batch $BATCH" >&2
        "$PYTHON" "$TORCH_REF" "$arch" --epochs "$TORCH_EPOCHS" --threads "$THREADS" --batch "$BATCH" \
            >"$out" 2>"$WORK/torch_${arch}_$rep.err"
        st=$?
        [ $st -ne 0 ] || grep -q '^{' "$out" || st=1 # no JSON line: count as a failure
        [ $st -eq 0 ] || { echo "   FAILED (exit $st):" >&2; tail -n 5 "$WORK/torch_${arch}_$rep.err" >&2; }
        printf '%s\ttorch\t%s\t%s\t%s\n' "$arch" "$rep" "$st" "$out" >>"$RUNS"
    done
done

echo "== measuring the FMA limit and the sgemm peak again" >&2
measure_peak b
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"

# ---- report -------------------------------------------------------------------------------

GIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || GIT="$GIT+dirty"
CPU="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')"
TORCH_VER="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not run')"

"$PYTHON" "$ROOT/bench/summarize.py" \
    --runs "$RUNS" --sgemm "$WORK/sgemm_a.json" --sgemm "$WORK/sgemm_b.json" \
    --fma "$WORK/fma_a.json" --fma "$WORK/fma_b.json" --coretype "${OPENBLAS_CORETYPE:-unset}" \
    --epochs "$EPOCHS" --torch-epochs "$TORCH_EPOCHS" --threads "$THREADS" --batch "$BATCH" \
    --command "$CMDLINE" --git "$GIT" --cpu "$CPU ($(nproc) cores)" --torch-version "$TORCH_VER" \
    --load "$LOAD_START -> $LOAD_END" --md "$MD_FILE" --strict "$STRICT"
status=$?
[ -n "$KEEP" ] && echo "== run logs and reports kept in $WORK" >&2
exit $status
