"""Where Cube tokens presented to the proxy are verified (SPEC §5, §8).

The signature must be HS256 by one of the accepted secrets (:mod:`broker.tokens.signing`,
picked by the token's ``kid``). A valid signature is not enough: the token's ``jti`` must
be one the broker minted, and the key that minted it must still be good (not revoked,
inactive or expired). Per replica this costs at most one store lookup per token: verified
claims and ``jti`` owners are cached in process (an owner never changes; an unknown
``jti`` stays unknown, because the store records a ``jti`` before its token is ever
handed out). The key's state comes from the change-feed-invalidated :class:`KeyCache`,
so a revoke reaches the proxy within the feed's poll interval without a store round trip
per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from broker.errors import AuthFailure, Unauthorized
from broker.keys.cache import KeyCache
from broker.keys.record import KeyRecord
from broker.store import Store
from broker.support.memo import Bounded, Expiring
from broker.tokens.issue import ALGORITHM
from broker.tokens.signing import SigningSecrets

_REQUIRED = ("model_id", "schema_hash", "iat", "exp", "jti")
#: A token refused for its key's state says so in its own reason.
_TOKEN_REFUSALS = {
    AuthFailure.REVOKED: AuthFailure.REVOKED_TOKEN,
    AuthFailure.INACTIVE: AuthFailure.INACTIVE_TOKEN,
    AuthFailure.EXPIRED: AuthFailure.INACTIVE_TOKEN,
}


@dataclass(slots=True)  # not frozen: built per request; frozen dataclasses build 4x slower
class TokenClaims:
    model_id: str
    schema_hash: str
    exp: int
    jti: str


class TokenVerifier:
    def __init__(self, secrets: SigningSecrets, store: Store, keys: KeyCache) -> None:
        self._secrets = secrets
        self._store = store
        self._keys = keys
        self._claims: Bounded[str, TokenClaims] = Bounded(100_000)
        self._owners: Bounded[str, str] = Bounded(100_000)
        self._unknown: Expiring[str, bool] = Expiring(100_000, 300)

    async def verify(self, token: str) -> tuple[TokenClaims, KeyRecord]:
        """The claims and the minting key's record of a token the broker minted and whose
        key is still good; raises ``Unauthorized``."""
        claims = self._decode(token)
        owner = await self._owner(claims.jti)
        record = await self._keys.get(owner)
        if record is None:
            raise Unauthorized(AuthFailure.REVOKED_TOKEN)
        refusal = record.refusal()
        if refusal is not None:
            raise Unauthorized(_TOKEN_REFUSALS[refusal])
        return claims, record

    def vouches(self, token: str) -> bool:
        """Whether ``token`` is one this replica already verified, unexpired, whose key the
        live cache says is still usable: from memory alone, for the brute-force guard."""
        claims = self._claims.get(token)
        if claims is None or claims.exp <= time.time():
            return False
        owner = self._owners.get(claims.jti)
        record = self._keys.peek(owner) if owner is not None else None
        return record is not None and record.refusal() is None

    def _decode(self, token: str) -> TokenClaims:
        claims = self._claims.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            self._claims[token] = claims
        elif claims.exp <= time.time():
            raise Unauthorized(AuthFailure.EXPIRED_TOKEN)
        return claims

    def _verify_signature(self, token: str) -> TokenClaims:
        """The claims of a token signed (HS256) with one of the accepted secrets: the one
        its ``kid`` names, or for a token without one (minted before tokens carried it)
        each accepted secret in turn."""
        if not token.isascii():  # a JWT is ASCII; PyJWT would fail to encode the rest
            raise Unauthorized(AuthFailure.INVALID_TOKEN)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise Unauthorized(AuthFailure.INVALID_TOKEN) from None
        if kid is None:
            candidates = self._secrets.all()
        else:
            secret = self._secrets.for_kid(kid) if isinstance(kid, str) else None
            if secret is None:  # a secret dropped, or never ours
                raise Unauthorized(AuthFailure.INVALID_TOKEN)
            candidates = [secret]
        for secret in candidates:
            try:
                raw = jwt.decode(
                    token,
                    secret.reveal(),
                    algorithms=[ALGORITHM],
                    # iat must be there but not be checked against this replica's clock:
                    # one running a little behind the minting replica's would refuse
                    # a token minted a moment ago ("not yet valid").
                    options={"require": list(_REQUIRED), "verify_iat": False},
                )
            except jwt.ExpiredSignatureError:
                raise Unauthorized(AuthFailure.EXPIRED_TOKEN) from None
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError:
                raise Unauthorized(AuthFailure.INVALID_TOKEN) from None
            if not all(isinstance(raw[c], str) for c in ("model_id", "schema_hash", "jti")):
                raise Unauthorized(AuthFailure.INVALID_TOKEN)
            return TokenClaims(raw["model_id"], raw["schema_hash"], int(raw["exp"]), raw["jti"])
        raise Unauthorized(AuthFailure.INVALID_TOKEN)

    async def _owner(self, jti: str) -> str:
        owner = self._owners.get(jti)
        if owner is not None:
            return owner
        if jti in self._unknown:
            raise Unauthorized(AuthFailure.UNKNOWN_TOKEN)
        owner = await self._store.token_owner(jti)
        if owner is None:
            self._unknown[jti] = True
            raise Unauthorized(AuthFailure.UNKNOWN_TOKEN)
        self._owners[jti] = owner
        return owner
