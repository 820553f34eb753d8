#!/usr/bin/env bash
# tests/run_all.sh: every test, in order from the inside out. Prints one section per suite and,
# last, the total "N passed, N failed". Exit status 0 only if nothing failed.
#
#   1. unit tests, release build and AddressSanitizer+UBSan build
#   2. bad input against a running server (sanitizer build of the server)
#   3. the conformance corpus recorded from TigerBeetle 0.16.68, replayed by the official client
#   4. the official Node client's end-to-end tests (tests/node)
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
TOTAL_PASSED=0; TOTAL_FAILED=0
WORK=$(mktemp -d /tmp/tally-tests.XXXXXX)
trap 'stop_server >/dev/null 2>&1; rm -rf "$WORK"' EXIT
JOBS=$(nproc 2>/dev/null || echo 2)

section() { printf '\n=== %s\n' "$1"; }
FAILURES="$WORK/failures"; : >"$FAILURES"
record() { # record <name> <output file> <exit status>
  if sum_results "$2" && [ "$3" -eq 0 ]; then echo "--- $1: ok"; else
    echo "--- $1: FAILED"
    # A non-zero exit whose last result line reports no failure still counts as one (a missing
    # result line was already counted by sum_results).
    [ "$3" -ne 0 ] && grep -E '^[0-9]+ passed, [0-9]+ failed$' "$2" | tail -1 | grep -q ', 0 failed$' &&
      TOTAL_FAILED=$((TOTAL_FAILED + 1))
    # The lines that name what failed, kept for the summary printed just above the total (CI
    # shows only the end of the output).
    { echo "$1 (exit $3):"
      grep -E '^(not ok|FAIL|seed=)|✖|FAILED|CHECK failed|failed after|[Ee]rror|[1-9][0-9]* failed$|had exited|did not|replay' "$2" |
        grep -v '^ℹ' | head -8 | cut -c1-200
    } >>"$FAILURES"; fi
}

section "build"
make -j"$JOBS" all unit-bins tool-bins >"$WORK/build.log" 2>&1 &&
  make -j"$JOBS" VARIANT=asan build/asan/tally unit-bins tool-bins >>"$WORK/build.log" 2>&1
if [ $? -ne 0 ]; then tail -40 "$WORK/build.log"; echo "0 passed, 1 failed"; exit 1; fi
echo "built ./tally and the sanitizer build"

for variant in release asan; do
  section "unit tests ($variant)"
  tests/run_unit.sh build/$variant/tests >"$WORK/unit-$variant.out" 2>&1; rc=$?
  cat "$WORK/unit-$variant.out"; record "unit tests ($variant)" "$WORK/unit-$variant.out" $rc
done

section "command-line errors (sanitizer build)"
tests/server/cli_errors.sh build/asan/tally >"$WORK/cli.out" 2>&1; rc=$?
cat "$WORK/cli.out"; record "command line" "$WORK/cli.out" $rc

section "a fatal signal leaves a backtrace (release build)"
timeout 60 tests/server/crash_report.sh ./tally >"$WORK/crash-report.out" 2>&1; rc=$?
cat "$WORK/crash-report.out"; record "crash report" "$WORK/crash-report.out" $rc

section "bad input against a running server (sanitizer build)"
if start_server build/asan/tally "$WORK/bad-input"; then
  timeout 300 build/asan/tests/server/bad_input "$SERVER_PORT" >"$WORK/bad-input.out" 2>&1; rc=$?
  stop_server || rc=1
  cat "$WORK/bad-input.out"; record "bad input" "$WORK/bad-input.out" $rc
else
  TOTAL_FAILED=$((TOTAL_FAILED + 1)); echo "bad input: the server did not start" >>"$FAILURES"
fi

section "hostile peers: forged, replayed and impersonating replica traffic (sanitizer build)"
timeout 180 tests/server/hostile_peers.sh build/asan/tally >"$WORK/hostile-peers.out" 2>&1; rc=$?
cat "$WORK/hostile-peers.out"; record "hostile peers" "$WORK/hostile-peers.out" $rc

section "tally benchmark (smoke)"
timeout 300 tests/server/benchmark_smoke.sh ./tally >"$WORK/bench-smoke.out" 2>&1; rc=$?
cat "$WORK/bench-smoke.out"; record "benchmark smoke" "$WORK/bench-smoke.out" $rc

section "crash recovery: SIGKILL at random moments (release and sanitizer builds)"
mkdir -p "$WORK/crash"
seed=${TALLY_CRASH_SEED:-$(( $(date +%s) % 100000 ))}
timeout 600 build/release/tests/server/crash ./tally "$WORK/crash" 25 "$seed" >"$WORK/crash.out" 2>&1; rc=$?
cat "$WORK/crash.out"; record "crash (release, 25 kills)" "$WORK/crash.out" $rc
timeout 600 build/asan/tests/server/crash build/asan/tally "$WORK/crash" 10 "$((seed + 1))" >"$WORK/crash-asan.out" 2>&1; rc=$?
tail -5 "$WORK/crash-asan.out"; record "crash (sanitizer, 10 kills)" "$WORK/crash-asan.out" $rc

section "io_uring forbidden by seccomp: the epoll backend (unit, bad input, benchmark, crash, Node client)"
timeout 420 tests/server/io_fallback.sh >"$WORK/io-fallback.out" 2>&1; rc=$?
cat "$WORK/io-fallback.out"; record "io_uring forbidden (epoll backend)" "$WORK/io-fallback.out" $rc

section "disk full: writes refused, reads served, writes resume once space is freed (tmpfs)"
timeout 300 tests/server/disk_full.sh ./tally >"$WORK/disk-full.out" 2>&1; rc=$?
cat "$WORK/disk-full.out"; record "disk full" "$WORK/disk-full.out" $rc

section "new ids checked through filter pages read past a 4 MiB cache (sanitizer build)"
timeout 180 tests/server/filter_pages.sh build/asan/tally build/release/bench/scale_client >"$WORK/filter-pages.out" 2>&1; rc=$?
cat "$WORK/filter-pages.out"; record "filter pages" "$WORK/filter-pages.out" $rc

section "torn and corrupt data files (sanitizer build)"
tests/server/corruption.sh build/asan/tally build/release/tests/server/load >"$WORK/corruption.out" 2>&1; rc=$?
cat "$WORK/corruption.out"; record "corruption" "$WORK/corruption.out" $rc

section "a damaged grid block on one replica of a cluster, repaired from a peer (sanitizer build)"
timeout 180 tests/server/grid_repair.sh build/asan/tally build/release/tests/server >"$WORK/grid-repair.out" 2>&1; rc=$?
cat "$WORK/grid-repair.out"; record "grid repair" "$WORK/grid-repair.out" $rc

section "online backup under load, verified restore into 3 and 1 replicas"
timeout 240 tests/server/backup.sh ./tally build/release/tests/server >"$WORK/backup.out" 2>&1; rc=$?
cat "$WORK/backup.out"; record "backup and restore" "$WORK/backup.out" $rc

section "upgrades: format versions, rolling upgrade from an earlier main under load, key on"
timeout 300 tests/server/upgrade.sh ./tally build/release/tests/server >"$WORK/upgrade.out" 2>&1; rc=$?
cat "$WORK/upgrade.out"; record "upgrades" "$WORK/upgrade.out" $rc

section "upgrades: rolling upgrade from data file format 2 (manifest listed whole) under load"
TALLY_OLD_COMMIT=9b85aa4 timeout 300 tests/server/upgrade.sh ./tally build/release/tests/server >"$WORK/upgrade2.out" 2>&1; rc=$?
cat "$WORK/upgrade2.out"; record "upgrades from format 2" "$WORK/upgrade2.out" $rc

section "a replica refusing writes says so: logs, metrics, readiness (sanitizer build)"
timeout 60 tests/server/refusal.sh build/asan/tally >"$WORK/refusal.out" 2>&1; rc=$?
cat "$WORK/refusal.out"; record "refusal" "$WORK/refusal.out" $rc

section "Prometheus scraping a 3-replica cluster under load (metrics, health, promtool)"
timeout 120 tests/server/prometheus.sh ./tally build/release/tests/server/load >"$WORK/prometheus.out" 2>&1; rc=$?
cat "$WORK/prometheus.out"; record "prometheus" "$WORK/prometheus.out" $rc

section "deterministic simulator, 1, 2, 3 and 5 replicas (network, disk, crash and clock faults)"
# 50 seeds per cluster size; wider sweeps: tests/sim/run.sh ./tally 250, or make sim-soak.
TALLY_SIM_SIZES=${TALLY_SIM_SIZES:-"1 2 3 5"} timeout 1200 tests/sim/run.sh ./tally 50 >"$WORK/sim.out" 2>&1; rc=$?
grep -E "^replicas=|^regression seeds|FAILED|replay:" "$WORK/sim.out" | head -20; tail -1 "$WORK/sim.out"
record "simulator" "$WORK/sim.out" $rc

section "three replicas, official client (kill -9, SIGSTOP, restart, re-format, one address)"
timeout 900 tests/cluster/run.sh >"$WORK/cluster.out" 2>&1; rc=$?
grep -E "^# |passed, " "$WORK/cluster.out" | tail -25; record "cluster" "$WORK/cluster.out" $rc

section "network partitions between three replica pods (namespaces, iptables, official client)"
if [ "$(id -u)" -eq 0 ]; then
  TALLY_PARTITION_TIMEOUT=540 timeout 600 tests/partition/run.sh >"$WORK/partition.out" 2>&1; rc=$?
  # A failing scenario's details (problems, events, the replicas' last warnings) follow it.
  grep -E "^(PASS|FAIL) |^  |passed, " "$WORK/partition.out" | tail -80; record "partition" "$WORK/partition.out" $rc
  # CI shows only the end of the output: a failing scenario's details go to the summary too,
  # the replicas' last warnings first and the FAIL lines with their problems last.
  if [ "$rc" -ne 0 ]; then
    grep -E "^  replica " "$WORK/partition.out" | cut -c1-300 | tail -24 >>"$FAILURES"
    grep -E "^  events: " "$WORK/partition.out" | cut -c1-1500 >>"$FAILURES"
    grep -E "^FAIL |^  " "$WORK/partition.out" | grep -vE "^  (replica |events: |logs: )" |
      cut -c1-400 | tail -20 >>"$FAILURES"
  fi
else
  echo "skipped: network namespaces need root"
fi

section "deployment: image, Kubernetes manifests, the StatefulSet played in namespace pods (tests/deploy)"
if [ "$(id -u)" -eq 0 ]; then
  TALLY_DEPLOY_TIMEOUT=360 timeout 540 tests/deploy/run.sh >"$WORK/deploy.out" 2>&1; rc=$?
  grep -E "^(ok|FAIL) |^  (ok|FAIL) |timings|passed, " "$WORK/deploy.out" | tail -40; record "deploy" "$WORK/deploy.out" $rc
else
  echo "skipped: network namespaces need root"
fi

section "conformance corpus (TigerBeetle 0.16.68 replies, official client)"
if [ ! -d tests/conformance/node_modules ]; then
  (cd tests/conformance && npm ci --no-audit --no-fund >"$WORK/npm-conformance.log" 2>&1) ||
    { cat "$WORK/npm-conformance.log"; }
fi
if start_server ./tally "$WORK/conformance"; then
  (cd tests/conformance && timeout 900 node replay.js --address="127.0.0.1:$SERVER_PORT" seed-*.jsonl) \
    >"$WORK/conformance.out" 2>&1; rc=$?
  stop_server || rc=1
  grep -E '^(FAIL|==|ABORT)|passed, ' "$WORK/conformance.out" | head -60
  record "conformance" "$WORK/conformance.out" $rc
else
  TOTAL_FAILED=$((TOTAL_FAILED + 1)); echo "conformance: the server did not start" >>"$FAILURES"
fi

if [ -x tests/run_node.sh ]; then
  section "official Node client (tests/node)"
  timeout 1200 tests/run_node.sh >"$WORK/node.out" 2>&1; rc=$?
  tail -40 "$WORK/node.out"; record "node client" "$WORK/node.out" $rc
fi

if [ -s "$FAILURES" ]; then section "what failed"; cat "$FAILURES"; fi
section "total"
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ]
