"""The brute-force guard (SPEC §8): failures per client address, counted across
replicas, refuse the attacker and nobody else, and never Cube's callback."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.keys import create_key
from tests.helpers import TOKEN_PATH, assert_error, from_ip, token_status

#: Failures are counted in the store, across replicas.
pytestmark = pytest.mark.both_stores


async def test_brute_force_guard(replicas: Any) -> None:
    a, b = await replicas(2)
    key, _ = await create_key(a)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    statuses = [await token_status((a, b)[i % 2], wrong, "127.0.0.2") for i in range(20)]
    assert statuses == [401] * 20  # never trips below 20 failures a minute
    for i in range(20):
        if await token_status((a, b)[i % 2], wrong, "127.0.0.2") == 429:
            break
    else:
        pytest.fail("the guard never refused the attacking address")
    async with (
        from_ip("127.0.0.2") as s,
        s.post(a.make_url(TOKEN_PATH), headers={"X-API-KEY": wrong}) as r,
    ):
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
    assert await token_status(a, key, "127.0.0.3") == 200  # the key holder elsewhere is unaffected
    assert await token_status(b, key, "127.0.0.4") == 200


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
