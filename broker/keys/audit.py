"""The audit trail of key changes (SPEC §4): who changed which key, when, and how.

An event is written by the store in the same atomic step as the change it records (a
change without its event, or an event without its change, never exists), and logged
once as a JSON line on ``broker.audit`` after the store took it. It never holds a
secret, a key or a digest: the changes of a rotation name no field but say ``rotated``.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.keys.record import PUBLIC_FIELDS, KeyRecord
from broker.support.timeutil import from_iso, to_iso, utcnow

log = logging.getLogger("broker.audit")

CREATE, UPDATE, ROTATE, REVOKE, LOCK = (
    "key.create",
    "key.update",
    "key.rotate",
    "key.revoke",
    "key.lock",
)
#: Fields of a record that an event may show: the public ones, never digests.
_SHOWN = frozenset(PUBLIC_FIELDS) - {"id", "public_id", "created_at", "last_used_at"}
#: Counts that move with every use: not a change anyone made.
_USAGE = frozenset({"request_count", "last_used_at"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: ``admin-api`` (with the client address and request ID), ``cli``,
    or ``broker`` (a virgin-mode key locking itself on a request from ``client_ip``)."""

    kind: str
    client_ip: str | None = None
    request_id: str | None = None


CLI = Actor("cli")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: str
    at: datetime
    action: str
    key_id: str
    public_id: str
    actor: Actor
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        """The event as ``GET /admin/audit-events`` shows it."""
        doc: dict[str, Any] = {
            "id": self.id,
            "at": to_iso(self.at),
            "action": self.action,
            "key_id": self.key_id,
            "public_id": self.public_id,
            "actor": self.actor.kind,
        }
        if self.actor.client_ip is not None:
            doc["client_ip"] = self.actor.client_ip
        if self.actor.request_id is not None:
            doc["request_id"] = self.actor.request_id
        doc["changes"] = self.changes
        return doc

    def encode(self) -> str:
        return json.dumps(self.to_doc(), sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> AuditEvent:
        doc = json.loads(text)
        at = from_iso(doc["at"])
        assert at is not None
        actor = Actor(doc["actor"], doc.get("client_ip"), doc.get("request_id"))
        return cls(
            doc["id"], at, doc["action"], doc["key_id"], doc["public_id"], actor, doc["changes"]
        )

    @property
    def sort_key(self) -> str:
        """Listing order, newest first when reversed: time (µs, fixed width), then id."""
        return f"{int(self.at.timestamp() * 1_000_000):017d}:{self.id}"


def event(action: str, old: KeyRecord | None, new: KeyRecord, actor: Actor) -> AuditEvent:
    """The event of the change from ``old`` (``None``: created) to ``new``."""
    return AuditEvent(
        id=str(uuid.uuid4()),
        at=utcnow(),
        action=action,
        key_id=new.id,
        public_id=new.public_id,
        actor=actor,
        changes=changes(old, new),
    )


def changes(old: KeyRecord | None, new: KeyRecord) -> dict[str, dict[str, Any]]:
    """``{field: {"from", "to"}}`` for every shown field that differs (all set fields of a
    new record), plus ``secret: {"from": "previous", "to": "rotated"}`` when the secret
    changed — its value never."""
    before = old.public() if old is not None else {}
    after = new.public()
    out = {
        name: {"from": before.get(name), "to": after[name]}
        for name in sorted(_SHOWN - _USAGE)
        if before.get(name) != after[name]
        and not (old is None and after[name] in (None, [], False, 0))
    }
    if old is not None and old.secret_digest != new.secret_digest:
        out["secret"] = {"from": "previous", "to": "rotated"}
    return out


def _set(value: Any) -> bool:
    """Whether a field of a new record was set to something (not left at its default)."""
    return value not in (None, [], False, 0)


def log_event(e: AuditEvent) -> None:
    """The event's one JSON line on ``broker.audit`` (for a SIEM to collect)."""
    log.info("%s %s by %s", e.action, e.public_id, e.actor.kind, extra={"audit": e.to_doc()})
