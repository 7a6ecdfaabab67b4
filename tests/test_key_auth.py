"""Key verification (parse → look up → compare → state → rights) and cache propagation."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import pytest

from broker.errors import Forbidden, Unauthorized
from broker.keys import format as key_format
from broker.keys import verify
from broker.keys.admin import KeyAdmin
from broker.keys.cache import KeyCache
from broker.keys.rights import META_READ, QUERY_EXECUTE, TOKEN_CREATE, grants
from broker.keys.verify import KeyVerifier
from broker.store import Store, open_store
from broker.support.timeutil import utcnow
from tests.harness.keys import add_key
from tests.harness.waiting import refused_within, wait_until


@pytest.fixture
async def verifier(store: Store) -> KeyVerifier:
    return KeyVerifier(KeyCache(store))


async def reason(coro: Awaitable[Any]) -> str:
    with pytest.raises(Unauthorized) as exc:
        await coro
    return exc.value.reason


async def test_valid_key(store: Store, verifier: KeyVerifier) -> None:
    key, record = await add_key(store, rights=[TOKEN_CREATE])
    assert (await verifier.authorize(key, TOKEN_CREATE, "sales")).record.id == record.id


@pytest.mark.parametrize(
    ("presented", "expected"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer x", "malformed"),
        ("ath_short.secret", "malformed"),
        ("ath_abcdefghijklmnop.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "unknown"),
    ],
)
async def test_refusals_before_lookup(
    verifier: KeyVerifier, presented: str | None, expected: str
) -> None:
    assert await reason(verifier.authenticate(presented)) == expected


async def test_wrong_secret_by_one_character(store: Store, verifier: KeyVerifier) -> None:
    key, _ = await add_key(store)
    last = "A" if key[-1] != "A" else "B"
    assert await reason(verifier.authenticate(key[:-1] + last)) == "wrong_secret"


async def test_inactive_expired_revoked(store: Store) -> None:
    admin = KeyAdmin(store)
    key, record = await add_key(store)
    await admin.update(record.id, {"is_active": False})
    assert await reason(KeyVerifier(KeyCache(store)).authenticate(key)) == "inactive"
    await admin.update(record.id, {"is_active": True})
    await store.update_key(
        record.id, lambda r: dataclasses.replace(r, expires_at=utcnow() - timedelta(seconds=1))
    )
    assert await reason(KeyVerifier(KeyCache(store)).authenticate(key)) == "expired"
    await admin.revoke(record.id)
    assert await reason(KeyVerifier(KeyCache(store)).authenticate(key)) == "revoked"


async def test_missing_and_wrong_scope_rights_are_forbidden(
    store: Store, verifier: KeyVerifier
) -> None:
    key, _ = await add_key(store, rights=[f"{META_READ}:sales", "something.else"])
    await verifier.authorize(key, META_READ, "sales")
    with pytest.raises(Forbidden):
        await verifier.authorize(key, META_READ, "marketing")
    with pytest.raises(Forbidden):
        await verifier.authorize(key, TOKEN_CREATE, "sales")


@pytest.mark.parametrize(
    ("rights", "needed", "asset", "granted"),
    [
        (["semantic_model.*"], QUERY_EXECUTE, "a", True),
        (["semantic_model.*:a"], TOKEN_CREATE, "a", True),
        (["semantic_model.*:a"], TOKEN_CREATE, "b", False),
        ([f"{TOKEN_CREATE}:a"], TOKEN_CREATE, "a", True),
        ([f"{TOKEN_CREATE}:a"], TOKEN_CREATE, None, False),
        ([TOKEN_CREATE], TOKEN_CREATE, "anything", True),
        ([META_READ], QUERY_EXECUTE, "a", False),
        (["semantic_model.token"], TOKEN_CREATE, "a", False),
        (["semantic_model.*"], "semantic_model.other", "a", False),
        ([], META_READ, "a", False),
    ],
)
def test_grants(rights: list[str], needed: str, asset: str | None, granted: bool) -> None:
    assert grants(rights, needed, asset) is granted


async def test_cache_serves_without_store_round_trip(store: Store) -> None:
    key, _ = await add_key(store)
    cache = KeyCache(store)
    feed = asyncio.create_task(cache.follow_changes(0.05))
    try:
        verifier = KeyVerifier(cache)
        await verifier.authenticate(key)
        calls = 0
        real = store.find_key

        async def counting(public_id: str) -> Any:
            nonlocal calls
            calls += 1
            return await real(public_id)

        store.find_key = counting  # type: ignore[method-assign]
        await wait_until(lambda: cache.live)
        await verifier.authenticate(key)
        calls = 0
        await asyncio.gather(*(verifier.authenticate(key) for _ in range(50)))
        assert calls == 0
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


async def test_a_key_that_passed_is_recognized_and_nothing_like_it_is(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one digest check, the very same key is judged from memory; a key that only
    shares its public ID (or its text, give or take a character) is checked in full and
    refused, and a rotation forgets what was remembered."""
    key, record = await add_key(store, rights=[TOKEN_CREATE])
    cache = KeyCache(store)
    feed = asyncio.create_task(cache.follow_changes(0.05))
    checks = 0
    real_check = key_format.verify_secret

    def counting(secret: str, stored: str) -> bool:
        nonlocal checks
        checks += 1
        return real_check(secret, stored)

    monkeypatch.setattr(verify, "verify_secret", counting)
    try:
        await wait_until(lambda: cache.live)
        verifier = KeyVerifier(cache)
        await verifier.authenticate(key)
        assert checks == 1
        for _ in range(3):
            assert (await verifier.authenticate(key)).id == record.id
        assert verifier.vouches(key)
        assert checks == 1
        other = "A" if key[-1] != "A" else "B"
        for presented in (key + "A", key[:-1] + other, key.upper()):
            assert not verifier.vouches(presented)
            assert await reason(verifier.authenticate(presented)) in {"wrong_secret", "malformed"}
        assert await reason(verifier.authenticate("atx_" + key[4:])) == "malformed"
        assert await reason(verifier.authenticate(key[:20])) == "malformed"
        checks = 0
        new, _ = await KeyAdmin(store, cache).rotate(record.id)
        await wait_until(lambda: cache.peek(record.public_id) != record)
        assert await reason(verifier.authenticate(key)) == "wrong_secret"
        assert not verifier.vouches(key)
        assert (await verifier.authenticate(new)).id == record.id
        assert checks == 2
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


async def test_concurrent_misses_share_one_lookup(store: Store) -> None:
    key, _ = await add_key(store)
    cache = KeyCache(store)
    calls = 0
    real = store.find_key

    async def counting(public_id: str) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await real(public_id)

    store.find_key = counting  # type: ignore[method-assign]
    await asyncio.gather(*(KeyVerifier(cache).authenticate(key) for _ in range(30)))
    assert calls == 1


async def test_a_stalled_feed_stops_the_cache_vouching_within_a_second(store: Store) -> None:
    """A partitioned store never answers the poll: the cache must stop trusting itself."""
    key, record = await add_key(store, rights=[TOKEN_CREATE])
    cache = KeyCache(store)
    stalled = asyncio.Event()
    real_changes = store.key_changes

    async def stalling(since: int | None) -> Any:
        if stalled.is_set():
            await asyncio.Event().wait()
        return await real_changes(since)

    store.key_changes = stalling  # type: ignore[method-assign]
    feed = asyncio.create_task(cache.follow_changes())
    try:
        verifier = KeyVerifier(cache)
        await wait_until(lambda: cache.live)
        await verifier.authenticate(key)
        stalled.set()
        await KeyAdmin(store).revoke(record.id)  # behind the cache's back: no feed will say so
        refused = await refused_within(lambda: verifier.authenticate(key), Unauthorized, 1.0)
        assert refused.reason == "revoked"
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


@pytest.mark.both_stores
async def test_revoke_on_one_replica_reaches_another_within_a_second(store_url: str) -> None:
    """Two stores on one URL stand for two replicas (two processes in the SQLite case)."""
    a, b = open_store(store_url), open_store(store_url)
    cache_b = KeyCache(b)
    feed = asyncio.create_task(cache_b.follow_changes())
    try:
        key, record = await add_key(a, rights=[TOKEN_CREATE])
        verifier_b = KeyVerifier(cache_b)
        await wait_until(lambda: cache_b.live)
        await verifier_b.authenticate(key)
        await KeyAdmin(a).revoke(record.id)
        refused = await refused_within(lambda: verifier_b.authenticate(key), Unauthorized, 1.0)
        assert refused.reason == "revoked"
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await a.close()
        await b.close()
