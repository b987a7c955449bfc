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
BUILD=${1:?usage: e2e_client.sh BUILD_DIR SOURCE_DIR}
SRC=${2:?usage: e2e_client.sh BUILD_DIR SOURCE_DIR}
DAEMON=$BUILD/evowidthd
EW=$BUILD/evowidth
TMP=$(mktemp -d "${TMPDIR:-/tmp}/evowidth-e2e-client.XXXXXX")
DPID="" PORT="" BASE="" PASS=0 FAIL=0

cleanup() {
    [ -n "$DPID" ] && kill -9 "$DPID" 2>/dev/null && { wait "$DPID"; } 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
unset EVOWIDTH_URL EVOWIDTH_TOKEN

ok() { PASS=$((PASS + 1)); echo "ok    $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL  $1${2:+: $2}"; }
summary() { echo "$PASS passed, $FAIL failed"; [ "$FAIL" -eq 0 ]; }
die() { bad "$1" "${2:-}"; [ -f "$TMP/err" ] && tail -n 20 "$TMP/err" | sed 's/^/    daemon: /'; summary; exit 1; }
js() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.2
    done
}
# ew ARGS...: runs the client (bounded); stdout in $TMP/o, stderr in $TMP/e, exit code in $RC.
ew() {
    timeout 60 "$EW" "$@" >"$TMP/o" 2>"$TMP/e"
    RC=$?
}
step() { curl -sf --max-time 30 "$BASE/v1/status" | js 'd["step"]'; }
step_above() { # the step counter, read afresh, is above $1
    local s
    s=$(step) && [ -n "$s" ] && [ "$s" -gt "$1" ]
}
advances() {
    local s0
    s0=$(step) || return 1
    wait_for 20 step_above "$s0"
}
show() { echo "exit $RC; stdout: $(head -c 300 "$TMP/o"); stderr: $(head -c 300 "$TMP/e")"; }

[ -x "$DAEMON" ] && [ -x "$EW" ] || die "binaries exist" "build $DAEMON and $EW first"
python3 - "$SRC/configs/tiny.json" "$TMP" >"$TMP/cfg.json" <<'EOF' || die "make config"
import json, sys
c = json.load(open(sys.argv[1]))
c["train"]["epochs"] = 1000000  # never finishes while the test runs
c["daemon"] = {"listen": "127.0.0.1:0", "state_dir": sys.argv[2] + "/state",
               "checkpoint_every_steps": 500}
print(json.dumps(c))
EOF
printf 'client-test-token\n' >"$TMP/token"
"$DAEMON" --config "$TMP/cfg.json" --token-file "$TMP/token" >"$TMP/out" 2>"$TMP/err" &
DPID=$!
wait_for 60 grep -qs "listening on http://" "$TMP/out" || die "daemon start" "no 'listening on' line"
LISTEN=$(sed -n 's|.*listening on \(http://[^ ]*\)$|\1|p' "$TMP/out") # .../v1/status
PORT=$(echo "$LISTEN" | sed -n 's|http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p')
BASE=http://127.0.0.1:$PORT
[ -n "$PORT" ] || die "daemon start" "no port in $(cat "$TMP/out")"
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
[ $RC = 0 ] && [ "$rows" -ge 1 ] && [ "$rows" -le 5 ] && ok "history --points 5 ($rows rows)" ||
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
[ $RC = 0 ] && grep -q '^adaptation at step' "$TMP/o" && ok "adapt" || bad "adapt" "$(show)"
ew pause
[ $RC = 0 ] && grep -qx paused "$TMP/o" && ok "pause" || bad "pause" "$(show)"
is_paused() { curl -sf --max-time 30 "$BASE/v1/status" | js 'd["state"]' | grep -qx paused; }
wait_for 10 is_paused || bad "state becomes paused"
s1=$(step)
sleep 1
s2=$(step)
[ -n "$s1" ] && [ "$s1" = "$s2" ] && ok "paused: the step stays at $s1" || bad "paused step" "$s1 then $s2"
ew status
grep -Eq '^state +paused' "$TMP/o" && ok "status shows paused" || bad "status while paused" "$(show)"
ew resume
[ $RC = 0 ] && grep -qx training "$TMP/o" && advances && ok "resume: training advances" ||
    bad "resume" "$(show)"
# Paused, so that periodic checkpoints (every 500 steps, a fraction of a second here) do not
# rotate the one just written away before `layers` reads it (rotation is issue 15 D1).
ew pause
wait_for 10 is_paused || bad "paused again for the checkpoint"
ew checkpoint
ck=$(sed -n 's/^checkpoint at step [0-9]*: //p' "$TMP/o")
[ $RC = 0 ] && [ -n "$ck" ] && [ -s "$ck" ] && ok "checkpoint prints its path ($(basename "$ck"))" ||
    bad "checkpoint" "$(show)"
ew layers "$ck"
[ $RC = 0 ] && grep -q 'conv1' "$TMP/o" && ok "layers CHECKPOINT reads the file" || bad "layers FILE" "$(show)"
ew stop
[ $RC = 0 ] && grep -qx stopped "$TMP/o" && ok "stop waits for the daemon to go" || bad "stop" "$(show)"
end=$((SECONDS + 15))
while kill -0 "$DPID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
if kill -0 "$DPID" 2>/dev/null; then
    bad "the daemon exits after stop" "still running"
else
    { wait "$DPID"; } 2>/dev/null
    code=$?
    DPID=""
    [ "$code" = 0 ] && ok "the daemon exited with 0" || bad "daemon exit code" "$code"
fi
grep -q "stopped at step" "$TMP/err" && ok "the daemon wrote its final checkpoint" || bad "final checkpoint"
ew status
[ $RC = 1 ] && grep -q "cannot reach evowidthd at $BASE" "$TMP/e" && ok "status after stop: cannot reach" ||
    bad "status after stop" "$(show)"

summary
