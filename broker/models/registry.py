"""The semantic-model registry (SPEC §6): the YAML file, its validation and its models.

:func:`load_registry` reads the registry and every model file, so a :class:`Registry`
is a complete, immutable snapshot: serving a request never touches the disk except to
resolve a ``password_file`` (read at call time so a rotated secret is served without a
restart). Every problem is a :class:`~broker.errors.ConfigError` with one line of the
form ``{file}: model {asset_id!r}: {field}: {what is wrong}`` and never a secret.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from broker.errors import ConfigError, NotFound
from broker.models.data_source import REFERENCE_RE, DataSource, describe
from broker.models.schema_hash import SchemaDirError, model_files, schema_hash

ASSET_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOP_LEVEL_KEYS = frozenset({"models"})
_MODEL_KEYS = frozenset({"asset_id", "name", "schema_dir", "data_sources"})
_SOURCE_STRINGS = ("type", "host", "database", "user")


@dataclass(frozen=True)
class ModelFile:
    """A model file: its POSIX path relative to ``schema_dir`` and its content."""

    path: str
    content: bytes = field(repr=False)

    @property
    def text(self) -> str:
        """The content as text; checked to be UTF-8 when the registry was loaded."""
        return self.content.decode("utf-8")


@dataclass(frozen=True)
class SemanticModel:
    """One model: identity, data sources and the files Cube compiles, with their hash.

    ``schema_dir`` is the configured folder (absolute, symlinks not resolved, so a
    ConfigMap update that swaps the link target is followed on reload).
    """

    asset_id: str
    name: str
    schema_dir: Path
    data_sources: Mapping[str, DataSource]
    schema_hash: str
    files: tuple[ModelFile, ...] = field(repr=False)

    def data_source(self, name: str) -> DataSource | None:
        return self.data_sources.get(name)


class Registry:
    """An immutable snapshot of the registry file: models by asset ID, in file order."""

    def __init__(self, path: Path, models: Mapping[str, SemanticModel]) -> None:
        self.path = path
        self.models: Mapping[str, SemanticModel] = MappingProxyType(dict(models))

    def get(self, asset_id: str) -> SemanticModel | None:
        return self.models.get(asset_id)

    def require(self, asset_id: str) -> SemanticModel:
        """The model ``asset_id``; ``NotFound`` when there is none. Only IDs of
        ``[A-Za-z0-9_-]{1,64}`` are ever loaded, so ``..``, slashes and absolute paths
        name nothing: they are not in the mapping, which is all that is asked."""
        model = self.models.get(asset_id)
        if model is None:
            raise NotFound("No semantic model with this asset ID.")
        return model

    def unresolved_credentials(self, environ: Mapping[str, str]) -> list[str]:
        """Every data source's :meth:`DataSource.unresolved` in ``environ``, in file order:
        one message per unset password variable or unreadable ``password_file``, naming
        the model, the data source and the variable or file (never a value)."""
        return [
            problem
            for model in self
            for source in model.data_sources.values()
            for problem in source.unresolved(environ)
        ]

    def __iter__(self) -> Iterator[SemanticModel]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r}, models={list(self.models)!r})"


def load_registry(path: Path) -> Registry:
    """Read, validate and hash the registry at ``path`` and every model file it names.

    Relative ``schema_dir`` and ``password_file`` values are taken from the folder of
    ``path`` (not of its symlink target). Environment variables named in passwords are
    not needed now; they are resolved by :meth:`DataSource.resolve`. Raises
    :class:`ConfigError` (one line) for the first problem found.
    """
    path = path.absolute()
    document = _read_yaml(path)
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: must be a mapping with a 'models' list")
    unknown = sorted(map(str, document.keys() - _TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"{path}: {', '.join(unknown)}: unknown top-level key (allowed: models)")
    entries = document.get("models")
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: models: must be a list of models")
    models: dict[str, SemanticModel] = {}
    for index, entry in enumerate(entries, start=1):
        model = _Loader(path, index).model(entry)
        if model.asset_id in models:
            raise ConfigError(
                f"{path}: model {model.asset_id!r}: asset_id: duplicate (model #{index})"
            )
        models[model.asset_id] = model
    return Registry(path, models)


class _Loader:
    """Validates one model entry; ``fail`` builds the one-line error for a field."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.folder = path.parent
        self.label = f"#{index}"

    def fail(self, field_name: str, what: str) -> ConfigError:
        return ConfigError(_one_line(f"{self.path}: model {self.label}: {field_name}: {what}"))

    def model(self, entry: object) -> SemanticModel:
        if not isinstance(entry, dict):
            raise ConfigError(f"{self.path}: model {self.label}: must be a mapping")
        asset_id = entry.get("asset_id")
        if not isinstance(asset_id, str):
            raise self.fail("asset_id", "missing or not a string")
        if not ASSET_ID_RE.fullmatch(asset_id):
            self.label = repr(asset_id)
            raise self.fail("asset_id", "must be 1-64 characters of A-Z a-z 0-9 _ -")
        self.label = repr(asset_id)
        unknown = sorted(map(str, entry.keys() - _MODEL_KEYS))
        if unknown:
            allowed = ", ".join(sorted(_MODEL_KEYS))
            raise self.fail(", ".join(unknown), f"unknown key (allowed: {allowed})")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail("name", "missing or not a non-empty string")
        schema_dir = self.schema_dir(entry.get("schema_dir"))
        files = self.files(schema_dir, str(entry["schema_dir"]))
        return SemanticModel(
            asset_id=asset_id,
            name=name,
            schema_dir=schema_dir,
            data_sources=MappingProxyType(self.data_sources(asset_id, entry.get("data_sources"))),
            schema_hash=schema_hash((f.path, f.content) for f in files),
            files=files,
        )

    def schema_dir(self, value: object) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail("schema_dir", "missing or not a non-empty string")
        configured = self.folder / value
        if not _inside(os.path.normpath(configured), os.path.normpath(self.folder)):
            raise self.fail("schema_dir", f"{value} leaves the registry folder {self.folder}")
        try:
            real = configured.resolve()
            real_folder = self.folder.resolve()
        except (OSError, RuntimeError) as exc:
            raise self.fail("schema_dir", f"{value}: cannot resolve: {describe(exc)}") from None
        if not real.is_relative_to(real_folder):
            raise self.fail(
                "schema_dir", f"{value} resolves outside the registry folder (-> {real})"
            )
        try:
            is_dir = stat.S_ISDIR(configured.stat().st_mode)
        except FileNotFoundError:
            raise self.fail("schema_dir", f"{configured} does not exist") from None
        except OSError as exc:
            raise self.fail("schema_dir", f"{configured}: {describe(exc)}") from None
        if not is_dir:
            raise self.fail("schema_dir", f"{configured} is not a directory")
        return configured

    def files(self, schema_dir: Path, shown: str) -> tuple[ModelFile, ...]:
        try:
            found = model_files(schema_dir)
        except SchemaDirError as exc:
            where = posixpath.join(shown, exc.relpath) if exc.relpath else shown
            raise self.fail("schema_dir", f"{where}: {exc.reason}") from None
        files = []
        for relpath, real in found:
            where = posixpath.join(shown, relpath)
            try:
                content = real.read_bytes()
            except OSError as exc:
                raise self.fail("schema_dir", f"{where}: cannot read: {describe(exc)}") from None
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("schema_dir", f"{where}: not valid UTF-8") from None
            files.append(ModelFile(relpath, content))
        return tuple(files)

    def data_sources(self, asset_id: str, value: object) -> dict[str, DataSource]:
        if not isinstance(value, dict) or not value:
            raise self.fail("data_sources", "must be a non-empty mapping of name to data source")
        return {name: self.data_source(asset_id, name, spec) for name, spec in value.items()}

    def data_source(self, asset_id: str, name: object, spec: object) -> DataSource:
        if not isinstance(name, str) or not name:
            raise self.fail(f"data_sources.{name}", "name must be a non-empty string")
        prefix = f"data_sources.{name}"
        if not isinstance(spec, dict):
            raise self.fail(prefix, "must be a mapping")
        options = dict(spec)
        strings: dict[str, str] = {}
        for key in _SOURCE_STRINGS:
            item = options.pop(key, None)
            if not isinstance(item, str) or (key == "type" and not item):
                kind = "a non-empty string" if key == "type" else "a string"
                raise self.fail(f"{prefix}.{key}", f"missing or not {kind}")
            strings[key] = item
        port = options.pop("port", None)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise self.fail(f"{prefix}.port", "missing or not an integer in 1..65535")
        password, password_file = self.password(prefix, options)
        for key, item in options.items():
            if not isinstance(key, str) or not _plain(item):
                raise self.fail(f"{prefix}.{key}", "must be a plain YAML value")
        return DataSource(
            asset_id=asset_id,
            name=name,
            type=strings["type"],
            host=strings["host"],
            port=port,
            database=strings["database"],
            user=strings["user"],
            password=password,
            password_file=password_file,
            options=MappingProxyType(options),
        )

    def password(self, prefix: str, options: dict[Any, Any]) -> tuple[str | None, Path | None]:
        """Pop and check ``password`` / ``password_file``; exactly one must be there."""
        has_password, has_file = "password" in options, "password_file" in options
        password, password_file = options.pop("password", None), options.pop("password_file", None)
        if has_password == has_file:
            raise self.fail(f"{prefix}.password", "give exactly one of password, password_file")
        if has_password:
            if not isinstance(password, str):
                raise self.fail(f"{prefix}.password", "must be a string")
            if password.count("${") != len(REFERENCE_RE.findall(password)):
                raise self.fail(
                    f"{prefix}.password", "malformed reference: write ${NAME}, NAME of A-Z 0-9 _"
                )
            return password, None
        if not isinstance(password_file, str) or not password_file:
            raise self.fail(f"{prefix}.password_file", "must be a non-empty string")
        file = self.folder / password_file
        try:
            with file.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise self.fail(
                f"{prefix}.password_file", f"cannot read {file}: {describe(exc)}"
            ) from None
        return None, file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping instead of keeping the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read: {describe(exc)} (the model registry, set by BROKER_MODELS)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = " ".join(filter(None, [exc.context, exc.problem]))
        raise ConfigError(f"{path}: invalid YAML: {_one_line(what)}{where}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _plain(value: object) -> bool:
    """True for JSON-compatible values: what Cube's driver config can receive."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines())
