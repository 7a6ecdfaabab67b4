"""Bounded polling: wait for a condition, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from broker.errors import BrokerError

E = TypeVar("E", bound=BrokerError)


async def wait_until(cond: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``cond`` (a plain or an async predicate) until it holds; fail after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await _holds(cond):
        assert time.monotonic() < deadline, f"condition not met within {within} s"
        await asyncio.sleep(0.01)


async def _holds(cond: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = cond()
    if inspect.isawaitable(result):
        return bool(await result)
    return bool(result)


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
