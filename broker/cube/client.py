"""Where Cube is spoken to: one shared ``ClientSession`` with a bounded keep-alive pool,
and the mapping of every upstream failure to 502 or 504."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from broker.errors import BadGateway, GatewayTimeout
from broker.settings import Settings
from broker.support.metrics import Child, Metrics

log = logging.getLogger("broker.proxy")


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The upstream session: pool of ``upstream_pool_size`` keep-alive connections; bodies
    pass through still encoded (no auto-decompression), so bytes reach the caller as Cube
    sent them. No cookie jar: the session is shared by every caller, so a cookie Cube set
    for one must never ride along on another's request (it still reaches its own caller)."""
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_pool_size, limit_per_host=0, keepalive_timeout=30
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.upstream_connect_timeout,
        sock_connect=settings.upstream_connect_timeout,
        sock_read=settings.upstream_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


class CubeClient:
    """Requests to Cube's REST API at ``base_url``; each must have its answer's headers
    within ``answer_timeout`` seconds (a body then streams with at most that long between
    two reads: the session's ``sock_read``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        metrics: Metrics,
        answer_timeout: float,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
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
        time_limit: float | None = None,
        answer_within: float | None = None,
    ) -> Exchange:
        """One request about the semantic model ``model`` (a registry asset ID: the
        ``model`` label of the upstream duration), as ``async with`` yielding the response
        once its headers arrived; ``path_qs`` is the raw, still-encoded path and query,
        sent byte for byte. The headers must come within ``answer_within`` seconds when
        that is shorter than the answer timeout; ``time_limit`` bounds the whole exchange,
        body included.

        Entering raises ``BadGateway`` (Cube unreachable, connection broken) or
        ``GatewayTimeout`` (no answer in time) for failures before the headers arrived.
        """
        kwargs: dict[str, Any] = {"headers": headers, "data": body, "allow_redirects": False}
        if time_limit is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=time_limit,
                connect=min(time_limit, self._session.timeout.connect or time_limit),
            )
        # Without a shorter bound, the session's own timeouts are the answer timeout: a
        # connection within ``connect``, then no read (the headers' first) waiting longer
        # than ``sock_read`` = ``answer_timeout``; no timer of the broker's own.
        within = None
        if answer_within is not None and answer_within < self._answer_timeout:
            within = answer_within
        url = URL(self._base + path_qs, encoded=True)
        duration = self._metrics.upstream_duration(model)
        return Exchange(self._session, method, url, kwargs, within, duration, self.failure)

    async def read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body of ``response``; a broken or late body is ``BadGateway`` or
        ``GatewayTimeout`` like any other upstream failure."""
        try:
            return await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.failure(exc) from None

    async def read_head(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        """The body of ``response`` as far as it is read: all of it when it fits in
        ``limit`` bytes (then ``response.content.at_eof()``), else a part of it or nothing
        (a declared length over ``limit`` is not read at all); :meth:`relay` sends the
        rest. Failures as for :meth:`read`."""
        length = response.content_length
        if length is not None and length > limit:
            return b""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= limit:
                chunk = await response.content.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.failure(exc) from None
        return b"".join(chunks)

    async def relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: Mapping[str, str],
        request_id: str,
        head: bytes = b"",
    ) -> web.StreamResponse:
        """Answer ``request`` with ``upstream``'s status and ``headers``: first ``head``
        (the part of the body already read), then the rest as it arrives, never held
        whole. Cube breaking off mid-answer is counted and the caller's connection closed
        (it cannot get a clean error any more); the caller hanging up just ends the copy."""
        if upstream.content.at_eof():
            # A short answer read whole: headers and body leave in one write (a prepared
            # StreamResponse would send its headers apart, a system call more).
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=head
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        if head:
            await response.write(head)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
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
        an unreachable or misbehaving Cube ``BadGateway``; each is counted by kind. Any
        other exception is returned as it is."""
        if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
            self._metrics.upstream_errors.labels("timeout").inc()
            return GatewayTimeout()
        if isinstance(exc, aiohttp.ClientConnectorError):
            self._metrics.upstream_errors.labels("connect").inc()
            return BadGateway("Cube is unreachable.")
        if isinstance(exc, aiohttp.ClientError):
            self._metrics.upstream_errors.labels("protocol").inc()
            return BadGateway("Cube's answer was broken.")
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
        async with self.request("GET", path, headers, model=model, time_limit=time_limit) as resp:
            raw = await self.read(resp)
            return CubeAnswer(
                resp.status, raw, resp.headers.get("Content-Type", ""), json_or_none(raw)
            )


class Exchange:
    """One request to Cube in flight (:meth:`CubeClient.request`): entered, the response
    with its headers (its wait observed in ``duration``); left, the connection released.
    A plain class, not a generator: it is on every proxied request's path."""

    __slots__ = (
        "_duration",
        "_failure",
        "_kwargs",
        "_method",
        "_response",
        "_session",
        "_url",
        "_within",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        kwargs: dict[str, Any],
        within: float | None,
        duration: Child,
        failure: Callable[[Exception], Exception],
    ) -> None:
        self._session = session
        self._method = method
        self._url = url
        self._kwargs = kwargs
        self._within = within
        self._duration = duration
        self._failure = failure
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        started = time.perf_counter()
        try:
            if self._within is None:
                response = await self._session.request(self._method, self._url, **self._kwargs)
            else:
                async with asyncio.timeout(self._within):
                    response = await self._session.request(self._method, self._url, **self._kwargs)
        except (TimeoutError, aiohttp.ClientError) as exc:
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
