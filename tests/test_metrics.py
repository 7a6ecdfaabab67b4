"""``/metrics`` (SPEC §9): the metrics an operator alerts on, read through ``/metrics`` of an
app under test after the requests that move them."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from broker import __version__
from broker.app import create_app
from broker.errors import StoreUnavailable
from broker.settings import Settings
from broker.state import BODIES, METRICS, REGISTRY, STORE
from broker.store import KeyChanges
from broker.support.metrics import Metrics
from tests.harness import DATA
from tests.harness.keys import create_key
from tests.harness.served import Served, read_answer, serve
from tests.harness.settings import ADMIN_KEY, make_settings
from tests.harness.waiting import wait_until
from tests.helpers import TOKEN_PATH, AiohttpClient, Client, sample, samples, scrape


async def test_standard_collectors_and_build_info(client: Client) -> None:
    text = await scrape(client)
    assert sample(text, "broker_build_info", version=__version__) == 1
    resident = sample(text, "process_resident_memory_bytes")
    assert resident is not None and resident > 0
    assert samples(text, "process_cpu_seconds_total")
    assert samples(text, "python_info")
    assert samples(text, "python_gc_collections_total")


async def test_two_apps_keep_their_own_registries(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    """Each app has its collectors on its own registry: a second app in the same process
    registers them again without a clash, and counts apart."""
    a: Client = await aiohttp_client(create_app(settings))
    b: Client = await aiohttp_client(create_app(settings))
    await a.get("/healthz")
    count = {"listener": "any", "route": "/healthz", "method": "GET", "status": "200"}
    assert sample(await scrape(a), "broker_requests_total", **count) == 1
    assert sample(await scrape(b), "broker_requests_total", **count) is None


async def test_tokens_minted_and_cache_hits_by_model(client: Client) -> None:
    key, _ = await create_key(client)
    for _ in range(3):
        resp = await client.post(TOKEN_PATH, headers={"X-API-KEY": key})
        assert resp.status == 200
    text = await scrape(client)
    assert sample(text, "broker_tokens_minted_total", model="orders") == 1
    assert sample(text, "broker_token_cache_hits_total", model="orders") == 2


async def test_upstream_duration_by_model(
    aiohttp_client: AiohttpClient, tmp_path: Path, cube_url: str
) -> None:
    settings = make_settings(BROKER_STORE=f"sqlite:///{tmp_path}/b.db", BROKER_CUBE_URL=cube_url)
    c: Client = await aiohttp_client(create_app(settings))
    key, _ = await create_key(c)
    token = (await (await c.post(TOKEN_PATH, headers={"X-API-KEY": key})).json())["token"]
    key_mode = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    assert (await c.get("/cubejs-api/v1/meta", headers=key_mode)).status == 200
    assert (
        await c.get("/cubejs-api/v1/load?query=%7B%7D", headers={"Authorization": token})
    ).status == 200
    assert (await c.get("/api/v0/semantic-model/orders/metadata", headers=key_mode)).status == 200
    query = {"query": {"measures": ["orders.count"]}}
    resp = await c.post("/api/v0/semantic-model/orders/query", json=query, headers=key_mode)
    assert resp.status == 200
    text = await scrape(c)
    assert sample(text, "broker_upstream_duration_seconds_count", model="orders") == 4
    assert sample(text, "broker_upstream_duration_seconds_bucket", model="orders", le="+Inf") == 4


# -- refusals by cause ---------------------------------------------------------------------


async def test_a_keys_rate_limit_is_counted_as_key_limit(client: Client) -> None:
    key, _ = await create_key(client, rate_limit_per_minute=1)
    statuses = [(await client.post(TOKEN_PATH, headers={"X-API-KEY": key})).status for _ in "ab"]
    assert statuses == [200, 429]
    text = await scrape(client)
    assert samples(text, "broker_rate_limited_total") == {frozenset({("cause", "key_limit")}): 1}


async def test_the_brute_force_guard_is_counted_as_brute_force(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/b.db", BROKER_BRUTE_FORCE_LIMIT="20"
    )
    c: Client = await aiohttp_client(create_app(settings))
    wrong = "ath_aaaaaaaaaaaaaaaa." + "b" * 43
    statuses = [(await c.post(TOKEN_PATH, headers={"X-API-KEY": wrong})).status for _ in range(25)]
    assert statuses[:20] == [401] * 20 and 429 in statuses
    text = await scrape(c)
    refused = statuses.count(429)
    assert samples(text, "broker_rate_limited_total") == {
        frozenset({("cause", "brute_force")}): refused
    }
    assert sample(text, "broker_auth_failures_total", reason="unknown") == 25 - refused


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/b.db", BROKER_BODY_MEMORY=str(1024 * 1024)
    )
    async with serve(settings) as s:
        yield s


async def test_the_body_memory_bound_is_counted_as_body_memory(served: Served) -> None:
    """One stalled 700 kB body holds the 1 MiB bound; a second does not fit: 429."""
    big = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json", "Content-Length": "700000"}
    _, first = await served.send("POST", "/admin/api-keys", big, b'{"name": "')
    try:
        await wait_until(lambda: served.app[BODIES].in_use == 700000)
        reader, second = await served.send("POST", "/admin/api-keys", big, b"{")
        status, body, _ = await read_answer(reader)
        second.close()
        assert (status, json.loads(body)["error"]) == (429, "rate_limited")
    finally:
        first.close()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{served.host}:{served.port}/metrics") as resp,
    ):
        text = await resp.text()
    assert samples(text, "broker_rate_limited_total") == {frozenset({("cause", "body_memory")}): 1}


# -- the key change feed and the model registry ----------------------------------------------


async def feed_age(c: Client) -> float:
    age = sample(await scrape(c), "broker_key_feed_age_seconds")
    assert age is not None
    return age


async def test_key_feed_age_and_failures(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The age is computed at each scrape: small while the feed answers, growing while it
    fails (each failed poll counted), small again once it is back."""

    async def small_age() -> bool:
        return await feed_age(client) < 0.5

    await wait_until(small_age)
    assert sample(await scrape(client), "broker_key_feed_failures_total") == 0

    async def unreadable(since: int | None) -> KeyChanges:
        raise StoreUnavailable()

    monkeypatch.setattr(client.app[STORE], "key_changes", unreadable)

    async def failing() -> bool:
        failures = sample(await scrape(client), "broker_key_feed_failures_total")
        return failures is not None and failures >= 3

    await wait_until(failing)
    assert await feed_age(client) > 0.5  # three polls, 0.25 s apart, have failed since
    monkeypatch.undo()
    await wait_until(small_age)


@pytest.fixture
async def registry_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    shutil.copytree(DATA, tmp_path / "data")
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/b.db",
        BROKER_MODELS=str(tmp_path / "data" / "models.yaml"),
        BROKER_MODELS_POLL_INTERVAL="60",  # reloads here come from request_reload alone
    )
    c: Client = await aiohttp_client(create_app(settings))
    return c


async def test_models_last_reload_and_reload_failures(registry_client: Client) -> None:
    c = registry_client
    started = time.time()
    text = await scrape(c)
    loaded = sample(text, "broker_models_last_reload_timestamp_seconds")
    assert loaded is not None and started - 60 < loaded <= started
    assert sample(text, "broker_models_reload_failures_total") == 0

    watcher = c.app[REGISTRY]
    good = watcher.path.read_text()
    watcher.path.write_text("models: [")
    watcher.request_reload()

    async def failures(n: int) -> bool:
        return sample(await scrape(c), "broker_models_reload_failures_total") == n

    await wait_until(lambda: failures(1))
    assert sample(await scrape(c), "broker_models_last_reload_timestamp_seconds") == loaded

    watcher.path.write_text(good)
    watcher.request_reload()

    async def reloaded() -> bool:
        value = sample(await scrape(c), "broker_models_last_reload_timestamp_seconds")
        return value is not None and value > loaded

    await wait_until(reloaded)
    assert await failures(1)


def test_request_histograms_count_each_observation_in_its_bucket() -> None:
    """A bucket counts what is at most its bound, cumulatively, like Prometheus's own."""
    metrics = Metrics()
    for seconds in (0.0005, 0.00051, 0.3, 100.0):
        metrics.observe_request("public", "/x", "GET", 200, seconds)
    metrics.observe_request("public", "/x", "BREW", 418, 0.1)
    text = metrics.render().decode()
    labels = {"listener": "public", "route": "/x"}
    bucket = "broker_request_duration_seconds_bucket"
    assert [sample(text, bucket, le=le, **labels) for le in ("0.0005", "0.001", "0.5", "60.0")] == [
        1,
        2,
        4,
        4,
    ]
    assert sample(text, bucket, le="+Inf", **labels) == 5
    assert sample(text, "broker_request_duration_seconds_sum", **labels) == pytest.approx(100.40101)
    counted = {"method": "GET", "status": "200", **labels}
    assert sample(text, "broker_requests_total", **counted) == 4
    assert (
        sample(text, "broker_requests_total", **{**counted, "method": "OTHER", "status": "418"})
        == 1
    )


async def test_requests_are_counted_per_route_and_methods_keep_the_series_bounded(
    client: Client,
) -> None:
    """Two paths of one route are one series; methods outside the standard ones (the decision
    routes take any) are all ``OTHER``: neither the series nor the bound counters grow."""
    for ident in ("k1", "k2", "k3"):
        await client.get(f"/admin/api-keys/{ident}")
    for method in ("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "REPORT"):
        await client.request(method, "/auth/v1/cube/x")
    text = await scrape(client)
    keys = {"listener": "any", "route": "/admin/api-keys/{id}", "method": "GET"}
    assert sample(text, "broker_requests_total", status="401", **keys) == 3
    decided = {"listener": "any", "route": "/auth/v1/cube/{path}", "status": "404"}
    assert sample(text, "broker_requests_total", method="OTHER", **decided) == 5
    methods = {
        dict(labels)["method"]
        for labels in samples(text, "broker_requests_total")
        if dict(labels)["route"] == "/auth/v1/cube/{path}"
    }
    assert methods == {"OTHER"}
    assert len(client.app[METRICS].request_slots) <= 3  # get, OTHER, and the scrape
