"""Cube's ``/meta`` answers kept in memory (SPEC §8), so a dashboard's frequent metadata
calls cost the broker's checks but no call to Cube.

What is kept: Cube's whole 200 answer to ``GET /cubejs-api/v1/meta`` (body and
``Content-Type``, nothing else of Cube's headers, so no ``Set-Cookie`` or the like of one
caller ever reaches another), per (model, schema hash, raw query string). Anything else
is never kept: another status, Cube's "Continue wait", an encoded body, one larger than
:attr:`MetaCache.max_answer` or cut off.

Which schema hash: the registry's current one, the hash of the files the broker serves
Cube for that model now. ``cube.js`` compiles a model under the app ID of the token's
``schema_hash`` claim, from the files it fetches from the broker when it first compiles
it; so Cube's ``/meta`` is a function of the broker's current files exactly for a token
that names the current hash. The cache is therefore used (looked up and filled) only
for such calls: always in key mode (the broker mints the forwarded token for the
model's current hash), and in token mode for a token minted since the model last
changed. A token older than the last change goes to Cube every time, so the broker
never answers from memory for files it no longer serves, and never files an answer
compiled from old files under the new hash. A changed model is thus a new entry at
once; the old hash's entries are never looked up again and age out of the LRU.

The bound is in bytes (:data:`MAX_BYTES` in all, each entry counted as its body, its
query string and a fixed overhead), so many small entries and a few large ones are
bounded alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cachetools import LRUCache

from broker.cube.access import Grant
from broker.cube.query import is_continue_wait
from broker.models import RegistryWatcher
from broker.support.metrics import Metrics

#: The memory all kept answers may take together.
MAX_BYTES = 64 * 1024 * 1024
#: The largest answer kept (a larger one streams through as before).
MAX_ANSWER = 4 * 1024 * 1024
#: What an entry costs beyond its body and query string (key, object headers).
_OVERHEAD = 512

MetaKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class KeptMeta:
    """A kept answer: its body and ``Content-Type``, as Cube sent them (status 200)."""

    body: bytes
    content_type: str
    size: int


class MetaCache:
    """The kept ``/meta`` answers of this replica (see the module's docstring)."""

    def __init__(
        self,
        registry: RegistryWatcher,
        metrics: Metrics,
        *,
        max_bytes: int = MAX_BYTES,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self.max_answer = max_answer
        self._kept: LRUCache[MetaKey, KeptMeta] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda kept: kept.size
        )

    def key_for(self, grant: Grant, query_string: str) -> MetaKey | None:
        """Where the answer to ``grant``'s ``/meta`` call with ``query_string`` (raw, as
        sent) is kept; ``None`` when the token to forward names a schema hash other than
        the model's current one (or the model is gone): then Cube answers, and its answer
        is not kept."""
        model = self._registry.current.get(grant.model_id)
        if model is None or model.schema_hash != grant.schema_hash:
            return None
        return (grant.model_id, grant.schema_hash, query_string)

    def get(self, key: MetaKey | None) -> KeptMeta | None:
        """The answer kept at ``key`` (``None``: no key, or nothing kept yet), counted as
        a hit or a miss of ``broker_meta_cache_total``."""
        kept = self._kept.get(key) if key is not None else None
        self._metrics.meta_cache.labels("hit" if kept is not None else "miss").inc()
        return kept

    def keep(
        self,
        key: MetaKey | None,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        whole: bool,
    ) -> bool:
        """Keep Cube's answer at ``key`` if it may be: a 200 with a ``Content-Type`` and a
        plain body (no ``Content-Encoding``), ``whole`` (read to its end), at most
        :attr:`max_answer` bytes, that is not "Continue wait". True when kept."""
        content_type = headers.get("Content-Type")
        if (
            key is None
            or not whole
            or status != 200
            or not content_type
            or len(body) > self.max_answer
            or "Content-Encoding" in headers
            or is_continue_wait(body)
        ):
            return False
        size = len(body) + len(key[2]) + _OVERHEAD
        if size > self._kept.maxsize:
            return False
        self._kept[key] = KeptMeta(body, content_type, size)
        return True

    def __len__(self) -> int:
        return len(self._kept)
