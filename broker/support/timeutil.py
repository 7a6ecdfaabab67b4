"""UTC time helpers: one clock, one ISO 8601 format."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix; ``None`` stays ``None``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def from_iso(value: str | None) -> datetime | None:
    """Parse an ISO 8601 timestamp that carries a time zone; ``None`` stays ``None``.

    Raises ``ValueError`` for an unparseable or naive timestamp.
    """
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("must carry a time zone (e.g. 2030-01-01T00:00:00Z)")
    return parsed.astimezone(UTC)
