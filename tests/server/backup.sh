#!/usr/bin/env bash
# tests/server/backup.sh <tally> <tool dir>: online backup and verified restore.
#
# A 3-replica cluster with a cluster key, preloaded by `tally benchmark`, then under load from
# the C load tool (one client, 10 transfers per request) in two phases of the same length, the
# first alone and the second with `tally backup` copying back to back: prints both client
# throughputs and the backups' throughput. The first backup taken under load is then restored
# into a new 3-replica and a new 1-replica cluster; both start, and every account and transfer
# is compared with the original up to the backup's checkpoint (compare_ledgers: the same
# transfers byte for byte in timestamp order, accounts equal with balances summed from them),
# and the restored data files give the same digest at the checkpoint op. Then the restored
# clusters take writes, and the restored single replica is backed up. Also: a backup without the key, or with the wrong one, fails with a
# clear error; a damaged backup file is refused by restore, naming the block.
# Bounded: every wait has a limit; the script kills what it started. Last line: "N passed,
# N failed".
set -u
tally=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
tools=$(cd "$2" && pwd)
PRELOAD=${TALLY_BACKUP_PRELOAD:-300000}
PHASE_REQUESTS=${TALLY_BACKUP_PHASE_REQUESTS:-3000}
dir=$(mktemp -d /tmp/tally-backup.XXXXXX)
# Where the backups under load are written: another device than the replicas' data files, as
# an operator would (the tool fsyncs each file, and on one disk that sync queues behind and
# ahead of the replicas' journal syncs, which the client's latency is made of). TMPFS=0: the
# same disk.
out=$dir/out
[ "${TMPFS:-1}" = 1 ] && [ -d /dev/shm ] && out=$(mktemp -d /dev/shm/tally-backup.XXXXXX)
mkdir -p "$out"
pids=()
cleanup() {
  local p; for p in "${pids[@]}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null; done
  sleep 0.5; for p in "${pids[@]}"; do [ -n "$p" ] && { kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; }; done
  [ -n "${KEEP:-}" ] || rm -rf "$dir" "$out"
}
trap cleanup EXIT
. "$(dirname "$0")/checks.sh"
now() { date +%s.%N; }

base=$(port_base 44)
addresses="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
"$tally" keygen "$dir/key"; "$tally" keygen "$dir/other.key"
for i in 0 1 2; do
  "$tally" format --cluster=0 --replica=$i --replica-count=3 --development "$dir/0_$i.tally" 2>/dev/null ||
    { fail "format"; finish; }
done
declare -A orig
for i in 0 1 2; do
  "$tally" start --addresses=$addresses --cluster-key-file="$dir/key" \
    --metrics-address=127.0.0.1:$((base + 30 + i)) "$dir/0_$i.tally" \
    >"$dir/replica$i.log" 2>&1 &
  orig[$i]=$!; pids+=($!)
done

for _ in $(seq 1 300); do
  n=0; for i in 0 1 2; do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((base + 30 + i))/health/ready")" = 200 ] && n=$((n + 1))
  done; [ $n -eq 3 ] && break; sleep 0.1
done
if timeout 120 "$tally" benchmark --addresses=$addresses --transfers=$PRELOAD >"$dir/bench.out" 2>&1; then
  pass "preload: $PRELOAD transfers by tally benchmark"
else
  fail "preload"; tail -5 "$dir/bench.out"; finish
fi

# Key errors first (cheap, and they must not disturb the cluster).
timeout 30 "$tally" backup --addresses=$addresses "$dir/nokey.tbk" >"$dir/nokey.out" 2>&1
rc=$?; if [ $rc -eq 1 ] && grep -q "requires the cluster key" "$dir/nokey.out"; then
  pass "backup without the key: refused ($(head -1 "$dir/nokey.out"))"
else fail "backup without the key: rc=$rc $(head -2 "$dir/nokey.out")"; fi
timeout 30 "$tally" backup --addresses=$addresses --cluster-key-file="$dir/other.key" "$dir/wrong.tbk" >"$dir/wrong.out" 2>&1
rc=$?; if [ $rc -eq 1 ] && grep -q "does not hold this cluster key" "$dir/wrong.out"; then
  pass "backup with another key: refused"
else fail "backup with another key: rc=$rc $(head -2 "$dir/wrong.out")"; fi

# The load enters through replica 0; the backups copy from a replica that is neither that
# one nor the primary, so that what the client sees is the cost to the cluster, not to the
# replica that forwards its requests (either would be a fair choice for an operator: the
# tool picks a backup by itself).
source=""
for i in 1 2; do
  curl -s -m 2 "http://127.0.0.1:$((base + 30 + i))/metrics" | grep -q '^tally_is_primary 0' && { source=$i; break; }
done
[ -n "$source" ] || source=1
echo "backups copy from replica $source"

# Phase A: the load alone. Phase B: the same load while backups run back to back, at nice 19
# as an operator would run them on a busy host: on this 2-core machine the tool's own work
# (checksums, then loading and verifying the ledger, about twice the copy time) otherwise
# competes for the cores the replicas use, which says nothing about the replicas.
t0=$(now)
timeout 120 "$tools/load" $base $PHASE_REQUESTS 1000000000 >"$dir/loadA.out" 2>&1 || fail "load (phase A)"
t1=$(now)
(
  n=0; while [ ! -f "$dir/stop" ] && [ $n -lt 50 ]; do
    n=$((n + 1))
    timeout 120 nice -n 19 "$tally" backup --addresses=$addresses --cluster-key-file="$dir/key" \
      --replica=$source "$out/b$n.tbk" \
      >"$dir/b$n.out" 2>&1 || { echo "backup $n failed" >>"$dir/backup-failures"; cat "$dir/b$n.out" >>"$dir/backup-failures"; }
    [ $n -gt 1 ] && rm -f "$out/b$n.tbk" # the first is restored below
  done; echo $n >"$dir/backups"
) &
loop=$!; pids+=($loop)
t2=$(now)
timeout 120 "$tools/load" $base $PHASE_REQUESTS 2000000000 >"$dir/loadB.out" 2>&1 || fail "load (phase B)"
t3=$(now)
touch "$dir/stop"; wait $loop
backups=$(cat "$dir/backups" 2>/dev/null || echo 0)
ta=$(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.2f", b - a }')
tb=$(awk -v a=$t2 -v b=$t3 'BEGIN { printf "%.2f", b - a }')
rate_a=$(awk -v n=$PHASE_REQUESTS -v t=$ta 'BEGIN { printf "%d", n * 10 / t }')
rate_b=$(awk -v n=$PHASE_REQUESTS -v t=$tb 'BEGIN { printf "%d", n * 10 / t }')
echo "client throughput: alone $rate_a transfers/s ($ta s), during backups $rate_b transfers/s ($tb s, $backups backups)"
grep -h "^backup: copied" "$dir"/b*.out | sed 's/^/  /' | head -3
if [ -s "$dir/backup-failures" ]; then fail "a backup under load failed"; head -5 "$dir/backup-failures"; fi
if [ "$backups" -ge 1 ] && grep -q "^backup: verified" "$dir/b1.out"; then
  pass "backup under load: $(grep '^backup: copied' "$dir/b1.out" | cut -d'(' -f1) verified"
else fail "backup under load"; cat "$dir/b1.out" 2>/dev/null | head -5; finish; fi
# Backup throughput over every backup of phase B (copy time, as the tool reports it).
awk '/^backup: copied/ { for (i = 1; i <= NF; i++) { if ($i == "in") t += $(i+1); if ($i ~ /^\(/ && $(i+1) == "bytes,") b += substr($i, 2) } }
     END { if (t > 0) printf "backup throughput: %.1f MB/s over %.0f MB copied in %.2f s\n", b / 1e6 / t, b / 1e6, t }' "$dir"/b*.out

mv "$out/b1.tbk" "$dir/b1.tbk" 2>/dev/null
op=$(sed -n 's/^backup: copied checkpoint op \([0-9]*\) .*/\1/p' "$dir/b1.out")
ts=$(sed -n 's/^backup: copied checkpoint op [0-9]* timestamp \([0-9]*\) .*/\1/p' "$dir/b1.out")

# Restore into 3 and 1 replicas; a damaged copy is refused first. The file: a 4 KiB header, a
# 16-byte checksum per block, then the blocks (64 KiB each): a byte of block 2 is damaged.
blocks=$(sed -n 's/^backup: copied .* bytes, \([0-9]*\) blocks, .*/\1/p' "$dir/b1.out")
cp "$dir/b1.tbk" "$dir/damaged.tbk"
printf 'X' | dd of="$dir/damaged.tbk" bs=1 seek=$((4096 + 16 * ${blocks:-0} + 2 * 65536 + 3000)) conv=notrunc 2>/dev/null
"$tally" restore --replica-count=1 --development "$dir/damaged.tbk" "$dir/damaged" >"$dir/damaged.out" 2>&1
rc=$?; if [ $rc -eq 1 ] && grep -q "block 2 of $blocks .* fails its checksum" "$dir/damaged.out" && [ ! -e "$dir/damaged/0_0.tally" ]; then
  pass "restore of a damaged backup refused: $(head -1 "$dir/damaged.out" | cut -c1-110)"
else fail "damaged backup: rc=$rc $(head -2 "$dir/damaged.out")"; fi
for n in 3 1; do
  if timeout 120 "$tally" restore --replica-count=$n --development "$dir/b1.tbk" "$dir/r$n" >"$dir/restore$n.out" 2>&1; then
    pass "restore into $n replicas: $(tail -1 "$dir/restore$n.out" | sed 's/.*; verified/verified/')"
  else fail "restore into $n replicas"; cat "$dir/restore$n.out"; finish; fi
done
transfers=$(sed -n 's/.*accounts in [0-9]* ledgers, \([0-9]*\) transfers.*/\1/p' "$dir/restore3.out")
restore_s=$(sed -n 's/.*restored in \([0-9.]*\) s.*/\1/p' "$dir/restore1.out")
awk -v s=$restore_s -v t=$transfers 'BEGIN { if (t > 0) printf "restore time: %.2f s for %d transfers (1 replica) = %.2f s per million transfers\n", s, t, s * 1e6 / t }'

# The restored files, before they start, give one digest at the checkpoint op, on every
# replica of both clusters (digest executes a data file as start does).
want=$("$tools/digest" "$dir/r1/0_0.tally" $op 2>&1)
same=1
for f in "$dir"/r3/0_*.tally; do
  got=$("$tools/digest" "$f" $op 2>&1)
  [ "$got" = "$want" ] || same=0
done
if [ $same -eq 1 ] && [ -n "$want" ] && ! echo "$want" | grep -q digest:; then
  pass "restored data files identical at op $op: $want"
else fail "digests differ: $want"; fi

r3="127.0.0.1:$((base + 10)),127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12))"
for i in 0 1 2; do
  "$tally" start --addresses=$r3 --metrics-address=127.0.0.1:$((base + 40 + i)) \
    "$dir/r3/0_$i.tally" >"$dir/r3-$i.log" 2>&1 & pids+=($!)
done
"$tally" start --addresses=127.0.0.1:$((base + 20)) --metrics-address=127.0.0.1:$((base + 43)) \
  "$dir/r1/0_0.tally" >"$dir/r1.log" 2>&1 & pids+=($!)
# Ready: recovered, a primary elected (the restored replicas are not fresh: they elect one
# by a view change among themselves), caught up.
t_start=$(now); ready=0
for _ in $(seq 1 300); do
  ready=0
  for i in 0 1 2 3; do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((base + 40 + i))/health/ready")" = 200 ] && ready=$((ready + 1))
  done
  [ $ready -eq 4 ] && break; sleep 0.1
done
if [ $ready -eq 4 ]; then
  pass "restored clusters ready (every replica's /health/ready) $(awk -v a=$t_start -v b=$(now) 'BEGIN { printf "%.1f", b - a }') s after start"
else fail "restored clusters not ready within 30 s ($ready of 4 replicas)"; fi

for target in "$((base + 10)):3 replicas" "$((base + 20)):1 replica"; do
  port=${target%%:*}; name=${target#*:}
  if timeout 60 "$tools/compare_ledgers" $base $port $ts >"$dir/compare.out" 2>&1; then
    pass "restored $name equals the original at checkpoint op $op: $(cat "$dir/compare.out")"
  else fail "restored $name differs: $(tail -2 "$dir/compare.out")"; fi
done

# The restored clusters take writes.
for target in "$((base + 10)):3 replicas" "$((base + 20)):1 replica"; do
  port=${target%%:*}; name=${target#*:}
  if timeout 60 "$tools/load" $port 200 3000000000 >"$dir/write.out" 2>&1; then
    pass "restored $name takes writes: $(cat "$dir/write.out")"
  else fail "restored $name takes no writes: $(tail -1 "$dir/write.out")"; fi
done

# A single replica is backed up too (it has no peers, but takes the backup's handshake).
if timeout 60 "$tally" backup --addresses=127.0.0.1:$((base + 20)) "$dir/single.tbk" >"$dir/single.out" 2>&1 &&
   grep -q "verified" "$dir/single.out"; then
  pass "a single replica backed up: $(grep -o "copied checkpoint op [0-9]*" "$dir/single.out")"
else fail "backup of a single replica: $(tail -1 "$dir/single.out")"; fi

finish
