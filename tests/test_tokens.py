"""generate-token (SPEC §5): the JWT, rights, and the shared, stampede-proof cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

from broker.app import create_app
from broker.errors import Unauthorized
from broker.keys.rights import TOKEN_CREATE
from broker.state import METRICS, REGISTRY, STORE, TOKEN_VERIFIER
from tests.harness import DATA
from tests.harness.keys import create_key
from tests.harness.settings import API_SECRET, make_settings
from tests.helpers import Client, assert_error

URL = "/api/v0/semantic-model/{}/generate-token"


def minted(client: Client, model: str = "orders") -> float:
    registry = client.app[METRICS].registry
    value = registry.get_sample_value("broker_tokens_minted_total", {"model": model})
    return value or 0.0


async def generate(client: Client, key: str, asset: str = "orders", bearer: bool = False) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-KEY": key}
    return await client.post(URL.format(asset), headers=headers)


async def test_token_and_claims(client: Client, admin_headers: dict[str, str]) -> None:
    key, _ = await create_key(client, rights=[TOKEN_CREATE])
    resp = await generate(client, key)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"cube_url", "expires_at", "token"}
    assert body["cube_url"] == "http://127.0.0.1:8080/cubejs-api/v1"
    assert resp.headers["Cache-Control"] == "no-store"  # a bearer credential
    token = body["token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    # kid: the first 16 hex digits of the SHA-256 of the signing secret (SPEC §5)
    kid = hashlib.sha256(API_SECRET.encode()).hexdigest()[:16]
    assert header == {"alg": "HS256", "typ": "JWT", "kid": kid}
    claims = jwt.decode(token, API_SECRET, algorithms=["HS256"])
    assert set(claims) == {"model_id", "schema_hash", "iat", "exp", "jti"}
    model = client.app[REGISTRY].current.get("orders")
    assert model is not None
    assert claims["model_id"] == "orders" and claims["schema_hash"] == model.schema_hash
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 5
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert body["expires_at"].endswith("Z") and expires == datetime.fromtimestamp(
        claims["exp"], UTC
    )
    assert key.split(".")[1] not in token
    assert await client.app[STORE].token_owner(claims["jti"]) == key[4:20]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-at-least-32-bytes!!", algorithms=["HS256"])


@pytest.mark.both_stores  # misses go through the store's token cache (L2)
async def test_same_token_for_same_key_and_model(
    client: Client, admin_headers: dict[str, str]
) -> None:
    key, _ = await create_key(client, rights=[TOKEN_CREATE])
    first = await (await generate(client, key)).json()
    second = await (await generate(client, key, bearer=True)).json()
    assert first == second
    other, _ = await create_key(client, rights=[TOKEN_CREATE])
    third = await (await generate(client, other)).json()
    assert third["token"] != first["token"]
    assert minted(client) == 2


async def test_public_url_setting(aiohttp_client: Any, store_url: str) -> None:
    c = await aiohttp_client(
        create_app(
            make_settings(BROKER_STORE=store_url, BROKER_PUBLIC_URL="https://bi.example.com/")
        )
    )
    key, _ = await create_key(c, rights=[TOKEN_CREATE])
    body = await (await generate(c, key)).json()
    assert body["cube_url"] == "https://bi.example.com/cubejs-api/v1"


async def test_rights(client: Client, admin_headers: dict[str, str]) -> None:
    scoped, _ = await create_key(client, rights=["semantic_model.token.create:orders"])
    assert (await generate(client, scoped)).status == 200
    star, _ = await create_key(client, rights=["semantic_model.*:orders"])
    assert (await generate(client, star)).status == 200
    wrong_scope, _ = await create_key(client, rights=["semantic_model.token.create:sales"])
    await assert_error(await generate(client, wrong_scope), 403, "forbidden")
    no_right, _ = await create_key(client, rights=["semantic_model.meta.read"])
    await assert_error(await generate(client, no_right), 403, "forbidden")
    unscoped, _ = await create_key(client, rights=[TOKEN_CREATE])
    await assert_error(await generate(client, unscoped, asset="nope"), 404, "not_found")


@pytest.mark.parametrize("state", ["missing", "wrong", "inactive", "revoked", "expired"])
async def test_refused_keys_are_401_before_404(
    client: Client, admin_headers: dict[str, str], state: str
) -> None:
    key, record = await create_key(client)
    rid = record["id"]
    if state == "wrong":
        key = key[:-1] + ("A" if key[-1] != "A" else "B")
    elif state == "inactive":
        await client.patch(
            f"/admin/api-keys/{rid}", json={"is_active": False}, headers=admin_headers
        )
    elif state == "revoked":
        await client.delete(f"/admin/api-keys/{rid}", headers=admin_headers)
    elif state == "expired":
        await _expire(client, rid)
    for asset in ("orders", "does-not-exist"):
        headers = {} if state == "missing" else {"X-API-KEY": key}
        resp = await client.post(URL.format(asset), headers=headers)
        await assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def _expire(client: Client, key_id: str) -> None:
    import dataclasses
    from datetime import timedelta

    from broker.state import KEY_CACHE
    from broker.support.timeutil import utcnow

    past = utcnow() - timedelta(seconds=1)
    updated = await client.app[STORE].update_key(
        key_id, lambda r: dataclasses.replace(r, expires_at=past)
    )
    assert updated is not None
    client.app[KEY_CACHE].invalidate(updated.public_id)


@pytest.mark.both_stores  # misses go through the store's token cache (L2)
async def test_fifty_concurrent_cold_requests_mint_once(
    client: Client, admin_headers: dict[str, str]
) -> None:
    key, _ = await create_key(client, rights=[TOKEN_CREATE])
    responses = await asyncio.gather(*(generate(client, key) for _ in range(50)))
    tokens = {(await r.json())["token"] for r in responses}
    assert len(tokens) == 1
    assert minted(client) == 1


@pytest.mark.both_stores
async def test_two_replicas_share_one_token(aiohttp_client: Any, store_url: str) -> None:
    """Two app instances on one store: concurrent cold misses on both mint exactly once."""
    settings = make_settings(BROKER_STORE=store_url)
    a = await aiohttp_client(create_app(settings))
    b = await aiohttp_client(create_app(settings))
    key, _ = await create_key(a, rights=[TOKEN_CREATE])
    responses = await asyncio.gather(*(generate(c, key) for c in [a, b] * 25))
    tokens = {(await r.json())["token"] for r in responses}
    assert len(tokens) == 1
    assert minted(a) + minted(b) == 1
    assert (await (await generate(b, key)).json())["token"] in tokens


@pytest.mark.both_stores  # replicas sharing the store's token cache
async def test_after_a_rotation_no_replica_hands_out_a_token_of_the_old_secret(
    aiohttp_client: Any, store_url: str
) -> None:
    """SPEC §5 step 2 on two replicas sharing a store: the token the old secret signed is
    still in the store's cache, yet both hand out one new token (the new kid), while the
    old token still verifies; without the old secret it no longer does."""
    old, new = "o" * 40, "n" * 40
    before = await aiohttp_client(
        create_app(make_settings(BROKER_STORE=store_url, CUBEJS_API_SECRET=old))
    )
    key, _ = await create_key(before, rights=[TOKEN_CREATE])
    old_token = (await (await generate(before, key)).json())["token"]
    rotated = make_settings(BROKER_STORE=store_url, CUBEJS_API_SECRET=new, CUBEJS_API_SECRETS=old)
    a = await aiohttp_client(create_app(rotated))
    b = await aiohttp_client(create_app(rotated))
    answers = await asyncio.gather(*(generate(c, key) for c in [a, b] * 5))
    tokens = {(await r.json())["token"] for r in answers}
    assert len(tokens) == 1 and old_token not in tokens
    (new_token,) = tokens
    assert (
        jwt.get_unverified_header(new_token)["kid"] == hashlib.sha256(new.encode()).hexdigest()[:16]
    )
    for replica in (a, b):
        claims, _ = await replica.app[TOKEN_VERIFIER].verify(old_token)
        assert claims.model_id == "orders"
    after = await aiohttp_client(
        create_app(make_settings(BROKER_STORE=store_url, CUBEJS_API_SECRET=new))
    )
    with pytest.raises(Unauthorized):
        await after.app[TOKEN_VERIFIER].verify(old_token)
    await after.app[TOKEN_VERIFIER].verify(new_token)


async def test_a_token_of_an_unknown_kid_is_refused(
    client: Client, admin_headers: dict[str, str]
) -> None:
    key, _ = await create_key(client, rights=[TOKEN_CREATE])
    token = (await (await generate(client, key)).json())["token"]
    claims = jwt.decode(token, API_SECRET, algorithms=["HS256"])
    forged = jwt.encode(claims, API_SECRET, algorithm="HS256", headers={"kid": "0123456789abcdef"})
    with pytest.raises(Unauthorized):
        await client.app[TOKEN_VERIFIER].verify(forged)
    unkeyed = jwt.encode(claims, API_SECRET, algorithm="HS256")  # minted before tokens had a kid
    verified, _ = await client.app[TOKEN_VERIFIER].verify(unkeyed)
    assert verified.jti == claims["jti"]


@pytest.mark.both_stores  # the store's keep-until expiry
async def test_token_near_expiry_is_replaced(aiohttp_client: Any, store_url: str) -> None:
    settings = make_settings(
        BROKER_STORE=store_url, BROKER_TOKEN_TTL="6", BROKER_TOKEN_MIN_REMAINING="4"
    )
    c = await aiohttp_client(create_app(settings))
    key, _ = await create_key(c, rights=[TOKEN_CREATE])
    first = await (await generate(c, key)).json()
    first_exp = jwt.decode(first["token"], API_SECRET, algorithms=["HS256"])["exp"]
    deadline = time.monotonic() + 10
    while True:
        asked_at = time.time()
        body = await (await generate(c, key)).json()
        if body["token"] != first["token"]:
            break
        # never handed out with less than the minimum lifetime left (the broker decided
        # after asked_at, so no slack for a slow machine is needed)
        assert first_exp - asked_at >= 4 - 0.01
        assert time.monotonic() < deadline, "token was not replaced"
        await asyncio.sleep(0.05)
    assert jwt.decode(body["token"], API_SECRET, algorithms=["HS256"])["exp"] > first_exp
    assert minted(c) == 2


async def test_schema_change_gives_a_new_token(
    aiohttp_client: Any, store_url: str, tmp_path: Path
) -> None:
    shutil.copytree(DATA, tmp_path / "data")
    settings = make_settings(
        BROKER_STORE=store_url, BROKER_MODELS=str(tmp_path / "data" / "models.yaml")
    )
    c = await aiohttp_client(create_app(settings))
    key, _ = await create_key(c, rights=[TOKEN_CREATE])
    before = await (await generate(c, key)).json()
    model_file = tmp_path / "data" / "models" / "orders" / "orders.yml"
    model_file.write_text(model_file.read_text() + "\n# a change\n")
    assert c.app[REGISTRY].reload()
    after = await (await generate(c, key)).json()
    assert after["token"] != before["token"]
    old = jwt.decode(before["token"], API_SECRET, algorithms=["HS256"])
    new = jwt.decode(after["token"], API_SECRET, algorithms=["HS256"])
    assert new["schema_hash"] != old["schema_hash"]
    assert new["schema_hash"] == c.app[REGISTRY].current.get("orders").schema_hash
