"""Decision mode (SPEC §8): ``/auth/v1/cube`` tells a calling proxy what the broker's own
proxy would do with a request, with exactly the proxy's checks, and never reads a body.

The proxy itself runs here too, in front of a stand-in Cube, so every refusal can be
compared with the proxy's own answer to the same request. nginx in front of this
endpoint is tested in ``tests/test_nginx_decision.py`` and ``tests/e2e/test_nginx.py``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from yarl import URL

from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.helpers import ADMIN, BrokerOnFake, Client, assert_error

DECIDE = "/auth/v1/cube"
LOAD = "/cubejs-api/v1/load?query=%7B%22measures%22%3A%5B%22orders.count%22%5D%7D"


@pytest.fixture
async def broker(broker_on_fake: BrokerOnFake) -> Client:
    return await broker_on_fake(
        BROKER_TRUSTED_PROXIES="127.0.0.1/32",
        BROKER_CORS_ORIGINS="https://dash.example.com",
    )


async def token_of(c: Client, key: str) -> str:
    resp = await c.post("/api/v0/semantic-model/orders/generate-token", headers={"X-API-KEY": key})
    token: str = (await resp.json())["token"]
    return token


def original(method: str, target: str) -> dict[str, str]:
    return {"X-Original-URI": target, "X-Original-Method": method}


async def decide(c: Client, method: str, target: str, **headers: str) -> Any:
    """The decision on ``method target``, asked as nginx asks (a GET with the headers)."""
    return await c.get(DECIDE, headers={**original(method, target), **headers})


async def assert_decided(resp: Any, token: str) -> None:
    assert resp.status == 200, await resp.text()
    assert await resp.read() == b""
    assert resp.headers["Authorization"] == token
    assert resp.headers["Cache-Control"] == "no-store"
    assert "X-Broker-Status" not in resp.headers


async def test_each_way_of_naming_the_request(broker: Client) -> None:
    key, _ = await create_key(broker)
    token = await token_of(broker, key)
    creds = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    ways = [
        ("GET", DECIDE, original("POST", "/cubejs-api/v1/load")),  # nginx, ingress-nginx
        ("POST", DECIDE, {"X-Original-URI": "/cubejs-api/v1/load"}),  # the request's method
        ("GET", DECIDE, {"X-Forwarded-Uri": LOAD, "X-Forwarded-Method": "GET"}),  # Traefik
        ("POST", DECIDE + "/cubejs-api/v1/dry-run", {}),  # Envoy
        ("GET", DECIDE + LOAD, {}),
        ("GET", DECIDE + "/cubejs-api/v1/meta", {}),
        ("GET", DECIDE, {**original("GET", LOAD), "X-Forwarded-Uri": LOAD}),  # agreeing
    ]
    for method, path, named in ways:
        resp = await broker.request(method, URL(path, encoded=True), headers={**creds, **named})
        await assert_decided(resp, token)


async def test_a_token_is_decided_as_itself_and_a_key_gets_its_cached_token(
    broker: Client,
) -> None:
    key, _ = await create_key(broker)
    token = await token_of(broker, key)
    for credential in (
        {"Authorization": token},
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {key}", "X-Semantic-Model": "orders"},
        {"X-API-KEY": key, "X-Semantic-Model": "orders"},
    ):
        await assert_decided(await decide(broker, "GET", LOAD, **credential), token)


@pytest.mark.parametrize(
    ("method", "target", "status", "code"),
    [
        ("GET", "/cubejs-api/v1/other", 404, "not_found"),
        ("GET", "/cubejs-api/v2/load", 404, "not_found"),
        ("GET", "/cubejs-api/v1/load/x", 404, "not_found"),
        ("GET", "/cubejs-api", 404, "not_found"),
        ("GET", "/admin/api-keys", 404, "not_found"),
        ("GET", "/api/v0/semantic-model/orders/metadata", 404, "not_found"),
        ("POST", "/cubejs-api/v1/meta", 405, "method_not_allowed"),
        ("DELETE", "/cubejs-api/v1/load", 405, "method_not_allowed"),
        ("HEAD", "/cubejs-api/v1/sql", 405, "method_not_allowed"),
    ],
)
async def test_only_the_proxys_routes_and_methods(
    broker: Client, method: str, target: str, status: int, code: str
) -> None:
    key, _ = await create_key(broker)
    creds = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    decided = await decide(broker, method, target, **creds)
    await assert_error(decided, status, code)
    if target.startswith("/cubejs-api"):  # the other two are the broker's own routes
        proxied = await broker.request(method, target, headers=creds)
        assert proxied.status == status
        assert decided.headers.get("Allow") == proxied.headers.get("Allow")


async def test_an_encoded_path_is_decided_as_the_proxy_routes_it(broker: Client) -> None:
    key, _ = await create_key(broker)
    token = await token_of(broker, key)
    creds = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    await assert_decided(await decide(broker, "GET", "/cubejs-api/v1/%6Coad?x=%3A", **creds), token)


@pytest.mark.parametrize(
    "named",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"X-Original-URI": "cubejs-api/v1/load"}, id="not-a-path"),
        pytest.param({"X-Original-URI": "http://cube/cubejs-api/v1/load"}, id="absolute"),
        pytest.param(
            {"X-Original-URI": "/cubejs-api/v1/meta", "X-Forwarded-Uri": "/cubejs-api/v1/load"},
            id="two-paths",
        ),
        pytest.param(
            {
                "X-Original-URI": "/cubejs-api/v1/load",
                "X-Original-Method": "GET",
                "X-Forwarded-Uri": "/cubejs-api/v1/load",
                "X-Forwarded-Method": "POST",
            },
            id="two-methods",
        ),
    ],
)
async def test_the_request_must_be_named_once_unambiguously(
    broker: Client, named: dict[str, str]
) -> None:
    key, _ = await create_key(broker)
    resp = await broker.get(DECIDE, headers={"X-API-KEY": key, "X-Semantic-Model": "o", **named})
    await assert_error(resp, 400, "bad_request")


async def test_a_path_below_and_a_header_that_disagree_are_refused(broker: Client) -> None:
    key, _ = await create_key(broker, rights=["semantic_model.meta.read"])
    resp = await broker.get(
        DECIDE + "/cubejs-api/v1/load",
        headers={"X-API-KEY": key, "X-Semantic-Model": "orders",
                 "X-Original-URI": "/cubejs-api/v1/meta"},
    )  # fmt: skip
    await assert_error(resp, 400, "bad_request")


async def test_the_right_for_the_route(broker: Client) -> None:
    reader, _ = await create_key(broker, rights=["semantic_model.meta.read:orders"])
    creds = {"X-API-KEY": reader, "X-Semantic-Model": "orders"}
    await assert_error(await decide(broker, "POST", LOAD, **creds), 403, "forbidden")
    await assert_error(await decide(broker, "GET", "/cubejs-api/v1/sql", **creds), 403, "forbidden")
    assert (await decide(broker, "GET", "/cubejs-api/v1/meta", **creds)).status == 200
    other = {"X-API-KEY": reader, "X-Semantic-Model": "items"}
    await assert_error(
        await decide(broker, "GET", "/cubejs-api/v1/meta", **other), 403, "forbidden"
    )


async def test_key_mode_refusals_are_the_proxys(broker: Client) -> None:
    key, _ = await create_key(broker)
    cases = [
        ({"X-API-KEY": key}, 400, "bad_request"),
        ({"X-API-KEY": key, "X-Semantic-Model": "nope"}, 404, "not_found"),
        ({"X-API-KEY": key[:-2] + "zz", "X-Semantic-Model": "nope"}, 401, "unauthorized"),
        ({"Authorization": "Bearer not.a.jwt"}, 401, "unauthorized"),
        ({}, 401, "unauthorized"),
    ]
    for n, (creds, status, code) in enumerate(cases):
        # each from an address of its own: failures must not trip the brute-force guard
        creds = {**creds, "X-Forwarded-For": f"198.51.100.{n + 1}"}
        resp = await decide(broker, "GET", LOAD, **creds)
        body = await assert_error(resp, status, code)
        proxied = await broker.get(URL(LOAD, encoded=True), headers=creds)
        assert proxied.status == status
        assert body == await proxied.json()
        if status == 401:
            assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_ip_rules(broker: Client) -> None:
    key, _ = await create_key(broker, ip_whitelist=["203.0.113.0/24"])
    creds = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    allowed = await decide(broker, "GET", LOAD, **creds, **{"X-Forwarded-For": "203.0.113.9"})
    assert allowed.status == 200
    refused = await decide(broker, "GET", LOAD, **creds, **{"X-Forwarded-For": "198.51.100.9"})
    await assert_error(refused, 403, "ip_not_allowed")


async def test_rate_limit(broker: Client) -> None:
    key, _ = await create_key(broker, rate_limit_per_minute=2)
    creds = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    assert (await decide(broker, "GET", LOAD, **creds)).status == 200
    assert (await broker.get(URL(LOAD, encoded=True), headers=creds)).status == 200  # the same
    refused = await decide(broker, "GET", LOAD, **creds)
    await assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["X-Broker-Status"] == "429"


async def test_a_revoked_keys_token_is_refused(broker: Client) -> None:
    key, record = await create_key(broker)
    token = await token_of(broker, key)
    assert (await decide(broker, "GET", LOAD, Authorization=token)).status == 200
    assert (await broker.delete(f"/admin/api-keys/{record['id']}", headers=ADMIN)).status == 204
    await assert_error(await decide(broker, "GET", LOAD, Authorization=token), 401, "unauthorized")


async def test_no_body_is_read(broker: Client, fake: FakeCube) -> None:
    key, _ = await create_key(broker)
    token = await token_of(broker, key)
    resp = await broker.post(
        DECIDE + "/cubejs-api/v1/load",
        data=io.BytesIO(b"x" * (2 * 1024 * 1024)),  # the proxy would answer 413
        headers={"Authorization": token},
    )
    await assert_decided(resp, token)
    assert fake.seen == []


async def test_a_refusal_names_its_status_and_body_in_headers(broker: Client) -> None:
    """For nginx, whose auth_request keeps only headers and turns 404 or 429 into 500."""
    for creds, target in (({}, LOAD), ({"Authorization": "x"}, "/cubejs-api/v1/nope")):
        resp = await decide(broker, "GET", target, **creds)
        body = await resp.read()
        assert resp.headers["X-Broker-Status"] == str(resp.status)
        assert json.loads(resp.headers["X-Broker-Error"]) == json.loads(body)
        assert resp.headers["X-Broker-Error"].encode() == body


async def test_a_preflight_is_decided_not_answered(broker: Client, fake: FakeCube) -> None:
    """A decision request is a proxy's, never a browser's preflight: the broker does not
    answer it 204 (which would let the calling proxy send it on)."""
    browser = {"Origin": "https://dash.example.com", "Access-Control-Request-Method": "GET"}
    nginx = await broker.options(DECIDE, headers={**browser, **original("OPTIONS", LOAD)})
    await assert_error(nginx, 405, "method_not_allowed")
    envoy = await broker.options(DECIDE + "/cubejs-api/v1/load", headers=browser)
    await assert_error(envoy, 405, "method_not_allowed")
    assert fake.seen == []


async def test_the_request_id_is_the_callers(broker: Client) -> None:
    key, _ = await create_key(broker)
    resp = await decide(broker, "GET", LOAD, **{"X-API-KEY": key, "X-Semantic-Model": "orders",
                                               "X-Request-Id": "dash-1"})  # fmt: skip
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "dash-1"


async def test_decisions_are_counted_by_route_template(broker: Client) -> None:
    await broker.get(DECIDE + "/cubejs-api/v1/load")
    text = await (await broker.get("/metrics")).text()
    assert 'route="/auth/v1/cube/{path}",status="401"' in text
    assert "/auth/v1/cube/cubejs-api" not in text
