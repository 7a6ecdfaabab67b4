"""The SQLite backend: embedded, durable, for a single replica.

All sqlite3 work runs in one dedicated worker thread that owns the only connection, so the
event loop never blocks and writes from this process are serialized. The file is opened
in WAL mode with a busy timeout because other processes (the ``keys`` CLI) may write to it
while the server runs; every read is its own transaction, so their commits are visible
on the next read. ``update_key`` calls ``mutate`` in that thread, inside the write
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from broker.errors import StoreUnavailable
from broker.keys.audit import AuditEvent
from broker.keys.record import KeyRecord
from broker.store.base import (
    CHANGE_FEED_LENGTH,
    Auditor,
    KeyChanges,
    MintedToken,
    RateLimitState,
    Store,
)
from broker.store.common import (
    decode_record,
    decode_token,
    encode_record,
    encode_token,
    gcra,
    limit_state,
    next_version,
)

T = TypeVar("T")

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    sort_key TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_sort_key ON api_keys (sort_key);
CREATE TABLE IF NOT EXISTS key_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS token_cache (
    cache_key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    keep_until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS token_cache_keep_until ON token_cache (keep_until);
CREATE TABLE IF NOT EXISTS token_owners (
    jti TEXT PRIMARY KEY,
    public_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS token_owners_expires_at ON token_owners (expires_at);
CREATE TABLE IF NOT EXISTS rate_limits (bucket TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
    subject TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    sort_key TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_key ON audit_events (key_id, sort_key);
COMMIT;
"""

#: Writes between two housekeeping passes (feed trimming, purge of expired tokens).
_HOUSEKEEPING_EVERY = 256


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file, created (with its folder) on first use."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        feed_length: int = CHANGE_FEED_LENGTH,
        busy_timeout: float = 5.0,
    ) -> None:
        if feed_length < 1:
            raise ValueError("feed_length must be at least 1")
        self._path = Path(path)
        self._feed_length = feed_length
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._closed = False
        # Touched only by the worker thread:
        self._conn: sqlite3.Connection | None = None
        self._writes = 0

    @property
    def path(self) -> Path:
        return self._path

    # -- plumbing ------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("The SQLite store is closed.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the worker thread. A storage failure drops the connection (the
        next call reconnects, so a repaired file works again) and becomes
        ``StoreUnavailable``; the message names the error class only."""
        try:
            return work(self._connection())
        except (sqlite3.Error, OSError) as exc:
            self._disconnect()
            raise StoreUnavailable(
                f"The SQLite store does not answer ({type(exc).__name__})."
            ) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self._path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._busy_timeout
        while True:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
                self._housekeeping(conn)
            except sqlite3.OperationalError as exc:
                conn.close()
                # Switching to WAL while another process opens the same new file fails at
                # once with "locked" (no busy handler there): retry within the timeout.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # in the store's worker thread, never the event loop
                continue
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _wrote(self, conn: sqlite3.Connection) -> None:
        """Count a committed write; now and then do the housekeeping, whose failure (a busy
        file) must not turn the committed write into an error."""
        self._writes += 1
        if self._writes % _HOUSEKEEPING_EVERY == 0:
            with contextlib.suppress(sqlite3.Error):
                self._housekeeping(conn)

    def _housekeeping(self, conn: sqlite3.Connection) -> None:
        """Keep the feed at (at least) its last ``feed_length`` entries and drop expired
        tokens; growth between two passes is bounded by ``_HOUSEKEEPING_EVERY`` writes."""
        with _immediate(conn) as now:
            conn.execute(
                "DELETE FROM key_changes WHERE seq <= (SELECT MAX(seq) FROM key_changes) - ?",
                (self._feed_length,),
            )
            conn.execute("DELETE FROM token_cache WHERE keep_until <= ?", (now,))
            conn.execute("DELETE FROM token_owners WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM rate_limits WHERE tat <= ?", (now,))
            conn.execute("DELETE FROM marks WHERE until <= ?", (now,))
            conn.execute("DELETE FROM failures WHERE until <= ?", (now,))

    # -- Store ---------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._disconnect)
        finally:
            self._executor.shutdown(wait=True)

    async def insert_key(self, record: KeyRecord, audit: AuditEvent | None = None) -> None:
        def work(conn: sqlite3.Connection) -> None:
            try:
                with _immediate(conn):
                    if audit is not None:
                        _insert_event(conn, audit)
                    conn.execute(
                        "INSERT INTO api_keys (id, public_id, sort_key, version, doc)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            record.id,
                            record.public_id,
                            record.sort_key,
                            record.version,
                            encode_record(record),
                        ),
                    )
                    _append_change(conn, record.public_id)
            except sqlite3.IntegrityError:
                raise ValueError("a key with this id or public_id exists") from None
            self._wrote(conn)

        await self._run(work)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._run(lambda conn: _select_doc(conn, "id", key_id))

    async def find_key(self, public_id: str) -> KeyRecord | None:
        return await self._run(lambda conn: _select_doc(conn, "public_id", public_id))

    async def list_keys(self, limit: int, after: str | None = None) -> list[KeyRecord]:
        if limit <= 0:
            return []

        def work(conn: sqlite3.Connection) -> list[KeyRecord]:
            rows = conn.execute(
                "SELECT doc FROM api_keys WHERE sort_key > ? ORDER BY sort_key LIMIT ?",
                (after or "", limit),
            ).fetchall()
            return [decode_record(doc) for (doc,) in rows]

        return await self._run(work)

    async def update_key(
        self,
        key_id: str,
        mutate: Callable[[KeyRecord], KeyRecord],
        *,
        announce: bool = True,
        audit: Auditor | None = None,
    ) -> KeyRecord | None:
        def work(conn: sqlite3.Connection) -> KeyRecord | None:
            with _immediate(conn):
                current = _select_doc(conn, "id", key_id)
                if current is None:
                    return None
                new = next_version(current, mutate)
                event = audit(current, new) if audit is not None else None
                if event is not None:
                    _insert_event(conn, event)
                conn.execute(
                    "UPDATE api_keys SET version = ?, doc = ? WHERE id = ?",
                    (new.version, encode_record(new), key_id),
                )
                if announce:
                    _append_change(conn, new.public_id)
            self._wrote(conn)
            return new

        return await self._run(work)

    async def audit_events(
        self, limit: int, before: str | None = None, key_id: str | None = None
    ) -> list[AuditEvent]:
        if limit <= 0:
            return []
        upper = before if before is not None else "~"  # above every sort key

        def work(conn: sqlite3.Connection) -> list[AuditEvent]:
            if key_id is None:
                rows = conn.execute(
                    "SELECT doc FROM audit_events WHERE sort_key < ?"
                    " ORDER BY sort_key DESC LIMIT ?",
                    (upper, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT doc FROM audit_events WHERE key_id = ? AND sort_key < ?"
                    " ORDER BY sort_key DESC LIMIT ?",
                    (key_id, upper, limit),
                ).fetchall()
            return [AuditEvent.decode(doc) for (doc,) in rows]

        return await self._run(work)

    async def purge_audit(self, older_than: datetime, batch: int = 1000) -> int:
        cutoff = f"{int(older_than.timestamp() * 1_000_000):017d}"

        def work(conn: sqlite3.Connection) -> int:
            with _immediate(conn):
                cursor = conn.execute(
                    "DELETE FROM audit_events WHERE sort_key IN (SELECT sort_key FROM"
                    " audit_events WHERE sort_key < ? ORDER BY sort_key LIMIT ?)",
                    (cutoff, batch),
                )
            return cursor.rowcount

        return await self._run(work)

    async def key_changes(self, since: int | None) -> KeyChanges:
        def work(conn: sqlite3.Connection) -> KeyChanges:
            with _snapshot(conn):
                (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM key_changes").fetchone()
                if since is None or since > head or head - since > self._feed_length:
                    return KeyChanges(seq=head, public_ids=(), reset=True)
                rows = conn.execute(
                    "SELECT public_id FROM key_changes WHERE seq > ? ORDER BY seq", (since,)
                ).fetchall()
            if len(rows) != head - since:
                return KeyChanges(seq=head, public_ids=(), reset=True)
            return KeyChanges(seq=head, public_ids=tuple(pid for (pid,) in rows), reset=False)

        return await self._run(work)

    async def get_token(self, cache_key: str) -> MintedToken | None:
        def work(conn: sqlite3.Connection) -> MintedToken | None:
            row = conn.execute(
                "SELECT token FROM token_cache WHERE cache_key = ? AND keep_until > ?",
                (cache_key, time.time()),
            ).fetchone()
            return None if row is None else decode_token(row[0])

        return await self._run(work)

    async def add_token(self, cache_key: str, token: MintedToken, keep_until: float) -> MintedToken:
        def work(conn: sqlite3.Connection) -> MintedToken:
            with _immediate(conn):
                row = conn.execute(
                    "SELECT token FROM token_cache WHERE cache_key = ? AND keep_until > ?",
                    (cache_key, time.time()),
                ).fetchone()
                if row is not None:
                    return decode_token(row[0])
                conn.execute(
                    "INSERT OR REPLACE INTO token_cache (cache_key, token, keep_until)"
                    " VALUES (?, ?, ?)",
                    (cache_key, encode_token(token), keep_until),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO token_owners (jti, public_id, expires_at)"
                    " VALUES (?, ?, ?)",
                    (token.jti, token.public_id, token.expires_at),
                )
            self._wrote(conn)
            return token

        return await self._run(work)

    async def token_owner(self, jti: str) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT public_id FROM token_owners WHERE jti = ? AND expires_at > ?",
                (jti, time.time()),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(work)

    async def hit_rate_limit(
        self, bucket: str, limit: int, period: float, free_if_marked: str | None = None
    ) -> RateLimitState:
        def work(conn: sqlite3.Connection) -> RateLimitState:
            with _immediate(conn) as now:
                row = conn.execute(
                    "SELECT tat FROM rate_limits WHERE bucket = ?", (bucket,)
                ).fetchone()
                tat = row[0] if row else None
                if (
                    free_if_marked is not None
                    and conn.execute(
                        "SELECT 1 FROM marks WHERE name = ? AND until > ?",
                        (f"{bucket}:{free_if_marked}", now),
                    ).fetchone()
                ):
                    return limit_state(now, tat or now, 0.0, limit, period)
                wait, new_tat = gcra(now, tat, limit, period)
                if wait == 0.0:
                    conn.execute(
                        "INSERT OR REPLACE INTO rate_limits (bucket, tat) VALUES (?, ?)",
                        (bucket, new_tat),
                    )
            if wait == 0.0:
                self._wrote(conn)
            return limit_state(now, new_tat, wait, limit, period)

        return await self._run(work)

    async def peek_rate_limit(self, bucket: str, limit: int, period: float) -> RateLimitState:
        def work(conn: sqlite3.Connection) -> RateLimitState:
            with _immediate(conn) as now:
                row = conn.execute(
                    "SELECT tat FROM rate_limits WHERE bucket = ?", (bucket,)
                ).fetchone()
            return limit_state(now, row[0] if row else now, 0.0, limit, period)

        return await self._run(work)

    async def mark(self, bucket: str, name: str, ttl: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO marks (name, until) VALUES (?, ?)",
                    (f"{bucket}:{name}", time.time() + ttl),
                )
            self._wrote(conn)

        await self._run(work)

    async def count_failure(self, subject: str, window: float) -> tuple[int, float]:
        def work(conn: sqlite3.Connection) -> tuple[int, float]:
            with _immediate(conn) as now:
                row = conn.execute(
                    "SELECT count, until FROM failures WHERE subject = ? AND until > ?",
                    (subject, now),
                ).fetchone()
                count, until = (row[0] + 1, row[1]) if row else (1, now + window)
                conn.execute(
                    "INSERT OR REPLACE INTO failures (subject, count, until) VALUES (?, ?, ?)",
                    (subject, count, until),
                )
            self._wrote(conn)
            return int(count), float(until - now)

        return await self._run(work)


def _insert_event(conn: sqlite3.Connection, event: AuditEvent) -> None:
    conn.execute(
        "INSERT INTO audit_events (sort_key, key_id, doc) VALUES (?, ?, ?)",
        (event.sort_key, event.key_id, event.encode()),
    )


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[float]:
    """A write transaction that takes the write lock up front, so its reads cannot go
    stale before its writes; any exception rolls it back and propagates unchanged.
    Yields the time read once the lock is held: the writers of one file (several
    processes) then see the clock advance in the order they write, so a rate limit
    computed against it never waits longer than its interval."""
    conn.execute("BEGIN IMMEDIATE")
    with _finish(conn):
        yield time.time()


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: its statements see one consistent state of the file."""
    conn.execute("BEGIN")
    with _finish(conn):
        yield


@contextlib.contextmanager
def _finish(conn: sqlite3.Connection) -> Iterator[None]:
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _select_doc(conn: sqlite3.Connection, column: str, value: str) -> KeyRecord | None:
    row = conn.execute(f"SELECT doc FROM api_keys WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else decode_record(row[0])


def _append_change(conn: sqlite3.Connection, public_id: str) -> None:
    conn.execute("INSERT INTO key_changes (public_id) VALUES (?)", (public_id,))
