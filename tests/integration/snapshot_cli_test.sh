#!/usr/bin/env bash
# End to end on the real `dumont snapshot` binary: init, backup (JSON progress and summary), list,
# restore byte-identical, ls, diff, wrong password, kill -9 at random moments during a backup
# (the repository must stay checkable and the next backup must finish), forget --prune, key passwd,
# repair index after the index is lost, and a corrupted pack named by check --read-data.
BIN=$1
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
D="$BIN/dumont"
export DUMONT_REPO_PASSWORD=bench-secret-1
R="$TMP/repo"
SRC="$TMP/ws"
mkdir -p "$SRC/models" "$SRC/data" "$SRC/code"
head -c 30000000 /dev/urandom > "$SRC/models/shard-0.bin"
seq 1 400000 > "$SRC/data/train.csv"
for i in $(seq 1 200); do echo "print($i)" > "$SRC/code/m$i.py"; done
ln -s ../data/train.csv "$SRC/code/data.csv"

$D --json snapshot -r "$R" init | jq -e .initialized >/dev/null || fail "init"
$D snapshot -r "$R" init >/dev/null 2>&1 && fail "second init must fail"
OUT=$($D --json snapshot -r "$R" backup "$SRC" --tag first)
echo "$OUT" | tail -1 | jq -e '.message_type == "summary" and .files_new == 202' >/dev/null || fail "backup summary: $(echo "$OUT" | tail -1)"
# Status lines: the last one has exact totals (the walk is complete) and everything done.
echo "$OUT" | jq -s -e '[.[] | select(.message_type == "status")] | length > 0 and (last | .totals_final == true and .files_total == 202 and .files_done == 202 and .bytes_done == .bytes_total)' >/dev/null \
  || fail "backup status lines: $(echo "$OUT" | grep status | tail -1)"
pass "init + backup with JSON status lines and a summary"

echo "changed" >> "$SRC/data/train.csv"
$D --json snapshot -r "$R" backup "$SRC" | tail -1 | jq -e '.files_changed == 1 and .files_unchanged == 201 and .bytes_read < 3000000' >/dev/null \
  || fail "incremental backup re-read unchanged files"
[ "$($D --json snapshot -r "$R" snapshots | jq length)" = 2 ] || fail "snapshots count"
pass "incremental backup reads only the changed file"

$D snapshot -r "$R" restore latest --target "$TMP/out" >/dev/null || fail "restore"
diff -r "$SRC" "$TMP/out/ws" || fail "restore differs from the source"
[ "$(readlink "$TMP/out/ws/code/data.csv")" = "../data/train.csv" ] || fail "symlink target"
$D --json snapshot -r "$R" ls latest ws/code | jq -e 'length == 202' >/dev/null || fail "ls"
FIRST=$($D --json snapshot -r "$R" snapshots | jq -r '.[0].short_id')
$D --json snapshot -r "$R" diff "$FIRST" latest | jq -e '.changes == [{"change":"modified","path":"ws/data/train.csv"}]' >/dev/null || fail "diff"
pass "restore is byte-identical; ls and diff"

set +e
DUMONT_REPO_PASSWORD=wrong $D snapshot -r "$R" snapshots >/dev/null 2>"$TMP/err"; rc=$?
set -e
[ "$rc" = 4 ] || fail "wrong password should exit 4, got $rc"
grep -q "wrong password" "$TMP/err" || fail "wrong password message: $(cat "$TMP/err")"
pass "wrong password: exit 4 with a clear message"

# kill -9 at several points of a backup of new data.
for round in $(seq 1 8); do
  head -c 20000000 /dev/urandom > "$SRC/models/shard-$round.bin"
  $D snapshot -r "$R" backup "$SRC" >/dev/null 2>&1 &
  pid=$!
  sleep "0.$(( (RANDOM % 8) + 1 ))"
  kill -9 $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  $D --json snapshot -r "$R" check | jq -e '.ok' >/dev/null || fail "check after kill -9 (round $round): $($D snapshot -r "$R" check 2>&1 | tail -3)"
  $D snapshot -r "$R" backup "$SRC" >/dev/null || fail "backup after kill -9 (round $round)"
done
$D --json snapshot -r "$R" check --read-data | jq -e '.ok' >/dev/null || fail "check --read-data after kills"
rm -rf "$TMP/out"; $D snapshot -r "$R" restore latest --target "$TMP/out" >/dev/null
diff -r "$SRC" "$TMP/out/ws" || fail "restore after kills differs"
pass "kill -9 during backups: check passes, next backup finishes, restore is identical"

# kill -9 during prune: the repository must stay consistent and the next prune must finish.
for round in $(seq 1 5); do
  $D snapshot -r "$R" forget --keep-last $(( 9 - round )) >/dev/null
  rm -f "$SRC/models/shard-$round.bin"
  $D snapshot -r "$R" backup "$SRC" >/dev/null
  $D snapshot -r "$R" prune >/dev/null 2>&1 &
  pid=$!
  sleep "0.0$(( RANDOM % 10 ))"
  kill -9 $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  $D --json snapshot -r "$R" check | jq -e '.ok' >/dev/null || fail "check after kill -9 of prune (round $round): $($D snapshot -r "$R" check 2>&1 | grep error | head -3)"
  $D snapshot -r "$R" backup "$SRC" >/dev/null || fail "backup after kill -9 of prune (round $round)"
done
pass "kill -9 during prune: check passes and the next backup finishes"

$D --json snapshot -r "$R" forget --keep-last 1 --prune | jq -e '(.removed | length) >= 4 and (.prune | has("bytes_freed"))' >/dev/null || fail "forget --prune"
$D --json snapshot -r "$R" check --read-data | jq -e '.ok and (.warnings | length) == 0' >/dev/null || fail "check after prune"
pass "forget --keep-last 1 --prune leaves a clean repository"

DUMONT_NEW_REPO_PASSWORD=new-secret-2 $D snapshot -r "$R" key passwd >/dev/null || fail "key passwd"
DUMONT_REPO_PASSWORD=new-secret-2 $D snapshot -r "$R" snapshots >/dev/null || fail "new password"
$D snapshot -r "$R" snapshots >/dev/null 2>&1 && fail "old password still works"
export DUMONT_REPO_PASSWORD=new-secret-2
pass "key passwd"

# A lost index: the snapshots' data is unreachable until `repair index` rebuilds it from the packs.
rm -f "$R"/index/*
set +e; $D snapshot -r "$R" restore latest --target "$TMP/lost" >/dev/null 2>&1; rc=$?; set -e
[ "$rc" != 0 ] || fail "restore without an index should fail"
$D --json snapshot -r "$R" repair index | jq -e '.packs > 0 and .blobs > 0 and (.unreadable_packs | length) == 0' >/dev/null || fail "repair index"
$D --json snapshot -r "$R" check --read-data | jq -e '.ok' >/dev/null || fail "check after repair index"
rm -rf "$TMP/out"; $D snapshot -r "$R" restore latest --target "$TMP/out" >/dev/null || fail "restore after repair index"
diff -r "$SRC" "$TMP/out/ws" || fail "restore after repair index differs"
pass "repair index rebuilds a lost index: check passes, restore is identical"

PACK=$(find "$R/data" -type f -size +1M | head -1)
# Flip every bit of one byte (writing a fixed 0xff left the pack intact when that byte was 0xff
# already: a 1-in-256 flake seen in CI).
OLD=$(dd if="$PACK" bs=1 skip=5000 count=1 status=none | od -An -tu1 | tr -d ' ')
printf "\\$(printf '%03o' $((255 - OLD)))" | dd of="$PACK" bs=1 seek=5000 conv=notrunc status=none
[ "$(dd if="$PACK" bs=1 skip=5000 count=1 status=none | od -An -tu1 | tr -d ' ')" != "$OLD" ] || fail "the byte did not change"
set +e; $D snapshot -r "$R" check --read-data >"$TMP/check" 2>&1; rc=$?; set -e
[ "$rc" = 1 ] || fail "check of a corrupted pack should exit 1, got $rc"
grep -q "$(basename "$PACK")" "$TMP/check" || fail "check did not name the corrupted pack: $(cat "$TMP/check")"
pass "a corrupted pack is detected and named"
echo "PASS snapshot_cli_test"
