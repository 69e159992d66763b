#!/usr/bin/env bash
# Installs whatever Dumont needs that is missing. Idempotent: when everything is present it only checks
# (about a second) and changes nothing. Called by every make target that builds or runs.
# Only Debian 12 packages are used here; the web console's npm packages are installed by web/ targets.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl jq
  libboost1.81-dev nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libexpected-dev
  libsqlite3-dev libpq-dev postgresql
  libssl-dev libsodium-dev libcurl4-openssl-dev libzstd-dev liblz4-dev liburing-dev libargon2-dev libjemalloc-dev libxxhash-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  prometheus util-linux procps
  ceph-mon ceph-osd radosgw ceph-common libgoogle-perftools4
  restic chromium
)

missing=()
# Node.js builds the web console; the machine image ships Node 20 (Vite 7 needs >= 20.19). Debian's own
# nodejs (18) is only a fallback when none is installed.
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${#missing[@]} missing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# The prometheus package would start a server at install time; we only want promtool.
if [ ! -e /usr/sbin/policy-rc.d ] || [ -n "$SUDO" ]; then :; fi
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/dumont-apt.log 2>&1; then
  $SUDO apt-get update >/tmp/dumont-apt-update.log 2>&1 || true
  if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/dumont-apt.log 2>&1; then
    echo "setup: apt-get install failed; the last lines of /tmp/dumont-apt.log:" >&2
    tail -20 /tmp/dumont-apt.log >&2
    exit 1
  fi
fi
echo "setup: done"
