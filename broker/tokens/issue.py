"""Where Cube tokens are minted and cached (SPEC §5).

A token is an HS256 JWT with exactly ``model_id``, ``schema_hash``, ``iat``, ``exp`` and
``jti``, its header naming the signing secret's ``kid``. For one (key, model, schema hash,
signing secret) every replica hands out the same token until
less than ``min_remaining`` seconds of its life are left:

* L1: an in-process LRU of tokens, checked for remaining life on every read;
* L2: the store, where ``add_token`` is an atomic set-if-absent kept until
  ``exp - min_remaining``: of replicas that miss at once, one wins and the others adopt
  its token;
* single flight: concurrent misses in one process wait for one store round trip and at
  most one mint.

The store also remembers which key minted each ``jti`` (in the same atomic step), so the
proxy can refuse tokens of revoked keys and tokens the broker never minted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from broker.keys.record import KeyRecord
from broker.models import SemanticModel
from broker.store import MintedToken, Store
from broker.support.memo import Bounded
from broker.support.metrics import Metrics
from broker.support.single_flight import SingleFlight
from broker.tokens.signing import SigningSecrets

ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """What every token is minted with: the signing secret, the lifetime, and the least
    life a cached token must have left to be handed out."""

    secrets: SigningSecrets
    ttl: int
    min_remaining: int


def mint(
    config: TokenConfig, model_id: str, schema_hash: str, public_id: str, now: int
) -> MintedToken:
    """A new signed token for ``model_id`` at ``schema_hash``, issued at ``now``."""
    jti = uuid.uuid4().hex
    exp = now + config.ttl
    claims = {"model_id": model_id, "schema_hash": schema_hash, "iat": now, "exp": exp, "jti": jti}
    secrets = config.secrets
    headers = {"typ": "JWT", "kid": secrets.kid}
    token = jwt.encode(claims, secrets.signing.reveal(), algorithm=ALGORITHM, headers=headers)
    return MintedToken(token=token, jti=jti, expires_at=exp, public_id=public_id)


class TokenService:
    """Hands out the current token of a (key, model) pair, minting only when needed."""

    def __init__(
        self,
        store: Store,
        config: TokenConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        maxsize: int = 100_000,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._l1: Bounded[str, MintedToken] = Bounded(maxsize)
        self._flights: SingleFlight[str, MintedToken] = SingleFlight()

    async def token_for(self, key: KeyRecord, model: SemanticModel) -> MintedToken:
        # The signing secret's kid is part of the key: after a rotation no replica hands
        # out a cached token of the old secret again.
        cache_key = f"{key.id}:{model.asset_id}:{model.schema_hash}:{self._config.secrets.kid}"
        cached = self._l1.get(cache_key)
        if cached is not None and self._fresh(cached):
            self._metrics.token_cache_hits(model.asset_id).inc()
            return cached
        token, shared = await self._flights.do(cache_key, lambda: self._fill(cache_key, key, model))
        if shared:
            self._metrics.token_cache_hits(model.asset_id).inc()
        return token

    async def _fill(self, cache_key: str, key: KeyRecord, model: SemanticModel) -> MintedToken:
        token = await self._from_store_or_mint(cache_key, key, model)
        self._l1[cache_key] = token
        return token

    async def _from_store_or_mint(
        self, cache_key: str, key: KeyRecord, model: SemanticModel
    ) -> MintedToken:
        stored = await self._store.get_token(cache_key)
        if stored is not None and self._fresh(stored):
            self._metrics.token_cache_hits(model.asset_id).inc()
            return stored
        now = int(self._clock())
        fresh = mint(self._config, model.asset_id, model.schema_hash, key.public_id, now)
        keep_until = fresh.expires_at - self._config.min_remaining
        winner = await self._store.add_token(cache_key, fresh, keep_until)
        if winner.jti == fresh.jti:
            self._metrics.tokens_minted(model.asset_id).inc()
        else:
            self._metrics.token_cache_hits(model.asset_id).inc()
        return winner

    def _fresh(self, token: MintedToken) -> bool:
        return token.expires_at - self._clock() > self._config.min_remaining
