"""A private PostgreSQL cluster holding ``shop.public.orders``, the table the sample model
``orders`` reads: on a free port of 127.0.0.1, in a temporary folder removed at stop."""

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
            log = tail(self.log_path)
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
        return PostgresServer(bin_dir, workdir, free_port())

    return start_with_retries(make)
