"""A private ``redis-server`` that speaks only TLS, and the certificates for it, made
with ``openssl``: a test CA, a server certificate for 127.0.0.1 and localhost, a client
certificate, and a rogue CA with a server certificate of its own, for the server a
client must refuse."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.harness.ports import free_port, start_with_retries
from tests.harness.redis import RedisServer, redis_executable

#: How long the certificates are valid.
_DAYS = "7"
#: How long one ``openssl`` or ``redis-server`` probe may take.
_COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files in :attr:`folder`. The server and client certificates are signed by
    :attr:`ca_cert`; :attr:`rogue_server_cert` by :attr:`rogue_ca_cert`, which signed
    nothing else. Both server certificates name IP 127.0.0.1 and DNS localhost."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_ca_key: Path
    rogue_server_cert: Path
    rogue_server_key: Path


_LEAF_EXTENSIONS = """\
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_tls_material(folder: Path) -> TlsFiles:
    """Write a fresh set of keys and certificates (P-256 keys) into ``folder``, which the
    caller owns (``tmp_path``). ``RuntimeError`` with openssl's output when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    extensions = folder / "extensions.cnf"
    extensions.write_text(_LEAF_EXTENSIONS)
    _make_ca(folder, "ca", "broker test CA")
    _make_ca(folder, "rogue-ca", "rogue test CA")
    _make_leaf(folder, "server", "ca", "server", extensions)
    _make_leaf(folder, "client", "ca", "client", extensions)
    _make_leaf(folder, "rogue-server", "rogue-ca", "server", extensions)
    return TlsFiles(
        folder=folder,
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        rogue_ca_cert=folder / "rogue-ca.crt",
        rogue_ca_key=folder / "rogue-ca.key",
        rogue_server_cert=folder / "rogue-server.crt",
        rogue_server_key=folder / "rogue-server.key",
    )


def _request_config(folder: Path, name: str, common_name: str, ca: bool) -> Path:
    """An ``openssl req`` configuration of its own, so the system's ``openssl.cnf`` adds
    nothing."""
    lines = [
        "[req]",
        "distinguished_name = dn",
        "prompt = no",
        *(["x509_extensions = ca"] if ca else []),
        "[dn]",
        f"CN = {common_name}",
    ]
    if ca:
        lines += [
            "[ca]",
            "basicConstraints = critical, CA:TRUE",
            "keyUsage = critical, keyCertSign, cRLSign",
            "subjectKeyIdentifier = hash",
        ]
    path = folder / f"{name}.cnf"
    path.write_text("\n".join(lines) + "\n")
    return path


_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _make_ca(folder: Path, name: str, common_name: str) -> None:
    config = _request_config(folder, name, common_name, ca=True)
    _openssl(
        folder,
        ["req", "-x509", "-new", "-config", str(config), *_NEW_KEY, "-days", _DAYS],
        ["-keyout", f"{name}.key", "-out", f"{name}.crt"],
    )


def _make_leaf(folder: Path, name: str, ca: str, section: str, extensions: Path) -> None:
    config = _request_config(folder, name, f"broker test {name}", ca=False)
    _openssl(
        folder,
        ["req", "-new", "-config", str(config), *_NEW_KEY],
        ["-keyout", f"{name}.key", "-out", f"{name}.csr"],
    )
    _openssl(
        folder,
        ["x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key"],
        ["-CAcreateserial", "-days", _DAYS, "-out", f"{name}.crt"],
        ["-extfile", str(extensions), "-extensions", section],
    )


def _openssl(folder: Path, *parts: list[str]) -> None:
    executable = shutil.which("openssl")
    if executable is None:
        raise RuntimeError("openssl is not on PATH; install it to run the TLS tests")
    command = [executable, *(arg for part in parts for arg in part)]
    done = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


class TlsRedisServer(RedisServer):
    """A ``redis-server`` listening only with TLS (``--port 0 --tls-port P``) on
    :attr:`port`; :attr:`url` is ``rediss://[:PASSWORD@]127.0.0.1:P/0``. It presents the
    server certificate (the rogue one when ``rogue``), trusts :attr:`files`'s CA for
    client certificates and, when ``require_client_cert``, refuses clients without one.
    :meth:`client` trusts the CA that signed the server's certificate and presents the
    client certificate."""

    scheme = "rediss"

    def __init__(
        self,
        executable: str,
        workdir: Path,
        port: int,
        files: TlsFiles,
        *,
        require_client_cert: bool,
        password: str | None,
        rogue: bool,
    ) -> None:
        super().__init__(executable, workdir, port, password=password)
        self.files = files
        self.require_client_cert = require_client_cert
        self.rogue = rogue

    @property
    def server_ca_cert(self) -> Path:
        """The CA that signed the certificate this server presents."""
        return self.files.rogue_ca_cert if self.rogue else self.files.ca_cert

    def listen_args(self) -> list[str]:
        cert, key = (
            (self.files.rogue_server_cert, self.files.rogue_server_key)
            if self.rogue
            else (self.files.server_cert, self.files.server_key)
        )
        return [
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(self.files.ca_cert)),
            *("--tls-auth-clients", "yes" if self.require_client_cert else "no"),
        ]

    def client(self, **options: Any) -> redis.Redis:
        tls: dict[str, Any] = {
            "ssl": True,
            "ssl_ca_certs": str(self.server_ca_cert),
            "ssl_certfile": str(self.files.client_cert),
            "ssl_keyfile": str(self.files.client_key),
        }
        return super().client(**(tls | options))


def redis_has_tls(executable: str) -> bool:
    """Whether this ``redis-server`` is built with TLS: one built without it refuses the
    ``tls-port`` option; one built with it refuses to start for want of a certificate."""
    try:
        probe = subprocess.run(
            [executable, "--port", "0", "--tls-port", "1"],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return "tls-cert-file" in probe.stdout + probe.stderr


def start_tls_redis(
    files: TlsFiles,
    *,
    require_client_cert: bool = True,
    password: str | None = None,
    rogue: bool = False,
) -> TlsRedisServer:
    """A running private TLS-only ``redis-server`` (see :class:`TlsRedisServer`), ready
    once a TLS client's PING is answered. ``RuntimeError`` when this ``redis-server`` is
    built without TLS, or it does not come up (three tries on fresh ports)."""
    executable = redis_executable()
    if not redis_has_tls(executable):
        raise RuntimeError(f"{executable} is built without TLS support (no tls-port option)")
    return start_with_retries(
        lambda: TlsRedisServer(
            executable,
            Path(tempfile.mkdtemp(prefix="broker-redis-tls-")),
            free_port(),
            files,
            require_client_cert=require_client_cert,
            password=password,
            rogue=rogue,
        )
    )
