"""The broker while its store is down (SPEC §9): ``/readyz`` says so, keys and tokens fail
closed with 503, and all recovers once the store is back. Each test kills a Redis of its
own (``private_redis``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from broker.app import create_app
from tests.harness.keys import create_key
from tests.harness.redis import RedisServer
from tests.harness.settings import make_settings
from tests.helpers import TOKEN_PATH, assert_error


async def test_readyz_reports_a_dead_store(aiohttp_client: Any, private_redis: RedisServer) -> None:
    server = private_redis
    c = await aiohttp_client(create_app(make_settings(BROKER_STORE=server.url)))
    assert (await c.get("/readyz")).status == 200
    server.kill()
    resp = await c.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "error" and body["checks"]["store"] != "ok"
    assert body["checks"]["models"] == "ok"
    listing = await c.get("/admin/api-keys", headers={"X-API-Key": "x" * 40})
    assert listing.status in (401, 503)
    server.restart()
    for _ in range(100):
        if (await c.get("/readyz")).status == 200:
            break
    else:
        pytest.fail("store did not come back")


async def test_store_outage_fails_closed_then_recovers(
    aiohttp_client: Any, private_redis: RedisServer
) -> None:
    server = private_redis
    c = await aiohttp_client(create_app(make_settings(BROKER_STORE=server.url)))
    key, _ = await create_key(c, rate_limit_per_minute=1000)
    assert (await c.post(TOKEN_PATH, headers={"X-API-KEY": key})).status == 200
    server.kill()
    deadline = time.monotonic() + 10
    while True:
        resp = await c.post(TOKEN_PATH, headers={"X-API-KEY": key})
        if resp.status == 503:
            await assert_error(resp, 503, "store_unavailable")
            break
        assert resp.status == 200 and time.monotonic() < deadline
        await asyncio.sleep(0.05)
    server.restart()  # an empty Redis: the test server keeps nothing on disk
    deadline = time.monotonic() + 10
    while (await c.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, "did not recover after the store came back"
        await asyncio.sleep(0.05)
    fresh, _ = await create_key(c)
    assert (await c.post(TOKEN_PATH, headers={"X-API-KEY": fresh})).status == 200
