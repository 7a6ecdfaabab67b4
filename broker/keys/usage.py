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
from broker.keys.record import KeyRecord
from broker.store import Store

log = logging.getLogger("broker.keys")

FLUSH_INTERVAL = 5.0


class UsageRecorder:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, tuple[int, datetime]] = {}
        self._writing: set[asyncio.Future[KeyRecord | None]] = set()

    def record(self, key_id: str, when: datetime) -> None:
        count, _ = self._pending.get(key_id, (0, when))
        self._pending[key_id] = (count + 1, when)

    async def flush(self) -> None:
        """Write what was counted, one key at a time; stop at the first store failure (the
        rest waits for the next flush). A write outlives a cancelled flush, and its uses
        go back to pending only if it failed: none lost, none counted twice."""
        for key_id in list(self._pending):
            count, last = self._pending.pop(key_id)
            write = asyncio.ensure_future(
                self._store.update_key(
                    key_id, functools.partial(_add, count=count, last=last), announce=False
                )
            )
            self._writing.add(write)
            write.add_done_callback(functools.partial(self._written, key_id, count, last))
            try:
                await asyncio.shield(write)
            except StoreUnavailable:
                return
            except Exception:  # noqa: S112 - logged by _written
                continue

    def _written(
        self, key_id: str, count: int, last: datetime, write: asyncio.Future[KeyRecord | None]
    ) -> None:
        self._writing.discard(write)
        if write.cancelled() or isinstance(write.exception(), StoreUnavailable):
            more, newer = self._pending.get(key_id, (0, last))
            self._pending[key_id] = (count + more, max(last, newer))
        elif write.exception() is not None:
            log.error(
                "usage of key %s could not be written; %d uses dropped",
                key_id,
                count,
                exc_info=write.exception(),
            )

    async def run(self, interval: float = FLUSH_INTERVAL, final_budget: float = 5.0) -> None:
        """Flush every ``interval`` seconds until cancelled; then wait for a write still
        under way and flush once more, within ``final_budget`` seconds (shutdown must not
        hang on an unreachable store)."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            try:
                async with asyncio.timeout(final_budget):
                    if self._writing:
                        await asyncio.wait(set(self._writing))
                    await self.flush()
            except TimeoutError:
                pass
            if self._pending:
                log.warning("usage of %d key(s) not written at shutdown", len(self._pending))


def _add(record: KeyRecord, *, count: int, last: datetime) -> KeyRecord:
    newest = last if record.last_used_at is None else max(record.last_used_at, last)
    return dataclasses.replace(
        record, request_count=record.request_count + count, last_used_at=newest
    )
