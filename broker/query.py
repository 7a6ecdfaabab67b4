"""Running a query through Cube's ``/load``, following "Continue wait" (SPEC §6)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from broker.errors import BadGateway, GatewayTimeout
from broker.upstream import CubeClient

LOAD_PATH = "/cubejs-api/v1/load"
META_PATH = "/cubejs-api/v1/meta"
_FIRST_DELAY, _MAX_DELAY = 0.05, 1.0


def is_continue_wait(body: Any) -> bool:
    return isinstance(body, dict) and body.get("error") == "Continue wait"


async def run_query(
    cube: CubeClient, token: str, query: dict[str, Any], request_id: str, time_limit: float
) -> tuple[int, bytes, str]:
    """Cube's final answer to ``query``: (status, raw body, content type).

    Polls while Cube answers "Continue wait" (the same request ID each time), with a
    growing pause, until ``time_limit`` seconds have passed (``GatewayTimeout``). An answer
    Cube refuses (4xx) is returned unchanged; a 5xx or a non-JSON success is
    ``BadGateway``.
    """
    deadline = time.monotonic() + time_limit
    delay = _FIRST_DELAY
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayTimeout(f"The query did not finish within {time_limit:g} s.")
        status, parsed, raw, content_type = await cube.call_json(
            "POST", LOAD_PATH, token, payload={"query": query}, request_id=request_id,
            time_limit=remaining,
        )  # fmt: skip
        if status == 200 and is_continue_wait(parsed):
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _MAX_DELAY)
            continue
        if 400 <= status < 500:
            return status, raw, content_type
        if status != 200 or parsed is None:
            raise BadGateway(f"Cube answered the query with status {status}.")
        return status, raw, content_type


async def fetch_meta(
    cube: CubeClient, token: str, request_id: str, time_limit: float
) -> tuple[int, Any, bytes, str]:
    """Cube's ``/meta`` for the token's model, whole within ``time_limit`` seconds:
    (status, parsed, raw, content type); a refusal (4xx) comes back as is, anything else
    that is not a JSON object with ``cubes`` is ``BadGateway``."""
    status, parsed, raw, content_type = await cube.call_json(
        "GET", META_PATH, token, request_id=request_id, time_limit=time_limit
    )
    if 400 <= status < 500:
        return status, parsed, raw, content_type
    if status != 200 or not isinstance(parsed, dict) or not isinstance(parsed.get("cubes"), list):
        raise BadGateway(f"Cube answered /meta with status {status}.")
    return status, parsed, raw, content_type
