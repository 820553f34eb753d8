#!/usr/bin/env bash
# tests/sim/run.sh <tally> [seeds per cluster size]: the deterministic simulator over many seeds.
#
# Runs `tally sim` for seeds BASE..BASE+N-1 on each cluster size (default 50 seeds on each of 1,
# 2, 3 and 5 replicas: 200 seeds), several at a time. The first seed of each size runs twice and
# the two outputs must be identical (same seed, same run, byte for byte). One result per seed;
# a failure prints the check that failed and the command that replays it. Last line:
# "N passed, N failed".
#
# Then the seeds that once found a bug (TALLY_SIM_REGRESSION, "replicas:seed ..."), once each:
# a seed's course changes with the code, so each guards its bug only while its course holds,
# but it costs a second.
#
# Environment: TALLY_SIM_SIZES ("1 2 3 5"), TALLY_SIM_SEED (first seed, 1),
# TALLY_SIM_JOBS (parallel runs, nproc), TALLY_SIM_ARGS (extra flags for every run),
# TALLY_SIM_TIMEOUT (seconds per run, 300).
set -u
TALLY=${1:?usage: tests/sim/run.sh <tally> [seeds per cluster size]}
PER_SIZE=${2:-50}
SIZES=${TALLY_SIM_SIZES:-"1 2 3 5"}
BASE=${TALLY_SIM_SEED:-1}
JOBS=${TALLY_SIM_JOBS:-$(nproc 2>/dev/null || echo 2)}
OUT=$(mktemp -d /tmp/tally-sim.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
export TALLY OUT TALLY_SIM_ARGS="${TALLY_SIM_ARGS:-}" TALLY_SIM_TIMEOUT="${TALLY_SIM_TIMEOUT:-300}"

run_one() { # run_one <replicas> <seed> <twice: 0|1>
  local size=$1 seed=$2 twice=$3 out="$OUT/$1-$2" rc
  # shellcheck disable=SC2086
  timeout "$TALLY_SIM_TIMEOUT" "$TALLY" sim --seed="$seed" --replicas="$size" $TALLY_SIM_ARGS \
    >"$out" 2>"$out.err"; rc=$?
  if [ "$rc" -eq 0 ] && [ "$twice" -eq 1 ]; then
    # shellcheck disable=SC2086
    timeout "$TALLY_SIM_TIMEOUT" "$TALLY" sim --seed="$seed" --replicas="$size" $TALLY_SIM_ARGS \
      >"$out.again" 2>/dev/null
    if ! cmp -s "$out" "$out.again"; then
      echo "failure: the same seed ran differently twice (not deterministic)" >>"$out"
      rc=1
    fi
  fi
  if [ "$rc" -eq 0 ]; then
    echo "ok $(head -1 "$out")" >"$out.result"
  else
    {
      echo "FAILED seed=$seed replicas=$size (exit $rc)"
      sed 's/^/  /' "$out"
      grep -q '^replay:' "$out" ||
        echo "  replay: tally sim --seed=$seed --replicas=$size $TALLY_SIM_ARGS"
      tail -3 "$out.err" | sed 's/^/  stderr: /'
    } >"$out.result"
  fi
}
export -f run_one

for size in $SIZES; do
  for i in $(seq 0 $((PER_SIZE - 1))); do
    echo "$size $((BASE + i)) $([ "$i" -eq 0 ] && echo 1 || echo 0)"
  done
done | xargs -P "$JOBS" -n 3 bash -c 'run_one "$@"' _

# 3:73 and 3:91 stalled a view change forever (2026-12-03: a fresh replica that never joined a
# view, and one without state, now prove nacks); 3:372 and 5:113 committed two prepares as one
# op (recovery spliced a cut branch under a gap; a late do_view_change's commits were cut);
# 5:2109 committed two prepares as one op (a new primary executed its own ops of an older view
# found under a gap of the best log; on the code of 2026-12-05 before requests were parked:
# tests/unit/test_replication.c test_backup_executes_only_a_chained_entry proves that fix now).
# 3:1979 executed a request twice (a new primary kept its own ops of an older view under the
# head of a log that came without headers; test_view_change_checks_own_entries_under_a_head_...).
# 3:2065 stalled forever (a fresh replica with state answered "may have acknowledged" for an op
# its journal lacked; test_fresh_replica_with_state_nacks_from_its_journal).
# 5:3140 committed an op held by 2 of 5 replicas (the third ok came from a replica re-formatted
# since, which rejoined the same view; test_rejoined_replica_oks_do_not_count). With that change,
# 3:2700 gave an op to two requests (a failed state sync install forgot the journal's log;
# test_failed_install_keeps_the_log) and 5:3097 stalled (own entries kept in a gap of the
# installed headers; test_view_change_checks_own_entries_in_gaps_between_headers).
# 3:824 stalled forever (a new primary started a view on a cut log before the cut was durable;
# test_replication's primary_anchor_unwritten).
# 3:169 stalled forever (the only replica past the others' checkpoints could not list its own
# for their copies: a rotten index block; test_damaged_block_of_a_served_checkpoint_is_repaired_from_a_peer).
REGRESSION=${TALLY_SIM_REGRESSION-"3:73 3:91 3:372 5:113 5:2109 3:301 3:986 3:1525 5:165 3:355 3:670 3:1505 3:1979 3:2065 5:3140 3:2700 5:3097 3:824 3:169"}
for entry in $REGRESSION; do
  echo "${entry%%:*} ${entry##*:} 0"
done | xargs -r -P "$JOBS" -n 3 bash -c 'run_one "$@"' _

# result_ok <replicas> <seed>: true if that run passed; else prints what failed.
result_ok() {
  local result="$OUT/$1-$2.result"
  [ -f "$result" ] && head -1 "$result" | grep -q '^ok ' && return 0
  if [ -f "$result" ]; then cat "$result"; else echo "FAILED seed=$2 replicas=$1 (no result)"; fi
  return 1
}

passed=0 failed=0
for entry in $REGRESSION; do
  if result_ok "${entry%%:*}" "${entry##*:}"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
[ -n "$REGRESSION" ] && echo "regression seeds ($REGRESSION): $passed passed, $failed failed"
for size in $SIZES; do
  size_passed=0 size_failed=0
  for i in $(seq 0 $((PER_SIZE - 1))); do
    if result_ok "$size" "$((BASE + i))"; then
      size_passed=$((size_passed + 1))
    else
      size_failed=$((size_failed + 1))
    fi
  done
  echo "replicas=$size: $size_passed passed, $size_failed failed"
  passed=$((passed + size_passed)); failed=$((failed + size_failed))
done
# sweep_total <key>: the sum of key=N over every seed's result line.
sweep_total() {
  cat "$OUT"/*.result 2>/dev/null | grep -o "$1=[0-9]*" | cut -d= -f2 | awk '{ n += $1 } END { print n + 0 }'
}
# require_exercised <count> <what>: on the sizes where copies and view changes happen, a sweep
# of 20 seeds or more must have taken the path, or it proves nothing.
require_exercised() {
  case " $SIZES " in
    *" 3 "* | *" 5 "*)
      if [ "$PER_SIZE" -ge 20 ] && [ "$1" -eq 0 ]; then
        echo "FAILED: no seed $2"
        failed=$((failed + 1))
      fi ;;
  esac
}
# Backups copying a checkpoint keep journaling and acknowledging prepares (sync_may_journal).
sync_prepares=$(sweep_total sync_prepares)
echo "prepares journaled by replicas while copying a checkpoint: $sync_prepares"
require_exercised "$sync_prepares" "journaled a prepare during a state sync"
# Copies that lasted as long as the journal's ring and asked for a newer checkpoint.
echo "state syncs that asked for a newer checkpoint (the ring filled): $(sweep_total sync_retargets)"
# Damaged blocks of a checkpoint being served, fetched from a peer and written back in place.
echo "damaged blocks of a served checkpoint repaired from a peer: $(sweep_total blocks_repaired)"
# Requests that reach a replica in a view change are kept and taken up after it (replica.c,
# park).
parked=$(sweep_total requests_parked)
echo "requests kept through a view change: $parked"
require_exercised "$parked" "kept a request through a view change"
# Grid writes return before they land (docs/storage.md, "Asynchronous block writes"): crashes
# must have caught some in flight, or the sweep never tested that a checkpoint waits for them.
in_flight=$(sweep_total grid_writes_in_flight_at_crash)
echo "grid writes in flight at a crash (landed, torn or lost): $in_flight"
if [ "$PER_SIZE" -ge 20 ] && [ "$in_flight" -eq 0 ]; then
  echo "FAILED: no crash caught a grid write in flight"
  failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
