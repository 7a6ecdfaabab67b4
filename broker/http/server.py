"""The HTTP server around the app: aiohttp's, with the broker's answer where aiohttp's own
parser refuses a request.

aiohttp answers a request its parser cannot read (a bad byte in a header, a field over the
size limit) by itself, before the request context runs: a ``text/plain`` body quoting the
offending line, and an ERROR log line with a traceback that quotes it too — an admin key
or callback secret included. :class:`BrokerRunner` serves the same app with a request
handler that answers those with SPEC §3's JSON (``bad_request``, nothing echoed), logs
only the kind of refusal, and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from broker.errors import BadRequest, BrokerError
from broker.http.answer import error_response
from broker.http.cors import SERVER_NAME

log = logging.getLogger("broker.server")

#: Largest request line and header field accepted (SPEC §3: 16 KiB).
MAX_FIELD_SIZE = 16 * 1024

#: Keyword arguments of the runner, the same in production and in the tests that need it.
SERVER_OPTIONS: dict[str, Any] = {
    "access_log": None,  # the broker writes its own, redacted access line
    "max_field_size": MAX_FIELD_SIZE,
    "max_line_size": MAX_FIELD_SIZE,
}


class _BrokerRequestHandler(RequestHandler):
    #: The local port the connection reached, read once when it is made (a system call
    #: per request otherwise): :meth:`broker.http.listeners.Listeners.of` reads it.
    local_port: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            self.local_port = sockname[1]

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request that never reached the app: the parser's refusal
        (4xx) or a failure outside the request context (500)."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started; no error answer can follow")
        error: BrokerError
        if status >= 500:
            log.error("unhandled error outside the app (%s)", type(exc).__name__)
            error = BrokerError()
        else:
            # The parser's message quotes the request line or header it refused: never
            # log or echo it, whatever it holds.
            log.debug("refused an unreadable request (%s)", type(exc).__name__)
            error = BadRequest()
        error.status = status
        response = error_response(error)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class _BrokerServer(Server):
    def __call__(self) -> RequestHandler:
        return _BrokerRequestHandler(self, loop=self._loop, **self._kwargs)


class BrokerRunner(web.AppRunner):
    """An ``AppRunner`` whose connections use the broker's request handler.

    aiohttp builds its ``Server`` in ``Application._make_handler`` (with the access-log
    class, debug flag and handler arguments it keeps to itself); the runner lets it, then
    makes that server a :class:`_BrokerServer`, whose one change is the handler class it
    hands each new connection.
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**SERVER_OPTIONS, **kwargs})

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _BrokerServer
        return server
