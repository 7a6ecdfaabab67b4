"""Per-key policies applied after a key's credential checked out (SPEC §4): IP rules,
virgin mode, the per-key rate limit, and usage counting."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from datetime import datetime

from broker.errors import (
    IPNotAllowed,
    RateLimitCause,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
)
from broker.keys import audit
from broker.keys.record import KeyRecord
from broker.keys.usage import UsageRecorder
from broker.store import RateLimitState, Store
from broker.support.metrics import Metrics
from broker.support.netaddr import matches, parse_ip, plain
from broker.support.timeutil import utcnow

log = logging.getLogger("broker.keys")

RATE_PERIOD = 60.0
#: How long a query Cube answered "Continue wait" may be polled without being counted.
POLL_GRACE = 120.0
_SPAN_SUFFIX = re.compile(r"-span-\d+$")


def check_ip(record: KeyRecord, ip: str) -> None:
    """The key's IP rules for ``ip``: the blacklist first, then a non-empty whitelist must
    match. A key with either list refuses an address that is not one (what a trusted proxy
    reported, e.g. ``unknown``). Raises ``IPNotAllowed``."""
    if record.ip_blacklist or record.ip_whitelist:
        _refuse_unlisted(ip, record.ip_blacklist, record.ip_whitelist or None)


def _refuse_unlisted(
    ip: str, blacklist: tuple[str, ...], whitelist: tuple[str, ...] | None
) -> None:
    """The one statement of the IP rules: an address, not blacklisted, and on
    ``whitelist`` unless that is ``None`` (no whitelist rule)."""
    if parse_ip(ip) is None:
        raise IPNotAllowed("The client address could not be read.")
    if matches(ip, blacklist):
        raise IPNotAllowed("This address is blacklisted for this key.")
    if whitelist is not None and not matches(ip, whitelist):
        raise IPNotAllowed()


def virgin_use(record: KeyRecord, ip: str, now: datetime) -> KeyRecord:
    """One successful authentication of a virgin-mode key from ``ip``: count it, learn a new
    address while unlocked (never beyond ``max_whitelist_ips``), lock when a limit is
    reached. A pure function, so a store can apply it atomically (and retry it).
    Raises ``IPNotAllowed`` (nothing changes) for an address the key may not use, and
    ``Unauthorized`` when the stored record, fresher than the cached one its caller
    checked, says the key was revoked, deactivated or expired meanwhile."""
    refusal = record.refusal(now)
    if refusal is not None:
        raise Unauthorized(refusal)
    address = plain(ip)
    whitelist = record.ip_whitelist
    cap = record.max_whitelist_ips
    learning = not record.locked and (cap == 0 or len(whitelist) < cap)
    # While it can still learn, any address that is not blacklisted is admitted.
    _refuse_unlisted(address, record.ip_blacklist, None if learning else whitelist)
    if not matches(address, whitelist):
        whitelist = (*whitelist, address)
    count = record.request_count + 1
    locked = (
        record.locked
        or (record.virgin_until_n_requests > 0 and count >= record.virgin_until_n_requests)
        or (record.max_whitelist_ips > 0 and len(whitelist) >= record.max_whitelist_ips)
    )
    return dataclasses.replace(
        record, ip_whitelist=whitelist, request_count=count, locked=locked, last_used_at=now
    )


def poll_identity(
    request_id: str | None, method: str = "", path_qs: str = "", body: bytes = b""
) -> str | None:
    """What stays the same across the polls of one query, and only of that query: the
    caller's request ID without the ``-span-N`` suffix ``@cubejs-client/core`` adds per
    poll, bound to a digest of the request itself, so reusing a request ID for other
    queries does not make them free."""
    if not request_id:
        return None
    digest = hashlib.sha256(b"\n".join((method.encode(), path_qs.encode(), body))).hexdigest()
    return f"{_SPAN_SUFFIX.sub('', request_id)}:{digest[:32]}"


class KeyPolicy:
    def __init__(self, store: Store, usage: UsageRecorder, metrics: Metrics) -> None:
        self._store = store
        self._usage = usage
        self._metrics = metrics

    def record_use(self, record: KeyRecord, ip: str) -> None:
        """Apply the key's IP rules from ``ip`` (``IPNotAllowed``) and count the use, in
        the next batch; for keys not in virgin mode (:meth:`record_virgin_use`)."""
        check_ip(record, ip)
        self._usage.record(record.id, utcnow())

    async def record_virgin_use(self, record: KeyRecord, ip: str) -> KeyRecord:
        """Count a virgin-mode key's use and apply, or learn, its IP rules in one atomic
        store update (exact counts, atomic learning); the record as it left the store.
        Raises ``IPNotAllowed``."""
        now = utcnow()
        locks: list[audit.AuditEvent] = []

        def lock_event(old: KeyRecord, new: KeyRecord) -> audit.AuditEvent | None:
            locks[:] = []
            if new.locked and not old.locked:
                locks.append(audit.event(audit.LOCK, old, new, audit.Actor("broker", ip)))
            return locks[0] if locks else None

        updated = await self._store.update_key(
            record.id, lambda r: virgin_use(r, ip, now), audit=lock_event
        )
        for locked in locks:
            audit.log_event(locked)
        return updated if updated is not None else record

    async def limit(self, record: KeyRecord, poll: str | None = None) -> RateLimitState | None:
        """Count one request against the key's rate limit; a request polling a query Cube
        answered "Continue wait" (see :meth:`mark_poll`) is not counted again. Returns the
        limit's state for SPEC §4's ``RateLimit-*`` headers (``None`` for a key without a
        limit). Raises ``RateLimited`` carrying that state. If the store does not answer,
        the request is let through without a state: the limiter fails open
        (authentication itself fails closed)."""
        limit = record.rate_limit_per_minute
        if limit <= 0:
            return None
        try:
            state = await self._store.hit_rate_limit(
                _bucket(record), limit, RATE_PERIOD, poll or None
            )
        except StoreUnavailable:
            self._metrics.store_errors.inc()
            log.warning("rate limiter unavailable; letting the request through")
            return None
        if not state.allowed:
            message = f"Rate limit of {limit} requests per minute reached."
            raise RateLimited(state.wait, RateLimitCause.KEY_LIMIT, message, rate_limit=state)
        return state

    async def peek(self, record: KeyRecord) -> RateLimitState | None:
        """The key's rate limit as it stands, nothing counted: for the headers of a refusal
        that comes before the count (IP rules, rights). ``None`` without a limit, or when
        the store does not answer (the refusal stands without headers)."""
        limit = record.rate_limit_per_minute
        if limit <= 0:
            return None
        try:
            return await self._store.peek_rate_limit(_bucket(record), limit, RATE_PERIOD)
        except StoreUnavailable:
            self._metrics.store_errors.inc()
            return None

    async def mark_poll(self, record: KeyRecord, poll: str | None) -> None:
        """Remember that Cube answered "Continue wait" to this query, so its next polls
        are free."""
        if record.rate_limit_per_minute <= 0 or not poll:
            return
        try:
            await self._store.mark(_bucket(record), poll, POLL_GRACE)
        except StoreUnavailable:
            self._metrics.store_errors.inc()


def _bucket(record: KeyRecord) -> str:
    """The key's rate-limit bucket in the store."""
    return f"key:{record.id}"
