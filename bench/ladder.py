"""The ladder of ``bench_proxy`` part B: on the same fixed-body upstream, every way a
request can take, from none to the broker's two modes, each driven by ``wrk``.

The ways, cheapest first:

- ``upstream``: straight to the fixed-body server;
- ``bare aiohttp``: a minimal aiohttp proxy (``--serve-bare-proxy``: uvloop, one shared
  ``ClientSession``, the answer streamed back), the honest lower bound of an aiohttp proxy;
- ``broker``: the broker in token mode;
- ``nginx``: nginx ``proxy_pass`` straight to the upstream (keep-alive pool);
- ``nginx+broker``: decision mode, nginx with ``deploy/nginx``'s template asking the
  broker's ``/auth/v1/cube`` (``auth_request``) before it proxies to the upstream.

``wrk`` (C, one thread) is the load generator because the Python one is the bottleneck
once nginx serves. CPU per request is read from ``/proc`` for every server process (nginx:
its master and its workers together) and, for ``wrk``, from this process's children's
rusage.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError, cpu_seconds
from tests.harness.nginx import host_port, start_nginx, start_site
from tests.harness.ports import free_port
from tests.harness.process import HTTPProcess

#: Unmeasured seconds per way before its rounds: keep-alive pools filled, paths warm.
WARM_UP = 1


# -- the bare aiohttp proxy (bench_proxy --serve-bare-proxy) -----------------------------


def serve_bare_proxy(upstream: str, port: int) -> None:
    """Forward every ``GET`` to ``upstream`` (the same path and query, the request's
    headers but ``Host``) through one shared ``ClientSession`` and stream the answer back
    with its status and ``Content-Type``: no policy, no logging, no metrics."""
    from collections.abc import AsyncIterator

    import aiohttp
    from aiohttp import web

    from broker.cli import new_event_loop

    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(upstream, connector=connector) as session:
            app[session_key] = session
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with request.app[session_key].get(request.rel_url, headers=headers) as answer:
            response = web.StreamResponse(status=answer.status)
            if "Content-Type" in answer.headers:
                response.headers["Content-Type"] = answer.headers["Content-Type"]
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/{tail:.*}", forward)
    web.run_app(
        app,
        loop=new_event_loop(),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=lambda _msg: None,
    )


# -- nginx ------------------------------------------------------------------------------


DIRECT_SITE = """upstream fixed_upstream {{
    server {upstream};
    keepalive 32;
}}
server {{
    listen {listen};
    location / {{
        proxy_pass http://fixed_upstream;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


def start_nginx_direct(upstream_url: str) -> HTTPProcess:
    """nginx ``proxy_pass`` straight to ``upstream_url`` (:data:`DIRECT_SITE`), no access
    log."""
    port = free_port()
    site = DIRECT_SITE.format(upstream=host_port(upstream_url), listen=f"127.0.0.1:{port}")
    return start_site(site, port, "/healthz", 200, access_log=False)


def start_nginx_deciding(broker_url: str, upstream_url: str) -> HTTPProcess:
    """nginx with ``deploy/nginx``'s template (:func:`tests.harness.nginx.start_nginx`,
    no access log): the broker at ``broker_url`` decides, the fixed upstream at
    ``upstream_url`` answers."""
    return start_nginx(broker_url=broker_url, cube_url=upstream_url, access_log=False)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live children (nginx: master and workers)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(pid):
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            total += cpu_seconds(int(entry.name))
    return total


# -- wrk --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRound:
    requests: int
    elapsed: float
    p50: float
    p99: float
    client_cpu: float


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise BenchError(f"wrk: unreadable duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkRound:
    """``wrk --latency``'s summary: requests done, p50 and p99; an answer other than
    2xx/3xx or a socket error is a :class:`BenchError` (the run is not comparable)."""
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise BenchError(f"wrk: {m.group(1)} answers other than 2xx/3xx:\n{output}")
    if m := re.search(r"Socket errors: .*", output):
        raise BenchError(f"wrk: {m.group(0)}:\n{output}")
    done = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if done is None or p50 is None or p99 is None:
        raise BenchError(f"wrk: unreadable output:\n{output}")
    requests, elapsed = int(done.group(1)), _seconds(done.group(2))
    return WrkRound(requests, elapsed, _seconds(p50.group(1)), _seconds(p99.group(1)), 0.0)


def find_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is not installed (apt-get install -y wrk), or use --no-ladder")
    return found


def run_wrk(
    url: str, headers: dict[str, str], duration: int, connections: int, method: str = "GET"
) -> WrkRound:
    """One ``wrk -t1`` round of ``duration`` seconds over ``connections`` keep-alive
    connections (another ``method`` than ``GET`` is set by a one-line wrk script); its
    CPU from the rusage of this process's waited children."""
    argv = [find_wrk(), "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if method != "GET":
            script.write(f'wrk.method = "{method}"\n')
            script.flush()
            argv += ["-s", script.name]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=duration + 30, check=False
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}: {done.stderr or done.stdout}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    r = parse_wrk(done.stdout)
    return WrkRound(r.requests, r.elapsed, r.p50, r.p99, cpu)


# -- the ladder -------------------------------------------------------------------------


@dataclass
class Way:
    """One way of the ladder: where ``wrk`` sends, and the server processes (by role:
    ``upstream``, ``proxy``, ``nginx``, ``broker``) whose CPU each round measures."""

    name: str
    base: str
    pids: dict[str, int]
    rounds: list[WrkRound] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)

    @property
    def rps(self) -> float:
        elapsed = sum(r.elapsed for r in self.rounds)
        return self.requests / elapsed if elapsed else 0.0

    def latency(self, which: str) -> float:
        """p50 or p99 over the rounds, each round weighted by its requests (wrk gives
        percentiles, not the samples)."""
        total = self.requests
        values = [(getattr(r, which), r.requests) for r in self.rounds]
        return sum(v * n for v, n in values) / total if total else float("nan")

    def cpu_per_request_us(self, role: str) -> float | None:
        if role == "client":
            seconds = sum(r.client_cpu for r in self.rounds)
        elif role in self.cpu:
            seconds = self.cpu[role]
        else:
            return None
        return seconds / self.requests * 1e6 if self.requests else 0.0


def round_seconds(duration: float, rounds: int) -> int:
    """Seconds of one ladder round (``wrk -d`` takes whole seconds only)."""
    return max(1, round(duration / rounds))


def climb(
    ways: Sequence[Way],
    path_qs: str,
    headers: dict[str, str],
    duration: float,
    rounds: int,
    connections: int,
) -> None:
    """Every way warmed for :data:`WARM_UP` s, then ``rounds`` interleaved rounds of
    ``duration / rounds`` s per way (the order rotating every round), rounded to whole
    seconds and at least one: ``wrk -d`` takes no fractions."""
    slice_ = round_seconds(duration, rounds)
    for way in ways:
        run_wrk(way.base + path_qs, headers, WARM_UP, connections)
    for round_no in range(rounds):
        shift = round_no % len(ways)
        for way in [*ways[shift:], *ways[:shift]]:
            before = {role: tree_cpu_seconds(pid) for role, pid in way.pids.items()}
            result = run_wrk(way.base + path_qs, headers, slice_, connections)
            for role, pid in way.pids.items():
                way.cpu[role] = way.cpu.get(role, 0.0) + tree_cpu_seconds(pid) - before[role]
            way.rounds.append(result)
            print(
                f"    {way.name:<13} {result.requests / result.elapsed:8.0f} req/s  "
                f"p50 {result.p50 * 1e3:.2f} ms, wrk CPU {result.client_cpu:.2f} s",
                flush=True,
            )


ROLES = ("upstream", "proxy", "broker", "nginx", "client")


def report_ladder(label: str, ways: Sequence[Way]) -> list[str]:
    """The table of every way and the two ratios of the issue, as lines."""
    lines = [
        f"ladder {label}: CPU us/request per process (client = wrk)",
        f"{'way':<14} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
        + "".join(f" {role:>8}" for role in ROLES),
    ]
    for way in ways:
        cells = []
        for role in ROLES:
            value = way.cpu_per_request_us(role)
            cells.append(f" {'-':>8}" if value is None else f" {value:>8.0f}")
        lines.append(
            f"{way.name:<14} {way.rps:>7.0f} {way.latency('p50') * 1e3:>7.2f}"
            f" {way.latency('p99') * 1e3:>7.2f}" + "".join(cells)
        )
    by_name = {way.name: way for way in ways}
    bare = by_name["bare aiohttp"].cpu_per_request_us("proxy") or 0.0
    broker = by_name["broker"].cpu_per_request_us("broker") or 0.0
    direct = by_name["nginx"].rps
    deciding = by_name["nginx+broker"].rps
    lines.append(
        f"-> broker CPU/req / bare aiohttp proxy CPU/req: {broker / bare if bare else 0:.2f} x"
        f" ({broker:.0f} us / {bare:.0f} us)"
    )
    lines.append(
        f"-> (nginx + broker deciding) req/s / nginx direct req/s: "
        f"{deciding / direct * 100 if direct else 0:.1f} % ({deciding:.0f} / {direct:.0f})"
    )
    return lines
