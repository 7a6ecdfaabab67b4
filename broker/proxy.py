"""Proxy policy (SPEC §8): which credential buys which Cube token, and which headers
cross the broker in each direction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from broker.errors import BadRequest, NotFound, Unauthorized
from broker.key_auth import KeyVerifier
from broker.key_policy import KeyPolicy
from broker.models import RegistryWatcher
from broker.records import KeyRecord
from broker.requests import split_bearer
from broker.token_auth import TokenVerifier
from broker.tokens import TokenService

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers that never reach Cube: credentials of the broker's own (and the
#: browser's cookies for the broker's site, which Cube has no use for), what the broker
#: sets itself, and ``Content-Encoding`` (aiohttp hands the broker the body decoded).
_NOT_FORWARDED = HOP_BY_HOP | {
    "cookie",
    "host",
    "content-length",
    "content-encoding",
    "authorization",
    "x-api-key",
    "x-athena-key",
    "apikey",
    "x-semantic-model",
    "x-request-id",
    "origin",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
}


class CubeAccess:
    """Turns the caller's credential into the Cube token to forward.

    Token mode (dashboards): ``Authorization: <jwt>`` or ``Bearer <jwt>``, verified by
    :class:`TokenVerifier` and forwarded as is. Key mode (back ends): an Athena key in
    ``X-API-KEY`` or ``Authorization: Bearer ath_…`` plus ``X-Semantic-Model``; the key
    needs ``right`` on that model and the broker attaches its cached token.
    """

    def __init__(
        self,
        keys: KeyVerifier,
        tokens: TokenService,
        token_verifier: TokenVerifier,
        registry: RegistryWatcher,
        policy: KeyPolicy,
    ) -> None:
        self._policy = policy
        self._keys = keys
        self._tokens = tokens
        self._token_verifier = token_verifier
        self._registry = registry

    async def resolve(
        self, headers: Mapping[str, str], right: str, client_ip: str, poll: str | None
    ) -> Grant:
        """What to forward for this caller (``poll``: see :func:`poll_identity`); raises
        ``Unauthorized``, ``BadRequest``, ``IPNotAllowed``, ``Forbidden``, ``NotFound`` or
        ``RateLimited``."""
        authorization = headers.get("Authorization", "").strip()
        bearer = split_bearer(authorization)
        athena_key = headers.get("X-API-Key") or (
            bearer if bearer and bearer.startswith("ath_") else None
        )
        if athena_key:
            record = await self._keys.authenticate(athena_key)
            asset_id = headers.get("X-Semantic-Model", "").strip()
            if not asset_id:
                raise BadRequest("An Athena key needs the X-Semantic-Model header here.")
            record = await self._keys.admit(record, right, asset_id, client_ip, poll)
            model = self._registry.current.get(asset_id)
            if model is None:
                raise NotFound("No semantic model with this asset ID.")
            minted = await self._tokens.token_for(record, model)
            return Grant(minted.token, record, model.asset_id, poll)
        token = bearer if bearer is not None else authorization
        if not token:
            raise Unauthorized("missing")
        claims, record = await self._token_verifier.verify(token)
        await self._policy.limit(record, poll)
        return Grant(token, record, claims.model_id, poll)


@dataclass(frozen=True, slots=True)
class Grant:
    """The Cube token to forward, the key behind it, the model, the caller's poll identity."""

    token: str
    key: KeyRecord
    model_id: str
    poll: str | None


def upstream_headers(
    incoming: CIMultiDictProxy[str], token: str, request_id: str, forwarded_for: str
) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop ones, the broker's credentials and forwarding
    headers, plus the Cube token, the request ID and ``X-Forwarded-For`` (see
    :func:`broker.requests.forwarded_for`)."""
    dropped = _NOT_FORWARDED | _connection_tokens(incoming)
    out = CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in dropped)
    out["Authorization"] = token
    out["X-Request-Id"] = request_id
    out["X-Forwarded-For"] = forwarded_for
    return out


def downstream_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Cube's response headers minus hop-by-hop ones and Cube's own CORS headers (the
    broker answers CORS itself, per ``BROKER_CORS_ORIGINS``; Cube's default is ``*``)."""
    dropped = HOP_BY_HOP | _connection_tokens(upstream)
    return CIMultiDict(
        (k, v)
        for k, v in upstream.items()
        if k.lower() not in dropped and not k.lower().startswith("access-control-")
    )


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names listed in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    return frozenset(
        t.strip().lower() for t in headers.get("Connection", "").split(",") if t.strip()
    )
