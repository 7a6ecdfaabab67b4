"""Hot reload of the model registry: polling, SIGHUP-style reloads, keeping the last good one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.models import Registry, RegistryWatcher, load_registry
from tests.harness.waiting import wait_until

REGISTRY = """\
models:
  - asset_id: orders
    name: Orders
    schema_dir: models/orders
    data_sources:
      default: {type: postgres, host: db, port: 5432, database: shop, user: u, password: x}
"""
SECOND_MODEL = """\
  - asset_id: items
    name: Items
    schema_dir: models/items
    data_sources:
      default: {type: postgres, host: db, port: 5432, database: shop, user: u, password: x}
"""


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    (tmp_path / "models" / "orders").mkdir(parents=True)
    write(tmp_path / "models" / "orders" / "orders.yml", "cubes: []\n")
    path = tmp_path / "models.yaml"
    write(path, REGISTRY)
    return path


@pytest.fixture
async def watcher(registry_path: Path) -> AsyncIterator[RegistryWatcher]:
    """A watcher whose poll loop runs every 20 ms for the duration of the test."""
    watcher = RegistryWatcher(load_registry(registry_path))
    task = asyncio.create_task(watcher.run(0.02))
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def write(path: Path, text: str) -> None:
    """A small synchronous edit, as an operator or the kubelet would make it."""
    path.write_text(text)


def orders_hash(registry: Registry) -> str:
    model = registry.get("orders")
    assert model is not None
    return model.schema_hash


async def test_editing_a_model_file_changes_the_hash(
    watcher: RegistryWatcher, registry_path: Path
) -> None:
    before = orders_hash(watcher.current)

    write(
        registry_path.parent / "models" / "orders" / "orders.yml",
        "cubes:\n  - name: orders\n    sql_table: public.orders\n",
    )

    await wait_until(lambda: orders_hash(watcher.current) != before)
    assert watcher.last_error is None


async def test_adding_and_removing_a_file_changes_the_hash(
    watcher: RegistryWatcher, registry_path: Path
) -> None:
    before = orders_hash(watcher.current)
    extra = registry_path.parent / "models" / "orders" / "sub" / "items.js"
    extra.parent.mkdir()

    write(extra, "cube(`items`, {});\n")
    await wait_until(lambda: orders_hash(watcher.current) != before)
    model = watcher.current.get("orders")
    assert model is not None
    assert [f.path for f in model.files] == ["orders.yml", "sub/items.js"]

    extra.unlink()
    await wait_until(lambda: orders_hash(watcher.current) == before)


async def test_adding_a_model_to_the_registry(
    watcher: RegistryWatcher, registry_path: Path
) -> None:
    (registry_path.parent / "models" / "items").mkdir()
    write(registry_path.parent / "models" / "items" / "items.yml", "cubes: []\n")

    write(registry_path, REGISTRY + SECOND_MODEL)

    await wait_until(lambda: watcher.current.get("items") is not None)
    assert [m.asset_id for m in watcher.current] == ["orders", "items"]


async def test_invalid_registry_keeps_the_last_good_one(
    watcher: RegistryWatcher, registry_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = watcher.current
    caplog.set_level(logging.ERROR, logger="broker.models")

    write(registry_path, REGISTRY.replace("port: 5432", "port: 0"))
    await wait_until(lambda: watcher.last_error is not None)

    assert watcher.current is good
    assert watcher.last_error is not None
    assert "model 'orders': data_sources.default.port" in watcher.last_error
    assert any("keeping the last good one" in r.getMessage() for r in caplog.records)

    write(registry_path, REGISTRY)
    await wait_until(lambda: watcher.last_error is None)
    assert watcher.current is not good
    assert orders_hash(watcher.current) == orders_hash(good)


async def test_escaping_link_added_later_is_refused(
    watcher: RegistryWatcher, registry_path: Path
) -> None:
    good = watcher.current
    write(registry_path.parent.parent / "outside.yml", "cubes: []\n")

    (registry_path.parent / "models" / "orders" / "evil.yml").symlink_to("../../../outside.yml")

    await wait_until(lambda: watcher.last_error is not None)
    assert "model 'orders': schema_dir: models/orders/evil.yml: symlink points outside" in str(
        watcher.last_error
    )
    assert watcher.current is good


async def test_configmap_update_is_seen(tmp_path: Path) -> None:
    """The kubelet writes a new hidden folder and swaps ``..data`` to it atomically."""
    mount = tmp_path / "models" / "orders"
    (mount / "..v1").mkdir(parents=True)
    write(mount / "..v1" / "orders.yml", "cubes: []\n")
    (mount / "..data").symlink_to("..v1")
    (mount / "orders.yml").symlink_to("..data/orders.yml")
    path = tmp_path / "models.yaml"
    write(path, REGISTRY)
    watcher = RegistryWatcher(load_registry(path))
    task = asyncio.create_task(watcher.run(0.02))
    try:
        before = orders_hash(watcher.current)
        (mount / "..v2").mkdir()
        write(mount / "..v2" / "orders.yml", "cubes: []\n# v2\n")
        (mount / "..data_tmp").symlink_to("..v2")
        os.replace(mount / "..data_tmp", mount / "..data")

        await wait_until(lambda: orders_hash(watcher.current) != before)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_reload_takes_effect_at_once(registry_path: Path) -> None:
    watcher = RegistryWatcher(load_registry(registry_path))
    before = orders_hash(watcher.current)
    write(registry_path.parent / "models" / "orders" / "orders.yml", "cubes: [] # edited\n")

    assert watcher.reload() is True
    assert orders_hash(watcher.current) != before

    write(registry_path, "models: [\n")
    assert watcher.reload() is False
    assert watcher.last_error is not None
    assert "invalid YAML" in watcher.last_error


def test_poll_rereads_only_when_something_changed(registry_path: Path) -> None:
    loads: list[Path] = []

    def counting_loader(path: Path) -> Registry:
        loads.append(path)
        return load_registry(path)

    watcher = RegistryWatcher(load_registry(registry_path), loader=counting_loader)

    assert watcher.poll() is False
    assert watcher.poll() is False
    assert loads == []

    write(registry_path.parent / "models" / "orders" / "new.yml", "cubes: []\n")
    assert watcher.poll() is True
    assert len(loads) == 1
    assert watcher.poll() is False
    assert len(loads) == 1


async def test_request_reload_wakes_the_loop_at_once(registry_path: Path) -> None:
    """What a SIGHUP handler calls: no waiting for the (here hour-long) poll interval."""
    watcher = RegistryWatcher(load_registry(registry_path))
    task = asyncio.create_task(watcher.run(3600))
    try:
        before = orders_hash(watcher.current)
        write(registry_path.parent / "models" / "orders" / "orders.yml", "cubes: [] # hup\n")

        watcher.request_reload()

        await wait_until(lambda: orders_hash(watcher.current) != before)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
