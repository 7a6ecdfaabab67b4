"""Which address is the client's (SPEC §8): ``X-Forwarded-For`` only from trusted
proxies, read as one list, and an unreadable address failing closed for keys with IP
rules."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from tests.harness.keys import create_key
from tests.helpers import TOKEN_PATH, from_ip, token_status


async def test_spoofed_forwarded_for_is_ignored_from_untrusted_peers(replicas: Any) -> None:
    (c,) = await replicas()
    key, _ = await create_key(c, ip_whitelist=["203.0.113.7"])
    assert await token_status(c, key, "127.0.0.2", **{"X-Forwarded-For": "203.0.113.7"}) == 403


async def test_forwarded_for_from_trusted_proxy(replicas: Any) -> None:
    (c,) = await replicas(BROKER_TRUSTED_PROXIES="127.0.0.2/32, 10.0.0.0/8")
    key, _ = await create_key(c, ip_whitelist=["203.0.113.7"])
    xff = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.1.1"}
    assert await token_status(c, key, "127.0.0.2", **xff) == 200  # right-most untrusted hop
    assert await token_status(c, key, "127.0.0.3", **xff) == 403  # peer not trusted


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
        async with from_ip("127.0.0.2") as s, s.post(c.make_url(TOKEN_PATH), headers=headers) as r:
            assert r.status == expected


async def test_an_unreadable_client_address_fails_closed(replicas: Any) -> None:
    (c,) = await replicas(BROKER_TRUSTED_PROXIES="127.0.0.2/32")
    blocked, _ = await create_key(c, ip_blacklist=["198.51.100.7"])
    free, _ = await create_key(c)
    xff = {"X-Forwarded-For": "not-an-ip"}
    assert await token_status(c, blocked, "127.0.0.2", **xff) == 403  # a key with IP rules
    assert await token_status(c, free, "127.0.0.2", **xff) == 200  # a key without any
