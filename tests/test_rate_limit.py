"""Per-key rate limits (SPEC §4), shared by the replicas; Cube's "Continue wait" polls of
one query are not counted again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.app import create_app
from broker.keys.policy import poll_identity
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.harness.settings import make_settings
from tests.helpers import TOKEN_PATH, assert_error

#: The limit is the store's bucket, shared by replicas; the poll grace is a store mark.
pytestmark = pytest.mark.both_stores


def test_poll_identity() -> None:
    load = ("GET", "/cubejs-api/v1/load?query=%7B%7D", b"")
    first, later = poll_identity("3f2a-span-1", *load), poll_identity("3f2a-span-12", *load)
    assert first == later and first is not None and first.startswith("3f2a:")
    assert poll_identity("3f2a-span-2", "GET", "/cubejs-api/v1/load?query=%7B%22a%22%7D") != first
    assert poll_identity("3f2a-span-2", "POST", "/cubejs-api/v1/load", b"{}") != first
    assert poll_identity(None, *load) is None


async def test_rate_limit_shared_across_replicas(replicas: Any) -> None:
    nodes = await replicas(2)
    key, _ = await create_key(nodes[0], rate_limit_per_minute=3)
    responses = await asyncio.gather(
        *(nodes[i % 2].post(TOKEN_PATH, headers={"X-API-KEY": key}) for i in range(8))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 3 + [429] * 5
    refused = next(r for r in responses if r.status == 429)
    body = await assert_error(refused, 429, "rate_limited")
    assert "3" in body["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    other, _ = await create_key(nodes[0], rate_limit_per_minute=3)
    assert (await nodes[1].post(TOKEN_PATH, headers={"X-API-KEY": other})).status == 200


async def test_continue_wait_polls_are_not_counted(
    aiohttp_client: Any, aiohttp_server: Any, store_url: str
) -> None:
    fake = FakeCube(continue_waits=5)
    server = await aiohttp_server(fake.app())
    c = await aiohttp_client(
        create_app(
            make_settings(
                BROKER_STORE=store_url, BROKER_CUBE_URL=str(server.make_url("")).rstrip("/")
            )
        )
    )
    key, _ = await create_key(c, rate_limit_per_minute=2)
    headers = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    statuses = []
    for span in range(1, 7):  # five "Continue wait" answers, then the result
        resp = await c.get(
            "/cubejs-api/v1/load?query=%7B%7D",
            headers={**headers, "X-Request-Id": f"q1-span-{span}"},
        )
        statuses.append(resp.status)
    assert statuses == [200] * 6
    assert len(fake.seen) == 6
    second = await c.get("/cubejs-api/v1/load", headers={**headers, "X-Request-Id": "q2-span-1"})
    assert second.status == 200
    # the poll grace belongs to q1's query, not to its request ID
    other_query = await c.get(
        "/cubejs-api/v1/load?query=%7B%22x%22%3A1%7D",
        headers={**headers, "X-Request-Id": "q1-span-7"},
    )
    await assert_error(other_query, 429, "rate_limited")
    third = await c.get("/cubejs-api/v1/load", headers={**headers, "X-Request-Id": "q3-span-1"})
    await assert_error(third, 429, "rate_limited")
