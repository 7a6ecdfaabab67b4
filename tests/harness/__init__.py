"""What the tests and the benchmarks of ``bench/`` share to run the real parts: free
ports, private ``redis-server`` instances (alone, as a cluster, under sentinels, with
TLS) and PostgreSQL instances, the real Cube, the broker as a process, blocking HTTP to
such processes, bounded waiting, the test settings and the ways to create keys. Nothing
here is a fixture: ``tests/conftest.py`` and ``bench/`` build on it. Every server removes
its temporary folder at ``stop()`` and is a context manager that stops it."""

from __future__ import annotations

from pathlib import Path

#: The repository root (``scripts/``, ``deploy/``, ``config/``, ``broker/``).
REPO = Path(__file__).resolve().parents[2]
#: The tests' sample registry (``models.yaml``) and its ``models/`` folder.
DATA = REPO / "tests" / "data"
