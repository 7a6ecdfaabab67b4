"""The admin API (SPEC §4) over HTTP."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.state import KEY_VERIFIER
from tests.harness.keys import create_key
from tests.harness.settings import ADMIN_KEY
from tests.helpers import assert_error

Client = TestClient[Any, Any]
KEY_RE = re.compile(r"ath_[a-z0-9]{16}\.[A-Za-z0-9_-]{32,}")
RECORD_FIELDS = {
    "id", "public_id", "name", "description", "client_name", "is_active", "rights",
    "created_at", "expires_at", "revoked_at", "last_used_at", "ip_whitelist", "ip_blacklist",
    "virgin_mode", "virgin_until_n_requests", "max_whitelist_ips", "request_count", "locked",
    "rate_limit_per_minute",
}  # fmt: skip


async def test_create_returns_key_once_and_full_record(
    client: Client, admin_headers: dict[str, str]
) -> None:
    key, record = await create_key(client, rights=["semantic_model.*", "custom.thing"])
    assert KEY_RE.fullmatch(key)
    assert set(record) == RECORD_FIELDS
    assert key.startswith(f"ath_{record['public_id']}.")
    assert record["rights"] == ["semantic_model.*", "custom.thing"]
    assert record["is_active"] is True and record["locked"] is False
    assert record["virgin_mode"] is False and record["request_count"] == 0
    assert record["revoked_at"] is None and record["expires_at"] is None
    assert record["created_at"].endswith("Z")
    secret = key.split(".", 1)[1]
    for path in ("/admin/api-keys", f"/admin/api-keys/{record['id']}"):
        resp = await client.get(path, headers=admin_headers)
        assert secret not in await resp.text()
    verified = await client.app[KEY_VERIFIER].authenticate(key)
    assert verified.id == record["id"]


async def test_show_by_uuid_and_public_id(client: Client, admin_headers: dict[str, str]) -> None:
    _, record = await create_key(client)
    for ident in (record["id"], record["public_id"]):
        resp = await client.get(f"/admin/api-keys/{ident}", headers=admin_headers)
        assert resp.status == 200
        assert await resp.json() == record
    for ident in ("0" * 16, "6f1c1f0e-0000-4000-8000-000000000000", "not-an-id"):
        resp = await client.get(f"/admin/api-keys/{ident}", headers=admin_headers)
        await assert_error(resp, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 5}, "name"),
        ({"name": "k", "description": 1}, "description"),
        ({"name": "k", "client_name": []}, "client_name"),
        ({"name": "k", "rights": "semantic_model.*"}, "rights"),
        ({"name": "k", "rights": ["ok", 3]}, "rights"),
        ({"name": "k", "virgin_mode": "yes"}, "virgin_mode"),
        ({"name": "k", "virgin_until_n_requests": -1}, "virgin_until_n_requests"),
        ({"name": "k", "virgin_until_n_requests": 1.5}, "virgin_until_n_requests"),
        ({"name": "k", "max_whitelist_ips": True}, "max_whitelist_ips"),
        ({"name": "k", "rate_limit_per_minute": -5}, "rate_limit_per_minute"),
        ({"name": "k", "rate_limit_per_minute": "10"}, "rate_limit_per_minute"),
        ({"name": "k", "ip_whitelist": ["10.0.0.300"]}, "ip_whitelist"),
        ({"name": "k", "ip_whitelist": ["10.0.0.0/33"]}, "ip_whitelist"),
        ({"name": "k", "ip_blacklist": ["2001:db8::/129"]}, "ip_blacklist"),
        ({"name": "k", "ip_blacklist": ["fe80::zz"]}, "ip_blacklist"),
        ({"name": "k", "ip_blacklist": "10.0.0.1"}, "ip_blacklist"),
        ({"name": "k", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "k", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "k", "expires_at": 4102444800}, "expires_at"),
        ({"name": "k", "colour": "blue"}, "colour"),
        ({"name": "k", "is_active": False}, "is_active"),
        ({"name": "k", "virgin_mode": True}, "virgin_mode"),
    ],
)
async def test_create_validation(
    client: Client, admin_headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/admin/api-keys", json=body, headers=admin_headers)
    err = await assert_error(resp, 422, "validation_failed")
    assert field in [d["field"] for d in err["details"]]
    listing = await (await client.get("/admin/api-keys", headers=admin_headers)).json()
    assert listing["keys"] == []


async def test_create_normalizes_ips_and_virgin_ignores_lists(
    client: Client, admin_headers: dict[str, str]
) -> None:
    _, rec = await create_key(
        client, ip_whitelist=["10.1.2.3/8", "::1", "192.168.0.1"],
        ip_blacklist=["2001:DB8::/32"], expires_at="2099-01-01T01:00:00+01:00",
    )  # fmt: skip
    assert rec["ip_whitelist"] == ["10.0.0.0/8", "::1", "192.168.0.1"]
    assert rec["ip_blacklist"] == ["2001:db8::/32"]
    assert rec["expires_at"] == "2099-01-01T00:00:00Z"
    _, virgin = await create_key(
        client, virgin_mode=True, max_whitelist_ips=2,
        ip_whitelist=["10.0.0.1"], ip_blacklist=["10.0.0.2"],
    )  # fmt: skip
    assert virgin["virgin_mode"] is True
    assert virgin["ip_whitelist"] == [] and virgin["ip_blacklist"] == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
async def test_malformed_json_is_400(
    client: Client, admin_headers: dict[str, str], raw: bytes
) -> None:
    resp = await client.post("/admin/api-keys", data=raw, headers=admin_headers)
    await assert_error(resp, 400, "invalid_json")


async def test_body_over_one_mib_is_413(client: Client, admin_headers: dict[str, str]) -> None:
    body = io.BytesIO(b'{"name": "' + b"x" * (1024 * 1024) + b'"}')
    resp = await client.post("/admin/api-keys", data=body, headers=admin_headers)
    await assert_error(resp, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"apikey": ADMIN_KEY}, ""),
        ({"Authorization": f"Bearer {ADMIN_KEY}"}, ""),
        ({"X-API-Key": ADMIN_KEY}, ""),
        ({"X-Athena-Key": ADMIN_KEY}, ""),
        ({}, f"?api_key={ADMIN_KEY}"),
    ],
)
async def test_admin_key_accepted_in_five_places(
    client: Client, headers: dict[str, str], query: str
) -> None:
    resp = await client.get(f"/admin/api-keys{query}", headers=headers)
    assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": ADMIN_KEY[:-1] + ("0" if ADMIN_KEY[-1] != "0" else "1")},
        {"X-API-Key": ADMIN_KEY + "x"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
    ],
)
async def test_wrong_admin_key_is_401(client: Client, headers: dict[str, str]) -> None:
    resp = await client.post("/admin/api-keys", json={"name": "x"}, headers=headers)
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_disabled_without_admin_key(aiohttp_client: Any, store_url: str) -> None:
    from broker.app import create_app
    from tests.harness.settings import make_settings

    c = await aiohttp_client(create_app(make_settings(BROKER_STORE=store_url, ATHENA_KEY_12="")))
    resp = await c.get("/admin/api-keys", headers={"X-API-Key": ADMIN_KEY})
    await assert_error(resp, 403, "admin_disabled")


async def test_alias_broker_admin_key(aiohttp_client: Any, store_url: str) -> None:
    from broker.app import create_app
    from tests.harness.settings import make_settings

    settings = make_settings(
        BROKER_STORE=store_url, ATHENA_KEY_12="", BROKER_ADMIN_KEY="another-admin-key-0123456789"
    )
    c = await aiohttp_client(create_app(settings))
    ok = await c.get("/admin/api-keys", headers={"X-API-Key": "another-admin-key-0123456789"})
    assert ok.status == 200
    bad = await c.get("/admin/api-keys", headers={"X-API-Key": ADMIN_KEY})
    assert bad.status == 401


@pytest.mark.both_stores  # the cursor is the store's sort order
async def test_list_pagination(client: Client, admin_headers: dict[str, str]) -> None:
    created = [(await create_key(client, name=f"k{i}"))[1]["id"] for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        resp = await client.get(f"/admin/api-keys{query}", headers=admin_headers)
        doc = await resp.json()
        seen.extend(r["id"] for r in doc["keys"])
        pages += 1
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == created
    full = await (await client.get("/admin/api-keys", headers=admin_headers)).json()
    assert [r["id"] for r in full["keys"]] == created and full["next_cursor"] is None


@pytest.mark.parametrize("query", ["?limit=0", "?limit=1001", "?limit=abc", "?cursor=bogus!"])
async def test_list_bad_parameters(
    client: Client, admin_headers: dict[str, str], query: str
) -> None:
    resp = await client.get(f"/admin/api-keys{query}", headers=admin_headers)
    await assert_error(resp, 422, "validation_failed")


async def test_patch_changes_fields(client: Client, admin_headers: dict[str, str]) -> None:
    _, rec = await create_key(client)
    patch = {
        "name": "renamed", "description": "d", "client_name": "acme",
        "rights": ["semantic_model.meta.read:sales"], "ip_blacklist": ["10.0.0.0/8"],
        "rate_limit_per_minute": 60, "expires_at": "2099-06-01T00:00:00Z", "is_active": False,
    }  # fmt: skip
    resp = await client.patch(
        f"/admin/api-keys/{rec['public_id']}", json=patch, headers=admin_headers
    )
    assert resp.status == 200
    new = await resp.json()
    for field, value in patch.items():
        assert new[field] == value, field
    assert new["id"] == rec["id"] and new["created_at"] == rec["created_at"]
    shown = await (await client.get(f"/admin/api-keys/{rec['id']}", headers=admin_headers)).json()
    assert shown == new
    cleared = await client.patch(
        f"/admin/api-keys/{rec['id']}", json={"expires_at": None}, headers=admin_headers
    )
    assert (await cleared.json())["expires_at"] is None


@pytest.mark.parametrize(
    "body",
    [{"virgin_mode": True}, {"locked": True}, {"name": ""}, {"rights": [1]}, {"id": "x"}],
)
async def test_patch_validation_changes_nothing(
    client: Client, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    _, rec = await create_key(client)
    resp = await client.patch(f"/admin/api-keys/{rec['id']}", json=body, headers=admin_headers)
    await assert_error(resp, 422, "validation_failed")
    shown = await (await client.get(f"/admin/api-keys/{rec['id']}", headers=admin_headers)).json()
    assert shown == rec


async def test_patch_virgin_limits_both_zero_refused(
    client: Client, admin_headers: dict[str, str]
) -> None:
    _, rec = await create_key(client, virgin_mode=True, max_whitelist_ips=3)
    resp = await client.patch(
        f"/admin/api-keys/{rec['id']}", json={"max_whitelist_ips": 0}, headers=admin_headers
    )
    await assert_error(resp, 422, "validation_failed")


async def test_patch_unknown_key_is_404(client: Client, admin_headers: dict[str, str]) -> None:
    resp = await client.patch(
        "/admin/api-keys/abcdefghijklmnop", json={"name": "x"}, headers=admin_headers
    )
    await assert_error(resp, 404, "not_found")


async def test_revoke_is_final(client: Client, admin_headers: dict[str, str]) -> None:
    key, rec = await create_key(client)
    resp = await client.delete(f"/admin/api-keys/{rec['id']}", headers=admin_headers)
    assert resp.status == 204
    shown = await (await client.get(f"/admin/api-keys/{rec['id']}", headers=admin_headers)).json()
    assert shown["is_active"] is False and shown["revoked_at"] is not None
    again = await client.delete(f"/admin/api-keys/{rec['public_id']}", headers=admin_headers)
    await assert_error(again, 404, "not_found")
    reactivate = await client.patch(
        f"/admin/api-keys/{rec['id']}", json={"is_active": True}, headers=admin_headers
    )
    await assert_error(reactivate, 409, "conflict")
    rotate = await client.post(f"/admin/api-keys/{rec['id']}/rotate", headers=admin_headers)
    await assert_error(rotate, 409, "conflict")
    from broker.errors import Unauthorized

    with pytest.raises(Unauthorized) as exc:
        await client.app[KEY_VERIFIER].authenticate(key)
    assert exc.value.reason == "revoked"


async def test_rotate_without_grace(client: Client, admin_headers: dict[str, str]) -> None:
    from broker.errors import Unauthorized

    old, rec = await create_key(client)
    resp = await client.post(f"/admin/api-keys/{rec['public_id']}/rotate", headers=admin_headers)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    new_doc = await resp.json()
    new = new_doc["api_key"]
    assert new != old and new.startswith(f"ath_{rec['public_id']}.")
    assert new_doc["record"]["id"] == rec["id"]
    verifier = client.app[KEY_VERIFIER]
    assert (await verifier.authenticate(new)).id == rec["id"]
    with pytest.raises(Unauthorized):
        await verifier.authenticate(old)


async def test_rotate_with_grace(client: Client, admin_headers: dict[str, str]) -> None:
    old, rec = await create_key(client)
    resp = await client.post(
        f"/admin/api-keys/{rec['id']}/rotate", json={"grace_seconds": 60},
        headers=admin_headers,
    )  # fmt: skip
    new = (await resp.json())["api_key"]
    verifier = client.app[KEY_VERIFIER]
    assert (await verifier.authenticate(old)).id == rec["id"]
    assert (await verifier.authenticate(new)).id == rec["id"]
    bad = await client.post(
        f"/admin/api-keys/{rec['id']}/rotate", json={"grace_seconds": -1},
        headers=admin_headers,
    )  # fmt: skip
    await assert_error(bad, 422, "validation_failed")


async def test_rotate_unknown_key_is_404(client: Client, admin_headers: dict[str, str]) -> None:
    resp = await client.post("/admin/api-keys/zzzzzzzzzzzzzzzz/rotate", headers=admin_headers)
    await assert_error(resp, 404, "not_found")


async def test_secrets_never_logged(
    client: Client, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from broker.support.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    key, rec = await create_key(client)
    rid = rec["id"]
    await client.get(f"/admin/api-keys?api_key={ADMIN_KEY}")
    await client.get(f"/admin/api-keys/{rid}?api_key={key}", headers=admin_headers)
    rotated = await (
        await client.post(f"/admin/api-keys/{rid}/rotate", headers=admin_headers)
    ).json()
    await client.get("/admin/api-keys", headers={"X-API-Key": key})
    await client.delete(f"/admin/api-keys/{rid}", headers=admin_headers)
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "api_key=***" in text
    for secret in (ADMIN_KEY, key.split(".")[1], rotated["api_key"].split(".")[1]):
        assert secret not in text
