"""The app served the way ``cube-broker serve`` serves it (:class:`BrokerRunner`, no
handler cancellation), on a free loopback port, for tests that speak raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from broker.app import create_app
from broker.http.server import BrokerRunner
from broker.serve import bind_listeners
from broker.settings import Settings


@dataclass(frozen=True)
class Served:
    app: web.Application
    host: str
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a connection and send a request's head and ``body`` (maybe only part of
        what the head announces)."""
        reader, writer = await self.connect()
        lines = [f"{method} {path} HTTP/1.1", "Host: broker"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        return reader, writer


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    runner = BrokerRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(runner.app, "127.0.0.1", port)
    finally:
        await runner.cleanup()


async def read_answer(reader: asyncio.StreamReader, within: float = 2.0) -> tuple[int, bytes, str]:
    """Status, body and raw head of an answer with a ``Content-Length``, which must come
    within ``within`` seconds."""
    async with asyncio.timeout(within):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = next(
            int(line.split(":", 1)[1])
            for line in head.split("\r\n")
            if line.lower().startswith("content-length:")
        )
        body = await reader.readexactly(length)
    return int(head.split(" ", 2)[1]), body, head


@dataclass(frozen=True)
class Listening:
    """The app served on its three listeners (free ports), as ``cube-broker serve`` does."""

    app: web.Application
    urls: dict[str, str]  # listener -> base URL


@contextlib.asynccontextmanager
async def serve_listeners(settings: Settings) -> AsyncIterator[Listening]:
    runner = BrokerRunner(create_app(settings))
    await runner.setup()
    try:
        bound = await bind_listeners(runner, settings)
        yield Listening(runner.app, {name: f"http://{host}:{port}" for name, host, port in bound})
    finally:
        await runner.cleanup()
