"""The OpenAPI 3 description served at ``GET /openapi.json`` (SPEC §9).

The admin request bodies are generated from the validation tables of
:mod:`broker.keys.validation`, so the document says exactly what the broker accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from broker import __version__
from broker.cube.access import FORWARDED
from broker.http.listeners import ANYWHERE, serves
from broker.keys.validation import (
    CREATE_FIELDS,
    CREATE_REQUIRED,
    PATCH_FIELDS,
    ROTATE_FIELDS,
    Field,
)

Json = dict[str, Any]

_ERROR = {"$ref": "#/components/schemas/Error"}
_RECORD = {"$ref": "#/components/schemas/KeyRecord"}
Security = list[dict[str, list[str]]]
_ADMIN: Security = [{"adminKey": []}, {"adminBearer": []}, {"adminQuery": []}]
_KEY: Security = [{"athenaKey": []}, {"bearer": []}]
_PROXY: Security = [{"bearer": []}, {"athenaKey": [], "semanticModel": []}]
_CALLBACK: Security = [{"callbackSecret": []}]
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "The key's UUID or its public_id."}  # fmt: skip
_ASSET = {"name": "asset_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}  # fmt: skip
_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
]


@functools.cache
def openapi_document(listener: str = ANYWHERE) -> Json:
    """The routes ``listener`` serves (every route for :data:`ANYWHERE`). Built once per
    listener; callers must not change it."""
    paths = {
        **_operations_paths(),
        **_admin_paths(),
        **_model_paths(),
        **_proxy_paths(),
        **_decision_paths(),
        **_internal_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cube-token-broker",
            "version": __version__,
            "description": f"The routes of the {listener} listener.",
        },
        "paths": {path: ops for path, ops in paths.items() if serves(listener, path)},
        "components": _components(),
    }


def _json(schema: Mapping[str, Any]) -> Json:
    return {"content": {"application/json": {"schema": schema}}}


def _body(fields: Mapping[str, Field], required: Iterable[str] = ()) -> Json:
    """The object schema of a request body from its validation table."""
    schema: Json = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: dict(field.schema) for name, field in fields.items()},
    }
    if required := list(required):
        schema["required"] = required
    return schema


def _op(summary: str, ok: str, *, tag: str, security: Any = None, body: Any = None,
        body_required: bool = True, params: Any = None, ok_schema: Any = None) -> Json:  # fmt: skip
    op: Json = {
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
        op["requestBody"] = {"required": body_required, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _operations_paths() -> Json:
    return {
        "/healthz": {"get": _op("Liveness", "200", tag="operations")},
        "/readyz": {"get": _op("Readiness: store and registry", "200", tag="operations")},
        "/metrics": {"get": _op("Prometheus metrics", "200", tag="operations")},
        "/openapi.json": {"get": _op("This document", "200", tag="operations")},
    }


def _admin_paths() -> Json:
    issued = {"type": "object", "properties": {"api_key": {"type": "string"}, "record": _RECORD}}
    page = {
        "type": "object",
        "properties": {
            "keys": {"type": "array", "items": _RECORD},
            "next_cursor": {"type": ["string", "null"]},
        },
    }

    def admin(summary: str, ok: str, **kwargs: Any) -> Json:
        return _op(summary, ok, tag="admin", security=_ADMIN, **kwargs)

    return {
        "/admin/api-keys": {
            "post": admin(
                "Create a key",
                "201",
                body=_body(CREATE_FIELDS, CREATE_REQUIRED),
                ok_schema=issued,
            ),
            "get": admin("List keys", "200", params=_PAGE, ok_schema=page),
        },
        "/admin/api-keys/{id}": {
            "get": admin("Show a key", "200", params=[_ID], ok_schema=_RECORD),
            "patch": admin(
                "Change a key", "200", params=[_ID], body=_body(PATCH_FIELDS), ok_schema=_RECORD
            ),
            "delete": admin("Revoke a key (final)", "204", params=[_ID]),
        },
        "/admin/audit-events": {
            "get": admin(
                "The audit trail of key changes, newest first",
                "200",
                params=[
                    *_PAGE,
                    {
                        "name": "key",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Only this key's events: its UUID or public_id.",
                    },
                ],
                ok_schema={
                    "type": "object",
                    "properties": {
                        "events": {"type": "array", "items": {"type": "object"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
            ),
        },
        "/admin/api-keys/{id}/rotate": {
            "post": admin(
                "New secret, same public_id",
                "200",
                params=[_ID],
                body=_body(ROTATE_FIELDS),
                body_required=False,
                ok_schema=issued,
            ),
        },
    }


def _model_paths() -> Json:
    token = {
        "type": "object",
        "properties": {
            "cube_url": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "token": {"type": "string"},
        },
    }
    query = {
        "type": "object",
        "required": ["query"],
        "additionalProperties": False,
        "properties": {"query": {"type": "object", "description": "A Cube query"}},
    }

    def model(summary: str, **kwargs: Any) -> Json:
        return _op(summary, "200", tag="models", security=_KEY, params=[_ASSET], **kwargs)

    base = "/api/v0/semantic-model/{asset_id}"
    return {
        f"{base}/generate-token": {"post": model("Mint (or reuse) a Cube token", ok_schema=token)},
        f"{base}/metadata": {"get": model("The model's cubes from Cube's /meta")},
        f"{base}/query": {"post": model("Run a Cube query, following Continue wait", body=query)},
    }


def _proxy_paths() -> Json:
    return {
        path: {
            method.lower(): _op("Forwarded to Cube", "200", tag="proxy", security=_PROXY)
            for method in methods
        }
        for path, methods in FORWARDED.items()
    }


def _decision_paths() -> Json:
    """Decision mode (SPEC §8): any method; documented are those a calling proxy uses."""
    original = [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
         "description": description}
        for name, description in (
            ("X-Original-URI", "The original path and query (nginx, ingress-nginx)."),
            ("X-Original-Method", "The original method (default: this request's)."),
            ("X-Forwarded-Uri", "The original path and query (Traefik ForwardAuth)."),
            ("X-Forwarded-Method", "The original method (default: this request's)."),
        )
    ]  # fmt: skip
    below = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "The original path, for Envoy's ext_authz path_prefix."}  # fmt: skip
    token = {
        "description": "The proxy would forward it: empty body, the token to forward",
        "headers": {"Authorization": {"schema": {"type": "string"}}},
    }

    def decide(params: list[Json]) -> Json:
        op = _op("Would the proxy forward this request, and with which token?", "200",
                 tag="decision", security=_PROXY, params=params)  # fmt: skip
        op["responses"]["200"] = token
        return op

    methods = ("get", "post", "put", "patch", "delete")
    return {
        "/auth/v1/cube": {m: decide(original) for m in methods},
        "/auth/v1/cube/{path}": {m: decide([below]) for m in methods},
    }


def _internal_paths() -> Json:
    credentials = {
        "type": "object",
        "required": ["securityContext", "dataSource"],
        "additionalProperties": False,
        "properties": {
            "securityContext": {
                "type": "object",
                "required": ["model_id"],
                "properties": {"model_id": {"type": "string", "minLength": 1}},
            },
            "dataSource": {"type": "string", "minLength": 1},
        },
    }

    def internal(summary: str, **kwargs: Any) -> Json:
        return _op(summary, "200", tag="internal", security=_CALLBACK, **kwargs)

    return {
        "/internal/v1/credentials": {
            "post": internal(
                "Driver config for a model's data source (Cube only)", body=credentials
            )
        },
        "/internal/v1/models": {"get": internal("Models and schema hashes (Cube only)")},
        "/internal/v1/models/{asset_id}/files": {
            "get": internal("A model's files (Cube only)", params=[_ASSET])
        },
    }


def _components() -> Json:
    created = {"type": "string", "format": "date-time"}
    moment = {"type": ["string", "null"], "format": "date-time"}
    return {
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
                    **_body(CREATE_FIELDS)["properties"],
                    "is_active": {"type": "boolean"},
                    "created_at": created,
                    "revoked_at": moment,
                    "last_used_at": moment,
                    "request_count": {"type": "integer"},
                    "locked": {"type": "boolean"},
                },
            },
        },
    }
