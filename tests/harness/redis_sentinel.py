"""A private Redis Sentinel deployment: one master, its replicas and three sentinels
(``redis-server sentinel.conf --sentinel``), all on free ports of 127.0.0.1, in one
temporary folder removed at stop. Failover is quick: a master is down after one second
without answers, and two sentinels agreeing suffice."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from tests.harness.ports import Stoppable, free_ports, start_with_retries
from tests.harness.redis import POLL_INTERVAL, RedisProcess, RedisServer, redis_executable

#: The name under which the sentinels monitor the master.
SERVICE_NAME = "mymaster"
#: How long the deployment may take to be ready (sentinels meet every two seconds).
READY_TIMEOUT = 20.0
#: How many sentinels must agree that the master is down.
QUORUM = 2


class Sentinel(RedisProcess):
    """One sentinel, configured by its own ``sentinel.conf`` (which it rewrites, so it
    lives in the sentinel's folder)."""

    def __init__(
        self,
        executable: str,
        workdir: Path,
        port: int,
        *,
        master_port: int,
        password: str | None,
    ) -> None:
        super().__init__(executable, workdir, port)
        self.config_path = workdir / "sentinel.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {_quoted(str(workdir))}",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {SERVICE_NAME} 1000",
            f"sentinel failover-timeout {SERVICE_NAME} 5000",
            f"sentinel parallel-syncs {SERVICE_NAME} 1",
        ]
        if password is not None:
            lines.append(f"sentinel auth-pass {SERVICE_NAME} {_quoted(password)}")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [self._executable, str(self.config_path), "--sentinel"]

    def master_port(self) -> int:
        """The port of the master this sentinel names now."""
        with self.client() as client:
            _host, port = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE_NAME
            )
        return int(port)

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER``: what this sentinel knows of the master."""
        with self.client() as client:
            return _pairs(client.execute_command("SENTINEL", "MASTER", SERVICE_NAME))

    def replicas(self) -> list[dict[str, str]]:
        """``SENTINEL REPLICAS``: the replicas this sentinel knows, with their flags."""
        with self.client() as client:
            found = client.execute_command("SENTINEL", "REPLICAS", SERVICE_NAME)
        return [_pairs(replica) for replica in found]


def _quoted(value: str) -> str:
    """``value`` as a double-quoted string of a Redis configuration file."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _pairs(reply: dict[str, Any] | list[str]) -> dict[str, str]:
    """A sentinel's description of a server: a map in RESP3, a flat list in RESP2."""
    if isinstance(reply, dict):
        return {key: str(value) for key, value in reply.items()}
    return dict(zip(reply[::2], reply[1::2], strict=True))


class SentinelDeployment(Stoppable):
    """One master, ``replicas`` replicas and ``sentinels`` sentinels. :attr:`url` is the
    broker's form ``redis+sentinel://[:PASSWORD@]127.0.0.1:S1,127.0.0.1:S2,…/mymaster/0``
    (the password is the data servers', the sentinels have none). ``kill_master`` then
    ``wait_for_failover`` exercise a failover."""

    def __init__(
        self, executable: str, root: Path, *, replicas: int, sentinels: int, password: str | None
    ) -> None:
        ports = free_ports(1 + replicas + sentinels)
        data_ports, sentinel_ports = ports[: 1 + replicas], ports[1 + replicas :]
        master_port = data_ports[0]
        self.service_name = SERVICE_NAME
        self.password = password
        self.sentinels: list[tuple[str, int]] = [("127.0.0.1", port) for port in sentinel_ports]
        self._root = root
        self._data = {
            port: RedisServer(
                executable,
                root / f"redis-{port}",
                port,
                password=password,
                args=[] if port == master_port else ["--replicaof", "127.0.0.1", str(master_port)],
            )
            for port in data_ports
        }
        self._sentinels = [
            Sentinel(
                executable,
                root / f"sentinel-{port}",
                port,
                master_port=master_port,
                password=password,
            )
            for port in sentinel_ports
        ]
        self._killed_at: dict[int, float] = {}
        credentials = "" if password is None else f":{quote(password, safe='')}@"
        addresses = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        self.url = f"redis+sentinel://{credentials}{addresses}/{SERVICE_NAME}/0"

    def start(self) -> None:
        """Start the master and the replicas, wait for every replication link, then start
        the sentinels and wait until each names the master, knows every replica and
        every other sentinel. ``RuntimeError`` with the logs' tails when that fails."""
        for server in self._data.values():
            server.start()
        self._wait(self._links_up, "the replicas are not in sync")
        for sentinel in self._sentinels:
            sentinel.start()
        self._wait(self._sentinels_ready, "the sentinels do not agree on the deployment")

    def _wait(
        self, condition: Callable[[], bool], failure: str, timeout: float = READY_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while not _holds(condition):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{failure} within {timeout} s:\n{self.logs_tail()}")
            time.sleep(POLL_INTERVAL)

    def _links_up(self) -> bool:
        for server in self._data.values():
            with server.client() as client:
                replication = client.info("replication")
            if replication["role"] != "master" and replication["master_link_status"] != "up":
                return False
        return True

    def _sentinels_ready(self) -> bool:
        master_port = self.master_port()
        replica_ports = {str(port) for port in self._data if port != master_port}
        for sentinel in self._sentinels:
            if sentinel.master_port() != master_port:
                return False
            state = sentinel.master_state()
            if int(state["num-other-sentinels"]) != len(self._sentinels) - 1:
                return False
            known = {
                replica["port"]
                for replica in sentinel.replicas()
                if not {"s_down", "disconnected"} & set(replica["flags"].split(","))
            }
            if known != replica_ports:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master, as the first sentinel that answers names it now."""
        failures = []
        for sentinel in self._sentinels:
            if not sentinel.running:
                continue
            try:
                return sentinel.master_port()
            except redis.exceptions.RedisError as exc:
                failures.append(f"{sentinel.port}: {exc}")
        raise RuntimeError("no sentinel names the master: " + "; ".join(failures))

    def server(self, port: int) -> RedisServer:
        """The data server (master or replica) on ``port``."""
        return self._data[port]

    def kill_master(self) -> int:
        """Kill the current master at once (SIGKILL), as a crash would; returns its port."""
        port = self.master_port()
        self._data[port].kill()
        self._killed_at[port] = time.monotonic()
        return port

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Bounded polling until every running sentinel names the same master, other than
        ``old_port``, and that server answers ``role:master``. Returns the seconds since
        ``kill_master`` killed ``old_port`` (since this call when it did not);
        ``RuntimeError`` with the logs' tails after ``timeout`` s."""
        started = time.monotonic()
        since = self._killed_at.get(old_port, started)
        deadline = started + timeout
        while not _holds(lambda: self._failed_over(old_port)):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no failover from port {old_port} within {timeout} s:\n{self.logs_tail()}"
                )
            time.sleep(POLL_INTERVAL)
        return time.monotonic() - since

    def _failed_over(self, old_port: int) -> bool:
        named = {sentinel.master_port() for sentinel in self._sentinels if sentinel.running}
        if len(named) != 1:
            return False
        (port,) = named
        if port == old_port or port not in self._data or not self._data[port].running:
            return False
        with self._data[port].client() as client:
            return bool(client.info("replication")["role"] == "master")

    def logs_tail(self, size: int = 1500) -> str:
        processes: list[RedisProcess] = [*self._data.values(), *self._sentinels]
        return "\n".join(
            f"--- {process.workdir.name}:\n{process.log_tail(size)}" for process in processes
        )

    def stop(self) -> None:
        """Kill the sentinels (so they start no failover), then the data servers; remove
        the folder. Idempotent."""
        try:
            for process in [*self._sentinels, *self._data.values()]:
                process.kill()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)


def _holds(condition: Callable[[], bool]) -> bool:
    """``condition()``, false while a process it asks does not answer."""
    try:
        return condition()
    except redis.exceptions.RedisError:
        return False


def start_redis_sentinel(
    replicas: int = 1, sentinels: int = 3, password: str | None = None
) -> SentinelDeployment:
    """A running, ready private Sentinel deployment, its data servers with ``password``
    when given. Three tries on fresh ports, as another process may take one first."""
    if sentinels < QUORUM:
        raise ValueError(f"the quorum is {QUORUM} sentinels")
    executable = redis_executable()
    return start_with_retries(
        lambda: SentinelDeployment(
            executable,
            Path(tempfile.mkdtemp(prefix="broker-redis-sentinel-")),
            replicas=replicas,
            sentinels=sentinels,
            password=password,
        )
    )
