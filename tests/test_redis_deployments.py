"""The broker on the Redis that replicated deployments run (SPEC §2, §9): two replicas on
a real Cluster, an acknowledged key surviving the SIGKILL of a Sentinel master and of a
Cluster master, a change no replica acknowledged reported as ``store_unavailable``, TLS
with a client certificate, and the password read from a file at every reconnect.

The store contract itself runs on Cluster and Sentinel in ``tests/test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.app import create_app
from broker.errors import StoreUnavailable
from broker.keys.cache import KeyCache
from broker.keys.record import KeyRecord
from broker.keys.verify import KeyVerifier
from broker.store import open_store
from broker.store.redis_connect import RedisOptions
from tests.harness.keys import add_key, create_key, make_record
from tests.harness.ports import free_port
from tests.harness.redis import RedisServer, start_redis
from tests.harness.redis_cluster import ClusterServers, start_redis_cluster
from tests.harness.redis_sentinel import start_redis_sentinel
from tests.harness.redis_tls import TlsFiles, make_tls_material, start_tls_redis
from tests.harness.settings import make_settings
from tests.harness.waiting import wait_until
from tests.helpers import ADMIN, TOKEN_PATH, AiohttpClient, Client, assert_error, from_ip

pytestmark = pytest.mark.timeout(120)

#: A key in the slot of every key record (``{k}``), whose master the key writes wait on.
RECORDS_SLOT = "broker:{k}:keys"
#: A key to create through the admin API.
_KEY_BODY = {"name": "k", "rights": ["semantic_model.*"]}


async def replicas_on(aiohttp_client: AiohttpClient, url: str, n: int = 2) -> list[Client]:
    settings = make_settings(BROKER_STORE=url)
    return [await aiohttp_client(create_app(settings)) for _ in range(n)]


async def test_two_replicas_share_a_redis_cluster(
    aiohttp_client: AiohttpClient, redis_cluster: ClusterServers
) -> None:
    redis_cluster.flushall()
    a, b = await replicas_on(aiohttp_client, redis_cluster.url)
    key, record = await create_key(a, rate_limit_per_minute=5)
    # one token for one key and model, whichever replica is asked
    answers = await asyncio.gather(
        *(c.post(TOKEN_PATH, headers={"X-API-KEY": key}) for c in [a, b] * 2)
    )
    assert {a.status for a in answers} == {200}
    tokens = {(await r.json())["token"] for r in answers}
    assert len(tokens) == 1
    # the rate limit counts across replicas: 5 a minute, 4 used above
    more = [await c.post(TOKEN_PATH, headers={"X-API-KEY": key}) for c in (a, b)]
    assert [r.status for r in more] == [200, 429]
    # virgin-mode cap exact under concurrency from several addresses
    virgin, _ = await create_key(a, virgin_mode=True, max_whitelist_ips=2)

    async def from_address(c: Client, ip: str) -> int:
        async with (
            from_ip(ip) as s,
            s.post(c.make_url(TOKEN_PATH), headers={"X-API-KEY": virgin}) as r,
        ):
            return r.status

    statuses = await asyncio.gather(
        *(from_address((a, b)[n % 2], f"127.0.0.{n + 2}") for n in range(6))
    )
    assert sorted(statuses) == [200, 200, 403, 403, 403, 403]
    # a revoke on one replica reaches the other within a second
    assert (await a.delete(f"/admin/api-keys/{record['id']}", headers=ADMIN)).status == 204
    started = time.monotonic()
    while (await b.post(TOKEN_PATH, headers={"X-API-KEY": key})).status != 401:
        assert time.monotonic() - started < 1.0, "the revoke did not reach the other replica"
        await asyncio.sleep(0.02)
    # the per-request keys spread over the shards; the records share one
    spread = redis_cluster.keys_per_node("broker:*")
    assert sum(1 for n in spread.values() if n) > 1, spread
    records = redis_cluster.keys_per_node("broker:{k}:*")
    assert sum(1 for n in records.values() if n) == 1, records


def test_an_acknowledged_key_survives_the_sigkill_of_its_sentinel_master(tmp_path: Path) -> None:
    # two replicas: once one is promoted the other still acknowledges writes (WAIT 1); with
    # one, the new master has none and every write is rightly store_unavailable
    with start_redis_sentinel(replicas=2) as deployment:

        async def scenario() -> float:
            store = open_store(deployment.url)
            try:
                made = [await add_key(store, name=f"k{n}") for n in range(20)]
                old = deployment.kill_master()  # at once: no time for anything but WAIT
                failover = await asyncio.to_thread(deployment.wait_for_failover, old, 30)
                print(f"\nsentinel failover: the new master after {failover:.2f} s")
                verifier = KeyVerifier(KeyCache(store))
                started = time.monotonic()
                while True:
                    try:
                        await add_key(store, name="after")
                        break
                    except StoreUnavailable:
                        assert time.monotonic() - started < 15, "no writes 15 s after promotion"
                        await asyncio.sleep(0.1)
                writes_again = time.monotonic() - started
                print(f"writes again {writes_again:.2f} s after the promotion was seen")
                for plaintext, _ in made:
                    assert (await verifier.authenticate(plaintext)).name.startswith("k")
                return writes_again
            finally:
                await store.close()

        assert asyncio.run(scenario()) < 15


def _count_up(record: KeyRecord) -> KeyRecord:
    return dataclasses.replace(record, request_count=record.request_count + 1)


@pytest.fixture
def cluster_to_crash() -> Iterator[ClusterServers]:
    """A private three-master Cluster with a replica per master, for a test that kills one."""
    with start_redis_cluster(replicas_per_master=1) as cluster:
        yield cluster


async def test_an_acknowledged_key_survives_the_sigkill_of_its_cluster_master(
    aiohttp_client: AiohttpClient, cluster_to_crash: ClusterServers
) -> None:
    cluster = cluster_to_crash
    (a,) = await replicas_on(aiohttp_client, cluster.url, 1)
    made = [await create_key(a, name=f"k{n}") for n in range(20)]  # each answered 201
    old = cluster.slot_master(RECORDS_SLOT)
    cluster.kill(old)  # at once: no time for anything but WAIT
    killed = time.monotonic()
    failover = await asyncio.to_thread(cluster.wait_for_failover, old, RECORDS_SLOT, 30)
    print(f"\ncluster failover: the slot's new master after {failover:.2f} s")
    started = time.monotonic()
    while True:
        resp = await a.post("/admin/api-keys", json=_KEY_BODY, headers=ADMIN)
        if resp.status == 201:
            break
        await assert_error(resp, 503, "store_unavailable")
        assert time.monotonic() - started < 15, "no writes 15 s after promotion"
        await asyncio.sleep(0.1)
    writes_again = time.monotonic() - started
    print(
        f"writes again {writes_again:.2f} s after the promotion was seen "
        f"({time.monotonic() - killed:.2f} s after the kill)"
    )
    (b,) = await replicas_on(aiohttp_client, cluster.url, 1)  # nothing cached in memory
    for plaintext, _ in made:
        assert (await b.post(TOKEN_PATH, headers={"X-API-KEY": plaintext})).status == 200
    assert writes_again < 15


async def _serving_a_key(aiohttp_client: AiohttpClient, cluster: ClusterServers) -> Client:
    """A broker on the emptied ``cluster`` that made one key there (its writes work)."""
    cluster.flushall()
    (broker,) = await replicas_on(aiohttp_client, cluster.url, 1)
    await create_key(broker, name="before")
    return broker


async def test_a_change_no_cluster_replica_acknowledged_is_store_unavailable(
    aiohttp_client: AiohttpClient, redis_cluster_replicated: ClusterServers
) -> None:
    cluster = redis_cluster_replicated
    a = await _serving_a_key(aiohttp_client, cluster)
    replicas = cluster.replicas_of(cluster.slot_master(RECORDS_SLOT))
    assert replicas, "the slot's master has no replica"
    for port in replicas:
        cluster.server(port).pause()
    try:
        resp = await a.post(
            "/admin/api-keys",
            json=_KEY_BODY,
            headers=ADMIN,
        )
        await assert_error(resp, 503, "store_unavailable")
    finally:
        for port in replicas:
            cluster.server(port).resume()
    started = time.monotonic()
    while (await a.post("/admin/api-keys", json=_KEY_BODY, headers=ADMIN)).status != 201:
        assert time.monotonic() - started < 10, "no acknowledged writes after the resume"
        await asyncio.sleep(0.05)
    await asyncio.to_thread(cluster.wait_until_ok)


async def test_concurrent_waited_writes_on_a_cluster_lose_nothing(
    redis_cluster_replicated: ClusterServers,
) -> None:
    cluster = redis_cluster_replicated
    cluster.flushall()
    master = cluster.server(cluster.slot_master(RECORDS_SLOT))

    def waits() -> int:
        with master.client() as client:
            return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    before = waits()
    store, other = open_store(cluster.url), open_store(cluster.url)
    try:
        record = make_record()
        await store.insert_key(record)
        start = await store.key_changes(None)
        results = await asyncio.gather(
            *(s.update_key(record.id, _count_up) for s in (store, other) for _ in range(15))
        )
        final = await other.get_key(record.id)
        assert final is not None and final.version == record.version + 30
        versions = sorted(r.version for r in results if r is not None)
        assert versions == list(range(record.version + 1, record.version + 31))
        changes = await other.key_changes(start.seq)
        assert changes.public_ids == (record.public_id,) * 30
    finally:
        await store.close()
        await other.close()
    # every write that won waited on the slot's master (the insert and the 30 updates)
    assert waits() - before >= 31


async def test_a_write_redirected_by_a_cluster_failover_is_unavailable_then_rediscovered(
    aiohttp_client: AiohttpClient, redis_cluster_replicated: ClusterServers
) -> None:
    cluster = redis_cluster_replicated
    a = await _serving_a_key(aiohttp_client, cluster)
    old = cluster.slot_master(RECORDS_SLOT)
    (replica,) = cluster.replicas_of(old)
    with cluster.server(replica).client() as promoted:
        promoted.execute_command("CLUSTER", "FAILOVER")  # graceful: nothing is lost

    def demoted() -> bool:
        with cluster.server(old).client() as client:
            return bool(client.info("replication")["role"] == "slave")

    await wait_until(demoted, 10)
    # the broker still sends the write to the old master, which answers MOVED: never
    # resent elsewhere (its WAIT would count nothing), reported unavailable
    resp = await a.post("/admin/api-keys", json=_KEY_BODY, headers=ADMIN)
    await assert_error(resp, 503, "store_unavailable")
    # and the next write finds the new master, and waits for its replica, the old one
    await create_key(a, name="after")
    await asyncio.to_thread(cluster.wait_until_ok)


async def test_a_cluster_no_node_of_which_answers_is_unavailable() -> None:
    store = open_store(f"redis+cluster://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.ping()
        assert "127.0.0.1" not in str(refused.value)
    finally:
        await store.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_material(tmp_path / "tls")


async def test_tls_with_a_client_certificate_and_a_ca(tls_files: TlsFiles) -> None:
    options = RedisOptions(
        tls_ca_file=tls_files.ca_cert,
        tls_cert_file=tls_files.client_cert,
        tls_key_file=tls_files.client_key,
    )
    with start_tls_redis(tls_files) as server:
        store = open_store(server.url, redis_options=options)
        try:
            _, record = await add_key(store)
            assert (await store.find_key(record.public_id)) == record
        finally:
            await store.close()
        # without the client certificate the server refuses
        bare = open_store(server.url, redis_options=RedisOptions(tls_ca_file=tls_files.ca_cert))
        try:
            with pytest.raises(StoreUnavailable):
                await bare.ping()
        finally:
            await bare.close()
    with start_tls_redis(tls_files, rogue=True) as rogue:  # a CA that signed nothing of it
        store = open_store(rogue.url, redis_options=options)
        try:
            with pytest.raises(StoreUnavailable):
                await store.ping()
        finally:
            await store.close()


async def test_the_password_file_is_read_at_every_reconnect(tmp_path: Path) -> None:
    with start_redis(password="first-password-0123") as server:
        secret = tmp_path / "redis-password"
        secret.write_text("first-password-0123\n")
        url = server.url_for(username="broker", password=None)
        server.set_user("broker", "first-password-0123")
        store = open_store(url, redis_options=RedisOptions(password_file=secret))
        try:
            await store.ping()
            server.set_user("broker", "second-password-4567")  # rotated in Redis …
            secret.write_text("second-password-4567\n")  # … and in the mounted Secret
            server.drop_clients()

            async def answers() -> bool:
                try:
                    await store.ping()
                except StoreUnavailable:
                    return False
                return True

            await wait_until(answers, within=5)
            _, record = await add_key(store)
            assert await store.get_key(record.id) == record
        finally:
            await store.close()


def test_no_password_reaches_an_error_or_a_log(caplog: pytest.LogCaptureFixture) -> None:
    from broker.errors import ConfigError
    from broker.settings import Settings

    with pytest.raises(ConfigError) as refused:
        Settings.load({**_base(), "BROKER_STORE": "redis+sentinel://:hunter2-secret@h1:1"})
    assert "hunter2-secret" not in str(refused.value)


def _base() -> dict[str, str]:
    return {"CUBEJS_API_SECRET": "s" * 40, "BROKER_CALLBACK_SECRET": "c" * 20}


async def test_a_write_retried_after_a_lost_reply_is_a_write_of_its_own(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried key write that finds itself already done (its reply was lost) writes
    again, so the ``WAIT`` on the retry's connection covers the first write too: without
    that, it would count the replicas at once, for a write none may hold yet."""
    redis_server.flushall()
    monkeypatch.setattr("broker.store.redis.secrets.token_hex", lambda _: "one-nonce")
    store = open_store(redis_server.url)
    try:
        record = make_record()
        await store.insert_key(record)

        def writes() -> int:
            return int(redis_server.client().info("persistence")["rdb_changes_since_last_save"])

        before = writes()
        await store.insert_key(record)  # the same write, retried: found done, no error
        assert writes() > before
        assert await store.find_key(record.public_id) == record
    finally:
        await store.close()
