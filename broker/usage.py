"""Batched ``request_count`` / ``last_used_at`` updates for keys not in virgin mode.

A store write per request would put the store on every hot path; instead each replica
adds up its authentications and writes them every ``interval`` seconds (and at
shutdown), so the record lags by at most ``interval`` plus one store round trip.

These writes are not announced on the change feed: no check of a key outside virgin mode
depends on its counts, so other replicas' cached copies may keep the older ones, and do
not re-read every active key after every flush. Admin reads come from the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from datetime import datetime

from broker.errors import StoreUnavailable
from broker.records import KeyRecord
from broker.store import Store

log = logging.getLogger("broker.keys")

FLUSH_INTERVAL = 5.0


class UsageRecorder:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, tuple[int, datetime]] = {}

    def record(self, key_id: str, when: datetime) -> None:
        count, _ = self._pending.get(key_id, (0, when))
        self._pending[key_id] = (count + 1, when)

    async def flush(self) -> None:
        """Write what was counted; what cannot be written now is kept for the next try."""
        pending, self._pending = self._pending, {}
        for key_id, (count, last) in pending.items():
            try:
                await self._store.update_key(
                    key_id, functools.partial(_add, count=count, last=last), announce=False
                )
            except StoreUnavailable:
                self._requeue(key_id, count, last)

    def _requeue(self, key_id: str, count: int, last: datetime) -> None:
        more, newer = self._pending.get(key_id, (0, last))
        self._pending[key_id] = (count + more, max(last, newer))

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every ``interval`` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())


def _add(record: KeyRecord, *, count: int, last: datetime) -> KeyRecord:
    newest = last if record.last_used_at is None else max(record.last_used_at, last)
    return dataclasses.replace(
        record, request_count=record.request_count + count, last_used_at=newest
    )
