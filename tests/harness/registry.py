"""A broker registry whose ``orders`` model reads the private PostgreSQL, as the
end-to-end tests and ``bench/bench_proxy.py`` give it to their broker."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.harness.postgres import PostgresServer

#: The environment variable through which such a broker gets the database password.
PASSWORD_VARIABLE = "E2E_ORDERS_DB_PASSWORD"


def write_registry(
    folder: Path, postgres: PostgresServer, *, models: Path, password_variable: str
) -> Path:
    """A registry in ``folder`` with a copy of the ``orders`` model from ``models`` (a folder
    holding ``orders/``), its data source the private cluster, its password read from the
    environment variable ``password_variable`` when Cube asks."""
    shutil.copytree(models, folder / "models")
    source = {**postgres.data_source(), "password": "${" + password_variable + "}"}
    registry = {
        "models": [
            {
                "asset_id": "orders",
                "name": "Orders",
                "schema_dir": "models/orders",
                "data_sources": {"default": source},
            }
        ]
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path
