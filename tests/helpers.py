"""Assertions and small request helpers shared by the HTTP tests (what also starts or
drives real processes, and creates keys, is in ``tests.harness``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
#: The type of pytest-aiohttp's ``aiohttp_client`` fixture.
AiohttpClient = Callable[..., Any]


async def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == "error"
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body
