#!/usr/bin/env bash
# scripts/format.sh [--check]: clang-format-14 (the tree's .clang-format) over every C file git
# tracks, in place; with --check, changes nothing and fails naming each file that differs.
# Left out for now: code another branch is rewriting at the same time (reformatting it here
# would only make their merge conflict); its owners run this script on it when they land and
# delete its line below.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=(
)
CF=${CLANG_FORMAT:-clang-format-14}
command -v "$CF" >/dev/null || { echo "format.sh: $CF not found (scripts/deps.sh clang-format-14)" >&2; exit 2; }
files=()
while IFS= read -r f; do
  skip=0
  for e in "${EXCLUDE[@]}"; do [[ "$f" == "$e"* ]] && skip=1; done
  [ $skip = 0 ] && files+=("$f")
done < <(git ls-files '*.c' '*.h')
if [ "${1:-}" = --check ]; then
  bad=0
  for f in "${files[@]}"; do
    if ! "$CF" --style=file "$f" | cmp -s - "$f"; then
      echo "format.sh: $f is not formatted (run scripts/format.sh)" >&2
      bad=1
    fi
  done
  [ $bad = 0 ] && echo "format.sh: ${#files[@]} files formatted as .clang-format says"
  exit $bad
fi
"$CF" --style=file -i "${files[@]}"
