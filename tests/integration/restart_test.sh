#!/usr/bin/env bash
# End to end on the real binaries: first-run admin, register -> login -> me from the CLI and from
# curl, then a restart of dumontd: the account, the session and the signing key survive.
# Usage: restart_test.sh BIN_DIR sqlite|postgresql
BIN=$1; BACKEND=$2
source "$(dirname "$0")/lib.sh"
TMP=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
export HOME=$TMP/home XDG_CONFIG_HOME= ; mkdir -p "$HOME"
unset DUMONT_API_URL DUMONT_PASSWORD

DBARGS=()
if [ "$BACKEND" = postgresql ]; then
  ADMIN_URL=$(cat "$DUMONT_TEST_PG_STATE/url") || fail "no PostgreSQL fixture"
  DB=e2e_$RANDOM$RANDOM
  psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" || fail "createdb"
  DBARGS=(--db "${ADMIN_URL%/*}/$DB")
fi

start_dumontd "$TMP/data" "${DBARGS[@]}"
curl -fsS "$URL/health" | jq -e ".status == \"ok\" and .database.backend == \"$BACKEND\"" >/dev/null || fail "health"
pass "dumontd up on $BACKEND at $URL"

ADMIN_PW=$(sed -n 's/^ *password: //p' "$OUT")
[ -n "$ADMIN_PW" ] || fail "first start did not show the admin password"
grep -q "$ADMIN_PW" "$LOG" && fail "the admin password leaked into the log"
curl -fsS -XPOST "$URL/api/v1/auth/login" -d "{\"email\":\"admin@dumont.local\",\"password\":\"$ADMIN_PW\"}" | jq -e .access_token >/dev/null \
  || fail "first-run admin cannot log in"
pass "first-run admin password shown once on stdout, not logged, and works"

D="$BIN/dumont --base-url $URL"
export DUMONT_PASSWORD='correct horse battery'
$D auth register --email E2E@Example.com | grep -q "registered e2e@example.com" || fail "cli register"
$D auth login --email e2e@example.com | grep -q "logged in" || fail "cli login"
[ "$(stat -c %a "$HOME/.config/dumont/credentials.json")" = 600 ] || fail "credentials file is not 0600"
$D --json auth me | jq -e '.user.email == "e2e@example.com" and .user.role == "user"' >/dev/null || fail "cli me"
pass "CLI register -> login -> me"

TOKEN=$(curl -fsS -XPOST "$URL/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"e2e@example.com","password":"correct horse battery"}' | jq -r .access_token)
curl -fsS "$URL/api/auth/me" -H "Authorization: Bearer $TOKEN" | jq -e '.user.email == "e2e@example.com"' >/dev/null || fail "curl me"
pass "curl login -> me (also through the /api alias)"

stop_dumontd
pass "SIGTERM: clean shutdown"
LISTEN=127.0.0.1:$PORT start_dumontd "$TMP/data" "${DBARGS[@]}"
grep -q "password:" "$OUT" && fail "a second start must not create another admin"
$D --json auth me | jq -e '.user.email == "e2e@example.com"' >/dev/null || fail "session lost across restart"
curl -fsS "$URL/api/v1/auth/me" -H "Authorization: Bearer $TOKEN" | jq -e '.user.email == "e2e@example.com"' >/dev/null \
  || fail "access token rejected after restart (signing key not kept?)"
curl -fsS -XPOST "$URL/api/v1/auth/login" -d '{"email":"e2e@example.com","password":"correct horse battery"}' \
  | jq -e .access_token >/dev/null || fail "login after restart"
pass "account, session and signing key survive a restart on $BACKEND"

$D auth logout | grep -q "logged out" || fail "cli logout"
set +e; $D auth me >/dev/null 2>"$TMP/err"; rc=$?; set -e
[ "$rc" -eq 4 ] || fail "me after logout should exit 4, got $rc"
grep -q "dumont auth login" "$TMP/err" || fail "not-logged-in message should say how to log in"
pass "logout; me then exits 4 with a hint"

stop_dumontd
set +e; $D health >/dev/null 2>"$TMP/err"; rc=$?; set -e
[ "$rc" -eq 3 ] || fail "health against a stopped server should exit 3, got $rc"
grep -q "cannot reach dumontd at $URL" "$TMP/err" || fail "unreachable message: $(cat "$TMP/err")"
{ $D --json health || true; } | jq -e '.error.code == "unavailable"' >/dev/null || fail "--json error shape"
pass "unreachable server: exit 3, message names the URL"
echo "PASS restart_test $BACKEND"
