"""Connecting to the Redis that deployments run (SPEC §2 ``BROKER_STORE``): one server,
Sentinel, or Cluster, each plain or over TLS, with the password from the URL or from
``BROKER_STORE_PASSWORD_FILE`` (read at start and at every reconnect, so a rotated secret
needs no restart) and the ACL user name from the URL.

URL forms::

    redis://[user:password@]host:port[/db]            rediss://…  (TLS)
    redis+sentinel://[user:password@]h1:p1[,h2:p2…]/service_name[/db]
                                                      rediss+sentinel://…  (TLS)
    redis+cluster://[user:password@]h1:p1[,h2:p2…]    rediss+cluster://…  (TLS)

Sentinel: the sentinels are asked for the service's master on every (re)connect, so the
broker follows a failover; the password (if any) is the data nodes', the sentinels are
reached without one. Cluster: the nodes listed are only where discovery starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
_SCHEMES = {
    "redis": (SINGLE, False),
    "rediss": (SINGLE, True),
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
}
SCHEMES = tuple(_SCHEMES)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a ``BROKER_STORE`` Redis URL names."""

    kind: str
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    service_name: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def replicated(self) -> bool:
        """Whether the deployment has replicas by design (a Sentinel's master always has)."""
        return self.kind == SENTINEL


def parse_redis_url(url: str) -> RedisTarget:
    """The target of a Redis ``BROKER_STORE`` URL; ``ValueError`` (its message never
    holding the password) for one that is not of the forms above."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    kind, tls = _SCHEMES[scheme]
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, _, password = userinfo.partition(":")
    nodes = tuple(_node(item) for item in hosts.split(",") if item)
    if not nodes:
        raise ValueError(f"a {scheme}:// URL needs host:port")
    if kind != CLUSTER and kind != SENTINEL and len(nodes) > 1:
        raise ValueError(
            f"a {scheme}:// URL names one server (Sentinel or Cluster: use those forms)"
        )
    parts = [p for p in path.split("/") if p]
    service_name = None
    if kind == SENTINEL:
        if not parts:
            raise ValueError(f"a {scheme}:// URL needs /service_name after the sentinels")
        service_name, parts = unquote(parts[0]), parts[1:]
    if kind == CLUSTER and parts:
        raise ValueError("a Redis Cluster has one database: no /db in the URL")
    if len(parts) > 1 or (parts and not (parts[0].isascii() and parts[0].isdigit())):
        raise ValueError("the database must be a number")
    return RedisTarget(
        kind=kind,
        tls=tls,
        nodes=nodes,
        db=int(parts[0]) if parts else 0,
        service_name=service_name,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _node(item: str) -> tuple[str, int]:
    parts = urlsplit(f"//{item}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{item!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{item!r} is not host:port")
    return parts.hostname, port or 6379


class PasswordFile(CredentialProvider):
    """The password read from a file each time a connection authenticates (a Kubernetes
    Secret mount, rotated in place), with the URL's user name."""

    def __init__(self, path: Path, username: str | None) -> None:
        self._path = path
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self._path.read_text(encoding="utf-8").strip()
        return (self._username, password) if self._username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """What ``BROKER_STORE_PASSWORD_FILE`` and ``BROKER_STORE_TLS_*`` add to the URL."""

    password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


def connect(
    target: RedisTarget,
    options: RedisOptions,
    *,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[aioredis.Redis | RedisCluster, list[aioredis.Redis]]:
    """A client for ``target`` that connects lazily, replies decoded as text, and the
    clients behind it to close with it (a Sentinel deployment's sentinels)."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": read_timeout,
        "retry": Retry(NoBackoff(), 1),
        **_credentials(target, options),
        **_tls(target, options),
    }
    if target.kind == CLUSTER:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            require_full_coverage=True,
            **common,
        )
        return cluster, []
    if target.kind == SENTINEL:
        assert target.service_name is not None
        sentinel_side = {
            k: v
            for k, v in common.items()
            if k not in ("username", "password", "credential_provider")
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=sentinel_side, **common
        )
        master: aioredis.Redis = sentinel.master_for(
            target.service_name, db=target.db, health_check_interval=5
        )
        return master, list(sentinel.sentinels)
    host, port = target.nodes[0]
    single = aioredis.Redis(host=host, port=port, db=target.db, health_check_interval=5, **common)
    return single, []


def _credentials(target: RedisTarget, options: RedisOptions) -> dict[str, Any]:
    if options.password_file is not None:
        return {"credential_provider": PasswordFile(options.password_file, target.username)}
    return {"username": target.username, "password": target.password}


def _tls(target: RedisTarget, options: RedisOptions) -> dict[str, Any]:
    if not target.tls:
        return {}
    tls: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    if options.tls_ca_file is not None:
        tls["ssl_ca_certs"] = str(options.tls_ca_file)
    if options.tls_cert_file is not None:
        tls["ssl_certfile"] = str(options.tls_cert_file)
    if options.tls_key_file is not None:
        tls["ssl_keyfile"] = str(options.tls_key_file)
    return tls
