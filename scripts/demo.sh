#!/usr/bin/env bash
# make demo: on loopback, a private PostgreSQL with a sample table, the broker and the real
# Cube with deploy/cube/cube.js; creates a key, mints a token, runs a real query through
# the broker and prints each step; then stops everything and removes its temporary
# folders (also on errors and Ctrl-C). Works on a fresh Debian machine (as root, setup.sh
# installs what is missing: PostgreSQL, Node.js and npm; install-cube.sh fetches Cube).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_LOCAL_STACK=1 bash scripts/setup.sh
bash scripts/install-cube.sh >/dev/null
exec .venv/bin/python scripts/demo.py "$@"
