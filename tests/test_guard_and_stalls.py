"""The brute-force guard cannot lock out a shared address, and a stalled store cannot make
callers wait (SPEC §3, §9)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.state import STORE
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.harness.redis import RedisServer, start_redis
from tests.harness.settings import ADMIN_KEY, make_settings
from tests.helpers import assert_error

Client = TestClient[Any, Any]
ADMIN = {"X-API-Key": ADMIN_KEY}
TOKEN = "/api/v0/semantic-model/orders/generate-token"
#: The address every request below comes from, behind a trusted proxy (a shared NAT).
SHARED = {"X-Forwarded-For": "203.0.113.7"}


async def new_key(c: Client) -> str:
    return (await create_key(c))[0]


async def block_shared_address(c: Client) -> None:
    for _ in range(40):
        resp = await c.post(TOKEN, headers={"X-API-KEY": "ath_garbage", **SHARED})
        if resp.status == 429:
            return
    pytest.fail("the guard never blocked the address")


async def test_a_blocked_address_still_serves_credentials_known_to_be_good(
    aiohttp_client: Any, tmp_path: Any, aiohttp_server: Any
) -> None:
    fake = FakeCube()
    cube = await aiohttp_server(fake.app())
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db",
        BROKER_TRUSTED_PROXIES="127.0.0.1/32",
        BROKER_BRUTE_FORCE_LIMIT="20",
        BROKER_CUBE_URL=str(cube.make_url("")).rstrip("/"),
    )
    c: Client = await aiohttp_client(create_app(settings))
    good, unseen = await new_key(c), await new_key(c)
    minted = await c.post(TOKEN, headers={"X-API-KEY": good, **SHARED})
    token = (await minted.json())["token"]
    load = await c.get("/cubejs-api/v1/load", headers={"Authorization": token, **SHARED})
    assert load.status == 200
    await block_shared_address(c)

    store = c.app[STORE]
    calls: list[str] = []
    for name in ("find_key", "get_key", "token_owner", "count_failure"):
        original = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return await _original(*args)

        setattr(store, name, counted)

    # known good here: served
    assert (await c.post(TOKEN, headers={"X-API-KEY": good, **SHARED})).status == 200
    load = await c.get("/cubejs-api/v1/load", headers={"Authorization": token, **SHARED})
    assert load.status == 200
    assert (await c.get("/admin/api-keys", headers={**ADMIN, **SHARED})).status == 200
    # anything else: 429 at once, without a store round trip
    calls.clear()
    for headers in (
        {"X-API-KEY": unseen},
        {"X-API-KEY": "ath_garbage"},
        {"Authorization": "x.y.z"},
    ):
        resp = await c.post(TOKEN, headers={**headers, **SHARED})
        await assert_error(resp, 429, "rate_limited")
        assert int(resp.headers["Retry-After"]) >= 1
    assert calls == []
    # the unseen key from another address is fine
    assert (await c.post(TOKEN, headers={"X-API-KEY": unseen})).status == 200


async def test_a_revoked_key_is_no_longer_vouched_for(aiohttp_client: Any, tmp_path: Any) -> None:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db",
        BROKER_TRUSTED_PROXIES="127.0.0.1/32",
        BROKER_BRUTE_FORCE_LIMIT="20",
    )
    c: Client = await aiohttp_client(create_app(settings))
    good = await new_key(c)
    assert (await c.post(TOKEN, headers={"X-API-KEY": good, **SHARED})).status == 200
    await block_shared_address(c)
    public_id = good[4:20]
    assert (await c.delete(f"/admin/api-keys/{public_id}", headers=ADMIN)).status == 204
    await assert_error(
        await c.post(TOKEN, headers={"X-API-KEY": good, **SHARED}), 429, "rate_limited"
    )


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.resume() if server.running else None
        server.stop()


async def test_a_stalled_redis_answers_every_call_within_two_seconds(
    aiohttp_client: Any, own_redis: RedisServer
) -> None:
    c: Client = await aiohttp_client(create_app(make_settings(BROKER_STORE=own_redis.url)))
    key = await new_key(c)
    assert (await c.post(TOKEN, headers={"X-API-KEY": key})).status == 200
    own_redis.pause()
    try:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: c.post(TOKEN, headers={"X-API-KEY": key}),  # a cached key and token
            lambda: c.post(TOKEN, headers={"X-API-KEY": "ath_" + "a" * 16 + "." + "b" * 43}),
            lambda: c.get("/admin/api-keys", headers=ADMIN),
            lambda: c.post("/admin/api-keys", json={"name": "n"}, headers=ADMIN),
            lambda: c.get("/readyz"),
        ]
        for _ in range(2):  # at once, and once the key cache no longer vouches
            for call in calls:
                started = time.monotonic()
                resp = await call()
                took = time.monotonic() - started
                assert resp.status in (200, 503), await resp.text()
                assert took < 2.0, f"{resp.method} {resp.url.path} took {took:.2f} s"
            await asyncio.sleep(1.0)
    finally:
        own_redis.resume()
    deadline = time.monotonic() + 10
    while (await c.post(TOKEN, headers={"X-API-KEY": key})).status != 200:
        assert time.monotonic() < deadline, "did not serve again after the store came back"
        await asyncio.sleep(0.05)
