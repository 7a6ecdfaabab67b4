"""The whole path through the broker's URL, never Cube's: the ``/cubejs-api/v1`` proxy in
token and key mode (SPEC §8), the semantic API (SPEC §6), the real ``@cubejs-client/core``
with the ``cube_url`` and token of ``generate-token`` (SPEC §5), a model edit reaching
Cube through new tokens, and the tokens the proxy must refuse.

The numbers are those of the private ``orders`` table (``tests.harness.postgres.ORDERS_ROWS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
import warnings
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from yarl import URL

from tests.e2e.conftest import Stack
from tests.harness.continue_wait import follow
from tests.harness.cube import cube_install_dir
from tests.harness.http import request_json
from tests.harness.postgres import ORDERS_COUNT, ORDERS_ROWS, ORDERS_TOTAL
from tests.harness.settings import API_SECRET

#: The session's stack may start within any of these tests, and Cube compiles a schema
#: on its first use.
pytestmark = pytest.mark.timeout(240)

TOTALS = {"measures": ["orders.count", "orders.total_amount"]}
BY_STATUS = {
    "measures": ["orders.count"],
    "dimensions": ["orders.status"],
    "order": {"orders.status": "asc"},
}
COUNT_BY_STATUS = dict(sorted(Counter(status for _, status, _, _ in ORDERS_ROWS).items()))
CLIENT_SCRIPT = Path(__file__).with_name("client_load.js")

#: How each way in of SPEC §8 presents its credential: token mode with the broker-minted
#: JWT (bare or ``Bearer``), key mode with the Athena key (``X-API-KEY`` or ``Bearer``).
CREDENTIALS = ["token", "bearer-token", "x-api-key", "bearer-key"]


def credential_headers(stack: Stack, way: str) -> dict[str, str]:
    if way == "token":
        return {"Authorization": stack.cube_token()}
    if way == "bearer-token":
        return {"Authorization": f"Bearer {stack.cube_token()}"}
    if way == "x-api-key":
        return {"X-API-KEY": stack.athena_key, "X-Semantic-Model": "orders"}
    assert way == "bearer-key", way
    assert stack.athena_key.startswith("ath_")
    return {"Authorization": f"Bearer {stack.athena_key}", "X-Semantic-Model": "orders"}


def assert_totals(body: dict[str, Any]) -> None:
    [row] = body["data"]
    assert int(row["orders.count"]) == ORDERS_COUNT
    assert Decimal(str(row["orders.total_amount"])) == ORDERS_TOTAL


def assert_by_status(body: dict[str, Any]) -> None:
    got = {row["orders.status"]: int(row["orders.count"]) for row in body["data"]}
    assert got == COUNT_BY_STATUS
    assert list(got) == sorted(got), "the query's order reached Cube"


def load_url(stack: Stack, query: dict[str, Any]) -> URL:
    """``/cubejs-api/v1/load?query=<JSON, percent-encoded>`` as a browser client builds it."""
    encoded = quote(json.dumps(query, separators=(",", ":")), safe="")
    return URL(f"{stack.broker.url}/cubejs-api/v1/load?query={encoded}", encoded=True)


def token_hash(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    schema_hash: str = claims["schema_hash"]
    return schema_hash


def member_names(meta: dict[str, Any], cube: str = "orders") -> set[str]:
    [found] = [c for c in meta["cubes"] if c["name"] == cube]
    return {m["name"] for m in found["measures"]} | {d["name"] for d in found["dimensions"]}


# 1. The /cubejs-api/v1 proxy ---------------------------------------------------------------


@pytest.mark.parametrize("way", CREDENTIALS)
async def test_proxy_answers_meta_and_load_with_the_right_numbers(
    e2e_stack: Stack, way: str
) -> None:
    """``/meta`` (GET) and ``/load`` (GET with ``?query=``, POST with ``{"query"}``) through
    the broker, with each of the four ways to present a credential."""
    headers = credential_headers(e2e_stack, way)
    base = f"{e2e_stack.broker.url}/cubejs-api/v1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        status, meta, resp = await follow(session, "GET", f"{base}/meta", headers)
        assert status == 200, meta
        assert resp.headers["X-Request-Id"]
        assert {"orders.count", "orders.total_amount", "orders.status"} <= member_names(meta)

        status, body, _ = await follow(session, "GET", load_url(e2e_stack, TOTALS), headers)
        assert status == 200, body
        assert_totals(body)
        status, body, _ = await follow(session, "GET", load_url(e2e_stack, BY_STATUS), headers)
        assert status == 200, body
        assert_by_status(body)

        status, body, resp = await follow(
            session, "POST", f"{base}/load", headers, body={"query": TOTALS}
        )
        assert status == 200, body
        assert resp.content_type == "application/json"
        assert_totals(body)
        status, body, _ = await follow(
            session, "POST", f"{base}/load", headers, body={"query": BY_STATUS}
        )
        assert status == 200, body
        assert_by_status(body)


async def test_key_mode_needs_the_model_header(e2e_stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{e2e_stack.broker.url}/cubejs-api/v1/meta",
            headers={"X-API-KEY": e2e_stack.athena_key},
        ) as resp,
    ):
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"] == "bad_request"


# 2. The semantic API ----------------------------------------------------------------------


def test_semantic_metadata_lists_the_cubes(e2e_stack: Stack) -> None:
    status, body = request_json(
        "GET",
        f"{e2e_stack.broker.url}/api/v0/semantic-model/orders/metadata",
        headers={"X-API-KEY": e2e_stack.athena_key},
    )
    assert status == 200, body
    assert set(body) == {"asset_id", "name", "schema_hash", "cubes"}
    assert (body["asset_id"], body["name"]) == ("orders", "Orders")
    assert body["schema_hash"] == e2e_stack.schema_hash()
    assert [c["name"] for c in body["cubes"]] == ["orders"]
    assert {"orders.count", "orders.total_amount", "orders.created_at"} <= member_names(body)


@pytest.mark.parametrize("way", ["x-api-key", "bearer-key"])
def test_semantic_query_returns_the_numbers(e2e_stack: Stack, way: str) -> None:
    """The broker follows Cube's "Continue wait" itself: one call, the final result."""
    headers = credential_headers(e2e_stack, way)
    url = f"{e2e_stack.broker.url}/api/v0/semantic-model/orders/query"
    status, body = request_json("POST", url, {"query": TOTALS}, headers=headers)
    assert status == 200, body
    assert_totals(body)
    status, body = request_json("POST", url, {"query": BY_STATUS}, headers=headers)
    assert status == 200, body
    assert_by_status(body)


async def test_semantic_query_passes_cube_refusals_through(e2e_stack: Stack) -> None:
    """An unknown member: Cube's 4xx status and body, byte for byte the answer the proxy
    (which forwards Cube's answers unchanged) gets for the same query."""
    unknown = {"measures": ["orders.nope"]}
    broker = e2e_stack.broker.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(
            f"{broker}/api/v0/semantic-model/orders/query",
            json={"query": unknown},
            headers={"X-API-KEY": e2e_stack.athena_key},
        ) as resp:
            status, raw, content_type = resp.status, await resp.read(), resp.content_type
        async with session.post(
            f"{broker}/cubejs-api/v1/load",
            json={"query": unknown},
            headers={"Authorization": e2e_stack.cube_token()},
        ) as proxied:
            assert (proxied.status, await proxied.read()) == (status, raw)
    assert 400 <= status < 500, raw
    assert content_type == "application/json"
    body = json.loads(raw)
    # Cube's own shape ({"type": "UserError", "error": …, "stack": …}), not the broker's
    # error document ({"status": "error", "error": <code>, "message": …}).
    assert "status" not in body, body
    assert body.get("type") == "UserError", body
    assert "orders.nope" in body["error"]


# 3. The real client -------------------------------------------------------------------


def test_cubejs_client_core_loads_through_cube_url(e2e_stack: Stack) -> None:
    """``@cubejs-client/core`` 0.33 with ``apiUrl = cube_url`` and the token, exactly as a
    dashboard would use what ``generate-token`` returns."""
    node = shutil.which("node")
    assert node is not None, "node is not on PATH (WITH_TEST_SERVICES=1 scripts/setup.sh)"
    status, minted = request_json(
        "POST",
        f"{e2e_stack.broker.url}/api/v0/semantic-model/orders/generate-token",
        headers={"X-API-KEY": e2e_stack.athena_key},
    )
    assert status == 200, minted
    assert minted["cube_url"] == f"{e2e_stack.broker.url}/cubejs-api/v1"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CUBE_INSTALL_DIR": str(cube_install_dir()),
        "CUBE_API_URL": minted["cube_url"],
        "CUBE_TOKEN": minted["token"],
        "CUBE_QUERY": json.dumps({**TOTALS, "dimensions": ["orders.status"]}),
    }
    result = subprocess.run(
        [node, str(CLIENT_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["cubes"] == ["orders"]
    rows = out["tablePivot"]
    assert {r["orders.status"]: int(r["orders.count"]) for r in rows} == COUNT_BY_STATUS
    total = sum((Decimal(str(r["orders.total_amount"])) for r in rows), Decimal(0))
    assert total == ORDERS_TOTAL
    assert len(out["rawData"]) == len(COUNT_BY_STATUS)


# 4. A model edit reaches Cube through new tokens -----------------------------------------


async def test_a_model_edit_shows_through_new_tokens_only(e2e_stack: Stack) -> None:
    """Appending a measure to the model file changes the schema hash: ``generate-token``
    soon hands out a token with the new hash, under which Cube (a new app ID) lists the
    measure, while the old token keeps its compiled schema. The file is restored and the
    broker seen back on the old hash before the test ends."""
    model_file = e2e_stack.registry_path.parent / "models" / "orders" / "orders.yml"
    original = model_file.read_bytes()
    assert original.endswith(b"type: sum\n"), "the measures list must end the file"
    meta_url = f"{e2e_stack.broker.url}/cubejs-api/v1/meta"

    async def meta_with(session: aiohttp.ClientSession, token: str) -> set[str]:
        status, meta, _ = await follow(session, "GET", meta_url, {"Authorization": token})
        assert status == 200, meta
        return member_names(meta)

    async def token_until(hash_matches: bool, old_hash: str, within: float = 15.0) -> str:
        deadline = time.monotonic() + within
        while True:
            token = e2e_stack.cube_token()
            if (token_hash(token) == old_hash) == hash_matches:
                return token
            assert time.monotonic() < deadline, "the broker did not pick up the model change"
            await asyncio.sleep(0.1)

    old_token = e2e_stack.cube_token()
    old_hash = token_hash(old_token)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        assert "orders.max_amount" not in await meta_with(session, old_token)
        try:
            model_file.write_bytes(
                original + b"\n      - name: max_amount\n        sql: amount\n        type: max\n"
            )
            new_token = await token_until(False, old_hash)
            assert token_hash(new_token) == e2e_stack.schema_hash()
            assert "orders.max_amount" in await meta_with(session, new_token)
            status, body, _ = await follow(
                session,
                "POST",
                f"{e2e_stack.broker.url}/cubejs-api/v1/load",
                {"Authorization": new_token},
                body={"query": {"measures": ["orders.max_amount"]}},
            )
            assert status == 200, body
            top = max(Decimal(amount) for _, _, _, amount in ORDERS_ROWS)
            assert Decimal(str(body["data"][0]["orders.max_amount"])) == top

            assert "orders.max_amount" not in await meta_with(session, old_token)
        finally:
            model_file.write_bytes(original)
        assert await token_until(True, old_hash) == old_token


# 5. What the proxy refuses -----------------------------------------------------------------


def resigned(token: str, key: str | None, algorithm: str, **changes: Any) -> str:
    """``token``'s claims (its known ``jti`` included) with ``changes``, signed anew."""
    claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm)


async def test_tokens_the_broker_did_not_mint_as_they_are_get_401(e2e_stack: Stack) -> None:
    """Each refused token but the forged one is a minted token (known ``jti``) with one
    thing wrong. The failures come from an address of their own (the e2e broker trusts
    127.0.0.1's ``X-Forwarded-For``) and stay below the brute-force guard's threshold."""
    minted = e2e_stack.cube_token()
    elsewhere = {"X-Forwarded-For": f"198.51.100.{secrets.randbelow(254) + 1}"}
    refused = {
        "forged (right secret, unknown jti)": e2e_stack.forged_token(),
        "alg none": resigned(minted, None, "none"),
        "expired": resigned(minted, API_SECRET, "HS256", exp=int(time.time()) - 60),
        "wrong secret": resigned(minted, "another-secret-that-is-long-enough-0123", "HS256"),
        "HS512": resigned(minted, API_SECRET, "HS512"),
        "missing jti": jwt.encode(
            {k: v for k, v in jwt.decode(minted, API_SECRET, ["HS256"]).items() if k != "jti"},
            API_SECRET,
        ),
        "not a JWT": "not-a-token",
    }
    base = f"{e2e_stack.broker.url}/cubejs-api/v1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for what, token in refused.items():
            for method, path, authorization, body in (
                ("GET", "/meta", token, None),
                ("GET", "/meta", f"Bearer {token}", None),
                ("POST", "/load", token, {"query": TOTALS}),
            ):
                headers = {"Authorization": authorization, **elsewhere}
                async with session.request(method, base + path, json=body, headers=headers) as resp:
                    assert resp.status == 401, (what, path, await resp.text())
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer"), what
                    assert (await resp.json())["error"] == "unauthorized", what
        async with session.get(
            f"{base}/meta", headers={"Authorization": minted, **elsewhere}
        ) as resp:
            assert resp.status == 200, await resp.text()


async def test_unknown_cube_paths_are_404(e2e_stack: Stack) -> None:
    token = e2e_stack.cube_token()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for method in ("GET", "POST"):
            async with session.request(
                method,
                f"{e2e_stack.broker.url}/cubejs-api/v1/nope",
                headers={"Authorization": token},
            ) as resp:
                assert resp.status == 404, await resp.text()
