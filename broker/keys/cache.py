"""The in-process cache of key records, kept honest by the store's change feed.

Every replica polls the store's change feed (:meth:`Store.key_changes`) a few times a
second and drops the records that changed, so a revoke, deactivation, PATCH or rotation
made on any replica (or from the CLI) reaches every replica within one poll interval plus
a round trip. A TTL is the safety net for anything missed. Cached records are trusted
only while the last poll that answered started less than ``max_age`` ago: a poll that
stalls (a partitioned or overloaded store) does not leave a revoked key working, lookups
then go to the store (and fail with 503 while it is down). When the feed cannot be read
the whole cache is dropped and kept empty until the feed answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from broker.errors import StoreUnavailable
from broker.keys.record import KeyRecord
from broker.store import Store
from broker.support.memo import Expiring
from broker.support.single_flight import SingleFlight

log = logging.getLogger("broker.keys")

_MISSING = object()


class KeyCache:
    """Records by ``public_id`` (``None`` cached for unknown IDs), single-flight on misses.

    ``max_age`` bounds how stale a trusted entry can be: with the default poll interval of
    0.25 s, a change reaches every replica's lookups within about 0.75 s plus one round
    trip, whatever happens to the feed.
    """

    def __init__(
        self, store: Store, *, ttl: float = 30.0, maxsize: int = 100_000, max_age: float = 0.75
    ) -> None:
        self._store = store
        self._entries: Expiring[str, KeyRecord | None] = Expiring(maxsize, ttl)
        self._flights: SingleFlight[tuple[str, int], KeyRecord | None] = SingleFlight()
        self._epoch = 0
        self._max_age = max_age
        self._fresh_until = 0.0  # monotonic time until which the cache may be trusted
        self._answered_at = time.monotonic()  # when the change feed last answered
        #: Polls of the change feed that failed, for ``broker_key_feed_failures_total``.
        self.feed_failures = 0

    async def get(self, public_id: str) -> KeyRecord | None:
        """The record (or ``None`` for an unknown key); one store read per miss, shared by
        concurrent callers that asked since the last invalidation. Raises
        ``StoreUnavailable``."""
        if self.live:
            cached = self._entries.get(public_id, _MISSING)
            if cached is not _MISSING:
                return cached  # type: ignore[return-value]
        epoch = self._epoch
        record, _ = await self._flights.do((public_id, epoch), lambda: self._load(public_id, epoch))
        return record

    async def _load(self, public_id: str, epoch: int) -> KeyRecord | None:
        record = await self._store.find_key(public_id)
        if self.live and epoch == self._epoch:
            self._entries[public_id] = record
        return record

    def peek(self, public_id: str) -> KeyRecord | None:
        """The cached record, from memory only: ``None`` when it is not cached, unknown,
        or the cache is not live."""
        if not self.live:
            return None
        cached = self._entries.get(public_id, None)
        return cached if isinstance(cached, KeyRecord) else None

    @property
    def live(self) -> bool:
        """Whether the change feed answered recently enough for cached entries to count."""
        return time.monotonic() < self._fresh_until

    def feed_age(self) -> float:
        """Seconds since the change feed last answered (since the cache was made, until
        it first does)."""
        return time.monotonic() - self._answered_at

    def invalidate(self, public_id: str) -> None:
        self._epoch += 1
        self._entries.pop(public_id)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    async def follow_changes(self, interval: float = 0.25) -> None:
        """Poll the change feed forever (run as a background task)."""
        since: int | None = None
        while True:
            started = time.monotonic()
            try:
                changes = await self._store.key_changes(since)
            except Exception as exc:
                self.feed_failures += 1
                if self._fresh_until:
                    log.warning(
                        "key change feed unreadable (%s); key cache disabled until it is back",
                        type(exc).__name__,
                        exc_info=not isinstance(exc, StoreUnavailable),
                    )
                self._fresh_until = 0.0
                self.clear()
                since = None
            else:
                if changes.reset:
                    self.clear()
                for public_id in changes.public_ids:
                    self.invalidate(public_id)
                since = changes.seq
                self._fresh_until = started + self._max_age
                self._answered_at = time.monotonic()
            await asyncio.sleep(interval)
