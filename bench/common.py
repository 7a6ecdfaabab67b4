"""What the benchmarks of ``bench/`` share: the error type, their secrets, ``/proc``
helpers, and the load generator (its own process) with the per-round results and their
totals. Servers, ports and HTTP to them come from ``tests.harness``, as in the tests.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
API_SECRET = "bench-api-secret-that-is-long-enough-0123456789"
CALLBACK_SECRET = "bench-callback-secret-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Cube's answer while a query is still running (SPEC §8 passes it through unchanged).
CONTINUE_WAIT = b"Continue wait"


class BenchError(Exception):
    """Anything that makes the figures meaningless: reported, exit status 1."""


# -- helpers ----------------------------------------------------------------------------


def broker_env(
    store_url: str, models: Path, *, log_level: str = "WARNING", **extra: str
) -> dict[str, str]:
    """The environment of a benchmarked broker (``tests.harness.broker.start_broker``):
    the bench's secrets, ``store_url``, the registry ``models``, JSON logs at
    ``log_level``, and ``extra`` on top."""
    return {
        "CUBEJS_API_SECRET": API_SECRET,
        "BROKER_CALLBACK_SECRET": CALLBACK_SECRET,
        "ATHENA_KEY_12": ADMIN_KEY,
        "BROKER_STORE": store_url,
        "BROKER_MODELS": str(models),
        "BROKER_LOG_LEVEL": log_level,
        "BROKER_LOG_FORMAT": "json",
        **extra,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle nor iowait) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def is_continue_wait(body: bytes) -> bool:
    """Cube's ``{"error": "Continue wait"}`` (a short answer; never a result)."""
    return len(body) <= 64 and CONTINUE_WAIT in body


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
