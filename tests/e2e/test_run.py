"""``scripts/run.sh`` (``scripts/run.py``): PostgreSQL, the broker and Cube come up where
the settings say and answer a real query; SIGTERM stops every one of them; the next run
reuses the kept state.

The run gets free ports through the usual variables (``BROKER_PORT``,
``BROKER_ADMIN_PORT``, ``BROKER_INTERNAL_PORT``, ``BROKER_CUBE_URL``, and the data source
of a copy of ``config/models.yaml`` for PostgreSQL) and its state folder
(``BROKER_RUN_DIR``) in a private folder, so that everything it starts can be found
afterwards: every process it starts has that folder in its environment or command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.harness import REPO
from tests.harness.http import request_json
from tests.harness.keys import create_key_at
from tests.harness.ports import free_port
from tests.harness.postgres import ORDERS_COUNT
from tests.harness.process import processes_mentioning, read_until

pytestmark = pytest.mark.timeout(180)

READY = b"== Ready."
QUERY = {"query": {"measures": ["orders.count"]}}


def sample_registry_on(folder: Path, port: int) -> Path:
    """``config/models.yaml`` and its models copied into ``folder``, every data source on
    ``127.0.0.1:port``."""
    shutil.copytree(REPO / "config" / "models", folder / "models")
    registry = yaml.safe_load((REPO / "config" / "models.yaml").read_text())
    for model in registry["models"]:
        for source in model["data_sources"].values():
            source["port"] = port
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


def start_run(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "run.py")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """SIGTERM, then the exit status and the rest of the output."""
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    return proc.returncode, rest


@dataclass(frozen=True)
class Run:
    env: dict[str, str]
    state: Path
    public: str
    admin: str


@pytest.fixture
def run(private_tmp: Path) -> Run:
    """Free ports, the state in ``private_tmp/var``, a copy of the sample registry."""
    ports = {
        "BROKER_PORT": free_port(),
        "BROKER_ADMIN_PORT": free_port(),
        "BROKER_INTERNAL_PORT": free_port(),
    }
    env = {
        **{
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("BROKER_", "CUBEJS_", "ATHENA_"))
        },
        **{name: str(port) for name, port in ports.items()},
        "BROKER_CUBE_URL": f"http://127.0.0.1:{free_port()}",
        "BROKER_MODELS": str(sample_registry_on(private_tmp / "config", free_port())),
        "BROKER_RUN_DIR": str(private_tmp / "var"),
    }
    return Run(
        env,
        private_tmp / "var",
        f"http://127.0.0.1:{ports['BROKER_PORT']}",
        f"http://127.0.0.1:{ports['BROKER_ADMIN_PORT']}",
    )


def query(run: Run, key: str) -> None:
    status, body = request_json(
        "POST", f"{run.public}/api/v0/semantic-model/orders/query", QUERY, {"X-API-Key": key}
    )
    assert status == 200, body
    assert body["data"] == [{"orders.count": str(ORDERS_COUNT)}]


def test_run_serves_a_query_stops_on_sigterm_or_a_closed_pipe_and_keeps_its_state(
    run: Run, private_tmp: Path
) -> None:
    """The first run ends with SIGTERM; the second, which reuses the state (the same
    cluster, store and secrets, so the first run's key queries again), ends as
    ``scripts/run.sh | head`` does: the reader goes away while the run has nothing to
    write, and the run notices anyway. Either way nothing is left running."""
    proc = start_run(run.env)
    try:
        banner = b"".join(read_until(proc, READY))
        for name in ("BROKER_PORT", "BROKER_ADMIN_PORT", "BROKER_INTERNAL_PORT"):
            assert f"127.0.0.1:{run.env[name]}".encode() in banner
        assert run.env["BROKER_CUBE_URL"].encode() in banner
        dev_env = run.state / "dev.env"
        assert stat.S_IMODE(dev_env.stat().st_mode) == 0o600
        secrets = dict(line.split("=", 1) for line in dev_env.read_text().splitlines())
        assert sorted(secrets) == [
            "ATHENA_KEY_12", "BROKER_CALLBACK_SECRET", "CUBEJS_API_SECRET", "ORDERS_DB_PASSWORD",
        ]  # fmt: skip
        key, _ = create_key_at(run.admin, secrets["ATHENA_KEY_12"], name="run")
        query(run, key)
        assert processes_mentioning(private_tmp) != []
    finally:
        status, rest = stop(proc)
    assert status == 0, rest.decode(errors="replace")
    assert b"Traceback" not in rest
    assert processes_mentioning(private_tmp) == []
    assert (run.state / "postgres" / "data" / "PG_VERSION").is_file()

    proc = start_run(run.env)
    try:
        read_until(proc, READY)
        assert dev_env.read_text() == "".join(f"{k}={v}\n" for k, v in secrets.items())
        query(run, key)
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            stop(proc)
    assert processes_mentioning(private_tmp) == []
