#!/usr/bin/env bash
# tests/server/cli_errors.sh <tally binary>: every bad command line gets a one-line error, a
# non-zero exit status, and leaves the data file byte for byte as it was.
set -u
tally=$1
dir=$(mktemp -d /tmp/tally-cli.XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0; failed=0

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

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
