"""The internal callback for Cube (SPEC §7): parse, call :mod:`broker.cube.callback`, serialize.

Every route requires ``X-Broker-Callback-Secret``; it is checked before anything else, so
a caller without it learns nothing about which models exist.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from broker.cube.callback import CALLBACK_SECRET_HEADER, driver_config
from broker.errors import AuthFailure, FieldError, Unauthorized, ValidationFailed
from broker.handlers import NO_STORE
from broker.http.requests import read_json_object
from broker.state import CONTEXT, REGISTRY, SETTINGS

_CREDENTIALS_FIELDS = frozenset({"securityContext", "dataSource"})


def require_callback_secret(request: web.Request) -> None:
    presented = request.headers.get(CALLBACK_SECRET_HEADER)
    if not presented:
        raise Unauthorized(AuthFailure.MISSING)
    if not request.app[SETTINGS].callback_secret.matches(presented):
        raise Unauthorized(AuthFailure.CALLBACK_SECRET)


async def credentials(request: web.Request) -> web.Response:
    require_callback_secret(request)
    body = await read_json_object(request)
    model_id, data_source = _credentials_request(body)
    request[CONTEXT].model_id = model_id
    registry = request.app[REGISTRY].current
    # A password_file is read now: keep that file I/O off the event loop.
    config = await asyncio.to_thread(driver_config, registry, model_id, data_source, os.environ)
    return web.json_response(config, headers=NO_STORE)  # it holds a password


async def model_files(request: web.Request) -> web.Response:
    require_callback_secret(request)
    model = request.app[REGISTRY].current.require(request.match_info["asset_id"])
    request[CONTEXT].model_id = model.asset_id
    files = [{"fileName": f.path, "content": f.text} for f in model.files]
    return web.json_response({"schema_hash": model.schema_hash, "files": files})


async def list_models(request: web.Request) -> web.Response:
    require_callback_secret(request)
    models = request.app[REGISTRY].current
    return web.json_response(
        [{"asset_id": m.asset_id, "schema_hash": m.schema_hash} for m in models]
    )


def _credentials_request(body: dict[str, object]) -> tuple[str, str]:
    """``(model_id, dataSource)`` of a credentials request; 422 naming each bad field."""
    errors = [
        FieldError(name, "unknown field") for name in sorted(body.keys() - _CREDENTIALS_FIELDS)
    ]
    context = body.get("securityContext")
    model_id: object = None
    if not isinstance(context, dict):
        errors.append(FieldError("securityContext", "required, an object"))
    else:
        model_id = context.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            errors.append(FieldError("securityContext.model_id", "required, a non-empty string"))
    data_source = body.get("dataSource")
    if not isinstance(data_source, str) or not data_source:
        errors.append(FieldError("dataSource", "required, a non-empty string"))
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(model_id, str) and isinstance(data_source, str)
    return model_id, data_source
