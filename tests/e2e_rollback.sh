#!/usr/bin/env bash
# tests/e2e_rollback.sh BUILD_DIR SOURCE_DIR: divergence is recovered (issue 15, D10).
# evowidthd trains configs/tiny.json until it has a last-known-good checkpoint
# (good-*.evow), then PATCH /v1/train sets lr 10, which drives the loss to infinity within a
# few steps. The daemon must roll back to the good checkpoint with the learning rate times
# daemon.rollback_lr_factor (0.1 here), record a rollback event in events.jsonl and a
# "rollback" change in changes.jsonl, and keep training (not pause) with a finite loss; after
# SIGKILL the lower rate is still in force (replayed).
set -u
. "$(dirname "$0")/lib.sh"
e2e_init rollback "$@"
need_bin "$DAEMON"
tiny_config 1000000 50 | python3 -c '
import json, sys
c = json.load(sys.stdin)
c["daemon"]["rollback_lr_factor"] = 0.1
c["adapt"]["enabled"] = False
print(json.dumps(c))' >"$TMP/cfg.json" || die "make config"
S=$TMP/state
start_daemon
wait_for 30 sh -c "ls '$S'/good-*.evow >/dev/null 2>&1" && ok "a last-known-good checkpoint is kept" ||
    die "good checkpoint" "$(ls "$S")"
code=$(api PATCH /v1/train -H 'Content-Type: application/json' -d '{"lr": 10}')
[ "$code" = 200 ] || die "PATCH lr 10" "$code $(cat "$TMP/body")"
wait_for 30 grep -q "rolled back to the last-known-good checkpoint" "$TMP/err.$RUN" &&
    ok "divergence at lr 10 rolls back: $(grep -m1 -o 'diverged at step.*' "$TMP/err.$RUN")" ||
    die "rollback" "$(grep -m2 -i 'diverg\|paus' "$TMP/err.$RUN")"
ev=$(python3 - "$S/events.jsonl" <<'PY'
import json, sys
r = [e for e in map(json.loads, open(sys.argv[1])) if e.get("kind") == "rollback"]
print(len(r), r[0]["lr_before"], r[0]["lr_after"], r[0]["step"] < r[0]["from_step"] if r else "")
PY
)
set -- $ev
[ "${1:-0}" -ge 1 ] && [ "$2" = 10 ] && [ "$3" = 1 ] && [ "$4" = True ] &&
    ok "events.jsonl: a rollback event, lr 10 -> 1, back to an earlier step" || bad "rollback event" "$ev"
grep -q '"route":"rollback"' "$S/changes.jsonl" && ok "changes.jsonl records the lower rate" ||
    bad "rollback change" "$(tail -n 2 "$S/changes.jsonl")"
sleep 2
st=$(get /v1/status | js 'd["state"], d["lr"] <= 1.0000001, d["rollbacks"] >= 1, d["loss"] is not None and d["loss"] < 1e3')
[ "$st" = "training True True True" ] && ok "training goes on at the lower rate with a finite loss" ||
    bad "after the rollback" "$st; $(grep -m3 -i 'diverg\|paus' "$TMP/err.$RUN")"
advances || bad "steps advance after the rollback"
kill9
start_daemon
lr=$(get /v1/status | js 'd["lr"] <= 1.0000001')
[ "$lr" = True ] && ok "after SIGKILL the lower rate is kept" || bad "lr after restart" "$(get /v1/status | js 'd["lr"]')"
stop_daemon
summary
