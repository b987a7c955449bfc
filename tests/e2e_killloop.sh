#!/usr/bin/env bash
# tests/e2e_killloop.sh BUILD_DIR SOURCE_DIR: SIGKILL during checkpoint writes, again and
# again (issue 15). evowidthd trains configs/tiny.json checkpointing every 5 steps (so a kill
# lands in or near a checkpoint write most of the time) and is killed KILLS times (default
# 10 here: it runs in CI; scripts/kill_loop.sh runs 50) at random moments. Every restart must
# resume from a checkpoint (never start over), at a step no lower than the checkpoint the
# previous run had reported, and at the end events.jsonl must hold seq 1..N once each.
set -u
KILLS=${KILLS:-10}
. "$(dirname "$0")/lib.sh"
e2e_init killloop "$@"
need_bin "$DAEMON"
tiny_config 1000000 5 >"$TMP/cfg.json" || die "make config"
S=$TMP/state
start_daemon
advances || die "steps advance"
resumed=0 regress=0
for i in $(seq 1 "$KILLS"); do
    sleep "0.$((RANDOM % 9 + 1))"
    last=$(get /v1/status | js 'd["last_checkpoint_step"]' 2>/dev/null)
    sleep "0.0$((RANDOM % 9))"
    kill9
    start_daemon
    if grep -q "resumed from" "$TMP/err.$RUN"; then
        resumed=$((resumed + 1))
        at=$(sed -n 's/.*resumed from .* at step \([0-9]*\) .*/\1/p' "$TMP/err.$RUN")
        [ "${at:-0}" -ge "${last:-0}" ] || { regress=$((regress + 1)); echo "    kill $i: resumed at $at < $last"; }
    else
        echo "    kill $i: no resume: $(head -n 3 "$TMP/err.$RUN")"
    fi
done
[ "$resumed" = "$KILLS" ] && ok "$KILLS SIGKILLs: every restart resumed from a checkpoint" ||
    bad "resume after SIGKILL" "$resumed of $KILLS"
[ "$regress" = 0 ] && ok "no restart went back before the last reported checkpoint" ||
    bad "restarts behind the last checkpoint" "$regress"
advances && ok "training continues" || bad "training after the kill loop"
stop_daemon
[ "${EXIT_CODE:-1}" = 0 ] && ok "SIGTERM exits 0" || bad "SIGTERM exit" "${EXIT_CODE:-?}"
r=$(python3 - "$S/events.jsonl" <<'PY'
import json, sys
seqs = [json.loads(l)["seq"] for l in open(sys.argv[1])]
print("ok" if seqs == list(range(1, len(seqs) + 1)) else "bad", len(seqs))
PY
)
[ "${r%% *}" = ok ] && ok "events.jsonl: seq 1..${r#* } once each" || bad "events.jsonl seq" "$r"
n=$(ls "$S"/*.corrupt 2>/dev/null | wc -l)
[ "$n" = 0 ] && ok "no checkpoint was ever left torn" || bad "torn checkpoints" "$n set aside"
summary
