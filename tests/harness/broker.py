"""The broker as a real listening process (``python -m broker serve``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness import REPO
from tests.harness.ports import free_port
from tests.harness.process import HTTPProcess


class BrokerProcess(HTTPProcess):
    """The broker's process: :attr:`url` is its public listener, :attr:`admin_url` and
    :attr:`internal_url` the other two (SPEC §2)."""

    def __init__(self, *args: Any, admin_port: int, internal_port: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.internal_url = f"http://127.0.0.1:{internal_port}"


def start_broker(env: Mapping[str, str], workdir: Path, *, timeout: float = 30.0) -> BrokerProcess:
    """``python -m broker serve`` on free ports with ``env`` on top of a clean copy of
    this process's environment (no ``BROKER_*``, ``CUBEJS_*`` or ``ATHENA_*`` leak in);
    returns once ``/readyz`` answers 200. ``workdir`` (its cwd and log folder) stays."""
    ports = {
        "BROKER_PORT": free_port(),
        "BROKER_ADMIN_PORT": free_port(),
        "BROKER_INTERNAL_PORT": free_port(),
    }
    full_env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BROKER_", "CUBEJS_", "ATHENA_"))
    }
    full_env.update(env)
    full_env.update({"BROKER_HOST": "127.0.0.1", **{k: str(v) for k, v in ports.items()}})
    return launch_broker(
        full_env,
        workdir,
        port=ports["BROKER_PORT"],
        admin_port=ports["BROKER_ADMIN_PORT"],
        internal_port=ports["BROKER_INTERNAL_PORT"],
        timeout=timeout,
    )


def launch_broker(
    env: Mapping[str, str],
    workdir: Path,
    *,
    port: int,
    admin_port: int,
    internal_port: int,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> BrokerProcess:
    """``python -m broker serve`` with exactly ``env`` (whose listeners must be the three
    ports given), in ``cwd`` (default ``workdir``), its log ``workdir/broker.log``; returns
    once ``/readyz`` answers 200 on 127.0.0.1. ``workdir`` stays."""
    full_env = dict(env)
    # This checkout's broker, whether or not (or whatever version) .venv has installed.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    broker = BrokerProcess(
        "broker",
        [sys.executable, "-m", "broker", "serve"],
        env=full_env,
        workdir=workdir,
        port=port,
        owns_workdir=False,
        cwd=cwd,
        admin_port=admin_port,
        internal_port=internal_port,
    )
    return broker.ready("/readyz", timeout)
