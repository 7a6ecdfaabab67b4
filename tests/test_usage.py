"""Batched usage counts (broker.keys.usage) on both stores: nothing lost, nothing counted twice,
kept off the change feed, and a shutdown that does not hang on an unreachable store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from broker.errors import StoreUnavailable
from broker.keys.usage import UsageRecorder
from broker.state import STORE, USAGE
from broker.store import Store
from broker.support.timeutil import utcnow
from tests.harness.keys import create_key, make_record
from tests.helpers import shown_record, token_status

#: Counts written through the store: none lost or doubled on either backend.
pytestmark = pytest.mark.both_stores


async def keys_used(store: Store, uses: list[int]) -> tuple[UsageRecorder, list[str]]:
    recorder = UsageRecorder(store)
    ids = []
    for n, count in enumerate(uses):
        record = make_record(n)
        await store.insert_key(record)
        ids.append(record.id)
        for _ in range(count):
            recorder.record(record.id, utcnow())
    return recorder, ids


async def counts(store: Store, ids: list[str]) -> list[int]:
    return [(await store.get_key(i)).request_count for i in ids]  # type: ignore[union-attr]


async def test_a_down_store_stops_the_flush_and_keeps_every_count(store: Store) -> None:
    recorder, ids = await keys_used(store, [1, 2, 3])
    real, calls = store.update_key, 0

    async def down(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise StoreUnavailable()

    store.update_key = down  # type: ignore[method-assign]
    await recorder.flush()
    assert calls == 1  # no round trip per key against a store that is down
    store.update_key = real  # type: ignore[method-assign]
    await recorder.flush()
    assert await counts(store, ids) == [1, 2, 3]


async def test_a_flush_cancelled_midway_loses_and_repeats_nothing(store: Store) -> None:
    recorder, ids = await keys_used(store, [1, 2, 3, 4, 5])
    real = store.update_key

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)
        return await real(*args, **kwargs)

    store.update_key = slow  # type: ignore[method-assign]
    run = asyncio.create_task(recorder.run(interval=0))
    await asyncio.sleep(0.12)  # two or three keys written, one under way
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert await counts(store, ids) == [1, 2, 3, 4, 5]


async def test_shutdown_does_not_hang_on_an_unanswering_store(store: Store) -> None:
    recorder, _ = await keys_used(store, [1, 1])

    async def hangs(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    store.update_key = hangs  # type: ignore[method-assign]
    run = asyncio.create_task(recorder.run(interval=3600, final_budget=0.3))
    await asyncio.sleep(0)
    started = time.monotonic()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert time.monotonic() - started < 2


async def test_usage_counts_are_batched(replicas: Any) -> None:
    (c,) = await replicas()
    key, created = await create_key(c)
    for _ in range(4):
        assert await token_status(c, key) == 200
    feed = await c.app[STORE].key_changes(None)
    await c.app[USAGE].flush()
    rec = await shown_record(c, created["id"])
    assert rec["request_count"] == 4 and rec["last_used_at"] is not None
    # not announced: other replicas need not re-read the key for its counts
    assert (await c.app[STORE].key_changes(feed.seq)).public_ids == ()
