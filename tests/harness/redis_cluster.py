"""A private Redis Cluster: ``masters * (1 + replicas_per_master)`` ``redis-server``
processes with cluster support on free ports of 127.0.0.1 (each with its bus on a free
port of its own, ``--cluster-port``), joined by ``redis-cli --cluster create``, in one
temporary folder removed at stop."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from tests.harness.ports import Stoppable, free_ports, start_with_retries
from tests.harness.redis import POLL_INTERVAL, RedisServer, redis_executable

#: All the hash slots of a cluster.
SLOTS = 16384
#: How long ``redis-cli --cluster create`` and the cluster's agreement may take.
CREATE_TIMEOUT = 30.0
#: ``cluster-node-timeout``: how long a node may be unreachable before it is failing.
NODE_TIMEOUT_MS = 1000


class ClusterServers(Stoppable):
    """The nodes of one cluster. :attr:`url` names every node in the broker's form
    ``redis+cluster://[:PASSWORD@]127.0.0.1:P1,127.0.0.1:P2,…`` (the first ``masters``
    ports are the masters at creation, the replicas follow). ``kill(port)`` crashes a
    node; with a replica per master the cluster fails it over (:meth:`wait_until_ok`)."""

    def __init__(
        self,
        executable: str,
        root: Path,
        *,
        masters: int,
        replicas_per_master: int,
        password: str | None,
    ) -> None:
        count = masters * (1 + replicas_per_master)
        ports = free_ports(2 * count)
        self.replicas_per_master = replicas_per_master
        self.password = password
        self.nodes: list[tuple[str, int]] = [("127.0.0.1", port) for port in ports[:count]]
        self._root = root
        self._servers = {
            port: RedisServer(
                executable,
                root / f"node-{port}",
                port,
                password=password,
                args=[
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                    *("--cluster-port", str(bus_port)),
                ],
            )
            for port, bus_port in zip(ports[:count], ports[count:], strict=True)
        }
        credentials = "" if password is None else f":{quote(password, safe='')}@"
        addresses = ",".join(f"{host}:{port}" for host, port in self.nodes)
        self.url = f"redis+cluster://{credentials}{addresses}"

    def start(self) -> None:
        """Start every node, create the cluster, wait until it is whole (see
        :meth:`wait_until_ok`). ``RuntimeError`` with the logs' tails when it fails."""
        for server in self._servers.values():
            server.start()
        command = [
            _redis_cli(),
            *(["-a", self.password, "--no-auth-warning"] if self.password is not None else []),
            "--cluster",
            "create",
            *(f"{host}:{port}" for host, port in self.nodes),
            *("--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"),
        ]
        try:
            created = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=CREATE_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"redis-cli --cluster create took over {CREATE_TIMEOUT} s:\n{exc.stdout!r}\n"
                + self.logs_tail()
            ) from exc
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout}{created.stderr}\n{self.logs_tail()}"
            )
        self.wait_until_ok(CREATE_TIMEOUT)

    def wait_until_ok(self, timeout: float = CREATE_TIMEOUT) -> None:
        """Bounded polling until every running node says ``cluster_state:ok`` with all
        16384 slots served, knows every node, and every running replica's link to its
        master is up. ``RuntimeError`` with the logs' tails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self._whole():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the cluster is not whole within {timeout} s:\n{self._state()}\n"
                    + self.logs_tail()
                )
            time.sleep(POLL_INTERVAL)

    def _whole(self) -> bool:
        try:
            for server in self._running():
                with server.client() as client:
                    info = client.cluster("INFO")
                    if (
                        info.get("cluster_state") != "ok"
                        or int(info.get("cluster_slots_ok", 0)) != SLOTS
                        or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)
                    ):
                        return False
                    replication = client.info("replication")
                    if (
                        replication["role"] != "master"
                        and replication.get("master_link_status") != "up"
                    ):
                        return False
        except redis.exceptions.RedisError:
            return False
        return True

    def _state(self) -> str:
        lines = []
        for server in self._running():
            try:
                with server.client() as client:
                    info = client.cluster("INFO")
                lines.append(
                    f"{server.port}: state {info.get('cluster_state')}, "
                    f"{info.get('cluster_slots_ok')} slots ok, "
                    f"{info.get('cluster_known_nodes')} nodes known"
                )
            except redis.exceptions.RedisError as exc:
                lines.append(f"{server.port}: {exc}")
        return "\n".join(lines)

    def _running(self) -> list[RedisServer]:
        return [server for server in self._servers.values() if server.running]

    def masters(self) -> list[int]:
        """The ports of the running nodes that are masters now (``INFO replication``)."""
        ports = []
        for server in self._running():
            with server.client() as client:
                if client.info("replication")["role"] == "master":
                    ports.append(server.port)
        return ports

    def slot_master(self, key: str) -> int:
        """The port of the master serving ``key``'s slot, as the first running node that
        answers says (``CLUSTER KEYSLOT``, ``CLUSTER SLOTS``)."""
        for server in self._running():
            try:
                with server.client() as client:
                    slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                    ranges = client.execute_command("CLUSTER", "SLOTS")
            except redis.exceptions.RedisError:
                continue
            for start, end, master, *_replicas in ranges:
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise RuntimeError(f"no running node names the master of {key!r}")

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the replicas connected to the master on ``port`` (its ``INFO
        replication``)."""
        with self._servers[port].client() as client:
            info = client.info("replication")
        return [
            int(value["port"])
            for name, value in info.items()
            if name.startswith("slave") and isinstance(value, dict)
        ]

    def wait_for_failover(self, old_master: int, key: str, timeout: float) -> float:
        """Bounded polling until the cluster is whole again (:meth:`wait_until_ok`'s test)
        with ``key``'s slot served by a master other than ``old_master``; returns the
        seconds it took. ``RuntimeError`` with the logs' tails after ``timeout`` s."""
        started = time.monotonic()
        while True:
            try:
                if self._whole() and self.slot_master(key) != old_master:
                    return time.monotonic() - started
            except (RuntimeError, redis.exceptions.RedisError):
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"no failover of {old_master} within {timeout} s:\n{self._state()}\n"
                    + self.logs_tail()
                )
            time.sleep(POLL_INTERVAL)

    def server(self, port: int) -> RedisServer:
        """The node on ``port`` (its ``client()``, ``pause()``, ``restart()``, …)."""
        return self._servers[port]

    def keys_per_node(self, pattern: str = "*") -> dict[int, int]:
        """How many keys matching ``pattern`` each master holds, by port (``SCAN`` on each
        master: a node lists only its own keys)."""
        counts = {}
        for port in self.masters():
            with self._servers[port].client() as client:
                counts[port] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        return counts

    def flushall(self) -> None:
        """Empty every master (the replicas follow)."""
        for port in self.masters():
            self._servers[port].flushall()

    def kill(self, port: int) -> None:
        """Kill the node on ``port`` at once (SIGKILL), as a crash would."""
        self._servers[port].kill()

    def logs_tail(self, size: int = 1500) -> str:
        return "\n".join(
            f"--- node {port}:\n{server.log_tail(size)}" for port, server in self._servers.items()
        )

    def stop(self) -> None:
        """Kill every node and remove the folder. Idempotent."""
        try:
            for server in self._servers.values():
                server.kill()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)


def _redis_cli() -> str:
    executable = shutil.which("redis-cli")
    if executable is None:
        raise RuntimeError("redis-cli is not on PATH; install it (make install) to run tests")
    return executable


def start_redis_cluster(
    masters: int = 3, replicas_per_master: int = 0, *, password: str | None = None
) -> ClusterServers:
    """A running, whole private Redis Cluster (at least three masters, as
    ``redis-cli --cluster create`` requires), every node with ``password`` when given.
    Three tries on fresh ports, as another process may take one before a node binds it."""
    if masters < 3:
        raise ValueError("a Redis Cluster needs at least three masters")
    executable = redis_executable()
    _redis_cli()
    return start_with_retries(
        lambda: ClusterServers(
            executable,
            Path(tempfile.mkdtemp(prefix="broker-redis-cluster-")),
            masters=masters,
            replicas_per_master=replicas_per_master,
            password=password,
        )
    )
