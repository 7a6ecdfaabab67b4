"""The ``cube-broker`` command line: the parser, ``serve``, ``check-config``, ``models list``
and the exit statuses; the ``keys`` verbs are :mod:`broker.cli_keys`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from broker import __version__, cli_keys
from broker.errors import BrokerError, ConfigError, ValidationFailed
from broker.models import load_registry
from broker.serve import new_event_loop, serve
from broker.settings import Settings

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
