"""The HS256 secrets tokens are signed and verified with (SPEC §5, rotation).

``CUBEJS_API_SECRET`` signs every new token; it and each secret of ``CUBEJS_API_SECRETS``
verify. Every token names its secret in the ``kid`` header — the first 16 hex digits of
the secret's SHA-256 — so a verifier picks the right one at once, and a cache of tokens
keyed with the ``kid`` never hands out a token of a secret that no longer signs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from broker.support.secret import Secret


def key_id(secret: Secret) -> str:
    """The ``kid`` of tokens signed with ``secret``."""
    return hashlib.sha256(secret.reveal().encode()).hexdigest()[:16]


class SigningSecrets:
    """The signing secret and every secret accepted when verifying, by ``kid``."""

    def __init__(self, signing: Secret, also_accepted: Sequence[Secret] = ()) -> None:
        self.signing = signing
        self.kid = key_id(signing)
        self._by_kid = {key_id(s): s for s in (*also_accepted, signing)}

    def for_kid(self, kid: str) -> Secret | None:
        """The secret that signed a token with this ``kid``, or ``None``."""
        return self._by_kid.get(kid)

    def all(self) -> list[Secret]:
        """Every accepted secret, the signing one first (for tokens without a ``kid``)."""
        return [self.signing, *(s for k, s in self._by_kid.items() if k != self.kid)]
