#!/usr/bin/env bash
# Runs the end-to-end tests with the official TigerBeetle Node client (tests/node/test/*.test.js)
# against ./tally. Installs tests/node/node_modules with `npm ci` if missing and builds ./tally if
# missing. Extra arguments select test files (default: all). The last line printed is always
# exactly "N passed, N failed" (tests; cancelled tests count as failed), and the exit status is
# non-zero if any test failed.
#
#   TALLY_BIN=path            server binary to test (default: ./tally)
#   NODE_TEST_CONCURRENCY=n   test files run in parallel (default 2)
#   TALLY_NODE_TEST_DIR=dir   where the *.test.js files are (default tests/node/test; the cluster
#                             tests use this runner with tests/cluster)
#   TALLY_NODE_TIMEOUT=s      bound on the whole run (default 300)
# Arguments starting with -- are passed to `node --test` (e.g. --test-name-pattern=...).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
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

test_dir=${TALLY_NODE_TEST_DIR:-$node_dir/test}
files=(); options=()
for a in "$@"; do
  case "$a" in
    --*) options+=("$a") ;;
    *) if [ -f "$a" ]; then files+=("$a"); else files+=("$test_dir/$a.test.js"); fi ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=("$test_dir"/*.test.js)

tap=$(mktemp /tmp/tally-node-tap.XXXXXX)
trap 'rm -f "$tap"' EXIT

# spec output for people, TAP into a file for the counts. Every test has its own timeout; the
# outer timeout only guards against the runner itself hanging.
timeout -k 10 "${TALLY_NODE_TIMEOUT:-300}" node --test \
  --test-concurrency="${NODE_TEST_CONCURRENCY:-2}" "${options[@]}" \
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
cancelled=$(count cancelled)
fail=$((fail + cancelled))
if [ $rc -ne 0 ] && [ "$fail" -eq 0 ]; then
  echo "node --test exited with status $rc"
  fail=1
fi
finish "$pass" "$fail"
