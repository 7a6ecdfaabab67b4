"""Free TCP ports of 127.0.0.1, and starting a server on one despite the race for it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, TypeVar


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 free right now: each stays bound until all
    are chosen, so the kernel cannot hand out one twice (others may still take them)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class Stoppable:
    """A server that ``stop()`` ends for good (idempotent); ``with`` stops it on exit."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def start_with_retries(make: Callable[[], S], tries: int = 3) -> S:
    """Start a server on a free port, retrying: another process may take the port between
    choosing it and the server binding it. A failed start is cleaned up."""
    for attempt in range(tries):
        server = make()
        try:
            server.start()
        except RuntimeError:
            server.stop()
            if attempt == tries - 1:
                raise
        except BaseException:
            server.stop()
            raise
        else:
            return server
    raise AssertionError("unreachable")
