"""``make demo`` (``scripts/demo.py``) leaves nothing behind when its output goes away: a
pipe closed early (``make demo | head -1``) or a terminal that hangs up (SIGHUP).

Each test runs the real demo (its own PostgreSQL, broker and Cube, a few seconds) with
``TMPDIR`` pointed at a private folder, so everything it starts can be found afterwards:
PostgreSQL's data folder, the broker's and Cube's working folders all lie in it. After
the demo has exited that folder must be empty and no process may mention it (in its
command line, working folder or environment)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from tests.harness.process import processes_mentioning, read_until

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.timeout(180)


def start_demo(tmp: Path, stderr: IO[bytes] | int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
    )


def assert_nothing_left(tmp: Path) -> None:
    assert processes_mentioning(tmp) == []
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_a_closed_pipe_stops_the_demo_and_cleans_up(private_tmp: Path, tmp_path: Path) -> None:
    """``make demo | head -1``: the reader goes away after the first line, while
    PostgreSQL is starting; the demo's next write fails."""
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        proc = start_demo(private_tmp, stderr)
        try:
            first = read_until(proc, b"\n")
            assert first[0].startswith(b"== 1."), first  # not an empty line
            assert proc.stdout is not None
            proc.stdout.close()
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert b"Traceback" not in errors.read_bytes(), errors.read_text()
    assert_nothing_left(private_tmp)


def test_a_hung_up_terminal_stops_the_demo_and_cleans_up(private_tmp: Path) -> None:
    """The terminal goes away once PostgreSQL, the broker and Cube all run: SIGHUP, and
    every later write (stdout and stderr alike) fails."""
    proc = start_demo(private_tmp, subprocess.PIPE)
    try:
        read_until(proc, b"== 3.")
        deadline = time.monotonic() + 60
        while not any("server" in p for p in processes_mentioning(private_tmp)):
            assert time.monotonic() < deadline, "Cube did not start"
            time.sleep(0.05)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left(private_tmp)
