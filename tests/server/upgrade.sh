#!/usr/bin/env bash
# tests/server/upgrade.sh <tally> <tool dir>: upgrades.
#
#   1. Format versions: a data file whose superblock says a format version this tally neither
#      reads nor converts (0, and 4: newer) is refused by `start` and `inspect` with one error
#      naming the versions, and is left untouched. (Format 1 files are converted by `start`:
#      the rolling upgrade below starts from them with the default OLD_COMMIT; format 2
#      files, whose roots list the manifest whole, are read as they are and become format 3
#      at their next checkpoint: TALLY_OLD_COMMIT=9b85aa4 starts from them.)
#   2. A rolling upgrade of a 3-replica cluster without a cluster key, from an earlier commit
#      of main (OLD_COMMIT, built here from git history into a temporary directory) to this
#      build: three old replicas under load from the C load tool (rotating among replicas),
#      then each replica in turn stopped with SIGTERM and started again from the new build on
#      the same data file, and the next one only once the new replica reports
#      /health/ready (old and new replicas talk to each other meanwhile). Every acknowledged
#      transfer must then be found, and all three replicas' files must give one digest; the
#      old build refuses an upgraded file (its format is newer), leaving it untouched.
#   3. Turning the cluster key on afterwards takes a restart of all three replicas together
#      (a keyed and an unkeyed replica cannot talk): they do, and the cluster serves.
# Bounded: every wait has a limit; the script kills what it started and removes what it
# built. Last line: "N passed, N failed".
set -u
tally=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
tools=$(cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
OLD_COMMIT=${TALLY_OLD_COMMIT:-aca1bc5}
dir=$(mktemp -d /tmp/tally-upgrade.XXXXXX)
pids=()
cleanup() {
  local p; for p in "${pids[@]}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null; done
  sleep 0.5; for p in "${pids[@]}"; do [ -n "$p" ] && { kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; }; done
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
. "$(dirname "$0")/checks.sh"

# 1. Another format version.
"$tally" format --cluster=0 --replica=0 --replica-count=1 --development "$dir/v.tally" 2>/dev/null
for v in 0 4; do
  "$tools/set_format_version" "$dir/v.tally" $v
  before=$(cksum <"$dir/v.tally")
  timeout 20 "$tally" start --addresses=127.0.0.1:1 "$dir/v.tally" >"$dir/v.out" 2>&1; rc=$?
  timeout 20 "$tally" inspect "$dir/v.tally" >"$dir/vi.out" 2>&1; irc=$?
  if [ $rc -ne 0 ] && [ $irc -ne 0 ] && grep -q "has data file format version $v; this tally reads format versions 2 and 3" "$dir/v.out" &&
     grep -q "format version $v" "$dir/vi.out" && [ "$(cksum <"$dir/v.tally")" = "$before" ]; then
    pass "format version $v refused, file untouched: $(grep -o "has data file.*" "$dir/v.out" | head -1 | cut -c1-160)"
  else fail "format version $v: start rc=$rc inspect rc=$irc: $(tail -1 "$dir/v.out")"; fi
done
rm -f "$dir/v.tally"

# 2. The old build, from git history (CI has a clean clone with the whole history).
old=$dir/old
if ! git -C "$repo" cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
  fail "commit $OLD_COMMIT not in this repository's history"; finish
fi
mkdir -p "$old"
git -C "$repo" archive "$OLD_COMMIT" | tar -x -C "$old"
if timeout 300 make -C "$old" -j2 all >"$dir/old-build.log" 2>&1 && [ -x "$old/tally" ]; then
  pass "built the old tally from $OLD_COMMIT"
else fail "building $OLD_COMMIT"; tail -5 "$dir/old-build.log"; finish; fi

base=$(port_base 13)
addresses="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
declare -a rpid
start_replica() { # start_replica <binary> <index> [flags...]
  local bin=$1 i=$2; shift 2
  "$bin" start --addresses=$addresses "$@" "$dir/0_$i.tally" >>"$dir/replica$i.log" 2>&1 &
  rpid[$i]=$!; pids+=($!)
}
ready() { # ready <index>: the new build's /health/ready
  [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((base + 10 + $1))/health/ready")" = 200 ]
}
for i in 0 1 2; do
  "$old/tally" format --cluster=0 --replica=$i --replica-count=3 --development "$dir/0_$i.tally" 2>/dev/null ||
    { fail "old format"; finish; }
done
for i in 0 1 2; do start_replica "$old/tally" $i; done

# The load: runs of 150 requests (1500 transfers), each through one replica in turn; a run
# that meets a stopping replica ends early and says what was acknowledged.
(
  run=0
  while [ ! -f "$dir/stop" ] && [ $run -lt 400 ]; do
    id=$((1000000000 + run * 10000))
    timeout 60 "$tools/load" $((base + run % 3)) 150 $id >"$dir/load-$run.out" 2>&1
    echo "$id $(sed -n 's/^acknowledged=\([0-9]*\).*/\1/p' "$dir/load-$run.out")" >>"$dir/acknowledged"
    run=$((run + 1))
  done
) &
loader=$!; pids+=($loader)
sleep 3
# The old cluster must be serving before the first replica goes: a new cluster elects its first
# primary only with all three up, and a load run that starts before that acknowledges nothing.
for _ in $(seq 1 300); do
  awk '$2 > 0 { found = 1 } END { exit !found }' "$dir/acknowledged" 2>/dev/null && break
  sleep 0.1
done

for i in 0 1 2; do
  kill -TERM ${rpid[$i]}; timeout 20 tail --pid=${rpid[$i]} -f /dev/null
  start_replica "$tally" $i --metrics-address=127.0.0.1:$((base + 10 + i))
  t0=$(date +%s.%N); ok=0
  for _ in $(seq 1 300); do ready $i && { ok=1; break; }; sleep 0.1; done
  t=$(awk -v a=$t0 -v b=$(date +%s.%N) 'BEGIN { printf "%.1f", b - a }')
  if [ $ok -eq 1 ]; then pass "replica $i upgraded to the new build and ready after $t s under load"
  else
    fail "replica $i not ready within 30 s after its upgrade"
    echo "--- replica $i log (last 20 lines)"; tail -20 "$dir/replica$i.log"
  fi
  sleep 3 # load runs through the mixed cluster before the next replica goes
done
sleep 2
touch "$dir/stop"; timeout 90 tail --pid=$loader -f /dev/null
acked=$(awk '{ s += $2 } END { print s * 10 }' "$dir/acknowledged")
runs=$(wc -l <"$dir/acknowledged")
missing=0
while read -r id n; do
  [ -n "$n" ] && [ "$n" -gt 0 ] || continue
  timeout 30 "$tools/check_transfers" $base $id $((n * 10)) >"$dir/check.out" 2>&1 || { missing=1; cat "$dir/check.out"; }
done <"$dir/acknowledged"
if [ $missing -eq 0 ] && [ "$acked" -gt 0 ]; then
  pass "every acknowledged transfer found after the rolling upgrade: $acked transfers in $runs load runs"
else fail "acknowledged transfers missing after the upgrade (acknowledged $acked)"; fi

# 3. Turning the key on: all three together.
"$tally" keygen "$dir/key"
for i in 0 1 2; do kill -TERM ${rpid[$i]}; done
for i in 0 1 2; do timeout 20 tail --pid=${rpid[$i]} -f /dev/null; done
for i in 0 1 2; do
  kill -0 ${rpid[$i]} 2>/dev/null && fail "replica $i did not stop within 20 s of SIGTERM"
done
# The op to compare at: the newest checkpoint among the three. Replicas checkpoint at ops of
# their own (a replica that caught up by state sync is offset from the others), so the lowest
# commit can be older than another replica's checkpoint, which digest cannot go back before;
# every replica's journal holds the ops from its own checkpoint on.
commit=$(for i in 0 1 2; do "$tally" inspect --json "$dir/0_$i.tally" 2>/dev/null |
  sed -n 's/.*"checkpoint_op":\([0-9]*\).*/\1/p' | head -1; done | sort -n | tail -1)
for i in 0 1 2; do
  echo "replica $i: $("$tools/digest" "$dir/0_$i.tally" "$commit" 2>&1 || echo "(digest exit $?)")"
done >"$dir/digests"
digests=$(sed 's/^replica [0-9]: //' "$dir/digests" | sort -u | wc -l)
if [ -n "$commit" ] && [ "$digests" -eq 1 ]; then pass "the three data files give one digest at op $commit"
else fail "data files differ at op $commit ($digests digests)"; cat "$dir/digests"; fi
# A file the new build has checkpointed is of its format: the old build refuses it, untouched.
before=$(cksum <"$dir/0_0.tally")
timeout 20 "$old/tally" inspect "$dir/0_0.tally" >"$dir/downgrade.out" 2>&1; rc=$?
if [ $rc -ne 0 ] && grep -q "format version $("$tally" version --verbose | sed -n 's/.*data file format version: //p')" "$dir/downgrade.out" &&
   [ "$(cksum <"$dir/0_0.tally")" = "$before" ]; then
  pass "the old build refuses the upgraded file: $(grep -o "format version.*" "$dir/downgrade.out" | head -1 | cut -c1-100)"
else fail "the old build on the upgraded file: rc=$rc $(tail -1 "$dir/downgrade.out")"; fi
for i in 0 1 2; do
  start_replica "$tally" $i --metrics-address=127.0.0.1:$((base + 10 + i)) --cluster-key-file="$dir/key"
done
ok=0; for _ in $(seq 1 300); do ready 0 && ready 1 && ready 2 && { ok=1; break; }; sleep 0.1; done
if [ $ok -eq 1 ] && timeout 30 "$tools/load" $base 50 2000000000 >"$dir/keyed.out" 2>&1; then
  pass "cluster key turned on by restarting all three: ready and serving ($(cat "$dir/keyed.out"))"
else fail "keyed restart: ready=$ok $(tail -1 "$dir/keyed.out")"; fi
finish
