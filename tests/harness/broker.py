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
    port, admin_port, internal_port = free_port(), free_port(), free_port()
    full_env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BROKER_", "CUBEJS_", "ATHENA_"))
    }
    full_env.update(env)
    full_env.update(
        {
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(port),
            "BROKER_ADMIN_PORT": str(admin_port),
            "BROKER_INTERNAL_PORT": str(internal_port),
        }
    )
    # This checkout's broker, whether or not (or whatever version) .venv has installed.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    broker = BrokerProcess(
        "broker",
        [sys.executable, "-m", "broker", "serve"],
        env=full_env,
        workdir=workdir,
        port=port,
        owns_workdir=False,
        admin_port=admin_port,
        internal_port=internal_port,
    )
    try:
        broker.wait_until_answers("/readyz", timeout)
    except BaseException:
        broker.stop()
        raise
    return broker
