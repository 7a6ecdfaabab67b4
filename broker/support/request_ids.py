"""New request IDs, without a system call per request."""

from __future__ import annotations

import random
import secrets


class RequestIds:
    """Random 128-bit request IDs in hex, from a generator seeded once from the OS.

    A request ID names a request in logs; it guards nothing, so it needs to be unique,
    not unpredictable: ``secrets.token_hex`` would read the OS's random source on every
    request, the proxy's hot path."""

    def __init__(self) -> None:
        self._bits = random.Random(secrets.randbits(128)).getrandbits

    def new(self) -> str:
        return self._bits(128).to_bytes(16).hex()
