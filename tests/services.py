"""Private service instances for the tests: a throw-away ``redis-server`` per session (and
per outage test), on a free port of 127.0.0.1, without persistence, in a temporary folder
that is removed at stop. For the end-to-end tests also a private PostgreSQL cluster, the
real Cube server (from the npm cache of ``scripts/install-cube.sh``) and the broker itself
as a subprocess (``python -m broker serve``), all the same way."""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Protocol, TypeVar

import redis
import yaml

#: How long a starting redis-server may take to answer PING.
_START_TIMEOUT = 10.0


class RedisServer:
    """One ``redis-server`` process. ``kill`` and ``restart`` (same port, empty data)
    simulate an outage; ``stop`` ends it for good and removes its folder."""

    def __init__(self, executable: str, workdir: Path, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._executable = executable
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and return once it answers PING (bounded polling)."""
        if self._process is not None:
            raise RuntimeError("redis-server is already running")
        log_path = self._workdir / "redis.log"
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self._executable,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self._workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log_text = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log_text}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def flushall(self) -> None:
        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as client:
            client.flushall()

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections stay open and nothing answers, as with a
        Redis that stalls (swapping, a long ``DEBUG SLEEP``)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill the process if it runs, then start a fresh one on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Kill the process and remove its folder. Idempotent."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self._workdir, ignore_errors=True)


def start_redis() -> RedisServer:
    """A running private ``redis-server``. Raises ``RuntimeError`` when the executable is
    not on ``PATH`` (``make install`` provides it) or the server does not come up (three
    tries, as another process may take the free port before the server binds it)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on PATH; install it (make install) to run tests")
    return _start_with_retries(
        lambda: RedisServer(
            executable, Path(tempfile.mkdtemp(prefix="broker-redis-")), _free_port()
        )
    )


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _start_with_retries(make: Callable[[], S], tries: int = 3) -> S:
    """Start a server on a free port, retrying: another process may take the port between
    choosing it and the server binding it. A failed start is cleaned up."""
    for attempt in range(tries):
        server = make()
        try:
            server.start()
        except RuntimeError:
            server.stop()
            if attempt == tries - 1:
                raise
        except BaseException:
            server.stop()
            raise
        else:
            return server
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_REPO = Path(__file__).resolve().parent.parent

# PostgreSQL -----------------------------------------------------------------------------

#: ``public.orders`` in the private cluster, as (id, status, created_at, amount); the
#: sample model ``orders`` (cube ``orders``: count, total_amount, status, created_at) reads it.
ORDERS_ROWS: tuple[tuple[int, str, str, str], ...] = (
    (1, "completed", "2024-01-05 10:00:00", "120.50"),
    (2, "completed", "2024-01-20 12:30:00", "79.50"),
    (3, "pending", "2024-02-03 09:15:00", "40.00"),
    (4, "cancelled", "2024-02-14 18:45:00", "15.25"),
)
ORDERS_COUNT = len(ORDERS_ROWS)
ORDERS_TOTAL = sum((Decimal(row[3]) for row in ORDERS_ROWS), Decimal(0))

#: How long initdb, the start of the cluster and each setup statement may take.
_PG_TIMEOUT = 60.0


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``psql`` of one PostgreSQL version:
    the one of the ``initdb`` on ``PATH``, else the newest under /usr/lib/postgresql (where
    Debian's ``postgresql`` package puts them, off ``PATH``)."""
    wanted = ("initdb", "pg_ctl", "psql", "postgres")
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(os.path.realpath(on_path)).parent)

    def version(folder: Path) -> int:
        match = re.fullmatch(r"\d+", folder.parent.name)
        return int(match.group()) if match else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in wanted):
            return folder
    raise RuntimeError(
        "PostgreSQL (initdb, pg_ctl, psql) is neither on PATH nor under "
        "/usr/lib/postgresql/*/bin; install it: WITH_TEST_SERVICES=1 bash scripts/setup.sh"
    )


class PostgresServer:
    """A private PostgreSQL cluster in a temporary folder.

    The superuser ``postgres`` connects over the Unix socket in that folder (trust); on
    ``127.0.0.1:port`` the role :attr:`user` logs in with :attr:`password` (SCRAM) to the
    database :attr:`database`, which it owns, holding ``public.orders`` with
    :data:`ORDERS_ROWS`. As root, the cluster runs as the ``postgres`` OS user (initdb
    refuses root)."""

    host = "127.0.0.1"
    database = "shop"
    user = "analytics"

    def __init__(self, bin_dir: Path, workdir: Path, port: int) -> None:
        self.port = port
        self.password = secrets.token_urlsafe(18)
        self.log_path = workdir / "postgres.log"
        self._bin = bin_dir
        self._workdir = workdir
        self._data = workdir / "data"
        self._started = False

    def data_source(self) -> dict[str, object]:
        """The registry's data-source entry for this cluster, password left out."""
        return {
            "type": "postgres",
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
        }

    def start(self) -> None:
        """initdb, start (``pg_ctl -w`` waits until it accepts connections), then create the
        role, the database and the table. Raises ``RuntimeError`` with the log's tail."""
        self._owned(
            "initdb",
            [
                *("-D", str(self._data), "-U", "postgres", "--auth-local=trust"),
                *("--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"),
            ],
        )
        options = (
            f"-p {self.port} -k {self._workdir} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._owned(
            "pg_ctl",
            [
                *("-D", str(self._data), "-l", str(self.log_path)),
                *("-w", "-t", str(int(_PG_TIMEOUT)), "-o", options, "start"),
            ],
        )
        self._started = True
        self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'", database="postgres")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}", database="postgres")
        rows = ", ".join(f"({i}, '{s}', '{t}', {a})" for i, s, t, a in ORDERS_ROWS)
        self.psql(
            "CREATE TABLE public.orders (id integer PRIMARY KEY, status text NOT NULL, "
            "created_at timestamp NOT NULL, amount numeric(12, 2) NOT NULL); "
            f"INSERT INTO public.orders VALUES {rows}; "
            f"ALTER TABLE public.orders OWNER TO {self.user}"
        )

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run ``sql`` as the superuser; its output, unaligned and without headers."""
        result = subprocess.run(
            [
                *(str(self._bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-h", str(self._workdir), "-p", str(self.port), "-U", "postgres"),
                *("-d", database or self.database, "-c", sql),
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_PG_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql on port {self.port} failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        """Stop the cluster at once (``-m immediate``) and remove its folder. Idempotent."""
        try:
            if self._started:
                self._started = False
                self._owned("pg_ctl", ["-D", str(self._data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _owned(self, program: str, args: Sequence[str]) -> None:
        """Run a PostgreSQL program as the cluster's owner, in its folder."""
        result = subprocess.run(
            [*_as_postgres(), str(self._bin / program), *args],
            cwd=self._workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=_PG_TIMEOUT + 10,
            check=False,
        )
        if result.returncode != 0:
            log = _tail(self.log_path)
            raise RuntimeError(f"{program} failed on port {self.port}:\n{result.stdout}\n{log}")


def _as_postgres() -> list[str]:
    """The command prefix that runs a program as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root, but runuser is missing to start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def start_postgres() -> PostgresServer:
    """A running private PostgreSQL cluster with ``shop.public.orders`` filled. Three tries,
    as another process may take the free port before the server binds it."""
    bin_dir = postgres_bin_dir()

    def make() -> PostgresServer:
        workdir = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(workdir)
                raise RuntimeError(
                    "running as root, PostgreSQL must run as the OS user postgres, which is "
                    "missing; Debian's postgresql package creates it"
                ) from None
            os.chown(workdir, owner.pw_uid, owner.pw_gid)
        workdir.chmod(0o755)
        return PostgresServer(bin_dir, workdir, _free_port())

    return _start_with_retries(make)


def write_registry(
    folder: Path, postgres: PostgresServer, *, models: Path, password_variable: str
) -> Path:
    """A registry in ``folder`` with a copy of the ``orders`` model from ``models`` (a folder
    holding ``orders/``), its data source the private cluster, its password read from the
    environment variable ``password_variable`` when Cube asks."""
    shutil.copytree(models, folder / "models")
    source = {**postgres.data_source(), "password": "${" + password_variable + "}"}
    registry = {
        "models": [
            {
                "asset_id": "orders",
                "name": "Orders",
                "schema_dir": "models/orders",
                "data_sources": {"default": source},
            }
        ]
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


# Subprocesses with an HTTP face: the broker and Cube ------------------------------------


class HTTPProcess:
    """A server process in its own session (so ``stop`` ends its children too), its output
    in :attr:`log_path`, listening on ``127.0.0.1:port``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        workdir: Path,
        port: int,
        owns_workdir: bool = True,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = dict(env)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._owns_workdir = owns_workdir
        with self.log_path.open("ab") as log:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                list(argv),
                cwd=workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def log_tail(self, size: int = 4000) -> str:
        return _tail(self.log_path, size)

    def wait_until_answers(self, path: str, timeout: float) -> None:
        """Bounded polling until ``GET path`` answers 200; raises ``RuntimeError`` with the
        log's tail when the process exits or the time is up."""
        deadline = time.monotonic() + timeout
        while _http_status(self.port, path) != 200:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` s; then remove the folder
        when it is ours. Idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            if process is not None:
                _signal_group(process.pid, signal.SIGKILL)  # leftovers in the group
        finally:
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def start_broker(env: Mapping[str, str], workdir: Path, *, timeout: float = 30.0) -> HTTPProcess:
    """``python -m broker serve`` on a free port with ``env`` on top of a clean copy of
    this process's environment (no ``BROKER_*``, ``CUBEJS_*`` or ``ATHENA_*`` leak in);
    returns once ``/readyz`` answers 200. ``workdir`` (its cwd and log folder) stays."""
    port = _free_port()
    full_env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BROKER_", "CUBEJS_", "ATHENA_"))
    }
    full_env.update(env)
    full_env.update({"BROKER_HOST": "127.0.0.1", "BROKER_PORT": str(port)})
    # This checkout's broker, whether or not (or whatever version) .venv has installed.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    broker = HTTPProcess(
        "broker",
        [sys.executable, "-m", "broker", "serve"],
        env=full_env,
        workdir=workdir,
        port=port,
        owns_workdir=False,
    )
    try:
        broker.wait_until_answers("/readyz", timeout)
    except BaseException:
        broker.stop()
        raise
    return broker


#: How long the real Cube may take to answer ``/livez`` after its start.
CUBE_START_TIMEOUT = 90.0


def cube_install_dir() -> Path:
    """Where ``scripts/install-cube.sh`` installed Cube (running it: a no-op when done)."""
    result = subprocess.run(
        ["bash", str(_REPO / "scripts" / "install-cube.sh")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/install-cube.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def cube_environment(
    *,
    port: int,
    api_secret: str,
    api_secrets: str = "",
    broker_url: str,
    callback_secret: str,
    refresh_interval: int | None,
) -> dict[str, str]:
    """Cube's whole environment: the three values of SPEC §7 and non-secret switches
    (production mode, the in-memory cache and queue, no telemetry, the scheduled refresh
    every ``refresh_interval`` seconds or never), nothing else."""
    refresh = (
        {"CUBEJS_SCHEDULED_REFRESH_TIMER": str(refresh_interval)}
        if refresh_interval
        else {"CUBEJS_REFRESH_WORKER": "false"}
    )
    return {
        **refresh,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_ENV": "production",
        "PORT": str(port),
        "CUBEJS_DEV_MODE": "false",
        "CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory",
        "CUBEJS_TELEMETRY": "false",
        "CUBEJS_API_SECRET": api_secret,
        "CUBEJS_API_SECRETS": api_secrets,
        "BROKER_INTERNAL_URL": broker_url,
        "BROKER_CALLBACK_SECRET": callback_secret,
        "BROKER_CALLBACK_TIMEOUT_MS": "10000",
    }


def start_cube(
    *,
    api_secret: str,
    api_secrets: str = "",
    broker_url: str,
    callback_secret: str,
    port: int | None = None,
    refresh_interval: int | None = None,
    timeout: float = CUBE_START_TIMEOUT,
) -> HTTPProcess:
    """The real Cube server (``cubejs-server``, as in Cube's Docker image) with
    ``deploy/cube/cube.js`` in a temporary working folder; returns once ``/livez`` answers.

    The folder gets a copy of ``cube.js`` and a ``node_modules`` link to the install of
    ``scripts/install-cube.sh``; ``stop()`` removes it.
    """
    install = cube_install_dir()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; install it: WITH_TEST_SERVICES=1 scripts/setup.sh")
    workdir = Path(tempfile.mkdtemp(prefix="broker-cube-"))
    shutil.copy(_REPO / "deploy" / "cube" / "cube.js", workdir / "cube.js")
    (workdir / "node_modules").symlink_to(install / "node_modules")
    port = port or _free_port()
    env = cube_environment(
        port=port,
        api_secret=api_secret,
        api_secrets=api_secrets,
        broker_url=broker_url,
        callback_secret=callback_secret,
        refresh_interval=refresh_interval,
    )
    env["HOME"] = str(workdir)
    server_bin = install / "node_modules" / "@cubejs-backend" / "server" / "bin" / "server"
    cube = HTTPProcess("cube", [node, str(server_bin)], env=env, workdir=workdir, port=port)
    try:
        cube.wait_until_answers("/livez", timeout)
    except BaseException:
        cube.stop()
        raise
    return cube


def _http_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return f"({path} unreadable)"


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (another process may take it before use)."""
    return _free_port()
