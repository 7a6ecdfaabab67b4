"""Where Athena keys are verified: parse, look up, compare, check state and rights."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from broker.errors import AuthFailure, Forbidden, IPNotAllowed, Unauthorized
from broker.keys.cache import KeyCache
from broker.keys.format import PREFIX, PUBLIC_ID_LEN, parse_key, verify_secret
from broker.keys.policy import KeyPolicy
from broker.keys.record import KeyRecord
from broker.keys.rights import grants
from broker.store import RateLimitState
from broker.support.memo import Bounded
from broker.support.timeutil import utcnow

#: Where a well-formed key (``ath_{public_id}.{secret}``) holds its public ID.
_PUBLIC_ID_AT = slice(len(PREFIX), len(PREFIX) + PUBLIC_ID_LEN)


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
        record = self._recognized(presented)
        if record is None:
            record = await self._verify(presented)
        refusal = record.refusal()
        if refusal is not None:
            raise Unauthorized(refusal)
        return record

    def vouches(self, presented: str) -> bool:
        """Whether ``presented`` is a key this replica already knows to be good, from memory
        alone (:meth:`_recognized`), and still usable. For the brute-force guard, which
        must not ask the store."""
        record = self._recognized(presented)
        return record is not None and record.refusal() is None

    def _recognized(self, presented: str) -> KeyRecord | None:
        """The live cached record of ``presented`` when this very key passed the stored
        digest check here before, from memory and without parsing it: one SHA-256 of the
        whole key and a constant-time comparison instead of a regular expression, decoding
        and an HMAC (this is every authenticated request's first step).

        What is remembered per public ID is the digest the key passed and the key's
        SHA-256: a matching hash means ``presented`` is that key, shape included; a
        rotation changes the digest and forgets it. ``None`` sends the caller to
        :meth:`_verify`, which also judges every malformed or wrong key.
        """
        public_id = presented[_PUBLIC_ID_AT]
        memo = self._verified.get(public_id)
        record = self._cache.peek(public_id) if memo is not None else None
        if memo is None or record is None or memo[0] != record.secret_digest:
            return None
        fingerprint = hashlib.sha256(presented.encode()).digest()
        return record if hmac.compare_digest(memo[1], fingerprint) else None

    async def _verify(self, presented: str) -> KeyRecord:
        """Parse ``presented``, look its key up and check its secret against the current
        digest, or the previous one within its rotation grace; raises ``Unauthorized``."""
        parsed = parse_key(presented)
        if parsed is None:
            raise Unauthorized(AuthFailure.MALFORMED)
        record = await self._cache.get(parsed.public_id)
        if record is None:
            raise Unauthorized(AuthFailure.UNKNOWN)
        if verify_secret(parsed.secret, record.secret_digest):
            fingerprint = hashlib.sha256(presented.encode()).digest()
            self._verified[parsed.public_id] = (record.secret_digest, fingerprint)
            return record
        if (
            record.previous_secret_digest is not None
            and record.previous_secret_expires_at is not None
            and record.previous_secret_expires_at > utcnow()
            and verify_secret(parsed.secret, record.previous_secret_digest)
        ):
            return record
        raise Unauthorized(AuthFailure.WRONG_SECRET)

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
        the right (``Forbidden``), then the key's rate limit (``RateLimited``). A key in
        neither virgin mode nor a rate limit is decided from memory, without a coroutine."""
        policy = self._policy
        if policy is None:
            self.require(record, right, asset_id)
            return Permit(record)
        try:
            if record.virgin_mode:
                record = await policy.record_virgin_use(record, client_ip)
            else:
                policy.record_use(record, client_ip)
            self.require(record, right, asset_id)
        except (IPNotAllowed, Forbidden) as exc:  # refused before the count: its headers
            exc.rate_limit = await policy.peek(record)
            raise
        if record.rate_limit_per_minute <= 0:
            return Permit(record)
        return Permit(record, await policy.limit(record, poll))

    @staticmethod
    def require(record: KeyRecord, right: str, asset_id: str | None) -> None:
        """Raise ``Forbidden`` unless ``record`` holds ``right`` on ``asset_id``."""
        if not grants(record.rights, right, asset_id):
            raise Forbidden(f"This key lacks the right {right!r} for this model.")
