"""``cube-broker keys …``: Athena keys managed directly on the configured store, through
:class:`~broker.keys.admin.KeyAdmin` (so running brokers learn of every change through the
store's change feed, as of one made over HTTP).

The options are declared once (:data:`_OPTIONS`), each with the admin API's field it
sets: ``create`` and ``update`` take the same ones, and a body holds only the options
actually given, validated by the admin API's own rules. Human output is a table; with
``--json`` a verb prints exactly the admin API's document instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from broker.errors import ConfigError, FieldError, ValidationFailed
from broker.keys.admin import KeyAdmin
from broker.keys.audit import AuditEvent
from broker.keys.record import KeyRecord
from broker.keys.validation import validate_create, validate_patch, validate_rotate
from broker.settings import Settings
from broker.store import Store, open_store
from broker.store.sqlite import SQLiteStore
from broker.support.timeutil import to_iso, utcnow

#: The actions that may make a SQLite store's file; the others refuse a missing one, so a
#: typo in BROKER_STORE (or another working directory) does not look like an empty store.
_CREATING_ACTIONS = frozenset({"create"})

Kind = Literal["name", "text", "list", "count", "flag"]


@dataclass(frozen=True, slots=True)
class _Option:
    """A command-line option and the admin API field it sets."""

    flag: str
    field: str
    kind: Kind
    help: str
    metavar: str | None = None


_OPTIONS = (
    _Option("--name", "name", "name", "what the key is for", "N"),
    _Option(
        "--right",
        "rights",
        "list",
        "a right, e.g. semantic_model.* or semantic_model.query.execute:ASSET_ID; "
        "repeat for several",
        "R",
    ),
    _Option("--description", "description", "text", "free text about the key", "D"),
    _Option("--client-name", "client_name", "text", "who holds the key", "C"),
    _Option(
        "--expires-at",
        "expires_at",
        "text",
        "when the key stops working: ISO 8601 with a time zone, e.g. 2030-01-01T00:00:00Z",
        "T",
    ),
    _Option(
        "--ip-whitelist",
        "ip_whitelist",
        "list",
        "an IP or CIDR (v4 or v6) the key may be used from; repeat for several",
        "CIDR",
    ),
    _Option(
        "--ip-blacklist",
        "ip_blacklist",
        "list",
        "an IP or CIDR the key is refused from; repeat for several",
        "CIDR",
    ),
    _Option(
        "--rate-limit",
        "rate_limit_per_minute",
        "count",
        "requests per minute (0: no limit)",
        "N",
    ),
    _Option(
        "--virgin-mode",
        "virgin_mode",
        "flag",
        "learn the IP whitelist from the first clients, then lock it; needs --virgin-until "
        "or --max-whitelist-ips (IP lists given with it are ignored)",
    ),
    _Option(
        "--virgin-until",
        "virgin_until_n_requests",
        "count",
        "virgin mode: lock after N successful authentications (0: no such limit)",
        "N",
    ),
    _Option(
        "--max-whitelist-ips",
        "max_whitelist_ips",
        "count",
        "virgin mode: learn at most N addresses and lock at N (0: no cap)",
        "N",
    ),
)
#: ``update`` takes every option of ``create`` but ``--virgin-mode`` (the admin API's
#: PATCH does not change it either), plus ``--active``/``--inactive``.
_UPDATE_OPTIONS = tuple(o for o in _OPTIONS if o.kind != "flag")
_CLEARING = {
    "text": " (an empty value clears it)",
    "list": " (given once as '' it empties the list)",
}
_FLAG_OF_FIELD = {
    **{o.field: o.flag for o in _OPTIONS},
    "is_active": "--active/--inactive",
    "grace_seconds": "--grace-seconds",
}
_JSON_HELP = "print only the admin API's JSON document"
_ID_HELP = "the key's UUID or public_id"


def add_parser(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The ``keys`` verb and its actions, under the top-level ``verbs``."""
    keys = verbs.add_parser(
        "keys", help="Athena keys, directly on the store (before anything is exposed)"
    ).add_subparsers(dest="action", required=True)

    create = keys.add_parser(
        "create",
        parents=[common],
        help="create a key; prints it alone on the first line, once",
    )
    for option in _OPTIONS:
        _add_option(create, option, required=option.kind == "name", clearing=False)
    _add_json(create)

    listing = keys.add_parser("list", parents=[common], help="list every key")
    _add_json(listing)

    show = keys.add_parser("show", parents=[common], help="show one key")
    show.add_argument("id", help=_ID_HELP)
    _add_json(show)

    update = keys.add_parser(
        "update", parents=[common], help="change a key: only the options given"
    )
    update.add_argument("id", help=_ID_HELP)
    for option in _UPDATE_OPTIONS:
        _add_option(update, option, required=False, clearing=True)
    active = update.add_mutually_exclusive_group()
    active.add_argument(
        "--active",
        dest="is_active",
        action="store_true",
        default=argparse.SUPPRESS,
        help="let the key work again (not after a revoke)",
    )
    active.add_argument(
        "--inactive",
        dest="is_active",
        action="store_false",
        default=argparse.SUPPRESS,
        help="stop the key working until --active",
    )
    _add_json(update)
    update.set_defaults(usage_error=update.error)

    rotate = keys.add_parser(
        "rotate",
        parents=[common],
        help="a new secret for the same public_id; prints the new key alone on the first line",
    )
    rotate.add_argument("id", help=_ID_HELP)
    rotate.add_argument(
        "--grace-seconds",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="how long the old secret keeps working (default 0: it stops at once; at most 86400)",
    )
    _add_json(rotate)

    revoke = keys.add_parser(
        "revoke", parents=[common], help="revoke a key for good (and every token it minted)"
    )
    revoke.add_argument("id", help=_ID_HELP)

    audit = verbs.add_parser("audit", help="the audit trail of key changes").add_subparsers(
        dest="action", required=True
    )
    events = audit.add_parser("list", parents=[common], help="audit events, newest first")
    events.add_argument("--key", metavar="ID", help="only this key's events: " + _ID_HELP)
    events.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N events (default 100)"
    )
    _add_json(events)
    events.set_defaults(run_action=_audit_list)


def _add_option(
    parser: argparse.ArgumentParser, option: _Option, *, required: bool, clearing: bool
) -> None:
    help = option.help + (_CLEARING.get(option.kind, "") if clearing else "")
    kwargs: dict[str, Any] = {"dest": option.field, "help": help}
    if option.kind == "flag":
        kwargs["action"] = "store_true"
    else:
        kwargs["metavar"] = option.metavar
        if option.kind == "list":
            kwargs["action"] = "append"
        elif option.kind == "count":
            kwargs["type"] = int
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = argparse.SUPPRESS  # absent from the namespace unless given
    parser.add_argument(option.flag, **kwargs)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the ``keys`` action of ``args`` on the store; raises the broker's errors, a
    ``ValidationFailed`` naming the options rather than the API's fields."""
    if args.action == "update" and not _body(args, _UPDATE_OPTIONS) and "is_active" not in args:
        args.usage_error("nothing to change: give at least one option (see --help)")
    try:
        action = getattr(args, "run_action", None) or _ACTIONS[args.action]
        return asyncio.run(_with_admin(settings, action, args))
    except ValidationFailed as exc:
        raise ValidationFailed(
            [FieldError(_FLAG_OF_FIELD.get(d.field, d.field), d.message) for d in exc.details]
        ) from None


def missing_sqlite_file(store: Store) -> Path | None:
    """The file of a SQLite ``store`` when it does not exist yet, else ``None``. (Opening a
    SQLite store does no I/O; its first use creates the file and its folder.)"""
    if isinstance(store, SQLiteStore) and not store.path.exists():
        return store.path
    return None


Action = Callable[[KeyAdmin, argparse.Namespace, TextIO], Awaitable[None]]


async def _with_admin(settings: Settings, action: Action, args: argparse.Namespace) -> int:
    store = open_store(settings.store_url, redis_options=settings.redis_options())
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


def _body(args: argparse.Namespace, options: Sequence[_Option]) -> dict[str, Any]:
    """The admin API body of the options given (and only those). An empty value clears:
    ``null`` for a text, ``[]`` for a list (``--name`` keeps it, to be refused)."""
    body: dict[str, Any] = {}
    for option in options:
        if option.field not in args:
            continue
        value = getattr(args, option.field)
        if option.kind == "text" and value == "":
            value = None
        elif option.kind == "list":
            value = [item for item in value if item != ""]
        body[option.field] = value
    return body


async def _create(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    plaintext, record = await admin.create(validate_create(_body(args, _OPTIONS)))
    if args.json:
        _dump({"api_key": plaintext, "record": record.public()}, out)
        return
    print(plaintext, file=out)
    _print_record(record, out)
    print("Store this key now: it is shown only once.", file=out)


async def _list(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    records: list[KeyRecord] = []
    cursor: str | None = None
    while True:
        page, cursor = await admin.list_keys(1000, cursor)
        records.extend(page)
        if cursor is None:
            break
    if args.json:
        _dump({"keys": [r.public() for r in records], "next_cursor": None}, out)
        return
    now = utcnow()
    header = ("PUBLIC_ID", "ID", "STATE", "NAME", "RIGHTS", "EXPIRES_AT", "LAST_USED_AT")
    rows = [
        (r.public_id, r.id, _state(r, now), r.name, r.rights, r.expires_at, r.last_used_at)
        for r in records
    ]
    _print_table(header, rows, out)


async def _show(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    record = await admin.get(args.id)
    if args.json:
        _dump(record.public(), out)
        return
    _print_record(record, out)


async def _update(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    body = _body(args, _UPDATE_OPTIONS)
    if "is_active" in args:
        body["is_active"] = args.is_active
    record = await admin.update(args.id, validate_patch(body))
    if args.json:
        _dump(record.public(), out)
        return
    _print_record(record, out)


async def _rotate(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    body = {"grace_seconds": args.grace_seconds} if "grace_seconds" in args else {}
    grace = validate_rotate(body)
    plaintext, record = await admin.rotate(args.id, grace)
    if args.json:
        _dump({"api_key": plaintext, "record": record.public()}, out)
        return
    print(plaintext, file=out)
    _print_record(record, out)
    old = f"works for {grace} s more" if grace else "stopped working"
    print(f"Store this key now: it is shown only once. The old secret {old}.", file=out)


async def _revoke(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    record = await admin.revoke(args.id)
    print(f"revoked {record.public_id} ({record.id})", file=out)


async def _audit_list(admin: KeyAdmin, args: argparse.Namespace, out: TextIO) -> None:
    if args.limit < 1:
        raise ValidationFailed([FieldError("--limit", "must be at least 1")])
    events: list[AuditEvent] = []
    cursor: str | None = None
    while len(events) < args.limit:
        page, cursor = await admin.audit_events(
            min(1000, args.limit - len(events)), cursor, args.key
        )
        events.extend(page)
        if cursor is None:
            break
    if args.json:
        _dump({"events": [e.to_doc() for e in events], "next_cursor": None}, out)
        return
    rows = [
        (
            e.at,
            e.action,
            e.public_id,
            e.actor.kind + (f" {e.actor.client_ip}" if e.actor.client_ip else ""),
            ", ".join(sorted(e.changes)),
        )
        for e in events
    ]
    _print_table(("AT", "ACTION", "PUBLIC_ID", "ACTOR", "CHANGED"), rows, out)


_ACTIONS: dict[str, Action] = {
    "create": _create,
    "list": _list,
    "show": _show,
    "update": _update,
    "rotate": _rotate,
    "revoke": _revoke,
}


def _state(record: KeyRecord, now: datetime) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if not record.is_active:
        return "inactive"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def _print_record(record: KeyRecord, out: TextIO) -> None:
    """The public record as a two-column table, in the admin API's field order."""
    _print_table(("FIELD", "VALUE"), list(record.public().items()), out)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [list(header), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _cell(value: Any) -> str:
    """A value as a person reads it: ``-`` for null or an empty list, lists comma-joined,
    ``yes``/``no``, times in ISO 8601; control characters (a newline in a name) become
    spaces, so a value cannot forge a row."""
    if value is None or value == () or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        text = to_iso(value) or "-"
    elif isinstance(value, list | tuple):
        text = ",".join(str(item) for item in value)
    else:
        text = str(value)
    return _CONTROL.sub(" ", text)


def _dump(doc: Any, out: TextIO) -> None:
    print(json.dumps(doc, indent=2), file=out)
