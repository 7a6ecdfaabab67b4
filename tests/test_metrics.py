"""``/metrics`` (SPEC §9): the metrics an operator alerts on, read through ``/metrics`` of an
app under test after the requests that move them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from broker import __version__
from broker.app import create_app
from broker.settings import Settings
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.harness.settings import make_settings
from tests.helpers import TOKEN_PATH, AiohttpClient, Client, sample, samples, scrape


async def test_standard_collectors_and_build_info(client: Client) -> None:
    text = await scrape(client)
    assert sample(text, "broker_build_info", version=__version__) == 1
    resident = sample(text, "process_resident_memory_bytes")
    assert resident is not None and resident > 0
    assert samples(text, "process_cpu_seconds_total")
    assert samples(text, "python_info")
    assert samples(text, "python_gc_collections_total")


async def test_two_apps_keep_their_own_registries(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    """Each app has its collectors on its own registry: a second app in the same process
    registers them again without a clash, and counts apart."""
    a: Client = await aiohttp_client(create_app(settings))
    b: Client = await aiohttp_client(create_app(settings))
    await a.get("/healthz")
    count = {"listener": "any", "route": "/healthz", "method": "GET", "status": "200"}
    assert sample(await scrape(a), "broker_requests_total", **count) == 1
    assert sample(await scrape(b), "broker_requests_total", **count) is None


async def test_tokens_minted_and_cache_hits_by_model(client: Client) -> None:
    key, _ = await create_key(client)
    for _ in range(3):
        resp = await client.post(TOKEN_PATH, headers={"X-API-KEY": key})
        assert resp.status == 200
    text = await scrape(client)
    assert sample(text, "broker_tokens_minted_total", model="orders") == 1
    assert sample(text, "broker_token_cache_hits_total", model="orders") == 2


@pytest.fixture
async def cube_url(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(FakeCube().app())
    return str(server.make_url("")).rstrip("/")


async def test_upstream_duration_by_model(
    aiohttp_client: AiohttpClient, tmp_path: Path, cube_url: str
) -> None:
    settings = make_settings(BROKER_STORE=f"sqlite:///{tmp_path}/b.db", BROKER_CUBE_URL=cube_url)
    c: Client = await aiohttp_client(create_app(settings))
    key, _ = await create_key(c)
    token = (await (await c.post(TOKEN_PATH, headers={"X-API-KEY": key})).json())["token"]
    key_mode = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    assert (await c.get("/cubejs-api/v1/meta", headers=key_mode)).status == 200
    assert (
        await c.get("/cubejs-api/v1/load?query=%7B%7D", headers={"Authorization": token})
    ).status == 200
    assert (await c.get("/api/v0/semantic-model/orders/metadata", headers=key_mode)).status == 200
    query = {"query": {"measures": ["orders.count"]}}
    resp = await c.post("/api/v0/semantic-model/orders/query", json=query, headers=key_mode)
    assert resp.status == 200
    text = await scrape(c)
    assert sample(text, "broker_upstream_duration_seconds_count", model="orders") == 4
    assert sample(text, "broker_upstream_duration_seconds_bucket", model="orders", le="+Inf") == 4
