"""What the broker knows of one request while it answers it, in one object."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import istr

from broker.http.listeners import ANYWHERE
from broker.store import RateLimitState

#: The request ID's header, on the way in and out (an ``istr``: looked up on every request).
X_REQUEST_ID = istr("X-Request-Id")


@dataclass(slots=True, eq=False)
class RequestContext:
    """Made by the request context (:mod:`broker.http.answer`) for every request
    (``request[CONTEXT]``), filled by the handlers, read by the answer headers
    (:func:`broker.http.cors.finish_answer`) and the access log.

    One object with plain attributes rather than a request key per fact: every
    ``request[...]`` is a Python-level mapping call, and the hot path made a dozen."""

    #: The caller's own ``X-Request-Id`` when well-formed, else a new one (SPEC §8).
    request_id: str
    #: The listener the request came in on (:mod:`broker.http.listeners`).
    listener: str = ANYWHERE
    #: The client's address: the socket peer, or from ``X-Forwarded-For`` behind a
    #: trusted proxy; empty until the request context has read it.
    client_ip: str = ""
    #: ``public_id`` of the key the request authenticated with, for the access log.
    key_public_id: str | None = None
    #: Asset ID of the semantic model the request is about, for the access log.
    model_id: str | None = None
    #: The key's rate limit after counting this request, for SPEC §4's ``RateLimit-*``
    #: answer headers (``None`` for a key without a limit).
    rate_limit: RateLimitState | None = None

    def admit(self, key_public_id: str, model_id: str, rate_limit: RateLimitState | None) -> None:
        """Note the key and model a request was let through with, and its rate limit."""
        self.key_public_id = key_public_id
        self.model_id = model_id
        self.rate_limit = rate_limit
