"""Where Cube is spoken to: one shared pool of keep-alive connections
(:class:`broker.cube.http1.Upstream`), and the mapping of every upstream failure to 502
or 504."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from broker.cube.http1 import (
    UnsendableRequest,
    Upstream,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from broker.errors import BadGateway, BadRequest, GatewayTimeout
from broker.settings import Settings
from broker.support.metrics import Child, Metrics

log = logging.getLogger("broker.proxy")


def new_upstream(settings: Settings) -> Upstream:
    """The pool of ``upstream_pool_size`` keep-alive connections to Cube. Bodies pass
    through still encoded, so bytes reach the caller as Cube sent them; no cookies are
    kept (a cookie Cube set for one caller reaches that caller, never another)."""
    return Upstream(
        settings.cube_url,
        size=settings.upstream_pool_size,
        connect_timeout=settings.upstream_connect_timeout,
    )


class CubeClient:
    """Requests to Cube's REST API through ``upstream``; each must have its answer's
    headers within ``answer_timeout`` seconds, and a body then streams with at most that
    long between two reads."""

    def __init__(self, upstream: Upstream, metrics: Metrics, answer_timeout: float) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._answer_timeout = answer_timeout

    def request(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        model: str,
        answer_within: float | None = None,
    ) -> Exchange:
        """One request about the semantic model ``model`` (a registry asset ID: the
        ``model`` label of the upstream duration), as ``async with`` yielding the response
        once its headers arrived; ``path_qs`` is the raw, still-encoded path and query,
        sent byte for byte. The headers must come within ``answer_within`` seconds when
        that is shorter than the answer timeout.

        Entering raises ``BadGateway`` (Cube unreachable, connection broken),
        ``GatewayTimeout`` (no answer in time) or ``BadRequest`` (a header that cannot be
        sent) for failures before the headers arrived.
        """
        within = self._answer_timeout
        if answer_within is not None and answer_within < within:
            within = answer_within
        duration = self._metrics.upstream_duration(model)
        request = (method, path_qs, headers, body, within)
        return Exchange(self._upstream, request, self._answer_timeout, duration, self.failure)

    async def read(self, response: UpstreamResponse) -> bytes:
        """The whole body of ``response``; a broken or late body is ``BadGateway`` or
        ``GatewayTimeout`` like any other upstream failure."""
        try:
            return await response.read()
        except UpstreamError as exc:
            raise self.failure(exc) from None

    async def read_head(self, response: UpstreamResponse, limit: int) -> bytes:
        """The body of ``response`` as far as it is read: all of it when it fits in
        ``limit`` bytes (then ``response.at_eof()``), else a part of it or nothing
        (a declared length over ``limit`` is not read at all); :meth:`relay` sends the
        rest. Failures as for :meth:`read`."""
        length = response.content_length
        if length is not None and length > limit:
            return b""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= limit:
                chunk = await response.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except UpstreamError as exc:
            raise self.failure(exc) from None
        return b"".join(chunks)

    async def relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        headers: Mapping[str, str],
        request_id: str,
        head: bytes = b"",
        *,
        finish: Callable[[web.Request, web.StreamResponse], None],
    ) -> web.StreamResponse:
        """Answer ``request`` with ``upstream``'s status and ``headers``: first ``head``
        (the part of the body already read), then the rest as it arrives, never held
        whole. Cube breaking off mid-answer is counted and the caller's connection closed
        (it cannot get a clean error any more); the caller hanging up just ends the copy."""
        if upstream.arrived:
            # The whole answer is in memory already (a short one comes with its head):
            # headers and body leave in one write, no streaming machinery.
            body = head + upstream.take() if head else upstream.take()
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        finish(request, response)  # the request context sees it prepared already
        await response.prepare(request)
        if head:
            await response.write(head)
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as exc:
                self._metrics.upstream_errors.labels("stream").inc()
                log.warning(
                    "Cube's answer broke off mid-stream (%s); closing the connection",
                    type(exc).__name__,
                    extra={"request_id": request_id},
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

    def failure(self, exc: Exception) -> Exception:
        """The one mapping of upstream failures: no answer in time is ``GatewayTimeout``,
        an unreachable or misbehaving Cube ``BadGateway``; each is counted by kind. A
        header that cannot be sent is the caller's ``BadRequest``. Any other exception is
        returned as it is."""
        if isinstance(exc, UpstreamTimeout):
            self._metrics.upstream_errors.labels("timeout").inc()
            return GatewayTimeout()
        if isinstance(exc, UpstreamUnreachable):
            self._metrics.upstream_errors.labels("connect").inc()
            return BadGateway("Cube is unreachable.")
        if isinstance(exc, UpstreamError):
            self._metrics.upstream_errors.labels("protocol").inc()
            return BadGateway("Cube's answer was broken.")
        if isinstance(exc, UnsendableRequest):
            return BadRequest("A header of the request cannot be forwarded.")
        return exc

    async def get_json(
        self,
        path: str,
        token: str,
        request_id: str,
        time_limit: float,
        *,
        model: str,
        trace: Mapping[str, str] | None = None,
    ) -> CubeAnswer:
        """A ``GET`` for the broker's own API, read whole within ``time_limit`` seconds."""
        headers = api_headers(token, request_id, trace=trace)
        try:
            async with asyncio.timeout(time_limit):
                async with self.request("GET", path, headers, model=model) as resp:
                    raw = await self.read(resp)
        except TimeoutError:
            raise self.failure(UpstreamTimeout()) from None
        content_type = resp.headers.get("Content-Type", "")
        return CubeAnswer(resp.status, raw, content_type, json_or_none(raw))


class Exchange:
    """One request to Cube in flight (:meth:`CubeClient.request`): entered, the response
    with its headers (its wait observed in ``duration``); left, the connection released.
    A plain class, not a generator: it is on every proxied request's path."""

    __slots__ = ("_duration", "_failure", "_read_timeout", "_request", "_response", "_upstream")

    def __init__(
        self,
        upstream: Upstream,
        request: tuple[str, str, Mapping[str, str], bytes | None, float],
        read_timeout: float,
        duration: Child,
        failure: Callable[[Exception], Exception],
    ) -> None:
        self._upstream = upstream
        self._request = request
        self._read_timeout = read_timeout
        self._duration = duration
        self._failure = failure
        self._response: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        started = time.perf_counter()
        method, path_qs, headers, body, within = self._request
        try:
            response = await self._upstream.send(
                method, path_qs, headers, body, head_timeout=within, read_timeout=self._read_timeout
            )
        except (UpstreamError, UnsendableRequest) as exc:
            raise self._failure(exc) from None
        self._duration.observe(time.perf_counter() - started)
        self._response = response
        return response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.release()


@dataclass(frozen=True, slots=True)
class CubeAnswer:
    """A whole answer of Cube's: status, body, its content type, the body parsed as JSON
    (``None`` when it is not JSON)."""

    status: int
    body: bytes
    content_type: str
    parsed: Any


def api_headers(
    token: str,
    request_id: str,
    *,
    json_body: bool = False,
    trace: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of the broker's own calls to Cube's API; ``trace`` is the caller's W3C
    trace headers (:func:`broker.support.tracing.trace_headers`), passed on unchanged."""
    headers = {
        **(trace or {}),
        "Authorization": token,
        "Accept": "application/json",
        "X-Request-Id": request_id,
    }
    if json_body:
        headers["Content-Type"] = "application/json"
    return headers


def json_or_none(raw: bytes) -> Any:
    """``raw`` parsed as JSON, or ``None`` when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
