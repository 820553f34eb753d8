#!/usr/bin/env bash
# Runs the process-level cluster tests (tests/cluster/*.test.js): three `tally start` processes on
# loopback driven by the official Node client (tests/node's package and harness). Installs
# tests/node/node_modules with `npm ci` and builds ./tally if missing. Extra arguments select
# test files or --test-name-pattern=... options. The last line printed is always exactly
# "N passed, N failed" (cancelled tests count as failed); exit status non-zero if any failed.
#
#   TALLY_BIN=path               server binary (default: ./tally)
#   TALLY_CLUSTER_RESUME_MS=n    writes must resume within n ms of kill -9 of the primary (1000)
#   TALLY_CLUSTER_FREEZE_MS=n    ... and of SIGSTOP of the primary (3000)
#   TALLY_CLUSTER_KEEP=1         keep each cluster's directory (data files, replica logs)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
node_dir="$root/tests/node"

finish() { # passed failed
  echo "$1 passed, $2 failed"
  [ "$2" -eq 0 ] && [ "$1" -gt 0 ]
  exit $?
}

if ! command -v node >/dev/null; then echo "node is not installed"; finish 0 1; fi
if [ ! -d "$node_dir/node_modules/tigerbeetle-node" ]; then
  echo "installing tests/node dependencies (npm ci)"
  if ! (cd "$node_dir" && npm ci --no-audit --no-fund); then echo "npm ci failed"; finish 0 1; fi
fi
if [ -z "${TALLY_BIN:-}" ] && [ ! -x "$root/tally" ]; then
  echo "building ./tally"
  if ! make -C "$root" tally; then echo "make failed: ./tally is not available"; finish 0 1; fi
fi

files=(); options=()
for a in "$@"; do
  case "$a" in
    --*) options+=("$a") ;;
    *) if [ -f "$a" ]; then files+=("$a"); else files+=("$root/tests/cluster/$a.test.js"); fi ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=("$root"/tests/cluster/*.test.js)

tap=$(mktemp /tmp/tally-cluster-tap.XXXXXX)
trap 'rm -f "$tap"' EXIT

# One file at a time, tests in order: each test has its own timeout, the outer one only guards
# against the runner itself hanging.
timeout -k 10 1200 node --test --test-concurrency=1 "${options[@]}" \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" \
  "${files[@]}"
rc=$?

count() { # the last "# name N" line of the TAP summary
  local v
  v=$(grep -E "^# $1 [0-9]+$" "$tap" | tail -1 | awk '{print $3}')
  echo "${v:-0}"
}
pass=$(count pass)
fail=$(count fail)
fail=$((fail + $(count cancelled)))
if [ $rc -ne 0 ] && [ "$fail" -eq 0 ]; then
  echo "node --test exited with status $rc"
  fail=1
fi
finish "$pass" "$fail"
