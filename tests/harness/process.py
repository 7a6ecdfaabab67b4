"""A server subprocess with an HTTP face (the broker, Cube, the bench's upstreams)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from tests.harness.http import status_of
from tests.harness.ports import Stoppable


class HTTPProcess(Stoppable):
    """A server process in its own session (so ``stop`` ends its children too), its output
    in :attr:`log_path` (appended to: ``workdir/{name}.log``), listening on
    ``127.0.0.1:port``; it runs in ``cwd``, by default ``workdir``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        workdir: Path,
        port: int,
        owns_workdir: bool = True,
        cwd: Path | None = None,
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
                cwd=cwd or workdir,
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

    def exit_status(self) -> int | None:
        """The process's exit status once it has ended by itself, else ``None`` (also
        after :meth:`stop`)."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, size: int = 4000) -> str:
        return tail(self.log_path, size)

    def wait_until_answers(self, path: str, timeout: float, status: int = 200) -> None:
        """Bounded polling until ``GET path`` answers ``status``; raises ``RuntimeError``
        with the log's tail when the process exits or the time is up."""
        deadline = time.monotonic() + timeout
        while status_of(self.url + path) != status:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def ready(self, path: str, timeout: float, status: int = 200) -> Self:
        """:meth:`wait_until_answers`, stopping the process when it does not answer (or the
        wait is interrupted): nothing is left running. Returns the process."""
        try:
            self.wait_until_answers(path, timeout, status)
        except BaseException:
            self.stop()
            raise
        return self

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


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def tail(path: Path, size: int = 4000) -> str:
    """The last ``size`` bytes of a log file, as text."""
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return f"({path} unreadable)"


def processes_mentioning(folder: Path) -> list[str]:
    """``pid: command line`` of every live process whose command line, working folder or
    environment names ``folder``: what a run that keeps everything under ``folder`` left
    behind."""
    needle = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
        except OSError:  # gone meanwhile, or a zombie
            continue
        if needle in cmdline or needle in environ or needle in cwd:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> list[bytes]:
    """The lines ``proc`` writes to its stdout pipe, up to the first holding ``marker``;
    fails when its output ends first."""
    assert proc.stdout is not None
    lines: list[bytes] = []
    while True:
        line = proc.stdout.readline()
        assert line, f"the output ended before {marker!r}: {b''.join(lines)[-3000:]!r}"
        lines.append(line)
        if marker in line:
            return lines
