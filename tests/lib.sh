# tests/lib.sh: shell helpers shared by the test scripts: start a formatted single-replica
# server on a free port and stop it again, with every wait bounded.

# port_base [count]: the first of <count> (default 1) consecutive ports that nothing listens on,
# below the kernel's ephemeral range. Inside that range another process's outgoing connection
# can hold a port: a replica then cannot listen, and a cluster started with one replica missing
# never elects its first primary (CI once: prometheus.sh, "status view_change in view 48").
port_base() {
  local count=${1:-1} low base i
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  ((low > 11000 + count)) || { echo "port_base: the ephemeral port range starts at $low; no room below" >&2; return 1; }
  while :; do
    base=$((10000 + RANDOM % (low - 10000 - count)))
    for ((i = 0; i < count; i++)); do
      # A port nothing listens on refuses the connection.
      (exec 3<>"/dev/tcp/127.0.0.1/$((base + i))") 2>/dev/null && continue 2
    done
    echo "$base"
    return 0
  done
}

# start_server <tally binary> <data dir> [extra start flags...]
# Sets SERVER_PID and SERVER_PORT; the log is <data dir>/server.log.
start_server() {
  local binary=$1 dir=$2; shift 2
  mkdir -p "$dir"
  rm -f "$dir/0_0.tally"
  "$binary" format --cluster=0 --replica=0 --replica-count=1 "$dir/0_0.tally" 2>>"$dir/server.log" || return 1
  local attempt
  for attempt in 1 2 3 4 5; do
    SERVER_PORT=$(port_base) || return 1
    "$binary" start --addresses="127.0.0.1:$SERVER_PORT" "$@" "$dir/0_0.tally" >>"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    local waited=0
    while [ $waited -lt 100 ]; do
      if grep -q "listening on 127.0.0.1:$SERVER_PORT" "$dir/server.log" 2>/dev/null; then return 0; fi
      if ! kill -0 $SERVER_PID 2>/dev/null; then break; fi
      sleep 0.1; waited=$((waited + 1))
    done
    kill -9 $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null
  done
  echo "server did not start; log:" >&2; tail -20 "$dir/server.log" >&2
  return 1
}

# stop_server: SIGTERM, then SIGKILL after 5 s. Returns non-zero if the server had died before
# (a crash during the test) or did not exit cleanly.
stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  if ! kill -0 $SERVER_PID 2>/dev/null; then
    wait $SERVER_PID 2>/dev/null; local rc=$?
    echo "server had exited early with status $rc" >&2
    SERVER_PID=; return 1
  fi
  kill -TERM $SERVER_PID
  local waited=0
  while kill -0 $SERVER_PID 2>/dev/null && [ $waited -lt 50 ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 $SERVER_PID 2>/dev/null; then
    kill -9 $SERVER_PID; wait $SERVER_PID 2>/dev/null
    echo "server ignored SIGTERM" >&2; SERVER_PID=; return 1
  fi
  wait $SERVER_PID; local rc=$?
  SERVER_PID=
  [ $rc -eq 0 ] || { echo "server exited with status $rc" >&2; return 1; }
}

# sum_results <output file>: adds the last "N passed, N failed" line to TOTAL_PASSED/FAILED.
sum_results() {
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$1" | tail -1)
  if [ -z "$line" ]; then
    TOTAL_FAILED=$((TOTAL_FAILED + 1)); return 1
  fi
  local p=${line%% passed*} f=${line#*, }; f=${f%% failed*}
  TOTAL_PASSED=$((TOTAL_PASSED + p)); TOTAL_FAILED=$((TOTAL_FAILED + f))
  [ "$f" -eq 0 ]
}

# no_io_uring_wrapper <tally binary> <wrapper path>: writes an executable script that runs the
# binary with io_uring forbidden by a seccomp filter, as Docker's default profile does
# (tests/server/no_io_uring.c, built by `make tool-bins`). Give it wherever a tally binary goes.
no_io_uring_wrapper() {
  local binary helper
  binary=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  helper=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/release/tests/server/no_io_uring
  [ -x "$helper" ] || { echo "no_io_uring_wrapper: $helper is missing (make tool-bins)" >&2; return 1; }
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$helper" "$binary" >"$2" && chmod +x "$2"
}
