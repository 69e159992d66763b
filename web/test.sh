#!/usr/bin/env bash
# Builds and tests the web console: npm ci (when needed), vite build, vitest, then the end-to-end
# run against a real dumontd (DUMONTD, default ../build/bin/dumontd) driving /usr/bin/chromium.
# SKIP_E2E=1 skips the browser part.
set -euo pipefail
cd "$(dirname "$0")"

stamp=node_modules/.dumont-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -d node_modules || ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "== npm ci"
  nice npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

echo "== vite build"
nice npm run --silent build -- --logLevel warn

echo "== vitest"
nice npx vitest run

if [[ "${SKIP_E2E:-}" == 1 ]]; then
  echo "== e2e skipped (SKIP_E2E=1)"
  exit 0
fi
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
  echo "e2e: chromium not found at ${CHROMIUM:-/usr/bin/chromium} (apt-get install -y chromium)" >&2
  exit 1
fi
echo "== e2e"
nice node e2e/run.mjs
