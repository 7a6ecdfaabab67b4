"""The ``/cubejs-api/v1`` proxy (SPEC §8): authenticate, then stream Cube's answer."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from broker.key_policy import poll_identity
from broker.proxy import downstream_headers, upstream_headers
from broker.query import is_continue_wait
from broker.requests import forwarded_for
from broker.rights import META_READ, QUERY_EXECUTE
from broker.state import (
    CLIENT_IP,
    CUBE,
    CUBE_ACCESS,
    KEY_POLICY,
    KEY_PUBLIC_ID,
    METRICS,
    MODEL_ID,
    REQUEST_ID,
    SETTINGS,
)

log = logging.getLogger("broker.proxy")

#: Longest answer that may be Cube's ``{"error": "Continue wait"}``.
_CONTINUE_WAIT_MAX = 64


async def forward(request: web.Request) -> web.StreamResponse:
    right = META_READ if request.path == "/cubejs-api/v1/meta" else QUERY_EXECUTE
    body = await request.read() if request.body_exists else None
    poll = poll_identity(
        request.headers.get("X-Request-Id"), request.method, request.raw_path, body or b""
    )
    grant = await request.app[CUBE_ACCESS].resolve(request.headers, right, request[CLIENT_IP], poll)
    request[KEY_PUBLIC_ID] = grant.key.public_id
    request[MODEL_ID] = grant.model_id
    forwarded = forwarded_for(request, request.app[SETTINGS].trusted_proxies)
    headers = upstream_headers(request.headers, grant.token, request[REQUEST_ID], forwarded)
    cube = request.app[CUBE]
    async with cube.request(request.method, request.raw_path, headers, body) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=downstream_headers(upstream.headers),
        )
        if _may_be_continue_wait(upstream):
            # A short JSON answer: read it whole to see whether Cube said "Continue wait",
            # so the caller's next polls of this query are not counted by the rate limit.
            small = await cube.read(upstream)
            if is_continue_wait(_json_or_none(small)):
                await request.app[KEY_POLICY].mark_poll(grant.key, grant.poll)
            await response.prepare(request)
            await response.write_eof(small)
            return response
        await response.prepare(request)
        return await _stream(request, upstream, response)


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, response: web.StreamResponse
) -> web.StreamResponse:
    """Copy Cube's answer as it arrives. Cube breaking off mid-answer is counted and the
    caller's connection closed (it cannot get a clean error any more); the caller hanging
    up just ends the copy."""
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            request.app[METRICS].upstream_errors.labels("stream").inc()
            log.warning(
                "Cube's answer broke off mid-stream (%s); closing the connection",
                type(exc).__name__,
                extra={"request_id": request[REQUEST_ID]},
            )
            response.force_close()
            return response
        if not chunk:
            break
        try:
            await response.write(chunk)
        except ConnectionResetError:
            return response  # the caller went away
    await response.write_eof()
    return response


def _may_be_continue_wait(upstream: aiohttp.ClientResponse) -> bool:
    length = upstream.content_length
    return (
        upstream.status == 200
        and length is not None
        and length <= _CONTINUE_WAIT_MAX
        and "Content-Encoding" not in upstream.headers
    )


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
