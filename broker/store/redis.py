"""The Redis backend: one store shared by many replicas, on one Redis server, Sentinel or
Cluster (:mod:`broker.store.redis_connect` connects to each).

Keys, all under ``broker:``, laid out for Redis Cluster: a script may only touch keys of
one hash slot, and the ``{…}`` part of a key name (its hash tag) is what picks the slot.

* Tag ``{k}`` — every key record, its indexes, the change feed and the ``jti`` index, in
  one slot, because the write scripts touch them together (a record and its feed entry in
  one atomic step; a listing reads records in order) and a revoke must never be seen
  without its feed entry:
  ``{k}:key:{id}`` (hash: ``doc`` the record's JSON, ``version``, ``writer`` a nonce of the
  last write, so a write retried after a lost reply recognizes itself), ``{k}:pub:{public_id}``
  (the record's id), ``{k}:keys`` (sorted set of every record's ``sort_key``, scores 0,
  listed with ``ZRANGEBYLEX``), ``{k}:feed:seq`` (the change counter), ``{k}:feed``
  (sorted set, score ``seq``, member ``"{seq}:{public_id}"``, trimmed to ``feed_length``),
  ``{k}:jti:{jti}`` (the minting key's ``public_id``, expiring with the token), and the
  audit trail, written by the same scripts as the changes it records: ``{k}:audit``
  (sorted set of every event's sort key), ``{k}:audit:doc`` (hash: sort key → event JSON),
  ``{k}:audit:key:{id}`` (one key's events).
* The per-request keys, each under a tag of its own so they spread over the shards:
  ``tok:{cache_key}`` (a cached token's JSON, until ``keep_until``), ``rl:{bucket}`` (a
  rate limiter's theoretical arrival time, GCRA) with ``rl:{bucket}:mark:{name}`` beside
  it in the same slot (a mark that lets a request through that limiter uncounted: the
  limiter's script reads both), ``fail:{subject}`` (failed authentications in the
  current window).

Every key write is one Lua script, so it and its change-feed entry are atomic. ``update_key``
is optimistic: read, ``mutate`` in Python, then a compare-and-set script that writes only
if the version is still the one read, retried a bounded number of times. A token is added
in two steps: its ``jti`` first (in ``{k}``), then the set-if-absent of the cached token (in
its own slot); a replica that loses the race deletes the ``jti`` it wrote (its token is
never handed out).

Durability: where the deployment has replicas (Sentinel; a single server, or on Cluster
the master owning the ``{k}`` slot, that reports connected replicas, asked at most every
10 s), every key write is followed by ``WAIT 1`` on the same connection, and a write no
replica acknowledged in time is ``StoreUnavailable``, never reported done. ``WAIT`` counts
only what its own connection wrote, so the pair must never be split: on one server or
Sentinel a pipeline sends both; on Cluster they go as one batch straight to the slot's
master (``ClusterNode.execute_pipeline``: one connection, no retry, no redirection), since
redis-py's cluster pipeline, on a ``MOVED`` or a lost connection, would resend the script
alone elsewhere or route the ``WAIT`` to another node, and a ``WAIT`` on a connection that
wrote nothing answers at once with the replica count, a false acknowledgement. Such a
failure (a failover under way) is ``StoreUnavailable`` and makes the next call rediscover
the slots and ask the new master about its replicas (a promoted replica may have none:
its writes then go unwaited, as on a single server without replicas).

The client connects lazily, with short timeouts and a single immediate retry (which
replaces a pooled connection killed by a Redis restart), and every exchange is bounded as
a whole (``call_timeout``: 0.6 s, 1.5 s on Sentinel and Cluster, whose clients discover
the topology on their first exchange), so a down or stalled Redis answers
``StoreUnavailable`` within about a second and a restarted one serves again without
restarting the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

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
    next_version,
)
from broker.store.redis_connect import CLUSTER, SINGLE, RedisOptions, connect, parse_redis_url

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

# Write scripts also share their last three KEYS = the audit index, the audit documents,
# the key's own audit index, and ARGV[#ARGV-2] = the event's sort key ('' for no event),
# ARGV[#ARGV-1] = its JSON: the event is written with the change, or neither is.
_APPEND_EVENT = """
local function append_event()
  local sort_key, doc = ARGV[#ARGV - 2], ARGV[#ARGV - 1]
  if sort_key == '' then return end
  redis.call('ZADD', KEYS[#KEYS - 2], 0, sort_key)
  redis.call('HSET', KEYS[#KEYS - 1], sort_key, doc)
  redis.call('ZADD', KEYS[#KEYS], 0, sort_key)
end
"""

# A write retried after a lost reply that finds itself already done writes its nonce
# again: the retry's connection then has a write of its own, later in
# the replication stream than the first, so the WAIT that follows on it covers both;
# without one, that WAIT would count replicas at once, for a write none may hold yet.

# KEYS[3] = key:{id}, KEYS[4] = pub:{public_id}, KEYS[5] = keys.
# ARGV[3] = doc, ARGV[4] = version, ARGV[5] = id, ARGV[6] = sort_key, ARGV[7] = nonce.
# Returns 1 when inserted (or when this very insert already was), 0 on a duplicate.
_INSERT = (
    _APPEND_EVENT
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('HGET', KEYS[3], 'writer') == ARGV[7] then
    redis.call('HSET', KEYS[3], 'writer', ARGV[7])  -- a retry's own write (above)
    return 1
  end
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'doc', ARGV[3], 'version', ARGV[4], 'writer', ARGV[7])
redis.call('SET', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[5], 0, ARGV[6])
append_event()
"""
    + _APPEND_CHANGE
    + "return 1\n"
)

# KEYS[3] = key:{id}. ARGV[3] = version read, ARGV[4] = new doc, ARGV[5] = new version,
# ARGV[6] = nonce, ARGV[7] = '1' to append to the change feed. Returns 1 when written (or
# when this very write already was), 0 when another write came first, -1 when the record
# does not exist.
_COMPARE_AND_SET = (
    _APPEND_EVENT
    + """
local current = redis.call('HGET', KEYS[3], 'version')
if not current then return -1 end
if current ~= ARGV[3] then
  if current == ARGV[5] and redis.call('HGET', KEYS[3], 'writer') == ARGV[6] then
    redis.call('HSET', KEYS[3], 'writer', ARGV[6])  -- a retry's own write (above)
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[3], 'doc', ARGV[4], 'version', ARGV[5], 'writer', ARGV[6])
append_event()
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

# KEYS[1] = rl:{bucket}, KEYS[2] = mark:{name} (or rl:{bucket} when there is none).
# ARGV[1] = limit, ARGV[2] = period (s), ARGV[3] = '1' when KEYS[2] is a mark, 'peek' to
# count nothing.
# Returns {seconds to wait as a string ('0' when allowed), remaining, reset}. Same
# arithmetic as broker.store.common.gcra and limit_state (slack 0.001 s), on the Redis
# server's clock so replicas agree.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = 0
if ARGV[3] ~= 'peek' and not (ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1) then
  local allow_at = tat + interval - period
  if allow_at > now then
    wait = allow_at - now
  else
    tat = tat + interval
    redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
  end
end
local remaining = 0
if wait == 0 then
  remaining = math.max(0, math.min(limit, math.floor((now + period - tat + 0.001) / interval)))
end
local reset = math.max(0, math.ceil(tat - now - 0.001))
return {tostring(wait), remaining, reset}
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
    """A :class:`Store` in Redis (any URL form of :mod:`broker.store.redis_connect`)."""

    def __init__(
        self,
        url: str,
        *,
        options: RedisOptions | None = None,
        feed_length: int = CHANGE_FEED_LENGTH,
        prefix: str = "broker:",
        connect_timeout: float = 1.0,
        read_timeout: float = 1.0,
        call_timeout: float | None = None,
        wait_timeout: float = 0.4,
    ) -> None:
        if feed_length < 1:
            raise ValueError("feed_length must be at least 1")
        self._feed_length = feed_length
        self._prefix = prefix
        self._target = parse_redis_url(url)
        self._redis, self._behind = connect(
            self._target,
            options or RedisOptions(),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._insert = self._redis.register_script(_INSERT)
        self._compare_and_set = self._redis.register_script(_COMPARE_AND_SET)
        self._changes = self._redis.register_script(_CHANGES)
        self._gcra = self._redis.register_script(_GCRA)
        self._count_failure = self._redis.register_script(_COUNT_FAILURE)
        self._feed_keys = [self._k("feed:seq"), self._k("feed")]
        # One server answers in well under a millisecond; a Sentinel or Cluster client's
        # first exchange also asks where the master or the slots are (and loads scripts).
        self._call_timeout = call_timeout or (0.6 if self._target.kind == SINGLE else 1.5)
        self._wait_ms = max(1, int(wait_timeout * 1000))
        self._replicas_checked_at = -math.inf
        self._has_replicas = False
        self._undiscovered = self._target.kind == CLUSTER
        self._stale = False
        self._discovery = asyncio.Lock()
        self._closed = False

    @contextlib.asynccontextmanager
    async def _call(self, *, discover: bool = True) -> AsyncIterator[None]:
        """One exchange with Redis, answered within ``call_timeout`` seconds or
        ``StoreUnavailable``: a stalled Redis (paused, swapping, ``DEBUG SLEEP``) must not
        hold a caller longer than the few calls a request makes add up to (SPEC §9: 2 s)."""
        try:
            async with asyncio.timeout(self._call_timeout):
                with _unavailable():
                    if discover:
                        await self._discovered()
                    yield
        except TimeoutError:
            raise StoreUnavailable("The Redis store did not answer in time.") from None

    async def _discovered(self) -> None:
        """A Cluster client learns the slots once, before anything else: redis-py's asyncio
        cluster client, discovering them on many concurrent first commands at once, may
        hand a command a connection still being opened (``writelines`` of ``None``); and
        again after a waited write failed (:meth:`_topology_changed`), which redis-py
        does not see since those bypass its redirection handling."""
        if self._undiscovered:
            async with self._discovery:
                if self._undiscovered:
                    await self._redis.initialize()
                    self._undiscovered = False
        if self._stale and isinstance(self._redis, RedisCluster):
            async with self._discovery:
                if self._stale:
                    await self._redis.nodes_manager.initialize()
                    self._stale = False

    def _k(self, *parts: str) -> str:
        """A key in the ``{k}`` slot: records, their indexes, the feed, the ``jti`` index."""
        return f"{self._prefix}{{k}}:" + ":".join(parts)

    def _own(self, kind: str, name: str, *rest: str) -> str:
        """A per-request key in a slot of its own: ``kind:{name}[:rest]``."""
        return f"{self._prefix}{kind}:{{{name}}}" + "".join(f":{r}" for r in rest)

    async def _write(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """Run a key-writing script; where the deployment has replicas, return only once
        one acknowledged it (``WAIT 1`` on the connection that wrote)."""
        if not await self._replicated():
            async with self._call():
                return await script(keys=keys, args=args)
        if isinstance(self._redis, RedisCluster):
            return await self._write_on_cluster(self._redis, script, keys, args)
        async with self._call(), self._redis.pipeline(transaction=False) as pipe:
            # redis-py queues a script on a pipeline (loading it first if need be)
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", 1, self._wait_ms)
            result, acknowledged = await pipe.execute()
        return _acknowledged(result, acknowledged)

    async def _write_on_cluster(
        self, cluster: RedisCluster, script: AsyncScript, keys: list[str], args: list[str | int]
    ) -> Any:
        """The script (``EVAL`` with its source: no ``NOSCRIPT`` to recover from, on a
        path only admin changes take) and ``WAIT`` as one batch on one connection to the
        master of the keys' slot, and nothing resent: any failure, a ``MOVED`` included,
        is ``StoreUnavailable`` and the next call rediscovers the topology."""
        commands = [
            PipelineCommand(0, "EVAL", script.script, len(keys), *keys, *args),
            PipelineCommand(1, "WAIT", 1, self._wait_ms),
        ]
        async with self._call():
            try:
                await self._slot_master(cluster).execute_pipeline(commands)
            except BaseException:
                self._topology_changed()
                raise
            result, acknowledged = (command.result for command in commands)
            for outcome in (result, acknowledged):
                if isinstance(outcome, Exception):
                    self._topology_changed()
                    raise outcome
        return _acknowledged(result, acknowledged)

    def _slot_master(self, cluster: RedisCluster) -> ClusterNode:
        """The master owning the ``{k}`` slot, as the client last discovered it."""
        node = cluster.get_node_from_key(self._k("keys"))
        assert node is not None  # without replica=True, the master or SlotNotCoveredError
        return node

    def _topology_changed(self) -> None:
        """After a failed exchange with a Cluster: rediscover the slots before the next
        call, and ask the (maybe new) master about its replicas again."""
        self._stale = True
        self._replicas_checked_at = -math.inf

    async def _replicated(self) -> bool:
        """Whether writes wait for a replica: always on Sentinel; on one server, or on a
        Cluster the master owning ``{k}``, while it reports connected replicas (asked at
        most every 10 s)."""
        if self._target.replicated:
            return True
        now = time.monotonic()
        if now - self._replicas_checked_at > 10:
            async with self._call():
                info = await self._replication_info()
            self._has_replicas = int(info.get("connected_slaves", 0)) > 0
            self._replicas_checked_at = now
        return self._has_replicas

    async def _replication_info(self) -> dict[str, Any]:
        if not isinstance(self._redis, RedisCluster):
            info: dict[str, Any] = await self._redis.info("replication")
            return info
        try:
            reply: dict[str, Any] = await self._slot_master(self._redis).execute_command(
                "INFO", "replication"
            )
        except BaseException:
            self._topology_changed()
            raise
        return reply

    async def ping(self) -> None:
        async with self._call():
            await self._redis.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._call(discover=False):
            await self._redis.aclose()
            for client in self._behind:
                await client.aclose()

    # -- key records ---------------------------------------------------------------------

    async def insert_key(self, record: KeyRecord, audit: AuditEvent | None = None) -> None:
        keys = [
            *self._feed_keys,
            self._k("key", record.id),
            self._k("pub", record.public_id),
            self._k("keys"),
            *self._audit_keys(record.id),
        ]
        args: list[str | int] = [
            record.public_id,
            self._feed_length,
            encode_record(record),
            record.version,
            record.id,
            record.sort_key,
            secrets.token_hex(8),
            *_event_args(audit),
            _feed_base(),
        ]
        inserted = await self._write(self._insert, keys, args)
        if inserted != 1:
            raise ValueError("a key with this id or public_id exists")

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._call():
            doc = _text(await self._redis.hget(self._k("key", key_id), "doc"))
        return None if doc is None else decode_record(doc)

    async def find_key(self, public_id: str) -> KeyRecord | None:
        async with self._call():
            key_id = _text(await self._redis.get(self._k("pub", public_id)))
        return None if key_id is None else await self.get_key(key_id)

    async def list_keys(self, limit: int, after: str | None = None) -> list[KeyRecord]:
        if limit <= 0:
            return []
        start = "-" if after is None else "(" + after
        async with self._call():
            sort_keys = await self._redis.zrangebylex(
                self._k("keys"), start, "+", start=0, num=limit
            )
            if not sort_keys:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for sort_key in sort_keys:
                    pipe.hget(self._k("key", _str(sort_key).split(":", 1)[1]), "doc")
                docs: list[str | None] = await pipe.execute()
        return [decode_record(doc) for doc in docs if doc is not None]

    async def update_key(
        self,
        key_id: str,
        mutate: Callable[[KeyRecord], KeyRecord],
        *,
        announce: bool = True,
        audit: Auditor | None = None,
    ) -> KeyRecord | None:
        for attempt in range(_UPDATE_ATTEMPTS):
            current = await self.get_key(key_id)
            if current is None:
                return None
            new = next_version(current, mutate)
            keys = [*self._feed_keys, self._k("key", key_id), *self._audit_keys(key_id)]
            event = audit(current, new) if audit is not None else None
            args: list[str | int] = [
                new.public_id,
                self._feed_length,
                current.version,
                encode_record(new),
                new.version,
                secrets.token_hex(8),
                int(announce),
                *_event_args(event),
                _feed_base(),
            ]
            if announce:
                outcome = await self._write(self._compare_and_set, keys, args)
            else:  # usage counts: no check depends on them, no replica is waited for
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

    # -- audit trail ---------------------------------------------------------------------

    def _audit_keys(self, key_id: str) -> list[str]:
        return [self._k("audit"), self._k("audit", "doc"), self._k("audit", "key", key_id)]

    async def audit_events(
        self, limit: int, before: str | None = None, key_id: str | None = None
    ) -> list[AuditEvent]:
        if limit <= 0:
            return []
        index = self._k("audit") if key_id is None else self._k("audit", "key", key_id)
        upper = "+" if before is None else "(" + before
        async with self._call():
            sort_keys = await self._redis.zrevrangebylex(index, upper, "-", start=0, num=limit)
            if not sort_keys:
                return []
            docs = await self._redis.hmget(self._k("audit", "doc"), sort_keys)
        return [AuditEvent.decode(_str(doc)) for doc in docs if doc is not None]

    async def purge_audit(self, older_than: datetime, batch: int = 1000) -> int:
        cutoff = f"{int(older_than.timestamp() * 1_000_000):017d}"
        async with self._call():
            old = await self._redis.zrangebylex(self._k("audit"), "-", "(" + cutoff, 0, batch)
            if not old:
                return 0
            docs = await self._redis.hmget(self._k("audit", "doc"), old)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k("audit"), *old)
                pipe.hdel(self._k("audit", "doc"), *old)
                for sort_key, doc in zip(old, docs, strict=True):
                    if doc is not None:
                        key_index = self._k("audit", "key", AuditEvent.decode(_str(doc)).key_id)
                        pipe.zrem(key_index, sort_key)
                await pipe.execute()
        return len(old)

    # -- token cache ---------------------------------------------------------------------

    async def get_token(self, cache_key: str) -> MintedToken | None:
        async with self._call():
            text = _text(await self._redis.get(self._own("tok", cache_key)))
        return None if text is None else decode_token(text)

    async def add_token(self, cache_key: str, token: MintedToken, keep_until: float) -> MintedToken:
        text = encode_token(token)
        lifetime = max(1, int((token.expires_at - time.time()) * 1000))
        async with self._call():
            # the jti first: no token is handed out before its owner is on record
            await self._redis.set(self._k("jti", token.jti), token.public_id, px=lifetime)
        key = self._own("tok", cache_key)
        for _ in range(3):
            keep = max(1, int((keep_until - time.time()) * 1000))
            async with self._call():
                if await self._redis.set(key, text, nx=True, px=keep):
                    return token
                cached = _text(await self._redis.get(key))
            if cached is not None:
                async with self._call():  # this token is never handed out: forget its jti
                    await self._redis.delete(self._k("jti", token.jti))
                return decode_token(cached)
        raise StoreUnavailable("The Redis store kept losing a cached token while adding one.")

    async def token_owner(self, jti: str) -> str | None:
        async with self._call():
            return _text(await self._redis.get(self._k("jti", jti)))

    # -- limits --------------------------------------------------------------------------

    async def hit_rate_limit(
        self, bucket: str, limit: int, period: float, free_if_marked: str | None = None
    ) -> RateLimitState:
        counter = self._own("rl", bucket)
        marker = self._own("rl", bucket, "mark", free_if_marked) if free_if_marked else counter
        return await self._run_gcra(
            [counter, marker], limit, period, "1" if free_if_marked is not None else "0"
        )

    async def peek_rate_limit(self, bucket: str, limit: int, period: float) -> RateLimitState:
        counter = self._own("rl", bucket)
        return await self._run_gcra([counter, counter], limit, period, "peek")

    async def _run_gcra(
        self, keys: list[str], limit: int, period: float, mode: str
    ) -> RateLimitState:
        async with self._call():
            wait, remaining, reset = await self._gcra(keys=keys, args=[limit, period, mode])
        return RateLimitState(
            limit=limit, wait=float(wait), remaining=int(remaining), reset=int(reset)
        )

    async def mark(self, bucket: str, name: str, ttl: float) -> None:
        async with self._call():
            await self._redis.set(
                self._own("rl", bucket, "mark", name), "1", px=max(1, int(ttl * 1000))
            )

    async def count_failure(self, subject: str, window: float) -> tuple[int, float]:
        async with self._call():
            count, left = await self._count_failure(
                keys=[self._own("fail", subject)], args=[max(1, int(window * 1000))]
            )
        return int(count), int(left) / 1000


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turn every failure to reach Redis into ``StoreUnavailable``; the message names the
    error class only (driver messages carry addresses). That includes redis-py's
    ``RedisClusterException``, which is no ``RedisError``: a Cluster client whose discovery
    reaches no node, or finds slots uncovered mid-failover, raises it.

    redis-py can swallow a cancellation that lands mid-command (it reconnects and retries,
    or reports a connection error). Cancellation must win, or a cancelled background loop
    would live on, so a cancelled task gets its ``CancelledError`` back either way.
    """
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        if _cancelling():
            raise asyncio.CancelledError from exc
        raise StoreUnavailable(f"The Redis store does not answer ({type(exc).__name__}).") from exc
    if _cancelling():
        raise asyncio.CancelledError


def _acknowledged(result: Any, acknowledged: Any) -> Any:
    """``result`` once ``WAIT`` said a replica holds the write, else ``StoreUnavailable``."""
    if int(acknowledged) < 1:
        raise StoreUnavailable(
            "No Redis replica acknowledged the change in time; it may not be durable."
        )
    return result


def _event_args(event: AuditEvent | None) -> list[str | int]:
    return ["", ""] if event is None else [event.sort_key, event.encode()]


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _str(value: bytes | str) -> str:
    """A reply as text (the client decodes replies; this only narrows the type)."""
    return value.decode() if isinstance(value, bytes) else value


def _text(value: bytes | str | None) -> str | None:
    return None if value is None else _str(value)
