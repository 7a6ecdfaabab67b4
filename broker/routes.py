"""Every route of the broker, in one place, each handler run in the broker's request
context (:func:`broker.http.answer.answered`)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from broker.cube.access import FORWARDED
from broker.handlers import admin, cube, decision, health, internal, semantic
from broker.http.answer import add_unrouted, answered
from broker.http.decision import DECISION_PATH

_MODEL = "/api/v0/semantic-model/{asset_id}"

#: (method, path, handler); ``GET`` also answers ``HEAD``. The forwarded Cube routes are
#: added apart: exactly the methods of ``FORWARDED``, no ``HEAD``.
_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/healthz", health.healthz),
    ("GET", "/readyz", health.readyz),
    ("GET", "/metrics", health.metrics),
    ("GET", "/openapi.json", health.openapi),
    ("POST", "/admin/api-keys", admin.create_key),
    ("GET", "/admin/api-keys", admin.list_keys),
    ("GET", "/admin/api-keys/{id}", admin.show_key),
    ("PATCH", "/admin/api-keys/{id}", admin.update_key),
    ("DELETE", "/admin/api-keys/{id}", admin.revoke_key),
    ("POST", "/admin/api-keys/{id}/rotate", admin.rotate_key),
    ("GET", "/admin/audit-events", admin.audit_events),
    ("POST", f"{_MODEL}/generate-token", semantic.generate_token),
    ("GET", f"{_MODEL}/metadata", semantic.metadata),
    ("POST", f"{_MODEL}/query", semantic.query),
    ("*", DECISION_PATH, decision.decide),
    ("*", DECISION_PATH + "/{path:.*}", decision.decide),
    ("POST", "/internal/v1/credentials", internal.credentials),
    ("GET", "/internal/v1/models", internal.list_models),
    ("GET", "/internal/v1/models/{asset_id}/files", internal.model_files),
]


def setup_routes(app: web.Application) -> None:
    r = app.router
    for method, path, handler in _ROUTES:
        if method == "GET":
            r.add_get(path, answered(handler))
        else:
            r.add_route(method, path, answered(handler))
    forward = answered(cube.forward)
    for path, methods in FORWARDED.items():
        for method in methods:
            r.add_route(method, path, forward)
    # Last, so it matches only what nothing above does: aiohttp's 404 and 405, answered
    # in the same context (SPEC §3's JSON, the answer headers, metrics, the access log).
    add_unrouted(r)
