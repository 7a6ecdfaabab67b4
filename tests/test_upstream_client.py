"""The broker's HTTP/1.1 client for Cube (``broker.cube.http1``), against real servers:
aiohttp ones for well-behaved answers, raw asyncio servers for what aiohttp would never
send (a connection closed mid-exchange, a close-delimited body, interim answers,
garbage)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from broker.cube.http1 import (
    HIGH_WATER,
    UnsendableRequest,
    Upstream,
    UpstreamBroken,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tests.harness.ports import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A raw TCP server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@contextlib.asynccontextmanager
async def pool(url: str, *, size: int = 4, connect_timeout: float = 2.0) -> AsyncIterator[Upstream]:
    upstream = Upstream(url, size=size, connect_timeout=connect_timeout)
    try:
        yield upstream
    finally:
        await upstream.close()


async def get(
    upstream: Upstream,
    path: str = "/",
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    head_timeout: float = 2.0,
    read_timeout: float = 2.0,
) -> UpstreamResponse:
    return await upstream.send(
        method,
        path,
        headers or {},
        body,
        head_timeout=head_timeout,
        read_timeout=read_timeout,
    )


async def fetch(upstream: Upstream, path: str = "/", **kwargs: object) -> tuple[int, bytes]:
    response = await get(upstream, path, **kwargs)  # type: ignore[arg-type]
    try:
        return response.status, await response.read()
    finally:
        response.release()


@dataclass
class Echo:
    """An aiohttp server's URL, the requests it saw and, for each, the caller's address
    and port (the connection it came on)."""

    url: str
    seen: list[web.Request] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """An aiohttp server echoing method, raw path, headers and body (``/big``: 1 MiB)."""
    port = free_port()
    served = Echo(f"http://127.0.0.1:{port}")
    seen, peers = served.seen, served.peers

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if request.path == "/big":
            return web.Response(body=b"x" * 1024 * 1024)
        body = await request.read()
        text = f"{request.method} {request.raw_path} {len(body)} {body.decode()}"
        return web.Response(text=text, headers={"X-Seen": request.headers.get("X-Mine", "-")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield served
    finally:
        await runner.cleanup()


async def test_requests_go_byte_for_byte_and_reuse_one_connection(
    echo: Echo,
) -> None:
    url, seen = echo.url, echo.seen
    async with pool(url) as upstream:
        status, body = await fetch(upstream, "/a/b?x=%3A&y=%2F", headers={"X-Mine": "v"})
        assert (status, body) == (200, b"GET /a/b?x=%3A&y=%2F 0 ")
        response = await get(upstream, "/q", method="POST", body=b'{"k": 1}')
        assert response.headers["X-Seen"] == "-"
        assert await response.read() == b'POST /q 8 {"k": 1}'
        response.release()
        status, body = await fetch(upstream, "/empty", method="POST")
        assert body == b"POST /empty 0 "
        assert seen[2].headers["Content-Length"] == "0"
        assert seen[0].headers["X-Mine"] == "v"
        assert seen[0].headers["Host"] == url.removeprefix("http://")
        assert len(set(echo.peers)) == 1, "three requests share one connection"


async def test_the_base_path_prefixes_every_request(echo: Echo) -> None:
    url = echo.url
    async with pool(url + "/cube/") as upstream:
        assert (await fetch(upstream, "/cubejs-api/v1/meta"))[
            1
        ] == b"GET /cube/cubejs-api/v1/meta 0 "


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b"])
async def test_a_line_break_in_a_header_refuses_the_request(echo: Echo, value: str) -> None:
    url, seen = echo.url, echo.seen
    async with pool(url) as upstream:
        with pytest.raises(UnsendableRequest):
            await get(upstream, headers={"X-Mine": value})
        assert seen == []


async def test_the_pool_holds_at_most_size_connections_and_queues_the_rest() -> None:
    open_now = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            while True:
                await read_head(reader)
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            open_now -= 1

    raw = Raw(slow)
    async with raw as url, pool(url, size=2) as upstream:
        answers = await asyncio.gather(*(fetch(upstream) for _ in range(8)))
        assert answers == [(200, b"ok")] * 8
        assert peak == 2 and raw.connections == 2


async def test_a_full_pool_past_the_connect_timeout_is_a_timeout(
    echo: Echo,
) -> None:
    url = echo.url
    async with pool(url, size=1, connect_timeout=0.2) as upstream:
        held = await get(upstream)  # its body never read: the one connection stays busy
        with pytest.raises(UpstreamTimeout):
            await get(upstream)
        held.release()
        assert (await fetch(upstream))[0] == 200, "the place freed serves the next request"


async def test_a_keep_alive_connection_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_head(reader)  # the next request on this connection: dropped unanswered

    raw = Raw(one_answer_per_connection)
    async with raw as url, pool(url) as upstream:
        assert await fetch(upstream) == (200, b"ok")
        assert await fetch(upstream) == (200, b"ok")
        assert raw.connections == 2


async def test_a_new_connection_closed_unanswered_is_broken_not_retried() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    raw = Raw(drop)
    async with raw as url, pool(url) as upstream:
        with pytest.raises(UpstreamBroken):
            await get(upstream)
        assert raw.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["not-http", "two-lengths", "upgrade"],
)
async def test_garbage_is_broken_and_its_connection_never_reused(answer: bytes) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    raw = Raw(garbage)
    async with raw as url, pool(url) as upstream:
        for _ in range(2):
            with pytest.raises(UpstreamBroken):
                await get(upstream, head_timeout=1)
        assert raw.connections == 2 and upstream._open == 0


async def test_a_head_that_never_ends_is_broken_not_held() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(64):
            writer.write(b"x" * 4096)
            await writer.drain()
        await asyncio.sleep(5)

    raw = Raw(endless)
    async with raw as url, pool(url) as upstream:
        with pytest.raises(UpstreamBroken):
            await get(upstream)


async def test_interim_answers_are_skipped_and_a_close_delimited_body_read_to_its_end() -> None:
    async def old_school(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        for part in (b"until ", b"the ", b"end"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)

    raw = Raw(old_school)
    async with raw as url, pool(url) as upstream:
        response = await get(upstream)
        assert response.status == 200 and response.content_length is None
        assert await response.read() == b"until the end"
        response.release()
        assert await fetch(upstream) == (200, b"until the end")
        assert raw.connections == 2, "a close-delimited answer's connection is not reused"


async def test_a_chunked_answer_arrives_decoded_with_its_headers() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 201 Made It\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n"
                b"Set-Cookie: b=2\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()

    raw = Raw(chunked)
    async with raw as url, pool(url) as upstream:
        response = await get(upstream)
        assert (response.status, response.reason) == (201, "Made It")
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert await response.read() == b"hello world"
        response.release()
        assert await fetch(upstream) == (201, b"hello world")
        assert raw.connections == 1


async def test_no_head_in_time_and_no_body_in_time_are_timeouts() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/body" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            await writer.drain()
        await asyncio.sleep(5)

    raw = Raw(stall)
    async with raw as url, pool(url) as upstream:
        with pytest.raises(UpstreamTimeout):
            await get(upstream, "/head", head_timeout=0.2)
        response = await get(upstream, "/body", read_timeout=0.2)
        assert await response.readany() == b"half"
        with pytest.raises(UpstreamTimeout):
            await response.readany()
        response.release()
        assert upstream._open == 0, "both half-done connections were closed"


async def test_a_trickled_head_is_bounded_as_a_whole() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    raw = Raw(trickle)
    async with raw as url, pool(url) as upstream:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            await get(upstream, head_timeout=0.3, read_timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 0.6


async def test_reading_pauses_while_the_reader_lags() -> None:
    sent = 0
    total = 64 * 1024 * 1024

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    raw = Raw(flood)
    async with raw as url, pool(url) as upstream:
        response = await get(upstream)
        await asyncio.sleep(0.5)  # the reader lags
        lagging = sent
        assert lagging < total // 4, f"{lagging} bytes sent to a reader that read none"
        got = len(await response.readany())
        assert got <= HIGH_WATER + 1024 * 1024
        while chunk := await response.readany():
            got += len(chunk)
        assert got == total
        response.release()


async def test_an_answer_left_before_its_end_closes_its_connection(
    echo: Echo,
) -> None:
    url = echo.url
    async with pool(url) as upstream:
        response = await get(upstream)
        await asyncio.sleep(0.05)
        response.release()  # a short body, arrived whole though never read: reusable
        response = await get(upstream, "/big")
        response.release()  # 1 MiB, hardly begun: the connection cannot be reused
        await fetch(upstream)
        first, second, third = echo.peers
        assert first == second != third


async def test_a_cancelled_exchange_frees_its_place() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(5)

    raw = Raw(never)
    async with raw as url, pool(url, size=1) as upstream:
        task = asyncio.create_task(get(upstream, head_timeout=5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert upstream._open == 0
        waiting = asyncio.create_task(get(upstream, head_timeout=0.2))
        with pytest.raises(UpstreamTimeout):
            await waiting  # it got the place (and a connection) at once
        assert raw.connections == 2


async def test_nothing_listening_is_unreachable() -> None:
    async with pool(f"http://127.0.0.1:{free_port()}") as upstream:
        with pytest.raises(UpstreamUnreachable):
            await get(upstream)
        assert upstream._open == 0


@pytest.mark.parametrize("url", ["ftp://cube:21", "http://", "cube:4000"])
def test_only_http_urls_make_a_pool(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        Upstream(url, size=1, connect_timeout=1)
