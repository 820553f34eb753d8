#!/usr/bin/env bash
# tests/server/crash_report.sh <tally>: a replica that dies of a fatal signal (here SIGSEGV,
# sent to it) first leaves a backtrace on stderr whose frames addr2line maps to source lines,
# then dies of the signal as it would have (exit 139). Why: a crash seen once in a log must be
# traceable (src/lib/crash.h). Needs a build without AddressSanitizer, whose own handler
# reports instead. Bounded; last line "N passed, N failed".
set -u
tally=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
dir=$(mktemp -d /tmp/tally-crash-report.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$dir"' EXIT
. "$(dirname "$0")/checks.sh"

if nm -u "$tally" 2>/dev/null | grep -q __asan_init; then
  fail "$tally is a sanitizer build: give a release build"; finish
fi
"$tally" format --cluster=0 --replica=0 --replica-count=1 --development "$dir/0_0.tally" 2>/dev/null ||
  { fail "format"; finish; }
port=$(port_base)
"$tally" start --addresses=127.0.0.1:$port "$dir/0_0.tally" >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$dir/log" && break; sleep 0.1; done
grep -q "listening on" "$dir/log" && pass "the replica is serving" || { fail "the replica did not start"; finish; }
kill -SEGV $pid
wait $pid 2>/dev/null; rc=$?; pid=
[ "$rc" -eq 139 ] && pass "it died of SIGSEGV (exit 139)" || fail "exit $rc, not 139"
grep -q "^fatal: SIGSEGV; backtrace" "$dir/log" && pass "a backtrace on stderr" || { fail "no backtrace:"; tail -5 "$dir/log"; }
frame=$(grep -o "tally(+0x[0-9a-f]*)" "$dir/log" | head -1 | sed 's/.*(+\(0x[0-9a-f]*\))/\1/')
if [ -n "$frame" ] && command -v addr2line >/dev/null; then
  where=$(addr2line -f -e "$tally" "$frame" | tail -1)
  case "$where" in
    *src/*.c:[0-9]*) pass "addr2line maps its first frame of tally to a source line: $where" ;;
    *) fail "addr2line of $frame gave '$where'" ;;
  esac
else
  fail "no frame of tally in the backtrace, or no addr2line"
fi
finish
