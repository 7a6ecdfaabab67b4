"""Running the broker: bind its three listeners, serve until SIGTERM (or Ctrl-C), drain,
stop.

One runner (:class:`BrokerRunner`), three sites on it: the public, admin and internal
listeners of SPEC §2 serve the one app, and the app learns which bound port is which
(:class:`broker.http.listeners.Listeners`), so each answers only its own routes.

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
from broker.http.listeners import ADMIN, INTERNAL, PUBLIC
from broker.http.server import BrokerRunner
from broker.settings import Settings
from broker.state import LISTENERS, REGISTRY
from broker.support.logs import configure_logging

log = logging.getLogger("broker")

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
    runner = BrokerRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_grace,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    try:
        for listener, host, port in await bind_listeners(runner, settings):
            log.info("%s listener on http://%s", listener, _address(host, port))
        log.info(
            "broker listening (public URL %s, event loop %s)",
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


async def bind_listeners(runner: web.AppRunner, settings: Settings) -> list[tuple[str, str, int]]:
    """Start the three listeners' sites on ``runner`` and tell its app which bound port is
    which; ``(listener, host, port)`` of every bound socket. Raises ``ConfigError`` naming
    the variables of an address that cannot be bound."""
    bound = []
    for listener, host, port, variables in _listeners(settings):
        for actual in await _listen(runner, host, port, variables):
            runner.app[LISTENERS].bind(actual, listener)
            bound.append((listener, host, actual))
    return bound


def _listeners(settings: Settings) -> list[tuple[str, str, int, str]]:
    return [
        (PUBLIC, settings.host, settings.port, "BROKER_HOST, BROKER_PORT"),
        (ADMIN, settings.admin_host, settings.admin_port, "BROKER_ADMIN_HOST, BROKER_ADMIN_PORT"),
        (
            INTERNAL,
            settings.internal_host,
            settings.internal_port,
            "BROKER_INTERNAL_HOST, BROKER_INTERNAL_PORT",
        ),
    ]


async def _listen(runner: web.AppRunner, host: str, port: int, variables: str) -> list[int]:
    """Start one site; the ports its sockets are bound to (a port 0 setting included)."""
    site = web.TCPSite(runner, host, port)
    before = len(runner.addresses)
    try:
        await site.start()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise ConfigError(
            f"{variables}: cannot listen on {_address(host, port)}: {reason or exc}"
        ) from None
    return [address[1] for address in runner.addresses[before:]]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
