#!/usr/bin/env bash
# tests/e2e_train.sh BUILD_DIR SOURCE_DIR: the foreground `evowidth train` and its signals.
#
# On a slightly larger copy of configs/tiny.json (adaptation on, a few seconds of training):
# an uninterrupted run is the reference; a second run gets SIGTERM half way, must finish its
# step, write the run checkpoint to -o MODEL and exit 0, and `--resume` must end with
# exactly the reference's result (test loss to the last digit, accuracy, confusion, widths,
# parameters, steps and the adaptation log, less wall-clock fields). `--resume` with a
# setting that cannot change is refused naming its section and leaves MODEL alone; a second
# signal (SIGTERM then SIGINT, delivered together) exits at once with 128 + signal and no
# checkpoint; --resume without a MODEL file starts a new run.
set -u
. "$(dirname "$0")/lib.sh"
e2e_init train "$@"
TPID=""
need_bin "$EW"

python3 - "$SRC/configs/tiny.json" >"$TMP/cfg.json" <<'PY' || die "make config"
import json, sys
c = json.load(open(sys.argv[1]))
c["synthetic"].update(height=16, width=16, n_train=1024)
c["model"][0]["out"] = 16
c["model"][5]["out"] = 64
c["train"].update(epochs=300, log_every_seconds=0.05)
c["daemon"] = {"checkpoint_every_steps": 0}
print(json.dumps(c))
PY
# same_result A B: two --report files agree on everything but wall-clock fields.
same_result() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for d in (a, b):
    for k in ("wall_seconds", "train_seconds", "adapt_seconds", "samples_per_second",
              "cpu_seconds", "adapt_cpu_seconds"):
        d.pop(k, None)
    for e in d["adaptations"]:
        e.pop("time", None)
        e.pop("seconds", None)
diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
if diff:
    print("differ in", " ".join(diff), file=sys.stderr)
sys.exit(1 if diff else 0)
PY
}
# train_bg ARGS...: `evowidth train` in the background, output in $TMP/bg.out / bg.err.
train_bg() {
    # Emptied here, not by the child's redirection: that one runs after fork, and until it
    # does, past_step would read the last run's progress and signal a process still starting.
    : >"$TMP/bg.out"
    : >"$TMP/bg.err"
    "$EW" train "$TMP/cfg.json" "$@" >"$TMP/bg.out" 2>"$TMP/bg.err" &
    TPID=$!
    EXTRA_PIDS=$TPID
}
# past_step N: the background run's progress lines have passed step N.
past_step() {
    local s
    s=$(sed -n 's/.* step \([0-9]*\)\/.*/\1/p' "$TMP/bg.out" | tail -n 1)
    [ -n "$s" ] && [ "$s" -gt "$1" ]
}
# wait_train SECONDS: the background run's exit code in $EXIT_CODE (1 at the deadline).
wait_train() {
    local end=$((SECONDS + $1))
    while kill -0 "$TPID" 2>/dev/null; do
        [ $SECONDS -ge $end ] && { kill -9 "$TPID"; EXIT_CODE=timeout; return 1; }
        sleep 0.05
    done
    wait "$TPID"
    EXIT_CODE=$?
    TPID="" EXTRA_PIDS=""
}

# ---- the reference: an uninterrupted run ------------------------------------------------------
# bash's time measures the process's own user + system CPU (getrusage of the child), the
# independent figure the report's cpu_seconds is checked against below.
TIMEFORMAT='%U %S'
{ time timeout 300 "$EW" train "$TMP/cfg.json" -o "$TMP/full.evow" --report "$TMP/full.json" \
    --quiet 2>"$TMP/full.err"; } 2>"$TMP/full.time" || die "uninterrupted run" "$(tail -n 5 "$TMP/full.err")"
unset TIMEFORMAT
total=$(js 'd["steps"]' <"$TMP/full.json")
n_adapt=$(js 'len(d["adaptations"])' <"$TMP/full.json")
[ "$n_adapt" -ge 1 ] && ok "reference run: $total steps, $n_adapt adaptations" ||
    bad "reference run adapts" "$n_adapt adaptations"
cpu=$(js '"%.3f %.3f %.3f" % (d["adapt_cpu_seconds"], d["cpu_seconds"], d["train_seconds"])' \
    <"$TMP/full.json")
# cpu_seconds is the process's CPU time up to the report: at most what the shell measured for
# the whole process and most of it (the rest is start-up and exit). Not a share of wall time,
# which a loaded machine changes.
python3 -c 'import sys; a, c, t, u, s = map(float, sys.argv[1:]); sys.exit(not (0 < a < c <= u + s + 0.02 and c >= 0.5 * (u + s)))' \
    $cpu $(cat "$TMP/full.time") && ok "CPU seconds in the report: adaptation, process, training wall (s): $cpu; user + system measured by the shell: $(cat "$TMP/full.time")" ||
    bad "the report's CPU seconds: 0 < adapt_cpu_seconds < cpu_seconds <= user + system, and most of it" "$cpu vs $(cat "$TMP/full.time")"

# ---- SIGTERM half way, then --resume -------------------------------------------------------------
train_bg -o "$TMP/part.evow" --report "$TMP/part.json"
wait_for 120 past_step $((total / 4)) || die "run reaches step $((total / 4))" "$(tail -n 3 "$TMP/bg.out")"
kill -TERM "$TPID"
wait_train 60
at=$(sed -n 's/.*SIGTERM at step \([0-9]*\) of.*/\1/p' "$TMP/bg.err")
[ "$EXIT_CODE" = 0 ] && ok "SIGTERM: exit code 0" || bad "SIGTERM exit code" "$EXIT_CODE: $(cat "$TMP/bg.err")"
[ -n "$at" ] && [ "$at" -lt "$total" ] && [ -s "$TMP/part.evow" ] && [ ! -e "$TMP/part.json" ] &&
    ok "SIGTERM at step $at: checkpoint written, no report yet" ||
    bad "SIGTERM checkpoint" "step '$at'; $(cat "$TMP/bg.err")"
"$EW" layers "$TMP/part.evow" >"$TMP/layers.out" 2>&1 && grep -q conv1 "$TMP/layers.out" &&
    ok "the checkpoint is a model file (evowidth layers reads it)" || bad "layers on the checkpoint" "$(head -c 300 "$TMP/layers.out")"

cp "$TMP/part.evow" "$TMP/part.keep"
timeout 300 "$EW" train "$TMP/cfg.json" -o "$TMP/part.evow" --set train.batch_size=16 --resume \
    >"$TMP/refuse.out" 2>"$TMP/refuse.err"
code=$?
[ "$code" = 1 ] && grep -q "differ in train" "$TMP/refuse.err" && cmp -s "$TMP/part.evow" "$TMP/part.keep" &&
    ok "--resume with another batch size: refused ($(head -c 120 "$TMP/refuse.err")...), MODEL untouched" ||
    bad "--resume with another batch size" "exit $code: $(cat "$TMP/refuse.err")"

timeout 300 "$EW" train "$TMP/cfg.json" -o "$TMP/part.evow" --report "$TMP/part.json" --resume \
    >"$TMP/resume.out" 2>"$TMP/resume.err"
code=$?
grep -q "resumed $TMP/part.evow at step $at of $total" "$TMP/resume.out" && [ "$code" = 0 ] &&
    ok "--resume continues at step $at" || bad "--resume" "exit $code: $(head -n 2 "$TMP/resume.out") $(cat "$TMP/resume.err")"
same_result "$TMP/full.json" "$TMP/part.json" 2>"$TMP/cmp.err" &&
    ok "interrupted + resumed = uninterrupted (test loss $(js 'd["test_loss"]' <"$TMP/part.json"))" ||
    bad "resumed result" "$(cat "$TMP/cmp.err")"

# ---- a second signal exits at once -----------------------------------------------------------------
# Stopped, the process holds both signals pending; on SIGCONT both handlers run at once.
train_bg -o "$TMP/twice.evow"
wait_for 120 past_step 10 || die "run reaches step 10" "$(tail -n 3 "$TMP/bg.out")"
kill -STOP "$TPID"
kill -TERM "$TPID"
kill -INT "$TPID"
kill -CONT "$TPID"
wait_train 60
{ [ "$EXIT_CODE" = 130 ] || [ "$EXIT_CODE" = 143 ]; } && grep -q "second signal, exiting now" "$TMP/bg.err" &&
    [ ! -e "$TMP/twice.evow" ] && ok "second signal: exit $EXIT_CODE at once, no checkpoint" ||
    bad "second signal" "exit $EXIT_CODE: $(cat "$TMP/bg.err")"

# ---- --resume with nothing to resume ----------------------------------------------------------------
timeout 300 "$EW" train "$TMP/cfg.json" -o "$TMP/new.evow" --epochs 2 --resume >"$TMP/new.out" 2>&1
code=$?
[ "$code" = 0 ] && grep -q "no $TMP/new.evow yet, starting a new run" "$TMP/new.out" && [ -s "$TMP/new.evow" ] &&
    ok "--resume without MODEL starts a new run" || bad "--resume without MODEL" "exit $code: $(head -n 3 "$TMP/new.out")"

summary
