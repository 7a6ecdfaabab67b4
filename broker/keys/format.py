"""Athena key format (``ath_{public_id}.{secret}``) and how secrets are stored.

The secret is 32 random bytes (256 bits) in URL-safe base64. Only a digest is stored:
HMAC-SHA256 keyed with a random per-key salt. A slow password hash (bcrypt, argon2)
exists to make guessing low-entropy human passwords expensive; these secrets are machine
generated with 256 bits of entropy, so guessing is already infeasible and a slow hash
would only add tens of milliseconds to every authenticated request. The salt keeps equal
secrets (there are none in practice) from sharing a digest and makes a leaked digest table
useless for precomputation. Digests are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

PREFIX = "ath_"
_PUBLIC_ID_ALPHABET = string.ascii_lowercase + string.digits
PUBLIC_ID_LEN = 16
_SECRET_BYTES = 32
_KEY_RE = re.compile(r"ath_([a-z0-9]{16})\.([A-Za-z0-9_-]{32,128})")
_DIGEST_SCHEME = "hmac-sha256"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    public_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedKey(public_id={self.public_id!r}, secret='***')"


def new_public_id() -> str:
    return "".join(secrets.choice(_PUBLIC_ID_ALPHABET) for _ in range(PUBLIC_ID_LEN))


def new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def format_key(public_id: str, secret: str) -> str:
    return f"{PREFIX}{public_id}.{secret}"


def parse_key(candidate: str) -> ParsedKey | None:
    """Split a presented key; ``None`` when it does not have the Athena key shape."""
    match = _KEY_RE.fullmatch(candidate)
    if match is None:
        return None
    return ParsedKey(match.group(1), match.group(2))


def looks_like_key(candidate: str) -> bool:
    return candidate.startswith(PREFIX)


def digest_secret(secret: str) -> str:
    """A fresh salted digest of ``secret``: ``hmac-sha256$<salt>$<digest>``."""
    salt = secrets.token_bytes(16)
    return _encode(salt, _mac(salt, secret))


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a stored digest."""
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
        salt = base64.urlsafe_b64decode(salt_b64)
        expected = base64.urlsafe_b64decode(digest_b64)
    except ValueError:
        return False
    if scheme != _DIGEST_SCHEME:
        return False
    return hmac.compare_digest(_mac(salt, secret), expected)


def _mac(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _encode(salt: bytes, digest: bytes) -> str:
    b64 = base64.urlsafe_b64encode
    return f"{_DIGEST_SCHEME}${b64(salt).decode()}${b64(digest).decode()}"
