#!/usr/bin/env bash
# tests/e2e_daemon.sh BUILD_DIR SOURCE_DIR: evowidthd end to end, driven with curl.
#
# Starts the daemon on a copy of configs/tiny.json (many epochs, checkpoints every 50 steps,
# an ephemeral loopback port, a temporary state dir) and checks: steps advance; PATCH
# /v1/policy shows in GET /v1/policy and /v1/status; PATCH /v1/train lr shows in status; pause
# stops the step counter and resume restarts it; adapt, events, history, metrics, healthz;
# POST /v1/checkpoint answers once the file is on disk; after SIGKILL a restart resumes from
# that checkpoint with the same step, widths and policy; SIGTERM exits 0 with a final
# checkpoint; a truncated newest checkpoint is reported and skipped on restart.
# Every wait has a deadline; the trap kills the daemon and removes the temp dir.
set -u
. "$(dirname "$0")/lib.sh"
e2e_init daemon "$@"

need_bin "$DAEMON"
tiny_config 1000000 50 >"$TMP/cfg.json" || die "make config" # never finishes while the test runs

# ---- first run ------------------------------------------------------------------------------
start_daemon
ok "daemon listens on an ephemeral port ($PORT)"

[ "$(api GET /v1/healthz)" = 200 ] && grep -q '"ok":true' "$TMP/body" && ok "GET /v1/healthz" ||
    bad "GET /v1/healthz" "$(cat "$TMP/body")"

advances && ok "steps advance" || die "steps advance" "step stuck at $(step)"

code=$(api PATCH /v1/policy -H 'Content-Type: application/json' \
    -d '{"shrink_threshold": 0.07, "enabled": false}')
[ "$code" = 200 ] && ok "PATCH /v1/policy answers 200" || bad "PATCH /v1/policy" "$code $(cat "$TMP/body")"
pol=$(get /v1/policy | js 'd["shrink_threshold"], d["enabled"]')
[ "$pol" = "0.07 False" ] && ok "GET /v1/policy shows the change" || bad "GET /v1/policy" "$pol"
pol=$(get /v1/status | js 'd["policy"]["shrink_threshold"], d["policy"]["enabled"]')
[ "$pol" = "0.07 False" ] && ok "/v1/status policy shows the change" || bad "/v1/status policy" "$pol"

code=$(api PATCH /v1/train -H 'Content-Type: application/json' -d '{"lr": 0.01}')
[ "$code" = 200 ] && ok "PATCH /v1/train answers 200" || bad "PATCH /v1/train" "$code $(cat "$TMP/body")"
lr_ok() { get /v1/status | js '1 if 0 < d["lr"] <= 0.0100001 else 0' | grep -q 1; }
lr_ok && ok "status lr shows PATCH /v1/train as soon as it answered" ||
    bad "status lr after PATCH /v1/train" "lr $(get /v1/status | js 'd["lr"]')"

code=$(api POST /v1/adapt)
[ "$code" = 200 ] && js '"surgeries_kept" in d and "step" in d' <"$TMP/body" | grep -q True &&
    ok "POST /v1/adapt returns JSON" || bad "POST /v1/adapt" "$code $(cat "$TMP/body")"
code=$(api GET /v1/events)
[ "$code" = 200 ] && js 'type(d["events"]).__name__' <"$TMP/body" | grep -q list &&
    ok "GET /v1/events" || bad "GET /v1/events" "$code $(head -c 300 "$TMP/body")"
code=$(api GET '/v1/history?points=5')
n=$(js 'len(d["history"])' <"$TMP/body" 2>/dev/null)
[ "$code" = 200 ] && [ "${n:-0}" -ge 1 ] && [ "${n:-99}" -le 10 ] &&
    ok "GET /v1/history?points=5 gives $n points" || bad "GET /v1/history?points=5" "$code, ${n:-?} points"
code=$(curl -s -o "$TMP/body" -w '%{http_code} %{content_type}' --max-time 30 "$BASE/v1/metrics")
case "$code" in
200\ text/plain*) grep -q '^evowidth_steps_total [0-9]' "$TMP/body" && ok "GET /v1/metrics (Prometheus text)" ||
    bad "GET /v1/metrics" "no evowidth_steps_total sample" ;;
*) bad "GET /v1/metrics" "$code" ;;
esac
code=$(api GET /v1/layers)
[ "$code" = 200 ] && js 'len(d["layers"])' <"$TMP/body" | grep -q '^[1-9]' && ok "GET /v1/layers" ||
    bad "GET /v1/layers" "$code"

# Pause: two reads 1 s apart agree; resume: it moves again.
[ "$(api POST /v1/pause)" = 200 ] || bad "POST /v1/pause" "$(cat "$TMP/body")"
wait_for 10 is_paused || bad "state becomes paused"
still && ok "pause stops the step counter ($STILL)" || bad "pause" "$STILL"
[ "$(api POST /v1/resume)" = 200 ] || bad "POST /v1/resume" "$(cat "$TMP/body")"
advances && ok "resume: steps advance again" || bad "resume" "step stuck at $(step)"

# Checkpoint while paused (so no periodic checkpoint comes after it), then SIGKILL.
api POST /v1/pause >/dev/null
is_paused && ok "status shows paused as soon as POST /v1/pause answered" || bad "paused at once"
# While paused nothing else adapts: the status read right after POST /v1/adapt has its widths.
code=$(api POST /v1/adapt)
cp "$TMP/body" "$TMP/adapt.json"
get /v1/status >"$TMP/status.json"
same=$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1]))["last_event"]["widths_after"]
w=json.load(open(sys.argv[2]))["widths"]; print(int(bool(a) and all(w.get(k)==v for k,v in a.items())))' \
    "$TMP/adapt.json" "$TMP/status.json" 2>/dev/null)
[ "$code" = 200 ] && [ "$same" = 1 ] && ok "status right after POST /v1/adapt shows its widths" ||
    bad "status after adapt" "$code $(head -c 300 "$TMP/adapt.json") / $(head -c 300 "$TMP/status.json")"
code=$(api POST /v1/checkpoint)
ck_path=$(js 'd["path"]' <"$TMP/body" 2>/dev/null)
ck_step=$(js 'd["step"]' <"$TMP/body" 2>/dev/null)
if [ "$code" = 200 ] && [ -s "$ck_path" ] && [[ $ck_path == *"ckpt-$(printf %012d "$ck_step").evow" ]]; then
    ok "POST /v1/checkpoint: $ck_path on disk (step $ck_step)"
else
    die "POST /v1/checkpoint" "$code $(cat "$TMP/body")"
fi
before=$(get /v1/status | js 'json.dumps([d["step"], d["widths"], d["policy"]], sort_keys=True)')
exec 3>&2 2>/dev/null # the shell's own "Killed" job notice is noise here
kill -9 "$DPID"
wait_exit 10
killed=$?
exec 2>&3 3>&-
[ $killed = 0 ] || die "SIGKILL" "the daemon is still alive"

start_daemon
after=$(get /v1/status | js 'json.dumps([d["step"], d["widths"], d["policy"]], sort_keys=True)')
grep -q "resumed from $ck_path at step $ck_step " "$TMP/err.$RUN" &&
    ok "restart after SIGKILL resumes from $(basename "$ck_path")" ||
    bad "restart after SIGKILL" "log: $(grep -m1 -i 'resum\|skip' "$TMP/err.$RUN")"
s_after=$(echo "$after" | js 'd[0]')
[ "${s_after:-0}" -ge "$ck_step" ] && ok "step after restart ($s_after) >= checkpoint step" ||
    bad "step after restart" "$s_after < $ck_step"
w_before=$(echo "$before" | js 'json.dumps(d[1:], sort_keys=True)')
w_after=$(echo "$after" | js 'json.dumps(d[1:], sort_keys=True)')
[ "$w_before" = "$w_after" ] && ok "widths and policy survive the restart" ||
    bad "widths and policy after restart" "before $w_before after $w_after"
advances && ok "training continues after the restart" || bad "training after restart"

# SIGTERM: exit 0 within a few seconds, with a final checkpoint.
kill -TERM "$DPID"
if wait_exit 15; then
    [ "$EXIT_CODE" = 0 ] && ok "SIGTERM: exit code 0" || bad "SIGTERM exit code" "$EXIT_CODE"
else
    bad "SIGTERM" "still running after 15 s"
fi
final=$(sed -n 's/.*stopped at step [0-9]*; checkpoint \(.*\)$/\1/p' "$TMP/err.$RUN")
[ -n "$final" ] && [ -s "$final" ] && ok "SIGTERM leaves a final checkpoint ($(basename "$final"))" ||
    die "final checkpoint" "none in the log"

# Corrupt the newest checkpoint: a restart reports it and resumes from the one before.
prev=$(ls "$TMP/state"/ckpt-*.evow | sort | tail -n 2 | head -n 1)
[ "$prev" != "$final" ] || die "two checkpoints on disk"
truncate -s $(($(stat -c %s "$final") / 2)) "$final"
start_daemon
grep -q "skipping unusable checkpoint: .*$(basename "$final")" "$TMP/err.$RUN" &&
    ok "the truncated checkpoint is reported and skipped" ||
    bad "truncated checkpoint reported" "$(grep -m1 -i 'skip' "$TMP/err.$RUN")"
# The previous checkpoint, or the last-known-good one when that is newer (it may be the same
# step as the truncated one: a hard link of it taken before the final rewrite).
prev_step=$(basename "$prev" | tr -dc 0-9 | sed 's/^0*//')
got=$(sed -n 's/.*resumed from \([^ ]*\) at step.*/\1/p' "$TMP/err.$RUN")
got_step=$(basename "$got" | tr -dc 0-9 | sed 's/^0*//')
{ [ "$got" = "$prev" ] || { [[ $got == */good-*.evow ]] && [ "${got_step:-0}" -ge "${prev_step:-1}" ]; }; } &&
    ok "resumed from the previous checkpoint ($(basename "$got"))" ||
    bad "resume from the previous checkpoint" "$(grep -m1 resumed "$TMP/err.$RUN")"
advances && ok "training continues" || bad "training after skipping a checkpoint"
kill -TERM "$DPID"
wait_exit 15 && [ "$EXIT_CODE" = 0 ] && ok "second SIGTERM run exits 0" || bad "SIGTERM (third run)"

summary
