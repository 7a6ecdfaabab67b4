"""Every route of the broker, in one place."""

from __future__ import annotations

from aiohttp import web

from broker.cube.access import FORWARDED
from broker.handlers import admin, cube, decision, health, internal, semantic
from broker.http.decision import DECISION_PATH


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", health.metrics)
    r.add_get("/openapi.json", health.openapi)

    r.add_post("/admin/api-keys", admin.create_key)
    r.add_get("/admin/api-keys", admin.list_keys)
    r.add_get("/admin/api-keys/{id}", admin.show_key)
    r.add_patch("/admin/api-keys/{id}", admin.update_key)
    r.add_delete("/admin/api-keys/{id}", admin.revoke_key)
    r.add_post("/admin/api-keys/{id}/rotate", admin.rotate_key)
    r.add_get("/admin/audit-events", admin.audit_events)

    model = "/api/v0/semantic-model/{asset_id}"
    r.add_post(f"{model}/generate-token", semantic.generate_token)
    r.add_get(f"{model}/metadata", semantic.metadata)
    r.add_post(f"{model}/query", semantic.query)

    for path, methods in FORWARDED.items():
        for method in methods:
            r.add_route(method, path, cube.forward)
    r.add_route("*", DECISION_PATH, decision.decide)
    r.add_route("*", DECISION_PATH + "/{path:.*}", decision.decide)

    r.add_post("/internal/v1/credentials", internal.credentials)
    r.add_get("/internal/v1/models", internal.list_models)
    r.add_get("/internal/v1/models/{asset_id}/files", internal.model_files)
