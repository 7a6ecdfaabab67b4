"""A tiny, scriptable stand-in for Cube's REST API, for fault injection only (slow, broken,
"Continue wait"). The end-to-end tests run the real Cube."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class FakeCube:
    continue_waits: int = 0  # answer "Continue wait" this many times first
    delay: float = 0.0  # seconds before answering
    status: int = 200
    body: Any = field(default_factory=lambda: {"data": [{"orders.count": "3"}]})
    stream_bytes: int = 0  # > 0: answer with this many bytes, chunked
    answer_headers: dict[str, str] = field(default_factory=dict)  # added to every answer
    raw_body: bytes | None = None  # answer these bytes (as application/json) instead
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method, request.raw_path, CIMultiDict(request.headers), await request.read()
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        response = await self.answer(request)
        response.headers.update(self.answer_headers)
        return response

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if self.continue_waits > 0:
            self.continue_waits -= 1
            return web.json_response({"error": "Continue wait"})
        if self.stream_bytes:
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.headers["Connection"] = "X-Hop"
            resp.headers["X-Hop"] = "must-not-pass"
            await resp.prepare(request)
            chunk = bytes(range(256)) * 256
            sent = 0
            while sent < self.stream_bytes:
                part = chunk[: self.stream_bytes - sent]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
            return resp
        if self.raw_body is not None:
            return web.Response(
                status=self.status, body=self.raw_body, content_type="application/json"
            )
        if request.path.endswith("/meta") and self.status == 200:
            return web.json_response({"cubes": [{"name": "orders", "measures": []}]})
        return web.Response(
            status=self.status,
            text=json.dumps(self.body),
            content_type="application/json",
            headers={"X-Cube-Header": "kept"},
        )


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handle: RawHandler) -> AsyncIterator[str]:
    """A bare TCP server for answers aiohttp would not send (cut off, trickled): each
    connection runs ``handle``. Yields its base URL; handlers still running at the end are
    cancelled and their connections closed."""
    handlers: list[asyncio.Task[Any]] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handle(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
