#!/usr/bin/env bash
# A private S3 server for tests: a throwaway single-node Ceph cluster (1 mon, 1 OSD, no mgr)
# plus a RADOS Gateway on a free 127.0.0.1 port, all state in a temp dir, no systemd, no /etc/ceph.
#
#   rgw_harness.sh start STATE_DIR   stops any previous cluster recorded in STATE_DIR, starts a new one,
#                                    creates an S3 user with random keys and writes STATE_DIR/env:
#                                      export AWS_ACCESS_KEY_ID=...  AWS_SECRET_ACCESS_KEY=...
#                                      export AWS_DEFAULT_REGION=us-east-1
#                                      export DUMONT_TEST_S3_ENDPOINT=http://127.0.0.1:PORT
#   rgw_harness.sh stop STATE_DIR    kills the daemons it started (by the PIDs it recorded) and removes
#                                    every file of the cluster and STATE_DIR's harness files.
#
# Needs the Debian 12 packages ceph-mon ceph-osd radosgw ceph-common (Ceph 16.2) and python3.
# Runs as root (CI) or as a normal user. Bring-up takes ~10-15 s, most of it radosgw creating pools.
# Logs stay in the cluster dir (STATE_DIR/dir names it) until stop; on failure they are printed.
# Knobs: RGW_OSD_BACKEND   memstore (default; RAM, what ctest uses) or bluestore (a sparse file
#                          CLUSTER_DIR/osd.0.block, O_DIRECT I/O, like a real deployment; benchmarks)
#        RGW_MEMSTORE_BYTES  memstore OSD capacity, default 4 GiB; RAM used is ~2x the bytes stored
#        RGW_BLUESTORE_BYTES bluestore block file size, default 16 GiB (sparse: disk is used only for
#                          what is written; it is deleted on stop with the rest of the cluster dir)
#        RGW_TCP_NODELAY     1 = radosgw's beast frontend sets TCP_NODELAY (default 0, Ceph's default:
#                          with Nagle on, a small response often waits ~40 ms for the client's
#                          delayed ACK, so every small ranged GET costs ~44 ms on loopback)
#        RGW_ALLOCATOR       tcmalloc (default) or libc: the malloc of the Ceph daemons. Upstream Ceph
#                          links its daemons with tcmalloc (gperftools) whenever it is found; Debian 12's
#                          build links glibc malloc, and on these VMs (a first touch of a 4 KiB page costs
#                          10-20 us) radosgw's messenger thread then spends most of a large GET faulting
#                          in fresh receive buffers: 16 CPU-s instead of 4 for a 4 GB restore. The
#                          harness preloads the libtcmalloc.so.4 that Debian's radosgw package already
#                          depends on (libgoogle-perftools4), so the server behaves like upstream's.
set -Eeuo pipefail
# A command that fails under set -e says so, instead of the harness exiting without a word.
trap 'echo "rgw_harness: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
unset AWS_CA_BUNDLE   # ceph/radosgw tools do not need it and some S3 tools choke on it
cmd=${1:?usage: rgw_harness.sh start|stop STATE_DIR}
state=${2:?usage: rgw_harness.sh start|stop STATE_DIR}
MEMSTORE_BYTES=${RGW_MEMSTORE_BYTES:-4294967296}
OSD_BACKEND=${RGW_OSD_BACKEND:-memstore}
BLUESTORE_BYTES=${RGW_BLUESTORE_BYTES:-17179869184}
TCP_NODELAY=${RGW_TCP_NODELAY:-0}
ALLOCATOR=${RGW_ALLOCATOR:-tcmalloc}
PY=/usr/bin/python3

log() { echo "rgw_harness: $*" >&2; }

# Kills the daemons of the cluster in $1, using only the PID files it wrote, and only if the process
# still runs with that cluster's ceph.conf (a recycled PID is left alone). radosgw and the OSD get
# SIGKILL at once (radosgw ignores SIGTERM for >5 s; a memstore OSD would dump its RAM to disk on a
# clean stop; the data is throwaway either way); the mon gets SIGTERM, then SIGKILL after 5 s.
# A killed daemon that is a zombie (reparented to a PID 1 that reaps late) counts as gone.
kill_cluster() {
  local dir=$1 name f pid pids=()
  [ -d "$dir/run" ] || return 0
  for name in rgw osd.0 mon.a; do
    f="$dir/run/$name.fgpid"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/ceph.conf"; then
      case $name in mon.a) kill -TERM "$pid" 2>/dev/null || true ;; *) kill -KILL "$pid" 2>/dev/null || true ;; esac
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  local i p alive
  for i in $(seq 1 50); do
    alive=0
    for p in "${pids[@]}"; do running "$p" && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  sleep 0.2
}

# running PID: the process exists and is not a zombie.
running() {
  local st
  st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

do_stop() {
  if [ -f "$state/dir" ]; then
    local dir
    dir=$(cat "$state/dir")
    case $dir in
      /tmp/dumont-rgw.*) kill_cluster "$dir"; rm -rf "$dir" ;;
      *) log "ignoring unexpected cluster dir '$dir' in $state/dir" ;;
    esac
  fi
  rm -f "$state/dir" "$state/env" "$state/env.tmp"
}

free_port() { "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

do_start() {
  local b
  for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl; do
    command -v "$b" >/dev/null || { log "missing $b: apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common curl"; exit 1; }
  done
  [ -x "$PY" ] || { log "missing $PY: apt-get install -y python3"; exit 1; }
  case $OSD_BACKEND in
    memstore) ;;
    bluestore)
      [[ "$BLUESTORE_BYTES" =~ ^[0-9]+$ ]] && [ "$BLUESTORE_BYTES" -ge 2147483648 ] \
        || { log "RGW_BLUESTORE_BYTES must be a byte count >= 2 GiB, not '$BLUESTORE_BYTES'"; exit 1; }
      local avail
      avail=$(df -PB1 /tmp | awk 'NR==2 {print $4}')
      [ "$avail" -ge "$BLUESTORE_BYTES" ] \
        || log "warning: /tmp has $avail bytes free, less than the $BLUESTORE_BYTES-byte bluestore file (sparse: fine unless that much is written)" ;;
    *) log "RGW_OSD_BACKEND must be memstore or bluestore, not '$OSD_BACKEND'"; exit 1 ;;
  esac
  case $TCP_NODELAY in 0|1) ;; *) log "RGW_TCP_NODELAY must be 0 or 1, not '$TCP_NODELAY'"; exit 1 ;; esac
  PRELOAD=""
  case $ALLOCATOR in
    libc) ;;
    tcmalloc)
      # awk reads all of ldconfig's output (no early exit): ldconfig -p prints more than a pipe
      # holds, and under pipefail its SIGPIPE made this start fail, silently, about 1 time in 20.
      PRELOAD=$(/sbin/ldconfig -p 2>/dev/null | awk '!found && $1 == "libtcmalloc.so.4" && /x86-64|x86_64|64bit/ {print $NF; found = 1}') || PRELOAD=""
      if [ -z "$PRELOAD" ]; then
        for PRELOAD in /usr/lib/*/libtcmalloc.so.4 ""; do [ -f "$PRELOAD" ] && break; done
      fi
      [ -n "$PRELOAD" ] && [ -f "$PRELOAD" ] \
        || { log "RGW_ALLOCATOR=tcmalloc but libtcmalloc.so.4 is not installed (apt-get install -y libgoogle-perftools4, or RGW_ALLOCATOR=libc)"; exit 1; } ;;
    *) log "RGW_ALLOCATOR must be tcmalloc or libc, not '$ALLOCATOR'"; exit 1 ;;
  esac
  local t0=$EPOCHREALTIME
  mkdir -p "$state"
  do_stop
  # The cluster lives under /tmp, not in STATE_DIR: admin sockets are unix sockets (108-byte paths).
  DIR=$(mktemp -d /tmp/dumont-rgw.XXXXXX)
  echo "$DIR" >"$state/dir"
  mkdir -p "$DIR"/{run,log,mon/a,osd/0,rgw,crash}
  trap 'rc=$?; if [ $rc != 0 ]; then log "start failed (rc=$rc); logs:"; tail -n 30 "$DIR"/log/*.log "$DIR"/log/*.out 2>/dev/null >&2 || true; do_stop; fi' EXIT

  local mon_port fsid osd_uuid conf kr
  mon_port=$(free_port)
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  conf="$DIR/ceph.conf"
  kr="$DIR/keyring"
  local osd_store_conf
  if [ "$OSD_BACKEND" = bluestore ]; then
    # a sparse file in the cluster dir, created by ceph-osd --mkfs; bluestore does O_DIRECT I/O on it
    osd_store_conf="bluestore block path = $DIR/osd.0.block
bluestore block size = $BLUESTORE_BYTES
bluestore block create = true
bluestore fsck on mount = false"
  else
    osd_store_conf="memstore device bytes = $MEMSTORE_BYTES"
  fi
  write_conf() { # rgw port
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
mon initial members = a
public addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind msgr1 = false
ms bind ipv6 = false
keyring = $kr
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = false
mon cluster log file = $DIR/log/cluster.log
crash dir = $DIR/crash
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
debug ms = 0/0
[mon]
mon data = $DIR/mon/\$id
mon data avail warn = 1
mon data avail crit = 0
[osd]
osd data = $DIR/osd/\$id
osd objectstore = $OSD_BACKEND
$osd_store_conf
osd memory target = 1073741824
osd max object size = 134217728
[client.rgw.gw]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$1$([ "$TCP_NODELAY" = 1 ] && echo " tcp_nodelay=1")
rgw thread pool size = 128
rgw dns name = localhost
# reclaim the RADOS objects of overwritten/deleted S3 objects after 30 s instead of 2 h
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF
  }
  local port
  port=$(free_port)
  write_conf "$port"

  ceph-authtool --create-keyring "$kr" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
  ceph-authtool "$kr" --gen-key -n client.rgw.gw --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
  chmod 600 "$kr"
  monmaptool --create --clobber --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$DIR/monmap" --keyring "$kr" >>"$DIR/log/mon.a.out" 2>&1

  daemon() { # name cmd...
    local name=$1; shift
    setsid env ${PRELOAD:+LD_PRELOAD="$PRELOAD"} "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/run/$name.fgpid"
  }
  local C="ceph -c $conf --connect-timeout 10" i
  daemon mon.a ceph-mon -c "$conf" -f -i a
  for i in $(seq 1 100); do timeout 10 $C mon stat >/dev/null 2>&1 && break; sleep 0.2; done
  timeout 10 $C mon stat >/dev/null 2>&1 || { log "ceph-mon did not come up"; exit 1; }

  local osd_id
  osd_id=$(timeout 20 $C osd new "$osd_uuid")
  [ "$osd_id" = 0 ] || { log "unexpected osd id '$osd_id'"; exit 1; }
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd.0.out" 2>&1
  daemon osd.0 ceph-osd -c "$conf" -f -i 0
  local up=0
  for i in $(seq 1 150); do
    up=$(timeout 10 $C osd stat -f json 2>/dev/null | "$PY" -c 'import sys,json;print(json.load(sys.stdin)["num_up_osds"])' 2>/dev/null || echo 0)
    [ "$up" = 1 ] && break
    sleep 0.2
  done
  [ "$up" = 1 ] || { log "ceph-osd did not come up"; exit 1; }

  # radosgw: if the port we picked was taken in the meantime it exits; pick another (3 tries).
  local attempt ok=0
  for attempt in 1 2 3; do
    daemon rgw radosgw -c "$conf" -f -n client.rgw.gw
    for i in $(seq 1 300); do
      if curl -s -o /dev/null "http://127.0.0.1:$port/"; then ok=1; break; fi
      kill -0 "$(cat "$DIR/run/rgw.fgpid")" 2>/dev/null || break
      sleep 0.2
    done
    [ $ok = 1 ] && break
    kill -KILL "$(cat "$DIR/run/rgw.fgpid")" 2>/dev/null || true
    log "radosgw did not answer on port $port (attempt $attempt)"
    port=$(free_port)
    write_conf "$port"
  done
  [ $ok = 1 ] || { log "radosgw did not come up"; exit 1; }

  local access secret
  access=$("$PY" -c 'import secrets,string;print("DUMONT"+"".join(secrets.choice(string.ascii_uppercase+string.digits) for _ in range(14)))')
  secret=$("$PY" -c 'import secrets,string;print("".join(secrets.choice(string.ascii_letters+string.digits) for _ in range(40)))')
  timeout 60 radosgw-admin -c "$conf" user create --uid=dumont-test --display-name=dumont-test \
    --access-key="$access" --secret-key="$secret" >"$DIR/user.json" 2>>"$DIR/log/radosgw-admin.out" \
    || { log "radosgw-admin user create failed"; exit 1; }

  cat >"$state/env.tmp" <<EOF
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_DEFAULT_REGION=us-east-1
export DUMONT_TEST_S3_ENDPOINT=http://127.0.0.1:$port
EOF
  mv "$state/env.tmp" "$state/env"
  trap - EXIT
  echo "rgw_harness: RADOS Gateway on http://127.0.0.1:$port ($DIR, $OSD_BACKEND OSD, $ALLOCATOR$([ "$TCP_NODELAY" = 1 ] && echo ", TCP_NODELAY")), up in $("$PY" -c "print(round($EPOCHREALTIME - $t0, 1))") s"
}

case "$cmd" in
  start) do_start ;;
  stop) mkdir -p "$state"; do_stop; echo "rgw_harness: stopped" ;;
  *) echo "usage: $0 start|stop STATE_DIR" >&2; exit 2 ;;
esac
