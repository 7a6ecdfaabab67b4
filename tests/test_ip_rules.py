"""IP rules of a key (SPEC §4): whitelist and blacklist, IPv4 and IPv6, the refusal."""

from __future__ import annotations

from typing import Any

import pytest

from broker.keys.policy import check_ip
from broker.support.netaddr import matches
from tests.harness.keys import create_key, make_record
from tests.helpers import TOKEN_PATH, assert_error, token_status


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


async def test_whitelist_and_blacklist(replicas: Any) -> None:
    (c,) = await replicas()
    key, _ = await create_key(c, ip_whitelist=["127.0.0.2", "127.0.0.8/29"])
    assert await token_status(c, key, "127.0.0.2") == 200
    assert await token_status(c, key, "127.0.0.9") == 200
    assert await token_status(c, key, "127.0.0.3") == 403
    blocked, _ = await create_key(c, ip_blacklist=["127.0.0.4/32"])
    assert await token_status(c, blocked, "127.0.0.4") == 403
    assert await token_status(c, blocked, "127.0.0.5") == 200


async def test_ip_refusal_shape(replicas: Any) -> None:
    (c,) = await replicas()
    key, _ = await create_key(c, ip_whitelist=["10.9.9.9"])
    resp = await c.post(TOKEN_PATH, headers={"X-API-KEY": key})
    await assert_error(resp, 403, "ip_not_allowed")
