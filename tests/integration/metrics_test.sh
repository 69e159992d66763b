#!/usr/bin/env bash
# GET /metrics is valid Prometheus exposition format (promtool from Debian's prometheus package).
BIN=$1
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
start_dumontd "$TMP/data"
curl -fsS "$URL/health" >/dev/null
curl -sS "$URL/api/v1/auth/me" >/dev/null
curl -sS -XPOST "$URL/api/v1/auth/login" -d '{"email":1}' >/dev/null
curl -sS "$URL/api/v1/nowhere" >/dev/null
curl -fsS "$URL/metrics" > "$TMP/metrics.txt"
promtool check metrics < "$TMP/metrics.txt" || fail "promtool rejected /metrics"
grep -q 'route="/api/v1/auth/login",code="400"' "$TMP/metrics.txt" || fail "login 400 not counted"
grep -q 'route="unmatched",code="404"' "$TMP/metrics.txt" || fail "unmatched route not counted"
stop_dumontd
echo "PASS metrics_test"
