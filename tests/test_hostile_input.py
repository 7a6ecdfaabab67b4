"""Input a hostile or careless client sends (SPEC §3, §4): always a 4xx of SPEC §3, never
a 500 or a hang, and no credential in any log line or answer, aiohttp's own parser's
refusals included."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.harness.keys import create_key
from tests.harness.served import Served, read_answer, serve
from tests.harness.settings import ADMIN_KEY, CALLBACK_SECRET, make_settings
from tests.helpers import assert_error

Client = TestClient[Any, Any]
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(make_settings(BROKER_STORE=f"sqlite:///{tmp_path}/broker.db")) as s:
        yield s


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured line, tracebacks included, as a log handler would write them."""
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    return "\n".join(handler.format(r) for r in caplog.records)


# -- what aiohttp's parser refuses -----------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        f"X-API-Key: {ADMIN_KEY}\x01".encode(),
        f"X-Broker-Callback-Secret: {CALLBACK_SECRET}\x7f".encode(),
        b"X-API-Key: " + ADMIN_KEY.encode() + b"a" * (17 * 1024),
    ],
    ids=["bad byte, admin key", "bad byte, callback secret", "over 16 KiB"],
)
async def test_parser_refusals_are_json_and_quote_nothing(
    served: Served, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await served.connect()
    writer.write(b"GET /admin/api-keys HTTP/1.1\r\nHost: broker\r\n" + header + b"\r\n\r\n")
    await writer.drain()
    status, body, head = await read_answer(reader)
    async with asyncio.timeout(2):
        assert await reader.read() == b""  # and the connection is closed
    writer.close()
    assert status == 400
    assert json.loads(body) == {
        "status": "error",
        "message": "The request is malformed.",
        "error": "bad_request",
    }
    assert "Server: cube-token-broker\r\n" in head
    text = logged(caplog)
    assert ADMIN_KEY not in text and CALLBACK_SECRET not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_header_field_of_16_kib_is_accepted(served: Served) -> None:
    reader, writer = await served.send(
        "GET", "/admin/api-keys", {"X-API-Key": ADMIN_KEY, "X-Padding": "p" * (16 * 1024 - 20)}
    )
    status, _, _ = await read_answer(reader)
    writer.close()
    assert status == 200


async def test_the_server_header_names_no_versions(client: Client) -> None:
    for resp in (await client.get("/healthz"), await client.get("/nowhere")):
        assert resp.headers["Server"] == "cube-token-broker"


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", b"http://169.254.169.254/cubejs-api/v1/meta"), ("OPTIONS", b"*"), ("GET", b"*")],
)
async def test_a_target_that_is_not_a_path_is_refused(
    served: Served, method: str, target: bytes
) -> None:
    """``GET http://host/…`` is for a forward proxy, ``OPTIONS *`` asks about the server:
    400 in SPEC §3's JSON, and nothing is built from either."""
    reader, writer = await served.connect()
    writer.write(
        method.encode() + b" " + target + b" HTTP/1.1\r\nHost: broker\r\nAuthorization: x\r\n\r\n"
    )
    await writer.drain()
    status, body, _ = await read_answer(reader)
    writer.close()
    assert (status, json.loads(body)["error"]) == (400, "bad_request")


# -- credentials in the query string ---------------------------------------------------


@pytest.mark.parametrize("name", ["api_key", "api%5Fkey", "%61pi_key", "%2561pi_key", "API-KEY"])
async def test_query_string_keys_are_redacted_however_spelled(
    client: Client, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.INFO, logger="broker.access")
    resp = await client.get(f"/admin/api-keys?limit=1&{name}={ADMIN_KEY}")
    if name in ("api_key", "api%5Fkey", "%61pi_key"):
        assert resp.status == 200  # a spelling the server decodes to api_key is accepted
    lines = [r for r in caplog.records if r.name == "broker.access"]
    assert lines, "no access line"
    for record in lines:
        assert ADMIN_KEY not in record.getMessage()
        assert ADMIN_KEY not in json.dumps(vars(record), default=str)


# -- bodies that are not what they claim -----------------------------------------------


def nested(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    return (opener * depth + "1" + closer * depth).encode()


DEEP = {"array": nested(100_000, "["), "object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000}


@pytest.mark.parametrize("shape", sorted(DEEP))
async def test_deeply_nested_json_is_invalid_json(
    client: Client, admin_headers: dict[str, str], shape: str
) -> None:
    key, record = await create_key(client)
    public_id = record["public_id"]
    deep = DEEP[shape]
    in_query = b'{"query": ' + deep + b"}"
    calls = [
        ("POST", "/admin/api-keys", admin_headers, deep),
        ("PATCH", f"/admin/api-keys/{public_id}", admin_headers, deep),
        ("POST", f"/admin/api-keys/{public_id}/rotate", admin_headers, deep),
        ("POST", "/api/v0/semantic-model/orders/query", {"X-API-KEY": key}, deep),
        ("POST", "/api/v0/semantic-model/orders/query", {"X-API-KEY": key}, in_query),
        ("POST", "/internal/v1/credentials", {"X-Broker-Callback-Secret": CALLBACK_SECRET}, deep),
    ]
    for method, path, headers, body in calls:
        resp = await client.request(
            method, path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        await assert_error(resp, 400, "invalid_json")


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
async def test_expiry_outside_the_calendar_in_utc_is_422(
    client: Client, admin_headers: dict[str, str], when: str
) -> None:
    resp = await client.post(
        "/admin/api-keys", json={"name": "k", "expires_at": when}, headers=admin_headers
    )
    body = await assert_error(resp, 422, "validation_failed")
    assert [d["field"] for d in body["details"]] == ["expires_at"]
    public_id = (await create_key(client))[1]["public_id"]
    resp = await client.patch(
        f"/admin/api-keys/{public_id}", json={"expires_at": when}, headers=admin_headers
    )
    await assert_error(resp, 422, "validation_failed")


@pytest.mark.parametrize("limit", ["²", "١٢", "½"])
async def test_a_limit_in_unicode_digits_is_422(
    client: Client, admin_headers: dict[str, str], limit: str
) -> None:
    resp = await client.get("/admin/api-keys", params={"limit": limit}, headers=admin_headers)
    body = await assert_error(resp, 422, "validation_failed")
    assert body["details"][0]["field"] == "limit"


async def test_an_integral_number_counts_as_an_integer(
    client: Client, admin_headers: dict[str, str]
) -> None:
    """JSON Schema (and so the OpenAPI document) calls 4.0e8 an integer: the answer is about
    its range, not its type; 3.0 is accepted as 3."""
    public_id = (await create_key(client))[1]["public_id"]
    resp = await client.post(
        f"/admin/api-keys/{public_id}/rotate", json={"grace_seconds": 4.0e8}, headers=admin_headers
    )
    body = await assert_error(resp, 422, "validation_failed")
    assert body["details"] == [{"field": "grace_seconds", "message": "must be at most 86400"}]
    resp = await client.patch(
        f"/admin/api-keys/{public_id}", json={"rate_limit_per_minute": 3.0}, headers=admin_headers
    )
    assert resp.status == 200 and (await resp.json())["rate_limit_per_minute"] == 3
