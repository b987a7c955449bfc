#!/usr/bin/env bash
# tests/e2e_badinput.sh BUILD_DIR SOURCE_DIR: evowidthd against bad and hostile requests.
#
# Each bad request must get its exact HTTP status and leave the trainer alone: GET /v1/policy
# is compared before and after, and the step counter must still advance at the end. Covered:
# malformed JSON (400), wrong types, out-of-range values, unknown fields (422), wrong
# Content-Type (415), header bytes and header count at and over the caps (200 / 431), bodies
# at and over the cap (200 / 413), a request written one byte at a time (200), a request
# that stops half way (408 after the 10 s header timeout; started first, collected last),
# 500 idle connections (over the cap: 503 or closed; afterwards /v1/status answers), unknown
# routes (404) and methods (405), a daemon with --token-file (401 without or with a wrong
# token, 200 with the right one), and a refused non-loopback --listen without a token.
# Raw sockets use python3. Every wait has a deadline; the trap kills daemons, removes temps.
set -u
. "$(dirname "$0")/lib.sh"
e2e_init bad "$@"
SLOWPID="" EXTRA_PIDS=""

# expect NAME CODE CURL-ARGS...: one request with curl; the status must be CODE exactly.
expect() {
    local name=$1 want=$2 got
    shift 2
    got=$(curl -s -o "$TMP/body" -w '%{http_code}' --max-time 30 "$@")
    if [ "$got" = "$want" ]; then
        ok "$name -> $want"
    else
        bad "$name" "got $got, want $want: $(head -c 300 "$TMP/body")"
    fi
}
# expect_raw NAME CODE RAW-ARGS...: the same through the raw-socket helper.
expect_raw() {
    local name=$1 want=$2 got
    shift 2
    got=$(python3 "$TMP/raw.py" "$PORT" "$@" 2>&1)
    [ "$got" = "$want" ] && ok "$name -> $want" || bad "$name" "got '$got', want $want"
}

# ---- raw-socket helper ---------------------------------------------------------------------
cat >"$TMP/raw.py" <<'EOF'
"""raw.py PORT MODE ARGS: speaks HTTP over a plain socket; prints the response status (or
what happened). Modes: head SIZE | nhdr COUNT | body SIZE JSON | chunked SIZE |
bytewise METHOD PATH [JSON] | partial | garbage | idle N."""
import select, socket, sys, time

port, mode, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

def conn(timeout=15.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def status(s):
    """Reads one response head and returns its status code, or 'closed' / 'timeout'."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode()

def send(req, timeout=15.0):
    s = conn(timeout)
    try:
        s.sendall(req)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before reading everything
    st = status(s)
    s.close()
    return st

def patch(body, ctype=b"application/json"):
    return (b"PATCH /v1/policy HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

if mode == "head":  # a GET whose head (request line .. blank line) is exactly SIZE bytes
    size = int(args[0])
    pre, post = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    print(send(pre + b"a" * (size - len(pre) - len(post)) + post))
elif mode == "nhdr":  # COUNT header fields in all (Host included)
    n = int(args[0])
    hdrs = b"Host: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1))
    print(send(b"GET /v1/status HTTP/1.1\r\n" + hdrs + b"\r\n"))
elif mode == "body":  # a PATCH body of exactly SIZE bytes: JSON then spaces
    size, js = int(args[0]), args[1].encode()
    print(send(patch(js + b" " * (size - len(js)))))
elif mode == "chunked":  # a chunked PATCH body of SIZE bytes in 4 KiB chunks
    size, out = int(args[0]), b""
    while size > 0:
        k = min(size, 4096)
        out += b"%x\r\n" % k + b" " * k + b"\r\n"
        size -= k
    print(send(b"PATCH /v1/policy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + out + b"0\r\n\r\n"))
elif mode == "bytewise":  # the whole request written one byte per send, 2 ms apart
    method, path = args[0].encode(), args[1].encode()
    body = args[2].encode() if len(args) > 2 else b""
    req = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n"
    if body:
        req += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    req += b"\r\n" + body
    s = conn()
    for i in range(len(req)):
        s.send(req[i:i + 1])
        time.sleep(0.002)
    print(status(s))
    s.close()
elif mode == "partial":  # half a head, then silence: prints STATUS SECONDS
    s = conn(30.0)
    t0 = time.monotonic()
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    st = status(s)
    print(st, round(time.monotonic() - t0, 1))
elif mode == "garbage":
    print(send(b"HELLO THERE\r\n\r\n"))
elif mode == "idle":  # N idle connections; counts refusals, probes while they are held
    n, socks = int(args[0]), []
    for _ in range(n):
        socks.append(conn(5.0))
    time.sleep(1.0)
    rejected, pending = 0, set(socks)
    while pending:  # collect every answer or close that arrives within 0.5 s of the last
        ready, _, _ = select.select(list(pending), [], [], 0.5)
        if not ready:
            break
        for s in ready:
            pending.discard(s)
            try:
                d = s.recv(4096)
            except ConnectionResetError:
                d = b""
            if not d or b" 503 " in d.split(b"\r\n", 1)[0]:
                rejected += 1
    during = send(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        s.close()
    print("opened=%d rejected=%d probe_while_held=%s" % (len(socks), rejected, during))
EOF

need_bin "$DAEMON"
tiny_config 1000000 500 >"$TMP/cfg.json" || die "make config" # never finishes while the test runs

# ---- the daemon without a token ----------------------------------------------------------------
start_daemon
ok "daemon listens on port $PORT"
# The slow client first: its 10 s header timeout runs while the other checks do.
python3 "$TMP/raw.py" "$PORT" partial >"$TMP/partial" 2>&1 &
SLOWPID=$!
EXTRA_PIDS=$SLOWPID
advances || die "steps advance" "step stuck"
get /v1/policy >"$TMP/policy.before" || die "GET /v1/policy"
thr=$(js 'd["shrink_threshold"]' <"$TMP/policy.before")
J='Content-Type: application/json'
P=$BASE/v1/policy

expect "malformed JSON" 400 -X PATCH -H "$J" -d '{"shrink_threshold": ' "$P"
expect "JSON with trailing bytes" 400 -X PATCH -H "$J" -d '{"shrink_threshold": 0.05} x' "$P"
expect "empty PATCH body" 400 -X PATCH -H "$J" "$P"
expect "a JSON array body" 422 -X PATCH -H "$J" -d '[1, 2]' "$P"
nchg=$(wc -l <"$TMP/state/changes.jsonl" 2>/dev/null || echo 0)
expect "an empty object PATCH {}" 422 -X PATCH -H "$J" -d '{}' "$P"
expect "an empty object PATCH /v1/train {}" 422 -X PATCH -H "$J" -d '{}' "$BASE/v1/train"
[ "$(wc -l <"$TMP/state/changes.jsonl" 2>/dev/null || echo 0)" = "$nchg" ] &&
    ok "PATCH {} logged no change" || bad "PATCH {} logged no change" "changes.jsonl grew"
expect "string for a number" 422 -X PATCH -H "$J" -d '{"shrink_threshold": "abc"}' "$P"
expect "number for a bool" 422 -X PATCH -H "$J" -d '{"enabled": 1}' "$P"
expect "unknown enum value" 422 -X PATCH -H "$J" -d '{"mode": "sideways"}' "$P"
expect "negative step count" 422 -X PATCH -H "$J" -d '{"interval_steps": -5}' "$P"
expect "shrink_threshold above 1" 422 -X PATCH -H "$J" -d '{"shrink_threshold": 1.5}' "$P"
expect "shrink_threshold below 0" 422 -X PATCH -H "$J" -d '{"shrink_threshold": -0.1}' "$P"
expect "energy_eps at its open bound" 422 -X PATCH -H "$J" -d '{"energy_eps": 1}' "$P"
expect "max_width below min_width" 422 -X PATCH -H "$J" -d '{"max_width": 2, "min_width": 8}' "$P"
expect "unknown field" 422 -X PATCH -H "$J" -d '{"nope": 1}' "$P"
expect "valid + unknown field (all or nothing)" 422 -X PATCH -H "$J" \
    -d '{"shrink_threshold": 0.3, "bogus": true}' "$P"
expect "lr as a string" 422 -X PATCH -H "$J" -d '{"lr": "fast"}' "$BASE/v1/train"
expect "immutable train.batch_size" 422 -X PATCH -H "$J" -d '{"batch_size": 64}' "$BASE/v1/train"
# README: PATCH /v1/train sets the checkpoint interval too.
expect "PATCH /v1/train checkpoint_every_steps" 200 -X PATCH -H "$J" \
    -d '{"checkpoint_every_steps": 700}' "$BASE/v1/train"
js 'd["checkpoint_every_steps"]' <"$TMP/body" | grep -qx 700 &&
    ok "PATCH /v1/train answers checkpoint_every_steps 700" ||
    bad "checkpoint_every_steps in the answer" "$(head -c 300 "$TMP/body")"
expect "text/plain body" 415 -X PATCH -H 'Content-Type: text/plain' -d '{"enabled": true}' "$P"
expect "history?points=0" 400 "$BASE/v1/history?points=0"
expect "history?points=abc" 400 "$BASE/v1/history?points=abc"
expect "spectrum of an unknown layer" 404 "$BASE/v1/layers/nope/spectrum"
expect "unknown route" 404 "$BASE/v1/nope"
expect "unknown top-level route" 404 "$BASE/index.html"
expect "DELETE /v1/status" 405 -X DELETE "$BASE/v1/status"
expect "GET /v1/pause" 405 "$BASE/v1/pause"
expect "PUT /v1/policy" 405 -X PUT -H "$J" -d '{}' "$P"
curl -s -D "$TMP/hdrs" -o /dev/null --max-time 30 -X DELETE "$BASE/v1/policy"
grep -qi '^Allow: .*GET.*PATCH' "$TMP/hdrs" && ok "405 carries Allow: GET, PATCH" ||
    bad "405 Allow header" "$(grep -i '^allow' "$TMP/hdrs")"
expect_raw "garbage request line" 400 garbage
expect_raw "head of exactly 16384 bytes" 200 head 16384
expect_raw "head of 16385 bytes" 431 head 16385
expect_raw "head of 64 KiB" 431 head 65536
expect_raw "64 header fields" 200 nhdr 64
expect_raw "65 header fields" 431 nhdr 65
expect_raw "body of exactly 65536 bytes" 200 body 65536 "{\"shrink_threshold\": $thr}"
expect_raw "body of 65537 bytes" 413 body 65537 "{\"shrink_threshold\": $thr}"
expect_raw "chunked body over 64 KiB" 413 chunked 70000
expect_raw "GET written one byte at a time" 200 bytewise GET /v1/status
expect_raw "PATCH written one byte at a time" 200 bytewise PATCH /v1/policy \
    "{\"shrink_threshold\": $thr}"

# 500 idle connections: those over the cap get 503 (or a close); afterwards all is well.
idle=$(python3 "$TMP/raw.py" "$PORT" idle 500 2>&1)
rej=$(echo "$idle" | sed -n 's/.*rejected=\([0-9]*\).*/\1/p')
probe=$(echo "$idle" | sed -n 's/.*probe_while_held=\([0-9a-z]*\).*/\1/p')
if [ "${rej:-0}" -ge 244 ] && { [ "$probe" = 503 ] || [ "$probe" = 200 ]; }; then
    ok "500 idle connections: $idle"
else
    bad "500 idle connections" "$idle"
fi
wait_for 10 get /v1/status -o /dev/null && ok "/v1/status answers after the idle flood" ||
    bad "/v1/status after the idle flood"

# The slow client: 408 about 10 s after its first byte.
end=$((SECONDS + 20))
while kill -0 "$SLOWPID" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
SLOWPID="" EXTRA_PIDS=""
read -r st secs <"$TMP/partial"
if [ "$st" = 408 ] && python3 -c "import sys; sys.exit(not 9 <= float('$secs') <= 12)"; then
    ok "request stopped half way -> 408 after ${secs} s"
else
    bad "request stopped half way" "$(cat "$TMP/partial")"
fi

get /v1/policy >"$TMP/policy.after"
cmp -s "$TMP/policy.before" "$TMP/policy.after" && ok "policy unchanged by all of the above" ||
    bad "policy unchanged" "before $(cat "$TMP/policy.before") after $(cat "$TMP/policy.after")"
advances && ok "training still advances" || bad "training still advances"
stop_daemon

# ---- change-log replay: a seq that is no integer (1e300) is skipped, later ones still apply --------
last=$(tail -n 1 "$TMP/state/changes.jsonl" | js 'int(d["seq"])')
printf '{"seq":1e300,"time":0,"step":0,"route":"PATCH /v1/policy","change":{"shrink_threshold":0.33}}\n' \
    >>"$TMP/state/changes.jsonl"
printf '{"seq":%d,"time":0,"step":0,"route":"PATCH /v1/policy","change":{"shrink_threshold":0.44}}\n' \
    "$((last + 1))" >>"$TMP/state/changes.jsonl"
start_daemon
got=$(get /v1/policy | js 'd["shrink_threshold"]')
[ "$got" = 0.44 ] && ok "replay skips seq 1e300 and applies seq $((last + 1))" ||
    bad "replay with seq 1e300" "shrink_threshold $got, want 0.44"
stop_daemon

# ---- the daemon with a token ---------------------------------------------------------------------
printf 's3cret-token\n' >"$TMP/token"
start_daemon --token-file "$TMP/token" --state-dir "$TMP/state2"
ok "daemon with --token-file listens on port $PORT"
expect "POST /v1/pause without a token" 401 -X POST "$BASE/v1/pause"
expect "POST /v1/pause with a wrong token" 401 -X POST -H 'Authorization: Bearer nope' "$BASE/v1/pause"
expect "PATCH /v1/policy with a wrong token" 401 -X PATCH -H "$J" \
    -H 'Authorization: Bearer s3cret-tokenX' -d '{"shrink_threshold": 0.3}' "$BASE/v1/policy"
expect "Basic auth instead of Bearer" 401 -X POST -u user:s3cret-token "$BASE/v1/pause"
expect "GET /v1/status needs no token" 200 "$BASE/v1/status"
get /v1/policy | js 'd["shrink_threshold"]' | grep -qx "$thr" &&
    ok "the refused PATCH changed nothing" || bad "policy after a refused PATCH"
expect "POST /v1/pause with the right token" 200 -X POST -H 'Authorization: Bearer s3cret-token' \
    "$BASE/v1/pause"
expect "POST /v1/resume with the right token" 200 -X POST -H 'Authorization: Bearer s3cret-token' \
    "$BASE/v1/resume"
stop_daemon

# ---- a non-loopback address without a token is refused at start-up ---------------------------------
timeout 60 "$DAEMON" --config "$TMP/cfg.json" --state-dir "$TMP/state3" --listen 0.0.0.0:0 \
    >"$TMP/out.nl" 2>"$TMP/err.nl"
code=$?
if [ "$code" = 1 ] && grep -qi "token" "$TMP/err.nl" && ! grep -q "listening on" "$TMP/out.nl"; then
    ok "--listen 0.0.0.0:0 without a token: exit 1, '$(head -n 1 "$TMP/err.nl")'"
else
    bad "--listen 0.0.0.0:0 without a token" "exit $code, stderr: $(head -c 300 "$TMP/err.nl")"
fi

summary
