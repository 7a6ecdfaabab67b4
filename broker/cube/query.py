"""Running a query through Cube's ``/load``, following "Continue wait" (SPEC §6)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from broker.cube.client import CubeAnswer, CubeClient, api_headers, json_or_none
from broker.cube.http1 import UpstreamResponse
from broker.errors import BadGateway, GatewayTimeout, InvalidJSON

LOAD_PATH = "/cubejs-api/v1/load"
META_PATH = "/cubejs-api/v1/meta"
_FIRST_DELAY, _MAX_DELAY = 0.05, 1.0
#: Longest answer that may be Cube's ``{"error": "Continue wait"}``.
_CONTINUE_WAIT_MAX = 64
_CONTINUE_WAIT = {"error": "Continue wait"}


def may_be_continue_wait(upstream: UpstreamResponse) -> bool:
    """Whether this answer is short enough to be "Continue wait" (and worth reading whole
    to find out): a 200 with a small, plain body."""
    length = upstream.content_length
    return (
        upstream.status == 200
        and length is not None
        and length <= _CONTINUE_WAIT_MAX
        and "Content-Encoding" not in upstream.headers
    )


def is_continue_wait(raw: bytes) -> bool:
    """Whether ``raw`` is Cube's ``{"error": "Continue wait"}`` (a long body is not parsed)."""
    return len(raw) <= _CONTINUE_WAIT_MAX and bool(json_or_none(raw) == _CONTINUE_WAIT)


@contextlib.asynccontextmanager
async def final_answer(
    cube: CubeClient,
    token: str,
    query: dict[str, Any],
    request_id: str,
    time_limit: float,
    *,
    model: str,
    trace: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[UpstreamResponse, bytes]]:
    """Cube's final answer to ``query``: the response, its headers in, and the part of its
    body already read (all of it for a short answer, else nothing: the caller streams the
    rest with :meth:`CubeClient.relay`, so a large result is never held whole).

    Polls while Cube answers "Continue wait" (the same request ID and ``trace`` headers
    each time), with a
    growing pause; the final answer must start within ``time_limit`` seconds
    (``GatewayTimeout``). An answer Cube refuses (4xx) comes unchanged; a 5xx, or a short
    success that is not JSON, is ``BadGateway``.
    """
    deadline = time.monotonic() + time_limit
    delay = _FIRST_DELAY
    headers = api_headers(token, request_id, json_body=True, trace=trace)
    try:
        body = json.dumps({"query": query}).encode()
    except RecursionError:  # parsed, one level short of the limit, but not re-encodable
        raise InvalidJSON() from None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayTimeout(f"The query did not finish within {time_limit:g} s.")
        async with cube.request(
            "POST", LOAD_PATH, headers, body, model=model, answer_within=remaining
        ) as upstream:
            if upstream.status >= 500:
                raise BadGateway(f"Cube answered the query with status {upstream.status}.")
            head = await cube.read(upstream) if may_be_continue_wait(upstream) else b""
            parsed = json_or_none(head) if head else None
            if parsed != _CONTINUE_WAIT:
                if head and parsed is None:
                    raise BadGateway("Cube answered the query with a body that is not JSON.")
                yield upstream, head
                return
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, _MAX_DELAY)


async def fetch_meta(
    cube: CubeClient,
    token: str,
    request_id: str,
    time_limit: float,
    *,
    model: str,
    trace: Mapping[str, str] | None = None,
) -> CubeAnswer:
    """Cube's ``/meta`` for the token's model, whole within ``time_limit`` seconds; a
    refusal (4xx) comes back as is, anything else that is not a JSON object with ``cubes``
    is ``BadGateway``."""
    answer = await cube.get_json(META_PATH, token, request_id, time_limit, model=model, trace=trace)
    if 400 <= answer.status < 500:
        return answer
    parsed = answer.parsed
    if (
        answer.status != 200
        or not isinstance(parsed, dict)
        or not isinstance(parsed.get("cubes"), list)
    ):
        raise BadGateway(f"Cube answered /meta with status {answer.status}.")
    return answer
