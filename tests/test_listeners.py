"""Three listeners, each serving exactly its routes (SPEC §2): the public one for
dashboards and back ends, the admin one for operators, the internal one for Cube."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from broker.errors import ConfigError
from broker.http.listeners import ADMIN, INTERNAL, PUBLIC
from broker.state import METRICS
from tests.harness.served import Listening, serve_listeners
from tests.harness.settings import ADMIN_KEY, CALLBACK_SECRET, make_settings

#: Every route, by the listener that serves it; (method, concrete path).
ROUTES = {
    PUBLIC: [
        ("POST", "/api/v0/semantic-model/orders/generate-token"),
        ("GET", "/api/v0/semantic-model/orders/metadata"),
        ("POST", "/api/v0/semantic-model/orders/query"),
        ("GET", "/cubejs-api/v1/load"),
        ("POST", "/cubejs-api/v1/load"),
        ("GET", "/cubejs-api/v1/meta"),
        ("GET", "/cubejs-api/v1/sql"),
        ("POST", "/cubejs-api/v1/dry-run"),
        ("GET", "/auth/v1/cube"),
        ("POST", "/auth/v1/cube/cubejs-api/v1/load"),
    ],
    ADMIN: [
        ("POST", "/admin/api-keys"),
        ("GET", "/admin/api-keys"),
        ("GET", "/admin/api-keys/abcdefghijklmnop"),
        ("PATCH", "/admin/api-keys/abcdefghijklmnop"),
        ("DELETE", "/admin/api-keys/abcdefghijklmnop"),
        ("POST", "/admin/api-keys/abcdefghijklmnop/rotate"),
        ("GET", "/admin/audit-events"),
        ("GET", "/metrics"),
    ],
    INTERNAL: [
        ("POST", "/internal/v1/credentials"),
        ("GET", "/internal/v1/models"),
        ("GET", "/internal/v1/models/orders/files"),
    ],
}
SHARED = {
    "/healthz": {PUBLIC, ADMIN, INTERNAL},
    "/readyz": {PUBLIC, ADMIN},
    "/openapi.json": {PUBLIC, ADMIN},
}
CREDENTIALS = {"X-API-Key": ADMIN_KEY, "X-Broker-Callback-Secret": CALLBACK_SECRET}


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[Listening]:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db",
        BROKER_PORT="0",
        BROKER_ADMIN_PORT="0",
        BROKER_INTERNAL_PORT="0",
    )
    async with serve_listeners(settings) as served:
        yield served


async def status(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, str]:
    async with session.request(method, url, headers=CREDENTIALS) as resp:
        return resp.status, (await resp.json())["error"] if resp.status >= 400 else ""


async def test_each_listener_serves_exactly_its_routes(listening: Listening) -> None:
    assert set(listening.urls) == {PUBLIC, ADMIN, INTERNAL}
    async with aiohttp.ClientSession() as session:
        for owner, routes in ROUTES.items():
            for method, path in routes:
                for listener, base in listening.urls.items():
                    got = await status(session, method, base + path)
                    if listener == owner:
                        assert got[0] != 404 or got[1] != "not_found" or "abcdef" in path, (
                            listener,
                            method,
                            path,
                            got,
                        )
                    else:
                        assert got == (404, "not_found"), (listener, method, path, got)
        for path, listeners in SHARED.items():
            for listener, base in listening.urls.items():
                got = await status(session, "GET", base + path)
                assert (got[0] == 200) == (listener in listeners), (listener, path, got)
                if listener not in listeners:
                    assert got == (404, "not_found")


async def test_another_listeners_route_is_exactly_an_unknown_path(listening: Listening) -> None:
    """Same status, body and headers as a path nobody serves, whatever the method."""
    async with aiohttp.ClientSession() as session:
        public = listening.urls[PUBLIC]
        answers = []
        for path, method in (("/admin/api-keys", "DELETE"), ("/no/such/path", "DELETE")):
            async with session.request(method, public + path, headers=CREDENTIALS) as resp:
                answers.append((resp.status, await resp.json(), "Allow" in resp.headers))
        assert answers[0] == answers[1]


async def test_each_listener_describes_its_own_routes(listening: Listening) -> None:
    documented = {}
    async with aiohttp.ClientSession() as session:
        for listener in (PUBLIC, ADMIN):
            async with session.get(listening.urls[listener] + "/openapi.json") as resp:
                documented[listener] = set((await resp.json())["paths"])
        async with session.get(listening.urls[INTERNAL] + "/openapi.json") as resp:
            assert resp.status == 404
    operations = {"/healthz", "/readyz", "/openapi.json"}
    assert documented[PUBLIC] == operations | {
        "/api/v0/semantic-model/{asset_id}/generate-token",
        "/api/v0/semantic-model/{asset_id}/metadata",
        "/api/v0/semantic-model/{asset_id}/query",
        "/cubejs-api/v1/load",
        "/cubejs-api/v1/meta",
        "/cubejs-api/v1/sql",
        "/cubejs-api/v1/dry-run",
        "/auth/v1/cube",
        "/auth/v1/cube/{path}",
    }
    assert documented[ADMIN] == operations | {
        "/metrics",
        "/admin/api-keys",
        "/admin/api-keys/{id}",
        "/admin/api-keys/{id}/rotate",
        "/admin/audit-events",
    }


async def test_metrics_and_access_log_name_the_listener(
    listening: Listening, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.access")
    async with aiohttp.ClientSession() as session:
        await status(session, "GET", listening.urls[INTERNAL] + "/healthz")
        await status(session, "GET", listening.urls[PUBLIC] + "/admin/api-keys")
    text = listening.app[METRICS].render().decode()
    assert 'listener="internal",method="GET",route="/healthz",status="200"' in text
    assert 'listener="public",method="GET",route="unmatched",status="404"' in text
    listeners = [getattr(r, "listener", None) for r in caplog.records if r.name == "broker.access"]
    assert listeners == [INTERNAL, PUBLIC]


def test_admin_and_internal_listeners_bind_loopback_by_default() -> None:
    s = make_settings()
    assert (s.admin_host, s.admin_port) == ("127.0.0.1", 8081)
    assert (s.internal_host, s.internal_port) == ("127.0.0.1", 8082)
    assert (s.host, s.port) == ("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BROKER_PORT": "9000", "BROKER_ADMIN_PORT": "9000"}, "BROKER_PORT, BROKER_ADMIN_PORT"),
        (
            {"BROKER_ADMIN_PORT": "9001", "BROKER_INTERNAL_PORT": "9001"},
            "BROKER_ADMIN_PORT, BROKER_INTERNAL_PORT",
        ),
        ({"BROKER_PORT": "8082"}, "BROKER_PORT, BROKER_INTERNAL_PORT"),
    ],
)
def test_equal_ports_are_refused_naming_the_variables(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        make_settings(**env)
