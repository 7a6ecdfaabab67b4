"""Request bodies under hostile callers (SPEC §3): read only after the credential passed,
one memory bound for all of them, 408 when one stalls, no 500 when the caller hangs up.

These speak raw HTTP to the app served as ``cube-broker serve`` serves it, so a body can
be cut short or stalled at will.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.state import BODIES, METRICS
from tests.harness.served import Served, read_answer, serve
from tests.harness.settings import ADMIN_KEY, make_settings
from tests.harness.waiting import wait_until

ADMIN = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"}
ALMOST_1_MIB = str(1024 * 1024 - 1)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Served]:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db",
        BROKER_BODY_MEMORY=str(1024 * 1024),
        BROKER_BODY_TIMEOUT="0.5",
    )
    async with serve(settings) as served:
        yield served


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/cubejs-api/v1/load", {"Authorization": "not-a-token"}),
        (
            "/cubejs-api/v1/load",
            {"X-API-KEY": "ath_aaaaaaaaaaaaaaaa." + "b" * 43, "X-Semantic-Model": "orders"},
        ),
        ("/api/v0/semantic-model/orders/query", {"X-API-KEY": "ath_nope"}),
        ("/admin/api-keys", {"X-API-Key": "wrong-admin-key-0123456789"}),
        ("/internal/v1/credentials", {"X-Broker-Callback-Secret": "wrong-callback-secret"}),
    ],
)
async def test_without_a_valid_credential_the_body_is_never_read(
    broker: Served, path: str, headers: dict[str, str]
) -> None:
    """A near-1-MiB body announced, one byte sent, then silence: the 401 comes at once and
    not a byte of the body is held."""
    reader, writer = await broker.send(
        "POST", path, {**headers, "Content-Length": ALMOST_1_MIB}, b"{"
    )
    try:
        status, body, _ = await read_answer(reader, within=2.0)
        assert (status, json.loads(body)["error"]) == (401, "unauthorized")
        assert broker.app[BODIES].in_use == 0
    finally:
        writer.close()


async def test_bodies_in_flight_share_one_memory_bound(broker: Served) -> None:
    """With a 1 MiB bound, one stalled 700 kB body holds 700 kB; a second does not fit (429
    with Retry-After), a small one does, and the bound is free once the first caller left."""
    big = {**ADMIN, "Content-Length": "700000"}
    _, first = await broker.send("POST", "/admin/api-keys", big, b'{"name": "')
    try:
        await wait_until(lambda: broker.app[BODIES].in_use == 700000)
        reader, second = await broker.send("POST", "/admin/api-keys", big, b"{")
        status, body, head = await read_answer(reader)
        second.close()
        assert (status, json.loads(body)["error"]) == (429, "rate_limited")
        assert "Retry-After: 1\r\n" in head
        small = b'{"name": "small"}'
        reader, third = await broker.send(
            "POST", "/admin/api-keys", {**ADMIN, "Content-Length": str(len(small))}, small
        )
        status, _, _ = await read_answer(reader)
        third.close()
        assert status == 201
    finally:
        first.close()
    await wait_until(lambda: broker.app[BODIES].in_use == 0, within=3.0)


async def test_a_body_without_a_length_is_bounded_as_it_arrives(broker: Served) -> None:
    """A chunked body is 413 as soon as it passes 1 MiB, and its connection is closed."""
    reader, writer = await broker.send(
        "POST", "/admin/api-keys", {**ADMIN, "Transfer-Encoding": "chunked"}
    )
    try:
        chunk = b"a" * 65536
        for _ in range(17):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        status, body, head = await read_answer(reader)
        assert (status, json.loads(body)["error"]) == (413, "payload_too_large")
        assert "Connection: close" in head
    finally:
        writer.close()
    await wait_until(lambda: broker.app[BODIES].in_use == 0)


async def test_a_stalled_body_is_408(broker: Served) -> None:
    reader, writer = await broker.send(
        "POST", "/admin/api-keys", {**ADMIN, "Content-Length": "100"}, b'{"name": '
    )
    try:
        status, body, head = await read_answer(reader, within=3.0)
        assert (status, json.loads(body)["error"]) == (408, "request_timeout")
        assert "Connection: close" in head
    finally:
        writer.close()
    assert broker.app[BODIES].in_use == 0


async def test_a_caller_hanging_up_mid_body_is_not_a_broker_error(
    broker: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Counted as 499 (nginx's "client closed request"), never as a 500, and no ERROR line."""
    caplog.set_level(logging.INFO)
    _, writer = await broker.send(
        "POST", "/admin/api-keys", {**ADMIN, "Content-Length": "1000"}, b"{"
    )
    await wait_until(lambda: broker.app[BODIES].in_use == 1000)
    writer.close()
    await wait_until(lambda: broker.app[BODIES].in_use == 0)
    metrics = broker.app[METRICS]
    await wait_until(lambda: b'status="499"' in metrics.render())
    text = metrics.render().decode()
    assert 'method="POST",route="/admin/api-keys",status="499"' in text
    assert 'status="500"' not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
