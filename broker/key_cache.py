"""The in-process cache of key records, kept honest by the store's change feed.

Every replica polls the store's change feed (:meth:`Store.key_changes`) a few times a
second and drops the records that changed, so a revoke, deactivation, PATCH or rotation
made on any replica (or from the CLI) reaches every replica within one poll interval plus
a round trip. A TTL is the safety net for anything missed. When the feed cannot be read
the whole cache is dropped and kept empty until the feed answers again: lookups then go to
the store (and fail with 503 while it is down) rather than trusting records that might
have been revoked meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from cachetools import TTLCache

from broker.errors import StoreUnavailable
from broker.records import KeyRecord
from broker.single_flight import SingleFlight
from broker.store import Store

log = logging.getLogger("broker.keys")

_MISSING = object()


class KeyCache:
    """Records by ``public_id`` (``None`` cached for unknown IDs), single-flight on misses."""

    def __init__(self, store: Store, *, ttl: float = 30.0, maxsize: int = 100_000) -> None:
        self._store = store
        self._entries: TTLCache[str, KeyRecord | None] = TTLCache(maxsize=maxsize, ttl=ttl)
        self._flights: SingleFlight[str, KeyRecord | None] = SingleFlight()
        self._epoch = 0
        self._feed_ok = False

    async def get(self, public_id: str) -> KeyRecord | None:
        """The record (or ``None`` for an unknown key); one store read per miss, shared by
        concurrent callers. Raises ``StoreUnavailable``."""
        if self._feed_ok:
            cached = self._entries.get(public_id, _MISSING)
            if cached is not _MISSING:
                return cached  # type: ignore[return-value]
        record, _ = await self._flights.do(public_id, lambda: self._load(public_id))
        return record

    async def _load(self, public_id: str) -> KeyRecord | None:
        epoch = self._epoch
        record = await self._store.find_key(public_id)
        if self._feed_ok and epoch == self._epoch:
            self._entries[public_id] = record
        return record

    @property
    def live(self) -> bool:
        """Whether the change feed is being followed (entries are cached only then)."""
        return self._feed_ok

    def invalidate(self, public_id: str) -> None:
        self._epoch += 1
        self._entries.pop(public_id, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    async def follow_changes(self, interval: float = 0.25) -> None:
        """Poll the change feed forever (run as a background task)."""
        since: int | None = None
        while True:
            try:
                changes = await self._store.key_changes(since)
            except StoreUnavailable:
                if self._feed_ok:
                    log.warning("key change feed unreachable; key cache disabled until it is back")
                self._feed_ok = False
                self.clear()
                since = None
            else:
                if changes.reset:
                    self.clear()
                for public_id in changes.public_ids:
                    self.invalidate(public_id)
                since = changes.seq
                self._feed_ok = True
            await asyncio.sleep(interval)
