"""The /cubejs-api/v1 proxy and the semantic-model API against a fault-injecting upstream.

The real Cube is exercised in tests/e2e; here a scriptable stand-in makes the slow, broken
and "Continue wait" cases deterministic.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest
from multidict import CIMultiDict
from yarl import URL

from broker.app import create_app
from broker.state import STORE
from broker.store import MintedToken
from tests.fake_cube import FakeCube, raw_upstream
from tests.harness.keys import create_key
from tests.harness.ports import free_port
from tests.harness.settings import ADMIN_KEY, API_SECRET, make_settings
from tests.helpers import Client, assert_error

ADMIN = {"X-API-Key": ADMIN_KEY}
ALL = ["semantic_model.*"]


@pytest.fixture
def broker_env(tmp_path: Path, cube_url: str) -> dict[str, str]:
    return {
        "BROKER_STORE": f"sqlite:///{tmp_path}/broker.db",
        "BROKER_CUBE_URL": cube_url,
        "BROKER_UPSTREAM_TIMEOUT": "1",
        "BROKER_QUERY_TIMEOUT": "2",
        "BROKER_CORS_ORIGINS": "https://dash.example.com",
    }


@pytest.fixture
async def broker(aiohttp_client: Any, broker_env: dict[str, str]) -> Client:
    c: Client = await aiohttp_client(create_app(make_settings(**broker_env)))
    return c


async def token_for(c: Client, rights: list[str] = ALL) -> tuple[str, str]:
    """A new key's token for ``orders``, and the key."""
    key, _ = await create_key(c, rights=rights)
    resp = await c.post("/api/v0/semantic-model/orders/generate-token", headers={"X-API-KEY": key})
    body = await resp.json()
    return body["token"], key


@pytest.mark.parametrize("prefix", ["", "Bearer "])
async def test_token_mode_forwards_intact(broker: Client, fake: FakeCube, prefix: str) -> None:
    token, key = await token_for(broker)
    path = "/cubejs-api/v1/load?query=%7B%22measures%22%3A%5B%22orders.count%22%5D%7D&x=a%3Ab"
    resp = await broker.get(
        URL(path, encoded=True), headers={"Authorization": prefix + token, "X-Request-Id": "rq-1"}
    )
    assert resp.status == 200
    assert await resp.json() == fake.body
    assert resp.headers["X-Cube-Header"] == "kept"
    assert resp.headers["X-Request-Id"] == "rq-1"
    seen = fake.seen[-1]
    assert seen.raw_path == path
    assert seen.headers["Authorization"] == token
    assert seen.headers["X-Request-Id"] == "rq-1"
    assert key.split(".")[1] not in str(seen.headers)


async def test_post_body_and_status_pass_through(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    fake.status, fake.body = 400, {"error": "Unknown member: orders.nope"}
    raw = b'{"query": {"measures": ["orders.nope"]}, "x": "\\u00e9"}'
    resp = await broker.post(
        "/cubejs-api/v1/load",
        data=raw,
        headers={"Authorization": token, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert await resp.json() == {"error": "Unknown member: orders.nope"}
    assert fake.seen[-1].body == raw
    assert fake.seen[-1].method == "POST"


async def test_continue_wait_passes_through_unchanged(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    fake.continue_waits = 1
    resp = await broker.get("/cubejs-api/v1/load?query=%7B%7D", headers={"Authorization": token})
    assert resp.status == 200
    assert await resp.json() == {"error": "Continue wait"}
    assert len(fake.seen) == 1


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
async def test_key_mode_attaches_the_token(broker: Client, fake: FakeCube, how: str) -> None:
    token, key = await token_for(broker)
    headers = {"X-API-KEY": key} if how == "x-api-key" else {"Authorization": f"Bearer {key}"}
    resp = await broker.get(
        "/cubejs-api/v1/meta", headers={**headers, "X-Semantic-Model": "orders"}
    )
    assert resp.status == 200
    seen = fake.seen[-1]
    assert seen.headers["Authorization"] == token
    assert key not in str(seen.headers) and "ath_" not in str(seen.headers)
    assert "X-Semantic-Model" not in seen.headers


async def test_key_mode_refusals(broker: Client) -> None:
    reader, _ = await create_key(broker, rights=["semantic_model.meta.read"])
    await assert_error(
        await broker.get("/cubejs-api/v1/meta", headers={"X-API-KEY": reader}), 400, "bad_request"
    )
    await assert_error(
        await broker.get(
            "/cubejs-api/v1/meta", headers={"X-API-KEY": reader, "X-Semantic-Model": "nope"}
        ),
        404,
        "not_found",
    )
    await assert_error(
        await broker.post(
            "/cubejs-api/v1/load", headers={"X-API-KEY": reader, "X-Semantic-Model": "orders"}
        ),
        403,
        "forbidden",
    )
    await assert_error(
        await broker.get(
            "/cubejs-api/v1/meta",
            headers={"X-API-KEY": reader[:-2] + "zz", "X-Semantic-Model": "nope"},
        ),
        401,
        "unauthorized",
    )


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "model_id": "orders", "schema_hash": "0" * 64, "iat": now, "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }  # fmt: skip
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hs512() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the key length for SHA-512
        return jwt.encode(_claims(), API_SECRET, algorithm="HS512")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda t: jwt.encode(_claims(), API_SECRET, algorithm="HS256"), id="unknown-jti"
        ),
        pytest.param(
            lambda t: jwt.encode(_claims(), "x" * 40, algorithm="HS256"), id="other-secret"
        ),
        pytest.param(lambda t: _hs512(), id="hs512"),
        pytest.param(lambda t: jwt.encode(_claims(), None, algorithm="none"), id="alg-none"),
        pytest.param(
            lambda t: jwt.encode(_claims(exp=int(time.time()) - 5), API_SECRET, algorithm="HS256"),
            id="expired",
        ),
        pytest.param(
            lambda t: jwt.encode(_claims(jti=None), API_SECRET, algorithm="HS256"), id="no-jti"
        ),
        pytest.param(
            lambda t: jwt.encode(_claims(model_id=None), API_SECRET, algorithm="HS256"),
            id="no-model",
        ),
        pytest.param(lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"), id="tampered"),
        pytest.param(lambda t: "not-a-jwt", id="garbage"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
async def test_bad_tokens_are_401(broker: Client, fake: FakeCube, make: Any) -> None:
    good, _ = await token_for(broker)
    resp = await broker.get("/cubejs-api/v1/meta", headers={"Authorization": make(good)})
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert fake.seen == []


async def test_a_token_minted_by_a_replica_whose_clock_runs_ahead_is_accepted(
    broker: Client, fake: FakeCube
) -> None:
    _, key = await token_for(broker)
    jti = uuid.uuid4().hex
    ahead = _claims(iat=int(time.time()) + 30, exp=int(time.time()) + 3630, jti=jti)
    token = jwt.encode(ahead, API_SECRET, algorithm="HS256")
    await broker.app[STORE].add_token(
        "elsewhere", MintedToken(token, jti, ahead["exp"], key[4:20]), time.time() + 60
    )
    resp = await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token})
    assert resp.status == 200


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/admin/api-keys", "X-API-Key"),
        ("/admin/api-keys", "Authorization: Bearer"),
        ("/internal/v1/models", "X-Broker-Callback-Secret"),
        ("/cubejs-api/v1/meta", "Authorization"),
        ("/cubejs-api/v1/meta", "Authorization: Bearer"),
    ],
)
async def test_credentials_that_are_not_utf8_are_401(
    broker: Client, path: str, header: str
) -> None:
    name, _, scheme = header.partition(": ")
    value = (scheme + " " if scheme else "").encode() + b"\xff\xfe-not-utf8"
    reader, writer = await asyncio.open_connection(broker.server.host, broker.server.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + name.encode() + b": " + value + b"\r\n\r\n"
    )  # fmt: skip
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["error"] == "unauthorized"


async def test_revoked_keys_tokens_are_refused(broker: Client) -> None:
    token, key = await token_for(broker)
    assert (await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token})).status == 200
    await broker.delete(f"/admin/api-keys/{key[4:20]}", headers=ADMIN)
    resp = await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token})
    await assert_error(resp, 401, "unauthorized")


async def test_hop_by_hop_headers_dropped(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    fake.stream_bytes = 10
    resp = await broker.get(
        "/cubejs-api/v1/load",
        headers={"Authorization": token, "Connection": "keep-alive, X-Private", "X-Private": "1",
                 "TE": "trailers", "X-Custom": "ok", "Cookie": "session=abc"},
    )  # fmt: skip
    assert resp.status == 200
    seen = fake.seen[-1].headers
    assert "X-Private" not in seen and "TE" not in seen and "Cookie" not in seen
    assert seen["X-Custom"] == "ok"
    assert "X-Hop" not in resp.headers


async def test_cubes_cookies_are_not_kept_for_the_next_caller(
    aiohttp_client: Any, broker_env: dict[str, str], fake: FakeCube
) -> None:
    # Cube by host name, as deployed (a cookie jar ignores cookies from bare IP addresses)
    by_name = broker_env["BROKER_CUBE_URL"].replace("127.0.0.1", "localhost")
    broker = await aiohttp_client(
        create_app(make_settings(**{**broker_env, "BROKER_CUBE_URL": by_name}))
    )
    token, _ = await token_for(broker)
    fake.answer_headers = {"Set-Cookie": "cube_session=first-callers; Path=/"}
    first = await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token})
    assert first.status == 200
    assert first.cookies["cube_session"].value == "first-callers"  # passed through to its caller
    fake.answer_headers = {}
    other, _ = await token_for(broker)
    assert (await broker.get("/cubejs-api/v1/load", headers={"Authorization": other})).status == 200
    assert "Cookie" not in fake.seen[-1].headers  # the shared upstream session keeps no jar


async def test_cubes_own_cors_headers_never_reach_the_caller(
    broker: Client, fake: FakeCube
) -> None:
    token, _ = await token_for(broker)
    fake.answer_headers = {"Access-Control-Allow-Origin": "*", "Access-Control-Max-Age": "9"}
    for origin in ("https://evil.example", None):
        headers = {"Authorization": token} | ({"Origin": origin} if origin else {})
        resp = await broker.get("/cubejs-api/v1/meta", headers=headers)
        assert resp.status == 200
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    ok = await broker.get(
        "/cubejs-api/v1/meta",
        headers={"Authorization": token, "Origin": "https://dash.example.com"},
    )
    assert ok.headers.getall("Access-Control-Allow-Origin") == ["https://dash.example.com"]


async def test_a_compressed_request_body_reaches_cube_decoded_and_labelled_so(
    broker: Client, fake: FakeCube
) -> None:
    token, _ = await token_for(broker)
    query = json.dumps({"query": {"measures": ["orders.count"]}}).encode()
    resp = await broker.post(
        "/cubejs-api/v1/load",
        data=gzip.compress(query),
        headers={"Authorization": token, "Content-Type": "application/json",
                 "Content-Encoding": "gzip"},
    )  # fmt: skip
    assert resp.status == 200
    assert fake.seen[-1].body == query
    assert "Content-Encoding" not in fake.seen[-1].headers


async def test_forwarding_headers_from_an_untrusted_caller_are_replaced(
    broker: Client, fake: FakeCube
) -> None:
    token, _ = await token_for(broker)
    spoofed = {"X-Forwarded-For": "10.9.9.9", "X-Real-IP": "10.9.9.9", "Forwarded": "for=10.9.9.9"}
    assert (
        await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token, **spoofed})
    ).status == 200
    seen = fake.seen[-1].headers
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert "X-Real-IP" not in seen and "Forwarded" not in seen


async def test_forwarding_chain_from_a_trusted_proxy_is_kept_and_extended(
    aiohttp_client: Any, broker_env: dict[str, str], fake: FakeCube
) -> None:
    broker = await aiohttp_client(
        create_app(make_settings(**broker_env, BROKER_TRUSTED_PROXIES="127.0.0.0/8"))
    )
    token, _ = await token_for(broker)
    headers = CIMultiDict([("Authorization", token), ("X-Forwarded-For", "198.51.100.1"),
                           ("X-Forwarded-For", "10.0.0.2")])  # fmt: skip
    assert (await broker.get("/cubejs-api/v1/meta", headers=headers)).status == 200
    assert fake.seen[-1].headers["X-Forwarded-For"] == "198.51.100.1, 10.0.0.2, 127.0.0.1"


async def test_a_short_answer_cut_off_is_502(
    aiohttp_client: Any, broker_env: dict[str, str]
) -> None:
    async def cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 40\r\n\r\n{\"error\": \"Conti")  # fmt: skip
        await writer.drain()

    async with raw_upstream(cut_off) as url:
        broker = await aiohttp_client(
            create_app(make_settings(**{**broker_env, "BROKER_CUBE_URL": url}))
        )
        token, _ = await token_for(broker)
        resp = await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token})
        await assert_error(resp, 502, "bad_gateway")


async def test_large_answers_stream_through(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    fake.stream_bytes = 5 * 1024 * 1024 + 7
    resp = await broker.get("/cubejs-api/v1/load", headers={"Authorization": token})
    body = await resp.read()
    assert len(body) == fake.stream_bytes
    assert body[:512] == bytes(range(256)) * 2
    assert resp.headers["X-Request-Id"]


async def test_request_body_over_limit_is_413(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    resp = await broker.post(
        "/cubejs-api/v1/load",
        data=io.BytesIO(b"x" * (1024 * 1024 + 1)),
        headers={"Authorization": token},
    )
    await assert_error(resp, 413, "payload_too_large")
    assert fake.seen == []


@pytest.mark.parametrize(
    "path", ["/cubejs-api/v1/other", "/cubejs-api/v2/load", "/cubejs-api/v1/load/x", "/cubejs-api"]
)
async def test_unlisted_paths_are_404(broker: Client, path: str) -> None:
    token, _ = await token_for(broker)
    await assert_error(await broker.get(path, headers={"Authorization": token}), 404, "not_found")


async def test_cube_down_is_502(aiohttp_client: Any, broker_env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    c = await aiohttp_client(
        create_app(make_settings(**{**broker_env, "BROKER_CUBE_URL": f"http://127.0.0.1:{port}"}))
    )
    token, _ = await token_for(c)
    started = time.monotonic()
    resp = await c.get("/cubejs-api/v1/meta", headers={"Authorization": token})
    await assert_error(resp, 502, "bad_gateway")
    assert time.monotonic() - started < 5


async def test_slow_cube_is_504(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    fake.delay = 3
    resp = await broker.get("/cubejs-api/v1/meta", headers={"Authorization": token})
    await assert_error(resp, 504, "gateway_timeout")


@pytest.mark.parametrize("trickled", ["headers", "body"])
async def test_a_trickling_cube_cannot_hold_metadata_past_the_timeout(
    aiohttp_client: Any, broker_env: dict[str, str], trickled: str
) -> None:
    """One byte every 0.3 s never trips a read timeout of 1 s: only a deadline ends it."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99\r\n"
        slow, fast = (head, b"") if trickled == "headers" else (b"", head + b"\r\n")
        writer.write(fast)
        for byte in slow or b" " * 99:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.3)

    async with raw_upstream(trickle) as url:
        broker = await aiohttp_client(
            create_app(make_settings(**{**broker_env, "BROKER_CUBE_URL": url}))
        )
        _, key = await token_for(broker)
        started = time.monotonic()
        resp = await broker.get(
            "/api/v0/semantic-model/orders/metadata", headers={"X-API-KEY": key}
        )
        await assert_error(resp, 504, "gateway_timeout")
        assert time.monotonic() - started < 3  # BROKER_UPSTREAM_TIMEOUT is 1 s here


async def test_cors(broker: Client) -> None:
    token, _ = await token_for(broker)
    ok = await broker.get(
        "/cubejs-api/v1/meta",
        headers={"Authorization": token, "Origin": "https://dash.example.com"},
    )
    assert ok.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    other = await broker.get(
        "/cubejs-api/v1/meta", headers={"Authorization": token, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers.getall("Vary", [])
    pre = await broker.options(
        "/cubejs-api/v1/load",
        headers={
            "Origin": "https://dash.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "x-api-key",
        "x-semantic-model",
        "x-request-id",
    } <= allowed
    assert "*" not in pre.headers["Access-Control-Allow-Origin"]
    denied = await broker.options(
        "/cubejs-api/v1/load",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in denied.headers


async def test_metadata(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    resp = await broker.get("/api/v0/semantic-model/orders/metadata", headers={"X-API-KEY": key})
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"asset_id", "name", "schema_hash", "cubes"}
    assert body["asset_id"] == "orders" and body["cubes"][0]["name"] == "orders"
    assert len(body["schema_hash"]) == 64


async def test_query_follows_continue_wait(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    fake.continue_waits = 3
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query",
        json={"query": {"measures": ["orders.count"]}},
        headers={"X-API-KEY": key, "X-Request-Id": "q-42"},
    )
    assert resp.status == 200
    assert await resp.json() == fake.body
    assert len(fake.seen) == 4
    assert {s.headers["X-Request-Id"] for s in fake.seen} == {"q-42"}
    assert all(s.raw_path == "/cubejs-api/v1/load" and s.method == "POST" for s in fake.seen)


async def test_query_deadline_is_504(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    fake.continue_waits = 10_000
    started = time.monotonic()
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query", json={"query": {}}, headers={"X-API-KEY": key}
    )
    await assert_error(resp, 504, "gateway_timeout")
    assert 1.5 < time.monotonic() - started < 5


async def test_query_refusal_comes_back_unchanged(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    fake.status, fake.body = 400, {"error": "Unknown member: orders.nope"}
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query",
        json={"query": {"measures": ["orders.nope"]}},
        headers={"X-API-KEY": key},
    )
    assert resp.status == 400
    assert await resp.json() == {"error": "Unknown member: orders.nope"}


@pytest.mark.parametrize("body", [{}, {"query": []}, {"query": {}, "extra": 1}])
async def test_query_validation(broker: Client, body: dict[str, Any]) -> None:
    _, key = await token_for(broker)
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query", json=body, headers={"X-API-KEY": key}
    )
    await assert_error(resp, 422, "validation_failed")


async def test_query_and_metadata_need_their_rights(broker: Client) -> None:
    _, key = await token_for(broker, ["semantic_model.token.create"])
    for method, path in (("GET", "metadata"), ("POST", "query")):
        resp = await broker.request(
            method, f"/api/v0/semantic-model/orders/{path}", json={"query": {}},
            headers={"X-API-KEY": key},
        )  # fmt: skip
        await assert_error(resp, 403, "forbidden")


async def test_cube_5xx_on_query_is_502(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    fake.status = 500
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query", json={"query": {}}, headers={"X-API-KEY": key}
    )
    await assert_error(resp, 502, "bad_gateway")


async def test_a_large_query_result_streams_through_query(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    fake.continue_waits = 2
    fake.stream_bytes = 5 * 1024 * 1024 + 3
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query", json={"query": {}}, headers={"X-API-KEY": key}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"  # Cube's, unchanged
    body = await resp.read()
    assert len(body) == fake.stream_bytes and body[:512] == bytes(range(256)) * 2
    assert len(fake.seen) == 3


async def test_a_short_query_answer_that_is_not_json_is_502(broker: Client, fake: FakeCube) -> None:
    _, key = await token_for(broker)
    fake.raw_body = b"<html>oops</html>"
    resp = await broker.post(
        "/api/v0/semantic-model/orders/query", json={"query": {}}, headers={"X-API-KEY": key}
    )
    await assert_error(resp, 502, "bad_gateway")


async def test_upstream_connection_pool_is_shared(broker: Client, fake: FakeCube) -> None:
    token, _ = await token_for(broker)
    results = await asyncio.gather(
        *(broker.get("/cubejs-api/v1/load", headers={"Authorization": token}) for _ in range(20))
    )  # /load: a /meta answered by one of them may serve the others from memory
    assert {r.status for r in results} == {200}
    assert len(fake.seen) == 20
