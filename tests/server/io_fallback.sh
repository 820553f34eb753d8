#!/usr/bin/env bash
# tests/server/io_fallback.sh: the suites again with io_uring forbidden, as Docker's default
# seccomp profile and Kubernetes' RuntimeDefault forbid it: the server must fall back to its
# epoll backend, say so once, and pass the same tests.
#
# Every process here runs under tests/server/no_io_uring (a seccomp filter failing
# io_uring_setup, io_uring_enter and io_uring_register with EPERM), through wrapper scripts given
# wherever a tally binary goes. Needs `make all unit-bins tool-bins` and the same for
# VARIANT=asan. About a minute and a half; every step is bounded. Last line: "N passed, N failed".
set -u
cd "$(dirname "$0")/../.."
. tests/lib.sh
dir=$(mktemp -d /tmp/tally-io-fallback.XXXXXX)
trap 'stop_server >/dev/null 2>&1; rm -rf "$dir"' EXIT
passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && [ -f "$2" ] && tail -15 "$2" | sed 's/^/  | /'; }
check() { # check <description> <output file> <command...>: exit 0 and "0 failed" last
  local what=$1 out=$2; shift 2
  "$@" >"$out" 2>&1; local rc=$?
  if [ $rc -eq 0 ] && grep -Eq '^[0-9]+ passed, 0 failed$' "$out"; then
    pass "$what: $(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -1)"
  else
    fail "$what (exit $rc)" "$out"
  fi
}

filter=build/release/tests/server/no_io_uring
no_io_uring_wrapper ./tally "$dir/tally" || { echo "0 passed, 1 failed"; exit 1; }
no_io_uring_wrapper build/asan/tally "$dir/tally-asan" || { echo "0 passed, 1 failed"; exit 1; }
line='io_uring unavailable (EPERM): using the epoll backend'

# 1. The io and bus unit tests, sanitizer build, on the epoll backend the filter forces.
for t in test_bus_peers test_client_pool test_storage; do
  check "unit $t (epoll)" "$dir/$t.out" timeout 120 "$filter" build/asan/tests/$t
done

# 2. The choice itself: the fallback said once; TALLY_IO=io_uring refuses to start without it;
#    TALLY_IO=epoll chosen outright; a bad value refused.
mkdir -p "$dir/choice"
./tally format --cluster=0 --replica=0 --replica-count=1 "$dir/choice/0_0.tally" 2>/dev/null
TALLY_IO=io_uring timeout 10 "$dir/tally" start --addresses=127.0.0.1:1 "$dir/choice/0_0.tally" >"$dir/choice.out" 2>&1
[ $? -eq 1 ] && grep -q 'io_uring unavailable (EPERM) and TALLY_IO=io_uring' "$dir/choice.out" &&
  pass "TALLY_IO=io_uring under the filter: refuses to start" || fail "TALLY_IO=io_uring under the filter" "$dir/choice.out"
TALLY_IO=bogus timeout 10 ./tally start --addresses=127.0.0.1:1 "$dir/choice/0_0.tally" >"$dir/choice.out" 2>&1
[ $? -eq 1 ] && grep -q 'TALLY_IO must be io_uring, epoll or auto value=bogus' "$dir/choice.out" &&
  pass "TALLY_IO=bogus: refused" || fail "TALLY_IO=bogus" "$dir/choice.out"
rm -rf "$dir/choice"
if TALLY_IO=epoll start_server ./tally "$dir/chosen"; then
  grep -q 'using the epoll backend (TALLY_IO=epoll)' "$dir/chosen/server.log" &&
    pass "TALLY_IO=epoll: logged" || fail "TALLY_IO=epoll: no log line" "$dir/chosen/server.log"
  stop_server && pass "TALLY_IO=epoll: clean stop" || fail "TALLY_IO=epoll: stop" "$dir/chosen/server.log"
else
  fail "TALLY_IO=epoll: the server did not start"
fi
rm -rf "$dir/chosen"

# 3. Hostile input against the sanitizer build under the filter.
if start_server "$dir/tally-asan" "$dir/bad-input"; then
  [ "$(grep -c "$line" "$dir/bad-input/server.log")" -eq 1 ] &&
    pass "the fallback is logged once: '$line'" || fail "the fallback log line" "$dir/bad-input/server.log"
  timeout 300 build/asan/tests/server/bad_input "$SERVER_PORT" >"$dir/bad-input.out" 2>&1; rc=$?
  stop_server || rc=1
  if [ $rc -eq 0 ] && grep -Eq '^[0-9]+ passed, 0 failed$' "$dir/bad-input.out"; then
    pass "bad input (epoll, sanitizers): $(tail -1 "$dir/bad-input.out")"
  else
    fail "bad input (epoll, sanitizers) (exit $rc)" "$dir/bad-input.out"
  fi
else
  fail "bad input: the server did not start"
fi
rm -rf "$dir/bad-input"

# 4. tally benchmark, its own server and an external one.
check "benchmark smoke (epoll)" "$dir/bench.out" timeout 180 tests/server/benchmark_smoke.sh "$dir/tally"

# 5. SIGKILL at random moments: every restart under the filter too.
mkdir -p "$dir/crash"
seed=${TALLY_CRASH_SEED:-$(( $(date +%s) % 100000 ))}
check "crash (epoll, 25 kills, seed $seed)" "$dir/crash.out" timeout 300 build/release/tests/server/crash "$dir/tally" "$dir/crash" 25 "$seed"
starts=$(grep -c "$line" "$dir/crash/crash-server.log" 2>/dev/null)
[ "${starts:-0}" -ge 25 ] && pass "crash: every restart fell back (${starts} starts)" || fail "crash: fallback lines ${starts:-0}"
rm -rf "$dir/crash"

# 6. The official Node client's end-to-end tests.
check "official Node client (epoll)" "$dir/node.out" env TALLY_BIN="$dir/tally" TALLY_NODE_TIMEOUT=240 tests/run_node.sh

# 7. No capability needed: the server as nobody, every capability dropped, io_uring forbidden.
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null && getent group nogroup >/dev/null; then
  chmod 711 "$dir"; mkdir -p "$dir/nocaps"; chmod 777 "$dir/nocaps"
  printf '#!/bin/sh\nexec setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs "%s" "$@"\n' \
    "$dir/tally" >"$dir/tally-nocaps"; chmod 755 "$dir/tally-nocaps"
  if start_server "$dir/tally-nocaps" "$dir/nocaps"; then
    status=$(cat /proc/$SERVER_PID/status)
    if echo "$status" | grep -Eq '^CapEff:[[:space:]]+0+$' && echo "$status" | grep -Eq '^CapBnd:[[:space:]]+0+$' &&
       echo "$status" | grep -Eq '^Seccomp:[[:space:]]+2$' && [ "$(stat -c %U /proc/$SERVER_PID)" = nobody ]; then
      timeout 60 ./tally benchmark --addresses=127.0.0.1:$SERVER_PORT --accounts=100 --transfers=20000 --batch=1000 --query-count=10 >"$dir/nocaps.out" 2>&1 &&
        grep -q '^verify: ok' "$dir/nocaps.out" && pass "no capabilities, as nobody, io_uring forbidden: serves" ||
        fail "no capabilities: benchmark" "$dir/nocaps.out"
    else
      fail "no capabilities: the server kept some: $(echo "$status" | grep -E '^(Uid|CapEff|CapBnd|Seccomp):' | tr '\n' ' ')"
    fi
    stop_server || fail "no capabilities: stop" "$dir/nocaps/server.log"
  else
    fail "no capabilities: the server did not start" "$dir/nocaps/server.log"
  fi
  rm -rf "$dir/nocaps"
else
  echo "skip no capabilities: needs root, setpriv and group nogroup"
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
