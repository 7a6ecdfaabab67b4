"""Which files of a ``schema_dir`` are model files, and the schema hash over them (SPEC §6).

Model files are the regular files ending in ``.yml``, ``.yaml`` or ``.js`` at any depth;
names starting with ``.`` (files or folders) are skipped. A symbolic link counts as what
it points to when its target resolves inside ``schema_dir``; that is exactly how a
Kubernetes ConfigMap mount looks (visible links into a hidden ``..data`` folder), so such
a mount hashes like the plain files. A link that leaves ``schema_dir`` is an error, as is
a link loop.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

MODEL_SUFFIXES = (".yml", ".yaml", ".js")


class SchemaDirError(Exception):
    """``schema_dir`` cannot be read as a set of model files.

    ``relpath`` is the offending entry's POSIX path relative to ``schema_dir`` ("" for
    the folder itself); ``reason`` says what is wrong, without the file's content.
    """

    def __init__(self, relpath: str, reason: str) -> None:
        self.relpath = relpath
        self.reason = reason
        super().__init__(f"{relpath or '.'}: {reason}")


def model_files(schema_dir: Path) -> list[tuple[str, Path]]:
    """The model files under ``schema_dir`` as ``(relative POSIX path, real path)``.

    Sorted by the relative path's UTF-8 bytes, the order the hash uses. The real path
    is the fully resolved target, so stat-ing it sees the content actually served. A
    dangling link inside ``schema_dir`` is skipped: the kubelet leaves one for a moment
    when a ConfigMap key is removed. Raises :class:`SchemaDirError` for a link leaving
    ``schema_dir``, a link loop, a name that is not valid UTF-8 or an unreadable folder.
    """
    try:
        root = schema_dir.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise SchemaDirError("", f"cannot resolve: {_reason(exc)}") from exc
    if not root.is_dir():
        raise SchemaDirError("", "is not a directory")
    found: list[tuple[str, Path]] = []
    _walk(root, root, "", frozenset({root}), found)
    return sorted(found, key=lambda item: item[0].encode("utf-8"))


def schema_hash(files: Iterable[tuple[str, bytes]]) -> str:
    """Lowercase hex SHA-256 over ``path, NUL, content, NUL`` for each file.

    The files are hashed in the order of their paths' UTF-8 bytes whatever order they
    are given in, so callers cannot get the order wrong.
    """
    digest = hashlib.sha256()
    for relpath, content in sorted(files, key=lambda item: item[0].encode("utf-8")):
        digest.update(relpath.encode("utf-8"))
        digest.update(b"\0")
        digest.update(content)
        digest.update(b"\0")
    return digest.hexdigest()


def _walk(
    root: Path, folder: Path, prefix: str, ancestors: frozenset[Path], out: list[tuple[str, Path]]
) -> None:
    """Collect model files of the real folder ``folder`` (shown as ``prefix``) into ``out``.

    ``ancestors`` holds the real folders on the current descent; meeting one again
    through a link is a loop.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise SchemaDirError(prefix.rstrip("/"), f"cannot list: {_reason(exc)}") from exc
    for entry in entries:
        if entry.name.startswith("."):
            continue
        relpath = prefix + entry.name
        _check_utf8(relpath)
        if entry.is_symlink():
            target = _follow_link(root, Path(entry.path), relpath)
            if target is None:
                continue
            real, mode = target
        else:
            real = Path(entry.path)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SchemaDirError(relpath, f"cannot stat: {_reason(exc)}") from exc
        if stat.S_ISDIR(mode):
            if real in ancestors:
                raise SchemaDirError(relpath, "symlink loop")
            _walk(root, real, relpath + "/", ancestors | {real}, out)
        elif stat.S_ISREG(mode) and entry.name.endswith(MODEL_SUFFIXES):
            out.append((relpath, real))


def _follow_link(root: Path, link: Path, relpath: str) -> tuple[Path, int] | None:
    """The real target of ``link`` and its mode, or None when it dangles inside ``root``."""
    try:
        real = Path(os.path.realpath(link))
        if not real.is_relative_to(root):
            target = os.readlink(link)
            raise SchemaDirError(relpath, f"symlink points outside the schema_dir (-> {target})")
        return real, os.stat(real).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SchemaDirError(relpath, f"cannot follow symlink: {_reason(exc)}") from exc


def _check_utf8(relpath: str) -> None:
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaDirError(
            relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
            "file name is not valid UTF-8",
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
