"""Reading request bodies, only ever after the credential passed (SPEC §3).

Every body is read through :class:`BodyBudget`: at most 1 MiB each, all of them together
at most ``BROKER_BODY_MEMORY`` bytes in memory, and none allowed to stall: a body that
makes no progress for ``BROKER_BODY_TIMEOUT`` seconds is answered 408. A caller that hangs
up mid-body is no error of the broker's (:class:`ClientClosedRequest`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from broker.errors import (
    BadRequest,
    ClientClosedRequest,
    PayloadTooLarge,
    RateLimitCause,
    RateLimited,
    RequestTimeout,
)

MAX_BODY = 1024 * 1024


class BodyBudget:
    """The bytes of request bodies held in memory, against one bound for all connections.

    A body reserves what it declares (``Content-Length``) before its first byte is read,
    or, without one, each chunk as it arrives; what cannot be reserved is refused with 429
    (``Retry-After: 1``) instead of waiting, so the bound never makes a caller hang.
    """

    def __init__(self, limit: int, stall_timeout: float) -> None:
        self._limit = limit
        self._stall_timeout = stall_timeout
        self.in_use = 0

    async def read(self, request: web.Request) -> bytes:
        """The whole body of ``request`` (``b""`` when it has none); raises
        ``PayloadTooLarge``, ``RateLimited``, ``RequestTimeout``, ``BadRequest`` (a broken
        chunked or compressed body) or ``ClientClosedRequest``."""
        if not request.body_exists:
            return b""
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise PayloadTooLarge()
        held = 0
        try:
            if declared is not None:
                held = self._reserve(declared)
            chunks: list[bytes] = []
            size = 0
            while chunk := await self._next_chunk(request):
                size += len(chunk)
                if size > MAX_BODY:
                    raise PayloadTooLarge()
                if size > held:
                    held += self._reserve(size - held)
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            self.in_use -= held

    async def _next_chunk(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self._stall_timeout):
                return await request.content.readany()
        except TimeoutError:
            raise RequestTimeout() from None
        except HttpProcessingError:
            raise BadRequest("The request body is malformed.") from None
        except ConnectionError:
            raise ClientClosedRequest() from None

    def _reserve(self, size: int) -> int:
        if self.in_use + size > self._limit:
            message = "The broker holds as many request bodies as it may; retry."
            raise RateLimited(1, RateLimitCause.BODY_MEMORY, message)
        self.in_use += size
        return size
