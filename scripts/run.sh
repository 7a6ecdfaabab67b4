#!/usr/bin/env bash
# Runs, on loopback until Ctrl-C (scripts/run.py), the broker on its SQLite default
# (var/broker.db, the sample models of config/) and what the sample model needs: a private
# PostgreSQL kept in var/postgres and the real Cube with deploy/cube/cube.js. Secrets are
# generated once into var/dev.env (mode 600). On a fresh Debian machine, as root, it first
# installs what is missing (PostgreSQL, Node.js, npm; Cube from npm, cached).
#   bash scripts/run.sh --broker-only   the broker alone, for a Cube of your own
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " == *" --broker-only "* ]]; then
  bash scripts/setup.sh
else
  WITH_LOCAL_STACK=1 bash scripts/setup.sh
  bash scripts/install-cube.sh >/dev/null
fi
exec .venv/bin/python scripts/run.py "$@"
