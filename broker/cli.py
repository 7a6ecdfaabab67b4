"""The ``cube-broker`` command line: the parser, ``serve``, ``check-config``, ``models list``
and the exit statuses; the ``keys`` verbs are :mod:`broker.cli_keys`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from broker import __version__, cli_keys
from broker.errors import BrokerError, ConfigError, StoreUnavailable, ValidationFailed
from broker.models import load_registry
from broker.settings import Settings
from broker.store import open_store

__all__ = ["build_parser", "main", "new_event_loop"]

#: How long ``check-config`` waits for the store to answer.
CHECK_TIMEOUT = 3.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop the broker serves on (:func:`broker.serve.new_event_loop`), for
    bench/; importing it here would load the whole app into every CLI verb."""
    from broker.serve import new_event_loop

    return new_event_loop()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML file with lower-case settings")
    parser = argparse.ArgumentParser(
        prog="cube-broker", description="Token broker and proxy in front of Cube."
    )
    parser.add_argument("--version", action="version", version=f"cube-broker {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("serve", parents=[common], help="run the broker (until SIGTERM)")
    verbs.add_parser(
        "check-config",
        parents=[common],
        help="validate the settings and the registry, check that the store answers, warn "
        "about data-source passwords that do not resolve; serve nothing",
    )

    models = verbs.add_parser("models", help="semantic models").add_subparsers(
        dest="action", required=True
    )
    models.add_parser("list", parents=[common], help="asset ID, name and schema hash per line")

    cli_keys.add_parser(verbs, common)
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
            from broker.serve import serve  # the app and aiohttp, only to serve

            return serve(settings)
        if args.verb == "check-config":
            return check_config(settings)
        if args.verb == "models":
            for model in load_registry(settings.models_path).models.values():
                print(f"{model.asset_id}\t{model.name}\t{model.schema_hash}")
            return 0
        return cli_keys.run(settings, args)
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


def check_config(settings: Settings) -> int:
    """Validate the settings (done by now), the registry and the store, serving nothing.

    A data-source password that cannot be resolved now (an unset ``${NAME}``, a missing
    ``password_file``) is a warning on stderr, not a failure: it is resolved only when
    Cube asks, so the environment may still get it before then (and a broker serving
    other models needs it not at all)."""
    registry = load_registry(settings.models_path)
    for problem in registry.unresolved_credentials(os.environ):
        print(f"cube-broker: warning: {problem}", file=sys.stderr)
    store = asyncio.run(_check_store(settings))
    print(
        f"configuration OK: {len(registry)} model(s), store {store}; serve would listen on "
        f"{settings.host}:{settings.port} (public URL {settings.public_url})"
    )
    return 0


async def _check_store(settings: Settings) -> str:
    """How the store stands, for the OK line: it answers within :data:`CHECK_TIMEOUT`, or
    it is a SQLite file that does not exist yet and that ``serve`` can create (checked
    without creating it). Raises ``ConfigError`` for a store that cannot be created,
    ``StoreUnavailable`` for one that does not answer."""
    url = settings.store_url
    scheme = url.partition("://")[0]  # never the rest: it may hold a password
    try:
        store = open_store(url, redis_options=settings.redis_options())
    except ValueError as exc:
        raise ConfigError(f"BROKER_STORE: {exc}") from None
    try:
        missing = cli_keys.missing_sqlite_file(store)
        if missing is not None:
            _check_creatable(missing)
            return f"sqlite {missing} (does not exist yet: serve creates it)"
        try:
            await asyncio.wait_for(store.ping(), CHECK_TIMEOUT)
        except TimeoutError:
            raise StoreUnavailable(
                f"BROKER_STORE: the {scheme} store did not answer within {CHECK_TIMEOUT:g} s"
            ) from None
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"BROKER_STORE: {exc.message}") from None
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()
    return f"{scheme} answers"


def _check_creatable(path: Path) -> None:
    """``path`` does not exist; raise ``ConfigError`` unless its nearest existing parent
    is a folder this process may create files in."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"BROKER_STORE: cannot create {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"BROKER_STORE: cannot create {path}: {parent} is not writable")
