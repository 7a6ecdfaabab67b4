"""Shared fixtures: private service instances (session-scoped), stores, settings, app client.

The store of a test is SQLite (a file in its ``tmp_path``). A test that exercises the
store's behaviour (atomicity, counts or caches shared by replicas, the change feed) is
marked ``both_stores``, per test or per module (``pytestmark``): it then runs once on
SQLite and once on the private Redis, as ``test_x[sqlite]`` and ``test_x[redis]``.
Tests in such a module that use no store are not repeated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from broker.app import create_app
from broker.settings import Settings
from broker.store import Store, open_store
from tests.fake_cube import FakeCube
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.redis import RedisServer, start_redis
from tests.harness.redis_cluster import ClusterServers, start_redis_cluster
from tests.harness.redis_sentinel import SentinelDeployment, start_redis_sentinel
from tests.harness.settings import ADMIN_KEY, make_settings
from tests.helpers import AiohttpClient, BrokerOnFake, Client


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster with ``shop.public.orders`` (``tests.harness.postgres``)."""
    with start_postgres() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL on the private server, its database emptied before the test."""
    redis_server.flushall()
    return redis_server.url


STORE_KINDS = ("sqlite", "redis")
#: The store contract also runs on the Redis deployments replicated brokers run.
EVERY_STORE = (*STORE_KINDS, "cluster", "sentinel")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("every_store"):
        metafunc.parametrize("store_kind", EVERY_STORE, indirect=True)
    elif metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store_kind", STORE_KINDS, indirect=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterServers]:
    """A private three-master Redis Cluster, started on first use."""
    with start_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_replicated() -> Iterator[ClusterServers]:
    """A private three-master Redis Cluster with a replica per master (the broker's key
    writes there wait for a replica), started on first use. A test that pauses a node
    resumes it and waits until the cluster is whole again. Not a kind of the store
    contract (``every_store``): its waited writes are tested in
    ``tests/test_redis_deployments.py``, for the suite's time."""
    with start_redis_cluster(replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelDeployment]:
    """A private Sentinel deployment (a master, a replica, three sentinels)."""
    with start_redis_sentinel() as deployment:
        yield deployment


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """``sqlite``, or each of :data:`STORE_KINDS` for a test marked ``both_stores``."""
    kind: str = getattr(request, "param", "sqlite")
    return kind


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path}/store/broker.db"
    if store_kind == "cluster":
        cluster: ClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        return cluster.url
    if store_kind == "sentinel":
        sentinel: SentinelDeployment = request.getfixturevalue("redis_sentinel")
        sentinel.server(sentinel.master_port()).flushall()
        return sentinel.url
    url: str = request.getfixturevalue("redis_url")
    return url


@asynccontextmanager
async def _opened(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with _opened(store_url) as s:
        yield s


@pytest.fixture
async def other_store(store_url: str) -> AsyncIterator[Store]:
    """A second store on the same storage, as another replica (or the CLI) would open."""
    async with _opened(store_url) as s:
        yield s


@pytest.fixture
def settings(store_url: str) -> Settings:
    return make_settings(BROKER_STORE=store_url)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    c: Client = await aiohttp_client(create_app(settings))
    return c


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def replicas(aiohttp_client: AiohttpClient, store_url: str) -> Callable[..., Any]:
    """``await replicas(n, **env)``: ``n`` app instances on the test's one store, standing
    for replicas, with the environment ``env`` on top of the test settings."""

    async def make(n: int = 1, **env: str) -> list[Client]:
        settings = make_settings(BROKER_STORE=store_url, **env)
        return [await aiohttp_client(create_app(settings)) for _ in range(n)]

    return make


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may kill without disturbing the others."""
    with start_redis() as server:
        yield server


@pytest.fixture
def fake() -> FakeCube:
    """A scriptable stand-in for Cube (fault injection; the e2e tests run the real one)."""
    return FakeCube()


@pytest.fixture
async def cube_url(aiohttp_server: Any, fake: FakeCube) -> str:
    """Where :func:`fake` answers, as ``BROKER_CUBE_URL``."""
    server = await aiohttp_server(fake.app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def broker_on_fake(aiohttp_client: AiohttpClient, cube_url: str, tmp_path: Path) -> BrokerOnFake:
    """Start an app on a SQLite store in front of :func:`fake`, with ``env`` on top."""

    async def start(**env: str) -> Client:
        settings = make_settings(
            BROKER_STORE=f"sqlite:///{tmp_path}/broker.db", BROKER_CUBE_URL=cube_url, **env
        )
        client: Client = await aiohttp_client(create_app(settings))
        return client

    return start
