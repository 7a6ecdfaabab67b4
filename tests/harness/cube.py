"""The real Cube server (``cubejs-server`` from the npm cache of
``scripts/install-cube.sh``) with ``deploy/cube/cube.js``, calling the broker back."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.harness import REPO
from tests.harness.broker import BrokerProcess, start_broker
from tests.harness.ports import free_port
from tests.harness.process import HTTPProcess

#: How long the real Cube may take to answer ``/livez`` after its start.
CUBE_START_TIMEOUT = 90.0


def cube_install_dir() -> Path:
    """Where ``scripts/install-cube.sh`` installed Cube (running it: a no-op when done)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-cube.sh")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/install-cube.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def cube_environment(
    *,
    port: int,
    api_secret: str,
    api_secrets: str = "",
    broker_url: str,
    callback_secret: str,
    refresh_interval: int | None,
) -> dict[str, str]:
    """Cube's whole environment: the three values of SPEC §7 and non-secret switches
    (production mode, the in-memory cache and queue, no telemetry, the scheduled refresh
    every ``refresh_interval`` seconds or never), nothing else."""
    refresh = (
        {"CUBEJS_SCHEDULED_REFRESH_TIMER": str(refresh_interval)}
        if refresh_interval
        else {"CUBEJS_REFRESH_WORKER": "false"}
    )
    return {
        **refresh,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_ENV": "production",
        "PORT": str(port),
        "CUBEJS_DEV_MODE": "false",
        "CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory",
        "CUBEJS_TELEMETRY": "false",
        "CUBEJS_API_SECRET": api_secret,
        "CUBEJS_API_SECRETS": api_secrets,
        "BROKER_INTERNAL_URL": broker_url,
        "BROKER_CALLBACK_SECRET": callback_secret,
        "BROKER_CALLBACK_TIMEOUT_MS": "10000",
    }


def start_cube(
    *,
    api_secret: str,
    api_secrets: str = "",
    broker_url: str,
    callback_secret: str,
    port: int | None = None,
    refresh_interval: int | None = None,
    timeout: float = CUBE_START_TIMEOUT,
    workdir: Path | None = None,
) -> HTTPProcess:
    """The real Cube server (``cubejs-server``, as in Cube's Docker image) with
    ``deploy/cube/cube.js`` in a working folder, listening on ``127.0.0.1:port`` only
    (``cube_loopback.js``); returns once ``/livez`` answers.

    The folder gets a fresh copy of ``cube.js`` and a ``node_modules`` link to the install
    of ``scripts/install-cube.sh``. Without ``workdir`` it is a temporary folder that
    ``stop()`` removes; ``workdir`` (created if need be) is kept, its ``cube.log`` appended.
    """
    install = cube_install_dir()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; install it: WITH_TEST_SERVICES=1 scripts/setup.sh")
    owns_workdir = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="broker-cube-"))
    else:
        workdir = workdir.absolute()  # Cube runs in it, with HOME pointing at it
        workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "cube" / "cube.js", workdir / "cube.js")
    (workdir / "node_modules").unlink(missing_ok=True)
    (workdir / "node_modules").symlink_to(install / "node_modules")
    port = port or free_port()
    env = cube_environment(
        port=port,
        api_secret=api_secret,
        api_secrets=api_secrets,
        broker_url=broker_url,
        callback_secret=callback_secret,
        refresh_interval=refresh_interval,
    )
    env["HOME"] = str(workdir)
    server_bin = install / "node_modules" / "@cubejs-backend" / "server" / "bin" / "server"
    cube = HTTPProcess(
        "cube",
        [node, "--require", str(Path(__file__).with_name("cube_loopback.js")), str(server_bin)],
        env=env,
        workdir=workdir,
        port=port,
        owns_workdir=owns_workdir,
    )
    return cube.ready("/livez", timeout)


def start_broker_with_cube(
    env: Mapping[str, str], workdir: Path, *, refresh_interval: int | None = None
) -> tuple[BrokerProcess, HTTPProcess]:
    """The broker (``env`` and ``workdir`` as for :func:`start_broker`) and the real Cube
    calling it back, both answering; the caller stops both.

    Order matters: Cube's port is chosen first, so the broker is told where Cube is
    (``BROKER_CUBE_URL``), then the broker starts, then Cube, pointed at the broker with
    the secrets of ``env`` (``CUBEJS_API_SECRET``, ``BROKER_CALLBACK_SECRET``).
    """
    cube_port = free_port()
    broker = start_broker({**env, "BROKER_CUBE_URL": f"http://127.0.0.1:{cube_port}"}, workdir)
    try:
        cube = start_cube(
            api_secret=env["CUBEJS_API_SECRET"],
            broker_url=broker.internal_url,
            callback_secret=env["BROKER_CALLBACK_SECRET"],
            port=cube_port,
            refresh_interval=refresh_interval,
        )
    except BaseException:
        broker.stop()
        raise
    return broker, cube
