"""The :class:`~broker.store.Store` contract, run against every backend (the module is
marked ``both_stores``), plus backend-specific durability and outage tests."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.errors import StoreUnavailable
from broker.keys import audit
from broker.keys.audit import AuditEvent
from broker.keys.record import KeyRecord
from broker.store import MintedToken, Store, open_store
from broker.store.base import KeyChanges
from broker.store.common import encode_record
from broker.store.redis import RedisStore
from broker.store.sqlite import SQLiteStore
from tests.harness.keys import BASE_TIME, make_record
from tests.harness.redis import RedisServer
from tests.harness.waiting import wait_until

#: The contract: every backend must pass every test of it that uses a store.
pytestmark = pytest.mark.every_store


def full_record() -> KeyRecord:
    """A record where every field differs from its default."""
    return make_record(
        description="für das Dashboard",
        client_name="acme",
        is_active=False,
        rights=("semantic_model.token.create", "semantic_model.meta.read:sales"),
        expires_at=BASE_TIME + timedelta(days=30),
        revoked_at=BASE_TIME + timedelta(days=1, microseconds=1),
        last_used_at=BASE_TIME + timedelta(hours=5),
        ip_whitelist=("127.0.0.1", "10.0.0.0/8", "::1"),
        ip_blacklist=("192.0.2.1",),
        virgin_mode=True,
        virgin_until_n_requests=5,
        max_whitelist_ips=3,
        request_count=17,
        locked=True,
        rate_limit_per_minute=60,
        previous_secret_digest=secrets.token_hex(32),
        previous_secret_expires_at=BASE_TIME + timedelta(minutes=10),
        version=4,
    )


def make_token(public_id: str = "0123456789abcdef", lifetime: int = 3600) -> MintedToken:
    return MintedToken(
        token=f"header.{secrets.token_hex(16)}.signature",
        jti=str(uuid.uuid4()),
        expires_at=int(time.time()) + lifetime,
        public_id=public_id,
    )


def count_up(record: KeyRecord) -> KeyRecord:
    return dataclasses.replace(record, request_count=record.request_count + 1)


# -- key records -------------------------------------------------------------------------


async def test_insert_then_get_and_find_round_trip_every_field(store: Store) -> None:
    full, minimal = full_record(), make_record(1)
    await store.insert_key(full)
    await store.insert_key(minimal)

    for record in (full, minimal):
        assert await store.get_key(record.id) == record
        assert await store.find_key(record.public_id) == record
    assert await store.list_keys(10) == [full, minimal]
    got = await store.get_key(full.id)
    assert got is not None
    assert isinstance(got.rights, tuple)
    assert got.created_at.tzinfo is not None


async def test_unknown_key_is_none(store: Store) -> None:
    assert await store.get_key(str(uuid.uuid4())) is None
    assert await store.find_key("nosuchpublicid00") is None
    assert await store.update_key(str(uuid.uuid4()), count_up) is None
    assert await store.list_keys(10) == []


async def test_duplicate_id_or_public_id_is_refused_and_changes_nothing(store: Store) -> None:
    original = make_record()
    await store.insert_key(original)
    before = await store.key_changes(None)

    for duplicate in (
        original,
        make_record(1, id=original.id),
        make_record(2, public_id=original.public_id),
    ):
        with pytest.raises(ValueError, match="exists"):
            await store.insert_key(duplicate)

    assert await store.get_key(original.id) == original
    assert await store.find_key(original.public_id) == original
    assert await store.list_keys(10) == [original]
    assert (await store.key_changes(before.seq)).public_ids == ()


async def test_list_keys_orders_by_sort_key_and_pages_without_gaps(store: Store) -> None:
    records = [make_record(n) for n in range(22)]
    records += [make_record(99, created_at=BASE_TIME) for _ in range(3)]  # ties: by id
    for record in random.sample(records, len(records)):
        await store.insert_key(record)

    pages: list[list[KeyRecord]] = []
    after: str | None = None
    while page := await store.list_keys(10, after):
        pages.append(page)
        after = page[-1].sort_key

    assert [len(page) for page in pages] == [10, 10, 5]
    assert [r for page in pages for r in page] == sorted(records, key=lambda r: r.sort_key)
    assert await store.list_keys(3) == pages[0][:3]
    assert await store.list_keys(0) == []


async def test_update_key_bumps_version_and_returns_the_stored_record(store: Store) -> None:
    record = full_record()
    await store.insert_key(record)

    updated = await store.update_key(
        record.id, lambda r: dataclasses.replace(r, name="renamed", expires_at=None, rights=())
    )

    assert updated == dataclasses.replace(
        record, name="renamed", expires_at=None, rights=(), version=record.version + 1
    )
    assert await store.get_key(record.id) == updated
    assert await store.find_key(record.public_id) == updated


async def test_update_key_exception_in_mutate_propagates_and_writes_nothing(
    store: Store,
) -> None:
    class Refused(Exception):
        pass

    record = make_record()
    await store.insert_key(record)
    before = await store.key_changes(None)

    def refuse(_: KeyRecord) -> KeyRecord:
        raise Refused("no")

    with pytest.raises(Refused, match="no"):
        await store.update_key(record.id, refuse)

    assert await store.get_key(record.id) == record
    assert (await store.key_changes(before.seq)).public_ids == ()


async def test_update_key_refuses_to_change_identity(store: Store) -> None:
    record = make_record()
    await store.insert_key(record)

    def new_id(r: KeyRecord) -> KeyRecord:
        return dataclasses.replace(r, id=str(uuid.uuid4()))

    def new_public_id(r: KeyRecord) -> KeyRecord:
        return dataclasses.replace(r, public_id="changedpublicid0")

    for mutate in (new_id, new_public_id):
        with pytest.raises(ValueError, match="must not change"):
            await store.update_key(record.id, mutate)

    assert await store.get_key(record.id) == record


async def test_concurrent_updates_from_two_instances_lose_nothing(
    store: Store, other_store: Store
) -> None:
    record = make_record()
    await store.insert_key(record)

    results = await asyncio.gather(
        *(s.update_key(record.id, count_up) for s in (store, other_store) for _ in range(15))
    )

    final = await other_store.get_key(record.id)
    assert final is not None
    assert final.request_count == record.request_count + 30
    assert final.version == record.version + 30
    versions = sorted(r.version for r in results if r is not None)
    assert versions == list(range(record.version + 1, record.version + 31))


# -- change feed -------------------------------------------------------------------------


async def test_change_feed_reports_writes_in_order(store: Store) -> None:
    first = await store.key_changes(None)
    assert first.reset
    assert first.public_ids == ()

    a, b = make_record(1), make_record(2)
    await store.insert_key(a)
    await store.insert_key(b)
    await store.update_key(a.id, count_up)

    changes = await store.key_changes(first.seq)
    assert not changes.reset
    assert changes.public_ids == (a.public_id, b.public_id, a.public_id)
    assert changes.seq > first.seq

    again = await store.key_changes(changes.seq)
    assert again == dataclasses.replace(changes, public_ids=())


async def test_change_feed_reader_too_far_behind_is_reset(store_url: str) -> None:
    small = open_store(store_url, feed_length=5)
    try:
        start = await small.key_changes(None)
        records = [make_record(n) for n in range(6)]
        for record in records[:5]:
            await small.insert_key(record)
        within = await small.key_changes(start.seq)
        assert not within.reset
        assert within.public_ids == tuple(r.public_id for r in records[:5])

        await small.insert_key(records[5])
        behind = await small.key_changes(start.seq)
        assert behind.reset
        assert behind.seq == within.seq + 1
        assert not (await small.key_changes(within.seq)).reset
    finally:
        await small.close()


async def test_change_feed_position_from_elsewhere_is_reset(store: Store) -> None:
    """A position the store never reached (e.g. it lost its data) forces a reset."""
    head = await store.key_changes(None)
    assert (await store.key_changes(head.seq + 1000)).reset


async def test_writes_from_another_instance_appear_in_the_feed(
    store: Store, other_store: Store
) -> None:
    start = await store.key_changes(None)
    record = make_record()
    await other_store.insert_key(record)
    await other_store.update_key(record.id, count_up)

    changes = await store.key_changes(start.seq)
    assert changes.public_ids == (record.public_id, record.public_id)
    assert await store.get_key(record.id) == await other_store.get_key(record.id)


async def test_an_unannounced_update_is_stored_but_not_in_the_feed(
    store: Store, other_store: Store
) -> None:
    record = make_record()
    await store.insert_key(record)
    start = await store.key_changes(None)
    updated = await other_store.update_key(record.id, count_up, announce=False)
    assert updated is not None and updated.request_count == 1
    assert await store.get_key(record.id) == updated
    assert await store.key_changes(start.seq) == KeyChanges(start.seq, (), False)
    await other_store.update_key(record.id, count_up)  # announced again by default
    assert (await store.key_changes(start.seq)).public_ids == (record.public_id,)


# -- token cache -------------------------------------------------------------------------


async def test_add_token_is_set_if_absent(store: Store) -> None:
    first, second = make_token(), make_token()
    keep = time.time() + 60

    assert await store.get_token("k1") is None
    assert await store.add_token("k1", first, keep) == first
    assert await store.add_token("k1", second, keep) == first
    assert await store.get_token("k1") == first
    assert await store.token_owner(first.jti) == first.public_id
    assert await store.token_owner(second.jti) is None
    assert await store.add_token("k2", second, keep) == second


async def test_concurrent_add_token_from_two_instances_has_one_winner(
    store: Store, other_store: Store
) -> None:
    tokens = [make_token(public_id=f"{n:016d}") for n in range(20)]
    keep = time.time() + 60

    results = await asyncio.gather(
        *(
            (store if n % 2 else other_store).add_token("shared", token, keep)
            for n, token in enumerate(tokens)
        )
    )

    winner = results[0]
    assert winner in tokens
    assert all(result == winner for result in results)
    assert await store.get_token("shared") == winner
    owners = [await other_store.token_owner(t.jti) for t in tokens]
    assert owners.count(None) == 19
    assert winner.public_id in owners


async def test_cached_token_is_gone_after_keep_until_and_can_be_replaced(store: Store) -> None:
    first, second = make_token(), make_token()
    assert await store.add_token("k", first, time.time() + 0.3) == first
    assert await store.get_token("k") == first

    async def gone() -> bool:
        return await store.get_token("k") is None

    await wait_until(gone)
    assert await store.add_token("k", second, time.time() + 60) == second
    assert await store.get_token("k") == second


async def test_token_owner_until_the_token_expires(store: Store) -> None:
    # Whole-second expiry: 3 s leaves at least 2 s for the first two checks under load.
    token = make_token(public_id="ownerpublicid000", lifetime=3)
    assert await store.token_owner(token.jti) is None
    await store.add_token("k", token, time.time() + 60)
    assert await store.token_owner(token.jti) == "ownerpublicid000"

    async def forgotten() -> bool:
        return await store.token_owner(token.jti) is None

    await wait_until(forgotten)


async def test_ping_answers(store: Store) -> None:
    await store.ping()


async def test_close_is_idempotent(store_url: str) -> None:
    s = open_store(store_url)
    await s.ping()
    await s.close()
    await s.close()


# -- open_store --------------------------------------------------------------------------


def test_open_store_picks_the_backend_and_resolves_sqlite_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///var/broker.db")
    absolute = open_store(f"sqlite:///{tmp_path}/abs/broker.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == tmp_path / "var" / "broker.db"
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == tmp_path / "abs" / "broker.db"
    assert not (tmp_path / "var").exists()
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store("postgres://localhost/db")


# -- SQLite ------------------------------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "folder" / "broker.db"


async def test_sqlite_creates_its_folder_and_keeps_data_across_reopen(sqlite_path: Path) -> None:
    record, token = make_record(), make_token()
    first = SQLiteStore(sqlite_path)
    try:
        await first.insert_key(record)
        await first.add_token("k", token, time.time() + 60)
        seq = (await first.key_changes(None)).seq
    finally:
        await first.close()
    assert await asyncio.to_thread(sqlite_path.is_file)

    second = SQLiteStore(sqlite_path)
    try:
        assert await second.get_key(record.id) == record
        assert await second.get_token("k") == token
        assert await second.token_owner(token.jti) == token.public_id
        assert (await second.key_changes(seq)) == (await second.key_changes(seq))
        assert not (await second.key_changes(seq)).reset
    finally:
        await second.close()


async def test_sqlite_write_from_another_process_is_visible(sqlite_path: Path) -> None:
    store = SQLiteStore(sqlite_path)
    try:
        start = await store.key_changes(None)
        record = make_record()
        script = (
            "import asyncio, sys\n"
            "from broker.keys.record import KeyRecord\n"
            "from broker.store.common import decode_record\n"
            "from broker.store.sqlite import SQLiteStore\n"
            "async def main():\n"
            "    s = SQLiteStore(sys.argv[1])\n"
            "    try:\n"
            "        await s.insert_key(decode_record(sys.argv[2]))\n"
            "    finally:\n"
            "        await s.close()\n"
            "asyncio.run(main())\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(sqlite_path), encode_record(record)
        )
        assert await process.wait() == 0

        assert await store.get_key(record.id) == record
        assert (await store.key_changes(start.seq)).public_ids == (record.public_id,)
    finally:
        await store.close()


@pytest.fixture
def garbage_sqlite_path(sqlite_path: Path) -> Path:
    sqlite_path.parent.mkdir(parents=True)
    sqlite_path.write_bytes(b"this is not a database" * 100)
    return sqlite_path


async def test_sqlite_unreadable_file_is_unavailable_until_repaired(
    garbage_sqlite_path: Path,
) -> None:
    sqlite_path = garbage_sqlite_path
    store = SQLiteStore(sqlite_path)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.get_key(str(uuid.uuid4()))
        assert str(sqlite_path) not in caught.value.message
        with pytest.raises(StoreUnavailable):
            await store.ping()

        await asyncio.to_thread(sqlite_path.unlink)
        await store.ping()
        assert await store.get_key(str(uuid.uuid4())) is None
    finally:
        await store.close()


async def test_sqlite_closed_store_is_unavailable(sqlite_path: Path) -> None:
    store = SQLiteStore(sqlite_path)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


# -- Redis outage ------------------------------------------------------------------------


async def test_a_flushed_redis_tells_feed_readers_to_reset(private_redis: RedisServer) -> None:
    """After a FLUSHDB (or a failover to a replica that was behind) the new feed must not
    pass for the continuation of the old one, even once it has as many entries."""
    store = open_store(private_redis.url)
    assert isinstance(store, RedisStore)
    try:
        await store.insert_key(make_record(0))
        position = (await store.key_changes(None)).seq
        await store._redis.flushdb()
        for n in range(1, 4):
            await store.insert_key(make_record(n))
        assert (await store.key_changes(position)).reset
    finally:
        await store.close()


async def test_redis_outage_is_unavailable_then_recovers(private_redis: RedisServer) -> None:
    store = open_store(private_redis.url)
    try:
        record = make_record()
        await store.insert_key(record)
        seq = (await store.key_changes(None)).seq

        await asyncio.to_thread(private_redis.kill)
        calls: list[Callable[[], Awaitable[object]]] = [
            store.ping,
            lambda: store.get_key(record.id),
            lambda: store.find_key(record.public_id),
            lambda: store.list_keys(10),
            lambda: store.insert_key(make_record(1)),
            lambda: store.update_key(record.id, count_up),
            lambda: store.key_changes(seq),
            lambda: store.get_token("k"),
            lambda: store.add_token("k", make_token(), time.time() + 60),
            lambda: store.token_owner("jti"),
        ]
        async with asyncio.timeout(20):
            for call in calls:
                with pytest.raises(StoreUnavailable):
                    await call()

        await asyncio.to_thread(private_redis.restart)
        await store.ping()
        assert await store.get_key(record.id) is None  # no persistence: a fresh, empty Redis
        assert (await store.key_changes(seq)).reset
        await store.insert_key(record)
        assert await store.find_key(record.public_id) == record
    finally:
        await store.close()


# -- limits ------------------------------------------------------------------------------


async def _wait(
    store: Store, bucket: str, limit: int, period: float, mark: str | None = None
) -> float:
    return (await store.hit_rate_limit(bucket, limit, period, mark)).wait


async def test_rate_limit_allows_a_burst_then_refuses(store: Store) -> None:
    waits = [await _wait(store, "k1", 3, 60) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 15 < waits[3] <= 20.5  # one request per 20 s after the burst
    assert await _wait(store, "k2", 3, 60) == 0.0  # buckets are separate


async def test_rate_limit_is_atomic_across_instances(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    try:
        states = await asyncio.gather(*(s.hit_rate_limit("shared", 5, 60) for s in [a, b] * 10))
        assert sum(1 for state in states if state.allowed) == 5
        assert sorted(s.remaining for s in states if s.allowed) == [0, 1, 2, 3, 4]
    finally:
        await a.close()
        await b.close()


async def test_rate_limit_frees_marked_requests(store: Store) -> None:
    assert await _wait(store, "k", 1, 60, "poll-1") == 0.0
    assert await _wait(store, "k", 1, 60, "poll-1") > 0
    await store.mark("k", "poll-1", 5)
    for _ in range(3):
        assert await _wait(store, "k", 1, 60, "poll-1") == 0.0
    assert await _wait(store, "k", 1, 60, "poll-2") > 0
    await store.mark("other", "poll-3", 5)  # a mark belongs to its bucket
    assert await _wait(store, "k", 1, 60, "poll-3") > 0


async def test_rate_limit_recovers_after_the_interval(store: Store) -> None:
    assert await _wait(store, "fast", 2, 1.0) == 0.0
    assert await _wait(store, "fast", 2, 1.0) == 0.0
    wait = await _wait(store, "fast", 2, 1.0)
    assert 0 < wait <= 0.501  # one interval at most (Redis keeps microseconds)
    await asyncio.sleep(wait + 0.02)
    assert await _wait(store, "fast", 2, 1.0) == 0.0


async def test_rate_limit_reports_remaining_and_reset(store: Store) -> None:
    """SPEC §4's headers: every backend reports the same state after each request."""
    states = [await store.hit_rate_limit("hdr", 3, 60) for _ in range(4)]
    assert [(s.limit, s.remaining, s.reset) for s in states] == [
        (3, 2, 20),
        (3, 1, 40),
        (3, 0, 60),
        (3, 0, 60),
    ]
    assert [s.allowed for s in states] == [True, True, True, False]
    assert states[3].wait > 0


async def test_rate_limit_state_of_a_free_request(store: Store) -> None:
    """A marked (free) request counts nothing and reports the bucket as it is."""
    await store.hit_rate_limit("free", 2, 60)
    await store.mark("free", "poll", 5)
    state = await store.hit_rate_limit("free", 2, 60, free_if_marked="poll")
    assert (state.allowed, state.remaining, state.reset) == (True, 1, 30)
    unmarked = await store.hit_rate_limit("fresh", 2, 60, free_if_marked="nothing")
    assert (unmarked.remaining, unmarked.reset) == (1, 30)
    await store.mark("empty", "poll", 5)
    empty = await store.hit_rate_limit("empty", 2, 60, free_if_marked="poll")
    assert (empty.allowed, empty.remaining, empty.reset) == (True, 2, 0)


async def test_peeking_at_a_rate_limit_counts_nothing(store: Store) -> None:
    """The state a refusal before the count reports: as the last request left it."""
    empty = await store.peek_rate_limit("peek", 2, 60)
    assert (empty.allowed, empty.remaining, empty.reset) == (True, 2, 0)
    await store.hit_rate_limit("peek", 2, 60)
    for _ in range(3):
        state = await store.peek_rate_limit("peek", 2, 60)
        assert (state.allowed, state.remaining, state.reset) == (True, 1, 30)
    assert (await store.hit_rate_limit("peek", 2, 60)).allowed
    assert (await store.peek_rate_limit("peek", 2, 60)).remaining == 0


async def test_count_failure_windows(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    try:
        counts = await asyncio.gather(*(s.count_failure("10.0.0.1", 1.0) for s in [a, b] * 5))
        assert sorted(c for c, _ in counts) == list(range(1, 11))
        assert all(0 < left <= 1.0 for _, left in counts)
        assert (await a.count_failure("10.0.0.2", 1.0))[0] == 1
        await asyncio.sleep(1.1)
        assert (await b.count_failure("10.0.0.1", 1.0))[0] == 1
    finally:
        await a.close()
        await b.close()


# -- audit trail -------------------------------------------------------------------------


def constant(event: AuditEvent) -> Callable[[KeyRecord, KeyRecord], AuditEvent]:
    return lambda old, new: event


def make_event(record: KeyRecord, action: str = "key.update", **at: Any) -> AuditEvent:
    event = audit.event(action, None, record, audit.Actor("cli"))
    return dataclasses.replace(event, at=at.get("at", event.at))


async def test_events_are_written_with_their_change(store: Store) -> None:
    record = make_record(1)
    created = make_event(record, audit.CREATE)
    await store.insert_key(record, created)

    def rename(r: KeyRecord) -> KeyRecord:
        return dataclasses.replace(r, name="renamed")

    updated = await store.update_key(
        record.id, rename, audit=lambda old, new: audit.event(audit.UPDATE, old, new, audit.CLI)
    )
    assert updated is not None
    events = await store.audit_events(10)
    assert [e.action for e in events] == [audit.UPDATE, audit.CREATE]  # newest first
    assert events[1] == created
    assert events[0].changes == {"name": {"from": record.name, "to": "renamed"}}
    assert await store.audit_events(10, key_id="nobody") == []


async def test_no_event_without_its_change_and_no_change_without_its_event(store: Store) -> None:
    record = make_record(2)
    await store.insert_key(record)
    clash = make_event(record, audit.CREATE)
    with pytest.raises(ValueError, match="exists"):
        await store.insert_key(record, clash)  # the insert fails: its event is not kept

    def refuse(_: KeyRecord) -> KeyRecord:
        raise RuntimeError("mutate refused")

    with pytest.raises(RuntimeError):
        await store.update_key(record.id, refuse, audit=lambda o, n: make_event(n))
    assert await store.audit_events(10) == []
    assert (await store.get_key(record.id)) == record


async def test_audit_events_page_and_filter_by_key(store: Store) -> None:
    a, b = make_record(3), make_record(4)
    start = BASE_TIME
    for n in range(5):
        for record in (a, b):
            event = make_event(record, at=start + timedelta(seconds=n))
            if n == 0:
                await store.insert_key(record, event)
            else:
                await store.update_key(record.id, lambda r: r, audit=constant(event))
    first = await store.audit_events(4)
    assert len(first) == 4 and [e.at for e in first] == sorted((e.at for e in first), reverse=True)
    rest = await store.audit_events(100, before=first[-1].sort_key)
    assert len(rest) == 6 and not {e.id for e in rest} & {e.id for e in first}
    only_a = await store.audit_events(100, key_id=a.id)
    assert len(only_a) == 5 and {e.key_id for e in only_a} == {a.id}


async def test_purge_removes_only_old_events(store: Store) -> None:
    record = make_record(5)
    old = make_event(record, audit.CREATE, at=BASE_TIME - timedelta(days=100))
    await store.insert_key(record, old)
    recent = make_event(record, at=BASE_TIME)
    await store.update_key(record.id, lambda r: r, audit=constant(recent))
    assert await store.purge_audit(BASE_TIME - timedelta(days=90)) == 1
    assert await store.audit_events(10) == [recent]
    assert await store.audit_events(10, key_id=record.id) == [recent]
    assert await store.purge_audit(BASE_TIME - timedelta(days=90)) == 0
