"""``cube-broker keys …``: Athena keys managed directly on the configured store, through
:class:`~broker.keys.admin.KeyAdmin` (so running brokers learn of every change through the
store's change feed, as of one made over HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from broker.errors import ConfigError
from broker.keys.admin import KeyAdmin
from broker.keys.validation import validate_create
from broker.settings import Settings
from broker.store import Store, open_store
from broker.store.sqlite import SQLiteStore

#: The actions that may make a SQLite store's file; the others refuse a missing one, so a
#: typo in BROKER_STORE (or another working directory) does not look like an empty store.
_CREATING_ACTIONS = frozenset({"create"})


def add_parser(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The ``keys`` verb and its actions, under the top-level ``verbs``."""
    keys = verbs.add_parser("keys", help="Athena keys, directly on the store").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", parents=[common], help="create a key; prints it once")
    create.add_argument("--name", required=True)
    create.add_argument("--right", action="append", default=[], dest="rights")
    create.add_argument("--description")
    create.add_argument("--client-name")
    create.add_argument("--expires-at", help="ISO 8601 with time zone")
    create.add_argument("--ip-whitelist", action="append", default=[], metavar="CIDR")
    create.add_argument("--json", action="store_true", help="print the admin API's JSON")
    listing = keys.add_parser("list", parents=[common], help="list keys")
    listing.add_argument("--json", action="store_true")
    show = keys.add_parser("show", parents=[common], help="show one key (UUID or public_id)")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key for good")
    revoke.add_argument("id")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the ``keys`` action of ``args`` on the store; raises the broker's errors."""
    return asyncio.run(_with_admin(settings, _KEY_ACTIONS[args.action], args))


def missing_sqlite_file(store: Store) -> Path | None:
    """The file of a SQLite ``store`` when it does not exist yet, else ``None``. (Opening a
    SQLite store does no I/O; its first use creates the file and its folder.)"""
    if isinstance(store, SQLiteStore) and not store.path.exists():
        return store.path
    return None


async def _with_admin(
    settings: Settings,
    action: Callable[[KeyAdmin, argparse.Namespace, TextIO], Awaitable[None]],
    args: argparse.Namespace,
) -> int:
    store = open_store(settings.store_url)
    try:
        missing = missing_sqlite_file(store)
        if missing is not None and args.action not in _CREATING_ACTIONS:
            raise ConfigError(
                f"BROKER_STORE: no store at {missing} (only serve and keys create make one)"
            )
        await action(KeyAdmin(store), args, sys.stdout)
    finally:
        await store.close()
    return 0


async def _create(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    body: dict[str, Any] = {"name": args.name, "rights": args.rights}
    for field in ("description", "client_name", "expires_at"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.ip_whitelist:
        body["ip_whitelist"] = args.ip_whitelist
    plaintext, record = await admin.create(validate_create(body))
    if args.json:
        _dump({"api_key": plaintext, "record": record.public()}, out)
        return
    print(plaintext, file=out)
    print(
        f"id {record.id}  public_id {record.public_id}  rights {','.join(record.rights) or '-'}",
        file=out,
    )
    print("Store this key now: it is shown only once.", file=out)


async def _list(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    records = []
    cursor: str | None = None
    while True:
        page, cursor = await admin.list_keys(1000, cursor)
        records.extend(page)
        if cursor is None:
            break
    if args.json:
        _dump({"keys": [r.public() for r in records], "next_cursor": None}, out)
        return
    for r in records:
        state = "revoked" if r.revoked_at else ("active" if r.is_active else "inactive")
        print(f"{r.public_id}\t{r.id}\t{state}\t{r.name}\t{','.join(r.rights) or '-'}", file=out)


async def _show(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    record = await admin.get(args.id)
    if args.json:
        _dump(record.public(), out)
        return
    for name, value in record.public().items():
        print(f"{name}: {value}", file=out)


async def _revoke(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    record = await admin.revoke(args.id)
    print(f"revoked {record.public_id} ({record.id})", file=out)


_KEY_ACTIONS: dict[str, Callable[[KeyAdmin, argparse.Namespace, TextIO], Awaitable[None]]] = {
    "create": _create,
    "list": _list,
    "show": _show,
    "revoke": _revoke,
}


def _dump(doc: Any, out: TextIO) -> None:
    print(json.dumps(doc, indent=2), file=out)
