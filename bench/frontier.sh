#!/usr/bin/env bash
# The frontier sweep (issue 10): trains what the CSV does not have yet, then re-draws the plot.
#   bench/frontier.sh [frontier.py options]      # e.g. --epochs 15 --seeds 1,2,3
#   bench/frontier.sh --plot-only                # re-draw docs/frontier.{png,svg} from the CSV
# Long: run it with nice in the background; it resumes where it stopped.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/deps.sh" gnuplot-nox
if [ "${1:-}" != "--plot-only" ]; then
  make -C "$top" build >/dev/null
  nice -n 10 python3 "$top/bench/frontier.py" "$@"
fi
python3 "$top/bench/frontier_plot.py" --md "$top/docs/frontier.md"
