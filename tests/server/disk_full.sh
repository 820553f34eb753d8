#!/usr/bin/env bash
# tests/server/disk_full.sh <tally>: a replica, then a 3-replica cluster, whose file systems fill
# up (small tmpfs mounts made here, root only) while a client writes (tests/server/disk_full.c).
# Checked: writes are refused with a log line repeated while it lasts and /health/ready says why,
# lookups are still answered, nothing acknowledged is lost, and writes resume by themselves once
# space is freed. Each mount holds a --development data file (136 MiB), room for one 64 MiB
# step of grid growth, and a filler of the rest (about 190 MiB) that is deleted to free space.
# Freed, it must hold more than the refusal's margin (one growth step and 8 MiB) after the
# checkpoint postponed meanwhile grows the grid again (the replica writes it as soon as there is
# room, before the client's retry; the journal's slots take tmpfs pages as they fill too): with
# an 80 MiB filler a cluster refused writes again a second after resuming.
set -u
TALLY=${1:?usage: tests/server/disk_full.sh <tally>}
TOOL=${TOOL:-build/release/tests/server/disk_full}
cd "$(dirname "$0")/../.."
PASSED=0; FAILED=0
. tests/lib.sh # port_base
ok() { echo "ok $1"; PASSED=$((PASSED + 1)); }
bad() { echo "FAIL $1"; FAILED=$((FAILED + 1)); }
WORK=$(mktemp -d /tmp/tally-disk-full.XXXXXX)
PIDS=(); MOUNTS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$(id -u)" -ne 0 ]; then echo "disk_full: needs root (tmpfs mounts)"; echo "0 passed, 1 failed"; exit 1; fi

# make_disk <dir>: a tmpfs with room for the data file, one grid growth step and the filler.
make_disk() {
  mkdir -p "$1"
  mount -t tmpfs -o size=400m tmpfs "$1" || return 1
  MOUNTS+=("$1")
}

# fill <dir>: after the data file exists, leave 74 MiB free besides a filler of the rest.
fill() {
  local free_kb; free_kb=$(df -k --output=avail "$1" | tail -1)
  local filler_mb=$(( free_kb / 1024 - 74 ))
  dd if=/dev/zero of="$1/filler" bs=1M count="$filler_mb" status=none
}

run_case() { # run_case <name> <replica count>
  # Ports below the kernel's ephemeral range (port_base, tests/lib.sh): inside it, another
  # process's outgoing connection can hold the port, the replica then cannot listen and the
  # client finds nothing ("cannot register: recv failed", CI once).
  local name=$1 n=$2 base i addresses=""
  base=$(port_base $((100 + n))) || { bad "$name: no free ports"; return; }
  for i in $(seq 0 $((n - 1))); do addresses="$addresses${addresses:+,}127.0.0.1:$((base + i))"; done
  PIDS=()
  for i in $(seq 0 $((n - 1))); do
    make_disk "$WORK/$name-$i" || { bad "$name: cannot mount a tmpfs"; return; }
    "$TALLY" format --cluster=0 --replica="$i" --replica-count="$n" --development \
      "$WORK/$name-$i/0_$i.tally" 2>/dev/null || { bad "$name: format"; return; }
    fill "$WORK/$name-$i"
  done
  for i in $(seq 0 $((n - 1))); do
    "$TALLY" start --addresses="$addresses" --development --metrics-address="127.0.0.1:$((base + 100 + i))" \
      "$WORK/$name-$i/0_$i.tally" >"$WORK/$name-$i.log" 2>&1 &
    PIDS+=($!)
  done
  sleep 2
  rm -f "$WORK/go"
  timeout 300 "$TOOL" "$base" "$WORK/go" 20000 253 >"$WORK/$name.out" 2>&1 &
  local tool=$!
  local waited=0
  while ! grep -q '^REFUSED' "$WORK/$name.out" && kill -0 $tool 2>/dev/null && [ $waited -lt 1200 ]; do
    sleep 0.1; waited=$((waited + 1))
  done
  sleep 6 # the refusal lasts: it must be said again (every 5 s), requests or not
  local lines; lines=$(cat "$WORK/$name"-*.log | grep -cE 'request refused: the data file cannot grow|still refusing writes')
  [ "$lines" -ge 2 ] && ok "$name: refusals logged while they last ($lines lines)" ||
    bad "$name: refusals logged while they last ($lines lines)"
  local ready; ready=$(curl -s "http://127.0.0.1:$((base + 100))/health/ready" 2>/dev/null || true)
  if command -v curl >/dev/null; then
    case "$ready" in *"cannot grow"*) ok "$name: /health/ready says why";;
      *) bad "$name: /health/ready says why (got: $ready)";; esac
  fi
  for i in $(seq 0 $((n - 1))); do rm -f "$WORK/$name-$i/filler"; done
  touch "$WORK/go"
  wait $tool; local rc=$?
  sed 's/^/  /' "$WORK/$name.out"
  [ $rc -eq 0 ] && ok "$name: client checks" || bad "$name: client checks"
  grep -q 'accepting writes again' "$WORK/$name"-*.log && ok "$name: the replica said writes resumed" ||
    bad "$name: the replica said writes resumed"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  local alive=0
  for pid in "${PIDS[@]}"; do wait "$pid" || alive=1; done
  [ $alive -eq 0 ] && ok "$name: replicas stopped cleanly" || bad "$name: replicas stopped cleanly"
  PIDS=()
}

run_case single 1
run_case cluster 3
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
