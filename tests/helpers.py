"""Assertions and small request helpers shared by the HTTP tests (what starts or drives
real processes, and creates keys, is in ``tests.harness``).

Distinct loopback source addresses (127.0.0.2, 127.0.0.3, …) stand for distinct clients
(:func:`from_ip`); several app instances on one store stand for replicas (the
``replicas`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from broker.http.answer import UNROUTED
from tests.harness.settings import ADMIN_KEY

Client = TestClient[Any, Any]
#: The type of pytest-aiohttp's ``aiohttp_client`` fixture.
AiohttpClient = Callable[..., Any]
#: The ``broker_on_fake`` fixture: an app in front of a FakeCube, settings on top.
BrokerOnFake = Callable[..., Awaitable[TestClient[Any, Any]]]
ADMIN = {"X-API-Key": ADMIN_KEY}
TOKEN_PATH = "/api/v0/semantic-model/orders/generate-token"


async def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == "error"
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


@asynccontextmanager
async def from_ip(ip: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose connections leave from ``ip``."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def token_status(c: Client, key: str, ip: str = "127.0.0.1", **headers: str) -> int:
    """The status of ``generate-token`` for ``orders`` with ``key``, asked from ``ip``."""
    async with (
        from_ip(ip) as s,
        s.post(c.make_url(TOKEN_PATH), headers={"X-API-KEY": key, **headers}) as resp,
    ):
        return resp.status


async def shown_record(c: Client, key_id: str) -> dict[str, Any]:
    """The key's record as ``GET /admin/api-keys/{id}`` shows it."""
    doc: dict[str, Any] = await (await c.get(f"/admin/api-keys/{key_id}", headers=ADMIN)).json()
    return doc


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples called ``name`` in a ``/metrics`` text, by their label set."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name{labels}`` in a ``/metrics`` text, or ``None``."""
    return samples(text, name).get(frozenset(labels.items()))


async def scrape(c: Client) -> str:
    """``GET /metrics`` on an app under test."""
    resp = await c.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    return await resp.text()


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, canonical path) of every route ``app`` serves, ``*`` for any method; not
    ``HEAD`` or ``OPTIONS``, nor the last route, which refuses what nothing else matches
    (:func:`broker.http.answer.unrouted`)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "OPTIONS")
        and route.resource is not None
        and route.resource.name != UNROUTED
    }
