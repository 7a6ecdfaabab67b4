"""The Redis backend: one store shared by many replicas.

Keys (all under ``broker:``):

* ``key:{id}`` — hash: ``doc`` (the record's JSON), ``version``, ``writer`` (a nonce of
  the last write, so a write retried after a lost reply recognizes itself);
* ``pub:{public_id}`` — the record's id;
* ``keys`` — sorted set of every record's ``sort_key`` (all scores 0: ordered
  lexicographically, listed with ``ZRANGEBYLEX``);
* ``feed:seq`` — the change counter; ``feed`` — sorted set, score ``seq``, member
  ``"{seq}:{public_id}"``, trimmed to the last ``feed_length`` entries;
* ``tok:{cache_key}`` — a cached token's JSON, expiring at ``keep_until``;
* ``jti:{jti}`` — the minting key's ``public_id``, expiring with the token;
* ``rl:{bucket}`` — a rate limiter's theoretical arrival time (GCRA); ``mark:{name}`` —
  a mark that lets a request through the limiter uncounted; ``fail:{subject}`` — failed
  authentications in the current window.

Every write is one Lua script, so it and its change-feed entry are atomic. ``update_key``
is optimistic: read, ``mutate`` in Python, then a compare-and-set script that writes only
if the version is still the one read, retried a bounded number of times.

The client connects lazily, with short timeouts and a single immediate retry (which
replaces a pooled connection killed by a Redis restart), and every exchange is bounded as
a whole (``call_timeout``), so a down or stalled Redis answers ``StoreUnavailable`` in
well under a second and a restarted one serves again without restarting the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.errors import StoreUnavailable
from broker.keys.record import KeyRecord
from broker.store.base import CHANGE_FEED_LENGTH, KeyChanges, MintedToken, Store
from broker.store.common import (
    decode_record,
    decode_token,
    encode_record,
    encode_token,
    next_version,
)

#: Optimistic ``update_key`` attempts before giving up: each lost attempt means another
#: writer won, so this bounds the writers one update can wait for.
_UPDATE_ATTEMPTS = 100

# Write scripts share KEYS[1] = feed counter, KEYS[2] = feed, ARGV[1] = the public_id
# the write concerns, ARGV[2] = the feed length, and their last ARGV = where a counter
# that does not exist starts (see _feed_base).
_APPEND_CHANGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[#ARGV]) end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
"""

# KEYS[3] = key:{id}, KEYS[4] = pub:{public_id}, KEYS[5] = keys.
# ARGV[3] = doc, ARGV[4] = version, ARGV[5] = id, ARGV[6] = sort_key, ARGV[7] = nonce.
# Returns 1 when inserted (or when this very insert already was), 0 on a duplicate.
_INSERT = (
    """
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('HGET', KEYS[3], 'writer') == ARGV[7] then return 1 end
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'doc', ARGV[3], 'version', ARGV[4], 'writer', ARGV[7])
redis.call('SET', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[5], 0, ARGV[6])
"""
    + _APPEND_CHANGE
    + "return 1\n"
)

# KEYS[3] = key:{id}. ARGV[3] = version read, ARGV[4] = new doc, ARGV[5] = new version,
# ARGV[6] = nonce, ARGV[7] = '1' to append to the change feed. Returns 1 when written (or
# when this very write already was), 0 when another write came first, -1 when the record
# does not exist.
_COMPARE_AND_SET = (
    """
local current = redis.call('HGET', KEYS[3], 'version')
if not current then return -1 end
if current ~= ARGV[3] then
  if current == ARGV[5] and redis.call('HGET', KEYS[3], 'writer') == ARGV[6] then return 1 end
  return 0
end
redis.call('HSET', KEYS[3], 'doc', ARGV[4], 'version', ARGV[5], 'writer', ARGV[6])
if ARGV[7] ~= '1' then return 1 end
"""
    + _APPEND_CHANGE
    + "return 1\n"
)

# KEYS[1] = feed counter, KEYS[2] = feed. ARGV[1] = since ('' for none), ARGV[2] = the
# feed length, ARGV[3] = where a counter that does not exist starts (see _feed_base).
# Returns {head, 1} for a reset, else {head, 0, members}.
_CHANGES = """
local head = redis.call('GET', KEYS[1])
if not head then
  redis.call('SET', KEYS[1], ARGV[3])
  return {tonumber(ARGV[3]), 1}
end
head = tonumber(head)
if ARGV[1] == '' then return {head, 1} end
local since = tonumber(ARGV[1])
if since > head or head - since > tonumber(ARGV[2]) then return {head, 1} end
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
if #members ~= head - since then return {head, 1} end
return {head, 0, members}
"""

# KEYS[1] = tok:{cache_key}, KEYS[2] = jti:{jti}. ARGV[1] = token JSON, ARGV[2] = its
# time to live (ms), ARGV[3] = public_id, ARGV[4] = the jti's time to live (ms).
# Returns the cached token JSON (ARGV[1] when this call won).
_SET_IF_ABSENT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
"""

# KEYS[1] = rl:{bucket}, KEYS[2] = mark:{name} (or rl:{bucket} when there is none).
# ARGV[1] = limit, ARGV[2] = period (s), ARGV[3] = '1' when KEYS[2] is a mark.
# Returns the seconds to wait as a string ('0' when allowed). Same arithmetic as
# broker.store.common.gcra, on the Redis server's clock so replicas agree.
_GCRA = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return '0' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[2])
local interval = period / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat + interval - period
if allow_at > now then return tostring(allow_at - now) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
return '0'
"""

# KEYS[1] = fail:{subject}. ARGV[1] = window (ms). Returns {count, ms left}.
_COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {n, left}
"""


def _feed_base() -> int:
    """A random start for a feed counter that does not exist (a new, flushed or failed-over
    Redis): a reader's position from before the loss is then far from the new counter and
    gets a reset, instead of the new entries passing for the ones it has not seen. Below
    10**12, so Lua 5.1 still prints every position as an integer."""
    return secrets.randbelow(10**12)


class RedisStore(Store):
    """A :class:`Store` in Redis (``redis://`` or ``rediss://`` URL)."""

    def __init__(
        self,
        url: str,
        *,
        feed_length: int = CHANGE_FEED_LENGTH,
        prefix: str = "broker:",
        connect_timeout: float = 1.0,
        read_timeout: float = 1.0,
        call_timeout: float = 0.6,
    ) -> None:
        if feed_length < 1:
            raise ValueError("feed_length must be at least 1")
        self._feed_length = feed_length
        self._prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=read_timeout,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 1),
        )
        self._insert = self._redis.register_script(_INSERT)
        self._compare_and_set = self._redis.register_script(_COMPARE_AND_SET)
        self._changes = self._redis.register_script(_CHANGES)
        self._set_if_absent = self._redis.register_script(_SET_IF_ABSENT)
        self._gcra = self._redis.register_script(_GCRA)
        self._count_failure = self._redis.register_script(_COUNT_FAILURE)
        self._feed_keys = [self._key("feed:seq"), self._key("feed")]
        self._call_timeout = call_timeout
        self._closed = False

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """One exchange with Redis, answered within ``call_timeout`` seconds or
        ``StoreUnavailable``: a stalled Redis (paused, swapping, ``DEBUG SLEEP``) must not
        hold a caller longer than the few calls a request makes add up to (SPEC §9: 2 s)."""
        try:
            async with asyncio.timeout(self._call_timeout):
                with _unavailable():
                    yield
        except TimeoutError:
            raise StoreUnavailable("The Redis store did not answer in time.") from None

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def ping(self) -> None:
        async with self._call():
            await self._redis.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._call():
            await self._redis.aclose()

    # -- key records ---------------------------------------------------------------------

    async def insert_key(self, record: KeyRecord) -> None:
        keys = [
            *self._feed_keys,
            self._key("key", record.id),
            self._key("pub", record.public_id),
            self._key("keys"),
        ]
        args: list[str | int] = [
            record.public_id,
            self._feed_length,
            encode_record(record),
            record.version,
            record.id,
            record.sort_key,
            secrets.token_hex(8),
            _feed_base(),
        ]
        async with self._call():
            inserted = await self._insert(keys=keys, args=args)
        if inserted != 1:
            raise ValueError("a key with this id or public_id exists")

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._call():
            doc = _text(await self._redis.hget(self._key("key", key_id), "doc"))
        return None if doc is None else decode_record(doc)

    async def find_key(self, public_id: str) -> KeyRecord | None:
        async with self._call():
            key_id = _text(await self._redis.get(self._key("pub", public_id)))
        return None if key_id is None else await self.get_key(key_id)

    async def list_keys(self, limit: int, after: str | None = None) -> list[KeyRecord]:
        if limit <= 0:
            return []
        start = "-" if after is None else "(" + after
        async with self._call():
            sort_keys = await self._redis.zrangebylex(
                self._key("keys"), start, "+", start=0, num=limit
            )
            if not sort_keys:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for sort_key in sort_keys:
                    pipe.hget(self._key("key", _str(sort_key).split(":", 1)[1]), "doc")
                docs: list[str | None] = await pipe.execute()
        return [decode_record(doc) for doc in docs if doc is not None]

    async def update_key(
        self, key_id: str, mutate: Callable[[KeyRecord], KeyRecord], *, announce: bool = True
    ) -> KeyRecord | None:
        for attempt in range(_UPDATE_ATTEMPTS):
            current = await self.get_key(key_id)
            if current is None:
                return None
            new = next_version(current, mutate)
            keys = [*self._feed_keys, self._key("key", key_id)]
            args: list[str | int] = [
                new.public_id,
                self._feed_length,
                current.version,
                encode_record(new),
                new.version,
                secrets.token_hex(8),
                int(announce),
                _feed_base(),
            ]
            async with self._call():
                outcome = await self._compare_and_set(keys=keys, args=args)
            if outcome == 1:
                return new
            if outcome == -1:
                return None
            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
        raise StoreUnavailable("The Redis store is too busy: a key update kept conflicting.")

    async def key_changes(self, since: int | None) -> KeyChanges:
        async with self._call():
            reply: list[Any] = await self._changes(
                keys=self._feed_keys,
                args=["" if since is None else since, self._feed_length, _feed_base()],
            )
        head, reset = int(reply[0]), bool(reply[1])
        if reset:
            return KeyChanges(seq=head, public_ids=(), reset=True)
        public_ids = tuple(member.split(":", 1)[1] for member in reply[2])
        return KeyChanges(seq=head, public_ids=public_ids, reset=False)

    # -- token cache ---------------------------------------------------------------------

    async def get_token(self, cache_key: str) -> MintedToken | None:
        async with self._call():
            text = _text(await self._redis.get(self._key("tok", cache_key)))
        return None if text is None else decode_token(text)

    async def add_token(self, cache_key: str, token: MintedToken, keep_until: float) -> MintedToken:
        keys = [self._key("tok", cache_key), self._key("jti", token.jti)]
        text = encode_token(token)
        for _ in range(3):
            now = time.time()
            args: list[str | int] = [
                text,
                max(1, int((keep_until - now) * 1000)),
                token.public_id,
                max(1, int((token.expires_at - now) * 1000)),
            ]
            async with self._call():
                cached = await self._set_if_absent(keys=keys, args=args)
            if cached is not None:
                return token if cached == text else decode_token(cached)
        raise StoreUnavailable("The Redis store kept losing a cached token while adding one.")

    async def token_owner(self, jti: str) -> str | None:
        async with self._call():
            return _text(await self._redis.get(self._key("jti", jti)))

    # -- limits --------------------------------------------------------------------------

    async def hit_rate_limit(
        self, bucket: str, limit: int, period: float, free_if_marked: str | None = None
    ) -> float:
        counter = self._key("rl", bucket)
        marker = self._key("mark", free_if_marked) if free_if_marked is not None else counter
        async with self._call():
            wait = await self._gcra(
                keys=[counter, marker],
                args=[limit, period, "1" if free_if_marked is not None else "0"],
            )
        return float(wait)

    async def mark(self, name: str, ttl: float) -> None:
        async with self._call():
            await self._redis.set(self._key("mark", name), "1", px=max(1, int(ttl * 1000)))

    async def count_failure(self, subject: str, window: float) -> tuple[int, float]:
        async with self._call():
            count, left = await self._count_failure(
                keys=[self._key("fail", subject)], args=[max(1, int(window * 1000))]
            )
        return int(count), int(left) / 1000


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turn every failure to reach Redis into ``StoreUnavailable``; the message names the
    error class only (driver messages carry addresses).

    redis-py can swallow a cancellation that lands mid-command (it reconnects and retries,
    or reports a connection error). Cancellation must win, or a cancelled background loop
    would live on, so a cancelled task gets its ``CancelledError`` back either way.
    """
    try:
        yield
    except (RedisError, OSError) as exc:
        if _cancelling():
            raise asyncio.CancelledError from exc
        raise StoreUnavailable(f"The Redis store does not answer ({type(exc).__name__}).") from exc
    if _cancelling():
        raise asyncio.CancelledError


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _str(value: bytes | str) -> str:
    """A reply as text (the client decodes replies; this only narrows the type)."""
    return value.decode() if isinstance(value, bytes) else value


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else _str(value)
