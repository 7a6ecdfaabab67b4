"""Creating Athena keys: through the admin API of an app under test or of a broker
process, or through the key service straight on a store; and bare records for the tests
of the store itself.

Unless ``body`` says otherwise a key is named ``k`` and holds every ``semantic_model``
right, so it may ask for tokens, metadata and queries on every model.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from broker.keys.admin import KeyAdmin
from broker.keys.record import KeyRecord
from broker.keys.validation import validate_create
from broker.store import Store
from tests.harness.http import request
from tests.harness.settings import ADMIN_KEY

#: The ``created_at`` of :func:`make_record`'s first record.
BASE_TIME = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _with_defaults(body: dict[str, Any]) -> dict[str, Any]:
    return {"name": "k", "rights": ["semantic_model.*"], **body}


async def create_key(
    client: TestClient[Any, Any], *, admin_key: str = ADMIN_KEY, **body: Any
) -> tuple[str, dict[str, Any]]:
    """``POST /admin/api-keys`` on an app under test: the plaintext key (shown once) and
    the record, as the admin API answered them. Asserts the 201 and ``no-store``."""
    resp = await client.post(
        "/admin/api-keys", json=_with_defaults(body), headers={"X-API-Key": admin_key}
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"  # it holds the plaintext key
    doc: dict[str, Any] = await resp.json()
    return doc["api_key"], doc["record"]


def create_key_at(base_url: str, admin_key: str, **body: Any) -> tuple[str, dict[str, Any]]:
    """``POST /admin/api-keys`` on a broker process (blocking): the plaintext key and the
    record. Raises ``RuntimeError`` unless it answers 201."""
    status, raw = request(
        "POST",
        f"{base_url}/admin/api-keys",
        headers={"X-API-Key": admin_key},
        body=_with_defaults(body),
    )
    if status != 201:
        raise RuntimeError(f"creating a key answered {status}: {raw[:300]!r}")
    doc: dict[str, Any] = json.loads(raw)
    return doc["api_key"], doc["record"]


async def add_key(store: Store, **body: Any) -> tuple[str, KeyRecord]:
    """A key made by the key service on ``store``, as the admin API would: the plaintext
    key and the stored record."""
    return await KeyAdmin(store).create(validate_create(_with_defaults(body)))


def make_record(n: int = 0, **changes: Any) -> KeyRecord:
    """A bare record (no usable secret), ``n`` seconds after :data:`BASE_TIME`, with fresh
    IDs and ``changes`` on top: for tests that speak to the store or the policies."""
    record = KeyRecord(
        id=str(uuid.uuid4()),
        public_id=secrets.token_hex(8),
        name=f"key {n}",
        created_at=BASE_TIME + timedelta(seconds=n),
        secret_digest=secrets.token_hex(32),
    )
    return dataclasses.replace(record, **changes)
