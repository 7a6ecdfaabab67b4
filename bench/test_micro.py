"""Micro-benchmarks of the broker's hot paths, in process: each prints microseconds per
call and asserts only that the result is right, never a timing.

Run from the repository root (``testpaths`` keeps them out of the default run)::

    .venv/bin/pytest bench/test_micro.py -s -p no:cacheprovider

They run on pytest-asyncio's default event loop, not the uvloop the broker serves on;
the paths measured here do not wait on the loop, so it makes little difference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import jwt
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from broker.cube.headers import upstream_headers
from broker.keys.cache import KeyCache
from broker.keys.record import KeyRecord
from broker.keys.verify import KeyVerifier
from broker.models import SemanticModel, load_registry
from broker.store import Store, open_store
from broker.support.metrics import Metrics
from broker.support.secret import Secret
from broker.tokens.issue import TokenConfig, TokenService, mint
from broker.tokens.signing import SigningSecrets
from tests.harness import DATA
from tests.harness.keys import add_key
from tests.harness.settings import API_SECRET
from tests.harness.waiting import wait_until

#: Calls per measurement, after one unmeasured call.
CALLS = 20_000
#: Fewer for what signs a JWT (tens of microseconds a call).
SIGNING_CALLS = 5_000

T = TypeVar("T")


def report(name: str, elapsed: float, calls: int) -> None:
    print(f"\n{name:<44} {elapsed / calls * 1e6:8.2f} µs per call ({calls} calls)")


def per_call(name: str, call: Callable[[], T], calls: int = CALLS) -> T:
    """Time ``calls`` calls of ``call`` (after one more, unmeasured); the last result."""
    result = call()
    started = time.perf_counter()
    for _ in range(calls):
        result = call()
    report(name, time.perf_counter() - started, calls)
    return result


async def per_call_async(name: str, call: Callable[[], Awaitable[T]], calls: int = CALLS) -> T:
    """:func:`per_call` for a coroutine function, awaited one call after the other."""
    result = await call()
    started = time.perf_counter()
    for _ in range(calls):
        result = await call()
    report(name, time.perf_counter() - started, calls)
    return result


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/broker.db")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def policy() -> TokenConfig:
    return TokenConfig(SigningSecrets(Secret(API_SECRET)), ttl=3600, min_remaining=300)


@pytest.fixture
def model() -> SemanticModel:
    found = load_registry(DATA / "models.yaml").get("orders")
    assert found is not None
    return found


async def test_authenticate_a_cached_key(store: Store) -> None:
    """A key the cache holds while its change feed is live: no store round trip."""
    key, record = await add_key(store)
    # A cached lookup never yields to the loop, so the feed cannot poll during the timing
    # loop: trust the cache long enough that a slow machine still measures only hits.
    cache = KeyCache(store, max_age=60.0)
    feed = asyncio.create_task(cache.follow_changes())
    try:
        await wait_until(lambda: cache.live)
        verifier = KeyVerifier(cache)
        await verifier.authenticate(key)
        lookups = 0
        real_find_key = store.find_key

        async def counted(public_id: str) -> KeyRecord | None:
            nonlocal lookups
            lookups += 1
            return await real_find_key(public_id)

        store.find_key = counted  # type: ignore[method-assign]
        verified = await per_call_async(
            "KeyVerifier.authenticate (cached key)", lambda: verifier.authenticate(key)
        )
        assert verified == record
        assert lookups == 0  # what was measured is the cached path
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


async def test_token_for_an_l1_hit(store: Store, policy: TokenConfig, model: SemanticModel) -> None:
    _, record = await add_key(store)
    service = TokenService(store, policy, Metrics())
    first = await service.token_for(record, model)
    token = await per_call_async(
        "TokenService.token_for (L1 hit)", lambda: service.token_for(record, model)
    )
    assert token == first


def test_mint(policy: TokenConfig, model: SemanticModel) -> None:
    now = int(time.time())
    minted = per_call(
        "mint (HS256 JWT)",
        lambda: mint(policy, model.asset_id, model.schema_hash, "0123456789abcdef", now),
        SIGNING_CALLS,
    )
    claims = jwt.decode(minted.token, API_SECRET, algorithms=["HS256"])
    assert claims == {
        "model_id": "orders",
        "schema_hash": model.schema_hash,
        "iat": now,
        "exp": now + 3600,
        "jti": minted.jti,
    }
    assert (minted.expires_at, minted.public_id) == (now + 3600, "0123456789abcdef")


def test_upstream_headers() -> None:
    """A browser's request in key mode, as it reaches the broker behind a proxy."""
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "broker.example.com"),
                ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
                ("Accept", "application/json"),
                ("Accept-Encoding", "gzip, deflate, br"),
                ("Accept-Language", "en-GB,en;q=0.8"),
                ("Connection", "keep-alive"),
                ("Content-Type", "application/json"),
                ("Origin", "https://dash.example.com"),
                ("Referer", "https://dash.example.com/orders"),
                ("Cookie", "session=abc"),
                ("X-API-KEY", "ath_0123456789abcdef.secret"),
                ("X-Semantic-Model", "orders"),
                ("X-Request-Id", "3f2a-span-1"),
                ("X-Forwarded-For", "198.51.100.1"),
            ]
        )
    )
    out = per_call(
        "upstream_headers",
        lambda: upstream_headers(incoming, "the.cube.token", "3f2a-span-1", "198.51.100.1"),
    )
    assert dict(out) == {
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate, br",
        "Accept-Language": "en-GB,en;q=0.8",
        "Content-Type": "application/json",
        "Referer": "https://dash.example.com/orders",
        "Authorization": "the.cube.token",
        "X-Request-Id": "3f2a-span-1",
        "X-Forwarded-For": "198.51.100.1",
    }
