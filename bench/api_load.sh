#!/usr/bin/env bash
# bench/api_load.sh: does serving the HTTP API slow training down?
#
# Starts evowidthd on configs/ref_cnn.json (a temporary state dir, an ephemeral loopback port,
# enough epochs to outlast the run, periodic checkpoints off) and, after a warm-up, measures
# training throughput in phases of SECONDS each: no load, then `wrk --latency` hammering
# GET /v1/status, then no load again (ROUNDS times load + quiet, so drift on a shared machine
# shows). Throughput is measured from the step counter (steps x batch size / wall seconds),
# not from the daemon's cumulative average. Prints samples/s without load (mean of the quiet
# phases), with load, the % change, and wrk's /v1/status latency (p50, p99) and requests/s.
# Targets: samples/s falls by under 5 %, p99 under 10 ms (figures in docs/BENCHMARKS.md).
#
# Debian's wrk is wrk 4 (no -R rate option): the rate is capped by a Lua delay() between
# requests on each connection (--delay-ms; 0 = as fast as wrk can go, which mostly measures
# two processes fighting over this machine's cores).
#
# usage: bench/api_load.sh [--config FILE] [--build DIR] [--seconds S] [--warmup S]
#                          [--conns C] [--delay-ms D] [--rounds R] [--strict]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$ROOT/configs/ref_cnn.json"
BUILD_DIR="$ROOT/build"
SECONDS_PHASE=20
WARMUP=5
CONNS=4
DELAY_MS=10
ROUNDS=1
STRICT=0

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "api_load.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
    --config) CONFIG="${2:?$1 needs a value}"; shift 2 ;;
    --build) BUILD_DIR="${2:?$1 needs a value}"; shift 2 ;;
    --seconds) SECONDS_PHASE="${2:?$1 needs a value}"; shift 2 ;;
    --warmup) WARMUP="${2:?$1 needs a value}"; shift 2 ;;
    --conns) CONNS="${2:?$1 needs a value}"; shift 2 ;;
    --delay-ms) DELAY_MS="${2:?$1 needs a value}"; shift 2 ;;
    --rounds) ROUNDS="${2:?$1 needs a value}"; shift 2 ;;
    --strict) STRICT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
done
for v in SECONDS_PHASE WARMUP CONNS DELAY_MS ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "${v,,}: expected a non-negative integer, got '${!v}'"
done
[ "$SECONDS_PHASE" -ge 1 ] && [ "$CONNS" -ge 1 ] && [ "$ROUNDS" -ge 1 ] ||
    die "--seconds, --conns and --rounds must be >= 1"
DAEMON=$BUILD_DIR/evowidthd
[ -x "$DAEMON" ] || die "$DAEMON not found: build first (make build)"
command -v wrk >/dev/null || die "wrk not found: apt-get install wrk (or scripts/deps.sh wrk)"
command -v curl >/dev/null || die "curl not found: scripts/deps.sh installs it"
[ -f "$CONFIG" ] || die "no config $CONFIG"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/evowidth-api-load.XXXXXX")
DPID=""
cleanup() {
    [ -n "$DPID" ] && kill -9 "$DPID" 2>/dev/null && { wait "$DPID"; } 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A run long enough for every phase: epochs raised, periodic checkpoints off (they would be
# a disturbance of their own), the daemon on an ephemeral loopback port.
python3 - "$CONFIG" "$TMP" >"$TMP/cfg.json" <<'EOF' || die "cannot read $CONFIG"
import json, sys
c = json.load(open(sys.argv[1]))
c.setdefault("train", {})["epochs"] = 1000
c["daemon"] = {"listen": "127.0.0.1:0", "state_dir": sys.argv[2] + "/state",
               "checkpoint_every_steps": 0}
print(json.dumps(c))
EOF
BATCH=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["train"].get("batch_size", 64))' "$TMP/cfg.json")

"$DAEMON" --config "$TMP/cfg.json" >"$TMP/out" 2>"$TMP/err" &
DPID=$!
end=$((SECONDS + 120))
until grep -q "listening on http://" "$TMP/out"; do
    kill -0 "$DPID" 2>/dev/null || { cat "$TMP/err" >&2; die "evowidthd exited at start-up"; }
    [ $SECONDS -ge $end ] && die "evowidthd did not start listening within 120 s"
    sleep 0.2
done
PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$TMP/out")
URL=http://127.0.0.1:$PORT/v1/status

# step_now: the step counter and a wall-clock time, "STEP TIME".
step_now() {
    local s
    s=$(curl -sf --max-time 10 "$URL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])') ||
        die "GET /v1/status failed"
    echo "$s $(date +%s.%N)"
}
# rate "S0 T0" "S1 T1": samples per second between two readings.
rate() { python3 -c "import sys; s0,t0,s1,t1=map(float,sys.argv[1:]); print('%.0f' % ((s1-s0)*$BATCH/(t1-t0)))" $1 $2; }
quiet_phase() {
    local a b
    a=$(step_now)
    sleep "$SECONDS_PHASE"
    b=$(step_now)
    rate "$a" "$b"
}

cat >"$TMP/delay.lua" <<EOF
-- wrk 4 has no rate option: each connection waits this long between its requests.
function delay()
    return $DELAY_MS
end
EOF

echo "api_load: $(basename "$CONFIG"), batch $BATCH, $(nproc) cores; warm-up ${WARMUP} s," \
     "$ROUNDS round(s) of (no load, load) then no load, ${SECONDS_PHASE} s each" >&2
WRK=(wrk -t1 -c"$CONNS" -d"${SECONDS_PHASE}s" --timeout 5s --latency)
[ "$DELAY_MS" -gt 0 ] && WRK+=(-s "$TMP/delay.lua")
sleep "$WARMUP"
quiet=() loaded=()
for ((r = 1; r <= ROUNDS; r++)); do
    echo "api_load: round $r: no load" >&2
    quiet+=("$(quiet_phase)")
    echo "api_load: round $r: ${WRK[*]} $URL (${DELAY_MS} ms delay)" >&2
    a=$(step_now)
    "${WRK[@]}" "$URL" >"$TMP/wrk.$r" 2>&1 || { cat "$TMP/wrk.$r" >&2; die "wrk failed"; }
    b=$(step_now)
    loaded+=("$(rate "$a" "$b")")
done
echo "api_load: no load" >&2
quiet+=("$(quiet_phase)")
kill -0 "$DPID" 2>/dev/null || die "evowidthd died during the run"
for v in "${quiet[@]}" "${loaded[@]}"; do [ -n "$v" ] || die "could not read the step counter"; done

# wrk prints latencies as 512.00us / 1.23ms / 1.01s: convert to ms. With several rounds the
# latency reported is the worst round's and requests/s the mean.
to_ms() {
    python3 -c "import sys,re; m=re.match(r'([0-9.]+)(us|ms|s)$', sys.argv[1]);
print('nan' if not m else '%.2f' % (float(m.group(1)) * {'us': 1e-3, 'ms': 1.0, 's': 1e3}[m.group(2)]))" "$1"
}
p50s=() p99s=() rpss=()
for ((r = 1; r <= ROUNDS; r++)); do
    p50s+=("$(to_ms "$(awk '$1 == "50%" {print $2}' "$TMP/wrk.$r")")")
    p99s+=("$(to_ms "$(awk '$1 == "99%" {print $2}' "$TMP/wrk.$r")")")
    rpss+=("$(awk '$1 == "Requests/sec:" {print $2}' "$TMP/wrk.$r")")
done
errors=$(cat "$TMP"/wrk.* | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | paste -sd';' -)
read -r base load change p50 p99 rps verdict <<<"$(python3 - "${quiet[*]}" "${loaded[*]}" \
    "${p50s[*]}" "${p99s[*]}" "${rpss[*]}" <<'EOF'
import sys
q, ld, p50, p99, rps = ([float(x) for x in a.split()] for a in sys.argv[1:6])
base, load = sum(q) / len(q), sum(ld) / len(ld)
change = 100.0 * (load - base) / base if base > 0 else float("nan")
worst99 = max(p99)
ok = change > -5.0 and worst99 < 10.0
print("%.0f %.0f %+.1f %.2f %.2f %.0f %s" % (base, load, change, max(p50), worst99,
                                          sum(rps) / len(rps), "met" if ok else "MISSED"))
EOF
)"

printf '%-34s %s\n' "samples/s without load" "$base (phases: ${quiet[*]})"
printf '%-34s %s\n' "samples/s under /v1/status load" "$load (phases: ${loaded[*]})"
printf '%-34s %s\n' "change" "${change} % (target: a fall under 5 %)"
printf '%-34s %s\n' "/v1/status latency p50 / p99" "$p50 ms / $p99 ms (target p99 < 10 ms)"
printf '%-34s %s\n' "requests/s" "$rps (wrk -t1 -c$CONNS, ${DELAY_MS} ms delay per connection)"
[ -n "$errors" ] && printf '%-34s %s\n' "wrk errors" "$errors"
printf '%-34s %s\n' "load average (1 min) at the end" "$(cut -d' ' -f1 /proc/loadavg)"
printf '%-34s %s\n' "targets" "$verdict"
[ "$STRICT" = 1 ] && [ "$verdict" != met ] && exit 1
exit 0
