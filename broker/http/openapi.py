"""The OpenAPI 3 description served at ``GET /openapi.json`` (SPEC §9)."""

from __future__ import annotations

from typing import Any

from broker import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ADMIN: list[dict[str, list[str]]] = [{"adminKey": []}, {"adminBearer": []}, {"adminQuery": []}]
_KEY: list[dict[str, list[str]]] = [{"athenaKey": []}, {"bearer": []}]
_PROXY: list[dict[str, list[str]]] = [{"bearer": []}, {"athenaKey": [], "semanticModel": []}]
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "The key's UUID or its public_id."}  # fmt: skip
_ASSET = {"name": "asset_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}  # fmt: skip


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str, *, security: Any = None, body: Any = None,
        params: Any = None, ok_schema: Any = None, tag: str) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {
            ok: {"description": "Success", **(_json(ok_schema) if ok_schema else {})},
            "default": {"description": "Error (SPEC §3 codes)", **_json(_ERROR)},
        },
    }
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


_RECORD_PROPS = {
    "name": {"type": "string", "minLength": 1},
    "description": {"type": ["string", "null"]},
    "client_name": {"type": ["string", "null"]},
    "expires_at": {"type": ["string", "null"], "format": "date-time"},
    "rights": {"type": "array", "items": {"type": "string"}},
    "virgin_mode": {"type": "boolean"},
    "virgin_until_n_requests": {"type": "integer", "minimum": 0},
    "max_whitelist_ips": {"type": "integer", "minimum": 0},
    "ip_whitelist": {"type": "array", "items": {"type": "string"}},
    "ip_blacklist": {"type": "array", "items": {"type": "string"}},
    "rate_limit_per_minute": {"type": "integer", "minimum": 0},
}
_PATCH_PROPS = {
    **{k: v for k, v in _RECORD_PROPS.items() if k != "virgin_mode"},
    "is_active": {"type": "boolean"},
}


def openapi_document() -> dict[str, Any]:
    record = {"$ref": "#/components/schemas/KeyRecord"}
    issued = {"type": "object", "properties": {"api_key": {"type": "string"}, "record": record}}
    proxy_ops = {
        "get": _op("Forwarded to Cube", "200", security=_PROXY, tag="proxy"),
        "post": _op("Forwarded to Cube", "200", security=_PROXY, tag="proxy"),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "cube-token-broker", "version": __version__},
        "paths": {
            "/healthz": {"get": _op("Liveness", "200", tag="operations")},
            "/readyz": {"get": _op("Readiness: store and registry", "200", tag="operations")},
            "/metrics": {"get": _op("Prometheus metrics", "200", tag="operations")},
            "/openapi.json": {"get": _op("This document", "200", tag="operations")},
            "/admin/api-keys": {
                "post": _op(
                    "Create a key",
                    "201",
                    security=_ADMIN,
                    tag="admin",
                    body={
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": _RECORD_PROPS,
                    },
                    ok_schema=issued,
                ),
                "get": _op(
                    "List keys",
                    "200",
                    security=_ADMIN,
                    tag="admin",
                    params=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    ok_schema={
                        "type": "object",
                        "properties": {
                            "keys": {"type": "array", "items": record},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                ),
            },
            "/admin/api-keys/{id}": {
                "get": _op(
                    "Show a key",
                    "200",
                    security=_ADMIN,
                    tag="admin",
                    params=[_ID],
                    ok_schema=record,
                ),
                "patch": _op(
                    "Change a key",
                    "200",
                    security=_ADMIN,
                    tag="admin",
                    params=[_ID],
                    body={
                        "type": "object",
                        "additionalProperties": False,
                        "properties": _PATCH_PROPS,
                    },
                    ok_schema=record,
                ),
                "delete": _op(
                    "Revoke a key (final)", "204", security=_ADMIN, tag="admin", params=[_ID]
                ),
            },
            "/admin/api-keys/{id}/rotate": {
                "post": _op(
                    "New secret, same public_id",
                    "200",
                    security=_ADMIN,
                    tag="admin",
                    params=[_ID],
                    ok_schema=issued,
                    body={
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"grace_seconds": {"type": "integer", "minimum": 0}},
                    },
                ),
            },
            "/api/v0/semantic-model/{asset_id}/generate-token": {
                "post": _op(
                    "Mint (or reuse) a Cube token",
                    "200",
                    security=_KEY,
                    tag="models",
                    params=[_ASSET],
                    ok_schema={
                        "type": "object",
                        "properties": {
                            "cube_url": {"type": "string"},
                            "expires_at": {"type": "string", "format": "date-time"},
                            "token": {"type": "string"},
                        },
                    },
                ),
            },
            "/api/v0/semantic-model/{asset_id}/metadata": {
                "get": _op(
                    "The model's cubes from Cube's /meta",
                    "200",
                    security=_KEY,
                    tag="models",
                    params=[_ASSET],
                ),
            },
            "/api/v0/semantic-model/{asset_id}/query": {
                "post": _op(
                    "Run a Cube query, following Continue wait",
                    "200",
                    security=_KEY,
                    tag="models",
                    params=[_ASSET],
                    body={
                        "type": "object",
                        "required": ["query"],
                        "properties": {"query": {"type": "object"}},
                    },
                ),
            },
            "/cubejs-api/v1/load": proxy_ops,
            "/cubejs-api/v1/meta": {"get": proxy_ops["get"]},
            "/cubejs-api/v1/sql": proxy_ops,
            "/cubejs-api/v1/dry-run": proxy_ops,
            "/internal/v1/credentials": {
                "post": _op(
                    "Driver config for a model's data source (Cube only)",
                    "200",
                    security=[{"callbackSecret": []}],
                    tag="internal",
                ),
            },
            "/internal/v1/models": {
                "get": _op(
                    "Models and schema hashes (Cube only)",
                    "200",
                    security=[{"callbackSecret": []}],
                    tag="internal",
                ),
            },
            "/internal/v1/models/{asset_id}/files": {
                "get": _op(
                    "A model's files (Cube only)",
                    "200",
                    params=[_ASSET],
                    security=[{"callbackSecret": []}],
                    tag="internal",
                ),
            },
        },
        "components": {
            "securitySchemes": {
                "adminKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "adminBearer": {"type": "http", "scheme": "bearer"},
                "adminQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
                "athenaKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "semanticModel": {"type": "apiKey", "in": "header", "name": "X-Semantic-Model"},
                "callbackSecret": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Broker-Callback-Secret",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["status", "message", "error"],
                    "properties": {
                        "status": {"const": "error"},
                        "message": {"type": "string"},
                        "error": {"type": "string"},
                        "details": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "KeyRecord": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "public_id": {"type": "string"},
                        **_RECORD_PROPS,
                        "is_active": {"type": "boolean"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
                        "last_used_at": {"type": ["string", "null"], "format": "date-time"},
                        "request_count": {"type": "integer"},
                        "locked": {"type": "boolean"},
                    },
                },
            },
        },
    }
