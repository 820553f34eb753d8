#!/usr/bin/env bash
# tests/server/hostile_peers.sh <tally binary> [hostile_peers binary]: the hostile-peer suite
# (issue 13, 6a). Formats and starts a 3-replica cluster on free loopback ports, runs
# tests/server/hostile_peers.c against it (forged replica messages of every command, replays,
# identity takeover, forged handshakes, each followed by a client that must be served, and a
# last check that the replicas agree), stops the replicas with SIGTERM and reads their logs.
# Twice: with a cluster key on every replica, and without (TigerBeetle's unauthenticated mode).
# The tool defaults to the one built beside the binary (build/<variant>/tests/server/), else
# the release build's. Prints "ok"/"FAIL" per case and the closing "N passed, N failed".
# TALLY_HOSTILE_MODES="nokey" runs one mode only (a build without --cluster-key-file).
set -u
tally=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/tests/lib.sh" # port_base
tool=${2:-$(dirname "$tally")/tests/server/hostile_peers}
[ -x "$tool" ] || tool=$root/build/release/tests/server/hostile_peers
[ -x "$tool" ] || { echo "no hostile_peers tool: make tool-bins"; echo "0 passed, 1 failed"; exit 1; }
dir=$(mktemp -d /tmp/tally-hostile.XXXXXX)
pids=()
stop_all() { # SIGCONT first: a replica the tool stopped must see SIGTERM/SIGKILL
  local p
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
}
trap 'stop_all; rm -rf "$dir"' EXIT
passed=0; failed=0
check() { # check <description> <command...>
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok $what"; else failed=$((failed + 1)); echo "FAIL $what"; fi
}

# start_cluster <mode> <key flag...>: formats and starts replicas 0..2; sets pids and ports.
start_cluster() {
  local mode=$1; shift
  local attempt i waited up
  for attempt in 1 2 3 4 5; do
    local base; base=$(port_base 3)
    ports=($base $((base + 1)) $((base + 2)))
    local addresses="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
    for i in 0 1 2; do
      rm -f "$dir/$mode-$i.tally" "$dir/$mode-$i.log"
      "$tally" format --cluster=0 --replica=$i --replica-count=3 --development "$dir/$mode-$i.tally" \
        2>>"$dir/$mode-format.log" || { echo "format failed"; cat "$dir/$mode-format.log"; return 1; }
    done
    for i in 0 1 2; do
      "$tally" start --addresses="$addresses" --development "$@" "$dir/$mode-$i.tally" >>"$dir/$mode-$i.log" 2>&1 &
      pids+=($!)
    done
    for waited in $(seq 100); do
      up=0
      for i in 0 1 2; do grep -q "listening on 127.0.0.1:${ports[$i]}" "$dir/$mode-$i.log" && up=$((up + 1)); done
      [ $up -eq 3 ] && return 0
      for i in 0 1 2; do kill -0 "${pids[$i]}" 2>/dev/null || break 2; done
      sleep 0.1
    done
    stop_all # a port taken by someone else: another range
  done
  echo "the cluster did not start; logs:"; tail -5 "$dir/$mode"-*.log
  return 1
}

# stop_cluster: SIGTERM each replica; each must exit with status 0 within 10 s.
stop_cluster() {
  local i p rc waited ok=0
  for i in 0 1 2; do p=${pids[$i]}
    if ! kill -0 "$p" 2>/dev/null; then wait "$p"; echo "  replica $i had exited (status $?)"; ok=1; continue; fi
    kill -CONT "$p" 2>/dev/null; kill -TERM "$p"
  done
  for i in 0 1 2; do p=${pids[$i]}
    for waited in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p"; echo "  replica $i ignored SIGTERM"; ok=1; fi
    wait "$p" 2>/dev/null; rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 127 ] || { echo "  replica $i exited with status $rc"; ok=1; }
  done
  pids=()
  return $ok
}

# log_has <mode> <pattern>: some replica's log has a line matching it.
log_has() { cat "$dir/$1"-[012].log | grep -q -e "$2"; }
log_lacks() { ! log_has "$1" "$2"; }
# views_bounded <mode>: no replica joined a view beyond what a few real view changes reach.
views_bounded() {
  local v
  for v in $(cat "$dir/$1"-[012].log | sed -n 's/.*joining view view=\([0-9]*\).*/\1/p'); do
    [ "$v" -le 1000 ] || { echo "  joined view $v"; return 1; }
  done
}

run_mode() { # run_mode key|nokey
  local mode=$1 key=()
  if [ "$mode" = key ]; then
    "$tally" keygen "$dir/cluster.key" >/dev/null 2>&1 || { check "keygen" false; return; }
    key=(--cluster-key-file="$dir/cluster.key")
  fi
  echo "# $mode"
  if ! start_cluster "$mode" "${key[@]}"; then check "$mode: the cluster starts" false; return; fi
  timeout 300 "$tool" "$mode" "${ports[0]},${ports[1]},${ports[2]}" "${pids[0]},${pids[1]},${pids[2]}" \
    >"$dir/$mode.out" 2>&1; local rc=$?
  sed 's/^/  /' "$dir/$mode.out" | grep -v '^  [0-9]* passed, [0-9]* failed$'
  local line p f
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$dir/$mode.out" | tail -1)
  if [ -z "$line" ]; then echo "  the tool ended without a result line (exit $rc)"; failed=$((failed + 1))
  else p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    passed=$((passed + p)); failed=$((failed + f))
    [ "$rc" -eq 0 ] || [ "$f" -ne 0 ] || { echo "  the tool exited with status $rc"; failed=$((failed + 1)); }
  fi
  check "$mode: every replica exits cleanly on SIGTERM" stop_cluster
  check "$mode: no assertion failed" log_lacks "$mode" "assertion failed"
  check "$mode: no sanitizer report" log_lacks "$mode" "ERROR: AddressSanitizer\|runtime error:"
  check "$mode: no replica joined view 4294967295" log_lacks "$mode" "joining view view=4294967295"
  check "$mode: no replica joined an absurd view" views_bounded "$mode"
  check "$mode: refusals are rate limited (at most 200 warnings for ~2,000 hostile connections)" \
    test "$(cat "$dir/$mode"-[012].log | grep -c ' warn ')" -le 200
  if [ "$mode" = key ]; then
    check "key: replicas said they authenticate" log_has key "replica traffic authenticated with the cluster key"
    check "key: forged handshakes refused in the log" log_has key "peer authentication failed"
    check "key: unauthenticated replica messages refused in the log" log_has key "has not proven the cluster key"
  else
    check "nokey: replicas warned they do not authenticate" log_has nokey "replica traffic is not authenticated"
    check "nokey: unidentified replica messages refused in the log" log_has nokey "no replica identified\\|from an unexpected replica"
    check "nokey: claims on live peers refused in the log" log_has nokey "which is connected and alive"
    check "nokey: handshakes refused in the log" log_has nokey "this replica has none"
  fi
  if [ "$failed" -ne 0 ] && [ -n "${TALLY_HOSTILE_KEEP_LOGS:-}" ]; then
    mkdir -p "$TALLY_HOSTILE_KEEP_LOGS" && cp "$dir/$mode"-[012].log "$TALLY_HOSTILE_KEEP_LOGS/"
  fi
}

start=$(date +%s)
for mode in ${TALLY_HOSTILE_MODES:-key nokey}; do run_mode "$mode"; done
echo "# $(( $(date +%s) - start )) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
