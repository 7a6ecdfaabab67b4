"""Hot reload of the model registry: a cheap stat poll, a full reload only on change.

The request path only reads :attr:`RegistryWatcher.current`, an immutable snapshot that
is replaced in one assignment. Polling stats the registry file, each schema folder and
each model file (found by the same rules as the hash) and re-reads everything only when
that fingerprint moved; the file I/O runs in a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from broker.errors import ConfigError
from broker.models.registry import Registry, load_registry
from broker.models.schema_hash import SchemaDirError, model_files

log = logging.getLogger("broker.models")

Fingerprint = tuple[object, ...]


def fingerprint(registry: Registry) -> Fingerprint:
    """What must stay equal for ``registry`` to still match the disk: stats, not contents.

    Includes (path, mtime_ns, size, inode, device) of the registry file, every schema
    folder and every model file, following links, so a ConfigMap link swap shows.
    Unreadable parts enter as their error text, so they count as a change too.
    """
    parts: list[object] = [_stat(registry.path)]
    for model in registry:
        parts.append((model.asset_id, _stat(model.schema_dir)))
        try:
            files = model_files(model.schema_dir)
        except SchemaDirError as exc:
            parts.append(str(exc))
            continue
        parts.extend((relpath, str(real), _stat(real)) for relpath, real in files)
    return tuple(parts)


class RegistryWatcher:
    """Holds the current :class:`Registry` and replaces it when the files change.

    A failed reload keeps the last good registry, logs the one-line reason and exposes
    it as :attr:`last_error` (for ``/readyz``) until a reload succeeds (:attr:`last_reload`
    and :attr:`reload_failures` are for ``/metrics``); while it is set,
    each poll retries the full reload, since the fix may be in a file the fingerprint
    does not cover (a newly created ``schema_dir`` or ``password_file``).
    """

    def __init__(
        self, registry: Registry, *, loader: Callable[[Path], Registry] = load_registry
    ) -> None:
        self._current = registry
        self._loader = loader
        self._lock = threading.Lock()
        self._fingerprint = fingerprint(registry)
        self._wake = asyncio.Event()
        self.last_error: str | None = None
        #: Unix time of the last successful load (the first: when the watcher was made).
        self.last_reload = time.time()
        #: Reload attempts that failed (each poll's retry of a broken registry counts).
        self.reload_failures = 0

    @property
    def current(self) -> Registry:
        return self._current

    @property
    def path(self) -> Path:
        return self._current.path

    def reload(self) -> bool:
        """Re-load now, whatever the fingerprint says; True when the new registry is in use.

        Blocking file I/O: from the event loop prefer :meth:`request_reload`.
        """
        with self._lock:
            return self._reload(fingerprint(self._current), log_repeat=True)

    def poll(self) -> bool:
        """Reload if the fingerprint changed or the last reload failed; True when reloaded."""
        with self._lock:
            current = fingerprint(self._current)
            if current == self._fingerprint and self.last_error is None:
                return False
            return self._reload(current, log_repeat=False)

    def request_reload(self) -> None:
        """Make the running :meth:`run` loop reload at once; non-blocking (SIGHUP handler)."""
        self._wake.set()

    async def run(self, interval: float) -> None:
        """Poll every ``interval`` seconds (or at once on :meth:`request_reload`) until cancelled.

        Meant as the body of a task owned by an aiohttp ``cleanup_ctx``. An unexpected
        exception in one round is logged and the loop goes on: a dead watcher would
        silently freeze the models.
        """
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
                forced = True
            except TimeoutError:
                forced = False
            self._wake.clear()
            try:
                await asyncio.to_thread(self.reload if forced else self.poll)
            except Exception:
                self.reload_failures += 1
                log.exception("model registry check failed")

    def _reload(self, seen: Fingerprint, *, log_repeat: bool) -> bool:
        """Load the registry; ``seen`` is the fingerprint taken before reading the files.

        Storing the fingerprint taken *before* the read means a change made during the
        read is seen again on the next poll instead of being lost (the price: when the
        list of models changed, the next poll reloads once more).
        """
        try:
            registry = self._loader(self._current.path)
        except ConfigError as exc:
            message = str(exc)
            if log_repeat or message != self.last_error:
                log.error("model registry reload failed, keeping the last good one: %s", message)
            self.last_error = message
            self.reload_failures += 1
            self._fingerprint = seen
            return False
        old = {m.asset_id: m.schema_hash for m in self._current}
        new = {m.asset_id: m.schema_hash for m in registry}
        self._current = registry
        self._fingerprint = seen
        self.last_error = None
        self.last_reload = time.time()
        changes = [
            f"{asset_id} {old.get(asset_id, '-')[:12]} -> {new.get(asset_id, '-')[:12]}"
            for asset_id in sorted(old.keys() | new.keys())
            if old.get(asset_id) != new.get(asset_id)
        ]
        log.info("model registry reloaded: %s", "; ".join(changes) or "no hash changed")
        return True


def _stat(path: Path) -> tuple[int, int, int, int] | str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
