"""CORS as a browser enforces it (SPEC §8): Chromium opens a dashboard page served on an
origin of its own, which loads ``@cubejs-client/core``'s browser bundle and calls
``cubejs(token, {apiUrl: cube_url}).load(...)`` with a token minted by the broker. The
origin listed in ``BROKER_CORS_ORIGINS`` gets the data; another origin (another port of
127.0.0.1) is refused by the browser itself and its page shows no data.

The session's ``e2e_stack`` runs without ``BROKER_CORS_ORIGINS``, so this module starts
a broker and a Cube of its own, with the allowed page's origin listed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.harness import DATA
from tests.harness.broker import BrokerProcess
from tests.harness.browser import CHROMIUM, browser_install_dir, cubejs_client_bundle
from tests.harness.cube import start_broker_with_cube
from tests.harness.http import request_json
from tests.harness.keys import create_key_at
from tests.harness.ports import free_ports
from tests.harness.postgres import ORDERS_COUNT, PostgresServer
from tests.harness.registry import PASSWORD_VARIABLE, write_registry
from tests.harness.settings import ADMIN_KEY, API_SECRET, CALLBACK_SECRET

#: Cube starts in this module's fixture and compiles the schema on its first query.
pytestmark = pytest.mark.timeout(180)

BROWSER_SCRIPT = Path(__file__).with_name("browser_load.js")
QUERY = {"measures": ["orders.count"]}
#: How long a page may take to write its outcome, and the whole browser run.
PAGE_TIMEOUT = 20.0
BROWSER_TIMEOUT = 60.0

#: The dashboard: the bundle defines ``window.cubejs``; the outcome of ``load()`` goes
#: into ``#outcome`` as JSON (``{"data": rawData}`` or ``{"error": message}``).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dashboard</title></head>
<body>
<pre id="outcome"></pre>
<script src="/cubejs-client-core.umd.js"></script>
<script>
const config = __CONFIG__;
const outcome = document.getElementById('outcome');
function done(value) {
  outcome.textContent = JSON.stringify(value);
  outcome.dataset.done = '1';
}
const cubejs = window.cubejs.default || window.cubejs;
cubejs(config.token, { apiUrl: config.apiUrl })
  .load(config.query)
  .then((resultSet) => done({ data: resultSet.rawData() }))
  .catch((error) => done({ error: String((error && error.message) || error) }));
</script>
</body></html>
"""


@dataclass(frozen=True)
class CorsStack:
    broker: BrokerProcess
    #: The one origin of ``BROKER_CORS_ORIGINS``'s list and a port for an unlisted one.
    allowed_port: int
    other_port: int
    athena_key: str


@pytest.fixture(scope="module")
def cors_stack(postgres: PostgresServer) -> Iterator[CorsStack]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: WITH_TEST_SERVICES=1 bash scripts/setup.sh")
    allowed_port, other_port = free_ports(2)
    workdir = Path(tempfile.mkdtemp(prefix="broker-e2e-browser-"))
    try:
        registry_path = write_registry(
            workdir, postgres, models=DATA / "models", password_variable=PASSWORD_VARIABLE
        )
        broker, cube = start_broker_with_cube(
            {
                "CUBEJS_API_SECRET": API_SECRET,
                "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
                "ATHENA_KEY_12": ADMIN_KEY,
                "BROKER_STORE": f"sqlite:///{workdir}/store/broker.db",
                "BROKER_MODELS": str(registry_path),
                "BROKER_LOG_FORMAT": "json",
                "BROKER_SHUTDOWN_GRACE": "2",
                "BROKER_CORS_ORIGINS": f"http://127.0.0.1:{allowed_port}",
                PASSWORD_VARIABLE: postgres.password,
            },
            workdir,
        )
        with broker, cube:
            athena_key, _ = create_key_at(broker.admin_url, ADMIN_KEY, name="e2e-browser")
            yield CorsStack(broker, allowed_port, other_port, athena_key)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def dashboard_app(config: dict[str, Any]) -> web.Application:
    """The dashboard's static server: the page, with ``config`` in it, and the bundle."""
    page = PAGE.replace("__CONFIG__", json.dumps(config).replace("<", "\\u003c"))
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


@pytest.fixture
async def dashboards(cors_stack: CorsStack) -> AsyncIterator[tuple[str, str]]:
    """The dashboard served on the allowed origin and on the other one: the two page URLs."""
    status, minted = request_json(
        "POST",
        f"{cors_stack.broker.url}/api/v0/semantic-model/orders/generate-token",
        headers={"X-API-Key": cors_stack.athena_key},
    )
    assert status == 200, minted
    runner = web.AppRunner(
        dashboard_app({"token": minted["token"], "apiUrl": minted["cube_url"], "query": QUERY})
    )
    await runner.setup()
    try:
        for port in (cors_stack.allowed_port, cors_stack.other_port):
            await web.TCPSite(runner, "127.0.0.1", port).start()
        yield (
            f"http://127.0.0.1:{cors_stack.allowed_port}/",
            f"http://127.0.0.1:{cors_stack.other_port}/",
        )
    finally:
        await runner.cleanup()


async def open_in_chromium(urls: list[str]) -> dict[str, Any]:
    """``browser_load.js`` on ``urls``: per URL the page's outcome, its console lines and
    the requests that failed. Runs without blocking the loop that serves the pages."""
    node = shutil.which("node")
    assert node is not None, "node is not on PATH (WITH_TEST_SERVICES=1 scripts/setup.sh)"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PLAYWRIGHT_INSTALL_DIR": str(browser_install_dir()),
        "CHROMIUM": str(CHROMIUM),
        "PAGE_URLS": json.dumps(urls),
        "PAGE_TIMEOUT_MS": str(int(PAGE_TIMEOUT * 1000)),
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(BROWSER_SCRIPT),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BROWSER_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode(errors="replace")
    result: dict[str, Any] = json.loads(out)
    return result


async def test_the_listed_origin_gets_data_and_another_is_refused_by_the_browser(
    cors_stack: CorsStack, dashboards: tuple[str, str]
) -> None:
    allowed, other = dashboards
    seen = await open_in_chromium([allowed, other])
    cube_url = f"{cors_stack.broker.url}/cubejs-api/v1"

    listed = seen[allowed]
    assert listed["outcome"] == {"data": [{"orders.count": str(ORDERS_COUNT)}]}, listed
    assert listed["failed"] == [], listed
    assert not any("CORS" in line for line in listed["console"]), listed

    unlisted = seen[other]
    assert "data" not in unlisted["outcome"], unlisted
    assert unlisted["outcome"]["error"], unlisted
    origin = other.rstrip("/")
    assert any(
        "blocked by CORS policy" in line
        and "No 'Access-Control-Allow-Origin' header" in line
        and f"from origin '{origin}'" in line
        and cube_url in line
        for line in unlisted["console"]
    ), unlisted
    assert any(f["url"].startswith(f"{cube_url}/load") for f in unlisted["failed"]), unlisted
