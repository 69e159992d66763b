#!/usr/bin/env bash
# Multi-start deploy end to end, on the Vast emulator (tests/emulators; NOT the real Vast.ai) with
# unreliable machines: 30 % never become ready, 20 % of create answers are lost, some requests get 429.
# A user saves their own Vast key (write-only, sealed at rest), deploys with batches of 4 through the
# CLI (--watch), and the deploy ends with exactly one machine: the first with a live agent.
# Usage: deploy_e2e_test.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d)
EPID=
cleanup() {
  kill -9 "$PID" 2>/dev/null || true
  [ -n "$EPID" ] && kill "$EPID" 2>/dev/null && wait "$EPID" 2>/dev/null
  for p in "$TMP"/emu/machines/*/agent.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
export HOME=$TMP/home; mkdir -p "$HOME"; unset DUMONT_API_URL
KEY=vast-user-key-$RANDOM$RANDOM
VAST_EMULATOR_API_KEY=$KEY "$BIN/vast-emulator" --listen 127.0.0.1:0 --state-dir "$TMP/emu" --agent "$BIN/dumont-agent" \
  --boot-seconds 0.5 --pull-seconds 0.5 --offers 12 --never-ready-rate 0.3 --lost-rate 0.2 --429-rate 0.05 --seed 7 \
  >"$TMP/emu.url" 2>"$TMP/emu.log" &
EPID=$!
for _ in $(seq 1 50); do [ -s "$TMP/emu.url" ] && break; sleep 0.1; done
VAST_URL=$(head -1 "$TMP/emu.url"); [ -n "$VAST_URL" ] || fail "emulator did not start: $(cat "$TMP/emu.log")"
# The emulator answers 5 % of requests (ours too) with 429: retry like a client would.
emu_list() {
  local out
  for _ in $(seq 1 20); do out=$(curl -fsS -H "Authorization: Bearer $KEY" "$VAST_URL/instances/" 2>/dev/null) && { echo "$out"; return; }; sleep 0.1; done
  fail "the emulator's instance list kept failing"
}
emu_instances() { emu_list | jq '.instances | length'; }

# No server-wide Vast key: only users who saved their own can use vast.
start_dumontd "$TMP/data" --set providers.vast.base_url="$VAST_URL" --set fleet.heartbeat_interval_s=1
D="$BIN/dumont --base-url $URL"
export DUMONT_PASSWORD='correct horse battery'
$D auth register --email dep@example.com >/dev/null && $D auth login --email dep@example.com >/dev/null || fail "login"
TOKEN=$(jq -r '.servers[].access_token' "$HOME/.config/dumont/credentials.json")

out=$($D deploy create --name nokey --provider vast 2>&1) && fail "deploy without credentials succeeded"
echo "$out" | grep -q "no Vast.ai credentials" || fail "unclear error without credentials: $out"
pass "without credentials: $out"

echo "$KEY" | $D credentials set vast api_key=- >/dev/null || fail "credentials set"
listed=$(curl -fsS "$URL/api/v1/settings/providers" -H "Authorization: Bearer $TOKEN")
echo "$listed" | grep -q "$KEY" && fail "the saved key came back from the API"
[ "$(echo "$listed" | jq -r '.providers[] | select(.provider=="vast") | .configured')" = true ] || fail "not configured: $listed"
grep -aq "$KEY" "$TMP"/data/*.db* && fail "the key is stored in clear in the database"
pass "credentials saved write-only (hint $(echo "$listed" | jq -r '.providers[] | select(.provider=="vast") | .hint')), sealed at rest"

$D deploy create --name race --provider vast --batch-size 4 --batch-timeout 20 --max-batches 3 --watch --timeout 90 \
  >"$TMP/watch.txt" 2>&1 || fail "deploy failed: $(cat "$TMP/watch.txt")"
cat "$TMP/watch.txt" | sed 's/^/    /'
grep -q '^ready: machine' "$TMP/watch.txt" || fail "no winner reported"
[ "$(emu_instances)" = 1 ] || fail "expected exactly one emulated instance after the deploy, found $(emu_instances)"
DEP=$($D --json deploy list | jq -r '.deploys[0].id')
show=$($D --json deploy show "$DEP")
[ "$(echo "$show" | jq -r .deploy.state)" = succeeded ] || fail "deploy state: $show"
started=$(echo "$show" | jq '.deploy.machines | length')
[ "$started" -ge 4 ] || fail "multi-start started only $started machines"
[ "$(echo "$show" | jq '[.deploy.machines[] | select(.alive or .end == "winner")] | length')" = 1 ] || fail "more than one machine kept: $show"
pass "deploy $DEP: $started machines started, exactly one kept ($(echo "$show" | jq -r .deploy.winner_machine_id)), losers cost \$$(echo "$show" | jq .deploy.loser_cost_usd)"

# The same progress as server-sent events: the stream replays every event and ends after the last one.
curl -fsS -N --max-time 10 "$URL/api/v1/deploys/$DEP/events" -H "Authorization: Bearer $TOKEN" >"$TMP/sse.txt" \
  || fail "SSE stream did not end by itself"
grep -q '^event: deploy_started' "$TMP/sse.txt" && grep -q '^event: deploy_succeeded' "$TMP/sse.txt" && grep -q '^id: 1$' "$TMP/sse.txt" \
  || fail "SSE stream incomplete: $(head -20 "$TMP/sse.txt")"
last=$(grep -c '^id:' "$TMP/sse.txt")
resumed=$(curl -fsS -N --max-time 10 "$URL/api/v1/deploys/$DEP/events" -H "Authorization: Bearer $TOKEN" -H "Last-Event-ID: $((last - 1))" | grep -c '^id:')
[ "$resumed" = 1 ] || fail "Last-Event-ID resume returned $resumed events, expected 1"
pass "SSE: $last events, resumable with Last-Event-ID"

INS=$(echo "$show" | jq -r .deploy.instance_id)
$D instance destroy "$INS" --wait --timeout 60 >/dev/null || fail "destroy"
[ "$(emu_instances)" = 0 ] || fail "instances left after destroy: $(emu_list | jq -c '[.instances[] | {id, label, actual_status}]')"
grep -q "$KEY" "$LOG" && fail "the Vast API key leaked into dumontd's log"
stop_dumontd
echo "PASS deploy_e2e_test"
