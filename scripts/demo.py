"""``make demo``: the whole path on loopback, then nothing left behind.

Starts a private PostgreSQL cluster holding the sample table ``shop.public.orders``, the
broker (``python -m broker serve``) with a temporary registry of the sample model
``config/models/orders`` pointing at that cluster, and the real Cube server with
``deploy/cube/cube.js``; creates an Athena key through the admin API, mints a token and
runs a real query through the broker, printing each step as the equivalent ``curl``
command and the answer; at last Debian's Chromium opens a dashboard page on an origin of
its own (listed in the broker's ``BROKER_CORS_ORIGINS``), which loads the same query with
``@cubejs-client/core``'s browser bundle and the minted token and draws it as a bar
chart, and the demo prints the bars the page reported and the path of its screenshot
(``--screenshot``, by default ``var/demo/dashboard.png``, which is kept). Everything else
runs on free ports of 127.0.0.1 with throw-away secrets, and is stopped and removed at
the end, also on errors, Ctrl-C or SIGTERM.

The process helpers are those of the end-to-end tests (``tests/harness/``). Run it
through ``scripts/demo.sh``, which first installs what it needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.broker import start_broker  # noqa: E402  (after the sys.path entry above)
from tests.harness.browser import CHROMIUM, open_in_chromium, serve_dashboard  # noqa: E402
from tests.harness.cube import start_cube  # noqa: E402
from tests.harness.foreground import run_in_foreground, say  # noqa: E402
from tests.harness.ports import free_ports  # noqa: E402
from tests.harness.postgres import ORDERS_ROWS, start_postgres  # noqa: E402
from tests.harness.registry import write_registry  # noqa: E402

#: The environment variable through which the broker gets the database password.
PASSWORD_VARIABLE = "DEMO_DB_PASSWORD"  # noqa: S105  (a variable name)
QUERY = {
    "measures": ["orders.count", "orders.total_amount"],
    "dimensions": ["orders.status"],
    "order": {"orders.status": "asc"},
}
#: What the dashboard draws of :data:`QUERY`'s rows: a bar per status, as long as its count.
CHART = {"dimension": "orders.status", "measure": "orders.count"}
#: Where the dashboard's screenshot goes unless ``--screenshot`` says otherwise (``var/``
#: is the checkout's ignored state folder; the demo's cleanup leaves it alone).
SCREENSHOT = REPO / "var" / "demo" / "dashboard.png"
#: The line that reports what the page drew, as JSON after it (tests/e2e/test_demo.py).
DREW = "The page drew these bars:"


def heading(text: str, *, first: bool = False) -> None:
    say(f"== {text}" if first else f"\n== {text}")


def show(command: str, answer: object | None = None) -> None:
    say(f"$ {command}", *([] if answer is None else [json.dumps(answer, indent=2)]))


def abridged(secret: str) -> str:
    return f"{secret[:12]}…" if len(secret) > 12 else secret


def call(
    method: str, url: str, *, headers: dict[str, str], body: object | None = None
) -> tuple[int, Any]:
    """One HTTP request with an optional JSON body: the status and the parsed answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310  (always http://127.0.0.1)
        url, data=data, method=method, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def expect(status: int, answer: Any, wanted: int, what: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{what}: HTTP {status}: {json.dumps(answer)}")


def dashboard(token: str, cube_url: str, port: int, screenshot: Path) -> dict[str, Any]:
    """The dashboard page served on ``port`` while Chromium opens it: what it reported."""

    async def run() -> dict[str, Any]:
        config = {"token": token, "apiUrl": cube_url, "query": QUERY, "chart": CHART}
        async with serve_dashboard(config, [port]) as (url,):
            seen = await open_in_chromium([url], screenshots={url: screenshot})
        page: dict[str, Any] = seen[url]
        return page

    return asyncio.run(run())


def demo(stack: ExitStack, screenshot: Path) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="broker-demo-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    api_secret = secrets.token_urlsafe(32)
    callback_secret = secrets.token_urlsafe(32)
    admin_key = secrets.token_urlsafe(32)

    heading("1. A private PostgreSQL with the sample table", first=True)
    postgres = start_postgres()
    stack.callback(postgres.stop)
    say(
        f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{postgres.database}"
        f", table public.orders ({len(ORDERS_ROWS)} rows):",
        postgres.psql("SELECT id, status, created_at, amount FROM public.orders ORDER BY id"),
    )

    heading("2. The broker")
    registry = write_registry(
        workdir, postgres, models=REPO / "config" / "models", password_variable=PASSWORD_VARIABLE
    )
    cube_port, page_port = free_ports(2)
    page_origin = f"http://127.0.0.1:{page_port}"
    broker = start_broker(
        {
            "CUBEJS_API_SECRET": api_secret,
            "BROKER_CALLBACK_SECRET": callback_secret,
            "ATHENA_KEY_12": admin_key,
            "BROKER_STORE": f"sqlite:///{workdir}/store/broker.db",
            "BROKER_MODELS": str(registry),
            "BROKER_CUBE_URL": f"http://127.0.0.1:{cube_port}",
            "BROKER_LOG_FORMAT": "json",
            "BROKER_SHUTDOWN_GRACE": "2",
            "BROKER_CORS_ORIGINS": page_origin,
            PASSWORD_VARIABLE: postgres.password,
        },
        workdir,
    )
    stack.callback(broker.stop)
    say(
        f"public {broker.url}, admin {broker.admin_url}, internal {broker.internal_url}"
        f" (log {broker.log_path}); registry {registry}:",
        registry.read_text().rstrip(),
    )

    heading("3. Cube 0.33.65 with deploy/cube/cube.js (no database credentials of its own)")
    cube = start_cube(
        api_secret=api_secret,
        broker_url=broker.internal_url,
        callback_secret=callback_secret,
        port=cube_port,
    )
    stack.callback(cube.stop)
    say(
        f"{cube.url}: CUBEJS_API_SECRET, BROKER_INTERNAL_URL={broker.internal_url},"
        " BROKER_CALLBACK_SECRET"
    )

    b, a = broker.url, broker.admin_url
    say(
        f"\nIn the commands below: B={b} (public), A={a} (admin), ADMIN_KEY=<the admin key>,"
        " KEY and TOKEN as made."
    )

    heading("4. Create an Athena key (admin API)")
    new_key = {"name": "demo", "rights": ["semantic_model.*"]}
    status, created = call(
        "POST", f"{a}/admin/api-keys", headers={"X-API-Key": admin_key}, body=new_key
    )
    expect(status, created, 201, "creating a key")
    key: str = created["api_key"]
    show(
        'curl -s -X POST $A/admin/api-keys -H "X-API-Key: $ADMIN_KEY" '
        f"-H 'Content-Type: application/json' -d '{json.dumps(new_key)}'",
        {**created, "api_key": abridged(key)},
    )

    heading("5. Mint a Cube token")
    status, minted = call(
        "POST", f"{b}/api/v0/semantic-model/orders/generate-token", headers={"X-API-KEY": key}
    )
    expect(status, minted, 200, "generate-token")
    token: str = minted["token"]
    show(
        'curl -s -X POST $B/api/v0/semantic-model/orders/generate-token -H "X-API-KEY: $KEY"',
        {**minted, "token": abridged(token)},
    )

    heading("6. A query through the semantic API (the broker follows Continue wait)")
    status, result = call(
        "POST",
        f"{b}/api/v0/semantic-model/orders/query",
        headers={"X-API-KEY": key},
        body={"query": QUERY},
    )
    expect(status, result, 200, "the semantic query")
    show(
        'curl -s -X POST $B/api/v0/semantic-model/orders/query -H "X-API-KEY: $KEY" '
        f"-H 'Content-Type: application/json' -d '{json.dumps({'query': QUERY})}'",
        {"data": result["data"]},
    )

    heading("7. The same through Cube's REST API at cube_url, as @cubejs-client/core calls it")
    url = f"{minted['cube_url']}/load?query={quote(json.dumps(QUERY), safe='')}"
    deadline = time.monotonic() + 60
    while True:
        status, result = call("GET", url, headers={"Authorization": token})
        if not (isinstance(result, dict) and result.get("error") == "Continue wait"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("Cube kept answering Continue wait for 60 s")
        time.sleep(0.2)
    expect(status, result, 200, "the load through the proxy")
    show(
        'curl -s -G "$CUBE_URL/load" -H "Authorization: $TOKEN" '
        f"--data-urlencode 'query={json.dumps(QUERY)}'   # repeat while Continue wait",
        {"data": result["data"]},
    )

    heading("8. A dashboard in Chromium: @cubejs-client/core in a page, at cube_url with TOKEN")
    if not CHROMIUM.exists():
        say(
            f"Skipped: Debian's Chromium ({CHROMIUM}) is not installed;"
            " `WITH_BROWSER=1 bash scripts/setup.sh` (as root) installs it."
        )
        return "done."
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    seen = dashboard(token, minted["cube_url"], page_port, screenshot)
    outcome = seen["outcome"]
    if "chart" not in outcome:
        raise RuntimeError(f"the dashboard page drew nothing: {json.dumps(seen)}")
    say(
        f"{page_origin}/ (listed in BROKER_CORS_ORIGINS) loads the query of step 7 with the"
        f" browser bundle and draws {CHART['measure']} by {CHART['dimension']};"
        f" its title: {seen['title']!r}",
        f"{DREW} {json.dumps(outcome['chart'])}",
        f"Screenshot (kept): {screenshot}",
    )
    return "done."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=SCREENSHOT,
        help=f"where to save the dashboard's PNG screenshot (default: {SCREENSHOT})",
    )
    screenshot: Path = parser.parse_args().screenshot.resolve()
    return run_in_foreground(lambda stack: demo(stack, screenshot), name="demo")


if __name__ == "__main__":
    sys.exit(main())
