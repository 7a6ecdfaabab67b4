"""The audit trail (SPEC §4): every key change over the admin API or the CLI, and a virgin
key's lock, as an event with its actor and changes, never a secret; listed newest first
by ``GET /admin/audit-events`` and ``cube-broker audit list``; one ``broker.audit`` line each;
purged after ``BROKER_AUDIT_RETENTION_DAYS``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.app import create_app
from broker.keys import audit
from broker.keys.retention import purge_audit
from broker.state import STORE
from tests.harness.cli import cli, cli_env
from tests.harness.keys import create_key
from tests.harness.settings import make_settings
from tests.harness.waiting import wait_until
from tests.helpers import ADMIN, AiohttpClient, Client, assert_error, token_status

EVENTS = "/admin/audit-events"


async def events(c: Client, **params: str) -> dict[str, Any]:
    resp = await c.get(EVENTS, params=params, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


@pytest.mark.both_stores
async def test_every_admin_change_is_an_event(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.audit")
    key, record = await create_key(client, name="first")
    public_id = record["public_id"]
    headers = {**ADMIN, "X-Request-Id": "req-patch-1"}
    resp = await client.patch(
        f"/admin/api-keys/{public_id}", json={"name": "second", "rate_limit_per_minute": 5},
        headers=headers,
    )  # fmt: skip
    assert resp.status == 200
    rotated = await client.post(f"/admin/api-keys/{public_id}/rotate", headers=ADMIN)
    new_key = (await rotated.json())["api_key"]
    assert (await client.delete(f"/admin/api-keys/{public_id}", headers=ADMIN)).status == 204

    doc = await events(client)
    actions = [e["action"] for e in doc["events"]]
    assert actions == ["key.revoke", "key.rotate", "key.update", "key.create"]
    revoke, rotate, update, create = doc["events"]
    for e in doc["events"]:
        assert e["key_id"] == record["id"] and e["public_id"] == public_id
        assert e["actor"] == "admin-api" and e["client_ip"] == "127.0.0.1"
        assert e["request_id"]
    assert update["request_id"] == "req-patch-1"
    assert update["changes"] == {
        "name": {"from": "first", "to": "second"},
        "rate_limit_per_minute": {"from": 0, "to": 5},
    }
    assert create["changes"]["name"] == {"from": None, "to": "first"}
    assert rotate["changes"] == {"secret": {"from": "previous", "to": "rotated"}}
    assert revoke["changes"]["is_active"] == {"from": True, "to": False}
    assert revoke["changes"]["revoked_at"]["from"] is None
    text = json.dumps(doc) + "\n".join(json.dumps(vars(r), default=str) for r in caplog.records)
    for secret in (key, new_key, key.split(".")[1], new_key.split(".")[1], "hmac-sha256"):
        assert secret not in text  # never a key, a secret or a digest
    logged = [r for r in caplog.records if r.name == "broker.audit"]
    assert [r.audit["action"] for r in logged] == list(reversed(actions))  # type: ignore[attr-defined]


async def test_events_page_and_filter_by_key(client: Client) -> None:
    _, a = await create_key(client)
    _, b = await create_key(client)
    for n in range(3):
        for r in (a, b):
            await client.patch(
                f"/admin/api-keys/{r['id']}", json={"description": f"d{n}"}, headers=ADMIN
            )
    first = await events(client, limit="5")
    assert len(first["events"]) == 5 and first["next_cursor"]
    rest = await events(client, limit="5", cursor=first["next_cursor"])
    assert len(rest["events"]) == 3 and rest["next_cursor"] is None
    every = first["events"] + rest["events"]
    assert [e["at"] for e in every] == sorted((e["at"] for e in every), reverse=True)
    only_a = await events(client, key=a["public_id"])
    assert len(only_a["events"]) == 4 and {e["key_id"] for e in only_a["events"]} == {a["id"]}
    assert (await events(client, key=b["id"]))["events"][0]["key_id"] == b["id"]
    resp = await client.get(EVENTS, params={"key": "zzzzzzzzzzzzzzzz"}, headers=ADMIN)
    await assert_error(resp, 404, "not_found")
    resp = await client.get(EVENTS, params={"cursor": "bm90LWEtY3Vyc29y"}, headers=ADMIN)
    await assert_error(resp, 422, "validation_failed")
    await assert_error(await client.get(EVENTS), 401, "unauthorized")


@pytest.mark.both_stores
async def test_a_virgin_key_locking_is_an_event(client: Client) -> None:
    key, record = await create_key(client, virgin_mode=True, virgin_until_n_requests=2)
    assert await token_status(client, key, "127.0.0.2") == 200
    assert (await events(client, key=record["id"]))["events"][0]["action"] != "key.lock"
    assert await token_status(client, key, "127.0.0.2") == 200
    lock = (await events(client, key=record["id"]))["events"][0]
    assert lock["action"] == "key.lock" and lock["actor"] == "broker"
    assert lock["client_ip"] == "127.0.0.2"
    assert lock["changes"]["locked"] == {"from": False, "to": True}


def test_cli_changes_are_events_and_audit_list_shows_them(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    made = cli(env, "keys", "create", "--name", "cli-key", "--json")
    assert made.returncode == 0, made.stderr
    public_id = json.loads(made.stdout)["record"]["public_id"]
    assert cli(env, "keys", "update", public_id, "--name", "renamed").returncode == 0
    assert cli(env, "keys", "revoke", public_id).returncode == 0
    listed = cli(env, "audit", "list", "--key", public_id, "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert [e["action"] for e in doc["events"]] == ["key.revoke", "key.update", "key.create"]
    assert {e["actor"] for e in doc["events"]} == {"cli"}
    assert all("client_ip" not in e for e in doc["events"])
    table = cli(env, "audit", "list", "--limit", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AT", "ACTION", "PUBLIC_ID", "ACTOR", "CHANGED"]
    assert len(lines) == 3 and "key.revoke" in lines[1] and "cli" in lines[1]
    assert "None" not in table.stdout


async def test_old_events_are_purged_in_the_background(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/broker.db", BROKER_AUDIT_RETENTION_DAYS="30"
    )
    c: Client = await aiohttp_client(create_app(settings))
    store = c.app[STORE]
    _, record = await create_key(c)
    (created,) = await store.audit_events(10)
    old = dataclasses.replace(
        created, id="00000000-0000-0000-0000-000000000001", at=created.at - timedelta(days=31)
    )
    await store.update_key(record["id"], lambda r: r, audit=lambda o, n: old)
    assert len(await store.audit_events(10)) == 2

    async def only_the_recent_one() -> bool:
        return len(await store.audit_events(10)) == 1

    task = asyncio.create_task(purge_audit(store, 30, every=0.05))
    try:
        await wait_until(only_the_recent_one, within=5)
    finally:
        task.cancel()
    assert [e.action for e in await store.audit_events(10)] == [audit.CREATE]
