#!/usr/bin/env bash
# dumontd with the Vast.ai provider pointed at the Vast emulator (tests/emulators; NOT the real
# Vast.ai): create an instance on "vast" -> the emulated machine boots a real agent that enrolls ->
# running, exactly one emulated instance -> files in its workspace -> hibernate -> no emulated
# instance left -> wake -> exactly one instance again, workspace restored.
# Usage: vast_e2e_test.sh BIN_DIR
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
KEY=vast-test-key-$RANDOM
VAST_EMULATOR_API_KEY=$KEY "$BIN/vast-emulator" --listen 127.0.0.1:0 --state-dir "$TMP/emu" --agent "$BIN/dumont-agent" \
  --boot-seconds 1 >"$TMP/emu.url" 2>"$TMP/emu.log" &
EPID=$!
for _ in $(seq 1 50); do [ -s "$TMP/emu.url" ] && break; sleep 0.1; done
VAST_URL=$(head -1 "$TMP/emu.url"); [ -n "$VAST_URL" ] || fail "emulator did not start: $(cat "$TMP/emu.log")"
emu_instances() { curl -fsS -H "Authorization: Bearer $KEY" "$VAST_URL/instances/" | jq '.instances | length'; }

DUMONT_PROVIDERS_VAST_API_KEY=$KEY start_dumontd "$TMP/data" --set providers.vast.base_url="$VAST_URL" \
  --set fleet.heartbeat_interval_s=1
grep -q "$KEY" "$LOG" && fail "the Vast API key leaked into dumontd's log"
D="$BIN/dumont --base-url $URL"
export DUMONT_PASSWORD='correct horse battery'
$D auth register --email vast@example.com >/dev/null && $D auth login --email vast@example.com >/dev/null || fail "login"
[ "$(curl -fsS "$URL/api/v1/instances/offers?provider=vast" -H "Authorization: Bearer $(jq -r '.servers[].access_token' "$HOME/.config/dumont/credentials.json")" | jq '.count')" -gt 0 ] \
  || fail "no offers from the vast provider"
pass "dumontd lists offers from the Vast emulator at $VAST_URL"

ID=$($D --json instance create --name v1 --provider vast --idle-seconds 600 --wait --timeout 60 | jq -r .instance.id) \
  || fail "create on vast: $(tail -5 "$LOG")"
[ "$(emu_instances)" = 1 ] || fail "expected exactly one emulated instance, found $(emu_instances)"
WS=$(ls -d "$TMP"/emu/machines/*/workspace | head -1)
echo "weights" > "$WS/model.txt"
pass "instance $ID running on the emulated Vast machine with a real agent; exactly one instance"

$D instance hibernate "$ID" --wait --timeout 60 >/dev/null || fail "hibernate"
[ "$(emu_instances)" = 0 ] || fail "emulated instance not destroyed after hibernation"
$D instance wake "$ID" --wait --timeout 60 >/dev/null || fail "wake"
[ "$(emu_instances)" = 1 ] || fail "expected exactly one emulated instance after wake, found $(emu_instances)"
WS2=$(ls -d "$TMP"/emu/machines/*/workspace | head -1)
[ "$(cat "$WS2/model.txt")" = weights ] || fail "workspace not restored on the new Vast machine"
pass "hibernate destroyed the Vast instance; wake started exactly one new one and restored the workspace"
$D instance destroy "$ID" --wait --timeout 60 >/dev/null || fail "destroy"
[ "$(emu_instances)" = 0 ] || fail "instances left after destroy"
stop_dumontd
echo "PASS vast_e2e_test"
