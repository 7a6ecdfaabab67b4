#!/usr/bin/env bash
# Installs the real Cube server that the end-to-end tests run, from the npm registry, into
# a cache folder outside the repository, and prints that folder (its node_modules holds
# @cubejs-backend/server). Idempotent and cheap when already installed: the folder is
# keyed by the versions below and marked complete only after npm succeeded.
#
# Install scripts are skipped (--ignore-scripts): they download prebuilt binaries (Cube
# Store, the native SQL API) from outside the registry; the tests run Cube with the
# in-memory cache and queue driver, which needs neither.
set -euo pipefail

CUBE_VERSION=0.33.65
POSTGRES_DRIVER_VERSION=0.32.8
CLIENT_VERSION=0.33.59 # the newest 0.33 release of @cubejs-client/core

packages=(
  "@cubejs-backend/server@$CUBE_VERSION"
  "@cubejs-backend/postgres-driver@$POSTGRES_DRIVER_VERSION"
  "@cubejs-client/core@$CLIENT_VERSION"
)
key="cube-$CUBE_VERSION-pg-$POSTGRES_DRIVER_VERSION-client-$CLIENT_VERSION"
dir=${CUBE_INSTALL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cube-token-broker/$key}
stamp=$dir/.installed

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${packages[*]}" ]; then
  if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "install-cube: node and npm are needed (WITH_TEST_SERVICES=1 bash scripts/setup.sh)" >&2
    exit 1
  fi
  echo "install-cube: installing ${packages[*]} into $dir" >&2
  mkdir -p "$dir"
  rm -f "$stamp"
  printf '{"name": "cube-token-broker-test-cube", "private": true}\n' > "$dir/package.json"
  (
    cd "$dir"
    npm install --ignore-scripts --no-audit --no-fund --loglevel=error --no-save "${packages[@]}" >&2
  )
  echo "${packages[*]}" > "$stamp"
fi
echo "$dir"
