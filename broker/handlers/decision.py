"""Decision mode (SPEC §8): ``/auth/v1/cube`` answers a calling proxy whether to forward a
request to Cube, and with which token; the data then flows through that proxy. A body
is never read (nginx's ``auth_request`` sends none)."""

from __future__ import annotations

from aiohttp import web

from broker.cube.access import Call
from broker.handlers import NO_STORE
from broker.http.decision import original_request
from broker.http.requests import proxy_credential
from broker.state import CLIENT_IP, CUBE_ACCESS, KEY_PUBLIC_ID, MODEL_ID, RATE_LIMIT


async def decide(request: web.Request) -> web.Response:
    method, path, target = original_request(request)
    call = Call(request.headers.get("X-Request-Id"), method, target, None)
    credential = proxy_credential(request.headers)
    grant = await request.app[CUBE_ACCESS].decide(credential, path, request[CLIENT_IP], call)
    request[KEY_PUBLIC_ID] = grant.key.public_id
    request[MODEL_ID] = grant.model_id
    if grant.rate_limit is not None:
        request[RATE_LIMIT] = grant.rate_limit
    return web.Response(headers={"Authorization": grant.token, **NO_STORE})
