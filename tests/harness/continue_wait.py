"""Cube's ``{"error": "Continue wait"}``: a query still running is asked again, as its
clients do, until the answer or a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from yarl import URL


async def follow(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    headers: dict[str, str],
    body: object = None,
    within: float = 60.0,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request, repeated while the answer is Cube's ``{"error": "Continue wait"}``
    (bounded by ``within``): the final status, parsed body and response."""
    deadline = time.monotonic() + within
    while True:
        async with session.request(method, url, headers=headers, json=body) as resp:
            parsed = await resp.json(content_type=None)
        if not (isinstance(parsed, dict) and parsed.get("error") == "Continue wait"):
            return resp.status, parsed, resp
        assert resp.status == 200, parsed
        assert time.monotonic() < deadline, f"still Continue wait after {within} s"
        await asyncio.sleep(0.1)
