"""The real Cube, configured by ``deploy/cube/cube.js``, gets its model files and its
database credentials from the broker's internal callback (SPEC §7)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import warnings
from decimal import Decimal
from typing import Any

import aiohttp
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from tests.e2e.conftest import Stack
from tests.harness.continue_wait import follow
from tests.harness.cube import start_cube
from tests.harness.postgres import ORDERS_COUNT, ORDERS_ROWS, ORDERS_TOTAL
from tests.harness.process import HTTPProcess
from tests.harness.settings import API_SECRET, CALLBACK_SECRET

#: The session's stack starts within the first test: PostgreSQL, the broker and Cube.
pytestmark = pytest.mark.timeout(240)

TOTALS = {"measures": ["orders.count", "orders.total_amount"]}


async def cube_load(
    cube_url: str, token: str, query: dict[str, Any], within: float = 60.0
) -> tuple[int, dict[str, Any]]:
    """``POST /cubejs-api/v1/load``, following Cube's "Continue wait" until ``within``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        status, body, _ = await follow(
            session,
            "POST",
            f"{cube_url}/cubejs-api/v1/load",
            {"Authorization": token},
            {"query": query},
            within,
        )
    assert isinstance(body, dict), body
    return status, body


def broker_requests(broker: HTTPProcess) -> list[dict[str, Any]]:
    """The broker's access-log records so far (its log is JSON lines)."""
    records = []
    for line in broker.log_tail(10**7).splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "status" in record:
                records.append(record)
    return records


async def test_meta_lists_the_model_from_the_broker(e2e_stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{e2e_stack.cube.url}/cubejs-api/v1/meta",
            headers={"Authorization": e2e_stack.cube_token()},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        meta = await resp.json()
    cubes = {c["name"]: c for c in meta["cubes"]}
    assert set(cubes) == {"orders"}
    measures = {m["name"] for m in cubes["orders"]["measures"]}
    dimensions = {d["name"] for d in cubes["orders"]["dimensions"]}
    assert {"orders.count", "orders.total_amount"} <= measures
    assert {"orders.status", "orders.created_at"} <= dimensions


async def test_load_queries_postgres_with_credentials_from_the_broker(e2e_stack: Stack) -> None:
    token = e2e_stack.cube_token()
    status, body = await cube_load(e2e_stack.cube.url, token, TOTALS)
    assert status == 200, body
    [row] = body["data"]
    assert int(row["orders.count"]) == ORDERS_COUNT
    assert Decimal(str(row["orders.total_amount"])) == ORDERS_TOTAL

    by_status = {**TOTALS, "dimensions": ["orders.status"]}
    status, body = await cube_load(e2e_stack.cube.url, token, by_status)
    assert status == 200, body
    got = {r["orders.status"]: int(r["orders.count"]) for r in body["data"]}
    expected: dict[str, int] = {}
    for _, state, _, _ in ORDERS_ROWS:
        expected[state] = expected.get(state, 0) + 1
    assert got == expected


def test_cube_holds_no_database_credentials(e2e_stack: Stack) -> None:
    """Cube's environment is the three values of SPEC §7 plus non-secret switches, and
    neither it nor Cube's log ever shows the database password."""
    env = e2e_stack.cube.env
    password = e2e_stack.postgres.password
    assert all(password not in value for value in env.values())
    assert not {name for name in env if "DB_" in name or name.startswith("PG")}
    assert env["BROKER_INTERNAL_URL"] == e2e_stack.broker.internal_url
    with open(f"/proc/{e2e_stack.cube.pid}/environ", "rb") as f:
        assert password.encode() not in f.read()
    assert password not in e2e_stack.cube.log_tail(10**7)
    assert password not in e2e_stack.broker.log_tail(10**7)


async def test_a_wrong_callback_secret_fails_queries_cleanly(e2e_stack: Stack) -> None:
    wrong: HTTPProcess = start_cube(
        api_secret=API_SECRET,
        broker_url=e2e_stack.broker.internal_url,
        callback_secret=CALLBACK_SECRET + "-wrong",
    )
    try:
        started = time.monotonic()
        status, body = await cube_load(wrong.url, e2e_stack.cube_token(), TOTALS, within=30)
        assert time.monotonic() - started < 30
        assert status >= 400, body
        assert "HTTP 401" in str(body["error"]), body
        assert CALLBACK_SECRET not in str(body)
    finally:
        wrong.stop()


async def test_scheduled_refresh_lists_models_through_the_callback(e2e_stack: Stack) -> None:
    """Cube's refresh worker (every second here) takes its contexts from
    ``GET /internal/v1/models`` (``scheduledRefreshContexts`` in cube.js)."""

    def listed() -> bool:
        return any(
            r.get("path") == "/internal/v1/models" and r.get("status") == 200
            for r in broker_requests(e2e_stack.broker)
        )

    deadline = time.monotonic() + 15
    while not listed():
        assert time.monotonic() < deadline, e2e_stack.broker.log_tail()
        await asyncio.sleep(0.1)
    assert "Refresh Scheduler Error" not in e2e_stack.cube.log_tail(10**7)


async def test_cube_takes_only_hs256_tokens_signed_with_the_shared_secret(
    e2e_stack: Stack,
) -> None:
    claims = {"model_id": "orders", "schema_hash": e2e_stack.schema_hash()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        hs512 = jwt.encode(claims, API_SECRET, algorithm="HS512")
    forged = jwt.encode(claims, "another-secret-that-is-long-enough-0123456789")
    async with aiohttp.ClientSession() as session:
        for token, status in ((hs512, 403), (forged, 403), (e2e_stack.cube_token(), 200)):
            for authorization in (token, f"Bearer {token}"):
                async with session.get(
                    f"{e2e_stack.cube.url}/cubejs-api/v1/meta",
                    headers={"Authorization": authorization},
                ) as resp:
                    assert resp.status == status, await resp.text()


async def test_dashboards_query_through_the_broker_with_minted_tokens(e2e_stack: Stack) -> None:
    """The whole path: broker-minted token -> broker proxy -> Cube -> callback -> PostgreSQL.
    A token Cube would take but the broker never minted is refused at the proxy."""
    status, body = await cube_load(e2e_stack.broker.url, e2e_stack.cube_token(), TOTALS)
    assert status == 200, body
    [row] = body["data"]
    assert int(row["orders.count"]) == ORDERS_COUNT
    assert Decimal(str(row["orders.total_amount"])) == ORDERS_TOTAL

    forged = e2e_stack.forged_token()
    status, body = await cube_load(e2e_stack.cube.url, forged, TOTALS)
    assert status == 200, body
    status, body = await cube_load(e2e_stack.broker.url, forged, TOTALS)
    assert (status, body["error"]) == (401, "unauthorized"), body
