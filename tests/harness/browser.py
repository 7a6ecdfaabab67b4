"""A real browser for the end-to-end tests: Debian's Chromium (``/usr/bin/chromium``, from
``WITH_TEST_SERVICES=1 scripts/setup.sh``) driven by playwright-core from the npm cache of
``scripts/install-browser.sh``, and the browser bundle of ``@cubejs-client/core`` from
Cube's install."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import REPO
from tests.harness.cube import cube_install_dir

#: Debian's Chromium; playwright-core never downloads a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")


def browser_install_dir() -> Path:
    """Where ``scripts/install-browser.sh`` installed playwright-core (running it: a no-op
    when done)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-browser.sh")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/install-browser.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def cubejs_client_bundle() -> Path:
    """``@cubejs-client/core``'s UMD bundle, which a page loads with a ``<script>`` tag and
    which defines ``window.cubejs``."""
    return (
        cube_install_dir()
        / "node_modules"
        / "@cubejs-client"
        / "core"
        / "dist"
        / "cubejs-client-core.umd.js"
    )
