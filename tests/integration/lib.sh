# Shared helpers for the end-to-end scripts: start/stop the real dumontd and wait for it.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; [ -n "${LOG:-}" ] && [ -f "$LOG" ] && { echo "--- dumontd log:" >&2; tail -30 "$LOG" >&2; }; exit 1; }
pass() { echo "ok: $*"; }

# start_dumontd DATA_DIR [extra args...]: sets PID, URL, OUT, LOG.
start_dumontd() {
  local data=$1; shift
  OUT=$(mktemp); LOG=$(mktemp)
  "$BIN/dumontd" --data-dir "$data" --listen "${LISTEN:-127.0.0.1:0}" --set auth.password_hash=fast "$@" >"$OUT" 2>"$LOG" &
  PID=$!
  for _ in $(seq 1 100); do
    URL=$(grep -o 'running at http://[0-9.:]*' "$OUT" 2>/dev/null | head -1 | sed 's/running at //') || true
    [ -n "$URL" ] && break
    kill -0 "$PID" 2>/dev/null || fail "dumontd exited early: $(cat "$LOG")"
    sleep 0.1
  done
  [ -n "$URL" ] || fail "dumontd did not print its URL"
  PORT=${URL##*:}
}

stop_dumontd() {
  kill -TERM "$PID"
  local rc=0
  wait "$PID" || rc=$?
  [ "$rc" -eq 0 ] || fail "dumontd exited with $rc after SIGTERM"
  grep -q "dumontd stopped" "$LOG" || fail "dumontd did not log a clean stop"
}

# A process is alive if it exists and is not a zombie waiting for its parent (init here) to reap it.
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
