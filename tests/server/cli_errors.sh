#!/usr/bin/env bash
# tests/server/cli_errors.sh <tally binary>: every bad command line gets a one-line error, a
# non-zero exit status, and leaves the data file byte for byte as it was. That includes every
# command on a data file a running replica holds (one process per data file).
set -u
tally=$1
dir=$(mktemp -d /tmp/tally-cli.XXXXXX)
holder=
trap '[ -n "$holder" ] && kill -9 $holder 2>/dev/null; rm -rf "$dir"' EXIT
passed=0; failed=0
. "$(dirname "$0")/../lib.sh" # port_base

# expect_error <description> <command...>: non-zero exit, exactly one "error: " line.
expect_error() {
  local what=$1; shift
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  local lines; lines=$(grep -c '^error: ' "$dir/err")
  if [ $rc -ne 0 ] && [ "$lines" -eq 1 ]; then passed=$((passed + 1)); else
    failed=$((failed + 1)); echo "FAIL $what: exit $rc, stderr:"; cat "$dir/err"; fi
}
expect_ok() {
  local what=$1; shift
  if "$@" >"$dir/out" 2>"$dir/err"; then passed=$((passed + 1)); else
    failed=$((failed + 1)); echo "FAIL $what: exit $?"; cat "$dir/err"; fi
}
check() { # check <description> <condition command...>
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $what"; fi
}

expect_ok "version" "$tally" version
check "version names the release" grep -q "0.16.68" "$dir/out"
# --help on every command: usage on stdout, status 0, nothing on stderr.
for command in version format start keygen inspect benchmark sim; do
  expect_ok "$command --help" "$tally" $command --help
  check "$command --help prints its usage on stdout" grep -q "^usage: tally $command" "$dir/out"
  check "$command --help prints nothing on stderr" test ! -s "$dir/err"
done
expect_ok "help" "$tally" help
check "help lists every command" grep -q "tally inspect" "$dir/out"
expect_ok "version --verbose" "$tally" version --verbose
for field in compiler checksum "io backend" "message size max" "client sessions"; do
  check "version --verbose names the $field" grep -q "$field" "$dir/out"
done
expect_error "version: unknown flag" "$tally" version --bogus
expect_error "--log-format: bad value" "$tally" version --log-format=yaml
# JSON logs: every line of a command's log is one JSON object with time, level and msg.
"$tally" format --log-format=json --cluster=7 --replica=0 --replica-count=1 --development "$dir/json.tally" 2>"$dir/json.log"
check "--log-format=json: every log line is a JSON object with time, level, msg" node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean);
  if (lines.length === 0) process.exit(1);
  for (const l of lines) { const j = JSON.parse(l); if (!j.time || !j.level || !("msg" in j)) process.exit(1); }' "$dir/json.log"
TALLY_LOG_FORMAT=json "$tally" inspect "$dir/json.tally" >/dev/null 2>&1
check "TALLY_LOG_FORMAT=json is accepted" test $? -eq 0
rm -f "$dir/json.tally"
expect_error "no command" "$tally"
expect_error "unknown command" "$tally" frobnicate
expect_ok "format" "$tally" format --cluster=7 --replica=0 --replica-count=1 --development "$dir/a.tally"
sum_before=$(cksum <"$dir/a.tally")
expect_error "format over an existing file" "$tally" format --cluster=7 --replica=0 --replica-count=1 --development "$dir/a.tally"
expect_error "format: unknown flag" "$tally" format --cluster=7 --replica=0 --replica-count=1 --bogus "$dir/b.tally"
expect_error "format: missing cluster" "$tally" format --replica=0 --replica-count=1 "$dir/b.tally"
expect_error "format: malformed cluster" "$tally" format --cluster=abc --replica=0 --replica-count=1 "$dir/b.tally"
expect_error "format: replica out of range" "$tally" format --cluster=1 --replica=3 --replica-count=3 "$dir/b.tally"
expect_error "format: replica count 0" "$tally" format --cluster=1 --replica=0 --replica-count=0 "$dir/b.tally"
expect_error "format: replica count 7" "$tally" format --cluster=1 --replica=0 --replica-count=7 "$dir/b.tally"
expect_error "format: no path" "$tally" format --cluster=1 --replica=0 --replica-count=1
expect_error "format: directory missing" "$tally" format --cluster=1 --replica=0 --replica-count=1 "$dir/no/such/dir/x.tally"
check "failed formats created nothing" test ! -e "$dir/b.tally"
expect_error "start: missing file" "$tally" start --addresses=3999 "$dir/missing.tally"
head -c 100000 /dev/urandom >"$dir/random.bin"
expect_error "start: not a Tally file" "$tally" start --addresses=3999 "$dir/random.bin"
: >"$dir/empty.bin"
expect_error "start: empty file" "$tally" start --addresses=3999 "$dir/empty.bin"
expect_error "start: unknown flag" "$tally" start --addresses=3999 --bogus "$dir/a.tally"
expect_error "start: no addresses" "$tally" start "$dir/a.tally"
expect_error "start: malformed address" "$tally" start --addresses=1.2.3.4:99999 "$dir/a.tally"
expect_error "start: address list does not contain this replica" "$tally" start --addresses=3998,3999 "$dir/a.tally"
expect_error "start: unresolvable host" "$tally" start --addresses=no-such-host.invalid:3000 "$dir/a.tally"
cp "$dir/a.tally" "$dir/truncated.tally"; truncate -s 100000 "$dir/truncated.tally"
expect_error "start: truncated file" "$tally" start --addresses=3999 "$dir/truncated.tally"
cp "$dir/a.tally" "$dir/corrupt.tally"
for copy in 0 1 2 3; do printf 'X' | dd of="$dir/corrupt.tally" bs=1 seek=$((copy * 4096 + 200)) conv=notrunc 2>/dev/null; done
expect_error "start: every superblock copy corrupt" "$tally" start --addresses=3999 "$dir/corrupt.tally"
check "the data file is untouched by every failure" test "$(cksum <"$dir/a.tally")" = "$sum_before"

# start_holder <data file>: a replica on it, listening; sets holder (its pid). Non-zero if none
# started (a port taken by someone else is retried on another).
start_holder() {
  local attempt port waited
  for attempt in 1 2 3 4 5; do
    port=$(port_base)
    "$tally" start --addresses="127.0.0.1:$port" "$1" >"$dir/holder.log" 2>&1 &
    holder=$!
    for waited in $(seq 100); do
      grep -q "listening on 127.0.0.1:$port" "$dir/holder.log" && return 0
      kill -0 $holder 2>/dev/null || break
      sleep 0.1
    done
    kill -9 $holder 2>/dev/null; wait $holder 2>/dev/null; holder=
  done
  cat "$dir/holder.log"; return 1
}
stop_holder() { # stop_holder <signal>: and wait for it to be gone
  kill -"$1" $holder; wait $holder 2>/dev/null; holder=
}
names_holder() { grep -q "in use by another process (pid $holder, writing it)" "$dir/err"; }

expect_ok "format a file to hold" "$tally" format --cluster=7 --replica=0 --replica-count=1 --development "$dir/held.tally"
if start_holder "$dir/held.tally"; then
  passed=$((passed + 1))
  t0=$(date +%s%N)
  expect_error "start: a second replica on a held file" timeout 10 "$tally" start --addresses=3999 "$dir/held.tally"
  check "a second start fails at once (within 2 s)" test $(( ($(date +%s%N) - t0) / 1000000 )) -lt 2000
  check "a second start names the holder's pid" names_holder
  # Stopped, the holder writes nothing and keeps its lock: any change is the commands' doing.
  kill -STOP $holder
  held_before=$(cksum <"$dir/held.tally")
  expect_error "start: a held file (holder stopped)" timeout 10 "$tally" start --addresses=3999 "$dir/held.tally"
  expect_error "format over a held file" "$tally" format --cluster=7 --replica=0 --replica-count=1 --development "$dir/held.tally"
  check "format over a held file names the holder's pid" names_holder
  expect_error "inspect: a held file" "$tally" inspect "$dir/held.tally"
  check "inspect of a held file names the holder's pid" names_holder
  check "inspect of a held file prints nothing on stdout" test ! -s "$dir/out"
  expect_ok "inspect --live: a held file" "$tally" inspect --live "$dir/held.tally"
  check "inspect --live describes it" grep -q "superblock copy 0: valid" "$dir/out"
  check "the held file is untouched by every refusal" test "$(cksum <"$dir/held.tally")" = "$held_before"
  kill -CONT $holder
  # The kernel drops the lock with the process, SIGKILL included; then a new replica starts.
  stop_holder KILL
  check "after SIGKILL of the holder a new start succeeds" start_holder "$dir/held.tally"
  [ -n "$holder" ] && stop_holder TERM
  check "after a clean exit of the holder a new start succeeds" start_holder "$dir/held.tally"
  [ -n "$holder" ] && stop_holder TERM
  expect_ok "inspect: a file no one holds" "$tally" inspect "$dir/held.tally"
else
  failed=$((failed + 1)); echo "FAIL a replica to hold the file did not start"
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
