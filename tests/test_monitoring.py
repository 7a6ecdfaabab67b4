"""The monitoring component (SPEC §10): ``deploy/k8s/components/monitoring`` rendered with
the base by a real kustomize (through the overlay in ``tests/data/k8s-monitoring``), its
alerts checked and unit-tested by a real ``promtool`` (Debian's ``prometheus`` package,
which ``WITH_TEST_SERVICES=1 scripts/setup.sh`` installs), and every metric its alerts and
its dashboard name checked against the ``/metrics`` of a running broker.

The Prometheus Operator's CRDs are not at hand to validate the PodMonitor and the
PrometheusRule against, so their shape is checked field by field.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from broker.app import create_app
from broker.settings import Settings
from tests.fake_cube import FakeCube
from tests.harness.keys import create_key
from tests.harness.settings import make_settings
from tests.helpers import TOKEN_PATH, AiohttpClient, Client, scrape
from tests.test_deploy import (
    REPO,
    Manifest,
    container_port,
    env_of,
    env_value,
    find,
    render,
    selects,
)

COMPONENT = REPO / "deploy" / "k8s" / "components" / "monitoring"
OVERLAY = REPO / "tests" / "data" / "k8s-monitoring"
ALERT_TESTS = REPO / "tests" / "data" / "monitoring" / "alerts.test.yaml"
#: The job the PodMonitor gives the broker's series (its pods' app.kubernetes.io/name).
JOB = "cube-token-broker"
#: Labels Prometheus attaches to every scraped series (the target's, not the broker's).
TARGET_LABELS = {"job", "namespace", "pod", "instance", "container", "endpoint"}
#: Series Prometheus records itself for every target, not found in any /metrics.
SYNTHETIC = {"up"}
#: The panels SPEC §10 and the issue ask of the dashboard.
REQUIRED_PANELS = {
    "Requests by route and status",
    "Request latency percentiles",
    "Tokens minted vs cache hits",
    "Auth failures by reason",
    "Store and upstream errors",
}


# -- rendering -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[Manifest]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def rules(rendered: list[Manifest]) -> dict[str, Any]:
    """The spec of the PrometheusRule: a Prometheus rules file."""
    spec: dict[str, Any] = find(rendered, "PrometheusRule")["spec"]
    return spec


@pytest.fixture(scope="module")
def dashboard(rendered: list[Manifest]) -> dict[str, Any]:
    configmap = find(rendered, "ConfigMap", "cube-broker-dashboard")
    doc: dict[str, Any] = json.loads(configmap["data"]["cube-broker.json"])
    return doc


def broker_container(rendered: list[Manifest]) -> Manifest:
    spec = find(rendered, "Deployment")["spec"]["template"]["spec"]
    broker: Manifest = next(c for c in spec["containers"] if c["name"] == "broker")
    return broker


def pod_labels(rendered: list[Manifest]) -> dict[str, str]:
    labels: dict[str, str] = find(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_component_is_a_kustomize_component() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"


def test_every_object_of_the_component_is_in_the_brokers_namespace(
    rendered: list[Manifest],
) -> None:
    namespace = find(rendered, "Deployment")["metadata"]["namespace"]
    for kind, name in (
        ("PodMonitor", "cube-broker"),
        ("PrometheusRule", "cube-broker"),
        ("NetworkPolicy", "cube-broker-monitoring"),
        ("ConfigMap", "cube-broker-dashboard"),
    ):
        o = find(rendered, kind, name)
        assert o["metadata"]["namespace"] == namespace, (kind, name)
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cube-token-broker"
    for kind in ("PodMonitor", "PrometheusRule"):
        assert find(rendered, kind)["apiVersion"] == "monitoring.coreos.com/v1"


# -- the scrape: PodMonitor, admin listener, NetworkPolicy ----------------------------------


def test_the_podmonitor_scrapes_the_admin_port(rendered: list[Manifest]) -> None:
    monitor = find(rendered, "PodMonitor")["spec"]
    assert selects(monitor["selector"], pod_labels(rendered))
    [endpoint] = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    broker = broker_container(rendered)
    admin_port = int(env_value(broker, "BROKER_ADMIN_PORT"))
    assert container_port(broker, "admin") == admin_port == 8081
    assert pod_labels(rendered)[monitor["jobLabel"]] == JOB  # the job the rules select


def test_the_admin_listener_is_bound_where_prometheus_reaches_it(
    rendered: list[Manifest],
) -> None:
    """The patched environment is a valid configuration binding the admin listener on
    every interface."""
    broker = broker_container(rendered)
    env = {
        name: item.get("value", f"a-real-secret-of-enough-bytes-for-{name}")
        for name, item in env_of(broker).items()
    }
    settings = Settings.load(env)
    assert (settings.admin_host, settings.admin_port) == ("0.0.0.0", 8081)
    assert settings.admin_port != settings.port


def test_a_networkpolicy_admits_the_monitoring_namespace_to_the_admin_port(
    rendered: list[Manifest],
) -> None:
    policy = find(rendered, "NetworkPolicy", "cube-broker-monitoring")["spec"]
    assert selects(policy["podSelector"], pod_labels(rendered))
    assert policy["policyTypes"] == ["Ingress"]  # egress stays the base policy's
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


# -- the alerts: promtool ------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: `WITH_TEST_SERVICES=1 scripts/setup.sh` installs Debian's "
            "prometheus package, which ships it"
        )
    return found


def run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_pass_promtool_check(
    promtool: str, rules: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    run([promtool, "check", "rules", "rules.yaml"], tmp_path)


def alerts(rules: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def test_every_alert_is_unit_tested_firing_and_not_firing(rules: dict[str, Any]) -> None:
    """Each alert has a promtool case where it fires and one where it does not."""
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts(rules)}
    assert names == fires, names ^ fires
    assert names == quiet, names ^ quiet


def test_the_alerts_pass_their_promtool_unit_tests(
    promtool: str, rules: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yaml")
    run([promtool, "test", "rules", "alerts.test.yaml"], tmp_path)


def test_every_alert_has_a_severity_and_says_what_happened(rules: dict[str, Any]) -> None:
    for rule in alerts(rules):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert f'job="{JOB}"' in rule["expr"], rule["alert"]


# -- the dashboard -------------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside a collapsed row


def test_the_dashboard_is_a_grafana_configmap_with_the_required_panels(
    rendered: list[Manifest], dashboard: dict[str, Any]
) -> None:
    configmap = find(rendered, "ConfigMap", "cube-broker-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["uid"] and dashboard["title"]
    titles = {p["title"] for p in panels(dashboard)}
    assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert "$namespace" in target["expr"], panel["title"]
    latency = next(p for p in panels(dashboard) if p["title"] == "Request latency percentiles")
    assert all("histogram_quantile(" in t["expr"] for t in latency["targets"])


# -- every metric named is one the broker exports ------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions or
    aggregations (followed by ``(``), keywords, label names (in ``{…}``, ``by (…)`` and
    the like) or the unit of a number or duration."""
    expr = _STRING.sub('""', expr)
    expr = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", expr)))
    names = set()
    for m in _IDENTIFIER.finditer(expr):
        before = expr[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # 1e3, 5m
        if expr[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, set[str]]]:
    """Each ``metric{matchers}`` of ``expr``: the metric and the label names it matches."""
    for m in _SELECTOR.finditer(_STRING.sub('""', expr)):
        yield m.group(1), set(_MATCHER_NAME.findall(m.group(2)))


def used_expressions(rules: dict[str, Any], dashboard: dict[str, Any]) -> list[str]:
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if variable["type"] == "query" and isinstance(query, str):
            m = _LABEL_VALUES.match(query.strip())
            exprs.append(m.group(1) if m else query)
    return exprs


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(a_seconds_bucket{job="x", '
        'status=~"5.."}[$__rate_interval]))) / on (pod) group_left b_total offset 5m > 1e3 '
        'and time() - c_gauge unless absent(up{job="y"}) or sum(d) without (le)'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c_gauge", "up", "d"}
    assert dict(selector_labels(expr)) == {"a_seconds_bucket": {"job", "status"}, "up": {"job"}}


def exported(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """The series names a ``/metrics`` text exports, from its ``# TYPE`` lines (so a
    labelled metric without a series yet counts too): a counter's own name, a histogram's
    ``_bucket``, ``_sum`` and ``_count``; and the label names seen on each series name."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


@pytest.fixture
async def busy_broker(aiohttp_client: AiohttpClient, aiohttp_server: Any, tmp_path: Path) -> Client:
    """A broker in front of a stand-in Cube, after a token, two proxied calls and a refused
    key, so its labelled series exist."""
    cube: TestServer = await aiohttp_server(FakeCube().app())
    settings = make_settings(
        BROKER_STORE=f"sqlite:///{tmp_path}/b.db",
        BROKER_CUBE_URL=str(cube.make_url("")).rstrip("/"),
    )
    c: Client = await aiohttp_client(create_app(settings))
    key, _ = await create_key(c, rate_limit_per_minute=3)
    key_mode = {"X-API-KEY": key, "X-Semantic-Model": "orders"}
    statuses = [
        (await c.post(TOKEN_PATH, headers={"X-API-KEY": key})).status,
        (await c.get("/cubejs-api/v1/meta", headers=key_mode)).status,
        (await c.get("/cubejs-api/v1/load?query=%7B%7D", headers=key_mode)).status,
        (await c.get("/cubejs-api/v1/meta", headers=key_mode)).status,
        (await c.post(TOKEN_PATH, headers={"X-API-KEY": key[:-2] + "xx"})).status,
        (await c.get("/readyz")).status,
    ]
    assert statuses == [200, 200, 200, 429, 401, 200]
    return c


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    busy_broker: Client, rules: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    names, labels = exported(await scrape(busy_broker))
    exprs = used_expressions(rules, dashboard)
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"broker_requests_total", "broker_upstream_duration_seconds_bucket"} <= used
    assert used - SYNTHETIC <= names, sorted(used - SYNTHETIC - names)
    # Labels matched in a selector are the series' own (or the target's).
    for expr in exprs:
        for name, matched in selector_labels(expr):
            if name in labels:
                assert matched - TARGET_LABELS <= labels[name], (name, matched)
