"""The error shape, request IDs and the operating endpoints (SPEC §3, §9)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.app import create_app
from broker.http.answer import answered
from broker.settings import Settings
from tests.harness.settings import CALLBACK_SECRET
from tests.helpers import assert_error, served_routes

Client = TestClient[Any, Any]


async def test_unknown_route_is_json_404(client: Client) -> None:
    resp = await client.get("/nope")
    body = await assert_error(resp, 404, "not_found")
    assert set(body) == {"status", "message", "error"}
    assert resp.headers["X-Request-Id"]


@pytest.mark.parametrize(
    "path", ["/nope%0Aline", "/auth/v1/cube/%27%C3%9E%0AU", "/%0A", "/api/v0/semantic-model/a%0Ab"]
)
async def test_a_path_with_an_encoded_line_break_is_json_404_too(client: Client, path: str) -> None:
    """Found by the OpenAPI fuzzing: a decoded path holding a line break matched no route
    pattern (``.`` skips it) and got aiohttp's own text answer."""
    resp = await client.post(yarl.URL(path, encoded=True))
    await assert_error(resp, 404, "not_found")


async def test_wrong_method_is_json_405(client: Client) -> None:
    resp = await client.put("/admin/api-keys")
    await assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


async def test_a_route_outside_the_request_context_stops_the_start(settings: Settings) -> None:
    app = create_app(settings)

    async def bare(request: web.Request) -> web.Response:
        return web.Response(text="no request ID, no JSON errors, no access log")

    app.router.add_get("/bare", bare)
    runner = web.AppRunner(app)
    try:
        with pytest.raises(RuntimeError, match="routes outside the request context: /bare"):
            await runner.setup()
    finally:
        await runner.cleanup()


async def test_unexpected_exception_is_generic_500(
    aiohttp_client: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret-detail-xyz")

    app.router.add_get("/boom", answered(boom))
    c = await aiohttp_client(app)
    resp = await c.get("/boom")
    body = await assert_error(resp, 500, "internal_error")
    assert "secret-detail-xyz" not in await resp.text()
    assert "Traceback" not in body["message"]
    errors = [r for r in caplog.records if r.name == "broker.errors"]
    assert len(errors) == 1 and errors[0].exc_info is not None


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("abc-123:x.y_z", True), ("", False), ("bad id!", False), ("x" * 129, False)],
)
async def test_request_id(client: Client, sent: str, echoed: bool) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": sent} if sent else {})
    rid = resp.headers["X-Request-Id"]
    assert (rid == sent) is echoed
    assert 1 <= len(rid) <= 128


async def test_healthz_readyz(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "checks": {"store": "ok", "models": "ok"}}


async def test_metrics_use_route_templates(client: Client, admin_headers: dict[str, str]) -> None:
    await client.get("/admin/api-keys/abcdefghijklmnop", headers=admin_headers)
    await client.get("/admin/api-keys", headers={"X-API-Key": "wrong"})
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert (
        'broker_requests_total{listener="any",method="GET",route="/admin/api-keys/{id}",'
        'status="404"} 1.0' in text
    )
    assert "abcdefghijklmnop" not in text
    assert 'broker_auth_failures_total{reason="wrong_admin_key"} 1.0' in text
    for name in (
        "broker_request_duration_seconds_bucket",
        "broker_upstream_duration_seconds",
        "broker_tokens_minted_total",
        "broker_token_cache_hits_total",
        "broker_store_errors_total",
        "broker_upstream_errors_total",
        'broker_meta_cache_total{result="hit"} 0.0',
    ):
        assert name in text


async def test_access_log_line(
    client: Client, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.access")
    await client.get("/admin/api-keys?limit=5", headers={**admin_headers, "X-Request-Id": "r-1"})
    lines = [r for r in caplog.records if r.name == "broker.access"]
    assert len(lines) == 1
    rec: Any = lines[0]
    assert (rec.request_id, rec.method, rec.path, rec.status) == (
        "r-1", "GET", "/admin/api-keys?limit=5", 200,
    )  # fmt: skip
    assert rec.duration_ms >= 0


async def test_openapi_lists_every_route(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    # A route of any method (decision mode) is documented with those a calling proxy sends.
    any_method = ("GET", "POST", "PUT", "PATCH", "DELETE")
    served = {
        (path, method)
        for route_method, path in served_routes(client.app)
        for method in (any_method if route_method == "*" else (route_method,))
    }
    assert served == documented


async def test_openapi_bodies_say_what_the_broker_enforces(
    client: Client, admin_headers: dict[str, str]
) -> None:
    """Every documented request body refuses unknown fields, and the broker does too (422
    naming the field); the rotate body is optional, and its one field has its maximum."""
    doc = await (await client.get("/openapi.json")).json()
    created = await client.post(
        "/admin/api-keys", json={"name": "k", "rights": ["semantic_model.*"]}, headers=admin_headers
    )
    key, public_id = (
        (await created.json())["api_key"],
        (await created.json())["record"]["public_id"],
    )
    minimal: dict[tuple[str, str], tuple[dict[str, Any], dict[str, str]]] = {
        ("/admin/api-keys", "post"): ({"name": "n"}, admin_headers),
        ("/admin/api-keys/{id}", "patch"): ({}, admin_headers),
        ("/admin/api-keys/{id}/rotate", "post"): ({}, admin_headers),
        ("/api/v0/semantic-model/{asset_id}/query", "post"): ({"query": {}}, {"X-API-KEY": key}),
        (
            "/internal/v1/credentials",
            "post",
        ): (
            {"securityContext": {"model_id": "orders"}, "dataSource": "default"},
            {"X-Broker-Callback-Secret": CALLBACK_SECRET},
        ),
    }
    with_body = {
        (path, method)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert with_body == set(minimal)
    for (path, method), (body, headers) in minimal.items():
        schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert schema["schema"]["additionalProperties"] is False, path
        url = path.replace("{id}", public_id).replace("{asset_id}", "orders")
        resp = await client.request(method, url, json={**body, "zzz": 1}, headers=headers)
        answer = await assert_error(resp, 422, "validation_failed")
        assert {"field": "zzz", "message": "unknown field"} in answer["details"], path
    rotate = doc["paths"]["/admin/api-keys/{id}/rotate"]["post"]["requestBody"]
    assert rotate["required"] is False
    grace = rotate["content"]["application/json"]["schema"]["properties"]["grace_seconds"]
    assert grace["maximum"] == 86400
