"""Running the broker: bind its listener, serve until SIGTERM (or Ctrl-C), drain, stop.

aiohttp's ``web.run_app`` would do most of this, but it turns a signal into an exception
raised inside the event loop: a second SIGTERM during the drain then escapes as an error
(exit 1) or, once its handler is gone, kills the process (exit 143). Here a stop signal
only sets an event, and from the start of the drain further ones are ignored, so the
drain always runs to its end (bounded by ``BROKER_SHUTDOWN_GRACE``) and the exit is 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from broker.app import create_app
from broker.errors import ConfigError
from broker.settings import Settings
from broker.state import REGISTRY
from broker.support.logs import configure_logging

log = logging.getLogger("broker")

#: Largest request header field aiohttp accepts (SPEC §3: 16 KiB).
MAX_FIELD_SIZE = 16 * 1024
#: aiohttp's own default in ``run_app``: how long an idle keep-alive connection stays.
KEEPALIVE_TIMEOUT = 75.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(settings: Settings) -> int:
    """Serve until a stop signal, then drain; 0 once stopped. A listener that cannot be
    bound is a ``ConfigError`` naming the address and its variables."""
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve(app, settings))
    return 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (a dependency wherever it builds): the
    proxy's hot path spends about a fifth less CPU per request on it than on asyncio's
    own loop (bench/bench_proxy.py). Elsewhere, asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(app: web.Application, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_stop_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_stop_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, app[REGISTRY].request_reload)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_grace,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        access_log=None,
        max_field_size=MAX_FIELD_SIZE,
        max_line_size=MAX_FIELD_SIZE,
    )
    await runner.setup()
    try:
        await _listen(runner, settings.host, settings.port, "BROKER_HOST, BROKER_PORT")
        log.info(
            "broker listening on http://%s (public URL %s, event loop %s)",
            _address(settings.host, settings.port),
            settings.public_url,
            type(loop).__module__.partition(".")[0],
        )
        await stop.wait()
        # The drain below is bounded already; a second signal must not cut it short (nor,
        # once the loop is closed and its handlers gone, kill the process).
        for sig in (*_STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        log.info(
            "shutting down on %s: no new connections, in-flight requests get up to %g s",
            received[0].name,
            settings.shutdown_grace,
        )
    finally:
        await runner.cleanup()
    log.info("stopped")


async def _listen(runner: web.AppRunner, host: str, port: int, variables: str) -> None:
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise ConfigError(
            f"{variables}: cannot listen on {_address(host, port)}: {reason or exc}"
        ) from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
