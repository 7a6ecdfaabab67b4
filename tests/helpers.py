"""Helpers shared by the HTTP tests."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


async def create(client: Client, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("name", "dashboard")
    resp = await client.post("/admin/api-keys", json=body, headers=admin)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"  # it holds the plaintext key
    doc: dict[str, Any] = await resp.json()
    return doc


async def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == "error"
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body
