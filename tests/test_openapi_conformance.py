"""The OpenAPI document agrees with the broker: schemathesis generates requests for every
operation of a running broker's ``/openapi.json`` and checks each answer against it.

``positive_data_acceptance`` is left out: it expects every schema-valid body accepted, and
some rules cannot be said in JSON Schema (an expiry in the future, a CIDR's syntax, the
virgin-mode limits), so a schema-valid body may rightly be 422. Every other check runs.
Cube is a tiny fixed upstream here (answers are Cube's business, not the document's).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.harness import DATA
from tests.harness.broker import BrokerProcess, start_broker
from tests.harness.settings import ADMIN_KEY, API_SECRET, CALLBACK_SECRET

EXAMPLES = 20


class _FixedCube(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"cubes": [], "data": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def cube_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixedCube)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def broker(tmp_path: Path, cube_url: str) -> Iterator[BrokerProcess]:
    env = {
        "CUBEJS_API_SECRET": API_SECRET,
        "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
        "ATHENA_KEY_12": ADMIN_KEY,
        "BROKER_STORE": f"sqlite:///{tmp_path}/broker.db",
        "BROKER_MODELS": str(DATA / "models.yaml"),
        "BROKER_CUBE_URL": cube_url,
        # every generated request comes from 127.0.0.1, many of them without a credential
        "BROKER_BRUTE_FORCE_LIMIT": "1000000",
    }
    process = start_broker(env, tmp_path)
    try:
        yield process
    finally:
        process.stop()


def credentials(path: str, athena_key: str) -> dict[str, str]:
    if path.startswith("/admin/"):
        return {"X-API-Key": ADMIN_KEY}
    if path.startswith("/internal/"):
        return {"X-Broker-Callback-Secret": CALLBACK_SECRET}
    if path.startswith("/api/"):
        return {"X-API-KEY": athena_key}
    if path.startswith(("/cubejs-api/", "/auth/")):
        return {"Authorization": f"Bearer {athena_key}", "X-Semantic-Model": "orders"}
    return {}


@pytest.mark.timeout(300)
def test_every_operation_conforms_to_the_document(broker: BrokerProcess) -> None:
    """Each listener's own document (SPEC §2, §9), against that listener."""
    created = requests.post(
        f"{broker.admin_url}/admin/api-keys",
        json={"name": "schemathesis", "rights": ["semantic_model.*"]},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=10,
    )
    athena_key = created.json()["api_key"]
    failures: list[str] = []
    exercised: dict[str, int] = {}
    for base in (broker.url, broker.admin_url):  # the internal listener has no document
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # an Err raises, as it should
            exercised[operation.label] = 0
            try:
                exercise(operation, base, athena_key, exercised)
            except Exception as exc:  # one operation's failure must not hide the others'
                failures.append(f"{operation.label}: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    assert len(exercised) >= 26, sorted(exercised)
    assert all(n >= 1 for n in exercised.values()), exercised


def exercise(operation: Any, base: str, athena_key: str, exercised: dict[str, int]) -> None:
    """:data:`EXAMPLES` generated requests to ``operation`` at ``base``, every answer
    checked (schemathesis raises on the first failing check)."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        exercised[operation.label] += 1
        case.call_and_validate(
            base_url=base,
            headers=credentials(case.path, athena_key),
            excluded_checks=[schemathesis.checks.positive_data_acceptance],
        )

    run()
