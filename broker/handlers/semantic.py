"""Semantic-model API (SPEC §5, §6) for Athena-key holders: tokens, metadata, queries."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime

from aiohttp import web

from broker.cube.headers import content_headers
from broker.cube.query import fetch_meta, final_answer
from broker.errors import FieldError, ValidationFailed
from broker.handlers import NO_STORE
from broker.http.cors import finish_answer
from broker.http.requests import key_credential, read_json_object
from broker.keys.record import KeyRecord
from broker.keys.rights import META_READ, QUERY_EXECUTE, TOKEN_CREATE
from broker.models import SemanticModel
from broker.state import CONTEXT, CUBE, KEY_VERIFIER, REGISTRY, SETTINGS, TOKENS
from broker.support.timeutil import to_iso
from broker.support.tracing import trace_headers


async def authorized_model(request: web.Request, right: str) -> tuple[KeyRecord, SemanticModel]:
    """Authenticate the Athena key, require ``right`` on the path's model, find the model.

    The key is checked first, so an unauthenticated caller learns nothing about which
    models exist (401 before 404).
    """
    asset_id = request.match_info["asset_id"]
    app, context = request.app, request[CONTEXT]
    permit = await app[KEY_VERIFIER].authorize(
        key_credential(request.headers), right, asset_id, context.client_ip
    )
    context.key_public_id = permit.record.public_id
    context.rate_limit = permit.rate_limit
    model = app[REGISTRY].current.require(asset_id)
    context.model_id = model.asset_id
    return permit.record, model


async def generate_token(request: web.Request) -> web.Response:
    record, model = await authorized_model(request, TOKEN_CREATE)
    token = await request.app[TOKENS].token_for(record, model)
    body = _token_answer(request.app[SETTINGS].public_url, token.token, token.expires_at)
    return web.Response(body=body, headers=_TOKEN_ANSWER_HEADERS)


_TOKEN_ANSWER_HEADERS = {"Content-Type": "application/json", **NO_STORE}


@functools.lru_cache(maxsize=4096)
def _token_answer(public_url: str, token: str, expires_at: int) -> bytes:
    """The generate-token answer, serialized once per token (it is the hot path)."""
    return json.dumps(
        {
            "cube_url": f"{public_url}/cubejs-api/v1",
            "expires_at": to_iso(datetime.fromtimestamp(expires_at, UTC)),
            "token": token,
        }
    ).encode()


async def metadata(request: web.Request) -> web.Response:
    record, model = await authorized_model(request, META_READ)
    token = await request.app[TOKENS].token_for(record, model)
    answer = await fetch_meta(
        request.app[CUBE],
        token.token,
        request[CONTEXT].request_id,
        request.app[SETTINGS].upstream_timeout,
        model=model.asset_id,
        trace=trace_headers(request.headers),
    )
    if answer.status != 200:
        return web.Response(
            status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type}
        )
    return web.json_response(
        {
            "asset_id": model.asset_id,
            "name": model.name,
            "schema_hash": model.schema_hash,
            "cubes": answer.parsed["cubes"],
        }
    )


async def query(request: web.Request) -> web.StreamResponse:
    record, model = await authorized_model(request, QUERY_EXECUTE)
    body = await read_json_object(request)
    cube_query = body.get("query")
    unknown = [FieldError(k, "unknown field") for k in body if k != "query"]
    if not isinstance(cube_query, dict) or unknown:
        problem = (
            []
            if isinstance(cube_query, dict)
            else [FieldError("query", "is required and must be a JSON object (a Cube query)")]
        )
        raise ValidationFailed(problem + unknown)
    token = await request.app[TOKENS].token_for(record, model)
    cube = request.app[CUBE]
    request_id = request[CONTEXT].request_id
    async with final_answer(
        cube,
        token.token,
        cube_query,
        request_id,
        request.app[SETTINGS].query_timeout,
        model=model.asset_id,
        trace=trace_headers(request.headers),
    ) as (upstream, head):
        headers = content_headers(upstream.headers)
        return await cube.relay(request, upstream, headers, request_id, head, finish=finish_answer)
