#!/usr/bin/env bash
# Snapshot benchmark: dumont vs restic, side by side, same data, same machine, same local-disk target.
#
# For each workspace size: (a) first backup (cold page cache when we can drop it), (b) incremental
# backup after mutating 5 % of the files, (c) full restore of the latest snapshot into an empty
# directory, verified byte for byte against the source, (d) repository size on disk (du -sb).
# Writes bench/results/snapshot.json. See bench/README.md.
#
# Environment:
#   BENCH_SIZES   space-separated workspace sizes in GB (default "2 7"; "0.5" for a quick run)
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
MUTATE_SEED=7

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

# Both tools get the password from the environment; no S3 / CA settings may leak in.
unset AWS_CA_BUNDLE DUMONT_REPOSITORY RESTIC_REPOSITORY RESTIC_PASSWORD_FILE RESTIC_COMPRESSION GOMAXPROCS
export DUMONT_REPO_PASSWORD="bench-password-$$"
export RESTIC_PASSWORD="$DUMONT_REPO_PASSWORD"
export RESTIC_CACHE_DIR="$BDIR/restic-cache"   # restic's default local cache, kept inside BENCH_DIR

cleanup() {
  local rc=$?
  if [ "$KEEP" = "1" ]; then
    log "BENCH_KEEP=1: leaving $BDIR in place"
  else
    rm -rf -- "$BDIR"
  fi
  [ $rc -eq 0 ] || printf 'bench: FAILED (exit %d)\n' "$rc" >&2
}
trap cleanup EXIT

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
# timed NAME LOGFILE cmd...  -> appends {"step":NAME,"wall_s","user_s","sys_s","max_rss_kb"} to $RAW.
timed() {
  local name="$1" logf="$2"; shift 2
  local tf="$BDIR/time.$$"
  drop_caches
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$TIME" -o "$tf" -f '%e %U %S %M' "$@" > "$logf" 2> "$logf.err" || rc=$?
  t1=$(date +%s.%N)
  if [ $rc -ne 0 ]; then
    tail -n 20 "$logf.err" >&2 || true
    die "$name failed with exit code $rc: $*"
  fi
  # /usr/bin/time's own line is the last of the file (the command may have written nothing else).
  local e u s m
  read -r e u s m < <(tail -n 1 "$tf")
  "$PY" - "$name" "$t0" "$t1" "$u" "$s" "$m" >> "$RAW" <<'EOF'
import json, sys
name, t0, t1, u, s, m = sys.argv[1:]
print(json.dumps({"step": name, "wall_s": round(float(t1) - float(t0), 3), "user_s": float(u),
                  "sys_s": float(s), "max_rss_kb": int(m)}))
EOF
  log "$name: $(tail -n 1 "$RAW")"
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

  "$DUMONT" snapshot --repo "$sd/repo-dumont" init > "$sd/dumont-init.log"
  "$RESTIC" init --repo "$sd/repo-restic" > "$sd/restic-init.log"

  # (a) first backup, cold
  timed "$size/dumont/backup" "$sd/dumont-backup.jsonl" "$DUMONT" snapshot --repo "$sd/repo-dumont" --json backup "$ws"
  summary "$size/dumont/backup" "$sd/dumont-backup.jsonl"
  timed "$size/restic/backup" "$sd/restic-backup.jsonl" "$RESTIC" --repo "$sd/repo-restic" --json backup "$ws"
  summary "$size/restic/backup" "$sd/restic-backup.jsonl"

  # (a2) unchanged re-backup: nothing changed since the first backup
  timed "$size/dumont/unchanged" "$sd/dumont-unchanged.jsonl" "$DUMONT" snapshot --repo "$sd/repo-dumont" --json backup "$ws"
  timed "$size/restic/unchanged" "$sd/restic-unchanged.jsonl" "$RESTIC" --repo "$sd/repo-restic" --json backup "$ws"

  # (b) incremental backup after mutating the workspace
  log "mutating $MUTATE_PERCENT % of the files (seed $MUTATE_SEED)"
  "$PY" "$GEN" --mutate "$ws" --percent "$MUTATE_PERCENT" --seed "$MUTATE_SEED" > "$sd/mutate.json"
  timed "$size/dumont/incremental" "$sd/dumont-incr.jsonl" "$DUMONT" snapshot --repo "$sd/repo-dumont" --json backup "$ws"
  summary "$size/dumont/incremental" "$sd/dumont-incr.jsonl"
  timed "$size/restic/incremental" "$sd/restic-incr.jsonl" "$RESTIC" --repo "$sd/repo-restic" --json backup "$ws"
  summary "$size/restic/incremental" "$sd/restic-incr.jsonl"
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

  if [ "$KEEP" != "1" ]; then rm -rf -- "$sd"; fi
done

# ------------------------------------------------------------------ results
KERNEL="$(uname -sr)" CORES="$(nproc)" CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
MEM_KB="$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
COMMIT="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
DIRTY="$(git -C "$ROOT" status --porcelain -- src app CMakeLists.txt 2>/dev/null | grep -q . && echo true || echo false)" \
RESTIC_VERSION="$("$RESTIC" version | head -n1)" FS="$(df -PT "$BDIR" | awk 'NR==2 {print $2" on "$1}')" \
CACHE_DROPPED="$CACHE_DROPPED" CACHE_NOTE="$CACHE_NOTE" SIZES="$SIZES" SEED="$SEED" \
"$PY" - "$RAW" "$OUT" <<'EOF'
import datetime, json, os, sys
raw, out = sys.argv[1:]
rows = [json.loads(l) for l in open(raw) if l.strip()]
steps = {r["step"]: r for r in rows}
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
            "incremental_s": i["wall_s"], "incremental_cpu_s": cpu(i), "incremental_max_rss_kb": i["max_rss_kb"],
            "restore_s": r["wall_s"], "restore_cpu_s": cpu(r), "restore_max_rss_kb": r["max_rss_kb"],
            "repo_bytes": steps[f"{size}/{tool}/repo"]["repo_bytes"],
            "backup_MBps": round(ws["bytes"] / 1e6 / b["wall_s"], 1),
            "restore_MBps": round(rbytes / 1e6 / r["wall_s"], 1),
            "restore_sync_s": steps[f"{size}/{tool}/restore/sync"]["wall_s"],
            "restore_incl_sync_MBps": round(rbytes / 1e6 / (r["wall_s"] + steps[f"{size}/{tool}/restore/sync"]["wall_s"]), 1),
            "backup_summary": steps[f"{size}/{tool}/backup/summary"]["summary"],
            "incremental_summary": steps[f"{size}/{tool}/incremental/summary"]["summary"],
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
        "unchanged": "a second backup with nothing changed",
        "incremental": "gen_workspace.py --mutate --percent %s --seed 7" % os.environ.get("MUTATE_PERCENT", "2"),
        "speedup": "restic time / dumont time (>1: dumont faster)",
        "repo_size_ratio": "dumont bytes / restic bytes (<1: dumont smaller), du -sb after both snapshots",
        "restore_MBps": "bytes of the restored (mutated) workspace / restore wall time, 1 MB = 1e6 bytes",
        "restore_sync_s": "wall time of a `sync` run right after the restore exits (dirty pages still to write)",
        "settings": "both tools with defaults (restic: compression auto, repo v2)",
    },
    "sizes": results,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print("\n| size | files | measure | dumont | restic | dumont advantage (>1 = dumont better) |")
print("|---|---|---|---|---|---|")
for e in results:
    d, r, q = e["dumont"], e["restic"], e["ratios"]
    label = f"{e['size_gb']:g} GB ({e['bytes']/1e9:.2f} GB)"
    rows = [
        ("first backup, s", d["backup_s"], r["backup_s"], q["backup_speedup"]),
        ("first backup CPU (user+sys), s", d["backup_cpu_s"], r["backup_cpu_s"], round(r["backup_cpu_s"] / d["backup_cpu_s"], 2)),
        ("first backup max RSS, MB", round(d["backup_max_rss_kb"] / 1024), round(r["backup_max_rss_kb"] / 1024), round(r["backup_max_rss_kb"] / d["backup_max_rss_kb"], 2)),
        ("unchanged re-backup, s", d["unchanged_s"], r["unchanged_s"], q["unchanged_speedup"]),
        ("incremental (mutate 2 %), s", d["incremental_s"], r["incremental_s"], q["incremental_speedup"]),
        ("restore, s", d["restore_s"], r["restore_s"], q["restore_speedup"]),
        ("restore, MB/s", d["restore_MBps"], r["restore_MBps"], round(d["restore_MBps"] / r["restore_MBps"], 2)),
        ("restore + sync, MB/s", d["restore_incl_sync_MBps"], r["restore_incl_sync_MBps"], round(d["restore_incl_sync_MBps"] / r["restore_incl_sync_MBps"], 2)),
        ("restore max RSS, MB", round(d["restore_max_rss_kb"] / 1024), round(r["restore_max_rss_kb"] / 1024), round(r["restore_max_rss_kb"] / d["restore_max_rss_kb"], 2)),
        ("repo size, MB", round(d["repo_bytes"] / 1e6), round(r["repo_bytes"] / 1e6), round(r["repo_bytes"] / d["repo_bytes"], 2)),
    ]
    for i, (name, a, b, c) in enumerate(rows):
        print(f"| {label if i == 0 else ''} | {e['files'] if i == 0 else ''} | {name} | {a} | {b} | {c} |")
print(f"\ncaches dropped: {os.environ['CACHE_DROPPED']}; results in {out}")
EOF
log "done"
