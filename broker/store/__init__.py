"""Storage: the :class:`Store` contract and :func:`open_store`, which picks a backend from
the ``BROKER_STORE`` URL."""

from __future__ import annotations

from pathlib import Path

from broker.store.base import CHANGE_FEED_LENGTH, KeyChanges, MintedToken, Store

__all__ = ["CHANGE_FEED_LENGTH", "KeyChanges", "MintedToken", "Store", "open_store"]

_SQLITE_PREFIX = "sqlite:///"


def open_store(url: str, *, feed_length: int = CHANGE_FEED_LENGTH) -> Store:
    """The store named by ``url``, without any I/O (backends connect on first use).

    ``sqlite:///rel/path.db`` is relative to the current directory (resolved now),
    ``sqlite:////abs/path.db`` absolute (the SQLAlchemy convention); ``redis://`` and
    ``rediss://`` URLs go to Redis. ``feed_length`` is how many change-feed entries the
    store keeps (see :data:`CHANGE_FEED_LENGTH`). Raises ``ValueError`` for another URL.
    """
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        from broker.store.sqlite import SQLiteStore

        return SQLiteStore(Path(url[len(_SQLITE_PREFIX) :]).absolute(), feed_length=feed_length)
    if url.startswith(("redis://", "rediss://")):
        from broker.store.redis import RedisStore

        return RedisStore(url, feed_length=feed_length)
    raise ValueError("a store URL starts with sqlite:///, redis:// or rediss://")
