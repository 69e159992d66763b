#!/usr/bin/env bash
# A private PostgreSQL 15 for tests: `pg_harness.sh start STATE_DIR` runs initdb (as the unprivileged
# `postgres` user when we are root, since initdb refuses root) into a temp dir, starts the server on a
# free loopback port with trust auth, and writes the admin URL to STATE_DIR/url.
# `pg_harness.sh stop STATE_DIR` stops it and removes everything.
set -euo pipefail
cmd=${1:?start|stop}
state=${2:?state dir}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "pg_harness: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  mkdir -p "$state"
  "$0" stop "$state" >/dev/null 2>&1 || true
  mkdir -p "$state"
  tmp=$(mktemp -d /tmp/dumont-pg.XXXXXX)
  echo "$tmp" > "$state/dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$tmp"
  as_pg "$PGBIN/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --no-instructions >"$state/initdb.log" 2>&1 \
    || { cat "$state/initdb.log" >&2; exit 1; }
  for attempt in $(seq 1 20); do
    port=$(( 20000 + RANDOM % 40000 ))
    if as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $tmp -c fsync=off -c max_connections=200" start >/dev/null 2>&1; then
      echo "postgresql://postgres@127.0.0.1:$port/postgres" > "$state/url"
      echo "pg_harness: PostgreSQL on 127.0.0.1:$port ($tmp)"
      exit 0
    fi
  done
  echo "pg_harness: could not start PostgreSQL; log:" >&2
  cat "$tmp/server.log" >&2 || true
  exit 1
  ;;
stop)
  [ -f "$state/dir" ] || exit 0
  tmp=$(cat "$state/dir")
  if [ -d "$tmp/data" ]; then as_pg "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$tmp" "$state/dir" "$state/url"
  echo "pg_harness: stopped"
  ;;
*) echo "usage: $0 start|stop STATE_DIR" >&2; exit 2 ;;
esac
