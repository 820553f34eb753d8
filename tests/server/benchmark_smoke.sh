#!/usr/bin/env bash
# tests/server/benchmark_smoke.sh <tally binary>: `tally benchmark` keeps working.
#
# Small runs (a few thousand transfers) of the benchmark: on its own temporary server and
# against a running one (twice, so ids of two runs must not collide), with both workload
# shapes; bad flags; an unreachable address; an interrupted run. Checks exit statuses, the
# report's lines, and that nothing is left behind (temporary files, server processes). Speed is
# never judged here: that is bench/run.sh's job. Last line: "N passed, N failed".
set -u
tally=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cd "$(dirname "$0")/../.."
. tests/lib.sh
dir=$(mktemp -d /tmp/tally-benchmark-smoke.XXXXXX)
export TMPDIR=$dir/tmp
mkdir -p "$TMPDIR"
trap 'stop_server >/dev/null 2>&1; rm -rf "$dir"' EXIT
passed=0; failed=0

pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $1"; [ -f "$dir/out" ] && sed 's/^/  | /' "$dir/out" | tail -25; }

# run_ok <description> <benchmark flags...>: exit 0, a complete report, verification ok.
run_ok() {
  local what=$1; shift
  timeout 120 "$tally" benchmark "$@" >"$dir/out" 2>&1; local rc=$?
  if [ $rc -ne 0 ]; then fail "$what: exit $rc"; return; fi
  local line
  for line in '^accounts: [0-9]+ created' '^transfers: [0-9]+ transfers in [0-9.]+ s = [0-9]+ transfers/s' \
      '^transfers: batch latency p50=[0-9.]+ ms p90=[0-9.]+ ms p99=[0-9.]+ ms p100=[0-9.]+ ms' \
      '^lookup_accounts: [0-9]+ accounts' '^get_account_transfers: [0-9]+ transfers' \
      '^lookup_transfers: [0-9]+ transfers' '^verify: ok ' '^client: requests=[0-9]+ retransmissions=0'; do
    if ! grep -Eq "$line" "$dir/out"; then fail "$what: no line matching '$line'"; return; fi
  done
  pass
}

# run_error <description> <exit status> <benchmark flags...>: that status and one "error: " line
# (2 for a bad command line, 1 for a failure at run time).
run_error() {
  local what=$1 expected=$2; shift 2
  timeout 30 "$tally" benchmark "$@" >"$dir/out" 2>&1; local rc=$?
  if [ $rc -eq "$expected" ] && [ "$(grep -c '^error: ' "$dir/out")" -eq 1 ]; then pass; else fail "$what: exit $rc"; fi
}

nothing_left() { # nothing_left <description>: no temporary file, no server of ours.
  if [ -n "$(ls -A "$TMPDIR")" ]; then fail "$1: left $(ls -A "$TMPDIR")"; return; fi
  if pgrep -f "start --addresses=.* $TMPDIR/" >/dev/null; then fail "$1: a server is still running"; return; fi
  pass
}

# 1. On its own server: the complete demo, with its memory report.
run_ok "own server" --accounts=100 --transfers=5000 --batch=1000 --clients=3 --query-count=10
grep -Eq '^server memory at start: rss=[0-9]+ KiB hwm=[0-9]+ KiB' "$dir/out" && grep -Eq '^server memory at end: rss=' "$dir/out" \
  && pass || fail "own server: memory report"
grep -q '(started here)' "$dir/out" && pass || fail "own server: says it started the server"
grep -q 'transfers: 5000 transfers' "$dir/out" && pass || fail "own server: counts 5000 transfers"
nothing_left "own server"

# 2. Single-transfer requests, uniform accounts, random ids.
run_ok "batch of 1" --accounts=50 --transfers=300 --batch=1 --clients=2 --hot-accounts=uniform --id-order=random --query-count=5
nothing_left "batch of 1"

# 3. Against a running server, twice: the second run's ids must not collide with the first's.
if start_server "$tally" "$dir/server"; then
  run_ok "external server, run 1" --addresses=127.0.0.1:$SERVER_PORT --accounts=200 --transfers=4000 --batch=512 --clients=4 --query-count=10
  grep -q '(started here)' "$dir/out" && fail "external server: claims to have started it" || pass
  run_ok "external server, run 2" --addresses=127.0.0.1:$SERVER_PORT --accounts=200 --transfers=4000 --batch=8189 --clients=1 --seed=7 --id-order=random --query-count=10
  run_error "wrong cluster" 1 --addresses=127.0.0.1:$SERVER_PORT --cluster=9 --accounts=10 --transfers=10
  stop_server && pass || fail "server exited cleanly after the runs"
else
  fail "could not start a server"
fi

# 3b. --latency-log against a server with debug logging: each request's op has its "op
# executed" line (bench/background_latency.sh joins the two), and the load flushed memtables.
mkdir -p "$dir/debug"
if TALLY_LOG=debug start_server "$tally" "$dir/debug"; then
  run_ok "latency log" --addresses=127.0.0.1:$SERVER_PORT --accounts=100 --transfers=600000 --batch=8189 --clients=2 --id-order=random --query-count=1 --latency-log="$dir/latency.log"
  stop_server && pass || fail "debug server exited cleanly"
  sed -nE 's/.*op executed op=([0-9]+) operation=([0-9]+) begin_us=([0-9]+) took_us=([0-9]+) flushes=([0-9]+) .* worker_merging=([01]) worker_busy_us=[0-9]+$/\1 \2 \3 \4 \5/p' \
    "$dir/debug/server.log" >"$dir/ops"
  requests=$(wc -l <"$dir/latency.log")
  [ "$requests" -eq 74 ] && pass || fail "latency log: $requests requests, 74 expected"
  missing=$(awk 'NR == FNR { if ($2 == 139 && $3 <= $4) op[$1] = 1; next } !($1 in op) { n++ } END { print n + 0 }' "$dir/ops" "$dir/latency.log")
  [ "$missing" -eq 0 ] && pass || fail "latency log: $missing requests without a create op's 'op executed' line"
  flushes=$(awk '{ n += $5 } END { print n + 0 }' "$dir/ops")
  [ "$flushes" -gt 0 ] && pass || fail "op executed lines: no memtable flush in 600,000 transfers"
else
  fail "could not start a debug server"
fi

# 4. Bad command lines and an address nobody listens on.
run_error "batch 0" 2 --batch=0
run_error "batch too large" 2 --batch=8190
run_error "unknown hot-accounts" 2 --hot-accounts=zipf
run_error "unknown id-order" 2 --id-order=reversed
run_error "unknown flag" 2 --bogus=1
run_error "one account" 2 --accounts=1
port=$(port_base)
start=$(date +%s)
timeout 30 "$tally" benchmark --addresses=127.0.0.1:$port --transfers=10 >"$dir/out" 2>&1; rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q '^error: ' "$dir/out" && [ $(( $(date +%s) - start )) -le 10 ] \
  && pass || fail "unreachable address: exit $rc"

# 5. Interrupted: SIGINT mid-run stops the server and deletes its file.
"$tally" benchmark --accounts=1000 --transfers=100000000 --batch=8189 >"$dir/out" 2>&1 &
bench_pid=$!
waited=0
while ! grep -q '^accounts:' "$dir/out" 2>/dev/null && [ $waited -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
kill -INT $bench_pid
waited=0
while kill -0 $bench_pid 2>/dev/null && [ $waited -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
if kill -0 $bench_pid 2>/dev/null; then kill -9 $bench_pid; fail "interrupted: still running 10 s after SIGINT"; else
  wait $bench_pid; rc=$?
  [ $rc -ne 0 ] && grep -q 'interrupted' "$dir/out" && pass || fail "interrupted: exit $rc"
fi
nothing_left "interrupted"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
