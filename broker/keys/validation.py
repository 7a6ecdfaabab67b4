"""Strict validation of admin request bodies (SPEC §4): every problem is collected and
reported per field; an unknown field is a problem too."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.errors import FieldError, ValidationFailed
from broker.support.netaddr import normalize_rule
from broker.support.timeutil import from_iso, utcnow

_MAX_TEXT = 1024
_MAX_LIST = 1000
_MAX_INT = 2**53
MAX_GRACE_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an admin request body: its check (the typed, normalized value, or a
    ``ValueError`` whose message is the detail shown) and its JSON Schema, from which the
    OpenAPI document is generated (so the two cannot drift apart)."""

    check: Callable[[Any], Any]
    schema: Mapping[str, Any]


def _text(required: bool) -> Field:
    def check(value: Any) -> Any:
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if required and not value.strip():
            raise ValueError("must not be empty")
        if len(value) > _MAX_TEXT:
            raise ValueError(f"must be at most {_MAX_TEXT} characters")
        return value

    if required:
        return Field(check, {"type": "string", "pattern": r"\S", "maxLength": _MAX_TEXT})
    return Field(check, {"type": ["string", "null"], "maxLength": _MAX_TEXT})


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


_BOOL = Field(_check_bool, {"type": "boolean"})


def _count(maximum: int = _MAX_INT) -> Field:
    """An integer from 0 to ``maximum``. A JSON number with no fractional part (``4.0e8``)
    is an integer, as JSON Schema has it."""

    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if value < 0:
            raise ValueError("must be zero or greater")
        if value > maximum:
            raise ValueError(
                "is too large" if maximum == _MAX_INT else f"must be at most {maximum}"
            )
        return value

    return Field(check, {"type": "integer", "minimum": 0, "maximum": maximum})


def _check_future_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 timestamp with a time zone")
    try:
        parsed = from_iso(value)
    except ValueError as exc:
        msg = str(exc) if "time zone" in str(exc) else "is not an ISO 8601 timestamp"
        raise ValueError(msg) from None
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is in the year 10000 in UTC
        raise ValueError("must fall within the years 1 to 9999 in UTC") from None
    assert parsed is not None
    if parsed <= utcnow():
        raise ValueError("must be in the future")
    return parsed


_FUTURE_TIME = Field(_check_future_time, {"type": ["string", "null"], "format": "date-time"})


def _check_strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be an array of non-empty strings")
    if len(value) > _MAX_LIST:
        raise ValueError(f"must have at most {_MAX_LIST} items")
    return tuple(dict.fromkeys(value))


_LIST_SCHEMA = {
    "type": "array",
    "maxItems": _MAX_LIST,
    "items": {"type": "string", "minLength": 1},
}
_STRINGS = Field(_check_strings, _LIST_SCHEMA)


def _check_ips(value: Any) -> tuple[str, ...]:
    out = []
    for item in _check_strings(value):
        try:
            out.append(normalize_rule(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(dict.fromkeys(out))


_IPS = Field(_check_ips, {**_LIST_SCHEMA, "description": "IP addresses or CIDRs, v4 or v6"})

#: The create body (SPEC §4); ``name`` is the one required field.
CREATE_FIELDS: Mapping[str, Field] = {
    "name": _text(required=True),
    "description": _text(required=False),
    "client_name": _text(required=False),
    "expires_at": _FUTURE_TIME,
    "rights": _STRINGS,
    "virgin_mode": _BOOL,
    "virgin_until_n_requests": _count(),
    "max_whitelist_ips": _count(),
    "ip_whitelist": _IPS,
    "ip_blacklist": _IPS,
    "rate_limit_per_minute": _count(),
}
CREATE_REQUIRED = ("name",)

#: The PATCH body: what create takes but ``virgin_mode``, plus ``is_active``.
PATCH_FIELDS: Mapping[str, Field] = {
    **{k: v for k, v in CREATE_FIELDS.items() if k != "virgin_mode"},
    "is_active": _BOOL,
}

#: The rotate body, optional as a whole.
ROTATE_FIELDS: Mapping[str, Field] = {"grace_seconds": _count(MAX_GRACE_SECONDS)}


def _validate(body: Mapping[str, Any], allowed: Mapping[str, Field]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, raw in body.items():
        field = allowed.get(name)
        if field is None:
            errors.append(FieldError(name, "unknown field"))
            continue
        try:
            values[name] = field.check(raw)
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
    if errors:
        raise ValidationFailed(errors)
    return values


def validate_create(body: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, normalized values of a create body; raises ``ValidationFailed``."""
    values = _validate(body, CREATE_FIELDS)
    missing = [FieldError(name, "is required") for name in CREATE_REQUIRED if name not in values]
    if missing:
        raise ValidationFailed(missing)
    if values.get("virgin_mode"):
        check_virgin_limits(
            values.get("virgin_until_n_requests", 0), values.get("max_whitelist_ips", 0)
        )
        values["ip_whitelist"] = ()
        values["ip_blacklist"] = ()
    return values


def validate_patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, normalized values of a PATCH body; raises ``ValidationFailed``."""
    return _validate(body, PATCH_FIELDS)


def validate_rotate(body: Mapping[str, Any]) -> int:
    """``grace_seconds`` of a rotate body (default 0, at most one day)."""
    grace: int = _validate(body, ROTATE_FIELDS).get("grace_seconds", 0)
    return grace


def check_virgin_limits(until_n_requests: int, max_ips: int) -> None:
    if until_n_requests == 0 and max_ips == 0:
        raise ValidationFailed(
            [
                FieldError(
                    "virgin_mode",
                    "needs virgin_until_n_requests or max_whitelist_ips above 0, "
                    "else the key would never lock",
                )
            ]
        )
