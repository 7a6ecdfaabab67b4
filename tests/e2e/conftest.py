"""The end-to-end stack, started once per session: private PostgreSQL, the broker as a
real listening process (``python -m broker serve``) and the real Cube server whose
``deploy/cube/cube.js`` calls the broker's internal callback.

The broker and Cube start in the order they need each other
(``tests.harness.cube.start_broker_with_cube``). The broker's registry is a temporary copy
of the ``orders`` model whose data source is the private cluster, so tests may edit its
files.

Every test under ``tests/e2e`` is marked ``e2e`` here, so ``pytest -m "not e2e"`` leaves
them out and never starts PostgreSQL or Cube (they start for the first test that needs
them).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from broker.models import load_registry
from tests.harness import DATA
from tests.harness.broker import BrokerProcess
from tests.harness.cube import start_broker_with_cube
from tests.harness.http import request_json
from tests.harness.keys import create_key_at
from tests.harness.postgres import PostgresServer
from tests.harness.process import HTTPProcess
from tests.harness.registry import PASSWORD_VARIABLE, write_registry
from tests.harness.settings import ADMIN_KEY, API_SECRET, CALLBACK_SECRET


@dataclass(frozen=True)
class Stack:
    postgres: PostgresServer
    broker: BrokerProcess
    cube: HTTPProcess
    registry_path: Path
    #: An Athena key with every ``semantic_model`` right, made through the admin API.
    athena_key: str

    def schema_hash(self, model_id: str = "orders") -> str:
        model = load_registry(self.registry_path).get(model_id)
        assert model is not None, model_id
        return model.schema_hash

    def cube_token(self, model_id: str = "orders") -> str:
        """A token minted by the broker (``generate-token`` with :attr:`athena_key`)."""
        status, body = request_json(
            "POST",
            f"{self.broker.url}/api/v0/semantic-model/{model_id}/generate-token",
            headers={"X-API-Key": self.athena_key},
        )
        assert status == 200, body
        token: str = body["token"]
        return token

    def forged_token(self, model_id: str = "orders", ttl: int = 3600) -> str:
        """A token shaped like the broker's and signed with the shared secret, but not
        minted by the broker: Cube takes it, the broker's proxy must not."""
        now = int(time.time())
        claims = {
            "model_id": model_id,
            "schema_hash": self.schema_hash(model_id),
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, API_SECRET, algorithm="HS256")


_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A folder of the test's own for a script's temporary or kept state. Under /tmp, not
    pytest's tmp_path (mode 700): as root the script's PostgreSQL runs as the postgres
    user, who must reach its data folder."""
    folder = Path(tempfile.mkdtemp(prefix="broker-script-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="broker-e2e-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def e2e_stack(postgres: PostgresServer, e2e_workdir: Path) -> Iterator[Stack]:
    registry_path = write_registry(
        e2e_workdir, postgres, models=DATA / "models", password_variable=PASSWORD_VARIABLE
    )
    broker, cube = start_broker_with_cube(
        {
            "CUBEJS_API_SECRET": API_SECRET,
            "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
            "ATHENA_KEY_12": ADMIN_KEY,
            "BROKER_STORE": f"sqlite:///{e2e_workdir}/store/broker.db",
            "BROKER_MODELS": str(registry_path),
            "BROKER_LOG_FORMAT": "json",
            "BROKER_SHUTDOWN_GRACE": "2",
            # Model edits (test_through_broker) show within half a second.
            "BROKER_MODELS_POLL_INTERVAL": "0.5",
            # Tests that present bad credentials on purpose do so "from" an address of
            # their own (X-Forwarded-For), so the brute-force guard, which counts failures
            # per client address, never blocks 127.0.0.1 for the tests after them.
            "BROKER_TRUSTED_PROXIES": "127.0.0.1/32",
            PASSWORD_VARIABLE: postgres.password,
        },
        e2e_workdir,
        refresh_interval=1,
    )
    with broker, cube:
        athena_key, _ = create_key_at(broker.admin_url, ADMIN_KEY, name="e2e")
        yield Stack(postgres, broker, cube, registry_path, athena_key)


@pytest.fixture(scope="session")
def cube(e2e_stack: Stack) -> HTTPProcess:
    return e2e_stack.cube
