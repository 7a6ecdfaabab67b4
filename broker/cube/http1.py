"""The broker's HTTP/1.1 client for its one upstream, Cube: a bounded keep-alive pool of
connections, each an :class:`asyncio.Protocol` parsed by ``httptools`` (llhttp, C).

Why not ``aiohttp.ClientSession``: measured on the same upstream (``bench/``), its
per-request machinery (request and response objects, auto headers, traces, timers, the
payload writer) cost about 140 µs of CPU per proxied request, more than the broker's
whole policy; this client does the one thing the proxy needs, a request with its body in
memory and an answer whose body is streamed back, in about a third of that.

What it does and does not do:

- requests are written whole (head and body in one write, ``Content-Length`` set); header
  values are sent as the caller's parser decoded them, and a CR, LF or NUL in any of them
  refuses the request (:class:`UnsendableRequest`) instead of splitting it;
- answers are parsed strictly (llhttp's defaults); ``1xx`` interim answers are skipped,
  an upgrade (never asked for) is broken;
  ``Content-Length``, chunked and close-delimited bodies are read, never decoded;
- a body is buffered up to :data:`HIGH_WATER` bytes, then reading from Cube pauses until
  the reader catches up: a slow caller never makes the broker hold a large answer whole;
- a connection goes back to the pool only when its answer arrived to the end and both
  sides allow keep-alive; an idle one is dropped after ``idle_timeout``;
- a reused connection that Cube closed before answering anything (its keep-alive ran out
  as the request left) is retried once on a new connection: every route the broker
  forwards is a read;
- failures are :class:`UpstreamUnreachable`, :class:`UpstreamTimeout` and
  :class:`UpstreamBroken`, mapped to 502/504 by :class:`broker.cube.client.CubeClient`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

#: Body bytes buffered per answer before reading from Cube pauses; reading resumes once
#: the reader took them.
HIGH_WATER = 256 * 1024
#: Bytes an answer may take to finish its head (status line and headers); more is broken.
HEAD_LIMIT = 64 * 1024
#: Methods whose request carries ``Content-Length`` even without a body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamError(Exception):
    """Cube could not be asked, or its answer could not be read."""


class UpstreamUnreachable(UpstreamError):
    """No connection to Cube (refused, unresolvable, or not within the connect timeout)."""


class UpstreamTimeout(UpstreamError):
    """Cube took too long: to start its answer, or between two reads of its body."""


class UpstreamBroken(UpstreamError):
    """Cube's answer was not HTTP, or the connection broke before it ended."""


class UnsendableRequest(ValueError):
    """A header would not survive the trip (a CR, LF or NUL in it)."""


class _Stale(UpstreamError):
    """A reused connection closed before any byte of the answer: safe to retry."""


class UpstreamResponse:
    """One answer of Cube's: status, reason and headers once they arrived; the body as it
    arrives (:meth:`readany`, :meth:`read`). :meth:`release` hands the connection back
    (or closes it when the body did not arrive to its end)."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_conn",
        "_eof",
        "_error",
        "_paused",
        "_read_timeout",
        "_waiter",
        "content_length",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: _Connection,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        read_timeout: float,
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._read_timeout = read_timeout
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._paused = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def arrived(self) -> bool:
        """Whether the whole body arrived (:meth:`take` has what is left of it)."""
        return self._eof

    def take(self) -> bytes:
        """What of the body arrived and was not read yet, without waiting."""
        chunk = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        return chunk

    def at_eof(self) -> bool:
        """Whether the body was read to its end (nothing left, buffered or to come)."""
        return self._eof and not self._buffer

    async def readany(self) -> bytes:
        """What of the body arrived since the last call (waiting for some), ``b""`` at its
        end; ``UpstreamTimeout`` when nothing came within the read timeout,
        ``UpstreamBroken`` when the connection broke first."""
        if not self._buffer and not self._eof and self._error is None:
            await self._wait()
        if self._buffer:
            return self.take()
        if self._error is not None:
            raise self._error
        return b""

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        chunks = []
        while chunk := await self.readany():
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Done with this answer: its connection goes back to the pool when the whole
        body arrived (read or not) and keep-alive holds, else it is closed."""
        self._conn.done(reusable=self._eof)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    # -- fed by the connection --------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def _end(self, error: UpstreamError | None = None) -> None:
        if self._eof or self._error is not None:
            return
        if error is None:
            self._eof = True
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout())


class _Connection(asyncio.Protocol):
    """One keep-alive connection to Cube; at most one exchange at a time."""

    def __init__(self, pool: Upstream) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._names: list[bytes] = []
        self._values: list[bytes] = []
        self._reason = b""
        self._interim = False
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._answered = False  # a byte of the current answer arrived
        self._complete = False  # the current answer ended and keep-alive holds
        self._read_timeout = 0.0
        self._reused = False
        self._head_bytes = 0
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._response is None:
            self.close()  # Cube spoke unasked: nothing to pair it with
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._fail(UpstreamBroken())
            self.close()
            return
        if self._head is not None:  # the head still not whole
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                self._fail(UpstreamBroken())
                self.close()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and _delimited_by_close(response):
            response._end()
            self._response = None
            return
        if self._answered or not self._reused:
            self._fail(UpstreamBroken())
        else:
            self._fail(_Stale())

    # -- httptools callbacks ----------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._names.append(name)
        self._values.append(value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # "100 Continue" and the like: the answer comes after
            return
        head = self._head
        if head is None:
            raise UpstreamBroken()  # an answer nobody asked for: the parse fails, we close
        headers = CIMultiDictProxy(
            CIMultiDict(
                zip(
                    [n.decode("latin-1") for n in self._names],
                    [v.decode("utf-8", "surrogateescape") for v in self._values],
                    strict=True,
                )
            )
        )
        reason = self._reason.decode("latin-1")
        response = self._response = UpstreamResponse(
            self, status, reason, headers, self._read_timeout
        )
        self._head = None
        if not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        self._names.clear()
        self._values.clear()
        self._reason = b""
        if self._interim:
            self._interim = False
            return
        response = self._response
        self._response = None
        self._complete = self._parser.should_keep_alive()
        if response is not None:
            response._end()

    # -- the exchange -----------------------------------------------------------------

    async def exchange(
        self, request: bytes, head_timeout: float, read_timeout: float, *, reused: bool
    ) -> UpstreamResponse:
        """Send ``request`` and wait up to ``head_timeout`` seconds for the answer's head."""
        assert self._transport is not None
        if self.closed:
            raise _Stale() if reused else UpstreamBroken()
        loop = asyncio.get_running_loop()
        self._reused = reused
        self._interim = False
        self._answered = False
        self._complete = False
        self._head_bytes = 0
        self._read_timeout = read_timeout
        head: asyncio.Future[UpstreamResponse] = loop.create_future()
        self._head = head
        self._transport.write(request)
        timer = loop.call_later(head_timeout, _expire, head)
        try:
            return await head
        except BaseException:
            self.close()  # a half-done exchange: the connection cannot be reused
            raise
        finally:
            timer.cancel()

    def done(self, *, reusable: bool) -> None:
        """The exchange is over: back to the pool if it ended cleanly, else closed."""
        if not (reusable and self._complete and not self.closed):
            self.close()
        self._response = None
        self._pool.release(self)

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: UpstreamError) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        response, self._response = self._response, None
        if response is not None:
            response._end(error)


def _delimited_by_close(response: UpstreamResponse) -> bool:
    """An answer with neither a length nor chunked coding ends where the connection does."""
    if response.content_length is not None:
        return False
    return "chunked" not in response.headers.get("Transfer-Encoding", "").lower()


class Upstream:
    """A bounded pool of keep-alive connections to one origin (``base_url``'s scheme,
    host and port; its path prefixes every request's).

    ``size`` connections at most, busy or idle; a request that finds none free waits for
    one, within ``connect_timeout`` together with connecting (then ``UpstreamTimeout``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        size: int,
        connect_timeout: float,
        idle_timeout: float = 4.0,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        authority = f"[{url.host}]" if ":" in url.host else url.host
        if url.explicit_port:
            authority += f":{url.port}"
        self._host_line = f"Host: {authority}\r\n"
        self.prefix = url.raw_path.rstrip("/")
        self._size = size
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        head_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send one request (``path_qs`` raw, sent byte for byte after the base path) and
        return the answer once its head arrived; the caller must :meth:`release
        <UpstreamResponse.release>` it."""
        request = self._serialize(method, path_qs, headers, body)
        conn, reused = await self._acquire()
        try:
            return await conn.exchange(request, head_timeout, read_timeout, reused=reused)
        except _Stale:
            self.release(conn)
        except BaseException:
            self.release(conn)
            raise
        conn, _ = await self._acquire(fresh=True)
        try:
            return await conn.exchange(request, head_timeout, read_timeout, reused=False)
        except BaseException:
            self.release(conn)
            raise

    def _serialize(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        lines = [f"{method} {self.prefix}{path_qs} HTTP/1.1\r\n", self._host_line]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body) if body else 0}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Each line ends in the one CRLF put there above: any other CR or LF (or a NUL)
        # came from a value, and would split the request.
        if text.count("\n") != len(lines) or text.count("\r") != len(lines) or "\0" in text:
            raise UnsendableRequest("a header value holds a line break or a NUL")
        head = text.encode("utf-8", "surrogateescape")
        return head + body if body else head

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        """An idle connection (``True``: reused) or a new one. Waiting for a free place
        and connecting share the connect timeout: a full pool past it is
        ``UpstreamTimeout``, a connection not made within it ``UpstreamUnreachable``."""
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn, True
            conn.close()
            self._open -= 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        if self._open >= self._size:
            try:
                async with asyncio.timeout_at(deadline):
                    while self._open >= self._size:
                        waiter: asyncio.Future[_Connection | None] = loop.create_future()
                        self._waiters.append(waiter)
                        try:
                            handed = await waiter
                        except BaseException:
                            self._give_back(waiter)
                            raise
                        if handed is not None:
                            return handed, True
            except TimeoutError:
                raise UpstreamTimeout() from None
        self._open += 1
        try:
            async with asyncio.timeout_at(deadline):
                return await self._connect(), False
        except BaseException as exc:
            self._open -= 1
            self._wake_one(None)
            if isinstance(exc, TimeoutError):
                raise UpstreamUnreachable() from None
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        except OSError as exc:  # refused, unresolvable, TLS refused
            raise UpstreamUnreachable() from exc
        return conn

    def release(self, conn: _Connection) -> None:
        """``conn``'s exchange is over: hand it to a waiting request, keep it idle, or
        (closed) free its place."""
        if conn.closed or self._closed:
            conn.close()
            self._open -= 1
            self._wake_one(None)
        elif not self._wake_one(conn):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

    def _wake_one(self, handed: _Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return True
        return False

    def _give_back(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiter gave up (cancelled, timed out): what it was handed goes to the next."""
        if waiter.done() and not waiter.cancelled():
            handed = waiter.result()
            if handed is not None:
                self.release(handed)
            else:
                self._wake_one(None)
        elif waiter in self._waiters:
            self._waiters.remove(waiter)

    async def close(self) -> None:
        """Close every connection; those in use close when their exchange ends."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._open -= len(self._idle)
        self._idle.clear()
