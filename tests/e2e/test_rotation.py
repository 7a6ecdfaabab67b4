"""Rotating the signing secret without a failed call (SPEC §5), with the real Cube and the
product's ``cube.js``: the three steps of the README, each a restart of the broker and of
Cube with the step's environment, on one store.

A token minted before the rotation and one minted after it both load data, through the
broker and straight from Cube, while both secrets are accepted; a key keeps working
throughout; once the old secret is dropped its token is refused (401 at the broker, 403
at Cube, as Cube answers an invalid token) and the new one still loads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.harness import DATA
from tests.harness.broker import BrokerProcess, start_broker
from tests.harness.cube import start_cube
from tests.harness.http import request_json as http_json
from tests.harness.ports import free_port
from tests.harness.postgres import ORDERS_COUNT, PostgresServer
from tests.harness.process import HTTPProcess
from tests.harness.registry import PASSWORD_VARIABLE, write_registry
from tests.harness.settings import ADMIN_KEY, CALLBACK_SECRET

pytestmark = pytest.mark.timeout(240)

OLD = "old-signing-secret-0123456789-abcdefghijkl"
NEW = "new-signing-secret-9876543210-zyxwvutsrqpo"
COUNT = {"query": {"measures": ["orders.count"]}}


def kid(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class Rotation:
    """A broker and a Cube restarted together with each step's secrets."""

    def __init__(self, postgres: PostgresServer, workdir: Path) -> None:
        self.postgres = postgres
        self.workdir = workdir
        self.registry = write_registry(
            workdir, postgres, models=DATA / "models", password_variable=PASSWORD_VARIABLE
        )
        self.cube_port = free_port()
        self.broker: BrokerProcess | None = None
        self.cube: HTTPProcess | None = None

    def step(self, signing: str, accepted: str = "") -> None:
        self.stop()
        secrets = {"CUBEJS_API_SECRET": signing, "CUBEJS_API_SECRETS": accepted}
        self.broker = start_broker(
            {
                **secrets,
                "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
                "ATHENA_KEY_12": ADMIN_KEY,
                "BROKER_STORE": f"sqlite:///{self.workdir}/store/broker.db",
                "BROKER_MODELS": str(self.registry),
                "BROKER_CUBE_URL": f"http://127.0.0.1:{self.cube_port}",
                "BROKER_SHUTDOWN_GRACE": "2",
                PASSWORD_VARIABLE: self.postgres.password,
            },
            self.workdir,
        )
        self.cube = start_cube(
            api_secret=signing,
            api_secrets=accepted,
            broker_url=self.broker.internal_url,
            callback_secret=CALLBACK_SECRET,
            port=self.cube_port,
        )

    def stop(self) -> None:
        for process in (self.cube, self.broker):
            if process is not None:
                process.stop()
        self.cube = self.broker = None

    @property
    def broker_url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    @property
    def admin_url(self) -> str:
        assert self.broker is not None
        return self.broker.admin_url

    @property
    def cube_url(self) -> str:
        assert self.cube is not None
        return self.cube.url

    def token(self, key: str) -> str:
        status, body = http_json(
            "POST",
            f"{self.broker_url}/api/v0/semantic-model/orders/generate-token",
            headers={"X-API-Key": key},
        )
        assert status == 200, body
        token: str = body["token"]
        return token


def load(base_url: str, headers: dict[str, str], within: float = 60.0) -> tuple[int, Any]:
    """``POST /cubejs-api/v1/load`` of the count, following "Continue wait"."""
    deadline = time.monotonic() + within
    while True:
        status, body = http_json("POST", f"{base_url}/cubejs-api/v1/load", COUNT, headers)
        if not (isinstance(body, dict) and body.get("error") == "Continue wait"):
            return status, body
        assert time.monotonic() < deadline, "still Continue wait"
        time.sleep(0.1)


def assert_loads(base_url: str, headers: dict[str, str]) -> None:
    status, body = load(base_url, headers)
    assert status == 200, body
    assert int(body["data"][0]["orders.count"]) == ORDERS_COUNT


@pytest.fixture
def rotation(postgres: PostgresServer, tmp_path: Path) -> Iterator[Rotation]:
    r = Rotation(postgres, tmp_path)
    try:
        yield r
    finally:
        r.stop()


def test_rotating_the_signing_secret_fails_no_call(rotation: Rotation) -> None:
    # before: OLD signs; a key and a token of OLD in use
    rotation.step(OLD)
    status, created = http_json(
        "POST",
        f"{rotation.admin_url}/admin/api-keys",
        {"name": "rotation", "rights": ["semantic_model.*"]},
        headers={"X-API-Key": ADMIN_KEY},
    )
    assert status == 201, created
    key = created["api_key"]
    by_key = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    old_token = rotation.token(key)
    assert jwt.get_unverified_header(old_token)["kid"] == kid(OLD)

    # step 1: NEW is accepted everywhere, OLD still signs
    rotation.step(OLD, NEW)
    assert rotation.token(key) == old_token
    for url in (rotation.broker_url, rotation.cube_url):
        assert_loads(url, {"Authorization": old_token})
    assert_loads(rotation.broker_url, by_key)

    # step 2: NEW signs, OLD is still accepted
    rotation.step(NEW, OLD)
    new_token = rotation.token(key)
    assert new_token != old_token
    assert jwt.get_unverified_header(new_token)["kid"] == kid(NEW)
    jwt.decode(new_token, NEW, algorithms=["HS256"])  # signed with the new secret
    for url in (rotation.broker_url, rotation.cube_url):
        for token in (old_token, new_token):
            assert_loads(url, {"Authorization": token})
    assert_loads(rotation.broker_url, by_key)
    assert rotation.token(key) == new_token  # and never the old one again

    # step 3: OLD dropped everywhere
    rotation.step(NEW)
    status, body = load(rotation.broker_url, {"Authorization": old_token})
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = load(rotation.cube_url, {"Authorization": old_token})
    assert (status, body) == (403, {"error": "Invalid token"})
    for url in (rotation.broker_url, rotation.cube_url):
        assert_loads(url, {"Authorization": new_token})
    assert_loads(rotation.broker_url, by_key)
