"""The internal callback Cube calls (SPEC §7), over HTTP."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from broker.app import create_app
from broker.state import REGISTRY
from tests.harness import DATA
from tests.harness.settings import CALLBACK_SECRET, make_settings
from tests.helpers import AiohttpClient, assert_error

Client = TestClient[Any, Any]
GOOD = {"X-Broker-Callback-Secret": CALLBACK_SECRET}
ORDERS = {"securityContext": {"model_id": "orders", "schema_hash": "x"}, "dataSource": "default"}
EXPECTED_CONFIG = {
    "type": "postgres",
    "host": "127.0.0.1",
    "port": 5432,
    "database": "shop",
    "user": "analytics",
}


async def test_credentials_resolve_the_environment_at_call_time(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for password in ("first-password", "rotated-password"):
        monkeypatch.setenv("TEST_ORDERS_PASSWORD", password)
        resp = await client.post("/internal/v1/credentials", json=ORDERS, headers=GOOD)
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {**EXPECTED_CONFIG, "password": password}
        assert resp.headers["Cache-Control"] == "no-store"


async def test_credentials_read_a_rotated_password_file(
    aiohttp_client: AiohttpClient, store_url: str, tmp_path: Path
) -> None:
    shutil.copytree(DATA / "models", tmp_path / "models")
    secret_file = tmp_path / "secrets" / "orders-password"
    secret_file.parent.mkdir()
    secret_file.write_text("before-rotation\n")
    registry = (DATA / "models.yaml").read_text()
    registry = registry.replace(
        "password: ${TEST_ORDERS_PASSWORD}", f"password_file: {secret_file}"
    )
    (tmp_path / "models.yaml").write_text(registry)
    settings = make_settings(BROKER_STORE=store_url, BROKER_MODELS=str(tmp_path / "models.yaml"))
    client: Client = await aiohttp_client(create_app(settings))

    resp = await client.post("/internal/v1/credentials", json=ORDERS, headers=GOOD)
    assert (await resp.json())["password"] == "before-rotation"
    secret_file.write_text("after-rotation\n")
    resp = await client.post("/internal/v1/credentials", json=ORDERS, headers=GOOD)
    assert await resp.json() == {**EXPECTED_CONFIG, "password": "after-rotation"}

    secret_file.unlink()
    resp = await client.post("/internal/v1/credentials", json=ORDERS, headers=GOOD)
    body = await assert_error(resp, 500, "internal_error")
    assert "rotation" not in str(body)


async def test_unresolvable_credentials_are_an_error_naming_no_secret(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TEST_ORDERS_PASSWORD", raising=False)
    caplog.set_level(logging.ERROR, logger="broker.callback")
    resp = await client.post("/internal/v1/credentials", json=ORDERS, headers=GOOD)
    body = await assert_error(resp, 500, "internal_error")
    assert "TEST_ORDERS_PASSWORD" not in body["message"]
    assert any("TEST_ORDERS_PASSWORD is not set" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "body",
    [
        {"securityContext": {"model_id": "nope"}, "dataSource": "default"},
        {"securityContext": {"model_id": "orders"}, "dataSource": "other"},
        {"securityContext": {"model_id": "../orders"}, "dataSource": "default"},
        {"securityContext": {"model_id": "x" * 65}, "dataSource": "default"},
    ],
)
async def test_credentials_of_unknown_model_or_source_are_404(
    client: Client, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]
) -> None:
    monkeypatch.setenv("TEST_ORDERS_PASSWORD", "never-shown")
    resp = await client.post("/internal/v1/credentials", json=body, headers=GOOD)
    answer = await assert_error(resp, 404, "not_found")
    assert "never-shown" not in str(answer)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"dataSource": "default"}, ["securityContext"]),
        ({"securityContext": [], "dataSource": "default"}, ["securityContext"]),
        ({"securityContext": {}, "dataSource": "default"}, ["securityContext.model_id"]),
        ({"securityContext": {"model_id": 7}}, ["securityContext.model_id", "dataSource"]),
        ({"securityContext": {"model_id": "orders"}, "dataSource": ""}, ["dataSource"]),
        ({**ORDERS, "extra": 1}, ["extra"]),
    ],
)
async def test_malformed_credentials_requests_are_422(
    client: Client, body: dict[str, Any], fields: list[str]
) -> None:
    resp = await client.post("/internal/v1/credentials", json=body, headers=GOOD)
    answer = await assert_error(resp, 422, "validation_failed")
    assert sorted(d["field"] for d in answer["details"]) == sorted(fields)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]"])
async def test_credentials_body_must_be_a_json_object(client: Client, raw: bytes) -> None:
    resp = await client.post("/internal/v1/credentials", data=raw, headers=GOOD)
    await assert_error(resp, 400, "invalid_json")


async def test_model_files_come_from_the_registry_snapshot(client: Client) -> None:
    model = client.app[REGISTRY].current.get("orders")
    assert model is not None
    resp = await client.get("/internal/v1/models/orders/files", headers=GOOD)
    assert resp.status == 200
    assert await resp.json() == {
        "schema_hash": model.schema_hash,
        "files": [
            {
                "fileName": "orders.yml",
                "content": (DATA / "models" / "orders" / "orders.yml").read_text(),
            }
        ],
    }


async def test_models_list_for_scheduled_refresh(client: Client) -> None:
    model = client.app[REGISTRY].current.get("orders")
    assert model is not None
    resp = await client.get("/internal/v1/models", headers=GOOD)
    assert resp.status == 200
    assert await resp.json() == [{"asset_id": "orders", "schema_hash": model.schema_hash}]


@pytest.mark.parametrize(
    "path",
    [
        "/internal/v1/models/nope/files",
        "/internal/v1/models/..%2F..%2F..%2Fetc%2Fpasswd/files",
        "/internal/v1/models/%2e%2e/files",
        "/internal/v1/models/%2E%2E%2Forders/files",
        "/internal/v1/models/..%5Corders/files",
        "/internal/v1/models/%2Fetc%2Fpasswd/files",
        "/internal/v1/models/orders%00/files",
        "/internal/v1/models/....//files",
        "/internal/v1/models/../../../etc/passwd/files",
        f"/internal/v1/models/{'o' * 65}/files",
    ],
)
async def test_model_files_never_leave_the_registry(client: Client, path: str) -> None:
    """Raw paths, sent without client-side normalization: all are 404, none a file."""
    url = URL(f"http://{client.host}:{client.port}{path}", encoded=True)
    resp = await client.session.get(url, headers=GOOD)
    body = await assert_error(resp, 404, "not_found")
    assert "root:" not in str(body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/internal/v1/credentials"),
        ("GET", "/internal/v1/models"),
        ("GET", "/internal/v1/models/orders/files"),
        ("GET", "/internal/v1/models/unknown/files"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Broker-Callback-Secret": ""},
        {"X-Broker-Callback-Secret": CALLBACK_SECRET + "x"},
        {"X-Broker-Callback-Secret": CALLBACK_SECRET[:-1]},
        {"Authorization": f"Bearer {CALLBACK_SECRET}"},
    ],
)
async def test_callback_requires_the_secret(
    client: Client, monkeypatch: pytest.MonkeyPatch, method: str, path: str, headers: dict[str, str]
) -> None:
    monkeypatch.setenv("TEST_ORDERS_PASSWORD", "never-shown")
    resp = await client.request(method, path, json=ORDERS, headers=headers)
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert "never-shown" not in await resp.text()
