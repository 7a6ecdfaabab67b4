"""Storage: the :class:`Store` contract and :func:`open_store`, which picks a backend from
the ``BROKER_STORE`` URL."""

from __future__ import annotations

from pathlib import Path

from broker.store.base import CHANGE_FEED_LENGTH, KeyChanges, MintedToken, RateLimitState, Store
from broker.store.redis_connect import SCHEMES as REDIS_SCHEMES
from broker.store.redis_connect import RedisOptions

__all__ = [
    "CHANGE_FEED_LENGTH",
    "KeyChanges",
    "MintedToken",
    "RateLimitState",
    "Store",
    "open_store",
]

_SQLITE_PREFIX = "sqlite:///"


def open_store(
    url: str,
    *,
    redis_options: RedisOptions | None = None,
    feed_length: int = CHANGE_FEED_LENGTH,
) -> Store:
    """The store named by ``url``, without any I/O (backends connect on first use).

    ``sqlite:///rel/path.db`` is relative to the current directory (resolved now),
    ``sqlite:////abs/path.db`` absolute (the SQLAlchemy convention); the Redis forms of
    :mod:`broker.store.redis_connect` go to Redis, with ``redis_options`` (password file,
    TLS files). ``feed_length`` is how many change-feed entries the store keeps (see
    :data:`CHANGE_FEED_LENGTH`). Raises ``ValueError`` for another URL.
    """
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        from broker.store.sqlite import SQLiteStore

        return SQLiteStore(Path(url[len(_SQLITE_PREFIX) :]).absolute(), feed_length=feed_length)
    if url.partition("://")[0] in REDIS_SCHEMES:
        from broker.store.redis import RedisStore

        return RedisStore(url, options=redis_options, feed_length=feed_length)
    raise ValueError("a store URL starts with sqlite:/// or a Redis scheme (redis://, …)")
