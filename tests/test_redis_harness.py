"""The Redis harness keeps its promises: a whole cluster whose keys land on several
masters, a Sentinel deployment that fails over, a TLS-only server that checks
certificates both ways, a password changed at run time and an ACL user."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel

from tests.harness.redis import start_redis
from tests.harness.redis_cluster import start_redis_cluster
from tests.harness.redis_sentinel import start_redis_sentinel
from tests.harness.redis_tls import TlsFiles, make_tls_material, start_tls_redis


def test_cluster_is_whole_and_spreads_keys_over_its_masters() -> None:
    with start_redis_cluster(masters=3) as cluster:
        ports = [port for _host, port in cluster.nodes]
        assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        assert sorted(cluster.masters()) == sorted(ports)
        for port in ports:
            with cluster.server(port).client() as node:
                info = node.cluster("INFO")
                assert info["cluster_state"] == "ok"
                assert int(info["cluster_slots_assigned"]) == 16384

        keys = [f"spread:{i}" for i in range(30)]
        assert len({key_slot(key.encode()) for key in keys}) == len(keys)
        client = RedisCluster(host="127.0.0.1", port=ports[0], socket_timeout=5)
        try:
            for key in keys:
                client.set(key, "1")
        finally:
            client.close()
        placed = cluster.keys_per_node("spread:*")
        assert sum(placed.values()) == len(keys)
        assert all(count > 0 for count in placed.values()), placed

        cluster.flushall()
        assert sum(cluster.keys_per_node().values()) == 0


def test_sentinel_names_a_new_master_after_the_old_one_dies() -> None:
    with start_redis_sentinel(replicas=1, sentinels=3, password="data-secret") as deployment:
        ports = [port for _host, port in deployment.sentinels]
        addresses = ",".join(f"127.0.0.1:{port}" for port in ports)
        assert deployment.url == f"redis+sentinel://:data-secret@{addresses}/mymaster/0"
        assert deployment.service_name == "mymaster"

        old = deployment.kill_master()
        seconds = deployment.wait_for_failover(old)
        print(f"sentinel failover took {seconds:.2f} s")
        assert deployment.master_port() != old

        # redis-py's Sentinel is untyped; the broker's client does what it does.
        sentinel = Sentinel(deployment.sentinels, socket_timeout=2)  # type: ignore[no-untyped-call]
        master = sentinel.master_for(  # type: ignore[no-untyped-call]
            "mymaster", password="data-secret", socket_timeout=2
        )
        try:
            assert master.set("after-failover", "1")
            assert master.get("after-failover") == b"1"
        finally:
            master.close()


def _tls_client(port: int, ca: Path, files: TlsFiles, *, with_cert: bool) -> redis.Redis:
    """A TLS client trusting ``ca``, with the client certificate or none; it does not
    retry, so a refusal shows at once."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=str(ca),
        ssl_certfile=str(files.client_cert) if with_cert else None,
        ssl_keyfile=str(files.client_key) if with_cert else None,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def test_tls_server_checks_certificates_both_ways(tmp_path: Path) -> None:
    files = make_tls_material(tmp_path)
    with start_tls_redis(files, require_client_cert=True) as server:
        assert server.url == f"rediss://127.0.0.1:{server.port}/0"
        with _tls_client(server.port, files.ca_cert, files, with_cert=True) as client:
            assert client.ping()
        with (
            _tls_client(server.port, files.ca_cert, files, with_cert=False) as client,
            pytest.raises(redis.exceptions.ConnectionError),
        ):
            client.ping()

    with start_tls_redis(files, rogue=True) as rogue:
        with (
            _tls_client(rogue.port, files.ca_cert, files, with_cert=True) as client,
            pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"),
        ):
            client.ping()
        with _tls_client(rogue.port, files.rogue_ca_cert, files, with_cert=True) as client:
            assert client.ping()


def test_password_changes_at_run_time_and_users_get_their_own() -> None:
    with start_redis(password="first") as server:
        assert server.url == f"redis://:first@127.0.0.1:{server.port}/0"
        with (
            redis.Redis.from_url(server.url_for()) as anonymous,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            anonymous.ping()

        with redis.Redis.from_url(server.url) as kept:
            assert kept.ping()
            server.set_password("second")
            assert kept.ping(), "Redis keeps authenticated connections"
            assert server.drop_clients() >= 1
            with pytest.raises(redis.exceptions.AuthenticationError):
                kept.ping()
        with redis.Redis.from_url(server.url) as current:
            assert server.url == f"redis://:second@127.0.0.1:{server.port}/0"
            assert current.ping()

        server.set_user("broker", "its-own")
        with redis.Redis.from_url(server.url_for("broker", "its-own")) as user:
            assert user.set("k", "v")
            assert user.publish("channel", "m") == 0
