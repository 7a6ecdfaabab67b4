"""Proxy policy (SPEC §8): which credential buys which Cube token.

Its records (:class:`Credential`, :class:`Call`, :class:`Caller`, :class:`Grant`) are
built on every proxied request and never changed after; they are not frozen only because
frozen dataclasses build four times slower."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from broker.cube.query import META_PATH, is_continue_wait
from broker.errors import (
    AuthFailure,
    BadRequest,
    BrokerError,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
)
from broker.keys.policy import KeyPolicy, poll_identity
from broker.keys.record import KeyRecord
from broker.keys.rights import META_READ, QUERY_EXECUTE
from broker.keys.verify import KeyVerifier
from broker.models import RegistryWatcher
from broker.store import RateLimitState
from broker.tokens.issue import TokenService
from broker.tokens.verify import TokenClaims, TokenVerifier

#: The Cube routes the proxy forwards, with their methods (SPEC §8); every other
#: ``/cubejs-api/`` path is 404.
FORWARDED: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "/cubejs-api/v1/load": ("GET", "POST"),
        META_PATH: ("GET",),
        "/cubejs-api/v1/sql": ("GET", "POST"),
        "/cubejs-api/v1/dry-run": ("GET", "POST"),
    }
)


def required_right(path: str) -> str:
    """The right a key needs for the forwarded route ``path``."""
    return META_READ if path == META_PATH else QUERY_EXECUTE


@dataclass(slots=True)
class Credential:
    """What a caller of the proxy presented: an Athena key (with the model it names), or
    else a token (``""`` when nothing was presented)."""

    key: str | None
    token: str
    model: str


@dataclass(slots=True)
class Call:
    """The request being forwarded, as far as the rate limit's poll grace needs it."""

    request_id: str | None
    method: str
    path_qs: str
    body: bytes | None


@dataclass(slots=True)
class Caller:
    """An authenticated caller: its credential, the key behind it, and for a token its
    claims (the model and schema hash it was minted for; ``None`` in key mode: the model
    is the one the key names)."""

    credential: Credential
    key: KeyRecord
    claims: TokenClaims | None


@dataclass(slots=True)
class Grant:
    """The Cube token to forward, the key behind it, the model and the schema hash that
    token names, the caller's poll identity (``None`` when the key has no rate limit:
    nothing would use it), and the key's rate limit after this request (``None`` without
    one), for SPEC §4's headers."""

    token: str
    key: KeyRecord
    model_id: str
    schema_hash: str
    poll: str | None
    rate_limit: RateLimitState | None = None


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

    async def authenticate(self, credential: Credential) -> Caller:
        """Check the credential alone, before anything of the request is read; raises
        ``Unauthorized`` (or ``BadRequest``: a key without ``X-Semantic-Model``)."""
        if credential.key:
            record = await self._keys.authenticate(credential.key)
            if not credential.model:
                raise BadRequest("An Athena key needs the X-Semantic-Model header here.")
            return Caller(credential, record, None)
        if not credential.token:
            raise Unauthorized(AuthFailure.MISSING)
        claims, record = await self._token_verifier.verify(credential.token)
        return Caller(credential, record, claims)

    async def grant(self, caller: Caller, right: str, client_ip: str, call: Call) -> Grant:
        """What to forward for an authenticated caller: a key needs ``right`` on its model
        (IP rules first) and gets its cached token, a token is forwarded as is; both count
        against the key's rate limit. Raises ``IPNotAllowed``, ``Forbidden``, ``NotFound``
        or ``RateLimited``; an error after the limit was counted carries its state."""
        poll = _poll(caller.key, call)
        claims = caller.claims
        if claims is not None:
            state = await self._policy.limit(caller.key, poll)
            token = caller.credential.token
            return Grant(token, caller.key, claims.model_id, claims.schema_hash, poll, state)
        asset_id = caller.credential.model
        permit = await self._keys.permit(caller.key, right, asset_id, client_ip, poll)
        try:
            model = self._registry.current.require(asset_id)
            minted = await self._tokens.token_for(permit.record, model)
        except BrokerError as exc:
            exc.rate_limit = permit.rate_limit
            raise
        return Grant(
            minted.token, permit.record, model.asset_id, model.schema_hash, poll, permit.rate_limit
        )

    async def decide(self, credential: Credential, path: str, client_ip: str, call: Call) -> Grant:
        """Decision mode: whether the proxy would forward ``call`` (to the decoded
        ``path``), and with which Cube token. Exactly the proxy's checks, in its order:
        the route (``NotFound``, or ``MethodNotAllowed`` naming the methods it takes),
        then :meth:`authenticate` and :meth:`grant`. Nothing of a body is needed: the
        poll identity is the proxy's for a call without one."""
        methods = FORWARDED.get(path)
        if methods is None:
            raise NotFound()
        if call.method not in methods:
            raise MethodNotAllowed(headers={"Allow": ", ".join(methods)})
        caller = await self.authenticate(credential)
        return await self.grant(caller, required_right(path), client_ip, call)

    async def answered(self, grant: Grant, body: bytes) -> None:
        """Cube's whole (short) answer to ``grant``'s call: a "Continue wait" makes the
        caller's next polls of this query free of the rate limit."""
        if grant.poll is not None and is_continue_wait(body):
            await self._policy.mark_poll(grant.key, grant.poll)


def _poll(record: KeyRecord, call: Call) -> str | None:
    """The poll identity of ``call``, computed only for a key with a rate limit."""
    if record.rate_limit_per_minute <= 0:
        return None
    return poll_identity(call.request_id, call.method, call.path_qs, call.body or b"")
