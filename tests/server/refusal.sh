#!/usr/bin/env bash
# tests/server/refusal.sh <tally>: a replica that refuses writes says so, for as long as it
# lasts (README "When a replica refuses writes"): a replica started with room for 16 accounts
# gets a benchmark that wants 100. While the client keeps retrying: the log repeats
# `request refused: ledger capacity exhausted` at least every 5 s, /metrics counts the
# refusals and sets tally_refusing_writes, /health/ready is 503 naming the reason, and
# /health/live stays 200. Bounded (about 15 s). Last line: "N passed, N failed".
set -u
tally=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cd "$(dirname "$0")/../.."
. tests/lib.sh
dir=$(mktemp -d /tmp/tally-refusal.XXXXXX)
bench=
trap '[ -n "$bench" ] && kill -9 $bench 2>/dev/null; stop_server >/dev/null 2>&1; rm -rf "$dir"' EXIT
passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

mport=$(port_base)
start_server "$tally" "$dir" --accounts-max=16 --metrics-address=127.0.0.1:$mport ||
  { echo "0 passed, 1 failed"; exit 1; }
code() { curl -s -m 2 -o "$dir/body" -w '%{http_code}' "http://127.0.0.1:$mport$1"; }
[ "$(code /health/ready)" = 200 ] && pass "ready before the refusals" || fail "not ready at start: $(cat "$dir/body")"

timeout 30 "$tally" benchmark --addresses=127.0.0.1:$SERVER_PORT --accounts=100 --transfers=100 \
  >"$dir/bench.out" 2>&1 &
bench=$!
sleep 11
[ "$(code /health/ready)" = 503 ] && grep -q "^refusing writes: ledger capacity exhausted (accounts 0 of 16" "$dir/body" &&
  pass "/health/ready 503: $(cat "$dir/body")" || fail "/health/ready while refusing: $(cat "$dir/body")"
[ "$(code /health/live)" = 200 ] && pass "/health/live 200 while refusing" || fail "/health/live"
code /metrics >/dev/null
refused=$(grep '^tally_requests_refused_total{reason="ledger_capacity"}' "$dir/body" | awk '{print $2}')
[ "${refused:-0}" -gt 0 ] && pass "tally_requests_refused_total{reason=\"ledger_capacity\"} $refused" || fail "refusals not counted"
grep -q '^tally_refusing_writes{reason="ledger_capacity"} 1$' "$dir/body" && pass "tally_refusing_writes{reason=\"ledger_capacity\"} 1" ||
  fail "tally_refusing_writes not set"
lines=$(grep -c "request refused: ledger capacity exhausted" "$dir/server.log")
[ "$lines" -ge 2 ] && pass "$lines refusal log lines in 11 s (at least every 5 s)" || fail "$lines refusal log lines in 11 s"
grep -q "refused_since_last_log=[0-9]* refused_total=[0-9]*" "$dir/server.log" && pass "log lines carry the counts" || fail "log line format"
kill -9 $bench 2>/dev/null; wait $bench 2>/dev/null; bench=
stop_server && pass "server stops cleanly" || fail "server stop"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
