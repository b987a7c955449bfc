#!/usr/bin/env bash
# scripts/kill_loop.sh [KILLS] [BUILD_DIR]: the long version of tests/e2e_killloop.sh (issue
# 15: 50 SIGKILLs during checkpoint writes must each resume). Prints the checks and the time.
set -u
KILLS=${1:-50}
BUILD=${2:-build}
SRC=$(cd "$(dirname "$0")/.." && pwd)
start=$SECONDS
KILLS=$KILLS bash "$SRC/tests/e2e_killloop.sh" "$BUILD" "$SRC"
rc=$?
echo "kill loop: $KILLS kills in $((SECONDS - start)) s, exit $rc"
exit $rc
