"""Settings: every knob declared once, read from the environment over an optional YAML file
over defaults, validated at start-up with errors that name the variable."""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from broker.errors import ConfigError
from broker.store.redis_connect import SCHEMES as REDIS_SCHEMES
from broker.store.redis_connect import RedisOptions, parse_redis_url
from broker.support.secret import Secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {raw!r}")
    return value


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _store_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme == "sqlite":
        if not raw.startswith("sqlite:///") or len(raw) <= len("sqlite:///"):
            raise ValueError("must look like sqlite:///relative/path.db or sqlite:////abs/path.db")
        return raw
    try:
        parse_redis_url(raw)
    except ValueError as exc:
        if raw.partition("://")[0] in REDIS_SCHEMES:
            raise
        raise ValueError(
            "must start with sqlite:///, " + ", ".join(s + "://" for s in REDIS_SCHEMES)
        ) from exc
    return raw


def _secret(min_bytes: int) -> Callable[[str], Secret]:
    def parse(raw: str) -> Secret:
        if len(raw.encode()) < min_bytes:
            raise ValueError(f"must be at least {min_bytes} bytes long")
        return Secret(raw)

    return parse


def _secrets(min_bytes: int) -> Callable[[str], tuple[Secret, ...]]:
    one = _secret(min_bytes)

    def parse(raw: str) -> tuple[Secret, ...]:
        try:
            return tuple(one(item) for item in _csv(raw))
        except ValueError as exc:
            raise ValueError(f"each secret {exc}") from None

    return parse


def _log_format(raw: str) -> str:
    if raw not in ("json", "text"):
        raise ValueError(f"must be 'json' or 'text', got {raw!r}")
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[Network, ...]:
    nets = []
    for item in _csv(raw):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(nets)


def _origins(raw: str) -> tuple[str, ...]:
    origins = _csv(raw)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{origin!r} is not an origin like https://dash.example.com")
    return origins


@dataclass(frozen=True, slots=True)
class Var:
    """One setting: its environment name(s), parser, default and help text."""

    names: tuple[str, ...]
    parse: Callable[[str], Any]
    default: str | None
    help: str
    required: bool = False


def _var(
    *names: str,
    parse: Callable[[str], Any] = str,
    default: str | None = None,
    help: str,
    required: bool = False,
) -> Any:
    return field(metadata={"var": Var(names, parse, default, help, required)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = _var("BROKER_HOST", default="127.0.0.1", help="Address of the public listener.")
    port: int = _var(
        "BROKER_PORT",
        parse=_int_in(0, 65535),
        default="8080",
        help="Port of the public listener (dashboards, back ends; 0: any free port).",
    )
    admin_host: str = _var(
        "BROKER_ADMIN_HOST",
        default="127.0.0.1",
        help="Address of the admin listener (/admin, /metrics): reach it by port-forward "
        "or an internal network, never the public Service.",
    )
    admin_port: int = _var(
        "BROKER_ADMIN_PORT", parse=_int_in(0, 65535), default="8081", help="Admin listener port."
    )
    internal_host: str = _var(
        "BROKER_INTERNAL_HOST",
        default="127.0.0.1",
        help="Address of the internal listener (Cube's callback, /internal/v1): loopback, "
        "Cube runs beside the broker.",
    )
    internal_port: int = _var(
        "BROKER_INTERNAL_PORT",
        parse=_int_in(0, 65535),
        default="8082",
        help="Internal listener port.",
    )
    cube_url: str = _var(
        "BROKER_CUBE_URL",
        parse=_http_url,
        default="http://127.0.0.1:4000",
        help="Cube's base URL, as the broker reaches it.",
    )
    public_url: str = _var(
        "BROKER_PUBLIC_URL",
        parse=_http_url,
        default=None,
        help="The broker's URL as dashboards reach it; default http://{BROKER_HOST}:{BROKER_PORT}, "
        "required when BROKER_HOST is an unspecified address (0.0.0.0, ::).",
    )
    api_secret: Secret = _var(
        "CUBEJS_API_SECRET",
        parse=_secret(32),
        required=True,
        help="HS256 secret shared with Cube; at least 32 bytes.",
    )
    api_secrets: tuple[Secret, ...] = _var(
        "CUBEJS_API_SECRETS",
        parse=_secrets(32),
        default="",
        help="Comma-separated secrets also accepted when verifying a token (Cube's own name, "
        "Cube >= 1.6.54), each at least 32 bytes: the old secret during a rotation.",
    )
    admin_key: Secret | None = _var(
        "ATHENA_KEY_12",
        "BROKER_ADMIN_KEY",
        parse=_secret(16),
        default=None,
        help="The static admin key (at least 16 bytes); unset: the admin API answers 403.",
    )
    callback_secret: Secret = _var(
        "BROKER_CALLBACK_SECRET",
        parse=_secret(16),
        required=True,
        help="Secret Cube presents on the internal callback (at least 16 bytes).",
    )
    store_url: str = _var(
        "BROKER_STORE",
        parse=_store_url,
        default="sqlite:///./var/broker.db",
        help="sqlite:///path (embedded, one replica); redis://host:port/db or rediss://… (one "
        "Redis server); redis+sentinel://h1:p1,h2:p2/service_name/db (Sentinel: follows "
        "failovers); redis+cluster://h1:p1,h2:p2 (Cluster); rediss+sentinel://, "
        "rediss+cluster:// over TLS.",
    )
    store_password_file: Path | None = _var(
        "BROKER_STORE_PASSWORD_FILE",
        parse=Path,
        default=None,
        help="File holding the Redis password, read at start and at every reconnect (a "
        "rotated secret needs no restart); else a password in the URL is used.",
    )
    store_tls_ca_file: Path | None = _var(
        "BROKER_STORE_TLS_CA_FILE",
        parse=Path,
        default=None,
        help="CA bundle that signed the Redis server's certificate (TLS forms); default "
        "the system CAs.",
    )
    store_tls_cert_file: Path | None = _var(
        "BROKER_STORE_TLS_CERT_FILE",
        parse=Path,
        default=None,
        help="Client certificate presented to Redis over TLS.",
    )
    store_tls_key_file: Path | None = _var(
        "BROKER_STORE_TLS_KEY_FILE",
        parse=Path,
        default=None,
        help="Key of the client certificate.",
    )
    models_path: Path = _var(
        "BROKER_MODELS",
        parse=Path,
        default="config/models.yaml",
        help="Path of the semantic-model registry (YAML).",
    )
    token_ttl: int = _var(
        "BROKER_TOKEN_TTL",
        parse=_int_in(5, 86400),
        default="3600",
        help="Token lifetime in seconds (5..86400).",
    )
    token_min_remaining: int = _var(
        "BROKER_TOKEN_MIN_REMAINING",
        parse=_int_in(0, 86399),
        default=None,
        help="Never hand out a cached token with less lifetime left (0..TTL-1); "
        "default 300, or TTL/2 when the TTL is 600 s or less.",
    )
    trusted_proxies: tuple[Network, ...] = _var(
        "BROKER_TRUSTED_PROXIES",
        parse=_networks,
        default="",
        help="Comma-separated CIDRs whose X-Forwarded-For is believed.",
    )
    log_format: str = _var(
        "BROKER_LOG_FORMAT", parse=_log_format, default="json", help="json or text."
    )
    log_level: str = _var(
        "BROKER_LOG_LEVEL",
        parse=_log_level,
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR.",
    )
    cors_origins: tuple[str, ...] = _var(
        "BROKER_CORS_ORIGINS",
        parse=_origins,
        default="",
        help="Comma-separated origins allowed to call from a browser.",
    )
    query_timeout: float = _var(
        "BROKER_QUERY_TIMEOUT",
        parse=_positive_float,
        default="60",
        help="Deadline of /query in seconds, Cube's 'Continue wait' polls included.",
    )
    shutdown_grace: float = _var(
        "BROKER_SHUTDOWN_GRACE",
        parse=_positive_float,
        default="30",
        help="Seconds in-flight requests get after SIGTERM.",
    )
    upstream_connect_timeout: float = _var(
        "BROKER_UPSTREAM_CONNECT_TIMEOUT",
        parse=_positive_float,
        default="5",
        help="Seconds to connect to Cube before answering 502.",
    )
    upstream_timeout: float = _var(
        "BROKER_UPSTREAM_TIMEOUT",
        parse=_positive_float,
        default="30",
        help="Seconds Cube may take to start its answer, and between two reads of it, before 504.",
    )
    upstream_pool_size: int = _var(
        "BROKER_UPSTREAM_POOL_SIZE",
        parse=_int_in(1, 10000),
        default="100",
        help="Maximum open connections to Cube.",
    )
    brute_force_limit: int = _var(
        "BROKER_BRUTE_FORCE_LIMIT",
        parse=_int_in(20, 1_000_000),
        default="30",
        help="Failed authentications per minute from one client address before it is "
        "refused with 429 for the rest of the minute (at least 20).",
    )
    models_poll_interval: float = _var(
        "BROKER_MODELS_POLL_INTERVAL",
        parse=_positive_float,
        default="2",
        help="Seconds between checks of the model files for changes (SIGHUP reloads at once).",
    )
    audit_retention_days: int = _var(
        "BROKER_AUDIT_RETENTION_DAYS",
        parse=_int_in(1, 36500),
        default="90",
        help="Days audit events are kept in the store (older ones are purged hourly).",
    )
    body_memory: int = _var(
        "BROKER_BODY_MEMORY",
        parse=_int_in(1024 * 1024, 2**40),
        default=str(64 * 1024 * 1024),
        help="Bytes of request bodies held in memory at once, all connections together "
        "(at least 1 MiB); a body that would pass the bound is refused with 429.",
    )
    body_timeout: float = _var(
        "BROKER_BODY_TIMEOUT",
        parse=_positive_float,
        default="30",
        help="Seconds a request body may make no progress before it is answered 408.",
    )

    def __post_init__(self) -> None:
        ports = {
            "BROKER_PORT": self.port,
            "BROKER_ADMIN_PORT": self.admin_port,
            "BROKER_INTERNAL_PORT": self.internal_port,
        }
        for a, b in itertools.combinations(ports, 2):
            if ports[a] == ports[b] != 0:
                raise ConfigError(f"{a}, {b}: the listeners need three different ports")
        if not self.public_url:
            object.__setattr__(self, "public_url", _default_public_url(self.host, self.port))
        if self.token_min_remaining is None:
            default = 300 if self.token_ttl > 600 else self.token_ttl // 2
            object.__setattr__(self, "token_min_remaining", default)
        elif self.token_min_remaining >= self.token_ttl:
            raise ConfigError(
                f"BROKER_TOKEN_MIN_REMAINING: must be below BROKER_TOKEN_TTL "
                f"({self.token_ttl}), got {self.token_min_remaining}"
            )

    def redis_options(self) -> RedisOptions:
        """What the ``BROKER_STORE_*`` settings add to a Redis ``BROKER_STORE`` URL."""
        return RedisOptions(
            password_file=self.store_password_file,
            tls_ca_file=self.store_tls_ca_file,
            tls_cert_file=self.store_tls_cert_file,
            tls_key_file=self.store_tls_key_file,
        )

    @classmethod
    def variables(cls) -> list[Var]:
        return [f.metadata["var"] for f in fields(cls)]

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        """Build settings: environment over ``config_file`` (lower-case names) over defaults.

        Raises :class:`ConfigError` with one line naming the variable or file.
        """
        env = dict(os.environ if environ is None else environ)
        file_values = _read_config_file(Path(config_file)) if config_file else {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            var: Var = f.metadata["var"]
            raw = _lookup(var.names, env, file_values)
            if raw is None:
                if var.required:
                    raise ConfigError(f"{var.names[0]}: is required")
                raw = var.default
            if raw is None:
                values[f.name] = None
                continue
            try:
                values[f.name] = var.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{var.names[0]}: {exc}") from None
        return cls(**values)


def _default_public_url(host: str, port: int) -> str:
    """``http://{host}:{port}``, refused for an unspecified address (``0.0.0.0``, ``::``):
    dashboards would be handed a ``cube_url`` they cannot reach."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"
    if address.is_unspecified:
        raise ConfigError(
            f"BROKER_PUBLIC_URL: must be set when BROKER_HOST is {host} (every address): "
            "the URL dashboards reach the broker at, e.g. https://broker.example.com"
        )
    return f"http://[{host}]:{port}" if address.version == 6 else f"http://{host}:{port}"


def _lookup(names: tuple[str, ...], env: Mapping[str, str], file: Mapping[str, str]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    for name in names:
        if file.get(name):
            return file[name]
    return None


def _read_config_file(path: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_where(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of setting names to values")
    known = {name.lower(): name for var in Settings.variables() for name in var.names}
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key.lower() not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif value is None:
            continue
        out[known[key.lower()]] = str(value)
    return out


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "parse error"
