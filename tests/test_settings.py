"""Settings: env over file over defaults, one clear line per bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from broker.errors import ConfigError
from broker.settings import Settings

BASE = {"CUBEJS_API_SECRET": "s" * 32, "BROKER_CALLBACK_SECRET": "c" * 16}


def test_defaults() -> None:
    s = Settings.load(BASE)
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.public_url == "http://127.0.0.1:8080"
    assert s.cube_url == "http://127.0.0.1:4000"
    assert s.store_url == "sqlite:///./var/broker.db"
    assert s.models_path == Path("config/models.yaml")
    assert (s.token_ttl, s.token_min_remaining) == (3600, 300)
    assert s.admin_key is None and s.trusted_proxies == () and s.cors_origins == ()
    assert (s.log_format, s.query_timeout, s.shutdown_grace) == ("json", 60.0, 30.0)


def test_public_url_follows_host_and_port() -> None:
    s = Settings.load({**BASE, "BROKER_HOST": "10.1.2.3", "BROKER_PORT": "9000"})
    assert s.public_url == "http://10.1.2.3:9000"
    s = Settings.load({**BASE, "BROKER_HOST": "::1", "BROKER_PORT": "9000"})
    assert s.public_url == "http://[::1]:9000"
    s = Settings.load({**BASE, "BROKER_PUBLIC_URL": "https://broker.example.com/"})
    assert s.public_url == "https://broker.example.com"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "0:0::0"])
def test_an_unspecified_host_needs_a_public_url(host: str) -> None:
    """Bound to every address, the broker cannot know the URL dashboards use: a default
    would hand them ``cube_url: http://0.0.0.0:8080/cubejs-api/v1``."""
    with pytest.raises(ConfigError) as exc:
        Settings.load({**BASE, "BROKER_HOST": host})
    message = str(exc.value)
    assert message.startswith("BROKER_PUBLIC_URL:") and "\n" not in message
    assert "BROKER_HOST" in message
    s = Settings.load({**BASE, "BROKER_HOST": host, "BROKER_PUBLIC_URL": "https://b.example"})
    assert (s.host, s.public_url) == (host, "https://b.example")


def test_secrets_are_masked() -> None:
    s = Settings.load({**BASE, "ATHENA_KEY_12": "a" * 20})
    assert "s" * 32 not in repr(s) and "a" * 20 not in repr(s)
    assert s.admin_key is not None and s.admin_key.reveal() == "a" * 20
    assert s.api_secret.matches("s" * 32) and not s.api_secret.matches("s" * 31)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CUBEJS_API_SECRET": ""}, "CUBEJS_API_SECRET"),
        ({"CUBEJS_API_SECRET": "short"}, "CUBEJS_API_SECRET"),
        ({"CUBEJS_API_SECRETS": "x" * 40 + ",short"}, "CUBEJS_API_SECRETS"),
        ({"BROKER_CALLBACK_SECRET": ""}, "BROKER_CALLBACK_SECRET"),
        ({"BROKER_PORT": "http"}, "BROKER_PORT"),
        ({"BROKER_PORT": "70000"}, "BROKER_PORT"),
        ({"BROKER_STORE": "postgres://x"}, "BROKER_STORE"),
        ({"BROKER_STORE": "sqlite://relative.db"}, "BROKER_STORE"),
        ({"BROKER_STORE": "redis://"}, "BROKER_STORE"),
        ({"BROKER_STORE": "redis://host:99999/0"}, "BROKER_STORE"),
        ({"BROKER_STORE": "redis://host:6379/abc"}, "BROKER_STORE"),
        ({"BROKER_LOG_FORMAT": "xml"}, "BROKER_LOG_FORMAT"),
        ({"BROKER_TOKEN_TTL": "4"}, "BROKER_TOKEN_TTL"),
        ({"BROKER_TOKEN_TTL": "86401"}, "BROKER_TOKEN_TTL"),
        (
            {"BROKER_TOKEN_TTL": "600", "BROKER_TOKEN_MIN_REMAINING": "600"},
            "BROKER_TOKEN_MIN_REMAINING",
        ),
        ({"BROKER_TOKEN_MIN_REMAINING": "-1"}, "BROKER_TOKEN_MIN_REMAINING"),
        ({"BROKER_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "BROKER_TRUSTED_PROXIES"),
        ({"BROKER_CORS_ORIGINS": "dash.example.com"}, "BROKER_CORS_ORIGINS"),
        ({"BROKER_CUBE_URL": "ftp://cube"}, "BROKER_CUBE_URL"),
        ({"BROKER_QUERY_TIMEOUT": "0"}, "BROKER_QUERY_TIMEOUT"),
        ({"BROKER_SHUTDOWN_GRACE": "soon"}, "BROKER_SHUTDOWN_GRACE"),
        ({"ATHENA_KEY_12": "short"}, "ATHENA_KEY_12"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.load({**BASE, **env})
    message = str(exc.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message
    assert "s" * 32 not in message


def test_lists_and_ttl_bounds() -> None:
    s = Settings.load(
        {
            **BASE,
            "BROKER_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "BROKER_CORS_ORIGINS": "https://a.example.com,http://localhost:3000",
            "BROKER_TOKEN_TTL": "60",
        }
    )
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert s.cors_origins == ("https://a.example.com", "http://localhost:3000")
    assert s.token_min_remaining == 30


def test_file_under_env(tmp_path: Path) -> None:
    cfg = tmp_path / "broker.yaml"
    cfg.write_text(
        "broker_port: 9001\nbroker_host: 0.0.0.0\ncubejs_api_secret: " + "f" * 40 + "\n"
        "broker_callback_secret: " + "g" * 20 + "\nbroker_trusted_proxies: [10.0.0.0/8]\n"
        "broker_public_url: https://broker.example.com\n"
    )
    s = Settings.load({"BROKER_PORT": "9002"}, config_file=cfg)
    assert s.port == 9002 and s.host == "0.0.0.0"
    assert s.api_secret.reveal() == "f" * 40
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("broker_colour: red\n", r"unknown setting 'broker_colour'"),
        ("[1, 2]\n", r"must be a mapping"),
        ("broker_port: [\n", r"not valid YAML"),
    ],
)
def test_bad_file(tmp_path: Path, content: str, pattern: str) -> None:
    cfg = tmp_path / "broker.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=re.compile(rf"^{re.escape(str(cfg))}: .*{pattern}")):
        Settings.load(BASE, config_file=cfg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(BASE, config_file=tmp_path / "nope.yaml")


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for var in Settings.variables():
        for name in var.names:
            assert f"`{name}`" in readme, name


def test_the_k8s_deployment_binds_every_address_with_a_public_url() -> None:
    """The manifest's literal broker settings (secrets added) load: it binds ``0.0.0.0``
    and therefore sets ``BROKER_PUBLIC_URL``."""
    manifest = Path(__file__).parent.parent / "deploy" / "k8s" / "deployment.yaml"
    pod = yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]
    [broker] = [c for c in pod["containers"] if c["name"] == "broker"]
    env = {e["name"]: e["value"] for e in broker["env"] if "value" in e}
    s = Settings.load({**BASE, **env})
    assert s.host == "0.0.0.0" and s.public_url == env["BROKER_PUBLIC_URL"]
    with pytest.raises(ConfigError, match=r"^BROKER_PUBLIC_URL:"):
        Settings.load({**BASE, **{k: v for k, v in env.items() if k != "BROKER_PUBLIC_URL"}})
