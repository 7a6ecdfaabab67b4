"""Key policies across replicas (SPEC §4, §8): IP rules, virgin mode, propagation within
1 s, per-key rate limits, the brute-force guard, usage counts.

Distinct loopback source addresses (127.0.0.2, 127.0.0.3, …) stand for distinct clients;
several app instances on one store stand for replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from broker.app import create_app
from broker.keys.policy import check_ip, poll_identity, virgin_use
from broker.state import STORE, USAGE
from broker.support.netaddr import matches
from broker.support.timeutil import utcnow
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key, make_record
from tests.harness.settings import ADMIN_KEY, make_settings
from tests.helpers import assert_error

ADMIN = {"X-API-Key": ADMIN_KEY}
TOKEN = "/api/v0/semantic-model/orders/generate-token"
Client = TestClient[Any, Any]


@asynccontextmanager
async def from_ip(ip: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose connections leave from ``ip``."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture
def replicas(aiohttp_client: Any, store_url: str) -> Callable[..., Any]:
    async def make(n: int = 1, **env: str) -> list[Client]:
        settings = make_settings(BROKER_STORE=store_url, **env)
        return [await aiohttp_client(create_app(settings)) for _ in range(n)]

    return make


async def mint(c: Client, key: str, ip: str = "127.0.0.1", **headers: str) -> int:
    async with (
        from_ip(ip) as s,
        s.post(c.make_url(TOKEN), headers={"X-API-KEY": key, **headers}) as resp,
    ):
        return resp.status


async def record(c: Client, key_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = await (await c.get(f"/admin/api-keys/{key_id}", headers=ADMIN)).json()
    return doc


# -- pure rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "rules", "expected"),
    [
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.1.2.4"], False),
        ("::ffff:10.1.2.3", ["10.0.0.0/8"], True),
        ("2001:db8::5", ["2001:db8::/32"], True),
        ("2001:db8::5", ["2001:db9::/32", "10.0.0.0/8"], False),
        ("::1", ["::1"], True),
        ("not-an-ip", ["0.0.0.0/0"], False),
    ],
)
def test_matches(ip: str, rules: list[str], expected: bool) -> None:
    assert matches(ip, rules) is expected


def test_blacklist_wins_over_whitelist() -> None:
    from broker.errors import IPNotAllowed

    rec = make_record(ip_whitelist=("10.0.0.0/8",), ip_blacklist=("10.0.0.5",))
    check_ip(rec, "10.0.0.6")
    with pytest.raises(IPNotAllowed):
        check_ip(rec, "10.0.0.5")
    with pytest.raises(IPNotAllowed):
        check_ip(rec, "11.0.0.1")


def test_virgin_rules() -> None:
    from broker.errors import IPNotAllowed, Unauthorized

    now = utcnow()
    rec = make_record(virgin_mode=True, max_whitelist_ips=2, virgin_until_n_requests=0)
    rec = virgin_use(rec, "::ffff:10.0.0.1", now)
    assert rec.ip_whitelist == ("10.0.0.1",) and rec.request_count == 1 and not rec.locked
    rec = virgin_use(rec, "10.0.0.1", now)
    assert rec.ip_whitelist == ("10.0.0.1",) and rec.request_count == 2
    rec = virgin_use(rec, "10.0.0.2", now)
    assert rec.locked and rec.ip_whitelist == ("10.0.0.1", "10.0.0.2")
    with pytest.raises(IPNotAllowed):
        virgin_use(rec, "10.0.0.3", now)
    counted = make_record(virgin_mode=True, virgin_until_n_requests=2)
    counted = virgin_use(virgin_use(counted, "10.0.0.9", now), "10.0.0.9", now)
    assert counted.locked and counted.request_count == 2
    with pytest.raises(IPNotAllowed):
        virgin_use(counted, "10.0.0.8", now)
    with pytest.raises(IPNotAllowed):
        virgin_use(make_record(virgin_mode=True), "not-an-ip", now)
    with pytest.raises(Unauthorized) as refused:  # the stored record is fresher than the cache
        virgin_use(make_record(virgin_mode=True, revoked_at=now), "10.0.0.1", now)
    assert refused.value.reason == "revoked"


def test_poll_identity() -> None:
    load = ("GET", "/cubejs-api/v1/load?query=%7B%7D", b"")
    first, later = poll_identity("3f2a-span-1", *load), poll_identity("3f2a-span-12", *load)
    assert first == later and first is not None and first.startswith("3f2a:")
    assert poll_identity("3f2a-span-2", "GET", "/cubejs-api/v1/load?query=%7B%22a%22%7D") != first
    assert poll_identity("3f2a-span-2", "POST", "/cubejs-api/v1/load", b"{}") != first
    assert poll_identity(None, *load) is None


# -- over HTTP, several replicas -----------------------------------------------------------


async def test_whitelist_and_blacklist(replicas: Any) -> None:
    (c,) = await replicas()
    key, _ = await create_key(c, ip_whitelist=["127.0.0.2", "127.0.0.8/29"])
    assert await mint(c, key, "127.0.0.2") == 200
    assert await mint(c, key, "127.0.0.9") == 200
    assert await mint(c, key, "127.0.0.3") == 403
    blocked, _ = await create_key(c, ip_blacklist=["127.0.0.4/32"])
    assert await mint(c, blocked, "127.0.0.4") == 403
    assert await mint(c, blocked, "127.0.0.5") == 200


async def test_ip_refusal_shape(replicas: Any) -> None:
    (c,) = await replicas()
    key, _ = await create_key(c, ip_whitelist=["10.9.9.9"])
    resp = await c.post(TOKEN, headers={"X-API-KEY": key})
    await assert_error(resp, 403, "ip_not_allowed")


async def test_spoofed_forwarded_for_is_ignored_from_untrusted_peers(replicas: Any) -> None:
    (c,) = await replicas()
    key, _ = await create_key(c, ip_whitelist=["203.0.113.7"])
    assert await mint(c, key, "127.0.0.2", **{"X-Forwarded-For": "203.0.113.7"}) == 403


async def test_forwarded_for_from_trusted_proxy(replicas: Any) -> None:
    (c,) = await replicas(BROKER_TRUSTED_PROXIES="127.0.0.2/32, 10.0.0.0/8")
    key, _ = await create_key(c, ip_whitelist=["203.0.113.7"])
    xff = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.1.1"}
    assert await mint(c, key, "127.0.0.2", **xff) == 200  # right-most untrusted hop
    assert await mint(c, key, "127.0.0.3", **xff) == 403  # peer not trusted


async def test_forwarded_for_in_several_header_lines_is_one_list(replicas: Any) -> None:
    """A proxy that adds its own X-Forwarded-For line (HAProxy's ``option forwardfor``)
    must not let a client's forged first line pass for the client's address."""
    (c,) = await replicas(BROKER_TRUSTED_PROXIES="127.0.0.2/32")
    forged_only, _ = await create_key(c, ip_whitelist=["203.0.113.66"])
    real_blocked, _ = await create_key(c, ip_blacklist=["198.51.100.7"])
    real_allowed, _ = await create_key(c, ip_whitelist=["198.51.100.7"])
    for key, expected in ((forged_only, 403), (real_blocked, 403), (real_allowed, 200)):
        headers = CIMultiDict([("X-API-KEY", key), ("X-Forwarded-For", "203.0.113.66"),
                               ("X-Forwarded-For", "198.51.100.7")])  # fmt: skip
        async with from_ip("127.0.0.2") as s, s.post(c.make_url(TOKEN), headers=headers) as r:
            assert r.status == expected


async def test_an_unreadable_client_address_fails_closed(replicas: Any) -> None:
    (c,) = await replicas(BROKER_TRUSTED_PROXIES="127.0.0.2/32")
    blocked, _ = await create_key(c, ip_blacklist=["198.51.100.7"])
    free, _ = await create_key(c)
    xff = {"X-Forwarded-For": "not-an-ip"}
    assert await mint(c, blocked, "127.0.0.2", **xff) == 403  # a key with IP rules
    assert await mint(c, free, "127.0.0.2", **xff) == 200  # a key without any


async def test_virgin_cap_is_atomic_across_replicas(replicas: Any) -> None:
    nodes = await replicas(3)
    key, created = await create_key(nodes[0], virgin_mode=True, max_whitelist_ips=2)
    ips = [f"127.0.0.{i}" for i in range(2, 10)]
    statuses = await asyncio.gather(*(mint(nodes[i % 3], key, ip) for i, ip in enumerate(ips)))
    assert sorted(statuses) == [200, 200] + [403] * 6
    rec = await record(nodes[0], created["id"])
    assert len(rec["ip_whitelist"]) == 2 and set(rec["ip_whitelist"]) <= set(ips)
    assert rec["locked"] is True and rec["request_count"] == 2
    learned = rec["ip_whitelist"][0]
    assert await mint(nodes[1], key, learned) == 200
    assert await mint(nodes[2], key, next(ip for ip in ips if ip not in rec["ip_whitelist"])) == 403


async def test_virgin_request_limit_counts_exactly(replicas: Any) -> None:
    nodes = await replicas(2)
    key, created = await create_key(nodes[0], virgin_mode=True, virgin_until_n_requests=5)
    statuses = await asyncio.gather(*(mint(nodes[i % 2], key, "127.0.0.2") for i in range(20)))
    assert statuses == [200] * 20
    rec = await record(nodes[0], created["id"])
    assert rec["request_count"] == 20 and rec["locked"] is True
    assert rec["ip_whitelist"] == ["127.0.0.2"] and rec["last_used_at"] is not None
    assert await mint(nodes[1], key, "127.0.0.3") == 403


async def test_virgin_both_limits_first_one_wins(replicas: Any) -> None:
    (c,) = await replicas()
    key, created = await create_key(
        c, virgin_mode=True, virgin_until_n_requests=3, max_whitelist_ips=5
    )
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
        assert await mint(c, key, ip) == 200
    rec = await record(c, created["id"])
    assert rec["locked"] is True and rec["ip_whitelist"] == ["127.0.0.2", "127.0.0.3"]
    assert await mint(c, key, "127.0.0.4") == 403


async def poll_until_refused(call: Callable[[], Any], within: float = 1.0) -> float:
    started = time.monotonic()
    while True:
        status = await call()
        if status in (401, 403):
            return time.monotonic() - started
        assert status == 200
        assert time.monotonic() - started < within, f"still accepted after {within} s"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "change",
    ["revoke", "deactivate", "rights", "whitelist", "expiry", "rotate"],
)
async def test_admin_changes_reach_other_replicas_within_a_second(
    replicas: Any, change: str
) -> None:
    a, b = await replicas(2)
    key, created = await create_key(a)
    assert await mint(b, key) == 200
    path = f"/admin/api-keys/{created['id']}"
    if change == "revoke":
        await a.delete(path, headers=ADMIN)
    elif change == "rotate":
        await a.post(f"{path}/rotate", headers=ADMIN)
    else:
        body = {
            "deactivate": {"is_active": False},
            "rights": {"rights": ["semantic_model.meta.read"]},
            "whitelist": {"ip_whitelist": ["10.0.0.1"]},
            "expiry": {"expires_at": "2099-01-01T00:00:00Z"},
        }[change]
        await a.patch(path, json=body, headers=ADMIN)
    if change == "expiry":  # a change that keeps the key working must not break it
        await asyncio.sleep(0.5)
        assert await mint(b, key) == 200
        return
    await poll_until_refused(lambda: mint(b, key))


async def test_revoked_keys_tokens_refused_on_other_replica(replicas: Any, tmp_path: Path) -> None:
    a, b = await replicas(2)
    key, created = await create_key(a)
    token = (await (await a.post(TOKEN, headers={"X-API-KEY": key})).json())["token"]

    async def use() -> int:
        # 401 once refused; 502 (no Cube behind this broker) while the token is accepted
        resp = await b.get("/cubejs-api/v1/meta", headers={"Authorization": token})
        return 200 if resp.status == 502 else resp.status

    assert await use() == 200
    await a.delete(f"/admin/api-keys/{created['id']}", headers=ADMIN)
    await poll_until_refused(use)


async def test_rate_limit_shared_across_replicas(replicas: Any) -> None:
    nodes = await replicas(2)
    key, _ = await create_key(nodes[0], rate_limit_per_minute=3)
    responses = await asyncio.gather(
        *(nodes[i % 2].post(TOKEN, headers={"X-API-KEY": key}) for i in range(8))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 3 + [429] * 5
    refused = next(r for r in responses if r.status == 429)
    body = await assert_error(refused, 429, "rate_limited")
    assert "3" in body["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    other, _ = await create_key(nodes[0], rate_limit_per_minute=3)
    assert (await nodes[1].post(TOKEN, headers={"X-API-KEY": other})).status == 200


async def test_continue_wait_polls_are_not_counted(
    aiohttp_client: Any, aiohttp_server: Any, store_url: str
) -> None:
    fake = FakeCube(continue_waits=5)
    server = await aiohttp_server(fake.app())
    c = await aiohttp_client(
        create_app(
            make_settings(
                BROKER_STORE=store_url, BROKER_CUBE_URL=str(server.make_url("")).rstrip("/")
            )
        )
    )
    key, _ = await create_key(c, rate_limit_per_minute=2)
    headers = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    statuses = []
    for span in range(1, 7):  # five "Continue wait" answers, then the result
        resp = await c.get(
            "/cubejs-api/v1/load?query=%7B%7D",
            headers={**headers, "X-Request-Id": f"q1-span-{span}"},
        )
        statuses.append(resp.status)
    assert statuses == [200] * 6
    assert len(fake.seen) == 6
    second = await c.get("/cubejs-api/v1/load", headers={**headers, "X-Request-Id": "q2-span-1"})
    assert second.status == 200
    # the poll grace belongs to q1's query, not to its request ID
    other_query = await c.get(
        "/cubejs-api/v1/load?query=%7B%22x%22%3A1%7D",
        headers={**headers, "X-Request-Id": "q1-span-7"},
    )
    await assert_error(other_query, 429, "rate_limited")
    third = await c.get("/cubejs-api/v1/load", headers={**headers, "X-Request-Id": "q3-span-1"})
    await assert_error(third, 429, "rate_limited")


async def test_brute_force_guard(replicas: Any) -> None:
    a, b = await replicas(2)
    key, _ = await create_key(a)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    statuses = [await mint((a, b)[i % 2], wrong, "127.0.0.2") for i in range(20)]
    assert statuses == [401] * 20  # never trips below 20 failures a minute
    for i in range(20):
        if await mint((a, b)[i % 2], wrong, "127.0.0.2") == 429:
            break
    else:
        pytest.fail("the guard never refused the attacking address")
    async with (
        from_ip("127.0.0.2") as s,
        s.post(a.make_url(TOKEN), headers={"X-API-KEY": wrong}) as r,
    ):
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
    assert await mint(a, key, "127.0.0.3") == 200  # the key holder elsewhere is unaffected
    assert await mint(b, key, "127.0.0.4") == 200


async def test_usage_counts_are_batched(replicas: Any) -> None:
    (c,) = await replicas()
    key, created = await create_key(c)
    for _ in range(4):
        assert await mint(c, key) == 200
    feed = await c.app[STORE].key_changes(None)
    await c.app[USAGE].flush()
    rec = await record(c, created["id"])
    assert rec["request_count"] == 4 and rec["last_used_at"] is not None
    # not announced: other replicas need not re-read the key for its counts
    assert (await c.app[STORE].key_changes(feed.seq)).public_ids == ()


async def test_store_outage_fails_closed_then_recovers(aiohttp_client: Any) -> None:
    from tests.harness.redis import start_redis

    server = start_redis()
    try:
        c = await aiohttp_client(create_app(make_settings(BROKER_STORE=server.url)))
        key, _ = await create_key(c, rate_limit_per_minute=1000)
        assert (await c.post(TOKEN, headers={"X-API-KEY": key})).status == 200
        server.kill()
        deadline = time.monotonic() + 10
        while True:
            resp = await c.post(TOKEN, headers={"X-API-KEY": key})
            if resp.status == 503:
                await assert_error(resp, 503, "store_unavailable")
                break
            assert resp.status == 200 and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        server.restart()  # an empty Redis: the test server keeps nothing on disk
        deadline = time.monotonic() + 10
        while (await c.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, "did not recover after the store came back"
            await asyncio.sleep(0.05)
        fresh, _ = await create_key(c)
        assert (await c.post(TOKEN, headers={"X-API-KEY": fresh})).status == 200
    finally:
        server.stop()


async def test_bad_tokens_do_not_cut_cube_off_the_callback(replicas: Any) -> None:
    from tests.harness.settings import CALLBACK_SECRET

    (c,) = await replicas(BROKER_BRUTE_FORCE_LIMIT="20")
    for _ in range(25):
        await c.get("/cubejs-api/v1/meta", headers={"Authorization": "Bearer not.a.jwt"})
    await assert_error(
        await c.get("/cubejs-api/v1/meta", headers={"Authorization": "Bearer x.y.z"}),
        429,
        "rate_limited",
    )
    resp = await c.get("/internal/v1/models", headers={"X-Broker-Callback-Secret": CALLBACK_SECRET})
    assert resp.status == 200
