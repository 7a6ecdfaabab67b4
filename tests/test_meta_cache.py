"""``/cubejs-api/v1/meta`` from the broker's memory (SPEC §8), against a stand-in Cube that
counts its calls: what is kept, for whom, and what never is."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from broker.app import create_app
from broker.state import REGISTRY
from tests.fake_cube import FakeCube
from tests.harness import DATA
from tests.harness.keys import create_key
from tests.harness.settings import make_settings
from tests.harness.waiting import wait_until
from tests.helpers import ADMIN, Client, assert_error

META = "/cubejs-api/v1/meta"
REGISTRY_YAML = """\
models:
  - asset_id: orders
    name: Orders
    schema_dir: models/orders
    data_sources:
      default: {type: postgres, host: db, port: 5432, database: shop, user: u, password: x}
  - asset_id: items
    name: Items
    schema_dir: models/items
    data_sources:
      default: {type: postgres, host: db, port: 5432, database: shop, user: u, password: x}
"""
FIRST = b'{"cubes": [{"name": "orders", "measures": [{"name": "orders.count"}]}]}'
LATER = b'{"cubes": [{"name": "orders", "measures": []}]}'


@pytest.fixture
def fake() -> FakeCube:
    return FakeCube(raw_body=FIRST)


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "models" / "orders", tmp_path / "models" / "orders")
    shutil.copytree(DATA / "models" / "orders", tmp_path / "models" / "items")
    path = tmp_path / "models.yaml"
    path.write_text(REGISTRY_YAML)
    return path


@pytest.fixture
async def broker(
    aiohttp_client: Any, aiohttp_server: Any, fake: FakeCube, tmp_path: Path, registry_path: Path
) -> Client:
    server: TestServer = await aiohttp_server(fake.app())
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db",
        BROKER_CUBE_URL=str(server.make_url("")).rstrip("/"),
        BROKER_MODELS=str(registry_path),
        BROKER_MODELS_POLL_INTERVAL="0.05",
        BROKER_UPSTREAM_TIMEOUT="2",
    )
    c: Client = await aiohttp_client(create_app(settings))
    return c


async def token_of(c: Client, key: str, model: str = "orders") -> str:
    path = f"/api/v0/semantic-model/{model}/generate-token"
    resp = await c.post(path, headers={"X-API-KEY": key})
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["token"]
    return token


def by_key(key: str, model: str = "orders") -> dict[str, str]:
    return {"X-API-KEY": key, "X-Semantic-Model": model}


async def meta_cache_counts(c: Client) -> dict[str, float]:
    text = await (await c.get("/metrics")).text()
    found = re.findall(r'^broker_meta_cache_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(value) for result, value in found}


async def test_a_hit_serves_the_same_bytes_without_asking_cube(
    broker: Client, fake: FakeCube
) -> None:
    key, _ = await create_key(broker)
    first = await broker.get(META, headers=by_key(key))
    assert first.status == 200
    assert await first.read() == FIRST
    fake.raw_body = LATER  # what Cube would say now: a hit must not ask it

    again = await broker.get(META, headers={**by_key(key), "X-Request-Id": "second-call"})

    assert again.status == 200
    assert await again.read() == FIRST
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert again.headers["X-Request-Id"] == "second-call"
    assert len(fake.seen) == 1
    assert await meta_cache_counts(broker) == {"hit": 1, "miss": 1}


async def test_every_caller_authorised_for_the_model_gets_the_kept_answer(
    broker: Client, fake: FakeCube
) -> None:
    first_key, _ = await create_key(broker)
    assert (await broker.get(META, headers=by_key(first_key))).status == 200
    fake.raw_body = LATER
    other_key, _ = await create_key(broker, rights=["semantic_model.meta.read:orders"])
    token_key, _ = await create_key(broker, rights=["semantic_model.token.create:orders"])
    token = await token_of(broker, token_key)

    callers = [
        by_key(other_key),
        {"Authorization": f"Bearer {other_key}", "X-Semantic-Model": "orders"},
        {"Authorization": token},
        {"Authorization": f"Bearer {token}"},
    ]
    for headers in callers:
        resp = await broker.get(META, headers=headers)
        assert resp.status == 200, headers
        assert await resp.read() == FIRST
    assert len(fake.seen) == 1


async def test_a_caller_not_authorised_gets_the_error_not_the_kept_answer(
    broker: Client, fake: FakeCube
) -> None:
    key, _ = await create_key(broker)
    assert (await broker.get(META, headers=by_key(key))).status == 200
    query_only, _ = await create_key(broker, rights=["semantic_model.query.execute"])
    other_model, _ = await create_key(broker, rights=["semantic_model.meta.read:items"])
    revoked, record = await create_key(broker)
    await broker.delete(f"/admin/api-keys/{record['id']}", headers=ADMIN)

    await assert_error(await broker.get(META, headers=by_key(query_only)), 403, "forbidden")
    await assert_error(await broker.get(META, headers=by_key(other_model)), 403, "forbidden")
    await assert_error(await broker.get(META, headers=by_key(revoked)), 401, "unauthorized")
    await assert_error(
        await broker.get(META, headers={"Authorization": "Bearer not.a.jwt"}), 401, "unauthorized"
    )
    assert len(fake.seen) == 1


async def test_each_model_has_its_own_entry(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    assert await (await broker.get(META, headers=by_key(key))).read() == FIRST
    fake.raw_body = LATER
    items = await broker.get(META, headers=by_key(key, "items"))
    assert await items.read() == LATER
    items_token = await token_of(broker, key, "items")
    assert await (await broker.get(META, headers={"Authorization": items_token})).read() == LATER
    assert await (await broker.get(META, headers=by_key(key))).read() == FIRST
    assert len(fake.seen) == 2


async def test_a_changed_schema_hash_is_a_new_entry_at_once(
    broker: Client, fake: FakeCube, registry_path: Path
) -> None:
    key, _ = await create_key(broker)
    old_token = await token_of(broker, key)
    assert await (await broker.get(META, headers=by_key(key))).read() == FIRST
    registry = broker.app[REGISTRY]
    before = registry.current.require("orders").schema_hash
    model_file = registry_path.parent / "models" / "orders" / "orders.yml"
    model_file.write_text(model_file.read_text() + "\n# edited\n")
    await wait_until(lambda: registry.current.require("orders").schema_hash != before)
    fake.raw_body = LATER

    assert await (await broker.get(META, headers=by_key(key))).read() == LATER
    assert len(fake.seen) == 2
    new_token = await token_of(broker, key)
    assert new_token != old_token
    assert await (await broker.get(META, headers={"Authorization": new_token})).read() == LATER
    assert len(fake.seen) == 2  # the new hash's entry


async def test_a_token_older_than_the_model_is_always_answered_by_cube(
    broker: Client, fake: FakeCube, registry_path: Path
) -> None:
    """Cube compiles such a token's model under its old hash: the broker neither serves it
    the current files' answer from memory nor files Cube's answer to it under the new
    hash."""
    key, _ = await create_key(broker)
    old_token = await token_of(broker, key)
    registry = broker.app[REGISTRY]
    before = registry.current.require("orders").schema_hash
    model_file = registry_path.parent / "models" / "orders" / "orders.yml"
    model_file.write_text(model_file.read_text() + "\n# edited\n")
    await wait_until(lambda: registry.current.require("orders").schema_hash != before)

    for _ in range(2):
        resp = await broker.get(META, headers={"Authorization": old_token})
        assert await resp.read() == FIRST
    assert len(fake.seen) == 2
    fake.raw_body = LATER
    assert await (await broker.get(META, headers=by_key(key))).read() == LATER
    assert len(fake.seen) == 3


async def test_different_query_strings_are_different_entries(
    broker: Client, fake: FakeCube
) -> None:
    key, _ = await create_key(broker)
    paths = [META, f"{META}?extended=true", f"{META}?extended=%74rue"]
    for n, path in enumerate(paths):
        fake.raw_body = b'{"cubes": [], "n": %d}' % n
        resp = await broker.get(URL(path, encoded=True), headers=by_key(key))
        assert await resp.read() == fake.raw_body
    for n, path in enumerate(paths):
        resp = await broker.get(URL(path, encoded=True), headers=by_key(key))
        assert await resp.read() == b'{"cubes": [], "n": %d}' % n
    assert [seen.raw_path for seen in fake.seen] == paths


@pytest.mark.parametrize("status", [400, 403, 500])
async def test_an_answer_other_than_200_is_not_kept(
    broker: Client, fake: FakeCube, status: int
) -> None:
    key, _ = await create_key(broker)
    fake.status, fake.raw_body = status, b'{"error": "no"}'
    assert (await broker.get(META, headers=by_key(key))).status == status
    fake.status, fake.raw_body = 200, FIRST
    resp = await broker.get(META, headers=by_key(key))
    assert resp.status == 200
    assert await resp.read() == FIRST
    assert len(fake.seen) == 2


async def test_continue_wait_is_not_kept(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    fake.continue_waits = 1
    assert await (await broker.get(META, headers=by_key(key))).json() == {"error": "Continue wait"}
    assert await (await broker.get(META, headers=by_key(key))).read() == FIRST
    assert len(fake.seen) == 2


async def test_a_chunked_answer_is_kept_when_it_fits_and_streams_through_when_not(
    broker: Client, fake: FakeCube
) -> None:
    key, _ = await create_key(broker)
    fake.stream_bytes = 1000  # chunked, no Content-Length
    small = await (await broker.get(META, headers=by_key(key))).read()
    assert len(small) == 1000
    assert await (await broker.get(META, headers=by_key(key))).read() == small
    assert len(fake.seen) == 1

    big = 5 * 1024 * 1024 + 3  # over the largest answer kept
    fake.stream_bytes = big
    for n in (2, 3):
        resp = await broker.get(f"{META}?big=1", headers=by_key(key))
        assert len(await resp.read()) == big
        assert len(fake.seen) == n


async def test_nothing_of_cubes_answer_to_one_caller_but_body_and_type_reaches_another(
    broker: Client, fake: FakeCube
) -> None:
    key, _ = await create_key(broker)
    fake.answer_headers = {"Set-Cookie": "cube_session=first-callers", "X-Cube-Private": "1"}
    first = await broker.get(META, headers=by_key(key))
    assert first.headers["X-Cube-Private"] == "1"  # its own caller gets Cube's headers
    other, _ = await create_key(broker)
    resp = await broker.get(META, headers=by_key(other))
    assert await resp.read() == FIRST
    assert "Set-Cookie" not in resp.headers and "X-Cube-Private" not in resp.headers
    assert len(fake.seen) == 1


async def test_an_encoded_answer_is_not_kept(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    fake.answer_headers = {"Content-Encoding": "identity"}
    for n in (1, 2):
        assert (await broker.get(META, headers=by_key(key))).status == 200
        assert len(fake.seen) == n
