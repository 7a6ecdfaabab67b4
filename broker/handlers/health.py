"""Operating endpoints (SPEC §9): liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from broker.errors import StoreUnavailable
from broker.http.openapi import openapi_document
from broker.state import CONTEXT, METRICS, REGISTRY, STORE


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        await request.app[STORE].ping()
        checks["store"] = "ok"
    except StoreUnavailable as exc:
        checks["store"] = exc.message
    watcher = request.app[REGISTRY]
    checks["models"] = "ok" if watcher.last_error is None else watcher.last_error
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "error", "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request[CONTEXT].listener))
