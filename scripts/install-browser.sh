#!/usr/bin/env bash
# Installs playwright-core, which tests/harness/browser_load.js uses to drive Debian's Chromium
# (/usr/bin/chromium, from WITH_TEST_SERVICES=1 scripts/setup.sh), from the npm registry
# into a cache folder outside the repository, and prints that folder (its node_modules
# holds playwright-core). Idempotent and offline once installed: the folder is keyed by
# the version and marked complete only after npm succeeded. playwright-core never
# downloads a browser by itself (and `npx playwright install` is never run).
set -euo pipefail

PLAYWRIGHT_VERSION=1.64.1

package="playwright-core@$PLAYWRIGHT_VERSION"
dir=${BROWSER_INSTALL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cube-token-broker/playwright-core-$PLAYWRIGHT_VERSION}
stamp=$dir/.installed

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$package" ]; then
  if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "install-browser: node and npm are needed (WITH_TEST_SERVICES=1 bash scripts/setup.sh)" >&2
    exit 1
  fi
  echo "install-browser: installing $package into $dir" >&2
  mkdir -p "$dir"
  rm -f "$stamp"
  printf '{"name": "cube-token-broker-test-browser", "private": true}\n' > "$dir/package.json"
  (
    cd "$dir"
    npm install --ignore-scripts --no-audit --no-fund --loglevel=error --no-save "$package" >&2
  )
  echo "$package" > "$stamp"
fi
echo "$dir"
