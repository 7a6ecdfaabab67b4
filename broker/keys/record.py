"""The Athena-key record: what the store keeps and what the admin API shows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.errors import AuthFailure
from broker.support.timeutil import from_iso, to_iso, utcnow

#: Fields of the public record, in the order the admin API shows them (SPEC §4).
PUBLIC_FIELDS = (
    "id",
    "public_id",
    "name",
    "description",
    "client_name",
    "is_active",
    "rights",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "ip_whitelist",
    "ip_blacklist",
    "virgin_mode",
    "virgin_until_n_requests",
    "max_whitelist_ips",
    "request_count",
    "locked",
    "rate_limit_per_minute",
)

_TIME_FIELDS = frozenset(
    {"created_at", "expires_at", "revoked_at", "last_used_at", "previous_secret_expires_at"}
)
_TUPLE_FIELDS = frozenset({"rights", "ip_whitelist", "ip_blacklist"})


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """One Athena key. Immutable: changes are made with :func:`dataclasses.replace`.

    ``secret_digest`` (and, during a rotation grace period, ``previous_secret_digest``)
    are the only traces of the secret; they never leave the broker. ``version`` grows by
    one with every write and lets the store refuse a write based on a stale read.
    """

    id: str
    public_id: str
    name: str
    created_at: datetime
    secret_digest: str
    description: str | None = None
    client_name: str | None = None
    is_active: bool = True
    rights: tuple[str, ...] = ()
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    ip_whitelist: tuple[str, ...] = ()
    ip_blacklist: tuple[str, ...] = ()
    virgin_mode: bool = False
    virgin_until_n_requests: int = 0
    max_whitelist_ips: int = 0
    request_count: int = 0
    locked: bool = False
    rate_limit_per_minute: int = 0
    previous_secret_digest: str | None = None
    previous_secret_expires_at: datetime | None = None
    version: int = 1

    @property
    def sort_key(self) -> str:
        """Stable listing order: creation time (µs, fixed width), then id."""
        micros = int(self.created_at.timestamp() * 1_000_000)
        return f"{micros:017d}:{self.id}"

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def refusal(self, now: datetime | None = None) -> AuthFailure | None:
        """Why this key may not be used at all ``now`` (revoked, inactive, expired), or
        ``None``; without ``now``, the clock is read only for a key that can expire."""
        if self.revoked_at is not None:
            return AuthFailure.REVOKED
        if not self.is_active:
            return AuthFailure.INACTIVE
        if self.expires_at is not None and self.is_expired(now or utcnow()):
            return AuthFailure.EXPIRED
        return None

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it: no secret digest, times in ISO 8601."""
        doc = self.to_doc()
        return {name: doc[name] for name in PUBLIC_FIELDS}

    def to_doc(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, for the store."""
        doc: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _TIME_FIELDS:
                value = to_iso(value)
            elif f.name in _TUPLE_FIELDS:
                value = list(value)
            doc[f.name] = value
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> KeyRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in doc.items():
            if name not in known:
                continue
            if name in _TIME_FIELDS:
                value = from_iso(value)
            elif name in _TUPLE_FIELDS:
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)
