"""Decision mode (SPEC §8): ``/auth/v1/cube`` answers a calling proxy whether to forward a
request to Cube, and with which token; the data then flows through that proxy. A body
is never read (nginx's ``auth_request`` sends none)."""

from __future__ import annotations

from aiohttp import web

from broker.cube.access import Call
from broker.handlers import NO_STORE
from broker.http.decision import original_request
from broker.http.requests import proxy_credential
from broker.state import CONTEXT, CUBE_ACCESS


async def decide(request: web.Request) -> web.Response:
    method, path, target = original_request(request)
    call = Call(request.headers.get("X-Request-Id"), method, target, None)
    credential = proxy_credential(request.headers)
    context = request[CONTEXT]
    grant = await request.app[CUBE_ACCESS].decide(credential, path, context.client_ip, call)
    context.admit(grant.key.public_id, grant.model_id, grant.rate_limit)
    return web.Response(headers={"Authorization": grant.token, **NO_STORE})
