"""The ``/cubejs-api/v1`` proxy (SPEC §8): authenticate, then stream Cube's answer (or
serve ``/meta`` from memory)."""

from __future__ import annotations

from aiohttp import web

from broker.cube.access import Call, required_right
from broker.cube.headers import downstream_headers, upstream_headers
from broker.cube.query import META_PATH, may_be_continue_wait
from broker.http.cors import finish_answer
from broker.http.requests import forwarded_for, proxy_credential, read_body
from broker.state import CONTEXT, CUBE, CUBE_ACCESS, META_CACHE, SETTINGS


async def forward(request: web.Request) -> web.StreamResponse:
    access = request.app[CUBE_ACCESS]
    caller = await access.authenticate(proxy_credential(request.headers))
    body = await read_body(request) if request.body_exists else None
    call = Call(request.headers.get("X-Request-Id"), request.method, request.raw_path, body)
    context = request[CONTEXT]
    grant = await access.grant(caller, required_right(request.path), context.client_ip, call)
    context.admit(grant.key.public_id, grant.model_id, grant.rate_limit)
    meta = request.app[META_CACHE]
    kept_at = None
    if request.path == META_PATH:
        kept_at = meta.key_for(grant, request.raw_path.partition("?")[2])
        kept = meta.get(kept_at)
        if kept is not None:
            return web.Response(body=kept.body, headers={"Content-Type": kept.content_type})
    forwarded = forwarded_for(request, request.app[SETTINGS].trusted_proxies)
    headers = upstream_headers(request.headers, grant.token, context.request_id, forwarded)
    cube = request.app[CUBE]
    async with cube.request(
        request.method, request.raw_path, headers, body, model=grant.model_id
    ) as upstream:
        head = b""
        if kept_at is not None and upstream.status == 200:
            head = await cube.read_head(upstream, meta.max_answer)
            whole = upstream.at_eof()
            meta.keep(kept_at, upstream.status, upstream.headers, head, whole=whole)
        elif may_be_continue_wait(upstream):
            head = await cube.read(upstream)
        if may_be_continue_wait(upstream):
            # A short JSON answer, read whole: if Cube said "Continue wait", the caller's
            # next polls of this query are not counted by the rate limit.
            await access.answered(grant, head)
        headers = downstream_headers(upstream.headers)
        return await cube.relay(
            request, upstream, headers, context.request_id, head, finish=finish_answer
        )
