"""``make demo`` (``scripts/demo.py``) runs to its end, the dashboard that Chromium shows
included, and leaves nothing behind: when it is done, and when its output goes away (a
pipe closed early, ``make demo | head -1``, or a terminal that hangs up, SIGHUP).

Each test runs the real demo (its own PostgreSQL, broker and Cube, a few seconds) with
``TMPDIR`` pointed at a private folder, so everything it starts can be found afterwards:
PostgreSQL's data folder, the broker's and Cube's working folders all lie in it. After
the demo has exited that folder must be empty and no process may mention it (in its
command line, working folder or environment)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.harness.browser import CHROMIUM
from tests.harness.postgres import ORDERS_ROWS
from tests.harness.process import processes_mentioning, read_until

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.timeout(180)


#: The first eight bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def running_demo(
    tmp: Path, stderr: IO[bytes] | int, *arguments: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``scripts/demo.py`` with ``TMPDIR`` at ``tmp``, its stdout a pipe; killed, if it
    still runs, when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py"), *arguments],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_for_process(tmp: Path, word: str, what: str) -> None:
    """Until a process mentioning ``tmp`` has ``word`` in its command line."""
    deadline = time.monotonic() + 60
    while not any(word in p for p in processes_mentioning(tmp)):
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.02)


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: WITH_BROWSER=1 bash scripts/setup.sh")


def assert_nothing_left(tmp: Path) -> None:
    assert processes_mentioning(tmp) == []
    assert sorted(p.name for p in tmp.iterdir()) == []


def test_the_demo_ends_with_a_chart_of_the_sample_data_in_chromium(
    private_tmp: Path, tmp_path: Path
) -> None:
    """The whole demo: its last step serves the dashboard on an origin of the demo broker's
    ``BROKER_CORS_ORIGINS``, Chromium draws the sample query's rows as bars (the page
    reports them, read back from its SVG) and saves the screenshot where it was told,
    outside the folders the demo removes."""
    need_chromium()
    screenshot = tmp_path / "kept" / "dashboard.png"
    with running_demo(private_tmp, subprocess.PIPE, "--screenshot", str(screenshot)) as proc:
        out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err.decode(errors="replace")
    lines = out.decode().splitlines()
    assert "== 8. A dashboard in Chromium" in "\n".join(lines), out
    drew = [line for line in lines if line.startswith("The page drew these bars: ")]
    assert len(drew) == 1, out
    bars = json.loads(drew[0].split(": ", 1)[1])
    by_status = Counter(status for _, status, _, _ in ORDERS_ROWS)
    assert bars == [{"label": s, "value": n} for s, n in sorted(by_status.items())]
    assert f"Screenshot (kept): {screenshot}" in lines
    assert lines[-1] == "done."
    data = screenshot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, data[:16]
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (720, 360)  # IHDR: the viewport of browser_load.js
    assert_nothing_left(private_tmp)


def test_a_closed_pipe_stops_the_demo_and_cleans_up(private_tmp: Path, tmp_path: Path) -> None:
    """``make demo | head -1``: the reader goes away after the first line, while
    PostgreSQL is starting; the demo's next write fails."""
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr, running_demo(private_tmp, stderr) as proc:
        first = read_until(proc, b"\n")
        assert first[0].startswith(b"== 1."), first  # not an empty line
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=120) == 0
    assert b"Traceback" not in errors.read_bytes(), errors.read_text()
    assert_nothing_left(private_tmp)


def test_a_hung_up_terminal_stops_the_demo_and_cleans_up(private_tmp: Path) -> None:
    """The terminal goes away once PostgreSQL, the broker and Cube all run: SIGHUP, and
    every later write (stdout and stderr alike) fails."""
    with running_demo(private_tmp, subprocess.PIPE) as proc:
        read_until(proc, b"== 3.")
        wait_for_process(private_tmp, "server", "Cube")
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    assert_nothing_left(private_tmp)


def test_a_ctrl_c_while_chromium_runs_stops_it_too(private_tmp: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) once Chromium shows the dashboard: the browser, Node and the page's
    server stop with the rest, and nothing is left but what the demo keeps."""
    need_chromium()
    screenshot = str(tmp_path / "dashboard.png")
    with running_demo(private_tmp, subprocess.DEVNULL, "--screenshot", screenshot) as proc:
        read_until(proc, b"== 8.")
        wait_for_process(private_tmp, "chromium", "Chromium")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 128 + signal.SIGINT
    assert_nothing_left(private_tmp)
