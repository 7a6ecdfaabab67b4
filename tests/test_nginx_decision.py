"""The real nginx with ``deploy/nginx``'s configuration in front of a stand-in Cube that
records what reaches it, the broker (in process) deciding (SPEC §8, decision mode).

What the stand-in shows and the real Cube cannot: exactly which headers nginx sends
upstream, so that an Athena key provably never reaches Cube. Every refusal is compared
with the broker's own proxy's answer to the same request: through nginx the caller gets
SPEC §3's status and body, not the 500 that ``auth_request`` would make of a 404 or 429.
The same configuration in front of the real Cube: ``tests/e2e/test_nginx.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from broker.app import create_app
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.harness.nginx import start_nginx
from tests.harness.ports import free_port
from tests.harness.process import HTTPProcess
from tests.harness.settings import make_settings
from tests.helpers import Client
from tests.test_rate_limit_headers import NAMES

pytestmark = pytest.mark.timeout(60)

LOAD = "/cubejs-api/v1/load?query=%7B%22measures%22%3A%5B%22orders.count%22%5D%7D"


@pytest.fixture
async def broker(aiohttp_client: Any, cube_url: str, tmp_path: Path) -> Client:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db",
        BROKER_CUBE_URL=cube_url,
        BROKER_TRUSTED_PROXIES="127.0.0.1/32",  # nginx, as in a pod
    )
    c: Client = await aiohttp_client(create_app(settings))
    return c


async def running_nginx(broker_url: str, cube_url: str) -> HTTPProcess:
    """nginx started off the event loop (its readiness poll blocks), which serves the
    in-process broker and stand-in meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, lambda: start_nginx(broker_url=broker_url, cube_url=cube_url)
    )


@pytest.fixture
async def nginx(broker: Client, cube_url: str) -> AsyncIterator[HTTPProcess]:
    process = await running_nginx(str(broker.make_url("")).rstrip("/"), cube_url)
    try:
        yield process
    finally:
        await asyncio.get_running_loop().run_in_executor(None, process.stop)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def token_of(c: Client, key: str) -> str:
    resp = await c.post("/api/v0/semantic-model/orders/generate-token", headers={"X-API-KEY": key})
    token: str = (await resp.json())["token"]
    return token


async def call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, bytes, Any]:
    """One request, ``url`` sent as written (``%3A`` stays ``%3A``)."""
    async with session.request(method, URL(url, encoded=True), **kwargs) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_a_token_and_a_key_get_data_and_cube_never_sees_the_key(
    broker: Client, nginx: HTTPProcess, fake: FakeCube, session: aiohttp.ClientSession
) -> None:
    key, _ = await create_key(broker)
    token = await token_of(broker, key)
    secret = key.split(".", 1)[1]
    ways = [
        {"Authorization": token},
        {"Authorization": f"Bearer {token}"},
        {"X-API-KEY": key, "X-Semantic-Model": "orders"},
        {"Authorization": f"Bearer {key}", "X-Semantic-Model": "orders"},
        # every other place a key could be put is dropped too
        {"Authorization": f"Bearer {key}", "X-Semantic-Model": "orders", "X-Athena-Key": key,
         "apikey": key, "Cookie": f"key={key}"},
    ]  # fmt: skip
    for n, headers in enumerate(ways, start=1):
        status, body, answer = await call(
            session, "GET", nginx.url + LOAD, headers={**headers, "X-Request-Id": f"way-{n}"}
        )
        assert status == 200, body
        assert json.loads(body) == fake.body
        assert answer["X-Request-Id"] == f"way-{n}"
        seen = fake.seen[-1]
        assert seen.raw_path == LOAD
        assert seen.headers["Authorization"] == token
        assert seen.headers["X-Request-Id"] == f"way-{n}"
        for name, value in seen.headers.items():
            assert "ath_" not in value and secret not in value, name
        for name in ("X-API-Key", "X-Athena-Key", "apikey", "X-Semantic-Model", "Cookie"):
            assert name not in seen.headers
    assert len(fake.seen) == len(ways)


async def test_a_body_reaches_cube_intact_and_the_broker_never_reads_it(
    broker: Client, nginx: HTTPProcess, fake: FakeCube, session: aiohttp.ClientSession
) -> None:
    key, _ = await create_key(broker)
    raw = b'{"query": {"measures": ["orders.count"]}, "x": "\\u00e9"}'
    status, _, _ = await call(
        session, "POST", nginx.url + "/cubejs-api/v1/load", data=raw,
        headers={"X-API-KEY": key, "X-Semantic-Model": "orders",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 200
    assert fake.seen[-1].body == raw
    assert fake.seen[-1].method == "POST"


async def test_refusals_come_through_with_the_brokers_status_and_body(
    broker: Client, nginx: HTTPProcess, fake: FakeCube, session: aiohttp.ClientSession
) -> None:
    reader, _ = await create_key(broker, rights=["semantic_model.meta.read"])
    limited, _ = await create_key(broker, rate_limit_per_minute=1)
    as_reader = {"X-API-KEY": reader, "X-Semantic-Model": "orders"}
    cases: list[tuple[str, str, dict[str, str]]] = [
        ("GET", LOAD, {"Authorization": "garbage"}),
        ("GET", LOAD, {}),
        ("GET", "/cubejs-api/v1/other", as_reader),
        ("GET", "/cubejs-api/v2/load", {}),
        ("POST", "/cubejs-api/v1/meta", as_reader),
        ("GET", LOAD, as_reader),
        ("GET", LOAD, {"X-API-KEY": reader}),
        ("GET", "/cubejs-api/v1/meta", {"X-API-KEY": reader, "X-Semantic-Model": "nope"}),
        ("GET", LOAD, {"X-API-KEY": limited, "X-Semantic-Model": "orders"}),  # allowed
        ("GET", LOAD, {"X-API-KEY": limited, "X-Semantic-Model": "orders"}),  # 429
    ]
    statuses = []
    for n, (method, target, headers) in enumerate(cases):
        # from an address of its own each, so failures never trip the brute-force guard
        headers = {**headers, "X-Forwarded-For": f"198.51.100.{n + 1}"}
        status, body, answer = await call(session, method, nginx.url + target, headers=headers)
        statuses.append(status)
        if status == 200:
            continue
        assert answer["Content-Type"] == "application/json; charset=utf-8"
        direct = await broker.request(method, URL(target, encoded=True), headers=headers)
        if status != 429:  # the direct call would be counted, and refused, again
            assert (status, json.loads(body)) == (direct.status, await direct.json())
            assert answer.get("Allow") == direct.headers.get("Allow")
        assert json.loads(body)["status"] == "error"
        if status == 401:
            assert answer["WWW-Authenticate"] == "Bearer"
        if status == 429:
            assert json.loads(body)["error"] == "rate_limited"
            assert int(answer["Retry-After"]) >= 1
    assert statuses == [401, 401, 404, 404, 405, 403, 400, 404, 200, 429]
    assert len(fake.seen) == 1


def rate_limit_of(answer: Any) -> tuple[str, ...] | None:
    """The three ``RateLimit-*`` values nginx passed on, each exactly once, or ``None``
    when it sent none of them."""
    counts = [len(answer.getall(name, [])) for name in NAMES]
    if counts == [0, 0, 0]:
        return None
    assert counts == [1, 1, 1], dict(zip(NAMES, counts, strict=True))
    return tuple(answer[name] for name in NAMES)


async def test_the_brokers_rate_limit_headers_come_through(
    broker: Client, nginx: HTTPProcess, fake: FakeCube, session: aiohttp.ClientSession
) -> None:
    """SPEC §4 through nginx: the decision's ``RateLimit-*`` on Cube's answers (of any
    status) and on the broker's 429, with ``Retry-After``; none for a key without a limit."""
    limited, _ = await create_key(broker, rate_limit_per_minute=3)
    unlimited, _ = await create_key(broker)
    by_key = {"X-API-KEY": limited, "X-Semantic-Model": "orders"}
    token = await token_of(broker, limited)  # counted: 2 left
    fake.answer_headers = {"RateLimit-Limit": "1000"}  # Cube's own would be hidden
    status, _, answer = await call(
        session, "GET", nginx.url + LOAD, headers={"Authorization": token}
    )
    assert (status, rate_limit_of(answer)) == (200, ("3", "1", "40"))
    fake.status, fake.body = 400, {"error": "Unknown member"}  # Cube's own refusal
    status, _, answer = await call(session, "GET", nginx.url + LOAD, headers=by_key)
    assert (status, rate_limit_of(answer)) == (400, ("3", "0", "60"))
    status, body, answer = await call(session, "GET", nginx.url + LOAD, headers=by_key)
    assert (status, rate_limit_of(answer)) == (429, ("3", "0", "60"))
    assert json.loads(body)["error"] == "rate_limited"
    assert 1 <= int(answer["Retry-After"]) <= 20
    assert len(fake.seen) == 2

    fake.status, fake.answer_headers = 200, {}
    for headers in (
        {"X-API-KEY": unlimited, "X-Semantic-Model": "orders"},
        {"Authorization": await token_of(broker, unlimited)},
        {"Authorization": "garbage"},  # nobody authenticated
    ):
        status, _, answer = await call(session, "GET", nginx.url + LOAD, headers=headers)
        assert status in (200, 401)
        assert rate_limit_of(answer) is None, (status, dict(answer))


async def test_what_nginx_answers_itself_is_json(
    broker: Client, nginx: HTTPProcess, session: aiohttp.ClientSession
) -> None:
    for method, path, data, status, code in (
        ("GET", "/", None, 404, "not_found"),
        ("GET", "/auth/v1/cube/cubejs-api/v1/load", None, 404, "not_found"),
        (
            "POST",
            "/cubejs-api/v1/load",
            io.BytesIO(b"x" * (1024 * 1024 + 1)),
            413,
            "payload_too_large",
        ),
    ):
        got, body, answer = await call(session, method, nginx.url + path, data=data)
        assert got == status
        assert answer["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(body)["error"] == code


async def test_the_brokers_api_is_reachable_through_nginx(
    broker: Client, nginx: HTTPProcess, session: aiohttp.ClientSession
) -> None:
    key, _ = await create_key(broker)
    status, body, _ = await call(
        session, "POST", nginx.url + "/api/v0/semantic-model/orders/generate-token",
        headers={"X-API-KEY": key},
    )  # fmt: skip
    assert status == 200
    assert json.loads(body)["token"] == await token_of(broker, key)
    assert (await call(session, "GET", nginx.url + "/readyz"))[0] == 200


async def test_cube_down_is_502_json(
    broker: Client, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key, _ = await create_key(broker)
    broker_url = str(broker.make_url("")).rstrip("/")
    nowhere = f"http://127.0.0.1:{free_port()}"
    process = await running_nginx(broker_url, nowhere)
    try:
        status, body, _ = await call(
            session, "GET", process.url + LOAD,
            headers={"X-API-KEY": key, "X-Semantic-Model": "orders"},
        )  # fmt: skip
    finally:
        await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert status == 502
    assert json.loads(body)["error"] == "bad_gateway"


async def test_no_decision_is_502_json_and_forwards_nothing(
    cube_url: str, fake: FakeCube, session: aiohttp.ClientSession
) -> None:
    process = await running_nginx(f"http://127.0.0.1:{free_port()}", cube_url)
    try:
        status, body, _ = await call(session, "GET", process.url + LOAD)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, process.stop)
    assert status == 502
    assert json.loads(body) == {
        "status": "error",
        "message": "The broker gave no decision.",
        "error": "bad_gateway",
    }
    assert fake.seen == []
