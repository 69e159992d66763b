#!/usr/bin/env bash
# The runpod-emulator binary (tests/emulators; NOT the real RunPod) driven with curl as any GraphQL
# client would: wrong key 401 -> deploy a pod -> RUNNING with runtime null -> runtime with a public
# 22/tcp port, and a real dumont-agent running with the deploy's env -> stop ends the agent -> resume
# -> terminate removes the pod and its machine; a second terminate is "pod not found to terminate".
# dumontd is not involved: the RunPod provider is not wired into it yet.
# Usage: runpod_e2e_test.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d)
EPID=
cleanup() {
  [ -n "$EPID" ] && kill "$EPID" 2>/dev/null && wait "$EPID" 2>/dev/null
  for p in "$TMP"/emu/machines/*/agent.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
KEY=runpod-test-key-$RANDOM
RUNPOD_EMULATOR_API_KEY=$KEY "$BIN/runpod-emulator" --listen 127.0.0.1:0 --state-dir "$TMP/emu" \
  --agent "$BIN/dumont-agent" --pull-seconds 1 --ports-delay 0.5 >"$TMP/emu.url" 2>"$TMP/emu.log" &
EPID=$!
for _ in $(seq 1 50); do [ -s "$TMP/emu.url" ] && break; sleep 0.1; done
GQL_URL=$(head -1 "$TMP/emu.url"); [ -n "$GQL_URL" ] || fail "emulator did not start: $(cat "$TMP/emu.log")"
gql() { jq -n --arg q "$1" '{query: $q}' | curl -sS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d @- "$GQL_URL"; }
pod() { gql "query { pod(input: {podId: \"$1\"}) { desiredStatus runtime { ports { ip isIpPublic privatePort publicPort type } } } }"; }

code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong' -H 'Content-Type: application/json' \
  -d '{"query":"{ myself { pods { id } } }"}' "$GQL_URL")
[ "$code" = 401 ] || fail "a wrong key got HTTP $code, not 401"
pass "a wrong API key is refused with 401"

GPU=$(gql '{ gpuTypes { id } }' | jq -r '.data.gpuTypes[0].id')
ID=$(gql "mutation { podFindAndDeployOnDemand(input: {name: \"dc-e2e-1\", imageName: \"dumont/agent\", gpuTypeId: \"$GPU\",
  cloudType: SECURE, gpuCount: 1, containerDiskInGb: 40, ports: \"22/tcp\",
  env: [{key: \"DUMONT_AGENT_SERVER\", value: \"http://127.0.0.1:9\"}, {key: \"DUMONT_AGENT_ENROLL_TOKEN\", value: \"det_e2e\"}]}) { id } }" | jq -r '.data.podFindAndDeployOnDemand.id')
[ -n "$ID" ] && [ "$ID" != null ] || fail "deploy returned no pod id"
[ "$(pod "$ID" | jq -r '.data.pod.desiredStatus + " " + (.data.pod.runtime|tostring)')" = "RUNNING null" ] \
  || fail "a new pod should be RUNNING with runtime null: $(pod "$ID")"
for _ in $(seq 1 100); do
  [ "$(pod "$ID" | jq '[.data.pod.runtime.ports[]? | select(.privatePort == 22 and .type == "tcp" and .isIpPublic)] | length')" = 1 ] && break
  sleep 0.1
done
[ "$(pod "$ID" | jq '.data.pod.runtime.ports | length')" = 1 ] || fail "no public 22/tcp port: $(pod "$ID")"
AGENT=$(cat "$TMP"/emu/machines/runpod-"$ID"/agent.pid)
alive "$AGENT" || fail "the pod's dumont-agent is not running"
for _ in $(seq 1 100); do grep -q '127.0.0.1:9' "$TMP/emu/machines/runpod-$ID/agent.log" && break; sleep 0.05; done
grep -q '127.0.0.1:9' "$TMP/emu/machines/runpod-$ID/agent.log" || fail "the agent did not get the deploy's env"
pass "pod $ID running with a public 22/tcp port and a real agent started with the deploy's env"

[ "$(gql "mutation { podStop(input: {podId: \"$ID\"}) { desiredStatus } }" | jq -r .data.podStop.desiredStatus)" = EXITED ] \
  || fail "podStop"
for _ in $(seq 1 50); do alive "$AGENT" || break; sleep 0.05; done
alive "$AGENT" && fail "the agent survived podStop"
[ "$(gql "mutation { podResume(input: {podId: \"$ID\", gpuCount: 1}) { desiredStatus } }" | jq -r .data.podResume.desiredStatus)" = RUNNING ] \
  || fail "podResume"
for _ in $(seq 1 100); do [ "$(pod "$ID" | jq '.data.pod.runtime != null')" = true ] && break; sleep 0.1; done
# The new agent writes its pid file itself, a moment after the restart.
for _ in $(seq 1 100); do alive "$(cat "$TMP/emu/machines/runpod-$ID/agent.pid")" && break; sleep 0.05; done
alive "$(cat "$TMP/emu/machines/runpod-$ID/agent.pid")" || fail "no agent after podResume"
pass "podStop ends the agent; podResume starts it again"

gql "mutation { podTerminate(input: {podId: \"$ID\"}) }" | jq -e '.errors == null' >/dev/null || fail "podTerminate"
[ "$(pod "$ID" | jq -r .data.pod)" = null ] || fail "the pod is still there after podTerminate"
[ -d "$TMP/emu/machines/runpod-$ID" ] && fail "the pod's machine directory is still there"
[ "$(gql "mutation { podTerminate(input: {podId: \"$ID\"}) }" | jq -r '.errors[0].message')" = "pod not found to terminate" ] \
  || fail "a second podTerminate should say 'pod not found to terminate'"
pass "podTerminate removes the pod and its machine; a second one is 'pod not found to terminate'"
echo "PASS runpod_e2e_test"
