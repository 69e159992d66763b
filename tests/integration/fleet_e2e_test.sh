#!/usr/bin/env bash
# End to end on real processes: dumontd + the local provider's dumont-agent machines, with scaled-down
# thresholds (heartbeat 1 s, idle 5 s). Create -> write files -> gpu-load 0 -> hibernated within the
# window + 2 s (snapshot listed, agent gone, machine directory removed) -> wake -> workspace identical
# with metadata. GPU load 50 never hibernates; a silent agent never hibernates. kill -9 of dumontd
# during wake and during hibernation ends in the right state with the right machines and no orphans.
# Usage: fleet_e2e_test.sh BIN_DIR sqlite|postgresql
BIN=$1; BACKEND=$2
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d)
cleanup() {
  kill -9 "$PID" 2>/dev/null || true
  for p in "$TMP"/data/machines/*/agent.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
export HOME=$TMP/home; mkdir -p "$HOME"; unset DUMONT_API_URL
DBARGS=()
if [ "$BACKEND" = postgresql ]; then
  ADMIN_URL=$(cat "$DUMONT_TEST_PG_STATE/url") || fail "no PostgreSQL fixture"
  DB=fleet_$RANDOM$RANDOM
  psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" || fail "createdb"
  DBARGS=(--db "${ADMIN_URL%/*}/$DB")
fi
ARGS=("${DBARGS[@]}" --set fleet.heartbeat_interval_s=1 --set fleet.resync_interval_s=2)
start_dumontd "$TMP/data" "${ARGS[@]}"
D="$BIN/dumont --base-url $URL"
export DUMONT_PASSWORD='correct horse battery'
$D auth register --email fleet@example.com >/dev/null && $D auth login --email fleet@example.com >/dev/null || fail "login"

field() { $D --json instance show "$1" | jq -r ".instance.$2"; }
wait_state() {  # id state timeout_s
  local deadline=$(( $(date +%s%N) / 1000000 + $3 * 1000 ))
  while [ "$(field "$1" state)" != "$2" ]; do
    [ $(( $(date +%s%N) / 1000000 )) -lt $deadline ] || fail "instance $1 did not reach $2 in $3 s (it is $(field "$1" state): $(field "$1" message))"
    sleep 0.1
  done
}
machines_of() { ls -d "$TMP"/data/machines/dc-"$1"-* 2>/dev/null | wc -l; }
agent_pid() { cat "$(field "$1" machine.workspace)/../agent.pid"; }

# --- 1. create, write files, idle -> hibernated, wake -> identical
ID=$($D --json instance create --name w1 --idle-seconds 5 --wait | jq -r .instance.id)
[ "$(field "$ID" state)" = running ] || fail "create --wait did not end running"
$D instance gpu-load "$ID" 50 >/dev/null
WS=$(field "$ID" machine.workspace)
mkdir -p "$WS/proj/sub" "$WS/empty"
seq 1 200000 > "$WS/proj/data.csv"; head -c 3000000 /dev/urandom > "$WS/proj/sub/weights.bin"
echo "print('hi')" > "$WS/proj/train.py"; chmod 750 "$WS/proj/train.py"; ln -s proj/data.csv "$WS/link"
touch -d '2021-02-03 04:05:06.789' "$WS/proj/data.csv"
cp -a "$WS" "$TMP/reference"
OLD_PID=$(agent_pid "$ID"); OLD_DIR=$(dirname "$WS")
alive "$OLD_PID" || fail "agent not running"
pass "instance $ID running with agent $OLD_PID; files written"

T0=$(date +%s%N)
$D instance gpu-load "$ID" 0 >/dev/null
wait_state "$ID" hibernated 15
ELAPSED_MS=$(( ($(date +%s%N) - T0) / 1000000 ))
[ "$ELAPSED_MS" -le $(( (5 + 2 + 1) * 1000 )) ] || fail "hibernated after ${ELAPSED_MS} ms: more than the 5 s window + 2 s (+1 s heartbeat)"
[ "$($D --json instance snapshots "$ID" | jq '.snapshots | length')" -ge 1 ] || fail "no snapshot listed"
alive "$OLD_PID" && fail "agent $OLD_PID still running after hibernation"
[ -e "$OLD_DIR" ] && fail "machine directory $OLD_DIR still exists"
pass "hibernated ${ELAPSED_MS} ms after the GPU went idle; snapshot listed; agent gone; machine removed"

$D instance wake "$ID" --wait >/dev/null || fail "wake"
$D instance gpu-load "$ID" 50 >/dev/null
WS2=$(field "$ID" machine.workspace)
[ "$WS2" != "$WS" ] || fail "wake reused the old machine"
diff -r "$TMP/reference" "$WS2" || fail "woken workspace differs"
meta() { (cd "$1" && find . -printf '%p %y %m %T@ %s %l\n' | sort); }
diff <(meta "$TMP/reference") <(meta "$WS2") || fail "woken workspace metadata differs"
pass "woke on a new machine: workspace byte-identical with modes, mtimes and links"

# --- 2. busy never hibernates; a silent agent never hibernates
BUSY=$($D --json instance create --name busy --idle-seconds 3 --wait | jq -r .instance.id)
$D instance gpu-load "$BUSY" 50 >/dev/null
SILENT=$($D --json instance create --name silent --idle-seconds 3 --wait | jq -r .instance.id)
$D instance gpu-load "$SILENT" 50 >/dev/null
sleep 1.5
SPID=$(agent_pid "$SILENT")
kill -STOP "$SPID"
$D instance gpu-load "$SILENT" 0 >/dev/null
sleep 8
[ "$(field "$BUSY" state)" = running ] || fail "a busy instance hibernated"
[ "$(field "$SILENT" state)" = running ] || fail "an instance whose agent is silent hibernated"
kill -CONT "$SPID"
pass "GPU load 50 never hibernates; missing heartbeats never hibernate"
$D instance destroy "$BUSY" --wait >/dev/null; $D instance destroy "$SILENT" --wait >/dev/null

# --- 3. kill -9 dumontd during hibernation and during wake
for round in 1 2 3; do
  $D instance hibernate "$ID" >/dev/null || fail "hibernate request"
  sleep "0.$(( RANDOM % 5 ))"
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  LISTEN=127.0.0.1:$PORT start_dumontd "$TMP/data" "${ARGS[@]}"
  wait_state "$ID" hibernated 20
  [ "$(machines_of "$ID")" = 0 ] || fail "round $round: machines left after hibernation: $(ls "$TMP/data/machines")"
  $D instance wake "$ID" >/dev/null || fail "wake request"
  sleep "0.$(( RANDOM % 8 ))"
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  LISTEN=127.0.0.1:$PORT start_dumontd "$TMP/data" "${ARGS[@]}"
  wait_state "$ID" running 30
  [ "$(machines_of "$ID")" = 1 ] || fail "round $round: expected exactly one machine after wake, found $(machines_of "$ID")"
  alive "$(agent_pid "$ID")" || fail "round $round: the machine's agent is not running"
  $D instance gpu-load "$ID" 50 >/dev/null
  diff -r "$TMP/reference" "$(field "$ID" machine.workspace)" || fail "round $round: workspace differs after wake"
done
pass "kill -9 of dumontd during hibernation and wake (3 rounds): right state, exactly one machine, data intact"

# --- 4. destroy leaves nothing running
PIDS=$(cat "$TMP"/data/machines/*/agent.pid 2>/dev/null || true)
$D instance destroy "$ID" --wait >/dev/null || fail "destroy"
for p in $PIDS; do alive "$p" && fail "agent $p survived destroy"; done
[ -z "$(ls "$TMP/data/machines")" ] || fail "machine directories left: $(ls "$TMP/data/machines")"
pass "destroy: no agent process, no machine directory left"
stop_dumontd
echo "PASS fleet_e2e_test $BACKEND"
