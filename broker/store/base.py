"""The storage contract shared by every backend.

Two implementations keep identical behaviour: :mod:`broker.store.sqlite` (embedded, one
replica, durable) and :mod:`broker.store.redis` (shared by many replicas). The shared
contract test suite (``tests/test_store_contract.py``) runs against both.

Rules every backend follows:

* "Not found" is ``None``, never an exception.
* A backend that cannot reach its storage raises :class:`~broker.errors.StoreUnavailable`
  (never a driver exception), and works again once the storage is back, without restart.
* Every write to a key record is atomic and appends the key's ``public_id`` to the change
  feed in the same atomic step, so every replica can invalidate its caches.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from broker.keys.audit import AuditEvent
from broker.keys.record import KeyRecord

#: Gives the audit event of a change from the old record to the new one (or ``None``).
Auditor = Callable[[KeyRecord, KeyRecord], AuditEvent | None]

#: How many change-feed entries a backend keeps; a reader further behind gets ``reset``.
CHANGE_FEED_LENGTH = 10_000


@dataclass(slots=True)  # not frozen: built per request; frozen dataclasses build 4x slower
class RateLimitState:
    """A rate-limit bucket as :meth:`Store.hit_rate_limit` left it (SPEC §4's headers).

    ``wait`` is ``0.0`` when the request was allowed, else the seconds until one would be.
    ``remaining`` is how many requests could be made at once now (``0`` after a refusal),
    ``reset`` the whole seconds (rounded up) until the bucket is full again, ``limit`` the
    limit it was counted against.
    """

    limit: int
    wait: float
    remaining: int
    reset: int

    @property
    def allowed(self) -> bool:
        return self.wait == 0.0


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """A page of the key change feed.

    ``seq`` is the position to pass as ``since`` next time. ``reset`` is true when the
    reader cannot be told exactly what changed (first call, or it fell behind the kept
    feed): it must then drop every cached key.
    """

    seq: int
    public_ids: tuple[str, ...]
    reset: bool


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A token the broker minted: the JWT, its ``jti``, its ``exp`` (epoch seconds) and the
    ``public_id`` of the key that minted it."""

    token: str
    jti: str
    expires_at: int
    public_id: str


class Store(abc.ABC):
    """Async storage of key records, the key change feed and the token cache."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the storage answers; raise ``StoreUnavailable`` otherwise."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads. Idempotent."""

    # -- key records ---------------------------------------------------------------

    @abc.abstractmethod
    async def insert_key(self, record: KeyRecord, audit: AuditEvent | None = None) -> None:
        """Store a new record (and its audit event, in the same atomic step). ``id`` and
        ``public_id`` are unique; inserting a record whose ``id`` or ``public_id`` exists
        raises ``ValueError`` and changes nothing."""

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The record with this UUID, or ``None``."""

    @abc.abstractmethod
    async def find_key(self, public_id: str) -> KeyRecord | None:
        """The record with this ``public_id``, or ``None``."""

    @abc.abstractmethod
    async def list_keys(self, limit: int, after: str | None = None) -> list[KeyRecord]:
        """Up to ``limit`` records ordered by :attr:`KeyRecord.sort_key`, starting strictly
        after the sort key ``after`` (from the beginning when ``None``)."""

    @abc.abstractmethod
    async def update_key(
        self,
        key_id: str,
        mutate: Callable[[KeyRecord], KeyRecord],
        *,
        announce: bool = True,
        audit: Auditor | None = None,
    ) -> KeyRecord | None:
        """Atomic read-modify-write of one record.

        ``mutate`` receives the current record and returns the new one (it must be a pure
        function: a backend may call it again after a concurrent write). The backend stores
        the result with ``version`` one higher than the record it read and returns it.
        Returns ``None`` when no record has this id. Exceptions raised by ``mutate``
        propagate and nothing is written. ``id``, ``public_id`` and ``created_at`` must not
        change. With ``announce=False`` the write gets no change-feed entry: only for
        changes no replica's cached copy needs to see (usage counts of keys whose checks
        do not depend on them). ``audit(old, new)`` (pure too) gives the event to store in
        the same atomic step, or ``None`` for none.
        """

    # -- audit trail ---------------------------------------------------------------

    @abc.abstractmethod
    async def audit_events(
        self, limit: int, before: str | None = None, key_id: str | None = None
    ) -> list[AuditEvent]:
        """Up to ``limit`` events, newest first, strictly before the sort key ``before``
        (:attr:`AuditEvent.sort_key`; from the newest when ``None``), only those of
        ``key_id`` when given."""

    @abc.abstractmethod
    async def purge_audit(self, older_than: datetime, batch: int = 1000) -> int:
        """Delete up to ``batch`` events from before ``older_than``; how many were."""

    @abc.abstractmethod
    async def key_changes(self, since: int | None) -> KeyChanges:
        """Public IDs of keys written after position ``since`` (in write order, possibly
        repeated). ``since=None`` returns the current position with ``reset=True``."""

    # -- token cache ---------------------------------------------------------------

    @abc.abstractmethod
    async def get_token(self, cache_key: str) -> MintedToken | None:
        """The token cached under ``cache_key``, or ``None`` once it is past ``keep_until``."""

    @abc.abstractmethod
    async def add_token(self, cache_key: str, token: MintedToken, keep_until: float) -> MintedToken:
        """Cache ``token`` under ``cache_key`` until the epoch time ``keep_until``, unless a
        live token is already cached there: set-if-absent, atomic across replicas. Returns
        the cached token, which is ``token`` only if this call won. The winner's ``jti`` is
        recorded (see :meth:`token_owner`) no later than its token is cached; a loser's is
        not kept."""

    @abc.abstractmethod
    async def token_owner(self, jti: str) -> str | None:
        """The ``public_id`` of the key that minted ``jti``, until the token's ``expires_at``;
        ``None`` for an unknown or expired ``jti``."""

    # -- limits --------------------------------------------------------------------

    @abc.abstractmethod
    async def hit_rate_limit(
        self, bucket: str, limit: int, period: float, free_if_marked: str | None = None
    ) -> RateLimitState:
        """Count one request against ``bucket``: at most ``limit`` per ``period`` seconds
        (GCRA: a burst of ``limit``, then one per ``period / limit``), atomic across
        replicas. Returns the bucket's state after the request: ``wait`` is ``0.0`` when
        allowed (and counted), else the seconds until a request would be allowed (nothing
        counted). When ``free_if_marked`` names a live mark of this bucket (:meth:`mark`),
        the request is allowed without being counted. ``remaining`` and ``reset`` are
        computed by :func:`broker.store.common.limit_state` in every backend, on the
        same clock as the count, so every backend reports the same numbers."""

    @abc.abstractmethod
    async def peek_rate_limit(self, bucket: str, limit: int, period: float) -> RateLimitState:
        """``bucket``'s state now, nothing counted (for the headers of a refusal that comes
        before the count); ``wait`` is ``0.0``."""

    @abc.abstractmethod
    async def mark(self, bucket: str, name: str, ttl: float) -> None:
        """Set the mark ``name`` of ``bucket`` for ``ttl`` seconds (for
        :meth:`hit_rate_limit`)."""

    @abc.abstractmethod
    async def count_failure(self, subject: str, window: float) -> tuple[int, float]:
        """Count one failure of ``subject`` in its current window (a window of ``window``
        seconds opens with the first failure); returns (failures in the window, seconds
        until it closes). Atomic across replicas."""
