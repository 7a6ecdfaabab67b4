"""The cube-broker command line, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import broker
from broker.errors import Unauthorized
from broker.keys.admin import KeyAdmin
from broker.keys.cache import KeyCache
from broker.keys.validation import validate_create
from broker.keys.verify import KeyVerifier
from broker.store import open_store
from tests.harness import DATA, REPO
from tests.harness.cli import cli, cli_env
from tests.harness.keys import create_key_at
from tests.harness.ports import free_port
from tests.harness.settings import ADMIN_KEY, API_SECRET, CALLBACK_SECRET
from tests.harness.waiting import refused_within, wait_until


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def test_check_config_ok(env: dict[str, str]) -> None:
    result = cli(env, "check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "listening" not in result.stdout  # it does not listen
    sqlite_path = Path(env["BROKER_STORE"].removeprefix("sqlite:///"))
    assert "does not exist yet" in result.stdout and str(sqlite_path) in result.stdout
    assert not sqlite_path.parent.exists()  # checked, not created
    assert cli(env, "keys", "create", "--name", "k").returncode == 0
    result = cli(env, "check-config")
    assert result.returncode == 0, result.stderr
    assert "store sqlite answers" in result.stdout


def test_check_config_warns_about_an_unset_password_variable(env: dict[str, str]) -> None:
    """The shipped registry's data source reads ``${ORDERS_DB_PASSWORD}`` when Cube asks:
    unset, check-config still passes (the status is unchanged) but says so on stderr."""
    env = {**env, "BROKER_MODELS": str(REPO / "config" / "models.yaml")}
    result = cli(env, "check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    [line] = result.stderr.splitlines()
    assert line == (
        "cube-broker: warning: model 'orders': data source 'default': "
        "environment variable ORDERS_DB_PASSWORD is not set"
    )

    result = cli({**env, "ORDERS_DB_PASSWORD": "s3cr3t"}, "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "s3cr3t" not in result.stdout


def test_check_config_pings_redis(env: dict[str, str], redis_url: str) -> None:
    result = cli({**env, "BROKER_STORE": redis_url}, "check-config")
    assert result.returncode == 0, result.stderr
    assert "store redis answers" in result.stdout


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("store", "status"),
    [
        ("redis://127.0.0.1:1/0", 1),  # nothing listens
        ("redis://127.0.0.1:STALLED/0", 1),  # accepts, never answers
        ("sqlite:///TMP/not-a-db.sqlite", 1),  # a file that is no SQLite database
        ("sqlite:///TMP/a-file/broker.db", 2),  # its folder cannot be created
    ],
)
def test_check_config_fails_for_a_store_that_does_not_answer(
    env: dict[str, str], tmp_path: Path, stalled_port: int, store: str, status: int
) -> None:
    (tmp_path / "not-a-db.sqlite").write_text("not a database, " * 100)
    (tmp_path / "a-file").write_text("")
    url = store.replace("TMP", str(tmp_path)).replace("STALLED", str(stalled_port))
    started = time.monotonic()
    result = cli({**env, "BROKER_STORE": url}, "check-config")
    assert time.monotonic() - started < 10
    assert result.returncode == status, result.stdout
    [line] = result.stderr.splitlines()
    assert "BROKER_STORE" in line, line
    assert result.stdout == ""


@pytest.mark.parametrize(
    "verb",
    [
        ["keys", "list"],
        ["keys", "list", "--json"],
        ["keys", "show", "abcdefghijklmnop"],
        ["keys", "revoke", "abcdefghijklmnop"],
        ["keys", "update", "abcdefghijklmnop", "--inactive"],
        ["keys", "rotate", "abcdefghijklmnop"],
    ],
)
def test_key_verbs_refuse_a_sqlite_store_that_does_not_exist(
    env: dict[str, str], tmp_path: Path, verb: list[str]
) -> None:
    """Only ``serve`` and ``keys create`` make the store: a typo in BROKER_STORE (or
    another working directory) must not look like an empty store."""
    result = cli({**env, "BROKER_STORE": "sqlite:///var/broker.db"}, *verb, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "BROKER_STORE" in line and str(tmp_path / "var" / "broker.db") in line, line
    assert not (tmp_path / "var").exists()


_BAD_SETTINGS = [
    ({"CUBEJS_API_SECRET": "too-short"}, "CUBEJS_API_SECRET:"),
    ({"BROKER_STORE": "mysql://x"}, "BROKER_STORE:"),
    ({"BROKER_LOG_FORMAT": "yaml"}, "BROKER_LOG_FORMAT:"),
]
_BAD_REGISTRY = ({"BROKER_MODELS": "/nonexistent/models.yaml"}, "/nonexistent/models.yaml")


@pytest.mark.parametrize(
    ("verb", "override", "needle"),
    [
        *[(["check-config"], o, n) for o, n in [*_BAD_SETTINGS, _BAD_REGISTRY]],
        *[(["serve"], o, n) for o, n in [*_BAD_SETTINGS, _BAD_REGISTRY]],
        *[(["keys", "list"], o, n) for o, n in _BAD_SETTINGS],
    ],
)
def test_bad_config_stops_with_one_line(
    env: dict[str, str], verb: list[str], override: dict[str, str], needle: str
) -> None:
    result = cli({**env, **override}, *verb)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert API_SECRET not in result.stderr


def test_config_file_after_verb(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "broker.yaml"
    cfg.write_text(f"cubejs_api_secret: {API_SECRET}\nbroker_callback_secret: {CALLBACK_SECRET}\n")
    without = {
        k: v for k, v in env.items() if k not in ("CUBEJS_API_SECRET", "BROKER_CALLBACK_SECRET")
    }
    assert cli(without, "check-config").returncode == 2
    assert cli(without, "check-config", "--config", str(cfg)).returncode == 0


def test_keys_lifecycle(env: dict[str, str]) -> None:
    created = cli(env, "keys", "create", "--name", "first", "--right", "semantic_model.*",
                  "--client-name", "acme", "--ip-whitelist", "10.0.0.0/8")  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[0]
    assert key.startswith("ath_") and " " not in key
    public_id = key[4:20]

    doc = json.loads(cli(env, "keys", "create", "--name", "second", "--json").stdout)
    assert set(doc) == {"api_key", "record"} and doc["record"]["name"] == "second"

    listing = json.loads(cli(env, "keys", "list", "--json").stdout)
    assert [r["name"] for r in listing["keys"]] == ["first", "second"]
    assert listing["next_cursor"] is None
    assert key.split(".")[1] not in json.dumps(listing)

    shown = json.loads(cli(env, "keys", "show", public_id, "--json").stdout)
    assert shown["client_name"] == "acme" and shown["ip_whitelist"] == ["10.0.0.0/8"]
    assert json.loads(cli(env, "keys", "show", shown["id"], "--json").stdout) == shown

    assert cli(env, "keys", "revoke", shown["id"]).returncode == 0
    again = cli(env, "keys", "revoke", public_id)
    assert again.returncode == 1 and "revoked" in again.stderr
    missing = cli(env, "keys", "show", "zzzzzzzzzzzzzzzz")
    assert missing.returncode == 1 and "No API key" in missing.stderr


def test_keys_create_validation(env: dict[str, str]) -> None:
    result = cli(env, "keys", "create", "--name", "x", "--expires-at", "2099-01-01T00:00:00")
    assert result.returncode == 2 and "--expires-at" in result.stderr
    assert not Path(env["BROKER_STORE"].removeprefix("sqlite:///")).exists()  # nothing made


def test_models_list(env: dict[str, str]) -> None:
    result = cli(env, "models", "list")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows and all(len(r) == 3 and len(r[2]) == 64 for r in rows)
    assert "orders" in [r[0] for r in rows]


async def test_cli_revoke_reaches_running_broker_within_a_second(env: dict[str, str]) -> None:
    created = cli(env, "keys", "create", "--name", "live")
    key = created.stdout.splitlines()[0]
    store = open_store(env["BROKER_STORE"])
    cache = KeyCache(store)
    feed = asyncio.create_task(cache.follow_changes())
    try:
        verifier = KeyVerifier(cache)
        await wait_until(lambda: cache.live)
        await verifier.authenticate(key)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "keys", "revoke", key[4:20], env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await proc.wait() == 0
        await refused_within(lambda: verifier.authenticate(key), Unauthorized, 1.0)
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await store.close()


def test_serve_and_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"],
        env={**env, "BROKER_PORT": str(port)}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, "broker exited"
                assert time.monotonic() < deadline, "broker did not start"
                time.sleep(0.05)
        big = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "x" * 15_000}
        )
        with urllib.request.urlopen(big, timeout=5) as r:  # noqa: S310
            assert r.status == 200  # header fields up to 16 KiB are accepted
        too_big = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "x" * 20_000}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(too_big, timeout=5).close()  # noqa: S310
        assert 400 <= refused.value.code < 500
        refused.value.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        logs = proc.stderr.read()
        assert f"http://127.0.0.1:{port}" in logs
        assert "event loop uvloop" in logs  # a dependency: the served loop must be uvloop's
        lines: list[dict[str, Any]] = [
            json.loads(x) for x in logs.splitlines() if x.startswith("{")
        ]
        assert any(x.get("path") == "/healthz" and x.get("status") == 200 for x in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_sighup_reloads_models_at_once(env: dict[str, str], tmp_path: Path) -> None:
    import shutil
    import urllib.request

    shutil.copytree(DATA, tmp_path / "data")
    model_file = tmp_path / "data" / "models" / "orders" / "orders.yml"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve"],
        env={**env, "BROKER_PORT": str(port), "BROKER_MODELS_POLL_INTERVAL": "3600",
             "BROKER_MODELS": str(tmp_path / "data" / "models.yaml")},
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def current_hash() -> str | None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{env['BROKER_INTERNAL_PORT']}/internal/v1/models",
            headers={"X-Broker-Callback-Secret": CALLBACK_SECRET},
        )
        try:
            with urllib.request.urlopen(req, timeout=1) as r:  # noqa: S310
                models: list[dict[str, str]] = json.loads(r.read())
                return models[0]["schema_hash"]
        except OSError:
            return None

    try:
        deadline = time.monotonic() + 20
        while (before := current_hash()) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "broker did not start"
            time.sleep(0.05)
        model_file.write_text(model_file.read_text() + "\n# edited\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 2
        while current_hash() == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload the models"
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_sigterm_lets_in_flight_requests_finish(
    env: dict[str, str], aiohttp_server: Any
) -> None:
    import aiohttp

    from tests.fake_cube import FakeCube

    fake = FakeCube(delay=1.0)
    cube = await aiohttp_server(fake.app())
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve",
        env={**env, "BROKER_PORT": str(port), "BROKER_SHUTDOWN_GRACE": "10",
             "BROKER_CUBE_URL": str(cube.make_url("")).rstrip("/")},
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with s.get(f"{base}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None and time.monotonic() < deadline
                await asyncio.sleep(0.05)
            admin = f"http://127.0.0.1:{env['BROKER_ADMIN_PORT']}"
            key, _ = await asyncio.to_thread(create_key_at, admin, ADMIN_KEY, name="t")
            headers = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
            in_flight = asyncio.create_task(s.get(f"{base}/cubejs-api/v1/meta", headers=headers))
            await wait_until(lambda: len(fake.seen) == 1)
            proc.send_signal(signal.SIGTERM)
            resp = await in_flight
            assert resp.status == 200
            assert (await resp.json())["cubes"][0]["name"] == "orders"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def run_into_closed_pipe(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with its stdout a pipe whose reading end is already closed, as after
    ``| head -1`` has read its line: every write fails with EPIPE. The exit status and
    stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=30)
    return proc.returncode, stderr


@pytest.mark.parametrize(
    "verb",
    [
        ["keys", "create", "--name", "piped"],
        ["keys", "list"],
        ["keys", "list", "--json"],
        ["keys", "show", "PUBLIC_ID"],
        ["models", "list"],
        ["check-config"],
    ],
)
def test_closed_stdout_is_not_an_error(env: dict[str, str], verb: list[str]) -> None:
    first = cli(env, "keys", "create", "--name", "first").stdout.splitlines()[0]
    verb = [first[4:20] if arg == "PUBLIC_ID" else arg for arg in verb]
    status, stderr = run_into_closed_pipe(env, *verb)
    assert (status, stderr) == (0, "")
    if verb[:2] == ["keys", "create"]:  # the key was made, even if nobody read it
        names = [r["name"] for r in json.loads(cli(env, "keys", "list", "--json").stdout)["keys"]]
        assert names == ["first", "piped"]


async def test_closed_stdout_in_the_middle_of_the_output(env: dict[str, str]) -> None:
    """Output beyond the pipe buffer: the write fails while the verb prints, not at exit."""
    store = open_store(env["BROKER_STORE"])
    try:
        admin = KeyAdmin(store)
        for n in range(30):
            await admin.create(validate_create({"name": f"key-{n}", "rights": ["r"] * 20}))
    finally:
        await store.close()
    assert len(cli(env, "keys", "list", "--json").stdout) > 16 * 1024
    assert run_into_closed_pipe(env, "keys", "list", "--json") == (0, "")
    assert run_into_closed_pipe(env, "keys", "list") == (0, "")


def test_version(env: dict[str, str]) -> None:
    result = cli(env, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cube-broker {broker.__version__}"


@pytest.mark.parametrize("verb", [["check-config"], ["serve"], ["models", "list"]])
def test_missing_registry_names_the_variable_and_the_path(
    env: dict[str, str], tmp_path: Path, verb: list[str]
) -> None:
    missing = tmp_path / "nowhere" / "models.yaml"
    result = cli({**env, "BROKER_MODELS": str(missing)}, *verb)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "BROKER_MODELS" in line and str(missing) in line, line
