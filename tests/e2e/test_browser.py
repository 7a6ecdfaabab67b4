"""CORS as a browser enforces it (SPEC §8): Chromium opens a dashboard page served on an
origin of its own, which loads ``@cubejs-client/core``'s browser bundle and calls
``cubejs(token, {apiUrl: cube_url}).load(...)`` with a token minted by the broker. The
origin listed in ``BROKER_CORS_ORIGINS`` gets the data; another origin (another port of
127.0.0.1) is refused by the browser itself and its page shows no data.

The session's ``e2e_stack`` runs without ``BROKER_CORS_ORIGINS``, so this module starts
a broker and a Cube of its own, with the allowed page's origin listed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import DATA
from tests.harness.broker import BrokerProcess
from tests.harness.browser import CHROMIUM, open_in_chromium, serve_dashboard
from tests.harness.cube import start_broker_with_cube
from tests.harness.http import request_json
from tests.harness.keys import create_key_at
from tests.harness.ports import free_ports
from tests.harness.postgres import ORDERS_COUNT, PostgresServer
from tests.harness.registry import PASSWORD_VARIABLE, write_registry
from tests.harness.settings import ADMIN_KEY, API_SECRET, CALLBACK_SECRET

#: Cube starts in this module's fixture and compiles the schema on its first query.
pytestmark = pytest.mark.timeout(180)

QUERY = {"measures": ["orders.count"]}


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


@pytest.fixture
async def dashboards(cors_stack: CorsStack) -> AsyncIterator[tuple[str, str]]:
    """The dashboard served on the allowed origin and on the other one: the two page URLs."""
    status, minted = request_json(
        "POST",
        f"{cors_stack.broker.url}/api/v0/semantic-model/orders/generate-token",
        headers={"X-API-Key": cors_stack.athena_key},
    )
    assert status == 200, minted
    config = {"token": minted["token"], "apiUrl": minted["cube_url"], "query": QUERY}
    async with serve_dashboard(config, [cors_stack.allowed_port, cors_stack.other_port]) as urls:
        yield urls[0], urls[1]


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
