"""A wrapper that keeps secrets out of reprs, logs and tracebacks."""

from __future__ import annotations

import hmac
from typing import Final


class Secret:
    """A secret string; ``repr``/``str`` are masked, ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value: Final = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison against ``candidate`` (which may hold the surrogates
        aiohttp decodes header bytes that are not UTF-8 to: never a match, never an error)."""
        return hmac.compare_digest(
            self._value.encode(), candidate.encode("utf-8", "surrogateescape")
        )

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))
