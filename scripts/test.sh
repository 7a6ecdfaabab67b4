#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, lint, type check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST_SERVICES=1 bash scripts/setup.sh
bash scripts/install-cube.sh >/dev/null # the real Cube for tests/e2e, cached outside the repo
bash scripts/install-browser.sh >/dev/null # playwright-core for tests/e2e/test_browser.py, cached too
echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== pytest" && .venv/bin/pytest "$@"
