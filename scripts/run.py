"""``scripts/run.sh``: the broker and what its sample model needs, on loopback, until
Ctrl-C; or, with ``--broker-only``, the broker alone (for a Cube of one's own).

The stack, each part where the broker's own settings say, so that nothing can disagree:

- PostgreSQL where the registry's loopback data source points (``config/models.yaml``:
  ``127.0.0.1:5433``, database ``shop``, role ``analytics``): a private cluster kept in
  ``$BROKER_RUN_DIR/postgres``, made on the first run with the sample table
  ``public.orders``, reused after;
- the broker (``python -m broker serve``) on its listeners (``BROKER_PORT``,
  ``BROKER_ADMIN_PORT``, ``BROKER_INTERNAL_PORT``: 8080, 8081, 8082), the SQLite store
  ``$BROKER_RUN_DIR/broker.db`` and the registry ``BROKER_MODELS``; its log is followed
  on stdout;
- the real Cube (``scripts/install-cube.sh``'s) with ``deploy/cube/cube.js`` where
  ``BROKER_CUBE_URL`` points (``http://127.0.0.1:4000``), calling the internal listener
  back; its folder is ``$BROKER_RUN_DIR/cube``.

``BROKER_RUN_DIR`` (default ``var``, relative to the checkout) holds all that persists.
Its ``dev.env`` (mode 600) gets, once, generated secrets: ``CUBEJS_API_SECRET``,
``BROKER_CALLBACK_SECRET``, ``ATHENA_KEY_12`` and the password variables of the loopback
data source (``ORDERS_DB_PASSWORD``); the environment wins over the file, as over any
settings file.

Ctrl-C, SIGTERM, SIGHUP or the output going away (``scripts/run.sh | head``) stop all
three and exit 0; one part ending by itself stops the others and exits 1. Run it through
``scripts/run.sh``, which first installs what it needs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.errors import ConfigError  # noqa: E402  (after the sys.path entry above)
from broker.models import CredentialError, DataSource, Registry, load_registry  # noqa: E402
from broker.settings import Settings  # noqa: E402
from tests.harness.broker import launch_broker  # noqa: E402
from tests.harness.cube import start_cube  # noqa: E402
from tests.harness.foreground import (  # noqa: E402
    OutputGone,
    check_output,
    run_in_foreground,
    say,
    write,
)
from tests.harness.postgres import start_kept_postgres  # noqa: E402
from tests.harness.process import HTTPProcess  # noqa: E402

#: The secrets every run needs, generated into dev.env when it lacks them.
SECRETS = ("CUBEJS_API_SECRET", "BROKER_CALLBACK_SECRET", "ATHENA_KEY_12")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: How often the broker's log is copied to stdout and the parts are looked at.
FOLLOW_INTERVAL = 0.2


def run_dir() -> Path:
    return Path(os.environ.get("BROKER_RUN_DIR") or "var")


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of ``path`` (no file: nothing); blank lines and ``#`` comments
    skipped, one pair of surrounding quotes dropped, as ``.`` in a shell would."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if not sep or name.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def ensure_secrets(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The values of ``path``, after appending a fresh secret for each of ``names`` it
    lacks (the file is created with mode 600)."""
    values = read_env_file(path)
    missing = [name for name in names if name not in values]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{name}={secrets.token_urlsafe(32)}\n" for name in missing)
        before = path.read_text() if path.exists() else ""
        if before and not before.endswith("\n"):
            lines = "\n" + lines
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as file:
            file.write(lines)
        values = read_env_file(path)
    return values


def environment(state: Path, dev_env: dict[str, str]) -> dict[str, str]:
    """The broker's environment: this process's over ``dev.env``, the store in ``state``
    and text logs unless set, and the loopback defaults of the settings."""
    env = {**dev_env, **os.environ}
    if not env.get("BROKER_STORE") and state != Path("var"):  # else the broker's default
        env["BROKER_STORE"] = f"sqlite:///{state / 'broker.db'}"
    if not env.get("BROKER_LOG_FORMAT"):
        env["BROKER_LOG_FORMAT"] = "text"
    return env


def load_settings(env: dict[str, str]) -> Settings:
    try:
        return Settings.load(env)
    except ConfigError as exc:
        raise RuntimeError(str(exc)) from None


def local_data_source(registry: Registry) -> DataSource | None:
    """The registry's PostgreSQL data source on loopback, the one the run provides. Several
    must agree on everything but their names (one cluster, one database, one role)."""
    found = [
        source
        for model in registry
        for source in model.data_sources.values()
        if source.type == "postgres" and source.host in LOOPBACK
    ]
    shapes = {(s.port, s.database, s.user, s.password, s.password_file) for s in found}
    if len(shapes) > 1:
        raise RuntimeError(
            f"{registry.path}: the PostgreSQL data sources on loopback differ in port, "
            "database, role or password; the run provides one cluster for one of them "
            "(scripts/run.sh --broker-only runs the broker alone, for databases of your own)"
        )
    return found[0] if found else None


def cube_port(settings: Settings) -> int:
    url = urlsplit(settings.cube_url)
    if url.scheme != "http" or url.hostname not in LOOPBACK or url.path not in ("", "/"):
        raise RuntimeError(
            f"BROKER_CUBE_URL: the run starts Cube on loopback, so it must be "
            f"http://127.0.0.1:PORT, got {settings.cube_url} (scripts/run.sh --broker-only "
            "runs the broker alone, for a Cube of your own)"
        )
    return url.port or 80


def check_config(env: dict[str, str]) -> None:
    """``cube-broker check-config``, its lines said; ``RuntimeError`` when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check-config"],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    say(*(result.stdout + result.stderr).splitlines())
    if result.returncode != 0:
        raise RuntimeError("cube-broker check-config failed (above)")


def first_key_help(settings: Settings, env: dict[str, str], state: Path) -> list[str]:
    admin = f"http://127.0.0.1:{settings.admin_port}"
    store = f"BROKER_STORE={env['BROKER_STORE']} " if env.get("BROKER_STORE") else ""
    overridden = [
        name for name, value in read_env_file(state / "dev.env").items() if env[name] != value
    ]
    return [
        "A first key, from another shell (the README's quick start goes on from here):",
        f"  set -a; . {state}/dev.env; set +a",
        f'  curl -s -X POST {admin}/admin/api-keys -H "X-API-Key: $ATHENA_KEY_12" \\',
        "       -H 'Content-Type: application/json' "
        """-d '{"name": "first", "rights": ["semantic_model.*"]}'""",
        "or straight on the store:",
        f"  {store}.venv/bin/cube-broker keys create --name first --right 'semantic_model.*'",
        *(
            [f"(note: {', '.join(overridden)} come from this environment, not {state}/dev.env)"]
            if overridden
            else []
        ),
    ]


def stack(stack: ExitStack) -> str:
    """Start PostgreSQL, the broker and Cube; follow the broker's log until a signal, the
    output going away, or a part ending."""
    state = run_dir()
    state.mkdir(parents=True, exist_ok=True)
    dev_env = ensure_secrets(state / "dev.env", SECRETS)
    settings = load_settings(environment(state, dev_env))
    try:
        registry = load_registry(settings.models_path)
    except ConfigError as exc:
        raise RuntimeError(str(exc)) from None
    source = local_data_source(registry)
    if source is not None:
        dev_env = ensure_secrets(state / "dev.env", SECRETS + source.variables)
    env = environment(state, dev_env)
    port = cube_port(settings)
    say(f"== cube-token-broker on loopback; state in {state}/ (secrets: {state}/dev.env)")
    check_config(env)

    if source is None:
        say(f"\n== PostgreSQL: none ({settings.models_path} has no data source on loopback)")
    else:
        try:
            password = str(source.resolve(env)["password"])
        except CredentialError as exc:
            raise RuntimeError(str(exc)) from None
        say(f"\n== PostgreSQL (kept in {state}/postgres; the first start creates it)")
        postgres = start_kept_postgres(
            state / "postgres",
            source.port,
            password=password,
            database=source.database,
            user=source.user,
        )
        stack.callback(postgres.stop)
        say(
            f"postgresql://{source.user}@127.0.0.1:{source.port}/{source.database}"
            f" (table public.orders; password {', '.join(source.variables) or 'as configured'}"
            f"; log {postgres.log_path})"
        )

    say("\n== The broker")
    broker_log = state / "broker.log"
    offset = broker_log.stat().st_size if broker_log.exists() else 0
    broker = launch_broker(
        env,
        state,
        port=settings.port,
        admin_port=settings.admin_port,
        internal_port=settings.internal_port,
        cwd=REPO,
    )
    stack.callback(broker.stop)
    say(
        f"public    {broker.url}  /api/v0, /cubejs-api/v1, /healthz, /readyz, /openapi.json",
        f"admin     {broker.admin_url}  /admin, /metrics, /healthz, /readyz, /openapi.json",
        f"internal  {broker.internal_url}  /internal/v1 (Cube's callback), /healthz",
        f"store {env.get('BROKER_STORE') or settings.store_url}, models {settings.models_path}"
        f", log {broker.log_path}",
    )

    say("\n== Cube 0.33.65 with deploy/cube/cube.js")
    cube = start_cube(
        api_secret=env["CUBEJS_API_SECRET"],
        api_secrets=env.get("CUBEJS_API_SECRETS", ""),
        broker_url=broker.internal_url,
        callback_secret=env["BROKER_CALLBACK_SECRET"],
        port=port,
        workdir=state / "cube",
    )
    stack.callback(cube.stop)
    say(f"{cube.url} (BROKER_INTERNAL_URL={broker.internal_url}; log {cube.log_path})")

    say(
        "",
        *first_key_help(settings, env, state),
        "",
        "== Ready. Ctrl-C stops everything. The broker's log follows.",
    )
    follow(broker_log, offset, [broker, cube])
    return ""


def follow(log: Path, offset: int, parts: list[HTTPProcess]) -> None:
    """Copy what is written to ``log`` from ``offset`` on to stdout, until the output goes
    away (``OutputGone``) or a part ends by itself (``RuntimeError``); signals interrupt."""
    with log.open("rb") as file:
        file.seek(offset)
        while True:
            check_output()
            chunk = file.read()
            if chunk:
                write(chunk)
            for part in parts:
                status = part.exit_status()
                if status is not None:
                    raise RuntimeError(
                        f"{part.name} exited with status {status}; the end of "
                        f"{part.log_path}:\n{part.log_tail(2000)}"
                    )
            time.sleep(FOLLOW_INTERVAL)


def broker_only() -> NoReturn:
    """The broker alone, in the foreground: ``cube-broker serve`` takes this process over."""
    state = run_dir()
    env = environment(state, ensure_secrets(state / "dev.env", SECRETS))
    try:
        settings = load_settings(env)
        check_config(env)
        say(
            f"\ncube-broker: public http://127.0.0.1:{settings.port}, admin "
            f"http://127.0.0.1:{settings.admin_port}, internal http://127.0.0.1:"
            f"{settings.internal_port}; Cube expected at {settings.cube_url} (BROKER_CUBE_URL)",
            "",
            *first_key_help(settings, env, state),
            "",
        )
    except RuntimeError as exc:
        sys.exit(f"run: {exc}")
    except OutputGone:
        sys.exit(0)  # nobody reads: nobody would see it serve
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    os.execve(sys.executable, [sys.executable, "-m", "broker", "serve"], env)  # noqa: S606


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/run.sh",
        description="The broker, PostgreSQL and Cube on loopback, until Ctrl-C.",
    )
    parser.add_argument(
        "--broker-only",
        action="store_true",
        help="run the broker alone (no PostgreSQL, no Cube): for a Cube of your own at "
        "BROKER_CUBE_URL",
    )
    args = parser.parse_args()
    os.chdir(REPO)
    if args.broker_only:
        broker_only()
    return run_in_foreground(stack, name="run", signal_status=lambda signum: 0)


if __name__ == "__main__":
    sys.exit(main())
