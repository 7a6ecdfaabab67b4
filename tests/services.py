"""Kept only for ``scripts/demo.py``, which imports these names from here and lies outside
the tests' tree: they live in ``tests.harness`` now. Import them from there; once the demo
does too, this module goes."""

from __future__ import annotations

from tests.harness.broker import start_broker
from tests.harness.cube import start_cube
from tests.harness.ports import free_port
from tests.harness.postgres import ORDERS_ROWS, start_postgres
from tests.harness.process import HTTPProcess
from tests.harness.registry import write_registry

__all__ = [
    "ORDERS_ROWS",
    "HTTPProcess",
    "free_port",
    "start_broker",
    "start_cube",
    "start_postgres",
    "write_registry",
]
