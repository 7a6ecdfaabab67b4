"""A private ``redis-server``: on a free port of 127.0.0.1, without persistence, in a
temporary folder removed at stop; one per test session, and one of its own for each test
that simulates an outage. Optionally with a password, which a test may change at run
time, and ACL users. The processes of the cluster, Sentinel and TLS harnesses
(``redis_cluster``, ``redis_sentinel``, ``redis_tls``) are built on :class:`RedisProcess`
and :class:`RedisServer`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.harness.ports import Stoppable, free_port, start_with_retries
from tests.harness.process import tail

#: How long a starting redis-server may take to answer PING.
START_TIMEOUT = 10.0
#: The pause between two polls of a condition.
POLL_INTERVAL = 0.02


def redis_executable() -> str:
    """The ``redis-server`` on ``PATH``; ``RuntimeError`` when there is none."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not on PATH; install it (make install) to run tests")
    return executable


class RedisProcess(Stoppable):
    """One process of the ``redis-server`` executable listening on ``127.0.0.1:port``, its
    output in :attr:`log_path` inside :attr:`workdir` (which ``stop`` removes). Subclasses
    say how it is started (:meth:`argv`) and spoken to (:meth:`client`)."""

    def __init__(self, executable: str, workdir: Path, port: int) -> None:
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / "redis.log"
        self._executable = executable
        self._process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def client(self, **options: Any) -> redis.Redis:
        """A new client of this process (the caller closes it), answers decoded to ``str``,
        no retries (a poll should see the truth at once); ``options`` are more arguments
        of ``redis.Redis``."""
        defaults: dict[str, Any] = {
            "socket_connect_timeout": 1,
            "socket_timeout": 5,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
        }
        return redis.Redis(host="127.0.0.1", port=self.port, **(defaults | options))

    def start(self) -> None:
        """Start the process and return once it answers PING (bounded polling); raises
        ``RuntimeError`` with the log's tail when it exits or does not answer in time."""
        if self._process is not None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not start:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def answers(self) -> bool:
        """Whether the process answers PING now."""
        try:
            with self.client(socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.exceptions.RedisError:
            return False

    def log_tail(self, size: int = 3000) -> str:
        return tail(self.log_path, size)

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
            shutil.rmtree(self.workdir, ignore_errors=True)


class RedisServer(RedisProcess):
    """One ``redis-server`` holding data, without persistence. ``kill`` and ``restart``
    (same port, same password, empty data, no ACL users) simulate an outage; ``stop`` ends
    it for good and removes its folder.

    ``password`` is the default user's (``requirepass``, and ``masterauth`` so that a
    replica of a server with the same password can sync); ``args`` are more command-line
    options (``--replicaof …``, ``--cluster-enabled yes``, …). A replica of it syncs at
    once (``repl-diskless-sync-delay 0``: no waiting five seconds for more replicas)."""

    #: The scheme of :attr:`url`.
    scheme = "redis"

    def __init__(
        self,
        executable: str,
        workdir: Path,
        port: int,
        *,
        password: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        super().__init__(executable, workdir, port)
        self.password = password
        self._args = list(args)

    @property
    def url(self) -> str:
        """``redis://[:PASSWORD@]127.0.0.1:PORT/0``, with the current password."""
        return self.url_for(password=self.password)

    def url_for(self, username: str | None = None, password: str | None = None) -> str:
        """This server's URL with the given credentials (none: ``redis://127.0.0.1:P/0``,
        as for a password read from a file)."""
        credentials = ""
        if username is not None or password is not None:
            credentials = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
        return f"{self.scheme}://{credentials}127.0.0.1:{self.port}/0"

    def listen_args(self) -> list[str]:
        return ["--port", str(self.port)]

    def argv(self) -> list[str]:
        argv = [
            self._executable,
            *self.listen_args(),
            *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--repl-diskless-sync-delay", "0"),
            *("--dir", str(self.workdir)),
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        return argv + self._args

    def client(self, **options: Any) -> redis.Redis:
        """A new client authenticated as the default user with the current password."""
        options.setdefault("password", self.password)
        return super().client(**options)

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def set_password(self, password: str | None) -> None:
        """Change the default user's password now (``CONFIG SET requirepass``; ``None``
        removes it). Connections already authenticated stay open and authenticated, as
        Redis leaves them; :meth:`drop_clients` makes everyone reconnect with the new one.
        :attr:`url` and a later ``restart`` follow the change."""
        with self.client() as client:
            client.config_set("requirepass", password or "")
        self.password = password

    def set_user(self, username: str, password: str) -> None:
        """Create the ACL user ``username``, or replace its password and rights: enabled,
        that one password, every key, every pub/sub channel (Redis 7 grants none by
        default, and the broker subscribes), every command. ``url_for(username, password)``
        is its URL."""
        with self.client() as client:
            client.execute_command(
                "ACL", "SETUSER", username, "reset", "on", f">{password}", "~*", "&*", "+@all"
            )

    def drop_clients(self) -> int:
        """Close every other client's connection (normal and pub/sub), as a server restart
        would without losing data; returns how many were closed."""
        with self.client() as client:
            closed = 0
            for kind in ("normal", "pubsub"):
                closed += int(client.execute_command("CLIENT", "KILL", "TYPE", kind))
            return closed


def start_redis(password: str | None = None) -> RedisServer:
    """A running private ``redis-server``, with ``password`` for the default user when
    given. Raises ``RuntimeError`` when the executable is not on ``PATH`` (``make install``
    provides it) or the server does not come up (three tries, as another process may take
    the free port before the server binds it)."""
    executable = redis_executable()
    return start_with_retries(
        lambda: RedisServer(
            executable,
            Path(tempfile.mkdtemp(prefix="broker-redis-")),
            free_port(),
            password=password,
        )
    )
