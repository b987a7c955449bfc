#!/usr/bin/env bash
# Runs every libFuzzer harness for a bounded time. Usage: scripts/fuzz.sh BUILD_DIR SECONDS
# Each harness starts from tests/fuzz/corpus/NAME (read only) and writes what it finds to a
# scratch corpus in BUILD_DIR/corpus/NAME; a failure leaves its input in BUILD_DIR/crash-NAME-*.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/fuzz.sh BUILD_DIR SECONDS}
secs=${2:?usage: scripts/fuzz.sh BUILD_DIR SECONDS}
fail=0
for h in http config ckpt export; do
  mkdir -p "$build/corpus/$h"
  echo "fuzz_$h: $secs s"
  if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 OMP_WAIT_POLICY=passive \
      "$build/tests/fuzz/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/crash-$h-" \
      "$build/corpus/$h" "tests/fuzz/corpus/$h" >"$build/fuzz_$h.log" 2>&1; then
    echo "fuzz_$h FAILED (log: $build/fuzz_$h.log)"
    tail -n 40 "$build/fuzz_$h.log"
    fail=1
  else
    grep -E "stat::number_of_executed_units|cov: " "$build/fuzz_$h.log" | tail -n 2
  fi
done
exit $fail
