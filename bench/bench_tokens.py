"""Benchmark of the cached ``generate-token`` path against a bare aiohttp server.

Run from the repository root::

    .venv/bin/python -m bench.bench_tokens [--duration 10] [--concurrency 32]
                                           [--store redis|sqlite] [--no-info-round]

What it does, in one run:

1. starts a private ``redis-server`` (``tests.harness.redis``; not for ``--store sqlite``,
   which uses a file in a temporary folder) and the real broker as a subprocess
   (``tests.harness.broker``: ``python -m broker serve``, ``BROKER_LOG_LEVEL=WARNING``);
2. creates a key with ``semantic_model.token.create`` over the admin API and warms the
   token cache with one ``generate-token``;
3. starts a bare aiohttp server (``--serve-bare``: this file in another mode) that answers
   every POST with ``web.json_response`` of the broker's very answer, so both send the same
   number of body bytes;
4. drives both from a load-generator process (aiohttp, keep-alive, ``--concurrency``
   connections and workers), interleaved bare, broker, bare, broker ... for ``--rounds``
   rounds of ``duration / rounds`` seconds each, so both see similar machine conditions;
   any answer other than 200 is an error (exit 1);
5. with Redis, counts the broker's store round trips during its rounds exactly (see
   ``StoreMonitor``);
6. unless ``--no-wrk``, drives both again with ``wrk`` (``--rounds`` interleaved rounds
   each): the Python load generator saturates before the bare server does, which then
   batches less and spends more CPU per request; with ``wrk`` both servers are saturated,
   so this is the two CPU figures side by side at full load;
7. optionally (default on) restarts the broker with ``BROKER_LOG_LEVEL=INFO`` and runs one
   more broker round, to show what the per-request access log line costs;
8. prints a summary. Timings never fail the run: exit 1 only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench import ladder
from bench.common import (
    ADMIN_KEY,
    BenchError,
    LoadGenerator,
    RoundResult,
    Totals,
    broker_env,
    cpu_seconds,
)
from broker.keys.rights import TOKEN_CREATE
from tests.harness import REPO
from tests.harness.broker import BrokerProcess, start_broker
from tests.harness.http import request
from tests.harness.keys import create_key_at
from tests.harness.ports import free_port
from tests.harness.process import HTTPProcess
from tests.harness.redis import start_redis

MODEL = "orders"
TOKEN_PATH = f"/api/v0/semantic-model/{MODEL}/generate-token"


# -- helpers ----------------------------------------------------------------------------


def launch_broker(store_url: str, workdir: Path, log_level: str) -> BrokerProcess:
    """The broker on the sample registry, its log in ``workdir/broker-<level>/``."""
    env = broker_env(store_url, REPO / "config" / "models.yaml", log_level=log_level)
    folder = workdir / f"broker-{log_level.lower()}"
    folder.mkdir(exist_ok=True)
    return start_broker(env, folder)


def start_bare(body: bytes, workdir: Path) -> HTTPProcess:
    port = free_port()
    body_file = workdir / "bare-body.json"
    body_file.write_bytes(body)
    env = {**os.environ, "BENCH_PORT": str(port), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "bench.bench_tokens", "--serve-bare", str(body_file)]
    bare = HTTPProcess("bare", argv, env=env, workdir=workdir, port=port, owns_workdir=False)
    return bare.ready("/healthz", 30)


# -- the bare server --------------------------------------------------------------------


def serve_bare(body_file: Path) -> None:
    """The reference: aiohttp with no middleware, answering ``json_response`` of the same
    document the broker answers (parsed once, serialized per request like the broker)."""
    from aiohttp import web

    from broker.cli import new_event_loop

    document = json.loads(body_file.read_bytes())

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/api/v0/semantic-model/{asset_id}/generate-token", answer)
    app.router.add_get("/healthz", healthz)
    web.run_app(
        app,
        loop=new_event_loop(),  # the broker's own loop, so the two differ only in the app
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        access_log=None,
        print=lambda _msg: None,
    )


# -- counting store round trips ---------------------------------------------------------


#: The change feed's keys in the store (see broker.store.redis).
_FEED_SEQ, _FEED = "broker:{k}:feed:seq", "broker:{k}:feed"


class StoreMonitor:
    """Counts the commands clients send to Redis during a window, exactly, with MONITOR.

    ``INFO commandstats`` cannot tell the change-feed poll (an ``EVALSHA`` the broker runs
    every 0.25 s whatever the load) from other ``EVALSHA`` calls (``add_token``, the write
    scripts), and it also counts the commands a Lua script runs inside Redis, and our own
    ``INFO``. MONITOR prints every command a client sends, with its arguments, and prints
    the commands run inside scripts on separate ``[db lua]`` lines. So: top-level lines
    only; an ``EVALSHA`` whose keys are exactly ``broker:{k}:feed:seq broker:{k}:feed`` is a feed
    poll (background, not per request; the write scripts name more keys); every other
    top-level command is a store round trip, reported by command and key prefix. The
    window closes on an ``ECHO`` marker sent after the round, so no line is lost in flight.
    MONITOR costs Redis a little per command: nothing when the cached path makes none.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._buffer = b""
        if self._readline() != b"+OK":
            raise BenchError("redis MONITOR refused")
        self._marker = f"bench-end-{os.getpid()}-{time.monotonic_ns()}"
        self.calls: Counter[str] = Counter()
        self.feed_polls = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _readline(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise BenchError("redis MONITOR connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _read(self) -> None:
        while True:
            line = self._readline().decode(errors="replace")
            # +1700000000.123456 [0 127.0.0.1:40000] "EVALSHA" "abc..." "2" "broker:{k}:feed:seq" …
            try:
                where, args = line.split("] ", 1)
            except ValueError:
                continue
            if where.endswith(" lua"):
                continue
            try:
                words = shlex.split(args)
            except ValueError:
                words = args.split()
            command = words[0].upper() if words else "?"
            if command == "ECHO" and words[1:] == [self._marker]:
                return
            key = words[1] if len(words) > 1 else ""
            if command == "EVALSHA":
                numkeys = int(words[2]) if len(words) > 2 and words[2].isdigit() else 0
                keys = words[3 : 3 + numkeys]
                if keys == [_FEED_SEQ, _FEED]:
                    self.feed_polls += 1
                    continue
                # Write scripts also append to the feed: name them by their own key.
                key = next((k for k in keys if k not in (_FEED_SEQ, _FEED)), "")
            prefix = ":".join(key.split(":")[: 3 if key.startswith("broker:{k}:") else 2])
            self.calls[f"{command} {prefix}".strip()] += 1

    def close(self) -> None:
        """End the window: send the marker from another connection, wait until seen."""
        with socket.create_connection(("127.0.0.1", self._port), timeout=5) as other:
            other.sendall(f"ECHO {self._marker}\r\n".encode())
            other.recv(1024)
        self._thread.join(timeout=10)
        self._sock.close()
        if self._thread.is_alive():
            raise BenchError("redis MONITOR did not see the end marker")


# -- the run ----------------------------------------------------------------------------


def measure(
    gen: LoadGenerator,
    server: HTTPProcess,
    target: str,
    headers: dict[str, str],
    duration: float,
    redis_port: int | None,
) -> RoundResult:
    monitor = StoreMonitor(redis_port) if redis_port is not None else None
    cpu_before = cpu_seconds(server.pid)
    try:
        result = gen.run(target, "POST", server.url + TOKEN_PATH, headers, duration)
    finally:
        cpu_after = cpu_seconds(server.pid)
        if monitor is not None:
            monitor.close()
    result.server_cpu = cpu_after - cpu_before
    if monitor is not None:
        result.store_calls = monitor.calls
        result.feed_polls = monitor.feed_polls
    print(
        f"  {target:<14} {result.ok / result.elapsed:8.0f} req/s  "
        f"({result.ok} in {result.elapsed:.2f} s, server CPU {result.server_cpu:.2f} s, "
        f"client CPU {result.client_cpu:.2f} s)",
        flush=True,
    )
    return result


def warm(broker: HTTPProcess, key: str) -> bytes:
    status, body = request("POST", broker.url + TOKEN_PATH, headers={"X-API-KEY": key})
    if status != 200:
        raise BenchError(f"warm-up generate-token answered {status}: {body[:300]!r}")
    return body


def run(args: argparse.Namespace) -> int:
    duration: float = args.duration
    rounds: int = args.rounds
    slice_ = duration / rounds
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
        stack.callback(shutil.rmtree, workdir, True)
        redis_port: int | None = None
        if args.store == "redis":
            redis = stack.enter_context(start_redis())
            store_url = redis.url
            redis_port = redis.port
        else:
            store_url = f"sqlite:///{workdir}/store/broker.db"

        server = stack.enter_context(launch_broker(store_url, workdir, "WARNING"))
        key, _ = create_key_at(server.admin_url, ADMIN_KEY, name="bench", rights=[TOKEN_CREATE])
        headers = {"X-API-KEY": key}
        body = warm(server, key)
        if warm(server, key) != body:
            raise BenchError("the warm token changed between two calls: the cache is not hit")

        bare = stack.enter_context(start_bare(body, workdir))
        status, bare_body = request("POST", bare.url + TOKEN_PATH, headers=headers)
        if status != 200 or len(bare_body) != len(body):
            raise BenchError(f"bare server answered {status}, {len(bare_body)} bytes")

        gen = LoadGenerator(args.concurrency)
        stack.callback(gen.close)
        print(
            f"store {args.store}, {args.concurrency} connections, {rounds} rounds of "
            f"{slice_:.1f} s per target, body {len(body)} bytes",
            flush=True,
        )
        # A short unmeasured round each, so connections are open and code paths warm.
        gen.run("warm-up bare", "POST", bare.url + TOKEN_PATH, headers, 1.0)
        gen.run("warm-up broker", "POST", server.url + TOKEN_PATH, headers, 1.0)

        bare_totals, broker_totals = Totals(), Totals()
        for _ in range(rounds):
            bare_totals.add(measure(gen, bare, "bare", headers, slice_, None))
            broker_totals.add(measure(gen, server, "broker", headers, slice_, redis_port))

        saturated = (
            drive_with_wrk(bare, server, headers, duration, rounds, args.concurrency)
            if args.wrk
            else None
        )

        info_totals: Totals | None = None
        if args.info_round:
            server.stop()
            server = stack.enter_context(launch_broker(store_url, workdir, "INFO"))
            info_totals = Totals()
            # Counted too: a fresh process misses its caches on the first request, so
            # this shows that the counter sees round trips when there are some.
            info_totals.add(measure(gen, server, "broker (INFO)", headers, slice_, redis_port))

        report(args, bare_totals, broker_totals, info_totals, len(body), saturated)
    return 0


def drive_with_wrk(
    bare: HTTPProcess,
    broker: HTTPProcess,
    headers: dict[str, str],
    duration: float,
    rounds: int,
    connections: int,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """CPU microseconds per request and req/s of the bare server and of the broker, each
    driven by ``wrk`` in ``rounds`` interleaved rounds (after an unmeasured second)."""
    slice_ = ladder.round_seconds(duration, rounds)
    servers = {"bare": bare, "broker": broker}
    for server in servers.values():
        ladder.run_wrk(server.url + TOKEN_PATH, headers, 1, connections, method="POST")
    cpu = dict.fromkeys(servers, 0.0)
    done = dict.fromkeys(servers, 0)
    elapsed = dict.fromkeys(servers, 0.0)
    for _ in range(rounds):
        for name, server in servers.items():
            before = cpu_seconds(server.pid)
            result = ladder.run_wrk(
                server.url + TOKEN_PATH, headers, slice_, connections, method="POST"
            )
            cpu[name] += cpu_seconds(server.pid) - before
            done[name] += result.requests
            elapsed[name] += result.elapsed
            print(
                f"  {name + ' (wrk)':<14} {result.requests / result.elapsed:8.0f} req/s",
                flush=True,
            )

    def figures(name: str) -> tuple[float, float]:
        return cpu[name] / done[name] * 1e6, done[name] / elapsed[name]

    return figures("bare"), figures("broker")


def report(
    args: argparse.Namespace,
    bare: Totals,
    broker: Totals,
    info: Totals | None,
    body_bytes: int,
    saturated: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> None:
    def row(name: str, t: Totals) -> str:
        return (
            f"{name:<24} {t.rps:>9.0f}"
            f" {t.percentile(50) * 1e3:>9.2f} {t.percentile(99) * 1e3:>9.2f}"
            f" {t.server_cpu_per_request_us():>11.0f} {t.server_cpu_share() * 100:>7.0f}%"
            f" {t.client_cpu_share() * 100:>7.0f}%"
        )

    print()
    print("=" * 82)
    print(
        f"{'target':<24} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'srv CPU/req':>11}"
        f" {'srv CPU':>8} {'cli CPU':>8}"
    )
    print(row("bare aiohttp", bare))
    print(row("broker (log WARNING)", broker))
    if info is not None:
        print(row("broker (log INFO)", info))
    ratio = broker.rps / bare.rps if bare.rps else 0.0
    broker_cpu = broker.server_cpu_per_request_us()
    cpu_ratio = bare.server_cpu_per_request_us() / broker_cpu if broker_cpu else 0.0
    print("-" * 82)
    print(f"broker / bare throughput: {ratio * 100:.1f} %  (goal >= 60 %)")
    print(
        f"broker / bare by server CPU per request: {cpu_ratio * 100:.1f} %  (what the "
        "throughput ratio would be with a core per server; robust to a busy machine)"
    )
    if saturated is not None:
        (bare_us, bare_rps), (broker_us, broker_rps) = saturated
        print(
            f"driven by wrk, both saturated: bare {bare_us:.0f} us/req ({bare_rps:.0f} req/s), "
            f"broker {broker_us:.0f} us/req ({broker_rps:.0f} req/s): by server CPU per "
            f"request {bare_us / broker_us * 100 if broker_us else 0:.1f} %"
        )
    if info is not None and broker.rps:
        print(f"INFO access logging: {info.rps / broker.rps * 100:.1f} % of the WARNING throughput")
    if args.store == "redis":
        calls = broker.store_calls()
        trips = sum(calls.values())
        per = trips / broker.ok if broker.ok else 0.0
        print(
            f"store round trips per request: {per:.6f}  (goal ~0)  "
            f"[{trips} round trip(s) over {broker.ok} requests"
            + (f": {dict(calls)}" if calls else "")
            + "]"
        )
        print(
            f"  (excluded: {broker.feed_polls()} change-feed polls in {broker.elapsed:.1f} s of "
            f"broker rounds, {broker.feed_polls() / broker.elapsed:.1f}/s, independent of load)"
        )
        if info is not None:
            fresh = info.store_calls()
            print(
                f"  (self-check: the INFO round, in a freshly started broker, made "
                f"{sum(fresh.values())} round trip(s) {dict(fresh)} over {info.ok} requests)"
            )
    else:
        print("store round trips per request: n/a (counted only with --store redis)")
    print(
        f"response body: {body_bytes} bytes from both servers; concurrency {args.concurrency}; "
        f"{args.rounds} interleaved rounds of {args.duration / args.rounds:.1f} s per target"
    )
    print(
        f"machine: {os.cpu_count()} CPU(s) (nproc {len(os.sched_getaffinity(0))}); client, "
        "server and Redis share them, so these are relative figures, not capacity"
    )
    print(
        "CPU columns: seconds of CPU per wall second of the round (100 % = one core); "
        "srv CPU/req in microseconds"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load} (other work on the machine skews req/s)")
    print(f"command: {shlex.join(sys.orig_argv)}")
    print("=" * 82)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--concurrency", type=int, default=32, help="connections and workers")
    parser.add_argument("--store", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per target")
    parser.add_argument(
        "--no-info-round",
        dest="info_round",
        action="store_false",
        help="skip the extra broker round with BROKER_LOG_LEVEL=INFO",
    )
    parser.add_argument(
        "--no-wrk",
        dest="wrk",
        action="store_false",
        help="skip the rounds driven by wrk (both servers saturated)",
    )
    parser.add_argument("--serve-bare", metavar="BODY_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(Path(args.serve_bare))
        return 0
    if args.duration <= 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--duration must be > 0, --concurrency and --rounds >= 1")
    try:
        return run(args)
    except (BenchError, RuntimeError) as exc:  # RuntimeError: a tests.harness server failed
        print(f"bench_tokens: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
