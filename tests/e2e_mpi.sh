#!/usr/bin/env bash
# tests/e2e_mpi.sh BUILD_DIR SOURCE_DIR: data-parallel training on 2 MPI ranks (daemon/dist.h).
#
#  1. `mpirun -np 2 evowidth train` on configs/tiny.json with adaptation forced every 4 steps:
#     the report has world_size 2, two equal param_checksums that are the CRC-32 of the
#     saved model's parameter bytes, and a shrink and a grow, each event with the two ranks'
#     (equal) checksums taken right before it; `mpirun -np 1` is bit-identical to no mpirun.
#  2. 2 ranks x global batch 32 against 1 rank x batch 32, 56 steps, adaptation off: the
#     training loss of every step agrees within 2e-4 without batch norm (summation order
#     only; the lines print 4 decimals) and within 0.05 with it (each rank normalises its 16-sample shard).
#  3. SIGKILL of rank 1 mid-run: the job ends within 30 s with Open MPI's message naming the
#     dead process, the last checkpoint is complete (it loads), and --resume on 1 rank (a
#     different world size) finishes the run.
#  4. evowidthd under mpirun -np 2: /v1/status says world_size 2; a PATCH /v1/train reaches
#     both ranks (their change_seq and lr, and equal checksums at one step); POST /v1/adapt
#     and /v1/pause (the other rank does not spin while paused); POST /v1/stop ends the job
#     with exit code 0 and a final checkpoint.
# Skips (exit 77) only when mpirun is missing; scripts/deps.sh installs openmpi-bin.
set -u
. "$(dirname "$0")/lib.sh"
if ! command -v mpirun >/dev/null; then
    echo "SKIP: mpirun not found (scripts/deps.sh installs openmpi-bin)"
    exit 77
fi
e2e_init mpi "$@"
MPI=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && MPI+=(--allow-run-as-root)
# AddressSanitizer builds: LeakSanitizer reports what Open MPI itself never frees (only that
# is suppressed: tests/lsan_mpi.supp names Open MPI's libraries).
export LSAN_OPTIONS="${LSAN_OPTIONS:-}:suppressions=$SRC/tests/lsan_mpi.supp:print_suppressions=0"
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:fast_unwind_on_malloc=0"
export OMPI_MCA_mca_base_component_disable_dlclose=1
# ThreadSanitizer builds: reports inside Open MPI's own threads (tests/tsan_mpi.supp, the same
# libraries) are suppressed.
export TSAN_OPTIONS="${TSAN_OPTIONS:-}:suppressions=$SRC/tests/tsan_mpi.supp"
export OMP_WAIT_POLICY=passive
T=600 # seconds any one run may take (a sanitizer build on a loaded machine is slow)
MPID="" # a background mpirun (also in EXTRA_PIDS, killed on exit)

# cfg OUT EPOCHS [python statements on c]: a copy of configs/tiny.json.
cfg() {
    python3 - "$SRC/configs/tiny.json" "$1" "$2" "${3:-}" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["train"]["epochs"] = int(sys.argv[3])
exec(sys.argv[4])
json.dump(c, open(sys.argv[2], "w"))
PY
}
# crc_of MODEL: zlib.crc32 of the PARM chunk of a checkpoint (net/ckpt.c's layout).
crc_of() {
    python3 - "$1" <<'PY'
import struct, sys, zlib
b = open(sys.argv[1], "rb").read()
pos = 16
while pos < len(b) - 4:
    tag, n = b[pos:pos + 4], struct.unpack("<Q", b[pos + 4:pos + 12])[0]
    if tag == b"PARM":
        print(zlib.crc32(b[pos + 12:pos + 12 + n]))
        break
    pos += 12 + n
PY
}

# ---- 1. two ranks through a shrink and a grow (grow_after_shrink: both kinds of surgery) ------
cfg "$TMP/adapt.json" 3 'c["adapt"].update(interval_steps=4, warmup_steps=4, cooldown_steps=4, grow_after_shrink=True)'
timeout "$T" "${MPI[@]}" -np 2 "$EW" train "$TMP/adapt.json" --quiet -o "$TMP/r2.evow" \
    --report "$TMP/r2.json" >"$TMP/r2.out" 2>"$TMP/r2.err" ||
    die "mpirun -np 2 evowidth train" "$(tail -n 5 "$TMP/r2.err")"
python3 - "$TMP/r2.json" "$(crc_of "$TMP/r2.evow")" <<'PY' && ok "2 ranks: world_size 2, equal checksums (the saved parameters' CRC), a shrink and a grow, equal checksums before every surgery" || bad "2-rank report" "see above"
import json, sys
d = json.load(open(sys.argv[1]))
cs, ev = d["param_checksums"], d["adaptations"]
errs = []
if d["world_size"] != 2: errs.append("world_size %r" % d["world_size"])
if len(cs) != 2 or cs[0] != cs[1]: errs.append("param_checksums %r" % cs)
if str(cs[0]) != sys.argv[2]: errs.append("checksum %s is not the model's PARM CRC %s" % (cs[0], sys.argv[2]))
if not any(e["params_after"] < e["params_before"] for e in ev): errs.append("no shrink")
if not any(e["params_after"] > e["params_before"] for e in ev): errs.append("no grow")
for e in ev:
    p = e.get("param_checksums")
    if e.get("world_size") != 2 or not p or len(p) != 2 or p[0] != p[1]:
        errs.append("event at step %d: checksums %r" % (e["step"], p))
print("%d adaptations, params %d -> %d, checksums %s" % (len(ev), d["initial_params"], d["params"], cs))
if errs: print("\n".join(errs)); sys.exit(1)
PY
"$EW" train "$TMP/adapt.json" --quiet -o "$TMP/p1.evow" --report "$TMP/p1.json" 2>"$TMP/p1.err" ||
    die "evowidth train (no mpirun)" "$(tail -n 5 "$TMP/p1.err")"
timeout "$T" "${MPI[@]}" -np 1 "$EW" train "$TMP/adapt.json" --quiet -o "$TMP/m1.evow" \
    --report "$TMP/m1.json" 2>"$TMP/m1.err" || die "mpirun -np 1" "$(tail -n 5 "$TMP/m1.err")"
a=$(js 'd["param_checksums"], d["test_loss"], len(d["adaptations"])' <"$TMP/p1.json")
b=$(js 'd["param_checksums"], d["test_loss"], len(d["adaptations"])' <"$TMP/m1.json")
[ "$a" = "$b" ] && [ "$(crc_of "$TMP/p1.evow")" = "$(crc_of "$TMP/m1.evow")" ] &&
    ok "mpirun -np 1 is bit-identical to a plain run (checksum, test loss, adaptations: $a)" ||
    bad "mpirun -np 1 = plain run" "$a vs $b"

# ---- 2. 2 ranks x B against 1 rank x B ---------------------------------------------------------
# steps FILE: "step loss" of each progress line (log_every_seconds 1e-6: every step).
steps() { sed -n 's/.* step \([0-9]*\)\/[0-9]*  loss \([0-9.]*\) .*/\1 \2/p' "$1"; }
for variant in nobn bn; do
    if [ $variant = nobn ]; then
        py='c["model"] = [m for m in c["model"] if m["type"] != "bn"]'
        tol=2e-4 # the progress lines print 4 decimals
    else
        py=''
        tol=0.05
    fi
    cfg "$TMP/$variant.json" 4 "c['adapt']['enabled'] = False; c['train']['log_every_seconds'] = 1e-6; $py"
    "$EW" train "$TMP/$variant.json" -o "" >"$TMP/$variant.1" 2>&1 || die "1 rank $variant"
    timeout "$T" "${MPI[@]}" -np 2 "$EW" train "$TMP/$variant.json" -o "" >"$TMP/$variant.2" 2>&1 ||
        die "2 ranks $variant" "$(tail -n 5 "$TMP/$variant.2")"
    steps "$TMP/$variant.1" >"$TMP/$variant.s1"
    steps "$TMP/$variant.2" >"$TMP/$variant.s2"
    python3 - "$TMP/$variant.s1" "$TMP/$variant.s2" "$tol" <<PY && ok "$variant: 2 ranks x 32 match 1 rank x 32 over every step (tolerance $tol)" || bad "$variant loss match" "see above"
import sys
a = [l.split() for l in open(sys.argv[1])]
b = [l.split() for l in open(sys.argv[2])]
tol = float(sys.argv[3])
if len(a) < 50 or [x[0] for x in a] != [x[0] for x in b]:
    print("steps differ or fewer than 50: %d vs %d" % (len(a), len(b))); sys.exit(1)
d = max(abs(float(x[1]) - float(y[1])) for x, y in zip(a, b))
print("$variant: %d steps, max |loss difference| %.2g, final %s vs %s" % (len(a), d, a[-1][1], b[-1][1]))
sys.exit(0 if d <= tol else 1)
PY
done

# ---- 3. a rank dies ------------------------------------------------------------------------------
cfg "$TMP/long.json" 2000 'c["daemon"] = {"checkpoint_every_steps": 20}; c["train"]["log_every_seconds"] = 0.05'
"${MPI[@]}" -np 2 "$EW" train "$TMP/long.json" -o "$TMP/k.evow" >"$TMP/k.out" 2>"$TMP/k.err" &
MPID=$!
EXTRA_PIDS=$MPID
past() { # the progress lines passed step $1 and a checkpoint exists
    local s
    s=$(sed -n 's/.* step \([0-9]*\)\/.*/\1/p' "$TMP/k.out" | tail -n 1)
    [ -f "$TMP/k.evow" ] && [ -n "$s" ] && [ "$s" -gt "$1" ]
}
wait_for 300 past 100 || die "2-rank run reaches step 100" "$(tail -n 3 "$TMP/k.err")"
victim=""
for p in $(pgrep -P "$MPID"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && victim=$p
done
[ -n "$victim" ] || die "find rank 1" "no child of mpirun $MPID with OMPI_COMM_WORLD_RANK=1"
t0=$SECONDS
kill -9 "$victim"
end=$((SECONDS + 30))
while kill -0 "$MPID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
if kill -0 "$MPID" 2>/dev/null; then
    bad "job ends after rank 1's SIGKILL" "mpirun still running after 30 s"
    kill -9 "$MPID"
else
    wait "$MPID"
    code=$?
    grep -qi "signal 9\|killed" "$TMP/k.err" && [ "$code" -ne 0 ] &&
        ok "rank 1 SIGKILLed: the job ended in $((SECONDS - t0)) s, exit $code, with: $(grep -i -m1 'signal 9\|killed' "$TMP/k.err" | sed 's/^ *//')" ||
        bad "rank death message" "exit $code: $(tail -n 3 "$TMP/k.err")"
fi
MPID="" EXTRA_PIDS=""
"$EW" layers "$TMP/k.evow" >/dev/null 2>"$TMP/kl.err" && ok "the last checkpoint is complete (it loads)" ||
    bad "checkpoint after the kill" "$(cat "$TMP/kl.err")"
# Resume on one rank (the run was written by two): finish 2 epochs past the checkpoint.
s0=$(python3 - "$TMP/k.evow" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
pos = 16
while pos < len(b) - 4:
    tag, n = b[pos:pos + 4], struct.unpack("<Q", b[pos + 4:pos + 12])[0]
    if tag == b"TRNR":
        print(struct.unpack("<Q", b[pos + 16:pos + 24])[0])  # u32 version | u64 step
        break
    pos += 12 + n
PY
)
ep=$((s0 / 14 + 2))
timeout "$T" "$EW" train "$TMP/long.json" -o "$TMP/k.evow" --resume --epochs $ep --quiet \
    --report "$TMP/kr.json" >"$TMP/kr.out" 2>"$TMP/kr.err" &&
    [ "$(js 'd["steps"], d["world_size"]' <"$TMP/kr.json")" = "$((ep * 14)) 1" ] &&
    ok "resumed on 1 rank from the 2-rank checkpoint at step $s0 and finished at step $((ep * 14))" ||
    bad "resume with another world size" "from step $s0 to epoch $ep: $(js 'd["steps"], d["world_size"]' <"$TMP/kr.json" 2>&1) $(tail -n 3 "$TMP/kr.err")"

# ---- 4. the daemon on two ranks ------------------------------------------------------------------
cfg "$TMP/cfg.json" 5000 "c['daemon'] = {'listen': '127.0.0.1:0', 'state_dir': '$TMP/state', 'checkpoint_every_steps': 100}"
"${MPI[@]}" -np 2 "$DAEMON" --config "$TMP/cfg.json" >"$TMP/d.out" 2>"$TMP/d.err" &
MPID=$!
EXTRA_PIDS=$MPID
wait_for 300 grep -qs "listening on http://" "$TMP/d.out" || die "daemon on 2 ranks starts" "$(tail -n 5 "$TMP/d.err")"
PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$TMP/d.out")
BASE=http://127.0.0.1:$PORT
[ "$(get /v1/status | js 'd["world_size"]')" = 2 ] && ok "/v1/status: world_size 2" ||
    bad "/v1/status world_size" "$(get /v1/status | head -c 300)"
code=$(api PATCH /v1/train -H 'Content-Type: application/json' -d '{"lr":0.0123}')
[ "$code" = 200 ] || bad "PATCH /v1/train" "$code $(cat "$TMP/body")"
# ranks_agree: every rank reports change_seq 1, lr 0.0123 (cosine-scheduled from it) and the
# same checksum at the same step.
ranks_agree() {
    get /v1/status | python3 -c "
import json, sys
r = json.load(sys.stdin).get('ranks') or []
ok = len(r) == 2 and all(x['change_seq'] == 1 and abs(x['lr'] - 0.0123) < 1e-3 for x in r)
ok = ok and r[0]['step'] == r[1]['step'] and r[0]['param_checksum'] == r[1]['param_checksum']
print(r, file=sys.stderr) if not ok else None
sys.exit(0 if ok else 1)" 2>"$TMP/ranks"
}
wait_for 60 ranks_agree && ok "PATCH /v1/train applied on both ranks (change_seq, lr; equal checksums)" ||
    bad "PATCH on both ranks" "$(cat "$TMP/ranks")"
code=$(api POST /v1/adapt)
[ "$code" = 200 ] && ok "POST /v1/adapt on 2 ranks" || bad "POST /v1/adapt" "$code $(cat "$TMP/body")"
code=$(api POST /v1/pause)
[ "$code" = 200 ] || bad "POST /v1/pause" "$code"
follower=""
for p in $(pgrep -P "$MPID"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && follower=$p
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
if [ -n "$follower" ]; then
    sleep 0.5
    c0=$(cpu "$follower")
    sleep 2
    c1=$(cpu "$follower")
    tps=$(getconf CLK_TCK)
    [ $((c1 - c0)) -lt $((tps / 2)) ] && ok "paused: rank 1 used $(((c1 - c0) * 1000 / tps)) ms of CPU in 2 s (it waits, not spins)" ||
        bad "rank 1 idles while paused" "$(((c1 - c0) * 1000 / tps)) ms of CPU in 2 s"
else
    bad "find rank 1 of the daemon" "no child of mpirun $MPID with OMPI_COMM_WORLD_RANK=1"
fi
wait_for 60 ranks_agree || bad "checksums equal after adapt and pause" "$(cat "$TMP/ranks")"
code=$(api POST /v1/stop)
[ "$code" = 200 ] || [ "$code" = 202 ] || bad "POST /v1/stop" "$code $(cat "$TMP/body")"
end=$((SECONDS + 30))
while kill -0 "$MPID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
if kill -0 "$MPID" 2>/dev/null; then
    bad "2-rank daemon stops on POST /v1/stop" "still running after 30 s"
else
    wait "$MPID"
    code=$?
    [ "$code" = 0 ] && grep -q "stopped at step" "$TMP/d.err" &&
        ok "POST /v1/stop: both ranks ended, exit 0, $(grep -o 'stopped at step [0-9]*' "$TMP/d.err")" ||
        bad "clean stop" "exit $code: $(tail -n 3 "$TMP/d.err")"
fi
MPID="" EXTRA_PIDS=""
summary
