"""A real browser for the end-to-end tests and ``make demo``: Debian's Chromium
(``/usr/bin/chromium``, from ``scripts/setup.sh`` with ``WITH_TEST_SERVICES=1`` or
``WITH_BROWSER=1``) driven by playwright-core from the npm cache of
``scripts/install-browser.sh``, and a dashboard page (``dashboard.html``) that loads the
browser bundle of ``@cubejs-client/core`` from Cube's install and queries the broker's
``cube_url`` with a minted token, from an origin of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.harness import REPO
from tests.harness.cube import cube_install_dir

#: Debian's Chromium; playwright-core never downloads a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
#: The page, with ``__CONFIG__`` standing for its configuration (a JSON object:
#: ``token``, ``apiUrl``, ``query`` and optionally ``chart``, see the page's comment).
PAGE = Path(__file__).with_name("dashboard.html")
BROWSER_SCRIPT = Path(__file__).with_name("browser_load.js")
#: How long a page may take to write its outcome, and the whole browser run.
PAGE_TIMEOUT = 20.0
BROWSER_TIMEOUT = 60.0


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


def dashboard_app(config: Mapping[str, Any]) -> web.Application:
    """The dashboard's static server: the page, with ``config`` in it, and the bundle."""
    page = PAGE.read_text().replace("__CONFIG__", json.dumps(config).replace("<", "\\u003c"))
    bundle = cubejs_client_bundle()

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def script(_: web.Request) -> web.FileResponse:
        return web.FileResponse(bundle, headers={"Content-Type": "text/javascript"})

    async def no_icon(_: web.Request) -> web.Response:
        return web.Response(status=204)  # keeps the console free of a 404 per page

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/cubejs-client-core.umd.js", script)
    app.router.add_get("/favicon.ico", no_icon)
    return app


@contextlib.asynccontextmanager
async def serve_dashboard(config: Mapping[str, Any], ports: list[int]) -> AsyncIterator[list[str]]:
    """The dashboard served on each of ``ports`` of 127.0.0.1 (an origin each) while the
    block runs: the page URLs, in the order of ``ports``."""
    runner = web.AppRunner(dashboard_app(config))
    await runner.setup()
    try:
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        yield [f"http://127.0.0.1:{port}/" for port in ports]
    finally:
        await runner.cleanup()


async def open_in_chromium(
    urls: list[str], *, screenshots: Mapping[str, Path] | None = None
) -> dict[str, Any]:
    """``browser_load.js`` on ``urls``: per URL the page's outcome, its title, its console
    lines and the requests that failed; a PNG screenshot of each page named in
    ``screenshots``. Runs without blocking the loop that serves the pages. Node and the
    Chromium it starts run in a process group of their own, which is killed whatever
    happens (a timeout, a cancellation, the demo's Ctrl-C), so no browser outlives it."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH (WITH_LOCAL_STACK=1 bash scripts/setup.sh)")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PLAYWRIGHT_INSTALL_DIR": str(browser_install_dir()),
        "CHROMIUM": str(CHROMIUM),
        "PAGE_URLS": json.dumps(urls),
        "PAGE_TIMEOUT_MS": str(int(PAGE_TIMEOUT * 1000)),
        "SCREENSHOTS": json.dumps({url: str(path) for url, path in (screenshots or {}).items()}),
    }
    if "TMPDIR" in os.environ:  # Chromium's profile goes where the caller's temporaries go
        env["TMPDIR"] = os.environ["TMPDIR"]
    process = await asyncio.create_subprocess_exec(
        node,
        str(BROWSER_SCRIPT),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(BROWSER_TIMEOUT):
            out, err = await process.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # Chromium too, should Node have left it
        if process.returncode is None:
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"browser_load.js failed:\n{err.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = json.loads(out)
    return result
