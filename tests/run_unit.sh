#!/usr/bin/env bash
# Runs every unit-test binary in a directory and sums their "N passed, N failed" lines.
set -u
dir=$1
passed=0; failed=0
for bin in "$dir"/test_*; do
  [ -x "$bin" ] || continue
  out=$("$bin" 2>&1); rc=$?
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -z "$line" ] || [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | tail -30
  fi
  if [ -z "$line" ]; then
    echo "FAIL $(basename "$bin"): exited $rc without a result line"
    failed=$((failed + 1)); continue
  fi
  p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
  if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  echo "$(basename "$bin"): $line"
  passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
