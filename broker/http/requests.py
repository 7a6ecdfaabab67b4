"""Reading requests: JSON bodies, presented credentials, the client address."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import hdrs, web
from multidict import istr

from broker.cube.access import Credential
from broker.errors import InvalidJSON
from broker.keys.format import looks_like_key
from broker.settings import Network
from broker.state import BODIES
from broker.support.netaddr import parse_ip, plain

#: Header names read on every authenticated request (``istr``: no case folding per lookup).
X_API_KEY = istr("X-API-Key")
X_SEMANTIC_MODEL = istr("X-Semantic-Model")
_ADMIN_KEY_HEADERS = (istr("apikey"), X_API_KEY, istr("X-Athena-Key"))


async def read_body(request: web.Request) -> bytes:
    """The request body, read within the shared memory bound (:mod:`broker.http.bodies`)."""
    return await request.app[BODIES].read(request)


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object. An empty body is ``{}`` when ``optional``.

    Raises ``InvalidJSON`` (a body nested too deeply to parse included), or what
    :func:`read_body` raises.
    """
    raw = await read_body(request)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidJSON("The request body is empty; a JSON object is required.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON() from None
    if not isinstance(data, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    return data


def split_bearer(authorization: str) -> str | None:
    """The credential of an ``Authorization: Bearer <x>`` value, else ``None``."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def admin_credential(request: web.Request) -> str | None:
    """The admin key from any of the five places SPEC §4 allows."""
    for header in _ADMIN_KEY_HEADERS:
        value = request.headers.get(header)
        if value:
            return value
    bearer = split_bearer(request.headers.get(hdrs.AUTHORIZATION, ""))
    return bearer or request.query.get("api_key") or None


def key_credential(headers: Mapping[str, str]) -> str | None:
    """An Athena key from ``X-API-KEY`` or ``Authorization: Bearer`` (the semantic-model
    API, SPEC §6)."""
    return headers.get(X_API_KEY) or split_bearer(headers.get(hdrs.AUTHORIZATION, ""))


def proxy_credential(headers: Mapping[str, str]) -> Credential:
    """The proxy's two ways in (SPEC §8): an Athena key in ``X-API-KEY`` or ``Bearer ath_…``
    with the model of ``X-Semantic-Model``; else the token of ``Authorization: <jwt>`` or
    ``Bearer <jwt>``."""
    authorization = headers.get(hdrs.AUTHORIZATION, "").strip()
    bearer = split_bearer(authorization)
    key = headers.get(X_API_KEY) or (bearer if bearer and looks_like_key(bearer) else None)
    token = bearer if bearer is not None else authorization
    return Credential(key, token, headers.get(X_SEMANTIC_MODEL, "").strip())


def client_ip(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The client's address: the socket peer, unless the peer is a trusted proxy, in which
    case the right-most address of ``X-Forwarded-For`` that is not a trusted proxy. Several
    ``X-Forwarded-For`` lines are one list, in order (RFC 9110 §5.3)."""
    peer = request.remote or ""
    if not trusted or not _is_trusted(peer, trusted):
        return plain(peer)
    for hop in reversed(_forwarded_hops(request)):
        if not _is_trusted(hop, trusted):
            return plain(hop)
    return plain(peer)


def forwarded_for(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """``X-Forwarded-For`` to send on: the chain as received when the peer is a trusted
    proxy, then the peer; from any other peer just the peer (its own claims dropped)."""
    peer = plain(request.remote or "")
    if trusted and _is_trusted(peer, trusted):
        return ", ".join([*_forwarded_hops(request), peer])
    return peer


def _forwarded_hops(request: web.Request) -> list[str]:
    """The addresses of ``X-Forwarded-For``: every header line, in order, blanks dropped."""
    return [
        hop.strip()
        for line in request.headers.getall("X-Forwarded-For", ())
        for hop in line.split(",")
        if hop.strip()
    ]


@functools.lru_cache(maxsize=65536)
def _is_trusted(addr: str, trusted: tuple[Network, ...]) -> bool:
    ip = parse_ip(addr)
    return ip is not None and any(ip in net for net in trusted)
