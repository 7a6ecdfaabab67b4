"""Loading and validating the model registry (SPEC §6), and resolving credentials."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.errors import ConfigError
from broker.models import CredentialError, Registry, load_registry, model_files, schema_hash

REPO = Path(__file__).resolve().parent.parent
ORDERS_YML = b"cubes:\n  - name: orders\n    sql_table: public.orders\n"

BASE_MODEL: dict[str, Any] = {
    "asset_id": "orders",
    "name": "Orders",
    "schema_dir": "models/orders",
    "data_sources": {
        "default": {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "database": "shop",
            "user": "analytics",
            "password": "${ORDERS_DB_PASSWORD}",
        }
    },
}


def write_registry(root: Path, models: list[dict[str, Any]] | str) -> Path:
    """``root/registry.yaml`` holding ``models`` (or raw text), plus the orders model files."""
    (root / "models" / "orders").mkdir(parents=True, exist_ok=True)
    (root / "models" / "orders" / "orders.yml").write_bytes(ORDERS_YML)
    text = models if isinstance(models, str) else yaml.safe_dump({"models": models})
    path = root / "registry.yaml"
    path.write_text(text)
    return path


def load_one(root: Path, **changes: Any) -> Registry:
    model = copy.deepcopy(BASE_MODEL)
    model.update(changes)
    return load_registry(write_registry(root, [model]))


def source(model: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = model["data_sources"]["default"]
    return result


# ---------------------------------------------------------------- valid registries


@pytest.mark.parametrize(
    ("relpath", "port"), [("config/models.yaml", 5433), ("tests/data/models.yaml", 5432)]
)
def test_shipped_registries_load(relpath: str, port: int) -> None:
    registry = load_registry(REPO / relpath)

    orders = registry.get("orders")
    assert orders is not None
    assert orders.name == "Orders"
    assert [f.path for f in orders.files] == ["orders.yml"]
    assert "sql_table: public.orders" in orders.files[0].text
    expected = schema_hash(
        (relpath, real.read_bytes()) for relpath, real in model_files(orders.schema_dir)
    )
    assert orders.schema_hash == expected
    default = orders.data_sources["default"]
    assert (default.type, default.host, default.port) == ("postgres", "127.0.0.1", port)
    assert (default.database, default.user) == ("shop", "analytics")


def test_models_keep_file_order_and_unknown_ids_give_none(tmp_path: Path) -> None:
    models = [dict(BASE_MODEL, asset_id=name) for name in ["zeta", "alpha", "mid_1-x"]]
    registry = load_registry(write_registry(tmp_path, models))

    assert [m.asset_id for m in registry] == ["zeta", "alpha", "mid_1-x"]
    assert list(registry.models) == ["zeta", "alpha", "mid_1-x"]
    assert len(registry) == 3
    assert registry.get("nope") is None
    assert registry.path == tmp_path / "registry.yaml"


def test_empty_model_list_is_valid(tmp_path: Path) -> None:
    assert len(load_registry(write_registry(tmp_path, "models: []\n"))) == 0


def test_model_carries_files_and_their_hash(tmp_path: Path) -> None:
    (tmp_path / "models" / "orders" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "orders" / "sub" / "items.js").write_bytes(b"cube(`items`, {});\n")
    orders = load_one(tmp_path).get("orders")

    assert orders is not None
    assert orders.schema_dir == tmp_path / "models/orders"
    assert [(f.path, f.content) for f in orders.files] == [
        ("orders.yml", ORDERS_YML),
        ("sub/items.js", b"cube(`items`, {});\n"),
    ]
    assert orders.schema_hash == schema_hash((f.path, f.content) for f in orders.files)


def test_missing_environment_variable_is_not_a_load_error(tmp_path: Path) -> None:
    model = copy.deepcopy(BASE_MODEL)
    source(model)["password"] = "pre${SURELY_NOT_SET_ANYWHERE_42}post"

    assert load_registry(write_registry(tmp_path, [model])).get("orders") is not None


def test_absolute_schema_dir_inside_the_registry_folder_is_fine(tmp_path: Path) -> None:
    registry = load_one(tmp_path, schema_dir=str(tmp_path / "models" / "orders"))

    assert registry.get("orders") is not None


def test_registry_file_may_be_a_configmap_link(tmp_path: Path) -> None:
    """Relative paths start from the link's folder, not from the hidden target folder."""
    path = write_registry(tmp_path / "mount" / "..2026_01_01", [BASE_MODEL])
    (tmp_path / "mount" / "..data").symlink_to("..2026_01_01")
    (tmp_path / "mount" / "models.yaml").symlink_to("..data/registry.yaml")
    (tmp_path / "mount" / "models").symlink_to("..data/models")

    registry = load_registry(tmp_path / "mount" / "models.yaml")
    orders = registry.get("orders")

    assert orders is not None
    assert orders.schema_dir == tmp_path / "mount" / "models" / "orders"
    assert orders.schema_hash == load_registry(path).models["orders"].schema_hash


def test_extra_data_source_options_pass_through(tmp_path: Path) -> None:
    model = copy.deepcopy(BASE_MODEL)
    source(model).update(ssl={"rejectUnauthorized": False}, schema="public", maxPool=4)
    orders = load_registry(write_registry(tmp_path, [model])).get("orders")
    assert orders is not None

    config = orders.data_sources["default"].resolve({"ORDERS_DB_PASSWORD": "pw"})

    assert config == {
        "type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "database": "shop",
        "user": "analytics",
        "password": "pw",
        "ssl": {"rejectUnauthorized": False},
        "schema": "public",
        "maxPool": 4,
    }


# ---------------------------------------------------------------- invalid registries

Mutation = Callable[[Path, dict[str, Any]], "list[Any] | None"]


def _escaping_file_link(root: Path, model: dict[str, Any]) -> None:
    (root / "elsewhere.yml").write_text("cubes: []\n")
    (root / "models" / "orders" / "evil.yml").symlink_to(root / "elsewhere.yml")


def _escaping_folder_link(root: Path, model: dict[str, Any]) -> None:
    (root / "elsewhere").mkdir()
    (root / "models" / "orders" / "shared").symlink_to("../../elsewhere")


def _schema_dir_link_out(root: Path, model: dict[str, Any]) -> None:
    (root.parent / "outside_models").mkdir(exist_ok=True)
    (root / "models" / "linked").symlink_to(root.parent / "outside_models")
    model["schema_dir"] = "models/linked"


def _schema_dir_absolute_out(root: Path, model: dict[str, Any]) -> None:
    (root.parent / "outside_models").mkdir(exist_ok=True)
    model["schema_dir"] = str(root.parent / "outside_models")


def _schema_dir_dotdot(root: Path, model: dict[str, Any]) -> None:
    (root.parent / "outside_models").mkdir(exist_ok=True)
    model["schema_dir"] = "../outside_models"


def _schema_dir_is_file(root: Path, model: dict[str, Any]) -> None:
    model["schema_dir"] = "models/orders/orders.yml"


def _password_file_missing(root: Path, model: dict[str, Any]) -> None:
    del source(model)["password"]
    source(model)["password_file"] = "secrets/missing"


def _password_file_is_folder(root: Path, model: dict[str, Any]) -> None:
    (root / "secrets").mkdir()
    del source(model)["password"]
    source(model)["password_file"] = str(root / "secrets")


def _both_passwords(root: Path, model: dict[str, Any]) -> None:
    (root / "pw").write_text("x")
    source(model)["password_file"] = "pw"


def _set(key: str, value: object) -> Mutation:
    def mutate(root: Path, model: dict[str, Any]) -> None:
        model[key] = value

    return mutate


def _drop(key: str) -> Mutation:
    def mutate(root: Path, model: dict[str, Any]) -> None:
        del model[key]

    return mutate


def _set_source(key: str, value: object) -> Mutation:
    def mutate(root: Path, model: dict[str, Any]) -> None:
        source(model)[key] = value

    return mutate


def _drop_source(key: str) -> Mutation:
    def mutate(root: Path, model: dict[str, Any]) -> None:
        del source(model)[key]

    return mutate


def _non_utf8_model_file(root: Path, model: dict[str, Any]) -> None:
    (root / "models" / "orders" / "latin1.yml").write_bytes(b"# caf\xe9\n")


INVALID: list[tuple[str, Mutation, str, str]] = [
    ("bad asset_id", _set("asset_id", "bad id"), "model 'bad id'", "asset_id: must be"),
    ("long asset_id", _set("asset_id", "x" * 65), "model 'xxxx", "asset_id: must be"),
    ("no asset_id", _drop("asset_id"), "model #1", "asset_id: missing"),
    ("number asset_id", _set("asset_id", 12), "model #1", "asset_id: missing or not a string"),
    (
        "duplicate asset_id",
        lambda root, model: [model, dict(model)],
        "model 'orders'",
        "asset_id: duplicate (model #2)",
    ),
    ("no name", _drop("name"), "model 'orders'", "name: missing"),
    ("empty name", _set("name", "  "), "model 'orders'", "name: missing"),
    ("no schema_dir", _drop("schema_dir"), "model 'orders'", "schema_dir: missing"),
    ("schema_dir missing", _set("schema_dir", "models/nope"), "model 'orders'", "does not exist"),
    ("schema_dir a file", _schema_dir_is_file, "model 'orders'", "is not a directory"),
    ("schema_dir ..", _schema_dir_dotdot, "model 'orders'", "schema_dir: ../outside_models leaves"),
    ("schema_dir absolute", _schema_dir_absolute_out, "model 'orders'", "leaves the registry"),
    ("schema_dir link out", _schema_dir_link_out, "model 'orders'", "resolves outside"),
    (
        "file link out",
        _escaping_file_link,
        "model 'orders'",
        "schema_dir: models/orders/evil.yml: symlink points outside",
    ),
    (
        "folder link out",
        _escaping_folder_link,
        "model 'orders'",
        "schema_dir: models/orders/shared: symlink points outside",
    ),
    ("non-utf8 file", _non_utf8_model_file, "model 'orders'", "latin1.yml: not valid UTF-8"),
    ("data_sources list", _set("data_sources", ["default"]), "model 'orders'", "data_sources: "),
    ("data_sources empty", _set("data_sources", {}), "model 'orders'", "data_sources: must be"),
    ("data_sources absent", _drop("data_sources"), "model 'orders'", "data_sources: must be"),
    (
        "source not mapping",
        _set("data_sources", {"default": "postgres://x"}),
        "model 'orders'",
        "data_sources.default: must be a mapping",
    ),
    ("port string", _set_source("port", "5432"), "model 'orders'", "data_sources.default.port:"),
    ("port zero", _set_source("port", 0), "model 'orders'", "data_sources.default.port:"),
    ("port too big", _set_source("port", 65536), "model 'orders'", "data_sources.default.port:"),
    ("port bool", _set_source("port", True), "model 'orders'", "data_sources.default.port:"),
    ("no port", _drop_source("port"), "model 'orders'", "data_sources.default.port:"),
    ("no type", _drop_source("type"), "model 'orders'", "data_sources.default.type:"),
    ("empty type", _set_source("type", ""), "model 'orders'", "data_sources.default.type:"),
    ("host number", _set_source("host", 10), "model 'orders'", "data_sources.default.host:"),
    ("no database", _drop_source("database"), "model 'orders'", "data_sources.default.database:"),
    ("no user", _drop_source("user"), "model 'orders'", "data_sources.default.user:"),
    (
        "both passwords",
        _both_passwords,
        "model 'orders'",
        "data_sources.default.password: give exactly one",
    ),
    (
        "no password",
        _drop_source("password"),
        "model 'orders'",
        "data_sources.default.password: give exactly one",
    ),
    (
        "password number",
        _set_source("password", 1234),
        "model 'orders'",
        "data_sources.default.password: must be a string",
    ),
    (
        "unclosed reference",
        _set_source("password", "${ORDERS_DB_PASSWORD"),
        "model 'orders'",
        "data_sources.default.password: malformed reference",
    ),
    (
        "empty reference",
        _set_source("password", "s3cr3t-${}"),
        "model 'orders'",
        "data_sources.default.password: malformed reference",
    ),
    (
        "bad reference name",
        _set_source("password", "${1ABC}"),
        "model 'orders'",
        "data_sources.default.password: malformed reference",
    ),
    (
        "password_file missing",
        _password_file_missing,
        "model 'orders'",
        "data_sources.default.password_file: cannot read ",
    ),
    (
        "password_file folder",
        _password_file_is_folder,
        "model 'orders'",
        "data_sources.default.password_file: cannot read ",
    ),
    (
        "option not plain",
        _set_source("connect_at", datetime.date(2024, 1, 1)),
        "model 'orders'",
        "data_sources.default.connect_at: must be a plain YAML value",
    ),
    ("unknown model key", _set("colour", "red"), "model 'orders'", "colour: unknown key"),
    (
        "model not mapping",
        lambda root, model: ["orders"],
        "model #1",
        "must be a mapping",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "model_label", "expected"),
    [pytest.param(m, label, e, id=i) for i, m, label, e in INVALID],
)
def test_invalid_model_is_one_line_naming_file_model_and_field(
    tmp_path: Path, mutate: Mutation, model_label: str, expected: str
) -> None:
    root = tmp_path / "config"
    model = copy.deepcopy(BASE_MODEL)
    write_registry(root, [])
    models = mutate(root, model)
    text = yaml.safe_dump({"models": models if models is not None else [model]})
    path = write_registry(root, text)

    with pytest.raises(ConfigError) as info:
        load_registry(path)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {model_label}")
    assert expected in message
    assert "s3cr3t" not in message


def test_password_file_error_names_the_file(tmp_path: Path) -> None:
    model = copy.deepcopy(BASE_MODEL)
    _password_file_missing(tmp_path, model)

    with pytest.raises(ConfigError, match=r"secrets/missing: No such file"):
        load_registry(write_registry(tmp_path, [model]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [\n", "invalid YAML"),
        ("models:\n  - asset_id: a\n    asset_id: b\n", "invalid YAML: duplicate key 'asset_id'"),
        ("", "must be a mapping with a 'models' list"),
        ("- a\n- b\n", "must be a mapping with a 'models' list"),
        ("models: {}\n", "models: must be a list"),
        ("model: []\n", "model: unknown top-level key"),
        ("models: []\nversion: 2\nextra: 1\n", "extra, version: unknown top-level key"),
    ],
)
def test_invalid_document_is_one_line_naming_the_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_registry(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_registry(path)

    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write_registry(tmp_path, "models:\n  - asset_id: a\n     name: b\n")

    with pytest.raises(ConfigError, match=r"invalid YAML: .*\(line 3, column \d+\)$"):
        load_registry(path)


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load_registry(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- credentials


def test_password_reference_is_read_at_call_time(tmp_path: Path) -> None:
    model = copy.deepcopy(BASE_MODEL)
    source(model)["password"] = "pre${A}mid${B_2}post"
    orders = load_registry(write_registry(tmp_path, [model])).get("orders")
    assert orders is not None
    default = orders.data_sources["default"]

    assert default.resolve({"A": "1", "B_2": "2"})["password"] == "pre1mid2post"
    assert default.resolve({"A": "x", "B_2": "y"})["password"] == "prexmidypost"


def test_literal_password_is_served_as_is_and_hidden_from_repr(tmp_path: Path) -> None:
    orders = load_one(
        tmp_path, data_sources={"default": {**source(BASE_MODEL), "password": "lit$"}}
    )
    default = orders.models["orders"].data_sources["default"]

    assert default.resolve({})["password"] == "lit$"
    assert "lit$" not in repr(default)
    assert "lit$" not in repr(orders.models["orders"])


def test_missing_variable_is_a_credential_error_without_secrets(tmp_path: Path) -> None:
    model = copy.deepcopy(BASE_MODEL)
    source(model)["password"] = "s3cr3t${MISSING_VAR}"
    orders = load_registry(write_registry(tmp_path, [model])).get("orders")
    assert orders is not None

    with pytest.raises(CredentialError) as info:
        orders.data_sources["default"].resolve({"OTHER": "s3cr3t-other"})

    message = str(info.value)
    assert "'orders'" in message
    assert "'default'" in message
    assert "MISSING_VAR" in message
    assert "s3cr3t" not in message


def test_password_file_is_reread_after_it_changes(tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "password"
    secret.parent.mkdir()
    secret.write_text("first-s3cr3t\n")
    model = copy.deepcopy(BASE_MODEL)
    del source(model)["password"]
    source(model)["password_file"] = "secrets/password"
    orders = load_registry(write_registry(tmp_path, [model])).get("orders")
    assert orders is not None
    default = orders.data_sources["default"]
    assert default.password_file == tmp_path / "secrets" / "password"

    assert default.resolve({})["password"] == "first-s3cr3t"
    secret.write_text("second-s3cr3t")
    assert default.resolve({})["password"] == "second-s3cr3t"

    secret.unlink()
    with pytest.raises(CredentialError) as info:
        default.resolve({})
    assert str(secret) in str(info.value)
    assert "'orders'" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_unresolved_credentials_name_each_unset_variable_and_missing_file(
    tmp_path: Path,
) -> None:
    """What ``check-config`` warns about: every reference ``resolve`` would fail on now."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "password").write_text("s3cr3t-file\n")
    model = copy.deepcopy(BASE_MODEL)
    model["data_sources"] = {
        "default": {**source(BASE_MODEL), "password": "${A}-${B}-${A}"},
        "literal": {**source(BASE_MODEL), "password": "s3cr3t-literal"},
        "filed": {**{k: v for k, v in source(BASE_MODEL).items() if k != "password"},
                  "password_file": "secrets/password"},
    }  # fmt: skip
    registry = load_registry(write_registry(tmp_path, [model]))
    default = registry.models["orders"].data_sources["default"]

    assert default.variables == ("A", "B")
    assert registry.unresolved_credentials({"A": "1", "B": "2"}) == []
    assert registry.unresolved_credentials({"B": "s3cr3t-b"}) == [
        "model 'orders': data source 'default': environment variable A is not set"
    ]
    (tmp_path / "secrets" / "password").unlink()
    problems = registry.unresolved_credentials({})
    assert problems[:2] == [
        "model 'orders': data source 'default': environment variable A is not set",
        "model 'orders': data source 'default': environment variable B is not set",
    ]
    [filed] = problems[2:]
    assert filed.startswith("model 'orders': data source 'filed': password_file ")
    assert str(tmp_path / "secrets" / "password") in filed
    assert "s3cr3t" not in " ".join(problems)
