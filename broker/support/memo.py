"""In-process memos for the request path: a ``dict`` bounded in size, and one whose
entries also expire.

``cachetools``' caches do their bookkeeping in Python on every lookup (an LRU reorders, a
TTL cache reads its timer and expires entries); these look up with ``dict``'s own C code
and pay only on insertion, where a full memo drops its oldest entry (first in, first
out: a hot entry dropped is looked up again once, from the store or by a hash)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")
_ABSENT = object()


class Bounded(dict[K, V]):
    """A ``dict`` of at most ``maxsize`` entries; adding to a full one drops the oldest."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.maxsize and key not in self:
            del self[next(iter(self))]
        super().__setitem__(key, value)


class Expiring(Generic[K, V]):
    """At most ``maxsize`` entries, each forgotten ``ttl`` seconds after it was set
    (``clock``: ``time.monotonic``)."""

    def __init__(
        self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: Bounded[K, tuple[float, V]] = Bounded(maxsize)
        self._ttl = ttl
        self._clock = clock

    def get(self, key: K, default: D) -> V | D:
        entry = self._entries.get(key)
        if entry is None:
            return default
        if entry[0] <= self._clock():
            del self._entries[key]
            return default
        return entry[1]

    def __setitem__(self, key: K, value: V) -> None:
        self._entries.pop(key, None)  # re-set: its place is at the newest end again
        self._entries[key] = (self._clock() + self._ttl, value)

    def __contains__(self, key: K) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
