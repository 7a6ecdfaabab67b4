"""Semantic models (SPEC §6): the registry, the schema hash and hot reload."""

from __future__ import annotations

from broker.models.data_source import CredentialError, DataSource
from broker.models.registry import (
    ModelFile,
    Registry,
    SemanticModel,
    load_registry,
)
from broker.models.schema_hash import SchemaDirError, model_files, schema_hash
from broker.models.watcher import RegistryWatcher, fingerprint

__all__ = [
    "CredentialError",
    "DataSource",
    "ModelFile",
    "Registry",
    "RegistryWatcher",
    "SchemaDirError",
    "SemanticModel",
    "fingerprint",
    "load_registry",
    "model_files",
    "schema_hash",
]
