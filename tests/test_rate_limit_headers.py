"""SPEC §4's ``RateLimit-*`` answer headers: on every answer to a request authenticated by
a key with a rate limit (directly or through a token it minted), error answers after the
limit was counted and the 429 included, refusals before the count with the state they did
not change; none for a key without a limit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.helpers import TOKEN_PATH, BrokerOnFake, Client, assert_error

ORIGIN = "https://dash.example.com"
NAMES = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


@pytest.fixture
async def broker(broker_on_fake: BrokerOnFake) -> Client:
    return await broker_on_fake(
        BROKER_CORS_ORIGINS=ORIGIN,
    )


def limit_headers(resp: Any) -> tuple[str, str, str] | None:
    """The three headers' values, or ``None`` when the answer has none of them."""
    if not any(name in resp.headers for name in NAMES):
        return None
    limit, remaining, reset = (resp.headers[name] for name in NAMES)
    return limit, remaining, reset


async def test_key_answers_count_down_to_the_429(broker: Client) -> None:
    key, _ = await create_key(broker, rate_limit_per_minute=3)
    seen = []
    for _ in range(4):
        resp = await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})
        seen.append((resp.status, limit_headers(resp)))
    assert seen == [
        (200, ("3", "2", "20")),
        (200, ("3", "1", "40")),
        (200, ("3", "0", "60")),
        (429, ("3", "0", "60")),
    ]
    refused = await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})
    await assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 20


async def test_keys_without_a_limit_get_none(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    resp = await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})
    assert resp.status == 200 and limit_headers(resp) is None
    token = (await resp.json())["token"]
    load = await broker.get("/cubejs-api/v1/load", headers={"Authorization": token})
    assert load.status == 200 and limit_headers(load) is None
    assert limit_headers(await broker.post(TOKEN_PATH)) is None  # nobody authenticated


async def test_proxy_answers_through_a_token_and_a_key(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker, rate_limit_per_minute=5)
    minted = await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})
    assert limit_headers(minted) == ("5", "4", "12")
    token = (await minted.json())["token"]
    by_token = await broker.get("/cubejs-api/v1/load", headers={"Authorization": token})
    assert by_token.status == 200
    assert limit_headers(by_token) == ("5", "3", "24")
    by_key = await broker.get(
        "/cubejs-api/v1/meta", headers={"X-API-KEY": key, "X-Semantic-Model": "orders"}
    )
    assert by_key.status == 200
    assert limit_headers(by_key) == ("5", "2", "36")
    fake.status, fake.body = 400, {"error": "Unknown member"}  # Cube's own refusal
    refused = await broker.get("/cubejs-api/v1/load", headers={"Authorization": token})
    assert refused.status == 400
    assert limit_headers(refused) == ("5", "1", "48")
    decided = await broker.get(
        "/auth/v1/cube", headers={"Authorization": token, "X-Original-URI": "/cubejs-api/v1/load"}
    )
    assert decided.status == 200
    assert limit_headers(decided) == ("5", "0", "60")


async def test_an_unknown_model_after_the_limit_still_carries_them(broker: Client) -> None:
    key, _ = await create_key(broker, rate_limit_per_minute=4)
    api = await broker.post(
        "/api/v0/semantic-model/nope/generate-token", headers={"X-API-KEY": key}
    )
    await assert_error(api, 404, "not_found")
    assert limit_headers(api) == ("4", "3", "15")
    proxied = await broker.get(
        "/cubejs-api/v1/load", headers={"X-API-KEY": key, "X-Semantic-Model": "nope"}
    )
    await assert_error(proxied, 404, "not_found")
    assert limit_headers(proxied) == ("4", "2", "30")


async def test_refusals_before_the_count_carry_the_state_they_left(broker: Client) -> None:
    """A missing right or a refused address (checked before the count) reports the limit
    as it stands and counts nothing: the next allowed request still finds it."""
    key, _ = await create_key(
        broker, rate_limit_per_minute=4, rights=["semantic_model.token.create"]
    )
    assert limit_headers(await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})) == (
        "4",
        "3",
        "15",
    )
    for _ in range(3):  # no right for /meta: 403, the bucket untouched
        refused = await broker.get(
            "/cubejs-api/v1/meta", headers={"X-API-KEY": key, "X-Semantic-Model": "orders"}
        )
        await assert_error(refused, 403, "forbidden")
        assert limit_headers(refused) == ("4", "3", "15")
    assert limit_headers(await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})) == (
        "4",
        "2",
        "30",
    )
    walled, _ = await create_key(broker, rate_limit_per_minute=4, ip_whitelist=["10.9.9.9"])
    blocked = await broker.post(TOKEN_PATH, headers={"X-API-KEY": walled})
    await assert_error(blocked, 403, "ip_not_allowed")
    assert limit_headers(blocked) == ("4", "4", "0")
    unlimited, _ = await create_key(broker, ip_whitelist=["10.9.9.9"])
    blocked = await broker.post(TOKEN_PATH, headers={"X-API-KEY": unlimited})
    await assert_error(blocked, 403, "ip_not_allowed")
    assert limit_headers(blocked) is None


async def test_browsers_may_read_them(broker: Client) -> None:
    key, _ = await create_key(broker, rate_limit_per_minute=2)
    resp = await broker.post(TOKEN_PATH, headers={"X-API-KEY": key, "Origin": ORIGIN})
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {*NAMES, "Retry-After", "X-Request-Id"} <= exposed
