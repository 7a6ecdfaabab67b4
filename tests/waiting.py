"""Bounded polling for tests: wait for a condition, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from broker.errors import BrokerError

E = TypeVar("E", bound=BrokerError)


async def wait_until(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def refused_within(call: Callable[[], Awaitable[Any]], error: type[E], within: float) -> E:
    """Repeat ``call`` until it raises ``error``; fail if that takes longer than ``within``."""
    started = time.monotonic()
    while True:
        try:
            await call()
        except error as exc:
            return exc
        assert time.monotonic() - started < within, f"still accepted after {within} s"
        await asyncio.sleep(0.02)
