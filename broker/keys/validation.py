"""Strict validation of admin request bodies (SPEC §4): every problem is collected and
reported per field; an unknown field is a problem too."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from broker.errors import FieldError, ValidationFailed
from broker.support.netaddr import normalize_rule
from broker.support.timeutil import from_iso, utcnow

_MAX_TEXT = 1024
_MAX_LIST = 1000


def _text(required: bool, nullable: bool = True) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and nullable and not required:
            return None
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if required and not value.strip():
            raise ValueError("must not be empty")
        if len(value) > _MAX_TEXT:
            raise ValueError(f"must be at most {_MAX_TEXT} characters")
        return value

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if value < 0:
        raise ValueError("must be zero or greater")
    if value > 2**53:
        raise ValueError("is too large")
    return value


def _future_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 timestamp with a time zone")
    try:
        parsed = from_iso(value)
    except ValueError as exc:
        msg = str(exc) if "time zone" in str(exc) else "is not an ISO 8601 timestamp"
        raise ValueError(msg) from None
    assert parsed is not None
    if parsed <= utcnow():
        raise ValueError("must be in the future")
    return parsed


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be an array of non-empty strings")
    if len(value) > _MAX_LIST:
        raise ValueError(f"must have at most {_MAX_LIST} items")
    return tuple(dict.fromkeys(value))


def _ip_list(value: Any) -> tuple[str, ...]:
    items = _string_list(value)
    out = []
    for item in items:
        try:
            out.append(normalize_rule(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(dict.fromkeys(out))


_CREATE_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    "name": _text(required=True, nullable=False),
    "description": _text(required=False),
    "client_name": _text(required=False),
    "expires_at": _future_time,
    "rights": _string_list,
    "virgin_mode": _bool,
    "virgin_until_n_requests": _non_negative_int,
    "max_whitelist_ips": _non_negative_int,
    "ip_whitelist": _ip_list,
    "ip_blacklist": _ip_list,
    "rate_limit_per_minute": _non_negative_int,
}

_PATCH_FIELDS: Mapping[str, Callable[[Any], Any]] = {
    **{k: v for k, v in _CREATE_FIELDS.items() if k != "virgin_mode"},
    "is_active": _bool,
}


def _validate(
    body: Mapping[str, Any], allowed: Mapping[str, Callable[[Any], Any]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, raw in body.items():
        check = allowed.get(name)
        if check is None:
            errors.append(FieldError(name, "unknown field"))
            continue
        try:
            values[name] = check(raw)
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
    if errors:
        raise ValidationFailed(errors)
    return values


def validate_create(body: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, normalized values of a create body; raises ``ValidationFailed``."""
    values = _validate(body, _CREATE_FIELDS)
    if "name" not in values:
        raise ValidationFailed([FieldError("name", "is required")])
    if values.get("virgin_mode"):
        check_virgin_limits(
            values.get("virgin_until_n_requests", 0), values.get("max_whitelist_ips", 0)
        )
        values["ip_whitelist"] = ()
        values["ip_blacklist"] = ()
    return values


def validate_patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, normalized values of a PATCH body; raises ``ValidationFailed``."""
    return _validate(body, _PATCH_FIELDS)


def validate_rotate(body: Mapping[str, Any]) -> int:
    """``grace_seconds`` of a rotate body (default 0, at most one day)."""
    values = _validate(body, {"grace_seconds": _non_negative_int})
    grace: int = values.get("grace_seconds", 0)
    if grace > 86400:
        raise ValidationFailed([FieldError("grace_seconds", "must be at most 86400")])
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
