"""The broker's own error hierarchy.

Domain code raises these; the request context around every handler
(:mod:`broker.http.answer`) turns them into the JSON error shape of SPEC §3. Messages are
written for a person and must never contain a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.store.base import RateLimitState


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class BrokerError(Exception):
    """Base class: an HTTP status, a stable machine code and a human message."""

    status: int = 500
    code: str = "internal_error"
    default_message: str = "Internal server error."
    #: The request's body was left unread: its connection cannot carry another request.
    closes_connection: bool = False
    #: The rate limit of the key behind the refused request, when it was counted before
    #: the refusal: the answer still carries SPEC §4's ``RateLimit-*`` headers.
    rate_limit: RateLimitState | None = None

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None):
        self.message = message or self.default_message
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.message)


class InvalidJSON(BrokerError):
    status, code, default_message = 400, "invalid_json", "The request body is not valid JSON."


class BadRequest(BrokerError):
    status, code, default_message = 400, "bad_request", "The request is malformed."


class AuthFailure(StrEnum):
    """Why a credential was refused: the ``reason`` label of ``broker_auth_failures_total``
    and of log lines, never shown to the caller."""

    MISSING = "missing"  # no credential at all: not an attempt, the guard ignores it
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    WRONG_SECRET = "wrong_secret"  # noqa: S105
    REVOKED = "revoked"
    INACTIVE = "inactive"
    EXPIRED = "expired"
    WRONG_ADMIN_KEY = "wrong_admin_key"
    CALLBACK_SECRET = "callback_secret"  # noqa: S105 - a reason, not a password
    INVALID_TOKEN = "invalid_token"  # noqa: S105
    EXPIRED_TOKEN = "expired_token"  # noqa: S105
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105
    REVOKED_TOKEN = "revoked_token"  # noqa: S105
    INACTIVE_TOKEN = "inactive_token"  # noqa: S105


class Unauthorized(BrokerError):
    """A missing, malformed, unknown, wrong, expired, inactive or revoked credential.

    ``reason`` is for metrics and logs only; the caller always sees the same message.
    """

    status, code, default_message = 401, "unauthorized", "Missing or invalid credentials."

    def __init__(self, reason: AuthFailure, message: str | None = None):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})
        self.reason = reason


class Forbidden(BrokerError):
    status, code, default_message = 403, "forbidden", "The credential lacks the required right."


class IPNotAllowed(BrokerError):
    status, code = 403, "ip_not_allowed"
    default_message = "Requests from this address are not allowed for this key."


class AdminDisabled(BrokerError):
    status, code = 403, "admin_disabled"
    default_message = "The admin API is disabled: no admin key is configured."


class NotFound(BrokerError):
    status, code, default_message = 404, "not_found", "Not found."


class MethodNotAllowed(BrokerError):
    status, code, default_message = 405, "method_not_allowed", "Method not allowed."


class RequestTimeout(BrokerError):
    status, code = 408, "request_timeout"
    default_message = "The request body made no progress in time."
    closes_connection = True


class Conflict(BrokerError):
    status, code, default_message = 409, "conflict", "The change is impossible in this state."


class PayloadTooLarge(BrokerError):
    status, code = 413, "payload_too_large"
    default_message = "The request body is larger than 1 MiB."
    closes_connection = True


class ValidationFailed(BrokerError):
    status, code, default_message = 422, "validation_failed", "The request is invalid."

    def __init__(self, details: Sequence[FieldError], message: str | None = None):
        if message is None:
            message = "; ".join(f"{d.field}: {d.message}" for d in details) or None
        super().__init__(message)
        self.details = list(details)


class RateLimitCause(StrEnum):
    """Why a request was refused with 429: the ``cause`` label of
    ``broker_rate_limited_total``, never shown to the caller."""

    KEY_LIMIT = "key_limit"  # the key's rate_limit_per_minute
    BRUTE_FORCE = "brute_force"  # the guard refuses the client address
    BODY_MEMORY = "body_memory"  # the bound on request bodies held in memory


class RateLimited(BrokerError):
    """A 429 with ``Retry-After`` (whole seconds, at least 1); ``cause`` is for metrics,
    ``rate_limit`` the key's limit when that is what refused."""

    status, code, default_message = 429, "rate_limited", "Too many requests."

    def __init__(
        self,
        retry_after: float,
        cause: RateLimitCause,
        message: str | None = None,
        *,
        rate_limit: RateLimitState | None = None,
    ):
        seconds = max(1, int(-(-retry_after // 1)))
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds
        self.cause = cause
        self.rate_limit = rate_limit


class ClientClosedRequest(BrokerError):
    """The caller hung up before its request was read: nobody is left to answer, and it is
    no error of the broker's. Counted as 499, nginx's code for it."""

    status, code, default_message = 499, "client_closed_request", "The client hung up."


class BadGateway(BrokerError):
    status, code, default_message = 502, "bad_gateway", "Cube is unreachable or answered badly."


class StoreUnavailable(BrokerError):
    status, code, default_message = 503, "store_unavailable", "The store does not answer."


class GatewayTimeout(BrokerError):
    status, code, default_message = 504, "gateway_timeout", "Cube did not answer in time."


class ConfigError(Exception):
    """A bad setting or registry: one line naming the variable or file and what is wrong."""
