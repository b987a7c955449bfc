#!/usr/bin/env bash
# tests/e2e_statedir.sh BUILD_DIR SOURCE_DIR: the state dir against the defects of issue 15,
# each reproduced by the issue's own command against a live evowidthd:
#   D1  empty files named like the newest checkpoints: POST /v1/checkpoint's file stays on
#       disk and a restart after SIGKILL resumes from it (not from step 0);
#   D8  a FIFO named ckpt-*.evow does not hang start-up;
#   D2  with every checkpoint unreadable the new run does not replay the old change log (the
#       old run's files are moved to an archive dir);
#   D3  a torn last line of changes.jsonl does not swallow the next change;
#   D12 events.jsonl holds each event once across SIGKILL / resume (seq 1..N, no step twice);
#   D11 checkpoints do not carry the event history;
#   D13 a different config on the state dir is refused naming what differs; --resume-anyway
#       continues the stored run, --fresh starts over (the old run archived, its metric
#       history included);
#   D9  an unusable state dir is refused at start; checkpoint failures while running are
#       logged rate-limited, shown in /v1/status and /metrics, pause the run after
#       daemon.checkpoint_failure_limit, and a failed final checkpoint exits non-zero.
# Every wait has a deadline; the trap kills the daemon and removes the temp dir.
set -u
. "$(dirname "$0")/lib.sh"
e2e_init statedir "$@"
MOUNTS=""
trap 'for m in $MOUNTS; do umount "$m" 2>/dev/null; done; e2e_cleanup' EXIT

need_bin "$DAEMON"
S=$TMP/state
tiny_config 1000000 50 >"$TMP/cfg.json" || die "make config"
JSON='Content-Type: application/json'
policy_thr() { get /v1/policy | js 'd["shrink_threshold"]'; }

# ---- D1: rotation keeps the newest valid checkpoints -----------------------------------------
start_daemon
advances || die "steps advance"
touch "$S"/ckpt-00000099999{7,8,9}.evow
pause_now
code=$(api POST /v1/checkpoint)
ck=$(js 'd["path"]' <"$TMP/body" 2>/dev/null)
ck_step=$(js 'd["step"]' <"$TMP/body" 2>/dev/null)
[ "$code" = 200 ] && [ -s "$ck" ] && ok "D1: POST /v1/checkpoint's file exists beside the empty decoys" ||
    bad "D1: POST /v1/checkpoint" "$code, $ck: $(ls "$S")"
kill9
start_daemon
s=$(step)
[ "${s:-0}" -ge "${ck_step:-1}" ] && grep -q "resumed from $ck " "$TMP/err.$RUN" &&
    ok "D1: after SIGKILL the run resumes from $(basename "$ck") (step $s)" ||
    bad "D1: resume after SIGKILL" "step $s, checkpoint $ck_step; $(grep -m1 resum "$TMP/err.$RUN")"
ls "$S"/ckpt-00000099999?.evow >/dev/null 2>&1 &&
    bad "D1: the empty decoys are set aside" "$(ls "$S")" ||
    ok "D1: the empty decoys are moved aside (*.corrupt), not resumed or deleted"

# ---- D3: a torn tail of changes.jsonl does not swallow the next change ---------------------
code=$(api PATCH /v1/policy -H "$JSON" -d '{"shrink_threshold": 0.07}')
[ "$code" = 200 ] || bad "PATCH /v1/policy" "$code"
stop_daemon
truncate -s -10 "$S/changes.jsonl"
start_daemon
pause_now
code=$(api PATCH /v1/policy -H "$JSON" -d '{"shrink_threshold": 0.09}')
[ "$code" = 200 ] || bad "PATCH /v1/policy" "$code"
kill9
start_daemon
[ "$(policy_thr)" = 0.09 ] && ok "D3: the change after a torn line survives SIGKILL" ||
    bad "D3: change after a torn line" "shrink_threshold $(policy_thr); log: $(tail -c 300 "$S/changes.jsonl")"
grep -q "changes.jsonl: dropped a torn last line" "$TMP/err.$((RUN - 1))" &&
    ok "D3: the torn line is reported" || bad "D3: torn line reported" "$(grep -m1 changes "$TMP/err.$((RUN - 1))")"

# ---- D12 / D11: events once each, not in checkpoints ----------------------------------------
wait_for 30 sh -c "[ \$(wc -l <'$S/events.jsonl') -ge 6 ]" || bad "events accumulate"
pause_now
api POST /v1/checkpoint >/dev/null
api POST /v1/resume >/dev/null
s0=$(step)
wait_for 20 step_above $((s0 + 40)) || bad "steps after the checkpoint"
kill9 # the events after the checkpoint are replayed by the resumed run
start_daemon
s0=$(step)
wait_for 20 step_above $((s0 + 40)) || bad "steps after the restart"
stop_daemon
dups=$(python3 - "$S/events.jsonl" <<'PY'
import json, sys, collections
ev = [json.loads(l) for l in open(sys.argv[1])]
steps = collections.Counter(e["step"] for e in ev)
seqs = [e.get("seq") for e in ev]
bad = [s for s, n in steps.items() if n > 1]
print(len(ev), len(bad), "ok" if seqs == list(range(1, len(ev) + 1)) else "seq:%s" % seqs[-5:])
PY
)
set -- $dups
[ "${2:-1}" = 0 ] && [ "${3:-}" = ok ] && ok "D12: events.jsonl holds $1 events, seq 1..$1, no step twice" ||
    bad "D12: events.jsonl after SIGKILL + resume" "$dups"
newest=""
for f in $(ls "$S"/ckpt-*.evow | sort -r); do [ -s "$f" ] && newest=$f && break; done
n_in=$(grep -c -a widths_before "$newest")
[ "$n_in" = 0 ] && ok "D11: the checkpoint carries no event texts ($(stat -c %s "$newest") bytes)" ||
    bad "D11: event texts in $(basename "$newest")" "$n_in"

# ---- D13: a different config ------------------------------------------------------------------
python3 - "$TMP/cfg.json" >"$TMP/cfg2.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["model"][0]["out"] = 6
c["optimizer"] = {"type": "adamw", "lr": 0.002}
print(json.dumps(c))
PY
timeout 60 "$DAEMON" --config "$TMP/cfg2.json" >"$TMP/out.m" 2>"$TMP/err.m"
code=$?
[ "$code" = 1 ] && grep -q "optimizer.type" "$TMP/err.m" && grep -q "model" "$TMP/err.m" &&
    grep -q -- "--resume-anyway" "$TMP/err.m" && ok "D13: a different config is refused, naming what differs" ||
    bad "D13: different config" "exit $code: $(head -c 400 "$TMP/err.m")"
cp "$TMP/cfg.json" "$TMP/cfg1.json"
cp "$TMP/cfg2.json" "$TMP/cfg.json"
last=$(ls "$S"/ckpt-*.evow | sort | tail -n 1)
start_daemon --resume-anyway
grep -q "resumed from $last" "$TMP/err.$RUN" && ok "D13: --resume-anyway continues the stored run" ||
    bad "D13: --resume-anyway" "$(grep -m2 -i 'resum\|differ' "$TMP/err.$RUN")"
stop_daemon
[ -s "$S/history.jsonl" ] || bad "D13: the stored run has a history.jsonl" "$(ls "$S")"
t_fresh=$(date +%s)
start_daemon --fresh
arch=$(ls -d "$S"/archive-* 2>/dev/null | tail -n 1)
[ -n "$arch" ] && ls "$arch"/ckpt-*.evow >/dev/null 2>&1 && grep -q "^evowidthd .* --fresh: the old run's" "$TMP/err.$RUN" &&
    ! grep -q "resumed from" "$TMP/err.$RUN" &&
    ok "D13: --fresh starts a new run, the old one in $(basename "$arch")" ||
    bad "D13: --fresh" "archive '$arch', $(head -n 3 "$TMP/err.$RUN")"
# The metric history is the old run's too: archived with it, none of its points live on.
old_pts=$(get /v1/history | js "sum(1 for p in d['history'] if p['time'] < $t_fresh - 1)")
[ -n "$arch" ] && [ -s "$arch/history.jsonl" ] && [ "$old_pts" = 0 ] &&
    ok "D13: --fresh archives history.jsonl; the new run's history has none of its points" ||
    bad "D13: --fresh and the history" "archived: $(ls "$arch" 2>/dev/null | tr '\n' ' '); old points: $old_pts"
stop_daemon
cp "$TMP/cfg1.json" "$TMP/cfg.json"
rm -rf "$S"

# ---- D8: a FIFO named like a checkpoint ---------------------------------------------------------
mkdir -p "$S"
mkfifo "$S/ckpt-000000000500.evow"
RUN=$((RUN + 1))
"$DAEMON" --config "$TMP/cfg.json" >"$TMP/out.$RUN" 2>"$TMP/err.$RUN" &
DPID=$!
if wait_for 20 grep -qs "listening on http://" "$TMP/out.$RUN"; then
    ok "D8: a FIFO named ckpt-*.evow does not hang start-up"
    PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$TMP/out.$RUN")
    BASE=http://127.0.0.1:$PORT
    grep -q "not a regular file" "$TMP/err.$RUN" && ok "D8: the FIFO is reported" ||
        bad "D8: FIFO reported" "$(head -n 3 "$TMP/err.$RUN")"
else
    bad "D8: start-up with a FIFO" "no 'listening on' within 20 s"
fi
advances || bad "D8: training"

# ---- D2: every checkpoint unreadable ------------------------------------------------------------
code=$(api PATCH /v1/policy -H "$JSON" -d '{"shrink_threshold": 0.07}')
pause_now
api POST /v1/checkpoint >/dev/null
stop_daemon
rm -f "$S/ckpt-000000000500.evow"
# Every checkpoint: the last-known-good one too (it is a hard link of an older checkpoint,
# or of one of these; a file cut twice is still cut).
for f in "$S"/ckpt-*.evow "$S"/good-*.evow; do
    [ -f "$f" ] && truncate -s $(($(stat -c %s "$f") / 2)) "$f"
done
start_daemon
thr=$(policy_thr)
s=$(step)
[ "$thr" = 0.05 ] && ok "D2: a fresh run does not replay the old run's changes (threshold $thr)" ||
    bad "D2: old changes replayed into a fresh run" "shrink_threshold $thr"
arch=$(ls -d "$S"/archive-* 2>/dev/null | tail -n 1)
[ -n "$arch" ] && [ -f "$arch/changes.jsonl" ] && ls "$arch"/ckpt-*.evow* >/dev/null 2>&1 &&
    ok "D2: the old run's files are kept in $(basename "$arch")" || bad "D2: archive" "$(ls -R "$S")"
stop_daemon

# ---- D9: unusable state dirs --------------------------------------------------------------------
# refuses_dir SUFFIX PATTERN WHAT SHORT: the daemon, started on state dir $D, exits 1 with an
# error matching PATTERN (grep) in $TMP/err.SUFFIX.
refuses_dir() {
    timeout 60 "$DAEMON" --config "$TMP/cfg.json" --state-dir "$D" >/dev/null 2>"$TMP/err.$1"
    code=$?
    [ "$code" = 1 ] && grep -q "$2" "$TMP/err.$1" &&
        ok "D9: $3 state dir is refused" || bad "D9: $4" "exit $code: $(cat "$TMP/err.$1")"
}
if [ "$(id -u)" = 0 ]; then
    D=$TMP/foreign
    mkdir -p "$D" && chown 65534:65534 "$D"
    refuses_dir f "owned by uid 65534" "a foreign-owned" foreign-owned
fi
D=$TMP/ro
mkdir -p "$D"
if [ "$(id -u)" = 0 ]; then
    mount -t tmpfs -o ro,size=1m tmpfs "$D" 2>/dev/null && MOUNTS="$MOUNTS $D" || D=""
else
    chmod 555 "$D"
fi
if [ -n "$D" ]; then
    refuses_dir r "not writable" "a read-only" read-only
fi
D=$TMP/full
mkdir -p "$D"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=64k tmpfs "$D" 2>/dev/null; then
    MOUNTS="$MOUNTS $D"
    head -c 60000 /dev/zero >"$D/filler" 2>/dev/null
    refuses_dir x "free\|No space" "a full" full
else
    echo "skip  D9: full state dir (needs root to mount a small tmpfs)"
fi

# Failing while running: the state dir disappears under the daemon.
python3 - "$TMP/cfg.json" >"$TMP/cfg3.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["daemon"]["checkpoint_every_steps"] = 5
c["daemon"]["checkpoint_failure_limit"] = 4
c["daemon"]["on_checkpoint_failure"] = "pause"
print(json.dumps(c))
PY
cp "$TMP/cfg3.json" "$TMP/cfg.json"
rm -rf "$S"
start_daemon
advances || die "steps advance"
mv "$S" "$S.gone"
wait_for 20 is_paused && ok "D9: repeated checkpoint failures pause the run" ||
    bad "D9: pause after failures" "state $(get /v1/status | js 'd["state"]')"
# At least the limit (4): a last-known-good checkpoint due in the same step may fail as well.
st=$(get /v1/status | js 'd["checkpoint_failures"] >= 4, bool(d["last_checkpoint_error"])')
[ "$st" = "True True" ] && ok "D9: /v1/status shows the failures and the error" || bad "D9: status" "$st"
nf=$(get /v1/status | js 'd["checkpoint_failures"]')
get /v1/metrics | grep -q "^evowidth_checkpoint_failures_total $nf\$" &&
    ok "D9: /metrics counts the failures ($nf)" || bad "D9: metrics" "$(get /v1/metrics | grep checkpoint)"
api POST /v1/resume >/dev/null
sleep 2
n=$(grep -c "checkpoint failed" "$TMP/err.$RUN")
[ "$n" -le 3 ] && ok "D9: the failure is logged rate-limited ($n lines)" || bad "D9: log lines" "$n"
kill -TERM "$DPID"
wait_exit 15
[ "${EXIT_CODE:-0}" != 0 ] && grep -q "final checkpoint failed" "$TMP/err.$RUN" &&
    ok "D9: a failed final checkpoint exits $EXIT_CODE" || bad "D9: exit code" "${EXIT_CODE:-?}"

summary
