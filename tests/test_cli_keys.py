"""``cube-broker keys …``: every verb and option, its human table and its ``--json``, run
as a real subprocess on a SQLite store."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.app import create_app
from broker.cli import build_parser
from broker.errors import Unauthorized
from broker.keys.cache import KeyCache
from broker.keys.verify import KeyVerifier
from broker.store import open_store
from tests.harness.cli import cli, cli_env
from tests.harness.settings import ADMIN_KEY, make_settings
from tests.harness.waiting import refused_within, wait_until
from tests.helpers import AiohttpClient


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def ok(env: dict[str, str], *args: str) -> str:
    """The stdout of a CLI run that must succeed."""
    result = cli(env, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "--json"))


def create(env: dict[str, str], *options: str) -> tuple[str, dict[str, Any]]:
    doc = as_json(env, "keys", "create", *options)
    assert set(doc) == {"api_key", "record"}
    return doc["api_key"], doc["record"]


def test_create_takes_every_option(env: dict[str, str]) -> None:
    key, record = create(
        env, "--name", "full", "--right", "semantic_model.meta.read:orders",
        "--right", "semantic_model.token.create", "--description", "for the sales dashboard",
        "--client-name", "acme", "--expires-at", "2099-01-01T00:00:00Z",
        "--ip-whitelist", "10.0.0.0/8", "--ip-whitelist", "2001:db8::/32",
        "--ip-blacklist", "10.0.0.5", "--rate-limit", "120",
    )  # fmt: skip
    assert key.startswith(f"ath_{record['public_id']}.")
    assert {k: record[k] for k in record if k not in ("id", "public_id", "created_at")} == {
        "name": "full",
        "description": "for the sales dashboard",
        "client_name": "acme",
        "is_active": True,
        "rights": ["semantic_model.meta.read:orders", "semantic_model.token.create"],
        "expires_at": "2099-01-01T00:00:00Z",
        "revoked_at": None,
        "last_used_at": None,
        "ip_whitelist": ["10.0.0.0/8", "2001:db8::/32"],
        "ip_blacklist": ["10.0.0.5"],
        "virgin_mode": False,
        "virgin_until_n_requests": 0,
        "max_whitelist_ips": 0,
        "request_count": 0,
        "locked": False,
        "rate_limit_per_minute": 120,
    }
    _, virgin = create(
        env, "--name", "v", "--virgin-mode", "--virgin-until", "5", "--max-whitelist-ips", "2"
    )
    assert (virgin["virgin_mode"], virgin["virgin_until_n_requests"]) == (True, 5)
    assert virgin["max_whitelist_ips"] == 2


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (["--expires-at", "2099-01-01T00:00:00"], "--expires-at"),  # no time zone
        (["--ip-blacklist", "10.0.0.0/33"], "--ip-blacklist"),
        (["--rate-limit", "-1"], "--rate-limit"),
        (["--virgin-mode"], "--virgin-mode"),  # would never lock
    ],
)
def test_create_refuses_bad_values_naming_the_option(
    env: dict[str, str], options: list[str], flag: str
) -> None:
    _, good = create(env, "--name", "good")
    result = cli(env, "keys", "create", "--name", "bad", *options)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cube-broker: {flag}: "), line
    assert as_json(env, "keys", "list")["keys"] == [good]


def test_rotate_prints_the_new_key_first(env: dict[str, str]) -> None:
    old, record = create(env, "--name", "r")
    out = ok(env, "keys", "rotate", record["public_id"]).splitlines()
    new = out[0]
    assert new.startswith(f"ath_{record['public_id']}.") and " " not in new and new != old
    doc = as_json(env, "keys", "rotate", record["id"], "--grace-seconds", "60")
    assert set(doc) == {"api_key", "record"} and doc["record"]["id"] == record["id"]
    assert doc["api_key"] not in (old, new)
    bad = cli(env, "keys", "rotate", record["id"], "--grace-seconds", "86401")
    assert bad.returncode == 2 and bad.stderr.startswith("cube-broker: --grace-seconds: ")
    ok(env, "keys", "revoke", record["id"])
    revoked = cli(env, "keys", "rotate", record["id"])
    assert revoked.returncode == 1 and "revoked" in revoked.stderr


async def test_rotate_reaches_a_running_broker_and_keeps_the_grace(env: dict[str, str]) -> None:
    old, record = create(env, "--name", "live")
    store = open_store(env["BROKER_STORE"])
    cache = KeyCache(store)
    feed = asyncio.create_task(cache.follow_changes())
    try:
        verifier = KeyVerifier(cache)
        await wait_until(lambda: cache.live)
        await verifier.authenticate(old)
        graced = await cli_async(env, "keys", "rotate", record["id"], "--grace-seconds", "60")
        await asyncio.sleep(1.2)  # longer than propagation: the old secret is still good
        await verifier.authenticate(old)
        await verifier.authenticate(graced)
        newest = await cli_async(env, "keys", "rotate", record["id"])
        await refused_within(lambda: verifier.authenticate(graced), Unauthorized, 1.0)
        await verifier.authenticate(newest)
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await store.close()


async def cli_async(env: dict[str, str], *args: str) -> str:
    """The first line of a CLI run, without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    return stdout.decode().splitlines()[0]


def test_update_changes_only_what_is_given(env: dict[str, str]) -> None:
    _, before = create(
        env, "--name", "u", "--right", "semantic_model.*", "--description", "d",
        "--client-name", "acme", "--ip-whitelist", "10.0.0.0/8", "--rate-limit", "60",
        "--expires-at", "2099-01-01T00:00:00Z",
    )  # fmt: skip
    key_id = before["public_id"]

    def changed(*options: str) -> dict[str, Any]:
        after: dict[str, Any] = as_json(env, "keys", "update", key_id, *options)
        assert as_json(env, "keys", "show", key_id) == after
        return {k: v for k, v in after.items() if before.get(k) != v}

    assert changed("--rate-limit", "5") == {"rate_limit_per_minute": 5}
    before["rate_limit_per_minute"] = 5
    assert changed("--inactive") == {"is_active": False}
    assert changed("--active") == {}
    assert changed("--name", "renamed", "--right", "a", "--right", "b") == {
        "name": "renamed",
        "rights": ["a", "b"],
    }
    before.update(name="renamed", rights=["a", "b"])
    # An empty value clears: null for a text or a time, [] for a list.
    assert changed("--description", "", "--expires-at", "", "--ip-whitelist", "") == {
        "description": None,
        "expires_at": None,
        "ip_whitelist": [],
    }
    before.update(description=None, expires_at=None, ip_whitelist=[])
    more = ["--client-name", "beta", "--ip-blacklist", "192.0.2.0/24"]
    limits = ["--virgin-until", "3", "--max-whitelist-ips", "4"]
    assert changed(*more, *limits) == {
        "client_name": "beta",
        "ip_blacklist": ["192.0.2.0/24"],
        "virgin_until_n_requests": 3,
        "max_whitelist_ips": 4,
    }


def test_update_refusals(env: dict[str, str]) -> None:
    _, record = create(env, "--name", "u")
    nothing = cli(env, "keys", "update", record["id"])
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    past = cli(env, "keys", "update", record["id"], "--expires-at", "2000-01-01T00:00:00Z")
    assert past.returncode == 2 and past.stderr.startswith("cube-broker: --expires-at: ")
    empty = cli(env, "keys", "update", record["id"], "--name", "")
    assert empty.returncode == 2 and empty.stderr.startswith("cube-broker: --name: ")
    both = cli(env, "keys", "update", record["id"], "--active", "--inactive")
    assert both.returncode == 2
    assert as_json(env, "keys", "show", record["id"]) == record
    ok(env, "keys", "revoke", record["id"])
    again = cli(env, "keys", "update", record["id"], "--active")
    assert again.returncode == 1 and "revoked" in again.stderr
    missing = cli(env, "keys", "update", "zzzzzzzzzzzzzzzz", "--inactive")
    assert missing.returncode == 1 and "No API key" in missing.stderr


async def test_json_is_the_admin_apis_document(
    env: dict[str, str], aiohttp_client: AiohttpClient
) -> None:
    _, first = create(env, "--name", "first", "--right", "semantic_model.*")
    _, second = create(env, "--name", "second", "--ip-blacklist", "::1")
    client = await aiohttp_client(create_app(make_settings(BROKER_STORE=env["BROKER_STORE"])))
    headers = {"X-API-Key": ADMIN_KEY}
    listing = await (await client.get("/admin/api-keys", headers=headers)).json()
    assert as_json(env, "keys", "list") == listing
    assert [r["id"] for r in listing["keys"]] == [first["id"], second["id"]]
    for record in (first, second):
        shown = await (await client.get(f"/admin/api-keys/{record['id']}", headers=headers)).json()
        assert as_json(env, "keys", "show", record["public_id"]) == shown == record
    patched = as_json(env, "keys", "update", first["id"], "--description", "x")
    assert (
        patched
        == await (await client.get(f"/admin/api-keys/{first['id']}", headers=headers)).json()
    )


def table(text: str) -> list[list[str]]:
    """A table's rows, split on runs of two spaces or more."""
    import re

    return [re.split(r"\s{2,}", line.rstrip()) for line in text.splitlines()]


def test_show_reads_like_a_table(env: dict[str, str]) -> None:
    _, record = create(env, "--name", "shown", "--right", "a", "--right", "b")
    out = ok(env, "keys", "show", record["public_id"])
    for repr_only in ("None", "True", "False", "['", "()"):
        assert repr_only not in out
    rows = table(out)
    assert rows[0] == ["FIELD", "VALUE"]
    values = dict(row for row in rows[1:] if len(row) == 2)
    assert [row[0] for row in rows[1:]] == list(record)
    assert values["rights"] == "a,b"
    assert values["description"] == "-" and values["ip_whitelist"] == "-"
    assert values["is_active"] == "yes" and values["virgin_mode"] == "no"
    assert values["id"] == record["id"] and values["rate_limit_per_minute"] == "0"


async def test_list_reads_like_a_table(env: dict[str, str]) -> None:
    store = open_store(env["BROKER_STORE"])
    try:
        await store.ping()  # an empty store
    finally:
        await store.close()
    assert table(ok(env, "keys", "list")) == [
        ["PUBLIC_ID", "ID", "STATE", "NAME", "RIGHTS", "EXPIRES_AT", "LAST_USED_AT"]
    ]
    _, a = create(env, "--name", "alpha key", "--right", "r1", "--right", "r2")
    _, b = create(env, "--name", "beta", "--expires-at", "2099-01-01T00:00:00Z")
    ok(env, "keys", "update", b["id"], "--inactive")
    out = ok(env, "keys", "list")
    assert "None" not in out and "['" not in out
    assert table(out)[1:] == [
        [a["public_id"], a["id"], "active", "alpha key", "r1,r2", "-", "-"],
        [b["public_id"], b["id"], "inactive", "beta", "-", "2099-01-01T00:00:00Z", "-"],
    ]
    ok(env, "keys", "revoke", a["id"])
    assert table(ok(env, "keys", "list"))[1][2] == "revoked"


def test_create_and_rotate_print_the_key_alone_then_the_record(env: dict[str, str]) -> None:
    lines = ok(env, "keys", "create", "--name", "k", "--client-name", "acme").splitlines()
    assert lines[0].startswith("ath_") and " " not in lines[0]
    assert table("\n".join(lines[1:]))[0] == ["FIELD", "VALUE"]
    assert ["client_name", "acme"] in table("\n".join(lines[1:]))
    assert "only once" in lines[-1]
    rotated = ok(env, "keys", "rotate", lines[0][4:20]).splitlines()
    assert rotated[0].startswith(lines[0][:21]) and rotated[0] != lines[0]


def _actions(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action))
    return found


def test_every_option_has_help() -> None:
    actions = _actions(build_parser(), "cube-broker")
    verbs = {path for path, _ in actions}
    assert {
        f"cube-broker keys {v}" for v in ("create", "list", "show", "update", "rotate")
    } <= verbs
    for path, action in actions:
        assert action.help, f"{path} {action.option_strings or action.dest}: no help text"
    create_flags = {f for p, a in actions if p.endswith("keys create") for f in a.option_strings}
    update_flags = {f for p, a in actions if p.endswith("keys update") for f in a.option_strings}
    assert create_flags - {"--virgin-mode"} <= update_flags
    assert {"--active", "--inactive", "--json"} <= update_flags
    for verb in ("create", "list", "show", "rotate", "update"):
        assert any(
            "--json" in a.option_strings for p, a in actions if p.endswith(f"keys {verb}")
        ), verb
