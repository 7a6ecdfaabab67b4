"""Shared fixtures: private service instances (session-scoped), stores, settings, app client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.settings import Settings
from broker.store import Store, open_store
from tests.services import PostgresServer, RedisServer, start_postgres, start_redis

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"
API_SECRET = "test-api-secret-that-is-long-enough-0123456789"
CALLBACK_SECRET = "callback-secret-for-tests-0123"

AiohttpClient = Callable[..., Any]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster with ``shop.public.orders`` (see ``tests.services``)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL on the private server, its database emptied before the test."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/broker.db"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


def make_settings(**overrides: str) -> Settings:
    env = {
        "CUBEJS_API_SECRET": API_SECRET,
        "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
        "ATHENA_KEY_12": ADMIN_KEY,
        "BROKER_LOG_FORMAT": "json",
        "BROKER_MODELS": str(Path(__file__).parent / "data" / "models.yaml"),
    }
    env.update(overrides)
    return Settings.load(env)


@pytest.fixture
def settings(store_url: str) -> Settings:
    return make_settings(BROKER_STORE=store_url)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}
