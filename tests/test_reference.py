"""docs/reference.md stays true: it names every setting, route, metric and error code the
broker has, so a newcomer can trust it. Each check lists what the page is missing."""

from __future__ import annotations

import re
from pathlib import Path

from broker import errors
from broker.app import create_app
from broker.settings import Settings
from tests.harness.settings import make_settings
from tests.helpers import Client, served_routes

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
#: The standard collectors, named in the page as a group rather than one by one.
STANDARD_PREFIXES = ("process_", "python_")
#: A decision-mode route answers any method; the page says so with ``*``.
ANY_METHOD = "*"
#: prometheus_client's companion family of a counter's or histogram's creation time.
CREATED = "_created"


def _page() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def _missing(names: set[str], page: str) -> list[str]:
    """The names the page never mentions as code (in backquotes), sorted."""
    return sorted(name for name in names if f"`{name}`" not in page)


def _row_names(page: str) -> set[str]:
    """The names a table row is about: those in backquotes in its first cell (the settings
    table's ``| `ATHENA_KEY_12` / `BROKER_ADMIN_KEY` | …``, the metrics table's
    ``| `broker_requests_total` | …``)."""
    cells = re.findall(r"^\|([^|\n]*)\|", page, re.MULTILINE)
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def _routes() -> set[tuple[str, str]]:
    """(method, canonical path) of every route the app serves, ``*`` for any method."""
    return served_routes(create_app(make_settings()))


def _documented_routes(page: str) -> set[tuple[str, str]]:
    """(method, path) of each route-table row: ``| listener | `METHOD` | `/path` | …``."""
    row = re.compile(r"^\|[^|]*\|\s*`([A-Z]+|\*)`\s*\|\s*`(/[^`]*)`\s*\|", re.MULTILINE)
    return {(m.group(1), m.group(2)) for m in row.finditer(page)}


def _error_codes() -> set[str]:
    seen: set[str] = set()
    todo: list[type[errors.BrokerError]] = [errors.BrokerError]
    while todo:
        cls = todo.pop()
        seen.add(cls.code)
        todo.extend(cls.__subclasses__())
    return seen


def _exported_families(text: str) -> set[str]:
    """The ``# TYPE`` names of a scrape, less the standard collectors; the ``X_created``
    companion of a counter or histogram stands for its family (``X_total`` or ``X``), which
    the page documents, the companions being named there as a group."""
    names = {
        name
        for name in re.findall(r"^# TYPE (\S+) \S+$", text, re.MULTILINE)
        if not name.startswith(STANDARD_PREFIXES)
    }
    families: set[str] = set()
    for name in names:
        if name.endswith(CREATED):
            base = name.removesuffix(CREATED)
            name = f"{base}_total" if f"{base}_total" in names else base
        families.add(name)
    return families


def test_every_setting_is_documented() -> None:
    names = {name for var in Settings.variables() for name in var.names}
    assert len(names) > 20
    assert sorted(names - _row_names(_page())) == []


def test_every_route_is_documented() -> None:
    routes = _routes()
    assert (ANY_METHOD, "/auth/v1/cube/{path}") in routes
    assert ("POST", "/internal/v1/credentials") in routes
    assert sorted(routes - _documented_routes(_page())) == []


def test_the_route_tables_list_nothing_the_broker_does_not_serve() -> None:
    assert sorted(_documented_routes(_page()) - _routes()) == []


def test_every_error_code_is_documented() -> None:
    codes = _error_codes()
    assert {"internal_error", "validation_failed", "client_closed_request"} <= codes
    assert _missing(codes, _page()) == []


async def test_every_exported_metric_is_documented(client: Client) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    families = _exported_families(text)
    assert "broker_requests_total" in families
    assert re.search(r"^# TYPE process_\S+ ", text, re.MULTILINE)
    page = _page()
    assert sorted(families - _row_names(page)) == []
    for group in (*(f"{prefix}*" for prefix in STANDARD_PREFIXES), f"*{CREATED}"):
        assert f"`{group}`" in page, group


def test_the_checks_fail_on_a_page_that_lacks_a_name() -> None:
    """The helpers above can fail: a page without a name reports that name missing."""
    assert _missing({"BROKER_PORT"}, "`BROKER_HOST`") == ["BROKER_PORT"]
    assert _row_names("| `A` / `B` | `C` |\nsee `D`\n") == {"A", "B"}
    assert _documented_routes("| public | `GET` | `/healthz` | none |\n") == {("GET", "/healthz")}
    scrape = (
        "# TYPE process_cpu counter\n# TYPE broker_x_total counter\n# TYPE broker_x_created gauge\n"
    )
    assert _exported_families(scrape) == {"broker_x_total"}
