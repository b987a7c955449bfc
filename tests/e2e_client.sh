#!/usr/bin/env bash
# tests/e2e_client.sh BUILD_DIR SOURCE_DIR: the `evowidth` client commands against a live
# evowidthd (tiny config, ephemeral loopback port, temporary state dir, a bearer token).
#
# Checks: status as a table and as JSON (python3 -m json.tool), EVOWIDTH_URL and --url
# precedence, policy get / set (numbers, strings, booleans) and a bad value (exit 1 with the
# server's message), the token (EVOWIDTH_TOKEN, --token-file, 401 without), history, layers
# (live and from a checkpoint file), adapt, pause / resume, checkpoint (prints the path),
# stop (the daemon exits 0) and "cannot reach evowidthd" afterwards. Every wait has a
# deadline; the trap kills the daemon and removes the temp dir.
set -u
. "$(dirname "$0")/lib.sh"
e2e_init client "$@"
unset EVOWIDTH_URL EVOWIDTH_TOKEN

# ew ARGS...: runs the client (bounded); stdout in $TMP/o, stderr in $TMP/e, exit code in $RC.
ew() {
    timeout 60 "$EW" "$@" >"$TMP/o" 2>"$TMP/e"
    RC=$?
}
show() { echo "exit $RC; stdout: $(head -c 300 "$TMP/o"); stderr: $(head -c 300 "$TMP/e")"; }

[ -x "$DAEMON" ] && [ -x "$EW" ] || die "binaries exist" "build $DAEMON and $EW first"
ew --version
[ $RC = 0 ] && grep -Eqx 'evowidth [0-9]+\.[0-9]+\.[0-9]+ \(git [^)]+\)' "$TMP/o" &&
    ok "evowidth --version: $(cat "$TMP/o")" || bad "evowidth --version" "$(show)"
v=$("$DAEMON" --version 2>&1)
[[ $v =~ ^evowidthd\ [0-9]+\.[0-9]+\.[0-9]+\ \(git ]] && ok "evowidthd --version: $v" ||
    bad "evowidthd --version" "$v"
tiny_config 1000000 500 >"$TMP/cfg.json" || die "make config" # never finishes while the test runs
printf 'client-test-token\n' >"$TMP/token"
start_daemon --token-file "$TMP/token"
ok "daemon listens on port $PORT"

# ---- read-only commands ----------------------------------------------------------------------
ew status --url "$BASE"
[ $RC = 0 ] && grep -q '^state ' "$TMP/o" && grep -q '^step ' "$TMP/o" && grep -q '^widths ' "$TMP/o" &&
    ok "status prints a table" || bad "status table" "$(show)"
ew status --json --url "$BASE"
[ $RC = 0 ] && python3 -m json.tool <"$TMP/o" >/dev/null && ok "status --json is JSON" ||
    bad "status --json" "$(show)"
EVOWIDTH_URL=$BASE ew status --json
[ $RC = 0 ] && js 'd["state"]' <"$TMP/o" >/dev/null && ok "EVOWIDTH_URL is used" ||
    bad "EVOWIDTH_URL" "$(show)"
EVOWIDTH_URL=http://127.0.0.1:1 ew status --json --url "$LISTEN"
[ $RC = 0 ] && ok "--url (as printed by evowidthd) overrides EVOWIDTH_URL" || bad "--url precedence" "$(show)"
ew status --url http://127.0.0.1:1
[ $RC = 1 ] && grep -q "cannot reach evowidthd at http://127.0.0.1:1" "$TMP/e" &&
    ok "unreachable daemon: exit 1, 'cannot reach evowidthd at URL'" || bad "unreachable daemon" "$(show)"
ew history --points 5 --url "$BASE"
rows=$(grep -c '^ *[0-9]' "$TMP/o")
# 5 of the series and at most 5 of its validation points
[ $RC = 0 ] && [ "$rows" -ge 1 ] && [ "$rows" -le 10 ] && ok "history --points 5 ($rows rows)" ||
    bad "history" "$(show)"
ew layers --url "$BASE"
[ $RC = 0 ] && grep -q '^conv1 ' "$TMP/o" && grep -q '^dense1 ' "$TMP/o" && ok "layers (live)" ||
    bad "layers (live)" "$(show)"

# ---- policy ------------------------------------------------------------------------------------
export EVOWIDTH_URL=$BASE
ew policy get
[ $RC = 0 ] && grep -q '^shrink_threshold ' "$TMP/o" && ok "policy get" || bad "policy get" "$(show)"
ew policy set shrink_threshold=0.07
[ $RC = 1 ] && grep -q "401" "$TMP/e" && ok "policy set without a token: exit 1, 401" ||
    bad "policy set without a token" "$(show)"
ew policy set shrink_threshold=0.07 --token-file "$TMP/token"
[ $RC = 0 ] && ok "policy set shrink_threshold=0.07 (--token-file)" || bad "policy set" "$(show)"
ew policy get
grep -Eq '^shrink_threshold +0.07$' "$TMP/o" && ok "policy get shows 0.07" || bad "policy get after set" "$(show)"
export EVOWIDTH_TOKEN=client-test-token
ew policy set mode=rotate enable_grow=false
ew policy get --json
got=$(js 'd["mode"], d["enable_grow"], d["shrink_threshold"]' <"$TMP/o" 2>/dev/null)
[ "$got" = "rotate False 0.07" ] && ok "policy set mode=rotate enable_grow=false (EVOWIDTH_TOKEN)" ||
    bad "policy set string and bool" "$got; $(show)"
ew policy set shrink_threshold=abc
[ $RC = 1 ] && grep -q '422' "$TMP/e" && grep -q 'shrink_threshold: expected a number' "$TMP/e" &&
    ok "policy set shrink_threshold=abc: exit 1, '$(cat "$TMP/e")'" || bad "policy set bad value" "$(show)"
ew policy set shrink_threshold=2
[ $RC = 1 ] && grep -q 'out of range' "$TMP/e" && ok "policy set shrink_threshold=2: exit 1, out of range" ||
    bad "policy set out of range" "$(show)"
ew policy set shrink_threshold
[ $RC = 2 ] && ok "policy set without '=': usage error (exit 2)" || bad "policy set usage" "$(show)"
ew policy get --json
[ "$(js 'd["shrink_threshold"]' <"$TMP/o")" = 0.07 ] && ok "bad values left the policy alone" ||
    bad "policy after bad values" "$(show)"

# ---- actions -------------------------------------------------------------------------------------
ew adapt
[ $RC = 0 ] && grep -q '^adaptation at step .*parameters [0-9]* -> [0-9]*' "$TMP/o" &&
    grep -Eq '^  conv1 +[0-9]+ -> [0-9]+ +(keep|shrink|grow|skip)' "$TMP/o" &&
    [ "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$TMP/o")" -lt 160 ] &&
    ok "adapt prints a readable summary (one line per group)" || bad "adapt" "$(show)"
ew pause
[ $RC = 0 ] && grep -qx paused "$TMP/o" && ok "pause" || bad "pause" "$(show)"
wait_for 10 is_paused || bad "state becomes paused"
still && ok "paused: the step stays ($STILL)" || bad "paused step" "$STILL"
ew status
grep -Eq '^state +paused' "$TMP/o" && ok "status shows paused" || bad "status while paused" "$(show)"
# While paused, so that periodic checkpoints do not rotate this one away before it is read.
ew checkpoint
ck=$(sed -n 's/^checkpoint at step [0-9]*: //p' "$TMP/o")
[ $RC = 0 ] && [ -n "$ck" ] && [ -s "$ck" ] && ok "checkpoint prints its path ($(basename "$ck"))" ||
    bad "checkpoint" "$(show)"
ew layers "$ck"
[ $RC = 0 ] && grep -q 'conv1' "$TMP/o" && ok "layers CHECKPOINT reads the file" || bad "layers FILE" "$(show)"
ew resume
[ $RC = 0 ] && grep -qx training "$TMP/o" && advances && ok "resume: training advances" ||
    bad "resume" "$(show)"
ew stop
[ $RC = 0 ] && grep -qx stopped "$TMP/o" && ok "stop waits for the daemon to go" || bad "stop" "$(show)"
if ! wait_exit 15; then
    bad "the daemon exits after stop" "still running"
else
    [ "$EXIT_CODE" = 0 ] && ok "the daemon exited with 0" || bad "daemon exit code" "$EXIT_CODE"
fi
grep -q "stopped at step" "$TMP/err.$RUN" && ok "the daemon wrote its final checkpoint" || bad "final checkpoint"
ew status
[ $RC = 1 ] && grep -q "cannot reach evowidthd at $BASE" "$TMP/e" && ok "status after stop: cannot reach" ||
    bad "status after stop" "$(show)"

summary
