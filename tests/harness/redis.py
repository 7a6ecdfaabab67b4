"""A private ``redis-server``: on a free port of 127.0.0.1, without persistence, in a
temporary folder removed at stop; one per test session, and one of its own for each test
that simulates an outage."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.harness.ports import Stoppable, free_port, start_with_retries

#: How long a starting redis-server may take to answer PING.
_START_TIMEOUT = 10.0


class RedisServer(Stoppable):
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
    return start_with_retries(
        lambda: RedisServer(executable, Path(tempfile.mkdtemp(prefix="broker-redis-")), free_port())
    )
