"""A private PostgreSQL cluster holding ``shop.public.orders``, the table the sample model
``orders`` reads: for the tests on a free port of 127.0.0.1, in a temporary folder removed
at stop; for ``scripts/run.sh`` on a given port, kept in ``var/postgres`` across runs."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from tests.harness.ports import Stoppable, free_port, start_with_retries
from tests.harness.process import tail

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


class PostgresServer(Stoppable):
    """A private PostgreSQL cluster in a folder of its own.

    The superuser ``postgres`` connects over the Unix socket in that folder (trust); on
    ``127.0.0.1:port`` the role :attr:`user` logs in with :attr:`password` (SCRAM) to the
    database :attr:`database`, which it owns, holding ``public.orders`` with
    :data:`ORDERS_ROWS`. As root, the cluster runs as the ``postgres`` OS user (initdb
    refuses root).

    A throw-away cluster (the default) trades durability for speed and ``stop()`` removes
    its folder. A kept one (``keep=True``, :func:`start_kept_postgres`) is durable, is
    created on its first start only (the role's password is set anew on every start, the
    table made only where it is missing, so rows changed since stay changed), and
    ``stop()`` shuts it down cleanly and leaves the folder."""

    host = "127.0.0.1"

    def __init__(
        self,
        bin_dir: Path,
        workdir: Path,
        port: int,
        *,
        password: str | None = None,
        database: str = "shop",
        user: str = "analytics",
        keep: bool = False,
    ) -> None:
        self.port = port
        self.password = password or secrets.token_urlsafe(18)
        self.database = database
        self.user = user
        self.workdir = workdir
        self.log_path = workdir / "postgres.log"
        self._bin = bin_dir
        self._data = workdir / "data"
        self._keep = keep
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
        """initdb unless the cluster exists, start (``pg_ctl -w`` waits until it accepts
        connections), then create what is missing of the role, the database and the table.
        Raises ``RuntimeError`` with the log's tail."""
        fast = () if self._keep else ("--no-sync",)
        if not (self._data / "PG_VERSION").is_file():
            self._owned(
                "initdb",
                [
                    *("-D", str(self._data), "-U", "postgres", "--auth-local=trust"),
                    *("--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", *fast),
                ],
            )
        elif self._owned("pg_ctl", ["-D", str(self._data), "status"], check=False) == 0:
            # Left running by a run that was killed: ours (it lives in our folder), and it
            # may listen on another port than the one asked for now.
            self._owned("pg_ctl", ["-D", str(self._data), "-m", "fast", "-w", "stop"])
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host}"
        if not self._keep:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._owned(
            "pg_ctl",
            [
                *("-D", str(self._data), "-l", str(self.log_path)),
                *("-w", "-t", str(int(_PG_TIMEOUT)), "-o", options, "start"),
            ],
        )
        self._started = True
        self._provision()

    def _provision(self) -> None:
        def exists(sql: str, database: str = "postgres") -> bool:
            return bool(self.psql(sql, database=database).strip())

        password = self.password.replace("'", "''")
        role = (
            "ALTER" if exists(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'") else "CREATE"
        )
        self.psql(f"{role} ROLE {self.user} LOGIN PASSWORD '{password}'", database="postgres")
        if not exists(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"):
            self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}", database="postgres")
        if exists("SELECT to_regclass('public.orders')", database=self.database):
            return
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
                *("-h", str(self.workdir), "-p", str(self.port), "-U", "postgres"),
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
        """Stop the cluster: a throw-away one at once (``-m immediate``) and its folder
        removed, a kept one cleanly (``-m fast``: sessions ended, data flushed) and its
        folder left. Idempotent."""
        try:
            if self._started:
                self._started = False
                mode = "fast" if self._keep else "immediate"
                self._owned("pg_ctl", ["-D", str(self._data), "-m", mode, "-w", "stop"])
        finally:
            if not self._keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _owned(self, program: str, args: Sequence[str], *, check: bool = True) -> int:
        """Run a PostgreSQL program as the cluster's owner, in its folder; its exit status
        (with ``check``, anything but 0 raises ``RuntimeError``)."""
        result = subprocess.run(
            [*_as_postgres(), str(self._bin / program), *args],
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=_PG_TIMEOUT + 10,
            check=False,
        )
        if check and result.returncode != 0:
            log = tail(self.log_path)
            raise RuntimeError(f"{program} failed on port {self.port}:\n{result.stdout}\n{log}")
        return result.returncode


def _as_postgres() -> list[str]:
    """The command prefix that runs a program as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root, but runuser is missing to start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def start_postgres() -> PostgresServer:
    """A running throw-away PostgreSQL cluster with ``shop.public.orders`` filled, in a
    temporary folder. Three tries, as another process may take the free port before the
    server binds it."""
    bin_dir = postgres_bin_dir()

    def make() -> PostgresServer:
        workdir = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        try:
            _hand_to_postgres(workdir)
        except RuntimeError:
            shutil.rmtree(workdir)
            raise
        return PostgresServer(bin_dir, workdir, free_port())

    return start_with_retries(make)


def start_kept_postgres(
    workdir: Path, port: int, *, password: str, database: str, user: str
) -> PostgresServer:
    """A running durable cluster kept in ``workdir`` (made on first use, reused after; see
    :class:`PostgresServer`), on ``127.0.0.1:port``, the role ``user`` logging in with
    ``password`` to ``database``, which holds ``public.orders``."""
    workdir = workdir.absolute()  # the PostgreSQL programs run in it
    workdir.mkdir(parents=True, exist_ok=True)
    _hand_to_postgres(workdir)
    bin_dir = postgres_bin_dir()
    server = PostgresServer(
        bin_dir, workdir, port, password=password, database=database, user=user, keep=True
    )
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def _hand_to_postgres(workdir: Path) -> None:
    """As root, give ``workdir`` to the ``postgres`` OS user, who runs the cluster, and
    check that this user can reach it (a checkout under ``/root``, mode 700, is closed)."""
    workdir.chmod(0o755)
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, PostgreSQL must run as the OS user postgres, which is "
            "missing; Debian's postgresql package creates it"
        ) from None
    os.chown(workdir, owner.pw_uid, owner.pw_gid)
    reach = subprocess.run(
        [*_as_postgres(), "test", "-w", str(workdir), "-a", "-x", str(workdir)], check=False
    )
    if reach.returncode != 0:
        raise RuntimeError(
            f"the postgres user, who runs PostgreSQL, cannot reach {workdir}: a folder above "
            "it is closed to other users (as /root is); open it (chmod o+x) or keep the "
            "cluster elsewhere"
        )
