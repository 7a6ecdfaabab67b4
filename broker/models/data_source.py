"""A model's data source: its configured connection, and the password resolved on demand.

Passwords are resolved when Cube asks (``${NAME}`` from the environment, ``password_file``
read on every call), so a rotated secret is served without a restart; nothing here ever
puts a secret value into a message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CredentialError(Exception):
    """A data source's secret cannot be resolved now (unset variable, unreadable file).

    The message names the model, the data source and the variable or file, never a
    secret value.
    """


@dataclass(frozen=True)
class DataSource:
    """One database connection of a model, as configured (secrets unresolved).

    ``password`` is the configured string, possibly holding ``${NAME}`` references;
    exactly one of ``password`` and ``password_file`` is set. ``options`` are the other
    keys of the data source, passed to Cube's driver unchanged (``ssl``, ...).
    """

    asset_id: str
    name: str
    type: str
    host: str
    port: int
    database: str
    user: str
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    options: Mapping[str, object] = field(default_factory=dict, repr=False)

    def resolve(self, environ: Mapping[str, str]) -> dict[str, object]:
        """The driver config for Cube, with the password resolved now.

        ``${NAME}`` references are looked up in ``environ`` and ``password_file`` is read
        on every call (trailing newlines stripped), so rotated secrets are picked up.
        Raises :class:`CredentialError` when a variable is unset or the file unreadable.
        """
        config: dict[str, object] = {
            "type": self.type,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "password": self._password(environ),
        }
        config.update(self.options)
        return config

    @property
    def variables(self) -> tuple[str, ...]:
        """The environment variables that ``password`` names (``${NAME}``), each once, in
        order of appearance; empty for a literal password or a ``password_file``."""
        return tuple(dict.fromkeys(REFERENCE_RE.findall(self.password or "")))

    def unresolved(self, environ: Mapping[str, str]) -> list[str]:
        """Why :meth:`resolve` would fail now, in the words of :class:`CredentialError`:
        one message per variable of :attr:`variables` unset in ``environ``, or the
        ``password_file`` that cannot be read; empty when the password resolves."""
        if self.password_file is None:
            return [self._unset(name) for name in self.variables if name not in environ]
        try:
            self._password(environ)
        except CredentialError as exc:
            return [str(exc)]
        return []

    @property
    def _where(self) -> str:
        return f"model {self.asset_id!r}: data source {self.name!r}"

    def _unset(self, name: str) -> str:
        return f"{self._where}: environment variable {name} is not set"

    def _password(self, environ: Mapping[str, str]) -> str:
        where = self._where
        if self.password_file is not None:
            try:
                raw = self.password_file.read_bytes()
            except OSError as exc:
                raise CredentialError(
                    f"{where}: password_file {self.password_file}: cannot read: {describe(exc)}"
                ) from None
            try:
                return raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise CredentialError(
                    f"{where}: password_file {self.password_file}: not valid UTF-8"
                ) from None
        template = self.password or ""

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise CredentialError(self._unset(name))
            return environ[name]

        return REFERENCE_RE.sub(substitute, template)


def describe(exc: BaseException) -> str:
    """A short reason for an error, without paths or values beyond the OS's own words."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
