"""Keeping the audit trail ``BROKER_AUDIT_RETENTION_DAYS`` long: a background purge, in
batches, that never blocks requests and shrugs off a store that is down for a while."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from broker.errors import StoreUnavailable
from broker.store import Store
from broker.support.timeutil import utcnow

log = logging.getLogger("broker.audit")

PURGE_EVERY = 3600.0
_BATCH = 1000


async def purge_audit(store: Store, days: int, every: float = PURGE_EVERY) -> None:
    """Forever (a background task): delete events older than ``days``, a batch at a time
    with a pause between batches, then wait ``every`` seconds."""
    while True:
        try:
            cutoff = utcnow() - timedelta(days=days)
            for _ in range(1000):  # at most a million events a pass
                if await store.purge_audit(cutoff, _BATCH) < _BATCH:
                    break
                await asyncio.sleep(0.05)  # let requests through between batches
        except StoreUnavailable:
            log.warning("audit retention: the store does not answer; retrying later")
        await asyncio.sleep(every)
