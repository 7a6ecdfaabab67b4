"""Decision mode end to end (SPEC §8): the real nginx with ``deploy/nginx``'s configuration
in front of the real Cube, the session's broker deciding every request (``auth_request``
to ``/auth/v1/cube``), the data flowing from Cube through nginx alone.

An Athena key reaching Cube would be refused there (Cube's ``checkAuth`` takes only the
broker's JWTs: 403 "Invalid token"), so data for a key through nginx shows the key was
replaced by the token; ``tests/test_nginx_decision.py`` checks the headers themselves
against a stand-in that records them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.e2e.conftest import Stack
from tests.e2e.test_through_broker import (
    BY_STATUS,
    CREDENTIALS,
    TOTALS,
    assert_by_status,
    assert_totals,
    credential_headers,
    member_names,
)
from tests.harness.continue_wait import follow
from tests.harness.http import request_json
from tests.harness.keys import create_key_at
from tests.harness.nginx import start_nginx
from tests.harness.process import HTTPProcess
from tests.harness.settings import ADMIN_KEY
from tests.test_nginx_decision import rate_limit_of

#: The session's stack may start within any of these tests.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def nginx(e2e_stack: Stack) -> Iterator[HTTPProcess]:
    with start_nginx(broker_url=e2e_stack.broker.url, cube_url=e2e_stack.cube.url) as process:
        yield process


def load_url(base: str, query: dict[str, Any]) -> URL:
    encoded = quote(json.dumps(query, separators=(",", ":")), safe="")
    return URL(f"{base}/cubejs-api/v1/load?query={encoded}", encoded=True)


def token_for(stack: Stack, key: str) -> str:
    status, body = request_json(
        "POST",
        f"{stack.broker.url}/api/v0/semantic-model/orders/generate-token",
        headers={"X-API-Key": key},
    )
    assert status == 200, body
    token: str = body["token"]
    return token


@pytest.mark.parametrize("way", CREDENTIALS)
async def test_data_for_a_token_and_a_key_through_nginx(
    e2e_stack: Stack, nginx: HTTPProcess, way: str
) -> None:
    headers = {**credential_headers(e2e_stack, way), "X-Request-Id": f"nginx-{way}"}
    base = f"{nginx.url}/cubejs-api/v1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        status, meta, resp = await follow(session, "GET", f"{base}/meta", headers)
        assert status == 200, meta
        assert resp.headers["X-Request-Id"] == f"nginx-{way}"
        assert {"orders.count", "orders.total_amount", "orders.status"} <= member_names(meta)

        status, body, _ = await follow(session, "GET", load_url(nginx.url, TOTALS), headers)
        assert status == 200, body
        assert_totals(body)
        status, body, resp = await follow(
            session, "POST", f"{base}/load", headers, body={"query": BY_STATUS}
        )
        assert status == 200, body
        assert resp.content_type == "application/json"
        assert_by_status(body)


async def test_refusals_keep_their_status_and_body(e2e_stack: Stack, nginx: HTTPProcess) -> None:
    """401 for garbage, the route check's 404 and 405 (not auth_request's 500), the right's
    403, in SPEC §3's JSON; each from an address of its own (the broker believes nginx's
    X-Forwarded-For), so the brute-force guard blocks no later test."""
    key = {"X-API-KEY": e2e_stack.athena_key, "X-Semantic-Model": "orders"}
    cases = [
        ("GET", "/cubejs-api/v1/meta", {"Authorization": "garbage"}, 401, "unauthorized"),
        ("GET", "/cubejs-api/v1/meta", {"Authorization": "Bearer a.b.c"}, 401, "unauthorized"),
        ("GET", "/cubejs-api/v1/meta", {"X-API-KEY": "ath_x.y"}, 401, "unauthorized"),
        ("GET", "/cubejs-api/v1/other", key, 404, "not_found"),
        ("GET", "/cubejs-api/v1/load/x", key, 404, "not_found"),
        ("POST", "/cubejs-api/v1/meta", key, 405, "method_not_allowed"),
        ("GET", "/cubejs-api/v1/meta", {"X-API-KEY": e2e_stack.athena_key}, 400, "bad_request"),
        ("GET", "/cubejs-api/v1/meta", {**key, "X-Semantic-Model": "nope"}, 404, "not_found"),
    ]
    async with aiohttp.ClientSession() as session:
        for n, (method, path, headers, status, code) in enumerate(cases, start=1):
            headers = {**headers, "X-Forwarded-For": f"192.0.2.{100 + n}"}
            async with session.request(method, nginx.url + path, headers=headers) as resp:
                body = await resp.json(content_type=None)
                assert (resp.status, body["error"]) == (status, code), (path, body)
                assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
                assert set(body) == {"status", "message", "error"}
                if status == 401:
                    assert resp.headers["WWW-Authenticate"] == "Bearer"
                if status == 405:
                    assert resp.headers["Allow"] == "GET"


async def test_the_rate_limit_comes_through_as_429(e2e_stack: Stack, nginx: HTTPProcess) -> None:
    """SPEC §4 through nginx in front of the real Cube: ``RateLimit-*`` on Cube's answers,
    counting down, and on the 429 with ``Retry-After``; none for a key without a limit."""
    key, _ = create_key_at(e2e_stack.broker.admin_url, ADMIN_KEY, name="nginx-limited",
                           rate_limit_per_minute=2)  # fmt: skip
    headers = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    url = f"{nginx.url}/cubejs-api/v1/meta"
    seen = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(3):
            async with session.get(url, headers=headers) as resp:
                limit = rate_limit_of(resp.headers)
                assert limit is not None, (resp.status, dict(resp.headers))
                seen.append((resp.status, limit[0], limit[1]))
                assert 1 <= int(limit[2]) <= 60, limit
                body = await resp.json()
        assert body["error"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 30
        assert seen == [(200, "2", "1"), (200, "2", "0"), (429, "2", "0")]
        unlimited = {"X-API-KEY": e2e_stack.athena_key, "X-Semantic-Model": "orders"}
        async with session.get(url, headers=unlimited) as resp:
            assert resp.status == 200, await resp.text()
            assert rate_limit_of(resp.headers) is None, dict(resp.headers)


async def test_a_revoked_keys_token_is_refused_within_a_second(
    e2e_stack: Stack, nginx: HTTPProcess
) -> None:
    key, record = create_key_at(e2e_stack.broker.admin_url, ADMIN_KEY, name="nginx-revoked")
    token = token_for(e2e_stack, key)
    url = f"{nginx.url}/cubejs-api/v1/meta"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.get(url, headers={"Authorization": token}) as resp:
            assert resp.status == 200, await resp.text()
        async with session.delete(
            f"{e2e_stack.broker.admin_url}/admin/api-keys/{record['id']}",
            headers={"X-API-Key": ADMIN_KEY},
        ) as resp:
            assert resp.status == 204
        revoked = time.monotonic()
        while True:
            async with session.get(url, headers={"Authorization": token}) as resp:
                if resp.status == 401:
                    assert (await resp.json())["error"] == "unauthorized"
                    break
                assert resp.status == 200, await resp.text()
            assert time.monotonic() - revoked < 1.0, "still served 1 s after the revoke"
            await asyncio.sleep(0.05)


async def test_a_key_alone_at_cube_is_refused_so_nginx_must_replace_it(
    e2e_stack: Stack, nginx: HTTPProcess
) -> None:
    """What Cube does with an Athena key: refuse it. Through nginx the same request gets
    data (test_data_for_a_token_and_a_key_through_nginx), so nginx sent the token."""
    headers = {"Authorization": f"Bearer {e2e_stack.athena_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{e2e_stack.cube.url}/cubejs-api/v1/meta", headers=headers) as resp,
    ):
        assert resp.status == 403, await resp.text()
