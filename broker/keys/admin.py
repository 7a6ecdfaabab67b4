"""Admin operations on Athena keys: create, list, show, change, revoke, rotate."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from broker.errors import Conflict, FieldError, NotFound, ValidationFailed
from broker.keys import audit
from broker.keys.audit import CLI, Actor
from broker.keys.cache import KeyCache
from broker.keys.format import digest_secret, format_key, new_public_id, new_secret
from broker.keys.record import KeyRecord
from broker.keys.validation import check_virgin_limits
from broker.store import Store
from broker.support.timeutil import utcnow

_PUBLIC_ID_RE = re.compile(r"[a-z0-9]{16}")
DEFAULT_PAGE = 100
MAX_PAGE = 1000


class KeyAdmin:
    """Key management on the store; every write also drops the key from the local cache
    (other replicas learn of it through the change feed)."""

    def __init__(self, store: Store, cache: KeyCache | None = None) -> None:
        self._store = store
        self._cache = cache

    async def create(self, values: dict[str, Any], actor: Actor = CLI) -> tuple[str, KeyRecord]:
        """Store a new key from validated values, with its audit event; returns the
        plaintext key (shown once) and the record."""
        secret = new_secret()
        for _attempt in range(3):
            record = KeyRecord(
                id=str(uuid.uuid4()),
                public_id=new_public_id(),
                created_at=utcnow(),
                secret_digest=digest_secret(secret),
                **values,
            )
            created = audit.event(audit.CREATE, None, record, actor)
            try:
                await self._store.insert_key(record, created)
            except ValueError:
                continue  # a public_id collision: 36^16 makes this all but impossible
            self._forget(record)
            audit.log_event(created)
            return format_key(record.public_id, secret), record
        raise RuntimeError("could not allocate a unique key id")

    async def list_keys(
        self, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[KeyRecord], str | None]:
        after = _decode_cursor(cursor) if cursor else None
        records = await self._store.list_keys(limit + 1, after)
        if len(records) <= limit:
            return records, None
        page = records[:limit]
        return page, _encode_cursor(page[-1].sort_key)

    async def get(self, ident: str) -> KeyRecord:
        """The record by UUID or ``public_id``; raises ``NotFound``."""
        record = await self._lookup(ident)
        if record is None:
            raise NotFound("No API key with this id.")
        return record

    async def update(self, ident: str, changes: dict[str, Any], actor: Actor = CLI) -> KeyRecord:
        """Apply validated PATCH values. Reactivating a revoked key is a ``Conflict``."""

        def mutate(record: KeyRecord) -> KeyRecord:
            if record.revoked_at is not None and changes.get("is_active"):
                raise Conflict("A revoked key cannot be reactivated; revocation is final.")
            new = dataclasses.replace(record, **changes)
            if new.virgin_mode and not new.locked:
                check_virgin_limits(new.virgin_until_n_requests, new.max_whitelist_ips)
            return new

        return await self._update(ident, mutate, audit.UPDATE, actor)

    async def revoke(self, ident: str, actor: Actor = CLI) -> KeyRecord:
        """Revoke for good; a revoked key is ``NotFound`` to a second revoke."""
        now = utcnow()

        def mutate(record: KeyRecord) -> KeyRecord:
            if record.revoked_at is not None:
                raise NotFound("No active API key with this id: it is already revoked.")
            return dataclasses.replace(
                record,
                is_active=False,
                revoked_at=now,
                previous_secret_digest=None,
                previous_secret_expires_at=None,
            )

        return await self._update(ident, mutate, audit.REVOKE, actor)

    async def rotate(
        self, ident: str, grace_seconds: int = 0, actor: Actor = CLI
    ) -> tuple[str, KeyRecord]:
        """A new secret for the same ``public_id``; the old one keeps working for
        ``grace_seconds``."""
        secret = new_secret()
        digest = digest_secret(secret)
        now = utcnow()

        def mutate(record: KeyRecord) -> KeyRecord:
            if record.revoked_at is not None:
                raise Conflict("A revoked key cannot be rotated; revocation is final.")
            grace = grace_seconds > 0
            return dataclasses.replace(
                record,
                secret_digest=digest,
                previous_secret_digest=record.secret_digest if grace else None,
                previous_secret_expires_at=now + timedelta(seconds=grace_seconds)
                if grace
                else None,
            )

        record = await self._update(ident, mutate, audit.ROTATE, actor)
        return format_key(record.public_id, secret), record

    async def _lookup(self, ident: str) -> KeyRecord | None:
        if _PUBLIC_ID_RE.fullmatch(ident):
            return await self._store.find_key(ident)
        try:
            key_id = str(uuid.UUID(ident))
        except ValueError:
            return None
        return await self._store.get_key(key_id)

    async def _update(
        self, ident: str, mutate: Callable[[KeyRecord], KeyRecord], action: str, actor: Actor
    ) -> KeyRecord:
        """Apply ``mutate`` and record it as ``action`` (a change that changes nothing is
        still recorded: someone asked for it)."""
        record = await self.get(ident)
        events: list[audit.AuditEvent] = []

        def record_event(old: KeyRecord, new: KeyRecord) -> audit.AuditEvent:
            events[:] = [audit.event(action, old, new, actor)]
            return events[0]

        updated = await self._store.update_key(record.id, mutate, audit=record_event)
        if updated is None:
            raise NotFound("No API key with this id.")
        self._forget(updated)
        audit.log_event(events[-1])
        return updated

    async def audit_events(
        self, limit: int = DEFAULT_PAGE, cursor: str | None = None, key: str | None = None
    ) -> tuple[list[audit.AuditEvent], str | None]:
        """A page of the audit trail, newest first; ``key`` (UUID or ``public_id``) narrows
        it to one key (``NotFound`` for an unknown one)."""
        key_id = (await self.get(key)).id if key is not None else None
        before = _decode_cursor(cursor) if cursor else None
        events = await self._store.audit_events(limit + 1, before, key_id)
        if len(events) <= limit:
            return events, None
        page = events[:limit]
        return page, _encode_cursor(page[-1].sort_key)

    def _forget(self, record: KeyRecord) -> None:
        if self._cache is not None:
            self._cache.invalidate(record.public_id)


def _encode_cursor(sort_key: str) -> str:
    return base64.urlsafe_b64encode(sort_key.encode()).decode().rstrip("=")


#: What a cursor holds: a sort key (of a record or of an event; both have this shape).
_CURSOR = re.compile(r"\d{17}:[0-9a-f-]{36}")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not _CURSOR.fullmatch(raw):
        raise ValidationFailed([FieldError("cursor", "is not a cursor this API returned")])
    return raw
