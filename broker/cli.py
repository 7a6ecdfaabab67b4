"""The ``cube-broker`` command line: serve, check-config, models list, keys ..."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from broker import __version__
from broker.errors import BrokerError, ConfigError, ValidationFailed
from broker.keys.admin import KeyAdmin
from broker.keys.validation import validate_create
from broker.models import load_registry
from broker.serve import new_event_loop, serve
from broker.settings import Settings
from broker.store import open_store

__all__ = ["build_parser", "main", "new_event_loop"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML file with lower-case settings")
    parser = argparse.ArgumentParser(
        prog="cube-broker", description="Token broker and proxy in front of Cube."
    )
    parser.add_argument("--version", action="version", version=f"cube-broker {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("serve", parents=[common], help="run the broker")
    verbs.add_parser("check-config", parents=[common], help="validate settings and registry")

    models = verbs.add_parser("models", help="semantic models").add_subparsers(
        dest="action", required=True
    )
    models.add_parser("list", parents=[common], help="asset ID, name and schema hash per line")

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; its exit status. Output into a pipe that its reader closed (``| head
    -1``) is not an error: the verb's status stands, and nothing is printed about it."""
    status = 0
    try:
        try:
            status = _run(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe (the signal module's "Note on SIGPIPE"): what is left goes to
        # /dev/null, else the interpreter's own flush at exit fails once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return status


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(config_file=args.config)
        if args.verb == "serve":
            return serve(settings)
        if args.verb == "check-config":
            registry = load_registry(settings.models_path)
            print(
                f"configuration OK: store {settings.store_url.split('://')[0]}, "
                f"{len(registry.models)} model(s), listening on {settings.host}:{settings.port}"
            )
            return 0
        if args.verb == "models":
            for model in load_registry(settings.models_path).models.values():
                print(f"{model.asset_id}\t{model.name}\t{model.schema_hash}")
            return 0
        return asyncio.run(_with_admin(settings, _KEY_ACTIONS[args.action], args))
    except ConfigError as exc:
        print(f"cube-broker: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        for detail in exc.details:
            print(f"cube-broker: {detail.field}: {detail.message}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"cube-broker: {exc.message}", file=sys.stderr)
        return 1


async def _with_admin(
    settings: Settings,
    action: Callable[[KeyAdmin, argparse.Namespace, TextIO], Awaitable[None]],
    args: argparse.Namespace,
) -> int:
    store = open_store(settings.store_url)
    try:
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
