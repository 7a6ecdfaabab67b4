"""Proxy policy (SPEC §8): which credential buys which Cube token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.errors import BadRequest, NotFound, Unauthorized
from broker.http.requests import split_bearer
from broker.keys.policy import KeyPolicy
from broker.keys.record import KeyRecord
from broker.keys.verify import KeyVerifier
from broker.models import RegistryWatcher
from broker.tokens.issue import TokenService
from broker.tokens.verify import TokenVerifier


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
