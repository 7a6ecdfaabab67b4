"""Virgin mode (SPEC §4): a key learns its first addresses, then locks; the caps hold
exactly across replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.keys.policy import virgin_use
from broker.support.timeutil import utcnow
from tests.harness.keys import create_key, make_record
from tests.helpers import shown_record, token_status

#: The caps are the store's atomic read-modify-write, across replicas.
pytestmark = pytest.mark.both_stores


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


async def test_virgin_cap_is_atomic_across_replicas(replicas: Any) -> None:
    nodes = await replicas(3)
    key, created = await create_key(nodes[0], virgin_mode=True, max_whitelist_ips=2)
    ips = [f"127.0.0.{i}" for i in range(2, 10)]
    statuses = await asyncio.gather(
        *(token_status(nodes[i % 3], key, ip) for i, ip in enumerate(ips))
    )
    assert sorted(statuses) == [200, 200] + [403] * 6
    rec = await shown_record(nodes[0], created["id"])
    assert len(rec["ip_whitelist"]) == 2 and set(rec["ip_whitelist"]) <= set(ips)
    assert rec["locked"] is True and rec["request_count"] == 2
    learned = rec["ip_whitelist"][0]
    assert await token_status(nodes[1], key, learned) == 200
    unlearned = next(ip for ip in ips if ip not in rec["ip_whitelist"])
    assert await token_status(nodes[2], key, unlearned) == 403


async def test_virgin_request_limit_counts_exactly(replicas: Any) -> None:
    nodes = await replicas(2)
    key, created = await create_key(nodes[0], virgin_mode=True, virgin_until_n_requests=5)
    statuses = await asyncio.gather(
        *(token_status(nodes[i % 2], key, "127.0.0.2") for i in range(20))
    )
    assert statuses == [200] * 20
    rec = await shown_record(nodes[0], created["id"])
    assert rec["request_count"] == 20 and rec["locked"] is True
    assert rec["ip_whitelist"] == ["127.0.0.2"] and rec["last_used_at"] is not None
    assert await token_status(nodes[1], key, "127.0.0.3") == 403


async def test_virgin_both_limits_first_one_wins(replicas: Any) -> None:
    (c,) = await replicas()
    key, created = await create_key(
        c, virgin_mode=True, virgin_until_n_requests=3, max_whitelist_ips=5
    )
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
        assert await token_status(c, key, ip) == 200
    rec = await shown_record(c, created["id"])
    assert rec["locked"] is True and rec["ip_whitelist"] == ["127.0.0.2", "127.0.0.3"]
    assert await token_status(c, key, "127.0.0.4") == 403
