#!/usr/bin/env bash
# Snapshot benchmark: dumont vs restic, side by side, same data, same machine, same kind of repository.
#
# Local leg (repositories in local directories), for each workspace size: (a) first backup (cold page
# cache when we can drop it), (a2) unchanged re-backup, (b) incremental backup after mutating 2 % of
# the files, (c) full restore of the latest snapshot into an empty directory, verified byte for byte
# against the source, (d) repository size on disk (du -sb).
# S3 leg (both tools through the same Ceph RADOS Gateway with a bluestore OSD on loopback, started by
# tests/rgw_harness.sh, one fresh cluster per size, one bucket per tool): the same steps, plus client
# CPU (the tool's process, /usr/bin/time) and server CPU (ceph-osd, radosgw, ceph-mon from /proc) per
# step, and the bucket sizes from radosgw-admin.
# Writes bench/results/snapshot.json (a leg that did not run keeps its previous section). See bench/README.md.
#
# Environment:
#   BENCH_SIZES   space-separated workspace sizes in GB (default "2 7"; "0.5" for a quick run)
#   SNAPSHOT_BENCH_LOCAL  1 (default) = run the local-directory leg; 0 = skip it
#   SNAPSHOT_BENCH_S3     auto (default: run if the Ceph packages are installed, else say why not) |
#                         1 (must run) | 0 (skip)
#   BENCH_S3_SIZES        sizes for the S3 leg (default: BENCH_SIZES; each must also be in BENCH_SIZES)
#   BENCH_S3_RESTIC_ARGS  extra restic options for the S3 leg, e.g. "-o s3.connections=32" (default none)
#   RGW_BLUESTORE_BYTES   bluestore block file size (default 3 x size + 4 GiB, sparse, under /tmp)
#   BENCH_RGW_TCP_NODELAY 1 (default) = radosgw with tcp_nodelay=1; 0 = Ceph's default (Nagle on: a
#                         small response waits ~40 ms for the client's delayed ACK, a high-latency server)
#   BENCH_RGW_ALLOCATOR   tcmalloc (default, what upstream Ceph links) or libc (Debian 12's build: glibc
#                         malloc; radosgw then spends ~4x the CPU per GB served on this VM's page faults)
#   BENCH_S3_SECTION      key of the S3 results in the JSON file (default "s3"), e.g. "s3_rgw_nagle"
#   BENCH_UNCHANGED_RUNS  unchanged re-backups per tool, interleaved; the median is reported (odd,
#                 default 3: one ~1 s run moves 20-30 % with this VM's speed)
#   BENCH_INCREMENTAL_RUNS  backups after a 2 % mutation per tool (default 3): mutate (seeds 7, 107,
#                 207... locally; 8, 108... on S3), dumont, restic, repeat; the median is reported
#   BENCH_DIR     scratch directory for workspaces, repositories and restores (default /tmp/dumont-bench)
#   BENCH_KEEP    1 = keep BENCH_DIR at the end (default: delete it)
#   BENCH_SEED    generator seed (default 1)
#   BENCH_OUT     results file (default bench/results/snapshot.json)
#   DUMONT_BIN    dumont binary (default build/bin/dumont)
#   RESTIC_BIN    restic binary (default: restic on PATH)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GEN="$ROOT/../shared/bench/gen_workspace.py"
PY=/usr/bin/python3
TIME=/usr/bin/time
SIZES="${BENCH_SIZES:-2 7}"
BDIR="${BENCH_DIR:-/tmp/dumont-bench}"
KEEP="${BENCH_KEEP:-0}"
SEED="${BENCH_SEED:-1}"
OUT="${BENCH_OUT:-$ROOT/bench/results/snapshot.json}"
DUMONT="${DUMONT_BIN:-$ROOT/build/bin/dumont}"
RESTIC="${RESTIC_BIN:-$(command -v restic || true)}"
MUTATE_PERCENT=2
UNCHANGED_RUNS="${BENCH_UNCHANGED_RUNS:-3}"
INCREMENTAL_RUNS="${BENCH_INCREMENTAL_RUNS:-3}"
MUTATE_SEED=7
S3_MUTATE_SEED=8
RUN_LOCAL="${SNAPSHOT_BENCH_LOCAL:-1}"
RUN_S3="${SNAPSHOT_BENCH_S3:-auto}"
S3_SIZES="${BENCH_S3_SIZES:-$SIZES}"
S3_RESTIC_ARGS="${BENCH_S3_RESTIC_ARGS:-}"
S3_TCP_NODELAY="${BENCH_RGW_TCP_NODELAY:-1}"
S3_ALLOCATOR="${BENCH_RGW_ALLOCATOR:-tcmalloc}"
S3_SECTION="${BENCH_S3_SECTION:-s3}"
HARNESS="$ROOT/tests/rgw_harness.sh"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ preconditions
[ -f "$GEN" ] || die "workspace generator not found: $GEN (expected ../shared/bench/gen_workspace.py next to the repository root $ROOT)"
[ -x "$PY" ] || die "$PY not found"
[ -x "$TIME" ] || die "$TIME not found (Debian package 'time')"
[ -x "$DUMONT" ] || die "dumont binary not found: $DUMONT (run 'make build')"
[ -n "$RESTIC" ] && [ -x "$RESTIC" ] || die "restic not found (Debian package 'restic')"
for s in $SIZES; do
  [[ "$s" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "BENCH_SIZES: '$s' is not a number of GB"
done
case "$BDIR" in /|"") die "BENCH_DIR must not be '$BDIR'";; esac
[[ "$UNCHANGED_RUNS" =~ ^[0-9]+$ ]] && [ $((UNCHANGED_RUNS % 2)) -eq 1 ] || die "BENCH_UNCHANGED_RUNS must be an odd number (1, 3, 5...), not '$UNCHANGED_RUNS'"
[[ "$INCREMENTAL_RUNS" =~ ^[0-9]+$ ]] && [ $((INCREMENTAL_RUNS % 2)) -eq 1 ] || die "BENCH_INCREMENTAL_RUNS must be an odd number (1, 3, 5...), not '$INCREMENTAL_RUNS'"
case "$RUN_LOCAL" in 0|1) ;; *) die "SNAPSHOT_BENCH_LOCAL must be 0 or 1, not '$RUN_LOCAL'";; esac
case "$S3_TCP_NODELAY" in 0|1) ;; *) die "BENCH_RGW_TCP_NODELAY must be 0 or 1, not '$S3_TCP_NODELAY'";; esac
case "$S3_ALLOCATOR" in tcmalloc|libc) ;; *) die "BENCH_RGW_ALLOCATOR must be tcmalloc or libc, not '$S3_ALLOCATOR'";; esac
[[ "$S3_SECTION" =~ ^s3[A-Za-z0-9_]*$ ]] || die "BENCH_S3_SECTION must start with s3 (letters, digits, _), not '$S3_SECTION'"
S3_SKIP_REASON=""
case "$RUN_S3" in
  0) S3_SKIP_REASON="SNAPSHOT_BENCH_S3=0" ;;
  1|auto)
    missing=""
    for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl; do
      command -v "$b" >/dev/null || missing="$missing $b"
    done
    if [ -n "$missing" ]; then
      S3_SKIP_REASON="Ceph not installed (missing:$missing; apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common)"
      [ "$RUN_S3" = 1 ] && die "SNAPSHOT_BENCH_S3=1 but $S3_SKIP_REASON"
    fi ;;
  *) die "SNAPSHOT_BENCH_S3 must be auto, 1 or 0, not '$RUN_S3'" ;;
esac
if [ -z "$S3_SKIP_REASON" ]; then
  for s in $S3_SIZES; do
    case " $SIZES " in *" $s "*) ;; *) die "BENCH_S3_SIZES: '$s' is not in BENCH_SIZES ('$SIZES')";; esac
  done
  [ -n "$S3_SIZES" ] || S3_SKIP_REASON="BENCH_S3_SIZES is empty"
fi
[ "$RUN_LOCAL" = 1 ] || [ -z "$S3_SKIP_REASON" ] || die "nothing to run: SNAPSHOT_BENCH_LOCAL=0 and the S3 leg is skipped ($S3_SKIP_REASON)"

# Both tools get the password from the environment; no S3 / CA settings may leak in.
unset AWS_CA_BUNDLE DUMONT_REPOSITORY RESTIC_REPOSITORY RESTIC_PASSWORD_FILE RESTIC_COMPRESSION GOMAXPROCS
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION AWS_PROFILE
export DUMONT_REPO_PASSWORD="bench-password-$$"
export RESTIC_PASSWORD="$DUMONT_REPO_PASSWORD"
export RESTIC_CACHE_DIR="$BDIR/restic-cache"   # restic's default local cache, kept inside BENCH_DIR

RGW_STATE="$BDIR/rgw-state"
cleanup() {
  local rc=$?
  if [ -f "$RGW_STATE/dir" ]; then bash "$HARNESS" stop "$RGW_STATE" >/dev/null 2>&1 || true; fi
  if [ $rc -ne 0 ] && [ -s "${RAW:-}" ]; then  # the measurements so far outlive a failed run
    cp "$RAW" "${OUT%.json}.failed-run.jsonl" && log "the steps measured so far: ${OUT%.json}.failed-run.jsonl"
  fi
  if [ "$KEEP" = "1" ]; then
    log "BENCH_KEEP=1: leaving $BDIR in place"
  else
    rm -rf -- "$BDIR"
  fi
  [ $rc -eq 0 ] || printf 'bench: FAILED (exit %d)\n' "$rc" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # run cleanup (stop the RGW cluster, delete scratch) on ^C or kill too

mkdir -p "$BDIR" "$(dirname "$OUT")"
RAW="$BDIR/raw.jsonl"      # one JSON object per measurement; assembled into $OUT at the end
: > "$RAW"

# ------------------------------------------------------------------ page cache
CACHE_DROPPED=true
CACHE_NOTE="page cache dropped before every timed step"
drop_caches() {
  sync
  if [ "$CACHE_DROPPED" = true ]; then
    if [ "$(id -u)" -eq 0 ] && { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
      return 0
    fi
    CACHE_DROPPED=false
    CACHE_NOTE="could not drop the page cache (not root or /proc/sys read-only): timings are warm-cache"
    log "WARNING: $CACHE_NOTE"
  fi
}
drop_caches

# ------------------------------------------------------------------ helpers
CLK_TCK=$(getconf CLK_TCK)
SERVER_PIDS=""   # "osd=PID rgw=PID mon=PID" while the S3 leg's cluster runs

# server_ticks: "osd=T rgw=T mon=T" (utime+stime of each server daemon, all threads, in clock ticks).
server_ticks() {
  local kv name pid t out=""
  for kv in $SERVER_PIDS; do
    name=${kv%%=*} pid=${kv#*=}
    t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
    out="$out $name=${t:-0}"
  done
  echo "$out"
}
# busy_ticks: "BUSY:IRQ", CPU ticks spent by everything on the machine (all cores, not idle/iowait),
# and the part of it in hard and soft interrupts (loopback TCP is processed there, charged to no task).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9 ":" $7 + $8; exit}' /proc/stat; }
# kthread_ticks: "pid:ticks ..." of every kernel thread (I/O completion, writeback, softirq work).
kthread_ticks() {
  "$PY" -c '
import os
out = []
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        continue
    if int(f[6]) & 0x200000:   # PF_KTHREAD
        out.append("%s:%d" % (p, int(f[11]) + int(f[12])))
print(" ".join(out))'
}

# quiesce: wait (at most 30 s) until the server daemons use < 10 % of one core, so background work of
# the previous step (bluestore/rocksdb flushes, RGW bookkeeping) is not billed to the next one.
quiesce() {
  [ -n "$SERVER_PIDS" ] || return 0
  local i a b ta tb
  for i in $(seq 1 60); do
    a=$(server_ticks | tr ' ' '\n' | awk -F= 'NF==2 {s+=$2} END {print s+0}')
    sleep 0.5
    b=$(server_ticks | tr ' ' '\n' | awk -F= 'NF==2 {s+=$2} END {print s+0}')
    [ $((b - a)) -lt $((CLK_TCK / 20)) ] && return 0
  done
  log "WARNING: server still busy after 30 s of waiting"
}

# timed NAME LOGFILE cmd...  -> appends {"step":NAME,"wall_s","user_s","sys_s","max_rss_kb",
# "machine_busy_s","loadavg"[,"server_cpu_s":{osd,rgw,mon}]} to $RAW.
timed() {
  local name="$1" logf="$2"; shift 2
  local tf="$BDIR/time.$$"
  local p0=$SECONDS
  quiesce
  drop_caches
  [ $((SECONDS - p0)) -lt 10 ] || log "$name: waited $((SECONDS - p0)) s for the server to go idle, sync and the cache drop"
  local t0 t1 rc=0 s0 s1 b0 b1 k0 k1 load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  k0=$(kthread_ticks); s0=$(server_ticks); b0=$(busy_ticks)
  t0=$(date +%s.%N)
  "$TIME" -o "$tf" -f '%e %U %S %M' "$@" > "$logf" 2> "$logf.err" || rc=$?
  t1=$(date +%s.%N)
  s1=$(server_ticks); b1=$(busy_ticks); k1=$(kthread_ticks)
  if [ $rc -ne 0 ]; then
    tail -n 20 "$logf.err" >&2 || true
    die "$name failed with exit code $rc: $*"
  fi
  # /usr/bin/time's own line is the last of the file (the command may have written nothing else).
  local e u s m
  read -r e u s m < <(tail -n 1 "$tf")
  "$PY" - "$name" "$t0" "$t1" "$u" "$s" "$m" "$s0" "$s1" "$b0" "$b1" "$CLK_TCK" "$load" "$k0" "$k1" >> "$RAW" <<'EOF'
import json, sys
name, t0, t1, u, s, m, s0, s1, b0, b1, hz, load, k0, k1 = sys.argv[1:]
hz = float(hz)
ka = dict(kv.split(":") for kv in k0.split())
kb = dict(kv.split(":") for kv in k1.split())
kthreads = sum(int(t) - int(ka.get(p, 0)) for p, t in kb.items() if int(t) >= int(ka.get(p, 0)))
r = {"step": name, "wall_s": round(float(t1) - float(t0), 3), "user_s": float(u), "sys_s": float(s),
     "max_rss_kb": int(m), "machine_busy_s": round((int(b1.split(":")[0]) - int(b0.split(":")[0])) / hz, 2),
     "irq_cpu_s": round((int(b1.split(":")[1]) - int(b0.split(":")[1])) / hz, 2), "loadavg": load,
     "kthreads_cpu_s": round(kthreads / hz, 2)}
a = dict(kv.split("=") for kv in s0.split())
b = dict(kv.split("=") for kv in s1.split())
if a:
    r["server_cpu_s"] = {k: round((int(b.get(k, a[k])) - int(a[k])) / hz, 2) for k in a}
print(json.dumps(r))
EOF
  log "$name: $(tail -n 1 "$RAW")"
}

# repeated_backups PREFIX KIND RUNS SEED WS LOG_BASE DUMONT_REPO RESTIC_REPO [RESTIC_OPTION...]
# RUNS backups of WS by each tool, interleaved, as steps PREFIX/TOOL/KIND, KIND#2, KIND#3... (the
# results keep the median run). With a SEED, each pair runs after its own 2 % mutation of WS (seeds
# SEED, SEED + 100, ...) and the first pair's summaries are kept.
repeated_backups() {
  local prefix="$1" kind="$2" runs="$3" seed="$4" ws="$5" logb="$6" drepo="$7" rrepo="$8" k sfx
  shift 8
  for k in $(seq 1 "$runs"); do
    sfx=""; [ "$k" -eq 1 ] || sfx="#$k"
    if [ -n "$seed" ]; then
      log "mutating $MUTATE_PERCENT % of the files (seed $((seed + 100 * (k - 1))))"
      "$PY" "$GEN" --mutate "$ws" --percent "$MUTATE_PERCENT" --seed "$((seed + 100 * (k - 1)))" > "$logb-mutate$k.json"
    fi
    timed "$prefix/dumont/$kind$sfx" "$logb-dumont-$kind$k.jsonl" "$DUMONT" snapshot --repo "$drepo" --json backup "$ws"
    [ -z "$seed" ] || [ "$k" -gt 1 ] || summary "$prefix/dumont/$kind" "$logb-dumont-$kind$k.jsonl"
    timed "$prefix/restic/$kind$sfx" "$logb-restic-$kind$k.jsonl" "$RESTIC" "$@" --repo "$rrepo" --json backup "$ws"
    [ -z "$seed" ] || [ "$k" -gt 1 ] || summary "$prefix/restic/$kind" "$logb-restic-$kind$k.jsonl"
  done
}

# summary NAME LOGFILE: keep the tool's own JSON summary line (last line with message_type summary).
summary() {
  "$PY" - "$1" "$2" >> "$RAW" <<'EOF2'
import json, sys
name, path = sys.argv[1:]
s = {}
for line in open(path, errors="replace"):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if isinstance(o, dict) and o.get("message_type") == "summary":
        s = o
print(json.dumps({"step": name + "/summary", "summary": s}))
EOF2
}

# synced NAME: time a `sync` right after a restore (dirty pages the tool left for the kernel to write).
synced() {
  local t0 t1
  t0=$(date +%s.%N); sync; t1=$(date +%s.%N)
  echo "{\"step\":\"$1/sync\",\"wall_s\":$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b-a}')}" >> "$RAW"
  log "$1: sync afterwards took $(tail -n 1 "$RAW")"
}

# manifest DIR OUTFILE: sorted "type path [sha256|link target|size]" lines for everything under DIR.
manifest() {
  local dir="$1" out="$2"
  ( cd "$dir" &&
    { find . -mindepth 1 ! -type f -printf '%y %P %l\n'
      find . -type f -printf '%P\0' | xargs -0 -r -n 256 -P 2 sha256sum -- | sed 's/^\([0-9a-f]*\)  /f \1 /'
    } | LC_ALL=C sort ) > "$out"
}

verify_restore() {   # verify_restore TOOL RESTORED_DIR SOURCE_MANIFEST
  local tool="$1" dir="$2" src="$3" m="$BDIR/manifest.$1"
  [ -d "$dir" ] || die "$tool restore: expected directory $dir does not exist"
  manifest "$dir" "$m"
  if ! cmp -s "$src" "$m"; then
    echo "----- $tool restore differs from the source (first differences):" >&2
    diff "$src" "$m" | head -n 20 >&2 || true
    die "$tool RESTORED WRONG DATA ($(diff "$src" "$m" | grep -c '^[<>]' || true) manifest lines differ)"
  fi
  log "$tool restore verified: $(wc -l < "$m") entries identical to the source"
  # Not fatal: permissions and whole-second mtimes of regular files (content is what must match).
  ( cd "$ws" && find . -type f -printf '%m %TY%Tm%Td%TH%TM%TS %P\n' | sed 's/\.[0-9]* / /' | LC_ALL=C sort ) > "$m.meta.src"
  ( cd "$dir" && find . -type f -printf '%m %TY%Tm%Td%TH%TM%TS %P\n' | sed 's/\.[0-9]* / /' | LC_ALL=C sort ) > "$m.meta"
  if ! cmp -s "$m.meta.src" "$m.meta"; then
    log "WARNING: $tool restore: $(diff "$m.meta.src" "$m.meta" | grep -c '^>' || true) files differ in mode or mtime (content is identical)"
  fi
}

# ------------------------------------------------------------------ run
log "dumont $DUMONT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), $("$RESTIC" version | head -n1)"
log "sizes: $SIZES GB, scratch: $BDIR, seed $SEED, $CACHE_NOTE"
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "load average before the run: $LOAD_AT_START ($(nproc) cores)"
if [ "$RUN_LOCAL" = 1 ]; then log "local leg: sizes $SIZES"; else log "local leg: SKIPPED (SNAPSHOT_BENCH_LOCAL=0; the previous local results in $OUT are kept)"; fi
if [ -z "$S3_SKIP_REASON" ]; then
  log "S3 leg (Ceph RGW, bluestore OSD, loopback, tcp_nodelay=$S3_TCP_NODELAY, allocator $S3_ALLOCATOR, results in section \"$S3_SECTION\"): sizes $S3_SIZES"
else
  log "S3 leg: SKIPPED: $S3_SKIP_REASON (the previous S3 results in $OUT, if any, are kept)"
fi
S3_RAN=false

# s3_leg SIZE SD: the S3 comparison on the workspace $ws as it is now (after the local leg, if it ran).
s3_leg() {
  local size="$1" sd="$2" bs port dir conf ep kv
  bs="${RGW_BLUESTORE_BYTES:-$("$PY" -c "import math;print((math.ceil(3*float('$size'))+4)<<30)")}"
  log "== $size GB, S3 leg: starting Ceph RGW with a $((bs >> 30)) GiB bluestore OSD"
  local avail_gb
  avail_gb=$(df -PB1G /tmp | awk 'NR==2 {print $4}')
  log "free disk under /tmp: ${avail_gb} GB"
  # both repositories (~1.3x the workspace) in the bluestore file, plus one restored copy at a time
  "$PY" -c "import sys; sys.exit(0 if $avail_gb >= 2.5 * float('$size') + 2 else 1)" \
    || log "WARNING: ${avail_gb} GB free under /tmp may not hold the S3 leg of $size GB (~$("$PY" -c "print(round(2.5 * float('$size') + 2))") GB)"
  RGW_OSD_BACKEND=bluestore RGW_BLUESTORE_BYTES="$bs" RGW_TCP_NODELAY="$S3_TCP_NODELAY" RGW_ALLOCATOR="$S3_ALLOCATOR" bash "$HARNESS" start "$RGW_STATE" >&2 \
    || die "could not start the RADOS Gateway (tests/rgw_harness.sh start)"
  dir=$(cat "$RGW_STATE/dir"); conf="$dir/ceph.conf"
  # shellcheck disable=SC1091
  . "$RGW_STATE/env"
  ep="$DUMONT_TEST_S3_ENDPOINT"
  SERVER_PIDS="osd=$(cat "$dir/run/osd.0.fgpid") rgw=$(cat "$dir/run/rgw.fgpid") mon=$(cat "$dir/run/mon.a.fgpid")"
  local bucket_tag="${size//./p}"
  local rd_="s3:$ep/dumont-bench-$bucket_tag" rr_="s3:$ep/restic-bench-$bucket_tag"
  local -a rargs=()
  # shellcheck disable=SC2206
  [ -z "$S3_RESTIC_ARGS" ] || rargs=($S3_RESTIC_ARGS)
  local files bytes
  files=$(find "$ws" -type f | wc -l)
  bytes=$(find "$ws" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
  echo "{\"step\":\"s3/$size/workspace\",\"files\":$files,\"bytes\":$bytes,\"endpoint\":\"$ep\",\"bluestore_bytes\":$bs,\"ceph_version\":\"$(ceph-osd --version | awk '{print $3}')\"}" >> "$RAW"
  log "S3 leg workspace: $files files, $bytes bytes; repositories $rd_ and $rr_"

  "$DUMONT" snapshot --repo "$rd_" init > "$sd/s3-dumont-init.log"
  "$RESTIC" "${rargs[@]}" init --repo "$rr_" > "$sd/s3-restic-init.log"

  timed "s3/$size/dumont/backup" "$sd/s3-dumont-backup.jsonl" "$DUMONT" snapshot --repo "$rd_" --json backup "$ws"
  summary "s3/$size/dumont/backup" "$sd/s3-dumont-backup.jsonl"
  timed "s3/$size/restic/backup" "$sd/s3-restic-backup.jsonl" "$RESTIC" "${rargs[@]}" --repo "$rr_" --json backup "$ws"
  summary "s3/$size/restic/backup" "$sd/s3-restic-backup.jsonl"

  repeated_backups "s3/$size" unchanged "$UNCHANGED_RUNS" "" "$ws" "$sd/s3" "$rd_" "$rr_" "${rargs[@]}"
  repeated_backups "s3/$size" incremental "$INCREMENTAL_RUNS" "$S3_MUTATE_SEED" "$ws" "$sd/s3" "$rd_" "$rr_" "${rargs[@]}"
  local rbytes
  rbytes=$(find "$ws" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
  echo "{\"step\":\"s3/$size/restore_bytes\",\"bytes\":$rbytes}" >> "$RAW"

  # repository size: what RGW accounts for each bucket (sum of object sizes, and their count)
  local tool b
  for tool in dumont restic; do
    b="$tool-bench-$bucket_tag"
    timeout 60 radosgw-admin -c "$conf" bucket stats --bucket="$b" > "$sd/s3-$tool-bucket.json" 2>/dev/null \
      || die "radosgw-admin bucket stats --bucket=$b failed"
    "$PY" - "s3/$size/$tool/repo" "$sd/s3-$tool-bucket.json" >> "$RAW" <<'EOF'
import json, sys
name, path = sys.argv[1:]
u = json.load(open(path)).get("usage", {}).get("rgw.main", {})
print(json.dumps({"step": name, "repo_bytes": u.get("size", 0), "repo_objects": u.get("num_objects", 0)}))
EOF
  done

  log "hashing the source for verification"
  manifest "$ws" "$sd/manifest.s3.src"
  local rd="$sd/restore"
  rm -rf -- "$rd"; mkdir -p "$rd"
  timed "s3/$size/dumont/restore" "$sd/s3-dumont-restore.jsonl" "$DUMONT" snapshot --repo "$rd_" --json restore latest --target "$rd"
  synced "s3/$size/dumont/restore"
  verify_restore dumont "$rd/$(basename "$ws")" "$sd/manifest.s3.src"
  rm -rf -- "$rd"; mkdir -p "$rd"
  timed "s3/$size/restic/restore" "$sd/s3-restic-restore.log" "$RESTIC" "${rargs[@]}" --repo "$rr_" restore latest --target "$rd"
  synced "s3/$size/restic/restore"
  verify_restore restic "$rd$ws" "$sd/manifest.s3.src"
  rm -rf -- "$rd"

  # peak memory of the server daemons over the whole leg
  local vm=""
  for kv in $SERVER_PIDS; do
    vm="$vm,\"${kv%%=*}\":$(awk '/^VmHWM/ {print $2}' "/proc/${kv#*=}/status" 2>/dev/null || echo 0)"
  done
  echo "{\"step\":\"s3/$size/server_max_rss_kb\"${vm:+,\"rss\":{${vm#,}}}}" >> "$RAW"
  SERVER_PIDS=""
  bash "$HARNESS" stop "$RGW_STATE" >&2
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION DUMONT_TEST_S3_ENDPOINT
  S3_RAN=true
}

for size in $SIZES; do
  sd="$BDIR/size-$size"
  ws="$sd/ws"
  rm -rf -- "$sd"; mkdir -p "$sd"
  log "== $size GB: generating workspace"
  "$PY" "$GEN" --out "$ws" --size-gb "$size" --seed "$SEED" --jobs 2 > "$sd/gen.json"
  files=$(find "$ws" -type f | wc -l)
  bytes=$(find "$ws" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
  echo "{\"step\":\"workspace\",\"size_gb\":$size,\"files\":$files,\"bytes\":$bytes}" >> "$RAW"
  log "workspace: $files files, $bytes bytes"

  if [ "$RUN_LOCAL" = 1 ]; then
  "$DUMONT" snapshot --repo "$sd/repo-dumont" init > "$sd/dumont-init.log"
  "$RESTIC" init --repo "$sd/repo-restic" > "$sd/restic-init.log"

  # (a) first backup, cold
  timed "$size/dumont/backup" "$sd/dumont-backup.jsonl" "$DUMONT" snapshot --repo "$sd/repo-dumont" --json backup "$ws"
  summary "$size/dumont/backup" "$sd/dumont-backup.jsonl"
  timed "$size/restic/backup" "$sd/restic-backup.jsonl" "$RESTIC" --repo "$sd/repo-restic" --json backup "$ws"
  summary "$size/restic/backup" "$sd/restic-backup.jsonl"

  # (a2) unchanged re-backup: nothing changed since the first backup
  repeated_backups "$size" unchanged "$UNCHANGED_RUNS" "" "$ws" "$sd/local" "$sd/repo-dumont" "$sd/repo-restic"

  # (b) incremental backup after mutating the workspace
  repeated_backups "$size" incremental "$INCREMENTAL_RUNS" "$MUTATE_SEED" "$ws" "$sd/local" "$sd/repo-dumont" "$sd/repo-restic"
  rbytes=$(find "$ws" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f", s}')
  echo "{\"step\":\"$size/restore_bytes\",\"bytes\":$rbytes}" >> "$RAW"

  # (d) repository size on disk (after both snapshots)
  for tool in dumont restic; do
    echo "{\"step\":\"$size/$tool/repo\",\"repo_bytes\":$(du -sb "$sd/repo-$tool" | cut -f1)}" >> "$RAW"
  done

  # (c) full restore of the latest snapshot into an empty directory, verified
  log "hashing the source for verification"
  manifest "$ws" "$sd/manifest.src"
  rd="$sd/restore"
  rm -rf -- "$rd"; mkdir -p "$rd"
  timed "$size/dumont/restore" "$sd/dumont-restore.jsonl" "$DUMONT" snapshot --repo "$sd/repo-dumont" --json restore latest --target "$rd"
  synced "$size/dumont/restore"
  verify_restore dumont "$rd/$(basename "$ws")" "$sd/manifest.src"
  rm -rf -- "$rd"; mkdir -p "$rd"
  timed "$size/restic/restore" "$sd/restic-restore.log" "$RESTIC" --repo "$sd/repo-restic" restore latest --target "$rd"
  synced "$size/restic/restore"
  verify_restore restic "$rd$ws" "$sd/manifest.src"    # restic restores the absolute path under target
  rm -rf -- "$rd"
  # the local repositories are not needed any more: free the disk for the S3 leg
  [ "$KEEP" = "1" ] || rm -rf -- "$sd/repo-dumont" "$sd/repo-restic"
  fi   # RUN_LOCAL

  if [ -z "$S3_SKIP_REASON" ] && [[ " $S3_SIZES " == *" $size "* ]]; then
    s3_leg "$size" "$sd"
  fi

  if [ "$KEEP" != "1" ]; then rm -rf -- "$sd"; fi
done

# ------------------------------------------------------------------ results
KERNEL="$(uname -sr)" CORES="$(nproc)" CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
MEM_KB="$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
DIRTY="$(git -C "$ROOT" status --porcelain -- src app CMakeLists.txt 2>/dev/null | grep -q . && echo true || echo false)" \
RESTIC_VERSION="$("$RESTIC" version | head -n1)" FS="$(df -PT "$BDIR" | awk 'NR==2 {print $2" on "$1}')" \
CACHE_DROPPED="$CACHE_DROPPED" CACHE_NOTE="$CACHE_NOTE" SIZES="$SIZES" SEED="$SEED" \
UNCHANGED_RUNS="$UNCHANGED_RUNS" INCREMENTAL_RUNS="$INCREMENTAL_RUNS" RUN_LOCAL="$RUN_LOCAL" S3_RAN="$S3_RAN" S3_SIZES="$S3_SIZES" S3_MUTATE_SEED="$S3_MUTATE_SEED" \
S3_RESTIC_ARGS="$S3_RESTIC_ARGS" LOAD_AT_START="$LOAD_AT_START" S3_TCP_NODELAY="$S3_TCP_NODELAY" S3_ALLOCATOR="$S3_ALLOCATOR" S3_SECTION="$S3_SECTION" \
"$PY" - "$RAW" "$OUT" <<'EOF'
import datetime, json, os, sys
raw, out = sys.argv[1:]
rows = [json.loads(l) for l in open(raw) if l.strip()]
# A step repeated as NAME, NAME#2, NAME#3... is the run with the median wall time, with every run's
# wall time in "runs_wall_s".
steps = {r["step"]: r for r in rows}
repeats = {}
for r in rows:
    if "#" in r["step"]:
        repeats.setdefault(r["step"].split("#")[0], []).append(r)
for base, rs in repeats.items():
    rs = [steps[base]] + rs
    by_wall = sorted(rs, key=lambda x: x["wall_s"])
    steps[base] = dict(by_wall[len(by_wall) // 2], step=base, runs_wall_s=[x["wall_s"] for x in rs])
try:
    old = json.load(open(out))
except (OSError, ValueError):
    old = {}
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
machine = {
    "cores": int(os.environ["CORES"]), "cpu": os.environ["CPU"], "mem_kb": int(os.environ["MEM_KB"]),
    "kernel": os.environ["KERNEL"], "filesystem": os.environ["FS"], "date": now,
    "dumont_commit": os.environ["COMMIT"], "dumont_src_dirty": os.environ["DIRTY"] == "true",
    "restic_version": os.environ["RESTIC_VERSION"],
    "caches_dropped": os.environ["CACHE_DROPPED"] == "true", "cache_note": os.environ["CACHE_NOTE"],
    "loadavg_at_start": os.environ["LOAD_AT_START"],
}
cpu = lambda s: round(s["user_s"] + s["sys_s"], 2)
doc = {}
if os.environ["RUN_LOCAL"] == "1":
    results = []
    for size in os.environ["SIZES"].split():
        ws = next(r for r in rows if r["step"] == "workspace" and float(r["size_gb"]) == float(size))
        rbytes = steps[f"{size}/restore_bytes"]["bytes"]
        entry = {"size_gb": float(size), "files": ws["files"], "bytes": ws["bytes"]}
        for tool in ("dumont", "restic"):
            b, i, r = (steps[f"{size}/{tool}/{k}"] for k in ("backup", "incremental", "restore"))
            cpu = lambda s: round(s["user_s"] + s["sys_s"], 2)
            entry[tool] = {
                "backup_s": b["wall_s"], "backup_cpu_s": cpu(b), "backup_max_rss_kb": b["max_rss_kb"],
                "unchanged_s": steps[f"{size}/{tool}/unchanged"]["wall_s"],
                "unchanged_runs_s": steps[f"{size}/{tool}/unchanged"].get("runs_wall_s", [steps[f"{size}/{tool}/unchanged"]["wall_s"]]),
                "incremental_s": i["wall_s"], "incremental_cpu_s": cpu(i), "incremental_max_rss_kb": i["max_rss_kb"],
                "restore_s": r["wall_s"], "restore_cpu_s": cpu(r), "restore_max_rss_kb": r["max_rss_kb"],
                "repo_bytes": steps[f"{size}/{tool}/repo"]["repo_bytes"],
                "backup_MBps": round(ws["bytes"] / 1e6 / b["wall_s"], 1),
                "restore_MBps": round(rbytes / 1e6 / r["wall_s"], 1),
                "restore_sync_s": steps[f"{size}/{tool}/restore/sync"]["wall_s"],
                "restore_incl_sync_MBps": round(rbytes / 1e6 / (r["wall_s"] + steps[f"{size}/{tool}/restore/sync"]["wall_s"]), 1),
                "backup_summary": steps[f"{size}/{tool}/backup/summary"]["summary"],
                "incremental_summary": steps[f"{size}/{tool}/incremental/summary"]["summary"],  # the first run's
                "incremental_runs_s": steps[f"{size}/{tool}/incremental"].get("runs_wall_s", [i["wall_s"]]),
            }
        d, r = entry["dumont"], entry["restic"]
        entry["ratios"] = {
            "backup_speedup": round(r["backup_s"] / d["backup_s"], 3),
            "unchanged_speedup": round(r["unchanged_s"] / d["unchanged_s"], 3),
            "incremental_speedup": round(r["incremental_s"] / d["incremental_s"], 3),
            "restore_speedup": round(r["restore_s"] / d["restore_s"], 3),
            "repo_size_ratio": round(d["repo_bytes"] / r["repo_bytes"], 3),
        }
        entry["restored_bytes"] = rbytes
        results.append(entry)
    doc = {
        "benchmark": "snapshot: dumont vs restic, local-directory repositories",
        "machine": {
            "cores": int(os.environ["CORES"]), "cpu": os.environ["CPU"], "mem_kb": int(os.environ["MEM_KB"]),
            "kernel": os.environ["KERNEL"], "filesystem": os.environ["FS"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dumont_commit": os.environ["COMMIT"], "dumont_src_dirty": os.environ["DIRTY"] == "true",
            "restic_version": os.environ["RESTIC_VERSION"],
            "caches_dropped": os.environ["CACHE_DROPPED"] == "true", "cache_note": os.environ["CACHE_NOTE"],
        },
        "method": {
            "generator": "gen_workspace.py --seed %s --jobs 2" % os.environ["SEED"],
            "unchanged": "a backup with nothing changed since the first, %s times per tool, interleaved; unchanged_s is the median run, unchanged_runs_s all of them" % os.environ["UNCHANGED_RUNS"],
            "incremental": "gen_workspace.py --mutate --percent %s --seed 7 (then 107, 207...), then a backup by each tool; %s times; incremental_s is the median run, incremental_runs_s all of them, incremental_summary the first run's" % (os.environ.get("MUTATE_PERCENT", "2"), os.environ["INCREMENTAL_RUNS"]),
            "speedup": "restic time / dumont time (>1: dumont faster)",
            "repo_size_ratio": "dumont bytes / restic bytes (<1: dumont smaller), du -sb after both snapshots",
            "restore_MBps": "bytes of the restored (mutated) workspace / restore wall time, 1 MB = 1e6 bytes",
            "restore_sync_s": "wall time of a `sync` run right after the restore exits (dirty pages still to write)",
            "settings": "both tools with defaults (restic: compression auto, repo v2)",
        },
        "sizes": results,
    }
else:
    # local leg not run: keep the previous local results as they were
    doc = {k: v for k, v in old.items() if not k.startswith("s3")}

s3_results = []
if os.environ["S3_RAN"] == "true":
    for size in os.environ["S3_SIZES"].split():
        ws = steps[f"s3/{size}/workspace"]
        rbytes = steps[f"s3/{size}/restore_bytes"]["bytes"]
        entry = {"size_gb": float(size), "files": ws["files"], "bytes": ws["bytes"], "restored_bytes": rbytes,
                 "server_max_rss_kb": steps[f"s3/{size}/server_max_rss_kb"].get("rss", {})}
        for tool in ("dumont", "restic"):
            t = {}
            for k in ("backup", "unchanged", "incremental", "restore"):
                st = steps[f"s3/{size}/{tool}/{k}"]
                srv = st.get("server_cpu_s", {})
                t[f"{k}_s"] = st["wall_s"]
                t[f"{k}_client_cpu_s"] = cpu(st)
                t[f"{k}_client_cores"] = round(cpu(st) / st["wall_s"], 2)
                t[f"{k}_server_cpu_s"] = dict(srv, total=round(sum(srv.values()), 2))
                t[f"{k}_max_rss_kb"] = st["max_rss_kb"]
                t[f"{k}_machine_busy_s"] = st["machine_busy_s"]
                other = max(0.0, st["machine_busy_s"] - cpu(st) - sum(srv.values()))
                t[f"{k}_kernel_threads_cpu_s"] = round(min(other, st.get("kthreads_cpu_s", 0.0) + st.get("irq_cpu_s", 0.0)), 2)
                t[f"{k}_other_processes_cpu_s"] = max(0.0, round(other - t[f"{k}_kernel_threads_cpu_s"], 2))
                t[f"{k}_loadavg"] = st["loadavg"]
            t["unchanged_runs_s"] = steps[f"s3/{size}/{tool}/unchanged"].get("runs_wall_s", [t["unchanged_s"]])
            t["incremental_runs_s"] = steps[f"s3/{size}/{tool}/incremental"].get("runs_wall_s", [t["incremental_s"]])
            t["backup_MBps"] = round(ws["bytes"] / 1e6 / t["backup_s"], 1)
            t["restore_MBps"] = round(rbytes / 1e6 / t["restore_s"], 1)
            sy = steps[f"s3/{size}/{tool}/restore/sync"]["wall_s"]
            t["restore_sync_s"] = sy
            t["restore_incl_sync_MBps"] = round(rbytes / 1e6 / (t["restore_s"] + sy), 1)
            repo = steps[f"s3/{size}/{tool}/repo"]
            t["repo_bytes"], t["repo_objects"] = repo["repo_bytes"], repo["repo_objects"]
            t["backup_summary"] = steps[f"s3/{size}/{tool}/backup/summary"]["summary"]
            t["incremental_summary"] = steps[f"s3/{size}/{tool}/incremental/summary"]["summary"]
            entry[tool] = t
        d, r = entry["dumont"], entry["restic"]
        entry["ratios"] = {
            "backup_speedup": round(r["backup_s"] / d["backup_s"], 3),
            "unchanged_speedup": round(r["unchanged_s"] / d["unchanged_s"], 3),
            "incremental_speedup": round(r["incremental_s"] / d["incremental_s"], 3),
            "restore_speedup": round(r["restore_s"] / d["restore_s"], 3),
            "backup_client_cpu_ratio": round(r["backup_client_cpu_s"] / d["backup_client_cpu_s"], 3),
            "restore_client_cpu_ratio": round(r["restore_client_cpu_s"] / d["restore_client_cpu_s"], 3),
            "repo_size_ratio": round(d["repo_bytes"] / r["repo_bytes"], 3),
        }
        s3_results.append(entry)
    ceph = steps[f"s3/{os.environ['S3_SIZES'].split()[0]}/workspace"]
    s3doc = {
        "benchmark": "snapshot: dumont vs restic through S3, Ceph RADOS Gateway with a bluestore OSD on loopback",
        "machine": machine,
        "server": {
            "ceph_version": ceph["ceph_version"], "osd_backend": "bluestore",
            "bluestore_block": "sparse file under /tmp (ext4, same disk as the workspace), O_DIRECT",
            "layout": "1 mon + 1 OSD + radosgw (beast, 128 threads), no mgr, tests/rgw_harness.sh, a fresh cluster per size",
            "tcp_nodelay": os.environ["S3_TCP_NODELAY"] == "1",
            "allocator": {"tcmalloc": "tcmalloc (libtcmalloc.so.4 preloaded into every daemon, like upstream Ceph's builds)",
                          "libc": "glibc malloc (Debian 12's build as packaged)"}[os.environ["S3_ALLOCATOR"]],
            "endpoint": "http://127.0.0.1:PORT (plain HTTP, path-style, SigV4), one bucket per tool",
        },
        "method": {
            "steps": "first backup, unchanged re-backup (%s runs per tool, interleaved; the median, all in unchanged_runs_s), backup after gen_workspace.py --mutate --percent 2 --seed %s (%s runs, each after its own mutation, seeds +100 each; the median), full restore (verified like the local leg); dumont then restic at every step" % (os.environ["UNCHANGED_RUNS"], os.environ["S3_MUTATE_SEED"], os.environ["INCREMENTAL_RUNS"]),
            "workspace": "the same generated workspace; when the local leg ran first it is already mutated by it (seeds 7, 107...)",
            "local_leg_ran_first": os.environ["RUN_LOCAL"] == "1",
            "client_cpu_s": "user+sys of the tool's process (/usr/bin/time)",
            "client_cores": "client_cpu_s / wall_s",
            "server_cpu_s": "utime+stime of ceph-osd, radosgw, ceph-mon (/proc/PID/stat) across the step",
            "kernel_threads_cpu_s": "CPU of kernel threads (/proc/*/stat, PF_KTHREAD) plus irq+softirq time (/proc/stat) across the step: I/O completion, writeback, loopback TCP",
            "other_processes_cpu_s": "busy CPU of the whole machine (/proc/stat) minus client, server and kernel threads: other jobs on the machine",
            "quiesce": "before every step: wait until the server daemons use < 10 % of a core (at most 30 s), then sync + drop caches",
            "repo_bytes": "radosgw-admin bucket stats usage rgw.main size after both backups",
            "speedup": "restic time / dumont time (>1: dumont faster)",
            "settings": "both tools with defaults (dumont 32 S3 connections; restic 5) unless restic_args says otherwise",
            "restic_args": os.environ.get("S3_RESTIC_ARGS", ""),
        },
        "sizes": s3_results,
    }
# S3 sections: the previous ones in their order, the one this run produced replacing its namesake
for k, v in old.items():
    if k.startswith("s3"):
        doc[k] = s3doc if s3_results and k == os.environ["S3_SECTION"] else v
if s3_results:
    doc[os.environ["S3_SECTION"]] = s3doc

with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
if os.environ["RUN_LOCAL"] == "1":
    print("\n| size | files | measure | dumont | restic | dumont advantage (>1 = dumont better) |")
    print("|---|---|---|---|---|---|")
    for e in results:
        d, r, q = e["dumont"], e["restic"], e["ratios"]
        label = f"{e['size_gb']:g} GB ({e['bytes']/1e9:.2f} GB)"
        rows = [
            ("first backup, s", d["backup_s"], r["backup_s"], q["backup_speedup"]),
            ("first backup CPU (user+sys), s", d["backup_cpu_s"], r["backup_cpu_s"], round(r["backup_cpu_s"] / d["backup_cpu_s"], 2)),
            ("first backup max RSS, MB", round(d["backup_max_rss_kb"] / 1024), round(r["backup_max_rss_kb"] / 1024), round(r["backup_max_rss_kb"] / d["backup_max_rss_kb"], 2)),
            ("unchanged re-backup (median), s", d["unchanged_s"], r["unchanged_s"], q["unchanged_speedup"]),
            ("incremental (mutate 2 %, median), s", d["incremental_s"], r["incremental_s"], q["incremental_speedup"]),
            ("restore, s", d["restore_s"], r["restore_s"], q["restore_speedup"]),
            ("restore, MB/s", d["restore_MBps"], r["restore_MBps"], round(d["restore_MBps"] / r["restore_MBps"], 2)),
            ("restore + sync, MB/s", d["restore_incl_sync_MBps"], r["restore_incl_sync_MBps"], round(d["restore_incl_sync_MBps"] / r["restore_incl_sync_MBps"], 2)),
            ("restore max RSS, MB", round(d["restore_max_rss_kb"] / 1024), round(r["restore_max_rss_kb"] / 1024), round(r["restore_max_rss_kb"] / d["restore_max_rss_kb"], 2)),
            ("repo size, MB", round(d["repo_bytes"] / 1e6), round(r["repo_bytes"] / 1e6), round(r["repo_bytes"] / d["repo_bytes"], 2)),
        ]
        for i, (name, a, b, c) in enumerate(rows):
            print(f"| {label if i == 0 else ''} | {e['files'] if i == 0 else ''} | {name} | {a} | {b} | {c} |")

if s3_results:
    print(f"\nS3 (Ceph RGW, bluestore OSD, loopback, tcp_nodelay={os.environ['S3_TCP_NODELAY']}, {os.environ['S3_ALLOCATOR']}; client and server share the cores; section {os.environ['S3_SECTION']})\n")
    print("| size | files | measure | dumont | restic | dumont advantage (>1 = dumont better) |")
    print("|---|---|---|---|---|---|")
    for e in s3_results:
        d, r, q = e["dumont"], e["restic"], e["ratios"]
        label = f"{e['size_gb']:g} GB ({e['bytes']/1e9:.2f} GB)"
        sv = lambda t, k: t[f"{k}_server_cpu_s"]["total"]
        rows = [
            ("first backup, s", d["backup_s"], r["backup_s"], q["backup_speedup"]),
            ("first backup, MB/s", d["backup_MBps"], r["backup_MBps"], round(d["backup_MBps"] / r["backup_MBps"], 2)),
            ("first backup client CPU, s (cores)", f"{d['backup_client_cpu_s']} ({d['backup_client_cores']})", f"{r['backup_client_cpu_s']} ({r['backup_client_cores']})", q["backup_client_cpu_ratio"]),
            ("first backup server CPU (osd+rgw+mon), s", sv(d, "backup"), sv(r, "backup"), round(sv(r, "backup") / sv(d, "backup"), 2)),
            ("first backup max RSS, MB", round(d["backup_max_rss_kb"] / 1024), round(r["backup_max_rss_kb"] / 1024), round(r["backup_max_rss_kb"] / d["backup_max_rss_kb"], 2)),
            ("unchanged re-backup (median), s", d["unchanged_s"], r["unchanged_s"], q["unchanged_speedup"]),
            ("unchanged re-backup client CPU, s", d["unchanged_client_cpu_s"], r["unchanged_client_cpu_s"], round(r["unchanged_client_cpu_s"] / d["unchanged_client_cpu_s"], 2)),
            ("incremental (mutate 2 %, median), s", d["incremental_s"], r["incremental_s"], q["incremental_speedup"]),
            ("restore, s", d["restore_s"], r["restore_s"], q["restore_speedup"]),
            ("restore, MB/s", d["restore_MBps"], r["restore_MBps"], round(d["restore_MBps"] / r["restore_MBps"], 2)),
            ("restore + sync, MB/s", d["restore_incl_sync_MBps"], r["restore_incl_sync_MBps"], round(d["restore_incl_sync_MBps"] / r["restore_incl_sync_MBps"], 2)),
            ("restore client CPU, s (cores)", f"{d['restore_client_cpu_s']} ({d['restore_client_cores']})", f"{r['restore_client_cpu_s']} ({r['restore_client_cores']})", q["restore_client_cpu_ratio"]),
            ("restore server CPU (osd+rgw+mon), s", sv(d, "restore"), sv(r, "restore"), round(sv(r, "restore") / sv(d, "restore"), 2)),
            ("restore max RSS, MB", round(d["restore_max_rss_kb"] / 1024), round(r["restore_max_rss_kb"] / 1024), round(r["restore_max_rss_kb"] / d["restore_max_rss_kb"], 2)),
            ("bucket size, MB (objects)", f"{round(d['repo_bytes'] / 1e6)} ({d['repo_objects']})", f"{round(r['repo_bytes'] / 1e6)} ({r['repo_objects']})", round(r["repo_bytes"] / d["repo_bytes"], 2)),
        ]
        for i, (name, a, b, c) in enumerate(rows):
            print(f"| {label if i == 0 else ''} | {e['files'] if i == 0 else ''} | {name} | {a} | {b} | {c} |")
    print()
    for e in s3_results:
        d, r = e["dumont"], e["restic"]
        o = lambda k: f"{d[k + '_other_processes_cpu_s']}/{r[k + '_other_processes_cpu_s']}"
        kt = lambda k: f"{d[k + '_kernel_threads_cpu_s']}/{r[k + '_kernel_threads_cpu_s']}"
        print(f"\n{e['size_gb']:g} GB: CPU-seconds of other processes (other jobs) during the steps, dumont/restic: "
              f"backup {o('backup')}, restore {o('restore')}; kernel threads: backup {kt('backup')}, restore {kt('restore')}; "
              f"load average before the first backups {d['backup_loadavg']} / {r['backup_loadavg']}")
print(f"\ncaches dropped: {os.environ['CACHE_DROPPED']}; results in {out}")
EOF
log "done"
