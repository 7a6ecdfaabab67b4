"""What the benchmarks of ``bench/`` share: the error type, small HTTP and ``/proc``
helpers, a server subprocess, and the load generator (its own process) with the
per-round results and their totals.

The scripts run as ``python bench/<name>.py``, so this folder is first on ``sys.path``
and they import this module as ``common``; importing it puts the repository root on
``sys.path`` too, for ``broker`` and ``tests.services``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
API_SECRET = "bench-api-secret-that-is-long-enough-0123456789"
CALLBACK_SECRET = "bench-callback-secret-0123456789"
START_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Cube's answer while a query is still running (SPEC §8 passes it through unchanged).
CONTINUE_WAIT = b"Continue wait"


class BenchError(Exception):
    """Anything that makes the figures meaningless: reported, exit status 1."""


# -- helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle nor iowait) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def http(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - our own http://127.0.0.1 URLs
        url, data=data, method=method, headers=headers or {}
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local URL
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def is_continue_wait(body: bytes) -> bool:
    """Cube's ``{"error": "Continue wait"}`` (a short answer; never a result)."""
    return len(body) <= 64 and CONTINUE_WAIT in body


class Server:
    """A server subprocess (the broker or the bare app) with its log in ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = int(env["BENCH_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_healthy(self, path: str) -> None:
        """Bounded polling of ``path`` until it answers 200."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            try:
                status, _ = http("GET", self.base + path)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name} not healthy after {START_TIMEOUT:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the load generator (its own process) -----------------------------------------------


@dataclass
class RoundResult:
    target: str
    ok: int
    elapsed: float
    latencies: list[float]
    client_cpu: float
    server_cpu: float = 0.0
    store_calls: Counter[str] = field(default_factory=Counter)
    feed_polls: int = 0
    #: Cube's "Continue wait" answers (retried, neither counted as done nor timed).
    continue_waits: int = 0
    #: CPU seconds of named server processes during the round.
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One round for the load generator: ``concurrency`` workers, each on its own
    keep-alive connection, send ``method url`` back to back for ``duration`` seconds.
    ``url`` is sent as it is (already percent-encoded). With ``continue_wait``, a Cube
    "Continue wait" answer is counted and the request sent again."""

    method: str
    url: str
    headers: dict[str, str]
    duration: float
    concurrency: int
    continue_wait: bool = False


def loadgen_main(conn: Connection) -> None:
    """Child process: receives a :class:`Job`, answers a result dict; ``None`` ends it.
    One keep-alive session per URL and concurrency lives across rounds. Runs on uvloop
    (as the servers do) so the client, one process, is less often the bottleneck."""
    from broker.cli import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_loadgen(conn))


async def _loadgen(conn: Connection) -> None:
    import aiohttp

    sessions: dict[tuple[str, int], aiohttp.ClientSession] = {}
    try:
        while True:
            job: Job | None = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            if job is None:
                return
            key = (job.url, job.concurrency)
            if key not in sessions:
                connector = aiohttp.TCPConnector(limit=job.concurrency, force_close=False)
                sessions[key] = aiohttp.ClientSession(connector=connector)
            try:
                conn.send(await _one_round(sessions[key], job))
            except Exception as exc:
                conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        for session in sessions.values():
            await session.close()


async def _one_round(session: Any, job: Job) -> dict[str, Any]:
    from yarl import URL

    url = URL(job.url, encoded=True)
    latencies: list[float] = []
    failures: list[str] = []
    continue_waits = 0
    cpu_before = time.process_time()
    started = time.perf_counter()
    deadline = started + job.duration

    async def worker() -> None:
        nonlocal continue_waits
        clock = time.perf_counter
        while clock() < deadline and not failures:
            t0 = clock()
            async with session.request(job.method, url, headers=job.headers) as response:
                data = await response.read()
                if response.status != 200:
                    failures.append(f"HTTP {response.status}: {data[:300]!r}")
                    return
            if job.continue_wait and is_continue_wait(data):
                continue_waits += 1
                continue
            latencies.append(clock() - t0)

    await asyncio.gather(*(worker() for _ in range(job.concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        return {"error": f"{len(failures)} non-200 answer(s), first: {failures[0]}"}
    return {
        "ok": len(latencies),
        "elapsed": elapsed,
        "latencies": latencies,
        "client_cpu": time.process_time() - cpu_before,
        "continue_waits": continue_waits,
    }


class LoadGenerator:
    """The load-generator process; ``concurrency`` is the default of :meth:`run`."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=loadgen_main, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def run(
        self,
        target: str,
        method: str,
        url: str,
        headers: dict[str, str],
        duration: float,
        *,
        concurrency: int | None = None,
        continue_wait: bool = False,
    ) -> RoundResult:
        job = Job(method, url, headers, duration, concurrency or self.concurrency, continue_wait)
        self._conn.send(job)
        if not self._conn.poll(duration + 60):
            raise BenchError(f"load generator did not report on {target} in time")
        reply: dict[str, Any] = self._conn.recv()
        if "error" in reply:
            raise BenchError(f"{target}: {reply['error']}")
        return RoundResult(
            target,
            reply["ok"],
            reply["elapsed"],
            reply["latencies"],
            reply["client_cpu"],
            continue_waits=reply["continue_waits"],
        )

    def close(self) -> None:
        with suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


# -- totals over rounds -----------------------------------------------------------------


@dataclass
class Totals:
    rounds: list[RoundResult] = field(default_factory=list)

    def add(self, result: RoundResult) -> None:
        self.rounds.append(result)

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.rounds)

    @property
    def elapsed(self) -> float:
        return sum(r.elapsed for r in self.rounds)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def continue_waits(self) -> int:
        return sum(r.continue_waits for r in self.rounds)

    def percentile(self, p: float) -> float:
        values = sorted(v for r in self.rounds for v in r.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]

    def server_cpu_per_request_us(self) -> float:
        return sum(r.server_cpu for r in self.rounds) / self.ok * 1e6 if self.ok else 0.0

    def server_cpu_share(self) -> float:
        return sum(r.server_cpu for r in self.rounds) / self.elapsed if self.elapsed else 0.0

    def client_cpu_share(self) -> float:
        return sum(r.client_cpu for r in self.rounds) / self.elapsed if self.elapsed else 0.0

    def cpu_per_request_us(self, name: str) -> float:
        """Microseconds of CPU of the process ``name`` (see ``RoundResult.cpu``) per
        completed request."""
        return sum(r.cpu.get(name, 0.0) for r in self.rounds) / self.ok * 1e6 if self.ok else 0.0

    def cpu_share(self, name: str) -> float:
        """CPU seconds of the process ``name`` per wall second of the rounds (1.0 = a core)."""
        seconds = sum(r.cpu.get(name, 0.0) for r in self.rounds)
        return seconds / self.elapsed if self.elapsed else 0.0

    def client_cpu_per_request_us(self) -> float:
        return sum(r.client_cpu for r in self.rounds) / self.ok * 1e6 if self.ok else 0.0

    def store_calls(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for r in self.rounds:
            total.update(r.store_calls)
        return total

    def feed_polls(self) -> int:
        return sum(r.feed_polls for r in self.rounds)
