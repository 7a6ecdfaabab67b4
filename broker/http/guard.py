"""The brute-force guard (SPEC §3): a client address that keeps failing authentication
is refused (429) for the rest of the window.

Failures are counted per client IP in the store, so every replica's failures add up; a
replica that sees the count cross the threshold refuses that address locally until the
window closes (other replicas follow on that address's next failure there). The guard
never looks at which key was tried, so nobody can lock a key holder out from another
address; and a blocked address still passes a credential the broker already knows to be
good (the request context asks the verifiers, from memory), so one client failing behind a
shared NAT or load balancer does not lock out the others.
"""

from __future__ import annotations

import logging
import time

from broker.errors import StoreUnavailable
from broker.store import Store
from broker.support.memo import Bounded

log = logging.getLogger("broker.guard")

WINDOW = 60.0


class BruteForceGuard:
    def __init__(self, store: Store, threshold: int, window: float = WINDOW) -> None:
        self._store = store
        self._threshold = threshold
        self._window = window
        #: Blocked subjects and the monotonic time their block ends.
        self._blocked: Bounded[str, float] = Bounded(100_000)

    def blocked(self, subject: str) -> float | None:
        """Seconds ``subject`` (a client address) stays blocked, or ``None``."""
        until = self._blocked.get(subject)
        if until is None:
            return None
        left = until - time.monotonic()
        return left if left > 0 else None

    async def failed(self, subject: str) -> None:
        """Count a failed authentication of ``subject``; block it once over the threshold."""
        try:
            count, left = await self._store.count_failure(f"ip:{subject}", self._window)
        except StoreUnavailable:
            return  # authentication is failing closed anyway while the store is down
        if count >= self._threshold:
            if self.blocked(subject) is None:
                log.warning("blocking %s after %d failed authentications", subject, count)
            self._blocked[subject] = time.monotonic() + left
