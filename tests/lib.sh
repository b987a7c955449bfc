# tests/lib.sh: what the end-to-end scripts share. A script starts with
#   . "$(dirname "$0")/lib.sh"; e2e_init NAME "$@"
# (its arguments: BUILD_DIR SOURCE_DIR, which set $BUILD, $SRC, $DAEMON and $EW).
# It makes $TMP (removed on exit, with any daemon still running killed), counts checks
# (ok / bad / summary), starts, stops and kills evowidthd ($DPID, $PORT, $BASE, $LISTEN; its
# output in $TMP/out.$RUN and $TMP/err.$RUN) and reads its API (api, get, step, advances).
# Every wait has a deadline. Extra background pids to kill on exit go in $EXTRA_PIDS.

DPID="" PORT="" BASE="" LISTEN="" PASS=0 FAIL=0 RUN=0 EXTRA_PIDS="" EXIT_CODE=""

e2e_cleanup() {
    local p
    for p in $EXTRA_PIDS; do kill "$p" 2>/dev/null; done
    [ -n "$DPID" ] && kill -9 "$DPID" 2>/dev/null && { wait "$DPID"; } 2>/dev/null
    rm -rf "$TMP"
}
# e2e_init NAME BUILD_DIR SOURCE_DIR: the build and source dirs, the temp dir and the traps.
e2e_init() {
    local usage="usage: ${0##*/} BUILD_DIR SOURCE_DIR"
    BUILD=${2:?$usage}
    SRC=${3:?$usage}
    DAEMON=$BUILD/evowidthd
    EW=$BUILD/evowidth
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/evowidth-e2e-$1.XXXXXX")
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM
}

# need_bin PATH: PATH is a built executable, or the script cannot run.
need_bin() { [ -x "$1" ] || die "${1##*/} exists" "$1 not built"; }

ok() { PASS=$((PASS + 1)); echo "ok    $1"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL  $1${2:+: $2}"; }
summary() { echo "$PASS passed, $FAIL failed"; [ "$FAIL" -eq 0 ]; }
# A failed prerequisite: later checks cannot run. Shows the tail of the last daemon's log.
die() {
    bad "$1" "${2:-}"
    [ -f "$TMP/err.$RUN" ] && tail -n 20 "$TMP/err.$RUN" | sed 's/^/    daemon: /'
    summary
    exit 1
}

# Python one-liner on JSON from stdin: `js 'd["step"]'`.
js() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# wait_for SECONDS CMD...: runs CMD every 0.2 s until it succeeds; 1 at the deadline.
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.2
    done
}

# tiny_config EPOCHS CHECKPOINT_EVERY: configs/tiny.json on an ephemeral loopback port with
# its state dir in $TMP/state, as JSON on stdout.
tiny_config() {
    python3 - "$SRC/configs/tiny.json" "$TMP" "$1" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["train"]["epochs"] = int(sys.argv[3])
c["daemon"] = {"listen": "127.0.0.1:0", "state_dir": sys.argv[2] + "/state",
               "checkpoint_every_steps": int(sys.argv[4])}
print(json.dumps(c))
PY
}

# start_daemon [ARGS...]: evowidthd on $TMP/cfg.json; waits for its "listening on" line.
start_daemon() {
    RUN=$((RUN + 1))
    "$DAEMON" --config "$TMP/cfg.json" "$@" >"$TMP/out.$RUN" 2>"$TMP/err.$RUN" &
    DPID=$!
    wait_for 60 grep -qs "listening on http://" "$TMP/out.$RUN" ||
        die "daemon start $RUN" "no 'listening on' line within 60 s"
    LISTEN=$(sed -n 's|.*listening on \(http://[^ ]*\)$|\1|p' "$TMP/out.$RUN") # .../v1/status
    PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$TMP/out.$RUN")
    [ -n "$PORT" ] || die "daemon start $RUN" "no port in: $(cat "$TMP/out.$RUN")"
    BASE=http://127.0.0.1:$PORT
}
# wait_exit SECONDS: 0 once the daemon has exited (its code in $EXIT_CODE).
wait_exit() {
    local end=$((SECONDS + $1))
    while kill -0 "$DPID" 2>/dev/null; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.1
    done
    { wait "$DPID"; } 2>/dev/null # no "Killed" notice from the shell
    EXIT_CODE=$?
    DPID=""
}
# kill9: SIGKILL the daemon (a crash) and reap it, without the shell's "Killed" notice.
kill9() {
    exec 3>&2 2>/dev/null
    kill -9 "$DPID"
    wait_exit 10
    exec 2>&3 3>&-
}
# pause_now: POST /v1/pause and wait until the status says paused.
pause_now() {
    api POST /v1/pause >/dev/null
    wait_for 10 is_paused || die "pause"
}
# stop_daemon: SIGTERM, then SIGKILL after 15 s.
stop_daemon() {
    kill -TERM "$DPID" 2>/dev/null
    wait_exit 15 && return 0
    kill -9 "$DPID" 2>/dev/null
    { wait "$DPID"; } 2>/dev/null
    DPID=""
}

# api METHOD PATH [CURL-ARGS...]: prints the status code; the body goes to $TMP/body.
api() {
    local m=$1 p=$2
    shift 2
    curl -s -o "$TMP/body" -w '%{http_code}' --max-time 30 -X "$m" "$@" "$BASE$p"
}
# get PATH [CURL-ARGS...]: the body of a successful GET.
get() {
    local p=$1
    shift
    curl -sf --max-time 30 "$@" "$BASE$p"
}
step() { get /v1/status | js 'd["step"]'; }
step_above() { # the step counter, read afresh, is above $1
    local s
    s=$(step) && [ -n "$s" ] && [ "$s" -gt "$1" ]
}
advances() { # the step counter moves within 20 s
    local s0
    s0=$(step) || return 1
    wait_for 20 step_above "$s0"
}
is_paused() { get /v1/status | js 'd["state"]' | grep -qx paused; }
# still: the step counter reads the same twice, 1 s apart ($STILL says what it read).
still() {
    local s1 s2
    s1=$(step)
    sleep 1
    s2=$(step)
    STILL="$s1 then $s2"
    [ -n "$s1" ] && [ "$s1" = "$s2" ]
}
