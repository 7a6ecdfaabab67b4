#!/usr/bin/env bash
# make demo: on loopback, a private PostgreSQL with a sample table, the broker and the real
# Cube with deploy/cube/cube.js; creates a key, mints a token, runs a real query through
# the broker and prints each step; at last Debian's Chromium shows a dashboard of the
# query (a screenshot kept in var/demo/dashboard.png, or --screenshot PATH); then stops
# everything and removes its temporary folders (also on errors and Ctrl-C). Works on a
# fresh Debian machine (as root, setup.sh installs what is missing: PostgreSQL, Node.js,
# npm and Chromium; install-cube.sh fetches Cube, install-browser.sh playwright-core,
# both cached).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_LOCAL_STACK=1 WITH_BROWSER=1 bash scripts/setup.sh
bash scripts/install-cube.sh >/dev/null
bash scripts/install-browser.sh >/dev/null
exec .venv/bin/python scripts/demo.py "$@"
