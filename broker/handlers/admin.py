"""Admin API handlers (SPEC §4): parse, call :class:`KeyAdmin`, serialize."""

from __future__ import annotations

from aiohttp import web

from broker.errors import AdminDisabled, AuthFailure, FieldError, Unauthorized, ValidationFailed
from broker.handlers import NO_STORE
from broker.http.requests import admin_credential, read_json_object
from broker.keys.admin import DEFAULT_PAGE, MAX_PAGE
from broker.keys.audit import Actor
from broker.keys.validation import validate_create, validate_patch, validate_rotate
from broker.state import CONTEXT, KEY_ADMIN, SETTINGS


def require_admin(request: web.Request) -> None:
    admin_key = request.app[SETTINGS].admin_key
    if admin_key is None:
        raise AdminDisabled()
    presented = admin_credential(request)
    if presented is None:
        raise Unauthorized(AuthFailure.MISSING)
    if not admin_key.matches(presented):
        raise Unauthorized(AuthFailure.WRONG_ADMIN_KEY)


async def create_key(request: web.Request) -> web.Response:
    require_admin(request)
    values = validate_create(await read_json_object(request))
    plaintext, record = await request.app[KEY_ADMIN].create(values, _actor(request))
    request[CONTEXT].key_public_id = record.public_id
    return web.json_response(
        {"api_key": plaintext, "record": record.public()}, status=201, headers=NO_STORE
    )


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    limit = _limit(request.query.get("limit"))
    records, cursor = await request.app[KEY_ADMIN].list_keys(limit, request.query.get("cursor"))
    return web.json_response({"keys": [r.public() for r in records], "next_cursor": cursor})


async def show_key(request: web.Request) -> web.Response:
    require_admin(request)
    record = await request.app[KEY_ADMIN].get(request.match_info["id"])
    return web.json_response(record.public())


async def update_key(request: web.Request) -> web.Response:
    require_admin(request)
    changes = validate_patch(await read_json_object(request))
    record = await request.app[KEY_ADMIN].update(request.match_info["id"], changes, _actor(request))
    return web.json_response(record.public())


async def revoke_key(request: web.Request) -> web.Response:
    require_admin(request)
    await request.app[KEY_ADMIN].revoke(request.match_info["id"], _actor(request))
    return web.Response(status=204)


async def rotate_key(request: web.Request) -> web.Response:
    require_admin(request)
    grace = validate_rotate(await read_json_object(request, optional=True))
    plaintext, record = await request.app[KEY_ADMIN].rotate(
        request.match_info["id"], grace, _actor(request)
    )
    return web.json_response({"api_key": plaintext, "record": record.public()}, headers=NO_STORE)


async def audit_events(request: web.Request) -> web.Response:
    require_admin(request)
    limit = _limit(request.query.get("limit"))
    events, cursor = await request.app[KEY_ADMIN].audit_events(
        limit, request.query.get("cursor"), request.query.get("key")
    )
    return web.json_response({"events": [e.to_doc() for e in events], "next_cursor": cursor})


def _actor(request: web.Request) -> Actor:
    """The admin API as the audit trail names it: the caller's address, the request ID."""
    context = request[CONTEXT]
    return Actor("admin-api", context.client_ip, context.request_id)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise ValidationFailed([FieldError("limit", f"must be an integer from 1 to {MAX_PAGE}")])
    return int(raw)
