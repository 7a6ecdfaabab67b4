"""Where Athena keys are verified: parse, look up, compare, check state and rights."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from broker.errors import AuthFailure, Forbidden, IPNotAllowed, Unauthorized
from broker.keys.cache import KeyCache
from broker.keys.format import parse_key, verify_secret
from broker.keys.policy import KeyPolicy
from broker.keys.record import KeyRecord
from broker.keys.rights import grants
from broker.store import RateLimitState
from broker.support.memo import Bounded
from broker.support.timeutil import utcnow


@dataclass(slots=True)  # not frozen: built per request; frozen dataclasses build 4x slower
class Permit:
    """A key admitted for one request: its record (as the policies left it) and its rate
    limit's state (``None`` for a key without a limit), for SPEC §4's headers."""

    record: KeyRecord
    rate_limit: RateLimitState | None = None


class KeyVerifier:
    """Checks a presented Athena key for one right on one model.

    Refusals carry a ``reason`` for metrics and logs (``missing``, ``malformed``,
    ``unknown``, ``wrong_secret``, ``revoked``, ``inactive``, ``expired``); the caller
    only ever sees a plain 401, or 403 when the key is good but lacks the right.
    """

    def __init__(self, cache: KeyCache, policy: KeyPolicy | None = None) -> None:
        self._cache = cache
        self._policy = policy
        self._verified: Bounded[str, tuple[str, bytes]] = Bounded(100_000)

    async def authenticate(self, presented: str | None) -> KeyRecord:
        """The record of a valid, active, unexpired key; raises ``Unauthorized``."""
        if not presented:
            raise Unauthorized(AuthFailure.MISSING)
        parsed = parse_key(presented)
        if parsed is None:
            raise Unauthorized(AuthFailure.MALFORMED)
        record = await self._cache.get(parsed.public_id)
        if record is None:
            raise Unauthorized(AuthFailure.UNKNOWN)
        if not self._secret_matches(record, parsed.secret) and not (
            record.previous_secret_digest is not None
            and record.previous_secret_expires_at is not None
            and record.previous_secret_expires_at > utcnow()
            and verify_secret(parsed.secret, record.previous_secret_digest)
        ):
            raise Unauthorized(AuthFailure.WRONG_SECRET)
        refusal = record.refusal()
        if refusal is not None:
            raise Unauthorized(refusal)
        return record

    def vouches(self, presented: str) -> bool:
        """Whether ``presented`` is a key this replica already knows to be good, from memory
        alone: it authenticated here before with this very secret, and the live cache says
        the key is still usable. For the brute-force guard, which must not ask the store."""
        parsed = parse_key(presented)
        record = self._cache.peek(parsed.public_id) if parsed is not None else None
        if parsed is None or record is None or record.refusal() is not None:
            return False
        memo = self._verified.get(record.id)
        fingerprint = hashlib.sha256(parsed.secret.encode()).digest()
        return (
            memo is not None
            and memo[0] == record.secret_digest
            and hmac.compare_digest(memo[1], fingerprint)
        )

    def _secret_matches(self, record: KeyRecord, secret: str) -> bool:
        """The stored digest check, remembered per key as a SHA-256 of the last secret that
        passed it (tied to the digest, so a rotation forgets it): a repeat presentation
        costs one hash and a constant-time comparison instead of decoding and an HMAC."""
        fingerprint = hashlib.sha256(secret.encode()).digest()
        memo = self._verified.get(record.id)
        if (
            memo is not None
            and memo[0] == record.secret_digest
            and hmac.compare_digest(memo[1], fingerprint)
        ):
            return True
        if not verify_secret(secret, record.secret_digest):
            return False
        self._verified[record.id] = (record.secret_digest, fingerprint)
        return True

    async def authorize(
        self,
        presented: str | None,
        right: str,
        asset_id: str | None,
        client_ip: str = "",
        poll: str | None = None,
    ) -> Permit:
        """:meth:`authenticate`, then :meth:`permit`."""
        record = await self.authenticate(presented)
        return await self.permit(record, right, asset_id, client_ip, poll)

    async def permit(
        self,
        record: KeyRecord,
        right: str,
        asset_id: str | None,
        client_ip: str,
        poll: str | None = None,
    ) -> Permit:
        """The policies after :meth:`authenticate`: IP rules and usage counting (``IPNotAllowed``),
        the right (``Forbidden``), then the key's rate limit (``RateLimited``)."""
        if self._policy is None:
            self.require(record, right, asset_id)
            return Permit(record)
        try:
            record = await self._policy.record_use(record, client_ip)
            self.require(record, right, asset_id)
        except (IPNotAllowed, Forbidden) as exc:  # refused before the count: its headers
            exc.rate_limit = await self._policy.peek(record)
            raise
        if record.rate_limit_per_minute <= 0:
            return Permit(record)  # no limit to count: not even a coroutine for it
        return Permit(record, await self._policy.limit(record, poll))

    @staticmethod
    def require(record: KeyRecord, right: str, asset_id: str | None) -> None:
        """Raise ``Forbidden`` unless ``record`` holds ``right`` on ``asset_id``."""
        if not grants(record.rights, right, asset_id):
            raise Forbidden(f"This key lacks the right {right!r} for this model.")
