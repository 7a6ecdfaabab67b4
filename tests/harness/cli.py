"""Running ``cube-broker`` as a real subprocess, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import DATA, REPO
from tests.harness.ports import free_port
from tests.harness.settings import ADMIN_KEY, API_SECRET, CALLBACK_SECRET


def cli_env(tmp_path: Path) -> dict[str, str]:
    """A complete environment for the CLI: a SQLite store under ``tmp_path`` (not created
    yet), the test registry and its data source's password, free ports for the admin and
    internal listeners (a test that serves picks the public one); this checkout's
    ``broker`` whatever the working folder."""
    return {
        "BROKER_ADMIN_PORT": str(free_port()),
        "BROKER_INTERNAL_PORT": str(free_port()),
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "CUBEJS_API_SECRET": API_SECRET,
        "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
        "ATHENA_KEY_12": ADMIN_KEY,
        "BROKER_STORE": f"sqlite:///{tmp_path}/db/broker.db",
        "BROKER_MODELS": str(DATA / "models.yaml"),
        "TEST_ORDERS_PASSWORD": "test-orders-password",
    }


def cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], env=env, capture_output=True, text=True,
        timeout=30, cwd=cwd, check=False,
    )  # fmt: skip
