#!/usr/bin/env bash
# Heartbeat ingestion benchmark (`make bench-api`): dumontd vs a FastAPI+uvicorn reference on
# POST /api/v1/agent/status, then the "100k agents" scenario (constant 10k heartbeats/s) on SQLite
# and PostgreSQL. Writes bench/results/api.json. See bench/README.md, section "API".
#
# Environment (defaults in brackets):
#   API_AGENTS          seeded agents/instances [100000]
#   API_SEED_STATE      error | provisioning [error]; see bench/api_seed.cc and the README for why
#   API_CONNS           wrk connections [32]     API_THREADS  wrk threads [2]
#   API_WARMUP_S        wrk warm-up per server [5]   API_DURATION_S  measured wrk run [20]
#   API_SCALE_RATE      constant rate of the scale runs [10000]
#   API_SCALE_S         scale run length in seconds [60] (300 = the issue's 5 minutes)
#   API_SCALE_CONNS     loadgen connections [64]
#   API_SCALE_BACKENDS  [sqlite postgresql]
#   API_SKIP_COMPARE    1 = only the scale runs
#   API_BUILD_DIR       scratch CMake project for api_seed/api_loadgen [/tmp/apibench]
#   API_OUT             [bench/results/api.json]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=/usr/bin/python3
DUMONTD="${DUMONTD_BIN:-$ROOT/build/bin/dumontd}"
N="${API_AGENTS:-100000}"
SEED_STATE="${API_SEED_STATE:-error}"
CONNS="${API_CONNS:-32}"
THREADS="${API_THREADS:-2}"
WARMUP="${API_WARMUP_S:-5}"
DURATION="${API_DURATION_S:-20}"
SCALE_RATE="${API_SCALE_RATE:-10000}"
SCALE_S="${API_SCALE_S:-60}"
SCALE_CONNS="${API_SCALE_CONNS:-64}"
BACKENDS="${API_SCALE_BACKENDS:-sqlite postgresql}"
BUILD="${API_BUILD_DIR:-/tmp/apibench}"
OUT="${API_OUT:-$ROOT/bench/results/api.json}"

log() { printf '[bench-api %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'bench-api: ERROR: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d /tmp/dumont-apibench.XXXXXX)
PIDS=()
PG_STATE=""
cleanup() {
  local rc=$?
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  [ -n "$PG_STATE" ] && bash "$ROOT/tests/pg_harness.sh" stop "$PG_STATE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ preconditions
[ -x "$DUMONTD" ] || die "dumontd not found: $DUMONTD (run 'make build')"
need=()
command -v wrk >/dev/null || need+=(wrk)
"$PY" -c 'import fastapi' 2>/dev/null || need+=(python3-fastapi)
"$PY" -c 'import uvicorn' 2>/dev/null || need+=(uvicorn)
"$PY" -c 'import uvloop, httptools' 2>/dev/null || need+=(python3-uvloop python3-httptools)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get install -y "${need[@]}" >&2
fi

# ------------------------------------------------------------------ our two tools (never in build/)
mkdir -p "$BUILD"
cat > "$BUILD/CMakeLists.txt.new" <<EOF
cmake_minimum_required(VERSION 3.20)
project(dumont_apibench CXX)
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE RelWithDebInfo)
endif()
set(DUMONT_SRC $ROOT CACHE PATH "the Dumont source tree")
set(DUMONT_BUILD $ROOT/build CACHE PATH "its build tree (static libraries)")
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
add_executable(api_seed \${DUMONT_SRC}/bench/api_seed.cc)
target_include_directories(api_seed PRIVATE \${DUMONT_SRC}/src \${DUMONT_BUILD}/generated)
target_link_libraries(api_seed PRIVATE
  \${DUMONT_BUILD}/src/auth/libdumont_auth.a
  \${DUMONT_BUILD}/src/store/libdumont_store.a
  \${DUMONT_BUILD}/src/common/libdumont_common.a
  sqlite3 pq ssl crypto PkgConfig::SODIUM Threads::Threads)
add_executable(api_loadgen \${DUMONT_SRC}/bench/api_loadgen.cc)
target_link_libraries(api_loadgen PRIVATE Threads::Threads)
EOF
cmp -s "$BUILD/CMakeLists.txt.new" "$BUILD/CMakeLists.txt" || cp "$BUILD/CMakeLists.txt.new" "$BUILD/CMakeLists.txt"
rm -f "$BUILD/CMakeLists.txt.new"
[ -f "$BUILD/build/build.ninja" ] || cmake -S "$BUILD" -B "$BUILD/build" -G Ninja >/dev/null
cmake --build "$BUILD/build" >&2
SEEDER="$BUILD/build/api_seed"
LOADGEN="$BUILD/build/api_loadgen"

# ------------------------------------------------------------------ helpers
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_s() { awk '{printf "%.2f", ($14+$15)/100}' "/proc/$1/stat"; }  # utime+stime in seconds (USER_HZ=100)
rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
wait_http() {  # url pid timeout_s
  local t=0
  until curl -sf -o /dev/null "$1"; do
    kill -0 "$2" 2>/dev/null || die "server $2 exited while starting (see its log in $WORK)"
    sleep 0.05; t=$((t + 1)); [ $t -lt $(($3 * 20)) ] || die "server not answering $1 after $3 s"
  done
}
now() { date +%s.%N; }
start_dumontd() {  # db_url port log -> sets DPID, STARTUP_S
  local t0; t0=$(now)
  "$DUMONTD" --data-dir "$WORK/data" --db "$1" --listen "127.0.0.1:$2" --set fleet.sim_provider=true \
    --set auth.password_hash=fast --set log.level=warn >"$3" 2>&1 &
  DPID=$!; PIDS+=("$DPID")
  wait_http "http://127.0.0.1:$2/health" "$DPID" 600
  STARTUP_S=$(echo "$(now) - $t0" | bc)
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
check_contract() {  # port label: 200 / 401 / 403 as dumontd answers them
  local ok bad other tok id
  read -r tok id < "$WORK/agents.txt"
  local body="{\"instance_id\":\"$id\",\"gpus\":[{\"index\":0,\"util_pct\":50}]}"
  ok=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "http://127.0.0.1:$1/api/v1/agent/status" \
    -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' -d "$body")
  bad=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "http://127.0.0.1:$1/api/v1/agent/status" \
    -H "Authorization: Bearer dat_unknown" -H 'Content-Type: application/json' -d "$body")
  other=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "http://127.0.0.1:$1/api/v1/agent/status" \
    -H "Authorization: Bearer dat_bench_1" -H 'Content-Type: application/json' -d "$body")
  log "$2 contract: own token $ok, unknown token $bad, other agent's token $other (want 200 401 403)"
  [ "$ok/$bad/$other" = "200/401/403" ] || die "$2 does not answer like the contract"
}
run_wrk() {  # port label pid -> JSON on stdout with cpu
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$ROOT/bench/api_wrk.lua" "http://127.0.0.1:$1" -- "$WORK/agents.txt" >/dev/null
  local c0 c1 line
  c0=$(cpu_s "$3")
  line=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$ROOT/bench/api_wrk.lua" "http://127.0.0.1:$1" \
    -- "$WORK/agents.txt" | tee "$WORK/wrk_$2.txt" | sed -n 's/^WRKJSON //p')
  c1=$(cpu_s "$3")
  "$PY" - "$line" "$c0" "$c1" <<'EOF'
import json, sys
w = json.loads(sys.argv[1]); cpu = float(sys.argv[3]) - float(sys.argv[2])
errs = sum(w["errors"].values())
print(json.dumps({"rps": round(w["rps"], 1), "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "cpu_s": round(cpu, 2),
                  "rps_per_cpu_s": round(w["requests"] / cpu, 1) if cpu > 0 else None,
                  "requests": w["requests"], "errors": errs, "error_detail": w["errors"]}))
EOF
}
prime() {  # port: one heartbeat from every agent (fills telemetry, makes write-behind state steady)
  local secs=$(( (N + 9999) / 10000 ))
  "$LOADGEN" --target "127.0.0.1:$1" --agents "$WORK/agents.txt" --rate 10000 --duration "$secs" \
    --connections "$SCALE_CONNS" >"$WORK/prime_$1.json"
  log "prime pass on port $1: $(cut -c1-220 "$WORK/prime_$1.json")"
}

MACHINE=$("$PY" - <<'EOF'
import os, platform, re
cpu = "?"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"): cpu = l.split(":", 1)[1].strip(); break
mem = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) / 1048576
print(f"{os.cpu_count()} cores {cpu}, {mem:.1f} GiB RAM, Linux {platform.release()}; client and server share the cores")
EOF
)
log "machine: $MACHINE; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- src app 2>/dev/null | wc -l)

# ------------------------------------------------------------------ 1. dumontd vs FastAPI (SQLite)
COMPARE_JSON='null'
if [ "${API_SKIP_COMPARE:-0}" != 1 ]; then
  mkdir -p "$WORK/data"
  log "seeding $N agents (state $SEED_STATE) into SQLite"
  "$SEEDER" --db "sqlite://$WORK/cmp.db" --count "$N" --out "$WORK/agents.txt" --state "$SEED_STATE" >&2
  sqlite3 "$WORK/cmp.db" ".backup '$WORK/ref.db'"   # the reference gets the same rows
  PORT=$(free_port)
  start_dumontd "sqlite://$WORK/cmp.db" "$PORT" "$WORK/dumontd_cmp.log"
  log "dumontd up in ${STARTUP_S}s (RSS $(rss_mb "$DPID") MB)"
  check_contract "$PORT" dumontd
  prime "$PORT"
  log "wrk on dumontd: ${CONNS} connections, ${THREADS} threads, ${WARMUP}s warm-up + ${DURATION}s"
  D_JSON=$(run_wrk "$PORT" dumontd "$DPID")
  log "dumontd: $D_JSON"
  stop_pid "$DPID"

  FPORT=$(free_port)
  DUMONT_REF_DB="$WORK/ref.db" "$PY" -m uvicorn --app-dir "$ROOT/bench" api_ref_fastapi:app --host 127.0.0.1 \
    --port "$FPORT" --workers 1 --loop uvloop --http httptools --no-access-log --log-level warning \
    >"$WORK/fastapi.log" 2>&1 &
  FPID=$!; PIDS+=("$FPID")
  wait_http "http://127.0.0.1:$FPORT/healthz" "$FPID" 60
  check_contract "$FPORT" fastapi
  prime "$FPORT"
  log "wrk on FastAPI"
  F_JSON=$(run_wrk "$FPORT" fastapi "$FPID")
  log "fastapi: $F_JSON"
  stop_pid "$FPID"
  COMPARE_JSON=$("$PY" - "$D_JSON" "$F_JSON" <<'EOF'
import json, sys
d, f = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"dumontd": d, "fastapi": f,
                  "ratio_rps_per_cpu_s": round(d["rps_per_cpu_s"] / f["rps_per_cpu_s"], 2)}))
EOF
)
  rm -rf "$WORK/data" "$WORK"/cmp.db* "$WORK"/ref.db*
fi

# ------------------------------------------------------------------ 2. 100k agents at 10k heartbeats/s
SCALE='{}'
for be in $BACKENDS; do
  mkdir -p "$WORK/data"
  if [ "$be" = sqlite ]; then
    URL="sqlite://$WORK/scale.db"
  else
    PG_STATE="$WORK/pg"
    bash "$ROOT/tests/pg_harness.sh" start "$PG_STATE" >&2
    URL=$(cat "$PG_STATE/url")
  fi
  log "[$be] seeding $N agents"
  t0=$(now)
  "$SEEDER" --db "$URL" --count "$N" --out "$WORK/agents.txt" --state "$SEED_STATE" >&2
  SEED_S=$(echo "$(now) - $t0" | bc)
  PORT=$(free_port)
  start_dumontd "$URL" "$PORT" "$WORK/dumontd_$be.log"
  log "[$be] dumontd up in ${STARTUP_S}s"
  prime "$PORT"
  RSS0=$(rss_mb "$DPID"); C0=$(cpu_s "$DPID")
  log "[$be] $SCALE_RATE heartbeats/s for ${SCALE_S}s over $SCALE_CONNS connections (RSS $RSS0 MB)"
  ( while sleep 10; do echo "$(date +%s) $(rss_mb "$DPID")"; done ) >"$WORK/rss_$be.txt" 2>/dev/null &
  SAMPLER=$!; PIDS+=("$SAMPLER")
  "$LOADGEN" --target "127.0.0.1:$PORT" --agents "$WORK/agents.txt" --rate "$SCALE_RATE" --duration "$SCALE_S" \
    --connections "$SCALE_CONNS" >"$WORK/scale_$be.json"
  stop_pid "$SAMPLER"
  RSS1=$(rss_mb "$DPID"); C1=$(cpu_s "$DPID")
  if [ "$be" = sqlite ]; then
    DB_BYTES=$(cat "$WORK"/scale.db* | wc -c)
  else
    DB_BYTES=$(psql "$URL" -Atc 'SELECT pg_database_size(current_database())')
  fi
  WARN=$(grep -c -i 'warn\|error' "$WORK/dumontd_$be.log" || true)
  stop_pid "$DPID"
  SCALE=$("$PY" - "$SCALE" "$be" "$WORK/scale_$be.json" "$RSS0" "$RSS1" "$DB_BYTES" "$STARTUP_S" "$SEED_S" "$C0" "$C1" \
    "$WORK/rss_$be.txt" "$WARN" <<'EOF'
import json, sys
scale, be, f, rss0, rss1, dbb, st, seed, c0, c1, rssf, warn = sys.argv[1:]
r = json.load(open(f))
samples = [float(l.split()[1]) for l in open(rssf) if l.strip()]
s = json.loads(scale)
s[be] = {"target_rps": r["target_rps"], "achieved_rps": round(r["achieved_rps"], 1), "errors": r["errors"],
         "non2xx": r["non2xx"], "socket_errors": r["socket_errors"], "timeouts": r["timeouts"],
         "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "p999_ms": r["p999_ms"], "max_ms": r["max_ms"],
         "rss_start_mb": float(rss0), "rss_end_mb": float(rss1), "rss_samples_mb": samples,
         "db_bytes": int(dbb), "duration_s": r["duration_s"], "server_cpu_s": round(float(c1) - float(c0), 2),
         "startup_s": round(float(st), 2), "seed_s": round(float(seed), 1), "log_warnings": int(warn),
         "connections": r["connections"], "completed_per_second": r["per_second"]}
print(json.dumps(s))
EOF
)
  log "[$be] $(echo "$SCALE" | "$PY" -c "import json,sys; d=json.load(sys.stdin)['$be']; d.pop('completed_per_second'); print(d)")"
  rm -rf "$WORK/data" "$WORK"/scale.db*
  if [ -n "$PG_STATE" ]; then bash "$ROOT/tests/pg_harness.sh" stop "$PG_STATE" >&2; PG_STATE=""; fi
done

# ------------------------------------------------------------------ results
mkdir -p "$(dirname "$OUT")"
"$PY" - "$OUT" "$MACHINE" "$COMPARE_JSON" "$SCALE" "$N" "$SEED_STATE" "$CONNS" "$THREADS" "$DURATION" "$WARMUP" \
  "$COMMIT" "$DIRTY" <<'EOF'
import json, sys, time
out, machine, cmp_, scale, n, state, conns, threads, dur, warm, commit, dirty = sys.argv[1:]
cmp_ = json.loads(cmp_)
res = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
       "dumont_commit": commit + (f" + {dirty} uncommitted files in src/app" if int(dirty) else ""),
       "agents": int(n), "seed_state": state,
       "wrk": {"connections": int(conns), "threads": int(threads), "duration_s": int(dur), "warmup_s": int(warm)}}
if cmp_:
    res.update(cmp_)
res["scale"] = json.loads(scale)
json.dump(res, open(out, "w"), indent=2)
print(json.dumps({k: v for k, v in res.items()}, indent=2)[:4000])
EOF
log "results in $OUT"
