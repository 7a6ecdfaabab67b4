"""``cube-broker serve`` as a real process: binding, signals, the drain."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fake_cube import FakeCube
from tests.harness.cli import cli, cli_env
from tests.harness.ports import free_port
from tests.harness.settings import ADMIN_KEY
from tests.harness.waiting import wait_until


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def test_a_port_in_use_is_one_line_naming_the_address(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli({**env, "BROKER_PORT": str(port)}, "serve")
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert f"127.0.0.1:{port}" in line and "BROKER_PORT" in line, line
    assert "in use" in line and "listening" not in line


async def start_serving(env: dict[str, str], **settings: str) -> tuple[Any, str]:
    """``serve`` on a free port with ``settings``; the process and its base URL, once
    ``/healthz`` answers."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve",
        env={**env, "BROKER_PORT": str(port), **settings},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + 20
        while True:
            try:
                async with s.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        return proc, base
            except aiohttp.ClientError:
                pass
            assert proc.returncode is None and time.monotonic() < deadline, "did not start"
            await asyncio.sleep(0.05)


def log_messages(stderr: bytes) -> list[str]:
    return [
        json.loads(line)["message"] for line in stderr.decode().splitlines() if line.startswith("{")
    ]


@pytest.mark.parametrize("gap", [0.0, 0.1])
async def test_two_sigterms_still_drain_and_exit_0(
    env: dict[str, str], aiohttp_server: Any, gap: float
) -> None:
    fake = FakeCube(delay=1.0)
    cube = await aiohttp_server(fake.app())
    proc, base = await start_serving(
        env, BROKER_SHUTDOWN_GRACE="10", BROKER_CUBE_URL=str(cube.make_url("")).rstrip("/")
    )
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"http://127.0.0.1:{env['BROKER_ADMIN_PORT']}/admin/api-keys",
                json={"name": "t", "rights": ["semantic_model.*"]},
                headers={"X-API-Key": ADMIN_KEY},
            ) as r:  # fmt: skip
                key = (await r.json())["api_key"]
            headers = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
            in_flight = asyncio.create_task(s.get(f"{base}/cubejs-api/v1/meta", headers=headers))
            await wait_until(lambda: len(fake.seen) == 1)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(gap)
            proc.send_signal(signal.SIGTERM)
            resp = await in_flight
            assert resp.status == 200
            assert (await resp.json())["cubes"][0]["name"] == "orders"
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        messages = log_messages(stderr)
        starting = [m for m in messages if m.startswith("shutting down")]
        done = [m for m in messages if m.startswith("stopped")]
        assert len(starting) == 1 and len(done) == 1, messages
        assert messages.index(starting[0]) < messages.index(done[0])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
