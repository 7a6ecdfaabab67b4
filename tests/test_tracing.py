"""W3C trace context hand-off (SPEC §8): ``traceparent`` and ``tracestate`` reach Cube
unchanged on every call, the broker's own included; preflights allow them; the access log
names the trace."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from broker.support.tracing import trace_id
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.helpers import TOKEN_PATH, BrokerOnFake, Client

ORIGIN = "https://dash.example.com"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE = {
    "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
}


@pytest.fixture
async def broker(broker_on_fake: BrokerOnFake) -> Client:
    return await broker_on_fake(
        BROKER_CORS_ORIGINS=ORIGIN,
    )


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01", TRACE_ID),
        (f"00-{TRACE_ID}-00f067aa0ba902b7-00", TRACE_ID),
        (f"01-{TRACE_ID}-00f067aa0ba902b7-01-later", TRACE_ID),  # a future version's fields
        (f"00-{TRACE_ID}-00f067aa0ba902b7-01-later", None),  # version 00 has exactly four
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_trace_id(traceparent: str | None, expected: str | None) -> None:
    assert trace_id(traceparent) == expected


async def test_trace_headers_reach_cube_on_every_call(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    minted = await broker.post(TOKEN_PATH, headers={"X-API-KEY": key})
    token = (await minted.json())["token"]
    calls = [
        broker.get("/cubejs-api/v1/load", headers={"Authorization": token, **TRACE}),
        broker.get(
            "/cubejs-api/v1/meta", headers={"X-API-KEY": key, "X-Semantic-Model": "orders", **TRACE}
        ),
        broker.get("/api/v0/semantic-model/orders/metadata", headers={"X-API-KEY": key, **TRACE}),
    ]
    for call in calls:
        assert (await call).status == 200
    fake.continue_waits = 2  # every poll of the broker's own query carries them
    query = await broker.post(
        "/api/v0/semantic-model/orders/query",
        json={"query": {"measures": ["orders.count"]}},
        headers={"X-API-KEY": key, **TRACE},
    )
    assert query.status == 200
    assert len(fake.seen) == 6
    for seen in fake.seen:
        assert {name: seen.headers.get(name) for name in TRACE} == TRACE, seen.raw_path


async def test_without_trace_headers_none_are_invented(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query", json={"query": {}}, headers={"X-API-KEY": key}
    )
    assert resp.status == 200
    assert not any(name in fake.seen[-1].headers for name in TRACE)


async def test_preflight_allows_trace_headers(broker: Client) -> None:
    resp = await broker.options(
        "/cubejs-api/v1/load",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, traceparent, tracestate",
        },
    )
    assert resp.status == 204
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"traceparent", "tracestate", "authorization", "x-request-id"} <= allowed


async def test_access_log_carries_the_trace_id(
    broker: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.access")
    await broker.get("/healthz", headers=TRACE)
    await broker.get("/healthz", headers={"traceparent": "00-not-a-trace-01"})
    await broker.get("/healthz")
    lines: list[Any] = [r for r in caplog.records if r.name == "broker.access"]
    assert [getattr(r, "trace_id", None) for r in lines] == [TRACE_ID, None, None]
