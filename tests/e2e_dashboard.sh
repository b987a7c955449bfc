#!/usr/bin/env bash
# tests/e2e_dashboard.sh BUILD_DIR SOURCE_DIR: the dashboard in headless Chromium.
#
# Starts evowidthd on configs/tiny.json with a token file, periodic adaptation off and a
# target well under the net's size (so one POST /v1/adapt shrinks it), checks that GET / and
# /dashboard answer the page and its assets are in the binary, then runs tests/dashboard.mjs
# (playwright-core driving Debian's /usr/bin/chromium): loss points, the read-only note, a
# widths change after POST /v1/adapt, a screenshot in BUILD_DIR, and the policy form with the
# token. Needs `scripts/deps.sh --test` (chromium) and node_modules (scripts/web_deps.sh).
set -u
. "$(dirname "$0")/lib.sh"
e2e_init dashboard "$@"

need_bin "$DAEMON"
[ -x /usr/bin/chromium ] || die "chromium is installed" "run scripts/deps.sh --test"
bash "$SRC/scripts/web_deps.sh" >/dev/null || die "node_modules" "scripts/web_deps.sh failed"
tiny_config 1000000 0 | python3 -c '
import json, sys
c = json.load(sys.stdin)
c["adapt"].update({"enabled": False, "target_params": 600})
c["train"]["eval_every_steps"] = 400
print(json.dumps(c))' >"$TMP/cfg.json" || die "make config"
printf 'dash-test-token\n' >"$TMP/token"
start_daemon --token-file "$TMP/token"
ok "daemon listens on port $PORT"

for p in / /dashboard; do
    code=$(curl -s -o "$TMP/page" -w '%{http_code} %{content_type}' --max-time 10 "$BASE$p")
    [[ $code == "200 text/html"* ]] && grep -q '<script src="/assets/app.js">' "$TMP/page" &&
        ok "GET $p is the page" || bad "GET $p" "$code"
done
for a in app.js app.css uPlot.min.js uPlot.min.css; do
    [ "$(api GET /assets/$a)" = 200 ] && [ -s "$TMP/body" ] && ok "GET /assets/$a" || bad "GET /assets/$a"
done
grep -q 'uPlot' "$TMP/body" 2>/dev/null || true
[ "$(api GET /assets/nope.js)" = 404 ] && ok "an unknown asset is 404" || bad "unknown asset"
grep -Eq 'https?://' "$TMP/page" && bad "the page loads nothing from elsewhere" "$(grep -Eo 'https?://[^"]*' "$TMP/page")" ||
    ok "the page loads nothing from elsewhere"

mkdir -p "$BUILD/screenshots"
NODE_PATH="$SRC/node_modules" timeout 240 node "$SRC/tests/dashboard.mjs" test "$BASE" dash-test-token \
    "$BUILD/screenshots" >"$TMP/browser" 2>&1
rc=$?
sed 's/^/    /' "$TMP/browser"
[ $rc = 0 ] && ok "the browser checks pass" || bad "the browser checks" "exit $rc"
[ -s "$BUILD/screenshots/dashboard-test.png" ] && ok "screenshot in $BUILD/screenshots" || bad "screenshot"
stop_daemon
summary
